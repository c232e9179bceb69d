//! OOM events (SPEC B15): one watcher per live container on its memory
//! cgroup; every OOM kill is published as an `oom` event and marks the
//! record `oom_killed`. The watcher ends when the container exits.

use std::sync::Arc;

use berth_cgroups::{OomWatch, oom_killed};
use berth_model::{ContainerId, Namespace};
use tokio::io::unix::AsyncFd;

use crate::events::Kind;
use crate::manager::{Entry, Key, Manager};

impl Manager {
    pub(crate) fn spawn_oom_watch(self: &Arc<Self>, key: Key, entry: Arc<Entry>, cgroup: String) {
        let watch = match OomWatch::new(&self.cgroups, &cgroup) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(ns = %key.0, id = %key.1, "no OOM notifications: {e}");
                return;
            }
        };
        // SAFETY: the AsyncFd owns the watch, and with it the descriptor.
        let mut afd = match unsafe { AsyncFd::register(watch) } {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(ns = %key.0, id = %key.1, "no OOM notifications: {e}");
                return;
            }
        };
        let mgr = self.clone();
        tokio::spawn(async move {
            let mut exit = entry.exit.subscribe();
            loop {
                tokio::select! {
                    ready = afd.readable_mut() => {
                        let Ok(mut guard) = ready else { return };
                        let read = guard.get_inner_mut().read();
                        guard.clear_ready();
                        match read {
                            Ok(0) => {}
                            Ok(n) => mgr.record_oom(&key.0, &key.1, n),
                            Err(_) => return,
                        }
                    }
                    _ = exit.wait_for(Option::is_some) => return,
                }
            }
        });
    }

    /// Publishes `n` OOM kills and marks the record.
    pub(crate) fn record_oom(&self, ns: &Namespace, id: &ContainerId, n: u64) {
        let rec = self.update(ns, id, |r| {
            r.oom_killed = true;
            Ok(())
        });
        if let Ok(rec) = rec {
            for _ in 0..n {
                self.events.publish(Kind::Oom, ns, id, rec.pid, None);
            }
        }
    }

    /// At exit: an OOM kill the watcher has not reported yet (e.g. the one
    /// that killed init) is reported now, before the exit.
    pub(crate) fn check_oom_at_exit(&self, ns: &Namespace, id: &ContainerId, cgroup: &str, reported: bool) {
        if !reported && oom_killed(&self.cgroups, cgroup) {
            self.record_oom(ns, id, 1);
        }
    }
}
