//! Restart policies (SPEC B21). After init's exit is recorded, the policy
//! decides; a restart waits out its backoff, then releases the old runtime
//! container and shim and brings the container back from its bundle in a
//! new shim, keeping its id, logs and cgroup. A user stop is recorded
//! before the stop signal and checked again in the transaction that
//! records the restart, so a stopped container is never brought back. A
//! failed attempt is retried after the next backoff. A container created
//! with auto-remove is removed instead (`autoremove.rs`).

use std::sync::Arc;

use std::sync::atomic::Ordering;

use berth_model::{BACKOFF_RESET, ContainerId, Namespace, Op, State, backoff};
use berth_store::{ContainerRecord, ShimInfo};

use crate::create::{Placement, Step};
use crate::delete::{remove_path, remove_shim_sockets, teardown_with_shim};
use crate::error::{Error, Result};
use crate::events::Kind;
use crate::manager::{Entry, Manager, crash_point};
use crate::process_io::ProcessIo;

/// The restarts in a row so far, counting a run of at least
/// [`BACKOFF_RESET`] as the end of a streak (`started_at_ns` is 0 from a
/// restart until its start succeeds, so failed attempts never count as a
/// long run).
fn streak(rec: &ContainerRecord) -> u32 {
    let ran = rec.exit.map(|e| e.exited_at_ns.saturating_sub(rec.started_at_ns)).unwrap_or(0);
    if rec.started_at_ns > 0 && ran >= BACKOFF_RESET.as_nanos() as u64 { 0 } else { rec.restart_streak }
}

fn wants_restart(rec: &ContainerRecord) -> bool {
    let code = rec.exit.map(|e| e.code).unwrap_or(0);
    rec.state == State::Stopped && rec.restart_policy.wants_restart(code, rec.restart_count, rec.stopped_by_user)
}

