//! Streams a container's stdout/stderr log files (SPEC B17), or its one
//! CRI-format log file (`berth_shim::crilog`), optionally following them
//! until the container has exited and all is drained.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::time::Duration;

use berth_model::{ExitStatus, Runtime};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, watch};

/// A CRI log file asked for at create: absolute, and written by berth's
/// own shim (a containerd shim knows no such format).
pub fn check_cri_log_path(path: &std::path::Path, runtime: &Runtime) -> crate::error::Result<()> {
    use crate::error::Error;
    crate::spec::no_nul("the log path", &path.to_string_lossy())?;
    if !path.is_absolute() || path.file_name().is_none() {
        return Err(Error::InvalidArgument(format!("log path {} must be an absolute file path", path.display())));
    }
    if matches!(runtime, Runtime::Shim { .. }) {
        return Err(Error::InvalidArgument("a CRI log path needs berth's own shim, not a containerd shim".into()));
    }
    Ok(())
}

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
    /// The file read last: another one at the path (kubelet rotated a CRI
    /// log) is read from its start.
    ino: Option<u64>,
}

impl Tail {
    fn new(format: Format, path: PathBuf) -> Tail {
        Tail { format, path, offset: 0, ino: None }
    }

    /// Sends everything written since the last call.
    async fn drain(&mut self, tx: &mpsc::Sender<(Stream, Vec<u8>)>) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(mut f) = tokio::fs::File::open(&self.path).await else { return true };
        if let Ok(m) = f.metadata().await {
            if self.ino.is_some_and(|ino| ino != m.ino()) || m.len() < self.offset {
                self.offset = 0;
                if let Format::Cri(parser) = &mut self.format {
                    *parser = Default::default();
                }
            }
            self.ino = Some(m.ino());
        }
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
    let tails =
        vec![Tail::new(Format::Plain(Stream::Stdout), stdout), Tail::new(Format::Plain(Stream::Stderr), stderr)];
    follow(tails, exit, from_end)
}

/// Like [`stream`], for a CRI-format log holding both streams.
pub fn stream_cri(
    path: PathBuf,
    exit: Option<watch::Receiver<Option<ExitStatus>>>,
    from_end: bool,
) -> mpsc::Receiver<(Stream, Vec<u8>)> {
    follow(vec![Tail::new(Format::Cri(Default::default()), path)], exit, from_end)
}

/// Streams the tails (from where the files end now, with `from_end`).
fn follow(
    mut tails: Vec<Tail>,
    exit: Option<watch::Receiver<Option<ExitStatus>>>,
    from_end: bool,
) -> mpsc::Receiver<(Stream, Vec<u8>)> {
    if from_end {
        use std::os::unix::fs::MetadataExt;
        for t in &mut tails {
            if let Ok(m) = std::fs::metadata(&t.path) {
                (t.offset, t.ino) = (m.len(), Some(m.ino()));
            }
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
