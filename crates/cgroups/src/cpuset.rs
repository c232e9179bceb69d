//! The v1 cpuset parents of containers' cgroups. The kernel creates a v1
//! cpuset cgroup with no CPUs and no memory nodes, and no process may join
//! it until both are written. A runtime (libcontainer, runc) then copies
//! them from the parent, and on the legacy hierarchy that write costs what
//! grows with the number of containers: the kernel checks the new value
//! against every sibling cpuset and rebuilds the scheduler domains, which
//! walks every cpuset of the host.
//!
//! With `cgroup.clone_children` set on the parent, the kernel copies the
//! parent's CPUs and nodes into a new child as it creates it, with neither
//! step, and the runtime finds nothing to write. The flag passes on to
//! cgroups created below, so it is set once, on the parent berth owns.
//! cgroup v2 has no such step: a child uses its parent's CPUs until told
//! otherwise.

use std::fs;
use std::io;
use std::path::Path;

use crate::Hierarchies;

const CLONE_CHILDREN: &str = "cgroup.clone_children";
const CPUS: &str = "cpuset.cpus";
const MEMS: &str = "cpuset.mems";

impl Hierarchies {
    /// Makes `cgroup` (an absolute cgroup path that holds containers'
    /// cgroups and that berth owns, such as `/berth/default`) exist in the
    /// v1 cpuset hierarchy with its parent's CPUs and memory nodes where
    /// it has none, and with `cgroup.clone_children` set at every level,
    /// so that a cgroup created in it starts with them. A value written
    /// there before (by an operator) is kept. Nothing to do without a v1
    /// cpuset hierarchy, or once it is done.
    pub fn inherit_cpuset(&self, cgroup: &str) -> io::Result<()> {
        let Some(mut dir) = self.v1_dir("cpuset", "") else { return Ok(()) };
        if is_set(&dir.join(cgroup.trim_start_matches('/'))) {
            return Ok(());
        }
        for name in cgroup.split('/').filter(|c| !c.is_empty()) {
            let parent = dir.clone();
            dir.push(name);
            match fs::create_dir(&dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            for file in [CPUS, MEMS] {
                if read(&dir.join(file))?.is_empty() {
                    fs::write(dir.join(file), read(&parent.join(file))?)?;
                }
            }
            if read(&dir.join(CLONE_CHILDREN))? != "1" {
                fs::write(dir.join(CLONE_CHILDREN), "1")?;
            }
        }
        Ok(())
    }
}

/// Whether a cgroup created in `dir` starts with CPUs (and so with nodes:
/// the kernel copies both).
fn is_set(dir: &Path) -> bool {
    read(&dir.join(CLONE_CHILDREN)).is_ok_and(|v| v == "1") && read(&dir.join(CPUS)).is_ok_and(|v| !v.is_empty())
}

fn read(file: &Path) -> io::Result<String> {
    Ok(fs::read_to_string(file)?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removes the test's cgroups, even when an assertion fails.
    struct Cleanup<'a>(&'a Hierarchies, &'a str);

    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = self.0.remove_tree(self.1);
        }
    }

    #[test]
    fn a_cgroup_made_below_starts_with_the_parents_cpus_and_nodes() {
        let h = Hierarchies::detect().unwrap();
        let Some(root) = h.v1_dir("cpuset", "") else {
            // cgroup v2: nothing to prepare, and nothing is made.
            h.inherit_cpuset("/berth-cpuset-test/ns").unwrap();
            assert!(h.existing("/berth-cpuset-test").is_empty());
            return;
        };
        let top = format!("/berth-cpuset-test-{}", std::process::id());
        let _cleanup = Cleanup(&h, &top);
        let ns = format!("{top}/ns");
        // A level that exists already without CPUs, as libcontainer or an
        // older berth left it.
        fs::create_dir(root.join(&top[1..])).unwrap();
        assert_eq!(read(&root.join(&top[1..]).join(CPUS)).unwrap(), "");

        h.inherit_cpuset(&ns).unwrap();
        let host = (read(&root.join(CPUS)).unwrap(), read(&root.join(MEMS)).unwrap());
        for level in [&top, &ns] {
            let dir = root.join(&level[1..]);
            assert_eq!((read(&dir.join(CPUS)).unwrap(), read(&dir.join(MEMS)).unwrap()), host, "{level}");
            assert_eq!(read(&dir.join(CLONE_CHILDREN)).unwrap(), "1", "{level}");
        }
        // Done once: a second call finds it so, and keeps a value an
        // operator wrote in the meantime.
        let ns_cpus = root.join(&ns[1..]).join(CPUS);
        let one_cpu = host.0.split([',', '-']).next().unwrap().to_string();
        fs::write(&ns_cpus, &one_cpu).unwrap();
        h.inherit_cpuset(&ns).unwrap();
        assert_eq!(read(&ns_cpus).unwrap(), one_cpu, "an operator's value stays");
        // What the kernel now does for a container's cgroup.
        let leaf = root.join(&ns[1..]).join("c1");
        fs::create_dir(&leaf).unwrap();
        assert_eq!((read(&leaf.join(CPUS)).unwrap(), read(&leaf.join(MEMS)).unwrap()), (one_cpu, host.1));
    }

    #[test]
    fn a_path_through_a_file_fails_and_changes_nothing() {
        let h = Hierarchies::detect().unwrap();
        let Some(root) = h.v1_dir("cpuset", "") else { return };
        // cpuset.cpus is a file: nothing can be made below it.
        let err = h.inherit_cpuset("/cpuset.cpus/ns").unwrap_err();
        assert!(err.kind() != io::ErrorKind::AlreadyExists, "{err}");
        assert!(!root.join("cpuset.cpus/ns").exists());
    }
}
