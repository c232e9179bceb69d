//! Overlay mounting for the snapshotter: mount an active snapshot with its
//! lower layers named relative to the snapshotter root (from a thread that
//! unshares its cwd, so the daemon's cwd never moves) or, when even that
//! exceeds mount(2)'s one-page limit, layer by layer through the new mount
//! API (fsconfig `lowerdir+`); unmount with a lazy
//! detach fallback, and read overlay mounts back from /proc/self/mountinfo
//! (how recovery finds stale mounts).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use berth_model::mountinfo::{mounts, unescape};

use super::Mounts;
use crate::ImageError;

/// The kernel copies at most one page of mount data; the option string and
/// its terminating NUL must fit.
const MOUNT_DATA_MAX: usize = 4095;

/// Builds the overlay option string, lower layers relative to `root` where
/// they live under it. Too long for one page → FailedPrecondition.
pub(super) fn overlay_options(root: &Path, m: &Mounts) -> Result<String, ImageError> {
    let lowers: Vec<String> =
        m.lowerdirs.iter().map(|l| l.strip_prefix(root).unwrap_or(l).display().to_string()).collect();
    let mut opts =
        format!("lowerdir={},upperdir={},workdir={}", lowers.join(":"), m.upperdir.display(), m.workdir.display());
    if supports_index() {
        opts.push_str(",index=off");
    }
    if opts.len() > MOUNT_DATA_MAX {
        return Err(ImageError::FailedPrecondition(format!(
            "{} layers: overlay options of {} bytes exceed the {MOUNT_DATA_MAX}-byte mount data limit",
            m.lowerdirs.len(),
            opts.len()
        )));
    }
    Ok(opts)
}

/// Mounts overlayfs for `m` at `target` (an existing directory).
pub(super) fn mount_overlay(root: &Path, m: &Mounts, target: &Path) -> Result<(), ImageError> {
    let target = std::path::absolute(target).map_err(|e| ImageError::io(format!("resolve {}", target.display()), e))?;
    match std::fs::metadata(&target) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Err(ImageError::InvalidArgument(format!("mount target {} is not a directory", target.display())));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ImageError::NotFound(format!("mount target {}", target.display())));
        }
        Err(e) => return Err(ImageError::io(format!("stat {}", target.display()), e)),
    }
    let opts = match overlay_options(root, m) {
        Ok(opts) => opts,
        // Too long for mount(2): the new mount API takes one layer per call.
        Err(too_long) => {
            return match mount_fsconfig(m, &target) {
                Err(Errno::EINVAL) => Err(too_long),
                other => other.map_err(|e| {
                    ImageError::io(
                        format!("mount overlay of {} layers at {}", m.lowerdirs.len(), target.display()),
                        io::Error::from_raw_os_error(e as i32),
                    )
                }),
            };
        }
    };
    // The relative lower paths resolve against the cwd: change it only in a
    // thread whose fs attributes (cwd, root, umask) are its own.
    let result = std::thread::scope(|s| {
        s.spawn(|| -> Result<(), (&'static str, Errno)> {
            nix::sched::unshare(CloneFlags::CLONE_FS).map_err(|e| ("unshare(CLONE_FS)", e))?;
            nix::unistd::chdir(root).map_err(|e| ("chdir to snapshot root", e))?;
            nix::mount::mount(Some("overlay"), &target, Some("overlay"), MsFlags::empty(), Some(opts.as_str()))
                .map_err(|e| ("mount overlay", e))
        })
        .join()
    });
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err((step, errno))) => Err(ImageError::io(
            format!("{step} at {} ({opts})", target.display()),
            io::Error::from_raw_os_error(errno as i32),
        )),
        Err(_) => Err(ImageError::io("mount overlay", io::Error::other("mount thread panicked"))),
    }
}

/// Whether the kernel knows overlay's `index` option. Like containerd we
/// turn it off: with it on, an upper dir cannot be mounted again on a
/// changed lower stack, which recovery may need.
fn supports_index() -> bool {
    Path::new("/sys/module/overlay/parameters/index").exists()
}

// Kernel uapi (linux/mount.h) constants libc does not carry.
const FSOPEN_CLOEXEC: libc::c_uint = 0x1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 0x1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// Mounts through fsopen/fsconfig/fsmount/move_mount, adding lower layers
/// one by one with `lowerdir+` (Linux 6.8+; older kernels answer EINVAL).
fn mount_fsconfig(m: &Mounts, target: &Path) -> Result<(), Errno> {
    let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL);
    // SAFETY: a NUL-terminated name; the returned descriptor is owned below.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, c"overlay".as_ptr(), FSOPEN_CLOEXEC) };
    let fs = owned_fd(fs)?;
    let set = |key: &CStr, value: &Path| -> Result<(), Errno> {
        let value = cstr(value)?;
        // SAFETY: `fs` is open; key and value are NUL-terminated and outlive the call.
        let rc = unsafe {
            libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_SET_STRING, key.as_ptr(), value.as_ptr(), 0)
        };
        Errno::result(rc).map(drop)
    };
    for lower in &m.lowerdirs {
        set(c"lowerdir+", lower)?;
    }
    set(c"upperdir", &m.upperdir)?;
    set(c"workdir", &m.workdir)?;
    if supports_index() {
        set(c"index", Path::new("off"))?;
    }
    // SAFETY: `fs` is open; CMD_CREATE takes no key or value.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<u8>(),
            std::ptr::null::<u8>(),
            0,
        )
    };
    Errno::result(rc)?;
    // SAFETY: `fs` is a configured fs context; the mount fd is owned below.
    let mnt = owned_fd(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) })?;
    let target = cstr(target)?;
    // SAFETY: `mnt` is a detached mount; the paths are NUL-terminated.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    Errno::result(rc).map(drop)
}

fn owned_fd(rc: libc::c_long) -> Result<OwnedFd, Errno> {
    let fd = Errno::result(rc)?;
    let fd = RawFd::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Unmounts `target`; busy → lazy detach. Not mounted or missing → Ok, so
/// teardown can be retried (SPEC B9).
pub fn unmount(target: &Path) -> Result<(), ImageError> {
    match nix::mount::umount2(target, MntFlags::empty()) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EBUSY) => match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(ImageError::io(
                format!("lazy unmount {}", target.display()),
                io::Error::from_raw_os_error(e as i32),
            )),
        },
        Err(e) => Err(ImageError::io(format!("unmount {}", target.display()), io::Error::from_raw_os_error(e as i32))),
    }
}

/// One overlay mount seen in mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayMount {
    pub mount_point: PathBuf,
    pub upperdir: Option<PathBuf>,
}

/// The overlay mounts of this process's mount namespace.
pub fn overlay_mounts() -> Result<Vec<OverlayMount>, ImageError> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| ImageError::io("read /proc/self/mountinfo", e))?;
    Ok(parse_mountinfo(&text))
}

/// The overlay mounts of mountinfo text.
pub(super) fn parse_mountinfo(text: &str) -> Vec<OverlayMount> {
    mounts(text)
        .filter(|m| m.fstype == "overlay")
        .map(|m| {
            let upperdir = m
                .options
                .split(',')
                .find_map(|o| o.strip_prefix("upperdir="))
                .map(|u| PathBuf::from(unescape(u).as_ref()));
            OverlayMount { mount_point: PathBuf::from(m.point.as_ref()), upperdir }
        })
        .collect()
}
