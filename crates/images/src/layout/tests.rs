//! Unit tests of archive import and export: OCI layout round trips by
//! digest, `docker save` archives becoming runnable OCI images, and hostile
//! or incomplete archives refused with typed errors.

use std::collections::BTreeSet;
use std::io::{Read, Write};

use serde_json::{Value, json};

use super::*;
use crate::pull::{OCI_INDEX, OCI_MANIFEST};
use crate::{UnpackOptions, Whiteouts, unpack_layer};

const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub(crate) fn store() -> (tempfile::TempDir, ContentStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let content = ContentStore::open(dir.path().join("content")).expect("open store");
    (dir, content)
}

pub(crate) fn put(content: &ContentStore, bytes: &[u8]) -> Descriptor {
    let digest = Digest::of(bytes);
    let mut w = content.writer(digest, Some(bytes.len() as u64)).expect("writer");
    w.write_all(bytes).expect("write");
    w.commit().expect("commit");
    Descriptor { media_type: String::new(), digest, size: bytes.len() as u64, annotations: Default::default() }
}

fn desc_json(media_type: &str, d: &Descriptor) -> Value {
    json!({"mediaType": media_type, "digest": d.digest.to_string(), "size": d.size})
}

/// An uncompressed layer tar holding `files`.
pub(crate) fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).expect("append");
    }
    b.into_inner().expect("finish")
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

pub(crate) fn config_json(diff_ids: &[Digest]) -> Vec<u8> {
    let ids: Vec<String> = diff_ids.iter().map(Digest::to_string).collect();
    serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/hello"], "Env": ["A=1"]},
        "rootfs": {"type": "layers", "diff_ids": ids},
    }))
    .expect("json")
}

/// An image of the given layer tars (gzipped where asked) stored in
/// `content`; returns (manifest, config, layer blobs).
pub(crate) fn image(content: &ContentStore, layers: &[(Vec<u8>, bool)]) -> (Descriptor, Descriptor, Vec<Descriptor>) {
    let diff_ids: Vec<Digest> = layers.iter().map(|(tar, _)| Digest::of(tar)).collect();
    let config = put(content, &config_json(&diff_ids));
    let mut blobs = Vec::new();
    let mut descs = Vec::new();
    for (tar, gz) in layers {
        let blob = put(content, &if *gz { gzip(tar) } else { tar.clone() });
        descs.push(desc_json(if *gz { LAYER_GZIP } else { LAYER_TAR }, &blob));
        blobs.push(blob);
    }
    let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": desc_json(OCI_CONFIG, &config), "layers": descs});
    let manifest = put(content, &serde_json::to_vec(&manifest).expect("json"));
    (manifest, config, blobs)
}

enum E<'a> {
    File(&'a str, Vec<u8>),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Other(&'a str, tar::EntryType),
}

/// A tar of raw entries (names are not checked, so hostile ones can be made).
fn tar_of(entries: &[E]) -> Vec<u8> {
    tar_refs(&entries.iter().collect::<Vec<_>>())
}

fn tar_refs(entries: &[&E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, kind, data): (&str, _, &[u8]) = match e {
            E::File(n, d) => (n, tar::EntryType::Regular, d),
            E::Dir(n) => (n, tar::EntryType::Directory, b""),
            E::Symlink(n, target) => {
                h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
                (n, tar::EntryType::Symlink, b"")
            }
            E::Hardlink(n, target) => {
                h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
                (n, tar::EntryType::Link, b"")
            }
            E::Other(n, kind) => (n, *kind, b""),
        };
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        if name.len() >= 100 {
            // Long names go through a GNU long-name entry (and must be clean).
            b.append_data(&mut h, name, data).expect("append");
            continue;
        }
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data).expect("append");
    }
    b.into_inner().expect("finish")
}

fn blob_entry(content: &ContentStore, d: &Digest) -> (String, Vec<u8>) {
    let mut data = Vec::new();
    content.open_blob(d).expect("open").read_to_end(&mut data).expect("read");
    (format!("blobs/sha256/{}", d.hex()), data)
}

fn digests(content: &ContentStore) -> BTreeSet<Digest> {
    content.list().expect("list").into_iter().map(|b| b.digest).collect()
}

