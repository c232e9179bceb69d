//! Runtime names and third-party shims (issue 12, SPEC B23, B24): berthd
//! resolves `io.containerd.NAME.vN` to `containerd-shim-NAME-vN` (or takes a
//! shim's absolute path) and drives Debian's containerd-shim-runc-v2. The
//! shared lifecycle, exec, terminal, resources, restart, policy and
//! recovery suites run against it too (`runc_v2::*` in those files).

use std::process::Command;
use std::time::{Duration, Instant};

use berth_testing::{Daemon, bin_path};

fn assert_nothing_of(d: &Daemon, id: &str) {
    d.berth(&["inspect", id]).fails_with("not found");
    assert!(d.shim_pids().is_empty(), "shim left behind");
    assert!(d.cgroup_dirs("default", id).is_empty(), "cgroup left behind");
    assert!(d.container_paths("default", id).is_empty(), "state left: {:?}", d.container_paths("default", id));
    assert!(d.leftover_mounts().is_empty(), "mounts left: {:?}", d.leftover_mounts());
}

#[test]
fn unknown_runtimes_and_missing_shims_are_refused_before_anything_is_created() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    for bad in ["kata", "io.containerd..v2", "../x.v1", "/no/such/../shim", "a b.v1"] {
        let e = d.berth(&["run", "--name", "r", "--runtime", bad, rootfs, "true"]).fails_with("invalid argument");
        assert!(e.contains("unknown runtime"), "{bad}: {e}");
        assert_nothing_of(&d, "r");
    }
    let e = d
        .berth(&["run", "--name", "r", "--runtime", "io.containerd.nosuchshim.v1", rootfs, "true"])
        .fails_with("failed precondition");
    assert!(e.contains("containerd-shim-nosuchshim-v1"), "the missing binary is named: {e}");
    assert_nothing_of(&d, "r");
    let e = d
        .berth(&["run", "--name", "r", "--runtime", "/nonexistent/containerd-shim-x-v1", rootfs, "true"])
        .fails_with("failed precondition");
    assert!(e.contains("/nonexistent/containerd-shim-x-v1"), "{e}");
    assert_nothing_of(&d, "r");
    assert_eq!(d.berth(&["ps", "-a", "--json"]).ok().trim(), "[]");
}

#[test]
fn a_shim_named_by_its_path_runs_and_is_recorded_by_that_name() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    let shim = "/usr/bin/containerd-shim-runc-v2";
    let out = d.berth(&["run", "--name", "p", "--runtime", shim, rootfs, "sh", "-c", "echo via-path; exit 7"]);
    assert_eq!((out.code, out.stdout.trim()), (7, "via-path"), "{out:?}");
    assert_eq!(d.inspect("p")["runtime"], shim);
    d.berth(&["rm", "p"]).ok();
    assert_nothing_of(&d, "p");
}

#[test]
fn a_containerd_shim_serves_the_shim_protocol_from_start_to_shutdown() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    d.berth(&["run", "-d", "--name", "s", "--runtime", "io.containerd.runc.v2", rootfs, "sleep", "1000"]).ok();
    let c = d.inspect("s");
    let shim_pid = c["shim_pid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{shim_pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    assert!(args[0].ends_with("containerd-shim-runc-v2"), "{args:?}");
    let has = |flag: &str, value: &str| args.windows(2).any(|w| w[0] == flag && w[1] == value);
    assert!(has("-namespace", "default") && has("-id", "s"), "{args:?}");
    assert!(has("-address", d.socket.to_str().unwrap()), "{args:?}");
    // Its runc state is under berth's state dir, not containerd's.
    assert!(d.state.join("runtime/io.containerd.runc.v2/default/s").is_dir());
    let stats: serde_json::Value =
        serde_json::from_str(d.berth(&["stats", "--no-stream", "--json", "s"]).ok()).unwrap();
    assert!(stats.to_string().contains("memory"), "containerd's metrics decoded: {stats}");
    d.berth(&["rm", "-f", "s"]).ok();
    // The shim was told to shut down (not killed after a timeout) and
    // removed its socket.
    let deadline = Instant::now() + Duration::from_secs(3);
    while std::path::Path::new(&format!("/proc/{shim_pid}")).exists() {
        assert!(Instant::now() < deadline, "the shim outlived its container");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_nothing_of(&d, "s");
}

#[test]
fn an_unusable_default_runtime_keeps_berthd_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin_path("berthd"))
        .args(["--root", &dir.path().join("root").to_string_lossy()])
        .args(["--state", &dir.path().join("state").to_string_lossy()])
        .args(["--socket", &dir.path().join("b.sock").to_string_lossy()])
        .args(["--cri-socket", &dir.path().join("cri.sock").to_string_lossy()])
        .args(["--cgroup-parent", "/berth-test-default-runtime", "--default-network", "none"])
        .args(["--default-runtime", "io.containerd.nosuchshim.v1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--default-runtime") && err.contains("containerd-shim-nosuchshim-v1"), "{err}");
    assert!(!dir.path().join("b.sock").exists(), "berthd never served");
    // Nor did it leave a mount (its bundle directory's shared bind).
    let left = berth_testing::unmount_under(dir.path());
    assert!(left.is_empty(), "a refused start left mounts: {left:?}");
}

/// A broken or hostile shim: its failure is the create's error, one line,
/// and nothing of the container is left.
#[test]
fn a_shim_that_fails_or_lies_at_start_leaves_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    let cases = [
        ("fails", "echo 'no such thing' >&2; exit 3", "no such thing"),
        ("relative", "printf 'unix://relative.sock'", "unix socket paths only"),
        ("grpc", r#"printf '{"version":3,"address":"unix:///x.sock","protocol":"grpc"}'"#, "ttrpc only"),
        ("nobody", "printf 'unix:///nonexistent/berth/shim.sock'", "connect to shim"),
    ];
    for (name, body, expected) in cases {
        let shim = d.dir().join(format!("containerd-shim-{name}-v1"));
        std::fs::write(&shim, format!("#!/bin/sh\n[ \"$(eval echo \\${{$#}})\" = delete ] && exit 0\n{body}\n"))
            .unwrap();
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        let runtime = shim.to_str().unwrap();
        let out = d.berth(&["run", "--name", "x", "--runtime", runtime, rootfs, "true"]);
        assert_eq!(out.code, 125, "{name}: {out:?}");
        assert!(out.stderr.contains(expected) && out.stderr.lines().count() == 1, "{name}: {}", out.stderr);
        assert_nothing_of(&d, "x");
        assert_eq!(d.berth(&["ps", "-a", "--json"]).ok().trim(), "[]", "{name}");
    }
}
