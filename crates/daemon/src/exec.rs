//! Exec (SPEC B6): extra processes in a running container, each with its
//! own id, output files, exit watch and events (exec-added, exec-started,
//! exit with the exec id). The record lists the execs whose exit is not
//! reported yet, so a restarted berthd still reports each exit once
//! (SPEC B22); the rest of an exec lives in memory, as in containerd.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use berth_model::{ContainerId, ExecId, ExitStatus, Namespace, State};
use berth_store::ContainerRecord;
use oci_spec::runtime::Spec;
use tokio::sync::watch;

use crate::create::make_fifo;
use crate::error::{Error, Result};
use crate::events::{Kind, event};
use crate::logs::LogFormat;
use crate::manager::{Entry, Manager, lock};
use crate::process_io::ProcessIo;
use crate::spec::{Overrides, apply_overrides};

/// What to run.
pub struct ExecParams {
    pub exec_id: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Give the exec a terminal (attach with `Attach`), of this size.
    pub tty: bool,
    pub tty_size: Option<(u32, u32)>,
    /// Interactive: stdin through a FIFO without tty (see `needs_stdin_fifo`).
    pub stdin: bool,
}

pub struct ExecInfo {
    /// 0 until started.
    pub pid: AtomicU32,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub log: LogFormat,
    /// Runs on a terminal (as far as this daemon run knows).
    pub terminal: bool,
    pub exit: watch::Sender<Option<ExitStatus>>,
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

impl ExecInfo {
    /// An exec's output files in the container's log dir `logs`, written
    /// as the container's are (kubelet's file is init's only: a CRI
    /// container's exec writes plain files, as every berth-shim can, one
    /// an older berthd started too).
    fn new(pid: u32, logs: &std::path::Path, exec_id: &str, log: LogFormat, terminal: bool) -> Arc<ExecInfo> {
        let log = match log {
            LogFormat::Kubelet => LogFormat::Plain,
            other => other,
        };
        let (stdout, stderr) = log.files(logs, exec_id);
        Arc::new(ExecInfo { pid: AtomicU32::new(pid), stdout, stderr, log, terminal, exit: watch::channel(None).0 })
    }
}

/// Where the interactive stdin FIFO of a process lives in the log dir
/// (`exec_id` empty: init).
pub fn stdin_fifo(logs: &std::path::Path, exec_id: &str) -> PathBuf {
    match exec_id {
        "" => logs.join("stdin"),
        e => logs.join(format!("exec-{e}.stdin")),
    }
}

/// The exec's OCI process: the container's own, with the request's args,
/// env (merged by key), cwd, terminal and user.
fn process_spec(bundle: &std::path::Path, p: &ExecParams) -> Result<Vec<u8>> {
    let path = bundle.join("config.json");
    let spec = Spec::load(&path).map_err(|e| invalid(format!("container spec {}: {e}", path.display())))?;
    let mut process = spec.process().clone().unwrap_or_default();
    let overrides = Overrides { args: &p.args, env: &p.env, cwd: &p.cwd, tty: p.tty, tty_size: p.tty_size };
    apply_overrides(&mut process, &overrides)?;
    if let Some(uid) = p.uid {
        process.user_mut().set_uid(uid);
        process.user_mut().set_gid(p.gid.unwrap_or(uid));
    }
    crate::spec::check_process(&process)?;
    serde_json::to_vec(&process).map_err(|e| invalid(format!("exec spec: {e}")))
}

/// The runtime says only "failed to unix syscall" for a working directory
/// that does not exist: name the path when that is the likely cause (looked
/// up through the container's root, symlinks resolved inside it).
fn explain_exec_failure(e: Error, rec: &ContainerRecord, cwd: &str) -> Error {
    if cwd.is_empty() || in_root_exists(&rec.rootfs, cwd) {
        return e;
    }
    Error::InvalidArgument(format!("working directory {cwd:?} does not exist in container {}", rec.id))
}

/// Whether `path` exists inside `root`, resolved by the kernel as the
/// container would see it (`RESOLVE_IN_ROOT`: symlinks and `..` stay in it).
fn in_root_exists(root: &std::path::Path, path: &str) -> bool {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let Ok(dir) = std::fs::File::open(root) else { return false };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    // SAFETY: a successful openat2 returns a new descriptor no one else owns.
    openat2(dir.as_raw_fd(), path, how).map(|fd| drop(unsafe { OwnedFd::from_raw_fd(fd) })).is_ok()
}

impl Manager {
    pub(crate) fn exec_info(&self, entry: &Entry, exec_id: &str) -> Result<Arc<ExecInfo>> {
        lock(&entry.execs).get(exec_id).cloned().ok_or_else(|| Error::NotFound(format!("exec {exec_id}")))
    }

