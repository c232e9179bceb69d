//! A process's stdout or stderr: a pipe whose write end the process gets
//! and whose read end the shim copies into the log file. The process never
//! holds the host's log file, so `/proc/self/fd/1` names a pipe, not a host
//! path (as with containerd's and CRI-O's shims). [`Drained`] tells when
//! every writer has closed the pipe and the copy has reached the file.

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
    // SAFETY: the AsyncFd owns the read end for its whole life.
    let read = unsafe { AsyncFd::register(read) }.map_err(std::io::Error::from)?;
    let (done, rx) = oneshot::channel();
    drained.0.push(rx);
    tokio::spawn(async move {
        let mut buf = [0u8; CHUNK];
        loop {
            let Ok(mut ready) = read.readable().await else { break };
            let n = match ready.try_io(|fd| nix::unistd::read(fd.as_raw_fd(), &mut buf).map_err(Into::into)) {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => n,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(Err(_)) => break,
                Err(_would_block) => continue,
            };
            // A full disk loses output, not the process: keep draining.
            let _ = log.write_all(&buf[..n]);
        }
        let _ = done.send(());
    });
    Ok(Some(write))
}
