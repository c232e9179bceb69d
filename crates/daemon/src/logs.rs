//! Streams a container's stdout/stderr log files (SPEC B17), or its one
//! CRI-format log file (`berth_shim::crilog`), optionally following them
//! until the container has exited and all is drained.

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

/// What a log file holds.
enum Format {
    /// One stream's bytes as written.
    Plain(Stream),
    /// CRI records of both streams, decoded as they come.
    Cri(berth_shim::crilog::Parser),
}

struct Tail {
    format: Format,
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
                    let chunks = match &mut self.format {
                        Format::Plain(stream) => vec![(*stream, buf[..n].to_vec())],
                        Format::Cri(parser) => parser
                            .feed(&buf[..n])
                            .into_iter()
                            .map(|(s, data)| match s {
                                berth_shim::crilog::Stream::Stdout => (Stream::Stdout, data),
                                berth_shim::crilog::Stream::Stderr => (Stream::Stderr, data),
                            })
                            .collect(),
                    };
                    for chunk in chunks {
                        if tx.send(chunk).await.is_err() {
                            return false;
                        }
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
    from_end: bool,
) -> mpsc::Receiver<(Stream, Vec<u8>)> {
    let tails = vec![
        Tail { format: Format::Plain(Stream::Stdout), path: stdout, offset: 0 },
        Tail { format: Format::Plain(Stream::Stderr), path: stderr, offset: 0 },
    ];
    follow(tails, exit, from_end)
}

/// Like [`stream`], for a CRI-format log holding both streams.
pub fn stream_cri(
    path: PathBuf,
    exit: Option<watch::Receiver<Option<ExitStatus>>>,
    from_end: bool,
) -> mpsc::Receiver<(Stream, Vec<u8>)> {
    follow(vec![Tail { format: Format::Cri(Default::default()), path, offset: 0 }], exit, from_end)
}

/// Streams the tails (from where the files end now, with `from_end`).
fn follow(
    mut tails: Vec<Tail>,
    exit: Option<watch::Receiver<Option<ExitStatus>>>,
    from_end: bool,
) -> mpsc::Receiver<(Stream, Vec<u8>)> {
    if from_end {
        for t in &mut tails {
            t.offset = std::fs::metadata(&t.path).map(|m| m.len()).unwrap_or(0);
        }
    }
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
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