fn ingest_is_empty(content: &ContentStore) -> bool {
    std::fs::read_dir(content.root().join("ingest")).expect("ingest").next().is_none()
}

/// The names of a tar's entries.
fn names(archive: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(archive);
    let entries = a.entries().expect("entries");
    entries.map(|e| e.expect("entry").path().expect("path").to_string_lossy().into_owned()).collect()
}

#[test]
fn oci_layout_round_trip_is_exact_by_digest() {
    let (_d1, a) = store();
    let base = layer(&[("bin/hello", b"#!/bin/sh\necho hi\n")]);
    let (m1, c1, l1) = image(&a, &[(base.clone(), false), (layer(&[("etc/one", b"1")]), true)]);
    let (m2, c2, l2) = image(&a, &[(base, false), (layer(&[("etc/two", b"2")]), false)]);
    let stray = put(&a, b"not referenced by anything");
    let images = [
        ("example.com/app:1".to_string(), m1.digest),
        ("example.com/app:latest".to_string(), m1.digest),
        ("example.com/other:2".to_string(), m2.digest),
    ];
    let mut archive = Vec::new();
    let exported = export(&a, &images, &mut archive).expect("export");

    let referenced: BTreeSet<Digest> =
        [&m1, &c1, &m2, &c2].into_iter().chain(l1.iter()).chain(l2.iter()).map(|d| d.digest).collect();
    assert_eq!(referenced.len(), 7, "the base layer is shared");
    assert_eq!(exported.blobs, 7);
    let blob_names: BTreeSet<String> =
        names(&archive).into_iter().filter_map(|n| n.strip_prefix("blobs/sha256/").map(str::to_string)).collect();
    let want: BTreeSet<String> = referenced.iter().map(Digest::hex).collect();
    assert_eq!(blob_names.into_iter().filter(|n| !n.is_empty()).collect::<BTreeSet<_>>(), want);
    assert!(!names(&archive).contains(&format!("blobs/sha256/{}", stray.digest.hex())));

    let (_d2, b) = store();
    let imported = import(&b, &archive[..]).expect("import");
    let got: Vec<(Option<String>, Digest, String)> =
        imported.iter().map(|i| (i.name.clone(), i.manifest_digest, i.manifest_media_type.clone())).collect();
    let want: Vec<(Option<String>, Digest, String)> =
        images.iter().map(|(n, d)| (Some(n.clone()), *d, OCI_MANIFEST.to_string())).collect();
    assert_eq!(got, want);
    assert_eq!(digests(&b), referenced, "exactly the referenced blobs arrive");
    assert!(referenced.iter().all(|d| b.verify(d).expect("verify")));
    assert!(ingest_is_empty(&b));

    let mut again = Vec::new();
    export(&b, &images, &mut again).expect("re-export");
    assert_eq!(again, archive, "export is reproducible and the round trip exact");
    // Importing what is already stored changes nothing and gives the same answer.
    assert_eq!(import(&b, &archive[..]).expect("re-import"), imported);
    assert_eq!(digests(&b), referenced);
}

#[test]
fn an_index_exports_its_present_platforms_and_imports_as_an_index() {
    let (_d1, a) = store();
    let (m, _, _) = image(&a, &[(layer(&[("x", b"x")]), true)]);
    let absent = Descriptor { digest: Digest::of(b"arm64 manifest never pulled"), ..m.clone() };
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        desc_json(OCI_MANIFEST, &m), desc_json(OCI_MANIFEST, &absent)]});
    let index = put(&a, &serde_json::to_vec(&index).expect("json"));
    let mut archive = Vec::new();
    let exported = export(&a, &[("example.com/multi:1".into(), index.digest)], &mut archive).expect("export");
    assert_eq!(exported.blobs, 4, "index, manifest, config, layer");

    let (_d2, b) = store();
    let imported = import(&b, &archive[..]).expect("import");
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].manifest_digest, index.digest);
    assert_eq!(imported[0].manifest_media_type, OCI_INDEX);
    assert_eq!(digests(&b), digests(&a));
}

