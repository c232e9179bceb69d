//! The target directory of an unpack, touched only through file
//! descriptors: every parent is opened with `openat2(RESOLVE_BENEATH)`, so
//! neither `..` nor a symlink (absolute, or relative and climbing out) can
//! take a write outside the target; the last component is never followed.
//! Also holds what this layer wrote, for hard links and opaque dirs.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmodat, fstatat, makedev, mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, linkat, symlinkat, unlinkat};

use super::Whiteouts;
use crate::ImageError;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OVERLAY_OPAQUE: &str = "trusted.overlay.opaque";

/// What an entry creates (whiteouts are recognised by name in `apply`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    /// A regular file of this many bytes.
    File(u64),
    Dir,
    Symlink(Vec<u8>),
    /// The clean path of the link target, inside this layer.
    HardLink(Vec<u8>),
    Fifo,
    /// A 0:0 character device: overlayfs's own whiteout form.
    WhiteoutDevice,
}

/// Ownership, mode, times and xattrs of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Meta {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// Seconds and nanoseconds.
    pub mtime: (i64, i64),
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(super) struct Tree {
    root: OwnedFd,
    whiteouts: Whiteouts,
    /// Paths this layer wrote, with all their ancestors.
    written: HashSet<Vec<u8>>,
    /// Directory mtimes, set at the end (later entries change them).
    dir_times: Vec<(Vec<u8>, (i64, i64))>,
}

fn refuse(name: &str, why: &str) -> ImageError {
    ImageError::InvalidArgument(format!("layer entry {name:?}: {why}"))
}

fn os(name: &str, op: &str, e: Errno) -> ImageError {
    ImageError::io(format!("layer entry {name:?}: {op}"), io::Error::from(e))
}

