//! The container manager: owns the records, the shim connections and the
//! exit monitors. Every state change goes through [`Manager::update`], which
//! applies the model's transition table and commits to the store before
//! anyone is told (SPEC B1, B18). Create is in `create.rs`, delete in
//! `delete.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use berth_cgroups::Hierarchies;
use berth_model::{ContainerId, ExitStatus, Namespace, Op, State};
use berth_store::{ContainerRecord, Store};
use tokio::sync::watch;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::events::{Bus, Kind};
use crate::exec::ExecInfo;
use crate::shim::{self, ShimClient};

pub type Key = (Namespace, ContainerId);

/// A live container's runtime handles.
pub struct Entry {
    pub shim: ShimClient,
    /// Serialises user operations on this container.
    pub op: tokio::sync::Mutex<()>,
    pub exit: watch::Sender<Option<ExitStatus>>,
    /// Held while a start is being recorded, so an exit is never recorded
    /// (or published) before the start it follows.
    pub starting: tokio::sync::Mutex<()>,
    /// Asks the OOM watcher for its final count (see `oom.rs`).
    pub oom_drain: Mutex<Option<crate::oom::Drain>>,
    /// Exec processes by exec id (kept in memory, like the shim's).
    pub execs: Mutex<HashMap<String, Arc<ExecInfo>>>,
}

impl Entry {
    pub fn new(shim: ShimClient, exit: Option<ExitStatus>) -> Entry {
        Entry {
            shim,
            op: Default::default(),
            exit: watch::channel(exit).0,
            starting: Default::default(),
            oom_drain: Mutex::default(),
            execs: Mutex::default(),
        }
    }
}

pub struct Manager {
    pub cfg: Config,
    pub store: Store,
    pub events: Bus,
    pub cgroups: Hierarchies,
    pub(crate) entries: Mutex<HashMap<Key, Arc<Entry>>>,
    /// Ids being created right now (reserved against duplicates).
    pub(crate) creating: Mutex<HashSet<Key>>,
    /// Guards read-modify-write of records.
    records: Mutex<()>,
}

