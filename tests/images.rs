//! Images end to end (issue 10; SPEC B2, B9, B20, B29, B32): a loopback
//! Debian `docker-registry` serves a two-layer busybox image built here
//! (layer 1 the harness's busybox rootfs plus a file, layer 2 a whiteout of
//! that file and new files); berth pulls it, runs it with the image config
//! honoured, and no mount or active snapshot outlives a container — through
//! rm, a failed create and a berthd killed mid-create.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_e2e::registry::{
    LAYER_TAR, LAYER_TAR_GZIP, Registry, Unmounter, await_no_containers, entries, gzip, push_image, sha256, tar_of,
};
use berth_testing::Daemon;
use oci_client::secrets::RegistryAuth;

fn active_snapshots(d: &Daemon) -> Vec<String> {
    entries(&d.root.join("snapshots/active"))
}

/// Builds and pushes the test image to `reference`: layer 1 the busybox
/// rootfs plus /whited and /work, uncompressed; layer 2 a whiteout of
/// /whited and a new file /new, gzip.
fn push_test_image(reference: &str, rootfs: &Path) {
    let base = tar_of(&[("whited", b"to be whited out\n"), ("work/.keep", b"")], Some(rootfs));
    let top = tar_of(&[(".wh.whited", b""), ("new", b"new\n")], None);
    let top_gz = gzip(&top, flate2::Compression::fast());
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
    push_image(reference, &RegistryAuth::Anonymous, &[(LAYER_TAR, &base), (LAYER_TAR_GZIP, &top_gz)], &config);
}

/// A daemon, a registry with the test image, and the image pulled.
fn setup() -> (Daemon, Unmounter, Registry, String) {
    let d = Daemon::start();
    let guard = Unmounter(d.dir().to_path_buf());
    let reg = Registry::start();
    let reference = format!("{}/test:1", reg.addr);
    push_test_image(&reference, &d.rootfs);
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
    // Supplementary groups on top of the user's.
    let out = d.berth(&["run", "--rm", "--group-add", "4321", "--group-add", "99", &reference, "id", "-G"]);
    let mut groups: Vec<&str> = out.ok().split_whitespace().collect();
    groups.sort();
    assert_eq!(groups, ["0", "4321", "99"]);
    // A malformed reference is refused before anything is made.
    d.berth(&["run", "--rm", "Not A Ref!"]).fails_with("invalid argument");
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    d.berth(&["create", "--entrypoint", "sh", &rootfs]).fails_with("invalid argument");
    d.berth(&["create", "--group-add", "5", &rootfs, "true"]).fails_with("invalid argument");
    std::thread::sleep(Duration::from_millis(200));
    await_no_containers(&d, "run --rm containers left");
    assert!(d.leftover_mounts().is_empty(), "mounts left: {:?}", d.leftover_mounts());
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
    assert!(d.leftover_mounts().is_empty(), "mounts left: {:?}", d.leftover_mounts());
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
    assert!(d.leftover_mounts().is_empty(), "mounts left: {:?}", d.leftover_mounts());
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
        assert!(d.leftover_mounts().is_empty(), "{step}: mounts left: {:?}", d.leftover_mounts());
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
    let mounts = d.leftover_mounts();
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
    assert!(d.leftover_mounts().is_empty(), "mounts left: {:?}", d.leftover_mounts());
    assert!(active_snapshots(&d).is_empty(), "{:?}", active_snapshots(&d));
}

/// Issue 13: a container run from an image is checkpointed with its
/// writable layer (a file written, a file of the image deleted) and
/// restored from the archive on a second berthd that has the image: the
/// changes and the process go on there.
#[test]
fn an_image_container_migrates_with_its_changes() {
    let (d, _guard, _reg, reference) = setup();
    let two = Daemon::start();
    let _two_guard = Unmounter(two.dir().to_path_buf());
    two.berth(&["pull", "--insecure", &reference]).ok();
    let script = "echo kept > /work/state; rm /new; i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done";
    d.berth(&["run", "-d", "--name", "img", &reference, "sh", "-c", script]).ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.berth(&["logs", "img"]).ok().contains('3') {
        assert!(Instant::now() < deadline, "the container never counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.berth(&["checkpoint", "--name", "move", "img"]).ok();
    let archive = d.dir().join("img.tar").to_string_lossy().into_owned();
    d.berth(&["checkpoint", "export", "img", "move", &archive]).ok();
    assert_eq!(two.berth(&["restore", "--from", &archive]).ok().trim(), "img");
    assert_eq!(two.berth(&["exec", "img", "cat", "/work/state"]).ok().trim(), "kept");
    assert_ne!(two.berth(&["exec", "img", "test", "-e", "/new"]).code, 0, "the deleted file stays deleted");
    assert_eq!(two.inspect("img")["image"], reference.as_str());
    two.berth(&["rm", "-f", "img"]).ok();
    d.berth(&["rm", "-f", "img"]).ok();
    assert!(active_snapshots(&two).is_empty(), "{:?}", active_snapshots(&two));
}
