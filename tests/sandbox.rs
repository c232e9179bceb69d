//! Sandboxes through berthd (issue 12 item 4; SPEC B1, B19, B20, B31, B34),
//! for real: one berth-shim serving three containers that share a network
//! namespace, each with its own lifecycle, exits and execs; a berthd
//! killed with kill -9 reconnects the one shim for all of them; removal is
//! refused while containers exist; a dead sandbox shim is replaced; a
//! stopped sandbox keeps its records but no shim, network or running
//! container; a berthd killed in the middle of a sandbox create leaves nothing; bad
//! input changes nothing; PID and IPC namespaces are shared as asked (the
//! pod's init dies with its shim).

use std::path::PathBuf;
use std::time::Duration;

use berth_testing::Daemon;
use serde_json::Value;

fn sandbox(d: &Daemon, id: &str) -> Value {
    serde_json::from_str(d.berth(&["sandbox", "inspect", id]).ok()).expect("sandbox JSON")
}

fn run_in(d: &Daemon, sandbox: &str, id: &str, cmd: &[&str]) {
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    let mut args = vec!["run", "-d", "--sandbox", sandbox, "--name", id, rootfs.as_str()];
    args.extend_from_slice(cmd);
    d.berth(&args).ok();
}

/// The network namespace a container's processes are in.
fn netns(d: &Daemon, id: &str) -> String {
    ns_of(d, id, "net")
}

/// The namespace of kind `kind` (net, pid, ipc) a container's processes are in.
fn ns_of(d: &Daemon, id: &str, kind: &str) -> String {
    d.berth(&["exec", id, "readlink", &format!("/proc/self/ns/{kind}")]).ok().trim().to_string()
}

fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap().to_string_lossy().into_owned()
}

fn sandbox_dir(d: &Daemon, id: &str) -> PathBuf {
    d.state.join("sandboxes/default").join(id)
}

/// Nothing of the daemon's sandboxes or containers is left.
#[track_caller]
fn assert_clean(d: &Daemon, ids: &[&str]) {
    assert!(d.shim_pids().is_empty(), "shims left: {:?}", d.shim_pids());
    for id in ids {
        assert!(d.container_paths("default", id).is_empty(), "{:?}", d.container_paths("default", id));
        assert!(d.cgroup_dirs("default", id).is_empty(), "cgroup of {id} left");
    }
    for dir in ["shims", "sandbox-shims", "sandboxes/default", "sandbox-ns"] {
        let left: Vec<_> = std::fs::read_dir(d.state.join(dir)).into_iter().flatten().flatten().collect();
        assert!(left.is_empty(), "{dir} left: {left:?}");
    }
    assert!(d.leftover_mounts().is_empty(), "mounts left: {:?}", d.leftover_mounts());
    assert!(d.network_leftovers().is_empty(), "network left: {:?}", d.network_leftovers());
}

