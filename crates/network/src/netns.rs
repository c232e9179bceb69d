//! Network namespaces that berth owns, held by bind mounts like
//! `ip netns add` does: the directory is made a shared mount of itself once,
//! and each namespace is made by a short-lived thread that unshares its
//! network namespace, binds `/proc/thread-self/ns/net` onto an empty file
//! and brings `lo` up. The calling thread never changes namespace; the
//! namespace lives as long as its bind mount.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::statfs::{NSFS_MAGIC, statfs};

use crate::{Error, Result};

/// Serialises making the directory a mount point, so that two first
/// attachments do not stack two bind mounts.
static DIR_LOCK: Mutex<()> = Mutex::new(());

/// Makes `dir` (created if needed) a shared mount point, as iproute2 does
/// for /run/netns, so that the namespace mounts under it propagate to mount
/// namespaces made later (shims, runtimes).
pub fn prepare_dir(dir: &Path) -> Result<()> {
    let _serial = DIR_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let shared = || mount(None::<&str>, dir, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>);
    match shared() {
        Ok(()) => return Ok(()),
        // Not a mount point yet: bind it onto itself, then share it.
        Err(Errno::EINVAL) => {}
        Err(e) => return Err(Error::io(format!("make {} shared", dir.display()), e.into())),
    }
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| Error::io(format!("bind {} onto itself", dir.display()), e.into()))?;
    shared().map_err(|e| {
        // Nothing half-made: the bind goes if it cannot be shared.
        let _ = umount2(dir, MntFlags::MNT_DETACH);
        Error::io(format!("make {} shared", dir.display()), e.into())
    })
}

/// Kinds of namespace berth holds by bind mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsKind {
    Net,
    Ipc,
    Pid,
}

impl NsKind {
    /// Its name under /proc/PID/ns.
    fn proc_name(self) -> &'static str {
        match self {
            NsKind::Net => "net",
            NsKind::Ipc => "ipc",
            NsKind::Pid => "pid",
        }
    }
}

/// Creates a new network namespace with `lo` up, held by a bind mount at
/// `path` (which must not exist). On failure nothing is left.
pub(crate) fn create(path: &Path) -> Result<()> {
    create_pinned(path, CloneFlags::CLONE_NEWNET, NsKind::Net, || set_link_up("lo", true))
}

/// Creates a new IPC namespace held by a bind mount at `path` (which must
/// not exist): a pod's, which its containers join by path. On failure
/// nothing is left.
pub fn create_ipc(path: &Path) -> Result<()> {
    create_pinned(path, CloneFlags::CLONE_NEWIPC, NsKind::Ipc, || Ok(()))
}

/// Has a short-lived thread unshare a namespace of `kind`, bind it onto
/// `path` and run `then` inside it.
fn create_pinned(
    path: &Path,
    flag: CloneFlags,
    kind: NsKind,
    then: impl FnOnce() -> Result<()> + Send + 'static,
) -> Result<()> {
    pinned_at(path, |target| {
        let target = target.to_path_buf();
        in_thread(move || {
            let name = kind.proc_name();
            // This thread alone moves; it exits right after.
            unshare(flag).map_err(|e| Error::io(format!("unshare a {name} namespace"), e.into()))?;
            mount(
                Some(format!("/proc/thread-self/ns/{name}").as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| Error::io(format!("bind the {name} namespace onto {}", target.display()), e.into()))?;
            then()
        })
    })
}

/// Pins the network namespace of process `pid` with a bind mount at `path`
/// (which must not exist). On failure nothing is left.
pub(crate) fn bind(path: &Path, pid: u32) -> Result<()> {
    bind_process(path, pid, NsKind::Net)
}

/// Pins the `kind` namespace of process `pid` with a bind mount at `path`
/// (which must not exist). On failure nothing is left.
pub fn bind_process(path: &Path, pid: u32, kind: NsKind) -> Result<()> {
    pinned_at(path, |target| {
        let source = format!("/proc/{pid}/ns/{}", kind.proc_name());
        mount(Some(source.as_str()), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| Error::io(format!("bind {source} onto {}", target.display()), e.into()))
    })
}

/// Creates the empty file a namespace is bind-mounted on and has `pin`
/// mount one there; removes the file if that fails.
fn pinned_at(path: &Path, pin: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
        .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
    let pinned = pin(path);
    if pinned.is_err() {
        let _ = remove(path);
    }
    pinned
}

/// Runs `f` on a short-lived thread of its own (which may change its
/// network namespace; the caller's thread never does).
fn in_thread(f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name("berth-netns".into())
        .spawn(f)
        .map_err(|e| Error::io("start a namespace thread", e))
        .and_then(|thread| {
            thread.join().unwrap_or_else(|_| Err(Error::io("namespace thread", io::Error::other("panicked"))))
        })
}

/// Brings `lo` up in the network namespace of process `pid` (one the
/// runtime made for a container without a pinned namespace), from a
/// short-lived thread; the calling thread never changes namespace.
pub fn loopback_up(pid: u32) -> Result<()> {
    let path = format!("/proc/{pid}/ns/net");
    let ns =
        std::fs::File::open(&path).map_err(|e| Error::io(format!("open the network namespace of process {pid}"), e))?;
    let ino = |p: &str| fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok();
    if ino(&path).is_none() || ino(&path) == ino("/proc/self/ns/net") {
        return Err(Error::FailedPrecondition(format!(
            "process {pid} is not in a network namespace of its own: the runtime made none"
        )));
    }
    in_thread(move || {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io("enter a network namespace", e.into()))?;
        set_link_up("lo", true)
    })
}

