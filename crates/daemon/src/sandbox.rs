//! Sandboxes (SPEC B34): a first-class record with its own state machine
//! (`berth_model::SandboxState`), a network namespace its containers share
//! and one berth-shim (`--sandbox`) serving all of them. Create writes the
//! record (state `creating`) before it allocates anything, so the record is
//! also the intent a restarted berthd releases; containers join through
//! [`Manager::join_sandbox`]; remove refuses a sandbox that holds (or is
//! being joined by) containers. A shim that dies leaves the sandbox
//! `not-ready`, and the next container to join starts a new one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_model::{Code, ContainerId, Namespace, NsShare, Runtime, SandboxId, SandboxOp, SandboxState};
use berth_store::{SandboxRecord, ShimInfo};

use crate::error::{Error, Result};
use crate::manager::{Manager, OpLocks, crash_point, lock};
use crate::network::NetOptions;
use crate::shim::{self, ShimArgs, ShimClient};

pub type SandboxKey = (Namespace, SandboxId);

/// How long a sandbox shim may take to exit once told to.
const SHIM_EXIT_WAIT: Duration = Duration::from_secs(5);

pub struct SandboxParams {
    pub namespace: Namespace,
    /// `None`: a random one.
    pub id: Option<SandboxId>,
    pub runtime: String,
    pub labels: BTreeMap<String, String>,
    pub net: NetOptions,
    /// Whose PID and IPC namespaces its containers are in (`sandbox_ns.rs`).
    pub pid: NsShare,
    pub ipc: NsShare,
    /// A VM sandbox's vCPUs and memory in bytes (0: the defaults).
    pub cpus: u32,
    pub memory: u64,
}

/// The live side of sandboxes: connected shims and who is busy with which.
#[derive(Default)]
pub struct Sandboxes {
    /// Shims of ready sandboxes, connected once for all their containers.
    shims: Mutex<HashMap<SandboxKey, ShimClient>>,
    /// Serialise create, join and remove of one sandbox.
    ops: OpLocks<SandboxKey>,
    /// Container creates in flight that joined each sandbox: it cannot be
    /// removed under them.
    joining: Mutex<HashMap<SandboxKey, usize>>,
}

impl Sandboxes {
    fn shim(&self, key: &SandboxKey) -> Option<ShimClient> {
        lock(&self.shims).get(key).cloned()
    }

    fn joining(&self, key: &SandboxKey) -> usize {
        lock(&self.joining).get(key).copied().unwrap_or(0)
    }
}

/// A container create that joined a sandbox; counted until it ends.
pub(crate) struct Joining<'a> {
    live: &'a Sandboxes,
    key: SandboxKey,
    pub record: SandboxRecord,
}

impl Drop for Joining<'_> {
    fn drop(&mut self) {
        let mut joining = lock(&self.live.joining);
        if let Some(n) = joining.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                joining.remove(&self.key);
            }
        }
    }
}

/// A sandbox id nobody chose: 12 hex digits from the kernel's random pool.
fn random_id() -> Result<SandboxId> {
    let hex = berth_model::random_hex(6).map_err(|e| Error::io("read /dev/urandom", e))?;
    Ok(SandboxId::new(hex)?)
}

/// The id a sandbox shim is started with (same syntax as a container id).
fn shim_id(id: &SandboxId) -> ContainerId {
    ContainerId::new(id.as_str()).unwrap_or_else(|_| unreachable!("sandbox and container ids share one syntax"))
}

impl Manager {
    /// How this daemon runs the shim of sandbox `id`.
    pub(crate) fn sandbox_shim_args(&self, ns: &Namespace, id: &SandboxId, runtime: &str) -> ShimArgs {
        ShimArgs { sandbox: true, ..self.shim_args(ns, &shim_id(id), runtime) }
    }

    pub fn sandbox_get(&self, ns: &Namespace, id: &SandboxId) -> Result<SandboxRecord> {
        self.store.get_sandbox(ns, id)?.ok_or_else(|| Error::SandboxNotFound(id.to_string()))
    }

    pub fn sandbox_list(&self, ns: Option<&Namespace>) -> Result<Vec<SandboxRecord>> {
        Ok(self.store.list_sandboxes(ns)?)
    }

