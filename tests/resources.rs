//! Resource control (SPEC B12, B14): limits at run, live updates read back
//! from the cgroup files and enforced, statistics that move, bad input.

use std::time::{Duration, Instant};

use berth_testing::Daemon;
use serde_json::Value;

/// Reads a cgroup file of the container: the v1 name if that hierarchy has
/// it, else the v2 name.
fn cg(d: &Daemon, id: &str, v1: &str, v2: &str) -> String {
    for dir in d.cgroup_dirs("default", id) {
        for name in [v1, v2] {
            if let Ok(s) = std::fs::read_to_string(dir.join(name)) {
                return s.trim().to_string();
            }
        }
    }
    panic!("no {v1} / {v2} for {id}");
}

fn stats(d: &Daemon, id: &str) -> Value {
    let v: Value = serde_json::from_str(d.berth(&["stats", "--json", id]).ok()).unwrap();
    v[0].clone()
}

fn limits_at_run_and_live_update(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    let rootfs = d.rootfs.to_str().unwrap();
    d.berth(&[
        "run",
        "-d",
        "--name",
        "lim",
        "--memory",
        "64m",
        "--pids-limit",
        "50",
        "--cpus",
        "0.5",
        "--cpu-shares",
        "512",
        rootfs,
        "sleep",
        "1000",
    ])
    .ok();
    assert_eq!(cg(&d, "lim", "memory.limit_in_bytes", "memory.max"), (64u64 << 20).to_string());
    assert_eq!(cg(&d, "lim", "pids.max", "pids.max"), "50");
    assert_eq!(cg(&d, "lim", "cpu.cfs_quota_us", "cpu.max").split_whitespace().next(), Some("50000"));
    // 512 shares on v1; weight 1 + (512-2)*9999/262142 = 20 on v2.
    let shares = cg(&d, "lim", "cpu.shares", "cpu.weight");
    assert!(shares == "512" || shares == "20", "{shares}");
    // v1: the namespace's cpuset cgroup hands the host's CPUs and nodes
    // to each new container cgroup (cpuset.rs in berth-cgroups), so no
    // runtime writes them.
    let h = berth_cgroups::Hierarchies::detect().unwrap();
    if let Some(root) = h.v1_dir("cpuset", "") {
        let read = |dir: &std::path::Path, f: &str| std::fs::read_to_string(dir.join(f)).unwrap().trim().to_string();
        let ns = h.v1_dir("cpuset", &format!("{}/default", d.cgroup_parent)).unwrap();
        assert_eq!(read(&ns, "cgroup.clone_children"), "1");
        assert_eq!(cg(&d, "lim", "cpuset.cpus", "cpuset.cpus"), read(&root, "cpuset.cpus"));
        assert_eq!(cg(&d, "lim", "cpuset.mems", "cpuset.mems"), read(&root, "cpuset.mems"));
    }

    d.berth(&[
        "update",
        "--memory",
        "32m",
        "--memory-swap",
        "-1",
        "--pids-limit",
        "20",
        "--cpuset-cpus",
        "0",
        "--cpus",
        "1",
        "lim",
    ])
    .ok();
    assert_eq!(cg(&d, "lim", "memory.limit_in_bytes", "memory.max"), (32u64 << 20).to_string());
    assert_eq!(cg(&d, "lim", "pids.max", "pids.max"), "20");
    assert_eq!(cg(&d, "lim", "cpuset.cpus", "cpuset.cpus"), "0");
    assert_eq!(cg(&d, "lim", "cpu.cfs_quota_us", "cpu.max").split_whitespace().next(), Some("100000"));

    // Paused containers can be updated too.
    d.berth(&["pause", "lim"]).ok();
    d.berth(&["update", "--pids-limit", "30", "lim"]).ok();
    assert_eq!(cg(&d, "lim", "pids.max", "pids.max"), "30");
    d.berth(&["resume", "lim"]).ok();

    // Bad values change nothing.
    let before = (cg(&d, "lim", "memory.limit_in_bytes", "memory.max"), cg(&d, "lim", "pids.max", "pids.max"));
    d.berth(&["update", "--memory", "1k", "lim"]).fails_with("invalid argument");
    d.berth(&["update", "--pids-limit", "0", "lim"]).fails_with("invalid argument");
    d.berth(&["update", "--cpuset-cpus", "4000", "lim"]).fails_with("invalid argument");
    d.berth(&["update", "--cpu-shares", "1", "lim"]).fails_with("invalid argument");
    d.berth(&["update", "--memory", "-5", "lim"]).fails_with_any();
    d.berth(&["update", "--cpus", "-2", "lim"]).fails_with_any();
    assert_eq!(before, (cg(&d, "lim", "memory.limit_in_bytes", "memory.max"), cg(&d, "lim", "pids.max", "pids.max")));
    d.berth(&["update", "--memory", "64m", "ghost"]).fails_with("not found");
    d.berth(&["run", "-d", "--name", "bad", "--memory", "1k", rootfs, "true"]).fails_with("invalid argument");
    d.berth(&["inspect", "bad"]).fails_with("not found");

    d.berth(&["kill", "-s", "KILL", "lim"]).ok();
    d.berth(&["wait", "lim"]);
    d.berth(&["update", "--memory", "64m", "lim"]).fails_with("failed precondition");
    d.berth(&["stats", "--json", "lim"]).fails_with("failed precondition");
    d.berth(&["rm", "lim"]).ok();
}