/// Whether the record's shim process still exists (the same binary serving
/// the same container, not a recycled pid).
fn shim_alive(rec: &ContainerRecord) -> bool {
    let args = crate::control::cmdline(rec.shim.pid);
    let is_shim = args.first().is_some_and(|a| a.ends_with("berth-shim"));
    is_shim && args.windows(2).any(|w| w[0] == "--id" && w[1] == rec.id.as_str())
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Manager {
    pub fn new(cfg: Config, store: Store, cgroups: Hierarchies) -> Manager {
        Manager {
            cfg,
            store,
            events: Bus::default(),
            cgroups,
            entries: Mutex::default(),
            creating: Mutex::default(),
            records: Mutex::default(),
        }
    }

    pub fn get(&self, ns: &Namespace, id: &ContainerId) -> Result<ContainerRecord> {
        self.store.get(ns, id)?.ok_or_else(|| Error::NotFound(id.to_string()))
    }

    pub fn list(&self, ns: Option<&Namespace>) -> Result<Vec<ContainerRecord>> {
        Ok(self.store.list(ns)?)
    }

    pub(crate) fn entry(&self, ns: &Namespace, id: &ContainerId) -> Result<Arc<Entry>> {
        lock(&self.entries)
            .get(&(ns.clone(), id.clone()))
            .cloned()
            .ok_or_else(|| Error::FailedPrecondition(format!("container {id} has no live shim")))
    }

    pub(crate) fn insert_entry(&self, key: Key, entry: Arc<Entry>) {
        lock(&self.entries).insert(key, entry);
    }

    pub(crate) fn remove_entry(&self, key: &Key) {
        lock(&self.entries).remove(key);
    }

    /// Read-modify-write of one record, committed before it returns.
    pub(crate) fn update(
        &self,
        ns: &Namespace,
        id: &ContainerId,
        f: impl FnOnce(&mut ContainerRecord) -> Result<()>,
    ) -> Result<ContainerRecord> {
        let _g = lock(&self.records);
        let mut rec = self.get(ns, id)?;
        f(&mut rec)?;
        self.store.put(&rec)?;
        Ok(rec)
    }

    pub async fn start(&self, ns: &Namespace, id: &ContainerId) -> Result<ContainerRecord> {
        self.get(ns, id)?;
        let entry = self.entry(ns, id)?;
        let _op = entry.op.lock().await;
        self.get(ns, id)?.state.apply(Op::Start)?;
        let _starting = entry.starting.lock().await;
        let started = tokio::time::timeout(self.cfg.start_timeout, entry.shim.start(id, "")).await;
        let pid = match started {
            Ok(r) => r?,
            Err(_) => {
                // The shim may be stuck in the very start that timed out:
                // kill the container's processes directly.
                let cgroup = self.get(ns, id)?.cgroup;
                for pid in self.cgroups.procs(&cgroup).unwrap_or_default() {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
                }
                return Err(Error::DeadlineExceeded(format!(
                    "start of {id} did not complete within {:?}; it was killed",
                    self.cfg.start_timeout
                )));
            }
        };
        let rec = self.update(ns, id, |r| {
            r.state = r.state.apply(Op::Start)?;
            r.pid = pid;
            Ok(())
        })?;
        self.events.publish(Kind::Start, ns, id, pid, None);
        Ok(rec)
    }

    /// Signals init, or the exec `exec_id` when it is not empty (SPEC B7).
    pub async fn kill(&self, ns: &Namespace, id: &ContainerId, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        // Standard signals only: the runtimes cannot send real-time ones yet.
        if signal == 0 || signal > 31 {
            return Err(Error::InvalidArgument(format!("invalid signal {signal}")));
        }
        let rec = self.get(ns, id)?;
        if !exec_id.is_empty() {
            let entry = self.entry(ns, id)?;
            self.exec_info(&entry, exec_id)?;
            return entry.shim.kill(id, exec_id, signal, all).await;
        }
        if matches!(rec.state, State::Stopped | State::Deleted) {
            return Err(Error::Finished(id.to_string()));
        }
        self.entry(ns, id)?.shim.kill(id, "", signal, all).await
    }

    /// Waits for init to exit; every caller gets the same status (SPEC B5).
    pub async fn wait(&self, ns: &Namespace, id: &ContainerId) -> Result<ExitStatus> {
        let rec = self.get(ns, id)?;
        if let Some(exit) = rec.exit {
            return Ok(exit);
        }
        let mut rx = self.entry(ns, id)?.exit.subscribe();
        if let Ok(status) = rx.wait_for(Option::is_some).await
            && let Some(status) = *status
        {
            return Ok(status);
        }
        // The entry went away (e.g. cleaned up after its shim died): the
        // record has the exit if one was recorded.
        self.store
            .get(ns, id)?
            .and_then(|r| r.exit)
            .ok_or_else(|| Error::FailedPrecondition(format!("container {id} was removed while waiting")))
    }

    /// Records init's exit — store first, then the event (SPEC B4, B18).
    pub(crate) fn record_exit(&self, ns: &Namespace, id: &ContainerId, status: ExitStatus) -> Result<()> {
        let rec = self.update(ns, id, |r| {
            r.state = r.state.apply(Op::Exit)?;
            r.exit = Some(status);
            Ok(())
        })?;
        self.events.publish(Kind::Exit, ns, id, rec.pid, Some(status));
        Ok(())
    }

    /// Watches a container's init through its shim and records the exit
    /// exactly once: store first, then event, then waiters (SPEC B4).
    pub(crate) fn spawn_monitor(self: &Arc<Self>, key: Key, entry: Arc<Entry>) {
        let mgr = self.clone();
        tokio::spawn(async move {
            let (ns, id) = &key;
            let status = match entry.shim.wait(id, "").await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%ns, %id, "lost shim while waiting: {e}");
                    let _ = mgr.update(ns, id, |r| {
                        r.state = r.state.apply(Op::LoseShim)?;
                        Ok(())
                    });
                    return;
                }
            };
            // A start still being recorded goes first.
            let _started = entry.starting.lock().await;
            mgr.drain_oom(&entry).await;
            if let Err(e) = mgr.record_exit(ns, id, status) {
                tracing::warn!(%ns, %id, "cannot record exit: {e}");
            }
            entry.exit.send_replace(Some(status));
        });
    }

    /// Rebuilds in-memory state after a daemon start: reconnects to the
    /// shim of every container that still has one. Containers whose shim is
    /// gone while they ran become `unknown` (full recovery comes with the
    /// recovery work).
    pub async fn reload(self: &Arc<Self>) -> Result<()> {
        for rec in self.store.list(None)? {
            let key = (rec.namespace.clone(), rec.id.clone());
            match shim::connect(&rec.shim.socket, rec.shim.pid).await {
                Ok(client) => {
                    let entry = Arc::new(Entry::new(client, rec.exit));
                    self.insert_entry(key.clone(), entry.clone());
                    if rec.exit.is_none() {
                        self.spawn_oom_watch(key.clone(), entry.clone(), rec.cgroup.clone());
                        self.spawn_monitor(key, entry);
                    }
                }
                Err(e) if rec.state != State::Stopped && shim_alive(&rec) => {
                    // Alive but not answering: never clean up under a live
                    // shim (containerd#13784); it stays `unknown` until it
                    // answers again or is removed with force.
                    tracing::warn!(ns = %rec.namespace, id = %rec.id, "shim alive but unreachable: {e}");
                    self.update(&rec.namespace, &rec.id, |r| {
                        if r.state != State::Unknown {
                            r.state = r.state.apply(Op::LoseShim)?;
                        }
                        Ok(())
                    })?;
                }
                Err(_) if rec.state != State::Stopped => {
                    // The shim died while berthd was down (SPEC B19): kill
                    // what is left, delete the runtime state, and record the
                    // exit the shim wrote — or "unknown exit" (255).
                    tracing::warn!(ns = %rec.namespace, id = %rec.id, "shim gone; cleaning up");
                    if let Err(e) = self.teardown_without_shim(&rec).await {
                        tracing::warn!(ns = %rec.namespace, id = %rec.id, "cleanup of a dead shim: {e}");
                    }
                }
                Err(_) => {}
            }
        }
        Ok(())
    }
}
