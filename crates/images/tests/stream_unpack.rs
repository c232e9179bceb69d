//! Streaming unpack (issue 10, item 3): a pull through `StreamingUnpack`
//! leaves a committed snapshot for every layer (unpacked as it streamed,
//! no `unpack_image` needed) and the blobs; a corrupted layer leaves
//! neither its snapshot nor its blob, nor a prepare dir or temp file.
//! Starts Debian's `docker-registry` on loopback; runs as root.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_images::pull::OCI_MANIFEST;
use berth_images::snapshot::chain_id;
use berth_images::{
    Auth, BlobSink, ContentStore, Digest, ImageError, LayerProgress, Platform, Puller, Snapshotter, StreamingUnpack,
};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A docker-registry on 127.0.0.1, killed by PID when dropped.
struct Registry {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        assert!(Path::new(REGISTRY_BIN).exists(), "{REGISTRY_BIN} missing: apt-get install docker-registry");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n  secret: berth-test-secret\n",
            dir.path().join("storage").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("registry config");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn docker-registry");
        let mut registry = Registry { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(&registry.addr).is_err() {
            assert!(registry.child.try_wait().expect("try_wait").is_none(), "docker-registry exited");
            assert!(Instant::now() < deadline, "docker-registry not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.path().join(format!("storage/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gzip tar layer of `files` (with a whiteout where a name starts with
/// `.wh.`), and its diff id.
fn layer(files: &[(&str, &[u8])]) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, name, *content).expect("tar entry");
    }
    let tar = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    (gz.finish().expect("gzip"), Digest::of(&tar).to_string())
}

/// Pushes an OCI image of `layers`; returns the layer digests.
async fn push(reference: &str, layers: &[(Vec<u8>, String)]) -> Vec<String> {
    let config = ClientConfig { protocol: ClientProtocol::Http, use_monolithic_push: true, ..Default::default() };
    let client = oci_client::Client::try_from(config).expect("push client");
    let r: Reference = reference.parse().expect("reference");
    client.auth(&r, &RegistryAuth::Anonymous, RegistryOperation::Push).await.expect("push auth");
    let diff_ids: Vec<&str> = layers.iter().map(|(_, d)| d.as_str()).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config json");
    let mut digests = Vec::new();
    let mut descs = Vec::new();
    for (blob, _) in layers {
        let digest = Digest::of(blob).to_string();
        client.push_blob(&r, blob.clone(), &digest).await.expect("push layer");
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                      "digest": digest, "size": blob.len()}));
        digests.push(digest);
    }
    let config_digest = Digest::of(&config).to_string();
    client.push_blob(&r, config.clone(), &config_digest).await.expect("push config");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": config.len()},
        "layers": descs,
    }))
    .expect("manifest json");
    client.push_manifest_raw(&r, manifest, http::HeaderValue::from_static(OCI_MANIFEST)).await.expect("push manifest");
    digests
}

