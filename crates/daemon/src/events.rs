//! The event bus (SPEC B22). Events are committed to the store's log, in
//! the transaction of the change they report, before they are sent here
//! (see `Manager::commit`); the bus only fans them out to live subscribers,
//! who resume after a gap from the log by sequence number.

pub use berth_model::EventKind as Kind;
use berth_model::{ContainerId, ExitStatus, Namespace};
pub use berth_store::Event;
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
/// nothing is missed or sent twice in between.
pub fn stream(mgr: &Manager, filter: Filter, since: Option<u64>, follow: bool) -> mpsc::Receiver<Result<Event>> {
    let (tx, out) = mpsc::channel(256);
    let mut live = follow.then(|| mgr.events.subscribe());
    let store_events = since.map(|after| {
        let mut last = after;
        let mut page = Vec::new();
        // Read synchronously now (the log is local and paged), so the
        // replay is consistent with the moment of subscription.
        loop {
            match mgr.store.events_since(last, REPLAY_PAGE) {
                Ok(evs) if evs.is_empty() => break Ok((page, last)),
                Ok(evs) => {
                    last = evs.last().map(|e| e.seq).unwrap_or(last);
                    page.extend(evs.into_iter().filter(|e| filter.wants(e)));
                }
                Err(e) => break Err(Error::from(e)),
            }
        }
    });
    tokio::spawn(async move {
        let mut last = 0;
        match store_events {
            Some(Ok((replay, upto))) => {
                last = upto;
                for ev in replay {
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            None => {}
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
    out
}
