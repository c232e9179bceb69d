//! Graceful stop (SPEC B10): the container's stop signal, a grace period,
//! then SIGKILL to every process. A paused container is killed at once (its
//! processes could not handle the signal).

use std::time::Duration;

use berth_model::{Code, ContainerId, ExitStatus, Namespace, State};

use crate::error::{Error, Result};
use crate::manager::Manager;

/// Label naming the signal `stop` sends first, e.g. `SIGQUIT`.
pub const STOP_SIGNAL_LABEL: &str = "berth.stop-signal";
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(3600);

fn stop_signal(labels: &std::collections::BTreeMap<String, String>) -> Result<u32> {
    let Some(name) = labels.get(STOP_SIGNAL_LABEL) else { return Ok(libc::SIGTERM as u32) };
    berth_model::signal_number(name)
        .ok_or_else(|| Error::InvalidArgument(format!("label {STOP_SIGNAL_LABEL}={name} is not a signal")))
}

impl Manager {
    /// `berth stop`: the user's stop is recorded first (after validation),
    /// so no restart policy brings the container back, even if berthd dies
    /// before the stop completes (SPEC B21).
    pub async fn stop(&self, ns: &Namespace, id: &ContainerId, timeout: Duration) -> Result<ExitStatus> {
        self.stop_as(ns, id, timeout, true).await
    }

    async fn stop_as(&self, ns: &Namespace, id: &ContainerId, timeout: Duration, by_user: bool) -> Result<ExitStatus> {
        if timeout > MAX_STOP_TIMEOUT {
            return Err(Error::InvalidArgument(format!("stop timeout must be at most {MAX_STOP_TIMEOUT:?}")));
        }
        let rec = self.get(ns, id)?;
        let signal = stop_signal(&rec.labels)?;
        if rec.exit.is_none() && !matches!(rec.state, State::Created | State::Running | State::Paused) {
            return Err(Error::FailedPrecondition(format!("container {id} is {}: nothing to stop", rec.state)));
        }
        // Decided from the record as marked: a restart that committed just
        // before the mark is stopped like any live container.
        let rec = if by_user { self.mark_stopped_by_user(ns, id)? } else { rec };
        if let Some(exit) = rec.exit {
            return Ok(exit);
        }
        let gentle = rec.state == State::Running;
        if gentle {
            match self.kill(ns, id, "", signal, false).await {
                Err(e) if e.code() != Code::NotFound => return Err(e),
                _ => {}
            }
            if let Ok(exit) = tokio::time::timeout(timeout, self.wait(ns, id)).await {
                return exit;
            }
        }
        match self.kill(ns, id, "", libc::SIGKILL as u32, true).await {
            Err(e) if e.code() != Code::NotFound => return Err(e),
            _ => {}
        }
        tokio::time::timeout(Duration::from_secs(30), self.wait(ns, id))
            .await
            .map_err(|_| Error::DeadlineExceeded(format!("container {id} did not die after SIGKILL")))?
    }
}

impl Manager {
    /// Records the user's stop; returns the record as it now stands.
    pub(crate) fn mark_stopped_by_user(
        &self,
        ns: &Namespace,
        id: &ContainerId,
    ) -> Result<berth_store::ContainerRecord> {
        self.update(ns, id, |r| {
            r.stopped_by_user = true;
            Ok(())
        })
    }

    /// Stops every live container of every namespace, concurrently
    /// (`berthd --shutdown-containers`). That is no user stop: restart
    /// policies hold when berthd starts again (none acts meanwhile: berthd
    /// sets `shutting_down` first).
    pub async fn stop_all(self: &std::sync::Arc<Self>, timeout: Duration) {
        let Ok(recs) = self.list(None) else { return };
        let mut tasks = tokio::task::JoinSet::new();
        for rec in recs.into_iter().filter(|r| matches!(r.state, State::Created | State::Running | State::Paused)) {
            let mgr = self.clone();
            tasks.spawn(async move {
                if let Err(e) = mgr.stop_as(&rec.namespace, &rec.id, timeout, false).await {
                    tracing::warn!(ns = %rec.namespace, id = %rec.id, "stop at shutdown: {e}");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}