#[test]
fn docker_save_archive_becomes_a_runnable_oci_image() {
    let base = layer(&[("bin/hello", b"hello from base")]);
    let top = layer(&[("etc/motd", b"welcome")]);
    let config = config_json(&[Digest::of(&base), Digest::of(&top), Digest::of(&base)]);
    let cfg = format!("{}.json", Digest::of(&config).hex());
    let (id1, id2, id3) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    let manifest = json!([{"Config": cfg, "RepoTags": ["busybox:latest", "busybox:1.36"],
        "Layers": [format!("{id1}/layer.tar"), format!("{id2}/layer.tar"), format!("{id3}/layer.tar")]}]);
    let manifest = E::File("manifest.json", serde_json::to_vec(&manifest).expect("json"));
    let link = format!("../{id1}/layer.tar");
    let version = format!("{id1}/VERSION");
    let (l1, l2, l3) = (format!("{id1}/layer.tar"), format!("{id2}/layer.tar"), format!("{id3}/layer.tar"));
    let body = [
        E::Dir(&id1),
        E::File(&version, b"1.0".to_vec()),
        E::File(&l1, base.clone()),
        E::File(&l2, top.clone()),
        // A layer the archive holds once, linked where it repeats (as docker save does).
        E::Symlink(&l3, &link),
        E::File(&cfg, config.clone()),
        E::File("repositories", br#"{"busybox":{"latest":"x"}}"#.to_vec()),
    ];
    for manifest_first in [false, true] {
        let mut entries: Vec<&E> = body.iter().collect();
        if manifest_first {
            entries.insert(0, &manifest);
        } else {
            entries.push(&manifest);
        }
        let (dir, content) = store();
        let imported = import(&content, &tar_refs(&entries)[..]).expect("import");
        let names: Vec<Option<String>> = imported.iter().map(|i| i.name.clone()).collect();
        assert_eq!(names, [Some("busybox:latest".into()), Some("busybox:1.36".into())]);
        assert_eq!(imported[0].manifest_digest, imported[1].manifest_digest);
        assert_eq!(imported[0].manifest_media_type, OCI_MANIFEST);
        assert!(ingest_is_empty(&content), "no spool file left");

        let m: Value = serde_json::from_slice(&read_blob(&content, &imported[0].manifest_digest, 1 << 20).expect("m"))
            .expect("manifest json");
        assert_eq!(m["config"]["digest"], Digest::of(&config).to_string());
        assert_eq!(m["config"]["mediaType"], OCI_CONFIG);
        let layers = m["layers"].as_array().expect("layers");
        let want = [Digest::of(&base), Digest::of(&top), Digest::of(&base)];
        assert_eq!(layers.len(), 3);
        // Runnable: every layer unpacks, with the config's diff ids, into the expected tree.
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir(&rootfs).expect("mkdir");
        for (l, want) in layers.iter().zip(want) {
            assert_eq!(l["mediaType"], LAYER_TAR);
            let digest: Digest = l["digest"].as_str().expect("digest").parse().expect("digest");
            assert_eq!(digest, want);
            assert_eq!(l["size"], content.size(&digest).expect("size"));
            let blob = content.open_blob(&digest).expect("open");
            let unpacked = unpack_layer(blob, &rootfs, &UnpackOptions::new(Whiteouts::Apply)).expect("unpack");
            assert_eq!(unpacked.diff_id, want);
        }
        assert_eq!(std::fs::read(rootfs.join("bin/hello")).expect("hello"), b"hello from base");
        assert_eq!(std::fs::read(rootfs.join("etc/motd")).expect("motd"), b"welcome");
    }
}

#[test]
fn docker_25_archive_is_read_as_oci_layout_and_may_be_compressed() {
    let (_d1, a) = store();
    let (m, c, l) = image(&a, &[(layer(&[("f", b"f")]), false)]);
    let mut index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc_json(OCI_MANIFEST, &m)]});
    index["manifests"][0]["annotations"] = json!({"io.containerd.image.name": "docker.io/library/f:latest",
            "org.opencontainers.image.ref.name": "latest"});
    let blobs: Vec<(String, Vec<u8>)> = [&m, &c, &l[0]].iter().map(|d| blob_entry(&a, &d.digest)).collect();
    let legacy = json!([{"Config": blobs[1].0, "RepoTags": ["f:latest"], "Layers": [blobs[2].0]}]);
    let dotted: Vec<String> = blobs.iter().map(|(n, _)| format!("./{n}")).collect();
    let mut entries = vec![E::Dir("./"), E::Dir("./blobs/"), E::Dir("./blobs/sha256/")];
    entries.extend(dotted.iter().zip(&blobs).map(|(n, (_, data))| E::File(n, data.clone())));
    entries.push(E::File("./index.json", serde_json::to_vec(&index).expect("json")));
    entries.push(E::File("./manifest.json", serde_json::to_vec(&legacy).expect("json")));
    entries.push(E::File("./oci-layout", br#"{"imageLayoutVersion": "1.0.0"}"#.to_vec()));
    let archive = gzip(&tar_of(&entries));

    let (_d2, b) = store();
    let imported = import(&b, &archive[..]).expect("import");
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].name.as_deref(), Some("docker.io/library/f:latest"));
    assert_eq!(imported[0].manifest_digest, m.digest, "the archive's own manifest is kept");
    assert_eq!(digests(&b), digests(&a));
}

