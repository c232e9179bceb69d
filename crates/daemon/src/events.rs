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

/// Events the live feed holds for its slowest subscriber. Each slot is
/// allocated up front (~190 bytes): 4,096 of them were 0.75 MB of
/// berthd's heap. A subscriber that falls further behind catches up from
/// the log (`stream`).
const FEED_SLOTS: usize = 256;

/// Cheap to clone: clones send into the same stream.
#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Event>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus { tx: broadcast::channel(FEED_SLOTS).0 }
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
#[derive(Default)]
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
    let last = match since {
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
    let live = follow.then(|| mgr.events.subscribe());
    let mgr = mgr.clone();
    let log = move |after, n| mgr.store.events_since(after, n).map_err(Error::from);
    tokio::spawn(Follower { log, filter, last, tx }.run(since.is_some(), live));
    Ok(out)
}

/// What one subscription sends: the log after `last` (read through `log`,
/// page by page), then the live feed.
struct Follower<L> {
    log: L,
    filter: Filter,
    /// The newest event sent (or skipped by the filter).
    last: u64,
    tx: mpsc::Sender<Result<Event>>,
}

impl<L: Fn(u64, usize) -> Result<Vec<Event>>> Follower<L> {
    /// The log first if `replay`, then the live feed. Every event on the
    /// feed was committed to the log first, so a gap in the feed's
    /// sequence numbers is read from the log: after the feed ran past this
    /// reader (a slow reader misses nothing, and the feed can stay small),
    /// or for an event committed after `last` was read but sent before the
    /// feed was joined.
    async fn run(mut self, replay: bool, live: Option<broadcast::Receiver<Event>>) {
        if replay && !self.replay().await {
            return;
        }
        let Some(mut live) = live else { return };
        loop {
            let ev = match live.recv().await {
                Ok(ev) => ev,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::info!(after = self.last, missed, "a slow event subscriber catches up from the log");
                    continue;
                }
                Err(_) => return,
            };
            if ev.seq > self.last + 1 && !self.replay().await {
                return;
            }
            if ev.seq > self.last && !self.send(ev).await {
                return;
            }
        }
    }

    /// Sends the logged events after `last`; false when the stream ended
    /// (the reader left, or the log failed or was pruned under it, which
    /// the reader is told).
    async fn replay(&mut self) -> bool {
        loop {
            let page = match (self.log)(self.last, REPLAY_PAGE) {
                Ok(page) if page.is_empty() => return true,
                Ok(page) => page,
                Err(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return false;
                }
            };
            // Sequence numbers are contiguous: a jump means the log was
            // pruned under a slow reader.
            if page[0].seq != self.last + 1 && self.last > 0 {
                let msg = format!("events after {} were pruned during the replay", self.last);
                let _ = self.tx.send(Err(Error::FailedPrecondition(msg))).await;
                return false;
            }
            for ev in page {
                if !self.send(ev).await {
                    return false;
                }
            }
        }
    }

    /// Moves `last` to the event and sends it if wanted; false when the
    /// reader left.
    async fn send(&mut self, ev: Event) -> bool {
        self.last = ev.seq;
        !self.filter.wants(&ev) || self.tx.send(Ok(ev)).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged(seq: u64) -> Event {
        let ns = Namespace::new("default").unwrap();
        let id = ContainerId::new(format!("c{seq}")).unwrap();
        Event { seq, ..event(Kind::Pause, &ns, &id, "", 0, None) }
    }

    /// A reader slower than the live feed is caught up from the log:
    /// every event once, in order, although the feed dropped most.
    #[tokio::test]
    async fn a_subscriber_the_feed_ran_past_catches_up_from_the_log() {
        let log: Vec<Event> = (1..=40).map(logged).collect();
        let (feed, live) = broadcast::channel(4);
        let (tx, mut rx) = mpsc::channel(1);
        // The first 30 are committed and sent before the reader runs.
        for ev in &log[..30] {
            let _ = feed.send(ev.clone());
        }
        let committed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(30));
        let upto = committed.clone();
        let read = move |after: u64, n: usize| {
            let upto = upto.load(std::sync::atomic::Ordering::SeqCst);
            Ok(log.iter().filter(|e| e.seq > after && e.seq <= upto).take(n).cloned().collect())
        };
        let follower = Follower { log: read, filter: Filter::default(), last: 0, tx };
        let task = tokio::spawn(follower.run(false, Some(live)));
        let mut seen = Vec::new();
        while seen.len() < 30 {
            seen.push(rx.recv().await.unwrap().unwrap().seq);
        }
        // Then the rest, live.
        committed.store(40, std::sync::atomic::Ordering::SeqCst);
        for seq in 31..=40 {
            let _ = feed.send(logged(seq));
            seen.push(rx.recv().await.unwrap().unwrap().seq);
        }
        assert_eq!(seen, (1..=40).collect::<Vec<_>>());
        drop(feed);
        task.await.unwrap();
    }

    /// A gap in the log under a catching-up reader is reported, not skipped.
    #[tokio::test]
    async fn a_log_pruned_under_a_slow_reader_ends_the_stream_with_an_error() {
        let (feed, live) = broadcast::channel(2);
        for seq in 1..=10 {
            let _ = feed.send(logged(seq));
        }
        let read = |after: u64, _| Ok(if after < 8 { vec![logged(8)] } else { Vec::new() });
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(Follower { log: read, filter: Filter::default(), last: 3, tx }.run(false, Some(live)));
        let err = rx.recv().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("events after 3 were pruned"), "{err}");
        assert!(rx.recv().await.is_none());
        drop(feed);
    }
}
