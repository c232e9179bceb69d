//! Reaps children the shim does not watch itself. Tracked processes (init,
//! execs) are reaped by their own pidfd watcher in `process.rs`; everything
//! else that ends up our child (re-parented orphans) is reaped here on
//! SIGCHLD. The shim is single-threaded, so no runtime call that waits for
//! its own helper processes can run while this does.

use std::collections::HashSet;
use std::fs;
use std::sync::{Arc, Mutex};

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

/// Pids whose exit a watcher is waiting for.
pub type Tracked = Arc<Mutex<HashSet<u32>>>;

pub fn spawn(tracked: Tracked) -> std::io::Result<()> {
    let mut sigchld = signal(SignalKind::child())?;
    tokio::spawn(async move {
        while sigchld.recv().await.is_some() {
            reap_untracked(&tracked);
        }
    });
    Ok(())
}

fn reap_untracked(tracked: &Tracked) {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else { return };
    let mut children = Vec::new();
    for task in tasks.flatten() {
        if let Ok(text) = fs::read_to_string(task.path().join("children")) {
            children.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    let watched = match tracked.lock() {
        Ok(t) => t.clone(),
        Err(p) => p.into_inner().clone(),
    };
    for pid in children.into_iter().filter(|p| !watched.contains(p)) {
        let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
    }
}
