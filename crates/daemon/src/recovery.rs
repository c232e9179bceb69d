//! Startup recovery (SPEC B19, B20): before berthd serves, it releases
//! what creates cut short by a crash left behind (from their intent
//! records), takes back every live shim — judged from outside when its
//! container has nothing to catch up on, else reconnecting and asking — and
//! brings records up to date with what the shims did while berthd was
//! down, cleans up after shims
//! that died, and resumes restart policies. It never touches the live shim
//! of a recorded container, answering or not (containerd#13784); the only
//! live shims it kills are ones no record names (an interrupted create or
//! restart).

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_model::{Op, State};
use berth_store::{ContainerRecord, Intent, Write};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::delete::{remove_path, remove_shim_sockets};
use crate::error::{Error, Result};
use crate::events::Kind;
use crate::manager::{Entry, Manager};
use crate::shim::{self, ShimArgs};

/// How long a live shim may take to say what happened while berthd was down.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// Containers recovered at the same time (a stopped shim holds its slot
/// for up to the connect and catch-up timeouts).
const RECOVERIES_IN_FLIGHT: usize = 128;
/// How long a killed leftover shim may take to go away.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// SIGKILLs a leftover shim's whole process group (the shim and its
/// runtime helpers) and waits until the shim is gone.
pub(crate) async fn kill_group(args: &ShimArgs, pid: u32) {
    let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    let deadline = Instant::now() + KILL_WAIT;
    // A zombie still matches until whoever inherited it reaps it.
    while args.matches(pid) && !is_zombie(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Removes a cgroup whose processes were just killed: it stays busy until
/// they are reaped.
async fn remove_cgroup(mgr: &Manager, cgroup: &str) -> Result<()> {
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        match mgr.cgroups.remove(cgroup) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(Error::io(format!("remove cgroup {cgroup}"), e)),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Whether the shim answering on a stopped container's socket is the one
/// its record names: it says so (Connect), and the recorded process is
/// still that shim. A shim too slow to answer Connect is caught by the
/// second test when the recorded one is gone.
fn is_recorded_shim(args: &ShimArgs, rec: &ContainerRecord, answered: u32) -> bool {
    answered == rec.shim.pid && args.matches(rec.shim.pid)
}

fn is_zombie(pid: u32) -> bool {
    crate::control::stat_fields(&pid.to_string()).first().is_some_and(|state| state == "Z")
}

impl Manager {
    /// Rebuilds in-memory state after a daemon start (see the module docs).
    pub async fn reload(self: &Arc<Self>) -> Result<()> {
        // A failure here is retried piecewise: an intent's snapshot is
        // released with the intent, a record's with its delete.
        if let Err(e) = self.recover_images() {
            tracing::warn!("recovering image storage: {e}");
        }
        // Before any teardown: plugins a killed berthd left in the middle
        // of an ADD would otherwise finish it afterwards.
        if let Err(e) = self.net.networks.stop_orphan_plugins() {
            tracing::warn!("stopping leftover CNI plugins: {e}");
        }
        self.remove_interrupted_imports();
        // Sandbox shims first: interrupted creates may have left a task in
        // one, and containers in sandboxes share their connection.
        if let Err(e) = self.recover_sandboxes().await {
            tracing::warn!("recovering sandboxes: {e}");
        }
        for intent in self.store.intents()? {
            if let Err(e) = self.release_intent(&intent).await {
                tracing::warn!(ns = %intent.namespace, id = %intent.id, "cannot release an interrupted create: {e}");
            }
        }
        if let Err(e) = self.release_orphan_attachments().await {
            tracing::warn!("releasing network attachments: {e}");
        }
        // Containers are independent: recovered many at once, so a slow
        // shim does not hold up the rest, but not all at once: each
        // recovery holds a connection and a task, and 1,000 of them at
        // the same time left berthd's heap larger for good.
        let limit = Arc::new(tokio::sync::Semaphore::new(RECOVERIES_IN_FLIGHT));
        let mut tasks = tokio::task::JoinSet::new();
        for rec in self.store.list(None)? {
            let Ok(permit) = limit.clone().acquire_owned().await else { break };
            let mgr = self.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let (ns, id) = (rec.namespace.clone(), rec.id.clone());
                if let Err(e) = mgr.recover(rec).await {
                    tracing::warn!(%ns, %id, "recovery: {e}");
                }
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        // Give back what recovery's connections and records freed, and
        // the mapping of the start-up code.
        berth_shim::release_memory();
        Ok(())
    }

    /// Releases everything an interrupted create may have allocated: its
    /// shim (and helpers), processes, runtime state, sockets, bundle,
    /// cgroup and logs; then the intent itself (SPEC B20).
    async fn release_intent(&self, intent: &Intent) -> Result<()> {
        let (ns, id) = (&intent.namespace, &intent.id);
        tracing::warn!(%ns, %id, "releasing a create cut short by a crash");
        if self.store.get(ns, id)?.is_none() {
            let args = self.shim_args(ns, id, &intent.runtime);
            for pid in args.processes() {
                kill_group(&args, pid).await;
            }
            let bundle = self.cfg.bundle_dir(ns, id);
            if bundle.exists() {
                shim::cleanup(&args, &bundle).await?;
            }
            // A sandbox's shim may hold the task the create made there.
            if let Some(client) = intent.sandbox.as_ref().and_then(|s| self.sandbox_client(ns, s)) {
                let _ = client.kill(id, "", libc::SIGKILL as u32, true).await;
                if let Err(e) = client.delete(id, "").await
                    && e.code() != berth_model::Code::NotFound
                {
                    return Err(e);
                }
            }
            let cgroup = intent.cgroup.clone().unwrap_or_else(|| self.cfg.cgroup_path(ns, id));
            self.cgroups.kill_all(&cgroup);
            remove_shim_sockets(&self.cfg.shim_socket(ns, id))?;
            // The rootfs snapshot (if the create was from an image) before
            // the bundle that holds its mount point.
            let key = crate::images::snapshot_key(ns, id);
            self.images.release_rootfs(&key, &self.image_rootfs(ns, id))?;
            self.detach_network(ns, id).await?;
            remove_path(&bundle)?;
            remove_cgroup(self, &cgroup).await?;
            remove_path(&self.cfg.log_dir(ns, id))?;
            for name in &intent.new_volumes {
                self.volume_release_new(name)?;
            }
        }
        self.write(Write { clear_intent: Some((ns, id)), ..Default::default() })
    }

    /// Reconnects one container to its shim, or cleans up after the shim.
    async fn recover(self: &Arc<Self>, rec: ContainerRecord) -> Result<()> {
        let key = (rec.namespace.clone(), rec.id.clone());
        let args = self.serving_args(&rec);
        if let Some(client) = self.adopt(&rec, &args) {
            let entry = Arc::new(Entry::new(client, None));
            self.resume_execs(&rec, &entry);
            self.watch(key, entry, &rec, true);
            return Ok(());
        }
        // The state the shim gave with its hello, if it did.
        let mut known = None;
        let connected = match &rec.sandbox {
            // The sandbox's shim, connected once for all its containers.
            Some(sandbox) => self
                .sandbox_client(&rec.namespace, sandbox)
                .ok_or_else(|| Error::FailedPrecondition(format!("the shim of sandbox {sandbox} is not connected"))),
            None => shim::connect_probing(&rec.shim.socket, &rec.id, rec.shim.pid, args.dialect(), rec.exit.is_none())
                .await
                .map(|(client, state)| {
                    known = state;
                    client
                }),
        };
        match connected {
            Ok(client) if args.v2.is_some() && !args.matches(client.pid) => {
                // A containerd shim's socket is where the shim said: one
                // answering from a process that is not this container's
                // shim is neither driven nor cleaned up under.
                tracing::warn!(ns = %rec.namespace, id = %rec.id, pid = client.pid, "socket answered by another process");
                self.mark_unknown(&rec.namespace, &rec.id);
            }
            Ok(client) if rec.exit.is_some() && !args.sandbox && !is_recorded_shim(&args, &rec, client.pid) => {
                // berthd died in a restart, after the new shim started and
                // before the restart was recorded: release that shim (and
                // its helpers, without asking it: it may be stuck in the
                // runtime) and let the policy try again.
                tracing::warn!(ns = %rec.namespace, id = %rec.id, "releasing the shim of a restart cut short");
                for pid in args.processes() {
                    kill_group(&args, pid).await;
                }
                self.teardown_without_shim(&rec).await?;
                remove_shim_sockets(&rec.shim.socket)?;
                self.resume_policy(&rec);
            }
            Ok(client) => {
                let entry = Arc::new(Entry::new(client, rec.exit));
                self.resume_execs(&rec, &entry);
                if rec.exit.is_some() {
                    self.insert_entry(key, entry);
                    self.resume_policy(&rec);
                    return Ok(());
                }
                // A shim that is alive but slow to answer (stopped, say)
                // is watched all the same; it answers the monitor later.
                let caught_up = match tokio::time::timeout(CATCH_UP_TIMEOUT, self.catch_up(&rec, &entry, known)).await {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        tracing::warn!(ns = %rec.namespace, id = %rec.id, "catching up: {e}");
                        false
                    }
                    Err(_) => {
                        tracing::warn!(ns = %rec.namespace, id = %rec.id, "shim slow to answer; watching it");
                        false
                    }
                };
                self.watch(key, entry, &rec, true);
                // A restart recorded just before berthd died still needs
                // its start — if the shim says it has not started.
                if caught_up {
                    self.resume_policy(&self.get(&rec.namespace, &rec.id)?);
                }
            }
            Err(e) if rec.state != State::Stopped && args.matches(rec.shim.pid) => {
                // Alive but not answering: never clean up under a live
                // shim; it stays `unknown` until removed with force.
                tracing::warn!(ns = %rec.namespace, id = %rec.id, "shim alive but unreachable: {e}");
                self.mark_unknown(&rec.namespace, &rec.id);
            }
            Err(_) if rec.state != State::Stopped => {
                // The shim died while berthd was down: kill what is left,
                // delete the runtime state, and record the exit the shim
                // wrote — or "unknown exit" (255).
                tracing::warn!(ns = %rec.namespace, id = %rec.id, "shim gone; cleaning up");
                self.teardown_without_shim(&rec).await?;
                self.resume_policy(&self.get(&rec.namespace, &rec.id)?);
            }
            Err(_) => self.resume_policy(&rec),
        }
        Ok(())
    }

    /// The common case, judged without waking the shim (issue 14: one
    /// round trip per shim made recovery of 1,000 containers CPU-bound):
    /// a running or paused container of its own berth-shim, which is alive,
    /// runs this berth-shim binary, and whose cgroup is as frozen as the
    /// record says — so the shim has nothing to catch up on. An exit while
    /// berthd was down is the monitor's, as on the full path.
    fn adopt(&self, rec: &ContainerRecord, args: &ShimArgs) -> Option<shim::ShimClient> {
        let unchanged = rec.sandbox.is_none()
            && rec.exit.is_none()
            && rec.runtime != berth_model::VM_RUNTIME
            && matches!(rec.state, State::Running | State::Paused)
            && self.cgroups.frozen(&rec.cgroup) == Some(rec.state == State::Paused);
        unchanged.then(|| shim::adopt(args, &rec.shim.socket, rec.shim.pid)).flatten()
    }

    /// Records what a live shim did while berthd was down (its state as
    /// `known` from the hello, or asked now): a start or a pause/resume
    /// that completed after berthd died, each reported once.
    /// (An exit is picked up by the monitor.)
    async fn catch_up(&self, rec: &ContainerRecord, entry: &Entry, known: Option<(State, u32)>) -> Result<()> {
        let (ns, id) = (&rec.namespace, &rec.id);
        let (actual, pid) = match known {
            Some(state) => state,
            None => entry.shim.state(id).await?,
        };
        let steps: &[(Op, Kind)] = match (rec.state, actual) {
            (State::Created, State::Running) => &[(Op::Start, Kind::Start)],
            (State::Created, State::Paused) => &[(Op::Start, Kind::Start), (Op::Pause, Kind::Pause)],
            (State::Running, State::Paused) => &[(Op::Pause, Kind::Pause)],
            (State::Paused, State::Running) => &[(Op::Resume, Kind::Resume)],
            _ => &[],
        };
        for (op, kind) in steps {
            tracing::info!(%ns, %id, "recording a {kind} that happened while berthd was down");
            self.change(ns, id, Some(*kind), |r| {
                r.state = r.state.apply(*op)?;
                if *op == Op::Start {
                    r.pid = pid;
                    r.started_at_ns = crate::now_ns();
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}
