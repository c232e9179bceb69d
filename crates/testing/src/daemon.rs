//! An isolated berthd for one test: its own temporary root, state dir,
//! socket and cgroup parent. Dropping it removes everything it made — shims,
//! container processes, cgroups, files — whether the test passed or not.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_cgroups::Hierarchies;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::rootfs::{bin_path, busybox_rootfs};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The result of one CLI call.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "berth failed: {self:?}");
        &self.stdout
    }

    /// Asserts failure with the given error kind (e.g. "not found") and
    /// returns stderr.
    #[track_caller]
    pub fn fails_with(&self, kind: &str) -> String {
        assert_ne!(self.code, 0, "expected failure ({kind}), got success: {self:?}");
        assert!(self.stderr.contains(&format!("berth: {kind}: ")), "expected {kind:?}, got {self:?}");
        assert_eq!(self.stderr.trim_end().lines().count(), 1, "error must be one line: {self:?}");
        self.stderr.clone()
    }

    /// Asserts a one-line failure of any kind (e.g. the CLI's own checks).
    #[track_caller]
    pub fn fails_with_any(&self) -> String {
        assert_ne!(self.code, 0, "expected failure, got success: {self:?}");
        assert!(self.stderr.starts_with("berth: ") || self.stderr.starts_with("error: "), "{self:?}");
        self.stderr.clone()
    }
}

/// berthd's log filter for the daemons started here: `debug` (tests read
/// the log on failure) unless this variable says otherwise (the
/// benchmarks run berthd as an operator would, at `info`).
pub const DAEMON_LOG_ENV: &str = "BERTH_TEST_DAEMON_LOG";

pub struct Daemon {
    dir: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    /// Where runtime state goes, berthd's `--state` and a benchmark's
    /// peers' (runc's root, containerd's state): the temp root itself, or
    /// a tmpfs of its own below it ([`Daemon::start_with_run_tmpfs`]).
    run: PathBuf,
    pub socket: PathBuf,
    pub cgroup_parent: String,
    pub rootfs: PathBuf,
    /// The running berthd; behind a lock so threads of one test can share
    /// the harness (the chaos test kills and restarts it from another thread).
    child: std::sync::Mutex<Option<Child>>,
    log: PathBuf,
    extra_args: Vec<String>,
}

impl Daemon {
    /// Builds a busybox rootfs and starts berthd under a fresh temp root.
    pub fn start() -> Daemon {
        Self::start_with(&[])
    }

    /// Like [`Daemon::start`], with extra berthd flags.
    pub fn start_with(extra_args: &[&str]) -> Daemon {
        Self::start_in(extra_args, false)
    }

    /// Like [`Daemon::start_with`], with berthd's `--state` on a tmpfs
    /// mounted for it, as `/run/berth` (its default) is on a production
    /// host; [`Daemon::run_dir`] is on the same tmpfs. `--root` stays on
    /// disk. The benchmarks run so: where the temp root's disk is slow
    /// to create files on (an ext4 without a journal looks through every
    /// inode freed in the last half minute for each new one), berthd
    /// and its peers would be timed on a layout no host runs them on.
    pub fn start_with_run_tmpfs(extra_args: &[&str]) -> Daemon {
        Self::start_in(extra_args, true)
    }

