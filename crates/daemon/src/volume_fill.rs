//! Named volumes pre-filled from the image (issue 10, item 7), as Docker
//! does: when create mounts a named volume that is empty at a path where
//! the image has a directory, that directory's content is copied into the
//! volume before the container starts — directories, regular files and
//! symlinks (as links, never followed), with owners, modes (setuid bits
//! included) and times; the volume's root takes the directory's owner and
//! mode. Hard links become separate copies; xattrs, fifos, sockets and
//! device nodes are not copied. Bind mounts are never pre-filled.
//!
//! The source is looked up in the container's mounted rootfs with
//! `openat2(RESOLVE_IN_ROOT)`, as the runtime resolves the mount point (a
//! symlink in the image resolves inside the image, never to the host), and
//! every entry below is opened relative to its parent with `O_NOFOLLOW`;
//! the volume side is written the same way. A fill is a step of create's
//! rollback list (SPEC B2, B9): a failed create empties the volume again
//! (and removes it if create made it), unless another container uses it
//! by then. A fill cut short by an error is emptied at once.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, UtimensatFlags, fchmod, fstatat, futimens, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, symlinkat};

use crate::error::{Error, Result};
use crate::manager::Manager;

/// Directory levels copied at most (each holds two descriptors open).
const MAX_DEPTH: usize = 256;

fn own_fd(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: called only with a descriptor a successful open just returned.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Opens `name` in the directory `dir`, never following a symlink.
fn open_at(dir: &OwnedFd, name: &Path, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    openat(Some(dir.as_raw_fd()), name, flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, mode).map(own_fd)
}

/// The directory at `path` inside the mounted rootfs `root`, resolved as
/// the container would (symlinks and `..` stay inside); `None` when the
/// image has no directory there.
fn open_in_root(root: &Path, path: &Path) -> Result<Option<OwnedFd>> {
    let io_err = |e: Errno| Error::io(format!("open {} in the image", path.display()), e.into());
    let root = std::fs::File::open(root).map_err(|e| Error::io(format!("open {}", root.display()), e))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(root.as_raw_fd(), path, how) {
        Ok(fd) => Ok(Some(own_fd(fd))),
        Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
        Err(e) => Err(io_err(e)),
    }
}

/// The names in the directory `dir` (read through its descriptor).
fn names(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let entries = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
    entries.map(|e| e.map(|e| e.file_name())).collect()
}

/// Gives `fd` the owner, mode and times of `st` (owner first: chown
/// clears setuid bits).
fn set_meta(fd: &OwnedFd, st: &FileStat) -> nix::Result<()> {
    fchown(fd.as_raw_fd(), Some(Uid::from_raw(st.st_uid)), Some(Gid::from_raw(st.st_gid)))?;
    fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(st.st_mode & 0o7777))?;
    let (atime, mtime) = times(st);
    futimens(fd.as_raw_fd(), &atime, &mtime)
}

fn times(st: &FileStat) -> (TimeSpec, TimeSpec) {
    (TimeSpec::new(st.st_atime, st.st_atime_nsec), TimeSpec::new(st.st_mtime, st.st_mtime_nsec))
}