/// Archive entries: (name, content).
type Entries = Vec<(String, Vec<u8>)>;

/// A well-formed one-image OCI layout: its blob entries (named by digest),
/// its index.json, its manifest and its layers.
fn good_layout(content: &ContentStore) -> (Entries, Vec<u8>, Descriptor, Vec<Descriptor>) {
    let (m, c, l) = image(content, &[(layer(&[("f", b"f")]), true)]);
    let blobs = [&m, &c, &l[0]].iter().map(|d| blob_entry(content, &d.digest)).collect();
    let index = json!({"schemaVersion": 2, "manifests": [desc_json(OCI_MANIFEST, &m)]});
    (blobs, serde_json::to_vec(&index).expect("json"), m, l)
}

fn layout_tar(blobs: &[(String, Vec<u8>)], index: Vec<u8>, extra: Vec<E>) -> Vec<u8> {
    let mut entries = vec![E::File("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec())];
    entries.extend(extra);
    entries.extend(blobs.iter().map(|(n, d)| E::File(n, d.clone())));
    entries.push(E::File("index.json", index));
    tar_of(&entries)
}

fn refused(archive: &[u8]) -> (ImageError, BTreeSet<Digest>) {
    let (_dir, content) = store();
    let err = import(&content, archive).expect_err("must be refused");
    assert!(ingest_is_empty(&content), "{err}: a temp file was left");
    (err, digests(&content))
}

#[test]
fn hostile_entries_are_refused_before_anything_is_stored() {
    let (_d, src) = store();
    let (blobs, index, _, _) = good_layout(&src);
    let long = "a".repeat(200) + "/" + &"b".repeat(80);
    let cases: Vec<(&str, Vec<E>)> = vec![
        ("traversal", vec![E::File("../evil", b"x".to_vec())]),
        ("nested traversal", vec![E::File("blobs/../../evil", b"x".to_vec())]),
        ("absolute", vec![E::File("/etc/evil", b"x".to_vec())]),
        ("device node", vec![E::Other("blobs/dev", tar::EntryType::Char)]),
        ("fifo", vec![E::Other("fifo", tar::EntryType::Fifo)]),
        ("escaping symlink", vec![E::Symlink("abc/layer.tar", "../../../etc/passwd")]),
        ("absolute symlink", vec![E::Symlink("abc/layer.tar", "/etc/passwd")]),
        ("absurd name", vec![E::File(&long, b"x".to_vec())]),
        ("odd characters", vec![E::File("a b\n", b"x".to_vec())]),
        ("bad blob name", vec![E::File("blobs/sha256/zz", b"x".to_vec())]),
    ];
    for (what, extra) in cases {
        // The hostile entry comes first, so nothing at all may be stored.
        let (err, left) = refused(&layout_tar(&blobs, index.clone(), extra));
        assert!(matches!(err, ImageError::InvalidArgument(_)), "{what}: {err}");
        assert!(left.is_empty(), "{what}: stored {left:?}");
    }
    let dup = layout_tar(&blobs, index.clone(), vec![E::File("index.json", b"{}".to_vec())]);
    assert!(matches!(refused(&dup).0, ImageError::InvalidArgument(ref m) if m.contains("duplicate")));
    let sha512 = layout_tar(&blobs, index.clone(), vec![E::File("blobs/sha512/ab", b"x".to_vec())]);
    assert!(matches!(refused(&sha512).0, ImageError::FailedPrecondition(_)));
    // An absurd size claim for a JSON file is refused before it is read.
    let mut huge = tar_of(&[E::File("index.json", Vec::new())]);
    let mut header = tar::Header::new_gnu();
    header.as_mut_bytes().copy_from_slice(&huge[..512]);
    header.set_size(MAX_JSON_SIZE + 1);
    header.set_cksum();
    huge[..512].copy_from_slice(header.as_bytes());
    assert!(matches!(refused(&huge).0, ImageError::InvalidArgument(ref m) if m.contains("more than")));
    let (err, _) = refused(b"this is not a tar archive at all, not even close to one, no".repeat(20).as_slice());
    assert!(matches!(err, ImageError::InvalidArgument(_)), "{err}");
    let (err, _) = refused(&tar_of(&[E::File("oci-layout", b"{}".to_vec())]));
    assert!(matches!(err, ImageError::InvalidArgument(ref m) if m.contains("neither")), "{err}");
}

#[test]
fn a_blob_unlike_its_name_is_refused_and_not_stored() {
    let (_d, src) = store();
    let (mut blobs, index, _, l) = good_layout(&src);
    let layer_name = format!("blobs/sha256/{}", l[0].digest.hex());
    let entry = blobs.iter_mut().find(|(n, _)| *n == layer_name).expect("layer entry");
    entry.1[0] ^= 0xff; // same size, other content
    let forged = Digest::of(&entry.1);
    let (err, left) = refused(&layout_tar(&blobs, index, vec![]));
    assert!(matches!(err, ImageError::InvalidArgument(ref m) if m.contains("digest mismatch")), "{err}");
    assert!(!left.contains(&l[0].digest), "the forged layer is not stored");
    assert!(!left.contains(&forged), "nor its content under another name");
}

#[test]
fn incomplete_or_inconsistent_images_are_refused() {
    let (_d, src) = store();
    let (blobs, index, m, l) = good_layout(&src);
    // The manifest's layer is missing from the archive.
    let without: Vec<_> = blobs.iter().filter(|(n, _)| !n.ends_with(&l[0].digest.hex())).cloned().collect();
    let (err, left) = refused(&layout_tar(&without, index.clone(), vec![]));
    assert!(matches!(err, ImageError::InvalidArgument(ref m) if m.contains("lacks blob")), "{err}");
    assert!(left.contains(&m.digest), "verified blobs may stay, unreferenced, for GC");
    // index.json's descriptor disagrees with the manifest's size.
    let wrong = json!({"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST,
        "digest": m.digest.to_string(), "size": m.size + 1}]});
    let (err, _) = refused(&layout_tar(&blobs, serde_json::to_vec(&wrong).expect("json"), vec![]));
    assert!(matches!(err, ImageError::SizeMismatch { .. }), "{err}");
    // A name annotation that is no name.
    let mut named: Value = serde_json::from_slice(&index).expect("json");
    named["manifests"][0]["annotations"] = json!({"org.opencontainers.image.ref.name": "evil\nname"});
    let (err, _) = refused(&layout_tar(&blobs, serde_json::to_vec(&named).expect("json"), vec![]));
    assert!(matches!(err, ImageError::InvalidArgument(ref m) if m.contains("invalid image name")), "{err}");
    // An index.json without an oci-layout file.
    let mut no_layout = vec![E::File("index.json", index)];
    no_layout.extend(blobs.iter().map(|(n, d)| E::File(n, d.clone())));
    let (err, _) = refused(&tar_of(&no_layout));
    assert!(matches!(err, ImageError::InvalidArgument(ref m) if m.contains("oci-layout")), "{err}");

    // docker save: a missing layer file, a path leaving the archive, a layer unlike its diff id.
    let base = layer(&[("f", b"f")]);
    let config = config_json(&[Digest::of(&base)]);
    let docker = |layers: Value, layer_data: Vec<u8>| {
        let manifest = json!([{"Config": "c.json", "RepoTags": ["x:1"], "Layers": layers}]);
        tar_of(&[
            E::File("c.json", config.clone()),
            E::File("l/layer.tar", layer_data),
            E::File("manifest.json", serde_json::to_vec(&manifest).expect("json")),
        ])
    };
    for (what, layers, data, needle) in [
        ("missing", json!(["m/layer.tar"]), base.clone(), "lacks"),
        ("traversal", json!(["../l/layer.tar"]), base.clone(), ".."),
        ("count", json!(["l/layer.tar", "l/layer.tar"]), base.clone(), "diff ids"),
        ("diff id", json!(["l/layer.tar"]), layer(&[("g", b"g")]), "hashes to"),
    ] {
        let (err, _) = refused(&docker(layers, data));
        assert!(matches!(err, ImageError::InvalidArgument(ref m) if m.contains(needle)), "{what}: {err}");
    }
    let (_d2, ok) = store();
    assert_eq!(import(&ok, &docker(json!(["l/layer.tar"]), base)[..]).expect("import").len(), 1);
}

