//! The host's ends of the stdio of a process in the guest (`vsock_io`).
//! For each stream the shim listens where the vsock backend delivers the
//! guest's dial to a host port (`<vsock>_PORT`), takes the connection that
//! proves the stream's token, and copies: output into the process's real
//! target with the sinks a host container's output has (berth's rotated
//! log, a caller's log file, a CRI log, a FIFO), stdin from the caller's
//! FIFO. A terminal's output and input are two streams the shim serves
//! like a local pty (`tty::serve`: log, attach socket, early output);
//! its size is the guest's (ResizePty is forwarded).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use berth_model::Code;
use berth_shim::{to_ttrpc, tty_socket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use super::{TtrpcResult, VmProxy};
use crate::output::{Drained, Sink, copy_into, open_sink};
use crate::tty::{self, Pty};
use crate::vsock_io::{self, TOKEN_LINE};

/// How long a stream waits for the guest to dial it (its process is
/// created or started meanwhile).
const DIAL_LIMIT: Duration = Duration::from_secs(60);
/// How long a connection may take to send its token.
const PROOF_LIMIT: Duration = Duration::from_secs(2);

/// One process's stdio on the host: what its exit waits for, the writer
/// that keeps its stdin open until CloseIO, its terminal's service, and
/// the streams not yet dialled (given up with it).
pub(super) struct ProcessIo {
    drained: std::sync::Arc<DrainOnce>,
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
    /// Ends the process's stdin once its caller's writers are gone.
    pub(super) fn close_stdin(&mut self) {
        self.keeper = None;
    }

    pub(super) fn drained(&self) -> std::sync::Arc<DrainOnce> {
        self.drained.clone()
    }
}

/// A process's output copied to the end, waited for by every waiter of
/// its exit (at most `output::DRAIN_LIMIT`).
#[derive(Default)]
pub(super) struct DrainOnce {
    drained: Mutex<Option<Drained>>,
    done: OnceCell<()>,
}

impl DrainOnce {
    pub(super) async fn wait(&self) {
        self.done
            .get_or_init(|| async {
                let drained = self.drained.lock().ok().and_then(|mut d| d.take());
                if let Some(drained) = drained {
                    drained.wait().await;
                }
            })
            .await;
    }
}

/// A stream's connection from the guest, once it came and proved itself.
type Accept = std::pin::Pin<Box<dyn Future<Output = Option<UnixStream>> + Send>>;

/// A listening stream: the name the guest gets, and its connection.
struct Pending {
    name: String,
    accept: Accept,
}

impl VmProxy {
    /// Sets up the host's ends of a new process's stdio: `stdin` (a FIFO or
    /// none), `stdout` and `stderr` (targets as a host shim takes them) or
    /// a terminal. Returns them and the names the guest's shim gets for
    /// stdin, stdout and stderr. Nothing is left on error.
    pub(super) fn host_stdio(
        &self,
        id: &str,
        exec_id: &str,
        terminal: bool,
        [stdin, stdout, stderr]: [&str; 3],
    ) -> TtrpcResult<(ProcessIo, [String; 3])> {
        let invalid = |path: &str, e: std::io::Error| to_ttrpc(Code::InvalidArgument, format!("open {path}: {e}"));
        let sink = |path: &str| (!path.is_empty()).then(|| open_sink(path).map_err(|e| invalid(path, e))).transpose();
        let (input, keeper) = match stdin {
            "" => (None, None),
            path if std::fs::metadata(path).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type())) => {
                crate::stdio::open_fifo(path, true).map(|(reader, keeper)| (Some(reader), keeper))?
            }
            path => return Err(to_ttrpc(Code::InvalidArgument, format!("stdin {path}: a VM takes stdin from a FIFO"))),
        };
        let mut io = ProcessIo { drained: Default::default(), keeper, _pty: None, tasks: Vec::new() };
        let mut drained = Drained::default();
        let names = if terminal {
            let (inside, outside) = std::os::unix::net::UnixStream::pair().map_err(internal)?;
            let attach = tty_socket(&self.socket, id, exec_id);
            io._pty = Some(tty::serve(OwnedFd::from(inside), sink(stdout)?, input, attach).map_err(internal)?);
            outside.set_nonblocking(true).map_err(internal)?;
            let (mut from_pty, mut to_pty) = UnixStream::from_std(outside).map_err(internal)?.into_split();
            let (out, into) = (self.listen()?, self.listen()?);
            let (done, accept) = (drained.reserve(), out.accept);
            io.tasks.push(tokio::spawn(async move {
                if let Some(mut guest) = accept.await {
                    let _ = tokio::io::copy(&mut guest, &mut to_pty).await;
                }
                // The pty's end of output, as when a local one's processes
                // are gone.
                let _ = to_pty.shutdown().await;
                drop(done);
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
            for (n, path) in [(1, stdout), (2, stderr)] {
                let Some(sink) = sink(path)? else { continue };
                let stream = self.listen()?;
                names[n] = stream.name;
                let (done, accept) = (drained.reserve(), stream.accept);
                io.tasks.push(tokio::spawn(copy_output(accept, sink, done)));
            }
            names
        };
        io.drained = std::sync::Arc::new(DrainOnce { drained: Mutex::new(Some(drained)), done: OnceCell::new() });
        Ok((io, names))
    }

    /// A new stream: listening where the vsock backend delivers the
    /// guest's dial of its port, until the guest proves it (or
    /// [`DIAL_LIMIT`]); the socket goes with it.
    fn listen(&self) -> TtrpcResult<Pending> {
        let port = self.next_port.fetch_add(1, Ordering::Relaxed);
        let token = vsock_io::new_token().map_err(internal)?;
        let path = PathBuf::from(format!("{}_{port}", self.run_dir().join("vsock").display()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(internal)?;
        let name = vsock_io::name(port, &token);
        let accept = Box::pin(async move {
            let _gone = Unlink(path);
            let deadline = tokio::time::Instant::now() + DIAL_LIMIT;
            loop {
                let (mut stream, _) = tokio::time::timeout_at(deadline, listener.accept()).await.ok()?.ok()?;
                let mut line = [0u8; TOKEN_LINE];
                let read = tokio::time::timeout(PROOF_LIMIT, stream.read_exact(&mut line)).await;
                if matches!(read, Ok(Ok(_)))
                    && line[..TOKEN_LINE - 1] == *token.as_bytes()
                    && line[TOKEN_LINE - 1] == b'\n'
                {
                    return Some(stream);
                }
            }
        });
        Ok(Pending { name, accept })
    }
}

/// Copies an output stream, once dialled, into `sink`; `done` says when
/// it ended (or never came).
async fn copy_output(accept: Accept, sink: Sink, done: tokio::sync::oneshot::Sender<()>) {
    let Some(guest) = accept.await else { return };
    let fd = guest.into_std().map(OwnedFd::from);
    if let Ok(fd) = fd {
        let _ = copy_into(fd, sink, done);
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
