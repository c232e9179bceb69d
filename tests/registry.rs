//! What the image tests share: a loopback Debian `docker-registry`, the
//! guard that detaches leftover mounts, and building and pushing images
//! (tar layers, gzip, digests) with oci-client.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_images::Digest;
use berth_testing::Daemon;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Media type of an uncompressed layer.
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media type of a gzip layer.
pub const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A docker-registry on 127.0.0.1 (optionally behind htpasswd basic auth),
/// killed by its PID when dropped.
pub struct Registry {
    child: Child,
    pub addr: String,
    dir: tempfile::TempDir,
}

impl Registry {
    /// A registry without auth, logging warnings only.
    pub fn start() -> Registry {
        Registry::start_with(None, "warn")
    }

    /// A registry behind basic auth for `user` (name, password) if given,
    /// logging at `log_level` ("info" records every request).
    pub fn start_with(user: Option<(&str, &str)>, log_level: &str) -> Registry {
        assert!(Path::new(REGISTRY_BIN).exists(), "{REGISTRY_BIN} missing: apt-get install docker-registry");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: {log_level}\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
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
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let mut reg = Registry { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(&reg.addr).is_err() {
            assert!(reg.child.try_wait().ok().flatten().is_none(), "docker-registry exited");
            assert!(Instant::now() < deadline, "docker-registry not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Access-log lines of GETs of the blob `digest` so far (needs the
    /// "info" log level).
    pub fn blob_gets(&self, digest: &str) -> usize {
        let needle = format!("blobs/{digest}");
        self.log().lines().filter(|l| l.contains("\"GET ") && l.contains(&needle)).count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Detaches every mount under a directory when dropped (declared after
/// the daemon, so it runs before the daemon's temp dir is removed), so a
/// failing test leaves no mount behind.
pub struct Unmounter(pub PathBuf);

impl Drop for Unmounter {
    fn drop(&mut self) {
        for at in mounts_under(&self.0) {
            let _ = nix::mount::umount2(at.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Mount points under `dir`, from /proc/self/mountinfo.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    berth_testing::mount_points().into_iter().filter(|m| m.starts_with(&dir)).collect()
}

/// The names in `dir` (none if it is missing).
pub fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into()).collect()
}

/// Waits until `berth ps -a` lists no container (run --rm removes them in
/// berthd); fails with `what` after 20 s.
pub fn await_no_containers(d: &Daemon, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.berth(&["ps", "-a", "--json"]).ok().trim() != "[]" {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The digest ("sha256:...") of `data`.
pub fn sha256(data: &[u8]) -> String {
    Digest::of(data).to_string()
}

/// Appends the file `name` holding `data` (mode 0644, root-owned, mtime 0).
pub fn append_file(tar: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    tar.append_data(&mut h, name, data).expect("tar entry");
}

/// A tar of `files` (mode 0644, root-owned), after the tree `rootfs` if any.
pub fn tar_of(files: &[(&str, &[u8])], rootfs: Option<&Path>) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    if let Some(rootfs) = rootfs {
        tar.append_dir_all(".", rootfs).expect("tar rootfs");
    }
    for (name, data) in files {
        append_file(&mut tar, name, data);
    }
    tar.into_inner().expect("tar")
}

/// `data` gzipped at `level`.
pub fn gzip(data: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), level);
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

/// Pushes an image to `reference` with `auth`: the `layers` (media type,
/// blob) in order, then `config`, then an OCI manifest naming them.
pub fn push_image(reference: &str, auth: &RegistryAuth, layers: &[(&str, &[u8])], config: &[u8]) {
    let descriptors: Vec<serde_json::Value> = layers
        .iter()
        .map(|(media_type, blob)| serde_json::json!({"mediaType": media_type, "digest": sha256(blob), "size": blob.len()}))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config),
                   "size": config.len()},
        "layers": descriptors,
    }))
    .expect("manifest");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let config_ = ClientConfig { protocol: ClientProtocol::Http, use_monolithic_push: true, ..Default::default() };
        let client = oci_client::Client::try_from(config_).expect("push client");
        let r: Reference = reference.parse().expect("reference");
        client.auth(&r, auth, RegistryOperation::Push).await.expect("push auth");
        for blob in layers.iter().map(|(_, blob)| *blob).chain([config]) {
            let digest = sha256(blob);
            client.push_blob(&r, blob.to_vec(), &digest).await.expect("push blob");
        }
        let content_type = http::HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json");
        client.push_manifest_raw(&r, manifest, content_type).await.expect("push manifest");
    });
}
