//! The durable event log (SPEC B22): every event gets the next sequence
//! number in the transaction that records the change it reports, so the
//! log survives berthd crashes with no gap and no duplicate. The oldest
//! events beyond [`RETAINED_EVENTS`] are pruned.

use berth_model::vm::VmInfo;
use berth_model::{ContainerId, EventKind, ExitStatus, Namespace};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::db::{META, db_err, decode};
use crate::{Store, StoreError};

pub(crate) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const LAST_SEQ: &str = "last_event_seq";
/// How many of the newest events the log keeps.
pub const RETAINED_EVENTS: u64 = 100_000;
/// Pruning runs once every this many events.
const PRUNE_EVERY: u64 = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Assigned by the store: 1, 2, 3 … across berthd restarts.
    pub seq: u64,
    pub kind: EventKind,
    pub namespace: Namespace,
    pub id: ContainerId,
    /// Empty unless the event is about an exec.
    pub exec_id: String,
    pub timestamp_ns: u64,
    pub pid: u32,
    pub exit: Option<ExitStatus>,
    /// The VM of a create, start or restart in one (runtime `vm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmInfo>,
}

/// Appends `ev` with the next sequence number inside `tx`.
pub(crate) fn append(tx: &WriteTransaction, mut ev: Event) -> Result<Event, StoreError> {
    let mut meta = tx.open_table(META).map_err(db_err)?;
    let seq = meta.get(LAST_SEQ).map_err(db_err)?.map(|v| v.value()).unwrap_or(0) + 1;
    meta.insert(LAST_SEQ, seq).map_err(db_err)?;
    ev.seq = seq;
    let bytes = serde_json::to_vec(&ev).map_err(db_err)?;
    let mut t = tx.open_table(EVENTS).map_err(db_err)?;
    t.insert(seq, bytes.as_slice()).map_err(db_err)?;
    if seq % PRUNE_EVERY == 0 && seq > RETAINED_EVENTS {
        t.retain_in(..=seq - RETAINED_EVENTS, |_, _| false).map_err(db_err)?;
    }
    Ok(ev)
}

impl Store {
    /// Up to `limit` events with a sequence number above `after`, oldest first.
    pub fn events_since(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let tx = self.db().begin_read().map_err(db_err)?;
        let t = tx.open_table(EVENTS).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.range(after.saturating_add(1)..).map_err(db_err)?.take(limit) {
            let (k, v) = item.map_err(db_err)?;
            out.push(decode(&k.value().to_string(), v.value())?);
        }
        Ok(out)
    }

    /// How many events the log holds (older ones are pruned).
    pub fn event_count(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        let tx = self.db().begin_read().map_err(db_err)?;
        tx.open_table(EVENTS).map_err(db_err)?.len().map_err(db_err)
    }

    /// The sequence number of the newest event (0: none yet).
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        let tx = self.db().begin_read().map_err(db_err)?;
        let meta = tx.open_table(META).map_err(db_err)?;
        Ok(meta.get(LAST_SEQ).map_err(db_err)?.map(|v| v.value()).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Write;

    fn event(id: &str) -> Event {
        Event {
            seq: 0,
            kind: EventKind::Exit,
            namespace: Namespace::new("default").unwrap(),
            id: ContainerId::new(id).unwrap(),
            exec_id: String::new(),
            timestamp_ns: 1,
            pid: 2,
            exit: Some(ExitStatus { code: 3, exited_at_ns: 4 }),
            vm: None,
        }
    }

    #[test]
    fn sequence_numbers_continue_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let s = Store::open(&path).unwrap();
            for id in ["a", "b"] {
                s.write(Write { event: Some(event(id)), ..Default::default() }).unwrap();
            }
        }
        let s = Store::open(&path).unwrap();
        let c = s.write(Write { event: Some(event("c")), ..Default::default() }).unwrap().unwrap();
        assert_eq!(c.seq, 3);
        assert_eq!(s.last_seq().unwrap(), 3);
        let all = s.events_since(0, 10).unwrap();
        assert_eq!(all.iter().map(|e| (e.seq, e.id.as_str())).collect::<Vec<_>>(), [(1, "a"), (2, "b"), (3, "c")]);
        assert_eq!(all[0], Event { seq: 1, ..event("a") });
        assert_eq!(s.events_since(1, 1).unwrap()[0].seq, 2, "after and limit");
        assert!(s.events_since(3, 10).unwrap().is_empty());
    }

    #[test]
    fn old_events_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("meta.redb")).unwrap();
        let total = RETAINED_EVENTS + PRUNE_EVERY;
        let tx = s.db().begin_write().unwrap();
        for _ in 0..total {
            append(&tx, event("x")).unwrap();
        }
        tx.commit().unwrap();
        // The last prune ran at the last multiple of PRUNE_EVERY.
        assert_eq!(s.event_count().unwrap(), total - (total / PRUNE_EVERY * PRUNE_EVERY - RETAINED_EVENTS));
        let pruned_at = total / PRUNE_EVERY * PRUNE_EVERY;
        let oldest = s.events_since(0, 1).unwrap()[0].seq;
        assert_eq!(oldest, pruned_at - RETAINED_EVENTS + 1);
        assert_eq!(s.last_seq().unwrap(), total);
    }
}
