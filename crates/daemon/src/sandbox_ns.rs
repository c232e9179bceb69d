//! The namespaces a sandbox's containers share besides the network (SPEC
//! B34). (A lone container's `--pid host` / `--ipc host` are run options,
//! `mounts.rs`.)
//!
//! - IPC `pod` (the default): berthd makes an IPC namespace and holds it
//!   with a bind mount, as it holds network namespaces; members join it by
//!   path.
//! - PID `pod` (Kubernetes' `shareProcessNamespace`): a PID namespace dies
//!   with its first process, so a bind mount alone cannot keep one usable.
//!   The sandbox's shim clones an init into a new one (`berth-shim
//!   --pid-init`, see the shim's `podinit.rs`), and berthd pins that
//!   namespace so members join it by path. A new shim (the old one died)
//!   brings a new init, and the pin is moved to it.
//! - `host`: members get no namespace of that kind; `container`: each gets
//!   its own, as a container outside a sandbox does.
//!
//! The pins live in `<state>/sandbox-ns`, a shared mount like the network
//! namespaces' directory, and go when the sandbox stops or is removed.

use std::path::{Path, PathBuf};

use berth_model::{Code, ContainerId, Namespace, NsShare, SandboxId};
use berth_network::pin::{self, NsKind};
use berth_store::SandboxRecord;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::manager::Manager;
use crate::mounts::Checked;
use crate::shim::ShimClient;
use crate::spec::set_namespace;

/// The shared kinds: spec type, pin kind and the pin's file extension.
const KINDS: [(LinuxNamespaceType, NsKind, &str); 2] =
    [(LinuxNamespaceType::Ipc, NsKind::Ipc, "ipc"), (LinuxNamespaceType::Pid, NsKind::Pid, "pid")];

fn mode(rec: &SandboxRecord, kind: NsKind) -> NsShare {
    if kind == NsKind::Pid { rec.pid } else { rec.ipc }
}

fn pin_path(cfg: &Config, ns: &Namespace, id: &SandboxId, kind: NsKind) -> PathBuf {
    let ext = KINDS.iter().find(|k| k.1 == kind).map_or("ns", |k| k.2);
    cfg.sandbox_ns_pin(ns, id, ext)
}

/// Whether process `pid` is PID 1 of a namespace of its own and a child of
/// `parent` (a shim's pod init, not a pid reused by another process).
fn is_init_of_child(pid: u32, parent: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_default();
    let nspid: Vec<&str> = field("NSpid:").split_whitespace().collect();
    field("PPid:") == parent.to_string() && nspid.len() >= 2 && nspid.last() == Some(&"1")
}

/// Sets a sandbox member's IPC and PID namespaces: the sandbox's pins, the
/// host's, or (container) the spec's own. The member's own `--pid`/`--ipc`
/// are refused: they are the sandbox's.
pub(crate) fn join(spec: &mut Spec, cfg: &Config, rec: &SandboxRecord, run: &Checked) -> Result<()> {
    if run.host_pid || run.host_ipc {
        return Err(Error::InvalidArgument(format!(
            "a container in sandbox {} has the sandbox's PID and IPC namespaces: give --pid and --ipc to `berth sandbox create`",
            rec.id
        )));
    }
    for (typ, kind, _) in KINDS {
        match mode(rec, kind) {
            NsShare::Container => {}
            NsShare::Pod => set_namespace(spec, typ, Some(&pin_path(cfg, &rec.namespace, &rec.id, kind)))?,
            NsShare::Host => set_namespace(spec, typ, None)?,
        }
    }
    Ok(())
}

impl Manager {
    /// Makes the sandbox's IPC namespace if its containers share one and
    /// its pin holds none (new, or lost with a reboot).
    pub(crate) fn pin_sandbox_ipc(&self, rec: &SandboxRecord) -> Result<()> {
        let held =
            |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC);
        if rec.ipc != NsShare::Pod || held(&pin_path(&self.cfg, &rec.namespace, &rec.id, NsKind::Ipc)) {
            return Ok(());
        }
        let path = self.pin_ready(rec, NsKind::Ipc)?;
        pin::create_ipc(&path).map_err(|e| Error::from(e).at("ipc namespace"))
    }

    /// Pins the PID namespace whose init the sandbox's (new) shim cloned.
    pub(crate) async fn pin_sandbox_pid(&self, rec: &SandboxRecord, client: &ShimClient) -> Result<()> {
        if rec.pid != NsShare::Pod {
            return Ok(());
        }
        let shim = ContainerId::new(rec.id.as_str())?;
        let init = client.task_pid(&shim).await?;
        if init == 0 {
            let message = format!("the shim of sandbox {} holds no PID namespace", rec.id);
            return Err(Error::Shim { code: Code::FailedPrecondition, message }.at("pid namespace"));
        }
        let refuse = |why: &str| {
            let message =
                format!("the shim of sandbox {} named process {init} as its PID namespace's init, {why}", rec.id);
            Error::Shim { code: Code::FailedPrecondition, message }.at("pid namespace")
        };
        if !is_init_of_child(init, client.pid) {
            return Err(refuse("which is not PID 1 of a namespace of the shim's child"));
        }
        let path = self.pin_ready(rec, NsKind::Pid)?;
        pin::bind_process(&path, init, NsKind::Pid).map_err(|e| Error::from(e).at("pid namespace"))?;
        // The pid could have been reused between the check and the bind:
        // never pin berthd's own (the host's) PID namespace.
        let inode = |p: &Path| std::fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok();
        if inode(&path).is_none() || inode(&path) == inode(Path::new("/proc/self/ns/pid")) {
            let _ = pin::remove(&path);
            return Err(refuse("whose namespace turned out to be the host's"));
        }
        Ok(())
    }

    /// The pin's path, its directory ready and any old pin gone.
    fn pin_ready(&self, rec: &SandboxRecord, kind: NsKind) -> Result<PathBuf> {
        pin::prepare_dir(&self.cfg.sandbox_ns_dir())?;
        let path = pin_path(&self.cfg, &rec.namespace, &rec.id, kind);
        pin::remove(&path)?;
        Ok(path)
    }

    /// Releases the sandbox's pins; absent ones are fine.
    pub(crate) fn unpin_sandbox(&self, ns: &Namespace, id: &SandboxId) -> Result<()> {
        for (_, kind, _) in KINDS {
            pin::remove(&pin_path(&self.cfg, ns, id, kind))?;
        }
        Ok(())
    }

    /// At a clean exit: the pins' directory mount goes once it is empty.
    pub(crate) fn release_pin_dir(&self) -> Result<()> {
        Ok(pin::release_dir(Path::new(&self.cfg.sandbox_ns_dir())).map(drop)?)
    }
}
