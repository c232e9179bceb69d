//! A process's stdio as pipes the shim copies: stdout and stderr into the
//! log files (berthd) or FIFOs (containerd's clients read those),
//! interactive stdin from a FIFO. The process never holds
//! a host file, so `/proc/self/fd/{0,1,2}` name pipes, not host paths (as
//! with containerd's and CRI-O's shims). [`Drained`] tells when every
//! writer of an output pipe has closed it and the copy reached the file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::Arc;
use std::time::Duration;

use berth_shim::crilog::{self, CriLog};
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

    /// One more output to wait for: drained once the sender says so or
    /// is dropped.
    pub fn reserve(&mut self) -> oneshot::Sender<()> {
        let (done, rx) = oneshot::channel();
        self.0.push(rx);
        done
    }
}

/// Where a process's output goes.
pub enum Sink {
    /// A log file: appended to, never blocks for long.
    File(File),
    /// A FIFO someone reads: written as the reader takes it, and closed at
    /// the end so the reader sees the end too.
    Fifo(AsyncFd<OwnedFd>),
    /// One stream of a Kubernetes CRI log file (`berth_shim::crilog`).
    Cri(CriLog),
    /// A FIFO nobody had opened for reading yet: containerd's clients open
    /// theirs asynchronously, so it is opened at the first write once its
    /// reader has come, or given up after [`FIFO_WAIT`].
    Waiting(String),
    /// A FIFO whose reader never came: the output is discarded.
    Discard,
}

/// How long the first output waits for a FIFO's reader.
const FIFO_WAIT: Duration = Duration::from_secs(2);

impl Sink {
    /// Writes all of `buf`. A full disk or a reader that went away loses
    /// output, not the process: errors are dropped.
    pub async fn write(&mut self, buf: &[u8]) {
        if let Sink::Waiting(path) = self {
            *self = wait_for_reader(path).await.map_or(Sink::Discard, Sink::Fifo);
        }
        match self {
            Sink::File(log) => drop(log.write_all(buf)),
            Sink::Fifo(fifo) => drop(write_all(fifo, buf).await),
            Sink::Cri(log) => log.write(buf),
            Sink::Waiting(_) | Sink::Discard => {}
        }
    }
}

/// Opens a FIFO's write end without blocking; `None` while it has no reader.
fn open_writer(path: &str) -> std::io::Result<Option<AsyncFd<OwnedFd>>> {
    match OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path) {
        Ok(f) => Ok(Some(register(f.into())?)),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The FIFO at `path` once a reader has opened it (within [`FIFO_WAIT`]).
async fn wait_for_reader(path: &str) -> Option<AsyncFd<OwnedFd>> {
    let deadline = tokio::time::Instant::now() + FIFO_WAIT;
    loop {
        match open_writer(path) {
            Ok(Some(fd)) => return Some(fd),
            Ok(None) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(5)).await,
            _ => return None,
        }
    }
}

/// Opens the output at `path` (a file, a FIFO, or a CRI log target); a
/// FIFO with no reader yet is opened at the first write (`Waiting`).
pub fn open_sink(path: &str) -> std::io::Result<Sink> {
    if let Some(target) = crilog::parse_target(path) {
        return Ok(Sink::Cri(CriLog::open(&target)?));
    }
    if !std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo()) {
        return Ok(Sink::File(OpenOptions::new().append(true).create(true).open(path)?));
    }
    Ok(open_writer(path)?.map_or_else(|| Sink::Waiting(path.to_string()), Sink::Fifo))
}

/// Makes the pipe for the output `sink` and starts copying; returns the
/// write end for the process.
pub fn pipe_to(sink: Sink, drained: &mut Drained) -> std::io::Result<OwnedFd> {
    // Close-on-exec: only the process's own copy (dup'ed onto 1 or 2 by the
    // runtime) survives its exec.
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(std::io::Error::from)?;
    // The process gets an ordinary blocking pipe.
    nix::fcntl::fcntl(write.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))
        .map_err(std::io::Error::from)?;
    copy_into(read, sink, drained.reserve())?;
    Ok(write)
}

/// Copies what `source` (non-blocking) carries into `sink` in a task of
/// its own until it ends, then says so on `done`.
fn copy_into(source: OwnedFd, sink: Sink, done: oneshot::Sender<()>) -> std::io::Result<()> {
    tokio::spawn(copy(register(source)?, sink, done));
    Ok(())
}

/// Copies what `read` carries into `sink` until it ends, then says so on
/// `done`.
pub async fn copy(read: AsyncFd<OwnedFd>, mut sink: Sink, done: oneshot::Sender<()>) {
    let mut buf = Vec::new();
    while let Some(n) = read_some(&read, &mut buf).await {
        sink.write(&buf[..n]).await;
    }
    drop(sink);
    let _ = done.send(());
}

/// Feeds a process's stdin from `source` (berthd's FIFO, opened without
/// blocking) through a pipe and returns the pipe's read end for the
/// process. The pipe ends when `source` does, or when the process closes
/// its stdin.
pub fn pipe_from(source: OwnedFd) -> std::io::Result<OwnedFd> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(std::io::Error::from)?;
    // The process gets an ordinary blocking pipe.
    nix::fcntl::fcntl(read.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::empty())).map_err(std::io::Error::from)?;
    feed(source, Arc::new(register(write)?))?;
    Ok(read)
}

/// Copies `source` (a FIFO opened without blocking) into `sink` (a
/// non-blocking descriptor) until either ends.
pub fn feed<T: AsFd + AsRawFd + Send + Sync + 'static>(source: OwnedFd, sink: Arc<AsyncFd<T>>) -> std::io::Result<()> {
    let source = register(source)?;
    tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(n) = read_some(&source, &mut buf).await {
            // An error: the reading side closed (the process its stdin).
            if write_all(&sink, &buf[..n]).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// Writes all of `buf` to a non-blocking descriptor as it takes it.
async fn write_all<T: AsFd + AsRawFd>(sink: &AsyncFd<T>, buf: &[u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let mut ready = sink.writable().await?;
        match ready.try_io(|fd| nix::unistd::write(fd.get_ref(), &buf[done..]).map_err(Into::into)) {
            Ok(Ok(w)) => done += w,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(())
}

/// Registers a descriptor with the runtime's reactor.
pub fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the descriptor for its whole life.
    unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)
}

/// Reads what is there; `None` at the end (or on an error). The buffer is
/// made at the first data, so a process that prints nothing costs its shim
/// no buffer (issue 14: a shim's memory).
async fn read_some(fd: &AsyncFd<OwnedFd>, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        let mut ready = fd.readable().await.ok()?;
        if buf.is_empty() {
            buf.resize(CHUNK, 0);
        }
        match ready.try_io(|fd| nix::unistd::read(fd.as_raw_fd(), buf).map_err(Into::into)) {
            Ok(Ok(0)) => return None,
            Ok(Ok(n)) => return Some(n),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => return None,
            Err(_would_block) => {}
        }
    }
}
