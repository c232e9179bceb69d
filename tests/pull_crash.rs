//! A pull cut short by SIGKILL of berthd (issue 10; SPEC B20): a loopback
//! Debian `docker-registry` serves a four-layer image (the busybox rootfs
//! plus three layers of random data, gzip) big enough that the pull is
//! caught in progress; berthd is killed while blobs are in `ingest/` or a
//! layer is being unpacked under `snapshots/tmp/`. After the restart no
//! temp file, half snapshot or mount is left, the image is not listed half
//! made, and a second pull completes without fetching again the layers
//! that were already verified and unpacked.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use berth_e2e::registry::{LAYER_TAR_GZIP, Registry, Unmounter, entries, gzip, push_image, sha256, tar_of};
use berth_images::Digest;
use berth_images::snapshot::{chain_hex, chain_id};
use berth_testing::Daemon;
use oci_client::secrets::RegistryAuth;

/// Size of each random layer.
const RANDOM_LAYER: usize = 32 * 1024 * 1024;

/// A CLI child killed (by its PID) and reaped when dropped.
struct CliChild(Child);

impl Drop for CliChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `len` bytes of incompressible data (xorshift64 from `seed`).
fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The pushed image: its layer digests and their chain ids, in order.
struct Pushed {
    layers: Vec<(String, String)>,
}

/// Builds and pushes the test image to `reference`.
fn push_test_image(reference: &str, rootfs: &Path) -> Pushed {
    let mut tars = vec![tar_of(&[], Some(rootfs))];
    for n in 1..=3u64 {
        let name = format!("data/{n}.bin");
        tars.push(tar_of(&[(&name, &random(RANDOM_LAYER, n.wrapping_mul(0x9e37_79b9_7f4a_7c15)))], None));
    }
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256(t)).collect();
    // Gzip framing with stored blocks: a real gzip stream, cheap to build
    // (the data is random, so compression would not shrink it anyway).
    let blobs: Vec<Vec<u8>> = tars.iter().map(|t| gzip(t, flate2::Compression::none())).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config");
    let layers: Vec<(&str, &[u8])> = blobs.iter().map(|b| (LAYER_TAR_GZIP, b.as_slice())).collect();
    push_image(reference, &RegistryAuth::Anonymous, &layers, &config);
    let mut parent: Option<String> = None;
    let mut out = Vec::new();
    for (blob, diff_id) in blobs.iter().zip(&diff_ids) {
        let chain = chain_id(parent.as_deref(), diff_id).expect("chain id");
        out.push((sha256(blob), chain.clone()));
        parent = Some(chain);
    }
    Pushed { layers: out }
}

/// What the poll saw when it killed berthd.
#[derive(Debug)]
struct Caught {
    after: Duration,
    ingest: Vec<String>,
    tmp: Vec<String>,
}

