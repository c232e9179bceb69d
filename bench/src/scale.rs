//! Issue 14's scale figures (`--scale N`, default 1,000): N detached
//! `sleep` containers started one `run -d` at a time; berthd's RSS and the
//! shims' PSS total with all of them running; `berth stats --no-stream
//! --json` over all; `berth run --rm` against `runc run` of /bin/true with
//! all of them running (interleaved); kill -9 of berthd and restart until
//! `berth ps --json` lists all N running again; a metrics scrape with each
//! container's figures; `berth rm -f` of all in
//! one command, next to `runc delete -f` of as many runc containers and to
//! the kernel's share of that removal alone (`scale_floor.rs`). Then the peer: a private containerd 1.6 with N tasks
//! (`ctr run -d` one at a time, its shims' PSS total, kill -9 and restart
//! until `ctr task ls` lists them all).

use std::path::Path;
use std::time::Duration;

use berth_testing::Daemon;

use crate::containerd::{Containerd, RUNC_V2};
use crate::create_floor::Floor;
use crate::measure::{settled_memory, time_interleaved_settled, timed};
use crate::recovery::{berth_listing, time_recovery};

/// Rounds of the start-path comparison with everything running.
pub const START_ROUNDS: usize = 10;
/// Runs of the create floor's probe, with none and with all running.
pub const FLOOR_ROUNDS: usize = 30;

#[derive(Default)]
pub struct Side {
    pub run_all: Option<Duration>,
    pub shims_pss_mb: Option<f64>,
    pub recovery: Option<Duration>,
}

pub struct Scale {
    pub containers: usize,
    pub berth: Side,
    pub containerd: Side,
    pub berthd_rss_mb: Option<f64>,
    pub stats: Option<Duration>,
    pub rm_all: Option<Duration>,
    /// The same removal by runc: `runc delete -f` of N runc containers.
    pub rm_runc: Option<Duration>,
    /// Those N runc containers started by `runc run -d`, one at a time.
    pub run_runc: Option<Duration>,
    /// Its floor: the kernel's share alone (kill -9, rmdir), no runtime.
    pub rm_kernel: Option<Duration>,
    /// `berth run --rm` and `runc run` of /bin/true, all N running.
    pub start_berth: Option<Duration>,
    pub start_runc: Option<Duration>,
    /// GET /metrics with `--metrics-per-container`, all N running.
    pub scrape: Option<Duration>,
    /// The kernel's steps of a create that grow with the count, with no
    /// container running and with all N (`create_floor.rs`).
    pub create_floor: (Option<Floor>, Option<Floor>),
}

/// The median of three scrapes of the metrics socket (each more than the
/// second berthd reuses a scrape for apart), if each answers 200 with
/// every container in it.
fn scrape(socket: &Path, n: usize) -> Option<Duration> {
    use std::io::{Read, Write};
    let mut times = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1100));
        let started = std::time::Instant::now();
        let mut conn = std::os::unix::net::UnixStream::connect(socket).ok()?;
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut text = String::new();
        conn.read_to_string(&mut text).ok()?;
        times.push(started.elapsed());
        let per_container = text.matches("berth_container_memory_bytes{").count();
        if !text.lines().next().is_some_and(|l| l.ends_with("200 OK")) || per_container != n {
            eprintln!("scale: the scrape held {per_container} containers of {n}");
            return None;
        }
    }
    times.sort();
    Some(times[1])
}

fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<f64>().ok()?;
    Some(kb / 1024.0)
}

fn pss_total(shims: &[u32]) -> Option<f64> {
    settled_memory(shims).map(|m| m.pss_mb * shims.len() as f64)
}

/// `berth run --rm BUNDLE` against `runc run --bundle BUNDLE`, interleaved.
/// runc's container gets its cgroup beside berth's 1,000, as berth's own
/// does: the kernel's cost of a new cgroup grows with its siblings (v1's
/// cpuset checks each of them), and both should pay it.
fn start_path(d: &Daemon, bundle: &Path) -> (Option<Duration>, Option<Duration>) {
    let bundle = crate::with_cgroups_path(bundle, &format!("{}/default/runc-true", d.cgroup_parent));
    let bundle = bundle.to_string_lossy().into_owned();
    let runc_root = d.run_dir().join("runc-root");
    let target = [bundle.as_str()];
    let mut runners = crate::measure::run_rm_and_runc(d, &target, &bundle, &runc_root, "s");
    let t = time_interleaved_settled(START_ROUNDS, &mut runners, crate::measure::settle_removal(d, "s"));
    (t[0], t[1])
}

