//! Exec processes (SPEC B6): extra processes started in a running
//! container, each with its own exec id, stdio, pidfd watcher and exit file.
//! The runtime starts them from an OCI process JSON written to the bundle.

use std::path::PathBuf;

use berth_model::{Code, ExecId, ExitStatus};
use berth_shim::to_ttrpc;
use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::events::task::{TaskExecAdded, TaskExecStarted};
use containerd_shim_protos::topics::{TASK_EXEC_ADDED_EVENT_TOPIC, TASK_EXEC_STARTED_EVENT_TOPIC};
use containerd_shim_protos::ttrpc;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::process;
use crate::service::{console_size, exit_fields, internal};
use crate::tasks::{InitTask, Shim};
use crate::tty::Pty;

type TtrpcResult<T> = ttrpc::Result<T>;

pub struct ExecProc {
    spec: PathBuf,
    terminal: bool,
    pty: Option<Pty>,
    stdin: String,
    stdin_keeper: Option<std::fs::File>,
    stdout: String,
    stderr: String,
    /// 0 until started.
    pid: u32,
    /// Set while a Start runs, so a second one is refused.
    starting: bool,
    exit: Option<watch::Receiver<Option<ExitStatus>>>,
    /// Turns true once started (containerd waits for an exec before it
    /// starts it).
    started: watch::Sender<bool>,
}

impl ExecProc {
    fn exited(&self) -> Option<ExitStatus> {
        self.exit.as_ref().and_then(|rx| *rx.borrow())
    }
}

fn not_found(exec_id: &str) -> ttrpc::Error {
    to_ttrpc(Code::NotFound, format!("exec {exec_id} not found"))
}

/// Lets an exec's interactive stdin end (CloseIO).
pub(crate) fn close_exec_stdin(t: &mut InitTask, exec_id: &str) -> TtrpcResult<()> {
    get(t, exec_id)?.stdin_keeper = None;
    Ok(())
}

/// The terminal of an exec, if it has one.
pub(crate) fn exec_pty<'a>(t: &'a InitTask, exec_id: &str) -> TtrpcResult<Option<&'a Pty>> {
    t.execs.get(exec_id).map(|e| e.pty.as_ref()).ok_or_else(|| not_found(exec_id))
}

fn get<'a>(t: &'a mut InitTask, exec_id: &str) -> TtrpcResult<&'a mut ExecProc> {
    t.execs.get_mut(exec_id).ok_or_else(|| not_found(exec_id))
}

impl Shim {
    /// Registers an exec; it runs on `Start`.
    pub(crate) fn exec_add(&self, req: api::ExecProcessRequest) -> TtrpcResult<()> {
        let exec_id = ExecId::new(req.exec_id.clone()).map_err(|e| to_ttrpc(e.code(), e))?;
        let spec = req.spec.as_ref().map(|a| a.value.clone()).unwrap_or_default();
        serde_json::from_slice::<serde_json::Value>(&spec)
            .map_err(|e| to_ttrpc(Code::InvalidArgument, format!("exec process spec: {e}")))?;
        self.with_task(&req.id, |t| {
            if !t.running() {
                return Err(to_ttrpc(Code::FailedPrecondition, format!("container {} is not running", req.id)));
            }
            if t.execs.contains_key(exec_id.as_str()) {
                return Err(to_ttrpc(Code::AlreadyExists, format!("exec {exec_id} already exists")));
            }
            let path = t.bundle.join(format!("exec-{exec_id}.json"));
            std::fs::write(&path, &spec).map_err(|e| internal(format!("write {}: {e}", path.display())))?;
            let proc_ = ExecProc {
                spec: path,
                terminal: req.terminal,
                pty: None,
                stdin: req.stdin,
                stdin_keeper: None,
                stdout: req.stdout,
                stderr: req.stderr,
                pid: 0,
                starting: false,
                exit: None,
                started: watch::Sender::new(false),
            };
            t.execs.insert(exec_id.to_string(), proc_);
            Ok(())
        })?;
        let added = TaskExecAdded { container_id: req.id, exec_id: exec_id.to_string(), ..Default::default() };
        self.publish(TASK_EXEC_ADDED_EVENT_TOPIC, &added);
        Ok(())
    }