/// Copies the content of the directory `src` into the directory `dst`.
fn copy_dir(src: &OwnedFd, dst: &OwnedFd, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::InvalidArgument(format!("the image's directory is nested deeper than {MAX_DEPTH} levels")));
    }
    let fail = |what: &str, name: &OsString, e: Errno| {
        Error::io(format!("{what} {}", Path::new(name).display()), io::Error::from(e))
    };
    for name in names(src).map_err(|e| Error::io("list an image directory", e))? {
        let n = Path::new(&name);
        let st = fstatat(Some(src.as_raw_fd()), n, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| fail("stat", &name, e))?;
        match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFDIR => {
                let from = open_at(src, n, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
                    .map_err(|e| fail("open", &name, e))?;
                mkdirat(Some(dst.as_raw_fd()), n, Mode::from_bits_truncate(0o700))
                    .map_err(|e| fail("mkdir", &name, e))?;
                let to = open_at(dst, n, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
                    .map_err(|e| fail("open", &name, e))?;
                copy_dir(&from, &to, depth + 1)?;
                set_meta(&to, &st).map_err(|e| fail("set owner and mode of", &name, e))?;
            }
            SFlag::S_IFREG => {
                let from = open_at(src, n, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty())
                    .map_err(|e| fail("open", &name, e))?;
                let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
                let to =
                    open_at(dst, n, flags, Mode::from_bits_truncate(0o600)).map_err(|e| fail("create", &name, e))?;
                let (mut r, mut w) = (std::fs::File::from(from), std::fs::File::from(to));
                io::copy(&mut r, &mut w).map_err(|e| Error::io(format!("copy {}", n.display()), e))?;
                let to = OwnedFd::from(w);
                set_meta(&to, &st).map_err(|e| fail("set owner and mode of", &name, e))?;
            }
            SFlag::S_IFLNK => {
                let target = readlinkat(Some(src.as_raw_fd()), n).map_err(|e| fail("read link", &name, e))?;
                symlinkat(target.as_bytes(), Some(dst.as_raw_fd()), n).map_err(|e| fail("symlink", &name, e))?;
                let (uid, gid) = (Some(Uid::from_raw(st.st_uid)), Some(Gid::from_raw(st.st_gid)));
                fchownat(Some(dst.as_raw_fd()), n, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| fail("set owner of", &name, e))?;
                let (atime, mtime) = times(&st);
                utimensat(Some(dst.as_raw_fd()), n, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
                    .map_err(|e| fail("set times of", &name, e))?;
            }
            _ => tracing::debug!(name = %n.display(), "not copied into a volume: neither file, directory nor link"),
        }
    }
    Ok(())
}

/// Whether the directory `dir` has no entries.
fn is_empty(dir: &Path) -> Result<bool> {
    let mut entries = std::fs::read_dir(dir).map_err(|e| Error::io(format!("read {}", dir.display()), e))?;
    Ok(entries.next().is_none())
}

/// Removes everything in the volume directory `data` and gives it back
/// the mode and owner of a new volume.
pub(crate) fn empty(data: &Path) -> Result<()> {
    let entries = std::fs::read_dir(data).map_err(|e| Error::io(format!("read {}", data.display()), e))?;
    for e in entries {
        let e = e.map_err(|e| Error::io(format!("read {}", data.display()), e))?;
        let path = e.path();
        let removed = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        removed.map_err(|err| Error::io(format!("remove {}", path.display()), err))?;
    }
    std::os::unix::fs::chown(data, Some(0), Some(0)).map_err(|e| Error::io(format!("chown {}", data.display()), e))?;
    std::fs::set_permissions(data, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| Error::io(format!("chmod {}", data.display()), e))
}

/// Fills the empty volume directory `data` from `target` in the mounted
/// rootfs `rootfs`; true when it copied (the image has a directory there
/// and the volume was empty). On error the volume is emptied again.
fn fill(rootfs: &Path, target: &Path, data: &Path) -> Result<bool> {
    if !is_empty(data)? {
        return Ok(false);
    }
    let Some(src) = open_in_root(rootfs, target)? else { return Ok(false) };
    let dst = nix::fcntl::open(
        data,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(own_fd)
    .map_err(|e| Error::io(format!("open {}", data.display()), e.into()))?;
    let copied = copy_dir(&src, &dst, 0).and_then(|()| {
        let st = nix::sys::stat::fstat(src.as_raw_fd()).map_err(|e| Error::io("stat the image directory", e.into()))?;
        set_meta(&dst, &st).map_err(|e| Error::io(format!("set owner and mode of {}", data.display()), e.into()))
    });
    if let Err(e) = copied {
        if let Err(undo) = empty(data) {
            tracing::warn!(volume = %data.display(), "emptying a volume after a failed fill: {undo}");
        }
        return Err(e);
    }
    Ok(true)
}

impl Manager {
    /// Pre-fills the named volume `name` from `target` in the container's
    /// mounted rootfs if the volume is empty; true when it did (create then
    /// lists the fill for its rollback). Fills run one at a time, so two
    /// creates never fill the same volume together.
    pub(crate) async fn volume_fill(&self, name: &str, rootfs: &Path, target: &Path) -> Result<bool> {
        let _one = self.volumes.filling.lock().await;
        let (rootfs, target, data): (PathBuf, PathBuf, PathBuf) =
            (rootfs.to_path_buf(), target.to_path_buf(), self.volumes.data_dir(name));
        tokio::task::spawn_blocking(move || fill(&rootfs, &target, &data))
            .await
            .map_err(|e| Error::io("fill a volume", io::Error::other(e)))?
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    use super::*;

    /// A scratch directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn copies_owners_modes_and_links_and_stays_in_the_root() {
        let s = Scratch(std::env::temp_dir().join(format!("berth-fill-{}-{}", std::process::id(), crate::now_ns())));
        let (root, data, host) = (s.0.join("rootfs"), s.0.join("data"), s.0.join("host"));
        for d in [root.join("app/sub"), data.clone(), host.clone()] {
            std::fs::create_dir_all(d).expect("dirs");
        }
        std::fs::write(root.join("app/sub/seed"), "seed\n").expect("seed");
        std::os::unix::fs::chown(root.join("app/sub/seed"), Some(1000), Some(100)).expect("chown");
        std::fs::set_permissions(root.join("app/sub/seed"), PermissionsExt::from_mode(0o4750)).expect("chmod");
        std::os::unix::fs::chown(root.join("app"), Some(7), Some(8)).expect("chown");
        std::fs::set_permissions(root.join("app"), PermissionsExt::from_mode(0o710)).expect("chmod");
        symlink("/etc/passwd", root.join("app/abs")).expect("symlink");
        std::fs::write(host.join("secret"), "host\n").expect("host file");
        // A symlink in the image that points at the host resolves inside it.
        symlink(&host, root.join("escape")).expect("symlink");

        assert!(fill(&root, Path::new("/app"), &data).expect("fill"));
        let seed = std::fs::metadata(data.join("sub/seed")).expect("copied");
        assert_eq!((seed.uid(), seed.gid(), seed.mode() & 0o7777), (1000, 100, 0o4750));
        assert_eq!(std::fs::read_to_string(data.join("sub/seed")).expect("read"), "seed\n");
        assert_eq!(std::fs::read_link(data.join("abs")).expect("a link"), Path::new("/etc/passwd"));
        let top = std::fs::metadata(&data).expect("root");
        assert_eq!((top.uid(), top.gid(), top.mode() & 0o7777), (7, 8, 0o710), "the volume root takes the dir's");
        // A volume with content is left alone.
        assert!(!fill(&root, Path::new("/app"), &data).expect("not empty"));
        empty(&data).expect("empty");
        let top = std::fs::metadata(&data).expect("root");
        assert_eq!((top.uid(), top.mode() & 0o7777, is_empty(&data).expect("read")), (0, 0o755, true));
        // Missing in the image, or only reachable through the host: nothing.
        assert!(!fill(&root, Path::new("/nothing/here"), &data).expect("missing"));
        assert!(!fill(&root, Path::new("/escape"), &data).expect("escape"));
        assert!(!fill(&root, Path::new("/app/sub/seed"), &data).expect("a file"));
        assert!(is_empty(&data).expect("read"), "nothing copied from the host");
    }
}