    /// Starts an exec and returns its pid.
    pub async fn exec(self: &Arc<Self>, ns: &Namespace, id: &ContainerId, p: ExecParams) -> Result<u32> {
        let exec_id = ExecId::new(p.exec_id.clone())?;
        if p.args.is_empty() {
            return Err(invalid("exec needs a command".into()));
        }
        let rec = self.get(ns, id)?;
        if rec.state != State::Running {
            return Err(Error::FailedPrecondition(format!("container {id} is {}: exec needs it running", rec.state)));
        }
        let spec = process_spec(&rec.bundle, &p)?;
        let entry = self.entry(ns, id)?;
        let logs = self.cfg.log_dir(ns, id);
        // One record for the exec's whole life: waiters and followers that
        // subscribe early keep the same exit channel.
        // A containerd shim copies an interactive exec's output itself.
        let log =
            if entry.shim.is_containerd_shim() && p.stdin && !p.tty { LogFormat::Plain } else { LogFormat::of(&rec) };
        let info = ExecInfo::new(0, &logs, exec_id.as_str(), log, p.tty);
        let (stdout, stderr) = (info.stdout.clone(), info.stderr.clone());
        {
            let mut execs = lock(&entry.execs);
            if execs.contains_key(exec_id.as_str()) {
                return Err(Error::AlreadyExists(format!("exec {exec_id} in container {id}")));
            }
            execs.insert(exec_id.to_string(), info.clone());
        }
        let started = async {
            let stdin = crate::process_io::needs_stdin_fifo(p.stdin, p.tty, entry.shim.is_containerd_shim())
                .then(|| stdin_fifo(&logs, exec_id.as_str()));
            if let Some(fifo) = &stdin {
                make_fifo(fifo)?;
            }
            let io =
                ProcessIo { stdin: stdin.as_deref(), stdout: &stdout, stderr: &stderr, terminal: p.tty, log: info.log };
            entry.shim.exec(id, exec_id.as_str(), &io, spec).await?;
            self.publish(event(Kind::ExecAdded, ns, id, exec_id.as_str(), 0, None))?;
            entry.shim.start(id, exec_id.as_str()).await
        }
        .await;
        let pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                let _ = entry.shim.delete(id, exec_id.as_str()).await;
                self.forget_exec(&entry, exec_id.as_str());
                return Err(explain_exec_failure(e, &rec, &p.cwd));
            }
        };
        info.pid.store(pid, Ordering::SeqCst);
        self.change_with(ns, id, |r| {
            r.execs.insert(exec_id.to_string(), pid);
            Ok(Some(event(Kind::ExecStarted, ns, id, exec_id.as_str(), pid, None)))
        })?;
        self.spawn_exec_monitor(&entry, ns, id, exec_id.as_str(), info);
        Ok(pid)
    }

    /// Waits for an exec's exit through the shim and reports it once.
    fn spawn_exec_monitor(
        self: &Arc<Self>,
        entry: &Entry,
        ns: &Namespace,
        id: &ContainerId,
        exec_id: &str,
        info: Arc<ExecInfo>,
    ) {
        let (mgr, shim, ns, id, exec_id) =
            (self.clone(), entry.shim.clone(), ns.clone(), id.clone(), exec_id.to_string());
        tokio::spawn(async move {
            // A lost shim: the container's cleanup reports the exec's exit
            // (from the shim's exit file, or 255) and wakes its waiters.
            let Ok(status) = shim.wait(&id, &exec_id).await else { return };
            shim.drained(&info.stdout, &info.stderr).await;
            if let Err(e) = mgr.exec_exited(&ns, &id, &exec_id, status) {
                tracing::warn!(%ns, %id, %exec_id, "cannot record the exec's exit: {e}");
            }
            info.exit.send_replace(Some(status));
        });
    }

    /// Reports the exit of every exec whose exit is still pending, once its
    /// shim is gone: the exit file the shim wrote, or "unknown exit"; and
    /// wakes the exec's waiters.
    pub(crate) fn report_pending_execs(
        &self,
        ns: &Namespace,
        id: &ContainerId,
        bundle: &std::path::Path,
    ) -> Result<()> {
        for exec_id in self.get(ns, id)?.execs.keys() {
            let file = bundle.join(format!("exec-{exec_id}.exit.json"));
            let recorded = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let status = recorded.unwrap_or(ExitStatus::unknown(crate::now_ns()));
            self.exec_exited(ns, id, exec_id, status)?;
            if let Ok(entry) = self.entry(ns, id)
                && let Ok(info) = self.exec_info(&entry, exec_id)
            {
                info.exit.send_replace(Some(status));
            }
        }
        Ok(())
    }

    /// Records an exec's exit event — once: the exec leaves the record's
    /// list in the same transaction.
    pub(crate) fn exec_exited(
        &self,
        ns: &Namespace,
        id: &ContainerId,
        exec_id: &str,
        status: ExitStatus,
    ) -> Result<()> {
        self.change_with(ns, id, |r| {
            Ok(r.execs.remove(exec_id).map(|pid| event(Kind::Exit, ns, id, exec_id, pid, Some(status))))
        })
        .map(drop)
    }

    /// After berthd restarts: watches again the execs of a reconnected
    /// container whose exits were not reported yet.
    pub(crate) fn resume_execs(self: &Arc<Self>, rec: &ContainerRecord, entry: &Entry) {
        let logs = self.cfg.log_dir(&rec.namespace, &rec.id);
        for (exec_id, pid) in &rec.execs {
            // Plain files if that is what the exec writes (see `exec`).
            let plain = logs.join(format!("exec-{exec_id}.stdout.log")).exists();
            let log = if plain { LogFormat::Plain } else { LogFormat::of(rec) };
            let info = ExecInfo::new(*pid, &logs, exec_id, log, false);
            lock(&entry.execs).insert(exec_id.clone(), info.clone());
            self.spawn_exec_monitor(entry, &rec.namespace, &rec.id, exec_id, info);
        }
    }

    pub async fn exec_wait(&self, ns: &Namespace, id: &ContainerId, exec_id: &str) -> Result<ExitStatus> {
        let info = self.exec_info(&*self.entry(ns, id)?, exec_id)?;
        let mut rx = info.exit.subscribe();
        let status = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::FailedPrecondition(format!("exec {exec_id} was removed while waiting")))?;
        Ok(status.unwrap_or(ExitStatus::unknown(0)))
    }

    /// Removes a finished exec and its output (SPEC B8).
    pub async fn exec_delete(&self, ns: &Namespace, id: &ContainerId, exec_id: &str) -> Result<ExitStatus> {
        let entry = self.entry(ns, id)?;
        let info = self.exec_info(&entry, exec_id)?;
        let Some(status) = *info.exit.borrow() else {
            return Err(Error::FailedPrecondition(format!("exec {exec_id} is still running")));
        };
        entry.shim.delete(id, exec_id).await?;
        self.forget_exec(&entry, exec_id);
        Ok(status)
    }

    fn forget_exec(&self, entry: &Entry, exec_id: &str) {
        if let Some(info) = lock(&entry.execs).remove(exec_id) {
            info.log.remove(&info.stdout, &info.stderr);
            if let Some(logs) = info.stdout.parent() {
                let _ = std::fs::remove_file(stdin_fifo(logs, exec_id));
            }
        }
    }

    /// Exec id of each exec pid, for `top`.
    pub(crate) fn exec_pids(&self, entry: &Entry) -> Vec<(u32, String)> {
        lock(&entry.execs).iter().map(|(k, v)| (v.pid.load(Ordering::SeqCst), k.clone())).collect()
    }
}
