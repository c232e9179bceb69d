//! Streams a container's stdout/stderr log files (SPEC B17), optionally
//! following them until the container has exited and both are drained.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::time::Duration;

use berth_model::ExitStatus;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, watch};

/// How often a followed log is checked for new output while the container runs.
const FOLLOW_TICK: Duration = Duration::from_millis(50);
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

struct Tail {
    stream: Stream,
    path: PathBuf,
    offset: u64,
}

impl Tail {
    /// Sends everything written since the last call.
    async fn drain(&mut self, tx: &mpsc::Sender<(Stream, Vec<u8>)>) -> bool {
        let Ok(mut f) = tokio::fs::File::open(&self.path).await else { return true };
        if f.seek(SeekFrom::Start(self.offset)).await.is_err() {
            return true;
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            match f.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => {
                    self.offset += n as u64;
                    if tx.send((self.stream, buf[..n].to_vec())).await.is_err() {
                        return false;
                    }
                }
            }
        }
    }
}

/// Spawns the streaming task; `exit` is `None` when the container is gone
/// or not followed.
pub fn stream(
    stdout: PathBuf,
    stderr: PathBuf,
    exit: Option<watch::Receiver<Option<ExitStatus>>>,
) -> mpsc::Receiver<(Stream, Vec<u8>)> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut tails = [
            Tail { stream: Stream::Stdout, path: stdout, offset: 0 },
            Tail { stream: Stream::Stderr, path: stderr, offset: 0 },
        ];
        let mut exit = exit;
        loop {
            let exited = exit.as_ref().is_none_or(|rx| rx.borrow().is_some());
            for t in tails.iter_mut() {
                if !t.drain(&tx).await {
                    return;
                }
            }
            if exited {
                return;
            }
            if let Some(rx) = exit.as_mut() {
                tokio::select! {
                    r = rx.changed() => if r.is_err() { exit = None },
                    _ = tokio::time::sleep(FOLLOW_TICK) => {}
                    _ = tx.closed() => return,
                }
            }
        }
    });
    rx
}
