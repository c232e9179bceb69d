//! A new process's stdio as the shim sets it up (SPEC B6, B17): output
//! through pipes into log files (berthd) or FIFOs (containerd's clients),
//! stdin from a file or a FIFO, or a terminal whose master arrives on a
//! console socket and is then served, fed from the stdin FIFO if there is
//! one.

use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use berth_model::Code;
use berth_runtime::Stdio;
use berth_shim::{console_socket, to_ttrpc, tty_socket};
use containerd_shim_protos::ttrpc;

use crate::output::{Drained, Sink, open_sink, pipe_from, pipe_to, register};
use crate::service::internal;
use crate::tasks::Shim;
use crate::tty::{self, ConsoleSocket, Pty};

type TtrpcResult<T> = ttrpc::Result<T>;

/// A terminal being set up: where its master will arrive, and the input
/// to feed it.
pub(crate) struct Terminal {
    console: ConsoleSocket,
    input: Option<OwnedFd>,
    /// Dropped when the terminal's output has all been copied: the exit is
    /// reported after it, as for pipes (a shell's last line could
    /// otherwise be lost when a client deletes the process at its exit).
    ended: tokio::sync::oneshot::Sender<()>,
}

/// What the runtime gets, the terminal to serve once the process exists,
/// the stdin writer kept until CloseIO, and the ends of the output pipes.
pub(crate) type ProcessStdio = (Stdio, Option<Terminal>, Option<File>, Drained);

impl Shim {
    /// The stdio of a new process: pipes, or a terminal whose master will
    /// arrive on a console socket.
    pub(crate) fn stdio(
        &self,
        terminal: bool,
        container_id: &str,
        exec_id: &str,
        stdin: &str,
        stdout: &str,
        stderr: &str,
    ) -> TtrpcResult<ProcessStdio> {
        let mut drained = Drained::default();
        // berthd's stdin lasts until CloseIO, so a client can come and go;
        // containerd's ends when its last writer is gone, as with runc.
        let keep = self.events.is_none();
        if terminal {
            let (input, keeper) = match stdin {
                "" => (None, None),
                path if self.is_stream(path) => (Some(dial(path)?), None),
                path => open_fifo(path, keep).map(|(reader, keeper)| (Some(reader), keeper))?,
            };
            let console =
                ConsoleSocket::bind(&console_socket(&self.socket, container_id, exec_id)).map_err(internal)?;
            let stdio = Stdio { console_socket: Some(console.path().to_path_buf()), ..Default::default() };
            let ended = drained.reserve();
            return Ok((stdio, Some(Terminal { console, input, ended }), keeper, drained));
        }
        let (stdin, keeper) = match self.is_stream(stdin) {
            true => (Some(pipe_from(dial(stdin)?).map_err(internal)?), None),
            false => open_stdin(stdin, keep)?,
        };
        let open = |path: &str, drained: &mut Drained| -> TtrpcResult<Option<OwnedFd>> {
            if path.is_empty() {
                return Ok(None);
            }
            Ok(Some(pipe_to(self.open_output(path)?, drained).map_err(internal)?))
        };
        let stdout = open(stdout, &mut drained)?;
        let stderr = open(stderr, &mut drained)?;
        Ok((Stdio { stdin, stdout, stderr, console_socket: None }, None, keeper, drained))
    }

    /// Takes the pty master from the console socket, gives the terminal its
    /// initial size (the spec's consoleSize) and serves it: output to `log`
    /// (a file or a FIFO), input from the stdin FIFO if any.
    pub(crate) fn serve_terminal(
        &self,
        terminal: Option<Terminal>,
        container_id: &str,
        exec_id: &str,
        log: &str,
        size: Option<(u32, u32)>,
    ) -> TtrpcResult<Option<Pty>> {
        let Some(Terminal { console, input, ended }) = terminal else { return Ok(None) };
        let terminal_err = |e: std::io::Error| internal(format!("terminal: {e}"));
        let master = console.receive_master().map_err(terminal_err)?;
        let sink = match log {
            "" => None,
            path => Some(self.open_output(path)?),
        };
        let pty = tty::serve(master, sink, input, tty_socket(&self.socket, container_id, exec_id), Some(ended))
            .map_err(terminal_err)?;
        if let Some((width, height)) = size {
            pty.resize(width, height).map_err(terminal_err)?;
        }
        Ok(Some(pty))
    }

    /// Whether `path` names a stream to the host's shim: only in a guest
    /// (`vsock_io`).
    fn is_stream(&self, path: &str) -> bool {
        self.guest && crate::vsock_io::parse(path).is_some()
    }

    /// Opens a process's output `path`: a stream to the host's shim in a
    /// guest, else [`output_at`].
    fn open_output(&self, path: &str) -> TtrpcResult<Sink> {
        if self.is_stream(path) {
            return Ok(Sink::Fifo(register(dial(path)?).map_err(internal)?));
        }
        output_at(path)
    }
}

/// The output at `path`: a file, a FIFO or a CRI log target (`open_sink`).
pub(crate) fn output_at(path: &str) -> TtrpcResult<Sink> {
    open_sink(path).map_err(|e| to_ttrpc(Code::InvalidArgument, format!("open {path}: {e}")))
}

/// Whether `path` names a FIFO (interactive stdin).
pub(crate) fn is_fifo(path: &str) -> bool {
    !path.is_empty() && std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// Dials the host's end of a stream (`vsock_io::dial`).
fn dial(path: &str) -> TtrpcResult<OwnedFd> {
    crate::vsock_io::dial(path).map_err(|e| to_ttrpc(Code::Unavailable, format!("stream {path}: {e}")))
}

/// Opens a process's stdin. A FIFO (interactive stdin) is fed to the
/// process through a pipe; with `keep` the shim keeps a writer open
/// (returned) so the process sees no end of input until `CloseIO`.
fn open_stdin(path: &str, keep: bool) -> TtrpcResult<(Option<OwnedFd>, Option<File>)> {
    if !is_fifo(path) {
        return Ok((open_input(path)?, None));
    }
    let (reader, keeper) = open_fifo(path, keep)?;
    // The process reads a pipe the shim feeds from the FIFO.
    let fd = pipe_from(reader).map_err(internal)?;
    Ok((Some(fd), keeper))
}

/// Opens an input FIFO without blocking: a reader and, with `keep`, a
/// writer that keeps the input from ending while the shim holds it.
/// Without one the input ends once a writer has come and gone (Linux
/// reports no hang-up to a reader that has not seen a writer yet).
pub(crate) fn open_fifo(path: &str, keep: bool) -> TtrpcResult<(OwnedFd, Option<File>)> {
    let open_err = |e: std::io::Error| to_ttrpc(Code::InvalidArgument, format!("open {path}: {e}"));
    let reader = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(open_err)?;
    let keeper = keep
        .then(|| OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(open_err))
        .transpose()?;
    Ok((reader.into(), keeper))
}

fn open_input(path: &str) -> TtrpcResult<Option<OwnedFd>> {
    if path.is_empty() {
        return Ok(None);
    }
    let f = OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| to_ttrpc(Code::InvalidArgument, format!("open {path}: {e}")))?;
    Ok(Some(f.into()))
}
