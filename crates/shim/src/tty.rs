//! Terminals (SPEC B6, B17): the runtime hands the pty master of a
//! terminal process to the shim over a console socket; the shim keeps it,
//! copies everything the process writes into its log file (or containerd's
//! stdout FIFO, and containerd's stdin FIFO into it), and serves one
//! attach connection at a time on a unix socket next to its own (berthd
//! bridges that to `berth run -t` / `berth exec -t`). Output written before
//! anyone attached is kept (up to 64 KiB) for the first attach.

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener as StdListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use crate::output::{Sink, feed};

const EARLY_OUTPUT: usize = 64 * 1024;

/// Where the runtime sends the pty master.
pub struct ConsoleSocket {
    listener: StdListener,
    path: PathBuf,
}

impl ConsoleSocket {
    pub fn bind(path: &Path) -> io::Result<ConsoleSocket> {
        let _ = std::fs::remove_file(path);
        Ok(ConsoleSocket { listener: StdListener::bind(path)?, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives the pty master the runtime sent (it did so before the
    /// create or exec returned).
    pub fn receive_master(&self) -> io::Result<OwnedFd> {
        self.listener.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let (conn, _) = loop {
            match self.listener.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e),
            }
        };
        conn.set_nonblocking(false)?;
        let mut buf = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg
                && let Some(fd) = fds.first()
            {
                // SAFETY: the kernel just installed this descriptor for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, "console socket message carried no descriptor"))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A served terminal; resize goes straight to the master. Dropping it
/// stops the service and removes the attach socket at once: the shim's
/// delete of a process drops its terminal before it answers, so berthd
/// looks for leftover terminal sockets only when a shim died.
pub struct Pty {
    master: Arc<AsyncFd<File>>,
    attach: PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.attach);
    }
}

impl Pty {
    pub fn resize(&self, width: u32, height: u32) -> io::Result<()> {
        let ws = libc::winsize { ws_row: height as u16, ws_col: width as u16, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ on a pty master with a valid winsize.
        if unsafe { libc::ioctl(self.master.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

pub(crate) fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Serves `master`: output to `log` (closed when the process side is, and
/// then `ended` is dropped) and the attached client, client input and
/// `input` (containerd's stdin FIFO) to the process. After the process
/// side closes, output nobody has seen yet is still handed to the first
/// client that attaches.
pub fn serve(
    master: OwnedFd,
    mut log: Option<Sink>,
    input: Option<OwnedFd>,
    attach: PathBuf,
    mut ended: Option<tokio::sync::oneshot::Sender<()>>,
) -> io::Result<Pty> {
    set_nonblocking(&master)?;
    // SAFETY: the AsyncFd owns the master for its whole life.
    let master = Arc::new(unsafe { AsyncFd::register(File::from(master)) }.map_err(io::Error::from)?);
    if let Some(input) = input {
        feed(input, master.clone())?;
    }
    let _ = std::fs::remove_file(&attach);
    let listener = UnixListener::bind(&attach)?;
    let pump = master.clone();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut early = Vec::new();
        let mut client: Option<tokio::net::UnixStream> = None;
        // A client that half-closed (no more input) still gets output.
        let mut client_input = false;
        let mut closed = false;
        let mut buf = vec![0u8; 16 * 1024];
        let mut input = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                ready = pump.readable(), if !closed => {
                    let Ok(mut guard) = ready else { break };
                    match guard.try_io(|m| io::Read::read(&mut m.get_ref(), &mut buf)) {
                        Err(_would_block) => continue,
                        // EIO: every process holding the terminal is gone;
                        // an attached client sees the end of the output.
                        Ok(Ok(0)) | Ok(Err(_)) => {
                            closed = true;
                            client = None;
                            log = None;
                            drop(ended.take());
                        }
                        Ok(Ok(n)) => {
                            if let Some(log) = log.as_mut() {
                                log.write(&buf[..n]).await;
                            }
                            let sent = match client.as_mut() {
                                Some(c) => Some(c.write_all(&buf[..n]).await.is_ok()),
                                None => None,
                            };
                            match sent {
                                Some(true) => {}
                                Some(false) => client = None,
                                None if early.len() < EARLY_OUTPUT => early.extend_from_slice(&buf[..n]),
                                None => {}
                            }
                        }
                    }
                }
                conn = listener.accept() => {
                    let Ok((mut c, _)) = conn else { continue };
                    if c.write_all(&std::mem::take(&mut early)).await.is_ok() && !closed {
                        client = Some(c);
                        client_input = true;
                    }
                }
                read = async { client.as_mut().expect("guarded").read(&mut input).await }, if client.is_some() && client_input && !closed => {
                    match read {
                        Ok(0) => client_input = false,
                        Err(_) => client = None,
                        Ok(n) => {
                            let mut rest = &input[..n];
                            while !rest.is_empty() {
                                let Ok(mut guard) = pump.writable().await else { break };
                                match guard.try_io(|m| io::Write::write(&mut m.get_ref(), rest)) {
                                    Ok(Ok(w)) => rest = &rest[w..],
                                    Ok(Err(_)) => break,
                                    Err(_would_block) => continue,
                                }
                            }
                        }
                    }
                }
            }
        }
    });
    Ok(Pty { master, attach, _stop: stop })
}