/// Makes sure `path` holds a network namespace, creating an empty one if
/// it is missing or left without its mount (reboot, crash inside
/// `create`). DEL then always finds a namespace: the bridge plugin refuses
/// a file that is not one and, when the path is missing, returns before
/// removing its iptables rules.
pub(crate) fn ensure(path: &Path) -> Result<()> {
    match statfs(path) {
        Ok(fs) if fs.filesystem_type() == NSFS_MAGIC => return Ok(()),
        Ok(_) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(Error::io(format!("inspect {}", path.display()), e.into())),
    }
    remove(path)?;
    if let Some(dir) = path.parent() {
        prepare_dir(dir)?;
    }
    create(path)
}

/// Unmounts and unlinks a namespace pinned by this module; absent is fine.
pub fn remove(path: &Path) -> Result<()> {
    // Every mount stacked on the pin (a bind mount made twice, or one a
    // peer propagated here) goes, until the path is no mount point.
    for _ in 0..16 {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
            Err(e) => return Err(Error::io(format!("unmount {}", path.display()), e.into())),
        }
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(format!("remove {}", path.display()), e)),
        _ => Ok(()),
    }
}

/// Sets or clears `IFF_UP` on a link of the calling thread's network
/// namespace (SIOCGIFFLAGS/SIOCSIFFLAGS).
pub(crate) fn set_link_up(name: &str, up: bool) -> Result<()> {
    let what = || format!("set link {name} {}", if up { "up" } else { "down" });
    let sock = Socket::inet().map_err(|e| Error::io(what(), e))?;
    let mut req = sock.request(name).map_err(|e| Error::io(what(), e))?;
    sock.ioctl(libc::SIOCGIFFLAGS, &mut req).map_err(|e| Error::io(what(), e))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let want = if up { flags | libc::IFF_UP as libc::c_short } else { flags & !(libc::IFF_UP as libc::c_short) };
    if want != flags {
        req.ifr_ifru.ifru_flags = want;
        sock.ioctl(libc::SIOCSIFFLAGS, &mut req).map_err(|e| Error::io(what(), e))?;
    }
    Ok(())
}

/// An AF_INET datagram socket: the handle for interface ioctls.
struct Socket(OwnedFd);

impl Socket {
    fn inet() -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(Socket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// An `ifreq` naming interface `name` (at most 15 bytes).
    fn request(&self, name: &str) -> io::Result<libc::ifreq> {
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        if name.len() >= req.ifr_name.len() || name.contains('\0') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name too long"));
        }
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        Ok(req)
    }

    /// An interface ioctl taking an `ifreq`.
    fn ioctl(&self, request: libc::Ioctl, req: &mut libc::ifreq) -> io::Result<()> {
        // SAFETY: every request used with this takes a pointer to an ifreq.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), request, req as *mut libc::ifreq) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Runs `f` on a thread that has entered the namespace at `path`.
#[cfg(test)]
pub(crate) fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = fs::File::open(path).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// Undoes `prepare_dir` once no namespace is left under `dir` (berthd's
/// clean exit); true if it did.
pub fn release_dir(dir: &Path) -> Result<bool> {
    let _serial = DIR_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match fs::read_dir(dir).map(|mut entries| entries.next().is_none()) {
        Ok(true) => {}
        Ok(false) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    }
    match umount2(dir, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) => Ok(true),
        Err(e) => Err(Error::io(format!("unmount {}", dir.display()), e.into())),
    }
}

/// Undoes `prepare_dir` when a test ends, however it ends.
#[cfg(test)]
pub(crate) struct DirMount(pub std::path::PathBuf);

#[cfg(test)]
impl Drop for DirMount {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn lo_flags() -> libc::c_short {
        let sock = Socket::inet().unwrap();
        let mut req = sock.request("lo").unwrap();
        sock.ioctl(libc::SIOCGIFFLAGS, &mut req).unwrap();
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        unsafe { req.ifr_ifru.ifru_flags }
    }

    #[test]
    fn creates_a_distinct_namespace_with_lo_up_and_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("netns");
        let _mount = DirMount(dir.clone());
        prepare_dir(&dir).unwrap();
        prepare_dir(&dir).unwrap();
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let binds = mountinfo.lines().filter(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap())).count();
        assert_eq!(binds, 1, "the directory is bound once");

        let path = dir.join("ns1");
        let before = fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        create(&path).unwrap();
        assert_eq!(fs::metadata("/proc/thread-self/ns/net").unwrap().ino(), before, "caller stays put");
        assert_ne!(fs::metadata(&path).unwrap().ino(), fs::metadata("/proc/self/ns/net").unwrap().ino());
        let (ino, flags) = in_netns(&path, || (fs::metadata("/proc/thread-self/ns/net").unwrap().ino(), lo_flags()));
        assert_eq!(ino, fs::metadata(&path).unwrap().ino());
        assert_ne!(flags & libc::IFF_UP as libc::c_short, 0, "lo is up");
        assert!(matches!(create(&path), Err(Error::Io { .. })), "an existing path is refused");

        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }

    #[test]
    fn set_link_up_rejects_bad_names() {
        assert!(matches!(set_link_up("a-name-much-too-long", true), Err(Error::Io { .. })));
        assert!(matches!(set_link_up("nosuchlink0", true), Err(Error::Io { .. })));
    }
}
