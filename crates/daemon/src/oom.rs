//! OOM events (SPEC B15): one watcher per live container on its memory
//! cgroup; every OOM kill the kernel counts is published once as an `oom`
//! event and marks the record `oom_killed`. When init exits, the exit
//! monitor first asks the watcher for a final count, so the OOM kill that
//! ended init is reported before the exit. A container in a VM has its
//! cgroup in the guest: its count comes from its shim's statistics,
//! asked every second, and at exit from the count the guest recorded.

use std::sync::Arc;
use std::time::Duration;

use berth_cgroups::OomWatch;
use berth_model::{ContainerId, Namespace};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use crate::events::{Kind, event};
use crate::manager::{Entry, Key, Manager, lock};

/// The most OOM kills one exit publishes as events (a count from a guest
/// is the guest's word).
const MAX_RECORDED: u64 = 100;

/// How often the OOM kills of a container in a VM are asked for.
const GUEST_POLL: Duration = Duration::from_secs(1);

/// A request for the watcher's last count; answered when it is published.
pub type Drain = oneshot::Sender<oneshot::Sender<()>>;

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
        let (drain_tx, mut drain) = oneshot::channel::<oneshot::Sender<()>>();
        *lock(&entry.oom_drain) = Some(drain_tx);
        let mgr = self.clone();
        tokio::spawn(async move {
            let (ns, id) = &key;
            loop {
                tokio::select! {
                    ready = afd.readable_mut() => {
                        let Ok(mut guard) = ready else { return };
                        let read = guard.get_inner_mut().read();
                        guard.clear_ready();
                        match read {
                            Ok(0) => {}
                            Ok(n) => mgr.record_oom(ns, id, n),
                            Err(_) => return,
                        }
                    }
                    reply = &mut drain => {
                        if let Ok(n) = afd.get_mut().read()
                            && n > 0
                        {
                            mgr.record_oom(ns, id, n);
                        }
                        if let Ok(reply) = reply {
                            let _ = reply.send(());
                        }
                        return;
                    }
                }
            }
        });
    }

    /// The OOM watcher of a container in a VM: its shim's count (the
    /// guest's cgroup), asked every [`GUEST_POLL`]; at exit, the count the
    /// guest recorded in the bundle. Kills are told once: a new container
    /// starts from none, one `recovered` from the count it has then.
    pub(crate) fn spawn_guest_oom_poll(self: &Arc<Self>, key: Key, entry: Arc<Entry>, recovered: bool) {
        let (drain_tx, mut drain) = oneshot::channel::<oneshot::Sender<()>>();
        *lock(&entry.oom_drain) = Some(drain_tx);
        // Not the entry: the watcher ends when the entry goes (its drain
        // sender with it).
        let (mgr, shim) = (self.clone(), entry.shim.clone());
        tokio::spawn(async move {
            let (ns, id) = &key;
            let count = || async { shim.stats(id).await.ok().map(|s| s.memory.oom_kills) };
            let mut told = match recovered {
                true => count().await.unwrap_or(0),
                false => 0,
            };
            let mut tell = |now: u64| {
                if now > told {
                    mgr.record_oom(ns, id, (now - told).min(MAX_RECORDED));
                    told = now;
                }
            };
            let mut tick = tokio::time::interval(GUEST_POLL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Some(now) = count().await {
                            tell(now);
                        }
                    }
                    reply = &mut drain => {
                        let file = mgr.cfg.bundle_dir(ns, id).join(berth_model::vm::OOM_KILLS_FILE);
                        if let Some(now) = std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse().ok()) {
                            tell(now);
                        }
                        let _ = std::fs::remove_file(&file);
                        if let Ok(reply) = reply {
                            let _ = reply.send(());
                        }
                        return;
                    }
                }
            }
        });
    }

    /// Publishes `n` OOM kills and marks the record.
    fn record_oom(&self, ns: &Namespace, id: &ContainerId, n: u64) {
        let rec = self.update(ns, id, |r| {
            r.oom_killed = true;
            Ok(())
        });
        if let Ok(rec) = rec {
            for _ in 0..n {
                if let Err(e) = self.publish(event(Kind::Oom, ns, id, "", rec.pid, None)) {
                    tracing::warn!(%ns, %id, "cannot record an OOM event: {e}");
                }
            }
        }
    }

    /// At exit: has the OOM watcher publish its last count and stop.
    pub(crate) async fn drain_oom(&self, entry: &Entry) {
        let Some(drain) = lock(&entry.oom_drain).take() else { return };
        let (reply, done) = oneshot::channel();
        if drain.send(reply).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), done).await;
        }
    }
}
