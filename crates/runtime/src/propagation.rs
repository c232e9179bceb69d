//! Mount propagation of a container's bind mounts, for the embedded
//! runtime. youki's libcontainer (0.7) makes bind mounts with open_tree and
//! move_mount and never applies the `private`/`slave`/`shared` options of a
//! mount (runc and crun do), so a bind of a shared host directory stays a
//! slave of it (what the root's default `slave` propagation makes of it)
//! whatever the spec says: a Kubernetes `None` volume would see the host's
//! new mounts and `Bidirectional` would share nothing.
//!
//! Once the container is created (its init waits for start, its root
//! pivoted), a short-lived child enters the container's mount namespace and
//! sets each such mount's propagation, as runc does after its bind; paths
//! resolve inside the container's root (see [`set_all`]). Mounts
//! whose host source is private already and that ask for private are left
//! alone, so the common case costs no fork.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};
use serde_json::Value;

use berth_model::mountinfo::mount_of;

use crate::error::RuntimeError;

/// The propagation a mount option asks for.
fn flags(option: &str) -> Option<MsFlags> {
    let (recursive, kind) = match option.strip_prefix('r') {
        Some(rest) if matches!(rest, "private" | "slave" | "shared" | "unbindable") => (true, rest),
        _ => (false, option),
    };
    let flag = match kind {
        "private" => MsFlags::MS_PRIVATE,
        "slave" => MsFlags::MS_SLAVE,
        "shared" => MsFlags::MS_SHARED,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        _ => return None,
    };
    Some(if recursive { flag | MsFlags::MS_REC } else { flag })
}

/// The bind mounts of a spec (config.json as JSON) whose propagation must
/// be set: destination and flags, in spec order.
fn wanted(spec: &Value, host_mountinfo: &str) -> Vec<(PathBuf, MsFlags)> {
    let mounts = spec.get("mounts").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let mut out = Vec::new();
    for m in mounts {
        let options: Vec<&str> =
            m.get("options").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        let bind = m.get("type").and_then(Value::as_str) == Some("bind")
            || options.iter().any(|o| matches!(*o, "bind" | "rbind"));
        let (Some(dest), Some(source)) =
            (m.get("destination").and_then(Value::as_str), m.get("source").and_then(Value::as_str))
        else {
            continue;
        };
        let Some(flags) = options.iter().rev().find_map(|o| flags(o)).filter(|_| bind) else { continue };
        // A private source makes a private bind: nothing to change.
        let source_private = mount_of(host_mountinfo, Path::new(source)).is_some_and(|m| m.tags.is_empty());
        if flags.contains(MsFlags::MS_PRIVATE) && source_private {
            continue;
        }
        out.push((PathBuf::from(dest), flags));
    }
    out
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// In the container's mount namespace (the forked child): sets each
/// target's propagation. A target is resolved inside the container's root
/// with no magic link followed (RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS),
/// so neither a symlink in the image nor /proc/1/root of a shared or the
/// host's PID namespace can lead the call to a mount outside it; the mount
/// is then changed through its descriptor (mount_setattr). Only system
/// calls: returns the exit code.
fn set_all(targets: &[(CString, MsFlags)]) -> i32 {
    // SAFETY: open(2) of a constant path.
    let root = unsafe { libc::open(c"/".as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if root < 0 {
        return 2;
    }
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    for (target, flags) in targets {
        // SAFETY: openat2(2) with a NUL-terminated path and a filled open_how.
        let fd = unsafe {
            libc::syscall(libc::SYS_openat2, root, target.as_ptr(), &how as *const OpenHow, size_of::<OpenHow>())
        } as i32;
        if fd < 0 {
            return 3;
        }
        // c_ulong is u64 here, not on every target.
        #[allow(clippy::useless_conversion)]
        let propagation = u64::from((*flags & !MsFlags::MS_REC).bits());
        let attr = MountAttr { attr_set: 0, attr_clr: 0, propagation, userns_fd: 0 };
        let at = libc::AT_EMPTY_PATH | if flags.contains(MsFlags::MS_REC) { libc::AT_RECURSIVE } else { 0 };
        // SAFETY: mount_setattr(2) on our descriptor with a filled mount_attr.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                fd,
                c"".as_ptr(),
                at,
                &attr as *const MountAttr,
                size_of::<MountAttr>(),
            )
        };
        // SAFETY: closes the descriptor just opened.
        unsafe { libc::close(fd) };
        if r != 0 {
            return 4;
        }
    }
    0
}

/// Sets the propagation `spec` (the container's config.json) asks for on
/// the bind mounts of the container whose init is `pid`.
pub(crate) fn apply(spec: &Value, pid: u32) -> Result<(), RuntimeError> {
    let io = |what: &'static str, e: std::io::Error| RuntimeError::io(what, e);
    let host = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| io("read mountinfo", e))?;
    let wanted = wanted(spec, &host);
    if wanted.is_empty() {
        return Ok(());
    }
    // Everything the child needs is made before the fork: it only makes
    // system calls.
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
        .map_err(|e| io("open the container's mount namespace", e))?;
    let targets: Vec<(CString, MsFlags)> = wanted
        .iter()
        .filter_map(|(dest, flags)| CString::new(dest.as_os_str().as_encoded_bytes()).ok().map(|c| (c, *flags)))
        .collect();
    // SAFETY: the child makes only async-signal-safe system calls (setns,
    // open, openat2, mount_setattr, close, _exit) on data prepared above,
    // whatever threads the caller has.
    match unsafe { fork() }.map_err(|e| io("fork", e.into()))? {
        ForkResult::Child => {
            let code = match nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNS) {
                Ok(()) => set_all(&targets),
                Err(_) => 1,
            };
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            Ok(status) => Err(RuntimeError::Failed {
                runtime: "embedded",
                op: "create",
                message: format!("setting the mount propagation of {} mount(s) failed: {status:?}", targets.len()),
            }),
            Err(e) => Err(io("wait for the mount propagation helper", e.into())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private root with a shared /srv and a slave /srv/data on it.
    const HOST: &str = "1 0 8:1 / / rw - ext4 sda rw\n2 1 0:5 / /srv rw shared:4 - tmpfs t rw\n\
                        3 2 0:6 / /srv/data rw master:7 - tmpfs t rw";

    #[test]
    fn binds_that_need_their_propagation_set() {
        let spec = serde_json::json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid"]},
            {"destination": "/etc/hosts", "type": "bind", "source": "/var/b/hosts", "options": ["rbind", "rprivate"]},
            {"destination": "/a", "type": "bind", "source": "/srv/a", "options": ["rbind", "rprivate", "ro"]},
            {"destination": "/b", "source": "/srv/data/b", "options": ["rbind", "rslave"]},
            {"destination": "/c", "type": "bind", "source": "/etc/c", "options": ["bind", "shared"]},
            {"destination": "/d", "type": "bind", "source": "/srv/d", "options": ["rbind"]},
        ]});
        let got = wanted(&spec, HOST);
        assert_eq!(
            got,
            [
                (PathBuf::from("/a"), MsFlags::MS_PRIVATE | MsFlags::MS_REC),
                (PathBuf::from("/b"), MsFlags::MS_SLAVE | MsFlags::MS_REC),
                (PathBuf::from("/c"), MsFlags::MS_SHARED),
            ]
        );
    }
}
