//! The OCI runtime layer (SPEC B25): one [`Runtime`] trait with an embedded
//! backend (youki's libcontainer, the default, no external binary) and CLI
//! backends for runc and crun. Shims call it; the daemon never does.

mod cli;
mod criu;
mod embedded;
mod error;
mod isolate;
mod propagation;
mod seccomp;

use std::os::fd::OwnedFd;
use std::path::Path;

pub use criu::{CRIU_ENV, Checkpoint, criu_path};
pub use error::RuntimeError;
pub use isolate::{Isolated, close_in_helpers, in_child, pidfd_open};

/// The stdio a container process gets. `None` means /dev/null. With a
/// console socket the process gets a terminal instead, whose master the
/// runtime sends to that socket.
#[derive(Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub console_socket: Option<std::path::PathBuf>,
}

/// A low-level OCI runtime: creates, starts, signals and deletes one
/// container of a bundle. Implementations keep their own state under the
/// root directory they were opened with.
pub trait Runtime: Send + Sync {
    fn name(&self) -> &'static str;
    /// Creates the container (init waiting to exec) and returns init's pid.
    fn create(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<u32, RuntimeError>;
    fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// Starts an extra process in the running container, described by an
    /// OCI process JSON file (SPEC B6), and returns its pid.
    fn exec(&self, id: &str, process: &Path, stdio: Stdio) -> Result<u32, RuntimeError>;
    fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), RuntimeError>;
    /// Freezes every process of the container (SPEC B11).
    fn pause(&self, id: &str) -> Result<(), RuntimeError>;
    /// Thaws a paused container.
    fn resume(&self, id: &str) -> Result<(), RuntimeError>;
    /// Dumps the running container with CRIU into `c.images` (SPEC B16);
    /// unless `c.leave_running`, the container's processes end.
    fn checkpoint(&self, id: &str, c: &Checkpoint) -> Result<(), RuntimeError>;
    /// Restores a container of `bundle` from `c.images`, running, with
    /// `stdio` in place of the stdio it had; returns init's pid.
    fn restore(&self, id: &str, bundle: &Path, stdio: Stdio, c: &Checkpoint) -> Result<u32, RuntimeError>;
    /// Removes the container's runtime state and cgroup. Deleting a
    /// container the runtime does not know is not an error.
    fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError>;
    /// The delete of a container whose init has exited, when it can be
    /// done at once, with nothing that may block or linger (no hook to
    /// run, no process left in its cgroup); `None` when it cannot, and
    /// [`Runtime::delete`] is to do it.
    fn delete_exited(&self, _id: &str) -> Option<Result<(), RuntimeError>> {
        None
    }
}

/// Opens the runtime `name`, keeping its state under `root` (and the
/// embedded runtime's compiled seccomp programs in `seccomp_cache`).
pub fn open(name: &str, root: &Path, seccomp_cache: Option<&Path>) -> Result<Box<dyn Runtime>, RuntimeError> {
    let name = berth_model::runtime_name(name).map_err(|e| RuntimeError::UnknownRuntime(e.to_string()))?;
    std::fs::create_dir_all(root).map_err(|e| RuntimeError::io("create runtime root", e))?;
    match name {
        "embedded" => Ok(Box::new(embedded::Embedded::new(root, seccomp_cache))),
        "runc" => Ok(Box::new(cli::CliRuntime::new("runc", root)?)),
        "crun" => Ok(Box::new(cli::CliRuntime::new("crun", root)?)),
        other => Err(RuntimeError::UnknownRuntime(format!("{other} is not an OCI runtime"))),
    }
}

/// Gives every signal its default action and unblocks all, in a container
/// process right before its execve (the embedded executor) or a runtime
/// binary's (runc, crun): an ignored signal survives exec, and the process
/// must not inherit the shim's (Rust ignores SIGPIPE; a shell that started
/// berthd in the background may have left SIGINT and SIGQUIT ignored), or
/// `yes | head` spins forever in a container.
pub(crate) fn default_signals() {
    for sig in 1..=libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: resetting a disposition in a single-threaded child;
            // signals the C library reserves fail harmlessly.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}
