//! berthd's side of VM sandboxes (runtime `vm`, SPEC B26, docs/vm.md):
//! where the guest's assets are and which accelerator VMs use (resolved
//! once at startup), the flags a VM shim gets, and what a container in a
//! VM cannot ask for yet. The VM itself is the shim's (crates/shim/src/vm).

use std::ffi::OsString;
use std::path::PathBuf;

use berth_vm::{Accel, AccelChoice};

use crate::create::CreateParams;
use crate::error::{Error, Result};

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

/// For a container in a VM (`runtime` is `vm`): refuses what it cannot
/// have yet, and gives it no network of the host's: the guest's own
/// namespace (`none`) is the one that works until VM networking lands.
pub fn check_create(runtime: &str, p: &mut CreateParams) -> Result<()> {
    if runtime != berth_model::VM_RUNTIME {
        return Ok(());
    }
    let refuse =
        |what: &str| Err(Error::FailedPrecondition(format!("{what} is not supported for a container in a VM yet")));
    if p.tty || p.stdin {
        return refuse("a terminal or interactive stdin");
    }
    if p.restore.is_some() {
        return refuse("a restore");
    }
    if p.sandbox.is_some() {
        return refuse("joining a sandbox");
    }
    // Its directory would be shared with the guest.
    if p.log_path.is_some() {
        return refuse("a log path of the caller's");
    }
    if !p.net.publish.is_empty() || !matches!(p.net.mode.as_str(), "" | "none") {
        return refuse("a network other than none");
    }
    p.net.mode = "none".into();
    Ok(())
}
