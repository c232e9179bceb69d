//! berth-shim as containerd's runtime `io.containerd.berth.v1` (SPEC B24,
//! issue 12 item 1): Debian's containerd 1.6 on a private socket runs,
//! execs, pauses, measures, stops and recovers tasks through
//! `containerd-shim-berth-v1`, driven with `ctr`; events reach containerd.
//! Run as root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::registry::{LAYER_TAR, Registry, push_image, tar_of};
use berth_testing::Containerd;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use oci_client::secrets::RegistryAuth;

const RUNTIME: &str = "io.containerd.berth.v1";

/// `ctr events` recording into a file; killed by its pid when dropped.
struct Events {
    child: Child,
    file: PathBuf,
}

impl Events {
    fn record(c: &Containerd, name: &str) -> Events {
        let file = c.dir().join(format!("events-{name}.txt"));
        let out = fs::File::create(&file).expect("events file");
        let child = c.ctr_command(&["events"]).stdout(out).stderr(Stdio::null()).spawn().expect("ctr events");
        // ctr subscribes asynchronously: give it a moment.
        std::thread::sleep(Duration::from_millis(300));
        Events { child, file }
    }

    /// Waits until a line with every one of `parts` arrives; returns it.
    #[track_caller]
    fn wait_for(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = fs::read_to_string(&self.file).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_string();
            }
            assert!(Instant::now() < deadline, "no event with {parts:?} in:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn topics(&self, id: &str) -> Vec<String> {
        let text = fs::read_to_string(&self.file).unwrap_or_default();
        let needle = format!("\"{id}\"");
        text.lines()
            .filter(|l| l.contains(&needle))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")).map(str::to_string))
            .collect()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// The runtime roots (under /run/berth-shim, next to their sockets) of
/// the shims serving `c`.
fn shim_files(c: &Containerd) -> Vec<PathBuf> {
    c.shim_pids()
        .iter()
        .filter_map(|pid| fs::read(format!("/proc/{pid}/cmdline")).ok())
        .flat_map(|cmd| {
            let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            args.windows(2).filter(|w| w[0] == "--runtime-root").map(|w| PathBuf::from(&w[1])).collect::<Vec<_>>()
        })
        .collect()
}

#[track_caller]
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (at most 30 s, then SIGKILLs it and fails) for `child` to exit.
#[track_caller]
fn finish(mut child: Child) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let out = child.wait_with_output().expect("wait");
            panic!("ctr hung; its output: {}", String::from_utf8_lossy(&out.stdout));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

/// The cgroup of a ctr container (containerd's default `/<ns>/<id>`) in
/// the memory hierarchy, where v1 and v2 hosts both have one.
fn memory_cgroup(c: &Containerd, id: &str) -> PathBuf {
    let v1 = PathBuf::from(format!("/sys/fs/cgroup/memory/{}/{id}", c.namespace));
    if Path::new("/sys/fs/cgroup/memory").exists() {
        v1
    } else {
        PathBuf::from(format!("/sys/fs/cgroup/{}/{id}", c.namespace))
    }
}

#[test]
fn attached_run_prints_output_and_returns_the_exit_code() {
    let c = Containerd::start();
    let rootfs = c.rootfs.to_string_lossy().into_owned();
    let script = "echo hi; echo oops >&2; exit 3";
    let out = c.ctr_io(&["run"], &["--rm", "--runtime", RUNTIME, "--rootfs", &rootfs, "att", "/bin/sh", "-c", script]);
    assert_eq!(out.code, 3, "{out:?}\n{}", c.log());
    assert_eq!(out.stdout, "hi\n", "{out:?}");
    assert!(out.stderr.contains("oops"), "{out:?}");
    // --rm: task, container, shim and cgroup are gone.
    assert_eq!(c.ctr(&["container", "ls", "-q"]).stdout.trim(), "");
    wait_until("the shim exits", || c.shim_pids().is_empty());
    assert!(!memory_cgroup(&c, "att").exists());

    // ctr's stdin reaches the process through containerd's FIFO, and its
    // end (CloseIO) ends the process's input.
    let mut cat = c.ctr_io_command(&["run"], &["--rm", "--runtime", RUNTIME, "--rootfs", &rootfs, "cat", "/bin/cat"]);
    let mut cat = cat.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("ctr run");
    let mut keyboard = cat.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut keyboard, b"piped line\n").expect("write stdin");
    drop(keyboard);
    let out = finish(cat);
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stdout).as_ref()), (Some(0), "piped line\n"));

    // containerd's default seccomp profile (ctr --seccomp) filters the
    // task; the shim keeps its compiled program for the next task.
    let script = "grep Seccomp: /proc/self/status; unshare -U true 2>/dev/null && echo UNSHARE-OK; true";
    for id in ["sec1", "sec2"] {
        let args = ["--rm", "--seccomp", "--runtime", RUNTIME, "--rootfs", &rootfs, id, "/bin/sh", "-c", script];
        let out = c.ctr_io(&["run"], &args);
        assert_eq!(out.code, 0, "{out:?}\n{}", c.log());
        assert!(out.stdout.contains("Seccomp:\t2") && !out.stdout.contains("UNSHARE-OK"), "{out:?}");
    }
    let kept = fs::read_dir("/run/berth-shim/seccomp").map_or(0, |d| d.count());
    assert!(kept >= 1, "the program of containerd's profile is kept");
}

