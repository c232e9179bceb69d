//! Daemon safety (issue 9, items 9, 10 and 13): berthd refuses a damaged or
//! lost metadata store instead of starting empty over running containers
//! or panicking; it never takes over another daemon's socket, root or state
//! dir, nor deletes a file that is not its socket; and the CLI says plainly
//! when berthd is not answering.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_testing::{Daemon, bin_path};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a berthd that must refuse may take to exit.
const REFUSE_WITHIN: Duration = Duration::from_secs(10);

/// A berthd started by hand beside the harness's; killed when dropped, so
/// one that wrongly serves never outlives the test.
struct Berthd {
    child: Option<Child>,
    log: PathBuf,
}

impl Berthd {
    fn start(d: &Daemon, name: &str, root: &Path, state: &Path, socket: &Path) -> Berthd {
        let log = d.dir().join(format!("{name}.log"));
        let stderr = fs::File::create(&log).expect("log file");
        let child = Command::new(bin_path("berthd"))
            .arg("--root")
            .arg(root)
            .arg("--state")
            .arg(state)
            .arg("--socket")
            .arg(socket)
            .arg("--cri-socket")
            .arg(d.dir().join(format!("{name}-cri.sock")))
            .arg("--cgroup-parent")
            .arg(format!("{}-{name}", d.cgroup_parent))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn berthd");
        Berthd { child: Some(child), log }
    }

