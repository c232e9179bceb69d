//! berth-shim on the host for containers in a VM (runtime `vm`, SPEC B26,
//! docs/vm.md). It boots the VM (`berth_vm`): a lone shim at its
//! container's Create, sized from the container's limits; a sandbox shim
//! at once, sized by berthd. Then it serves the Task API by forwarding
//! each call over vsock to the guest's berth-shim (`task.rs`), with the
//! bundle and output paths moved into the directory shared with the guest
//! (`guest_spec.rs`). Exits are recorded in the host bundle before they are
//! answered (SPEC B4). The VM's processes die with the shim
//! (PR_SET_PDEATHSIG); the shim exits when the VM dies, so berthd cleans
//! up as for any dead shim.

pub mod guest_spec;
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

type TtrpcResult<T> = ttrpc::Result<T>;

/// How long the guest may take from launch until its agent answers (TCG
/// boots in 1.5–2.5 s here; a loaded host takes longer).
const BOOT_TIMEOUT: Duration = Duration::from_secs(45);
/// How long a guest told to power off may take before it is killed.
const POWER_OFF_GRACE: Duration = Duration::from_secs(5);
/// Guest memory beyond a container's limit: kernel, agent and page cache.
pub const GUEST_OVERHEAD_MIB: u64 = 64;

/// How to run the VM, from berthd's flags.
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub assets: PathBuf,
    pub accel: Accel,
    /// A sandbox's size (berthd's); a lone shim sizes from the limits.
    pub cpus: Option<u32>,
    pub memory_mib: Option<u64>,
}

/// A booted guest.
struct Guest {
    task: TaskClient,
    vm: Mutex<Option<Vm>>,
}

pub struct VmProxy {
    namespace: String,
    id: String,
    sandbox: bool,
    options: VmOptions,
    /// The VM's own files: `share` (shared with the guest) and `run`.
    dir: PathBuf,
    guest: OnceCell<Arc<Guest>>,
    /// Each container's guest bundle and host bundle.
    bundles: Mutex<HashMap<String, (GuestBundle, PathBuf)>>,
    shutdown: Notify,
    /// This proxy, for the VM's watcher.
    me: std::sync::Weak<VmProxy>,
}

impl VmProxy {
    pub fn new(namespace: String, id: String, sandbox: bool, runtime_root: &Path, options: VmOptions) -> Arc<Self> {
        let dir = berth_vm::dir_of(runtime_root, &id);
        Arc::new_cyclic(|me| VmProxy {
            namespace,
            id,
            sandbox,
            options,
            dir,
            guest: OnceCell::new(),
            bundles: Mutex::default(),
            shutdown: Notify::new(),
            me: me.clone(),
        })
    }

    fn share(&self) -> PathBuf {
        self.dir.join("share")
    }

    /// The guest's size: a sandbox's from berthd, a lone container's from
    /// its limits (`bundle`).
    fn size(&self, bundle: &Path) -> (u32, u64) {
        match self.sandbox {
            true => (self.options.cpus.unwrap_or(1), self.options.memory_mib.unwrap_or(berth_vm::DEFAULT_MEMORY_MIB)),
            false => task::size_of(bundle),
        }
    }

    /// The booted guest, booting it with this size if it is not yet.
    async fn boot(&self, cpus: u32, memory_mib: u64) -> TtrpcResult<Arc<Guest>> {
        let guest = self.guest.get_or_try_init(|| self.launch(cpus, memory_mib)).await?;
        Ok(guest.clone())
    }

    fn booted(&self) -> TtrpcResult<Arc<Guest>> {
        self.guest.get().cloned().ok_or_else(|| to_ttrpc(Code::FailedPrecondition, "the VM has not booted"))
    }

