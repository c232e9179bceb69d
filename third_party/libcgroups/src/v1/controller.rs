use std::fs;
use std::path::Path;

use nix::unistd::Pid;

use crate::common::{self, CGROUP_PROCS, ControllerOpt, WrapIoResult, WrappedIoError};

/// berth: how a process joins a v1 cgroup, decided once for all the
/// hierarchies it joins ([`Member::of`]).
///
/// A write of a pid to `cgroup.procs` takes the kernel's global
/// threadgroup lock for writing, whose first taker after a quiet spell
/// waits for an RCU grace period (7 to 15 ms on berth's reference host, on
/// every create and exec). A single-threaded calling process moves its
/// thread instead, by writing "0" (the caller) to `tasks`: the kernel
/// skips the global lock when a thread moves itself
/// (`cgroup_procs_write_start`; 0.3 ms instead of 7 to 15 ms for nine
/// hierarchies on 6.18), and a kernel that does not costs what
/// `cgroup.procs` did. Moving a process's only thread moves the process.
/// Any other process is moved as before.
#[derive(Debug, Clone, Copy)]
pub(super) enum Member {
    /// The calling process, which has one thread: moved through `tasks`.
    OwnThread,
    /// Any other process (or a caller with threads): moved through
    /// `cgroup.procs`.
    Process(Pid),
}

impl Member {
    /// How `pid` joins: one read of `/proc/self/status` when it is the
    /// caller.
    pub(super) fn of(pid: Pid) -> Member {
        match pid == Pid::this() && single_threaded() {
            true => Member::OwnThread,
            false => Member::Process(pid),
        }
    }
}

/// berth: moves `member` into the cgroup at `cgroup_path`.
pub(super) fn join(member: Member, cgroup_path: &Path) -> Result<(), WrappedIoError> {
    match member {
        Member::OwnThread => common::write_cgroup_file(cgroup_path.join(CGROUP_TASKS), 0),
        Member::Process(pid) => common::write_cgroup_file(cgroup_path.join(CGROUP_PROCS), pid),
    }
}

/// berth: the v1 file listing a cgroup's threads; a write moves one.
const CGROUP_TASKS: &str = "tasks";

/// berth: whether the calling process has one thread (false when that
/// cannot be read).
fn single_threaded() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|s| s.lines().any(|l| l == "Threads:\t1"))
}

pub(super) trait Controller {
    type Error: From<WrappedIoError>;
    type Resource;

    /// Adds a new task specified by its pid to the cgroup
    ///
    /// berth: only libcgroups' own tests add a pid this way; the manager
    /// decides once how a process joins and calls [`Self::add_member`].
    #[cfg(test)]
    fn add_task(pid: Pid, cgroup_path: &Path) -> Result<(), Self::Error> {
        Self::add_member(Member::of(pid), cgroup_path)
    }

    /// berth: adds a process, with how it joins decided already (the
    /// manager decides once for every hierarchy).
    fn add_member(member: Member, cgroup_path: &Path) -> Result<(), Self::Error> {
        fs::create_dir_all(cgroup_path).wrap_create_dir(cgroup_path)?;
        join(member, cgroup_path)?;
        Ok(())
    }

    /// Applies resource restrictions to the cgroup
    fn apply(controller_opt: &ControllerOpt, cgroup_root: &Path) -> Result<(), Self::Error>;

    /// Checks if the controller needs to handle this request
    fn needs_to_handle<'a>(controller_opt: &'a ControllerOpt) -> Option<&'a Self::Resource>;
}