#[test]
fn detached_task_execs_pauses_measures_and_is_killed_with_events() {
    let c = Containerd::start();
    let events = Events::record(&c, "detached");
    let rootfs = c.rootfs.to_string_lossy().into_owned();
    let out = c.ctr_io(&["run"], &["-d", "--runtime", RUNTIME, "--rootfs", &rootfs, "det", "/bin/sleep", "1000"]);
    assert_eq!(out.code, 0, "{out:?}\n{}", c.log());
    c.wait_status("det", "RUNNING");
    let (pid, _) = c.task("det").expect("listed");
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1, "one shim per task: {shims:?}");
    let runtime_root = shim_files(&c).pop().expect("shim runtime root");

    let out = c.ctr_io(&["task", "exec"], &["--exec-id", "e1", "det", "/bin/echo", "x"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "x\n"), "{out:?}");

    let ps = c.ctr(&["task", "ps", "det"]);
    assert!(ps.stdout.lines().any(|l| l.split_whitespace().next() == Some(&pid.to_string())), "{ps:?}");

    assert_eq!(c.ctr(&["task", "pause", "det"]).code, 0);
    c.wait_status("det", "PAUSED");
    assert_eq!(c.ctr(&["task", "resume", "det"]).code, 0);
    c.wait_status("det", "RUNNING");

    // ctr decodes the Any itself: only containerd's Metrics types work.
    let metrics = c.ctr(&["task", "metrics", "--format", "json", "det"]);
    assert_eq!(metrics.code, 0, "{metrics:?}");
    let json: serde_json::Value = serde_json::from_str(&metrics.stdout).expect("metrics json");
    let pids = json.pointer("/pids/current").and_then(|v| v.as_u64());
    assert_eq!(pids, Some(1), "{json}");
    let memory = json.pointer("/memory/usage/usage").or_else(|| json.pointer("/memory/usage"));
    assert!(memory.and_then(|v| v.as_u64()).is_some_and(|m| m > 0), "{json}");

    assert_eq!(c.ctr(&["task", "kill", "-s", "KILL", "det"]).code, 0);
    c.wait_status("det", "STOPPED");
    let exit = events.wait_for(&["/tasks/exit", "\"id\":\"det\"", "\"exit_status\":137"]);
    assert!(exit.contains(&format!("\"pid\":{pid}")), "{exit}");
    let out = c.ctr(&["task", "delete", "det"]);
    assert_eq!(out.code, 0, "{out:?}");
    events.wait_for(&["/tasks/delete", "\"container_id\":\"det\""]);
    let topics = events.topics("det");
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(topics.iter().any(|t| t == topic), "{topic} missing from {topics:?}");
    }
    // The exec's exit and init's: one each.
    assert_eq!(topics.iter().filter(|t| *t == "/tasks/exit").count(), 2, "{topics:?}");
    assert_eq!(c.ctr(&["container", "rm", "det"]).code, 0);
    wait_until("the shim exits", || c.shim_pids().is_empty());
    assert!(!runtime_root.exists() && !runtime_root.with_extension("sock").exists(), "{runtime_root:?}");
    assert!(!alive(pid));
}

