//! Restart policies (SPEC B21): which exits bring a container back, the
//! backoff between restarts, user stops, and policies across berthd
//! restarts.

use std::time::Duration;

use berth_testing::Daemon;
use serde_json::Value;

fn run_with_policy(d: &Daemon, id: &str, policy: &str, script: &str) {
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    d.berth(&["run", "-d", "--restart", policy, "--name", id, &rootfs, "sh", "-c", script]).ok();
}

fn events_of(d: &Daemon, id: &str, kind: &str) -> Vec<Value> {
    d.events_since(0).into_iter().filter(|e| e["id"] == id && e["type"] == kind).collect()
}

fn on_failure_restarts_up_to_max_with_doubling_backoff(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    run_with_policy(&d, "flaky", "on-failure:3", "echo run; exit 3");
    let c = d.inspect_until("flaky", |c| c["restart_count"] == 3 && c["state"] == "stopped");
    assert_eq!(c["exit"]["code"], 3);
    assert_eq!(c["restart_policy"], "on-failure:3");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(d.inspect("flaky")["restart_count"], 3, "no fourth restart");
    let exits: Vec<u64> = events_of(&d, "flaky", "exit").iter().map(|e| e["timestamp_ns"].as_u64().unwrap()).collect();
    let restarts = events_of(&d, "flaky", "restart");
    assert_eq!((exits.len(), restarts.len(), events_of(&d, "flaky", "start").len()), (4, 3, 4));
    // Each restart waits its backoff after the exit before it: 100, 200, 400 ms.
    for (i, r) in restarts.iter().enumerate() {
        let waited = Duration::from_nanos(r["timestamp_ns"].as_u64().unwrap() - exits[i]);
        let backoff = Duration::from_millis(100 << i);
        assert!(waited >= backoff && waited < backoff + Duration::from_millis(900), "restart {i}: {waited:?}");
    }
    assert_eq!(d.berth(&["logs", "flaky"]).ok(), "run\nrun\nrun\nrun\n", "logs are kept across restarts");
    d.berth(&["rm", "flaky"]).ok();
    assert!(d.shim_pids().is_empty());
    assert!(d.container_paths("default", "flaky").is_empty());
}

fn on_failure_leaves_a_success_alone_and_no_never_restarts(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    run_with_policy(&d, "fine", "on-failure", "exit 0");
    run_with_policy(&d, "never", "no", "exit 1");
    assert_eq!(d.berth(&["wait", "fine"]).code, 0);
    assert_eq!(d.berth(&["wait", "never"]).code, 1);
    std::thread::sleep(Duration::from_millis(500));
    for id in ["fine", "never"] {
        let c = d.inspect(id);
        assert_eq!((c["state"].as_str(), c["restart_count"].as_u64()), (Some("stopped"), Some(0)), "{c}");
    }
    d.berth(&["rm", "fine", "never"]).ok();
}

fn a_user_stop_is_never_undone_while_berthd_runs(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    run_with_policy(&d, "svc", "always", "sleep 0.2; exit 0");
    d.inspect_until("svc", |c| c["restart_count"].as_u64() >= Some(1) && c["state"] == "running");
    assert_eq!(d.berth(&["stop", "-t", "1", "svc"]).code, 0);
    let count = d.inspect("svc")["restart_count"].clone();
    std::thread::sleep(Duration::from_millis(800));
    let c = d.inspect("svc");
    assert_eq!((c["state"].as_str(), &c["restart_count"]), (Some("stopped"), &count), "{c}");
    // Killing is not stopping: a killed container does come back.
    run_with_policy(&d, "killed", "always", "sleep 1000");
    d.berth(&["kill", "-s", "KILL", "killed"]).ok();
    let c = d.inspect_until("killed", |c| c["restart_count"] == 1 && c["state"] == "running");
    assert_ne!(c["pid"], 0);
    d.berth(&["rm", "-f", "svc", "killed"]).ok();
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.shim_pids().is_empty(), "a removed container is not restarted");
    d.berth(&["inspect", "killed"]).fails_with("not found");
}

fn policies_survive_berthd_restarts_and_user_stops_hold(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    run_with_policy(&d, "always", "always", "sleep 1000");
    run_with_policy(&d, "unless", "unless-stopped", "sleep 1000");
    d.berth(&["stop", "-t", "1", "always", "unless"]).ok();
    // Exits while berthd is down resume the policy when it is back.
    run_with_policy(&d, "crashy", "on-failure:1", "sleep 0.3; exit 2");
    d.kill9();
    std::thread::sleep(Duration::from_millis(700));
    d.spawn();
    let crashy = d.inspect_until("crashy", |c| c["restart_count"] == 1);
    assert_eq!(crashy["restart_policy"], "on-failure:1");
    d.inspect_until("crashy", |c| c["state"] == "stopped" && c["exit"]["code"] == 2);
    // A user stop holds across berthd restarts, for every policy.
    std::thread::sleep(Duration::from_millis(300));
    for id in ["always", "unless"] {
        let c = d.inspect(id);
        assert_eq!((c["state"].as_str(), c["restart_count"].as_u64()), (Some("stopped"), Some(0)), "{c}");
    }
    d.berth(&["rm", "-f", "always", "unless", "crashy"]).ok();
    assert!(d.shim_pids().is_empty());
}

