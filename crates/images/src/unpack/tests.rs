//! Tests of layer unpacking: tars built here with the `tar` crate (plain,
//! gzip, zstd), applied as root onto temp dirs, including hostile ones.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{Builder, EntryType, Header};

use super::*;

const MTIME: u64 = 1_600_000_000;

/// Builds a layer tar entry by entry; names are written raw, unchecked.
struct Layer(Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(Builder::new(Vec::new()))
    }

    fn entry(
        &mut self,
        kind: EntryType,
        name: &str,
        link: &str,
        mode: u32,
        owner: (u64, u64),
        data: &[u8],
    ) -> &mut Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(owner.0);
        h.set_gid(owner.1);
        h.set_mtime(MTIME);
        if matches!(kind, EntryType::Char | EntryType::Block) {
            h.set_device_major(0).expect("major");
            h.set_device_minor(0).expect("minor");
        }
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname = [0; 100];
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        self.0.append(&h, data).expect("append");
        self
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(EntryType::Regular, name, "", 0o644, (0, 0), data)
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(EntryType::Directory, name, "", 0o755, (0, 0), b"")
    }

    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().expect("finish tar")
    }
}

fn gzip(tar: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(tar).expect("gzip");
    enc.finish().expect("gzip")
}

/// A temp dir holding `target/` (the unpack target) and `outside/` (with
/// one sentinel file) that no layer may touch.
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("target")).expect("target");
        fs::create_dir(dir.path().join("outside")).expect("outside");
        fs::write(dir.path().join("outside/sentinel"), b"x").expect("sentinel");
        Scene { dir }
    }

    fn target(&self) -> PathBuf {
        self.dir.path().join("target")
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.target().join(rel)
    }

    fn unpack(&self, layer: &[u8], whiteouts: Whiteouts) -> Result<Unpacked, ImageError> {
        unpack_layer(layer, &self.target(), &UnpackOptions::new(whiteouts))
    }

    /// Asserts the layer is refused naming `entry`, and that nothing
    /// outside the target changed.
    fn refused(&self, layer: &[u8], options: &UnpackOptions, entry: &str) {
        let err = unpack_layer(layer, &self.target(), options).expect_err("hostile layer accepted");
        assert!(matches!(err, ImageError::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains(&format!("{entry:?}")), "error does not name {entry:?}: {err}");
        let mut top: Vec<_> = names(self.dir.path());
        top.sort();
        assert_eq!(top, ["outside", "target"], "something was written next to the target");
        assert_eq!(names(&self.dir.path().join("outside")), ["sentinel"]);
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn xattr(path: &Path, key: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let k = std::ffi::CString::new(key).expect("key");
    let mut buf = [0u8; 256];
    // SAFETY: NUL-terminated strings, a buffer of the given length.
    let n = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).ok().map(|n| buf[..n].to_vec())
}

fn normal_layer() -> Vec<u8> {
    let mut l = Layer::new();
    l.entry(EntryType::Directory, "./", "", 0o755, (0, 0), b"")
        .entry(EntryType::Directory, "usr/", "", 0o750, (7, 8), b"")
        .entry(EntryType::Directory, "usr/bin/", "", 0o755, (0, 0), b"")
        .entry(EntryType::Regular, "usr/bin/tool", "", 0o4755, (1000, 1001), b"#!/bin/sh\n")
        .entry(EntryType::Symlink, "usr/bin/alias", "tool", 0o777, (1000, 1001), b"")
        .entry(EntryType::Link, "usr/bin/hard", "usr/bin/tool", 0o4755, (1000, 1001), b"")
        .entry(EntryType::Fifo, "usr/pipe", "", 0o620, (5, 6), b"")
        .entry(EntryType::Char, "usr/wh0", "", 0, (0, 0), b"");
    l.0.append_pax_extensions([("SCHILY.xattr.user.berth", &b"yes"[..])]).expect("pax");
    l.file("usr/with-xattr", b"x");
    l.file("deep/implicit/parents", b"data");
    l.bytes()
}

#[test]
fn normal_entries_keep_modes_owners_times_and_links_in_every_compression() {
    let tar = normal_layer();
    let zst = zstd::encode_all(&tar[..], 3).expect("zstd");
    for (label, layer) in [("plain", tar.clone()), ("gzip", gzip(&tar)), ("zstd", zst)] {
        let s = Scene::new();
        let out = s.unpack(&layer, Whiteouts::Overlay).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(out.diff_id, crate::Digest::of(&tar), "{label}: DiffID is sha256 of the uncompressed tar");
        assert_eq!(out.size, tar.len() as u64, "{label}");
        assert_eq!(out.entries, 10, "{label}: PAX headers are not entries");

        let tool = fs::symlink_metadata(s.at("usr/bin/tool")).unwrap();
        assert_eq!(fs::read(s.at("usr/bin/tool")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(tool.mode() & 0o7777, 0o4755, "{label}: setuid survives the chown");
        assert_eq!((tool.uid(), tool.gid()), (1000, 1001));
        assert_eq!(tool.mtime(), MTIME as i64);
        let usr = fs::metadata(s.at("usr")).unwrap();
        assert_eq!((usr.mode() & 0o7777, usr.uid(), usr.gid()), (0o750, 7, 8));
        assert_eq!(usr.mtime(), MTIME as i64, "{label}: dir mtime set after its children");
        let alias = fs::symlink_metadata(s.at("usr/bin/alias")).unwrap();
        assert!(alias.file_type().is_symlink());
        assert_eq!(fs::read_link(s.at("usr/bin/alias")).unwrap(), Path::new("tool"));
        assert_eq!((alias.uid(), alias.gid()), (1000, 1001));
        let hard = fs::metadata(s.at("usr/bin/hard")).unwrap();
        assert_eq!((hard.ino(), hard.nlink()), (tool.ino(), 2), "{label}: a hard link, not a copy");
        let pipe = fs::symlink_metadata(s.at("usr/pipe")).unwrap();
        assert!(pipe.file_type().is_fifo());
        assert_eq!((pipe.mode() & 0o7777, pipe.uid(), pipe.gid()), (0o620, 5, 6));
        assert_eq!(xattr(&s.at("usr/with-xattr"), "user.berth").as_deref(), Some(&b"yes"[..]));
        assert_eq!(xattr(&s.at("usr/bin/tool"), "user.berth"), None, "PAX applies to the next entry only");
        assert_eq!(fs::read(s.at("deep/implicit/parents")).unwrap(), b"data");
        let dev = fs::symlink_metadata(s.at("usr/wh0")).unwrap();
        assert!(
            dev.file_type().is_char_device() && dev.rdev() == 0,
            "{label}: a 0:0 char device is kept as a whiteout"
        );
    }
}

#[test]
fn trailing_padding_counts_in_the_diff_id_and_hints_are_checked() {
    let mut tar = normal_layer();
    tar.extend_from_slice(&[0u8; 9216]);
    let s = Scene::new();
    let mut opts = UnpackOptions::new(Whiteouts::Overlay);
    opts.compression = Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+gzip");
    assert_eq!(opts.compression, Some(Compression::Gzip));
    let err = unpack_layer(&tar[..], &s.target(), &opts).expect_err("plain tar labelled gzip");
    assert!(matches!(err, ImageError::InvalidArgument(_)), "{err}");
    assert!(names(&s.target()).is_empty(), "refused before any entry");
    // Magic bytes win over a "plain" label.
    opts.compression = Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar");
    let out = unpack_layer(&gzip(&tar)[..], &s.target(), &opts).expect("gzip labelled plain");
    assert_eq!(out.diff_id, crate::Digest::of(&tar));
    assert_eq!(Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"), Some(Compression::Zstd));
    assert_eq!(
        Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
        Some(Compression::Gzip)
    );
}

fn whiteout_layer() -> Vec<u8> {
    let mut l = Layer::new();
    l.dir("a/").file("a/.wh.gone", b"").file(".wh.top", b"");
    // The opaque marker after this layer's own entries: they must survive.
    l.dir("b/").file("b/new", b"n").dir("b/sub/").file("b/sub/new2", b"n2").file("b/.wh..wh..opq", b"");
    // A whiteout never hides an entry of its own layer.
    l.dir("c/").file("c/f", b"mine").file("c/.wh.f", b"");
    l.bytes()
}

#[test]
fn whiteouts_and_opaque_dirs_become_overlay_whiteouts() {
    let s = Scene::new();
    s.unpack(&whiteout_layer(), Whiteouts::Overlay).expect("unpack");
    for gone in ["a/gone", "top"] {
        let m = fs::symlink_metadata(s.at(gone)).unwrap();
        assert!(m.file_type().is_char_device() && m.rdev() == 0, "{gone} is a 0:0 whiteout device");
    }
    assert_eq!(xattr(&s.at("b"), "trusted.overlay.opaque").as_deref(), Some(&b"y"[..]));
    assert_eq!(xattr(&s.at("a"), "trusted.overlay.opaque"), None);
    assert_eq!(names(&s.at("b")), ["new", "sub"]);
    assert_eq!(fs::read(s.at("c/f")).unwrap(), b"mine");
    assert_eq!(names(&s.target()), ["a", "b", "c", "top"], "no .wh. files left");
}

#[test]
fn whiteouts_and_opaque_dirs_delete_lower_content_in_apply_mode() {
    let s = Scene::new();
    for dir in ["a", "b/sub", "d"] {
        fs::create_dir_all(s.at(dir)).unwrap();
    }
    for file in ["a/gone", "a/keep", "top", "b/old", "b/sub/old2", "b/sub/new2", "d/x"] {
        fs::write(s.at(file), b"lower").unwrap();
    }
    s.unpack(&whiteout_layer(), Whiteouts::Apply).expect("unpack");
    assert_eq!(names(&s.at("a")), ["keep"]);
    assert_eq!(names(&s.target()), ["a", "b", "c", "d"]);
    assert_eq!(names(&s.at("b")), ["new", "sub"], "opaque: lower b/old gone");
    assert_eq!(names(&s.at("b/sub")), ["new2"], "opaque reaches lower content of kept subdirs");
    assert_eq!(fs::read(s.at("b/sub/new2")).unwrap(), b"n2", "this layer's file replaced the lower one");
    assert_eq!(fs::read(s.at("c/f")).unwrap(), b"mine");
    assert_eq!(xattr(&s.at("b"), "trusted.overlay.opaque"), None);
    assert_eq!(names(&s.at("d")), ["x"], "untouched lower content stays");
}

#[test]
fn traversal_and_absolute_names_are_refused() {
    let s = Scene::new();
    let opts = UnpackOptions::new(Whiteouts::Overlay);
    let mut l = Layer::new();
    l.file("ok", b"fine").file("../x", b"evil");
    s.refused(&l.bytes(), &opts, "../x");
    assert_eq!(names(&s.target()), ["ok"], "entries before the refused one stay, nothing of it");

    let mut l = Layer::new();
    l.file("fresh/dir/../../../x", b"evil");
    s.refused(&l.bytes(), &opts, "fresh/dir/../../../x");

    let abs = format!("/berth-unpack-test-{}", std::process::id());
    let mut l = Layer::new();
    l.file(&abs, b"evil");
    s.refused(&l.bytes(), &opts, &abs);
    assert!(!Path::new(&abs).exists());
    assert_eq!(names(&s.target()), ["ok"]);
}

#[test]
fn writes_through_escaping_symlinks_are_refused() {
    let s = Scene::new();
    let opts = UnpackOptions::new(Whiteouts::Overlay);
    let outside = s.dir.path().join("outside");
    let via_root = format!("evil{}/x", outside.display());
    let mut l = Layer::new();
    l.entry(EntryType::Symlink, "evil", "/", 0o777, (0, 0), b"").file(&via_root, b"evil");
    s.refused(&l.bytes(), &opts, &via_root);
    assert_eq!(names(&s.target()), ["evil"], "no parents made for the refused entry");

    let mut l = Layer::new();
    l.entry(EntryType::Symlink, "up", "../outside", 0o777, (0, 0), b"").file("up/new/x", b"evil");
    s.refused(&l.bytes(), &opts, "up/new/x");
    // Whiteouts and opaque markers through those links delete nothing outside.
    for mode in [Whiteouts::Apply, Whiteouts::Overlay] {
        for entry in
            [format!("evil{}/.wh.sentinel", outside.display()), "up/.wh.sentinel".into(), "up/.wh..wh..opq".into()]
        {
            let mut l = Layer::new();
            l.file(&entry, b"");
            s.refused(&l.bytes(), &UnpackOptions::new(mode), &entry);
        }
    }
    assert_eq!(names(&s.target()), ["evil", "up"]);
    // Relative links that stay inside are followed.
    let mut l = Layer::new();
    l.dir("real/").entry(EntryType::Symlink, "lnk", "./real", 0o777, (0, 0), b"").file("lnk/inside", b"ok");
    s.unpack(&l.bytes(), Whiteouts::Overlay).expect("inside symlink");
    assert_eq!(fs::read(s.at("real/inside")).unwrap(), b"ok");

    let mut l = Layer::new();
    l.entry(EntryType::Symlink, "loop", "loop", 0o777, (0, 0), b"").file("loop/x", b"evil");
    s.refused(&l.bytes(), &opts, "loop/x");
}

#[test]
fn hard_links_outside_the_layer_are_refused() {
    let s = Scene::new();
    let opts = UnpackOptions::new(Whiteouts::Apply);
    fs::create_dir(s.at("etc")).unwrap();
    fs::write(s.at("etc/passwd"), b"lower layer file").unwrap();
    for target in ["/etc/passwd", "../../../../etc/passwd", "etc/passwd"] {
        let mut l = Layer::new();
        l.entry(EntryType::Link, "pw", target, 0o644, (0, 0), b"");
        s.refused(&l.bytes(), &opts, "pw");
        assert!(!s.at("pw").exists(), "{target}");
    }
    assert_eq!(fs::metadata("/etc/passwd").unwrap().nlink(), 1, "host file not linked");
}

#[test]
fn device_nodes_are_refused() {
    let s = Scene::new();
    let opts = UnpackOptions::new(Whiteouts::Overlay);
    let mut l = Layer::new();
    l.entry(EntryType::Block, "dev/sda", "", 0o660, (0, 0), b"");
    let mut bytes = l.bytes();
    // Give the header a real device number (8:0), with a fresh checksum.
    let mut h = Header::from_byte_slice(&bytes[..512]).clone();
    h.set_device_major(8).unwrap();
    h.set_cksum();
    bytes[..512].copy_from_slice(h.as_bytes());
    s.refused(&bytes, &opts, "dev/sda");
    assert!(names(&s.target()).is_empty(), "not even its parent dir is left");

    let mut l = Layer::new();
    l.entry(EntryType::Char, "null", "", 0o666, (0, 0), b"");
    let mut bytes = l.bytes();
    let mut h = Header::from_byte_slice(&bytes[..512]).clone();
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_cksum();
    bytes[..512].copy_from_slice(h.as_bytes());
    s.refused(&bytes, &opts, "null");
    assert!(names(&s.target()).is_empty());
}

#[test]
fn absurd_headers_and_bounds_are_refused() {
    let s = Scene::new();
    let opts = UnpackOptions::new(Whiteouts::Overlay);
    // A 10^15-byte file in a tiny stream.
    let mut l = Layer::new();
    l.file("huge", b"");
    let mut bytes = l.bytes();
    let mut h = Header::from_byte_slice(&bytes[..512]).clone();
    h.set_size(1_000_000_000_000_000);
    h.set_cksum();
    bytes[..512].copy_from_slice(h.as_bytes());
    s.refused(&bytes, &opts, "huge");
    assert!(names(&s.target()).is_empty());

    // A name longer than 4096 bytes (a GNU long-name header).
    let long = "d/".repeat(2100) + "f";
    let mut b = Builder::new(Vec::new());
    let mut h = Header::new_gnu();
    h.set_size(1);
    b.append_data(&mut h, &long, &b"x"[..]).expect("long name");
    s.refused(&b.into_inner().unwrap(), &opts, &long);
    assert!(names(&s.target()).is_empty());

    // Caller bounds: entries and total size.
    let mut l = Layer::new();
    l.file("one", b"1").file("two", b"2").file("three", b"3");
    s.refused(&l.bytes(), &UnpackOptions { max_entries: 2, ..opts.clone() }, "three");
    let mut l = Layer::new();
    l.file("small", b"12345").file("big", b"678901");
    s.refused(&l.bytes(), &UnpackOptions { max_total_size: 10, ..opts.clone() }, "big");
    assert_eq!(names(&s.target()), ["one", "small", "two"]);
}

#[test]
fn a_truncated_entry_leaves_nothing_behind() {
    let s = Scene::new();
    let mut l = Layer::new();
    l.file("new/sub/file", &[7u8; 2000]);
    let bytes = l.bytes();
    s.refused(&bytes[..1024], &UnpackOptions::new(Whiteouts::Overlay), "new/sub/file");
    assert!(names(&s.target()).is_empty(), "the file and its new parents are removed");
}
