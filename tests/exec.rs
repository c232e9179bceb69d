//! Exec (SPEC B6, B7, B13, B22): extra processes in a running container,
//! their output, exit codes, ids, signals and events; bad requests refused.

use std::time::{Duration, Instant};

use berth_testing::Daemon;
use serde_json::Value;

fn exec_output_and_exit_code(runtime: &str) {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    d.berth(&["run", "-d", "--runtime", runtime, "--name", "box", rootfs, "sleep", "1000"]).ok();
    let out = d.berth(&["exec", "box", "sh", "-c", "echo out; echo err >&2; exit 4"]);
    assert_eq!((out.code, out.stdout.as_str(), out.stderr.as_str()), (4, "out\n", "err\n"), "{out:?}");
    let out = d.berth(&[
        "exec",
        "-u",
        "65534:65534",
        "-w",
        "/tmp",
        "-e",
        "X=1",
        "box",
        "sh",
        "-c",
        "echo $(id -u):$(id -g) $(pwd) $X",
    ]);
    assert_eq!(out.stdout, "65534:65534 /tmp 1\n", "{out:?}");
    // The container's own environment is kept.
    let out = d.berth(&["exec", "box", "sh", "-c", "echo $PATH"]);
    assert!(out.stdout.contains("/bin"), "{out:?}");
    // A missing binary is an error with the runtime's message.
    let out = d.berth(&["exec", "box", "/no/such/binary"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("/no/such/binary"), "{out:?}");
    d.berth(&["rm", "-f", "box"]).ok();
    assert!(d.shim_pids().is_empty());
}

#[test]
fn exec_embedded() {
    exec_output_and_exit_code("embedded");
}

#[test]
fn exec_runc() {
    exec_output_and_exit_code("runc");
}

#[test]
fn exec_runc_v2() {
    exec_output_and_exit_code("io.containerd.runc.v2");
}

fn wait_for_top(d: &Daemon, id: &str, exec_id: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs: Value = serde_json::from_str(d.berth(&["top", "--json", id]).ok()).unwrap();
        let list = procs.as_array().unwrap().clone();
        if list.iter().any(|p| p["exec_id"] == exec_id) {
            return list;
        }
        assert!(Instant::now() < deadline, "exec {exec_id} never showed in top: {list:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exec_ids_signals_top_and_events(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("host", &["sleep", "1000"]);
    let events = d.record_events(Some("host"));
    // The exec starts a child of its own (sleep 1001).
    let mut long = d.berth_spawn(&["exec", "--exec-id", "long", "host", "sh", "-c", "sleep 1001 & exec sleep 1000"]);
    let procs = wait_for_top(&d, "host", "long");
    let init = procs.iter().find(|p| p["exec_id"] == "").expect("init listed");
    assert!(init["command"].to_string().contains("sleep"));
    // Exec ids are unique per container.
    d.berth(&["exec", "--exec-id", "long", "host", "true"]).fails_with("already exists");
    d.berth(&["exec", "--exec-id", "../bad", "host", "true"]).fails_with("invalid argument");
    // Unknown execs are not found; `--all` signals an exec and every
    // process it started.
    d.berth(&["kill", "--exec-id", "nope", "host"]).fails_with("not found");
    let top = |d: &Daemon| d.berth(&["top", "host"]).ok().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !top(&d).contains("sleep 1001") {
        assert!(std::time::Instant::now() < deadline, "{}", top(&d));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    d.berth(&["kill", "-s", "KILL", "--all", "--exec-id", "long", "host"]).ok();
    let status = long.wait().unwrap();
    assert_eq!(status.code(), Some(137));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while top(&d).contains("sleep 1001") {
        assert!(std::time::Instant::now() < deadline, "the exec's child outlived it: {}", top(&d));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The exec is gone once the CLI collected it; init is untouched.
    d.berth(&["kill", "--exec-id", "long", "host"]).fails_with("not found");
    let c: Value = serde_json::from_str(d.berth(&["inspect", "--json", "host"]).ok()).unwrap();
    assert_eq!(c["state"], "running");

    // No exec into a paused or stopped container.
    d.berth(&["pause", "host"]).ok();
    d.berth(&["exec", "host", "true"]).fails_with("failed precondition");
    d.berth(&["resume", "host"]).ok();
    d.berth(&["kill", "-s", "KILL", "host"]).ok();
    d.berth(&["wait", "host"]);
    d.berth(&["exec", "host", "true"]).fails_with("failed precondition");
    d.berth(&["exec", "ghost", "true"]).fails_with("not found");
    d.berth(&["rm", "host"]).ok();

    let evs = events.finish();
    let of_long: Vec<&str> =
        evs.iter().filter(|e| e["exec_id"] == "long").map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(of_long, ["exec-added", "exec-started", "exit"], "{evs:?}");
    let exit = evs.iter().find(|e| e["exec_id"] == "long" && e["type"] == "exit").unwrap();
    assert_eq!(exit["exit"]["code"], 137);
    let init_exits = evs.iter().filter(|e| e["exec_id"] == "" && e["type"] == "exit").count();
    assert_eq!(init_exits, 1, "{evs:?}");
}

fn kill_all_reaches_execs_too(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("all", &["sleep", "1000"]);
    let mut ex = d.berth_spawn(&["exec", "--exec-id", "bg", "all", "sleep", "1000"]);
    wait_for_top(&d, "all", "bg");
    d.berth(&["kill", "-s", "KILL", "--all", "all"]).ok();
    assert_eq!(d.berth(&["wait", "all"]).code, 137);
    assert_eq!(ex.wait().unwrap().code(), Some(137));
    assert!(d.cgroup_procs("default", "all").is_empty());
    d.berth(&["rm", "all"]).ok();
}

berth_testing::on_both_shims!(exec_ids_signals_top_and_events, kill_all_reaches_execs_too);
