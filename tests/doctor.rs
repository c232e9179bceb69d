//! `berth doctor` (issue 17 item 2): every kind of leftover a crash can
//! leave is planted for real (a shim serving no record, processes in a
//! container cgroup with no record, a rootfs mount, a namespace pin, a
//! bundle, log and runtime state directory, a shim socket); doctor finds
//! each with its explanation and exit 1, `--fix` repairs them without
//! touching a running container, and doctor then reports healthy (exit 0).
//! With berthd down it could not check (exit 2).

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use berth_testing::{Daemon, bin_path};

/// Unmounts what the test mounted, whatever happens.
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for m in &self.0 {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").starts_with(" Z"))
}

fn doctor(d: &Daemon, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["doctor", "--json"];
    all.extend_from_slice(args);
    let out = d.berth(&all);
    let v = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    (out.code, v)
}

/// A berth-shim serving `ns/id`, as berthd would start it, with no record.
fn ghost_shim(d: &Daemon, socket: &Path) -> std::process::Child {
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    let fd = listener.as_raw_fd();
    let root = d.state.join("runtime/embedded/default");
    let mut cmd = Command::new(bin_path("berth-shim"));
    cmd.args(["--namespace", "default", "--id", "ghost", "--runtime", "embedded", "--runtime-root"])
        .arg(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid and dup2 only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            // dup2 onto itself keeps close-on-exec: clear it either way.
            if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

#[test]
fn doctor_finds_and_fixes_every_kind_of_leftover() {
    let d = Daemon::start();
    d.run_detached("keep", &["sleep", "600"]);
    let (code, v) = doctor(&d, &[]);
    assert_eq!((code, v["healthy"].as_bool()), (0, Some(true)), "{v}");
    for check in ["store", "runtime embedded", "cgroup layout", "cgroup favordynmods", "disk", "state filesystem"] {
        assert!(v["checks"].as_array().unwrap().iter().any(|c| c["name"] == check), "{check}: {v}");
    }

    // What a crash can leave: a shim and its socket,
    let mut shim = ghost_shim(&d, &d.state.join("shims/ghost.sock"));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(alive(shim.id()), "the planted shim serves");
    // a process in a container cgroup whose container is gone,
    let h = berth_cgroups::Hierarchies::detect().unwrap();
    let cgroup = format!("{}/default/ghost", d.cgroup_parent.trim_start_matches('/'));
    let mut sleeper = Command::new("sleep").arg("600").spawn().unwrap();
    for dir in h.memory_dirs(&cgroup).into_iter().chain(h.v1_dir("pids", &cgroup)) {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
    }
    // a network attachment (namespace pin and cache) no container owns,
    let nets = berth_network::Networks::new(berth_network::Config {
        bin_dirs: vec!["/usr/lib/cni".into()],
        conf_dir: d.dir().join("no-cni-conf"),
        root: d.root.clone(),
        state: d.state.clone(),
        default_bridge: "berth0".into(),
        default_subnet: "10.87.0.0/16".into(),
        plugin_timeout: std::time::Duration::from_secs(10),
    })
    .unwrap();
    let key = berth_network::AttachKey { namespace: "default".into(), id: "ghostnet".into() };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let req = berth_network::AttachRequest { key: key.clone(), network: None, ports: &[] };
    let attached = rt.block_on(nets.attach(req)).unwrap();
    assert!(Path::new(&attached.netns).exists());
    // a rootfs mount and a network namespace pin,
    let rootfs = d.state.join("bundles/default/ghost2/rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let pin = d.state.join("netns/ghost");
    std::fs::create_dir_all(pin.parent().unwrap()).unwrap();
    std::fs::write(&pin, "").unwrap();
    let mounts = Mounts(vec![rootfs.clone(), pin.clone()]);
    nix::mount::mount(Some("tmpfs"), &rootfs, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap();
    let ns = format!("/proc/{}/ns/net", sleeper.id());
    nix::mount::mount(Some(ns.as_str()), &pin, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>).unwrap();
    // a cgroup no file of this berthd's names (another berthd's, perhaps),
    let foreign = format!("{}/default/foreign", d.cgroup_parent.trim_start_matches('/'));
    let mut stranger = Command::new("sleep").arg("600").spawn().unwrap();
    for dir in h.v1_dir("pids", &foreign).into_iter().chain(h.memory_dirs(&foreign)) {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), stranger.id().to_string()).unwrap();
    }
    // and the directories of a container with no record.
    let dirs = [
        d.state.join("bundles/default/ghost"),
        d.root.join("logs/default/ghost"),
        d.state.join("runtime/embedded/default/ghost"),
    ];
    for dir in &dirs {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("leftover"), "x").unwrap();
    }

    let (code, v) = doctor(&d, &[]);
    assert_eq!(code, 1, "{v}");
    let findings = v["findings"].as_array().unwrap().clone();
    for kind in ["shim", "cgroup", "mount", "netns", "network", "bundle", "logs", "runtime-state", "socket"] {
        let f = findings.iter().find(|f| f["kind"] == kind).unwrap_or_else(|| panic!("no {kind} finding: {v}"));
        assert!(!f["explanation"].as_str().unwrap().is_empty() && !f["fix"].as_str().unwrap().is_empty(), "{f}");
        assert_eq!(f["fixed"], false);
    }
    let cg = findings.iter().find(|f| f["kind"] == "cgroup").unwrap();
    assert!(cg["explanation"].as_str().unwrap().contains("1 process(es)"), "{cg}");
    assert!(!findings.iter().any(|f| f["subject"].as_str().unwrap().contains("keep")), "{v}");
    // Only looking changes nothing.
    assert!(alive(shim.id()) && alive(sleeper.id()) && rootfs.exists() && dirs.iter().all(|d| d.exists()));
    // Text for people, the same exit code.
    let text = d.berth(&["doctor"]);
    assert_eq!(text.code, 1, "{text:?}");
    assert!(text.stdout.contains("berth doctor --fix"), "{text:?}");

    let f = findings.iter().find(|f| f["subject"].as_str().unwrap().ends_with("/default/foreign")).unwrap();
    assert_eq!((f["kind"].as_str(), f["manual"].as_bool()), (Some("cgroup"), Some(true)), "{f}");

    let (code, v) = doctor(&d, &["--fix"]);
    assert_eq!(code, 1, "the foreign cgroup is left to an operator: {v}");
    let all = v["findings"].as_array().unwrap();
    let (left, fixed): (Vec<_>, Vec<_>) = all.iter().partition(|f| f["manual"] == true);
    assert!(fixed.len() >= 10 && fixed.iter().all(|f| f["fixed"] == true), "{v}");
    assert!(!Path::new(&attached.netns).exists() && nets.attached().unwrap().is_empty(), "the attachment is released");
    assert_eq!(left.len(), 1, "{v}");
    assert!(alive(stranger.id()), "nothing berthd cannot prove its own is killed");
    stranger.kill().unwrap();
    let _ = stranger.wait();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !h.existing(&foreign).iter().all(|d| std::fs::remove_dir(d).is_ok()) {
        assert!(std::time::Instant::now() < deadline, "rmdir {foreign}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = shim.wait();
    let _ = sleeper.wait();
    assert!(dirs.iter().all(|d| !d.exists()) && !rootfs.exists() && !pin.exists());
    assert!(h.existing(&cgroup).is_empty());
    assert!(!d.state.join("shims/ghost.sock").exists());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&*rootfs.to_string_lossy()) && !mountinfo.contains(&*pin.to_string_lossy()));
    drop(mounts);
    // Each repair is in berthd's log; the running container is untouched.
    assert!(d.log().contains("doctor repaired a leftover"));
    assert!(d.berth(&["ps"]).ok().contains("running"));
    let (code, v) = doctor(&d, &[]);
    assert_eq!((code, v["findings"].as_array().unwrap().len()), (0, 0), "{v}");
    assert!(d.berth(&["doctor"]).ok().contains("healthy"));

    d.berth(&["rm", "-f", "keep"]).ok();
    d.terminate();
    let out = d.berth(&["doctor"]);
    assert_eq!(out.code, 2, "berthd is down: {out:?}");
    // berthd refuses a cgroup parent that is the root (its doctor would
    // take every other cgroup for a leftover).
    let dir = d.dir().join("refused");
    let out = Command::new(bin_path("berthd"))
        .args(["--root", &dir.join("root").to_string_lossy(), "--state", &dir.join("state").to_string_lossy()])
        .args(["--socket", &dir.join("s.sock").to_string_lossy(), "--cri-socket", "", "--cgroup-parent", "/"])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--cgroup-parent"), "{out:?}");
    assert!(!dir.exists());
}

/// The check named `name` of a doctor report.
fn check<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{name}: {v}"))
}

/// `--state` on a tmpfs passes; on another filesystem it is a note (not
/// a finding: the report stays healthy) that names the directory and
/// says what to do.
#[test]
fn doctor_says_whether_state_is_on_a_tmpfs() {
    let d = Daemon::start_with_run_tmpfs(&[]);
    let (code, v) = doctor(&d, &[]);
    let state = check(&v, "state filesystem");
    assert_eq!((code, state["status"].as_str()), (0, Some("ok")), "{v}");
    assert!(state["detail"].as_str().unwrap().contains("tmpfs"), "{state}");

    let on_disk = Daemon::start();
    let fs = nix::sys::statfs::statfs(&on_disk.state).unwrap();
    if fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC {
        eprintln!("the temp dir is a tmpfs here: the note is not tested");
        return;
    }
    let (code, v) = doctor(&on_disk, &[]);
    let state = check(&v, "state filesystem");
    assert_eq!((code, v["healthy"].as_bool(), state["status"].as_str()), (0, Some(true), Some("note")), "{v}");
    let detail = state["detail"].as_str().unwrap();
    assert!(detail.contains(&*on_disk.state.to_string_lossy()) && detail.contains("mount a tmpfs there"), "{detail}");
}
