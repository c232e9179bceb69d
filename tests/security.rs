//! Default confinement and its opt-outs (issue 9, items 1–4, 7, 8, 12–14):
//! each test runs what an attacker or a careless user would, for both
//! runtimes where a runtime is involved, and asserts it is refused.

use std::time::{Duration, Instant};

use berth_testing::Daemon;

const RUNTIMES: [&str; 2] = ["embedded", "runc"];

/// Runs a shell script in a fresh container and returns its output.
fn sh(d: &Daemon, runtime: &str, flags: &[&str], script: &str) -> String {
    let rootfs = d.rootfs.to_str().unwrap();
    let mut args = vec!["run", "--rm", "--runtime", runtime];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[rootfs, "sh", "-c", script]);
    let out = d.berth(&args);
    assert_eq!(out.code, 0, "{runtime} {flags:?}: {out:?}");
    out.stdout
}

/// The effective capability mask of the container's shell.
fn cap_eff(out: &str) -> u64 {
    let hex = out.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff line").trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// Docker's 14 default capabilities as a mask.
const DOCKER_CAPS: u64 = 0xa80425fb;
const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_SYS_ADMIN: u64 = 1 << 21;
const CAP_CHOWN: u64 = 1;

const PROBE: &str = r#"
mknod /dev/kmsg2 c 1 11 2>/dev/null; echo "<3>berth-test" > /dev/kmsg2 2>/dev/null && echo KMSG-WRITTEN
mknod /dev/l0 b 7 0 2>/dev/null; (exec 3</dev/l0) 2>/dev/null && echo DISK-READ
echo 1 > /sys/fs/cgroup/pids/pids.max 2>/dev/null && echo CGROUP-WRITTEN
echo -1 > /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null && echo CGROUP-WRITTEN
mkdir /sys/fs/cgroup/pids/child 2>/dev/null && echo CGROUP-MKDIR
mkdir /sys/fs/cgroup/systemd/escape 2>/dev/null && echo CGROUP-MKDIR
echo 1 > /proc/sys/vm/drop_caches 2>/dev/null && echo PROC-SYS-WRITTEN
echo h > /proc/sysrq-trigger 2>/dev/null && echo SYSRQ-WRITTEN
test -s /proc/timer_list && echo TIMER-LIST-READ
test -n "$(ls /sys/firmware 2>/dev/null)" && echo FIRMWARE-LISTED
unshare -U -r true 2>/dev/null && echo UNSHARE-OK
unshare -U -r -m mount -t tmpfs none /tmp 2>/dev/null && echo MOUNT-OK
head -c 4 /dev/urandom | wc -c
echo x > /dev/null && echo DEVNULL-OK
grep -E 'CapEff|Seccomp:|NoNewPrivs' /proc/self/status
echo "stdout=$(readlink /proc/1/fd/1) stderr=$(readlink /proc/1/fd/2)"
"#;

const ESCAPES: [&str; 11] = [
    "KMSG-WRITTEN",
    "DISK-READ",
    "CGROUP-WRITTEN",
    "CGROUP-MKDIR",
    "PROC-SYS-WRITTEN",
    "SYSRQ-WRITTEN",
    "TIMER-LIST-READ",
    "FIRMWARE-LISTED",
    "UNSHARE-OK",
    "MOUNT-OK",
    "Seccomp:\t0",
];

#[test]
fn default_confinement_is_at_least_dockers() {
    let d = Daemon::start();
    for rt in RUNTIMES {
        let out = sh(&d, rt, &[], PROBE);
        for escape in ESCAPES {
            assert!(!out.contains(escape), "{rt}: {escape} in {out}");
        }
        assert!(out.contains("DEVNULL-OK") && out.lines().any(|l| l == "4"), "{rt}: standard devices work: {out}");
        assert!(out.contains("Seccomp:\t2"), "{rt}: seccomp filter: {out}");
        assert_eq!(cap_eff(&out), DOCKER_CAPS, "{rt}: {out}");
        // Output goes through pipes to the shim: no host path to read.
        assert!(out.contains("stdout=pipe:[") && out.contains("stderr=pipe:["), "{rt}: {out}");
        assert!(!out.contains(d.dir().to_str().unwrap()), "{rt}: a host path leaked: {out}");
    }
}

#[test]
fn interactive_stdin_is_a_pipe_too() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    let script = "readlink /proc/self/fd/0; cat";
    let out = d.berth_with_input(&["run", "--rm", "-i", rootfs, "sh", "-c", script], "typed\n");
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("pipe:[") && out.stdout.ends_with("typed\n"), "{out:?}");
}