#[test]
fn one_shim_serves_three_containers_across_a_berthd_kill() {
    let d = Daemon::start();
    assert_eq!(d.berth(&["sandbox", "create", "--name", "pod"]).ok().trim(), "pod");
    let pod = sandbox(&d, "pod");
    assert_eq!(pod["state"], "ready");
    let shim = pod["shim_pid"].as_u64().expect("shim pid") as u32;
    assert_ne!(shim, 0);

    run_in(&d, "pod", "a", &["sleep", "1000"]);
    run_in(&d, "pod", "b", &["sleep", "1000"]);
    run_in(&d, "pod", "c", &["sh", "-c", "sleep 0.5; exit 7"]);
    // One shim process for the three: the sandbox's.
    for id in ["a", "b", "c"] {
        let c = d.inspect(id);
        assert_eq!(c["shim_pid"], shim, "{id}: {c}");
        assert_eq!(c["sandbox"], "pod", "{id}: {c}");
    }
    assert_eq!(d.shim_pids(), [shim]);
    assert_eq!(sandbox(&d, "pod")["containers"].as_array().map(Vec::len), Some(3));

    // c exits on its own; a and b keep running.
    assert_eq!(d.berth(&["wait", "c"]).code, 7);
    assert_eq!(d.inspect("a")["state"], "running");
    assert_eq!(d.inspect("b")["state"], "running");
    d.berth(&["exec", "c", "true"]).fails_with("failed precondition");
    // Execs in each running container; they share the sandbox's network.
    assert_eq!(d.berth(&["exec", "a", "echo", "in-a"]).ok().trim(), "in-a");
    assert_eq!(d.berth(&["exec", "b", "sh", "-c", "exit 3"]).code, 3);
    assert_eq!(netns(&d, "a"), netns(&d, "b"));
    assert_ne!(netns(&d, "a"), std::fs::read_link("/proc/self/ns/net").unwrap().to_string_lossy());

    // Removal is refused while containers exist, and changes nothing.
    let refused = d.berth(&["sandbox", "rm", "pod"]).fails_with("failed precondition");
    assert!(refused.contains("3 container"), "{refused}");
    assert_eq!(sandbox(&d, "pod")["state"], "ready");
    assert_eq!(d.shim_pids(), [shim]);

    // berthd dies; the containers and their one shim do not. On restart
    // the shim is reconnected once for all of them.
    d.kill9();
    d.spawn();
    assert_eq!(sandbox(&d, "pod")["state"], "ready");
    assert_eq!(d.inspect("a")["state"], "running");
    assert_eq!(d.inspect("b")["state"], "running");
    assert_eq!(d.inspect("c")["exit"]["code"], 7);
    assert_eq!(d.shim_pids(), [shim]);
    assert_eq!(d.berth(&["exec", "a", "echo", "again"]).ok().trim(), "again");
    d.berth(&["kill", "--signal", "KILL", "b"]).ok();
    assert_eq!(d.berth(&["wait", "b"]).code, 137);
    assert_eq!(d.inspect("a")["state"], "running", "b's exit must not touch a");

    // A deleted container leaves the shim to the others.
    d.berth(&["rm", "b", "c"]).ok();
    assert_eq!(d.shim_pids(), [shim]);
    assert_eq!(d.berth(&["exec", "a", "echo", "still"]).ok().trim(), "still");
    d.berth(&["sandbox", "rm", "pod"]).fails_with("failed precondition");
    d.berth(&["rm", "-f", "a"]).ok();
    assert_eq!(d.berth(&["sandbox", "rm", "pod"]).ok().trim(), "pod");
    d.berth(&["sandbox", "inspect", "pod"]).fails_with("not found");
    assert_clean(&d, &["a", "b", "c"]);
}

#[test]
fn a_dead_sandbox_shim_is_replaced_for_the_next_container() {
    let d = Daemon::start();
    d.berth(&["sandbox", "create", "--name", "pod"]).ok();
    run_in(&d, "pod", "a", &["sleep", "1000"]);
    let shim = sandbox(&d, "pod")["shim_pid"].as_u64().unwrap() as i32;
    // The sandbox's shim is this test's own (its daemon started it).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim), nix::sys::signal::SIGKILL).unwrap();
    let a = d.inspect_until("a", |c| c["state"] == "stopped");
    assert_eq!(a["exit"]["code"], 255, "the shim died before recording an exit: {a}");
    assert!(d.cgroup_procs("default", "a").is_empty(), "a's processes outlived the shim");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sandbox(&d, "pod")["state"] != "not-ready" {
        assert!(std::time::Instant::now() < deadline, "sandbox not marked not-ready: {}", sandbox(&d, "pod"));
        std::thread::sleep(Duration::from_millis(20));
    }
    // The next container brings a new shim, and the sandbox is ready again.
    run_in(&d, "pod", "b", &["sleep", "1000"]);
    let pod = sandbox(&d, "pod");
    assert_eq!(pod["state"], "ready");
    assert_ne!(pod["shim_pid"], shim);
    assert_eq!(d.inspect("b")["shim_pid"], pod["shim_pid"]);
    assert_eq!(d.berth(&["exec", "b", "echo", "ok"]).ok().trim(), "ok");
    d.berth(&["rm", "-f", "a", "b"]).ok();
    d.berth(&["sandbox", "rm", "pod"]).ok();
    assert_clean(&d, &["a", "b"]);
}

