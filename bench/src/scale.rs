//! Issue 14's scale figures (`--scale N`, default 1,000): N detached
//! `sleep` containers started one `run -d` at a time; berthd's RSS and the
//! shims' PSS total with all of them running; `berth stats --no-stream
//! --json` over all; kill -9 of berthd and restart until `berth ps --json`
//! lists all N running again; `berth rm -f` of all in one command.

use std::time::Duration;

use berth_testing::Daemon;

use crate::measure::{shim_memory, timed};
use crate::recovery::{berth_listing, time_recovery};

pub struct Scale {
    pub containers: usize,
    pub run_all: Option<Duration>,
    pub berthd_rss_mb: Option<f64>,
    pub shims_pss_mb: Option<f64>,
    pub stats: Option<Duration>,
    pub recovery: Option<Duration>,
    pub rm_all: Option<Duration>,
}

fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<f64>().ok()?;
    Some(kb / 1024.0)
}

pub fn run(d: &Daemon, n: usize) -> Scale {
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    let ids: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    eprintln!("scale: {n} sequential run -d …");
    let run_all =
        timed(|| ids.iter().all(|id| d.berth(&["run", "-d", "--name", id, &rootfs, "sleep", "100000"]).code == 0));
    std::thread::sleep(Duration::from_secs(1));
    let berthd_rss_mb = d.pid().and_then(rss_mb);
    let shims = d.shim_pids();
    let shims_pss_mb = shim_memory(&shims).map(|m| m.pss_mb * shims.len() as f64);
    eprintln!("scale: stats, recovery, rm -f …");
    let stats = timed(|| d.berth(&["stats", "--no-stream", "--json"]).code == 0);
    let recovery = berth_listing(d).filter(|l| l.len() == n).and_then(|mut expected| {
        expected.sort();
        let restart = || {
            d.kill9();
            d.spawn_with_env(&[]);
            true
        };
        time_recovery(1, &expected, restart, || berth_listing(d))
    });
    let mut args = vec!["rm", "-f"];
    args.extend(ids.iter().map(String::as_str));
    let rm_all = timed(|| d.berth(&args).code == 0);
    Scale { containers: n, run_all, berthd_rss_mb, shims_pss_mb, stats, recovery, rm_all }
}
