//! Tests of the overlay snapshotter, run as root against real overlayfs
//! mounts in temp dirs; every mount is undone by a guard's Drop.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::MntFlags;
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use super::mount::parse_mountinfo;
use super::*;
use berth_model::Code;

/// Detaches a mount when dropped, so a failing test leaks nothing.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        while nix::mount::umount2(&self.0, MntFlags::MNT_DETACH).is_ok() {}
    }
}

fn chain(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

fn setup() -> (tempfile::TempDir, Snapshotter) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Snapshotter::new(&dir.path().join("snapshots")).expect("new snapshotter");
    (dir, s)
}

fn target(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    let t = dir.path().join(name);
    fs::create_dir(&t).expect("mkdir target");
    t
}

fn whiteout(path: &Path) {
    mknod(path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o000), makedev(0, 0)).expect("mknod whiteout");
}

fn set_opaque(dir: &Path) {
    let p = CString::new(dir.as_os_str().as_bytes()).expect("path");
    let name = CString::new("trusted.overlay.opaque").expect("name");
    // SAFETY: valid NUL-terminated strings and a 1-byte buffer that outlive the call.
    let rc = unsafe { libc::setxattr(p.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    assert_eq!(rc, 0, "setxattr opaque: {}", std::io::Error::last_os_error());
}

fn is_mounted(at: &Path) -> bool {
    overlay_mounts().expect("mountinfo").iter().any(|m| m.mount_point == at)
}

fn tmp_entries(s: &Snapshotter) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(s.root().join(TMP))
        .expect("ls tmp")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Layer 1: a.txt, gone.txt, dir/old.txt, keep/x. Layer 2: a.txt changed,
/// gone.txt whited out, dir opaque with dir/new.txt, b.txt added.
fn two_layers(s: &Snapshotter) {
    let p1 = s.prepare_layer("l1", None).expect("prepare l1");
    let d = p1.dir();
    fs::set_permissions(d, fs::Permissions::from_mode(0o750)).expect("chmod layer root");
    std::os::unix::fs::chown(d, Some(7), Some(8)).expect("chown layer root");
    fs::write(d.join("a.txt"), "one").expect("write");
    fs::write(d.join("gone.txt"), "gone").expect("write");
    fs::create_dir_all(d.join("dir")).expect("mkdir");
    fs::write(d.join("dir/old.txt"), "old").expect("write");
    fs::create_dir_all(d.join("keep")).expect("mkdir");
    fs::write(d.join("keep/x"), "x1").expect("write");
    assert_eq!(s.commit(p1, &chain(1)).expect("commit l1"), CommitOutcome::Committed);

    let p2 = s.prepare_layer("l2", Some(&chain(1))).expect("prepare l2");
    let d = p2.dir();
    fs::write(d.join("a.txt"), "two").expect("write");
    fs::write(d.join("b.txt"), "bee").expect("write");
    whiteout(&d.join("gone.txt"));
    fs::create_dir(d.join("dir")).expect("mkdir");
    set_opaque(&d.join("dir"));
    fs::write(d.join("dir/new.txt"), "new").expect("write");
    assert_eq!(s.commit(p2, &chain(2)).expect("commit l2"), CommitOutcome::Committed);
}

#[test]
fn merged_view_honours_whiteouts_and_opaque_dirs_and_writes_land_in_upper() {
    let (dir, s) = setup();
    two_layers(&s);
    let m = s.create_active("c1", &chain(2)).expect("create active");
    let l1 = s.root().join(COMMITTED).join(chain_hex(&chain(1)).expect("hex")).join(FS);
    let l2 = s.root().join(COMMITTED).join(chain_hex(&chain(2)).expect("hex")).join(FS);
    assert_eq!(m.lowerdirs, vec![l2.clone(), l1.clone()], "lowerdirs top first");
    assert_eq!(m.upperdir, s.root().join("active/c1/fs"));
    assert_eq!(m.workdir, s.root().join("active/c1/work"));

    let t = target(&dir, "rootfs");
    s.mount("c1", &t).expect("mount");
    let _g = Unmount(t.clone());
    assert_eq!(s.mounted_at("c1").expect("mounted_at"), vec![t.clone()]);

    assert_eq!(fs::read_to_string(t.join("a.txt")).expect("a"), "two", "upper layer wins");
    assert_eq!(fs::read_to_string(t.join("b.txt")).expect("b"), "bee");
    assert!(!t.join("gone.txt").exists(), "whiteout hides layer 1's file");
    assert!(!t.join("dir/old.txt").exists(), "opaque dir hides layer 1's content");
    assert_eq!(fs::read_to_string(t.join("dir/new.txt")).expect("new"), "new");
    assert_eq!(fs::read_to_string(t.join("keep/x")).expect("x"), "x1");
    let root_md = fs::metadata(&t).expect("stat merged root");
    assert_eq!((root_md.uid(), root_md.gid(), root_md.mode() & 0o7777), (7, 8, 0o750), "image root's owner and mode");

    fs::write(t.join("written.txt"), "w").expect("write in container");
    fs::write(t.join("keep/x"), "x2").expect("modify lower file");
    fs::remove_file(t.join("b.txt")).expect("delete lower file");
    assert_eq!(fs::read_to_string(m.upperdir.join("written.txt")).expect("upper new"), "w");
    assert_eq!(fs::read_to_string(m.upperdir.join("keep/x")).expect("upper copy-up"), "x2");
    let wh = fs::symlink_metadata(m.upperdir.join("b.txt")).expect("whiteout in upper");
    assert!(wh.file_type().is_char_device(), "delete becomes a whiteout in upper");
    assert_eq!(fs::read_to_string(l1.join("keep/x")).expect("l1"), "x1", "lower layer untouched");
    assert_eq!(fs::read_to_string(l2.join("b.txt")).expect("l2"), "bee", "lower layer untouched");
    assert!(!l1.join("written.txt").exists() && !l2.join("written.txt").exists());

    s.unmount(&t).expect("unmount");
    assert!(!is_mounted(&t));
    s.unmount(&t).expect("second unmount is a no-op");
    s.remove_active("c1").expect("remove active");
    assert!(s.active().expect("list").is_empty());
    assert!(tmp_entries(&s).is_empty(), "nothing left in tmp: {:?}", tmp_entries(&s));
}

#[test]
fn committed_snapshots_are_kept_while_used() {
    let (dir, s) = setup();
    two_layers(&s);
    let err = s.remove_committed(&chain(1)).expect_err("layer 1 has a child");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");

    s.create_active("c1", &chain(2)).expect("create active");
    let err = s.remove_committed(&chain(2)).expect_err("layer 2 has an active");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("c1"), "{err}");
    let err = s.create_active("c1", &chain(2)).expect_err("duplicate key");
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");

    let t = target(&dir, "rootfs");
    s.mount("c1", &t).expect("mount");
    let _g = Unmount(t.clone());
    let err = s.remove_active("c1").expect_err("mounted");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    s.unmount(&t).expect("unmount");
    s.remove_active("c1").expect("remove active");
    assert_eq!(s.remove_active("c1").expect_err("gone").code(), Code::NotFound);

    // A single committed layer under a writable one is still an overlay.
    s.create_active("one", &chain(1)).expect("create on layer 1");
    s.mount("one", &t).expect("mount single lower");
    assert_eq!(fs::read_to_string(t.join("a.txt")).expect("a"), "one");
    assert!(t.join("gone.txt").exists() && t.join("dir/old.txt").exists(), "layer 2 not in this view");
    assert_eq!(s.mounted_at("one").expect("mounted_at"), vec![t.clone()]);
    s.unmount(&t).expect("unmount");
    s.remove_active("one").expect("remove");

    let listed: Vec<_> = s.committed().expect("list").into_iter().map(|c| (c.chain_id, c.parent)).collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&(chain(2), Some(chain(1)))));
    assert!(s.usage(&chain(2)).expect("usage") > 0);

    // Committing an existing chain id discards the second copy.
    let again = s.prepare_layer("again", None).expect("prepare");
    fs::write(again.dir().join("a.txt"), "other").expect("write");
    assert_eq!(s.commit(again, &chain(1)).expect("commit"), CommitOutcome::AlreadyPresent);
    assert_eq!(s.committed().expect("list").len(), 2);

    s.remove_committed(&chain(2)).expect("remove layer 2");
    s.remove_committed(&chain(1)).expect("remove layer 1");
    assert!(s.committed().expect("list").is_empty());
    assert_eq!(s.remove_committed(&chain(1)).expect_err("gone").code(), Code::NotFound);
    assert!(tmp_entries(&s).is_empty(), "nothing left in tmp: {:?}", tmp_entries(&s));
}