    fn start_in(extra_args: &[&str], run_tmpfs: bool) -> Daemon {
        let dir = tempfile::Builder::new().prefix("berth-test-").tempdir().expect("tempdir");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let rootfs = busybox_rootfs(dir.path());
        let run = if run_tmpfs {
            let run = dir.path().join("run");
            fs::create_dir(&run).expect("run dir");
            let opts = Some("mode=0700");
            nix::mount::mount(Some("tmpfs"), &run, Some("tmpfs"), nix::mount::MsFlags::empty(), opts)
                .expect("mount a tmpfs for the run dir");
            run
        } else {
            dir.path().to_path_buf()
        };
        let d = Daemon {
            root: dir.path().join("root"),
            state: run.join("state"),
            run,
            socket: dir.path().join("berth.sock"),
            cgroup_parent: format!("/berth-test-{}-{n}", std::process::id()),
            rootfs,
            log: dir.path().join("berthd.log"),
            dir,
            child: Default::default(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        d.spawn();
        d
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where a peer's runtime state goes to be timed beside berthd's:
    /// on the filesystem of berthd's `--state`.
    pub fn run_dir(&self) -> &Path {
        &self.run
    }

    /// Starts berthd and waits until its socket accepts connections.
    pub fn spawn(&self) {
        self.spawn_with_env(&[]);
        self.wait_serving();
    }

    /// Starts berthd with extra environment, without waiting for it.
    pub fn spawn_with_env(&self, env: &[(&str, &str)]) {
        self.spawn_command(self.command(env));
    }

    /// Starts berthd with a soft open-files limit of `soft` (the hard one
    /// as this process has it), as a service manager's default would give.
    pub fn spawn_with_soft_nofile(&self, soft: u64) {
        use std::os::unix::process::CommandExt;
        let mut cmd = self.command(&[]);
        // SAFETY: getrlimit/setrlimit only, in the child before exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
                l.rlim_cur = soft.min(l.rlim_max);
                match libc::setrlimit(libc::RLIMIT_NOFILE, &l) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
        self.spawn_command(cmd);
        self.wait_serving();
    }

    fn spawn_command(&self, mut cmd: Command) {
        let child = cmd.spawn().expect("spawn berthd");
        *self.child() = Some(child);
    }

    /// berthd's command line and environment, its stderr to its log.
    fn command(&self, env: &[(&str, &str)]) -> Command {
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut cmd = Command::new(bin_path("berthd"));
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .args(self.network_defaults())
            .args(&self.extra_args)
            .env("BERTH_LOG", std::env::var(DAEMON_LOG_ENV).unwrap_or_else(|_| "debug".into()))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        cmd
    }

    /// Unless a test names them: containers get only loopback (many test
    /// daemons at once must not share the default bridge and subnet), and
    /// no administrator's CNI configs are read.
    fn network_defaults(&self) -> Vec<String> {
        let given = |flag: &str| self.extra_args.iter().any(|a| a == flag);
        let mut args = Vec::new();
        if !given("--default-network") {
            args.extend(["--default-network".to_string(), "none".to_string()]);
        }
        if !given("--cri-socket") {
            args.extend(["--cri-socket".to_string(), self.cri_socket().to_string_lossy().into_owned()]);
        }
        if !given("--cni-conf-dir") {
            args.extend([
                "--cni-conf-dir".to_string(),
                self.dir.path().join("cni-conf").to_string_lossy().into_owned(),
            ]);
        }
        args
    }

    /// The CRI socket of this daemon (unless a test names another).
    pub fn cri_socket(&self) -> PathBuf {
        self.dir.path().join("cri.sock")
    }

    /// Waits until berthd's socket accepts connections.
    pub fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(Instant::now() < deadline, "berthd did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the berthd this harness started last has exited (e.g. by a
    /// crash hook); reaps it if so.
    pub fn daemon_exited(&self) -> bool {
        let mut child = self.child();
        let exited = child.as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some());
        if exited {
            *child = None;
        }
        exited
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (at most 5 s) until berthd has died at a crash point.
    #[track_caller]
    pub fn await_crash(&self, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !self.daemon_exited() {
            assert!(std::time::Instant::now() < deadline, "{what}: berthd did not die");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// berthd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    /// Kills berthd with SIGKILL (containers and shims keep running).
    pub fn kill9(&self) {
        if let Some(mut c) = self.child().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops berthd with SIGTERM and returns how long it took to exit.
    pub fn terminate(&self) -> Duration {
        let start = Instant::now();
        if let Some(mut c) = self.child().take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let _ = c.wait();
        }
        start.elapsed()
    }

    pub fn restart_after_kill9(&self) {
        self.kill9();
        self.spawn();
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin_path("berth"));
        c.env("BERTH_SOCKET", &self.socket).env_remove("BERTH_NAMESPACE").args(args);
        c
    }

    /// Runs the CLI to completion.
    pub fn berth(&self, args: &[&str]) -> Output {
        let out = self.cli(args).stdin(Stdio::null()).output().expect("run berth");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `shell` (which may call `berth`) under `script`, which gives
    /// it a real pty as a person's terminal would, with `input` typed into
    /// it; returns (exit code, output with CRs removed).
    pub fn in_pty(&self, shell: &str, input: &str) -> (i32, String) {
        use std::io::Write;
        let berth = bin_path("berth");
        let cmd = shell.replace("berth ", &format!("{} ", berth.display()));
        let mut child = Command::new("script")
            .args(["-eqc", &cmd, "/dev/null"])
            .env("BERTH_SOCKET", &self.socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script (bsdutils) is installed");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).replace('\r', ""))
    }

    /// Runs the CLI with `input` on its stdin.
    pub fn berth_with_input(&self, args: &[&str], input: &str) -> Output {
        self.berth_with_env_input(&[], args, input)
    }

    /// Runs the CLI with extra environment (e.g. `HOME` for `login`) and
    /// `input` on its stdin.
    pub fn berth_with_env_input(&self, env: &[(&str, &Path)], args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .cli(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn berth");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().expect("wait for berth");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts the CLI without waiting (e.g. for concurrent waiters).
    pub fn berth_spawn(&self, args: &[&str]) -> Child {
        self.cli(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn berth")
    }

    /// `berth run -d` with the busybox rootfs; returns the id.
    pub fn run_detached(&self, id: &str, cmd: &[&str]) -> String {
        let rootfs = self.rootfs.to_string_lossy().into_owned();
        let mut args = vec!["run", "-d", "--name", id, rootfs.as_str()];
        args.extend_from_slice(cmd);
        self.berth(&args).ok().trim().to_string()
    }

    /// Pids of the shim processes serving this daemon (berth-shim's
    /// runtime root is under its state dir, a containerd shim's -address is
    /// its socket: both are under the test's directory).
    pub fn shim_pids(&self) -> Vec<u32> {
        shims_with_arg(&self.dir().to_string_lossy()).into_iter().map(|(pid, _)| pid).collect()
    }

    /// Directories of a container's cgroup that exist in any hierarchy.
    pub fn cgroup_dirs(&self, ns: &str, id: &str) -> Vec<PathBuf> {
        let h = Hierarchies::detect().expect("cgroups");
        h.existing(&format!("{}/{ns}/{id}", self.cgroup_parent))
    }

    /// Directories of a namespace's cgroup (parent of its containers'
    /// cgroups) that exist in any hierarchy.
    pub fn namespace_cgroup_dirs(&self, ns: &str) -> Vec<PathBuf> {
        let h = Hierarchies::detect().expect("cgroups");
        h.existing(&format!("{}/{ns}", self.cgroup_parent))
    }

    /// Every directory this daemon keeps for one namespace (logs, bundles,
    /// each runtime's state) that exists.
    pub fn namespace_paths(&self, ns: &str) -> Vec<PathBuf> {
        let mut dirs = vec![self.root.join("logs").join(ns), self.state.join("bundles").join(ns)];
        for r in fs::read_dir(self.state.join("runtime")).into_iter().flatten().flatten() {
            dirs.push(r.path().join(ns));
        }
        dirs.into_iter().filter(|p| p.exists()).collect()
    }

    /// Processes in a container's cgroup.
    pub fn cgroup_procs(&self, ns: &str, id: &str) -> Vec<u32> {
        let h = Hierarchies::detect().expect("cgroups");
        h.procs(&format!("{}/{ns}/{id}", self.cgroup_parent)).unwrap_or_default()
    }

    /// Freezes (or thaws) namespace `ns`'s parent cgroup by hand, as
    /// systemd freezing a slice would: its containers are frozen without
    /// being paused themselves.
    pub fn freeze_namespace_cgroup(&self, ns: &str, frozen: bool) {
        let h = Hierarchies::detect().expect("cgroups");
        for dir in h.existing(&format!("{}/{ns}", self.cgroup_parent)) {
            let values = [("freezer.state", ["THAWED", "FROZEN"]), ("cgroup.freeze", ["0", "1"])];
            for (file, value) in values {
                if dir.join(file).exists() {
                    fs::write(dir.join(file), value[frozen as usize]).expect("write the freezer");
                }
            }
        }
    }

    /// Every file or directory this daemon keeps for one container.
    pub fn container_paths(&self, ns: &str, id: &str) -> Vec<PathBuf> {
        [
            self.state.join("bundles").join(ns).join(id),
            self.root.join("logs").join(ns).join(id),
            self.state.join("runtime/embedded").join(ns).join(id),
            self.state.join("runtime/runc").join(ns).join(id),
            self.state.join("runtime/io.containerd.runc.v2").join(ns).join(id),
        ]
        .into_iter()
        .filter(|p| p.exists())
        .collect()
    }

    /// Mount points under the test's directory, but for berthd's network
    /// namespaces (`<state>/netns`: a bind mount of itself that berthd
    /// keeps, as iproute2 keeps /run/netns, and one namespace per
    /// container; see [`Daemon::network_leftovers`]) and the bind mounts
    /// of themselves `<state>/sandbox-ns` (the sandbox namespaces in it
    /// count) and `<state>/bundles` (shared for VM sandboxes; the root
    /// filesystems in it count) are: what a container or a create left
    /// behind.
    pub fn leftover_mounts(&self) -> Vec<String> {
        let (dir, netns) = (self.dir().to_string_lossy().into_owned(), self.state.join("netns"));
        let (netns, pins) = (netns.to_string_lossy(), self.state.join("sandbox-ns"));
        // berthd's own shared directories stay mounted: its bundles (made
        // shared for VM sandboxes) and its namespace pins.
        let bundles = self.state.join("bundles");
        crate::mount_points()
            .into_iter()
            .filter(|m| m.starts_with(&dir) && !m.starts_with(netns.as_ref()))
            .filter(|m| Path::new(m) != pins && Path::new(m) != bundles)
            .collect()
    }

    /// Network namespaces and attachment records berthd holds: none once
    /// every container is gone.
    pub fn network_leftovers(&self) -> Vec<PathBuf> {
        [self.state.join("netns"), self.state.join("network/attachments")]
            .iter()
            .flat_map(|d| fs::read_dir(d).into_iter().flatten().flatten())
            .map(|e| e.path())
            .collect()
    }

    /// Lazily unmounts whatever is mounted under the test's directory
    /// (pinned namespaces, a killed VM shim's guest bundles), deepest
    /// first, so removing the directory never reaches through a mount.
    fn unmount_all(&self) {
        unmount_under(self.dir());
    }
}

/// Lazily unmounts every mount point below `dir`, deepest first; returns
/// the points it found.
pub fn unmount_under(dir: &Path) -> Vec<String> {
    let under = dir.to_string_lossy().into_owned() + "/";
    let mut points: Vec<String> = crate::mount_points().into_iter().filter(|p| p.starts_with(&under)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in &points {
        let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    points
}

/// berth-shim processes with an argument starting with `marker`, with
/// their arguments.
pub(crate) fn shims_with_arg(marker: &str) -> Vec<(u32, Vec<String>)> {
    let mut shims = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        // berth-shim, or a containerd v2 shim (berthd's --default-runtime).
        let is_shim = args.first().is_some_and(|a| {
            a.ends_with("berth-shim")
                || Path::new(a).file_name().is_some_and(|n| n.to_string_lossy().starts_with("containerd-shim-"))
        });
        if is_shim && args.iter().any(|a| a.starts_with(marker)) {
            shims.push((pid, args));
        }
    }
    shims
}

/// Kills every process in the cgroup `parent` (thawing it) and removes
/// it with everything below it, in every hierarchy.
pub fn sweep_cgroup(parent: &str) {
    let Ok(h) = Hierarchies::detect() else { return };
    for _ in 0..50 {
        let mut busy = false;
        for pid in h.procs(parent).unwrap_or_default() {
            busy = true;
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        // A frozen cgroup would keep killed processes alive.
        h.thaw_tree(parent);
        if !busy && h.remove_tree(parent).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("warning: could not remove cgroup {parent}");
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        for pid in self.shim_pids() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        sweep_cgroup(&self.cgroup_parent);
        self.unmount_all();
        // A killed containerd shim leaves its socket outside the test's
        // directory; its bundle says where (`address`).
        for ns in fs::read_dir(self.state.join("bundles")).into_iter().flatten().flatten() {
            for bundle in fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                if let Ok(address) = fs::read_to_string(bundle.path().join("address")) {
                    let _ = fs::remove_file(address.trim().trim_start_matches("unix://"));
                }
            }
        }
    }
}