    /// The containers recorded in sandbox `id`.
    pub fn sandbox_members(&self, ns: &Namespace, id: &SandboxId) -> Result<Vec<ContainerId>> {
        let recs = self.store.list_mentioning(ns, id.as_str())?;
        Ok(recs.into_iter().filter(|r| r.sandbox.as_ref() == Some(id)).map(|r| r.id).collect())
    }

    pub async fn sandbox_create(self: &Arc<Self>, mut p: SandboxParams) -> Result<SandboxRecord> {
        let named = if p.runtime.is_empty() { &self.cfg.default_runtime } else { &p.runtime };
        let runtime = match Runtime::parse(named)? {
            Runtime::Builtin(name) => name,
            Runtime::Shim { .. } => {
                return Err(Error::InvalidArgument(format!(
                    "sandboxes run on berth's own shim (embedded, runc or crun); {named} is a containerd shim"
                )));
            }
        };
        self.check_runtime(&Runtime::Builtin(runtime))?;
        let vm = crate::vm::sandbox_vm(&self.cfg.vm, runtime, &mut p)?;
        crate::create::check_labels(&p.labels)?;
        let id = match p.id {
            Some(id) => id,
            None => random_id()?,
        };
        let ns = p.namespace;
        let key = (ns.clone(), id.clone());
        let _op = self.sandboxes.ops.lock(&key).await;
        if self.store.get_sandbox(&ns, &id)?.is_some() {
            return Err(Error::SandboxExists(id.to_string()));
        }
        let network = self.plan_sandbox_network(&ns, &id, &p.net)?;
        let mut rec = SandboxRecord {
            namespace: ns.clone(),
            id: id.clone(),
            state: SandboxState::Creating,
            runtime: runtime.to_string(),
            labels: p.labels,
            created_at_ns: crate::now_ns(),
            shim: ShimInfo { pid: 0, socket: self.cfg.sandbox_socket(&ns, &id) },
            network: None,
            pid: p.pid,
            ipc: p.ipc,
            vm,
        };
        self.store.put_sandbox(&rec)?;
        crash_point("sandbox record");
        let plan = network.as_ref().map(|(plan, _claim)| plan);
        match self.sandbox_allocate(&mut rec, plan).await {
            Ok(client) => {
                self.serve_sandbox(&key, client);
                Ok(rec)
            }
            Err(e) => {
                if let Err(undo) = self.sandbox_release(&rec, None).await {
                    tracing::warn!(%ns, %id, "rollback of a failed sandbox create: {undo}");
                }
                Err(e)
            }
        }
    }