#[test]
fn opt_outs_are_explicit() {
    let d = Daemon::start();
    for rt in RUNTIMES {
        let flags = [
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "no-new-privileges",
            "--cap-add",
            "net_admin",
            "--cap-drop",
            "CAP_CHOWN",
            "--device",
            "/dev/loop0:/dev/myloop:r",
        ];
        // Opening is what the devices cgroup decides: read yes, write no.
        let script = "unshare -U -r true && echo UNSHARE-OK; (exec 3</dev/myloop) && echo DEVICE-READ; \
                      (exec 3>/dev/myloop) 2>/dev/null && echo DEVICE-WRITTEN; \
                      grep -E 'CapEff|Seccomp:|NoNewPrivs' /proc/self/status";
        let out = sh(&d, rt, &flags, script);
        assert!(out.contains("UNSHARE-OK") && out.contains("Seccomp:\t0"), "{rt}: {out}");
        assert!(out.contains("NoNewPrivs:\t1"), "{rt}: {out}");
        assert!(out.contains("DEVICE-READ") && !out.contains("DEVICE-WRITTEN"), "{rt}: device read-only: {out}");
        assert_eq!(cap_eff(&out), (DOCKER_CAPS | CAP_NET_ADMIN) & !CAP_CHOWN, "{rt}: {out}");

        let out = sh(
            &d,
            rt,
            &["--privileged"],
            "mkdir /sys/fs/cgroup/pids/child && echo MKDIR-OK; \
            ls /dev | wc -l; grep -E 'CapEff|Seccomp:' /proc/self/status",
        );
        assert!(out.contains("MKDIR-OK") && out.contains("Seccomp:\t0"), "{rt}: {out}");
        assert_ne!(cap_eff(&out) & CAP_SYS_ADMIN, 0, "{rt}: {out}");
    }
    let rootfs = d.rootfs.to_str().unwrap();
    for bad in [
        vec!["--cap-add", "NOPE"],
        vec!["--device", "/etc/passwd"],
        vec!["--device", "/dev/null:/dev/x:rwx"],
        vec!["--device", "relative"],
    ] {
        let mut args = vec!["create", "--name", "bad"];
        args.extend_from_slice(&bad);
        args.extend_from_slice(&[rootfs, "true"]);
        d.berth(&args).fails_with("invalid argument");
    }
    let profile = d.dir().join("profile.json");
    std::fs::write(&profile, "{not json").unwrap();
    let opt = format!("seccomp={}", profile.display());
    d.berth(&["create", "--name", "bad", "--security-opt", &opt, rootfs, "true"]).fails_with("invalid argument");
    d.berth(&["create", "--name", "bad", "--security-opt", "apparmor=x", rootfs, "true"]).fails_with_any();
    // A bundle's config.json is used as written: no options apply to it.
    let bundle = bundle_with(&d, "b", r#""user":{"uid":0,"gid":0}"#);
    let e = d.berth(&["create", "--name", "bad", "--privileged", bundle.to_str().unwrap()]);
    assert!(e.fails_with("invalid argument").contains("bundle"), "{e:?}");
    assert_eq!(d.berth(&["ps", "-a", "--json"]).ok().trim(), "[]");
}

/// A bundle whose config.json runs `true` with the given process fields.
fn bundle_with(d: &Daemon, name: &str, process_extra: &str) -> std::path::PathBuf {
    let bundle = d.dir().join(name);
    std::fs::create_dir_all(&bundle).unwrap();
    let spec = format!(
        r#"{{"ociVersion":"1.0.2","root":{{"path":"{}"}},
        "process":{{"cwd":"/","args":["true"],{process_extra}}},
        "linux":{{"namespaces":[{{"type":"pid"}},{{"type":"mount"}}]}}}}"#,
        d.rootfs.display()
    );
    std::fs::write(bundle.join("config.json"), spec).unwrap();
    bundle
}

