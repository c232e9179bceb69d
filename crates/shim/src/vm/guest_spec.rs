//! A container's bundle as its guest sees it (docs/vm.md). The host
//! shares one directory with the guest; each container gets `SHARE/ID/`
//! holding a rewritten `config.json`, its root filesystem bind-mounted at
//! `rootfs`, its log directory at `logs`, and each host bind mount of the
//! spec at `m<N>`. The rewrite points the spec at those guest paths and
//! drops what only makes sense on the host: namespace paths (the guest
//! makes its own), hooks (host programs; refused), AppArmor and SELinux
//! labels. Everything is undone by [`release`], also after a crash
//! (`--cleanup`).

use std::path::{Path, PathBuf};

use berth_model::vm::GUEST_SHARE;
use berth_shim::crilog::{self, parse_target};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde_json::Value;

/// Why a bundle cannot run in a VM.
pub type Refusal = String;

/// The guest's view of one container.
pub struct GuestBundle {
    /// `SHARE/ID` on the host.
    pub dir: PathBuf,
    /// The same directory in the guest.
    pub guest_dir: String,
    /// The host log directory bound at `dir/logs`, if any.
    logs: Option<PathBuf>,
}

impl GuestBundle {
    /// Prepares `SHARE/ID` for the bundle at `bundle` whose output goes to
    /// `stdout` and `stderr` (log targets or paths). On error nothing is
    /// left mounted or made.
    pub fn prepare(share: &Path, id: &str, bundle: &Path, stdout: &str, stderr: &str) -> Result<Self, Refusal> {
        let dir = share.join(id);
        let guest_dir = format!("{GUEST_SHARE}/{id}");
        let text = std::fs::read(bundle.join("config.json")).map_err(|e| format!("read config.json: {e}"))?;
        let mut spec: Value = serde_json::from_slice(&text).map_err(|e| format!("config.json: {e}"))?;
        let logs =
            [stdout, stderr].iter().filter(|s| !s.is_empty()).map(|s| log_dir(s)).collect::<Result<Vec<_>, _>>()?;
        if logs.windows(2).any(|w| w[0] != w[1]) {
            return Err("stdout and stderr must be in one directory in a VM".into());
        }
        refuse_host_only(&spec)?;
        let _ = release(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut g = GuestBundle { dir, guest_dir, logs: logs.first().cloned() };
        if let Err(e) = g.bind_all(&mut spec, bundle) {
            let _ = release(&g.dir);
            return Err(e);
        }
        Ok(g)
    }

    fn bind_all(&mut self, spec: &mut Value, bundle: &Path) -> Result<(), Refusal> {
        let root = spec.pointer("/root/path").and_then(Value::as_str).ok_or("the spec names no root path")?;
        let root = bundle.join(root);
        bind(&root, &self.dir.join("rootfs"))?;
        spec["root"]["path"] = Value::from(format!("{}/rootfs", self.guest_dir));
        if let Some(logs) = &self.logs {
            bind(logs, &self.dir.join("logs"))?;
        }
        if let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) {
            for (n, m) in mounts.iter_mut().enumerate() {
                let binds = m.get("type").and_then(Value::as_str) == Some("bind")
                    || m.get("options")
                        .and_then(Value::as_array)
                        .is_some_and(|o| o.iter().any(|o| o.as_str() == Some("bind") || o.as_str() == Some("rbind")));
                let Some(source) = m.get("source").and_then(Value::as_str).filter(|_| binds) else { continue };
                let name = format!("m{n}");
                bind(Path::new(source), &self.dir.join(&name))?;
                m["source"] = Value::from(format!("{}/{name}", self.guest_dir));
            }
        }
        if let Some(ns) = spec.pointer_mut("/linux/namespaces").and_then(Value::as_array_mut) {
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
        std::fs::write(self.dir.join("config.json"), json).map_err(|e| format!("write the guest's config.json: {e}"))
    }

    /// A log target or path of this container as the guest sees it: its
    /// file in the bound log directory. Empty stays empty.
    pub fn guest_output(&self, target: &str) -> Result<String, Refusal> {
        if target.is_empty() {
            return Ok(String::new());
        }
        let path = target_path(target)?;
        let name = path.file_name().ok_or_else(|| format!("{target} names no file"))?;
        if self.logs.as_deref() != path.parent() {
            return Err(format!("{target} is outside the container's log directory"));
        }
        let guest = PathBuf::from(format!("{}/logs", self.guest_dir)).join(name);
        Ok(match parse_target(target) {
            Some(t) => match t.rotation {
                Some(r) => crilog::berth_target(t.stream, &guest, r),
                None => crilog::target(t.stream, &guest),
            },
            None => guest.to_string_lossy().into_owned(),
        })
    }
}

/// The file a log target or a plain path writes to.
fn target_path(target: &str) -> Result<PathBuf, Refusal> {
    let path = parse_target(target).map(|t| t.path.to_path_buf()).unwrap_or_else(|| PathBuf::from(target));
    if !path.is_absolute() {
        return Err(format!("output {target} is not an absolute path"));
    }
    Ok(path)
}

fn log_dir(target: &str) -> Result<PathBuf, Refusal> {
    let path = target_path(target)?;
    path.parent().map(Path::to_path_buf).ok_or_else(|| format!("{target} has no directory"))
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

/// Bind-mounts `source` (a directory or a file) on a new mount point `at`.
fn bind(source: &Path, at: &Path) -> Result<(), Refusal> {
    let meta = std::fs::metadata(source).map_err(|e| format!("{}: {e}", source.display()))?;
    let made = if meta.is_dir() { std::fs::create_dir(at) } else { std::fs::File::create(at).map(drop) };
    made.map_err(|e| format!("create {}: {e}", at.display()))?;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(source), at, None::<&str>, flags, None::<&str>)
        .map_err(|e| format!("bind {} for the guest: {e}", source.display()))?;
    // Not shared back into the host's mounts, nor receiving theirs.
    let _ = mount(None::<&str>, at, None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>);
    Ok(())
}

/// Unmounts everything under `SHARE/ID` (`dir`) and removes it.
pub fn release(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        // Lazily: a guest may still hold a file open.
        let _ = umount2(&path, MntFlags::MNT_DETACH);
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        // Never into anything still bound: only what the shims made here.
        if is_mount_point(&path)? {
            return Err(std::io::Error::other(format!("{} is still mounted", path.display())));
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    std::fs::remove_dir(dir)
}

/// Whether `path` is the root of a mount (statx's STATX_ATTR_MOUNT_ROOT).
fn is_mount_point(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a zeroed statx is a valid out-buffer; `c` is NUL-terminated.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_DONT_SYNC;
    // SAFETY: as above.
    if unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), flags, 0, &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let known = st.stx_attributes_mask & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0;
    if !known {
        return Err(std::io::Error::other("this kernel does not tell mount roots (statx)"));
    }
    Ok(st.stx_attributes & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0)
}
