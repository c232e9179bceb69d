//! Timing and memory measurement helpers.

use std::time::{Duration, Instant};

/// A command to time, by name.
pub type Runner<'a> = Box<dyn FnMut(usize) -> bool + 'a>;

/// `berth run --rm TARGET…` (a bundle, or a root filesystem and a
/// command) and `runc run --bundle BUNDLE` (ids `<prefix>b<i>`,
/// `<prefix>r<i>`), the start path's pair of runners, and their settling:
/// see [`settle_removal`].
pub fn run_rm_and_runc<'a>(
    d: &'a berth_testing::Daemon,
    target: &'a [&'a str],
    bundle: &'a str,
    runc_root: &'a std::path::Path,
    prefix: &'a str,
) -> Vec<Runner<'a>> {
    vec![
        Box::new(move |i| {
            let name = format!("{prefix}b{i}");
            let mut args = vec!["run", "--rm", "--name", &name];
            args.extend_from_slice(target);
            d.berth(&args).code == 0
        }),
        Box::new(move |i| runc(runc_root, &[], &["run", "--bundle", bundle, &format!("{prefix}r{i}")])),
    ]
}

/// After runner 0's `berth run --rm --name <prefix>b<i>`: waits, untimed,
/// until berthd has removed that container (none of its files and
/// directories is left; the record follows at once). `run --rm` returns
/// once the exit is durable and berthd removes the container behind it. Interleaved with no
/// wait, that removal ran during the next command, and kept the CPUs awake
/// for it: a `runc run` started right after a berth run took 24 ms, one
/// started once the removal was done 31 ms (30 rounds each, 2026-12-04).
pub fn settle_removal<'a>(d: &'a berth_testing::Daemon, prefix: &'a str) -> impl FnMut(usize, usize) + 'a {
    move |runner, i| {
        if runner != 0 {
            return;
        }
        let id = format!("{prefix}b{i}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.container_paths("default", &id).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Times several commands interleaved (one run of each per round, so drift
/// in machine load hits all alike), after one warm-up run each. Returns the
/// median wall time per command, None for a command that failed.
pub fn time_interleaved(rounds: usize, runners: &mut [Runner<'_>]) -> Vec<Option<Duration>> {
    time_interleaved_settled(rounds, runners, |_, _| {})
}

/// [`time_interleaved`], calling `settle(runner, round)` after each run,
/// outside the timing (the warm-up's round is `usize::MAX`).
pub fn time_interleaved_settled(
    rounds: usize,
    runners: &mut [Runner<'_>],
    mut settle: impl FnMut(usize, usize),
) -> Vec<Option<Duration>> {
    let mut times: Vec<Option<Vec<Duration>>> = Vec::with_capacity(runners.len());
    for (k, f) in runners.iter_mut().enumerate() {
        let ok = f(usize::MAX);
        settle(k, usize::MAX);
        times.push(ok.then(|| Vec::with_capacity(rounds)));
    }
    for i in 0..rounds {
        for (k, (f, t)) in runners.iter_mut().zip(times.iter_mut()).enumerate() {
            let Some(v) = t else { continue };
            let start = Instant::now();
            if f(i) {
                v.push(start.elapsed());
                settle(k, i);
            } else {
                eprintln!("  run {i} failed; dropping this command's figures");
                *t = None;
            }
        }
    }
    times.into_iter().map(|t| t.and_then(|mut v| median(&mut v))).collect()
}

#[derive(Debug, Clone, Copy)]
pub struct Mem {
    pub rss_mb: f64,
    pub pss_mb: f64,
}

/// [`shim_memory`] once the shims have settled: half a second after the
/// last container started. A shim is measured as it runs for its
/// container's life, not in the moment after its start (berth-shim gives
/// back the create's memory 100 ms after a start); every shim measured
/// gets the same wait.
pub fn settled_memory(pids: &[u32]) -> Option<Mem> {
    std::thread::sleep(Duration::from_millis(500));
    shim_memory(pids)
}

/// Mean RSS and PSS (from /proc/PID/smaps_rollup) over the given pids.
pub fn shim_memory(pids: &[u32]) -> Option<Mem> {
    let mut rss = 0u64;
    let mut pss = 0u64;
    let mut n = 0u64;
    for pid in pids {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else { continue };
        let field = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        rss += field("Rss:");
        pss += field("Pss:");
        n += 1;
    }
    (n > 0).then(|| Mem { rss_mb: rss as f64 / n as f64 / 1024.0, pss_mb: pss as f64 / n as f64 / 1024.0 })
}

pub fn median(v: &mut [Duration]) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    Some(v[v.len() / 2])
}

/// Runs `runc --root ROOT GLOBAL… ARGS…` quietly; whether it succeeded.
pub fn runc(root: &std::path::Path, global: &[&str], args: &[&str]) -> bool {
    std::process::Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(global)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How long `f` took, if it succeeded.
pub fn timed(f: impl FnOnce() -> bool) -> Option<Duration> {
    let start = Instant::now();
    f().then(|| start.elapsed())
}
