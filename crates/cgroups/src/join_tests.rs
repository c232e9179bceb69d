//! Tests of berth's patch to libcgroups' v1 join (third_party/README.md):
//! a process that adds itself through libcgroups' manager lands whole in
//! the cgroup of every v1 hierarchy, whether it has one thread (moved
//! through `tasks`) or several (moved through `cgroup.procs`, as before).

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use libcgroups::common::CgroupManager;
use libcgroups::v1::manager::Manager;
use nix::unistd::Pid;

use crate::Hierarchies;

/// Removes the test's cgroup from every hierarchy, even on failure.
struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(h) = Hierarchies::detect() {
            let _ = h.remove_tree(&self.0);
        }
    }
}

/// In a forked child (before its exec): starts `threads - 1` threads,
/// adds the process to `cgroup`, then checks every thread's cgroups. An
/// error fails the spawn with its message.
fn join_and_check(cgroup: &str, threads: usize) -> io::Result<()> {
    for _ in 1..threads {
        std::thread::spawn(|| std::thread::sleep(Duration::from_secs(60)));
    }
    let manager = Manager::new(Path::new(cgroup)).map_err(io::Error::other)?;
    manager.add_task(Pid::this()).map_err(io::Error::other)?;
    let mut seen = 0;
    for task in std::fs::read_dir("/proc/self/task")? {
        seen += 1;
        let text = std::fs::read_to_string(task?.path().join("cgroup"))?;
        // "N:controllers:path"; cgroup2 ("0::") and named hierarchies
        // ("name=systemd") are not libcgroups' v1 controllers.
        for line in text.lines() {
            let mut fields = line.splitn(3, ':').skip(1);
            let (controllers, path) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
            if !controllers.is_empty() && !controllers.starts_with("name=") && path != cgroup {
                return Err(io::Error::other(format!("a thread was left behind: {line}")));
            }
        }
    }
    match seen == threads {
        true => Ok(()),
        false => Err(io::Error::other(format!("{seen} threads, {threads} expected"))),
    }
}

fn joins_whole(threads: usize) {
    if Hierarchies::detect().expect("cgroup mounts").is_v2() {
        eprintln!("skipped: no v1 hierarchies on this host");
        return;
    }
    let cgroup = format!("/berth-test-join-{}-{threads}", std::process::id());
    let _guard = Guard(cgroup.clone());
    let mut cmd = Command::new("true");
    let c = cgroup.clone();
    // SAFETY: the closure runs in the forked child; glibc's malloc and
    // thread creation work there, and the child execs or exits right after.
    unsafe { cmd.pre_exec(move || join_and_check(&c, threads)) };
    let status = cmd.status().expect("the child joined its cgroups whole");
    assert!(status.success());
}

/// A single-threaded process is moved through `tasks`.
#[test]
fn a_single_threaded_process_joins_its_v1_cgroups() {
    joins_whole(1);
}

/// A process with several threads is still moved with all of them.
#[test]
fn a_process_with_threads_joins_its_v1_cgroups_with_all_of_them() {
    joins_whole(3);
}