fn memory_limit_is_enforced(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("small", &["sleep", "1000"]);
    d.berth(&["update", "--memory", "16m", "small"]).ok();
    // A 40 MB string does not fit in 16 MB: the kernel kills the exec.
    let out = d.berth(&["exec", "small", "sh", "-c", "x=$(head -c 40000000 /dev/zero | tr '\\0' a); echo ${#x}"]);
    assert_eq!(out.code, 137, "{out:?}");
    d.berth(&["rm", "-f", "small"]).ok();
}

fn statistics_move(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("busy", &["sh", "-c", "x=$(head -c 12000000 /dev/zero | tr '\\0' a); while true; do :; done"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let s = stats(&d, "busy");
        if s["memory"]["usage"].as_u64().unwrap() > 10_000_000 {
            break s;
        }
        assert!(Instant::now() < deadline, "memory never grew: {s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_millis(500));
    let second = stats(&d, "busy");
    let cpu = |s: &Value| s["cpu"]["usage_total"].as_u64().unwrap();
    // Half a second of a busy loop is well over 100 ms of CPU.
    assert!(cpu(&second) > cpu(&first) + 100_000_000, "{first} → {second}");
    assert!(second["cpu"]["per_cpu"].as_array().is_some_and(|a| !a.is_empty()));
    assert!(second["pids"]["current"].as_u64().unwrap() >= 1);
    for key in ["limit", "cache", "rss", "swap", "max_usage"] {
        assert!(second["memory"][key].is_u64(), "memory.{key} missing: {second}");
    }
    assert!(second["cpu"]["throttling"]["periods"].is_u64());
    assert!(second["blkio"].is_array() && second["hugetlb"].is_array());
    // The table for people.
    let table = d.berth(&["stats", "--no-stream"]).ok().to_string();
    assert!(table.contains("CPU %") && table.contains("busy"), "{table}");
    d.berth(&["rm", "-f", "busy"]).ok();
}

fn oom_kill_is_an_event_and_shows_in_inspect(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    let rootfs = d.rootfs.to_str().unwrap();
    let events = d.record_events(Some("hog"));
    let hog = "sleep 0.2; x=$(head -c 60000000 /dev/zero | tr '\\0' a); sleep 1000";
    d.berth(&["run", "-d", "--name", "hog", "--memory", "16m", "--memory-swap", "16m", rootfs, "sh", "-c", hog]).ok();
    assert_eq!(d.berth(&["wait", "hog"]).code, 137, "the shell holding the string is OOM-killed");
    let c: Value = serde_json::from_str(d.berth(&["inspect", "--json", "hog"]).ok()).unwrap();
    assert_eq!(c["oom_killed"], true, "{c}");
    assert!(d.berth(&["inspect", "hog"]).ok().contains("OOMKilled:  true"));
    let types = events.types();
    let oom = types.iter().position(|t| t == "oom").unwrap_or_else(|| panic!("no oom event: {types:?}"));
    let exit = types.iter().position(|t| t == "exit").unwrap();
    assert!(oom < exit, "oom reported before the exit: {types:?}");
    d.berth(&["rm", "hog"]).ok();

    // A container that never hit its limit is not marked.
    d.run_detached("calm", &["true"]);
    d.berth(&["wait", "calm"]);
    let c: Value = serde_json::from_str(d.berth(&["inspect", "--json", "calm"]).ok()).unwrap();
    assert_eq!(c["oom_killed"], false);
    d.berth(&["rm", "calm"]).ok();
}

berth_testing::on_both_shims!(
    limits_at_run_and_live_update,
    memory_limit_is_enforced,
    statistics_move,
    oom_kill_is_an_event_and_shows_in_inspect
);