#[test]
fn recover_removes_half_work_and_stale_mounts() {
    let (dir, s) = setup();
    two_layers(&s);
    // A pull killed mid-unpack: prepared, partly written, never committed.
    let half = s.prepare_layer("half", Some(&chain(2))).expect("prepare");
    fs::write(half.dir().join("partial"), "p").expect("write");
    let err = s.remove_committed(&chain(2)).expect_err("unpack in progress on it");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    drop(half);
    // A berthd killed while creating an active snapshot (before its rename).
    fs::create_dir_all(s.root().join("tmp/active-half-1-0/fs")).expect("half active");
    // A berthd killed after mounting three containers: "live" still runs,
    // "stopped" has exited (keeps its files), "stale" is owned by nobody.
    let mut guards = Vec::new();
    let mut targets = Vec::new();
    for key in ["live", "stopped", "stale"] {
        s.create_active(key, &chain(2)).expect("create");
        let t = target(&dir, key);
        s.mount(key, &t).expect("mount");
        guards.push(Unmount(t.clone()));
        fs::write(t.join("mine"), key).expect("write in container");
        targets.push(t);
    }
    drop(s);

    let s = Snapshotter::new(&dir.path().join("snapshots")).expect("reopen");
    let want = |key: &str| match key {
        "live" => Keep::Mounted,
        "stopped" => Keep::Snapshot,
        _ => Keep::Nothing,
    };
    let mut report = s.recover(&want).expect("recover");
    report.unmounted.sort();
    assert_eq!(report.removed_tmp, vec!["active-half-1-0".to_string(), "prepare-half".to_string()]);
    assert_eq!(report.unmounted, vec![targets[2].clone(), targets[1].clone()], "stale and stopped unmounted");
    assert_eq!(report.removed_active, vec!["stale".to_string()]);
    assert!(is_mounted(&targets[0]), "running container's mount kept");
    assert!(!is_mounted(&targets[1]) && !is_mounted(&targets[2]), "other mounts gone");
    let keys: Vec<_> = s.active().expect("list").into_iter().map(|a| a.key).collect();
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&"live".to_string()) && keys.contains(&"stopped".to_string()));
    let stopped = s.mounts("stopped").expect("mounts");
    assert_eq!(fs::read_to_string(stopped.upperdir.join("mine")).expect("kept"), "stopped", "files kept");
    assert!(tmp_entries(&s).is_empty());
    s.remove_committed(&chain(2)).expect_err("still used by live and stopped");

    // A second recovery finds nothing to do.
    assert_eq!(s.recover(&want).expect("recover"), Recovered::default());
}

