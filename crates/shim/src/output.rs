//! A process's stdio as pipes the shim copies: stdout and stderr into the
//! log files, interactive stdin from berthd's FIFO. The process never holds
//! a host file, so `/proc/self/fd/{0,1,2}` name pipes, not host paths (as
//! with containerd's and CRI-O's shims). [`Drained`] tells when every
//! writer of an output pipe has closed it and the copy reached the file.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

/// How long an exit waits for its output to be copied: the writers are
/// gone by then unless a process outside the one that exited (an exec's
/// background child) still holds the pipe.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Bytes copied per read.
const CHUNK: usize = 16 * 1024;

/// The ends of a process's output pipes, in the order they were made.
#[derive(Default)]
pub struct Drained(Vec<oneshot::Receiver<()>>);

impl Drained {
    /// Waits until every pipe has reached its end (at most [`DRAIN_LIMIT`]).
    pub async fn wait(self) {
        let all = async {
            for rx in self.0 {
                let _ = rx.await;
            }
        };
        let _ = tokio::time::timeout(DRAIN_LIMIT, all).await;
    }
}

/// Makes the pipe for the log file at `path` (empty: no output, /dev/null)
/// and starts copying; returns the write end for the process.
pub fn pipe_to_log(path: &str, drained: &mut Drained) -> std::io::Result<Option<OwnedFd>> {
    if path.is_empty() {
        return Ok(None);
    }
    let mut log = OpenOptions::new().append(true).create(true).open(path)?;
    // Close-on-exec: only the process's own copy (dup'ed onto 1 or 2 by the
    // runtime) survives its exec.
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(std::io::Error::from)?;
    // The process gets an ordinary blocking pipe.
    nix::fcntl::fcntl(write.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))
        .map_err(std::io::Error::from)?;
    let read = register(read)?;
    let (done, rx) = oneshot::channel();
    drained.0.push(rx);
    tokio::spawn(async move {
        let mut buf = [0u8; CHUNK];
        while let Some(n) = read_some(&read, &mut buf).await {
            // A full disk loses output, not the process: keep draining.
            let _ = log.write_all(&buf[..n]);
        }
        let _ = done.send(());
    });
    Ok(Some(write))
}

/// Feeds a process's stdin from `source` (berthd's FIFO, opened without
/// blocking) through a pipe and returns the pipe's read end for the
/// process. The pipe ends when `source` does, or when the process closes
/// its stdin.
pub fn pipe_from(source: OwnedFd) -> std::io::Result<OwnedFd> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(std::io::Error::from)?;
    // The process gets an ordinary blocking pipe.
    nix::fcntl::fcntl(read.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::empty())).map_err(std::io::Error::from)?;
    let (source, sink) = (register(source)?, register(write)?);
    tokio::spawn(async move {
        let mut buf = [0u8; CHUNK];
        'copy: while let Some(n) = read_some(&source, &mut buf).await {
            let mut done = 0;
            while done < n {
                let Ok(mut ready) = sink.writable().await else { break 'copy };
                match ready.try_io(|fd| nix::unistd::write(fd.get_ref(), &buf[done..n]).map_err(Into::into)) {
                    Ok(Ok(w)) => done += w,
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // The process closed its stdin.
                    Ok(Err(_)) => break 'copy,
                    Err(_would_block) => {}
                }
            }
        }
    });
    Ok(read)
}

fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the descriptor for its whole life.
    unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)
}

/// Reads what is there; `None` at the end (or on an error).
async fn read_some(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> Option<usize> {
    loop {
        let mut ready = fd.readable().await.ok()?;
        match ready.try_io(|fd| nix::unistd::read(fd.as_raw_fd(), buf).map_err(Into::into)) {
            Ok(Ok(0)) => return None,
            Ok(Ok(n)) => return Some(n),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => return None,
            Err(_would_block) => {}
        }
    }
}