#[test]
fn sub_cgroups_are_listed_and_removed() {
    // The script uses the cgroup v1 pids and freezer controllers.
    if !std::path::Path::new("/sys/fs/cgroup/freezer").is_dir() {
        eprintln!("skipped: no cgroup v1 freezer on this host");
        return;
    }
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    for rt in RUNTIMES {
        let id = format!("sub-{rt}");
        // Privileged: the container may write its cgroup; it makes children,
        // one of them frozen (a frozen process could never be killed).
        let script = "mkdir -p /sys/fs/cgroup/pids/child /sys/fs/cgroup/freezer/child
                      echo $$ > /sys/fs/cgroup/pids/child/cgroup.procs
                      sleep 1000 &
                      echo $! > /sys/fs/cgroup/freezer/child/cgroup.procs
                      echo FROZEN > /sys/fs/cgroup/freezer/child/freezer.state
                      exec sleep 1000";
        d.berth(&["run", "-d", "--name", &id, "--runtime", rt, "--privileged", rootfs, "sh", "-c", script]).ok();
        let deadline = Instant::now() + Duration::from_secs(10);
        let top = loop {
            let top = d.berth(&["top", &id, "--json"]).ok().to_string();
            let v: serde_json::Value = serde_json::from_str(&top).unwrap();
            if v.as_array().unwrap().len() >= 2 || Instant::now() > deadline {
                break v;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(top.as_array().unwrap().len(), 2, "{rt}: top lists the sub-cgroup's process: {top}");
        d.berth(&["rm", "-f", &id]).ok();
        assert!(d.cgroup_dirs("default", &id).is_empty(), "{rt}: cgroups left");
        assert!(d.container_paths("default", &id).is_empty(), "{rt}: state left");
    }
    assert!(d.shim_pids().is_empty(), "shims left");
}

#[test]
fn user_ids_beyond_runcs_range_are_refused() {
    let d = Daemon::start();
    d.run_detached("u", &["sleep", "100"]);
    for user in ["4294967295", "0:4294967295", "2147483648"] {
        let e = d.berth(&["exec", "-u", user, "u", "id", "-u"]).fails_with("invalid argument");
        assert!(e.contains("out of range"), "{e}");
    }
    assert_eq!(d.berth(&["exec", "-u", "2147483647", "u", "id", "-u"]).ok().trim(), "2147483647");
    let bundle = bundle_with(&d, "b", r#""user":{"uid":4294967295,"gid":0}"#);
    let e = d.berth(&["create", "--name", "b", bundle.to_str().unwrap()]).fails_with("invalid argument");
    assert!(e.contains("out of range"), "{e}");
    d.berth(&["rm", "-f", "u"]).ok();
}

#[test]
fn nul_bytes_are_refused_and_wedge_nothing() {
    use berth_api::v1 as pb;
    let d = Daemon::start();
    d.run_detached("n", &["sleep", "100"]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut api = berth_e2e::api(&d.socket).await;
        let started = Instant::now();
        for (args, env, cwd) in
            [(vec!["true"], vec!["A=\0"], ""), (vec!["tr\0ue"], vec![], ""), (vec!["true"], vec![], "/tmp\0")]
        {
            let req = pb::ExecRequest {
                id: "n".into(),
                exec_id: format!("e{}", started.elapsed().as_nanos()),
                args: args.into_iter().map(String::from).collect(),
                env: env.into_iter().map(String::from).collect(),
                cwd: cwd.into(),
                ..Default::default()
            };
            let err = api.exec(req).await.expect_err("NUL must be refused");
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        }
        let create = pb::CreateRequest {
            id: "nul".into(),
            path: d.rootfs.to_string_lossy().into_owned(),
            args: vec!["true".into()],
            labels: [("k".to_string(), "v\0".to_string())].into(),
            ..Default::default()
        };
        let err = api.create(create).await.expect_err("NUL label");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "refusals must be immediate: {:?}", started.elapsed());
    });
    // The container and its shim still serve everything.
    assert_eq!(d.berth(&["exec", "n", "echo", "fine"]).ok().trim(), "fine");
    d.berth(&["stats", "--no-stream", "n"]).ok();
    d.berth(&["rm", "-f", "n"]).ok();
    assert!(d.shim_pids().is_empty());
}

#[test]
fn a_fifo_config_json_blocks_nothing() {
    let d = Daemon::start();
    let bundle = d.dir().join("fifo");
    std::fs::create_dir_all(&bundle).unwrap();
    nix::unistd::mkfifo(&bundle.join("config.json"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let started = Instant::now();
    let e = d.berth(&["run", "-d", "--name", "f", bundle.to_str().unwrap()]).fails_with("invalid argument");
    assert!(e.contains("not a regular file"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    d.berth(&["ps", "-a"]).ok();
    // A malformed spec names where it is wrong.
    std::fs::remove_file(bundle.join("config.json")).unwrap();
    std::fs::write(bundle.join("config.json"), "{\n \"ociVersion\": \"1.0.2\",\n \"root\": 7\n}").unwrap();
    let e = d.berth(&["create", "--name", "f", bundle.to_str().unwrap()]).fails_with("invalid argument");
    assert!(e.contains("line 3"), "{e}");
}

#[test]
fn system_directories_are_not_root_filesystems() {
    let d = Daemon::start();
    let before = std::path::Path::new("/etc/proc").exists();
    for dir in ["/etc", "/", "/usr"] {
        let e = d.berth(&["run", "--rm", "--name", "sys", dir, "true"]).fails_with("invalid argument");
        assert!(e.contains("system directory"), "{e}");
    }
    assert_eq!(std::path::Path::new("/etc/proc").exists(), before, "nothing created in /etc");
}

#[test]
fn errors_say_what_is_wrong() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    d.run_detached("c", &["sleep", "100"]);
    let e = d.berth(&["exec", "-w", "/no/such/dir", "c", "true"]).fails_with("invalid argument");
    assert!(e.contains("/no/such/dir"), "{e}");
    let e = d.berth(&["create", "--name", "s", "--memory-swap", "64m", rootfs, "true"]).fails_with("invalid argument");
    assert!(e.contains("memory"), "{e}");
    if std::process::Command::new("sh").args(["-c", "command -v crun"]).output().is_ok_and(|o| !o.status.success()) {
        let e =
            d.berth(&["create", "--name", "s", "--runtime", "crun", rootfs, "true"]).fails_with("failed precondition");
        assert!(e.contains("not installed"), "{e}");
    }
    // Each exec's start-up sockets are gone once it has started.
    d.berth(&["exec", "c", "true"]).ok();
    let state = d.state.join("runtime/embedded/default/c");
    let left: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tenant-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    d.berth(&["rm", "-f", "c"]).ok();
}

/// Builds a probe (a static C program from tests/fixtures) into the test's
/// rootfs as /bin/NAME; returns its path there.
fn probe(d: &Daemon, name: &str) -> std::path::PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/{name}.c"));
    let bin = d.rootfs.join("bin").join(name);
    let out = std::process::Command::new("gcc")
        .args(["-static", "-O", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("gcc (apt-get install -y gcc libc6-dev)");
    assert!(out.status.success(), "gcc: {}", String::from_utf8_lossy(&out.stderr));
    bin
}

fn clone_probe(d: &Daemon) {
    probe(d, "cloneprobe");
}

/// The default filter lets i386 syscalls through to their rules, and x32
/// ones only where the kernel runs x32: elsewhere an x32 syscall is killed
/// by the filter (SIGSYS, 128 + 31) instead of reaching the kernel's ENOSYS.
#[cfg(target_arch = "x86_64")]
#[test]
fn x32_is_in_the_filter_only_where_the_kernel_runs_it() {
    let d = Daemon::start();
    let host = std::process::Command::new(probe(&d, "archprobe")).arg("x32").output().expect("run archprobe");
    let host_x32 = String::from_utf8_lossy(&host.stdout).contains("answered");
    for rt in RUNTIMES {
        let out = sh(&d, rt, &[], "archprobe i386");
        assert!(out.contains("i386 getpid: answered"), "{rt}: {out}");
        let out = sh(&d, rt, &[], "archprobe x32; echo status $?");
        if host_x32 {
            assert!(out.contains("x32 getpid: answered"), "{rt}: {out}");
        } else {
            assert!(out.contains("status 159"), "{rt}: {out}");
        }
        // Without a filter the kernel answers for itself.
        let out = sh(&d, rt, &["--security-opt", "seccomp=unconfined"], "archprobe x32");
        let expected = if host_x32 { "answered" } else { "Function not implemented" };
        assert!(out.contains(&format!("x32 getpid: {expected}")), "{rt}: {out}");
    }
}

#[test]
fn clone_cannot_make_namespaces_without_sys_admin() {
    let d = Daemon::start();
    clone_probe(&d);
    for rt in RUNTIMES {
        let out = sh(&d, rt, &[], "cloneprobe");
        assert!(out.contains("clone-newuser: Operation not permitted"), "{rt}: {out}");
        let out = sh(&d, rt, &["--security-opt", "seccomp=unconfined"], "cloneprobe");
        assert!(out.contains("CLONE-NEWUSER-OK"), "{rt}: {out}");
        // Execs get the container's filter too.
        let rootfs = d.rootfs.to_str().unwrap();
        let ex = format!("exec-{rt}");
        d.berth(&["run", "-d", "--name", &ex, "--runtime", rt, rootfs, "sleep", "100"]).ok();
        let out = d.berth(&["exec", &ex, "cloneprobe"]).ok().to_string();
        assert!(out.contains("clone-newuser: Operation not permitted"), "{rt} exec: {out}");
        let out = d.berth(&["exec", &ex, "grep", "Seccomp:", "/proc/self/status"]).ok().to_string();
        assert!(out.contains("Seccomp:\t2"), "{rt} exec: {out}");
        d.berth(&["rm", "-f", &ex]).ok();
        // A restart creates from the same bundle: the filter still holds.
        let id = format!("again-{rt}");
        let args = ["run", "-d", "--name", &id, "--runtime", rt, "--restart", "on-failure:1", rootfs];
        d.berth(&[&args[..], &["sh", "-c", "cloneprobe; exit 1"]].concat()).ok();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v: serde_json::Value = serde_json::from_str(d.berth(&["inspect", "--json", &id]).ok()).unwrap();
            if v["restart_count"] == 1 && v["state"] == "stopped" {
                break;
            }
            assert!(Instant::now() < deadline, "{rt}: no restart: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let logs = d.berth(&["logs", &id]).ok().to_string();
        assert_eq!(logs.matches("clone-newuser: Operation not permitted").count(), 2, "{rt}: {logs}");
        d.berth(&["rm", &id]).ok();
    }
}

/// The programs berthd's shims keep: one per seccomp profile.
fn kept_programs(d: &Daemon) -> usize {
    std::fs::read_dir(d.state.join("seccomp")).map_or(0, |e| e.count())
}

/// The default profile is compiled once, by the first create, and every
/// later container and exec loads that program (the embedded runtime's
/// `seccomp.rs`) and is filtered the same; a profile of one's own gets a
/// program of its own, and a missing program is compiled again.
#[test]
fn a_profile_is_compiled_once_and_filters_every_container_and_exec() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    for _ in 0..2 {
        let out = sh(&d, "embedded", &[], PROBE);
        assert!(out.contains("Seccomp:\t2") && !out.contains("UNSHARE-OK") && !out.contains("MOUNT-OK"), "{out}");
        assert_eq!(kept_programs(&d), 1, "one program for the default profile");
    }
    sh(&d, "embedded", &["--security-opt", "seccomp=unconfined"], "true");
    assert_eq!(kept_programs(&d), 1, "none for no profile");
    d.berth(&["run", "-d", "--name", "box", rootfs, "sleep", "1000"]).ok();
    std::fs::remove_dir_all(d.state.join("seccomp")).unwrap();
    let probe = "unshare -U -r true 2>/dev/null && echo UNSHARE-OK; grep Seccomp: /proc/self/status";
    let out = d.berth(&["exec", "box", "sh", "-c", probe]);
    assert!(out.ok().contains("Seccomp:\t2") && !out.stdout.contains("UNSHARE-OK"), "{out:?}");
    assert_eq!(kept_programs(&d), 1, "the exec compiled the profile again and kept it");

    let profile = d.dir().join("no-mkdir.json");
    let json = r#"{"defaultAction":"SCMP_ACT_ALLOW",
        "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#;
    std::fs::write(&profile, json).unwrap();
    let opt = format!("seccomp={}", profile.display());
    let out = sh(&d, "embedded", &["--security-opt", &opt], "mkdir /tmp/x 2>&1; echo done");
    assert!(out.contains("Operation not permitted") && out.contains("done"), "{out}");
    assert_eq!(kept_programs(&d), 2, "a program for the profile of one's own");
    d.berth(&["rm", "-f", "box"]).ok();
}
