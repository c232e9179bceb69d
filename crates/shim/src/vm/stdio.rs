//! The host's ends of the stdio of a process in the guest (`vsock_io`).
//! For each stream the shim listens where the vsock backend delivers the
//! guest's dial to a host port (`<vsock>_PORT`), takes the connection that
//! proves the stream's token, and copies: output into the process's real
//! target with the sinks a host container's output has (berth's rotated
//! log, a caller's log file, a CRI log, a FIFO), stdin from the caller's
//! FIFO. A terminal's output and input are two streams the shim serves
//! like a local pty (`tty::serve`: log, attach socket, early output);
//! its size is the guest's (ResizePty is forwarded). Every copy belongs to
//! its process's [`ProcessIo`] and ends with it: after a Delete the guest
//! can write nothing more.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_model::Code;
use berth_shim::{to_ttrpc, tty_socket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::{TtrpcResult, VmProxy};
use crate::output::{Drained, Sink, copy, register};
use crate::stdio::{is_fifo, open_fifo, output_at};
use crate::tty::{self, Pty};
use crate::vsock_io::{self, TOKEN_LINE};

/// How long a stream waits for the guest to dial it, from the Create or
/// Exec that named it.
const DIAL_LIMIT: Duration = Duration::from_secs(60);
/// How long a connection may take to send its token (the guest's shim
/// sends it right after connecting).
const PROOF_LIMIT: Duration = Duration::from_secs(1);
/// Connections of one stream whose token is awaited at once; more are
/// closed at once (a container in the guest can dial the host too).
const PROVING: usize = 8;

/// One process's stdio on the host: what its exit waits for, the writer
/// that keeps its stdin open until CloseIO, its terminal's service, and
/// its copies, all ended with it.
pub(super) struct ProcessIo {
    /// Which reservation made it (`Reservation`).
    slot: u64,
    drained: Arc<DrainOnce>,
    keeper: Option<File>,
    _pty: Option<Pty>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl ProcessIo {
    /// A place held for a process whose stdio is being set up.
    pub(super) fn reserved() -> ProcessIo {
        static SLOTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let slot = SLOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ProcessIo { slot, drained: DrainOnce::new(None), keeper: None, _pty: None, tasks: Vec::new() }
    }

    /// Ends the process's stdin once its caller's writers are gone.
    pub(super) fn close_stdin(&mut self) {
        self.keeper = None;
    }

    pub(super) fn drained(&self) -> Arc<DrainOnce> {
        self.drained.clone()
    }
}

/// Each process's stdio, by container and exec id.
pub(super) type Ios = Mutex<std::collections::HashMap<(String, String), ProcessIo>>;

/// An exec id held in [`Ios`] while its stdio is set up (a second Exec
/// with it is refused, not let near the first one's attach socket);
/// released unless filled, also when the call is abandoned. It touches
/// only its own slot: not one a later Exec of the id took after this one
/// was deleted.
pub(super) struct Reservation<'a> {
    ios: &'a Ios,
    key: Option<(String, String)>,
    slot: u64,
}

impl<'a> Reservation<'a> {
    pub(super) fn take(ios: &'a Ios, key: (String, String)) -> TtrpcResult<Reservation<'a>> {
        let mut held = ios.lock().map_err(|_| internal("lock poisoned"))?;
        if held.contains_key(&key) {
            return Err(to_ttrpc(Code::AlreadyExists, format!("exec {} exists", key.1)));
        }
        let reserved = ProcessIo::reserved();
        let slot = reserved.slot;
        held.insert(key.clone(), reserved);
        Ok(Reservation { ios, key: Some(key), slot })
    }

    /// Puts the process's stdio in its place (unless its container or the
    /// exec was deleted meanwhile).
    pub(super) fn fill(mut self, mut io: ProcessIo) {
        io.slot = self.slot;
        let key = self.key.take();
        if let (Some(key), Ok(mut ios)) = (key, self.ios.lock())
            && let Some(held) = ios.get_mut(&key).filter(|held| held.slot == self.slot)
        {
            *held = io;
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take()
            && let Ok(mut ios) = self.ios.lock()
            && ios.get(&key).is_some_and(|held| held.slot == self.slot)
        {
            ios.remove(&key);
        }
    }
}

/// A process's output copied to the end, awaited by every waiter of its
/// exit (at most `output::DRAIN_LIMIT` after the first asked).
pub(super) struct DrainOnce {
    drained: Mutex<Option<Drained>>,
    done: watch::Sender<bool>,
}

impl DrainOnce {
    /// Done once `drained` is (at once without one).
    fn new(drained: Option<Drained>) -> Arc<DrainOnce> {
        Arc::new(DrainOnce { done: watch::channel(drained.is_none()).0, drained: Mutex::new(drained) })
    }

    pub(super) async fn wait(self: Arc<Self>) {
        let mut done = self.done.subscribe();
        if let Some(drained) = self.drained.lock().ok().and_then(|mut d| d.take()) {
            // Its own task: a waiter that goes away ends no one's wait.
            let me = self.clone();
            tokio::spawn(async move {
                drained.wait().await;
                me.done.send_replace(true);
            });
        }
        let _ = done.wait_for(|d| *d).await;
    }
}

/// A process's stdio targets on the host, opened before anything is made
/// for it (a bad one is refused before a VM boots).
pub(super) struct Targets {
    terminal: bool,
    input: Option<OwnedFd>,
    keeper: Option<File>,
    outputs: [Option<Sink>; 2],
}

/// Opens the host's targets of a new process's stdio: `stdin` (a FIFO or
/// none), `stdout` and `stderr` (as a host shim takes them), for a
/// terminal or not.
pub(super) fn open_targets(terminal: bool, [stdin, stdout, stderr]: [&str; 3]) -> TtrpcResult<Targets> {
    let sink = |path: &str| (!path.is_empty()).then(|| output_at(path)).transpose();
    let (input, keeper) = match stdin {
        "" => (None, None),
        path if is_fifo(path) => open_fifo(path, true).map(|(reader, keeper)| (Some(reader), keeper))?,
        path => return Err(to_ttrpc(Code::InvalidArgument, format!("stdin {path}: a VM takes stdin from a FIFO"))),
    };
    Ok(Targets { terminal, input, keeper, outputs: [sink(stdout)?, sink(stderr)?] })
}

impl VmProxy {
    /// Starts the host's ends of a process's stdio into `targets`: returns
    /// them and the names the guest's shim gets for stdin, stdout and
    /// stderr. Nothing is left on error.
    pub(super) fn streams(&self, id: &str, exec_id: &str, targets: Targets) -> TtrpcResult<(ProcessIo, [String; 3])> {
        let Targets { terminal, input, keeper, outputs: [stdout, stderr] } = targets;
        let mut io = ProcessIo::reserved();
        io.keeper = keeper;
        let mut drained = Drained::default();
        let names = if terminal {
            let (inside, outside) = std::os::unix::net::UnixStream::pair().map_err(internal)?;
            let attach = tty_socket(&self.socket, id, exec_id);
            let ended = Some(drained.reserve());
            io._pty = Some(tty::serve(OwnedFd::from(inside), stdout, input, attach, ended).map_err(internal)?);
            outside.set_nonblocking(true).map_err(internal)?;
            let (mut from_pty, mut to_pty) = UnixStream::from_std(outside).map_err(internal)?.into_split();
            let (out, into) = (self.listen()?, self.listen()?);
            let accept = out.accept;
            io.tasks.push(tokio::spawn(async move {
                if let Some(mut guest) = accept.await {
                    let _ = tokio::io::copy(&mut guest, &mut to_pty).await;
                }
                // The pty's end of output, as when a local one's processes
                // are gone.
                let _ = to_pty.shutdown().await;
            }));
            let accept = into.accept;
            io.tasks.push(tokio::spawn(async move {
                if let Some(mut guest) = accept.await {
                    let _ = tokio::io::copy(&mut from_pty, &mut guest).await;
                }
            }));
            [into.name, out.name, String::new()]
        } else {
            let mut names = [String::new(), String::new(), String::new()];
            if let Some(input) = input {
                let mut input = tokio::net::unix::pipe::Receiver::from_owned_fd(input).map_err(internal)?;
                let stream = self.listen()?;
                names[0] = stream.name;
                let accept = stream.accept;
                io.tasks.push(tokio::spawn(async move {
                    if let Some(mut guest) = accept.await {
                        let _ = tokio::io::copy(&mut input, &mut guest).await;
                    }
                }));
            }
            for (n, sink) in [(1, stdout), (2, stderr)] {
                let Some(sink) = sink else { continue };
                let stream = self.listen()?;
                names[n] = stream.name;
                io.tasks.push(tokio::spawn(copy_output(stream.accept, sink, drained.reserve())));
            }
            names
        };
        io.drained = DrainOnce::new(Some(drained));
        Ok((io, names))
    }

    /// A new stream: listening where the vsock backend delivers the
    /// guest's dial of its port until the guest proves it (or
    /// [`DIAL_LIMIT`]); the socket goes with it, also if it never runs.
    fn listen(&self) -> TtrpcResult<Pending> {
        let token = vsock_io::new_token().map_err(internal)?;
        // A random port: a container in the guest that can dial the host
        // cannot tell which port a stream will have (and hold it early).
        let (port, listener, path) = loop {
            let port = vsock_io::random_port().map_err(internal)?;
            let path = PathBuf::from(format!("{}_{port}", self.run_dir().join("vsock").display()));
            match UnixListener::bind(&path) {
                Ok(listener) => break (port, listener, path),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(internal(e)),
            }
        };
        let gone = Unlink(path);
        let name = vsock_io::name(port, &token);
        let accept = Box::pin(async move {
            let _gone = gone;
            let deadline = tokio::time::Instant::now() + DIAL_LIMIT;
            let mut proving = JoinSet::new();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return None,
                    Some(proved) = proving.join_next(), if !proving.is_empty() => {
                        if let Ok(Some(stream)) = proved {
                            return Some(stream);
                        }
                    }
                    conn = listener.accept() => match conn {
                        Ok((stream, _)) if proving.len() < PROVING => {
                            proving.spawn(prove(stream, token.clone()));
                        }
                        Ok(_) => {}
                        // Out of descriptors, say: again in a moment.
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                }
            }
        });
        Ok(Pending { name, accept })
    }
}

/// A stream's connection from the guest, once it came and proved itself.
type Accept = std::pin::Pin<Box<dyn Future<Output = Option<UnixStream>> + Send>>;

/// A listening stream: the name the guest gets, and its connection.
struct Pending {
    name: String,
    accept: Accept,
}

/// `stream` if it sends `token` and a newline within [`PROOF_LIMIT`].
async fn prove(mut stream: UnixStream, token: String) -> Option<UnixStream> {
    let mut line = [0u8; TOKEN_LINE];
    tokio::time::timeout(PROOF_LIMIT, stream.read_exact(&mut line)).await.ok()?.ok()?;
    let (sent, newline) = line.split_at(TOKEN_LINE - 1);
    (sent == token.as_bytes() && newline == b"\n").then_some(stream)
}

/// Copies an output stream, once dialled, into `sink` until it ends (or
/// its process's stdio does); `done` says when.
async fn copy_output(accept: Accept, sink: Sink, done: oneshot::Sender<()>) {
    let Some(guest) = accept.await else { return };
    // The copy a host process's output pipe gets, in this (tracked) task.
    if let Ok(read) = guest.into_std().map(OwnedFd::from).and_then(register) {
        copy(read, sink, done).await;
    }
}

/// Removes a stream's socket when its listener goes.
struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn internal(e: impl std::fmt::Display) -> containerd_shim_protos::ttrpc::Error {
    to_ttrpc(Code::Internal, format!("a VM process's stdio: {e}"))
}