#[test]
fn many_layers_mount_by_relative_paths_or_layer_by_layer() {
    let (dir, s) = setup();
    let mut parent: Option<String> = None;
    for n in 1..=60u8 {
        let p = s.prepare_layer(&format!("l{n}"), parent.as_deref()).expect("prepare");
        fs::write(p.dir().join(format!("f{n}")), "x").expect("write");
        s.commit(p, &chain(n)).expect("commit");
        parent = Some(chain(n));
    }
    // 40 layers: too long as absolute paths, fits relative to the root.
    s.create_active("forty", &chain(40)).expect("create");
    let m = s.mounts("forty").expect("mounts");
    let lowers: usize = m.lowerdirs.iter().map(|l| l.as_os_str().len() + 1).sum();
    let absolute =
        "lowerdir=,upperdir=,workdir=".len() + lowers + m.upperdir.as_os_str().len() + m.workdir.as_os_str().len();
    assert!(absolute > 4095, "absolute options ({absolute} bytes) would fit: the test proves nothing");
    let t = target(&dir, "forty");
    s.mount("forty", &t).expect("mount 40 layers");
    let _g = Unmount(t.clone());
    assert!(t.join("f1").exists() && t.join("f40").exists() && !t.join("f41").exists());

    // 60 layers exceed one page even relative: mount(2) cannot take them,
    // the new mount API (Linux 6.8+, this host) adds them one by one.
    s.create_active("sixty", &chain(60)).expect("create");
    let err = super::mount::overlay_options(s.root(), &s.mounts("sixty").expect("mounts")).expect_err("too long");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    let t60 = target(&dir, "sixty");
    s.mount("sixty", &t60).expect("mount 60 layers through fsconfig");
    let _g60 = Unmount(t60.clone());
    assert!(t60.join("f1").exists() && t60.join("f60").exists());
    assert_eq!(s.mounted_at("sixty").expect("mounted_at"), vec![t60.clone()], "found again for recovery");
    s.unmount(&t60).expect("unmount");
    s.unmount(&t).expect("unmount");
    assert!(!is_mounted(&t60) && !is_mounted(&t));
}