/// Runs `ctr ARGS` in a terminal of its own (ctr -t wants one), which
/// script(1) gives it, typing `input` after a moment; returns ctr's exit
/// code and output.
fn in_terminal(c: &Containerd, args: &str, input: &str) -> (Option<i32>, String) {
    let line = format!("ctr --address {} --namespace {} {args}", c.address.display(), c.namespace);
    let mut script = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script (bsdutils)");
    // Kept open until ctr is done: script ends the session at our EOF.
    let mut keyboard = script.stdin.take().expect("stdin");
    std::thread::sleep(Duration::from_millis(500));
    std::io::Write::write_all(&mut keyboard, input.as_bytes()).expect("type");
    let out = finish(script);
    drop(keyboard);
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn terminal_tasks_get_a_pty_fed_from_containerd_fifos() {
    let c = Containerd::start();
    let rootfs = c.rootfs.to_string_lossy().into_owned();
    // ctr leaves its FIFOs behind: under the test's directory they go too.
    let fifos = c.dir().join("fifo");
    let fifos = fifos.display();
    let run = format!("run --fifo-dir {fifos} --rm -t --runtime {RUNTIME} --rootfs {rootfs} tty /bin/sh");
    let (code, out) = in_terminal(&c, &run, "tty; echo typed-$((6*7)); exit 5\n");
    assert_eq!(code, Some(5), "{out}\n{}", c.log());
    assert!(out.contains("/dev/pts/0") && out.contains("typed-42"), "{out}");

    let out = c.ctr_io(&["run"], &["-d", "--runtime", RUNTIME, "--rootfs", &rootfs, "ttyx", "/bin/sleep", "1000"]);
    assert_eq!(out.code, 0, "{out:?}");
    let exec = format!("task exec --fifo-dir {fifos} -t --exec-id t1 ttyx /bin/sh");
    let (code, out) = in_terminal(&c, &exec, "tty; echo exec-$((6*7)); exit 4\n");
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("/dev/pts/") && out.contains("exec-42"), "{out}");
}

#[test]
fn oom_kill_is_published_before_the_exit() {
    let c = Containerd::start();
    let events = Events::record(&c, "oom");
    let rootfs = c.rootfs.to_string_lossy().into_owned();
    let hog = "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done";
    let limit = (16 << 20).to_string();
    let args =
        ["--rm", "--memory-limit", &limit, "--runtime", RUNTIME, "--rootfs", &rootfs, "oom", "/bin/sh", "-c", hog];
    let out = c.ctr_io(&["run"], &args);
    assert_eq!(out.code, 137, "{out:?}");
    events.wait_for(&["/tasks/delete", "\"container_id\":\"oom\""]);
    let topics = events.topics("oom");
    let (oom, exit) = (topics.iter().position(|t| t == "/tasks/oom"), topics.iter().position(|t| t == "/tasks/exit"));
    assert!(oom.is_some() && oom < exit, "{topics:?}");
}

#[test]
fn containerd_restart_reconnects_and_sees_a_later_exit() {
    let mut c = Containerd::start();
    let rootfs = c.rootfs.to_string_lossy().into_owned();
    let go = c.rootfs.join("tmp/go-restart");
    let script = "while [ ! -e /tmp/go-restart ]; do sleep 0.05; done; exit 7";
    let out = c.ctr_io(&["run"], &["-d", "--runtime", RUNTIME, "--rootfs", &rootfs, "rst", "/bin/sh", "-c", script]);
    assert_eq!(out.code, 0, "{out:?}");
    c.wait_status("rst", "RUNNING");
    let (pid, _) = c.task("rst").expect("listed");
    let shims = c.shim_pids();

    c.restart_after_kill9();
    c.wait_status("rst", "RUNNING");
    assert_eq!(c.task("rst").map(|t| t.0), Some(pid), "same task after the restart");
    assert_eq!(c.shim_pids(), shims, "the shim survived containerd");

    let events = Events::record(&c, "restart");
    fs::write(&go, "").expect("release the task");
    c.wait_status("rst", "STOPPED");
    events.wait_for(&["/tasks/exit", "\"id\":\"rst\"", "\"exit_status\":7"]);
    let out = c.ctr(&["task", "delete", "rst"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("exit code 7"), "{out:?}");
    assert_eq!(c.ctr(&["container", "rm", "rst"]).code, 0);
    wait_until("the shim exits", || c.shim_pids().is_empty());
}

#[test]
fn a_killed_shim_is_cleaned_up_through_delete() {
    let c = Containerd::start();
    let events = Events::record(&c, "dead");
    let rootfs = c.rootfs.to_string_lossy().into_owned();
    let out = c.ctr_io(&["run"], &["-d", "--runtime", RUNTIME, "--rootfs", &rootfs, "dead", "/bin/sleep", "1000"]);
    assert_eq!(out.code, 0, "{out:?}");
    c.wait_status("dead", "RUNNING");
    let (pid, _) = c.task("dead").expect("listed");
    let runtime_root = shim_files(&c).pop().expect("shim runtime root");
    for shim in c.shim_pids() {
        kill(Pid::from_raw(shim as i32), Signal::SIGKILL).expect("kill shim");
    }
    // containerd runs `containerd-shim-berth-v1 … delete`: the task's
    // processes, runtime state and socket go; the exit is reported.
    wait_until("the task's process is gone", || !alive(pid));
    wait_until("the task is gone", || c.task("dead").is_none());
    events.wait_for(&["/tasks/exit", "\"container_id\":\"dead\"", "\"exit_status\":137"]);
    assert!(!runtime_root.exists() && !runtime_root.with_extension("sock").exists(), "{runtime_root:?}");
    assert_eq!(c.ctr(&["container", "rm", "dead"]).code, 0);
}

#[test]
fn an_image_task_runs_on_its_snapshot_mounts() {
    let registry = Registry::start();
    let c = Containerd::start();
    let layer = tar_of(&[("marker", b"from the image\n")], Some(&c.rootfs));
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [berth_e2e::registry::sha256(&layer)]},
    }))
    .expect("config");
    let reference = format!("{}/berth/shim-box:1", registry.addr);
    push_image(&reference, &RegistryAuth::Anonymous, &[(LAYER_TAR, &layer)], &config);
    let out = c.ctr(&["image", "pull", "--plain-http", &reference]);
    assert_eq!(out.code, 0, "{out:?}");
    // The snapshot comes as mounts in Create: the shim mounts them at
    // <bundle>/rootfs and takes them off at delete.
    let out = c.ctr_io(&["run"], &["--rm", "--runtime", RUNTIME, &reference, "img", "cat", "/marker"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "from the image\n"), "{out:?}\n{}", c.log());
    wait_until("the shim exits", || c.shim_pids().is_empty());
    let mounts: Vec<_> =
        c.leftover_mounts().into_iter().filter(|m| m.contains("io.containerd.runtime.v2.task")).collect();
    assert!(mounts.is_empty(), "{mounts:?}");
}

