//! The container manager: owns the records, the shim connections and the
//! exit monitors. Every state change goes through [`Manager::change`], which
//! applies the model's transition table and commits the record together
//! with its event before anyone is told (SPEC B1, B18, B22). Create is in
//! `create.rs`, delete in `delete.rs`, restarts in `restart.rs`, startup
//! recovery in `recovery.rs`.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use berth_cgroups::Hierarchies;
use berth_model::{ContainerId, ExitStatus, Namespace, Op, State};
use berth_store::{ContainerRecord, Store, Write};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::events::{Bus, Event, Kind, event};
use crate::exec::ExecInfo;
use crate::shim::{ShimArgs, ShimClient};
use berth_model::Runtime;

pub type Key = (Namespace, ContainerId);

/// A live container's runtime handles.
pub struct Entry {
    pub shim: ShimClient,
    pub exit: watch::Sender<Option<ExitStatus>>,
    /// Held while a start is being recorded, so an exit is never recorded
    /// (or published) before the start it follows.
    pub starting: tokio::sync::Mutex<()>,
    /// Asks the OOM watcher for its final count (see `oom.rs`).
    pub oom_drain: Mutex<Option<crate::oom::Drain>>,
    /// Exec processes by exec id (kept in memory, like the shim's).
    pub execs: Mutex<HashMap<String, Arc<ExecInfo>>>,
    /// Read-held by clients following init's output (logs -f, attach); an
    /// auto-removal takes it for writing, so it waits for them to drain.
    pub followers: Arc<tokio::sync::RwLock<()>>,
}

impl Entry {
    pub fn new(shim: ShimClient, exit: Option<ExitStatus>) -> Entry {
        Entry {
            shim,
            exit: watch::channel(exit).0,
            starting: Default::default(),
            oom_drain: Mutex::default(),
            execs: Mutex::default(),
            followers: Default::default(),
        }
    }
}

pub struct Manager {
    pub cfg: Config,
    pub store: Store,
    pub events: Bus,
    pub cgroups: Hierarchies,
    /// Content, snapshots and image names (`images.rs`).
    pub images: Arc<crate::images::Images>,
    /// Named volumes (`volumes.rs`).
    pub volumes: crate::volumes::Volumes,
    /// Networks and the ports creates in flight claimed (`network.rs`).
    pub net: crate::network::Net,
    /// Durations of the phases of create, start, exit, delete (`phases.rs`).
    pub phases: crate::phases::Phases,
    /// Counted events and sampled shim memory (`metrics.rs`).
    pub metrics: crate::metrics::Metrics,
    /// Shim binaries of containerd runtime names, as found (`shim_v2.rs`).
    pub(crate) shims: crate::shim_v2::Resolver,
    /// Set once `cfg.criu` answered with a usable version (`checkpoint.rs`).
    pub(crate) criu_checked: std::sync::OnceLock<()>,
    /// Sandboxes' shims and who is busy with them (`sandbox.rs`).
    pub(crate) sandboxes: crate::sandbox::Sandboxes,
    pub(crate) entries: Mutex<HashMap<Key, Arc<Entry>>>,
    /// Ids being created right now (reserved against duplicates).
    pub(crate) creating: Mutex<HashSet<Key>>,
    /// Serialise the operations on one container (start, pause, update,
    /// delete, restart), whether or not it has a live entry. A restart
    /// replaces the entry, so a holder looks the entry up after locking.
    ops: OpLocks<Key>,
    /// Set when berthd shuts down: no restart policy acts any more.
    pub(crate) shutting_down: std::sync::atomic::AtomicBool,
    /// Guards read-modify-write of records.
    records: Mutex<()>,
    /// Exits of auto-removed containers, for a Wait that arrives after the
    /// removal (`restart.rs`).
    pub(crate) removed: Mutex<crate::autoremove::Removed>,
}

