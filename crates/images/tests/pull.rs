//! End-to-end registry pull (issue 10, item 3; SPEC B31, B32): each test
//! starts Debian's `docker-registry` on loopback in a temp dir, pushes
//! images it builds itself with oci-client's push API, pulls them with
//! `Puller` into an in-memory sink, and checks what was fetched, verified
//! and committed. Needs the `docker-registry` package installed.

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_images::pull::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, ProgressFn, SinkFuture};
use berth_images::{Auth, BlobInfo, BlobSink, BlobStream, ImageError, LayerProgress, Platform, Puller};
use berth_model::Code;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use sha2::Digest as _;

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A docker-registry process on 127.0.0.1, killed by PID when dropped.
struct Registry {
    child: Child,
    addr: String,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; with `user`, behind htpasswd basic auth.
    fn start(user: Option<(&str, &str)>) -> Registry {
        assert!(Path::new(REGISTRY_BIN).exists(), "{REGISTRY_BIN} missing: apt-get install docker-registry");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n  secret: berth-test-secret\n",
            dir.path().join("storage").display()
        );
        if let Some((name, password)) = user {
            let hash = bcrypt::hash(password, 4).expect("bcrypt");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{name}:{hash}\n")).expect("htpasswd");
            config.push_str(&format!("auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n", htpasswd.display()));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("registry config");
        let log = dir.path().join("registry.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn docker-registry");
        let mut registry = Registry { child, addr, log, dir };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(&self.addr).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("docker-registry exited ({status}): {}", self.log_text());
            }
            assert!(Instant::now() < deadline, "docker-registry not ready: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET requests for `digest` in `repo`, from the access log.
    fn blob_gets(&self, repo: &str, digest: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/{digest} HTTP");
        self.log_text().lines().filter(|l| l.contains(&needle)).count()
    }

    /// Waits (briefly) until the access log shows `n` GETs of `digest`.
    fn wait_blob_gets(&self, repo: &str, digest: &str, n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let seen = self.blob_gets(repo, digest);
            if seen >= n || Instant::now() > deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where the registry's filesystem driver keeps a blob's bytes.
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

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// An in-memory sink: commits a blob only when its stream ended cleanly,
/// and records every write attempt.
#[derive(Default)]
struct MemSink {
    committed: Mutex<HashMap<String, Vec<u8>>>,
    attempts: Mutex<Vec<String>>,
}

impl MemSink {
    fn get(&self, digest: &str) -> Option<Vec<u8>> {
        self.committed.lock().expect("lock").get(digest).cloned()
    }
    fn attempts_of(&self, digest: &str) -> usize {
        self.attempts.lock().expect("lock").iter().filter(|d| *d == digest).count()
    }
    fn len(&self) -> usize {
        self.committed.lock().expect("lock").len()
    }
}

impl BlobSink for MemSink {
    fn has(&self, digest: &str) -> bool {
        self.committed.lock().expect("lock").contains_key(digest)
    }

    fn write<'a>(&'a self, blob: &'a BlobInfo, mut content: BlobStream) -> SinkFuture<'a> {
        Box::pin(async move {
            self.attempts.lock().expect("lock").push(blob.digest.clone());
            let mut data = Vec::new();
            while let Some(chunk) = content.next().await {
                let chunk = chunk.map_err(|e| ImageError::io("reading blob", e))?;
                data.extend_from_slice(&chunk);
            }
            self.committed.lock().expect("lock").insert(blob.digest.clone(), data);
            Ok(())
        })
    }
}

/// A progress report as recorded: (digest, current, total, done, skipped).
type Seen = Arc<Mutex<Vec<(String, u64, u64, bool, bool)>>>;

/// Collects progress reports.
fn recorder() -> (ProgressFn, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let f: ProgressFn = Arc::new(move |p: &LayerProgress<'_>| {
        let entry = (p.digest.to_string(), p.current, p.total, p.done, p.skipped);
        sink.lock().expect("lock").push(entry);
    });
    (f, seen)
}

fn quiet() -> ProgressFn {
    Arc::new(|_: &LayerProgress<'_>| {})
}

/// A gzip-compressed tar layer holding `files`, and its diff id.
fn layer(files: &[(&str, &str)]) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, content.as_bytes()).expect("tar entry");
    }
    let tar = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).expect("gzip");
    (gz.finish().expect("gzip"), sha256(&tar))
}

