//! Reaps children the shim does not watch itself. Tracked processes (inits,
//! execs) are reaped by their own pidfd watcher in `process.rs`; everything
//! else that ends up our child (re-parented orphans, runtime helpers whose
//! caller was first or gave up) is reaped here on SIGCHLD.
//!
//! Runtime calls run in forked helpers while the shim serves other
//! requests, so a container's new init or exec process can become our
//! child (its helper exited) before its watcher tracks it. While such a
//! call is in flight ([`Spawning::enter`]) nothing is reaped; the reaper
//! catches up once the last one is done.

use std::collections::HashSet;
use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

/// Pids whose exit a watcher is waiting for.
pub type Tracked = Arc<Mutex<HashSet<u32>>>;

/// Runtime calls in flight that may leave a new, not yet tracked child.
#[derive(Clone, Default)]
pub struct Spawning(Arc<SpawningInner>);

#[derive(Default)]
struct SpawningInner {
    count: AtomicUsize,
    done: Notify,
}

/// Held from before a runtime call that starts a process until that
/// process is tracked.
pub struct SpawnGuard(Spawning);

impl Spawning {
    pub fn enter(&self) -> SpawnGuard {
        self.0.count.fetch_add(1, Ordering::SeqCst);
        SpawnGuard(self.clone())
    }

    fn idle(&self) -> bool {
        self.0.count.load(Ordering::SeqCst) == 0
    }
}

impl Drop for SpawnGuard {
    fn drop(&mut self) {
        if self.0.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.0.done.notify_one();
        }
    }
}

pub fn spawn(tracked: Tracked, spawning: Spawning) -> std::io::Result<()> {
    let mut sigchld = signal(SignalKind::child())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                got = sigchld.recv() => if got.is_none() { return },
                () = spawning.0.done.notified() => {}
            }
            if spawning.idle() {
                reap_untracked(&tracked);
            }
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