#[test]
fn bad_keys_and_chain_ids_are_refused() {
    let (dir, s) = setup();
    for key in ["", "..", ".", "../x", "a/b", "/abs", ".hidden", "a..b", "sp ace", &"k".repeat(129)] {
        let err = s.prepare_layer(key, None).expect_err(key);
        assert_eq!(err.code(), Code::InvalidArgument, "{key:?}: {err}");
        let err = s.create_active(key, &chain(1)).expect_err(key);
        assert_eq!(err.code(), Code::InvalidArgument, "{key:?}: {err}");
    }
    let bad_chains =
        ["", "sha256:", "sha256:../../etc", "md5:abcd", &format!("sha256:{}", "A".repeat(64)), &chain(1)[..70]];
    for id in bad_chains {
        assert_eq!(s.prepare_layer("k", Some(id)).expect_err(id).code(), Code::InvalidArgument, "{id:?}");
        assert_eq!(s.create_active("k", id).expect_err(id).code(), Code::InvalidArgument, "{id:?}");
        assert_eq!(s.remove_committed(id).expect_err(id).code(), Code::InvalidArgument, "{id:?}");
    }
    let p = s.prepare_layer("k", None).expect("prepare");
    assert_eq!(s.commit(p, "sha256:nothex").expect_err("bad id").code(), Code::InvalidArgument);
    assert_eq!(s.prepare_layer("k", Some(&chain(9))).expect_err("no parent").code(), Code::NotFound);
    assert_eq!(s.create_active("k", &chain(9)).expect_err("no parent").code(), Code::NotFound);
    assert_eq!(s.mount("k", &dir.path().join("nowhere")).expect_err("no active").code(), Code::NotFound);
    assert!(tmp_entries(&s).is_empty(), "refusals change nothing: {:?}", tmp_entries(&s));
    assert!(s.committed().expect("list").is_empty() && s.active().expect("list").is_empty());
    let comma = dir.path().join("a,b");
    assert_eq!(Snapshotter::new(&comma).expect_err("comma").code(), Code::InvalidArgument);
}