/// What a pushed image consists of.
struct Pushed {
    manifest: String,
    manifest_len: usize,
    config: Vec<u8>,
    layers: Vec<(String, Vec<u8>)>,
}

fn push_client() -> oci_client::Client {
    let config = ClientConfig { protocol: ClientProtocol::Http, use_monolithic_push: true, ..Default::default() };
    oci_client::Client::try_from(config).expect("push client")
}

fn registry_auth(auth: &Auth) -> RegistryAuth {
    match auth {
        Auth::Anonymous => RegistryAuth::Anonymous,
        Auth::Basic { username, password } => RegistryAuth::Basic(username.clone(), password.clone()),
    }
}

/// Pushes an image of `layers` for `linux/arch` to `reference` (a tag),
/// as an OCI manifest or, with `docker`, a Docker schema-2 manifest.
async fn push_image(reference: &str, layers: &[(Vec<u8>, String)], arch: &str, docker: bool, auth: &Auth) -> Pushed {
    let client = push_client();
    let r: Reference = reference.parse().expect("reference");
    client.auth(&r, &registry_auth(auth), RegistryOperation::Push).await.expect("push auth");
    let diff_ids: Vec<&str> = layers.iter().map(|(_, d)| d.as_str()).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": [format!("ARCH={arch}")], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config json");
    let (manifest_type, config_type, layer_type) = if docker {
        (
            DOCKER_MANIFEST,
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        )
    } else {
        (OCI_MANIFEST, "application/vnd.oci.image.config.v1+json", "application/vnd.oci.image.layer.v1.tar+gzip")
    };
    let mut pushed_layers = Vec::new();
    let mut descs = Vec::new();
    for (blob, _) in layers {
        let digest = sha256(blob);
        client.push_blob(&r, blob.clone(), &digest).await.expect("push layer");
        descs.push(serde_json::json!({"mediaType": layer_type, "digest": digest, "size": blob.len()}));
        pushed_layers.push((digest, blob.clone()));
    }
    let config_digest = sha256(&config);
    client.push_blob(&r, config.clone(), &config_digest).await.expect("push config");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
        "layers": descs,
    }))
    .expect("manifest json");
    let content_type = http::HeaderValue::from_static(manifest_type);
    client.push_manifest_raw(&r, manifest.clone(), content_type).await.expect("push manifest");
    Pushed { manifest: sha256(&manifest), manifest_len: manifest.len(), config, layers: pushed_layers }
}

/// Pushes an index (or Docker manifest list) over `entries` to `reference`.
async fn push_index(reference: &str, entries: &[(&Pushed, &str)], docker: bool) -> String {
    let client = push_client();
    let r: Reference = reference.parse().expect("reference");
    client.auth(&r, &RegistryAuth::Anonymous, RegistryOperation::Push).await.expect("push auth");
    let (index_type, entry_type) = if docker { (DOCKER_LIST, DOCKER_MANIFEST) } else { (OCI_INDEX, OCI_MANIFEST) };
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(p, arch)| {
            serde_json::json!({"mediaType": entry_type, "digest": p.manifest, "size": p.manifest_len,
                               "platform": {"os": "linux", "architecture": arch}})
        })
        .collect();
    let index =
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": index_type, "manifests": manifests}))
            .expect("index json");
    let content_type = http::HeaderValue::from_static(index_type);
    client.push_manifest_raw(&r, index.clone(), content_type).await.expect("push index");
    sha256(&index)
}