#[test]
fn a_stopped_sandbox_keeps_its_records_and_takes_no_container() {
    let d = Daemon::start();
    d.berth(&["sandbox", "create", "--name", "pod"]).ok();
    run_in(&d, "pod", "a", &["sleep", "1000"]);
    // A shell that exits on the stop signal, and one that ignores it.
    run_in(&d, "pod", "b", &["sh", "-c", "trap 'exit 9' TERM; while :; do sleep 0.1; done"]);
    let shim = sandbox(&d, "pod")["shim_pid"].as_u64().unwrap() as u32;
    assert_eq!(d.berth(&["sandbox", "stop", "-t", "1", "pod"]).ok().trim(), "pod");
    let pod = sandbox(&d, "pod");
    assert_eq!(pod["state"], "stopped", "{pod}");
    assert_eq!(pod["containers"].as_array().map(Vec::len), Some(2), "{pod}");
    // sleep as pid 1 ignores SIGTERM: killed after the grace period.
    assert_eq!(d.inspect("a")["exit"]["code"], 137);
    assert_eq!(d.inspect("b")["exit"]["code"], 9);
    assert!(!d.shim_pids().contains(&shim), "the sandbox's shim outlived its stop");
    assert!(d.cgroup_procs("default", "a").is_empty());
    // Nothing joins a stopped sandbox; stopping again is fine.
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    let e =
        d.berth(&["run", "-d", "--sandbox", "pod", "--name", "c", &rootfs, "true"]).fails_with("failed precondition");
    assert!(e.contains("cannot add a container to a sandbox that is stopped"), "{e}");
    assert_eq!(d.berth(&["sandbox", "stop", "pod"]).ok().trim(), "pod");
    let e = d.berth(&["sandbox", "rm", "pod"]).fails_with("failed precondition");
    assert!(e.contains("still holds 2 container(s)"), "{e}");
    d.berth(&["rm", "a", "b"]).ok();
    d.berth(&["sandbox", "rm", "pod"]).ok();
    d.berth(&["sandbox", "stop", "pod"]).fails_with("not found");
    assert_clean(&d, &["a", "b", "c"]);
}

#[test]
fn berthd_killed_during_sandbox_create_leaves_nothing() {
    let d = Daemon::start();
    for step in ["sandbox record", "sandbox network", "sandbox shim"] {
        d.kill9();
        d.spawn_with_env(&[("BERTH_TEST_CRASH_AT", step)]);
        d.wait_serving();
        let out = d.berth(&["sandbox", "create", "--name", "cut"]);
        assert_ne!(out.code, 0, "{step}: create survived its crash point: {out:?}");
        d.await_crash(step);
        d.spawn();
        d.berth(&["sandbox", "inspect", "cut"]).fails_with("not found");
        assert_eq!(d.berth(&["sandbox", "ls", "--json"]).ok().trim(), "[]", "{step}");
        assert!(!sandbox_dir(&d, "cut").exists(), "{step}: sandbox dir left");
        assert_clean(&d, &[]);
        // The id is free again.
        d.berth(&["sandbox", "create", "--name", "cut"]).ok();
        d.berth(&["sandbox", "rm", "cut"]).ok();
    }
}