fn quiet() -> berth_images::pull::ProgressFn {
    Arc::new(|_: &LayerProgress<'_>| {})
}

fn three_layers(tag: &str) -> Vec<(Vec<u8>, String)> {
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    vec![
        layer(&[("etc/base", b"base\n"), ("gone", b"x"), ("big", &big)]),
        layer(&[(".wh.gone", b""), ("mid", b"mid\n"), ("big2", &big[..1_000_000])]),
        layer(&[("top", tag.as_bytes())]),
    ]
}

/// Waits (briefly) for `dir` to be empty: a cancelled layer's thread
/// removes its temp file as it ends.
fn wait_empty(dir: &Path) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_leaves_a_committed_snapshot_for_every_layer() {
    let reg = Registry::start();
    let layers = three_layers("v1");
    let digests = push(&format!("{}/app:v1", reg.addr), &layers).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let content = ContentStore::open(dir.path().join("content")).expect("content");
    let snaps = Snapshotter::new(&dir.path().join("snapshots")).expect("snapshotter");

    let sink = StreamingUnpack::new(&content, &snaps);
    let pulled = Puller::new()
        .pull(&format!("{}/app:v1", reg.addr), &Platform::default(), &Auth::Anonymous, true, &sink, quiet())
        .await
        .expect("pull");
    assert_eq!(pulled.layers_fetched.len(), 3);

    // Every layer is a committed snapshot under its chain id, in order.
    let mut chains = Vec::new();
    let mut parent: Option<String> = None;
    for (_, diff_id) in &layers {
        let chain = chain_id(parent.as_deref(), diff_id).expect("chain id");
        chains.push(chain.clone());
        parent = Some(chain);
    }
    let committed = snaps.committed().expect("committed");
    for (i, chain) in chains.iter().enumerate() {
        let info = committed.iter().find(|c| &c.chain_id == chain).unwrap_or_else(|| panic!("layer {i} committed"));
        assert_eq!(info.parent.as_deref(), if i == 0 { None } else { Some(chains[i - 1].as_str()) });
    }
    assert_eq!(committed.len(), 3);
    for digest in &digests {
        assert!(content.exists(&digest.parse().expect("digest")).expect("exists"), "blob {digest} stored");
    }
    assert!(wait_empty(&snaps.root().join("tmp")).is_empty());
    assert!(wait_empty(&content.root().join("ingest")).is_empty());
    // The snapshots hold the layers' files; the whiteout is an overlay one.
    let fs = |i: usize| snaps.root().join("committed").join(chains[i].trim_start_matches("sha256:")).join("fs");
    assert_eq!(std::fs::read(fs(0).join("etc/base")).expect("base file"), b"base\n");
    assert_eq!(std::fs::read(fs(2).join("top")).expect("top file"), b"v1");
    assert!(std::fs::symlink_metadata(fs(1).join("gone")).is_ok(), "whiteout present");

    // The fallback unpack finds nothing left to do: same top chain.
    let top = berth_images::unpack_image(&content, &snaps, &pulled.manifest, &pulled.config).expect("unpack");
    assert_eq!(top, chains[2]);
    assert_eq!(snaps.committed().expect("committed").len(), 3);

    // A second pull skips every layer: blob and snapshot are present.
    let sink = StreamingUnpack::new(&content, &snaps);
    let again = Puller::new()
        .pull(&format!("{}/app:v1", reg.addr), &Platform::default(), &Auth::Anonymous, true, &sink, quiet())
        .await
        .expect("pull again");
    assert!(again.layers_fetched.is_empty(), "{:?}", again.layers_fetched);
    assert_eq!(again.layers_skipped.len(), 3);
    assert!(sink.has(&digests[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_layer_leaves_no_snapshot_and_no_blob() {
    let reg = Registry::start();
    let layers = three_layers("bad");
    let digests = push(&format!("{}/bad:v1", reg.addr), &layers).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let content = ContentStore::open(dir.path().join("content")).expect("content");
    let snaps = Snapshotter::new(&dir.path().join("snapshots")).expect("snapshotter");

    for corrupt in [0, 1] {
        // Same length, one byte changed near the end: the tar unpacks and
        // only the digest at the stream's end tells.
        let path = reg.blob_path(&digests[corrupt]);
        let original = std::fs::read(&path).expect("stored blob");
        let mut tampered = original.clone();
        let at = tampered.len() - 10;
        tampered[at] ^= 0x5a;
        std::fs::write(&path, &tampered).expect("tamper");

        let sink = StreamingUnpack::new(&content, &snaps);
        let err = Puller::new()
            .pull(&format!("{}/bad:v1", reg.addr), &Platform::default(), &Auth::Anonymous, true, &sink, quiet())
            .await
            .expect_err("corrupted layer");
        assert!(matches!(err, ImageError::DigestMismatch { .. } | ImageError::InvalidArgument(_)), "{err:?}");
        let bad: Digest = digests[corrupt].parse().expect("digest");
        assert!(!content.exists(&bad).expect("exists"), "no blob of the corrupted layer");
        let mut parent: Option<String> = None;
        let mut chains = Vec::new();
        for (_, diff_id) in &layers {
            let chain = chain_id(parent.as_deref(), diff_id).expect("chain");
            chains.push(chain.clone());
            parent = Some(chain);
        }
        let committed: Vec<String> = snaps.committed().expect("committed").into_iter().map(|c| c.chain_id).collect();
        for chain in &chains[corrupt..] {
            assert!(!committed.contains(chain), "no snapshot of the corrupted layer or above it: {committed:?}");
        }
        assert_eq!(wait_empty(&snaps.root().join("tmp")), Vec::<String>::new(), "no prepare dir left");
        assert_eq!(wait_empty(&content.root().join("ingest")), Vec::<String>::new(), "no temp blob left");
        std::fs::write(&path, &original).expect("restore");
    }

    // Restored, the same stores pull cleanly: three snapshots.
    let sink = StreamingUnpack::new(&content, &snaps);
    Puller::new()
        .pull(&format!("{}/bad:v1", reg.addr), &Platform::default(), &Auth::Anonymous, true, &sink, quiet())
        .await
        .expect("pull after restore");
    assert_eq!(snaps.committed().expect("committed").len(), 3);
}