fn two_layers(tag: &str) -> Vec<(Vec<u8>, String)> {
    vec![layer(&[("etc/base", "base layer\n")]), layer(&[("app/run", &format!("#!/bin/sh\necho {tag}\n"))])]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_by_tag_and_by_digest_verifying_every_blob() {
    let reg = Registry::start(None);
    let pushed = push_image(&format!("{}/app:v1", reg.addr), &two_layers("v1"), "amd64", false, &Auth::Anonymous).await;

    let sink = MemSink::default();
    let (progress, seen) = recorder();
    let reference = format!("{}/app:v1", reg.addr);
    let pulled = Puller::new()
        .pull(&reference, &Platform::default(), &Auth::Anonymous, true, &sink, progress)
        .await
        .expect("pull by tag");
    assert_eq!(pulled.digest, pushed.manifest);
    assert_eq!(pulled.manifest_digest, pushed.manifest);
    assert_eq!(pulled.manifest_media_type, OCI_MANIFEST);
    assert_eq!(pulled.config_bytes, pushed.config);
    assert_eq!(pulled.config.architecture().to_string(), "amd64");
    assert_eq!(pulled.manifest.layers().len(), 2);
    let mut fetched = pulled.layers_fetched.clone();
    fetched.sort();
    let mut want: Vec<String> = pushed.layers.iter().map(|(d, _)| d.clone()).collect();
    want.sort();
    assert_eq!(fetched, want, "both layers fetched");
    assert!(pulled.layers_skipped.is_empty());
    // Layers, config and manifest are committed byte for byte, each under its own digest.
    for (digest, bytes) in &pushed.layers {
        assert_eq!(sink.get(digest).as_deref(), Some(&bytes[..]), "layer {digest}");
    }
    assert_eq!(sink.get(&sha256(&pushed.config)), Some(pushed.config.clone()));
    let manifest = sink.get(&pushed.manifest).expect("manifest committed");
    assert_eq!(sha256(&manifest), pushed.manifest);
    assert_eq!(sink.len(), 4);
    // Every layer reported progress up to a final done with current == total.
    let seen = seen.lock().expect("lock").clone();
    for (digest, bytes) in &pushed.layers {
        let last = seen.iter().rfind(|e| &e.0 == digest).expect("progress for layer");
        assert_eq!(*last, (digest.clone(), bytes.len() as u64, bytes.len() as u64, true, false));
    }

    let by_digest = format!("{}/app@{}", reg.addr, pushed.manifest);
    let sink2 = MemSink::default();
    let again = Puller::new()
        .pull(&by_digest, &Platform::default(), &Auth::Anonymous, true, &sink2, quiet())
        .await
        .expect("pull by digest");
    assert_eq!(again.digest, pushed.manifest);
    assert_eq!(again.config_bytes, pushed.config);
    assert_eq!(sink2.len(), 4);

    let missing = format!("{}/app@sha256:{}", reg.addr, "0".repeat(64));
    let err = Puller::new()
        .pull(&missing, &Platform::default(), &Auth::Anonymous, true, &MemSink::default(), quiet())
        .await
        .expect_err("unknown digest");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let err = Puller::new()
        .pull("not a reference!", &Platform::default(), &Auth::Anonymous, true, &MemSink::default(), quiet())
        .await
        .expect_err("bad reference");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selects_the_platform_from_an_oci_index_and_a_docker_list() {
    let reg = Registry::start(None);
    for (repo, docker) in [("oci", false), ("dock", true)] {
        let amd =
            push_image(&format!("{}/{repo}:amd64", reg.addr), &two_layers("amd64"), "amd64", docker, &Auth::Anonymous)
                .await;
        let arm =
            push_image(&format!("{}/{repo}:arm64", reg.addr), &two_layers("arm64"), "arm64", docker, &Auth::Anonymous)
                .await;
        let reference = format!("{}/{repo}:multi", reg.addr);
        let index = push_index(&reference, &[(&amd, "amd64"), (&arm, "arm64")], docker).await;

        let sink = MemSink::default();
        let pulled = Puller::new()
            .pull(&reference, &Platform::default(), &Auth::Anonymous, true, &sink, quiet())
            .await
            .expect("default platform");
        assert_eq!(pulled.digest, index, "{repo}: the tag resolves to the index");
        assert_eq!(pulled.manifest_digest, amd.manifest, "{repo}: linux/amd64 by default");
        assert_eq!(pulled.config.architecture().to_string(), "amd64");
        assert!(sink.get(&index).is_some(), "{repo}: index committed");
        assert!(sink.get(&arm.manifest).is_none(), "{repo}: other platform untouched");

        let arm64: Platform = "linux/arm64".parse().expect("platform");
        let sink = MemSink::default();
        let pulled =
            Puller::new().pull(&reference, &arm64, &Auth::Anonymous, true, &sink, quiet()).await.expect("linux/arm64");
        assert_eq!(pulled.manifest_digest, arm.manifest, "{repo}: linux/arm64 chosen");
        assert_ne!(pulled.manifest_digest, amd.manifest);
        assert_eq!(pulled.config.architecture().to_string(), "arm64");
        let want = if docker { DOCKER_MANIFEST } else { OCI_MANIFEST };
        assert_eq!(pulled.manifest_media_type, want);
        assert!(sink.get(&amd.manifest).is_none(), "{repo}: amd64 manifest not stored");

        let s390x: Platform = "linux/s390x".parse().expect("platform");
        let sink = MemSink::default();
        let err = Puller::new()
            .pull(&reference, &s390x, &Auth::Anonymous, true, &sink, quiet())
            .await
            .expect_err("no such platform");
        assert_eq!(err.code(), Code::NotFound, "{err}");
        assert_eq!(sink.len(), 0, "{repo}: nothing committed for a missing platform");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_base_layer_is_fetched_once() {
    let reg = Registry::start(None);
    let base = layer(&[("etc/os-release", "ID=berth-test\n")]);
    let first = vec![base.clone(), layer(&[("one", "1\n")])];
    let second = vec![base.clone(), layer(&[("two", "2\n")])];
    let a = push_image(&format!("{}/one:latest", reg.addr), &first, "amd64", false, &Auth::Anonymous).await;
    let b = push_image(&format!("{}/two:latest", reg.addr), &second, "amd64", false, &Auth::Anonymous).await;
    let base_digest = a.layers[0].0.clone();
    let new_digest = b.layers[1].0.clone();

    let sink = MemSink::default();
    let puller = Puller::new();
    puller
        .pull(&format!("{}/one:latest", reg.addr), &Platform::default(), &Auth::Anonymous, true, &sink, quiet())
        .await
        .expect("first pull");
    let (progress, seen) = recorder();
    let pulled = puller
        .pull(&format!("{}/two:latest", reg.addr), &Platform::default(), &Auth::Anonymous, true, &sink, progress)
        .await
        .expect("second pull");
    assert_eq!(pulled.layers_skipped, vec![base_digest.clone()]);
    assert_eq!(pulled.layers_fetched, vec![new_digest.clone()]);
    assert_eq!(sink.attempts_of(&base_digest), 1, "the base layer was written once");
    assert_eq!(sink.attempts_of(&new_digest), 1);
    let seen = seen.lock().expect("lock").clone();
    assert!(seen.iter().any(|e| e.0 == base_digest && e.3 && e.4), "the base layer is reported skipped");

    // The registry saw exactly one GET of the new layer and none of the base in `two`.
    assert_eq!(reg.wait_blob_gets("two", &new_digest, 1), 1, "{}", reg.log_text());
    assert_eq!(reg.blob_gets("two", &base_digest), 0);
    assert_eq!(reg.blob_gets("one", &base_digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_not_matching_its_digest_is_refused_and_not_committed() {
    let reg = Registry::start(None);
    let pushed =
        push_image(&format!("{}/bad:v1", reg.addr), &two_layers("bad"), "amd64", false, &Auth::Anonymous).await;
    let (corrupt, original) = pushed.layers[1].clone();
    // Same length, different bytes: only the digest can tell.
    let tampered: Vec<u8> = original.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(reg.blob_path(&corrupt), &tampered).expect("tamper with the stored blob");

    let sink = MemSink::default();
    let err = Puller::new()
        .pull(&format!("{}/bad:v1", reg.addr), &Platform::default(), &Auth::Anonymous, true, &sink, quiet())
        .await
        .expect_err("digest mismatch");
    match &err {
        ImageError::DigestMismatch { expected, actual } => {
            assert_eq!(expected, &corrupt);
            assert_eq!(actual, &sha256(&tampered));
        }
        other => panic!("want DigestMismatch, got {other:?}"),
    }
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(sink.attempts_of(&corrupt), 1, "the sink was offered the stream");
    assert!(sink.get(&corrupt).is_none(), "the bad blob was not committed");
    assert!(sink.get(&pushed.manifest).is_none(), "no manifest without its blobs");
    assert!(sink.get(&sha256(&pushed.config)).is_none(), "no config without its layers");

    // A manifest served by digest must hash to that digest too: still valid
    // JSON, one size digit changed.
    let other = push_image(&format!("{}/bad:v2", reg.addr), &two_layers("v2"), "amd64", false, &Auth::Anonymous).await;
    let path = reg.blob_path(&other.manifest);
    let stored = std::fs::read_to_string(&path).expect("stored manifest");
    let size = format!("\"size\":{}", other.config.len());
    let bumped = format!("\"size\":{}", other.config.len() + 1);
    assert_eq!(size.len(), bumped.len(), "pick a config size whose successor has as many digits");
    std::fs::write(&path, stored.replacen(&size, &bumped, 1)).expect("tamper with the stored manifest");
    let sink = MemSink::default();
    let err = Puller::new()
        .pull(
            &format!("{}/bad@{}", reg.addr, other.manifest),
            &Platform::default(),
            &Auth::Anonymous,
            true,
            &sink,
            quiet(),
        )
        .await
        .expect_err("manifest digest mismatch");
    assert!(matches!(err, ImageError::DigestMismatch { ref expected, .. } if *expected == other.manifest), "{err:?}");
    assert_eq!(sink.len(), 0, "nothing committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_with_htpasswd() {
    let reg = Registry::start(Some(("berth", "s3cret")));
    let user = Auth::Basic { username: "berth".into(), password: "s3cret".into() };
    let pushed = push_image(&format!("{}/private:v1", reg.addr), &two_layers("private"), "amd64", false, &user).await;
    let reference = format!("{}/private:v1", reg.addr);

    let sink = MemSink::default();
    let pulled = Puller::new()
        .pull(&reference, &Platform::default(), &user, true, &sink, quiet())
        .await
        .expect("pull with the right password");
    assert_eq!(pulled.digest, pushed.manifest);
    assert_eq!(sink.len(), 4);

    let wrong = Auth::Basic { username: "berth".into(), password: "wrong".into() };
    for (name, auth) in [("wrong password", wrong), ("anonymous", Auth::Anonymous)] {
        let sink = MemSink::default();
        let err =
            Puller::new().pull(&reference, &Platform::default(), &auth, true, &sink, quiet()).await.expect_err(name);
        assert!(matches!(err, ImageError::Unauthorized(_)), "{name}: {err:?}");
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(sink.len(), 0, "{name}: nothing written");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_needs_insecure() {
    let reg = Registry::start(None);
    push_image(&format!("{}/tls:v1", reg.addr), &two_layers("tls"), "amd64", false, &Auth::Anonymous).await;
    let sink = MemSink::default();
    let err = Puller::new()
        .pull(&format!("{}/tls:v1", reg.addr), &Platform::default(), &Auth::Anonymous, false, &sink, quiet())
        .await
        .expect_err("https to a plain-http registry");
    assert!(matches!(err, ImageError::Registry(_)), "{err:?}");
    assert_eq!(sink.len(), 0);
    assert!(!reg.log_text().contains("\"GET /v2/tls/manifests"), "no plain-http request was made");
}

/// The daemon spawns pulls onto its runtime: the future must be `Send`,
/// with a concrete sink and through `&dyn BlobSink` alike.
#[test]
fn the_pull_future_is_send() {
    fn assert_send<T: Send>(_: T) {}
    let puller = Puller::new();
    let sink = MemSink::default();
    let platform = Platform::default();
    assert_send(puller.pull("127.0.0.1:1/x:y", &platform, &Auth::Anonymous, true, &sink, quiet()));
    let dyn_sink: &dyn BlobSink = &sink;
    assert_send(puller.pull("127.0.0.1:1/x:y", &platform, &Auth::Anonymous, true, dyn_sink, quiet()));
}