/// A berthd killed once the removal is recorded finishes it at startup: the
/// shim, network and files go, and the id is free.
#[test]
fn berthd_killed_during_sandbox_removal_finishes_it() {
    let d = Daemon::start();
    d.berth(&["sandbox", "create", "--name", "gone"]).ok();
    d.kill9();
    d.spawn_with_env(&[("BERTH_TEST_CRASH_AT", "sandbox removing")]);
    d.wait_serving();
    assert_ne!(d.berth(&["sandbox", "rm", "gone"]).code, 0, "the removal survived its crash point");
    d.await_crash("sandbox removing");
    d.spawn();
    d.berth(&["sandbox", "inspect", "gone"]).fails_with("not found");
    assert_clean(&d, &[]);
    d.berth(&["sandbox", "create", "--name", "gone"]).ok();
    d.berth(&["sandbox", "rm", "gone"]).ok();
}

#[test]
fn bad_sandbox_input_changes_nothing() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "-d", "--name", "x"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[rootfs.as_str(), "true"]);
        d.berth(&args)
    };
    run(&["--sandbox", "nosuch"]).fails_with("not found");
    run(&["--sandbox", "../etc"]).fails_with("invalid argument");
    d.berth(&["sandbox", "create", "--name", "pod"]).ok();
    let shim = sandbox(&d, "pod")["shim_pid"].clone();
    d.berth(&["sandbox", "create", "--name", "pod"]).fails_with("already exists");
    d.berth(&["sandbox", "create", "--name", "a/b"]).fails_with("invalid argument");
    d.berth(&["sandbox", "create", "--runtime", "io.containerd.runc.v2"]).fails_with("invalid argument");
    d.berth(&["sandbox", "create", "--runtime", "nosuch"]).fails_with("invalid argument");
    d.berth(&["sandbox", "create", "--network", "container:x"]).fails_with("invalid argument");
    d.berth(&["sandbox", "create", "--network", "nosuch-net"]).fails_with_any();
    d.berth(&["sandbox", "create", "--network", "none", "-p", "8080:80"]).fails_with("invalid argument");
    d.berth(&["sandbox", "create", "-l", "novalue"]).fails_with_any();
    run(&["--sandbox", "pod", "--runtime", "runc"]).fails_with("invalid argument");
    run(&["--sandbox", "pod", "--network", "host"]).fails_with("invalid argument");
    run(&["--sandbox", "pod", "-p", "8080:80"]).fails_with("invalid argument");
    // A bundle's config.json is used as written: it cannot join.
    let bundle = d.dir().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), "{}").unwrap();
    let bundle = bundle.to_string_lossy().into_owned();
    d.berth(&["run", "-d", "--sandbox", "pod", "--name", "x", &bundle]).fails_with("invalid argument");
    d.berth(&["sandbox", "rm", "nosuch"]).fails_with("not found");
    d.berth(&["sandbox", "inspect", "nosuch"]).fails_with("not found");
    // Nothing was made by any of them.
    assert_eq!(d.berth(&["ps", "-a", "--json"]).ok().trim(), "[]");
    let all: Value = serde_json::from_str(d.berth(&["sandbox", "ls", "--json"]).ok()).unwrap();
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
    assert_eq!(all[0]["id"], "pod");
    assert_eq!(all[0]["shim_pid"], shim);
    assert_eq!(d.shim_pids().len(), 1);
    assert!(d.container_paths("default", "x").is_empty());
    d.berth(&["sandbox", "rm", "pod"]).ok();
    assert_clean(&d, &["x"]);
}

/// The children of process `pid`.
fn children(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| text.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<_>>())
        .collect()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

