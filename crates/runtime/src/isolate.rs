//! Runs the runtime operations (all but delete) in a forked child of
//! the caller. The caller (a shim) then never executes most of the
//! runtime's code itself, so its resident memory stays small while its
//! container runs, and a crash inside container creation cannot take the
//! shim — and with it the exit codes it guards — down.
//!
//! The caller must be single-threaded when it calls in: fork only copies
//! the calling thread, and a single-threaded caller also cannot reap the
//! child behind our back.

use std::io::{BufRead, BufReader, Write};
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
            let outcome = match f() {
                Ok(v) => Outcome::Ok(v),
                Err(e) => Outcome::Err { code: e.code(), message: e.to_string() },
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
            let mut buf = String::new();
            let read = BufReader::new(std::fs::File::from(rx)).read_line(&mut buf);
            let status = waitpid(child, None);
            let died = match status {
                Ok(WaitStatus::Exited(_, 0)) => None,
                other => Some(format!("{other:?}")),
            };
            match (read, serde_json::from_str::<Outcome<T>>(&buf)) {
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