    /// Waits for it to exit, asserts that it failed without a panic, and
    /// returns what it said.
    #[track_caller]
    fn refused(&mut self) -> String {
        let mut child = self.child.take().expect("started");
        let deadline = Instant::now() + REFUSE_WITHIN;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for berthd") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("berthd did not refuse to start: {}", fs::read_to_string(&self.log).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let said = fs::read_to_string(&self.log).unwrap_or_default();
        assert!(!status.success(), "berthd exited with success: {said}");
        assert!(!said.contains("panicked"), "berthd panicked: {said}");
        said
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts the harness's berthd again and waits for it to exit: it must
/// refuse. Returns the error it printed.
#[track_caller]
fn harness_refuses(d: &Daemon) -> String {
    let before = d.log().len();
    d.spawn_with_env(&[]);
    let deadline = Instant::now() + REFUSE_WITHIN;
    while !d.daemon_exited() {
        if Instant::now() > deadline {
            d.kill9();
            panic!("berthd did not refuse to start: {}", d.log());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let said = d.log()[before..].to_string();
    assert!(!said.contains("panicked"), "berthd panicked: {said}");
    let error: Vec<&str> = said.lines().filter(|l| l.starts_with("berthd: ")).collect();
    assert_eq!(error.len(), 1, "one error line expected: {said}");
    assert!(std::os::unix::net::UnixStream::connect(&d.socket).is_err(), "berthd serves: {said}");
    error[0].to_string()
}

/// The container's process is alive (not a zombie) and still `sleep`.
#[track_caller]
fn assert_alive(pid: i32) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let running = stat.rsplit(')').next().is_some_and(|r| !r.starts_with(" Z"));
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(running && String::from_utf8_lossy(&cmdline).contains("sleep"), "process {pid} is gone");
}

/// Ids of every container berthd lists.
fn ids(d: &Daemon) -> Vec<String> {
    let list: serde_json::Value = serde_json::from_str(d.berth(&["ps", "-a", "--json"]).ok()).expect("ps JSON");
    list.as_array().expect("a list").iter().filter_map(|c| c["id"].as_str().map(str::to_string)).collect()
}

fn inode(p: &Path) -> u64 {
    fs::symlink_metadata(p).expect("socket exists").ino()
}

/// A 0-byte meta.redb with a running container: berthd refuses, names the
/// damage and the recovery steps, and leaves file and container alone;
/// with the file moved aside it still refuses to start empty over the
/// leftovers; following the steps lets it start.
#[test]
fn an_empty_store_over_a_running_container_is_refused() {
    let d = Daemon::start();
    d.run_detached("keep", &["sleep", "1000"]);
    let c = d.inspect("keep");
    let (pid, shim) = (c["pid"].as_i64().unwrap() as i32, c["shim_pid"].as_i64().unwrap() as i32);
    d.kill9();
    let db = d.root.join("meta.redb");
    fs::write(&db, b"").unwrap();

    let error = harness_refuses(&d);
    assert!(error.contains(&format!("{} is damaged", db.display())) && error.contains("empty"), "{error}");
    assert!(error.contains(&format!("mv {0} {0}.damaged", db.display())), "no recovery step: {error}");
    assert!(error.contains("default/keep") && error.contains(&shim.to_string()), "leftovers not named: {error}");
    assert_eq!(fs::metadata(&db).unwrap().len(), 0, "the damaged file must stay as it was");
    assert_alive(pid);

    // Moved aside as told, without ending the leftovers: still no empty start.
    fs::rename(&db, d.root.join("meta.redb.damaged")).unwrap();
    let error = harness_refuses(&d);
    assert!(error.contains("holds no containers") && error.contains("orphan"), "{error}");
    assert!(error.contains("default/keep"), "{error}");
    assert_alive(pid);

    // The documented clean-up, then a start with an empty store.
    let _ = kill(Pid::from_raw(shim), Signal::SIGKILL);
    for p in d.cgroup_procs("default", "keep") {
        let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
    }
    for dir in ["bundles", "shims", "runtime"] {
        let _ = fs::remove_dir_all(d.state.join(dir));
    }
    d.spawn();
    assert_eq!(ids(&d), Vec::<String>::new());
}

/// Garbage written into the middle of a cleanly closed store: berthd says
/// the store is damaged, with the steps, and does not panic inside redb.
#[test]
fn a_corrupted_store_is_a_clear_error_not_a_panic() {
    let d = Daemon::start();
    for id in ["a", "b", "c"] {
        d.run_detached(id, &["sleep", "1000"]);
    }
    let pid = d.inspect("b")["pid"].as_i64().unwrap() as i32;
    // A clean shutdown: redb trusts a cleanly closed file on its next open.
    d.terminate();
    let db = d.root.join("meta.redb");
    let mut bytes = fs::read(&db).unwrap();
    let len = bytes.len();
    for (i, b) in bytes[len / 4..len * 3 / 4].iter_mut().enumerate() {
        *b = (i.wrapping_mul(7919) % 251) as u8 ^ 0xa5;
    }
    fs::write(&db, &bytes).unwrap();

    let error = harness_refuses(&d);
    assert!(error.contains(&format!("{} is damaged", db.display())), "{error}");
    assert!(error.contains(&format!("mv {0} {0}.damaged", db.display())), "no recovery step: {error}");
    assert_eq!(fs::read(&db).unwrap(), bytes, "the damaged file must stay as it was");
    assert_alive(pid);
}

/// A second berthd on the same socket, or on the same --state or --root,
/// refuses to start; the first keeps serving on its own socket.
#[test]
fn a_second_daemon_never_takes_over() {
    let d = Daemon::start();
    d.run_detached("first", &["sleep", "1000"]);
    let ino = inode(&d.socket);
    let dir = d.dir();
    // The other daemon is named by its pid (which berthd writes in its lock).
    let holder = |lock: &Path| {
        let pid = fs::read_to_string(lock).unwrap_or_default();
        let cmdline = fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default();
        assert!(String::from_utf8_lossy(&cmdline).contains(d.socket.to_str().unwrap()), "{lock:?}: {pid:?}");
        format!("another berthd (pid {}) holds the lock {}", pid.trim(), lock.display())
    };
    let cases = [
        ("same-socket", dir.join("root2"), dir.join("state2"), d.socket.clone(), None),
        ("same-state", dir.join("root3"), d.state.clone(), dir.join("s3.sock"), Some(d.state.join("berthd.lock"))),
        ("same-root", d.root.clone(), dir.join("state4"), dir.join("s4.sock"), Some(d.root.join("berthd.lock"))),
    ];
    for (name, root, state, socket, lock) in cases {
        let said = Berthd::start(&d, name, &root, &state, &socket).refused();
        let why = lock.map_or_else(|| "another process answers on the socket".to_string(), |l| holder(&l));
        assert!(said.contains(&why) && said.contains("refusing"), "{name}: {said}");
        if socket != d.socket {
            assert!(!socket.exists(), "{name}: it must not have bound its socket");
        }
        assert_eq!(inode(&d.socket), ino, "{name}: the first daemon's socket was replaced");
        assert_eq!(ids(&d), ["first"], "{name}: the first daemon must keep serving");
    }
    // Once the first is gone, its socket goes with it.
    d.terminate();
    assert!(!d.socket.exists(), "berthd left its socket");
}

/// `--socket` naming a regular file: refused, and the file is untouched.
#[test]
fn a_socket_path_that_is_a_file_is_never_deleted() {
    let d = Daemon::start();
    let file = d.dir().join("precious");
    fs::write(&file, "keep me").unwrap();
    let (root, state) = (d.dir().join("root2"), d.dir().join("state2"));
    let said = Berthd::start(&d, "file", &root, &state, &file).refused();
    assert!(said.contains("is not a socket"), "{said}");
    assert_eq!(fs::read_to_string(&file).unwrap(), "keep me");
}

/// A socket nobody serves (berthd killed), and a connection dropped in the
/// middle of a call (berthd restarting): one line saying berthd is not
/// answering at that path, not `transport error`.
#[test]
fn the_cli_says_berthd_is_not_answering() {
    let d = Daemon::start();
    d.kill9();
    let out = d.berth(&["ps"]);
    let line = out.fails_with_any();
    assert_eq!(line.trim_end().lines().count(), 1, "{out:?}");
    assert!(line.contains(&format!("berthd is not answering at {}", d.socket.display())), "{out:?}");

    // Something accepts connections and hangs up on every call.
    let hangup = d.dir().join("hangup.sock");
    let listener = std::os::unix::net::UnixListener::bind(&hangup).unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let server = std::thread::spawn(move || {
        while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
            match listener.accept() {
                Ok((conn, _)) => drop(conn),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    let out = d.berth(&["--socket", hangup.to_str().unwrap(), "ps"]);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = server.join();
    let line = out.fails_with_any();
    assert_eq!(line.trim_end().lines().count(), 1, "{out:?}");
    assert!(line.contains(&format!("berthd is not answering at {}", hangup.display())), "{out:?}");

    d.spawn();
    d.berth(&["ps"]).ok();
}

/// The soft and hard "Max open files" of process `pid`.
fn open_files_limit(pid: u32) -> (String, String) {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_string();
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_string(), fields[4].to_string())
}

/// berthd started with a low soft limit on open files (256 here; a
/// systemd service gets 1,024 by default) raises it to its hard limit: it
/// holds a few descriptors per container, and used to stop creating
/// containers at about 50 under 256. Its shims get the limit berthd was
/// started with, and its containers their spec's (1,024, as containerd's
/// default spec), whatever berthd's.
#[test]
fn a_low_open_files_limit_does_not_cap_the_containers_and_is_what_containers_get() {
    let d = Daemon::start();
    d.kill9();
    d.spawn_with_soft_nofile(256);
    let berthd = d.pid().unwrap();
    let (soft, hard) = open_files_limit(berthd);
    assert_eq!(soft, hard, "berthd raised its soft limit to its hard one");
    let n = 80;
    for i in 0..n {
        d.run_detached(&format!("c{i}"), &["sleep", "1000"]);
    }
    let held = fs::read_dir(format!("/proc/{berthd}/fd")).unwrap().count();
    assert!(held > 256, "berthd holds {held} descriptors for {n} containers");
    let c = d.inspect("c0");
    assert_eq!(open_files_limit(c["shim_pid"].as_u64().unwrap() as u32).0, "256", "the shim's limit");
    let spec = ("1024".to_string(), "1024".to_string());
    assert_eq!(open_files_limit(c["pid"].as_u64().unwrap() as u32), spec, "the container's limit");
    assert_eq!(d.berth(&["exec", "c0", "sh", "-c", "ulimit -n"]).ok().trim(), "1024");
    let all: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let mut args = vec!["rm", "-f"];
    args.extend(all.iter().map(String::as_str));
    d.berth(&args).ok();
    assert!(d.shim_pids().is_empty(), "shims left");
}