/// A stop that lands between an exit and its restart (in the backoff or
/// while the new shim starts) is final.
fn a_stop_during_a_restart_is_final(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    run_with_policy(&d, "busy", "always", "exit 1");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while events_of(&d, "busy", "exit").is_empty() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    d.berth(&["stop", "-t", "1", "busy"]).ok();
    let count = d.inspect("busy")["restart_count"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let c = d.inspect("busy");
    assert_eq!((c["state"].as_str(), c["restart_count"].as_u64()), (Some("stopped"), Some(count)), "{c}");
    assert_eq!(c["stopped_by_user"], true);
    d.berth(&["rm", "busy"]).ok();
    assert!(d.shim_pids().is_empty());
}

/// `berthd --shutdown-containers` is no user stop: the policies bring the
/// containers back when berthd starts again, and none acts during the
/// shutdown itself.
fn containers_stopped_by_a_daemon_shutdown_come_back_by_policy(shim: &[&str]) {
    let d = Daemon::start_with(&[shim, &["--shutdown-containers"]].concat());
    run_with_policy(&d, "svc", "unless-stopped", "sleep 1000");
    run_with_policy(&d, "plain", "no", "sleep 1000");
    d.terminate();
    assert!(d.cgroup_procs("default", "svc").is_empty(), "stopped at shutdown, not restarted meanwhile");
    d.spawn();
    let svc = d.inspect_until("svc", |c| c["state"] == "running");
    assert_eq!((svc["restart_count"].as_u64(), &svc["stopped_by_user"]), (Some(1), &Value::Bool(false)));
    assert_eq!(d.inspect("plain")["state"], "stopped");
    d.berth(&["rm", "-f", "svc", "plain"]).ok();
    assert!(d.shim_pids().is_empty());
}

/// berthd dies in a restart — after the new shim created the container, or
/// after the restart was recorded but before its start — and the restart
/// completes once (one `restart` event), leaking no shim.
fn a_restart_cut_short_by_a_crash_completes_once(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    for (id, step) in [("a", "restart shim"), ("b", "start")] {
        run_with_policy(&d, id, "on-failure:1", "sleep 0.5; exit 1");
        d.kill9();
        d.spawn_with_env(&[("BERTH_TEST_CRASH_AT", step)]);
        d.wait_serving();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !d.daemon_exited() {
            assert!(std::time::Instant::now() < deadline, "{step}: berthd did not die");
            std::thread::sleep(Duration::from_millis(10));
        }
        d.spawn();
        let c = d.inspect_until(id, |c| c["state"] == "stopped" && c["restart_count"] == 1);
        assert_eq!(c["exit"]["code"], 1, "{step}: {c}");
        assert_eq!(events_of(&d, id, "restart").len(), 1, "{step}");
        assert_eq!(events_of(&d, id, "exit").len(), 2, "{step}");
        assert_eq!(d.shim_pids().len(), 1, "{step}: only the last run's shim");
        if step == "restart shim" {
            assert!(d.log().contains("releasing the shim of a restart cut short"), "{step}: recovery path not taken");
        }
        d.berth(&["rm", id]).ok();
        assert!(d.shim_pids().is_empty(), "{step}");
        assert!(d.container_paths("default", id).is_empty(), "{step}");
    }
}

#[test]
fn bad_policies_are_refused_and_change_nothing() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    for bad in ["sometimes", "on-failure:0", "on-failure:x", "always:1"] {
        let out = d.berth(&["run", "-d", "--restart", bad, "--name", "x", &rootfs, "true"]);
        assert!(out.fails_with("invalid argument").contains("restart policy"), "{out:?}");
    }
    let out = d.berth(&["run", "--rm", "--restart", "always", "--name", "x", &rootfs, "true"]);
    assert!(out.fails_with_any().contains("--rm cannot be combined"), "{out:?}");
    assert_eq!(d.berth(&["ps", "-a", "--json"]).ok().trim(), "[]");
    assert!(d.events_since(0).is_empty());
    assert!(d.shim_pids().is_empty());
}

berth_testing::on_both_shims!(
    on_failure_restarts_up_to_max_with_doubling_backoff,
    on_failure_leaves_a_success_alone_and_no_never_restarts,
    a_user_stop_is_never_undone_while_berthd_runs,
    policies_survive_berthd_restarts_and_user_stops_hold,
    a_stop_during_a_restart_is_final,
    containers_stopped_by_a_daemon_shutdown_come_back_by_policy,
    a_restart_cut_short_by_a_crash_completes_once
);
