//! Bad input gets a typed, one-line error and changes nothing (SPEC B2, B3,
//! B31): no shim, cgroup, state directory or record is left behind.

use berth_testing::Daemon;

/// Asserts that no trace of container `id` is left anywhere.
#[track_caller]
fn assert_no_trace(d: &Daemon, id: &str) {
    assert!(d.shim_pids().is_empty(), "shim left behind");
    assert!(d.cgroup_dirs("default", id).is_empty(), "cgroup left behind");
    assert!(d.container_paths("default", id).is_empty(), "state left: {:?}", d.container_paths("default", id));
    d.berth(&["inspect", id]).fails_with("not found");
    let sockets = std::fs::read_dir(d.state.join("shims")).map(|r| r.count()).unwrap_or(0);
    assert_eq!(sockets, 0, "shim socket left behind");
    assert!(d.leftover_mounts().is_empty(), "mounts left behind: {:?}", d.leftover_mounts());
    assert!(d.network_leftovers().is_empty(), "network left behind: {:?}", d.network_leftovers());
}

#[test]
fn invalid_ids_and_names() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    let long = "a".repeat(200);
    for id in ["../x", "a/b", ".hidden", long.as_str(), "-dash"] {
        let name = format!("--name={id}");
        let e = d.berth(&["create", &name, rootfs, "true"]).fails_with("invalid argument");
        assert!(e.contains("container id"), "{e}");
    }
    d.berth(&["-n", "bad/ns", "create", "--name", "ok", rootfs, "true"]).fails_with("invalid argument");
    for verb in ["inspect", "wait", "start", "rm"] {
        d.berth(&[verb, "../etc"]).fails_with("invalid argument");
    }
    assert_eq!(d.berth(&["ps", "-a", "--all-namespaces", "--json"]).ok().trim(), "[]");
    assert_no_trace(&d, "ok");
}

#[test]
fn bad_rootfs_spec_env_runtime() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    let e = d.berth(&["create", "--name", "r1", "/no/such/rootfs", "true"]).fails_with("invalid argument");
    assert!(e.contains("/no/such/rootfs"), "{e}");
    assert_no_trace(&d, "r1");

    let bundle = d.dir().join("badbundle");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("config.json"), b"{\"ociVersion\": 12").unwrap();
    let e = d.berth(&["create", "--name", "r2", bundle.to_str().unwrap()]).fails_with("invalid argument");
    assert!(e.contains("bad spec"), "{e}");
    assert_no_trace(&d, "r2");

    d.berth(&["create", "--name", "r3", "-e", "NOEQUALS", rootfs, "true"]).fails_with("invalid argument");
    let huge_label = format!("big={}", "x".repeat(70_000));
    d.berth(&["create", "--name", "r3", "-l", &huge_label, rootfs, "true"]).fails_with("invalid argument");
    // Sysctls: only namespaced ones, and net.* only in a network of its own.
    d.berth(&["create", "--name", "r3", "--sysctl", "vm.swappiness=1", rootfs, "true"]).fails_with("invalid argument");
    let host = ["create", "--name", "r3", "--network", "host", "--sysctl", "net.ipv4.ip_forward=1", rootfs, "true"];
    d.berth(&host).fails_with("invalid argument");
    let e = d.berth(&["create", "--name", "r3", "--sysctl", "nokey", rootfs, "true"]).fails_with_any();
    assert!(e.contains("sysctl \"nokey\" is not KEY=VALUE"), "{e}");
    // Each value fits, together they are too many bytes.
    let many: Vec<String> = (0..9).map(|i| format!("l{i}={}", "x".repeat(64 * 1024))).collect();
    let mut args = vec!["create", "--name", "r3"];
    for l in &many {
        args.extend(["-l", l.as_str()]);
    }
    args.extend([rootfs, "true"]);
    let e = d.berth(&args).fails_with("invalid argument");
    assert!(e.contains("at most 524288 bytes in all"), "{e}");
    d.berth(&["create", "--name", "r3", "-w", "relative", rootfs, "true"]).fails_with("invalid argument");
    let e = d.berth(&["create", "--name", "r3", "--runtime", "kata", rootfs, "true"]).fails_with("invalid argument");
    assert!(e.contains("unknown runtime"), "{e}");
    assert_no_trace(&d, "r3");
}

fn runtime_failure_leaves_nothing(runtime: &str, expected: &str) {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    let out = d.berth(&["run", "--runtime", runtime, "--name", "nocmd", rootfs, "/no/such/binary"]);
    assert_eq!(out.code, 125, "{out:?}");
    // The error names the failed step and carries the runtime's own message (B3).
    assert!(out.stderr.contains("runtime create"), "{out:?}");
    assert!(out.stderr.contains(expected), "{out:?}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out:?}");
    assert_no_trace(&d, "nocmd");
    // The id is free again.
    d.berth(&["run", "--rm", "--runtime", runtime, "--name", "nocmd", rootfs, "true"]).ok();
}

