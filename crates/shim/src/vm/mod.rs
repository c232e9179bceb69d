//! berth-shim on the host for containers in a VM (runtime `vm`, SPEC B26,
//! docs/vm.md). It boots the VM (`berth_vm`): a lone shim at its
//! container's Create, sized from the container's limits; a sandbox shim
//! at once, sized by berthd. Then it serves the Task API by forwarding
//! each call over vsock to the guest's berth-shim (`task.rs`), with the
//! bundle moved into the directory shared with the guest (`guest_spec.rs`,
//! whose binds live in this shim's own mount namespace) and each process's
//! stdio kept on the host, streamed over vsock (`stdio.rs`).
//! Exits are recorded in the host bundle before they are answered (SPEC
//! B4). The VM's processes die with the shim (PR_SET_PDEATHSIG); the shim
//! exits when any of them dies, so berthd cleans up as for any dead shim.

pub mod guest_spec;
mod net;
mod share;
mod stdio;
mod steps;
mod task;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_model::Code;
use berth_shim::to_ttrpc;
use berth_vm::{Accel, Assets, Vm, VmSpec, qemu::Microvm};
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::ttrpc::r#async::transport::Socket;
use containerd_shim_protos::ttrpc::asynchronous::Client;
use containerd_shim_protos::{api, ttrpc};
use tokio::sync::{Notify, OnceCell};

use guest_spec::GuestBundle;
use share::ShareDir;

type TtrpcResult<T> = ttrpc::Result<T>;

/// How long the guest may take from launch until its agent answers (TCG
/// boots in 1.5–2.5 s here; a loaded host takes longer). Within berthd's
/// 30 s for a whole create, helpers' start included.
const BOOT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a guest told to power off may take before it is killed.
const POWER_OFF_GRACE: Duration = Duration::from_secs(5);

/// How to run the VM, from berthd's flags.
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub assets: PathBuf,
    pub accel: Accel,
    /// A sandbox's size (berthd's); a lone shim sizes from the limits.
    pub cpus: Option<u32>,
    pub memory_mib: Option<u64>,
}

/// A booted guest, and its size.
struct Guest {
    task: TaskClient,
    vm: Mutex<Option<Vm>>,
    cpus: u32,
    memory_mib: u64,
}

pub struct VmProxy {
    namespace: String,
    id: String,
    sandbox: bool,
    /// The shim's own socket, which terminal attach sockets are named after.
    socket: PathBuf,
    options: VmOptions,
    /// The VM's own files: `share` (shared with the guest) and `run`.
    dir: PathBuf,
    guest: OnceCell<Arc<Guest>>,
    /// Each container's guest bundle and host bundle.
    bundles: Mutex<HashMap<String, (GuestBundle, PathBuf)>>,
    /// Each process's stdio on the host, by container and exec id.
    ios: stdio::Ios,
    /// Where a lone VM's time goes (`steps.rs`).
    steps: steps::Steps,
    /// The share, once mounted (`guest_spec::mount_share`) and opened.
    share_root: Mutex<Option<Arc<ShareDir>>>,
    /// A lone container's exit, once recorded: its VM is then powered off
    /// and the shim answers for the stopped container itself.
    ended: Mutex<Option<berth_model::ExitStatus>>,
    /// One power-off at a time; a second waits for the first.
    powering: tokio::sync::Mutex<()>,
    shutdown: Notify,
}

impl VmProxy {
    pub fn new(
        namespace: String,
        id: String,
        sandbox: bool,
        runtime_root: &Path,
        socket: PathBuf,
        options: VmOptions,
    ) -> Arc<Self> {
        let dir = berth_vm::dir_of(runtime_root, &id);
        Arc::new(VmProxy {
            namespace,
            id,
            sandbox,
            socket,
            options,
            dir,
            guest: OnceCell::new(),
            bundles: Mutex::default(),
            ios: Mutex::default(),
            steps: steps::Steps::default(),
            share_root: Mutex::default(),
            ended: Mutex::default(),
            powering: tokio::sync::Mutex::new(()),
            shutdown: Notify::new(),
        })
    }

    fn share(&self) -> PathBuf {
        self.dir.join("share")
    }

    /// The VM's runtime files: its helpers' sockets.
    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// Where binds for the guest are made before they move into the share.
    fn stage(&self) -> PathBuf {
        self.dir.join("stage")
    }

