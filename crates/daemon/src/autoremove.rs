//! Auto-remove (`run --rm`), a property of the container record done by
//! berthd: once the exit is recorded (and again at startup, for a stopped
//! container it finds), the container is removed after the clients that
//! follow its output or terminal have drained it (at most
//! [`FOLLOWER_GRACE`]). Its exit is kept for a `Wait` that arrives after
//! the removal. A container whose followers all leave before it was ever
//! started (its `run` client died between create and start) is removed too.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use berth_model::{ContainerId, ExitStatus, Namespace, State};
use berth_store::ContainerRecord;
use tokio::sync::OwnedRwLockReadGuard;

use crate::error::Error;
use crate::manager::{Key, Manager, lock};

/// How long an auto-removal waits for followers of the container's output.
const FOLLOWER_GRACE: Duration = Duration::from_secs(30);
/// Exits of auto-removed containers kept for late waiters.
const REMOVED_KEPT: usize = 1024;

/// The exits of the last auto-removed containers: a client that waits
/// after the removal (a `run --rm` of a short command) still gets its code.
#[derive(Default)]
pub(crate) struct Removed {
    exits: HashMap<Key, ExitStatus>,
    order: VecDeque<Key>,
}

impl Removed {
    fn insert(&mut self, ns: &Namespace, id: &ContainerId, exit: ExitStatus) {
        let key = (ns.clone(), id.clone());
        if self.exits.insert(key.clone(), exit).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > REMOVED_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.exits.remove(&old);
            }
        }
    }

    pub(crate) fn exit(&self, ns: &Namespace, id: &ContainerId) -> Option<ExitStatus> {
        self.exits.get(&(ns.clone(), id.clone())).copied()
    }

    /// A new container of that id: the old exit no longer answers for it.
    pub(crate) fn forget(&mut self, ns: &Namespace, id: &ContainerId) {
        let key = (ns.clone(), id.clone());
        if self.exits.remove(&key).is_some() {
            self.order.retain(|k| k != &key);
        }
    }
}

/// A client following init's output (logs -f, attach to init).
pub struct Follower {
    guard: Option<OwnedRwLockReadGuard<()>>,
    mgr: Arc<Manager>,
    key: Key,
}

impl Drop for Follower {
    fn drop(&mut self) {
        drop(self.guard.take());
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (mgr, (ns, id)) = (self.mgr.clone(), self.key.clone());
        rt.spawn(async move { mgr.remove_if_abandoned(&ns, &id).await });
    }
}

impl Manager {
    /// Registers a follower of init's output, if the container is live.
    pub fn follow(self: &Arc<Self>, ns: &Namespace, id: &ContainerId) -> Option<Follower> {
        let guard = self.entry(ns, id).ok()?.followers.clone().try_read_owned().ok()?;
        Some(Follower { guard: Some(guard), mgr: self.clone(), key: (ns.clone(), id.clone()) })
    }

    /// Removes a stopped auto-remove container once the clients following
    /// its output are done, keeping its exit for late waiters.
    pub(crate) fn auto_remove(self: &Arc<Self>, rec: ContainerRecord) {
        let mgr = self.clone();
        tokio::spawn(async move {
            let (ns, id) = (&rec.namespace, &rec.id);
            if let Ok(entry) = mgr.entry(ns, id) {
                let _ = tokio::time::timeout(FOLLOWER_GRACE, entry.followers.write()).await;
            }
            let exit = rec.exit.unwrap_or_else(|| ExitStatus::unknown(crate::now_ns()));
            lock(&mgr.removed).insert(ns, id, exit);
            mgr.remove_generation(&rec).await;
        });
    }

    /// Removes exactly the container `rec` describes: the user may have
    /// removed it and created another of the same id meanwhile.
    async fn remove_generation(&self, rec: &ContainerRecord) {
        let (ns, id) = (&rec.namespace, &rec.id);
        match self.delete_created_at(ns, id, true, Some(rec.created_at_ns)).await {
            Ok(_) => tracing::info!(%ns, %id, "auto-removed"),
            Err(Error::NotFound(_)) => {
                if self.get(ns, id).is_ok() {
                    lock(&self.removed).forget(ns, id);
                }
            }
            Err(e) => tracing::warn!(%ns, %id, "auto-remove failed: {e}; `berth rm` retries it"),
        }
    }

    /// After a follower left: an auto-remove container that was never
    /// started and has no follower left was abandoned by its `run` client.
    async fn remove_if_abandoned(&self, ns: &Namespace, id: &ContainerId) {
        let Ok(rec) = self.get(ns, id) else { return };
        if !rec.auto_remove || rec.state != State::Created || rec.started_at_ns != 0 {
            return;
        }
        let Ok(entry) = self.entry(ns, id) else { return };
        if let Ok(_alone) = entry.followers.try_write() {
            tracing::info!(%ns, %id, "removing an auto-remove container whose client left before its start");
            self.remove_generation(&rec).await;
        }
    }
}
