//! Recovery time (SPEC B19): with N running containers, SIGKILL the
//! daemon, start it again and time until its listing shows all N running
//! with the pids they had (berthd: `berth ps --json`; containerd 1.6:
//! `ctr task ls`). Both daemons in the same run, same container count.

use std::time::{Duration, Instant};

use berth_testing::Daemon;

use crate::containerd::Containerd;

/// How long a daemon may take to show every container again.
const DEADLINE: Duration = Duration::from_secs(60);

pub struct Recovery {
    pub containers: usize,
    pub berth: Option<Duration>,
    pub containerd: Option<Duration>,
}

fn median(mut v: Vec<Duration>, rounds: usize) -> Option<Duration> {
    v.sort();
    (v.len() == rounds && rounds > 0).then(|| v[v.len() / 2])
}

/// Times `rounds` kill-and-restart cycles of `restart` until `listing`
/// equals `expected` (sorted (id, pid, state) triples).
pub fn time_recovery(
    rounds: usize,
    expected: &[(String, String, String)],
    mut restart: impl FnMut() -> bool,
    listing: impl Fn() -> Option<Vec<(String, String, String)>>,
) -> Option<Duration> {
    let mut times = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        if !restart() {
            return None;
        }
        loop {
            if let Some(mut l) = listing() {
                l.sort();
                if l == expected {
                    times.push(t.elapsed());
                    break;
                }
            }
            if t.elapsed() > DEADLINE {
                eprintln!("  no full recovery within {DEADLINE:?}");
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    median(times, rounds)
}

pub fn berth_listing(d: &Daemon) -> Option<Vec<(String, String, String)>> {
    let out = d.berth(&["ps", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
    let list = v.as_array()?.iter().map(|c| (c["id"].to_string(), c["pid"].to_string(), c["state"].to_string()));
    (out.code == 0).then(|| list.collect())
}

pub fn run(d: &Daemon, ctr: Option<&mut Containerd>, n: usize, rounds: usize) -> Recovery {
    eprintln!("recovery: starting {n} berth containers …");
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    let ids: Vec<String> = (0..n).map(|i| format!("rc{i}")).collect();
    let started = std::thread::scope(|s| {
        let workers: Vec<_> = ids
            .chunks(n.div_ceil(4).max(1))
            .map(|chunk| {
                let rootfs = &rootfs;
                s.spawn(move || {
                    chunk.iter().all(|id| d.berth(&["run", "-d", "--name", id, rootfs, "sleep", "100000"]).code == 0)
                })
            })
            .collect();
        workers.into_iter().all(|w| w.join().unwrap_or(false))
    });
    let expected = berth_listing(d).map(|mut l| {
        l.sort();
        l
    });
    let berth = match expected {
        Some(expected) if started && expected.len() == n => {
            eprintln!("recovery: berthd, {rounds} kill -9 + restart rounds …");
            let restart = || {
                d.kill9();
                d.spawn_with_env(&[]);
                true
            };
            time_recovery(rounds, &expected, restart, || berth_listing(d))
        }
        _ => None,
    };
    for chunk in ids.chunks(50) {
        let mut args = vec!["rm", "-f"];
        args.extend(chunk.iter().map(String::as_str));
        d.berth(&args);
    }

    let containerd = ctr.and_then(|c| {
        eprintln!("recovery: starting {n} containerd containers …");
        c.run_detached(crate::containerd::RUNC_V2, &d.rootfs, "rc", n);
        let mut expected: Vec<_> = c.tasks()?.into_iter().filter(|t| t.0.starts_with("rc")).collect();
        expected.sort();
        if expected.len() != n || expected.iter().any(|t| t.2 != "RUNNING") {
            return None;
        }
        eprintln!("recovery: containerd, {rounds} kill -9 + restart rounds …");
        let listing = |c: &Containerd| c.tasks().map(|t| t.into_iter().filter(|t| t.0.starts_with("rc")).collect());
        let c = std::cell::RefCell::new(c);
        time_recovery(rounds, &expected, || c.borrow_mut().restart_after_kill9(), || listing(&c.borrow()))
    });
    Recovery { containers: n, berth, containerd }
}