#[test]
fn pull_killed_midway_resumes_cleanly_and_leaves_nothing_half() {
    let d = Daemon::start();
    let _guard = Unmounter(d.dir().to_path_buf());
    let reg = Registry::start_with(None, "info");
    let reference = format!("{}/big:1", reg.addr);
    let pushed = push_test_image(&reference, &d.rootfs);
    let ingest = d.root.join("content/ingest");
    let tmp = d.root.join("snapshots/tmp");
    let committed_dir = d.root.join("snapshots/committed");
    let blobs_dir = d.root.join("content/blobs/sha256");

    // Pull in the background; kill berthd while a blob is being written
    // or a layer unpacked, preferably once a first layer is committed.
    let mut cli = CliChild(d.berth_spawn(&["pull", "--insecure", &reference]));
    let started = Instant::now();
    let mut seen_work: Option<Instant> = None;
    let caught = loop {
        let work = Caught { after: started.elapsed(), ingest: entries(&ingest), tmp: entries(&tmp) };
        let busy = !work.ingest.is_empty() || !work.tmp.is_empty();
        if busy {
            let first = *seen_work.get_or_insert_with(Instant::now);
            // Best: a layer committed (the resume can skip it) while the
            // next one is being unpacked; else any work after a while.
            let unpacking = !work.tmp.is_empty() && !entries(&committed_dir).is_empty();
            if unpacking || first.elapsed() > Duration::from_secs(10) {
                d.kill9();
                break work;
            }
        }
        if let Some(status) = cli.0.try_wait().expect("wait for berth pull") {
            panic!("the pull ended ({status}) before it was caught in progress; make the layers bigger");
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no pull work seen: {}", d.log());
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(!caught.ingest.is_empty() || !caught.tmp.is_empty());
    let out = cli.0.wait().expect("berth pull exits");
    assert!(!out.success(), "the pull survived the kill of berthd ({caught:?})");

    // What was verified before the kill: layers with blob and snapshot.
    let present = entries(&blobs_dir);
    let done = entries(&committed_dir);
    let kept: Vec<&(String, String)> = pushed
        .layers
        .iter()
        .filter(|(digest, chain)| {
            let hex = digest.trim_start_matches("sha256:");
            present.iter().any(|p| p == hex) && done.iter().any(|c| Some(c.as_str()) == chain_hex(chain).ok())
        })
        .collect();
    assert!(kept.len() < pushed.layers.len(), "the whole image was there before the kill ({caught:?})");

    d.spawn();
    assert!(entries(&ingest).is_empty(), "temp files left in ingest: {:?}", entries(&ingest));
    assert!(entries(&tmp).is_empty(), "half snapshots left: {:?}", entries(&tmp));
    assert!(entries(&d.root.join("snapshots/active")).is_empty());
    assert!(d.leftover_mounts().is_empty(), "mounts left: {:?}", d.leftover_mounts());
    // Every blob left is whole, every snapshot left is a layer of the image.
    for hex in entries(&blobs_dir) {
        let data = std::fs::read(blobs_dir.join(&hex)).expect("blob");
        assert_eq!(Digest::of(&data).hex(), hex, "a blob does not match its digest");
    }
    for c in entries(&committed_dir) {
        assert!(pushed.layers.iter().any(|(_, chain)| chain_hex(chain).ok() == Some(c.as_str())), "odd snapshot {c}");
    }
    let (repo, _) = reference.rsplit_once(':').expect("tag");
    let listed = d.berth(&["images"]).ok().to_string();
    assert!(!listed.contains(repo), "a half-pulled image is listed: {listed}");

    // The pull resumes: the layers already verified and unpacked are not
    // fetched again, the others are.
    let before: Vec<usize> = pushed.layers.iter().map(|(digest, _)| reg.blob_gets(digest)).collect();
    let text = d.berth(&["pull", "--insecure", &reference]).ok().to_string();
    assert!(text.contains(&format!("pulled {reference} (sha256:")), "{text}");
    for ((digest, chain), before) in pushed.layers.iter().zip(before) {
        let after = reg.blob_gets(digest);
        if kept.iter().any(|(k, _)| k == digest) {
            assert_eq!(after, before, "{digest} was verified before the kill, yet fetched again");
        } else if !present.iter().any(|p| Some(p.as_str()) == digest.strip_prefix("sha256:")) {
            assert!(after > before, "{digest} was missing, yet not fetched");
        }
        let hex = chain_hex(chain).expect("chain hex");
        assert!(committed_dir.join(hex).is_dir(), "layer {digest} not unpacked");
    }
    assert!(d.berth(&["images"]).ok().contains(repo));
    assert!(entries(&ingest).is_empty() && entries(&tmp).is_empty());
    d.berth(&["run", "--rm", &reference, "true"]).ok();
    let out = d.berth(&["run", "--rm", &reference, "sh", "-c", "wc -c < /data/3.bin"]);
    assert_eq!(out.ok().trim(), RANDOM_LAYER.to_string());
    assert!(d.leftover_mounts().is_empty() || wait_unmounted(&d), "mounts left: {:?}", d.leftover_mounts());
    eprintln!("killed after {:?}: {caught:?}; {} of {} layers kept", caught.after, kept.len(), pushed.layers.len());
}

/// Waits for `run --rm` removals to finish unmounting.
fn wait_unmounted(d: &Daemon) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.leftover_mounts().is_empty() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}
