//! A private containerd 1.6 (Debian's package) for comparison: its own root,
//! state and socket under the benchmark's temp dir, CRI disabled, driven
//! through `ctr`. Dropping it removes its containers and stops it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use berth_testing::containerd::Setup;
use std::time::{Duration, Instant};

const NAMESPACE: &str = "berth-bench";
/// containerd's default runtime (containerd-shim-runc-v2).
pub const RUNC_V2: &str = "io.containerd.runc.v2";
/// berth-shim under containerd (`containerd-shim-berth-v1`).
pub const BERTH_V1: &str = "io.containerd.berth.v1";

pub struct Containerd {
    child: Child,
    setup: Setup,
    log: PathBuf,
    address: PathBuf,
    ids: std::cell::RefCell<Vec<String>>,
}

impl Containerd {
    /// Starts containerd with its root under `dir` and its state under
    /// `run`, or returns None (with a note) if it is missing.
    pub fn start(dir: &Path, run: &Path) -> Option<Containerd> {
        let (base, state) = (dir.join("containerd"), run.join("containerd"));
        std::fs::create_dir_all(&base).ok()?;
        std::fs::create_dir_all(&state).ok()?;
        let setup = Setup::write(&base, &state).ok()?;
        let log = base.join("containerd.log");
        let child = match setup.spawn(&log) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("containerd not available ({e}); skipping its figures");
                return None;
            }
        };
        let address = setup.address.clone();
        let c = Containerd { child, setup, log, address, ids: Default::default() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.ctr(&["version"]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {
            if Instant::now() > deadline {
                eprintln!("containerd did not come up; skipping its figures");
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(c)
    }

    /// SIGKILLs containerd and starts it again (its shims keep running);
    /// returns when the new one is started, not when it serves.
    pub fn restart_after_kill9(&mut self) -> bool {
        let _ = self.child.kill();
        let _ = self.child.wait();
        match self.setup.spawn(&self.log) {
            Ok(c) => {
                self.child = c;
                true
            }
            Err(_) => false,
        }
    }

    /// Pid and status of every task, by container id (`ctr task ls`);
    /// None while containerd does not answer.
    pub fn tasks(&self) -> Option<Vec<(String, String, String)>> {
        let out = self.ctr(&["task", "ls"]).stderr(Stdio::null()).output().ok()?;
        out.status.success().then(|| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() >= 3).then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
                })
                .collect()
        })
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.address).arg("--namespace").arg(NAMESPACE).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// `ctr run --rm --runtime RUNTIME --rootfs ROOTFS ID /bin/true`.
    pub fn run_rm(&self, runtime: &str, rootfs: &Path, id: &str) -> bool {
        let rootfs = rootfs.to_string_lossy();
        let args = ["run", "--rm", "--runtime", runtime, "--rootfs", &rootfs, id, "/bin/true"];
        self.ctr(&args).status().is_ok_and(|s| s.success())
    }

    /// `ctr run --rm --cni --rootfs ROOTFS ID CMD...`, its stdout if it
    /// succeeded: ctr itself runs CNI ADD (on the task's /proc/PID/ns/net)
    /// and DEL, with go-cni's configs from /etc/cni/net.d
    /// (bench/src/cnihost.rs).
    pub fn run_rm_cni(&self, rootfs: &Path, id: &str, cmd: &[&str]) -> Option<String> {
        let rootfs = rootfs.to_string_lossy();
        let mut args = vec!["run", "--rm", "--cni", "--rootfs", &rootfs, id];
        args.extend_from_slice(cmd);
        let out = self.ctr(&args).stderr(Stdio::inherit()).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ctr image pull --plain-http` (fetch and unpack), output discarded.
    pub fn pull(&self, reference: &str) -> bool {
        self.ctr(&["image", "pull", "--plain-http", reference])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Removes the image and, synchronously, its content and snapshots.
    pub fn image_forget(&self, reference: &str) -> bool {
        self.ctr(&["image", "rm", "--sync", reference]).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
    }

    /// `ctr run --rm IMAGE ID /bin/true`.
    pub fn run_image_rm(&self, reference: &str, id: &str) -> bool {
        self.ctr(&["run", "--rm", reference, id, "/bin/true"]).status().is_ok_and(|s| s.success())
    }

    /// Runs `n` detached sleep containers named `<prefix><i>` one `ctr
    /// run -d` at a time; returns their shims' pids (listed once at the
    /// end, so the listing does not slow the runs).
    pub fn run_detached(&self, runtime: &str, rootfs: &Path, prefix: &str, n: usize) -> Vec<u32> {
        let rootfs = rootfs.to_string_lossy();
        let mut started = Vec::new();
        for i in 0..n {
            let id = format!("{prefix}{i}");
            let args = ["run", "-d", "--runtime", runtime, "--rootfs", &rootfs, &id, "/bin/sleep", "100000"];
            if self.ctr(&args).status().is_ok_and(|s| s.success()) {
                self.ids.borrow_mut().push(id.clone());
                started.push(id);
            }
        }
        let tasks = self.tasks().unwrap_or_default();
        let pid_of = |id: &String| tasks.iter().find(|t| &t.0 == id).and_then(|t| t.1.parse::<u32>().ok());
        started.iter().filter_map(pid_of).filter_map(parent_of).collect()
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in self.ids.borrow().iter() {
            let _ = self.ctr(&["task", "kill", "-s", "KILL", id]).status();
        }
        std::thread::sleep(Duration::from_millis(300));
        for id in self.ids.borrow().iter() {
            let _ = self.ctr(&["task", "rm", "-f", id]).stderr(Stdio::null()).status();
            let _ = self.ctr(&["container", "rm", id]).stderr(Stdio::null()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for h in ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd", "unified"] {
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{h}/{NAMESPACE}"));
        }
    }
}
