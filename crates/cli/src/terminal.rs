//! `-t` / `-i` for `run` and `exec`: the local terminal in raw mode, the
//! remote one sized like it (and resized on SIGWINCH), input and output
//! streamed through berthd's Attach.

use std::io::{Read, Write};
use std::os::fd::AsFd;

use berth_api::v1 as pb;
use nix::sys::termios::{self, SetArg, Termios};
use tokio_stream::StreamExt;

use crate::client::{Client, Failure};

/// Puts stdin in raw mode while alive, if it is a terminal.
struct RawMode(Option<Termios>);

impl RawMode {
    fn enter() -> RawMode {
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else { return RawMode(None) };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        match termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw) {
            Ok(()) => RawMode(Some(saved)),
            Err(_) => RawMode(None),
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

/// The local terminal's size (columns, rows), if there is one.
pub fn window_size() -> Option<(u32, u32)> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    for fd in [libc::STDIN_FILENO, libc::STDOUT_FILENO] {
        // SAFETY: TIOCGWINSZ fills a winsize we own.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 0 && ws.ws_row > 0 {
            return Some((ws.ws_col as u32, ws.ws_row as u32));
        }
    }
    None
}

/// Opens an Attach stream for init (`exec_id` empty) or an exec; our stdin
/// is sent on it when `stdin` is set.
pub async fn open(
    c: &mut Client,
    id: &str,
    exec_id: &str,
    stdin: bool,
) -> Result<tonic::Streaming<pb::AttachOutput>, Failure> {
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::AttachRequest>(16);
    let first = pb::AttachRequest {
        namespace: c.namespace.clone(),
        id: id.to_string(),
        exec_id: exec_id.to_string(),
        input: Vec::new(),
    };
    let _ = tx.send(first).await;
    let output = c.containers.attach(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    if stdin {
        // A plain thread: reading a terminal or pipe cannot be cancelled;
        // the end of our stdin ends the process's.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut input = std::io::stdin();
            while let Ok(n) = input.read(&mut buf) {
                let msg = pb::AttachRequest { input: buf[..n].to_vec(), ..Default::default() };
                if n == 0 || tx.blocking_send(msg).is_err() {
                    break;
                }
            }
        });
    }
    Ok(output)
}

/// Sends our stdin to the process's (no terminal) until it ends; output is
/// read from the logs meanwhile.
pub async fn pump_stdin(c: &mut Client, id: &str, exec_id: &str) -> Result<tokio::task::JoinHandle<()>, Failure> {
    let mut done = open(c, id, exec_id, true).await?;
    Ok(tokio::spawn(async move { while let Some(Ok(_)) = done.next().await {} }))
}

/// Streams the terminal of init (`exec_id` empty) or an exec until its
/// output ends; sends our input with `stdin`.
/// `output` comes from [`open`], called first so that nothing the process
/// writes is missed (a `run` opens it before the start).
pub async fn attach(
    c: &mut Client,
    id: &str,
    exec_id: &str,
    mut output: tonic::Streaming<pb::AttachOutput>,
) -> Result<(), Failure> {
    let _raw = RawMode::enter();
    let resize_req = |(width, height)| pb::ResizeRequest {
        namespace: c.namespace.clone(),
        id: id.to_string(),
        exec_id: exec_id.to_string(),
        width,
        height,
    };
    if let Some(size) = window_size() {
        c.containers.resize(resize_req(size)).await?;
    }
    let mut api = c.containers.clone();
    let winch_req = resize_req((0, 0));
    let resizer = tokio::spawn(async move {
        let Ok(mut winch) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) else {
            return;
        };
        while winch.recv().await.is_some() {
            if let Some((width, height)) = window_size() {
                let _ = api.resize(pb::ResizeRequest { width, height, ..winch_req.clone() }).await;
            }
        }
    });
    let mut out = std::io::stdout();
    while let Some(chunk) = output.next().await {
        let Ok(chunk) = chunk else { break };
        if out.write_all(&chunk.data).and_then(|_| out.flush()).is_err() {
            break;
        }
    }
    resizer.abort();
    Ok(())
}
