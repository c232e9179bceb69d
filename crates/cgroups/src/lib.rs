//! Finds a container's cgroup in every mounted hierarchy — cgroup v1 (each
//! controller its own mount, as on this host's hybrid layout), the v2
//! unified mount, or pure v2 — and lists or removes it there; reads its
//! statistics and updates its limits (`resources`).

mod oom;
mod resources;

pub use oom::OomWatch;

pub use resources::{
    BlkioEntry, ContainerStats, CpuStats, HugetlbEntry, Limits, MemoryStats, PidsStats, ResourceError, parse_cpu_list,
    stats, update,
};

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The cgroup hierarchies mounted on this host.
#[derive(Debug, Clone)]
pub struct Hierarchies {
    mounts: Vec<PathBuf>,
}

impl Hierarchies {
    /// Reads the cgroup mounts of this process's mount namespace.
    pub fn detect() -> io::Result<Hierarchies> {
        let info = fs::read_to_string("/proc/self/mountinfo")?;
        Ok(Self::parse(&info))
    }

    fn parse(mountinfo: &str) -> Hierarchies {
        let mut mounts = Vec::new();
        for line in mountinfo.lines() {
            // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS] - FSTYPE SOURCE SUPER
            let Some((left, right)) = line.split_once(" - ") else { continue };
            let fstype = right.split_whitespace().next().unwrap_or("");
            if fstype != "cgroup" && fstype != "cgroup2" {
                continue;
            }
            if let Some(mp) = left.split_whitespace().nth(4) {
                mounts.push(PathBuf::from(unescape(mp)));
            }
        }
        mounts.sort();
        mounts.dedup();
        Hierarchies { mounts }
    }

    /// The directories of `cgroup` (an absolute cgroup path like
    /// `/berth/default/web`) that exist now, one per hierarchy.
    pub fn existing(&self, cgroup: &str) -> Vec<PathBuf> {
        self.candidates(cgroup).filter(|p| p.is_dir()).collect()
    }

    fn candidates<'a>(&'a self, cgroup: &'a str) -> impl Iterator<Item = PathBuf> + 'a {
        let rel = cgroup.trim_start_matches('/');
        self.mounts.iter().map(move |m| m.join(rel))
    }

    /// Processes in the cgroup (from the first hierarchy that has it).
    pub fn procs(&self, cgroup: &str) -> io::Result<Vec<u32>> {
        for dir in self.existing(cgroup) {
            if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
                return Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect());
            }
        }
        Ok(Vec::new())
    }

    /// Removes the cgroup in every hierarchy. A cgroup that still holds
    /// processes is an error; one that is already gone is not.
    pub fn remove(&self, cgroup: &str) -> io::Result<()> {
        for dir in self.existing(cgroup) {
            remove_dir(&dir)?;
        }
        Ok(())
    }

    /// Removes the cgroup and every cgroup below it, deepest first.
    pub fn remove_tree(&self, cgroup: &str) -> io::Result<()> {
        for dir in self.existing(cgroup) {
            remove_tree(&dir)?;
        }
        Ok(())
    }
}

fn remove_dir(dir: &Path) -> io::Result<()> {
    match fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    remove_dir(dir)
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 23 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/cpu rw,nosuid shared:9 - cgroup cgroup rw,cpu
34 30 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
40 23 0:40 / /proc rw - proc proc rw";

    #[test]
    fn parses_v1_and_v2_mounts() {
        let h = Hierarchies::parse(HYBRID);
        let c: Vec<_> = h.candidates("/berth/ns/id").collect();
        assert_eq!(
            c,
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu/berth/ns/id"),
                PathBuf::from("/sys/fs/cgroup/memory/berth/ns/id"),
                PathBuf::from("/sys/fs/cgroup/unified/berth/ns/id"),
            ]
        );
    }

    #[test]
    fn pure_v2() {
        let h = Hierarchies::parse("25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw");
        assert_eq!(h.candidates("/a").collect::<Vec<_>>(), vec![PathBuf::from("/sys/fs/cgroup/a")]);
    }

    #[test]
    fn real_host_has_cgroups() {
        let h = Hierarchies::detect().unwrap();
        assert!(!h.existing("/").is_empty());
        assert!(h.procs("/berth-no-such-cgroup").unwrap().is_empty());
    }
}
