//! A terminal under a containerd v2 shim, attached through berthd: such a
//! shim serves no attach socket (berth-shim's `.tty`), so berthd builds the
//! same byte stream from what the shim does offer — the terminal's output
//! in the log file (berth-logger writes it) and its input through the stdin
//! FIFO (the shim copies it to the pty). The attach happens before the
//! process starts (`berth run -t`) or right after (`berth exec -t`), so the
//! output is streamed from the log's start.

use std::path::PathBuf;

use berth_model::ExitStatus;
use berth_store::ContainerRecord;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::manager::Manager;

/// The output side of a containerd shim's terminal process.
pub struct Terminal {
    log: crate::logs::LogFormat,
    stdout: PathBuf,
    stderr: PathBuf,
    exit: watch::Receiver<Option<ExitStatus>>,
}

impl Manager {
    /// The terminal of init (`exec_id` empty) or an exec when a containerd
    /// shim runs it; `None` for berth-shim or a process without one.
    pub(crate) fn containerd_terminal(&self, rec: &ContainerRecord, exec_id: &str) -> Result<Option<Terminal>> {
        let Ok(entry) = self.entry(&rec.namespace, &rec.id) else { return Ok(None) };
        if !entry.shim.is_containerd_shim() {
            return Ok(None);
        }
        if exec_id.is_empty() {
            let exit = entry.exit.subscribe();
            let log = crate::logs::LogFormat::of(rec);
            return Ok(rec.terminal.then(|| Terminal {
                log,
                stdout: rec.stdout.clone(),
                stderr: rec.stderr.clone(),
                exit,
            }));
        }
        let info = self.exec_info(&entry, exec_id)?;
        let exit = info.exit.subscribe();
        Ok(info.terminal.then(|| Terminal {
            log: info.log,
            stdout: info.stdout.clone(),
            stderr: info.stderr.clone(),
            exit,
        }))
    }
}

/// One end of a socket pair that carries the terminal: what is written to
/// it goes to `input` (dropped without one), and it yields the terminal's
/// output until the process has exited and its output is all sent.
pub fn terminal(input: Option<pipe::Sender>, t: Terminal) -> Result<tokio::net::UnixStream> {
    let (ours, theirs) = tokio::net::UnixStream::pair().map_err(|e| Error::io("socket pair", e))?;
    let (mut from_client, mut to_client) = ours.into_split();
    let mut exited = t.exit.clone();
    tokio::spawn(async move {
        match input {
            Some(mut fifo) => {
                let _ = tokio::io::copy(&mut from_client, &mut fifo).await;
                // The shim closes the terminal when its stdin FIFO ends: a
                // client that leaves must not hang up the process.
                let _ = exited.wait_for(Option::is_some).await;
            }
            None => drop(tokio::io::copy(&mut from_client, &mut tokio::io::sink()).await),
        }
    });
    let opts = crate::logs::Options { follow: Some(t.exit), ..Default::default() };
    let mut output = crate::logs::stream(t.log, t.stdout, t.stderr, opts)?;
    tokio::spawn(async move {
        while let Some((_, data)) = output.recv().await {
            if to_client.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = to_client.shutdown().await;
    });
    Ok(theirs)
}
