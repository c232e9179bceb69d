//! Crash safety (SPEC B18–B20, B22): the failures peers are known for,
//! each as a named scenario, plus a berthd killed at every step of create.

use std::time::Duration;

use berth_testing::Daemon;
use serde_json::Value;

fn exits_of<'a>(events: &'a [Value], id: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == "exit" && e["id"] == id && e["exec_id"] == "").collect()
}

/// Sequence numbers run 1, 2, 3 … with no gap or repeat.
fn assert_gapless(events: &[Value]) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "{events:?}");
}

/// Everything berthd made for its containers is gone.
fn assert_no_leftovers(d: &Daemon, ids: &[&str]) {
    assert!(d.shim_pids().is_empty(), "shims left: {:?}", d.shim_pids());
    for id in ids {
        assert!(d.cgroup_dirs("default", id).is_empty(), "cgroup of {id} left");
        assert!(d.container_paths("default", id).is_empty(), "{:?}", d.container_paths("default", id));
    }
    let sockets: Vec<_> =
        std::fs::read_dir(d.state.join("shims")).into_iter().flatten().flatten().map(|e| e.file_name()).collect();
    assert!(sockets.is_empty(), "shim sockets left: {sockets:?}");
}

/// containerd#6771: a container exits while the daemon is down; the shim
/// must not leak and the task must not stay stuck.
fn containerd_6771_exit_during_downtime_leaks_no_shim(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("brief", &["sh", "-c", "sleep 0.3; exit 9"]);
    d.kill9();
    std::thread::sleep(Duration::from_millis(800));
    d.spawn();
    let c = d.inspect_until("brief", |c| c["state"] == "stopped");
    assert_eq!(c["exit"]["code"], 9);
    assert_eq!(exits_of(&d.events_since(0), "brief").len(), 1);
    d.berth(&["rm", "brief"]).ok();
    assert_no_leftovers(&d, &["brief"]);
}

