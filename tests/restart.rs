//! berthd can die and come back without losing containers: shims run in
//! their own session, records are durable, and the restarted daemon
//! reconnects to live shims (SPEC B18, B19 — the part issue 3 covers).

use berth_testing::Daemon;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

fn kill9_daemon_keeps_running_containers_and_records(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("survivor", &["sh", "-c", "trap 'exit 3' TERM; while true; do sleep 0.05; done"]);
    d.run_detached("finished", &["sh", "-c", "exit 6"]);
    assert_eq!(d.berth(&["wait", "finished"]).code, 6);
    let before: Value = serde_json::from_str(d.berth(&["inspect", "--json", "survivor"]).ok()).unwrap();
    let shims = d.shim_pids();
    assert_eq!(shims.len(), 2, "a finished container's shim stays until rm");

    d.restart_after_kill9();

    let after: Value = serde_json::from_str(d.berth(&["inspect", "--json", "survivor"]).ok()).unwrap();
    assert_eq!(after["state"], "running");
    assert_eq!(after["pid"], before["pid"]);
    assert_eq!(d.shim_pids(), shims, "the same shims are still serving");
    let finished: Value = serde_json::from_str(d.berth(&["inspect", "--json", "finished"]).ok()).unwrap();
    assert_eq!(finished["state"], "stopped");
    assert_eq!(finished["exit"]["code"], 6);

    // The reconnected shim still obeys: kill, wait, rm.
    std::thread::sleep(std::time::Duration::from_millis(200));
    d.berth(&["kill", "survivor"]).ok();
    assert_eq!(d.berth(&["wait", "survivor"]).code, 3);
    d.berth(&["rm", "survivor"]).ok();
    d.berth(&["rm", "finished"]).ok();
    assert!(d.shim_pids().is_empty());
    assert!(d.cgroup_dirs("default", "survivor").is_empty());
}

#[test]
fn sigterm_stops_daemon_promptly_and_leaves_containers_running() {
    let d = Daemon::start();
    d.run_detached("stay", &["sleep", "1000"]);
    // A follower holds a stream open; it must not keep berthd alive.
    let mut follower = d.berth_spawn(&["logs", "-f", "stay"]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let took = d.terminate();
    assert!(took < std::time::Duration::from_secs(10), "berthd took {took:?} to stop");
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(!d.socket.exists(), "socket removed on shutdown");
    assert_eq!(d.shim_pids().len(), 1, "the shim outlives berthd");
    assert!(!d.cgroup_procs("default", "stay").is_empty(), "the container outlives berthd");
    d.spawn();
    let c: Value = serde_json::from_str(d.berth(&["inspect", "--json", "stay"]).ok()).unwrap();
    assert_eq!(c["state"], "running");
    d.berth(&["rm", "-f", "stay"]).ok();
    assert!(d.shim_pids().is_empty());
}

/// A shim killed while berthd runs: its container is cleaned up at once
/// (leftovers killed, runtime state deleted) and reports "unknown exit"
/// (255) to waiters and subscribers, exactly once (SPEC B19).
fn container_of_a_killed_shim_is_cleaned_up_with_unknown_exit(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("orphan", &["sleep", "1000"]);
    let c = d.inspect("orphan");
    let (shim, init) = (c["shim_pid"].as_i64().unwrap(), c["pid"].as_i64().unwrap());
    let events = d.record_events(Some("orphan"));
    let waiter = d.berth_spawn(&["wait", "orphan"]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    signal(shim as i32, Signal::SIGKILL);
    let c = d.inspect_until("orphan", |c| c["state"] == "stopped");
    assert_eq!(c["exit"]["code"], 255, "{c}");
    assert_eq!(waiter.wait_with_output().unwrap().status.code(), Some(255), "the waiter got the unknown exit");
    // Gone, or a zombie waiting for whoever inherited it from the dead shim.
    let stat = std::fs::read_to_string(format!("/proc/{init}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z "), "init was killed: {stat}");
    assert!(d.cgroup_procs("default", "orphan").is_empty());
    assert!(d.cgroup_dirs("default", "orphan").is_empty(), "the cleanup removed the cgroup");
    d.berth(&["rm", "orphan"]).ok();
    assert!(d.shim_pids().is_empty());
    assert!(d.cgroup_dirs("default", "orphan").is_empty());
    assert!(d.container_paths("default", "orphan").is_empty(), "{:?}", d.container_paths("default", "orphan"));
    let sockets: Vec<_> =
        std::fs::read_dir(d.state.join("shims")).into_iter().flatten().flatten().map(|e| e.file_name()).collect();
    assert!(sockets.is_empty(), "shim sockets left: {sockets:?}");
    let evs = events.finish();
    let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["exit", "delete"], "{evs:?}");
    assert_eq!(evs[0]["exit"]["code"], 255, "no exit was recorded: unknown exit");
}

/// Sends `sig` to process `pid` (a shim), whatever becomes of it.
fn signal(pid: i32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid), sig);
}

