//! What `berth rm -f` of N containers is compared with: N runc containers
//! of `sleep`, each with its cgroup where berth's were (beside the others,
//! under the same parent; the first fleet started one at a time, as
//! berth's, and timed), removed as many at a time as one `berth rm -f`
//! asks of berthd — by `runc delete -f`, and, on a second such fleet, by
//! the kernel operations alone that any runtime's delete comes down to
//! (the floor: kill -9, wait for the exit, rmdir the cgroups).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_testing::Daemon;
use serde_json::Value;

/// Deletes in flight, as `berth rm -f` has (the CLI's `RM_IN_FLIGHT`).
const IN_FLIGHT: usize = 16;

/// Runs `job(i)` for every `i < n` on `threads` threads.
fn on_threads(n: usize, threads: usize, job: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    job(i);
                }
            });
        }
    });
}

fn runc(root: &Path) -> Command {
    let mut cmd = Command::new("runc");
    cmd.arg("--root").arg(root).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

/// Removes whatever runc containers and bundles the measurement left,
/// however it ended.
struct Leftovers {
    root: PathBuf,
    bundles: PathBuf,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let listed = runc(&self.root).args(["list", "-q"]).stdout(Stdio::piped()).output();
        let ids = listed.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        for id in ids.lines() {
            let _ = runc(&self.root).args(["delete", "-f", id]).status();
        }
        let _ = std::fs::remove_dir_all(&self.bundles);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `n` running runc containers of `sleep`, each with its cgroup where
/// berth's were; `None` if they could not all be started.
struct Fleet {
    left: Leftovers,
    parent: String,
    n: usize,
}

impl Fleet {
    /// Starts the fleet by `runc run -d`, on `threads` threads; with how
    /// long that took.
    /// `seccomp`, if given, is the containers' profile (berth's, as runc
    /// reads it: [`berth_seccomp`]).
    fn start(d: &Daemon, n: usize, what: &str, threads: usize, seccomp: Option<&Value>) -> Option<(Fleet, Duration)> {
        let dir = d.run_dir().join("rm-floor");
        let left = Leftovers { root: dir.join("runc-root"), bundles: dir.join("bundles") };
        let parent = format!("{}/default", d.cgroup_parent);
        eprintln!("scale: runc, {n} run -d, then {what} of all …");
        let base = crate::make_bundle(&left.bundles, &d.rootfs, "base", &["sleep", "100000"]);
        if let Some(profile) = seccomp {
            crate::edit_spec(&base, |spec| spec["linux"]["seccomp"] = profile.clone());
        }
        let bundles: Vec<PathBuf> = (0..n)
            .map(|i| {
                let bundle = left.bundles.join(format!("f{i}"));
                std::fs::create_dir_all(&bundle).expect("bundle dir");
                std::fs::copy(base.join("config.json"), bundle.join("config.json")).expect("copy spec");
                crate::edit_spec(&bundle, |spec| spec["linux"]["cgroupsPath"] = format!("{parent}/f{i}").into());
                bundle
            })
            .collect();
        let started = AtomicUsize::new(0);
        let t = Instant::now();
        on_threads(n, threads, |i| {
            let run =
                runc(&left.root).arg("run").arg("-d").arg("--bundle").arg(&bundles[i]).arg(format!("f{i}")).status();
            if run.is_ok_and(|s| s.success()) {
                started.fetch_add(1, Ordering::Relaxed);
            }
        });
        let took = t.elapsed();
        let started = started.load(Ordering::Relaxed);
        if started != n {
            eprintln!("scale: only {started} of {n} runc containers started");
            return None;
        }
        Some((Fleet { left, parent, n }, took))
    }

    /// Runs `remove(i)` for every container, [`IN_FLIGHT`] at a time; how
    /// long that took if every one succeeded.
    fn remove_all(&self, remove: impl Fn(usize) -> bool + Sync) -> Option<Duration> {
        let removed = AtomicUsize::new(0);
        let t = Instant::now();
        on_threads(self.n, IN_FLIGHT, |i| {
            if remove(i) {
                removed.fetch_add(1, Ordering::Relaxed);
            }
        });
        let took = t.elapsed();
        (removed.load(Ordering::Relaxed) == self.n).then_some(took)
    }
}

/// runc's side of two rows: `runc run -d` of `n` containers one at a
/// time (as the scale test's `run -d`), then `runc delete -f` of all,
/// [`IN_FLIGHT`] at a time. `None` for what did not all succeed.
pub fn runc_run_and_rm(d: &Daemon, n: usize, seccomp: Option<&Value>) -> (Option<Duration>, Option<Duration>) {
    let Some((fleet, run_all)) = Fleet::start(d, n, "delete -f", 1, seccomp) else { return (None, None) };
    let rm = fleet.remove_all(|i| {
        runc(&fleet.left.root).args(["delete", "-f", &format!("f{i}")]).status().is_ok_and(|s| s.success())
    });
    (Some(run_all), rm)
}

/// The kernel's share alone: of `n` running runc containers, each one's
/// init is killed (SIGKILL through a pidfd opened beforehand), its exit
/// awaited, its cgroup removed from every hierarchy and runc's state
/// directory with it, [`IN_FLIGHT`] at a time — what any runtime's delete
/// does, with no runtime process, shim or daemon in the way.
pub fn kernel_rm(d: &Daemon, n: usize, seccomp: Option<&Value>) -> Option<Duration> {
    room_for_descriptors(n + 256);
    let (fleet, _) = Fleet::start(d, n, "kill -9 and rmdir", 2, seccomp)?;
    let hierarchies = berth_cgroups::Hierarchies::detect().ok()?;
    let pidfds: Vec<OwnedFd> =
        (0..n).map(|i| init_pidfd(&fleet.left.root.join(format!("f{i}")))).collect::<Option<_>>()?;
    fleet.remove_all(|i| {
        let cgroup = format!("{}/f{i}", fleet.parent);
        kill_and_wait(&pidfds[i])
            && hierarchies.mount_points().iter().all(|m| rmdir_when_empty(&m.join(cgroup.trim_start_matches('/'))))
            && std::fs::remove_dir_all(fleet.left.root.join(format!("f{i}"))).is_ok()
    })
}

/// The seccomp profile in the config.json of one of berth's containers,
/// as runc reads it: berth's embedded runtime swaps the two values of each
/// masked-equal argument for libcontainer (`io.berth.embedded.adapted`),
/// so they are swapped back. `None` if there is none to read.
pub fn berth_seccomp(config: &Path) -> Option<Value> {
    use berth_model::{ADAPTED_KEY, swap_masked_eq};
    let mut spec: Value = serde_json::from_slice(&std::fs::read(config).ok()?).ok()?;
    if spec["annotations"].get(ADAPTED_KEY).is_some() {
        swap_masked_eq(&mut spec);
    }
    spec.pointer("/linux/seccomp").cloned()
}

/// Raises this process's soft open-files limit (within the hard one) to
/// at least `n`: [`kernel_rm`] holds a pidfd per container, more than a
/// login shell's default 1,024 at `--scale 1000`.
fn room_for_descriptors(n: usize) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit on a struct on the stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < n as u64 {
            limit.rlim_cur = limit.rlim_max.min(n as u64);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A pidfd for the init named in runc's `state.json` in `dir`.
fn init_pidfd(dir: &Path) -> Option<OwnedFd> {
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("state.json")).ok()?).ok()?;
    let pid = state["init_process_pid"].as_i64()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a descriptor pidfd_open just returned, owned by nothing else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// SIGKILLs the process and waits (up to 10 s) until it has exited.
fn kill_and_wait(pidfd: &OwnedFd) -> bool {
    let fd = pidfd.as_raw_fd();
    // SAFETY: plain syscalls on a pidfd this process holds.
    let sent = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd, libc::SIGKILL, std::ptr::null::<u8>(), 0) };
    let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd, on the stack, for the duration of the call.
    sent == 0 && unsafe { libc::poll(&mut poll, 1, 10_000) } == 1
}

/// `rmdir` of a cgroup, retried while the kernel still counts a task in
/// it; one that is not there (a hierarchy runc does not use) is fine.
fn rmdir_when_empty(dir: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(e) if berth_cgroups::in_use(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(_) => return false,
        }
    }
}