    async fn launch(&self, cpus: u32, memory_mib: u64) -> TtrpcResult<Arc<Guest>> {
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
        std::fs::create_dir_all(self.share())
            .map_err(|e| to_ttrpc(Code::Internal, format!("create the share: {e}")))?;
        let spec = VmSpec {
            id: self.id.clone(),
            cpus,
            memory_mib,
            share: self.share(),
            state: self.dir.join("run"),
            accel: self.options.accel,
            assets,
            guest_log: std::env::var("BERTH_SHIM_LOG").ok(),
        };
        // On this (the shim's only) thread: the VM's processes die with it.
        let mut vm = berth_vm::launch(&Microvm, &spec).map_err(failed)?;
        let stream = vm.wait_ready(BOOT_TIMEOUT).await.map_err(failed)?;
        let vmm = *vm.pids().last().unwrap_or(&0);
        let guest =
            Arc::new(Guest { task: TaskClient::new(Client::new(Socket::new(stream))), vm: Mutex::new(Some(vm)) });
        self.watch_vm(vmm, guest.clone());
        tracing::info!(id = %self.id, cpus, memory_mib, accel = spec.accel.as_str(), "the VM is up");
        Ok(guest)
    }

    /// Exits the shim when the VMM dies unasked: its containers are gone,
    /// and berthd cleans up after a dead shim.
    fn watch_vm(&self, vmm: u32, guest: Arc<Guest>) {
        let Ok(fd) = berth_shim::pidfd_open(vmm) else { return };
        // SAFETY: the AsyncFd owns the pidfd for its whole life.
        let Ok(fd) = (unsafe { tokio::io::unix::AsyncFd::register(fd) }) else { return };
        let Some(proxy) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            let _ = fd.readable().await;
            if let Some(vm) = guest.vm.lock().ok().and_then(|mut v| v.take()) {
                eprintln!("berth-shim: the VM of {} exited: {}", proxy.id, vm.console_tail());
                drop(vm);
                proxy.release_all();
                std::process::exit(1);
            }
        });
    }

    /// Powers the guest off (its shim's Shutdown), then stops the VM.
    async fn power_off(&self) {
        let Some(guest) = self.guest.get() else { return };
        let Some(vm) = guest.vm.lock().ok().and_then(|mut v| v.take()) else { return };
        let req = api::ShutdownRequest { id: self.id.clone(), now: true, ..Default::default() };
        let _ = tokio::time::timeout(POWER_OFF_GRACE, guest.task.shutdown(ctx(None), &req)).await;
        if !vm.stop(POWER_OFF_GRACE).await {
            tracing::warn!(id = %self.id, "the guest did not power off: killed");
        }
        self.release_all();
        let _ = std::fs::remove_dir(self.share());
        let _ = std::fs::remove_dir(&self.dir);
    }

    fn release_all(&self) {
        let bundles: Vec<PathBuf> =
            self.bundles.lock().map(|b| b.values().map(|(g, _)| g.dir.clone()).collect()).unwrap_or_default();
        for dir in bundles {
            let _ = guest_spec::release(&dir);
        }
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

/// Cleans up after a dead VM shim (`--cleanup`): its VM died with it;
/// what is left is the guest bundle's mounts. Returns the exit recorded in
/// the host bundle, or else the one the guest recorded.
pub fn cleanup(runtime_root: &Path, shim_id: &str, bundle: &Path) -> Result<Option<berth_model::ExitStatus>, String> {
    let id = bundle.file_name().ok_or("the bundle has no name")?;
    let dir = berth_vm::dir_of(runtime_root, shim_id);
    let guest = dir.join("share").join(id);
    let recorded = crate::cleanup::recorded_exit(bundle).or_else(|| crate::cleanup::recorded_exit(&guest));
    guest_spec::release(&guest).map_err(|e| format!("release {}: {e}", guest.display()))?;
    // The last container of a dead VM's shim takes the VM's directory.
    let _ = std::fs::remove_dir(dir.join("share"));
    let _ = std::fs::remove_dir_all(dir.join("run"));
    let _ = std::fs::remove_dir(&dir);
    Ok(recorded)
}
