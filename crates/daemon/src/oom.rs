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

/// The most OOM kills of one run of a container in a VM published as
/// events (a count from a guest is the guest's word).
const MAX_RECORDED: u64 = 100;

/// How often the OOM kills of a container in a VM are asked for: each ask
/// is a Stats call the guest's shim answers with a forked helper.
const GUEST_POLL: Duration = Duration::from_secs(2);
/// How long one ask may take.
const GUEST_POLL_CALL: Duration = Duration::from_millis(500);
/// Failed asks in a row after which a VM's OOM watcher stops asking (a
/// shim gone or hung); the count at the exit is still told.
const GUEST_POLL_FAILURES: u32 = 15;

/// A guest's OOM kill count as told: the count it started from (unknown
/// until the first answer for a container found again at recovery) and
/// the kills told since, at most [`MAX_RECORDED`].
struct GuestCount {
    base: Option<u64>,
    told: u64,
}

impl GuestCount {
    /// The kills to tell for the guest's count `now`.
    fn new_kills(&mut self, now: u64) -> u64 {
        let base = *self.base.get_or_insert(now);
        let new = now.saturating_sub(base).min(MAX_RECORDED).saturating_sub(self.told);
        self.told += new;
        new
    }
}

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
    /// guest recorded in the bundle. Kills are told once, at most
    /// [`MAX_RECORDED`] in all (the count is the guest's word): a new
    /// container's from none, a `recovered` one's from the first count it
    /// gives then. It stops asking after the shim failed to answer
    /// [`GUEST_POLL_FAILURES`] times in a row, and ends at the exit or when
    /// the entry goes.
    pub(crate) fn spawn_guest_oom_poll(self: &Arc<Self>, key: Key, entry: Arc<Entry>, recovered: bool) {
        let (drain_tx, mut drain) = oneshot::channel::<oneshot::Sender<()>>();
        *lock(&entry.oom_drain) = Some(drain_tx);
        // Not the entry: the watcher ends when the entry goes (its drain
        // sender with it).
        let (mgr, shim) = (self.clone(), entry.shim.clone());
        tokio::spawn(async move {
            let (ns, id) = &key;
            let mut told = GuestCount { base: (!recovered).then_some(0), told: 0 };
            let mut tick = tokio::time::interval(GUEST_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failures = 0;
            loop {
                let reply = tokio::select! {
                    reply = &mut drain => reply,
                    _ = tick.tick(), if failures < GUEST_POLL_FAILURES => {
                        // Never longer than a drain may wait (drain_oom).
                        let count = tokio::time::timeout(GUEST_POLL_CALL, shim.stats(id)).await;
                        match count {
                            Ok(Ok(stats)) => {
                                failures = 0;
                                mgr.record_oom(ns, id, told.new_kills(stats.memory.oom_kills));
                            }
                            _ => failures += 1,
                        }
                        continue;
                    }
                };
                let file = mgr.cfg.bundle_dir(ns, id).join(berth_model::vm::OOM_KILLS_FILE);
                if let Some(now) = std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse().ok()) {
                    mgr.record_oom(ns, id, told.new_kills(now));
                }
                let _ = std::fs::remove_file(&file);
                if let Ok(reply) = reply {
                    let _ = reply.send(());
                }
                return;
            }
        });
    }

    /// Publishes `n` OOM kills and marks the record.
    fn record_oom(&self, ns: &Namespace, id: &ContainerId, n: u64) {
        if n == 0 {
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guests_kills_are_told_once_and_at_most_the_cap() {
        let mut fresh = GuestCount { base: Some(0), told: 0 };
        assert_eq!((fresh.new_kills(0), fresh.new_kills(2), fresh.new_kills(2), fresh.new_kills(3)), (0, 2, 0, 1));
        // A count that goes back (a lying guest) tells nothing.
        assert_eq!(fresh.new_kills(1), 0);
        // However often it grows, no more than the cap in all.
        let told: u64 = (1..50).map(|n| fresh.new_kills(n * 1000)).sum();
        assert_eq!(told + 3, MAX_RECORDED);
        // Found again at recovery: what it had is not told again.
        let mut found = GuestCount { base: None, told: 0 };
        assert_eq!((found.new_kills(5), found.new_kills(5), found.new_kills(7)), (0, 0, 2));
    }
}