#[test]
fn runtime_failure_embedded() {
    runtime_failure_leaves_nothing("embedded", "/no/such/binary");
}

#[test]
fn runtime_failure_runc() {
    runtime_failure_leaves_nothing("runc", "/no/such/binary");
}

#[test]
fn duplicate_id_is_refused_and_original_untouched() {
    let d = Daemon::start();
    d.run_detached("dup", &["sleep", "1000"]);
    let before = d.berth(&["inspect", "--json", "dup"]).ok().to_string();
    let rootfs = d.rootfs.to_str().unwrap();
    d.berth(&["create", "--name", "dup", rootfs, "true"]).fails_with("already exists");
    assert_eq!(d.berth(&["inspect", "--json", "dup"]).ok(), before);
    assert_eq!(d.shim_pids().len(), 1);
    d.berth(&["rm", "-f", "dup"]).ok();
    assert_no_trace(&d, "dup");
}

#[test]
fn unknown_containers_and_signals() {
    let d = Daemon::start();
    for args in
        [&["kill", "ghost"][..], &["wait", "ghost"], &["start", "ghost"], &["logs", "ghost"], &["inspect", "ghost"]]
    {
        d.berth(args).fails_with("not found");
    }
    d.run_detached("sig", &["sleep", "1000"]);
    d.berth(&["kill", "-s", "99", "sig"]).fails_with("invalid argument");
    let out = d.berth(&["kill", "-s", "NOPE", "sig"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("unknown signal"), "{out:?}");
    d.berth(&["rm", "-f", "sig"]).ok();
}

#[test]
fn unreachable_daemon_is_one_clear_line() {
    let d = Daemon::start();
    let out = d.berth(&["--socket", "/nonexistent/berth.sock", "ps"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.starts_with("berth: berthd is not answering at /nonexistent/berth.sock"), "{out:?}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1);
}

/// A bundle whose start takes `secs` seconds: a poststart hook sleeps.
fn slow_start_bundle(d: &Daemon, secs: u32) -> String {
    let bundle = d.dir().join("slow-bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let spec = format!(
        r#"{{"ociVersion":"1.0.2","root":{{"path":"{}"}},
        "process":{{"cwd":"/","args":["sleep","1000"],"user":{{"uid":0,"gid":0}},"env":["PATH=/bin"]}},
        "hooks":{{"poststart":[{{"path":"/bin/sleep","args":["sleep","{secs}"]}}]}},
        "linux":{{"namespaces":[{{"type":"pid"}},{{"type":"mount"}}]}}}}"#,
        d.rootfs.display()
    );
    std::fs::write(bundle.join("config.json"), spec).unwrap();
    bundle.to_string_lossy().into_owned()
}

#[test]
fn start_that_times_out_is_killed_and_reported() {
    let d = Daemon::start_with(&["--start-timeout", "1"]);
    // The start itself takes 3 s (a start that answers before the timer's
    // first tick would pass a 0 s timeout).
    let bundle = slow_start_bundle(&d, 3);
    let out = d.berth(&["run", "-d", "--name", "slow", &bundle]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("deadline exceeded") && out.stderr.contains("was killed"), "{out:?}");
    assert_eq!(d.berth(&["wait", "slow"]).code, 137);
    d.berth(&["rm", "slow"]).ok();
    assert_no_trace(&d, "slow");
}

#[test]
fn a_start_whose_client_hangs_up_is_still_recorded() {
    let d = Daemon::start();
    let bundle = slow_start_bundle(&d, 2);
    d.berth(&["create", "--name", "slow", &bundle]).ok();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let err = rt.block_on(async {
        let mut api = berth_e2e::api(&d.socket).await;
        let mut req = tonic::Request::new(berth_api::v1::ContainerRef { id: "slow".into(), ..Default::default() });
        req.set_timeout(std::time::Duration::from_millis(300));
        api.start(req).await.unwrap_err()
    });
    // The client gives up (tonic says Cancelled, or the server's deadline).
    assert!(matches!(err.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded), "{err:?}");
    // The start goes on in berthd and its end is recorded: the record does
    // not stay `created` behind a running container.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !d.berth(&["inspect", "slow"]).stdout.contains("running") {
        assert!(std::time::Instant::now() < deadline, "the start was never recorded");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    d.berth(&["rm", "-f", "slow"]).ok();
    assert_no_trace(&d, "slow");
}