impl Manager {
    /// After an exit: removes an auto-remove container, or schedules a
    /// restart if the container's policy wants one, after the backoff.
    pub(crate) fn consider_restart(self: &Arc<Self>, ns: &Namespace, id: &ContainerId) {
        let Ok(rec) = self.get(ns, id) else { return };
        if rec.auto_remove && rec.state == State::Stopped {
            return self.auto_remove(rec);
        }
        if !wants_restart(&rec) || self.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        let delay = backoff(streak(&rec));
        tracing::info!(%ns, %id, ?delay, policy = %rec.restart_policy, "restart scheduled");
        let (mgr, ns, id) = (self.clone(), ns.clone(), id.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            match mgr.restart(&ns, &id).await {
                Ok(()) => {}
                Err(Error::FailedPrecondition(why)) => tracing::info!(%ns, %id, "restart called off: {why}"),
                Err(e) => {
                    tracing::warn!(%ns, %id, "restart failed: {e}; trying again after the next backoff");
                    let longer = mgr.update(&ns, &id, |r| {
                        r.restart_streak = r.restart_streak.saturating_add(1);
                        r.started_at_ns = 0;
                        Ok(())
                    });
                    if longer.is_ok() {
                        mgr.consider_restart(&ns, &id);
                    }
                }
            }
        });
    }

    /// At berthd start: a stopped container's policy resumes where it was;
    /// a container left `created` by a restart that berthd died in the
    /// middle of (a created container that was restarted) is started.
    pub(crate) fn resume_policy(self: &Arc<Self>, rec: &ContainerRecord) {
        if rec.state == State::Created && rec.restart_count > 0 {
            let (mgr, ns, id) = (self.clone(), rec.namespace.clone(), rec.id.clone());
            tokio::spawn(async move { mgr.start_restarted(&ns, &id).await });
            return;
        }
        self.consider_restart(&rec.namespace, &rec.id);
    }

    /// Starts a restarted container — unless the user stopped it or berthd
    /// is shutting down meanwhile. If the start fails (or is called off),
    /// init is killed so that its exit is recorded and the policy decides.
    async fn start_restarted(&self, ns: &Namespace, id: &ContainerId) {
        let called_off = self.shutting_down.load(Ordering::SeqCst) || self.get(ns, id).is_ok_and(|r| r.stopped_by_user);
        let started = if called_off {
            Err(Error::FailedPrecondition("stopped before its restart started".into()))
        } else {
            self.start(ns, id).await.map(drop)
        };
        if let Err(e) = started {
            tracing::warn!(%ns, %id, "start after a restart failed: {e}");
            let _ = self.kill(ns, id, "", libc::SIGKILL as u32, true).await;
        }
    }

    /// Brings a stopped container back (SPEC B21), if its policy still
    /// wants that once the backoff is over and no user stop came between.
    async fn restart(self: &Arc<Self>, ns: &Namespace, id: &ContainerId) -> Result<()> {
        let op = self.lock_op(ns, id).await;
        let called_off = |why: &str| Err(Error::FailedPrecondition(why.to_string()));
        if self.shutting_down.load(Ordering::SeqCst) {
            return called_off("berthd is shutting down");
        }
        let old = self.entry(ns, id).ok();
        let Ok(rec) = self.get(ns, id) else { return called_off("the container was removed") };
        if !wants_restart(&rec) {
            return called_off("the policy no longer wants it (stopped by the user?)");
        }
        // The old runtime container and shim go first.
        let by_shim = match &old {
            Some(e) => teardown_with_shim(e, id, false).await?,
            None => false,
        };
        if !by_shim {
            self.teardown_without_shim(&rec).await?;
        }
        remove_shim_sockets(&rec.shim.socket)?;
        // A later cleanup must not find the last run's exits.
        for entry in std::fs::read_dir(&rec.bundle).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().ends_with("exit.json") {
                remove_path(&entry.path())?;
            }
        }

        // A stopped container's snapshot may have been unmounted at startup.
        if !rec.image.is_empty() {
            self.images.ensure_mounted(&crate::images::snapshot_key(ns, id), &rec.rootfs)?;
        }
        let io = ProcessIo {
            stdin: rec.stdin.as_deref(),
            stdout: &rec.stdout,
            stderr: &rec.stderr,
            terminal: rec.terminal,
            log: crate::logs::LogFormat::of(&rec),
        };
        let mut done = Vec::new();
        let loopback = crate::network::unpinned_none(rec.network.as_ref());
        let placed = Placement { socket: &rec.shim.socket, sandbox: rec.sandbox.as_ref(), restore: None, loopback };
        let spawned = self.spawn_task(ns, id, &rec.runtime, &rec.bundle, placed, &io, &mut done).await;
        crash_point("restart shim");
        let streak = streak(&rec);
        let recorded = spawned.and_then(|(client, pid)| {
            let rec = self.change(ns, id, Some(Kind::Restart), |r| {
                // Checked again here: a stop may have come during the work.
                if !wants_restart(r) || self.shutting_down.load(Ordering::SeqCst) {
                    return Err(Error::FailedPrecondition("stopped during the restart".into()));
                }
                r.state = r.state.apply(Op::Restart)?;
                r.pid = pid;
                r.exit = None;
                // Not started yet (see `streak`).
                r.started_at_ns = 0;
                r.shim = ShimInfo { pid: client.pid, socket: client.socket.clone() };
                r.restart_count += 1;
                r.restart_streak = streak + 1;
                // A new VM of its own, with this berthd's accelerator.
                if let Some(vm) = self.cfg.vm.own_vm(&r.runtime, r.sandbox.is_some(), &r.bundle) {
                    r.vm = Some(vm);
                }
                Ok(())
            })?;
            Ok((rec, client))
        });
        let (rec, client) = match recorded {
            Ok(r) => r,
            Err(e) => {
                // Keep nothing of the failed attempt; the record stays
                // stopped with its exit, and the shim-less container is
                // cleaned up like any other.
                self.release_restart(ns, id, done).await;
                self.remove_entry(&(ns.clone(), id.clone()));
                return Err(e);
            }
        };
        tracing::info!(%ns, %id, count = rec.restart_count, "restarted");
        self.watch((ns.clone(), id.clone()), Arc::new(Entry::new(client, None)), &rec, false);
        drop(op);
        self.start_restarted(ns, id).await;
        Ok(())
    }

    /// Rolls back a failed restart: its shim and runtime container only
    /// (the bundle, logs and cgroup belong to the container).
    async fn release_restart(&self, ns: &Namespace, id: &ContainerId, done: Vec<Step>) {
        let only_runtime =
            done.into_iter().filter(|s| matches!(s, Step::Shim { .. } | Step::Joined { .. } | Step::Task(_))).collect();
        self.release(ns, id, only_runtime).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_model::{ExitStatus, RestartPolicy};

    fn record(policy: RestartPolicy, code: u32, ran_ns: u64, streak: u32, user: bool) -> ContainerRecord {
        let mut r: ContainerRecord = serde_json::from_value(serde_json::json!({
            "namespace": "default", "id": "c", "runtime": "embedded", "bundle": "/b", "rootfs": "/r",
            "command": [], "labels": {}, "created_at_ns": 1, "state": "stopped", "pid": 1, "exit": null,
            "shim": {"pid": 1, "socket": "/s"}, "stdout": "/o", "stderr": "/e", "cgroup": "/c"
        }))
        .unwrap();
        r.restart_policy = policy;
        r.started_at_ns = 1_000;
        r.exit = Some(ExitStatus { code, exited_at_ns: 1_000 + ran_ns });
        r.restart_streak = streak;
        r.stopped_by_user = user;
        r
    }

    #[test]
    fn a_long_run_resets_the_streak() {
        let short = record(RestartPolicy::Always, 1, 1_000_000, 4, false);
        assert_eq!(backoff(streak(&short)).as_millis(), 1600);
        let long = record(RestartPolicy::Always, 1, BACKOFF_RESET.as_nanos() as u64, 4, false);
        assert_eq!(backoff(streak(&long)).as_millis(), 100);
    }

    #[test]
    fn user_stops_and_policies_decide() {
        assert!(wants_restart(&record(RestartPolicy::Always, 0, 1, 0, false)));
        assert!(!wants_restart(&record(RestartPolicy::Always, 0, 1, 0, true)));
        assert!(!wants_restart(&record(RestartPolicy::No, 1, 1, 0, false)));
        assert!(!wants_restart(&record(RestartPolicy::OnFailure { max: 0 }, 0, 1, 0, false)));
        let mut running = record(RestartPolicy::Always, 0, 1, 0, false);
        running.state = State::Running;
        assert!(!wants_restart(&running), "only a stopped container restarts");
    }
}
