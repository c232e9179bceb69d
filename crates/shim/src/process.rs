//! One watched process: its pid, a pidfd-driven exit watcher, and the exit
//! status that every waiter receives (SPEC B4, B5).

use std::os::fd::AsFd;
use std::path::PathBuf;

use berth_model::ExitStatus;
use berth_shim::pidfd_open;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::output::Drained;
use crate::reaper::Tracked;

pub use berth_model::now_ns;

/// Watches `pid` (a child of this shim) until it exits. The exit is written
/// to `exit_file` atomically *before* it is published on the returned
/// channel; `after_exit` then runs (e.g. to kill what is left, or to
/// publish the exit to containerd), and the
/// process's output is drained into its logs, so whoever sees the exit
/// finds all of it there.
pub fn watch(
    pid: u32,
    exit_file: PathBuf,
    tracked: Tracked,
    output: Drained,
    after_exit: impl FnOnce(&ExitStatus) + Send + 'static,
) -> std::io::Result<watch::Receiver<Option<ExitStatus>>> {
    let pidfd = pidfd_open(pid)?;
    // SAFETY: the AsyncFd owns the pidfd for its whole life.
    let afd = unsafe { AsyncFd::register(pidfd) }.map_err(std::io::Error::from)?;
    if let Ok(mut t) = tracked.lock() {
        t.insert(pid);
    }
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let status = loop {
            let Ok(mut guard) = afd.readable().await else { break None };
            match waitid(Id::PIDFd(afd.get_ref().as_fd()), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG) {
                Ok(WaitStatus::StillAlive) => guard.clear_ready(),
                Ok(WaitStatus::Exited(_, code)) => break Some(ExitStatus::from_wait(Some(code), None, now_ns())),
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    break Some(ExitStatus::from_wait(None, Some(sig as i32), now_ns()));
                }
                Ok(_) => guard.clear_ready(),
                // Not our child (or already reaped): the code is unknowable.
                Err(_) => break None,
            }
        };
        let status = status.unwrap_or_else(|| ExitStatus::from_wait(None, None, now_ns()));
        if let Ok(mut t) = tracked.lock() {
            t.remove(&pid);
        }
        record(&exit_file, &status);
        after_exit(&status);
        output.wait().await;
        // Published exactly once: the sender is dropped right after.
        tx.send_replace(Some(status));
    });
    Ok(rx)
}

fn record(path: &std::path::Path, status: &ExitStatus) {
    match serde_json::to_vec(status) {
        Ok(bytes) => {
            if let Err(e) = berth_store::write_atomic(path, &bytes) {
                eprintln!("berth-shim: cannot record exit in {}: {e}", path.display());
            }
        }
        Err(e) => eprintln!("berth-shim: cannot encode exit: {e}"),
    }
}

/// Waits for the process behind `rx` to exit and returns its status.
pub async fn wait(mut rx: watch::Receiver<Option<ExitStatus>>) -> Option<ExitStatus> {
    if let Ok(v) = rx.wait_for(Option::is_some).await {
        return *v;
    }
    *rx.borrow()
}
