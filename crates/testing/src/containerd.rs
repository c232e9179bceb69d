//! A private containerd (Debian's 1.6) for one test: its own root, state,
//! gRPC and ttrpc sockets under a temp dir, CRI disabled, the workspace's
//! binaries (`containerd-shim-berth-v1`) first on its PATH, and a namespace
//! of its own, driven through `ctr`. Dropping it kills containerd and every
//! berth-shim it started, and removes their tasks' processes, cgroups,
//! mounts and runtime state, whether the test passed or not.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::daemon::{Output, shims_with_arg, sweep_cgroup};
use crate::rootfs::{bin_path, busybox_rootfs};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A private containerd's files under `base`: its config (own root,
/// state, gRPC and ttrpc sockets, CRI disabled), written. Its state
/// (`/run/containerd` on a host) goes in `run`.
pub struct Setup {
    pub config: PathBuf,
    pub address: PathBuf,
    pub ttrpc_address: PathBuf,
}

impl Setup {
    pub fn write(base: &Path, run: &Path) -> std::io::Result<Setup> {
        let (address, ttrpc_address) = (base.join("c.sock"), base.join("c.sock.ttrpc"));
        let config = base.join("config.toml");
        let toml = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}\"\n",
            base.join("root").display(),
            run.join("state").display(),
            address.display(),
            ttrpc_address.display()
        );
        fs::write(&config, toml)?;
        Ok(Setup { config, address, ttrpc_address })
    }

    /// Starts containerd on this config, its stderr appended to `log`, with
    /// the workspace's binaries first on its PATH.
    pub fn spawn(&self, log: &Path) -> std::io::Result<Child> {
        let bins = bin_path("containerd-shim-berth-v1").parent().map(Path::to_path_buf).unwrap_or_default();
        let path = format!("{}:{}", bins.display(), std::env::var("PATH").unwrap_or_default());
        Command::new("containerd")
            .arg("--config")
            .arg(&self.config)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::OpenOptions::new().create(true).append(true).open(log)?)
            .spawn()
    }
}

pub struct Containerd {
    dir: tempfile::TempDir,
    pub address: PathBuf,
    pub ttrpc_address: PathBuf,
    pub namespace: String,
    pub rootfs: PathBuf,
    setup: Setup,
    log: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    /// Builds a busybox rootfs and starts containerd under a fresh temp dir.
    pub fn start() -> Containerd {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path();
        let setup = Setup::write(base, base).expect("write containerd config");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let mut c = Containerd {
            rootfs: busybox_rootfs(base),
            namespace: format!("berth-e2e-{}-{n}", std::process::id()),
            log: base.join("containerd.log"),
            address: setup.address.clone(),
            ttrpc_address: setup.ttrpc_address.clone(),
            dir,
            setup,
            child: None,
        };
        c.spawn();
        c
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) {
        let child = (self.setup.spawn(&self.log))
            .unwrap_or_else(|e| panic!("containerd missing ({e}): apt-get install -y containerd"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.ctr(&["version"]).code != 0 {
            assert!(Instant::now() < deadline, "containerd did not come up:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs containerd (its shims keep running) and starts it again.
    pub fn restart_after_kill9(&mut self) {
        self.kill9();
        self.spawn();
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `ctr --address … --namespace … ARGS` with no stdin.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.address).arg("--namespace").arg(&self.namespace).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// `ctr … COMMAND --fifo-dir DIR ARGS` for a command that makes a
    /// task's stdio FIFOs (`run`, `task exec`): ctr leaves them behind, so
    /// they go under the test's directory.
    pub fn ctr_io_command(&self, command: &[&str], args: &[&str]) -> Command {
        let mut c = self.ctr_command(command);
        c.arg("--fifo-dir").arg(self.dir().join("fifo")).args(args);
        c
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        output(self.ctr_command(args))
    }

    /// [`Containerd::ctr_io_command`], run.
    pub fn ctr_io(&self, command: &[&str], args: &[&str]) -> Output {
        output(self.ctr_io_command(command, args))
    }

    /// `(pid, status)` of a task from `ctr task ls`, if it is listed.
    pub fn task(&self, id: &str) -> Option<(u32, String)> {
        let out = self.ctr(&["task", "ls"]);
        out.stdout.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[0] == id).then(|| (f[1].parse().unwrap_or(0), f[2].to_string()))
        })
    }

    /// Waits until the task's status is `status`.
    #[track_caller]
    pub fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.task(id).map(|t| t.1).as_deref() != Some(status) {
            assert!(Instant::now() < deadline, "task {id} never {status}: {:?}", self.task(id));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pids of the berth-shim processes this containerd started.
    pub fn shim_pids(&self) -> Vec<u32> {
        shims_with_arg(&self.ttrpc_address.to_string_lossy()).into_iter().map(|(pid, _)| pid).collect()
    }

    /// Sockets and runtime state of the shims this containerd started
    /// (named by `--runtime-root` in their command lines) that exist.
    fn shim_leftovers(&self) -> Vec<PathBuf> {
        let mut paths = Vec::new();
        for (_, args) in shims_with_arg(&self.ttrpc_address.to_string_lossy()) {
            if let Some(root) = args.windows(2).find(|w| w[0] == "--runtime-root").map(|w| PathBuf::from(&w[1])) {
                paths.push(root.with_extension("sock"));
                paths.push(root);
            }
        }
        paths
    }

    /// Mount points under the test's directory (tasks' rootfs mounts).
    pub fn leftover_mounts(&self) -> Vec<String> {
        let dir = self.dir().to_string_lossy().into_owned();
        crate::mount_points().into_iter().filter(|m| m.starts_with(&dir)).collect()
    }
}

fn output(mut command: Command) -> Output {
    let out = command.output().expect("run ctr");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill9();
        let leftovers = self.shim_leftovers();
        for pid in self.shim_pids() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        sweep_cgroup(&format!("/{}", self.namespace));
        // Deepest first, so stacked mounts come off in order.
        let mut mounts = self.leftover_mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for p in leftovers {
            let _ = fs::remove_file(&p).or_else(|_| fs::remove_dir_all(&p));
        }
    }
}
