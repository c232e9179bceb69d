//! Chaos (SPEC B4, B18–B22): churn containers with known exit codes — some
//! with a restart policy — while berthd is SIGKILLed again and again and
//! random shims are killed, then check that every container reports what
//! it was meant to (or "unknown exit", 255, only where its shim was
//! killed), that each exit is in the event log exactly once (once per run
//! for restarted ones), and that nothing is left once all are removed.
//!
//! Short form (part of `make test`): 50 containers, 3 daemon kills. Long
//! form: `BERTH_CHAOS=long` (or `make chaos`): 500 containers, 10 kills.
//! `BERTH_CHAOS_SEED` replays a run.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_testing::{Daemon, Output};
use serde_json::Value;

/// How long any one CLI step may keep retrying through daemon outages.
const STEP_DEADLINE: Duration = Duration::from_secs(60);
const WORKERS: usize = 4;

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[derive(Clone, Copy, Debug)]
enum Plan {
    /// Exits by itself with this code.
    Short(u32),
    /// Runs until the test SIGKILLs it: 137.
    Long,
    /// Exits with this (non-zero) code, under `on-failure:2`: three runs.
    Flaky(u32),
}

impl Plan {
    fn expected(self) -> u32 {
        match self {
            Plan::Short(code) | Plan::Flaky(code) => code,
            Plan::Long => 137,
        }
    }

    fn command(self, i: usize) -> String {
        match self {
            Plan::Short(code) | Plan::Flaky(code) => format!("sleep 0.{:02}; exit {code}", i % 30),
            Plan::Long => "sleep 1000".into(),
        }
    }

    fn policy(self) -> &'static str {
        if let Plan::Flaky(_) = self { "on-failure:2" } else { "no" }
    }

    fn restarts(self) -> u64 {
        if let Plan::Flaky(_) = self { 2 } else { 0 }
    }
}

fn failed_with(out: &Output, kind: &str) -> bool {
    out.code != 0 && out.stderr.contains(&format!("berth: {kind}: "))
}

/// Repeats `f` through daemon outages until it says it is done.
fn retry(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP_DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: still failing after {STEP_DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Runs a container, whatever crashes: a create cut short is redone, one
/// that was recorded but not started is started.
fn launch(d: &Daemon, id: &str, policy: &str, script: &str) {
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    retry(id, || {
        let run = d.berth(&["run", "-d", "--restart", policy, "--name", id, &rootfs, "sh", "-c", script]);
        if run.code == 0 {
            return true;
        }
        let inspect = d.berth(&["inspect", "--json", id]);
        if inspect.code != 0 {
            return false;
        }
        let c: Value = serde_json::from_str(&inspect.stdout).expect("inspect JSON");
        if c["state"] == "created" {
            let start = d.berth(&["start", id]);
            return start.code == 0 || failed_with(&start, "failed precondition");
        }
        true
    });
}

fn kill_container(d: &Daemon, id: &str) {
    retry(id, || {
        let out = d.berth(&["kill", "-s", "KILL", id]);
        out.code == 0 || failed_with(&out, "not found")
    });
}

fn cmdline(pid: u32) -> Vec<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// The `--id` a shim process serves; None for a shim's forked runtime
/// helper (same command line, but its parent is the shim): the chaos kills
/// shims, and a helper's death can end a run with other codes than 255
/// (e.g. a failed restart's start is answered with SIGKILL).
fn shim_container(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ppid: u32 = stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()?;
    if cmdline(ppid).first().is_some_and(|a| a.ends_with("berth-shim")) {
        return None;
    }
    let args = cmdline(pid);
    args.windows(2).find(|w| w[0] == "--id").map(|w| w[1].clone())
}

/// Follows `berth events --since N` through every berthd kill, resuming
/// after the last event it got, until `stop` is set.
fn follow_events(d: &Daemon, seen: &Mutex<Vec<Value>>, stop: &AtomicBool, current: &std::sync::atomic::AtomicU32) {
    use std::io::BufRead;
    while !stop.load(Ordering::SeqCst) {
        let since = seen.lock().unwrap().last().map(|e| e["seq"].as_u64().unwrap()).unwrap_or(0).to_string();
        let mut child = d.berth_spawn(&["events", "--json", "--since", &since]);
        current.store(child.id(), Ordering::SeqCst);
        if stop.load(Ordering::SeqCst) {
            // Told to stop while this one was starting.
            let _ = child.kill();
        }
        let out = child.stdout.take().expect("stdout");
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            seen.lock().unwrap().push(serde_json::from_str(&line).expect("event JSON"));
        }
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the follower when dropped — also when the test fails, which would
/// otherwise wait for it forever.
struct StopFollowing<'a> {
    stop: &'a AtomicBool,
    current: &'a std::sync::atomic::AtomicU32,
}

impl Drop for StopFollowing<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let pid = nix::unistd::Pid::from_raw(self.current.load(Ordering::SeqCst) as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL);
    }
}

