//! The shim v2 Task service for the containers a shim holds (see
//! `tasks.rs`). Each handler finds the named container's task, checks the
//! request against its state, calls the runtime, and answers; exits come
//! from the watchers in `process.rs`. Runtime calls run in forked helpers
//! and are awaited, so one hung call (a hook that hangs) stalls only the
//! request that made it. Under containerd it also mounts the task's
//! rootfs, publishes task events and answers Stats in containerd's types.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use berth_model::{Code, ExitStatus};
use berth_runtime::{RuntimeError, in_child};
use berth_shim::{STATS_TYPE_URL, timestamp, to_ttrpc};
use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::events::task::{TaskDelete, TaskPaused, TaskResumed, TaskStart};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics::{
    TASK_DELETE_EVENT_TOPIC, TASK_PAUSED_EVENT_TOPIC, TASK_RESUMED_EVENT_TOPIC, TASK_START_EVENT_TOPIC,
};
use containerd_shim_protos::ttrpc::{self, r#async::TtrpcContext};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::cleanup::{cgroup_of, kill_leftovers};
use crate::exec::{close_exec_stdin, exec_pty};
use crate::output::Drained;
use crate::stdio::Terminal;
use crate::tasks::{InitTask, Shim, not_served};
use crate::tty::Pty;
use crate::{metrics, process, rootfs};

type TtrpcResult<T> = ttrpc::Result<T>;

/// What watching a new init yields: its terminal, cgroup and exit.
type Watched = (Option<Pty>, Option<String>, watch::Receiver<Option<ExitStatus>>);

impl Shim {
    /// Freezes (a running) or thaws (a paused) container (SPEC B11).
    async fn freeze(&self, id: &str, frozen: bool) -> TtrpcResult<()> {
        let allowed =
            self.with_task(id, |t| Ok(if frozen { t.running() } else { t.paused && t.exited().is_none() }))?;
        if !allowed {
            let want = if frozen { "running" } else { "paused" };
            return Err(to_ttrpc(Code::FailedPrecondition, format!("container {id} is not {want}")));
        }
        let done = if frozen { self.runtime.pause(id).await } else { self.runtime.resume(id).await };
        done.map_err(|e| to_ttrpc(e.code(), e))?;
        self.with_task(id, |t| {
            t.paused = frozen;
            Ok(())
        })
    }

    /// The cgroup of a container whose init has not exited.
    fn live_cgroup(&self, id: &str) -> TtrpcResult<String> {
        self.with_task(id, |t| match (&t.cgroup, t.exited()) {
            (Some(cg), None) => Ok(cg.clone()),
            (None, None) => Err(internal("container spec names no cgroup")),
            (_, Some(_)) => Err(to_ttrpc(Code::FailedPrecondition, format!("container {id} has exited"))),
        })
    }

    fn exit_rx(&self, id: &str) -> TtrpcResult<watch::Receiver<Option<ExitStatus>>> {
        self.with_task(id, |t| Ok(t.exit.clone()))
    }

    /// Serves a new init's terminal and starts watching it (no await: the
    /// init is an untracked child of the shim until this returns).
    fn watch_init(
        &self,
        req: &api::CreateTaskRequest,
        bundle: &Path,
        pid: u32,
        console: Option<Terminal>,
        drained: Drained,
    ) -> TtrpcResult<Watched> {
        let size = console_size(&std::fs::read(bundle.join("config.json")).unwrap_or_default(), "/process/consoleSize");
        let pty = self.serve_terminal(console, &req.id, "", &req.stdout, size)?;
        let cgroup = cgroup_of(bundle);
        let (leftover_cgroup, hierarchies) = (cgroup.clone(), self.cgroups.clone());
        let published = self.exit_event(&req.id, "", pid, self.watch_oom(&req.id, cgroup.as_deref()));
        let oom_file = self.guest.then(|| bundle.join(berth_model::vm::OOM_KILLS_FILE));
        let exit = process::watch(pid, bundle.join("exit.json"), self.tracked.clone(), drained, move |status| {
            kill_leftovers(hierarchies.as_ref(), leftover_cgroup.as_deref());
            if let (Some(file), Some(h), Some(cg)) = (oom_file, &hierarchies, &leftover_cgroup) {
                count_oom_kills(h, cg, &file);
            }
            published(status);
        });
        let exit = exit.map_err(|e| internal(format!("watch init {pid}: {e}")))?;
        Ok((pty, cgroup, exit))
    }
}

/// In a guest: writes the OOM kills of an exited init's cgroup to `file`
/// (none: no file) for the host's shim.
fn count_oom_kills(h: &berth_cgroups::Hierarchies, cgroup: &str, file: &Path) {
    let kills = berth_cgroups::oom_kills_in(h, cgroup);
    if kills > 0
        && let Err(e) = berth_store::write_atomic(file, kills.to_string().as_bytes())
    {
        tracing::warn!("record {kills} OOM kills in {}: {e}", file.display());
    }
}

pub(crate) fn exit_fields(status: Option<ExitStatus>) -> (u32, MessageField<Timestamp>) {
    match status {
        Some(s) => (s.code, Some(timestamp(s.exited_at_ns)).into()),
        None => (0, None.into()),
    }
}

/// The `{width, height}` at `pointer` of a JSON spec or process.
pub(crate) fn console_size(json: &[u8], pointer: &str) -> Option<(u32, u32)> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let size = v.pointer(pointer)?;
    Some((size.get("width")?.as_u64()? as u32, size.get("height")?.as_u64()? as u32))
}

