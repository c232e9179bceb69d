//! Runs the runtime operations (all but delete) in a forked child of
//! the caller. The caller (a shim) then never executes most of the
//! runtime's code itself, so its resident memory stays small while its
//! container runs, and a crash inside container creation cannot take the
//! shim — and with it the exit codes it guards — down.
//!
//! The caller must be single-threaded when it calls in: fork only copies
//! the calling thread, and a single-threaded caller also cannot reap the
//! child behind our back.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use berth_model::Code;
use nix::fcntl::OFlag;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork, pipe2};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Runtime, RuntimeError, Stdio};

pub struct Isolated {
    inner: Box<dyn Runtime>,
}

impl Isolated {
    pub fn new(inner: Box<dyn Runtime>) -> Isolated {
        Isolated { inner }
    }
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

/// Runs `f` in a forked child of this (single-threaded) process and returns
/// its result; a multi-threaded caller runs `f` in place.
pub fn in_child<T: Serialize + DeserializeOwned>(
    op: &'static str,
    f: impl FnOnce() -> Result<T, RuntimeError>,
) -> Result<T, RuntimeError> {
    if !single_threaded() {
        return f();
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
            let read = read_answer(rx, child.as_raw() as u32);
            let buf = read.as_deref().unwrap_or_default();
            let status = waitpid(child, None);
            let died = match status {
                Ok(WaitStatus::Exited(_, 0)) => None,
                other => Some(format!("{other:?}")),
            };
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
}

/// Reads the helper's one-line answer. The container's init holds a copy
/// of the pipe until it execs, so the end of the pipe says nothing: the
/// read also ends when the helper itself has exited (a helper killed half
/// way must not stall the caller until the container's init goes away).
fn read_answer(rx: OwnedFd, helper: u32) -> std::io::Result<String> {
    // SAFETY: plain syscall; the helper is our unreaped child, so its pid
    // cannot have been reused.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, helper as libc::pid_t, 0) };
    // SAFETY: the kernel just returned this descriptor; we own it.
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd as i32) });
    nix::fcntl::fcntl(rx.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    let mut pipe = std::fs::File::from(rx);
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut fds = [
            libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: pidfd.as_ref().map_or(-1, |f| f.as_raw_fd()), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: poll on two descriptors we own (-1 is ignored).
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let helper_gone = fds[1].revents != 0;
        loop {
            match pipe.read(&mut chunk) {
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

fn unit(r: Result<(), RuntimeError>) -> Result<u32, RuntimeError> {
    r.map(|()| 0)
}

impl Runtime for Isolated {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    // The child gets the stdio descriptors; the parent's copies close when
    // the closure is dropped.
    fn create(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<u32, RuntimeError> {
        in_child("create", || self.inner.create(id, bundle, stdio))
    }

    fn exec(&self, id: &str, process: &Path, stdio: Stdio) -> Result<u32, RuntimeError> {
        in_child("exec", || self.inner.exec(id, process, stdio))
    }

    fn start(&self, id: &str) -> Result<(), RuntimeError> {
        in_child("start", || unit(self.inner.start(id))).map(drop)
    }

    fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), RuntimeError> {
        in_child("kill", || unit(self.inner.kill(id, signal, all))).map(drop)
    }

    fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        in_child("pause", || unit(self.inner.pause(id))).map(drop)
    }

    fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        in_child("resume", || unit(self.inner.resume(id))).map(drop)
    }

    // Delete is the shim's last act before it exits: its memory no longer
    // matters, so it runs in place and saves a fork.
    fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        self.inner.delete(id, force)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A helper that dies without answering, while a process it started
    /// (like a container's init) still holds the pipe, does not stall the
    /// caller.
    #[test]
    fn a_helper_killed_half_way_does_not_stall_the_caller() {
        let (rx, tx) = pipe2(OFlag::O_CLOEXEC).unwrap();
        // SAFETY: the children only call async-signal-safe functions.
        let helper = match unsafe { fork() }.unwrap() {
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
        let started = std::time::Instant::now();
        let answer = read_answer(rx, helper.as_raw() as u32).unwrap();
        assert_eq!(answer, "");
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(matches!(waitpid(helper, None), Ok(WaitStatus::Exited(_, 9))));
    }

    #[test]
    fn an_answer_is_read_up_to_its_newline() {
        let (rx, tx) = pipe2(OFlag::O_CLOEXEC).unwrap();
        let mut w = std::fs::File::from(tx);
        w.write_all(b"{\"Ok\":7}\n").unwrap();
        // The writer stays open (as init's copy would): the newline ends it.
        let me = std::process::id();
        let got = std::thread::spawn(move || read_answer(rx, me)).join().unwrap().unwrap();
        assert_eq!(serde_json::from_str::<Outcome<u32>>(&got).ok().map(|o| matches!(o, Outcome::Ok(7))), Some(true));
        drop(w);
    }
}
