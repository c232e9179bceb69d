//! berthd's side of VM sandboxes (runtime `vm`, SPEC B26, docs/vm.md):
//! where the guest's assets are and which accelerator VMs use (resolved
//! once at startup), the flags a VM shim gets, and what a container in a
//! VM cannot ask for yet. The VM itself is the shim's (crates/shim/src/vm).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use berth_model::vm::VmInfo;

use berth_vm::{Accel, AccelChoice};

use berth_model::NsShare;

use crate::create::CreateParams;
use crate::error::{Error, Result};
use crate::network::NetOptions;
use crate::sandbox::SandboxParams;

#[derive(Debug, Clone)]
pub struct VmConfig {
    /// `make vm-assets`'s output (`--vm-assets`).
    pub assets: PathBuf,
    pub accel: Accel,
    /// Why `auto` did not pick KVM, if it did not.
    pub note: Option<String>,
}

impl VmConfig {
    /// Resolves `--vm-accel` (a probe of /dev/kvm and the CPU's flags).
    pub fn new(assets: PathBuf, accel: &str) -> std::result::Result<Self, String> {
        let choice: AccelChoice = accel.parse().map_err(|e| format!("--vm-accel: {e}"))?;
        let (accel, note) = berth_vm::accel::resolve(choice).map_err(|e| format!("--vm-accel: {e}"))?;
        Ok(VmConfig { assets, accel, note })
    }

    /// The flags a VM shim is started with.
    pub fn shim_flags(&self) -> Vec<OsString> {
        let mut flags: Vec<OsString> = vec!["--vm-assets".into(), self.assets.clone().into()];
        flags.extend(["--vm-accel".into(), self.accel.as_str().into()]);
        flags
    }

    /// What a VM needs on this host, checked before a create makes
    /// anything: QEMU, the vsock backend and the assets' manifest (the
    /// shim checks the assets' digests when it boots).
    pub fn check_installed(&self) -> Result<()> {
        for program in [berth_vm::qemu::QEMU, berth_vm::qemu::VSOCK_BACKEND] {
            if berth_vm::on_path(program).is_none() {
                let msg = format!("{program} is not installed, and VMs need it; run `{}`", berth_vm::assets::FIX);
                return Err(Error::FailedPrecondition(msg));
            }
        }
        if !self.assets.join("assets.json").is_file() {
            return Err(Error::FailedPrecondition(format!(
                "no VM assets in {}; run `{}` (or start berthd with --vm-assets DIR)",
                self.assets.display(),
                berth_vm::assets::FIX
            )));
        }
        Ok(())
    }
}

impl VmConfig {
    /// The VM a new container of `runtime` gets to itself (none in a
    /// sandbox, or for another runtime): sized as its shim sizes it, from
    /// the limits in its bundle.
    pub fn own_vm(&self, runtime: &str, in_sandbox: bool, bundle: &Path) -> Option<VmInfo> {
        if runtime != berth_model::VM_RUNTIME || in_sandbox {
            return None;
        }
        let (cpus, memory_mib) = berth_vm::size_of_bundle(bundle);
        Some(VmInfo { accel: self.accel.as_str().into(), cpus, memory_mib })
    }
}

/// For a container in a VM (`runtime` is `vm`): refuses what it cannot
/// have yet. Its network is a namespace of its own that the VM's shim
/// bridges into the guest (or, in a sandbox, the sandbox's); the host's
/// or another container's namespace is refused.
pub fn check_create(runtime: &str, p: &mut CreateParams) -> Result<()> {
    if runtime != berth_model::VM_RUNTIME {
        return Ok(());
    }
    if p.restore.is_some() {
        return Err(Error::FailedPrecondition("a restore is not supported for a container in a VM yet".into()));
    }
    own_network(&p.net)
}

/// A VM's network namespace must be one berthd makes for it: not the
/// host's, not another container's.
fn own_network(net: &NetOptions) -> Result<()> {
    if net.mode == "host" || net.mode.starts_with("container:") {
        return Err(Error::FailedPrecondition(format!(
            "a VM cannot use --network {}: its network is a namespace of its own, bridged into the guest",
            net.mode
        )));
    }
    Ok(())
}

/// For a new sandbox of `runtime`: the VM it gets (runtime `vm`), sized
/// from `--cpus` and `--memory` (bytes; 0 for the defaults), with the
/// namespaces a VM can give its containers: a network of its own (not
/// the host's), each container its own PID and IPC namespace in the guest.
/// A size for a sandbox of another runtime is refused.
pub fn sandbox_vm(cfg: &VmConfig, runtime: &str, p: &mut SandboxParams) -> Result<Option<VmInfo>> {
    if runtime != berth_model::VM_RUNTIME {
        if p.cpus != 0 || p.memory != 0 {
            return Err(Error::InvalidArgument("--cpus and --memory size the VM of a VM sandbox (--vm) only".into()));
        }
        return Ok(None);
    }
    cfg.check_installed()?;
    if p.cpus > berth_vm::MAX_CPUS {
        return Err(Error::InvalidArgument(format!("a VM has 1 to {} vCPUs, not {}", berth_vm::MAX_CPUS, p.cpus)));
    }
    if p.memory > berth_vm::MAX_MEMORY_MIB << 20 {
        return Err(Error::InvalidArgument(format!(
            "a VM gets at most {} MiB of memory, not {} bytes",
            berth_vm::MAX_MEMORY_MIB,
            p.memory
        )));
    }
    if p.pid == NsShare::Pod {
        return Err(Error::FailedPrecondition(
            "a PID namespace shared by the containers of a VM sandbox is not supported yet".into(),
        ));
    }
    own_network(&p.net)?;
    p.pid = NsShare::Container;
    p.ipc = NsShare::Container;
    let memory_mib = match p.memory {
        0 => berth_vm::DEFAULT_MEMORY_MIB,
        bytes => berth_vm::memory_mib(bytes),
    };
    Ok(Some(VmInfo { accel: cfg.accel.as_str().into(), cpus: p.cpus.max(1), memory_mib }))
}

/// The flags that size a sandbox's VM, for its shim.
pub fn size_flags(vm: &VmInfo) -> Vec<OsString> {
    vec!["--vm-cpus".into(), vm.cpus.to_string().into(), "--vm-memory".into(), vm.memory_mib.to_string().into()]
}

/// Makes sure root filesystems mounted under berthd's bundle directory
/// (`root`) after a VM sandbox's shim made its own mount namespace reach
/// that namespace: they do when the directory's mount is shared (a
/// systemd host's `/`); else the directory becomes a shared bind mount of
/// itself, as iproute2 does for /run/netns, but only while nothing is
/// mounted below it (a bind over mounts would hide them). Otherwise a
/// warning says what the operator can do. Called at berthd's start (the
/// first after a boot finds nothing mounted there; the self-bind outlives
/// berthd) and again when a VM sandbox's shim starts.
pub fn share_bundles(root: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let berth_model::mountinfo::Mount { point, tags, .. } =
        berth_model::mountinfo::mount_of(&info, root).unwrap_or_default();
    if tags.iter().any(|t| t.starts_with("shared:")) {
        return;
    }
    if Path::new(point.as_ref()) != root && !crate::doctor::mounts_under(root).is_empty() {
        tracing::warn!(
            "{} is on mount {point}, which is not shared, and holds mounts: images started in a VM sandbox after its VM may find an empty root (make it shared: mount --make-rshared {point})",
            root.display()
        );
        return;
    }
    if let Err(e) = berth_network::pin::prepare_dir(root) {
        tracing::warn!("make {} a shared mount for VM sandboxes: {e}", root.display());
    }
}
