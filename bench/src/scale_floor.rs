//! The kernel's share of `berth rm -f` of N containers, which runc pays
//! too: N runc containers of `sleep`, each with its cgroup where berth's
//! were (beside the others, under the same parent), then `runc delete -f`
//! of all of them, as many at a time as one `berth rm -f` asks of berthd.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_testing::Daemon;

/// Deletes in flight, as `berth rm -f` has (the CLI's `RM_IN_FLIGHT`).
const IN_FLIGHT: usize = 16;

/// Runs `job(i)` for every `i < n` on `threads` threads.
fn on_threads(n: usize, threads: usize, job: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    job(i);
                }
            });
        }
    });
}

fn runc(root: &Path) -> Command {
    let mut cmd = Command::new("runc");
    cmd.arg("--root").arg(root).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

/// Removes whatever runc containers and bundles the measurement left,
/// however it ended.
struct Leftovers {
    root: PathBuf,
    bundles: PathBuf,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let listed = runc(&self.root).args(["list", "-q"]).stdout(Stdio::piped()).output();
        let ids = listed.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        for id in ids.lines() {
            let _ = runc(&self.root).args(["delete", "-f", id]).status();
        }
        let _ = std::fs::remove_dir_all(&self.bundles);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `runc delete -f` of `n` running runc containers, [`IN_FLIGHT`] at a
/// time; `None` if they could not all be started or removed.
pub fn runc_rm(d: &Daemon, n: usize) -> Option<Duration> {
    let dir = d.dir().join("rm-floor");
    let left = Leftovers { root: dir.join("runc-root"), bundles: dir.join("bundles") };
    let parent = format!("{}/default", d.cgroup_parent);
    eprintln!("scale: runc, {n} run -d, then delete -f of all …");
    let base = crate::make_bundle(&left.bundles, &d.rootfs, "base", &["sleep", "100000"]);
    let bundles: Vec<PathBuf> = (0..n)
        .map(|i| {
            let bundle = left.bundles.join(format!("f{i}"));
            std::fs::create_dir_all(&bundle).expect("bundle dir");
            std::fs::copy(base.join("config.json"), bundle.join("config.json")).expect("copy spec");
            crate::edit_spec(&bundle, |spec| spec["linux"]["cgroupsPath"] = format!("{parent}/f{i}").into());
            bundle
        })
        .collect();
    let started = AtomicUsize::new(0);
    on_threads(n, 2, |i| {
        let ok = runc(&left.root).arg("run").arg("-d").arg("--bundle").arg(&bundles[i]).arg(format!("f{i}")).status();
        if ok.is_ok_and(|s| s.success()) {
            started.fetch_add(1, Ordering::Relaxed);
        }
    });
    if started.load(Ordering::Relaxed) != n {
        eprintln!("scale: only {} of {n} runc containers started", started.load(Ordering::Relaxed));
        return None;
    }
    let removed = AtomicUsize::new(0);
    let t = Instant::now();
    on_threads(n, IN_FLIGHT, |i| {
        if runc(&left.root).args(["delete", "-f", &format!("f{i}")]).status().is_ok_and(|s| s.success()) {
            removed.fetch_add(1, Ordering::Relaxed);
        }
    });
    let took = t.elapsed();
    (removed.load(Ordering::Relaxed) == n).then_some(took)
}