#[test]
fn export_of_an_incomplete_image_writes_nothing() {
    let (_d, content) = store();
    let (m, _, l) = image(&content, &[(layer(&[("f", b"f")]), false)]);
    content.delete(&l[0].digest).expect("delete layer");
    let mut out = Vec::new();
    let err = export(&content, &[("x:1".into(), m.digest)], &mut out).expect_err("incomplete");
    assert!(matches!(err, ImageError::NotFound(_)), "{err}");
    assert!(out.is_empty());
    let err = export(&content, &[("x:1".into(), Digest::of(b"nothing"))], &mut out).expect_err("absent");
    assert!(matches!(err, ImageError::NotFound(_)), "{err}");
    let err = export(&content, &[("bad name".into(), m.digest)], &mut out).expect_err("name");
    assert!(matches!(err, ImageError::InvalidArgument(_)), "{err}");
    assert!(out.is_empty());
}

#[test]
fn hard_links_and_a_zstd_compressed_archive_are_read() {
    let base = layer(&[("f", b"f")]);
    let config = config_json(&[Digest::of(&base), Digest::of(&base)]);
    let manifest = json!([{"Config": "c.json", "RepoTags": ["twice:1"], "Layers": ["a/layer.tar", "b/layer.tar"]}]);
    let archive = tar_of(&[
        E::File("c.json", config),
        E::File("a/layer.tar", base.clone()),
        E::Hardlink("b/layer.tar", "a/layer.tar"),
        E::File("manifest.json", serde_json::to_vec(&manifest).expect("json")),
    ]);
    let archive = zstd::encode_all(&archive[..], 3).expect("zstd");
    let (_d, content) = store();
    let imported = import(&content, &archive[..]).expect("import");
    assert_eq!(imported.len(), 1);
    let m: Value = serde_json::from_slice(&read_blob(&content, &imported[0].manifest_digest, 1 << 20).expect("m"))
        .expect("manifest json");
    let layers: Vec<&str> =
        m["layers"].as_array().expect("layers").iter().filter_map(|l| l["digest"].as_str()).collect();
    assert_eq!(layers, [Digest::of(&base).to_string(), Digest::of(&base).to_string()]);
    // A hard link to nothing in the archive leaves the layer missing.
    let dangling = json!([{"Config": "c.json", "Layers": ["b/layer.tar"]}]);
    let archive = tar_of(&[
        E::File("c.json", config_json(&[Digest::of(&base)])),
        E::Hardlink("b/layer.tar", "nowhere/layer.tar"),
        E::File("manifest.json", serde_json::to_vec(&dangling).expect("json")),
    ]);
    let (err, _) = refused(&archive);
    assert!(matches!(err, ImageError::InvalidArgument(ref m) if m.contains("lacks")), "{err}");
}
