//! A container's bundle as its guest sees it (docs/vm.md). The host
//! shares one directory with the guest; each container gets `SHARE/ID/`
//! holding a rewritten `config.json`, its root filesystem bind-mounted at
//! `rootfs`, and each host bind mount of the spec at `m<N>` (stdio is not
//! shared: it is streamed, `stdio.rs`). The rewrite points the spec at
//! those guest paths and
//! drops what only makes sense on the host: namespace paths (the guest
//! makes its own; its containers share the guest's network namespace),
//! hooks (host programs; refused), AppArmor and SELinux
//! labels.
//!
//! The guest is not trusted with the share: it can rename, replace and
//! link anything in it, also while the host prepares a second container
//! of a running VM. So every file in the share is reached through a held
//! directory descriptor, one name at a time (`share.rs`), and the binds
//! exist only in the VM shim's own mount namespace ([`private_mounts`];
//! QEMU serves the share from there): they vanish with the shim, whatever
//! kills it, and an unmount the guest misdirects through a symlink only
//! ever touches that namespace. The share itself is a small tmpfs there.
//! Bind mounts the spec makes read-only are read-only for the guest too;
//! all are nodev and nosuid. A deleted container's files go at once, by a
//! removal that stays on the share's file system; the rest goes once the
//! VM is dead, after every mount under its directory is gone.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use berth_model::ExitStatus;
use berth_model::mountinfo::mounts;
use berth_model::vm::GUEST_SHARE;

use super::share::ShareDir;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde_json::Value;

/// Why a bundle cannot run in a VM.
pub type Refusal = String;

/// The share's own files: per container a config.json, exit records and
/// mount points.
const SHARE_TMPFS: &str = "size=8m,nr_inodes=4096,mode=0755";

/// The guest's view of one container.
pub struct GuestBundle {
    /// That directory, held open: every file in it is reached through it.
    pub files: ShareDir,
    /// The same directory in the guest.
    pub guest_dir: String,
    /// The binds made for it, newest last (`share::unmount`).
    mounts: Vec<OwnedFd>,
    /// Where binds are staged (`ShareDir::bind`).
    stage: PathBuf,
}

impl GuestBundle {
    /// Prepares `SHARE/ID` in `share` for the bundle at `bundle`, its binds
    /// staged in `stage`. On error nothing is left mounted; the directory
    /// may stay, for [`ShareDir::remove`].
    pub fn prepare(share: &ShareDir, stage: &Path, id: &str, bundle: &Path) -> Result<Self, Refusal> {
        let text = std::fs::read(bundle.join("config.json")).map_err(|e| format!("read config.json: {e}"))?;
        let mut spec: Value = serde_json::from_slice(&text).map_err(|e| format!("config.json: {e}"))?;
        refuse_host_only(&spec)?;
        let files = share.make_dir(id).map_err(|e| format!("create {id} in the share: {e}"))?;
        let guest_dir = format!("{GUEST_SHARE}/{id}");
        let mut g = GuestBundle { files, guest_dir, mounts: Vec::new(), stage: stage.to_path_buf() };
        if let Err(e) = g.bind_all(&mut spec, bundle) {
            g.unmount();
            return Err(e);
        }
        Ok(g)
    }

    /// Detaches every bind made for this container, wherever the guest
    /// has moved them.
    pub fn unmount(&mut self) {
        for mount in self.mounts.drain(..).rev() {
            super::share::unmount(&mount);
        }
    }

    fn bind(&mut self, name: &str, source: &Path, readonly: bool) -> Result<(), Refusal> {
        let mount = self.files.bind(name, source, readonly, &self.stage)?;
        self.mounts.push(mount);
        Ok(())
    }