pub fn run(d: &Daemon, n: usize, bundle: &Path, metrics: &Path) -> Scale {
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    let ids: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    let floor_dir = d.dir().join("create-floor");
    eprintln!("scale: the kernel's share of a create, none running …");
    let floor_none = crate::create_floor::measure(&floor_dir, FLOOR_ROUNDS);
    eprintln!("scale: {n} sequential run -d …");
    let mut berth = Side {
        run_all: timed(|| {
            ids.iter().all(|id| d.berth(&["run", "-d", "--name", id, &rootfs, "sleep", "100000"]).code == 0)
        }),
        ..Default::default()
    };
    std::thread::sleep(Duration::from_secs(1));
    let berthd_rss_mb = d.pid().and_then(rss_mb);
    berth.shims_pss_mb = pss_total(&d.shim_pids());
    eprintln!("scale: the kernel's share of a create, all running …");
    let floor_all = crate::create_floor::measure(&floor_dir, FLOOR_ROUNDS);
    eprintln!("scale: stats, start path, recovery, rm -f …");
    let stats = timed(|| d.berth(&["stats", "--no-stream", "--json"]).code == 0);
    let scrape = scrape(metrics, n);
    let (start_berth, start_runc) = start_path(d, bundle);
    berth.recovery = berth_listing(d).filter(|l| l.len() == n).and_then(|mut expected| {
        expected.sort();
        let restart = || {
            d.kill9();
            d.spawn_with_env(&[]);
            true
        };
        time_recovery(1, &expected, restart, || berth_listing(d))
    });
    // runc's containers get the same seccomp profile: compiling it is a
    // part of each create.
    let seccomp = crate::scale_floor::berth_seccomp(&d.state.join("bundles/default").join(&ids[0]).join("config.json"));
    let mut args = vec!["rm", "-f"];
    args.extend(ids.iter().map(String::as_str));
    let rm_all = timed(|| d.berth(&args).code == 0);
    if seccomp.is_none() {
        eprintln!("scale: no seccomp profile found in berth's first container; runc's run without one");
    }
    let (run_runc, rm_runc) = crate::scale_floor::runc_run_and_rm(d, n, seccomp.as_ref());
    let rm_kernel = crate::scale_floor::kernel_rm(d, n, seccomp.as_ref());
    let containerd = Containerd::start(d.dir(), d.run_dir()).map(|c| peer(c, &d.rootfs, n)).unwrap_or_default();
    Scale {
        containers: n,
        berth,
        containerd,
        berthd_rss_mb,
        stats,
        rm_all,
        rm_runc,
        run_runc,
        rm_kernel,
        start_berth,
        start_runc,
        scrape,
        create_floor: (floor_none, floor_all),
    }
}

/// containerd 1.6 with `n` tasks through containerd-shim-runc-v2; its
/// tasks are removed when it drops (untimed).
fn peer(c: Containerd, rootfs: &Path, n: usize) -> Side {
    eprintln!("scale: containerd, {n} sequential ctr run -d …");
    let mut shims = Vec::new();
    let run_all = timed(|| {
        shims = c.run_detached(RUNC_V2, rootfs, "p", n);
        shims.len() == n
    });
    let shims_pss_mb = pss_total(&shims);
    let listing = |c: &Containerd| c.tasks().map(|t| t.into_iter().filter(|t| t.0.starts_with('p')).collect());
    let recovery = listing(&c).filter(|l: &Vec<_>| l.len() == n).and_then(|mut expected| {
        expected.sort();
        eprintln!("scale: containerd, kill -9 + restart …");
        let c = std::cell::RefCell::new(c);
        time_recovery(1, &expected, || c.borrow_mut().restart_after_kill9(), || listing(&c.borrow()))
    });
    Side { run_all, shims_pss_mb, recovery }
}