    /// The share, made once: a small tmpfs (`guest_spec::mount_share`),
    /// held open before any guest can reach it.
    fn ensure_share(&self) -> TtrpcResult<Arc<ShareDir>> {
        let mut root = self.share_root.lock().map_err(|_| to_ttrpc(Code::Internal, "share lock poisoned"))?;
        if let Some(share) = root.as_ref() {
            return Ok(share.clone());
        }
        let share = self.share();
        for dir in [&share, &self.stage()] {
            std::fs::create_dir_all(dir).map_err(|e| to_ttrpc(Code::Internal, format!("create the share: {e}")))?;
        }
        guest_spec::mount_share(&share).map_err(|e| to_ttrpc(Code::Internal, e))?;
        let opened =
            ShareDir::open_root(&share).map_err(|e| to_ttrpc(Code::Internal, format!("open the share: {e}")))?;
        Ok(root.insert(Arc::new(opened)).clone())
    }

    /// Forgets container `id`'s guest bundle: unmounts what it bound and
    /// removes its files from the share (`ShareDir::remove`), so the id
    /// can be created again in a running VM.
    fn forget(&self, id: &str) {
        if let Ok(mut ios) = self.ios.lock() {
            ios.retain(|(container, _), _| container != id);
        }
        let removed = self.bundles.lock().ok().and_then(|mut b| b.remove(id));
        let Some((mut guest, _)) = removed else { return };
        guest.unmount();
        let share = self.share_root.lock().ok().and_then(|s| s.clone());
        if let Some(Err(e)) = share.map(|s| s.remove(id)) {
            tracing::warn!(id, "remove the guest bundle from the share: {e}");
        }
    }

    /// Forgets exec `exec_id` of container `id`: ends its stdio.
    fn forget_exec(&self, id: &str, exec_id: &str) {
        if let Ok(mut ios) = self.ios.lock() {
            ios.remove(&(id.to_string(), exec_id.to_string()));
        }
    }

    /// The guest's size: a sandbox's from berthd, a lone container's from
    /// its limits (`bundle`).
    fn size(&self, bundle: &Path) -> (u32, u64) {
        match self.sandbox {
            true => (self.options.cpus.unwrap_or(1), self.options.memory_mib.unwrap_or(berth_vm::DEFAULT_MEMORY_MIB)),
            false => berth_vm::size_of_bundle(bundle),
        }
    }

    /// The booted guest, booting it if it is not yet: sized from the
    /// container's bundle at `bundle` (a lone shim's) or the sandbox's
    /// flags, on the network namespace that bundle joins.
    async fn boot(&self, bundle: &Path) -> TtrpcResult<Arc<Guest>> {
        let guest = self.guest.get_or_try_init(|| self.launch(bundle)).await?;
        Ok(guest.clone())
    }

    /// The running guest: not before the boot, nor after a lone
    /// container's exit powered it off.
    fn booted(&self) -> TtrpcResult<Arc<Guest>> {
        if self.ended().is_some() {
            return Err(to_ttrpc(Code::FailedPrecondition, format!("container {} has exited; its VM is off", self.id)));
        }
        self.guest.get().cloned().ok_or_else(|| to_ttrpc(Code::FailedPrecondition, "the VM has not booted"))
    }

    fn ended(&self) -> Option<berth_model::ExitStatus> {
        self.ended.lock().ok().and_then(|e| *e)
    }

    async fn launch(&self, bundle: &Path) -> TtrpcResult<Arc<Guest>> {
        let (cpus, memory_mib) = self.size(bundle);
        let failed = |e: berth_vm::VmError| {
            let code = match &e {
                berth_vm::VmError::InvalidArgument(_) => Code::InvalidArgument,
                berth_vm::VmError::Assets(_) | berth_vm::VmError::FailedPrecondition(_) => Code::FailedPrecondition,
                _ => Code::Internal,
            };
            to_ttrpc(code, e)
        };
        let version = env!("CARGO_PKG_VERSION");
        let assets = Assets::load(&self.options.assets, version).map_err(failed)?;
        let net = match net::netns_of(bundle) {
            Some(netns) => {
                net::attach(&netns).map_err(|e| to_ttrpc(Code::Internal, format!("the VM's network: {e}")))?
            }
            None => None,
        };
        let spec = VmSpec {
            id: self.id.clone(),
            cpus,
            memory_mib,
            share: self.share(),
            state: self.run_dir(),
            accel: self.options.accel,
            assets,
            guest_log: std::env::var("BERTH_SHIM_LOG").ok(),
            net,
        };
        // On this (the shim's only) thread: the VM's processes die with it.
        let t = std::time::Instant::now();
        let mut vm = berth_vm::launch(&Microvm, &spec).map_err(failed)?;
        let t = self.steps.record("vmm.launch", t);
        let stream = vm.wait_ready(BOOT_TIMEOUT).await.map_err(failed)?;
        self.steps.record("guest.boot", t);
        let pids = vm.pids();
        let task = TaskClient::new(Client::new(Socket::new(stream)));
        let guest = Arc::new(Guest { task, vm: Mutex::new(Some(vm)), cpus, memory_mib });
        for pid in pids {
            self.watch_vm(pid, guest.clone());
        }
        tracing::info!(id = %self.id, cpus, memory_mib, accel = spec.accel.as_str(), "the VM is up");
        Ok(guest)
    }

