//! User names of an image (issue 10 item 6): `USER[:GROUP]` — from `-u`
//! or the image config's `User` — resolved to numeric ids through the
//! image's `/etc/passwd` and `/etc/group`, read from its committed
//! snapshots before anything is created. The files are looked up layer by
//! layer, topmost first, as overlayfs would show them (a whiteout or an
//! opaque `/etc` hides lower layers), each opened with
//! `openat2(RESOLVE_IN_ROOT)` inside its layer so a symlink can never
//! lead out of the image (SPEC B31). A name the files do not hold is
//! InvalidArgument. A user without an explicit group also gets its
//! supplementary groups (the /etc/group entries listing its name), as
//! runc and Docker give them.

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
/// Supplementary groups a process may have: the kernel's NGROUPS_MAX,
/// beyond which runc's setgroups would fail at start. Refused at create
/// instead of cut short (a silently dropped group changes permissions).
const MAX_GROUPS: usize = 65536;
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Numeric ids of a process user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: every group of /etc/group that lists the
    /// user's name as a member, in file order, each once.
    pub additional_gids: Vec<u32>,
}

/// Resolves `user` (`NAME|UID[:GROUP|GID]`, empty: root) for the image
/// whose top layer is `chain_id`. Without a group, the user's primary
/// group from /etc/passwd (0 for a uid the file does not list) and, like
/// runc and Docker, its supplementary groups — when the user has a
/// passwd entry (by name, or the first entry with that uid); an explicit
/// group gives none. More than [`MAX_GROUPS`] is refused.
pub fn resolve_user(snapshots: &Snapshotter, chain_id: &str, user: &str) -> Result<UserIds, ImageError> {
    if user.is_empty() {
        return Ok(UserIds { uid: 0, gid: 0, additional_gids: Vec::new() });
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if u.is_empty() || g.is_some_and(str::is_empty) {
        return Err(ImageError::InvalidArgument(format!("user {user:?} is not USER[:GROUP]")));
    }
    let passwd = if number(u).is_some() && g.is_some_and(|g| number(g).is_some()) {
        String::new()
    } else {
        read_layered(snapshots, chain_id, "etc/passwd")?.unwrap_or_default()
    };
    let users = records(&passwd, 4);
    let entry = match number(u) {
        Some(uid) => users.iter().find(|r| r.id == uid),
        None => users.iter().find(|r| r.name == u),
    };
    let (uid, primary, name) = match (number(u), entry) {
        (_, Some(r)) => (r.id, r.gid, Some(r.name)),
        (Some(uid), None) => (uid, 0, None),
        (None, None) => {
            return Err(ImageError::InvalidArgument(format!("user {u:?} is not in the image's /etc/passwd")));
        }
    };
    let group = match (g, name) {
        (Some(g), _) if number(g).is_some() => String::new(),
        (None, None) => String::new(),
        _ => read_layered(snapshots, chain_id, "etc/group")?.unwrap_or_default(),
    };
    let groups = records(&group, 3);
    let Some(g) = g else {
        let additional_gids = name.map(|n| supplementary(&groups, n)).transpose()?.unwrap_or_default();
        return Ok(UserIds { uid, gid: primary, additional_gids });
    };
    let gid = match (number(g), groups.iter().find(|r| r.name == g)) {
        (Some(gid), _) => gid,
        (None, Some(r)) => r.id,
        (None, None) => {
            return Err(ImageError::InvalidArgument(format!("group {g:?} is not in the image's /etc/group")));
        }
    };
    Ok(UserIds { uid, gid, additional_gids: Vec::new() })
}

/// The groups listing `name` as a member, each gid once, in file order.
fn supplementary(groups: &[Record<'_>], name: &str) -> Result<Vec<u32>, ImageError> {
    let mut seen = std::collections::HashSet::new();
    let members = groups.iter().filter(|r| r.members.split(',').any(|m| m.trim() == name));
    let gids: Vec<u32> = members.map(|r| r.id).filter(|gid| seen.insert(*gid)).collect();
    if gids.len() > MAX_GROUPS {
        return Err(ImageError::InvalidArgument(format!(
            "user {name:?} is in {} groups of the image's /etc/group, more than the kernel's limit of {MAX_GROUPS}",
            gids.len()
        )));
    }
    Ok(gids)
}

fn number(s: &str) -> Option<u32> {
    s.trim().parse().ok()
}

/// A line of /etc/passwd (name, uid, primary gid) or /etc/group (name,
/// gid, members).
#[derive(Debug, PartialEq, Eq)]
struct Record<'a> {
    name: &'a str,
    id: u32,
    /// passwd: the primary gid; group: unused (0).
    gid: u32,
    /// group: the comma-separated member names; passwd: empty.
    members: &'a str,
}

/// The lines of passwd (`fields` 4: name, password, uid, gid) or group
/// (`fields` 3: name, password, gid, then members) in file order;
/// comments and malformed lines are skipped.
fn records(text: &str, fields: usize) -> Vec<Record<'_>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < fields || f[0].is_empty() {
            continue;
        }
        let (Some(id), gid) = (number(f[2]), f.get(3).map(|s| number(s))) else { continue };
        let record = match (fields, gid) {
            (4, Some(Some(gid))) => Record { name: f[0], id, gid, members: "" },
            (3, _) => Record { name: f[0], id, gid: 0, members: f.get(3).copied().unwrap_or("") },
            _ => continue,
        };
        out.push(record);
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
        let plain = |uid, gid| UserIds { uid, gid, additional_gids: Vec::new() };
        assert_eq!(ids(&base, "app").expect("app"), UserIds { uid: 1000, gid: 100, additional_gids: vec![50] });
        assert_eq!(ids(&base, "app:staff").expect("app:staff"), plain(1000, 50));
        assert_eq!(ids(&base, "42").expect("42"), plain(42, 0));
        assert_eq!(ids(&base, "").expect("root"), plain(0, 0));
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
        assert_eq!(ids(&replaced, "app").expect("app"), UserIds { uid: 7, gid: 8, additional_gids: vec![50] });
        // A symlink out of the layer resolves inside it.
        let escape = layer(&s, 6, None, |d| {
            std::os::unix::fs::symlink("/../../../../etc/shadow", d.join("etc/passwd")).expect("symlink");
        });
        assert!(matches!(ids(&escape, "root"), Err(ImageError::InvalidArgument(_))));
        assert!(matches!(ids(&chain_of(9), "root"), Err(ImageError::NotFound(_))));
    }

    #[test]
    fn supplementary_groups_like_runc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Snapshotter::new(&dir.path().join("snapshots")).expect("snapshotter");
        let passwd = "root:x:0:0::/:/bin/sh\napp:x:1000:100::/:/bin/sh\nalias:x:1000:7::/:/bin/sh\n";
        let group = "root:x:0:\nusers:x:100:app\nstaff:x:50:other, app\nwheel:x:10:apple,bob\n\
                     dup:x:50:app\naudio:x:63:bob,app\nrootish:x:5:root\n";
        let image = layer(&s, 1, None, |d| {
            fs::write(d.join("etc/passwd"), passwd).expect("passwd");
            fs::write(d.join("etc/group"), group).expect("group");
        });
        let ids = |user: &str| resolve_user(&s, &image, user).expect(user);
        // By name: every group listing the name, each gid once, file order;
        // the primary group too when it lists the user (harmless, as runc).
        assert_eq!(ids("app").additional_gids, [100, 50, 63]);
        // A numeric uid with a passwd entry is that (first) entry's user.
        assert_eq!(ids("1000"), UserIds { uid: 1000, gid: 100, additional_gids: vec![100, 50, 63] });
        assert_eq!(ids("0").additional_gids, [5]);
        // A uid the image does not know, or an explicit group: none.
        assert_eq!(ids("4242").additional_gids, Vec::<u32>::new());
        assert_eq!(ids("app:staff").additional_gids, Vec::<u32>::new());
        assert_eq!(ids("app:10").additional_gids, Vec::<u32>::new());
    }

    #[test]
    fn more_groups_than_the_kernel_allows_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Snapshotter::new(&dir.path().join("snapshots")).expect("snapshotter");
        let lines = |n: usize| (0..n).map(|i| format!("g{i}:x:{}:app\n", i + 1000)).collect::<String>();
        let at_limit = layer(&s, 1, None, |d| {
            fs::write(d.join("etc/passwd"), "app:x:1000:1000::/:/bin/sh\n").expect("passwd");
            fs::write(d.join("etc/group"), lines(MAX_GROUPS)).expect("group");
        });
        assert_eq!(resolve_user(&s, &at_limit, "app").expect("at the limit").additional_gids.len(), MAX_GROUPS);
        let over = layer(&s, 2, Some(1), |d| {
            fs::write(d.join("etc/group"), lines(MAX_GROUPS + 1)).expect("group");
        });
        let err = resolve_user(&s, &over, "app").expect_err("over the limit");
        assert!(matches!(err, ImageError::InvalidArgument(_)), "{err:?}");
        assert!(err.to_string().contains("65537 groups"), "{err}");
    }

    #[test]
    fn parses_passwd_and_group_lines() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\n# comment\nbad line\napp:x:1000:100::/home/app:/bin/sh\n";
        let users = records(passwd, 4);
        let rec = |name, id, gid, members| Record { name, id, gid, members };
        assert_eq!(users, [rec("root", 0, 0, ""), rec("app", 1000, 100, "")]);
        let groups = records("root:x:0:\nstaff:x:50:app,bob\nbroken:x:notanumber:\nbare:x:7\n", 3);
        assert_eq!(groups, [rec("root", 0, 0, ""), rec("staff", 50, 0, "app,bob"), rec("bare", 7, 0, "")]);
    }
}
