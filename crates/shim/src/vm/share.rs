//! Files in the directory shared with a guest, handled as the guest's.
//!
//! While a VM runs, its guest can rename, replace and link anything in the
//! share, at any moment: a path the host built a moment ago may name a
//! symlink to the host's /etc by the time it is used. So the host never
//! resolves a path inside the share. A [`ShareDir`] is a directory opened
//! once (never through a symlink, and only if it is on the share's own
//! file system); everything below it is made, opened, mounted on, read and
//! removed relative to that descriptor, one name at a time: new entries
//! with O_EXCL, lookups with O_NOFOLLOW, mounts at the descriptor itself
//! (`/proc/self/fd/N`), removal that never descends into another file
//! system (a bind the guest moved) or through a link.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::fcntl::{OFlag, openat};
use nix::mount::{MntFlags, MsFlags, mount};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// How deep a removal goes into what the guest made.
const MAX_DEPTH: usize = 32;

/// A directory of the share, held open.
pub struct ShareDir {
    fd: OwnedFd,
    /// The share's file system: whatever is elsewhere is not the share's.
    dev: u64,
}

fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// One entry's name: no path separator, not `.` or `..`, not empty.
fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a file name")));
    }
    Ok(())
}

impl ShareDir {
    /// The share itself (a directory the host made and mounted).
    pub fn open_root(share: &Path) -> io::Result<ShareDir> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = own(nix::fcntl::open(share, flags, Mode::empty())?);
        let dev = fstat(fd.as_raw_fd())?.st_dev;
        Ok(ShareDir { fd, dev })
    }

    fn raw(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    /// `name` below this directory, opened as `flags` without following a
    /// symlink, if it is on the share's file system and of kind `want`.
    fn open_checked(&self, name: &str, flags: OFlag, want: SFlag) -> io::Result<OwnedFd> {
        check_name(name)?;
        let fd = own(openat(self.raw(), name, flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())?);
        let st = fstat(fd.as_raw_fd())?;
        if st.st_dev != self.dev {
            return Err(io::Error::other(format!("{name} is not on the share's file system")));
        }
        if kind(&st) != want {
            return Err(io::Error::other(format!("{name} is not what the host made there")));
        }
        Ok(fd)
    }

    /// The directory `name` below this one.
    pub fn open_dir(&self, name: &str) -> io::Result<ShareDir> {
        let fd = self.open_checked(name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, SFlag::S_IFDIR)?;
        Ok(ShareDir { fd, dev: self.dev })
    }

    /// Makes the directory `name` (it must not exist) and opens it; it
    /// must still be empty then (not another the guest swapped in).
    pub fn make_dir(&self, name: &str) -> io::Result<ShareDir> {
        check_name(name)?;
        mkdirat(self.raw(), name, Mode::from_bits_truncate(0o755))?;
        let dir = self.open_dir(name)?;
        if std::fs::read_dir(format!("/proc/self/fd/{}", dir.fd.as_raw_fd()))?.next().is_some() {
            return Err(io::Error::other(format!("{name} is not the directory the host made")));
        }
        Ok(dir)
    }

    /// Writes a new file `name` (it must not exist).
    pub fn write_new(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        check_name(name)?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = own(openat(self.raw(), name, flags, Mode::from_bits_truncate(0o644))?);
        File::from(fd).write_all(bytes)
    }

    /// Reads the regular file `name`, at most `max` bytes, as the guest
    /// left it: never through a symlink, never blocking on a FIFO. None if
    /// it is missing, not a regular file or larger than `max`.
    pub fn read_small(&self, name: &str, max: u64) -> Option<Vec<u8>> {
        let fd = self.open_checked(name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, SFlag::S_IFREG).ok()?;
        let mut bytes = Vec::new();
        File::from(fd).take(max + 1).read_to_end(&mut bytes).ok()?;
        (bytes.len() as u64 <= max).then_some(bytes)
    }

    /// Bind-mounts `source` (a directory or a file) on a new entry `name`
    /// and returns the new mount (an O_PATH descriptor of its root, for
    /// [`unmount`]): nodev, nosuid, read-only if asked, propagating
    /// nowhere. The mount is made and its flags set at a fresh point in
    /// `stage` (a directory of the host's, out of the guest's reach),
    /// then moved onto the entry this call made, so the guest never sees
    /// it without its flags, whatever it does to the name meanwhile. Not
    /// recursive: what is mounted below `source` stays out of the guest's
    /// reach (and out of reach of those flags).
    pub fn bind(&self, name: &str, source: &Path, readonly: bool, stage: &Path) -> Result<OwnedFd, String> {
        let meta = std::fs::metadata(source).map_err(|e| format!("{}: {e}", source.display()))?;
        let made = match meta.is_dir() {
            true => mkdirat(self.raw(), name, Mode::from_bits_truncate(0o755)).map_err(io::Error::from),
            false => self.write_new(name, b""),
        };
        made.map_err(|e| format!("create {name} in the share: {e}"))?;
        let want = if meta.is_dir() { SFlag::S_IFDIR } else { SFlag::S_IFREG };
        let at = self.open_checked(name, OFlag::O_PATH, want).map_err(|e| format!("open {name} in the share: {e}"))?;
        let failed = |e: nix::Error| format!("bind {} for the guest: {e}", source.display());
        let staged = Staged::new(stage, meta.is_dir()).map_err(|e| format!("stage a bind for the guest: {e}"))?;
        mount(Some(source), &staged.0, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(failed)?;
        let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
        if readonly {
            flags |= MsFlags::MS_RDONLY;
        }
        mount(None::<&str>, &staged.0, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>).map_err(failed)?;
        mount(None::<&str>, &staged.0, None::<&str>, flags, None::<&str>).map_err(failed)?;
        let target = format!("/proc/self/fd/{}", at.as_raw_fd());
        mount(Some(&staged.0), target.as_str(), None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(failed)?;
        // The new mount, reached through the entry it now covers (a mount
        // point cannot be renamed or replaced).
        let mounted = openat(self.raw(), name, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty());
        let mounted = own(mounted.map_err(failed)?);
        // Only if the guest renamed the entry before the move: the mount,
        // with its flags, stays where the guest put it until the VM's end.
        if fstat(mounted.as_raw_fd()).map_err(failed)?.st_dev == self.dev {
            return Err(format!("bind {} for the guest: the mount went elsewhere", source.display()));
        }
        Ok(mounted)
    }

    /// Removes `name` and what is below it, on the share's file system
    /// only: a symlink is removed, not followed; a directory on another
    /// file system (a mount the guest moved there) stops the removal,
    /// which then renames what is left out of the way, so `name` can be
    /// made again.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        let removed = self.remove_at(OsStr::new(name), 0);
        if let Err(e) = &removed
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            let aside =
                format!(".gone-{}", berth_model::random_hex(6).unwrap_or_else(|_| std::process::id().to_string()));
            let _ = nix::fcntl::renameat(self.raw(), name, self.raw(), aside.as_str());
        }
        removed
    }

    fn remove_at(&self, name: &OsStr, depth: usize) -> io::Result<()> {
        let st = nix::sys::stat::fstatat(self.raw(), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
        if kind(&st) != SFlag::S_IFDIR {
            return Ok(unlinkat(self.raw(), name, UnlinkatFlags::NoRemoveDir)?);
        }
        if depth >= MAX_DEPTH {
            return Err(io::Error::other(format!("{} is nested too deep to remove", name.to_string_lossy())));
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = own(openat(self.raw(), name, flags, Mode::empty())?);
        if fstat(fd.as_raw_fd())?.st_dev != self.dev {
            return Err(io::Error::other(format!("{} is not on the share's file system", name.to_string_lossy())));
        }
        let dir = ShareDir { fd, dev: self.dev };
        let names: Vec<OsString> = std::fs::read_dir(format!("/proc/self/fd/{}", dir.fd.as_raw_fd()))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        for entry in names {
            dir.remove_at(&entry, depth + 1)?;
        }
        Ok(unlinkat(self.raw(), name, UnlinkatFlags::RemoveDir)?)
    }
}

/// Detaches the mount whose root `mount` is (from [`ShareDir::bind`]),
/// wherever the guest has moved its name.
pub fn unmount(mount: &OwnedFd) {
    let _ = nix::mount::umount2(format!("/proc/self/fd/{}", mount.as_raw_fd()).as_str(), MntFlags::MNT_DETACH);
}

/// A fresh mount point in the host's staging directory, removed on drop.
struct Staged(std::path::PathBuf);

impl Staged {
    fn new(stage: &Path, dir: bool) -> io::Result<Staged> {
        let at = stage.join(berth_model::random_hex(8)?);
        match dir {
            true => std::fs::create_dir(&at)?,
            false => drop(std::fs::OpenOptions::new().write(true).create_new(true).open(&at)?),
        }
        Ok(Staged(at))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Still mounted only if the move failed.
        let _ = nix::mount::umount2(&self.0, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.0).or_else(|_| std::fs::remove_file(&self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, ShareDir) {
        let dir = tempfile::tempdir().unwrap();
        let share = ShareDir::open_root(dir.path()).unwrap();
        (dir, share)
    }

    #[test]
    fn nothing_is_made_or_opened_through_a_symlink() {
        let (dir, share) = root();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("c")).unwrap();
        assert!(share.make_dir("c").is_err(), "a name the guest took is not made again");
        assert!(share.open_dir("c").is_err(), "a symlink is not followed");
        std::os::unix::fs::symlink(outside.path().join("config.json"), dir.path().join("config.json")).unwrap();
        assert!(share.write_new("config.json", b"{}").is_err());
        assert!(!outside.path().join("config.json").exists(), "nothing written outside the share");
        for bad in ["", ".", "..", "a/b"] {
            assert!(share.make_dir(bad).is_err(), "{bad:?} is no name");
        }
    }

    #[test]
    fn a_file_is_read_only_if_small_and_regular() {
        let (dir, share) = root();
        std::fs::write(dir.path().join("exit.json"), b"{}").unwrap();
        assert_eq!(share.read_small("exit.json", 4096).as_deref(), Some(&b"{}"[..]));
        std::os::unix::fs::symlink(dir.path().join("exit.json"), dir.path().join("link")).unwrap();
        assert!(share.read_small("link", 4096).is_none(), "never through a symlink");
        nix::unistd::mkfifo(&dir.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        assert!(share.read_small("fifo", 4096).is_none(), "a FIFO neither blocks nor counts");
        std::fs::write(dir.path().join("big"), vec![b' '; 8192]).unwrap();
        assert!(share.read_small("big", 4096).is_none());
    }

    #[test]
    fn removal_stays_in_the_share() {
        let (dir, share) = root();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"host").unwrap();
        let c = share.make_dir("c").unwrap();
        c.write_new("config.json", b"{}").unwrap();
        c.make_dir("d").unwrap().make_dir("e").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("c/d/link")).unwrap();
        share.remove("c").unwrap();
        assert!(!dir.path().join("c").exists());
        assert!(outside.path().join("keep").exists(), "a symlink is removed, not followed");
    }
}
