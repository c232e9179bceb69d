//! Runs the runtime operations in a forked child of the caller. The
//! caller (a shim) then never executes the runtime's code itself, so its
//! resident memory stays small while its containers run, and a crash
//! inside container creation cannot take the shim — and with it the exit
//! codes it guards — down.
//!
//! The fork happens synchronously when an operation is called; the wait
//! for the helper's one-line answer is async (the pipe and the helper's
//! pidfd are registered with tokio), so a single-threaded caller keeps
//! serving other requests while a runtime call hangs (e.g. in an OCI hook).
//!
//! The caller must be single-threaded when it calls in: fork only copies
//! the calling thread. A caller that reaps children it does not know may
//! reap a helper first: the answer on the pipe is what counts.

use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use berth_model::Code;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe2};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use crate::{Runtime, RuntimeError, Stdio};

/// The caller's descriptor no helper may hold (-1: none).
static NOT_FOR_HELPERS: AtomicI32 = AtomicI32::new(-1);

/// Names a descriptor of the caller that every helper closes as soon as
/// it is forked: a shim's listener. Close-on-exec is not enough: a helper
/// never execs, and the container's init it clones holds the helper's
/// descriptors until the container starts. A listener held there outlives
/// a killed shim, and connections to it then queue unanswered instead of
/// being refused.
pub fn close_in_helpers(fd: RawFd) {
    NOT_FOR_HELPERS.store(fd, Ordering::SeqCst);
}

/// A runtime whose every operation runs in a forked helper.
pub struct Isolated {
    inner: Box<dyn Runtime>,
}

impl Isolated {
    pub fn new(inner: Box<dyn Runtime>) -> Isolated {
        Isolated { inner }
    }

    // The helper gets the stdio descriptors; the caller's copies close
    // when the closure is dropped, right after the fork.
    pub async fn create(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<u32, RuntimeError> {
        in_child("create", || self.inner.create(id, bundle, stdio)).await
    }

    pub async fn exec(&self, id: &str, process: &Path, stdio: Stdio) -> Result<u32, RuntimeError> {
        in_child("exec", || self.inner.exec(id, process, stdio)).await
    }

    pub async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        in_child("start", || unit(self.inner.start(id))).await.map(drop)
    }

    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), RuntimeError> {
        in_child("kill", || unit(self.inner.kill(id, signal, all))).await.map(drop)
    }

    pub async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        in_child("pause", || unit(self.inner.pause(id))).await.map(drop)
    }

    pub async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        in_child("resume", || unit(self.inner.resume(id))).await.map(drop)
    }

    pub async fn checkpoint(&self, id: &str, c: &crate::Checkpoint) -> Result<(), RuntimeError> {
        in_child("checkpoint", || unit(self.inner.checkpoint(id, c))).await.map(drop)
    }

    // The helper gets the stdio descriptors, as for create.
    pub async fn restore(
        &self,
        id: &str,
        bundle: &Path,
        stdio: Stdio,
        c: &crate::Checkpoint,
    ) -> Result<u32, RuntimeError> {
        in_child("restore", || self.inner.restore(id, bundle, stdio, c)).await
    }

    // A sandbox shim lives on after a delete, and a hung poststop hook
    // must not stall it: delete runs in a helper too.
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        in_child("delete", || unit(self.inner.delete(id, force))).await.map(drop)
    }

    /// [`Runtime::delete_exited`], in place: it runs no hook and waits for
    /// nothing, so it needs no helper.
    pub fn delete_exited(&self, id: &str) -> Option<Result<(), RuntimeError>> {
        self.inner.delete_exited(id)
    }
}

fn unit(r: Result<(), RuntimeError>) -> Result<u32, RuntimeError> {
    r.map(|()| 0)
}

#[derive(Serialize, Deserialize)]
enum Outcome<T> {
    Ok(T),
    Err { code: Code, message: String },
}

fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Threads:")).map(|l| l.trim_end().ends_with(":\t1")))
        .unwrap_or(false)
}