#[test]
fn a_sandbox_shares_its_pid_and_ipc_namespaces_as_asked() {
    let d = Daemon::start();
    d.berth(&["sandbox", "create", "--name", "pod", "--pid", "pod"]).ok();
    let pod = sandbox(&d, "pod");
    assert_eq!((pod["pid"].as_str(), pod["ipc"].as_str()), (Some("pod"), Some("pod")), "{pod}");
    run_in(&d, "pod", "a", &["sleep", "1000"]);
    run_in(&d, "pod", "b", &["sleep", "2000"]);
    // One PID namespace whose PID 1 is the pod's init, not a container.
    let ps = d.berth(&["exec", "b", "ps", "-o", "pid,args"]).ok().to_string();
    let lines: Vec<&str> = ps.lines().map(str::trim).collect();
    assert!(lines.contains(&"1 berth-pod-init"), "{ps}");
    assert!(lines.iter().any(|l| l.ends_with("sleep 1000")) && lines.iter().any(|l| l.ends_with("sleep 2000")), "{ps}");
    for kind in ["pid", "ipc"] {
        assert_eq!(ns_of(&d, "a", kind), ns_of(&d, "b", kind), "{kind}");
        assert_ne!(ns_of(&d, "a", kind), host_ns(kind), "{kind}");
    }
    // An orphan is re-parented to the pod's init, which reaps it.
    d.berth(&["exec", "a", "sh", "-c", "sleep 0.2 & exit 0"]).ok();
    std::thread::sleep(Duration::from_millis(600));
    let ps = d.berth(&["exec", "a", "ps", "-o", "stat,args"]).ok().to_string();
    assert!(!ps.lines().any(|l| l.trim_start().starts_with('Z')), "a zombie was left: {ps}");

    // The pod's init is the shim's child; killing the shim ends it and with
    // it every process of the pod.
    let shim = sandbox(&d, "pod")["shim_pid"].as_u64().unwrap() as u32;
    let init: Vec<u32> = children(shim).into_iter().filter(|p| comm(*p) == "berth-pod-init").collect();
    assert_eq!(init.len(), 1, "children of the shim: {:?}", children(shim));
    let old_pid_ns = ns_of(&d, "a", "pid");
    // The sandbox's shim is this test's own (its daemon started it).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim as i32), nix::sys::signal::SIGKILL).unwrap();
    for id in ["a", "b"] {
        assert_eq!(d.inspect_until(id, |c| c["state"] == "stopped")["exit"]["code"], 255);
        assert!(d.cgroup_procs("default", id).is_empty(), "{id}'s processes outlived the shim");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while comm(init[0]) == "berth-pod-init" {
        assert!(std::time::Instant::now() < deadline, "the pod's init outlived its shim");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The next container brings a new shim, with a new PID namespace.
    run_in(&d, "pod", "c", &["sleep", "1000"]);
    assert_ne!(ns_of(&d, "c", "pid"), old_pid_ns);
    let ps = d.berth(&["exec", "c", "ps", "-o", "pid,args"]).ok().to_string();
    assert!(ps.lines().any(|l| l.trim() == "1 berth-pod-init"), "{ps}");
    d.berth(&["rm", "-f", "a", "b", "c"]).ok();
    d.berth(&["sandbox", "rm", "pod"]).ok();

    // The host's namespaces, and a container of its own in them too.
    d.berth(&["sandbox", "create", "--name", "host", "--pid", "host", "--ipc", "host"]).ok();
    run_in(&d, "host", "h", &["sleep", "1000"]);
    for kind in ["pid", "ipc"] {
        assert_eq!(ns_of(&d, "h", kind), host_ns(kind), "{kind}");
    }
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    let e =
        d.berth(&["run", "--rm", "--sandbox", "host", "--pid", "host", &rootfs, "true"]).fails_with("invalid argument");
    assert!(e.contains("give --pid and --ipc to `berth sandbox create`"), "{e}");
    let lone = d
        .berth(&["run", "--rm", "--pid", "host", "--ipc", "host", &rootfs, "readlink", "/proc/self/ns/pid"])
        .ok()
        .to_string();
    assert_eq!(lone.trim(), host_ns("pid"));
    d.berth(&["run", "--rm", "--pid", "pod", &rootfs, "true"]).fails_with("invalid argument");
    d.berth(&["sandbox", "create", "--name", "bad", "--pid", "shared"]).fails_with("invalid argument");
    d.berth(&["sandbox", "inspect", "bad"]).fails_with("not found");
    d.berth(&["rm", "-f", "h"]).ok();
    d.berth(&["sandbox", "rm", "host"]).ok();
    assert_clean(&d, &["a", "b", "c", "h"]);
}