    /// Exits the shim when one of the VM's processes dies unasked (QEMU,
    /// or the vsock backend without which the guest is out of reach): the
    /// containers are gone, and berthd cleans up after a dead shim. The
    /// binds go with this process's mount namespace.
    fn watch_vm(&self, pid: u32, guest: Arc<Guest>) {
        let id = self.id.clone();
        let watched = berth_shim::pidfd_open(pid).map_err(|e| e.to_string()).and_then(|fd| {
            // SAFETY: the AsyncFd owns the pidfd for its whole life.
            unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.to_string())
        });
        let fd = match watched {
            Ok(fd) => fd,
            Err(e) => {
                eprintln!("berth-shim: cannot watch process {pid} of the VM of {id} ({e}): ending");
                std::process::exit(1);
            }
        };
        tokio::spawn(async move {
            let _ = fd.readable().await;
            if let Some(vm) = guest.vm.lock().ok().and_then(|mut v| v.take()) {
                eprintln!("berth-shim: the VM of {id} ended: {}", vm.console_tail());
                drop(vm);
                std::process::exit(1);
            }
        });
    }

    /// Powers the guest off (its shim's Shutdown), stops the VM, then
    /// removes the VM's directory (the guest can no longer touch it).
    async fn power_off(&self) {
        let _one = self.powering.lock().await;
        let vm = self.guest.get().and_then(|g| g.vm.lock().ok().and_then(|mut v| v.take()).map(|vm| (g.clone(), vm)));
        if let Some((guest, vm)) = vm {
            // The guest's shim shuts down only once it holds nothing: what
            // it still holds (an exited container, or one a forced
            // Shutdown leaves) is killed and deleted first.
            let held: Vec<String> = self.bundles.lock().map(|b| b.keys().cloned().collect()).unwrap_or_default();
            let goodbye = async {
                for id in held {
                    let kill = api::KillRequest {
                        id: id.clone(),
                        signal: libc::SIGKILL as u32,
                        all: true,
                        ..Default::default()
                    };
                    let _ = guest.task.kill(ctx(None), &kill).await;
                    let _ = guest.task.delete(ctx(None), &api::DeleteRequest { id, ..Default::default() }).await;
                }
                let req = api::ShutdownRequest { id: self.id.clone(), now: true, ..Default::default() };
                let _ = guest.task.shutdown(ctx(None), &req).await;
            };
            let t = std::time::Instant::now();
            let _ = tokio::time::timeout(POWER_OFF_GRACE, goodbye).await;
            if !vm.stop(POWER_OFF_GRACE).await {
                tracing::warn!(id = %self.id, "the guest did not power off: killed");
            }
            self.steps.record("guest.power_off", t);
        }
        let t = std::time::Instant::now();
        if let Err(e) = guest_spec::remove_vm_dir(&self.dir) {
            eprintln!("berth-shim: remove {}: {e}", self.dir.display());
        }
        self.steps.record("host.cleanup", t);
    }

    pub async fn shutdown_requested(&self) {
        self.shutdown.notified().await
    }
}

/// A forwarded call's context: the caller's deadline, if any.
fn ctx(timeout_nano: Option<i64>) -> ttrpc::context::Context {
    match timeout_nano.filter(|t| *t > 0) {
        Some(t) => ttrpc::context::with_timeout(t),
        None => ttrpc::context::Context::default(),
    }
}

/// Cleans up after a dead VM shim (`--cleanup`): its VM and its mount
/// namespace (with every bind, and the share's tmpfs with the guest's own
/// exit records) died with it. Returns the exit recorded in the host
/// bundle, then removes the VM's directory.
pub fn cleanup(runtime_root: &Path, shim_id: &str, bundle: &Path) -> Result<Option<berth_model::ExitStatus>, String> {
    let dir = berth_vm::dir_of(runtime_root, shim_id);
    guest_spec::remove_vm_dir(&dir).map_err(|e| format!("remove {}: {e}", dir.display()))?;
    Ok(crate::cleanup::recorded_exit(bundle))
}