/// An exec that exits while berthd is down is reported once when it comes
/// back, with its code; one whose shim died meanwhile gets its recorded
/// exit or 255 (SPEC B22).
fn exec_exits_during_downtime_are_reported_once(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("host", &["sleep", "1000"]);
    d.run_detached("doomed", &["sleep", "1000"]);
    let mut quick = d.berth_spawn(&["exec", "--exec-id", "quick", "host", "sh", "-c", "sleep 0.5; exit 5"]);
    let mut lost = d.berth_spawn(&["exec", "--exec-id", "lost", "doomed", "sleep", "1000"]);
    // Both execs started (a fixed pause lost the race on a loaded host:
    // an exec berthd never recorded has no exit to report).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let started = |exec: &str| d.events_since(0).iter().any(|e| e["type"] == "exec-started" && e["exec_id"] == exec);
    while !(started("quick") && started("lost")) {
        assert!(std::time::Instant::now() < deadline, "the execs never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let doomed_shim = d.inspect("doomed")["shim_pid"].as_i64().unwrap() as i32;
    d.kill9();
    let _ = (quick.wait(), lost.wait());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(doomed_shim), nix::sys::signal::SIGKILL).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    d.spawn();
    d.inspect_until("doomed", |c| c["state"] == "stopped");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let exec_exits = |id: &str| -> Vec<Value> {
        d.events_since(0).into_iter().filter(|e| e["type"] == "exit" && e["id"] == id && e["exec_id"] != "").collect()
    };
    while exec_exits("host").is_empty() {
        assert!(std::time::Instant::now() < deadline, "the exec's exit was never reported");
        std::thread::sleep(Duration::from_millis(20));
    }
    let host = exec_exits("host");
    assert_eq!(
        (host.len(), &host[0]["exec_id"], &host[0]["exit"]["code"]),
        (1, &Value::from("quick"), &Value::from(5))
    );
    let doomed = exec_exits("doomed");
    assert_eq!(
        (doomed.len(), &doomed[0]["exec_id"], &doomed[0]["exit"]["code"]),
        (1, &Value::from("lost"), &Value::from(255))
    );
    d.restart_after_kill9();
    assert_eq!(exec_exits("host").len(), 1, "not reported again");
    d.berth(&["rm", "-f", "host", "doomed"]).ok();
    assert_no_leftovers(&d, &["host", "doomed"]);
}

/// containerd#10390 and #11579: exit events lost across daemon restarts.
/// Exits before, during and after a daemon outage each appear exactly once
/// in the durable log, whose sequence has no gap.
fn containerd_10390_11579_no_exit_event_lost_or_repeated_across_restarts(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("before", &["sh", "-c", "exit 3"]);
    assert_eq!(d.berth(&["wait", "before"]).code, 3);
    d.run_detached("during", &["sh", "-c", "sleep 0.4; exit 4"]);
    d.run_detached("after", &["sh", "-c", "sleep 2; exit 5"]);
    d.kill9();
    std::thread::sleep(Duration::from_millis(800));
    d.spawn();
    // A subscriber that saw events up to `mark` resumes with no gap.
    let mark = d.events_since(0).last().unwrap()["seq"].as_u64().unwrap();
    assert_eq!(d.berth(&["wait", "after"]).code, 5);
    d.restart_after_kill9();
    let all = d.events_since(0);
    assert_gapless(&all);
    for (id, code) in [("before", 3), ("during", 4), ("after", 5)] {
        let exits = exits_of(&all, id);
        assert_eq!(exits.len(), 1, "{id}: {all:?}");
        assert_eq!(exits[0]["exit"]["code"], code);
    }
    let resumed = d.events_since(mark);
    assert_eq!(resumed.first().unwrap()["seq"].as_u64(), Some(mark + 1));
    assert_eq!(resumed, all[mark as usize..]);
    d.berth(&["rm", "before", "during", "after"]).ok();
    assert_no_leftovers(&d, &["before", "during", "after"]);
}

/// containerd#12600: the daemon restarts in the middle of a stop. The stop
/// can be retried, nothing leaks, and the container is not restarted.
fn containerd_12600_daemon_killed_during_stop(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    let cmd = ["sh", "-c", "trap '' TERM; while true; do sleep 0.05; done"];
    let mut args = vec!["run", "-d", "--restart", "always", "--name", "stubborn", rootfs.as_str()];
    args.extend(cmd);
    d.berth(&args).ok();
    let mut stop = d.berth_spawn(&["stop", "-t", "30", "stubborn"]);
    std::thread::sleep(Duration::from_millis(400));
    d.kill9();
    let _ = stop.wait();
    d.spawn();
    let c = d.inspect("stubborn");
    assert_eq!(c["state"], "running", "SIGTERM is ignored and SIGKILL never came: {c}");
    assert_eq!(c["stopped_by_user"], true, "the stop was recorded before its signal");
    assert_eq!(d.berth(&["stop", "-t", "1", "stubborn"]).ok().trim(), "stubborn");
    std::thread::sleep(Duration::from_millis(500));
    let c = d.inspect("stubborn");
    assert_eq!((c["state"].as_str(), c["exit"]["code"].as_u64()), (Some("stopped"), Some(137)), "{c}");
    assert_eq!(c["restart_count"], 0, "a user stop is never undone by the policy");
    d.berth(&["rm", "stubborn"]).ok();
    assert_no_leftovers(&d, &["stubborn"]);
}

/// containerd#13784: a live shim wrongly classified as leaked on restart.
/// A shim that cannot answer while berthd starts (here: stopped) keeps its
/// container, which is neither killed nor forgotten — whether recovery
/// takes it back from outside (`adopted`) or has to ask it, as it does
/// when a parent cgroup's freezer hides whether the container was paused.
fn unresponsive_live_shim_is_kept(adopted: bool) {
    let d = Daemon::start();
    d.run_detached("alive", &["sh", "-c", "trap 'exit 8' TERM; while true; do sleep 0.05; done"]);
    let c = d.inspect("alive");
    let shim = nix::unistd::Pid::from_raw(c["shim_pid"].as_i64().unwrap() as i32);
    d.kill9();
    nix::sys::signal::kill(shim, nix::sys::signal::SIGSTOP).unwrap();
    d.freeze_namespace_cgroup("default", !adopted);
    d.spawn();
    let during = d.inspect("alive");
    d.freeze_namespace_cgroup("default", false);
    nix::sys::signal::kill(shim, nix::sys::signal::SIGCONT).unwrap();
    assert_eq!(during["state"], "running", "{during}");
    assert_eq!(during["pid"], c["pid"]);
    assert!(!d.cgroup_procs("default", "alive").is_empty(), "the container was not killed");
    assert_eq!(d.shim_pids(), [shim.as_raw() as u32]);
    std::thread::sleep(Duration::from_millis(300));
    d.berth(&["kill", "alive"]).ok();
    assert_eq!(d.berth(&["wait", "alive"]).code, 8, "the shim still serves its container");
    d.berth(&["rm", "alive"]).ok();
    assert_no_leftovers(&d, &["alive"]);
}

#[test]
fn containerd_13784_unresponsive_live_shim_is_not_taken_for_leaked() {
    unresponsive_live_shim_is_kept(true);
}

#[test]
fn containerd_13784_unresponsive_live_shim_asked_at_recovery_is_kept() {
    unresponsive_live_shim_is_kept(false);
}

/// The other half of containerd#13784: a shim that is alive but cannot be
/// reached at all (its socket is gone) is never cleaned up under its feet:
/// its container shows `unknown`, keeps running, and `rm -f` ends it. If
/// that shim dies later, its container is cleaned up and gets its exit.
#[test]
fn unreachable_live_shim_is_unknown_not_killed() {
    let d = Daemon::start();
    d.run_detached("cut-off", &["sleep", "1000"]);
    d.run_detached("lost-later", &["sleep", "1000"]);
    let c = d.inspect("cut-off");
    let later_shim = d.inspect("lost-later")["shim_pid"].as_i64().unwrap() as i32;
    d.kill9();
    for entry in std::fs::read_dir(d.state.join("shims")).unwrap().flatten() {
        std::fs::remove_file(entry.path()).unwrap();
    }
    d.spawn();
    assert_eq!(d.inspect("lost-later")["state"], "unknown");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(later_shim), nix::sys::signal::SIGKILL).unwrap();
    let later = d.inspect_until("lost-later", |c| c["state"] == "stopped");
    assert_eq!(later["exit"]["code"], 255, "{later}");
    assert!(d.cgroup_procs("default", "lost-later").is_empty(), "its processes were killed");
    d.berth(&["rm", "lost-later"]).ok();
    let during = d.inspect("cut-off");
    assert_eq!(during["state"], "unknown", "{during}");
    assert!(d.cgroup_procs("default", "cut-off").contains(&(c["pid"].as_u64().unwrap() as u32)), "still running");
    assert_eq!(d.shim_pids().len(), 1);
    assert!(exits_of(&d.events_since(0), "cut-off").is_empty(), "no exit invented");
    d.berth(&["rm", "cut-off"]).fails_with("failed precondition");
    d.berth(&["rm", "-f", "cut-off"]).ok();
    assert!(d.cgroup_procs("default", "cut-off").is_empty());
    assert_eq!(exits_of(&d.events_since(0), "cut-off").len(), 1);
    std::thread::sleep(Duration::from_millis(100));
    assert_no_leftovers(&d, &["cut-off"]);
}