/// A resource error as reported by a forked helper.
fn isolated(e: berth_cgroups::ResourceError) -> RuntimeError {
    RuntimeError::Isolated { code: e.code(), message: e.to_string() }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ttrpc::Error {
    to_ttrpc(Code::Internal, e)
}

/// How long after a start its memory is given back.
const RELEASE_DELAY: Duration = Duration::from_millis(100);

/// [`berth_shim::release_memory`] once the start that asks has answered:
/// the code that runs after the release (the answer, the task that
/// carried the start) faults its pages back in, 16 neighbours at a time,
/// so releasing at once left about 0.4 MB of it mapped in every shim.
/// Starts close together share one release.
fn release_memory_soon() {
    static PENDING: AtomicBool = AtomicBool::new(false);
    if PENDING.swap(true, Ordering::SeqCst) {
        return;
    }
    tokio::spawn(async {
        tokio::time::sleep(RELEASE_DELAY).await;
        PENDING.store(false, Ordering::SeqCst);
        berth_shim::release_memory();
    });
}

#[async_trait]
impl Task for Shim {
    async fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        // Held until the task is in the table: a second Create of the same
        // id meanwhile gets AlreadyExists. No lock is held across the call.
        let reservation = self.reserve(&req.id)?;
        let bundle = PathBuf::from(&req.bundle);
        let (stdio, console, stdin_keeper, drained) =
            self.stdio(req.terminal, &req.id, "", &req.stdin, &req.stdout, &req.stderr)?;
        let rootfs_mounted = rootfs::mount_all(&bundle, &req.rootfs).map_err(internal)?;
        // The new init becomes our child when its helper exits: nothing is
        // reaped until its watcher tracks it.
        let spawning = self.spawning.enter();
        let t0 = std::time::Instant::now();
        let restore = match req.checkpoint.is_empty() {
            true => None,
            false => Some(crate::checkpoint::options(req.options.as_ref(), &req.checkpoint)?),
        };
        let made = match &restore {
            Some(c) => self.runtime.restore(&req.id, &bundle, stdio, c).await,
            None => self.runtime.create(&req.id, &bundle, stdio).await,
        };
        let pid = match made {
            Ok(pid) => pid,
            Err(e) => {
                if rootfs_mounted {
                    rootfs::unmount_all(&bundle);
                }
                return Err(to_ttrpc(e.code(), e));
            }
        };
        tracing::debug!(id = %req.id, pid, terminal = req.terminal, us = t0.elapsed().as_micros() as u64, "runtime create");
        if self.is_abandoned(&reservation) {
            let _ = self.runtime.delete(&req.id, true).await;
            drop(spawning);
            if rootfs_mounted {
                rootfs::unmount_all(&bundle);
            }
            return Err(to_ttrpc(
                Code::FailedPrecondition,
                format!("the create of container {} was abandoned", req.id),
            ));
        }
        let (pty, cgroup, exit) = match self.watch_init(&req, &bundle, pid, console, drained) {
            Ok(watched) => watched,
            Err(e) => {
                drop(spawning);
                let _ = self.runtime.delete(&req.id, true).await;
                if rootfs_mounted {
                    rootfs::unmount_all(&bundle);
                }
                return Err(e);
            }
        };
        drop(spawning);
        self.created(&req, pid);
        let task = InitTask {
            bundle,
            pid,
            started: false,
            restored: restore.is_some(),
            paused: false,
            stdout: req.stdout,
            stderr: req.stderr,
            cgroup,
            exit,
            pty,
            stdin_keeper,
            rootfs_mounted,
            execs: HashMap::new(),
        };
        self.insert(&reservation, task);
        Ok(api::CreateTaskResponse { pid, ..Default::default() })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        if !req.exec_id.is_empty() {
            let pid = self.exec_start(&req.id, &req.exec_id).await?;
            release_memory_soon();
            return Ok(api::StartResponse { pid, ..Default::default() });
        }
        let (pid, restored) = self.with_task(&req.id, |t| {
            if t.started || t.exited().is_some() {
                return Err(to_ttrpc(Code::FailedPrecondition, format!("container {} was already started", req.id)));
            }
            Ok((t.pid, t.restored))
        })?;
        if !restored {
            self.runtime.start(&req.id).await.map_err(|e| to_ttrpc(e.code(), e))?;
        }
        self.with_task(&req.id, |t| {
            t.started = true;
            Ok(())
        })?;
        self.publish(TASK_START_EVENT_TOPIC, &TaskStart { container_id: req.id, pid, ..Default::default() });
        // The container runs from here on and the shim mostly waits: give
        // back what the create and start left resident (a shim per
        // container makes every page count).
        release_memory_soon();
        Ok(api::StartResponse { pid, ..Default::default() })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        if !req.exec_id.is_empty() {
            return self.exec_state(&req.id, &req.exec_id);
        }
        self.with_task(&req.id, |t| {
            let exited = t.exited();
            let status = match (exited, t.started, t.paused) {
                (Some(_), _, _) => Status::STOPPED,
                (None, true, true) => Status::PAUSED,
                (None, true, false) => Status::RUNNING,
                (None, false, _) => Status::CREATED,
            };
            let (exit_status, exited_at) = exit_fields(exited);
            Ok(api::StateResponse {
                id: req.id.clone(),
                bundle: t.bundle.to_string_lossy().into_owned(),
                pid: t.pid,
                status: status.into(),
                stdout: t.stdout.clone(),
                stderr: t.stderr.clone(),
                exit_status,
                exited_at,
                ..Default::default()
            })
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        if !req.exec_id.is_empty() {
            self.exec_kill(&req.id, &req.exec_id, req.signal, req.all)?;
            return Ok(Empty::new());
        }
        let (pid, paused) = self.with_task(&req.id, |t| match t.exited() {
            Some(_) => Err(to_ttrpc(Code::NotFound, format!("process of container {} already finished", req.id))),
            None => Ok((t.pid, t.paused)),
        })?;
        let signal = i32::try_from(req.signal).map_err(|_| to_ttrpc(Code::InvalidArgument, "bad signal"))?;
        // SIGKILL to init of a container with its own pid namespace kills
        // every process in it (the kernel empties a namespace whose init
        // dies): no runtime helper needed, which `rm -f` of many
        // containers feels.
        let all = req.all && !(signal == libc::SIGKILL && !paused && own_pid_namespace(pid));
        if all {
            self.runtime.kill(&req.id, signal, true).await.map_err(|e| to_ttrpc(e.code(), e))?;
        } else {
            let sig = Signal::try_from(signal)
                .map_err(|_| to_ttrpc(Code::InvalidArgument, format!("invalid signal {signal}")))?;
            kill(Pid::from_raw(pid as i32), sig).map_err(|e| match e {
                nix::errno::Errno::ESRCH => to_ttrpc(Code::NotFound, "process already finished"),
                e => internal(format!("kill {pid}: {e}")),
            })?;
        }
        // Frozen processes on cgroup v1 only die once thawed. runc and
        // libcontainer thaw by themselves when killing all with SIGKILL, so
        // an "already thawed" answer is fine.
        if paused && signal == libc::SIGKILL {
            if let Err(e) = self.runtime.resume(&req.id).await {
                tracing::debug!(id = %req.id, "thaw after SIGKILL: {e}");
            }
            self.with_task(&req.id, |t| {
                t.paused = false;
                Ok(())
            })?;
        }
        // Cgroups the container froze below its own would keep their
        // processes (and so the pid namespace's init) from ever dying.
        if signal == libc::SIGKILL {
            let cgroup = self.with_task(&req.id, |t| Ok(t.cgroup.clone()))?;
            if let (Some(cg), Some(h)) = (cgroup, &self.cgroups) {
                h.thaw_tree(&cg);
            }
        }
        Ok(Empty::new())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        let cgroup = self.live_cgroup(&req.id)?;
        let hierarchies = self.cgroups.clone();
        let read = move || match &hierarchies {
            Some(h) => berth_cgroups::stats_in(h, &cgroup),
            None => berth_cgroups::stats(&cgroup),
        };
        let stats = in_child("stats", || read().map_err(isolated)).await.map_err(|e| to_ttrpc(e.code(), e))?;
        let any = if self.events.is_some() {
            metrics::to_any(&stats).map_err(internal)?
        } else {
            let mut any = Any::new();
            any.type_url = STATS_TYPE_URL.to_string();
            any.value = serde_json::to_vec(&stats).map_err(internal)?;
            any
        };
        Ok(api::StatsResponse { stats: Some(any).into(), ..Default::default() })
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        let cgroup = self.live_cgroup(&req.id)?;
        let any = req.resources.as_ref().ok_or_else(|| to_ttrpc(Code::InvalidArgument, "no resources to update"))?;
        let limits = berth_shim::resources::limits_from_any(any).map_err(|e| to_ttrpc(Code::InvalidArgument, e))?;
        limits.validate().map_err(|e| to_ttrpc(e.code(), e))?;
        in_child("update", || berth_cgroups::update(&cgroup, &limits).map(|()| 0u32).map_err(isolated))
            .await
            .map_err(|e| to_ttrpc(e.code(), e))?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        if !req.stdin && !self.sandbox {
            self.check(&req.id)?;
            return Ok(Empty::new());
        }
        self.with_task(&req.id, |t| {
            if !req.stdin {
                return Ok(());
            }
            if req.exec_id.is_empty() {
                t.stdin_keeper = None;
            } else {
                close_exec_stdin(t, &req.exec_id)?;
            }
            Ok(())
        })?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<Empty> {
        let resized = self.with_task(&req.id, |t| {
            let pty = if req.exec_id.is_empty() { t.pty.as_ref() } else { exec_pty(t, &req.exec_id)? };
            let pty = pty.ok_or_else(|| to_ttrpc(Code::FailedPrecondition, "the process has no terminal"))?;
            pty.resize(req.width, req.height).map_err(internal)
        });
        resized.map(|()| Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        self.exec_add(req)?;
        Ok(Empty::new())
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        self.freeze(&req.id, true).await?;
        self.publish(TASK_PAUSED_EVENT_TOPIC, &TaskPaused { container_id: req.id, ..Default::default() });
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        self.freeze(&req.id, false).await?;
        self.publish(TASK_RESUMED_EVENT_TOPIC, &TaskResumed { container_id: req.id, ..Default::default() });
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let rx = if req.exec_id.is_empty() {
            self.exit_rx(&req.id)?
        } else {
            self.exec_exit_rx(&req.id, &req.exec_id).await?
        };
        let status = process::wait(rx).await;
        let (exit_status, exited_at) = exit_fields(status);
        Ok(api::WaitResponse { exit_status, exited_at, ..Default::default() })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            let (pid, status) = self.exec_delete(&req.id, &req.exec_id)?;
            let (exit_status, exited_at) = exit_fields(status);
            return Ok(api::DeleteResponse { pid, exit_status, exited_at, ..Default::default() });
        }
        // A Create still in flight is undone when the runtime returns: the
        // caller gave up on it and must not find it later.
        if self.abandon(&req.id) {
            let msg = format!("the create of container {} is in flight; it is undone when it returns", req.id);
            return Err(to_ttrpc(Code::FailedPrecondition, msg));
        }
        // The rootfs to take off, if the shim mounted it.
        let (pid, started, rx, mounted, cgroup) = self.with_task(&req.id, |t| {
            Ok((t.pid, t.started, t.exit.clone(), t.rootfs_mounted.then(|| t.bundle.clone()), t.cgroup.clone()))
        })?;
        let exited = *rx.borrow();
        if exited.is_none() && started {
            return Err(to_ttrpc(Code::FailedPrecondition, format!("container {} is running; stop it first", req.id)));
        }
        // An exited container, if the runtime can remove it at once (its
        // cgroup with those made below it); else the runtime's full delete,
        // which also kills a created container.
        let quick = if exited.is_some() { self.runtime.delete_exited(&req.id) } else { None };
        let deleted = match quick {
            Some(deleted) => deleted,
            None => {
                // Cgroups the container made below its own would make the
                // runtime's removal of its cgroup fail for good.
                if let (Some(cg), Some(h)) = (cgroup, &self.cgroups)
                    && let Err(e) = h.remove_children(&cg)
                {
                    tracing::warn!(id = %req.id, "remove the container's sub-cgroups: {e}");
                }
                self.runtime.delete(&req.id, exited.is_none()).await
            }
        };
        deleted.map_err(|e| to_ttrpc(e.code(), e))?;
        let status = match tokio::time::timeout(Duration::from_secs(10), process::wait(rx)).await {
            Ok(s) => s,
            Err(_) => return Err(to_ttrpc(Code::DeadlineExceeded, format!("init {pid} did not exit"))),
        };
        if let Some(bundle) = mounted {
            rootfs::unmount_all(&bundle);
        }
        let (exit_status, exited_at) = exit_fields(status);
        let deleted = TaskDelete {
            container_id: req.id.clone(),
            pid,
            exit_status,
            exited_at: exited_at.clone(),
            ..Default::default()
        };
        self.publish(TASK_DELETE_EVENT_TOPIC, &deleted);
        // A lone shim's job is done with its container; a sandbox shim
        // waits for Shutdown.
        if self.remove(&req.id) && !self.sandbox {
            self.shutdown.notify_one();
        }
        Ok(api::DeleteResponse { pid, exit_status, exited_at, ..Default::default() })
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let (pid, cgroup, exited) = self.with_task(&req.id, |t| Ok((t.pid, t.cgroup.clone(), t.exited())))?;
        let mut pids = match (cgroup, &self.cgroups) {
            (Some(cg), Some(h)) => h.procs(&cg).map_err(internal)?,
            _ => Vec::new(),
        };
        if pids.is_empty() && exited.is_none() {
            pids.push(pid);
        }
        let processes = pids.into_iter().map(|pid| api::ProcessInfo { pid, ..Default::default() }).collect();
        Ok(api::PidsResponse { processes, ..Default::default() })
    }

    /// Names the shim's own id or a container it holds. A sandbox's task
    /// pid is the init of its PID namespace, if it holds one.
    async fn connect(&self, _ctx: &TtrpcContext, req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.task_pid(&req.id).or(self.pod_init.filter(|_| req.id == self.id));
        if req.id != self.id && task_pid.is_none() {
            return Err(not_served(&req.id));
        }
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: task_pid.unwrap_or(0),
            version: berth_shim::shim_version(&self.namespace),
            ..Default::default()
        })
    }

    async fn checkpoint(&self, _ctx: &TtrpcContext, req: api::CheckpointTaskRequest) -> TtrpcResult<Empty> {
        self.checkpoint_task(&req).await?;
        Ok(Empty::new())
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, req: api::ShutdownRequest) -> TtrpcResult<Empty> {
        // containerd tells a group's shim to exit after each task's delete,
        // naming that task: like its runc shim, the shim goes once it holds
        // nothing and otherwise serves on.
        if self.sandbox && self.events.is_some() {
            if self.held() == 0 {
                self.shutdown.notify_one();
            }
            return Ok(Empty::new());
        }
        if req.id != self.id {
            return Err(not_served(&req.id));
        }
        if self.sandbox {
            // Whatever `now` says: the containers would be orphaned.
            let held = self.held();
            if held > 0 {
                let message = format!("sandbox {} still holds {held} container(s); delete them first", self.id);
                return Err(to_ttrpc(Code::FailedPrecondition, message));
            }
        } else if self.any_live() && !req.now {
            return Err(to_ttrpc(Code::FailedPrecondition, format!("container {} still has a live task", req.id)));
        }
        self.shutdown.notify_one();
        Ok(Empty::new())
    }
}

/// Whether process `pid` is the init (pid 1) of its innermost pid
/// namespace, which then is not the shim's (whose pid 1 was there before
/// it): killing it empties that namespace. A container that joined another
/// namespace by path, or shares the host's, has an init that is not pid 1.
fn own_pid_namespace(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let innermost = status.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|v| v.split_whitespace().last());
    innermost == Some("1")
}