    /// Network and IPC namespaces, then the shim (and the PID namespace
    /// its init holds); the record says `ready` last.
    async fn sandbox_allocate(
        &self,
        rec: &mut SandboxRecord,
        network: Option<&crate::network::Plan>,
    ) -> Result<ShimClient> {
        let dir = self.cfg.sandbox_dir(&rec.namespace, &rec.id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e).at("sandbox"))?;
        if let Some(plan) = network {
            rec.network = Some(self.attach_sandbox_network(plan).await.map_err(|e| e.at("network"))?);
            self.store.put_sandbox(rec)?;
            crash_point("sandbox network");
        }
        self.pin_sandbox_ipc(rec)?;
        let client = self.spawn_sandbox_shim(rec).await?;
        crash_point("sandbox shim");
        // Ready once recorded: a rollback releases what the store says.
        let ready = SandboxRecord { state: rec.state.apply(SandboxOp::Ready)?, ..rec.clone() };
        self.store.put_sandbox(&ready).map_err(|e| Error::from(e).at("record"))?;
        *rec = ready;
        Ok(client)
    }

    /// Starts the sandbox's shim, pins the PID namespace it holds (if the
    /// sandbox shares one) and records where the shim is (not its state).
    /// A shim whose namespace cannot be pinned is ended.
    async fn spawn_sandbox_shim(&self, rec: &mut SandboxRecord) -> Result<ShimClient> {
        let mut args = ShimArgs {
            pid_init: rec.pid == NsShare::Pod,
            ..self.sandbox_shim_args(&rec.namespace, &rec.id, &rec.runtime)
        };
        if let Some(vm) = &rec.vm {
            args.extra.extend(crate::vm::size_flags(vm));
            // Its own mount namespace must receive the root filesystems
            // mounted for its later containers.
            crate::vm::share_bundles(&self.cfg.bundles_root());
        }
        let dir = self.cfg.sandbox_dir(&rec.namespace, &rec.id);
        let mut client = shim::spawn(&args, &rec.shim.socket, &dir).await.map_err(|e| e.at("shim"))?;
        client.shared = true;
        if let Err(e) = self.pin_sandbox_pid(rec, &client).await {
            let _ = client.shutdown(&shim_id(&rec.id)).await;
            client.reap(SHIM_EXIT_WAIT).await;
            return Err(e);
        }
        rec.shim = ShimInfo { pid: client.pid, socket: client.socket.clone() };
        Ok(client)
    }

    /// Serves a ready sandbox's shim: kept for its containers, and watched
    /// so that its death leaves the sandbox `not-ready`.
    fn serve_sandbox(self: &Arc<Self>, key: &SandboxKey, client: ShimClient) {
        lock(&self.sandboxes.shims).insert(key.clone(), client.clone());
        let (mgr, key) = (self.clone(), key.clone());
        tokio::spawn(async move {
            client.exited().await;
            let _op = mgr.sandboxes.ops.lock(&key).await;
            let mut shims = lock(&mgr.sandboxes.shims);
            if shims.get(&key).is_some_and(|c| c.pid == client.pid) {
                shims.remove(&key);
            }
            drop(shims);
            let (ns, id) = &key;
            match mgr.store.get_sandbox(ns, id) {
                Ok(Some(mut rec)) if rec.shim.pid == client.pid && rec.state == SandboxState::Ready => {
                    tracing::warn!(%ns, %id, pid = client.pid, "the sandbox's shim exited");
                    rec.state = SandboxState::NotReady;
                    if let Err(e) = mgr.store.put_sandbox(&rec) {
                        tracing::warn!(%ns, %id, "cannot record the sandbox not ready: {e}");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(%ns, %id, "sandbox shim exit: {e}"),
            }
        });
    }

    /// Places a container being created in sandbox `id`: checks that it may
    /// join (its runtime must be the sandbox's) and counts it as joining
    /// until the returned guard drops. The shim comes from `sandbox_shim`.
    pub(crate) async fn join_sandbox(&self, ns: &Namespace, id: &SandboxId, runtime: &str) -> Result<Joining<'_>> {
        let key = (ns.clone(), id.clone());
        let _op = self.sandboxes.ops.lock(&key).await;
        let record = self.sandbox_get(ns, id)?;
        // A not-ready sandbox gets a new shim when the container is created.
        if record.state != SandboxState::NotReady {
            record.state.apply(SandboxOp::Join)?;
        }
        if !runtime.is_empty() && runtime != record.runtime {
            return Err(Error::InvalidArgument(format!(
                "sandbox {id} runs its containers with {}; a container in it cannot use {runtime}",
                record.runtime
            )));
        }
        *lock(&self.sandboxes.joining).entry(key.clone()).or_default() += 1;
        Ok(Joining { live: &self.sandboxes, key, record })
    }

    /// Whether sandbox `id` has a live shim that writes no berth logs (one
    /// an older berthd started).
    pub(crate) fn sandbox_shim_is_old(&self, ns: &Namespace, id: &SandboxId) -> bool {
        self.sandboxes.shim(&(ns.clone(), id.clone())).is_some_and(|c| !c.is_gone() && !c.berth_logs)
    }

    /// The shim of sandbox `id`, started anew if the sandbox's shim is gone.
    pub(crate) async fn sandbox_shim(self: &Arc<Self>, ns: &Namespace, id: &SandboxId) -> Result<ShimClient> {
        let key = (ns.clone(), id.clone());
        let _op = self.sandboxes.ops.lock(&key).await;
        if let Some(client) = self.sandboxes.shim(&key).filter(|c| !c.is_gone()) {
            return Ok(client);
        }
        let mut rec = self.sandbox_get(ns, id)?;
        if rec.state == SandboxState::Ready {
            rec.state = rec.state.apply(SandboxOp::LoseShim)?;
        }
        rec.state = rec.state.apply(SandboxOp::StartShim)?;
        self.pin_sandbox_ipc(&rec)?;
        let client = self.spawn_sandbox_shim(&mut rec).await?;
        if let Err(e) = self.store.put_sandbox(&rec) {
            let _ = client.shutdown(&shim_id(id)).await;
            client.reap(SHIM_EXIT_WAIT).await;
            return Err(e.into());
        }
        tracing::info!(%ns, %id, pid = client.pid, "started a new shim for the sandbox");
        // Published before the lock goes: a second joiner must find it.
        self.serve_sandbox(&key, client.clone());
        Ok(client)
    }

    /// Stops a sandbox (CRI StopPodSandbox): recorded `stopped` first (no
    /// container joins from then on), then its containers are stopped
    /// (`timeout` of grace each, all at once), then its shim and network
    /// are released. The records stay until they are removed. Stopping a
    /// stopped sandbox does it all again, so a stop cut short by an error
    /// or a crash is finished by the next one.
    pub async fn sandbox_stop(
        self: &Arc<Self>,
        ns: &Namespace,
        id: &SandboxId,
        timeout: Duration,
    ) -> Result<SandboxRecord> {
        let key = (ns.clone(), id.clone());
        {
            let _op = self.sandboxes.ops.lock(&key).await;
            let mut rec = self.sandbox_get(ns, id)?;
            if self.sandboxes.joining(&key) > 0 {
                return Err(Error::FailedPrecondition(format!(
                    "a container is being created in sandbox {id}: stop it once that create has ended"
                )));
            }
            let stopped = rec.state.apply(SandboxOp::Stop)?;
            if stopped != rec.state {
                rec.state = stopped;
                self.store.put_sandbox(&rec)?;
            }
        }
        crash_point("sandbox stopping");
        let mut stops = tokio::task::JoinSet::new();
        for cid in self.sandbox_members(ns, id)? {
            let (mgr, ns) = (self.clone(), ns.clone());
            stops.spawn(async move {
                match mgr.stop(&ns, &cid, timeout).await {
                    Err(e) if !matches!(e.code(), Code::NotFound | Code::FailedPrecondition) => {
                        Err(Error::FailedPrecondition(format!("stopping container {cid} of the sandbox: {e}")))
                    }
                    _ => Ok(()),
                }
            });
        }
        while let Some(done) = stops.join_next().await {
            done.map_err(|e| Error::io("a container stop task", std::io::Error::other(e)))??;
        }
        let _op = self.sandboxes.ops.lock(&key).await;
        let rec = self.sandbox_get(ns, id)?;
        if rec.state != SandboxState::Stopped {
            return Err(Error::FailedPrecondition(format!("sandbox {id} is {} now: not stopped", rec.state)));
        }
        let client = lock(&self.sandboxes.shims).remove(&key);
        self.stop_sandbox_shim(&rec, client.as_ref()).await?;
        self.unpin_sandbox(ns, id)?;
        self.detach_sandbox_network(ns, id).await?;
        Ok(rec)
    }

    /// Removes an empty sandbox: recorded `removing` first (no container
    /// may join from then on, and a berthd that dies half way finishes at
    /// startup), then its shim, network and files, the record last (a
    /// failed remove can be retried).
    pub async fn sandbox_remove(&self, ns: &Namespace, id: &SandboxId) -> Result<()> {
        let key = (ns.clone(), id.clone());
        let _op = self.sandboxes.ops.lock(&key).await;
        let mut rec = self.sandbox_get(ns, id)?;
        let containers = self.sandbox_members(ns, id)?.len() + self.sandboxes.joining(&key);
        rec.state = rec.state.apply(SandboxOp::Remove { containers })?;
        self.store.put_sandbox(&rec)?;
        crash_point("sandbox removing");
        let client = self.sandboxes.shim(&key);
        self.sandbox_release(&rec, client.as_ref()).await?;
        lock(&self.sandboxes.shims).remove(&key);
        // The op lock stays: callers queued on it must keep excluding the
        // ones that come after.
        self.remove_namespace_if_unused(ns);
        Ok(())
    }

    /// Releases everything a sandbox record names, newest first: the shim
    /// (told to exit, or killed if it is a leftover), its sockets, the
    /// shared namespaces, the network, its directory; then the record.
    async fn sandbox_release(&self, rec: &SandboxRecord, client: Option<&ShimClient>) -> Result<()> {
        let (ns, id) = (&rec.namespace, &rec.id);
        self.stop_sandbox_shim(rec, client).await?;
        self.unpin_sandbox(ns, id)?;
        self.detach_sandbox_network(ns, id).await?;
        crate::delete::remove_path(&self.cfg.sandbox_dir(ns, id))?;
        rec.state.apply(SandboxOp::Release)?;
        self.store.remove_sandbox(ns, id)?;
        Ok(())
    }

    /// Ends a sandbox's shim (told to exit, or killed if it is a leftover)
    /// and removes its sockets. Tasks the shim still holds (stopped
    /// containers, a create abandoned half way) go with it.
    async fn stop_sandbox_shim(&self, rec: &SandboxRecord, client: Option<&ShimClient>) -> Result<()> {
        let (ns, id) = (&rec.namespace, &rec.id);
        if let Some(client) = client.filter(|c| !c.is_gone()) {
            match client.shutdown(&shim_id(id)).await {
                Ok(()) => client.reap(SHIM_EXIT_WAIT).await,
                Err(e) => tracing::warn!(%ns, %id, "the sandbox's shim refused to exit ({e}); killing it"),
            }
        }
        let args = self.sandbox_shim_args(ns, id, &rec.runtime);
        for pid in args.processes() {
            crate::recovery::kill_group(&args, pid).await;
        }
        crate::delete::remove_socket_family(&rec.shim.socket)
    }

    /// At startup, before containers are recovered: reconnects every
    /// sandbox's shim once (its containers share the connection), marks
    /// sandboxes whose shim died `not-ready`, and releases those whose
    /// create was cut short.
    pub(crate) async fn recover_sandboxes(self: &Arc<Self>) -> Result<()> {
        for rec in self.store.list_sandboxes(None)? {
            let (ns, id) = (rec.namespace.clone(), rec.id.clone());
            if let Err(e) = self.recover_sandbox(rec).await {
                tracing::warn!(%ns, %id, "recovering the sandbox: {e}");
            }
        }
        Ok(())
    }

    async fn recover_sandbox(self: &Arc<Self>, mut rec: SandboxRecord) -> Result<()> {
        let (ns, id) = (rec.namespace.clone(), rec.id.clone());
        match rec.state {
            SandboxState::Creating => {
                tracing::warn!(%ns, %id, "releasing a sandbox create cut short by a crash");
                return self.sandbox_release(&rec, None).await;
            }
            SandboxState::Removing => {
                tracing::warn!(%ns, %id, "finishing a sandbox removal cut short by a crash");
                return self.sandbox_release(&rec, None).await;
            }
            _ => {}
        }
        let args = self.sandbox_shim_args(&ns, &id, &rec.runtime);
        let connected = shim::connect(&rec.shim.socket, &shim_id(&id), rec.shim.pid, Default::default()).await;
        match connected {
            // Whichever process answers must be this sandbox's shim (a new
            // one berthd started before dying counts).
            Ok(mut client) if args.matches(client.pid) => {
                client.shared = true;
                // A crash may have come between a pin's removal and its bind.
                if let Err(e) = self.pin_sandbox_pid(&rec, &client).await {
                    tracing::warn!(%ns, %id, "pinning the sandbox's PID namespace again: {e}");
                }
                if rec.shim.pid != client.pid || rec.state != SandboxState::Ready {
                    if rec.state == SandboxState::NotReady {
                        rec.state = rec.state.apply(SandboxOp::StartShim)?;
                    }
                    rec.shim.pid = client.pid;
                    self.store.put_sandbox(&rec)?;
                }
                self.serve_sandbox(&(ns, id), client);
            }
            _ if rec.state == SandboxState::Ready => {
                tracing::warn!(%ns, %id, "the sandbox's shim is gone");
                rec.state = rec.state.apply(SandboxOp::LoseShim)?;
                self.store.put_sandbox(&rec)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The connected shim of a container's sandbox, if it is alive.
    pub(crate) fn sandbox_client(&self, ns: &Namespace, id: &SandboxId) -> Option<ShimClient> {
        self.sandboxes.shim(&(ns.clone(), id.clone()))
    }
}
