//! The event bus (SPEC B22): typed, timestamped, sequence-numbered records of
//! every state change, fanned out to subscribers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use berth_model::{ContainerId, ExitStatus, Namespace};
use tokio::sync::broadcast;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Create,
    Start,
    Exit,
    Oom,
    Pause,
    Resume,
    ExecAdded,
    ExecStarted,
    Delete,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Create => "create",
            Kind::Start => "start",
            Kind::Exit => "exit",
            Kind::Oom => "oom",
            Kind::Pause => "pause",
            Kind::Resume => "resume",
            Kind::ExecAdded => "exec-added",
            Kind::ExecStarted => "exec-started",
            Kind::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub seq: u64,
    pub kind: Kind,
    pub namespace: Namespace,
    pub id: ContainerId,
    /// Empty unless the event is about an exec.
    pub exec_id: String,
    pub timestamp_ns: u64,
    pub pid: u32,
    pub exit: Option<ExitStatus>,
}

/// Cheap to clone: clones publish into the same stream and sequence.
#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Event>,
    seq: Arc<AtomicU64>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus { tx: broadcast::channel(4096).0, seq: Arc::new(AtomicU64::new(0)) }
    }
}

impl Bus {
    pub fn publish(&self, kind: Kind, namespace: &Namespace, id: &ContainerId, pid: u32, exit: Option<ExitStatus>) {
        self.publish_exec(kind, namespace, id, "", pid, exit)
    }

    pub fn publish_exec(
        &self,
        kind: Kind,
        namespace: &Namespace,
        id: &ContainerId,
        exec_id: &str,
        pid: u32,
        exit: Option<ExitStatus>,
    ) {
        let ev = Event {
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
            kind,
            namespace: namespace.clone(),
            id: id.clone(),
            exec_id: exec_id.to_string(),
            timestamp_ns: crate::now_ns(),
            pid,
            exit,
        };
        tracing::debug!(seq = ev.seq, kind = kind.as_str(), ns = %namespace, id = %id, "event");
        // No subscribers is fine.
        let _ = self.tx.send(ev);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
