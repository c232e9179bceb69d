//! Issue 13's benchmark (`--only checkpoint`): checkpoint and restore of a
//! busybox counter loop through berth (`berth checkpoint`, `berth restore`
//! under a new id; embedded runtime) and through runc (`runc checkpoint`,
//! `runc restore -d`) with the same CRIU, interleaved round by round; then
//! a container with a 256 MB memory limit holding ~100 MB migrated from
//! one berthd to another (checkpoint, export, restore from the archive).

use std::path::Path;
use std::time::Duration;

use berth_testing::Daemon;

use crate::measure::{median, timed};

const COUNTER: &str = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done";
/// ~100 MB of the shell's own memory, then idle.
const HOLDER: &str = "a=$(head -c 100000000 /dev/zero | tr '\\0' x); while true; do sleep 1; done";
const CRIU: &str = "/opt/berth/criu/bin/criu";

pub struct CheckpointFigures {
    pub berth_dump: Option<Duration>,
    pub berth_restore: Option<Duration>,
    pub runc_dump: Option<Duration>,
    pub runc_restore: Option<Duration>,
    /// Checkpoint + export + restore on the other daemon, and the archive's size.
    pub migrate: Option<Duration>,
    pub migrate_mb: f64,
}

fn runc(root: &Path, args: &[&str]) -> bool {
    crate::measure::runc(root, &["--criu", CRIU], args)
}

pub fn run(d: &Daemon, rounds: usize) -> Option<CheckpointFigures> {
    if !Path::new(CRIU).exists() {
        eprintln!("checkpoint: {CRIU} is missing (make criu)");
        return None;
    }
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    let bundle = crate::make_bundle(d.dir(), &d.rootfs, "ckpt", &["sh", "-c", COUNTER]);
    let bundle_s = bundle.to_string_lossy().into_owned();
    let root = d.run_dir().join("runc-ckpt");
    let (mut bd, mut br, mut rd, mut rr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    eprintln!("checkpoint: berth and runc, checkpoint and restore of a counter, {rounds} rounds …");
    for i in 0..rounds {
        let (id, back) = (format!("k{i}"), format!("k{i}r"));
        d.berth(&["run", "-d", "--name", &id, &rootfs, "sh", "-c", COUNTER]).ok();
        std::thread::sleep(Duration::from_millis(200));
        bd.extend(timed(|| d.berth(&["checkpoint", "--name", "c", &id]).code == 0));
        br.extend(timed(|| d.berth(&["restore", "--name", &back, "--checkpoint", "c", &id]).code == 0));
        d.berth(&["rm", "-f", &id, &back]).ok();
        d.berth(&["checkpoint", "rm", &id, "c"]).ok();

        let rid = format!("r{i}");
        let (images, work) = (d.dir().join(format!("img-{i}")), d.dir().join(format!("work-{i}")));
        let (images_s, work_s) = (images.to_string_lossy().into_owned(), work.to_string_lossy().into_owned());
        if !runc(&root, &["run", "-d", "--bundle", &bundle_s, &rid]) {
            eprintln!("checkpoint: runc run failed");
            continue;
        }
        std::thread::sleep(Duration::from_millis(200));
        rd.extend(timed(|| runc(&root, &["checkpoint", "--image-path", &images_s, "--work-path", &work_s, &rid])));
        let restore = ["restore", "-d", "--image-path", &images_s, "--work-path", &work_s, "--bundle", &bundle_s, &rid];
        rr.extend(timed(|| runc(&root, &restore)));
        runc(&root, &["delete", "-f", &rid]);
        let _ = std::fs::remove_dir_all(&images);
        let _ = std::fs::remove_dir_all(&work);
    }
    if let Ok(h) = berth_cgroups::Hierarchies::detect() {
        let _ = h.remove_tree(crate::RUNC_CGROUP_PARENT);
    }
    let (migrate, migrate_mb) = migrate(d).unwrap_or((None, 0.0));
    Some(CheckpointFigures {
        berth_dump: median(&mut bd),
        berth_restore: median(&mut br),
        runc_dump: median(&mut rd),
        runc_restore: median(&mut rr),
        migrate,
        migrate_mb,
    })
}

/// A 256 MB container holding ~100 MB, moved to a second daemon.
fn migrate(d: &Daemon) -> Option<(Option<Duration>, f64)> {
    eprintln!("checkpoint: migrating a 256 MB container to a second berthd …");
    let two = Daemon::start_with_run_tmpfs(&[]);
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    d.berth(&["run", "-d", "--memory", "256m", "--name", "big", &rootfs, "sh", "-c", HOLDER]).ok();
    std::thread::sleep(Duration::from_secs(3));
    let archive = d.dir().join("big.tar");
    let archive_s = archive.to_string_lossy().into_owned();
    let took = timed(|| {
        d.berth(&["checkpoint", "--name", "move", "big"]).code == 0
            && d.berth(&["checkpoint", "export", "big", "move", &archive_s]).code == 0
            && two.berth(&["restore", "--from", &archive_s]).code == 0
    });
    let mb = std::fs::metadata(&archive).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
    let running = two.berth(&["inspect", "--json", "big"]).stdout.contains("\"running\"");
    two.berth(&["rm", "-f", "big"]).ok();
    d.berth(&["rm", "-f", "big"]).ok();
    Some((took.filter(|_| running), mb))
}