/// Runs `f` in a helper forked *now* from this (single-threaded) process;
/// the returned future waits for the helper's answer without blocking the
/// caller's other tasks. A multi-threaded caller runs `f` in place.
pub fn in_child<T: Serialize + DeserializeOwned + Send + 'static>(
    op: &'static str,
    f: impl FnOnce() -> Result<T, RuntimeError>,
) -> impl Future<Output = Result<T, RuntimeError>> + Send + 'static {
    let forked = fork_helper(op, f);
    async move {
        match forked? {
            Forked::InPlace(result) => result,
            Forked::Helper(helper) => helper.answer().await,
        }
    }
}

enum Forked<T> {
    InPlace(Result<T, RuntimeError>),
    Helper(Helper),
}

/// A forked helper whose answer is still to come.
struct Helper {
    op: &'static str,
    pid: Pid,
    /// The read end of the answer pipe.
    rx: OwnedFd,
    pidfd: OwnedFd,
}

fn fork_helper<T: Serialize>(
    op: &'static str,
    f: impl FnOnce() -> Result<T, RuntimeError>,
) -> Result<Forked<T>, RuntimeError> {
    if !single_threaded() {
        // A restore moves its caller into the container's cgroup and a
        // mount namespace of its own: never in place.
        if matches!(op, "checkpoint" | "restore") {
            let message = "needs a single-threaded caller to fork a helper from".to_string();
            return Err(RuntimeError::Failed { runtime: "isolated", op, message });
        }
        return Ok(Forked::InPlace(f()));
    }
    let io = |e: nix::Error| RuntimeError::io("fork runtime helper", e.into());
    // Close-on-exec: the container's init inherits the child's descriptors
    // and must not keep this pipe past its exec.
    let (rx, tx) = pipe2(OFlag::O_CLOEXEC).map_err(io)?;
    // SAFETY: the caller is single-threaded (checked above), so the child
    // has a consistent copy of every lock and allocator state.
    match unsafe { fork() }.map_err(io)? {
        ForkResult::Child => {
            drop(rx);
            let shared = NOT_FOR_HELPERS.load(Ordering::SeqCst);
            if shared >= 0 {
                // SAFETY: the helper's copy of a descriptor it never uses.
                unsafe { libc::close(shared) };
            }
            let helper = std::process::id();
            // The helper never returns into the caller, whatever `f` does:
            // a panic (in the helper, or in a process the runtime cloned
            // from it on the same stack) ends here too, so no copy of the
            // shim ever serves its connection.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            if std::process::id() != helper {
                // A runtime's clone of the helper that came back here.
                // SAFETY: leave at once, without destructors.
                unsafe { libc::_exit(127) }
            }
            let outcome = match result {
                Ok(Ok(v)) => Outcome::Ok(v),
                Ok(Err(e)) => Outcome::Err { code: e.code(), message: e.to_string() },
                Err(_) => Outcome::Err { code: Code::Internal, message: format!("the runtime panicked during {op}") },
            };
            let mut w = std::fs::File::from(tx);
            // One line: the parent reads up to the newline, not to EOF, as
            // the container's init holds a copy of the pipe until it execs.
            let _ = serde_json::to_writer(&mut w, &outcome).map(|_| w.write_all(b"\n")).map(|_| w.flush());
            // SAFETY: leave without running the parent's destructors or atexit handlers.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(tx);
            // No await since the fork: nobody can have reaped the helper,
            // so its pid is still its own.
            match pidfd_open(child.as_raw() as u32) {
                Ok(pidfd) => Ok(Forked::Helper(Helper { op, pid: child, rx, pidfd })),
                Err(e) => {
                    // Without a pidfd the helper's death cannot be awaited.
                    let _ = kill(child, Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    Err(RuntimeError::io("open the runtime helper's pidfd", e))
                }
            }
        }
    }
}

/// Opens a pidfd: a handle that becomes readable when the process exits and
/// never refers to a recycled pid.
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this new descriptor; we own it.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) })
}

