//! User names of an image (issue 10 item 6): `USER[:GROUP]` — from `-u`
//! or the image config's `User` — resolved to numeric ids through the
//! image's `/etc/passwd` and `/etc/group`, read from its committed
//! snapshots before anything is created. The files are looked up layer by
//! layer, topmost first, as overlayfs would show them (a whiteout or an
//! opaque `/etc` hides lower layers), each opened with
//! `openat2(RESOLVE_IN_ROOT)` inside its layer so a symlink can never
//! lead out of the image (SPEC B31). A name the files do not hold is
//! InvalidArgument.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{SFlag, fstat};

use crate::snapshot::chain_hex;
use crate::{ImageError, Snapshotter};

/// /etc/passwd or /etc/group larger than this is refused.
const MAX_FILE: u64 = 4 << 20;
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Numeric ids of a process user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
}

/// Resolves `user` (`NAME|UID[:GROUP|GID]`, empty: root) for the image
/// whose top layer is `chain_id`. Without a group, the user's primary
/// group from /etc/passwd (0 for a uid the file does not list).
pub fn resolve_user(snapshots: &Snapshotter, chain_id: &str, user: &str) -> Result<UserIds, ImageError> {
    if user.is_empty() {
        return Ok(UserIds { uid: 0, gid: 0 });
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if u.is_empty() || g.is_some_and(str::is_empty) {
        return Err(ImageError::InvalidArgument(format!("user {user:?} is not USER[:GROUP]")));
    }
    let numeric = |s: &str| s.parse::<u32>().ok();
    let passwd = if numeric(u).is_some() && g.is_some_and(|g| numeric(g).is_some()) {
        String::new()
    } else {
        read_layered(snapshots, chain_id, "etc/passwd")?.unwrap_or_default()
    };
    let users = parse(&passwd, 4);
    let (uid, primary) = match numeric(u) {
        Some(uid) => (uid, users.values().find(|f| f[0] == uid).map_or(0, |f| f[1])),
        None => match users.get(u) {
            Some(f) => (f[0], f[1]),
            None => return Err(ImageError::InvalidArgument(format!("user {u:?} is not in the image's /etc/passwd"))),
        },
    };
    let gid = match g {
        None => primary,
        Some(g) => match numeric(g) {
            Some(gid) => gid,
            None => {
                let group = read_layered(snapshots, chain_id, "etc/group")?.unwrap_or_default();
                match parse(&group, 3).get(g) {
                    Some(f) => f[0],
                    None => {
                        return Err(ImageError::InvalidArgument(format!(
                            "group {g:?} is not in the image's /etc/group"
                        )));
                    }
                }
            }
        },
    };
    Ok(UserIds { uid, gid })
}

/// `name → [id, primary gid]` of passwd (`fields` 4) or `name → [gid]` of
/// group (`fields` 3) lines; malformed lines are skipped.
fn parse(text: &str, fields: usize) -> HashMap<&str, Vec<u32>> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < fields || f[0].is_empty() || line.starts_with('#') {
            continue;
        }
        let ids: Option<Vec<u32>> = f[2..fields.min(4)].iter().map(|s| s.trim().parse().ok()).collect();
        if let Some(ids) = ids {
            out.entry(f[0]).or_insert(ids);
        }
    }
    out
}

/// The chain of committed snapshots under `chain_id`, topmost first.
fn chain(snapshots: &Snapshotter, chain_id: &str) -> Result<Vec<String>, ImageError> {
    let parents: HashMap<String, Option<String>> =
        snapshots.committed()?.into_iter().map(|c| (c.chain_id, c.parent)).collect();
    let mut out = Vec::new();
    let mut next = Some(chain_id.to_string());
    while let Some(id) = next {
        let Some(parent) = parents.get(&id) else {
            return Err(ImageError::NotFound(format!("snapshot {id}")));
        };
        if out.len() > parents.len() {
            return Err(ImageError::InvalidArgument(format!("snapshot chain of {chain_id} loops")));
        }
        next = parent.clone();
        out.push(id);
    }
    Ok(out)
}