fn shutdown_containers_flag_stops_them(shim: &[&str]) {
    let d = Daemon::start_with(&[shim, &["--shutdown-containers"]].concat());
    d.run_detached("a", &["sh", "-c", "trap 'exit 7' TERM; while true; do sleep 0.05; done"]);
    d.run_detached("b", &["sleep", "1000"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    d.terminate();
    // The containers are gone (their shims stay, holding the exits, until rm).
    assert!(d.cgroup_procs("default", "a").is_empty() && d.cgroup_procs("default", "b").is_empty());
    d.spawn();
    let a: Value = serde_json::from_str(d.berth(&["inspect", "--json", "a"]).ok()).unwrap();
    assert_eq!((a["state"].as_str(), a["exit"]["code"].as_u64()), (Some("stopped"), Some(7)));
    let b: Value = serde_json::from_str(d.berth(&["inspect", "--json", "b"]).ok()).unwrap();
    assert_eq!(b["state"], "stopped");
    d.berth(&["rm", "a", "b"]).ok();
    assert!(d.shim_pids().is_empty());
}

/// containerd#6771: a container exits while the daemon is down.
fn exit_while_daemon_is_down_is_recorded_once(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("brief", &["sh", "-c", "sleep 0.5; exit 9"]);
    d.kill9();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    d.spawn();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let c = loop {
        let c: Value = serde_json::from_str(d.berth(&["inspect", "--json", "brief"]).ok()).unwrap();
        if c["state"] == "stopped" {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "{c}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(c["exit"]["code"], 9);
    assert_eq!(d.berth(&["wait", "brief"]).code, 9);
    d.berth(&["rm", "brief"]).ok();
    assert!(d.shim_pids().is_empty());
}

/// B19: the shim dies while the daemon is down; the restarted daemon cleans
/// up (no process, cgroup or runtime state left) and reports "unknown exit".
fn dead_shim_found_at_startup_is_cleaned_up(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("lost", &["sleep", "1000"]);
    let c: Value = serde_json::from_str(d.berth(&["inspect", "--json", "lost"]).ok()).unwrap();
    let shim = c["shim_pid"].as_i64().unwrap() as i32;
    d.kill9();
    signal(shim, Signal::SIGKILL);
    std::thread::sleep(std::time::Duration::from_millis(300));
    d.spawn();
    let c: Value = serde_json::from_str(d.berth(&["inspect", "--json", "lost"]).ok()).unwrap();
    assert_eq!(c["state"], "stopped", "{c}");
    assert_eq!(c["exit"]["code"], 255);
    assert!(d.cgroup_procs("default", "lost").is_empty(), "leftover processes killed");
    assert!(d.cgroup_dirs("default", "lost").is_empty(), "the cleanup removed the cgroup");
    d.berth(&["rm", "lost"]).ok();
    assert!(d.cgroup_dirs("default", "lost").is_empty());
    assert!(d.container_paths("default", "lost").is_empty());
}

/// A shim killed while its container is created but not started: the
/// container's init, which waits for its start holding the descriptors of
/// the runtime helper that made it, must not keep the shim's listener.
/// Connections to the dead shim are then refused at once; kept, they would
/// queue unanswered and berthd would wait out its timeouts on each one
/// (a stall the chaos test hit) instead of cleaning up.
/// (berth-shim's listener: containerd's shims keep theirs elsewhere.)
#[test]
fn a_killed_shim_of_a_created_container_refuses_connections() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    d.berth(&["create", "--name", "made", &rootfs, "sleep", "1000"]).ok();
    let c = d.inspect("made");
    assert_eq!(c["state"], "created");
    let (shim, init) = (c["shim_pid"].as_i64().unwrap() as i32, c["pid"].as_i64().unwrap());
    let socket = std::fs::read_dir(d.state.join("shims")).unwrap().flatten().map(|e| e.path()).next().unwrap();
    signal(shim, Signal::SIGKILL);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{shim}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(std::time::Instant::now() < deadline, "shim {shim} still alive");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Init, still waiting for its start, is alive at this point.
    assert!(std::path::Path::new(&format!("/proc/{init}")).exists() || d.inspect("made")["state"] == "stopped");
    match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(_) => panic!("a process other than the dead shim keeps its listener {}", socket.display()),
        Err(e) => assert!(
            matches!(e.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound),
            "connect to the dead shim's socket: {e}"
        ),
    }
    d.berth(&["rm", "-f", "made"]).ok();
    assert!(d.cgroup_procs("default", "made").is_empty());
    assert!(d.container_paths("default", "made").is_empty(), "{:?}", d.container_paths("default", "made"));
}

/// A shim that dies while it is asked to start its container fails the
/// start at once, not after the start timeout (30 s), although the init it
/// cloned has not exec'd yet. The shim is stopped before the start so
/// that it dies with the request unanswered.
#[test]
fn a_start_fails_as_soon_as_its_shim_dies() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    d.berth(&["create", "--name", "held", &rootfs, "sleep", "1000"]).ok();
    let shim = d.inspect("held")["shim_pid"].as_i64().unwrap() as i32;
    signal(shim, Signal::SIGSTOP);
    let started = std::time::Instant::now();
    let start = std::thread::scope(|s| {
        let start = s.spawn(|| d.berth(&["start", "held"]));
        std::thread::sleep(std::time::Duration::from_millis(500));
        signal(shim, Signal::SIGKILL);
        start.join().unwrap()
    });
    let took = started.elapsed();
    assert_ne!(start.code, 0, "{start:?}");
    assert!(took < std::time::Duration::from_secs(10), "the start took {took:?}: {start:?}");
    assert!(start.stderr.contains("unavailable"), "{start:?}");
    d.berth(&["rm", "-f", "held"]).ok();
    assert!(d.cgroup_procs("default", "held").is_empty());
    assert!(d.container_paths("default", "held").is_empty(), "{:?}", d.container_paths("default", "held"));
}

berth_testing::on_both_shims!(
    kill9_daemon_keeps_running_containers_and_records,
    container_of_a_killed_shim_is_cleaned_up_with_unknown_exit,
    shutdown_containers_flag_stops_them,
    exit_while_daemon_is_down_is_recorded_once,
    dead_shim_found_at_startup_is_cleaned_up
);
