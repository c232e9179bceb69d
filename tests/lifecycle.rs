//! Container lifecycle through the CLI, daemon and shim (SPEC B1–B5, B7, B8,
//! B17, B22), on the embedded runtime and on runc.

use std::time::Duration;

use berth_testing::Daemon;
use serde_json::Value;

fn inspect(d: &Daemon, id: &str) -> Value {
    serde_json::from_str(d.berth(&["inspect", "--json", id]).ok()).expect("inspect json")
}

/// Connections process `pid` accepted and holds open: its connected unix
/// sockets that carry a listener's path in /proc/net/unix (state 03).
fn accepted_connections(pid: u64) -> usize {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    let inodes: Vec<String> = fds
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(String::from))
        .collect();
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let accepted = |l: &&str| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() == 8 && f[5] == "03" && inodes.contains(&f[6].to_string())
    };
    table.lines().filter(accepted).count()
}

fn run_attached_prints_output_and_propagates_exit(runtime: &str) {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    let out = d.berth(&["run", "--rm", "--runtime", runtime, rootfs, "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    let out = d.berth(&[
        "run",
        "--rm",
        "--runtime",
        runtime,
        "-e",
        "GREETING=hi",
        "-w",
        "/tmp",
        rootfs,
        "sh",
        "-c",
        "echo $GREETING $(pwd) $(hostname)",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("hi /tmp "), "{out:?}");
    // Death by signal is 128+N (init of a pid namespace can only be killed from outside).
    d.berth(&["run", "-d", "--name", "victim", "--runtime", runtime, rootfs, "sleep", "1000"]).ok();
    d.berth(&["kill", "-s", "KILL", "victim"]).ok();
    assert_eq!(d.berth(&["wait", "victim"]).code, 137);
    d.berth(&["rm", "victim"]).ok();
    // --rm left nothing behind.
    assert_eq!(d.berth(&["ps", "-a", "--json"]).ok().trim(), "[]");
    assert!(d.shim_pids().is_empty());
}

#[test]
fn run_attached_embedded() {
    run_attached_prints_output_and_propagates_exit("embedded");
}

#[test]
fn run_attached_runc() {
    run_attached_prints_output_and_propagates_exit("runc");
}

#[test]
fn run_attached_runc_v2() {
    run_attached_prints_output_and_propagates_exit("io.containerd.runc.v2");
}

fn detached_ps_kill_wait_rm(runtime: &str) {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    let id = d
        .berth(&[
            "run",
            "-d",
            "--runtime",
            runtime,
            "--name",
            "web",
            rootfs,
            "sh",
            "-c",
            "trap 'exit 42' TERM; echo ready; while true; do sleep 0.05; done",
        ])
        .ok()
        .trim()
        .to_string();
    assert_eq!(id, "web");
    let ps: Value = serde_json::from_str(d.berth(&["ps", "--json"]).ok()).unwrap();
    assert_eq!(ps[0]["id"], "web");
    assert_eq!(ps[0]["state"], "running");
    assert_eq!(ps[0]["runtime"], runtime);
    let pid = ps[0]["pid"].as_u64().unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(!d.cgroup_procs("default", "web").is_empty(), "container runs in its cgroup");
    // berthd watches the running init through a pidfd, holding no
    // connection to its shim (issue 14); calls connect for themselves.
    let shim = ps[0]["shim_pid"].as_u64().unwrap();
    // berth-shim runs with malloc's caches of freed blocks off (issue 14);
    // the container's process gets its spec's environment only.
    let environ =
        |pid: u64| String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap()).into_owned();
    assert!(!environ(pid).contains("GLIBC_TUNABLES"), "{}", environ(pid));
    if !runtime.starts_with("io.containerd.") {
        assert!(environ(shim).contains("GLIBC_TUNABLES=glibc.malloc.tcache_count=0"), "{}", environ(shim));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while accepted_connections(shim) > 0 {
        assert!(std::time::Instant::now() < deadline, "berthd keeps a connection to shim {shim}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Wait for the trap to be installed before signalling.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !d.berth(&["logs", "web"]).stdout.contains("ready") {
        assert!(std::time::Instant::now() < deadline, "container never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.berth(&["kill", "web"]).ok();
    let w = d.berth(&["wait", "web"]);
    assert_eq!(w.code, 42, "{w:?}");
    assert_eq!(w.stdout.trim(), "42");
    let c = inspect(&d, "web");
    assert_eq!(c["state"], "stopped");
    assert_eq!(c["exit"]["code"], 42);
    assert!(c["exit"]["exited_at_ns"].as_u64().unwrap() > 0);
    // Detached logs stay readable after exit (B17).
    assert_eq!(d.berth(&["logs", "web"]).ok(), "ready\n");
    // Stopped containers are hidden from ps without -a.
    assert_eq!(d.berth(&["ps", "--json"]).ok().trim(), "[]");
    d.berth(&["rm", "web"]).ok();
    d.berth(&["inspect", "web"]).fails_with("not found");
    assert!(d.shim_pids().is_empty(), "shim exits once its container is deleted");
    assert!(d.cgroup_dirs("default", "web").is_empty());
    assert!(d.container_paths("default", "web").is_empty());
}

#[test]
fn detached_lifecycle_embedded() {
    detached_ps_kill_wait_rm("embedded");
}

#[test]
fn detached_lifecycle_runc() {
    detached_ps_kill_wait_rm("runc");
}

#[test]
fn detached_lifecycle_runc_v2() {
    detached_ps_kill_wait_rm("io.containerd.runc.v2");
}

fn many_waiters_get_the_same_exit(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("w", &["sh", "-c", "sleep 0.5; exit 5"]);
    let before: Vec<_> = (0..16).map(|_| d.berth_spawn(&["wait", "w"])).collect();
    for child in before {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(5));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5");
    }
    // Waiting after the exit gives the same code and time.
    let t1 = inspect(&d, "w")["exit"]["exited_at_ns"].as_u64().unwrap();
    for _ in 0..4 {
        assert_eq!(d.berth(&["wait", "w"]).code, 5);
    }
    assert_eq!(inspect(&d, "w")["exit"]["exited_at_ns"].as_u64().unwrap(), t1);
    d.berth(&["rm", "w"]).ok();
}

#[test]
fn kill_of_finished_process_is_not_found() {
    let d = Daemon::start();
    d.run_detached("done", &["true"]);
    assert_eq!(d.berth(&["wait", "done"]).code, 0);
    d.berth(&["kill", "done"]).fails_with("not found");
    d.berth(&["kill", "-s", "KILL", "--all", "done"]).fails_with("not found");
    d.berth(&["rm", "done"]).ok();
}

/// Waits until the container's shell has started its two children.
fn await_children(d: &Daemon, id: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d.cgroup_procs("default", id).len() < 3 {
        assert!(std::time::Instant::now() < deadline, "children never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill_all_and_force_remove(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("multi", &["sh", "-c", "sleep 1000 & sleep 1000 & wait"]);
    // rm of a running container needs -f.
    d.berth(&["rm", "multi"]).fails_with("failed precondition");
    await_children(&d, "multi");
    d.berth(&["kill", "-s", "KILL", "--all", "multi"]).ok();
    assert_eq!(d.berth(&["wait", "multi"]).code, 137);
    assert!(d.cgroup_procs("default", "multi").is_empty());
    d.berth(&["rm", "multi"]).ok();

    d.run_detached("forced", &["sleep", "1000"]);
    d.berth(&["rm", "-f", "forced"]).ok();
    assert!(d.shim_pids().is_empty());
    assert!(d.cgroup_dirs("default", "forced").is_empty());
}

fn create_then_start_and_kill_before_start(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    let rootfs = d.rootfs.to_str().unwrap();
    d.berth(&["create", "--name", "c1", rootfs, "sh", "-c", "exit 9"]).ok();
    assert_eq!(inspect(&d, "c1")["state"], "created");
    d.berth(&["start", "c1"]).ok();
    assert_eq!(d.berth(&["wait", "c1"]).code, 9);
    d.berth(&["start", "c1"]).fails_with("failed precondition");
    d.berth(&["rm", "c1"]).ok();

    // created → stopped when killed before start (B1).
    d.berth(&["create", "--name", "c2", rootfs, "true"]).ok();
    d.berth(&["kill", "-s", "KILL", "c2"]).ok();
    assert_eq!(d.berth(&["wait", "c2"]).code, 137);
    assert_eq!(inspect(&d, "c2")["state"], "stopped");
    d.berth(&["rm", "c2"]).ok();

    // A created container can be removed with -f.
    d.berth(&["create", "--name", "c3", rootfs, "true"]).ok();
    d.berth(&["rm", "-f", "c3"]).ok();
    assert!(d.shim_pids().is_empty());
}

#[test]
fn longest_ids_work() {
    let d = Daemon::start();
    // 128 characters: longer than a host name may be.
    let id = "x".repeat(128);
    let rootfs = d.rootfs.to_str().unwrap();
    let out = d.berth(&["run", "--rm", "--name", &id, rootfs, "hostname"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), "x".repeat(64));
}

#[test]
fn namespaces_are_separate() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    d.berth(&["-n", "a", "run", "-d", "--name", "same", rootfs, "true"]).ok();
    d.berth(&["-n", "b", "run", "-d", "--name", "same", rootfs, "true"]).ok();
    let all: Value = serde_json::from_str(d.berth(&["ps", "-a", "--all-namespaces", "--json"]).ok()).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);
    let a: Value = serde_json::from_str(d.berth(&["-n", "a", "ps", "-a", "--json"]).ok()).unwrap();
    assert_eq!(a.as_array().unwrap().len(), 1);
    for ns in ["a", "b"] {
        d.berth(&["-n", ns, "wait", "same"]).ok();
        d.berth(&["-n", ns, "rm", "same"]).ok();
    }
}

fn events_report_each_transition_once(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    let sub = d.record_events(None);
    let rootfs = d.rootfs.to_str().unwrap();
    assert_eq!(d.berth(&["run", "--rm", "--name", "ev", rootfs, "sh", "-c", "exit 4"]).code, 4);
    let events: Vec<Value> = sub.finish().into_iter().filter(|e| e["id"] == "ev").collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["create", "start", "exit", "delete"], "{events:?}");
    assert_eq!(events[2]["exit"]["code"], 4);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

fn log_lines(d: &Daemon, id: &str) -> usize {
    d.berth(&["logs", id]).stdout.lines().count()
}

fn pause_freezes_and_resume_thaws(runtime: &str) {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    d.berth(&[
        "run",
        "-d",
        "--runtime",
        runtime,
        "--name",
        "counter",
        rootfs,
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo $i; sleep 0.02; done",
    ])
    .ok();
    std::thread::sleep(Duration::from_millis(300));
    assert!(log_lines(&d, "counter") > 0);
    let events = d.record_events(Some("counter"));
    d.berth(&["pause", "counter"]).ok();
    assert_eq!(inspect(&d, "counter")["state"], "paused");
    let frozen = log_lines(&d, "counter");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(log_lines(&d, "counter"), frozen, "a paused container makes no progress");
    d.berth(&["pause", "counter"]).fails_with("failed precondition");
    d.berth(&["resume", "counter"]).ok();
    assert_eq!(inspect(&d, "counter")["state"], "running");
    std::thread::sleep(Duration::from_millis(300));
    assert!(log_lines(&d, "counter") > frozen, "resumed container continues");
    d.berth(&["resume", "counter"]).fails_with("failed precondition");
    // A paused container can be force-removed.
    d.berth(&["pause", "counter"]).ok();
    d.berth(&["rm", "-f", "counter"]).ok();
    assert!(d.shim_pids().is_empty());
    assert!(d.cgroup_dirs("default", "counter").is_empty());
    assert_eq!(events.types(), ["pause", "resume", "pause", "exit", "delete"]);
}

#[test]
fn pause_resume_embedded() {
    pause_freezes_and_resume_thaws("embedded");
}

#[test]
fn pause_resume_runc() {
    pause_freezes_and_resume_thaws("runc");
}

#[test]
fn pause_resume_runc_v2() {
    pause_freezes_and_resume_thaws("io.containerd.runc.v2");
}

fn top_lists_every_process(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("tree", &["sh", "-c", "sleep 1000 & sleep 1001 & wait"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let procs = loop {
        let procs: Value = serde_json::from_str(d.berth(&["top", "--json", "tree"]).ok()).unwrap();
        if procs.as_array().unwrap().len() == 3 {
            break procs;
        }
        assert!(std::time::Instant::now() < deadline, "{procs}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let commands: Vec<String> = procs.as_array().unwrap().iter().map(|p| p["command"].to_string()).collect();
    assert!(commands.iter().any(|c| c.contains("1001")), "{commands:?}");
    let table = d.berth(&["top", "tree"]).ok().to_string();
    assert!(table.starts_with("PID") && table.contains("sleep 1000"), "{table}");
    d.berth(&["kill", "-s", "KILL", "tree"]).ok();
    d.berth(&["wait", "tree"]);
    d.berth(&["top", "tree"]).fails_with("failed precondition");
    d.berth(&["pause", "tree"]).fails_with("failed precondition");
    d.berth(&["rm", "tree"]).ok();

    // SIGKILL reaches a paused container (it is thawed for it).
    d.run_detached("frozen", &["sleep", "1000"]);
    d.berth(&["pause", "frozen"]).ok();
    d.berth(&["kill", "-s", "KILL", "frozen"]).ok();
    assert_eq!(d.berth(&["wait", "frozen"]).code, 137);
    d.berth(&["rm", "frozen"]).ok();
}

fn stop_is_graceful_then_forceful(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    let rootfs = d.rootfs.to_str().unwrap();
    // Handles SIGTERM: exits with its own code, well before the timeout.
    d.run_detached("polite", &["sh", "-c", "trap 'exit 42' TERM; echo ready; while true; do sleep 0.05; done"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !d.berth(&["logs", "polite"]).stdout.contains("ready") {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = std::time::Instant::now();
    d.berth(&["stop", "-t", "5", "polite"]).ok();
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert_eq!(inspect(&d, "polite")["exit"]["code"], 42);
    // Ignores SIGTERM (pid 1 without a handler): killed after the timeout.
    d.run_detached("stubborn", &["sleep", "1000"]);
    let t = std::time::Instant::now();
    d.berth(&["stop", "-t", "1", "stubborn"]).ok();
    assert!(t.elapsed() >= Duration::from_secs(1) && t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert_eq!(inspect(&d, "stubborn")["exit"]["code"], 137);
    // The label picks the first signal.
    d.berth(&[
        "run",
        "-d",
        "--name",
        "quit",
        "-l",
        "berth.stop-signal=QUIT",
        rootfs,
        "sh",
        "-c",
        "trap 'exit 3' QUIT; while true; do sleep 0.05; done",
    ])
    .ok();
    std::thread::sleep(Duration::from_millis(300));
    d.berth(&["stop", "quit"]).ok();
    assert_eq!(inspect(&d, "quit")["exit"]["code"], 3);
    // Stopping a stopped container just reports its exit; unknown ids are not found.
    d.berth(&["stop", "quit"]).ok();
    d.berth(&["stop", "ghost"]).fails_with("not found");
    for id in ["polite", "stubborn", "quit"] {
        d.berth(&["rm", id]).ok();
    }
}

/// Issue 14: berthd records every phase of create, start, exit and delete
/// (`berth system phases`), and forgets them on --reset.
#[test]
fn phases_of_the_lifecycle_are_recorded() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    d.berth(&["system", "phases", "--reset"]).ok();
    for i in 0..3 {
        d.berth(&["run", "--rm", "--name", &format!("ph{i}"), rootfs, "true"]).ok();
    }
    berth_e2e::registry::await_no_containers(&d, "run --rm removals");
    let phases: Value = serde_json::from_str(d.berth(&["system", "phases", "--json", "--reset"]).ok()).unwrap();
    let names: Vec<&str> = phases.as_array().unwrap().iter().map(|p| p["phase"].as_str().unwrap()).collect();
    for want in [
        "create.check",
        "create.intent",
        "create.logs",
        "create.network",
        "create.bundle",
        "shim.spawn",
        "runtime.create",
        "create.record",
        "start.runtime",
        "start.record",
        "exit.record",
        "delete.runtime",
        "delete.files",
        "delete.record",
    ] {
        let p = phases.as_array().unwrap().iter().find(|p| p["phase"] == want);
        let p = p.unwrap_or_else(|| panic!("{want} not recorded: {names:?}"));
        assert_eq!(p["count"], 3, "{p}");
        assert!(p["median_us"].as_u64().unwrap() <= p["max_us"].as_u64().unwrap(), "{p}");
    }
    assert!(d.berth(&["system", "phases"]).ok().lines().count() == 1, "reset forgets them");
}

berth_testing::on_both_shims!(
    many_waiters_get_the_same_exit,
    kill_all_and_force_remove,
    create_then_start_and_kill_before_start,
    events_report_each_transition_once,
    top_lists_every_process,
    stop_is_graceful_then_forceful
);

/// A bundle that joins another container's pid namespace has an init that
/// is not that namespace's pid 1: killing init alone would leave its
/// children running, so SIGKILL --all must still reach every process.
#[test]
fn kill_all_reaches_a_container_that_joined_another_pid_namespace() {
    let d = Daemon::start();
    d.run_detached("host", &["sleep", "1000"]);
    let pid = inspect(&d, "host")["pid"].as_u64().expect("pid");
    let bundle = d.dir().join("guest-bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": d.rootfs},
        "process": {"cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"], "args": ["sh", "-c", "sleep 1000 & sleep 1000 & wait"]},
        "linux": {"namespaces": [{"type": "pid", "path": format!("/proc/{pid}/ns/pid")}, {"type": "mount"}]}
    });
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
    d.berth(&["run", "-d", "--name", "guest", bundle.to_str().unwrap()]).ok();
    await_children(&d, "guest");
    d.berth(&["kill", "-s", "KILL", "--all", "guest"]).ok();
    assert_eq!(d.berth(&["wait", "guest"]).code, 137);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !d.cgroup_procs("default", "guest").is_empty() {
        assert!(std::time::Instant::now() < deadline, "processes left: {:?}", d.cgroup_procs("default", "guest"));
        std::thread::sleep(Duration::from_millis(20));
    }
    d.berth(&["rm", "guest"]).ok();
    d.berth(&["rm", "-f", "host"]).ok();
}