/// Tasks whose specs name one group (a Kubernetes pod's sandbox id, as the
/// CRI plugin annotates them) share one berth-shim, as with containerd's
/// runc shim: each keeps its own exit and execs, a deleted task leaves the
/// shim to the others, and the shim exits after the last one's delete.
#[test]
fn tasks_of_one_pod_share_one_shim() {
    let c = Containerd::start();
    let events = Events::record(&c, "pod");
    let rootfs = c.rootfs.to_string_lossy().into_owned();
    let pod = "io.kubernetes.cri.sandbox-id=pod-1";
    for (id, script) in [("p1", "sleep 1000"), ("p2", "sleep 1000"), ("p3", "sleep 0.5; exit 5")] {
        let args = ["-d", "--runtime", RUNTIME, "--annotation", pod, "--rootfs", &rootfs, id, "/bin/sh", "-c", script];
        let out = c.ctr_io(&["run"], &args);
        assert_eq!(out.code, 0, "{out:?}\n{}", c.log());
    }
    c.wait_status("p1", "RUNNING");
    c.wait_status("p2", "RUNNING");
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    let runtime_root = shim_files(&c).pop().expect("shim runtime root");
    events.wait_for(&["/tasks/exit", "\"container_id\":\"p3\"", "\"exit_status\":5"]);
    c.wait_status("p3", "STOPPED");
    for id in ["p1", "p2"] {
        let out = c.ctr_io(&["task", "exec"], &["--exec-id", "e1", id, "/bin/echo", id]);
        assert_eq!((out.code, out.stdout.trim()), (0, id), "{out:?}");
    }
    assert_eq!(c.ctr(&["task", "delete", "p3"]).code, 0);
    assert_eq!(c.shim_pids(), shims, "the pod's shim serves on");
    assert_eq!(c.task("p1").map(|t| t.1).as_deref(), Some("RUNNING"));
    for id in ["p1", "p2"] {
        assert_eq!(c.ctr(&["task", "kill", "-s", "KILL", id]).code, 0);
        c.wait_status(id, "STOPPED");
        assert_eq!(c.ctr(&["task", "delete", id]).code, 0);
    }
    for id in ["p1", "p2", "p3"] {
        assert_eq!(c.ctr(&["container", "rm", id]).code, 0);
    }
    wait_until("the pod's shim exits", || c.shim_pids().is_empty());
    assert!(!runtime_root.exists() && !runtime_root.with_extension("sock").exists(), "{runtime_root:?}");
    assert!(c.leftover_mounts().is_empty(), "{:?}", c.leftover_mounts());
}
