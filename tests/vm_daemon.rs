//! Containers in VMs through berthd (`--vm`, the runtime `vm`; SPEC B26,
//! docs/vm.md): output from the guest's kernel, exit codes, logs, exec,
//! stats and limits from the guest's cgroups, pause, stop, kill, and what
//! is left after `--rm`, a killed shim and a killed berthd: no VM process,
//! mount or file. Under TCG here (no usable KVM). Run as root after
//! `make vm-assets`.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_testing::Daemon;
use berth_testing::vm::{assert_nothing_left, assets, daemon, qemu, release, vm_mounts, vm_processes};
use serde_json::Value;

fn rootfs(d: &Daemon) -> String {
    d.rootfs.to_string_lossy().into_owned()
}

#[test]
fn run_rm_in_a_vm_prints_the_guests_kernel_and_its_exit_code() {
    let d = daemon();
    let out = d.berth(&["run", "--rm", "--vm", &rootfs(&d), "uname", "-r"]);
    assert_eq!(out.ok().trim(), release(), "{}", d.log());
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(out.stdout.trim(), host.trim());
    let out = d.berth(&["run", "--rm", "--vm", &rootfs(&d), "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!((out.code, out.stdout.as_str(), out.stderr.as_str()), (7, "out\n", "err\n"));
    // The runtime's containerd name does the same.
    let out = d.berth(&["run", "--rm", "--runtime", "io.containerd.berth-vm.v1", &rootfs(&d), "true"]);
    out.ok();
    assert_nothing_left(&d);
    // `run --rm` returns with the exit; the removal follows once its
    // client has gone (docs/design.md, auto-remove).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while d.berth(&["ps", "-a", "--json"]).ok().trim() != "[]" {
        assert!(std::time::Instant::now() < deadline, "a record was left\n{}", d.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_detached_container_in_a_vm_is_managed_like_any_other() {
    let d = daemon();
    let root = rootfs(&d);
    let script = "grep MemTotal /proc/meminfo; nproc; echo ready; exec sleep 1000";
    d.berth(&["run", "-d", "--name", "v", "--vm", "--memory", "200m", "--cpus", "2", &root, "sh", "-c", script]).ok();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.berth(&["logs", "v"]).stdout.contains("ready") {
        assert!(Instant::now() < deadline, "no output: {}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Sized from the limits: 200 MiB plus the guest's own 64, two vCPUs.
    let logs = d.berth(&["logs", "v"]).ok().to_string();
    let kb: u64 = logs.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((200 * 1024..264 * 1024).contains(&kb), "{logs}");
    assert_eq!(logs.lines().nth(1), Some("2"), "{logs}");

    let out = d.berth(&["exec", "v", "sh", "-c", "uname -r; exit 4"]);
    assert_eq!((out.code, out.stdout.trim()), (4, release().as_str()));
    let stats: Value = serde_json::from_str(d.berth(&["stats", "--no-stream", "--json", "v"]).ok()).unwrap();
    let limit = stats[0]["memory"]["limit"].as_u64().or_else(|| stats[0]["memory_limit"].as_u64());
    assert_eq!(limit, Some(200 << 20), "from the guest's cgroup: {stats}");
    d.berth(&["update", "--memory", "100m", "v"]).ok();
    let stats: Value = serde_json::from_str(d.berth(&["stats", "--no-stream", "--json", "v"]).ok()).unwrap();
    let limit = stats[0]["memory"]["limit"].as_u64().or_else(|| stats[0]["memory_limit"].as_u64());
    assert_eq!(limit, Some(100 << 20), "{stats}");
    // The guest's binds live in the VM shim's own mount namespace, where
    // QEMU serves them, and never in the host's.
    let qemu_pid = qemu(&d).expect("QEMU runs");
    let theirs = std::fs::read_to_string(format!("/proc/{qemu_pid}/mountinfo")).unwrap();
    assert!(theirs.lines().any(|l| l.contains(".vm/share/v/rootfs")), "{theirs}");
    assert!(vm_mounts(&d).is_empty(), "{:?}", vm_mounts(&d));
    // top lists the guest's processes, with no host command line for them.
    let top = d.berth(&["top", "v"]).ok().to_string();
    assert_eq!(top.lines().count(), 2, "{top}");

    d.berth(&["pause", "v"]).ok();
    assert!(d.berth(&["ps"]).ok().contains("paused"));
    d.berth(&["resume", "v"]).ok();
    d.berth(&["stop", "-t", "1", "v"]).ok();
    let ps: Value = serde_json::from_str(d.berth(&["ps", "-a", "--json"]).ok()).unwrap();
    assert_eq!((ps[0]["state"].as_str(), ps[0]["exit"]["code"].as_u64()), (Some("stopped"), Some(137)), "{ps}");
    // A stopped container keeps no VM: QEMU went before the exit was told.
    assert_eq!(qemu(&d), None, "{:?}", vm_processes(&d));
    // … and its shim still answers for the stopped container.
    assert_eq!(d.berth(&["wait", "v"]).code, 137);
    assert!(d.berth(&["top", "v"]).code != 0, "a stopped container has no processes");
    // Its create and start events name the accelerator berthd picked.
    let events = d.berth(&["events", "--since", "0", "--no-follow", "--id", "v", "--json"]).ok().to_string();
    let events: Vec<Value> = events.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for kind in ["create", "start"] {
        let ev = events.iter().find(|e| e["type"] == kind).unwrap_or_else(|| panic!("no {kind}: {events:?}"));
        assert_eq!((ev["vm"]["accel"].as_str(), ev["vm"]["cpus"].as_u64()), (Some("tcg"), Some(2)), "{ev}");
    }
    assert!(events.iter().filter(|e| e["type"] == "exit").all(|e| e["vm"].is_null()), "{events:?}");
    d.berth(&["rm", "v"]).ok();
    assert_nothing_left(&d);
}

#[test]
fn a_killed_vm_shim_takes_its_vm_and_the_exit_is_recorded() {
    let d = daemon();
    d.berth(&["run", "-d", "--name", "v", "--vm", &rootfs(&d), "sleep", "1000"]).ok();
    let ps: Value = serde_json::from_str(d.berth(&["ps", "--json"]).ok()).unwrap();
    let shim = ps[0]["shim_pid"].as_u64().unwrap() as i32;
    assert!(qemu(&d).is_some(), "{:?}", vm_processes(&d));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim), nix::sys::signal::SIGKILL).unwrap();
    // The guest's exit never came: the code of an exit nobody saw.
    let out = d.berth(&["wait", "v"]);
    assert_eq!((out.code, out.stdout.trim()), (255, "255"), "{out:?}");
    let ps: Value = serde_json::from_str(d.berth(&["ps", "-a", "--json"]).ok()).unwrap();
    assert_eq!(ps[0]["state"], "stopped", "{ps}");
    d.berth(&["rm", "v"]).ok();
    assert_nothing_left(&d);
}

#[test]
fn a_vm_survives_berthd_being_killed_and_is_recovered() {
    let d = daemon();
    d.berth(&["run", "-d", "--name", "v", "--vm", &rootfs(&d), "sleep", "1000"]).ok();
    let before = vm_processes(&d);
    d.restart_after_kill9();
    let ps: Value = serde_json::from_str(d.berth(&["ps", "--json"]).ok()).unwrap();
    assert_eq!(ps[0]["state"], "running", "{ps}");
    assert_eq!(vm_processes(&d), before, "the same VM, nothing new");
    assert_eq!(d.berth(&["exec", "v", "uname", "-r"]).ok().trim(), release());
    d.berth(&["rm", "-f", "v"]).ok();
    assert_nothing_left(&d);
}

/// A process's stdio stays on the host, streamed over vsock: terminals
/// (with the caller's window size), interactive stdin with and without
/// one, and a caller's log file, which the guest never sees.
#[test]
fn terminals_stdin_and_a_callers_log_file_in_a_vm() {
    let d = daemon();
    let root = rootfs(&d);
    d.berth(&["run", "-d", "--name", "t", "--vm", &root, "sleep", "1000"]).ok();
    let (code, out) = d.in_pty("stty cols 90 rows 20; berth exec -t t sh -c 'tty; stty size; exit 6'", "");
    assert_eq!(code, 6, "{out}\n{}", d.log());
    assert!(out.contains("/dev/pts/") && out.contains("20 90"), "{out}");
    let (code, out) = d.in_pty("berth exec -it t sh", "echo typed-$((6*7))\nexit 3\n");
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("typed-42"), "{out}");
    let out = d.berth_with_input(&["exec", "-i", "t", "cat"], "hello\nworld\n");
    assert_eq!((out.code, out.stdout.as_str()), (0, "hello\nworld\n"), "{out:?}");
    // A resize of the caller's terminal reaches the guest's.
    let script = "stty cols 80 rows 24; berth exec -t t sh -c 'sleep 3; stty size' & sleep 1.5; stty cols 120 rows 40; kill -WINCH $!; wait $!";
    let (_, out) = d.in_pty(script, "");
    assert!(out.contains("40 120"), "{out}");
    d.berth(&["rm", "-f", "t"]).ok();

    let (code, out) = d.in_pty(&format!("berth run --rm -it --vm {root} sh"), "echo in-run-$((2+2))\nexit 4\n");
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("in-run-4"), "{out}");

    let log = d.dir().join("kubelet/c.log");
    let args = ["run", "--name", "l", "--vm", "--log-path", log.to_str().unwrap(), &root];
    let out = d.berth(&[&args[..], &["sh", "-c", "echo to-file; echo err >&2"]].concat());
    assert_eq!(out.code, 0, "{out:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(" stdout F to-file") && text.contains(" stderr F err"), "{text}");
    assert!(d.berth(&["logs", "l"]).ok().contains("to-file"));
    d.berth(&["rm", "l"]).ok();
    assert_nothing_left(&d);
}

#[test]
fn what_a_vm_container_cannot_have_is_refused_with_nothing_made() {
    let d = daemon();
    let root = rootfs(&d);
    let e = d.berth(&["run", "--vm", "--network", "host", &root, "true"]).fails_with("failed precondition");
    assert!(e.contains("network"), "{e}");
    // Another container cannot join a VM's network namespace (its eth0
    // leads into the guest).
    d.berth(&["run", "-d", "--name", "vmnet", "--vm", &root, "sleep", "1000"]).ok();
    let e = d.berth(&["run", "--network", "container:vmnet", &root, "true"]).fails_with("failed precondition");
    assert!(e.contains("VM"), "{e}");
    d.berth(&["rm", "-f", "vmnet"]).ok();
    let e = d.berth(&["run", "--vm", "--runtime", "runc", &root, "true"]).fails_with_any();
    assert!(e.contains("cannot be used with"), "{e}");
    assert_eq!(d.berth(&["ps", "-a", "--json"]).ok().trim(), "[]");

    // No assets: the error names the command that makes them.
    let none = Daemon::start_with(&["--vm-assets", "/nonexistent/vm-assets"]);
    let e = none.berth(&["run", "--vm", &rootfs(&none), "true"]).fails_with("failed precondition");
    assert!(e.contains("make vm-assets"), "{e}");
    assert_eq!(none.berth(&["ps", "-a", "--json"]).ok().trim(), "[]");
}

#[test]
fn stale_or_altered_assets_are_refused_and_roll_back() {
    let d = daemon();
    let copy = d.dir().join("assets");
    std::fs::create_dir(&copy).unwrap();
    for f in ["assets.json", "vmlinux", "initramfs"] {
        std::fs::copy(Path::new(&assets()).join(f), copy.join(f)).unwrap();
    }
    std::fs::write(copy.join("initramfs"), b"not the built one").unwrap();
    let altered = Daemon::start_with(&["--vm-assets", copy.to_str().unwrap()]);
    let e = altered.berth(&["run", "--vm", &rootfs(&altered), "true"]).fails_with("failed precondition");
    assert!(e.contains("does not match its digest") && e.contains("make vm-assets"), "{e}");
    assert_eq!(altered.berth(&["ps", "-a", "--json"]).ok().trim(), "[]");
    assert_nothing_left(&altered);
}

/// `berthd --shutdown-containers` (SPEC B26): the containers stop, and
/// with their exits their VMs power off.
#[test]
fn shutting_berthd_down_with_its_containers_stops_their_vms() {
    let d = Daemon::start_with(&["--vm-assets", &assets(), "--shutdown-containers"]);
    d.berth(&["run", "-d", "--name", "v", "--vm", &rootfs(&d), "sleep", "1000"]).ok();
    assert!(qemu(&d).is_some(), "{:?}", vm_processes(&d));
    d.terminate();
    assert_eq!(qemu(&d), None, "{:?}", vm_processes(&d));
    d.spawn();
    let ps: Value = serde_json::from_str(d.berth(&["ps", "-a", "--json"]).ok()).unwrap();
    assert_eq!(ps[0]["state"], "stopped", "{ps}");
    d.berth(&["rm", "v"]).ok();
    assert_nothing_left(&d);
}