impl Helper {
    /// Waits for the helper's answer, then reaps the helper.
    async fn answer<T: DeserializeOwned>(self) -> Result<T, RuntimeError> {
        let Helper { op, pid, rx, pidfd } = self;
        let pidfd = register(pidfd).map_err(|e| RuntimeError::io("watch the runtime helper", e))?;
        let read = read_answer(rx, &pidfd).await;
        let died = reap(pid, &pidfd).await;
        let buf = read.as_deref().unwrap_or_default();
        match (&read, serde_json::from_str::<Outcome<T>>(buf)) {
            (Ok(_), Ok(Outcome::Ok(v))) => Ok(v),
            (Ok(_), Ok(Outcome::Err { code, message })) => Err(RuntimeError::Isolated { code, message }),
            _ => Err(RuntimeError::Failed {
                runtime: "isolated",
                op,
                message: format!("runtime helper died without an answer ({})", died.unwrap_or_default()),
            }),
        }
    }
}

/// Registers a descriptor with the caller's tokio reactor.
fn register<T: AsRawFd>(fd: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: the AsyncFd owns the descriptor for its whole life.
    unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)
}

/// Reaps the exited helper; describes how it ended unless it exited 0.
/// The caller's own reaper may have been first (ECHILD): that is fine.
async fn reap(pid: Pid, pidfd: &AsyncFd<OwnedFd>) -> Option<String> {
    loop {
        let status = waitid(Id::PIDFd(pidfd.get_ref().as_fd()), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG);
        match status {
            Ok(WaitStatus::Exited(_, 0)) => return None,
            Ok(WaitStatus::StillAlive) => {}
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => return Some(format!("helper {pid} reaped elsewhere")),
            other => return Some(format!("{other:?}")),
        }
        match pidfd.readable().await {
            Ok(mut guard) => guard.clear_ready(),
            Err(e) => return Some(e.to_string()),
        }
    }
}

/// Reads the helper's one-line answer. The container's init holds a copy
/// of the pipe until it execs, so the end of the pipe says nothing: the
/// read also ends when the helper itself has exited (a helper killed half
/// way must not stall the caller until the container's init goes away).
async fn read_answer(rx: OwnedFd, pidfd: &AsyncFd<OwnedFd>) -> std::io::Result<String> {
    nix::fcntl::fcntl(rx.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    let pipe = register(std::fs::File::from(rx))?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let helper_gone = tokio::select! {
            ready = pipe.readable() => {
                ready?.clear_ready();
                false
            }
            gone = pidfd.readable() => {
                // Level-triggered for an exited process: keep it ready.
                gone.map(drop)?;
                true
            }
        };
        loop {
            match pipe.get_ref().read(&mut chunk) {
                Ok(0) => return Ok(String::from_utf8_lossy(&answer).into_owned()),
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if answer.contains(&b'\n') || helper_gone {
            return Ok(String::from_utf8_lossy(&answer).into_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    /// A helper that dies without answering, while a process it started
    /// (like a container's init) still holds the pipe, does not stall the
    /// caller; its exit is reported.
    #[test]
    fn a_helper_killed_half_way_does_not_stall_the_caller() {
        let (rx, tx) = pipe2(OFlag::O_CLOEXEC).unwrap();
        // SAFETY: the children only call async-signal-safe functions.
        let pid = match unsafe { fork() }.unwrap() {
            ForkResult::Child => unsafe {
                if let Ok(ForkResult::Child) = fork() {
                    // The "init": keeps `tx` open for a while.
                    libc::sleep(3);
                }
                libc::_exit(9)
            },
            ForkResult::Parent { child } => child,
        };
        drop(tx);
        let pidfd = pidfd_open(pid.as_raw() as u32).unwrap();
        let started = std::time::Instant::now();
        let got = block_on(Helper { op: "test", pid, rx, pidfd }.answer::<u32>());
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
        let message = got.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("without an answer") && message.contains("9"), "{message}");
    }

    #[test]
    fn an_answer_is_read_up_to_its_newline() {
        let (rx, tx) = pipe2(OFlag::O_CLOEXEC).unwrap();
        let mut w = std::fs::File::from(tx);
        w.write_all(b"{\"Ok\":7}\n").unwrap();
        // The writer stays open (as init's copy would), and the process
        // watched lives on: the newline ends the read.
        let me = pidfd_open(std::process::id()).unwrap();
        let got = block_on(async { read_answer(rx, &register(me).unwrap()).await }).unwrap();
        assert_eq!(serde_json::from_str::<Outcome<u32>>(&got).ok().map(|o| matches!(o, Outcome::Ok(7))), Some(true));
        drop(w);
    }
}