fn layer_fs(snapshots: &Snapshotter, chain_id: &str) -> Result<PathBuf, ImageError> {
    Ok(snapshots.root().join("committed").join(chain_hex(chain_id)?).join("fs"))
}

fn open_in(root: &OwnedFd, rel: &str, flags: OFlag) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    // SAFETY: a successful openat2 returns a new descriptor no one else owns.
    openat2(root.as_raw_fd(), OsStr::new(rel), how).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads `rel` (under `etc/`) of the image as overlayfs would show it;
/// `None` when no layer has it (or a whiteout hides it).
fn read_layered(snapshots: &Snapshotter, chain_id: &str, rel: &str) -> Result<Option<String>, ImageError> {
    let io = |what: String, e: Errno| ImageError::io(what, std::io::Error::from(e));
    for id in chain(snapshots, chain_id)? {
        let fs = layer_fs(snapshots, &id)?;
        let root =
            nix::fcntl::open(&fs, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
                .map_err(|e| io(format!("open {}", fs.display()), e))?;
        // SAFETY: `open` just returned this descriptor.
        let root = unsafe { OwnedFd::from_raw_fd(root) };
        match open_in(&root, rel, OFlag::O_PATH) {
            Ok(fd) => {
                let st = fstat(fd.as_raw_fd()).map_err(|e| io(format!("stat /{rel}"), e))?;
                let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
                if kind == SFlag::S_IFCHR {
                    return Ok(None); // an overlay whiteout
                }
                if kind != SFlag::S_IFREG {
                    return Err(ImageError::InvalidArgument(format!("the image's /{rel} is not a regular file")));
                }
                let fd = open_in(&root, rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
                    .map_err(|e| io(format!("open /{rel} in {}", fs.display()), e))?;
                let mut text = String::new();
                File::from(fd)
                    .take(MAX_FILE + 1)
                    .read_to_string(&mut text)
                    .map_err(|e| ImageError::InvalidArgument(format!("the image's /{rel}: {e}")))?;
                if text.len() as u64 > MAX_FILE {
                    return Err(ImageError::InvalidArgument(format!(
                        "the image's /{rel} is larger than {MAX_FILE} bytes"
                    )));
                }
                return Ok(Some(text));
            }
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => {}
            Err(e @ (Errno::ELOOP | Errno::EXDEV)) => {
                return Err(ImageError::InvalidArgument(format!("the image's /{rel} cannot be resolved: {e}")));
            }
            Err(e) => return Err(io(format!("open /{rel} in {}", fs.display()), e)),
        }
        // Not in this layer: a whiteout of /etc or an opaque /etc hides
        // the lower layers.
        if let Ok(fd) = open_in(&root, "etc", OFlag::O_PATH) {
            let st = fstat(fd.as_raw_fd()).map_err(|e| io("stat /etc".into(), e))?;
            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR {
                return Ok(None);
            }
            let mut buf = [0u8; 4];
            if getxattr(&format!("/proc/self/fd/{}", fd.as_raw_fd()), OPAQUE_XATTR, &mut buf) == Some(1)
                && buf[0] == b'y'
            {
                return Ok(None);
            }
        }
    }
    Ok(None)
}

/// `getxattr(path, name)` into `buf`: the length, `None` when absent.
fn getxattr(path: &str, name: &str, buf: &mut [u8]) -> Option<usize> {
    let path = std::ffi::CString::new(path).ok()?;
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use nix::sys::stat::{Mode, makedev, mknod};

    use super::*;

    fn chain_of(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    /// Commits layer `n` on `parent`, filled by `fill`.
    fn layer(s: &Snapshotter, n: u8, parent: Option<u8>, fill: impl FnOnce(&Path)) -> String {
        let parent = parent.map(chain_of);
        let p = s.prepare_layer(&format!("l{n}"), parent.as_deref()).expect("prepare");
        fs::create_dir_all(p.dir().join("etc")).expect("etc");
        fill(p.dir());
        s.commit(p, &chain_of(n)).expect("commit");
        chain_of(n)
    }

    #[test]
    fn names_resolve_through_the_layers_as_overlayfs_shows_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Snapshotter::new(&dir.path().join("snapshots")).expect("snapshotter");
        let base = layer(&s, 1, None, |d| {
            fs::write(d.join("etc/passwd"), "root:x:0:0::/:/bin/sh\napp:x:1000:100::/:/bin/sh\n").expect("passwd");
            fs::write(d.join("etc/group"), "root:x:0:\nstaff:x:50:app\n").expect("group");
        });
        let ids = |chain: &str, user: &str| resolve_user(&s, chain, user);
        assert_eq!(ids(&base, "app").expect("app"), UserIds { uid: 1000, gid: 100 });
        assert_eq!(ids(&base, "app:staff").expect("app:staff"), UserIds { uid: 1000, gid: 50 });
        assert_eq!(ids(&base, "42").expect("42"), UserIds { uid: 42, gid: 0 });
        assert_eq!(ids(&base, "").expect("root"), UserIds { uid: 0, gid: 0 });
        for bad in ["nobody", "app:none", ":50", "app:"] {
            assert!(matches!(ids(&base, bad), Err(ImageError::InvalidArgument(_))), "{bad}");
        }
        // A layer without the files shows the lower ones.
        let plain = layer(&s, 2, Some(1), |_| {});
        assert_eq!(ids(&plain, "app").expect("app").uid, 1000);
        // A whiteout hides them; so does an opaque /etc.
        let whited = layer(&s, 3, Some(1), |d| {
            mknod(&d.join("etc/passwd"), SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).expect("whiteout");
        });
        assert!(matches!(ids(&whited, "app"), Err(ImageError::InvalidArgument(_))));
        let opaque = layer(&s, 4, Some(1), |d| {
            let p = std::ffi::CString::new(d.join("etc").to_string_lossy().as_bytes()).expect("path");
            let name = std::ffi::CString::new(OPAQUE_XATTR).expect("name");
            // SAFETY: valid C strings and a 1-byte value that outlive the call.
            let rc = unsafe { libc::setxattr(p.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
            assert_eq!(rc, 0, "setxattr");
        });
        assert!(matches!(ids(&opaque, "app"), Err(ImageError::InvalidArgument(_))));
        // An upper /etc/passwd replaces the lower one.
        let replaced = layer(&s, 5, Some(1), |d| {
            fs::write(d.join("etc/passwd"), "app:x:7:8::/:/bin/sh\n").expect("passwd");
        });
        assert_eq!(ids(&replaced, "app").expect("app"), UserIds { uid: 7, gid: 8 });
        // A symlink out of the layer resolves inside it.
        let escape = layer(&s, 6, None, |d| {
            std::os::unix::fs::symlink("/../../../../etc/shadow", d.join("etc/passwd")).expect("symlink");
        });
        assert!(matches!(ids(&escape, "root"), Err(ImageError::InvalidArgument(_))));
        assert!(matches!(ids(&chain_of(9), "root"), Err(ImageError::NotFound(_))));
    }

    #[test]
    fn parses_passwd_and_group_lines() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n# comment\nbad line\napp:x:1000:100::/home/app:/bin/sh\n";
        let users = parse(passwd, 4);
        assert_eq!(users.get("root"), Some(&vec![0, 0]));
        assert_eq!(users.get("app"), Some(&vec![1000, 100]));
        assert_eq!(users.len(), 2);
        let groups = parse("root:x:0:\nstaff:x:50:app\nbroken:x:notanumber:\n", 3);
        assert_eq!(groups.get("staff"), Some(&vec![50]));
        assert!(!groups.contains_key("broken"));
    }
}