/// A resolution failure: escapes and loops are the layer's fault.
fn resolve_error(name: &str, e: Errno) -> ImageError {
    match e {
        Errno::EXDEV => refuse(name, "path escapes the target (through `..` or a symlink)"),
        Errno::ELOOP => refuse(name, "too many levels of symlinks"),
        Errno::ENOTDIR => refuse(name, "a parent is not a directory"),
        Errno::ENOENT => refuse(name, "a parent is a dangling symlink"),
        e => os(name, "resolve parent", e),
    }
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = parent.to_vec();
    if !out.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

fn osstr(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

/// A path naming `name` in the directory `dir` without following `name`.
fn proc_path(dir: &OwnedFd, name: &[u8]) -> PathBuf {
    Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(osstr(name))
}

fn own(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open and is owned by no one else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl Tree {
    pub fn open(target: &Path, whiteouts: Whiteouts) -> Result<Tree, ImageError> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let root = openat(None, target, flags, Mode::empty()).map_err(|e| {
            let what = format!("unpack target {}", target.display());
            match e {
                Errno::ENOENT => ImageError::NotFound(what),
                e => ImageError::io(what, io::Error::from(e)),
            }
        })?;
        Ok(Tree { root: own(root), whiteouts, written: HashSet::new(), dir_times: Vec::new() })
    }

    /// Opens `rel` (clean, relative) beneath the root; "" is the root.
    fn beneath(&self, rel: &[u8], flags: OFlag) -> Result<OwnedFd, Errno> {
        let rel = if rel.is_empty() { b"." as &[u8] } else { rel };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(self.root.as_raw_fd(), osstr(rel), how).map(own)
    }

    /// Opens the parent directory `parent`, creating missing components
    /// (0755, recorded in `created` for cleanup).
    fn parent(&self, name: &str, parent: &[u8], created: &mut Vec<Vec<u8>>) -> Result<OwnedFd, ImageError> {
        match self.beneath(parent, OFlag::O_PATH) {
            Err(Errno::ENOENT) => {}
            other => return other.map_err(|e| resolve_error(name, e)),
        }
        let mut dir = self.beneath(b"", OFlag::O_PATH).map_err(|e| resolve_error(name, e))?;
        let mut prefix = Vec::new();
        for comp in parent.split(|b| *b == b'/') {
            prefix = join(&prefix, comp);
            dir = match self.beneath(&prefix, OFlag::O_PATH) {
                Err(Errno::ENOENT) => {
                    match mkdirat(Some(dir.as_raw_fd()), osstr(comp), Mode::from_bits_truncate(0o755)) {
                        Ok(()) => created.push(prefix.clone()),
                        Err(Errno::EEXIST) => {}
                        Err(e) => return Err(os(name, "create parent", e)),
                    }
                    self.beneath(&prefix, OFlag::O_PATH).map_err(|e| resolve_error(name, e))?
                }
                other => other.map_err(|e| resolve_error(name, e))?,
            };
        }
        Ok(dir)
    }

    /// Removes `name` in `dir` if it exists (a directory recursively),
    /// never following it.
    fn remove_at(&self, dir: &OwnedFd, name: &[u8]) -> Result<(), io::Error> {
        match unlinkat(Some(dir.as_raw_fd()), osstr(name), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EISDIR) => std::fs::remove_dir_all(proc_path(dir, name)),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// Best-effort undo of a failed entry: the entry, then its new parents.
    fn undo(&self, parent: &[u8], entry: Option<&[u8]>, created: &[Vec<u8>]) {
        if let (Some(name), Ok(dir)) = (entry, self.beneath(parent, OFlag::O_PATH)) {
            let _ = self.remove_at(&dir, name);
        }
        for path in created.iter().rev() {
            let (p, n) = split(path);
            if let Ok(dir) = self.beneath(p, OFlag::O_PATH) {
                let _ = unlinkat(Some(dir.as_raw_fd()), osstr(n), UnlinkatFlags::RemoveDir);
            }
        }
    }

    fn record(&mut self, path: &[u8]) {
        let mut path = path.to_vec();
        while self.written.insert(path.clone()) && !path.is_empty() {
            path.truncate(split(&path).0.len());
        }
    }

    /// Applies one entry at the clean path `path` (`name` is the raw
    /// name, for errors). On error nothing of this entry is left.
    pub fn apply(
        &mut self,
        name: &str,
        path: &[u8],
        kind: Kind,
        meta: &Meta,
        data: &mut dyn Read,
    ) -> Result<(), ImageError> {
        if path.is_empty() {
            if kind != Kind::Dir {
                return Err(refuse(name, "the layer root must be a directory"));
            }
            let root = self.beneath(b"", OFlag::O_PATH).map_err(|e| resolve_error(name, e))?;
            self.set_meta(name, &root, b".", meta, false)?;
            self.dir_times.push((Vec::new(), meta.mtime));
            return Ok(());
        }
        let (parent, base) = split(path);
        if base == OPAQUE_MARKER {
            return self.opaque(name, parent);
        }
        if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(refuse(name, "whiteout of nothing"));
            }
            return self.whiteout(name, parent, hidden);
        }
        if kind == Kind::WhiteoutDevice {
            return self.whiteout(name, parent, base);
        }
        let mut created = Vec::new();
        let result = match self.parent(name, parent, &mut created) {
            Ok(dir) => self.create(name, &dir, base, &kind, meta, data),
            Err(e) => Err((e, false)),
        };
        if let Err((e, made)) = result {
            self.undo(parent, made.then_some(base), &created);
            return Err(e);
        }
        if kind == Kind::Dir {
            self.dir_times.push((path.to_vec(), meta.mtime));
        }
        self.record(path);
        Ok(())
    }

    /// Creates `base` in `dir`, replacing what is there (a directory stays
    /// a directory). The error says whether the entry itself was made.
    fn create(
        &self,
        name: &str,
        dir: &OwnedFd,
        base: &[u8],
        kind: &Kind,
        meta: &Meta,
        data: &mut dyn Read,
    ) -> Result<(), (ImageError, bool)> {
        let fd = Some(dir.as_raw_fd());
        let b = osstr(base);
        let existing = match fstatat(fd, b, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits()),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err((os(name, "stat", e), false)),
        };
        let keep_dir = existing == Some(true) && *kind == Kind::Dir;
        if existing.is_some() && !keep_dir {
            self.remove_at(dir, base)
                .map_err(|e| (ImageError::io(format!("layer entry {name:?}: replace"), e), false))?;
        }
        let not_made = |op: &'static str| move |e: Errno| (os(name, op, e), false);
        match kind {
            Kind::File(size) => {
                let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let raw = openat(fd, b, flags, Mode::from_bits_truncate(0o600)).map_err(not_made("create"))?;
                let mut file = File::from(own(raw));
                let copied = io::copy(data, &mut file).map_err(|e| (copy_error(name, e), true))?;
                if copied != *size {
                    return Err((refuse(name, &format!("truncated data: {copied} of {size} bytes")), true));
                }
            }
            Kind::Dir if keep_dir => {}
            Kind::Dir => mkdirat(fd, b, Mode::from_bits_truncate(0o700)).map_err(not_made("mkdir"))?,
            Kind::Symlink(target) => symlinkat(osstr(target), fd, b).map_err(not_made("symlink"))?,
            Kind::HardLink(target) => return self.hard_link(name, dir, base, target).map_err(|e| (e, false)),
            Kind::Fifo => {
                mknodat(fd, b, SFlag::S_IFIFO, Mode::from_bits_truncate(0o600), 0).map_err(not_made("mkfifo"))?
            }
            Kind::WhiteoutDevice => return Err((refuse(name, "misplaced whiteout device"), false)),
        }
        let made = !keep_dir;
        self.set_meta(name, dir, base, meta, matches!(kind, Kind::Symlink(_))).map_err(|e| (e, made))?;
        if *kind != Kind::Dir {
            set_times(dir, base, meta.mtime).map_err(|e| (os(name, "set times", e), made))?;
        }
        Ok(())
    }

    /// Hard links are allowed only to what this layer wrote.
    fn hard_link(&self, name: &str, dir: &OwnedFd, base: &[u8], target: &[u8]) -> Result<(), ImageError> {
        let shown = String::from_utf8_lossy(target);
        if !self.written.contains(target) {
            return Err(refuse(name, &format!("hard link target {shown:?} is not in this layer")));
        }
        let (tparent, tbase) = split(target);
        let tdir = self.beneath(tparent, OFlag::O_PATH).map_err(|e| resolve_error(name, e))?;
        let (old, new) = (Some(tdir.as_raw_fd()), Some(dir.as_raw_fd()));
        linkat(old, osstr(tbase), new, osstr(base), AtFlags::empty()).map_err(|e| match e {
            Errno::ENOENT | Errno::EPERM | Errno::EXDEV => refuse(name, &format!("cannot hard link to {shown:?}: {e}")),
            e => os(name, "link", e),
        })
    }

    /// Owner, then mode (chown clears set-id bits), then xattrs (chown
    /// clears file capabilities). Symlinks have no mode of their own.
    fn set_meta(&self, name: &str, dir: &OwnedFd, base: &[u8], meta: &Meta, symlink: bool) -> Result<(), ImageError> {
        let (fd, b) = (Some(dir.as_raw_fd()), osstr(base));
        let (uid, gid) = (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
        fchownat(fd, b, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| os(name, "chown", e))?;
        if !symlink {
            let mode = Mode::from_bits_truncate(meta.mode);
            fchmodat(fd, b, mode, FchmodatFlags::FollowSymlink).map_err(|e| os(name, "chmod", e))?;
        }
        for (key, value) in &meta.xattrs {
            // Overlay's own attributes would let a layer steer the snapshotter.
            if key.starts_with(b"trusted.overlay.") {
                continue;
            }
            match set_xattr(&proc_path(dir, base), key, value) {
                // The file system keeps no xattrs of this namespace: skip.
                Ok(()) | Err(Errno::EOPNOTSUPP) => {}
                Err(e) => return Err(xattr_error(name, key, e)),
            }
        }
        Ok(())
    }

    fn whiteout(&mut self, name: &str, parent: &[u8], hidden: &[u8]) -> Result<(), ImageError> {
        // A whiteout hides lower layers only, never this layer's entries.
        if self.written.contains(&join(parent, hidden)) {
            return Ok(());
        }
        let replace = |e| ImageError::io(format!("layer entry {name:?}: remove"), e);
        match self.whiteouts {
            Whiteouts::Apply => match self.beneath(parent, OFlag::O_PATH) {
                Ok(dir) => self.remove_at(&dir, hidden).map_err(replace),
                Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(resolve_error(name, e)),
            },
            Whiteouts::Overlay => {
                let mut created = Vec::new();
                let dir = self.parent(name, parent, &mut created)?;
                let result = self.remove_at(&dir, hidden).map_err(replace).and_then(|()| {
                    let (fd, h) = (Some(dir.as_raw_fd()), osstr(hidden));
                    mknodat(fd, h, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                        .map_err(|e| os(name, "mknod whiteout", e))
                });
                if result.is_err() {
                    self.undo(parent, None, &created);
                }
                result
            }
        }
    }

    fn opaque(&mut self, name: &str, parent: &[u8]) -> Result<(), ImageError> {
        match self.whiteouts {
            Whiteouts::Overlay => {
                let mut created = Vec::new();
                let dir = self.parent(name, parent, &mut created)?;
                let result = set_xattr(&proc_path(&dir, b"."), OVERLAY_OPAQUE.as_bytes(), b"y")
                    .map_err(|e| os(name, "set opaque", e));
                if result.is_err() {
                    self.undo(parent, None, &created);
                }
                result
            }
            Whiteouts::Apply => {
                // Hide everything under `parent` that this layer did not write.
                let mut todo = vec![parent.to_vec()];
                while let Some(path) = todo.pop() {
                    let dir = match self.beneath(&path, OFlag::O_RDONLY) {
                        Ok(dir) => dir,
                        Err(Errno::ENOENT) => continue,
                        Err(e) => return Err(resolve_error(name, e)),
                    };
                    let io_err = |e| ImageError::io(format!("layer entry {name:?}: opaque dir"), e);
                    for child in std::fs::read_dir(proc_path(&dir, b".")).map_err(io_err)? {
                        let child = child.map_err(io_err)?;
                        let base = child.file_name();
                        let full = join(&path, base.as_bytes());
                        if !self.written.contains(&full) {
                            self.remove_at(&dir, base.as_bytes()).map_err(io_err)?;
                        } else if child.file_type().map_err(io_err)?.is_dir() {
                            todo.push(full);
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Sets directory mtimes, deepest last-written first.
    pub fn finish(self) -> Result<(), ImageError> {
        for (path, mtime) in self.dir_times.iter().rev() {
            let (parent, base) = if path.is_empty() { (&b""[..], &b"."[..]) } else { split(path) };
            let shown = String::from_utf8_lossy(path);
            let dir = match self.beneath(parent, OFlag::O_PATH) {
                Ok(dir) => dir,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(resolve_error(&shown, e)),
            };
            match set_times(&dir, base, *mtime) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(os(&shown, "set times", e)),
            }
        }
        Ok(())
    }
}

fn set_times(dir: &OwnedFd, base: &[u8], (secs, nanos): (i64, i64)) -> Result<(), Errno> {
    let t = TimeSpec::new(secs, nanos);
    utimensat(Some(dir.as_raw_fd()), osstr(base), &t, &t, UtimensatFlags::NoFollowSymlink)
}

/// `lsetxattr`: the last component of `path` is not followed.
fn set_xattr(path: &Path, key: &[u8], value: &[u8]) -> Result<(), Errno> {
    let path = CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    let key = CString::new(key).map_err(|_| Errno::EINVAL)?;
    // SAFETY: both strings are NUL-terminated and live across the call;
    // `value` is valid for `value.len()` bytes.
    let rc = unsafe { libc::lsetxattr(path.as_ptr(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    Errno::result(rc).map(drop)
}

fn xattr_error(name: &str, key: &[u8], e: Errno) -> ImageError {
    let key = String::from_utf8_lossy(key);
    match e {
        Errno::EINVAL | Errno::E2BIG | Errno::ERANGE => refuse(name, &format!("bad xattr {key:?}: {e}")),
        e => os(name, &format!("set xattr {key:?}"), e),
    }
}

/// A failure copying entry data: a truncated or corrupt stream is the
/// layer's fault, anything else (disk full) is I/O.
fn copy_error(name: &str, e: io::Error) -> ImageError {
    match e.kind() {
        io::ErrorKind::InvalidData
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::InvalidInput
        | io::ErrorKind::Other => refuse(name, &format!("corrupt or truncated data: {e}")),
        _ => ImageError::io(format!("layer entry {name:?}: write"), e),
    }
}
