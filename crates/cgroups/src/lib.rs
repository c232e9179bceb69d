//! Finds a container's cgroup in every mounted hierarchy — cgroup v1 (each
//! controller its own mount, as on this host's hybrid layout), the v2
//! unified mount, or pure v2 — and lists or removes it there; reads its
//! statistics and updates its limits (`resources`).

mod cpuset;
#[cfg(test)]
mod join_tests;
mod oom;
mod resources;
mod v1stats;

pub use oom::{OomWatch, oom_kills_in};

pub use resources::{
    BlkioEntry, ContainerStats, CpuStats, HugetlbEntry, Limits, MemoryStats, PidsStats, ResourceError, parse_cpu_list,
    stats, stats_in, update,
};

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Controllers a v1 hierarchy may carry (a named one like `name=systemd`
/// carries none).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "blkio",
    "perf_event",
    "net_prio",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// The cgroup hierarchies mounted on this host.
#[derive(Debug, Clone)]
pub struct Hierarchies {
    mounts: Vec<PathBuf>,
    /// The v1 mounts with the controllers each carries (its options).
    v1: Vec<(PathBuf, Vec<String>)>,
    /// The v2 mount, if there is one.
    unified: Option<PathBuf>,
}

impl Hierarchies {
    /// Reads the cgroup mounts of this process's mount namespace.
    pub fn detect() -> io::Result<Hierarchies> {
        let info = fs::read_to_string("/proc/self/mountinfo")?;
        Ok(Self::parse(&info))
    }

    /// Hierarchies from mountinfo text (for tests of callers).
    #[doc(hidden)]
    pub fn parse_for_tests(mountinfo: &str) -> Hierarchies {
        Self::parse(mountinfo)
    }

    fn parse(mountinfo: &str) -> Hierarchies {
        let (mut mounts, mut v1, mut unified) = (Vec::new(), Vec::new(), None);
        for m in berth_model::mountinfo::mounts(mountinfo) {
            let mp = PathBuf::from(m.point.as_ref());
            match m.fstype {
                "cgroup" => v1.push((mp.clone(), m.options.split(',').map(str::to_string).collect())),
                "cgroup2" => unified = Some(mp.clone()),
                _ => continue,
            }
            mounts.push(mp);
        }
        mounts.sort();
        mounts.dedup();
        Hierarchies { mounts, v1, unified }
    }

    /// `cgroup`'s directory in the v1 hierarchy of `controller`, if the
    /// host mounts one (not looked up: callers read or open files there).
    pub fn v1_dir(&self, controller: &str, cgroup: &str) -> Option<PathBuf> {
        let (mount, _) = self.v1.iter().find(|(_, controllers)| controllers.iter().any(|c| c == controller))?;
        Some(mount.join(cgroup.trim_start_matches('/')))
    }

    /// Whether containers' cgroups are v2: the host mounts the unified
    /// hierarchy and no v1 controller.
    pub fn is_v2(&self) -> bool {
        self.unified.is_some()
            && self.v1.iter().all(|(_, opts)| !opts.iter().any(|o| V1_CONTROLLERS.contains(&o.as_str())))
    }

    /// Whether the host has controller `name` for containers: a v1
    /// hierarchy of it, or on a v2 host, in the root's controllers.
    pub fn has_controller(&self, name: &str) -> bool {
        if self.v1.iter().any(|(_, opts)| opts.iter().any(|o| o == name)) {
            return true;
        }
        let root = self.unified.as_ref().filter(|_| self.is_v2());
        let controllers = root.and_then(|m| fs::read_to_string(m.join("cgroup.controllers")).ok()).unwrap_or_default();
        controllers.split_whitespace().any(|c| c == name)
    }

    /// Where `cgroup`'s memory controller files may be, most likely first:
    /// the v1 memory hierarchy, then the v2 mount. Nothing is looked up
    /// (a watcher per container at startup must not stat every hierarchy).
    pub fn memory_dirs(&self, cgroup: &str) -> Vec<PathBuf> {
        let v2 = self.unified.as_ref().map(|m| m.join(cgroup.trim_start_matches('/')));
        self.v1_dir("memory", cgroup).into_iter().chain(v2).collect()
    }

    /// A container's CPU time (ns), memory in use (bytes) and process
    /// count, from three files (v1: cpuacct.usage, memory.usage_in_bytes,
    /// pids.current; v2: cpu.stat's usage_usec, memory.current,
    /// pids.current): what a metrics scrape of many containers can afford.
    /// A file that cannot be read counts 0; `None` if none can.
    pub fn usage(&self, cgroup: &str) -> Option<Usage> {
        let read = |dir: Option<PathBuf>, file: &str| -> Option<String> { fs::read_to_string(dir?.join(file)).ok() };
        let num = |s: Option<String>| s.and_then(|s| s.trim().parse::<u64>().ok());
        let (cpu, memory, pids) = if self.is_v2() {
            let dir = || self.unified.as_ref().map(|m| m.join(cgroup.trim_start_matches('/')));
            let usec = read(dir(), "cpu.stat").and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("usage_usec ").and_then(|v| v.trim().parse::<u64>().ok()))
            });
            (usec.map(|u| u * 1000), num(read(dir(), "memory.current")), num(read(dir(), "pids.current")))
        } else {
            (
                num(read(self.v1_dir("cpuacct", cgroup), "cpuacct.usage")),
                num(read(self.v1_dir("memory", cgroup), "memory.usage_in_bytes")),
                num(read(self.v1_dir("pids", cgroup), "pids.current")),
            )
        };
        (cpu.is_some() || memory.is_some() || pids.is_some()).then(|| Usage {
            cpu_ns: cpu.unwrap_or(0),
            memory: memory.unwrap_or(0),
            pids: pids.unwrap_or(0),
        })
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

    /// The mount points of the hierarchies (v1 controllers, v2).
    pub fn mount_points(&self) -> &[PathBuf] {
        &self.mounts
    }

    /// Processes in the cgroup and the cgroups a container made below it
    /// (from the first hierarchy that has it).
    pub fn procs(&self, cgroup: &str) -> io::Result<Vec<u32>> {
        // One lookup per hierarchy tried (a missing directory fails it
        // too), not one for every hierarchy first.
        for dir in self.candidates(cgroup) {
            if fs::metadata(dir.join("cgroup.procs")).is_ok() {
                let mut pids = Vec::new();
                procs_below(&dir, &mut pids);
                return Ok(pids);
            }
        }
        Ok(Vec::new())
    }

    /// Removes the cgroup in every hierarchy, and the cgroups a container
    /// made below it, deepest first. A cgroup that still holds processes is
    /// an error; one that is already gone is not.
    pub fn remove(&self, cgroup: &str) -> io::Result<()> {
        self.remove_tree(cgroup)
    }

    /// SIGKILLs every process in the cgroup and the cgroups below it, then
    /// thaws them all (a frozen process would never die); returns how many
    /// there were.
    pub fn kill_all(&self, cgroup: &str) -> usize {
        let pids = self.procs(cgroup).unwrap_or_default();
        for &pid in &pids {
            // SAFETY: plain syscall on a pid read from the cgroup.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        if !pids.is_empty() {
            self.thaw_tree(cgroup);
        }
        pids.len()
    }

    /// Whether the cgroup itself was frozen (paused) or thawed, as far as
    /// its freezer says for sure: `None` while it is changing, when a
    /// parent's freezing decides it (systemd freezing a slice, say), or if
    /// that cannot be read. v1: freezer.state with self_freezing and
    /// parent_freezing; v2: cgroup.freeze agreeing with cgroup.events'
    /// `frozen`.
    pub fn frozen(&self, cgroup: &str) -> Option<bool> {
        let flag = |dir: &Path, file: &str| -> Option<bool> {
            match fs::read_to_string(dir.join(file)).ok()?.trim() {
                "1" => Some(true),
                "0" => Some(false),
                _ => None,
            }
        };
        if self.is_v2() {
            let dir = self.unified.as_ref()?.join(cgroup.trim_start_matches('/'));
            let events = fs::read_to_string(dir.join("cgroup.events")).ok()?;
            let frozen = match events.lines().find_map(|l| l.strip_prefix("frozen "))?.trim() {
                "1" => true,
                "0" => false,
                _ => return None,
            };
            return (flag(&dir, "cgroup.freeze")? == frozen).then_some(frozen);
        }
        let dir = self.v1_dir("freezer", cgroup)?;
        match fs::read_to_string(dir.join("freezer.state")).ok()?.trim() {
            // Neither it nor a parent is freezing it: no more to read.
            "THAWED" => Some(false),
            "FROZEN" => {
                (flag(&dir, "freezer.self_freezing")? && !flag(&dir, "freezer.parent_freezing")?).then_some(true)
            }
            _ => None,
        }
    }

    /// Thaws the cgroup and every cgroup below it (v1 freezer, v2
    /// cgroup.freeze): a frozen process can neither die nor leave, so
    /// killing what is left of a container thaws it too.
    pub fn thaw_tree(&self, cgroup: &str) {
        // Only the hierarchies that can freeze: the v1 freezer's and the
        // v2 one (cgroup.freeze); the others hold nothing to thaw.
        let v2 = self.unified.as_ref().map(|m| m.join(cgroup.trim_start_matches('/')));
        for dir in self.v1_dir("freezer", cgroup).into_iter().chain(v2).filter(|d| d.is_dir()) {
            thaw_below(&dir);
        }
    }

    /// Removes the cgroups below the cgroup (made by the container), deepest
    /// first, keeping the cgroup itself (for a runtime that removes it).
    pub fn remove_children(&self, cgroup: &str) -> io::Result<()> {
        for dir in self.existing(cgroup) {
            for sub in subdirs(&dir)? {
                remove_tree(&sub)?;
            }
        }
        Ok(())
    }

    /// Removes the cgroup in every hierarchy where it is empty (no
    /// processes, no child cgroups) and keeps it where it is not: for a
    /// parent that others may still use. Only `rmdir`, which the kernel
    /// refuses for a cgroup in use, so this never races with a creator.
    pub fn remove_if_empty(&self, cgroup: &str) -> io::Result<()> {
        let mut first_err = None;
        for dir in self.existing(cgroup) {
            match remove_dir(&dir) {
                Err(e) if in_use(&e) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
                Ok(()) => {}
            }
        }
        first_err.map_or(Ok(()), Err)
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

/// A directory that `rmdir` refused because something is in it.
/// See [`Hierarchies::usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub cpu_ns: u64,
    pub memory: u64,
    pub pids: u64,
}