fn ps(d: &Daemon) -> Option<Vec<Value>> {
    let out = d.berth(&["ps", "-a", "--json"]);
    (out.code == 0).then(|| serde_json::from_str(&out.stdout).expect("ps JSON"))
}

#[test]
fn chaos_churn_with_daemon_and_shim_kills() {
    let long = std::env::var("BERTH_CHAOS").is_ok_and(|v| v == "long");
    let (n, daemon_kills) = if long { (500, 10) } else { (50, 3) };
    let seed = std::env::var("BERTH_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    }) | 1;
    println!("chaos: seed {seed} (BERTH_CHAOS_SEED={seed} replays the plan)");
    let mut rng = Rng(seed);
    let plans: Vec<Plan> = (0..n)
        .map(|_| match rng.below(6) {
            0 | 1 => Plan::Long,
            2 => Plan::Flaky(1 + rng.below(99) as u32),
            _ => Plan::Short(rng.below(100) as u32),
        })
        .collect();
    let id = |i: usize| format!("c{i}");
    let d = Daemon::start();
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let churning = AtomicBool::new(true);
    let shim_killed: Mutex<HashSet<String>> = Mutex::default();
    let mut final_state = BTreeMap::new();
    let rng = Mutex::new(rng);
    let pause = |lo: u64, hi: u64| Duration::from_millis(lo + rng.lock().unwrap().below(hi - lo));
    let followed: Mutex<Vec<Value>> = Mutex::default();
    let (stop_following, follower) = (AtomicBool::new(false), std::sync::atomic::AtomicU32::new(0));

    std::thread::scope(|s| {
        s.spawn(|| follow_events(&d, &followed, &stop_following, &follower));
        let _stop_following = StopFollowing { stop: &stop_following, current: &follower };
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= n {
                            return;
                        }
                        launch(&d, &id(i), plans[i].policy(), &plans[i].command(i));
                        if let Plan::Long = plans[i] {
                            std::thread::sleep(pause(0, 150));
                            kill_container(&d, &id(i));
                        }
                    }
                })
            })
            .collect();
        s.spawn(|| {
            for k in 0..daemon_kills {
                std::thread::sleep(pause(150, 600));
                // A random shim dies now and then, with berthd up or down.
                let kill_shim = |d: &Daemon| {
                    let shims = d.shim_pids();
                    if shims.is_empty() {
                        return;
                    }
                    let pid = shims[pause(0, shims.len() as u64).as_millis() as usize];
                    if let Some(c) = shim_container(pid) {
                        shim_killed.lock().unwrap().insert(c);
                        let _ =
                            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
                    }
                };
                if k % 2 == 0 {
                    kill_shim(&d);
                }
                d.kill9();
                std::thread::sleep(pause(20, 200));
                if k % 2 == 1 {
                    kill_shim(&d);
                }
                d.spawn();
            }
            churning.store(false, Ordering::SeqCst);
        });
        for w in workers {
            w.join().expect("worker");
        }
        retry("daemon kills done", || !churning.load(Ordering::SeqCst));
        // Every container ends stopped, after all its restarts.
        let deadline = Instant::now() + STEP_DEADLINE;
        loop {
            if let Some(list) = ps(&d) {
                final_state = list.into_iter().map(|c| (c["id"].as_str().unwrap().to_string(), c)).collect();
            }
            let pending: Vec<String> = (0..n)
                .filter(|i| {
                    final_state.get(&id(*i)).is_none_or(|c| {
                        c["state"] != "stopped" || c["restart_count"].as_u64() != Some(plans[*i].restarts())
                    })
                })
                .map(|i| format!("{} {:?}: {}", id(i), plans[i], final_state.get(&id(i)).unwrap_or(&Value::Null)))
                .collect();
            if pending.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "not done after {STEP_DEADLINE:?}: {pending:#?}\n{}", d.log());
            std::thread::sleep(Duration::from_millis(30));
        }
        // The follower, resumed after each kill, has every logged event.
        let last = d.events_since(0).last().map(|e| e["seq"].as_u64().unwrap()).unwrap_or(0);
        retry("follower caught up", || {
            followed.lock().unwrap().last().is_some_and(|e| e["seq"].as_u64().unwrap() >= last)
        });
    });
    let churned = started.elapsed();
    let killed = shim_killed.lock().unwrap().clone();
    let mut unknown = 0;
    for (i, plan) in plans.iter().enumerate() {
        let c = &final_state[&id(i)];
        let code = c["exit"]["code"].as_u64().unwrap() as u32;
        if code == 255 && killed.contains(&id(i)) {
            unknown += 1;
            continue;
        }
        assert_eq!(code, plan.expected(), "{}: {plan:?}, shim killed: {}: {c}", id(i), killed.contains(&id(i)));
    }

    // Each exit is in the durable log exactly once (one per run), the last
    // with the final code.
    let events = d.events_since(0);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>(), "sequence numbers have no gap");
    let followed = followed.into_inner().unwrap();
    assert_eq!(followed, events, "a follower resumed with --since after every kill saw exactly the log");
    let exits: Vec<&Value> = events.iter().filter(|e| e["type"] == "exit" && e["exec_id"] == "").collect();
    for (i, plan) in plans.iter().enumerate() {
        let mine: Vec<_> = exits.iter().filter(|e| e["id"] == id(i).as_str()).collect();
        assert_eq!(mine.len() as u64, plan.restarts() + 1, "{}: exit events {mine:?}", id(i));
        assert_eq!(mine.last().unwrap()["exit"], final_state[&id(i)]["exit"], "{}", id(i));
        let restarts = events.iter().filter(|e| e["type"] == "restart" && e["id"] == id(i).as_str()).count();
        assert_eq!(restarts as u64, plan.restarts(), "{}: one restart event per restart", id(i));
    }

    // Removing everything leaves nothing.
    for chunk in (0..n).map(id).collect::<Vec<_>>().chunks(25) {
        let mut args = vec!["rm", "-f"];
        args.extend(chunk.iter().map(String::as_str));
        d.berth(&args).ok();
    }
    assert_eq!(ps(&d).expect("ps").len(), 0);
    assert!(d.shim_pids().is_empty(), "shims left: {:?}", d.shim_pids());
    let mut leftovers = Vec::new();
    for i in 0..n {
        leftovers.extend(d.cgroup_dirs("default", &id(i)));
        leftovers.extend(d.container_paths("default", &id(i)));
    }
    for dir in [d.state.join("shims"), d.state.join("bundles/default"), d.root.join("logs/default")] {
        leftovers.extend(std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path()));
    }
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    assert!(d.leftover_mounts().is_empty(), "mounts left: {:?}", d.leftover_mounts());
    assert!(d.network_leftovers().is_empty(), "network left: {:?}", d.network_leftovers());

    let log = d.log();
    println!(
        "chaos: {n} containers ({} short, {} long, {} restarted twice by policy) churned in {churned:.1?} through {daemon_kills} daemon kills and {} shim kills; \
         {} creates cut short and released, {} dead shims cleaned up; {unknown} unknown exits (255), {} exit events, \
         each exactly once; a follower resumed with --since after each kill saw all {} events; nothing left after removal",
        plans.iter().filter(|p| matches!(p, Plan::Short(_))).count(),
        plans.iter().filter(|p| matches!(p, Plan::Long)).count(),
        plans.iter().filter(|p| matches!(p, Plan::Flaky(_))).count(),
        killed.len(),
        log.matches("releasing a create cut short").count(),
        log.matches("shim died").count() + log.matches("shim gone; cleaning up").count(),
        exits.len(),
        events.len(),
    );
}
