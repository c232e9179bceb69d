//! Delete (SPEC B8, B9): allowed once the container has stopped (or, with
//! force, after killing it). Teardown releases newest-first — runtime
//! container, shim, socket, bundle, cgroup, logs — and the record goes last,
//! so a failed delete can simply be retried.

use std::time::Duration;

use berth_model::{Code, ContainerId, ExitStatus, Namespace, Op, State, UNKNOWN_EXIT_CODE};

use crate::error::{Error, Result};
use crate::events::Kind;
use crate::manager::{Entry, Manager};

/// How long delete waits for a killed container to finish tearing down.
const TEARDOWN_WAIT: Duration = Duration::from_secs(30);

fn remove_path(path: &std::path::Path) -> Result<()> {
    let r = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(format!("remove {}", path.display()), e)),
        _ => Ok(()),
    }
}

async fn wait_exit(entry: &Entry, id: &ContainerId) -> Result<()> {
    let mut rx = entry.exit.subscribe();
    match tokio::time::timeout(TEARDOWN_WAIT, rx.wait_for(Option::is_some)).await {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::DeadlineExceeded(format!("container {id} did not exit within {TEARDOWN_WAIT:?}"))),
    }
}

impl Manager {
    pub async fn delete(&self, ns: &Namespace, id: &ContainerId, force: bool) -> Result<ExitStatus> {
        self.get(ns, id)?;
        let entry = self.entry(ns, id).ok();
        let _op = match &entry {
            Some(e) => Some(e.op.lock().await),
            None => None,
        };
        let rec = self.get(ns, id)?;
        let live = matches!(rec.state, State::Created | State::Running | State::Paused);
        if live && !force {
            rec.state.apply(Op::Delete)?;
        }
        if let Some(e) = &entry {
            if live && rec.state != State::Created {
                match e.shim.kill(id, libc::SIGKILL as u32, true).await {
                    Err(err) if err.code() != Code::NotFound => return Err(err),
                    _ => wait_exit(e, id).await?,
                }
            }
            match e.shim.delete(id).await {
                Ok(_) => {}
                // Already deleted by an earlier, interrupted attempt, or the shim is gone.
                Err(err) if matches!(err.code(), Code::NotFound | Code::Unavailable) => {}
                Err(err) => return Err(err),
            }
            wait_exit(e, id).await?;
            e.shim.reap(Duration::from_secs(5)).await;
        }
        remove_path(&rec.shim.socket)?;
        remove_path(&rec.bundle)?;
        self.cgroups.remove(&rec.cgroup).map_err(|e| Error::io(format!("remove cgroup {}", rec.cgroup), e))?;
        if let Some(logs) = rec.stdout.parent() {
            remove_path(logs)?;
        }
        let rec = self.get(ns, id)?;
        self.store.remove(ns, id)?;
        self.remove_entry(&(ns.clone(), id.clone()));
        self.events.publish(Kind::Delete, ns, id, rec.pid, rec.exit);
        Ok(rec.exit.unwrap_or(ExitStatus { code: UNKNOWN_EXIT_CODE, exited_at_ns: 0 }))
    }
}