/// How long a shim whose connection broke may take to be seen exiting
/// before it is taken for alive but unreachable.
const SHIM_EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The event about a record's change: exits and deletes carry the exit;
/// a create, start or restart in a VM carries the VM (its accelerator).
pub(crate) fn record_event(kind: Kind, rec: &ContainerRecord) -> Event {
    let exit = if matches!(kind, Kind::Exit | Kind::Delete) { rec.exit } else { None };
    let vm = if matches!(kind, Kind::Create | Kind::Start | Kind::Restart) { rec.vm.clone() } else { None };
    Event { vm, ..event(kind, &rec.namespace, &rec.id, "", rec.pid, exit) }
}

/// Test hook for SPEC B20: with `BERTH_TEST_CRASH_AT=<step>` in its
/// environment, berthd SIGKILLs itself right after that create step
/// (intent, logs, snapshot, network, bundle, shim, runtime create), after the shim started
/// init but before the start is recorded (start), after the shim paused or
/// resumed the container but before that is recorded (pause, resume), or after a restart's new
/// shim created the container but before the restart is recorded (restart
/// shim), as a crash would.
pub(crate) fn crash_point(step: &str) {
    if std::env::var("BERTH_TEST_CRASH_AT").is_ok_and(|s| s == step) {
        tracing::warn!("BERTH_TEST_CRASH_AT={step}: dying");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// One async lock per key (a container, a sandbox), made on first use:
/// what serialises the operations on that one object.
pub(crate) struct OpLocks<K>(Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>);

impl<K> Default for OpLocks<K> {
    fn default() -> Self {
        OpLocks(Mutex::default())
    }
}

impl<K: Eq + std::hash::Hash + Clone> OpLocks<K> {
    pub(crate) async fn lock(&self, key: &K) -> tokio::sync::OwnedMutexGuard<()> {
        let op = lock(&self.0).entry(key.clone()).or_default().clone();
        op.lock_owned().await
    }

    /// Forgets the lock of an object that is gone.
    pub(crate) fn forget(&self, key: &K) {
        lock(&self.0).remove(key);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Manager {
    pub fn new(
        cfg: Config,
        store: Store,
        cgroups: Hierarchies,
        images: Arc<crate::images::Images>,
        net: crate::network::Net,
    ) -> Manager {
        let volumes = crate::volumes::Volumes::new(&cfg.root);
        Manager {
            volumes,
            net,
            phases: Default::default(),
            metrics: Default::default(),
            shims: crate::shim_v2::Resolver::new(),
            sandboxes: Default::default(),
            criu_checked: Default::default(),
            cfg,
            store,
            events: Bus::default(),
            cgroups,
            images,
            entries: Mutex::default(),
            creating: Mutex::default(),
            ops: OpLocks::default(),
            shutting_down: Default::default(),
            records: Mutex::default(),
            removed: Mutex::default(),
        }
    }

    pub fn get(&self, ns: &Namespace, id: &ContainerId) -> Result<ContainerRecord> {
        self.store.get(ns, id)?.ok_or_else(|| Error::NotFound(id.to_string()))
    }

    pub fn list(&self, ns: Option<&Namespace>) -> Result<Vec<ContainerRecord>> {
        Ok(self.store.list(ns)?)
    }

    /// Records ordered by (namespace, id), after `after` if given: the
    /// stable order that List pages through (`paging.rs`).
    pub fn list_after(&self, ns: Option<&Namespace>, after: Option<&Key>) -> Result<Vec<ContainerRecord>> {
        let recs = self.list(ns)?;
        Ok(crate::paging::sorted_after(recs, |r| (r.namespace.clone(), r.id.clone()), after))
    }

    pub(crate) fn entry(&self, ns: &Namespace, id: &ContainerId) -> Result<Arc<Entry>> {
        lock(&self.entries)
            .get(&(ns.clone(), id.clone()))
            .cloned()
            .ok_or_else(|| Error::FailedPrecondition(format!("container {id} has no live shim")))
    }

    /// Takes the operation lock of one container (see `ops`).
    pub(crate) async fn lock_op(&self, ns: &Namespace, id: &ContainerId) -> tokio::sync::OwnedMutexGuard<()> {
        self.ops.lock(&(ns.clone(), id.clone())).await
    }

    /// Forgets a removed container's operation lock.
    pub(crate) fn forget_op(&self, key: &Key) {
        self.ops.forget(key);
    }

    pub(crate) fn insert_entry(&self, key: Key, entry: Arc<Entry>) {
        lock(&self.entries).insert(key, entry);
    }

    pub(crate) fn remove_entry(&self, key: &Key) {
        lock(&self.entries).remove(key);
    }

    /// How this daemon runs the shim of one container. A recorded runtime
    /// whose shim binary is gone keeps its name, so cleanup says what is
    /// missing.
    pub(crate) fn shim_args(&self, ns: &Namespace, id: &ContainerId, runtime: &str) -> ShimArgs {
        let parsed = Runtime::parse(runtime).unwrap_or(Runtime::Builtin(berth_model::DEFAULT_RUNTIME));
        let (binary, v2) = match (&parsed, self.shims.resolve(&parsed)) {
            (Runtime::Builtin(_), _) => (self.cfg.shim_binary.clone(), None),
            (_, Ok(Some(found))) => (found, Some(self.cfg.v2())),
            (Runtime::Shim { binary, .. }, _) => (binary.into(), Some(self.cfg.v2())),
        };
        ShimArgs {
            binary,
            namespace: ns.clone(),
            id: id.clone(),
            runtime: runtime.to_string(),
            runtime_root: self.cfg.runtime_root(&parsed.dir_name(), ns),
            v2,
            sandbox: false,
            pid_init: false,
            extra: match parsed {
                Runtime::Builtin(berth_model::VM_RUNTIME) => self.cfg.vm.shim_flags(),
                Runtime::Builtin(_) => vec!["--seccomp-cache".into(), self.cfg.seccomp_cache().into()],
                _ => Vec::new(),
            },
        }
    }

    /// The arguments of the shim that serves `rec`: its sandbox's shim for a
    /// container in a sandbox (to tell whether that process is alive; a
    /// cleanup always runs with the container's own, `shim_args`).
    pub(crate) fn serving_args(&self, rec: &ContainerRecord) -> ShimArgs {
        match &rec.sandbox {
            Some(sandbox) => self.sandbox_shim_args(&rec.namespace, sandbox, &rec.runtime),
            None => self.shim_args(&rec.namespace, &rec.id, &rec.runtime),
        }
    }

    /// Commits `w` in one transaction, then sends its event to subscribers.
    /// One lock covers both, so subscribers see events in sequence order.
    pub(crate) fn write(&self, w: Write<'_>) -> Result<()> {
        let held = lock(&self.records);
        self.commit(&held, w)
    }

    /// `write` for a caller that already holds `records`.
    fn commit(&self, _held: &std::sync::MutexGuard<'_, ()>, w: Write<'_>) -> Result<()> {
        if let Some(ev) = self.store.write(w)? {
            self.events.send(ev);
        }
        Ok(())
    }

    /// Commits an event that changes no record (exec and OOM events).
    pub(crate) fn publish(&self, ev: Event) -> Result<()> {
        self.write(Write { event: Some(ev), ..Default::default() })
    }

    /// Read-modify-write of one record, committed before it returns.
    pub(crate) fn update(
        &self,
        ns: &Namespace,
        id: &ContainerId,
        f: impl FnOnce(&mut ContainerRecord) -> Result<()>,
    ) -> Result<ContainerRecord> {
        self.change(ns, id, None, f)
    }

    /// Read-modify-write of one record, committed together with an event
    /// of `kind` about the changed record, if given.
    pub(crate) fn change(
        &self,
        ns: &Namespace,
        id: &ContainerId,
        kind: Option<Kind>,
        f: impl FnOnce(&mut ContainerRecord) -> Result<()>,
    ) -> Result<ContainerRecord> {
        self.change_with(ns, id, |r| {
            f(r)?;
            Ok(kind.map(|k| record_event(k, r)))
        })
    }

    /// Read-modify-write of one record, committed together with the event
    /// that `f` returns, if any.
    pub(crate) fn change_with(
        &self,
        ns: &Namespace,
        id: &ContainerId,
        f: impl FnOnce(&mut ContainerRecord) -> Result<Option<Event>>,
    ) -> Result<ContainerRecord> {
        let held = lock(&self.records);
        let mut rec = self.get(ns, id)?;
        let event = f(&mut rec)?;
        self.commit(&held, Write { put: Some(&rec), event, ..Default::default() })?;
        Ok(rec)
    }

    pub async fn start(&self, ns: &Namespace, id: &ContainerId) -> Result<ContainerRecord> {
        self.get(ns, id)?;
        let _op = self.lock_op(ns, id).await;
        let entry = self.entry(ns, id)?;
        self.get(ns, id)?.state.apply(Op::Start)?;
        let _starting = entry.starting.lock().await;
        let t = std::time::Instant::now();
        // Taken before the start: a process that exits at once must not
        // have exited (the shim's time) before it started.
        let started_at_ns = crate::now_ns();
        let started = tokio::time::timeout(self.cfg.start_timeout, entry.shim.start(id, "")).await;
        let pid = match started {
            Ok(r) => r?,
            Err(_) => {
                // The shim may be stuck in the very start that timed out:
                // kill the container's processes directly.
                self.cgroups.kill_all(&self.get(ns, id)?.cgroup);
                return Err(Error::DeadlineExceeded(format!(
                    "start of {id} did not complete within {:?}; it was killed",
                    self.cfg.start_timeout
                )));
            }
        };
        crash_point("start");
        let t = self.phases.end("start.runtime", t);
        let rec = self.change(ns, id, Some(Kind::Start), |r| {
            r.state = r.state.apply(Op::Start)?;
            r.pid = pid;
            r.started_at_ns = started_at_ns;
            Ok(())
        })?;
        self.phases.end("start.record", t);
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
            let info = self.exec_info(&entry, exec_id)?;
            // With `all`, the processes the exec started go first (they
            // are berthd's to find: every shim signals one process).
            let pid = info.pid.load(std::sync::atomic::Ordering::SeqCst);
            if all && pid != 0 && info.exit.borrow().is_none() {
                crate::control::signal_descendants(pid, signal);
            }
            return entry.shim.kill(id, exec_id, signal, false).await;
        }
        if matches!(rec.state, State::Stopped | State::Deleted) {
            return Err(Error::Finished(id.to_string()));
        }
        self.entry(ns, id)?.shim.kill(id, "", signal, all).await
    }

    /// Waits for init to exit; every caller gets the same status (SPEC B5).
    pub async fn wait(&self, ns: &Namespace, id: &ContainerId) -> Result<ExitStatus> {
        let rec = match self.get(ns, id) {
            Err(Error::NotFound(_)) if let Some(exit) = lock(&self.removed).exit(ns, id) => return Ok(exit),
            other => other?,
        };
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

    /// Records init's exit — store and event together (SPEC B4, B18) —
    /// unless an exit is recorded already (a dead shim's cleanup and the
    /// monitor may race); returns the exit that stands.
    pub(crate) fn record_exit(&self, ns: &Namespace, id: &ContainerId, status: ExitStatus) -> Result<ExitStatus> {
        let rec = self.change_with(ns, id, |r| {
            if r.exit.is_some() {
                return Ok(None);
            }
            r.state = r.state.apply(Op::Exit)?;
            r.exit = Some(status);
            Ok(Some(record_event(Kind::Exit, r)))
        })?;
        Ok(rec.exit.unwrap_or(status))
    }

    /// The container's shim is lost (SPEC B1: `* → unknown`): alive but
    /// unreachable, or a cleanup after it failed. When its process ends,
    /// the dead-shim cleanup runs (again) and records the exit, so the
    /// container does not stay `unknown` for good.
    pub(crate) fn mark_unknown(self: &Arc<Self>, ns: &Namespace, id: &ContainerId) {
        let marked = self.update(ns, id, |r| {
            if r.state != State::Unknown {
                r.state = r.state.apply(Op::LoseShim)?;
            }
            Ok(())
        });
        let rec = match marked {
            Ok(rec) => rec,
            Err(e) => return tracing::warn!(%ns, %id, "cannot mark the container unknown: {e}"),
        };
        // The pidfd is taken before the check, so it names that shim.
        let pidfd = crate::shim::watch_pidfd(berth_shim::pidfd_open(rec.shim.pid).ok());
        let alive = self.serving_args(&rec).matches(rec.shim.pid);
        let mgr = self.clone();
        tokio::spawn(async move {
            if let Some(fd) = pidfd.filter(|_| alive) {
                let _ = fd.readable().await;
            }
            let (ns, id) = (&rec.namespace, &rec.id);
            let _op = mgr.lock_op(ns, id).await;
            let Ok(rec) = mgr.get(ns, id) else { return };
            if rec.exit.is_none() && rec.state == State::Unknown {
                tracing::warn!(ns = %rec.namespace, id = %rec.id, "the unreachable shim is gone; cleaning up");
                match mgr.teardown_without_shim(&rec).await {
                    Ok(status) => {
                        if let Ok(entry) = mgr.entry(ns, id) {
                            entry.exit.send_replace(Some(status));
                        }
                        mgr.consider_restart(ns, id);
                    }
                    Err(e) => tracing::warn!(ns = %rec.namespace, id = %rec.id, "cleanup after a lost shim: {e}"),
                }
            }
        });
    }

    /// Watches a container's init through its shim and records the exit
    /// exactly once: store and event first, then waiters (SPEC B4), then
    /// the restart policy (SPEC B21). A shim that dies is cleaned up at
    /// once and its container reports the exit the shim recorded, or 255;
    /// one that only stops answering leaves the container `unknown`.
    /// Until `init` (a pidfd on the container's init) says it exited, the
    /// monitor holds no connection to the shim, and only a small future.
    pub(crate) fn spawn_monitor(self: &Arc<Self>, key: Key, entry: Arc<Entry>, init: Option<Arc<AsyncFd<OwnedFd>>>) {
        let mgr = self.clone();
        tokio::spawn(async move {
            if let Some(init) = init {
                entry.shim.idle_until_exit(&init).await;
            }
            Box::pin(mgr.monitor(key, entry)).await
        });
    }

    async fn monitor(self: Arc<Self>, key: Key, entry: Arc<Entry>) -> Option<()> {
        let (ns, id) = &key;
        let status = match entry.shim.wait(id, "").await {
            Ok(s) => s,
            Err(e) if entry.shim.exited_within(SHIM_EXIT_GRACE).await => {
                tracing::warn!(%ns, %id, "shim died: {e}; cleaning up");
                let _started = entry.starting.lock().await;
                match self.teardown_without_shim(&self.get(ns, id).ok()?).await {
                    Ok(status) => status,
                    Err(e) => {
                        // Processes may be left: `unknown` until `rm -f`
                        // cleans up again.
                        tracing::warn!(%ns, %id, "cleanup after a dead shim: {e}");
                        self.mark_unknown(ns, id);
                        return None;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%ns, %id, "lost shim while waiting: {e}");
                self.mark_unknown(ns, id);
                return None;
            }
        };
        // Only a containerd shim's output may still be on its way (the
        // record read is not worth it for berth-shim's exits).
        if entry.shim.is_containerd_shim()
            && let Ok(rec) = self.get(ns, id)
        {
            entry.shim.drained(&rec.stdout, &rec.stderr).await;
        }
        let t = std::time::Instant::now();
        let status = {
            // A start still being recorded goes first.
            let _started = entry.starting.lock().await;
            self.drain_oom(&entry).await;
            self.record_exit(ns, id, status).unwrap_or_else(|e| {
                tracing::warn!(%ns, %id, "cannot record exit: {e}");
                status
            })
        };
        self.phases.end("exit.record", t);
        entry.exit.send_replace(Some(status));
        self.consider_restart(ns, id);
        Some(())
    }
}

/// Releases the reservation of an id when create ends, however it ends.
pub(crate) struct Reservation<'a> {
    mgr: &'a Manager,
    key: Key,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Ok(mut c) = self.mgr.creating.lock() {
            c.remove(&self.key);
        }
    }
}

impl Manager {
    /// Reserves `key` as a create does (`creating`), until the guard goes;
    /// `None` if a create (or doctor) holds it already.
    pub(crate) fn reserve(&self, key: Key) -> Option<Reservation<'_>> {
        lock(&self.creating).insert(key.clone()).then_some(Reservation { mgr: self, key })
    }
}