    fn bind_all(&mut self, spec: &mut Value, bundle: &Path) -> Result<(), Refusal> {
        let root = spec.pointer("/root/path").and_then(Value::as_str).ok_or("the spec names no root path")?;
        // Writable for the guest even when the spec's root is read-only:
        // its runtime makes the mount points first, then makes it
        // read-only inside the container (as runc does on a host).
        self.bind("rootfs", &bundle.join(root), false)?;
        spec["root"]["path"] = Value::from(format!("{}/rootfs", self.guest_dir));
        if let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) {
            for (n, m) in mounts.iter_mut().enumerate() {
                let binds = m.get("type").and_then(Value::as_str) == Some("bind")
                    || m.get("options")
                        .and_then(Value::as_array)
                        .is_some_and(|o| o.iter().any(|o| o.as_str() == Some("bind") || o.as_str() == Some("rbind")));
                let Some(source) = m.get("source").and_then(Value::as_str).filter(|_| binds) else { continue };
                let readonly = m.get("options").and_then(Value::as_array).is_some_and(|o| o.iter().any(|o| o == "ro"));
                let name = format!("m{n}");
                self.bind(&name, Path::new(source), readonly)?;
                m["source"] = Value::from(format!("{}/{name}", self.guest_dir));
            }
        }
        // The guest makes its own namespaces, except the network's: the
        // containers of a VM share the guest's, which holds its eth0.
        if let Some(ns) = spec.pointer_mut("/linux/namespaces").and_then(Value::as_array_mut) {
            ns.retain(|n| n.get("type").and_then(Value::as_str) != Some("network"));
            for n in ns.iter_mut().filter_map(Value::as_object_mut) {
                n.remove("path");
            }
        }
        if let Some(process) = spec.get_mut("process").and_then(Value::as_object_mut) {
            process.remove("apparmorProfile");
            process.remove("selinuxLabel");
        }
        if let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) {
            linux.remove("mountLabel");
        }
        let json = serde_json::to_vec(spec).map_err(|e| format!("encode the guest's config.json: {e}"))?;
        self.files.write_new("config.json", &json).map_err(|e| format!("write the guest's config.json: {e}"))
    }

    /// The exit record the guest wrote as `name` in this directory, read as
    /// an untrusted file (`ShareDir::read_small`): at most 4 KiB of JSON.
    pub fn guest_exit(&self, name: &str) -> Option<ExitStatus> {
        serde_json::from_slice(&self.files.read_small(name, 4096)?).ok()
    }

    /// The OOM kills the guest counted at init's exit, if any (a number
    /// of at most 20 digits; anything else counts as none).
    pub fn guest_oom_kills(&self) -> Option<u64> {
        let bytes = self.files.read_small(berth_model::vm::OOM_KILLS_FILE, 20)?;
        std::str::from_utf8(&bytes).ok()?.trim().parse().ok().filter(|n| *n > 0)
    }
}

fn refuse_host_only(spec: &Value) -> Result<(), Refusal> {
    if spec
        .get("hooks")
        .and_then(Value::as_object)
        .is_some_and(|h| h.values().any(|v| v.as_array().is_some_and(|a| !a.is_empty())))
    {
        return Err("hooks run host programs; a container in a VM cannot have them".into());
    }
    Ok(())
}

/// Moves this process into a mount namespace of its own (a slave of the
/// host's: host mounts still arrive, its own never leave). Called before
/// any thread or child exists.
pub fn private_mounts() -> Result<(), String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| format!("own mount namespace: {e}"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(|e| format!("own mount namespace: {e}"))
}

/// The share: a small tmpfs of its own (nodev, nosuid), so what the guest
/// writes outside the binds neither fills the host's disk or memory nor
/// becomes a device or a setuid program to QEMU.
pub fn mount_share(share: &Path) -> Result<(), Refusal> {
    let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    mount(Some("berth-vm-share"), share, Some("tmpfs"), flags, Some(SHARE_TMPFS))
        .map_err(|e| format!("mount the share {}: {e}", share.display()))?;
    mount(None::<&str>, share, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| format!("mount the share {}: {e}", share.display()))
}

/// Unmounts, in this namespace, every mount at or under `dir`, deepest
/// first, as /proc/self/mountinfo names them (wherever the guest moved
/// them). True if none is left.
pub fn unmount_under(dir: &Path) -> bool {
    let mounts = |dir: &Path| -> Vec<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let (exact, under) = (dir.to_string_lossy().into_owned(), format!("{}/", dir.display()));
        let mut points: Vec<String> =
            mounts(&info).map(|m| m.point.into_owned()).filter(|p| *p == exact || p.starts_with(&under)).collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        points
    };
    // Deepest first, again while that makes progress (a mount covered by
    // another comes free once the upper one is gone).
    let mut left = mounts(dir);
    loop {
        for point in &left {
            let _ = umount2(point.as_str(), MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
        }
        let now = mounts(dir);
        if now.is_empty() || now.len() >= left.len() {
            return now.is_empty();
        }
        left = now;
    }
}

/// Removes a VM's directory once its VM is dead: every mount under it
/// first (refusing to remove anything if one stays), then the files,
/// without following the guest's symlinks.
pub fn remove_vm_dir(dir: &Path) -> std::io::Result<()> {
    if !unmount_under(dir) {
        return Err(std::io::Error::other(format!("{} is still mounted", dir.display())));
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        done => done,
    }
}