    pub(crate) async fn exec_start(&self, id: &str, exec_id: &str) -> TtrpcResult<u32> {
        let (spec, terminal, stdin, stdout, stderr, bundle) = self.with_task(id, |t| {
            if !t.running() {
                return Err(to_ttrpc(Code::FailedPrecondition, "container is not running"));
            }
            let bundle = t.bundle.clone();
            let e = get(t, exec_id)?;
            if e.pid != 0 || e.starting {
                return Err(to_ttrpc(Code::FailedPrecondition, format!("exec {exec_id} was already started")));
            }
            e.starting = true;
            Ok((e.spec.clone(), e.terminal, e.stdin.clone(), e.stdout.clone(), e.stderr.clone(), bundle))
        })?;
        let launched = async {
            let (stdio, console, stdin_keeper, drained) =
                self.stdio(terminal, id, exec_id, &stdin, &stdout, &stderr)?;
            // The process becomes our child when its helper exits: nothing
            // is reaped until its watcher tracks it (no await from the
            // answer on).
            let _spawning = self.spawning.enter();
            let pid = self.runtime.exec(id, &spec, stdio).await.map_err(|e| to_ttrpc(e.code(), e))?;
            // On failure the process runs on without a terminal reader; kill it.
            let size = console_size(&std::fs::read(&spec).unwrap_or_default(), "/consoleSize");
            let pty = self.serve_terminal(console, id, exec_id, &stdout, size).inspect_err(|_| {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            })?;
            let exit_file = bundle.join(format!("exec-{exec_id}.exit.json"));
            let published = self.exit_event(id, exec_id, pid, None);
            let rx = process::watch(pid, exit_file, self.tracked.clone(), drained, published)
                .map_err(|e| internal(format!("watch exec {pid}: {e}")))?;
            Ok((pid, rx, pty, stdin_keeper))
        };
        let (pid, rx, pty, stdin_keeper) = match launched.await {
            Ok(launched) => launched,
            Err(e) => {
                let _ = self.with_task(id, |t| {
                    get(t, exec_id)?.starting = false;
                    Ok(())
                });
                return Err(e);
            }
        };
        self.with_task(id, |t| {
            let e = get(t, exec_id)?;
            e.pid = pid;
            e.exit = Some(rx);
            e.pty = pty;
            e.stdin_keeper = stdin_keeper;
            e.started.send_replace(true);
            Ok(pid)
        })?;
        let started =
            TaskExecStarted { container_id: id.to_string(), exec_id: exec_id.to_string(), pid, ..Default::default() };
        self.publish(TASK_EXEC_STARTED_EVENT_TOPIC, &started);
        Ok(pid)
    }

    pub(crate) fn exec_state(&self, id: &str, exec_id: &str) -> TtrpcResult<api::StateResponse> {
        self.with_task(id, |t| {
            let bundle = t.bundle.to_string_lossy().into_owned();
            let e = get(t, exec_id)?;
            let exited = e.exited();
            let status = match (exited, e.pid) {
                (Some(_), _) => Status::STOPPED,
                (None, 0) => Status::CREATED,
                (None, _) => Status::RUNNING,
            };
            let (exit_status, exited_at) = exit_fields(exited);
            Ok(api::StateResponse {
                id: id.to_string(),
                exec_id: exec_id.to_string(),
                bundle,
                pid: e.pid,
                status: status.into(),
                stdout: e.stdout.clone(),
                stderr: e.stderr.clone(),
                exit_status,
                exited_at,
                ..Default::default()
            })
        })
    }

    /// Signals one exec; `all` is for init only (SPEC B7).
    pub(crate) fn exec_kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> TtrpcResult<()> {
        if all {
            return Err(to_ttrpc(Code::InvalidArgument, "signalling all processes is allowed only for init"));
        }
        let pid = self.with_task(id, |t| {
            let e = get(t, exec_id)?;
            match (e.pid, e.exited()) {
                (_, Some(_)) => Err(to_ttrpc(Code::NotFound, format!("exec {exec_id} already finished"))),
                (0, None) => Err(to_ttrpc(Code::FailedPrecondition, format!("exec {exec_id} was not started"))),
                (pid, None) => Ok(pid),
            }
        })?;
        let sig = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| to_ttrpc(Code::InvalidArgument, format!("invalid signal {signal}")))?;
        kill(Pid::from_raw(pid as i32), sig).map_err(|e| internal(format!("kill {pid}: {e}")))
    }

    /// The exit of an exec, once it was started; an exec deleted before it
    /// started is not found.
    pub(crate) async fn exec_exit_rx(
        &self,
        id: &str,
        exec_id: &str,
    ) -> TtrpcResult<watch::Receiver<Option<ExitStatus>>> {
        let mut started = self.with_task(id, |t| Ok(get(t, exec_id)?.started.subscribe()))?;
        if started.wait_for(|s| *s).await.is_err() {
            return Err(not_found(exec_id));
        }
        self.with_task(id, |t| {
            get(t, exec_id)?.exit.clone().ok_or_else(|| internal(format!("exec {exec_id} has no exit")))
        })
    }

    /// Forgets a finished (or never started) exec and returns its exit.
    pub(crate) fn exec_delete(&self, id: &str, exec_id: &str) -> TtrpcResult<(u32, Option<ExitStatus>)> {
        self.with_task(id, |t| {
            let e = get(t, exec_id)?;
            let exited = e.exited();
            if (e.pid != 0 || e.starting) && exited.is_none() {
                return Err(to_ttrpc(Code::FailedPrecondition, format!("exec {exec_id} is still running")));
            }
            let pid = e.pid;
            let _ = std::fs::remove_file(&e.spec);
            let _ = std::fs::remove_file(e.spec.with_extension("exit.json"));
            t.execs.remove(exec_id);
            Ok((pid, exited))
        })
    }
}
