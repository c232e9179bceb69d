//! Images end to end (issue 10; SPEC B2, B9, B20, B29, B32): a loopback
//! Debian `docker-registry` serves a two-layer busybox image built here
//! (layer 1 the harness's busybox rootfs plus a file, layer 2 a whiteout of
//! that file and new files); berth pulls it, runs it with the image config
//! honoured, and no mount or active snapshot outlives a container — through
//! rm, a failed create and a berthd killed mid-create.

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

/// A docker-registry on 127.0.0.1, killed (by its PID) when dropped.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        assert!(Path::new(REGISTRY_BIN).exists(), "{REGISTRY_BIN} missing: apt-get install docker-registry");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n  secret: berth-test-secret\n",
            dir.path().join("storage").display()
        );
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
        let mut reg = Registry { child, addr, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(&reg.addr).is_err() {
            assert!(reg.child.try_wait().ok().flatten().is_none(), "docker-registry exited");
            assert!(Instant::now() < deadline, "docker-registry not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
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
struct Unmounter(PathBuf);

impl Drop for Unmounter {
    fn drop(&mut self) {
        for at in mounts_under(&self.0) {
            let _ = nix::mount::umount2(at.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Mount points under `dir`, from /proc/self/mountinfo.
fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let dir = dir.to_string_lossy().into_owned();
    text.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&dir)).map(str::to_string).collect()
}

fn active_snapshots(d: &Daemon) -> Vec<String> {
    let dir = d.root.join("snapshots/active");
    std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into()).collect()
}

fn sha256(data: &[u8]) -> String {
    Digest::of(data).to_string()
}

/// Layer 1: the busybox rootfs, plus /whited and /work; uncompressed.
fn base_layer(rootfs: &Path) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", rootfs).expect("tar rootfs");
    for (name, data) in [("whited", &b"to be whited out\n"[..]), ("work/.keep", b"")] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, name, data).expect("tar entry");
    }
    tar.into_inner().expect("tar")
}

/// Layer 2: a whiteout of /whited and a new file /new.
fn top_layer() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in [(".wh.whited", &b""[..]), ("new", b"new\n")] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, name, data).expect("tar entry");
    }
    tar.into_inner().expect("tar")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

/// Builds and pushes the test image to `reference`.
fn push_image(reference: &str, rootfs: &Path) {
    let base = base_layer(rootfs);
    let top = top_layer();
    let top_gz = gzip(&top);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-05-01T12:00:00Z",
        "config": {
            "Env": ["PATH=/bin", "GREETING=hello from the image"],
            "Cmd": ["sh", "-c", "echo $GREETING; pwd"],
            "WorkingDir": "/work",
            "StopSignal": "SIGQUIT"
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(&base), sha256(&top)]},
    }))
    .expect("config");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config),
                   "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&base), "size": base.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(&top_gz),
             "size": top_gz.len()},
        ],
    }))
    .expect("manifest");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let config_ = ClientConfig { protocol: ClientProtocol::Http, use_monolithic_push: true, ..Default::default() };
        let client = oci_client::Client::try_from(config_).expect("push client");
        let r: Reference = reference.parse().expect("reference");
        client.auth(&r, &RegistryAuth::Anonymous, RegistryOperation::Push).await.expect("push auth");
        for blob in [base.clone(), top_gz.clone(), config.clone()] {
            let digest = sha256(&blob);
            client.push_blob(&r, blob, &digest).await.expect("push blob");
        }
        let content_type = http::HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json");
        client.push_manifest_raw(&r, manifest, content_type).await.expect("push manifest");
    });
}

/// A daemon, a registry with the test image, and the image pulled.
fn setup() -> (Daemon, Unmounter, Registry, String) {
    let d = Daemon::start();
    let guard = Unmounter(d.dir().to_path_buf());
    let reg = Registry::start();
    let reference = format!("{}/test:1", reg.addr);
    push_image(&reference, &d.rootfs);
    let out = d.berth(&["pull", "--insecure", &reference]);
    let text = out.ok();
    assert!(text.lines().count() >= 3, "a line per layer event: {text}");
    assert!(text.contains(&format!("pulled {reference} (sha256:")), "{text}");
    (d, guard, reg, reference)
}