pub fn in_use(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::ENOTEMPTY) | Some(libc::EEXIST))
}

/// Collects the pids of `dir` and every cgroup below it.
fn procs_below(dir: &Path, pids: &mut Vec<u32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            procs_below(&entry.path(), pids);
        }
    }
}

fn thaw_below(dir: &Path) {
    for (file, thawed) in [("freezer.state", "THAWED"), ("cgroup.freeze", "0")] {
        let path = dir.join(file);
        if path.exists() {
            let _ = fs::write(path, thawed);
        }
    }
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            thaw_below(&entry.path());
        }
    }
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    for sub in subdirs(dir)? {
        remove_tree(&sub)?;
    }
    remove_dir(dir)
}

/// The directories in a directory; none if it is gone (removed since it
/// was seen, by a cleanup that went first).
fn subdirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        entries => entries?,
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
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

    /// Writes `text` to `path` under `root`, making its directories.
    fn write_under(root: &Path, path: &str, text: &str) {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn usage_reads_three_files_per_layout() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().display();
        let write = |path: &str, text: &str| write_under(root.path(), path, text);
        let v1 = Hierarchies::parse_for_tests(&format!(
            "1 0 0:1 / {r}/cpuacct rw - cgroup cgroup rw,cpuacct\n2 0 0:2 / {r}/memory rw - cgroup cgroup rw,memory\n\
             3 0 0:3 / {r}/pids rw - cgroup cgroup rw,pids"
        ));
        write("cpuacct/b/c/cpuacct.usage", "5000\n");
        write("memory/b/c/memory.usage_in_bytes", "4096\n");
        write("pids/b/c/pids.current", "2\n");
        assert_eq!(v1.usage("/b/c"), Some(Usage { cpu_ns: 5000, memory: 4096, pids: 2 }));
        assert_eq!(v1.usage("/b/gone"), None);
        let v2 = Hierarchies::parse_for_tests(&format!("1 0 0:1 / {r}/unified rw - cgroup2 cgroup2 rw"));
        write("unified/b/c/cpu.stat", "usage_usec 7\nuser_usec 5\n");
        write("unified/b/c/memory.current", "8192\n");
        assert_eq!(v2.usage("b/c"), Some(Usage { cpu_ns: 7000, memory: 8192, pids: 0 }));
    }

    #[test]
    fn frozen_reads_the_freezer_per_layout() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().display();
        let write = |path: &str, text: &str| write_under(root.path(), path, text);
        let v1 = Hierarchies::parse_for_tests(&format!("1 0 0:1 / {r}/freezer rw - cgroup cgroup rw,freezer"));
        write("freezer/b/c/freezer.parent_freezing", "0\n");
        for (state, own, frozen) in [
            ("FROZEN\n", "1\n", Some(true)),
            ("THAWED\n", "0\n", Some(false)),
            ("FREEZING\n", "1\n", None),
            // Frozen by a parent, not paused itself.
            ("FROZEN\n", "0\n", None),
        ] {
            write("freezer/b/c/freezer.state", state);
            write("freezer/b/c/freezer.self_freezing", own);
            assert_eq!(v1.frozen("/b/c"), frozen, "{state} {own}");
        }
        write("freezer/b/c/freezer.parent_freezing", "1\n");
        assert_eq!(v1.frozen("/b/c"), None, "a parent freezing decides");
        assert_eq!(v1.frozen("/b/gone"), None);
        let v2 = Hierarchies::parse_for_tests(&format!("1 0 0:1 / {r}/unified rw - cgroup2 cgroup2 rw"));
        for (freeze, events, frozen) in [
            ("1\n", "populated 1\nfrozen 1\n", Some(true)),
            ("0\n", "populated 1\nfrozen 0\n", Some(false)),
            // Freezing, not frozen yet.
            ("1\n", "populated 1\nfrozen 0\n", None),
            // Frozen by a parent.
            ("0\n", "populated 1\nfrozen 1\n", None),
            // A kernel without the freezer in cgroup.events.
            ("0\n", "populated 1\n", None),
        ] {
            write("unified/b/c/cgroup.freeze", freeze);
            write("unified/b/c/cgroup.events", events);
            assert_eq!(v2.frozen("/b/c"), frozen, "{freeze} {events}");
        }
    }

    /// Thawing writes the freezer files of the cgroup and of those below
    /// it in the hierarchies that can freeze, and nothing elsewhere.
    #[test]
    fn thaw_tree_thaws_every_freezer_below() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().display();
        let read = |path: &str| std::fs::read_to_string(root.path().join(path)).unwrap();
        let hybrid = Hierarchies::parse_for_tests(&format!(
            "1 0 0:1 / {r}/freezer rw - cgroup cgroup rw,freezer\n2 0 0:2 / {r}/memory rw - cgroup cgroup rw,memory\n\
             3 0 0:3 / {r}/unified rw - cgroup2 cgroup2 rw"
        ));
        for path in ["freezer/b/c/freezer.state", "freezer/b/c/made/freezer.state", "memory/b/c/freezer.state"] {
            write_under(root.path(), path, "FROZEN");
        }
        write_under(root.path(), "unified/b/c/made/cgroup.freeze", "1");
        write_under(root.path(), "unified/b/c/cgroup.freeze", "1");
        hybrid.thaw_tree("/b/c");
        assert_eq!(read("freezer/b/c/freezer.state"), "THAWED");
        assert_eq!(read("freezer/b/c/made/freezer.state"), "THAWED");
        assert_eq!(read("unified/b/c/cgroup.freeze"), "0");
        assert_eq!(read("unified/b/c/made/cgroup.freeze"), "0");
        assert_eq!(read("memory/b/c/freezer.state"), "FROZEN", "no freezer there: left alone");
        hybrid.thaw_tree("/b/gone");
    }

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
    fn the_memory_hierarchy_comes_first() {
        let h = Hierarchies::parse(HYBRID);
        let memory = vec![PathBuf::from("/sys/fs/cgroup/memory/a"), PathBuf::from("/sys/fs/cgroup/unified/a")];
        assert_eq!(h.memory_dirs("/a"), memory);
        assert_eq!(h.v1_dir("cpu", "/a"), Some(PathBuf::from("/sys/fs/cgroup/cpu/a")));
        assert_eq!(h.v1_dir("pids", "/a"), None);
        let v2 = Hierarchies::parse("25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw");
        assert_eq!(v2.memory_dirs("/a"), vec![PathBuf::from("/sys/fs/cgroup/a")]);
    }

    #[test]
    fn the_layout_says_v1_or_v2_and_which_controllers() {
        let hybrid = Hierarchies::parse(HYBRID);
        assert!(!hybrid.is_v2());
        assert!(hybrid.has_controller("memory") && !hybrid.has_controller("hugetlb"));
        let v2 = Hierarchies::parse("25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw");
        assert!(v2.is_v2());
        // systemd's named hierarchy carries no controller.
        let named = "25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n\
                     26 1 0:23 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd";
        assert!(Hierarchies::parse(named).is_v2());
    }

    #[test]
    fn pure_v2() {
        let h = Hierarchies::parse("25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw");
        assert_eq!(h.candidates("/a").collect::<Vec<_>>(), vec![PathBuf::from("/sys/fs/cgroup/a")]);
    }

    #[test]
    fn remove_if_empty_keeps_a_parent_in_use() {
        // A fake hierarchy: rmdir of a non-empty directory fails as a
        // cgroup with a child would.
        let tmp = std::env::temp_dir().join(format!("berth-cgroups-test-{}", std::process::id()));
        let h = Hierarchies { mounts: vec![tmp.join("cpu"), tmp.join("memory")], v1: Vec::new(), unified: None };
        fs::create_dir_all(tmp.join("cpu/berth/ns/id")).unwrap();
        fs::create_dir_all(tmp.join("memory/berth/ns")).unwrap();
        h.remove_if_empty("/berth/ns").unwrap();
        assert!(tmp.join("cpu/berth/ns/id").is_dir(), "a parent in use stays");
        assert!(!tmp.join("memory/berth/ns").exists(), "an empty one goes");
        h.remove_if_empty("/berth/ns/id").unwrap();
        h.remove_if_empty("/berth/ns").unwrap();
        assert_eq!(h.existing("/berth/ns"), Vec::<PathBuf>::new());
        assert!(tmp.join("cpu/berth").is_dir(), "only the named level goes");
        h.remove_if_empty("/berth/gone").unwrap();
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn real_host_has_cgroups() {
        let h = Hierarchies::detect().unwrap();
        assert!(!h.existing("/").is_empty());
        assert!(h.procs("/berth-no-such-cgroup").unwrap().is_empty());
    }
}
