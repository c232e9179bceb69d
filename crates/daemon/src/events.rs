//! The event bus (SPEC B22). Events are committed to the store's log, in
//! the transaction of the change they report, before they are sent here
//! (see `Manager::commit`); the bus only fans them out to live subscribers,
//! who resume after a gap from the log by sequence number.

pub use berth_model::EventKind as Kind;
use std::sync::Arc;

use berth_model::{ContainerId, ExitStatus, Namespace};
pub use berth_store::{Event, RETAINED_EVENTS};
use tokio::sync::{broadcast, mpsc};

use crate::error::{Error, Result};
use crate::manager::Manager;

/// Events read from the log per store transaction during a replay.
const REPLAY_PAGE: usize = 1024;

/// Cheap to clone: clones send into the same stream.
#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Event>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus { tx: broadcast::channel(4096).0 }
    }
}

impl Bus {
    /// Sends a committed event to the current subscribers.
    pub fn send(&self, ev: Event) {
        tracing::debug!(seq = ev.seq, kind = ev.kind.as_str(), ns = %ev.namespace, id = %ev.id, "event");
        // No subscribers is fine.
        let _ = self.tx.send(ev);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

/// A new event, stamped now; the store assigns its sequence number.
pub fn event(
    kind: Kind,
    namespace: &Namespace,
    id: &ContainerId,
    exec_id: &str,
    pid: u32,
    exit: Option<ExitStatus>,
) -> Event {
    Event {
        seq: 0,
        kind,
        namespace: namespace.clone(),
        id: id.clone(),
        exec_id: exec_id.to_string(),
        timestamp_ns: crate::now_ns(),
        pid,
        exit,
        vm: None,
    }
}

/// Which events a subscriber wants; empty parts match everything.
pub struct Filter {
    pub namespace: Option<Namespace>,
    pub kinds: Vec<Kind>,
    pub id: Option<ContainerId>,
}

impl Filter {
    fn wants(&self, ev: &Event) -> bool {
        self.namespace.as_ref().is_none_or(|n| *n == ev.namespace)
            && (self.kinds.is_empty() || self.kinds.contains(&ev.kind))
            && self.id.as_ref().is_none_or(|i| *i == ev.id)
    }
}

/// A subscription: the logged events after `since` (if given), then, if
/// `follow`, live ones. The live feed is joined before the log is read and
/// everything up to the last replayed sequence number is skipped, so
/// nothing is missed or sent twice in between. Asking for events that were
/// pruned is refused rather than answered with a gap.
pub fn stream(
    mgr: &Arc<Manager>,
    filter: Filter,
    since: Option<u64>,
    follow: bool,
) -> Result<mpsc::Receiver<Result<Event>>> {
    let (tx, out) = mpsc::channel(256);
    // Live only: after the newest event committed before joining the feed
    // (read first, so no event joined afterwards is skipped).
    let mut last = match since {
        Some(after) => {
            let oldest = mgr.store.events_since(0, 1)?.first().map(|e| e.seq);
            if let Some(oldest) = oldest.filter(|o| after.saturating_add(1) < *o) {
                return Err(Error::FailedPrecondition(format!(
                    "events before {oldest} were pruned (the newest {RETAINED_EVENTS} are kept); resume with since={}",
                    oldest - 1
                )));
            }
            after
        }
        None => mgr.store.last_seq()?,
    };
    let mut live = follow.then(|| mgr.events.subscribe());
    let mgr = mgr.clone();
    tokio::spawn(async move {
        // The replay, page by page.
        while since.is_some() {
            let page = match mgr.store.events_since(last, REPLAY_PAGE) {
                Ok(page) if page.is_empty() => break,
                Ok(page) => page,
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            };
            // Sequence numbers are contiguous: a jump means the log was
            // pruned under a slow reader.
            if page[0].seq != last + 1 && last > 0 {
                let _ = tx
                    .send(Err(Error::FailedPrecondition(format!("events after {last} were pruned during the replay"))))
                    .await;
                return;
            }
            for ev in page {
                last = ev.seq;
                if filter.wants(&ev) && tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
        }
        let Some(live) = live.as_mut() else { return };
        loop {
            let ev = match live.recv().await {
                Ok(ev) => ev,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = tx.send(Err(Error::Lagged(last))).await;
                    return;
                }
                Err(_) => return,
            };
            if ev.seq <= last {
                continue;
            }
            last = ev.seq;
            if filter.wants(&ev) && tx.send(Ok(ev)).await.is_err() {
                return;
            }
        }
    });
    Ok(out)
}