/// Waits until the container `id` is gone (run --rm removes it in berthd).
fn await_removed(d: &Daemon, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.berth(&["inspect", id]).code == 0 {
        assert!(Instant::now() < deadline, "{id} was not removed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pull_list_run_and_remove_leave_no_mount() {
    let (d, _guard, _reg, reference) = setup();
    let listed = d.berth(&["images"]).ok().to_string();
    let (repo, _) = reference.rsplit_once(':').expect("tag");
    assert!(listed.lines().any(|l| l.starts_with(repo) && l.split_whitespace().nth(1) == Some("1")), "{listed}");
    let json: serde_json::Value = serde_json::from_str(d.berth(&["images", "--json"]).ok()).expect("json");
    assert_eq!(json[0]["name"], reference.as_str());
    assert_eq!(json[0]["diff_ids"].as_array().map(Vec::len), Some(2));
    assert_eq!(json[0]["created"], "2024-05-01T12:00:00Z");

    // The image's cmd, env and working directory.
    let out = d.berth(&["run", "--rm", "--name", "dflt", &reference]);
    assert_eq!(out.ok(), "hello from the image\n/work\n");
    await_removed(&d, "dflt");
    // Args replace cmd; the whiteout hides /whited, layer 2's file is there.
    let out = d.berth(&["run", "--rm", "--name", "files", &reference, "sh", "-c", "cat /new; test ! -e /whited"]);
    assert_eq!(out.ok(), "new\n");
    await_removed(&d, "files");
    // -e and -w override the image's.
    let out = d.berth(&["run", "--rm", "-e", "GREETING=hi", "-w", "/", &reference, "sh", "-c", "echo $GREETING; pwd"]);
    assert_eq!(out.ok(), "hi\n/\n");
    // --entrypoint replaces the image's and drops its cmd.
    let out = d.berth(&["run", "--rm", "--entrypoint", "echo", &reference, "from", "entrypoint"]);
    assert_eq!(out.ok(), "from entrypoint\n");
    let out = d.berth(&["run", "--rm", "--entrypoint", "pwd", &reference]);
    assert_eq!(out.ok(), "/work\n");
    // A malformed reference is refused before anything is made.
    d.berth(&["run", "--rm", "Not A Ref!"]).fails_with("invalid argument");
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    d.berth(&["create", "--entrypoint", "sh", &rootfs]).fails_with("invalid argument");
    std::thread::sleep(Duration::from_millis(200));
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.berth(&["ps", "-a", "--json"]).ok().trim() != "[]" {
        assert!(Instant::now() < deadline, "run --rm containers left");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(mounts_under(d.dir()).is_empty(), "mounts left: {:?}", mounts_under(d.dir()));
    assert!(active_snapshots(&d).is_empty(), "active snapshots left: {:?}", active_snapshots(&d));

    // A stopped container keeps its snapshot and the content, whatever
    // happens to the name; inspect shows the image and its stop signal.
    d.berth(&["run", "-d", "--name", "keep", &reference, "sh", "-c", "echo kept > /written"]).ok();
    assert_eq!(d.berth(&["wait", "keep"]).ok().trim(), "0");
    let c = d.inspect("keep");
    assert_eq!(c["image"], reference.as_str());
    assert_eq!(c["labels"]["berth.stop-signal"], "SIGQUIT");
    assert!(d.berth(&["inspect", "keep"]).ok().contains(&format!("Image:      {reference}")));
    // rmi refuses an image a container uses; -f removes the name and GC
    // frees the blobs, while the container keeps its snapshot chain.
    d.berth(&["rmi", &reference]).fails_with("failed precondition");
    d.berth(&["rmi", "-f", &reference]).ok();
    assert!(!d.berth(&["images"]).ok().contains(repo));
    d.berth(&["rmi", &reference]).fails_with("not found");
    let blobs = std::fs::read_dir(d.root.join("content/blobs/sha256")).expect("blobs").count();
    assert_eq!(blobs, 0, "nothing names the blobs any more");
    assert_eq!(std::fs::read_dir(d.root.join("snapshots/committed")).expect("committed").count(), 2);
    assert_eq!(active_snapshots(&d).len(), 1);
    let upper = d.root.join("snapshots/active").join(&active_snapshots(&d)[0]).join("fs/written");
    assert_eq!(std::fs::read_to_string(upper).expect("the container's write"), "kept\n");
    // Without the name, a new create from it is refused (pull first).
    d.berth(&["create", "--pull", "never", "--name", "gone", &reference]).fails_with_any();
    d.berth(&["rm", "keep"]).ok();
    assert!(mounts_under(d.dir()).is_empty(), "mounts left: {:?}", mounts_under(d.dir()));
    assert!(active_snapshots(&d).is_empty());
}

#[test]
fn failed_create_and_crash_mid_create_release_the_snapshot() {
    let (d, _guard, _reg, reference) = setup();
    // The runtime create fails after the snapshot was mounted: rolled back.
    let out = d.berth(&["run", "--name", "nocmd", &reference, "/no/such/binary"]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("runtime create"), "{out:?}");
    d.berth(&["inspect", "nocmd"]).fails_with("not found");
    assert!(mounts_under(d.dir()).is_empty(), "mounts left: {:?}", mounts_under(d.dir()));
    assert!(active_snapshots(&d).is_empty(), "{:?}", active_snapshots(&d));

    // berthd killed right after the snapshot, the bundle and the shim.
    for step in ["snapshot", "bundle", "shim"] {
        d.kill9();
        d.spawn_with_env(&[("BERTH_TEST_CRASH_AT", step)]);
        d.wait_serving();
        let out = d.berth(&["run", "-d", "--name", "cut", &reference, "sleep", "1000"]);
        assert_ne!(out.code, 0, "{step}: create survived its crash point: {out:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !d.daemon_exited() {
            assert!(Instant::now() < deadline, "{step}: berthd did not die");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!active_snapshots(&d).is_empty(), "{step}: the crash came after the snapshot");
        d.spawn();
        d.berth(&["inspect", "cut"]).fails_with("not found");
        assert!(mounts_under(d.dir()).is_empty(), "{step}: mounts left: {:?}", mounts_under(d.dir()));
        assert!(active_snapshots(&d).is_empty(), "{step}: {:?}", active_snapshots(&d));
        assert!(d.shim_pids().is_empty(), "{step}: shims left");
    }
    // The id and the image work again.
    assert_eq!(d.berth(&["run", "--rm", "--name", "cut", &reference, "cat", "/new"]).ok(), "new\n");
}

/// Across a berthd restart a running container keeps its rootfs mount, a
/// stopped one keeps its snapshot (unmounted); restart policies reuse the
/// snapshot; removal releases everything (SPEC B19, B21, B32).
#[test]
fn restart_of_berthd_and_policies_keep_what_containers_use() {
    let (d, _guard, _reg, reference) = setup();
    d.berth(&["run", "-d", "--name", "live", &reference, "sleep", "1000"]).ok();
    d.berth(&["run", "-d", "--name", "done", &reference, "sh", "-c", "echo mine > /mine"]).ok();
    assert_eq!(d.berth(&["wait", "done"]).ok().trim(), "0");
    d.kill9();
    d.spawn();
    let live_root = d.state.join("bundles/default/live/rootfs").to_string_lossy().into_owned();
    let mounts = mounts_under(d.dir());
    assert_eq!(mounts, vec![live_root], "only the running container's rootfs stays mounted");
    assert_eq!(active_snapshots(&d).len(), 2, "the stopped container keeps its snapshot");
    let out = d.berth(&["exec", "live", "sh", "-c", "cat /new; test ! -e /whited"]);
    assert_eq!(out.ok(), "new\n");

    // A restart policy brings the container back on the same snapshot,
    // remounted when berthd restarted during a backoff (800 ms after the
    // third restart) and unmounted the stopped container's rootfs.
    let script = "echo x >> /runs; exit 3";
    d.berth(&["run", "-d", "--name", "flappy", "--restart", "on-failure:4", &reference, "sh", "-c", script]).ok();
    d.inspect_until("flappy", |c| c["restart_count"] == 3 && c["state"] == "stopped");
    d.kill9();
    d.spawn();
    let c = d.inspect_until("flappy", |c| c["restart_count"] == 4 && c["state"] == "stopped");
    assert_eq!(c["exit"]["code"], 3);
    let flappy_upper = active_snapshots(&d)
        .into_iter()
        .map(|k| d.root.join("snapshots/active").join(k).join("fs/runs"))
        .find(|p| p.exists())
        .expect("flappy's writes");
    assert_eq!(std::fs::read_to_string(flappy_upper).expect("runs"), "x\n".repeat(5), "five runs, one snapshot");

    for id in ["live", "done", "flappy"] {
        d.berth(&["rm", "-f", id]).ok();
    }
    assert!(mounts_under(d.dir()).is_empty(), "mounts left: {:?}", mounts_under(d.dir()));
    assert!(active_snapshots(&d).is_empty(), "{:?}", active_snapshots(&d));
}
