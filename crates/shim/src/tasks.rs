//! The containers one shim holds: a lone shim (berthd's default, and
//! containerd's) holds the one container it is named after and exits after
//! its Delete; a sandbox shim (`--sandbox`, named after its sandbox) holds
//! any number, keyed by container id, and lives until Shutdown. Everything
//! per container (bundle, exit, terminal, execs, cgroup) lives in its
//! [`InitTask`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use berth_cgroups::Hierarchies;
use berth_model::{Code, ExitStatus};
use berth_runtime::Isolated;
use berth_shim::to_ttrpc;
use containerd_shim_protos::ttrpc;
use tokio::sync::{Notify, watch};

use crate::events::Publisher;
use crate::exec::ExecProc;
use crate::reaper::{Spawning, Tracked};
use crate::tty::Pty;

type TtrpcResult<T> = ttrpc::Result<T>;

pub(crate) struct InitTask {
    pub(crate) bundle: PathBuf,
    pub(crate) pid: u32,
    pub(crate) started: bool,
    /// Restored from a checkpoint: init runs already; Start only records it.
    pub(crate) restored: bool,
    pub(crate) paused: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) cgroup: Option<String>,
    pub(crate) exit: watch::Receiver<Option<ExitStatus>>,
    pub(crate) pty: Option<Pty>,
    /// Held open until CloseIO so interactive stdin does not end early.
    pub(crate) stdin_keeper: Option<std::fs::File>,
    /// Whether the shim mounted the rootfs (containerd's snapshot mounts).
    pub(crate) rootfs_mounted: bool,
    pub(crate) execs: HashMap<String, ExecProc>,
}

impl InitTask {
    pub(crate) fn exited(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Running: started, not paused, not exited.
    pub(crate) fn running(&self) -> bool {
        self.started && !self.paused && self.exited().is_none()
    }
}

pub struct Shim {
    pub(crate) namespace: String,
    /// The container a lone shim serves, or the sandbox a sandbox shim serves.
    pub(crate) id: String,
    pub(crate) sandbox: bool,
    /// The init of the sandbox's shared PID namespace (`podinit.rs`); its
    /// pid is the sandbox's task pid in Connect.
    pub(crate) pod_init: Option<u32>,
    /// A VM guest's shim (it listens on vsock): an init's OOM kills are
    /// counted in its bundle at its exit (`berth_model::vm::OOM_KILLS_FILE`).
    pub(crate) guest: bool,
    /// The shim's own socket: terminal sockets are named after it.
    pub(crate) socket: PathBuf,
    /// The host's cgroup mounts, read once.
    pub(crate) cgroups: Option<Hierarchies>,
    pub(crate) runtime: Isolated,
    pub(crate) tracked: Tracked,
    /// Runtime calls that may leave a child not tracked yet.
    pub(crate) spawning: Spawning,
    tasks: Mutex<HashMap<String, InitTask>>,
    /// Ids whose Create is in flight (not in `tasks` yet).
    creating: Mutex<HashSet<String>>,
    /// Of those, the ones deleted meanwhile (the caller gave up, e.g. after
    /// a deadline): their Create undoes itself when the runtime returns.
    abandoned: Mutex<HashSet<String>>,
    pub(crate) shutdown: Notify,
    /// Set when containerd started the shim: task events go to it, and
    /// Stats answers in containerd's Metrics types.
    pub(crate) events: Option<Arc<Publisher>>,
}

/// An id reserved for a Create in flight; released when dropped (also when
/// the Create's future is dropped half way).
pub(crate) struct Reservation<'a> {
    shim: &'a Shim,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.shim.creating).remove(&self.id);
        lock(&self.shim.abandoned).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn not_served(id: &str) -> ttrpc::Error {
    to_ttrpc(Code::NotFound, format!("container {id} is not served by this shim"))
}

impl Shim {
    pub fn new(
        namespace: String,
        id: String,
        sandbox: bool,
        socket: PathBuf,
        runtime: Isolated,
        events: Option<Arc<Publisher>>,
    ) -> Shim {
        Shim {
            namespace,
            id,
            sandbox,
            pod_init: None,
            guest: false,
            socket,
            cgroups: Hierarchies::detect().ok(),
            runtime,
            tracked: Tracked::default(),
            spawning: Spawning::default(),
            tasks: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            abandoned: Mutex::new(HashSet::new()),
            shutdown: Notify::new(),
            events,
        }
    }

    pub fn processes(&self) -> (Tracked, Spawning) {
        (self.tracked.clone(), self.spawning.clone())
    }

    pub async fn shutdown_requested(&self) {
        self.shutdown.notified().await
    }

    /// Checks that a lone shim is asked about its own container (a sandbox
    /// shim takes any id; `with_task` finds out whether it holds it).
    pub(crate) fn check(&self, id: &str) -> TtrpcResult<()> {
        if !self.sandbox && id != self.id {
            return Err(not_served(id));
        }
        Ok(())
    }

    /// Reserves `id` for a Create: AlreadyExists if the shim holds it or a
    /// Create of it is in flight.
    pub(crate) fn reserve(&self, id: &str) -> TtrpcResult<Reservation<'_>> {
        self.check(id)?;
        let mut creating = lock(&self.creating);
        if creating.contains(id) || lock(&self.tasks).contains_key(id) {
            return Err(to_ttrpc(Code::AlreadyExists, format!("container {id} already has a task")));
        }
        creating.insert(id.to_string());
        Ok(Reservation { shim: self, id: id.to_string() })
    }

    /// Marks an in-flight Create of `id` abandoned; false if there is none.
    pub(crate) fn abandon(&self, id: &str) -> bool {
        // Held while marking: the Create cannot end (and forget) meanwhile.
        let creating = lock(&self.creating);
        if !creating.contains(id) {
            return false;
        }
        lock(&self.abandoned).insert(id.to_string());
        true
    }

    /// Whether the Create holding `reservation` was abandoned meanwhile.
    pub(crate) fn is_abandoned(&self, reservation: &Reservation<'_>) -> bool {
        lock(&self.abandoned).contains(&reservation.id)
    }

    /// Adds a created task (its reservation ends after, when dropped).
    pub(crate) fn insert(&self, reservation: &Reservation<'_>, task: InitTask) {
        lock(&self.tasks).insert(reservation.id.clone(), task);
    }

    /// Forgets a deleted task; true if the shim holds no task any more.
    pub(crate) fn remove(&self, id: &str) -> bool {
        let mut tasks = lock(&self.tasks);
        tasks.remove(id);
        tasks.is_empty()
    }

    /// How many containers the shim holds, counting Creates in flight.
    pub(crate) fn held(&self) -> usize {
        let creating = lock(&self.creating);
        creating.len() + lock(&self.tasks).len()
    }

    /// Runs `f` on the task of container `id` (never across an await).
    pub(crate) fn with_task<T>(&self, id: &str, f: impl FnOnce(&mut InitTask) -> TtrpcResult<T>) -> TtrpcResult<T> {
        self.check(id)?;
        match lock(&self.tasks).get_mut(id) {
            Some(t) => f(t),
            None if self.sandbox => Err(not_served(id)),
            None => Err(to_ttrpc(Code::NotFound, format!("container {id} has no task"))),
        }
    }

    /// The task pid of container `id`, if the shim holds it.
    pub(crate) fn task_pid(&self, id: &str) -> Option<u32> {
        lock(&self.tasks).get(id).map(|t| t.pid)
    }

    /// Whether a lone shim's container has a live task.
    pub(crate) fn any_live(&self) -> bool {
        lock(&self.tasks).values().any(|t| t.exited().is_none())
    }
}