#[test]
fn mountinfo_parsing_finds_overlay_upperdirs() {
    let text = "36 35 98:0 / /mnt1 rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                40 35 0:50 / /run/a\\040b rw,relatime shared:9 - overlay overlay rw,lowerdir=c/1/fs,upperdir=/s/active/k/fs,workdir=/s/active/k/work\n\
                41 35 0:51 / /x rw - overlay overlay rw,lowerdir=a:b\n";
    let m = parse_mountinfo(text);
    assert_eq!(
        m,
        vec![
            OverlayMount { mount_point: "/run/a b".into(), upperdir: Some("/s/active/k/fs".into()) },
            OverlayMount { mount_point: "/x".into(), upperdir: None },
        ]
    );
}

#[test]
fn chain_ids_follow_the_oci_rule() {
    let (d1, d2) = (chain(0x11), chain(0x22));
    assert_eq!(chain_id(None, &d1).expect("base"), d1, "a base layer's chain id is its diff id");
    // python3: hashlib.sha256((d1 + " " + d2).encode()).hexdigest()
    let want = "sha256:9932074217c35353d2e03a3f5a86549f7c67bfeb0ba53e23d69f4d4c8f7958f5";
    assert_eq!(chain_id(Some(&d1), &d2).expect("layer 2"), want);
    assert_eq!(chain_id(Some("sha256:x"), &d2).expect_err("bad parent").code(), Code::InvalidArgument);
    assert_eq!(chain_id(None, "../etc").expect_err("bad diff id").code(), Code::InvalidArgument);
}

/// A tar layer in memory: (path, Some(content) for a file, None for a dir).
fn layer_tar(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match content {
            Some(c) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(c.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, path, c.as_bytes()).expect("append file");
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                b.append_data(&mut h, path, std::io::empty()).expect("append dir");
            }
        }
    }
    b.into_inner().expect("finish tar")
}

#[test]
fn oci_layers_unpacked_with_overlay_whiteouts_mount_as_the_merged_image() {
    use crate::{UnpackOptions, Whiteouts, unpack_layer};
    let (dir, s) = setup();
    let layers = [
        layer_tar(&[("etc/", None), ("etc/a", Some("one")), ("gone.txt", Some("g")), ("dir/old.txt", Some("old"))]),
        layer_tar(&[
            ("etc/a", Some("two")),
            (".wh.gone.txt", Some("")),
            ("dir/", None),
            ("dir/.wh..wh..opq", Some("")),
            ("dir/new.txt", Some("new")),
        ]),
    ];
    let mut parent: Option<String> = None;
    for (n, tar) in layers.iter().enumerate() {
        let p = s.prepare_layer(&format!("extract-{n}"), parent.as_deref()).expect("prepare");
        let unpacked =
            unpack_layer(tar.as_slice(), p.dir(), &UnpackOptions::new(Whiteouts::Overlay)).expect("unpack layer");
        let id = chain_id(parent.as_deref(), &unpacked.diff_id.to_string()).expect("chain id");
        assert_eq!(s.commit(p, &id).expect("commit"), CommitOutcome::Committed);
        parent = Some(id);
    }
    let top = parent.expect("two layers");
    s.create_active("ctr", &top).expect("create active");
    let t = target(&dir, "rootfs");
    s.mount("ctr", &t).expect("mount");
    let _g = Unmount(t.clone());
    assert_eq!(fs::read_to_string(t.join("etc/a")).expect("a"), "two");
    assert!(!t.join("gone.txt").exists(), ".wh. file hides layer 1's file");
    assert!(!t.join(".wh.gone.txt").exists(), "whiteout markers are not files");
    assert!(!t.join("dir/old.txt").exists(), "opaque dir hides layer 1's content");
    assert_eq!(fs::read_to_string(t.join("dir/new.txt")).expect("new"), "new");
    s.unmount(&t).expect("unmount");
}