/// A start that the shim completed after berthd died is recorded (once)
/// when berthd comes back, so the record matches the running container.
fn start_completed_while_daemon_was_down_is_recorded_once(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    d.kill9();
    d.spawn_with_env(&[("BERTH_TEST_CRASH_AT", "start")]);
    d.wait_serving();
    d.berth(&["create", "--name", "late", &rootfs, "sleep", "1000"]).ok();
    assert_ne!(d.berth(&["start", "late"]).code, 0, "berthd died in the middle of the start");
    d.await_crash("start");
    d.spawn();
    let c = d.inspect("late");
    assert_eq!(c["state"], "running", "{c}");
    assert!(d.cgroup_procs("default", "late").contains(&(c["pid"].as_u64().unwrap() as u32)));
    let types: Vec<String> = d.events_since(0).iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(types, ["create", "start"]);
    d.berth(&["rm", "-f", "late"]).ok();
    assert_no_leftovers(&d, &["late"]);
}

/// berthd killed while its shim's runtime is still starting, then pausing,
/// the container (a `runc` that takes a second over each): the shim sees
/// its connection go in the middle of the call and carries the call out
/// all the same, so the berthd that comes back finds the container as it
/// is — running, then paused. ttrpc drops the calls of a connection that
/// goes: before, the shim went on calling the started container created
/// and the frozen one running, and recovery recorded that.
#[test]
fn a_start_or_pause_cut_off_in_the_shim_is_carried_out_and_recorded() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    let bin = d.dir().join("slow-runc");
    std::fs::create_dir(&bin).unwrap();
    let runc = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|p| p.join("runc"))
        .find(|p| p.exists())
        .expect("runc on PATH");
    let marks = d.dir().display().to_string();
    let script = format!(
        "#!/bin/sh\nfor a; do case $a in start|pause) touch {marks}/in-$a; sleep 1;; esac; done\nexec {} \"$@\"\n",
        runc.display()
    );
    std::fs::write(bin.join("runc"), script).unwrap();
    std::fs::set_permissions(bin.join("runc"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let respawn = || {
        d.spawn_with_env(&[("PATH", &path)]);
        d.wait_serving();
    };
    d.kill9();
    respawn();
    d.berth(&["create", "--name", "slow", "--runtime", "runc", &rootfs, "sleep", "1000"]).ok();
    for (op, state) in [("start", "running"), ("pause", "paused")] {
        let mut client = d.berth_spawn(&[op, "slow"]);
        let mark = d.dir().join(format!("in-{op}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !mark.exists() {
            assert!(std::time::Instant::now() < deadline, "the runtime's {op} never began\n{}", d.log());
            std::thread::sleep(Duration::from_millis(10));
        }
        d.kill9();
        let _ = client.wait();
        // The runtime's call ends a second after it began.
        std::thread::sleep(Duration::from_millis(1500));
        respawn();
        let c = d.inspect("slow");
        assert_eq!(c["state"], state, "after a {op} cut off: {c}");
    }
    let c = d.inspect("slow");
    assert!(d.cgroup_procs("default", "slow").contains(&(c["pid"].as_u64().unwrap() as u32)), "{c}");
    let types: Vec<String> = d.events_since(0).iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(types, ["create", "start", "pause"]);
    d.berth(&["rm", "-f", "slow"]).ok();
    assert_no_leftovers(&d, &["slow"]);
}

/// A pause, then a resume, that the shim carried out after berthd died are
/// each recorded (once) when berthd comes back: recovery that adopts a
/// shim without asking it reads the cgroup's freezer, which says so.
fn pause_and_resume_completed_while_daemon_was_down_are_recorded_once(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    d.run_detached("frozen", &["sleep", "1000"]);
    // Taken back with nothing changed, a container is driven as before.
    d.kill9();
    d.spawn();
    d.berth(&["pause", "frozen"]).ok();
    d.kill9();
    d.spawn();
    assert_eq!(d.inspect("frozen")["state"], "paused");
    d.berth(&["resume", "frozen"]).ok();
    assert_eq!(d.inspect("frozen")["state"], "running");
    for (op, state) in [("pause", "paused"), ("resume", "running")] {
        d.kill9();
        d.spawn_with_env(&[("BERTH_TEST_CRASH_AT", op)]);
        d.wait_serving();
        assert_ne!(d.berth(&[op, "frozen"]).code, 0, "berthd died in the middle of the {op}");
        d.await_crash(op);
        d.spawn();
        let c = d.inspect("frozen");
        assert_eq!(c["state"], state, "{c}");
    }
    // Each pause and resume once: the two before the crashes, the two
    // recorded at recovery.
    let types: Vec<String> = d.events_since(0).iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(types, ["create", "start", "pause", "resume", "pause", "resume"]);
    d.berth(&["rm", "-f", "frozen"]).ok();
    assert_no_leftovers(&d, &["frozen"]);
}

/// SPEC B20: berthd killed right after each step of create leaves nothing
/// behind once it is back: no shim, process, mount, cgroup, file or record.
fn daemon_killed_at_each_create_step_leaves_no_trace(shim: &[&str]) {
    let d = Daemon::start_with(shim);
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    for step in ["intent", "logs", "network", "bundle", "shim", "runtime create"] {
        d.kill9();
        d.spawn_with_env(&[("BERTH_TEST_CRASH_AT", step)]);
        d.wait_serving();
        let out = d.berth(&["run", "-d", "--name", "cut", &rootfs, "sleep", "1000"]);
        assert_ne!(out.code, 0, "{step}: create survived its crash point: {out:?}");
        d.await_crash(step);
        d.spawn();
        d.berth(&["inspect", "cut"]).fails_with("not found");
        assert!(d.berth(&["ps", "-a", "--json"]).ok().trim() == "[]", "{step}: a record was left");
        assert!(d.cgroup_procs("default", "cut").is_empty(), "{step}: processes left");
        assert_no_leftovers(&d, &["cut"]);
        assert!(d.leftover_mounts().is_empty(), "{step}: mounts left: {:?}", d.leftover_mounts());
        assert!(d.network_leftovers().is_empty(), "{step}: network left: {:?}", d.network_leftovers());
        // The id is free again.
        d.run_detached("cut", &["true"]);
        assert_eq!(d.berth(&["wait", "cut"]).code, 0);
        d.berth(&["rm", "cut"]).ok();
    }
}

/// `berth events --since` resumes from the log, then follows live events
/// with no gap or duplicate; bad filters are refused (SPEC B22, B31).
#[test]
fn events_since_replays_then_follows() {
    let d = Daemon::start();
    d.run_detached("one", &["true"]);
    assert_eq!(d.berth(&["wait", "one"]).code, 0);
    let logged = d.events_since(0);
    let types: Vec<&str> = logged.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["create", "start", "exit"]);
    assert_gapless(&logged);
    let follower = d.berth_spawn(&["events", "--json", "--since", "1"]);
    std::thread::sleep(Duration::from_millis(300));
    d.berth(&["rm", "one"]).ok();
    std::thread::sleep(Duration::from_millis(300));
    let mut follower = follower;
    let _ = follower.kill();
    let out = follower.wait_with_output().unwrap();
    let seen: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [2, 3, 4], "replayed 2 and 3, then the live delete: {seen:?}");
    assert_eq!(seen[2]["type"], "delete");
    let only_exits = d.berth(&["events", "--json", "--since", "0", "--no-follow", "--type", "exit"]);
    assert_eq!(only_exits.ok().lines().count(), 1);
    d.berth(&["events", "--type", "exited"]).fails_with("invalid argument");
    d.berth(&["events", "--id", "../x"]).fails_with("invalid argument");
}

berth_testing::on_both_shims!(
    containerd_6771_exit_during_downtime_leaks_no_shim,
    exec_exits_during_downtime_are_reported_once,
    containerd_10390_11579_no_exit_event_lost_or_repeated_across_restarts,
    containerd_12600_daemon_killed_during_stop,
    start_completed_while_daemon_was_down_is_recorded_once,
    pause_and_resume_completed_while_daemon_was_down_are_recorded_once,
    daemon_killed_at_each_create_step_leaves_no_trace
);
