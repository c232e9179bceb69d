//! berthd's side of a shim: spawning berth-shim in its own session with a
//! pre-bound socket (or a containerd v2 shim through its `start`, see
//! `shim_v2.rs`), and a typed client for the shim v2 Task API.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_model::{ContainerId, ExitStatus, State};
use berth_shim::{from_timestamp, from_ttrpc, pidfd_open};
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::ttrpc::{self, context};
use tokio::io::unix::AsyncFd;

use crate::error::{Error, Result};
use crate::process_io::ProcessIo;
pub use crate::shim_args::{ShimArgs, cleanup};
use crate::task::Task;

/// Calls that should answer promptly get this deadline; Wait gets none.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What a shim expects beyond the Task API's messages.
#[derive(Clone, Default)]
pub enum Dialect {
    /// berth-shim: log files as stdio, berth's JSON for stats and limits.
    #[default]
    Berth,
    /// A containerd v2 shim: output through berth-logger (`binary://`),
    /// options in Create, OCI resources in Update, containerd's metrics.
    V2 { logger: PathBuf, options: Option<Any> },
}

#[derive(Clone)]
pub struct ShimClient {
    task: Task,
    dialect: Arc<Dialect>,
    pub pid: u32,
    pub socket: PathBuf,
    /// Readable once the shim process has exited.
    pidfd: Option<Arc<AsyncFd<OwnedFd>>>,
    /// A sandbox's shim, serving several containers: it outlives the
    /// delete of each of them.
    pub shared: bool,
    /// It writes berth's rotated logs (a berth-shim of this version, or one
    /// that says so at Connect).
    pub berth_logs: bool,
}

fn shim_err(e: ttrpc::Error) -> Error {
    let (code, message) = from_ttrpc(&e);
    Error::Shim { code, message }
}

/// Checkpoint options as berth-shim reads them.
fn checkpoint_any(c: &berth_shim::Checkpoint) -> Result<Any> {
    let mut any = Any::new();
    any.type_url = berth_shim::CHECKPOINT_TYPE_URL.to_string();
    any.value = serde_json::to_vec(c).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(any)
}

fn ctx() -> context::Context {
    context::with_timeout(CALL_TIMEOUT.as_nanos() as i64)
}

fn exit_of(
    code: u32,
    at: Option<&containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp>,
) -> ExitStatus {
    ExitStatus { code, exited_at_ns: at.map(from_timestamp).unwrap_or(0) }
}

/// Starts the shim for one container and connects to it: berth-shim
/// logging to the bundle's `shim.log` and serving on `socket`, or a
/// containerd v2 shim wherever its `start` says.
pub async fn spawn(a: &ShimArgs, socket: &Path, bundle: &Path) -> Result<ShimClient> {
    if let Some(v2) = &a.v2 {
        let started = async {
            let (socket, v3) = v2.start(a, bundle).await?;
            let mut client = connect_with(&socket, 0, None, a.dialect(), v3).await?;
            let pid = client.task.hello(ctx, a.id.as_str()).await.map_err(shim_err)?.shim_pid;
            // Only a shim started for this container (not one that `start`
            // handed back because another container's shim shares a group
            // annotation or the socket) is ours to drive and later kill.
            let pidfd = pidfd_open(pid).ok();
            if pidfd.is_none() || !a.matches(pid) {
                let msg =
                    format!("{} answered from process {pid}, which is not its shim for {}", a.binary.display(), a.id);
                return Err(Error::Shim { code: berth_model::Code::FailedPrecondition, message: msg });
            }
            Ok(ShimClient { pid, pidfd: watch_pidfd(pidfd), ..client })
        };
        let client = started.await;
        if client.is_err() {
            // Whatever `start` left running for this container (it forks
            // the shim before it answers) must not outlive the create.
            for pid in a.processes() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
            }
            let _ = v2.delete(a, bundle).await;
        }
        return client;
    }
    let log = &bundle.join("shim.log");
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create shim socket dir", e))?;
    }
    let _ = std::fs::remove_file(socket);
    // Not a fork of berthd: none of its descriptors reach the shim, and
    // none are copied and closed on the way (spawn.rs).
    let cmd = a.command();
    let spawned = crate::spawn::spawn_listening(cmd.as_std(), log, socket)
        .map_err(|e| Error::io(format!("spawn {}", a.binary.display()), e))?;
    let pid = spawned.pid;
    reap_when_exited(pid, &spawned.pidfd);
    let pidfd = Some(spawned.pidfd);
    let client = connect_with(socket, pid, pidfd, Dialect::Berth, true).await;
    if client.is_err() {
        let _ = std::fs::remove_file(socket);
    }
    client
}

/// Reaps a shim berthd started, once it has exited: berthd is its parent
/// until berthd dies.
fn reap_when_exited(pid: u32, pidfd: &OwnedFd) {
    let reap = move || nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
    // SAFETY: the AsyncFd owns the copy of the pidfd for its whole life.
    let watched = pidfd.try_clone().and_then(|fd| unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1));
    match watched {
        Ok(exited) => {
            tokio::spawn(async move {
                let _ = exited.readable().await;
                let _ = reap();
            });
        }
        Err(e) => {
            tracing::warn!(pid, "watch shim {pid} for its exit: {e}; a thread waits for it instead");
            tokio::task::spawn_blocking(reap);
        }
    }
}

/// How long a reconnected shim may take to say who it is.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to a running shim's socket. The shim's own answer (Connect)
/// says which process serves it, which is not `pid` if berthd died while a
/// restart replaced the shim; a shim too slow to answer is taken to be
/// `pid`.
pub async fn connect(socket: &Path, id: &ContainerId, pid: u32, dialect: Dialect) -> Result<ShimClient> {
    Ok(connect_probing(socket, id, pid, dialect, false).await?.0)
}

/// [`connect`], and with `probe` also container `id`'s state (and its
/// init's pid) asked in the same round trip: recovery wakes each shim once
/// rather than twice. `None` if the state did not come with the hello.
pub async fn connect_probing(
    socket: &Path,
    id: &ContainerId,
    pid: u32,
    dialect: Dialect,
    probe: bool,
) -> Result<(ShimClient, Option<(State, u32)>)> {
    let v3 = matches!(dialect, Dialect::Berth);
    let mut client = connect_with(socket, pid, None, dialect, v3).await?;
    let prober = client.clone();
    let state = async {
        match probe {
            true => tokio::time::timeout(CONNECT_TIMEOUT, prober.state(id)).await.ok().and_then(Result::ok),
            false => None,
        }
    };
    let hello = client.task.hello(|| context::with_timeout(CONNECT_TIMEOUT.as_nanos() as i64), id.as_str());
    let (asked, state) = tokio::join!(hello, state);
    // A shim too slow to answer is this version's or not: plain logs are
    // the ones every berth-shim writes.
    client.berth_logs = asked.as_ref().is_ok_and(|r| r.version.contains(berth_shim::LOG_ROTATION_FEATURE));
    let serving = asked.map_or(pid, |r| r.shim_pid);
    client.pid = serving;
    client.pidfd = watch_pidfd(pidfd_open(serving).ok());
    Ok((client, state))
}

/// A client of the live berth-shim `pid` serving `socket`, known from
/// outside rather than asked (recovery's common case, see
/// `Manager::recover`): the process is the shim these arguments start and
/// runs this very binary. No connection is made until a call needs one.
pub fn adopt(a: &ShimArgs, socket: &Path, pid: u32) -> Option<ShimClient> {
    // A shim whose socket is gone cannot be reached: the full path marks it.
    if a.v2.is_some() || a.sandbox || !socket.exists() {
        return None;
    }
    // Taken before the checks, so the pidfd names the process checked.
    let pidfd = pidfd_open(pid).ok()?;
    (a.matches(pid) && a.runs_binary(pid)).then(|| ShimClient {
        task: Task::idle(socket, true),
        dialect: Arc::new(Dialect::Berth),
        pid,
        socket: socket.to_path_buf(),
        pidfd: watch_pidfd(Some(pidfd)),
        shared: false,
        berth_logs: true,
    })
}

/// A pidfd on process `pid` if it is a child of `parent`: a container's
/// init under its shim, not a pid reused by another process.
pub fn child_pidfd(pid: u32, parent: u32) -> Option<Arc<AsyncFd<OwnedFd>>> {
    if pid == 0 {
        return None;
    }
    let fd = pidfd_open(pid).ok()?;
    // Checked after the open: the pidfd names the process found here.
    if crate::control::parent_of(pid) != Some(parent) {
        return None;
    }
    watch_pidfd(Some(fd))
}

/// A pidfd made awaitable: readable once its process has exited.
pub fn watch_pidfd(pidfd: Option<OwnedFd>) -> Option<Arc<AsyncFd<OwnedFd>>> {
    // SAFETY: the AsyncFd owns the pidfd for its whole life.
    pidfd.and_then(|fd| unsafe { AsyncFd::register(fd) }.ok()).map(Arc::new)
}

async fn connect_with(
    socket: &Path,
    pid: u32,
    pidfd: Option<OwnedFd>,
    dialect: Dialect,
    v3: bool,
) -> Result<ShimClient> {
    let task =
        Task::open(socket, v3).await.map_err(|e| Error::io(format!("connect to shim at {}", socket.display()), e))?;
    let pidfd = watch_pidfd(pidfd);
    // A berth-shim started now is this berthd's own binary.
    let berth_logs = matches!(dialect, Dialect::Berth);
    Ok(ShimClient {
        task,
        dialect: Arc::new(dialect),
        pid,
        socket: socket.to_path_buf(),
        pidfd,
        shared: false,
        berth_logs,
    })
}

impl ShimClient {
    /// Creates the task, or restores it from a checkpoint (berth-shim).
    pub async fn create(
        &self,
        id: &ContainerId,
        bundle: &Path,
        io: &ProcessIo<'_>,
        restore: Option<&berth_shim::Checkpoint>,
    ) -> Result<u32> {
        let (stdout, stderr) = io.output(&self.dialect);
        let options = match (self.dialect.as_ref(), restore) {
            (Dialect::V2 { options, .. }, None) => options.clone(),
            (Dialect::Berth, None) => None,
            (Dialect::Berth, Some(c)) => Some(checkpoint_any(c)?),
            (Dialect::V2 { .. }, Some(_)) => {
                return Err(Error::FailedPrecondition("containerd shims do not restore berth's checkpoints".into()));
            }
        };
        let checkpoint = restore.map(|c| c.images.to_string_lossy().into_owned()).unwrap_or_default();
        let req = api::CreateTaskRequest {
            id: id.to_string(),
            bundle: bundle.to_string_lossy().into_owned(),
            stdin: io.stdin(),
            stdout,
            stderr,
            terminal: io.terminal,
            options: options.into(),
            checkpoint,
            ..Default::default()
        };
        // A restore takes as long as CRIU does.
        let timeout = if restore.is_some() { Duration::from_secs(120) } else { CALL_TIMEOUT };
        let ctx = context::with_timeout(timeout.as_nanos() as i64);
        Ok(self.task.create(ctx, &req).await.map_err(shim_err)?.pid)
    }

    /// Dumps the running container into `c.images` (SPEC B16).
    pub async fn checkpoint(&self, id: &ContainerId, c: &berth_shim::Checkpoint) -> Result<()> {
        let req = api::CheckpointTaskRequest {
            id: id.to_string(),
            path: c.images.to_string_lossy().into_owned(),
            options: Some(checkpoint_any(c)?).into(),
            ..Default::default()
        };
        self.task
            .checkpoint(context::with_timeout(Duration::from_secs(120).as_nanos() as i64), &req)
            .await
            .map_err(shim_err)?;
        Ok(())
    }

    /// Registers an exec from an OCI process JSON; `start` runs it.
    pub async fn exec(&self, id: &ContainerId, exec_id: &str, io: &ProcessIo<'_>, spec: Vec<u8>) -> Result<()> {
        let mut any = Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".to_string();
        any.value = spec;
        let (stdout, stderr) = io.output(&self.dialect);
        let req = api::ExecProcessRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdin: io.stdin(),
            stdout,
            stderr,
            terminal: io.terminal,
            spec: Some(any).into(),
            ..Default::default()
        };
        self.task.exec(ctx(), &req).await.map_err(shim_err)?;
        Ok(())
    }

    /// Starts init (`exec_id` empty) or an exec. No deadline of its own:
    /// the caller bounds it (berthd's start timeout).
    pub async fn start(&self, id: &ContainerId, exec_id: &str) -> Result<u32> {
        let req = api::StartRequest { id: id.to_string(), exec_id: exec_id.to_string(), ..Default::default() };
        Ok(self.task.start(context::with_timeout(0), &req).await.map_err(shim_err)?.pid)
    }

    pub async fn kill(&self, id: &ContainerId, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let req =
            api::KillRequest { id: id.to_string(), exec_id: exec_id.to_string(), signal, all, ..Default::default() };
        self.task.kill(ctx(), &req).await.map_err(shim_err)?;
        Ok(())
    }

    /// Blocks until init (or an exec) exits.
    pub async fn wait(&self, id: &ContainerId, exec_id: &str) -> Result<ExitStatus> {
        let req = api::WaitRequest { id: id.to_string(), exec_id: exec_id.to_string(), ..Default::default() };
        let r = self.task.wait(context::with_timeout(0), &req).await.map_err(shim_err)?;
        Ok(exit_of(r.exit_status, r.exited_at.as_ref()))
    }

    pub async fn delete(&self, id: &ContainerId, exec_id: &str) -> Result<ExitStatus> {
        let req = api::DeleteRequest { id: id.to_string(), exec_id: exec_id.to_string(), ..Default::default() };
        let r = self.task.delete(ctx(), &req).await.map_err(shim_err)?;
        Ok(exit_of(r.exit_status, r.exited_at.as_ref()))
    }

    /// Init's state as the shim sees it, and its pid.
    pub async fn state(&self, id: &ContainerId) -> Result<(State, u32)> {
        use api::Status;
        let req = api::StateRequest { id: id.to_string(), ..Default::default() };
        let r = self.task.state(ctx(), &req).await.map_err(shim_err)?;
        let state = match r.status.enum_value_or_default() {
            Status::CREATED => State::Created,
            Status::RUNNING => State::Running,
            Status::PAUSED | Status::PAUSING => State::Paused,
            Status::STOPPED => State::Stopped,
            Status::UNKNOWN => State::Unknown,
        };
        Ok((state, r.pid))
    }

    pub async fn pause(&self, id: &ContainerId) -> Result<()> {
        let req = api::PauseRequest { id: id.to_string(), ..Default::default() };
        self.task.pause(ctx(), &req).await.map_err(shim_err)?;
        Ok(())
    }

    pub async fn resume(&self, id: &ContainerId) -> Result<()> {
        let req = api::ResumeRequest { id: id.to_string(), ..Default::default() };
        self.task.resume(ctx(), &req).await.map_err(shim_err)?;
        Ok(())
    }

    pub async fn pids(&self, id: &ContainerId) -> Result<Vec<u32>> {
        let req = api::PidsRequest { id: id.to_string(), ..Default::default() };
        let r = self.task.pids(ctx(), &req).await.map_err(shim_err)?;
        Ok(r.processes.iter().map(|p| p.pid).collect())
    }

    /// Ends the interactive stdin of init (`exec_id` empty) or an exec.
    pub async fn close_stdin(&self, id: &ContainerId, exec_id: &str) -> Result<()> {
        let req =
            api::CloseIORequest { id: id.to_string(), exec_id: exec_id.to_string(), stdin: true, ..Default::default() };
        self.task.close_io(ctx(), &req).await.map_err(shim_err)?;
        Ok(())
    }

    pub async fn resize(&self, id: &ContainerId, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let req = api::ResizePtyRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            width,
            height,
            ..Default::default()
        };
        self.task.resize_pty(ctx(), &req).await.map_err(shim_err)?;
        Ok(())
    }

    pub async fn stats(&self, id: &ContainerId) -> Result<berth_cgroups::ContainerStats> {
        let req = api::StatsRequest { id: id.to_string(), ..Default::default() };
        let r = self.task.stats(ctx(), &req).await.map_err(shim_err)?;
        let bad = |m: String| Error::Shim { code: berth_model::Code::Internal, message: m };
        let any = r.stats.as_ref().ok_or_else(|| bad("shim sent no statistics".into()))?;
        berth_shim::metrics::stats_from_any(any).map_err(|e| bad(format!("statistics: {e}")))
    }

    pub async fn update(&self, id: &ContainerId, limits: &berth_cgroups::Limits) -> Result<()> {
        let any = match self.dialect.as_ref() {
            Dialect::V2 { .. } => berth_shim::resources::resources_any(limits).map_err(Error::InvalidArgument)?,
            Dialect::Berth => {
                let mut any = Any::new();
                any.type_url = berth_shim::LIMITS_TYPE_URL.to_string();
                any.value = serde_json::to_vec(limits).map_err(|e| Error::InvalidArgument(e.to_string()))?;
                any
            }
        };
        let req = api::UpdateTaskRequest { id: id.to_string(), resources: Some(any).into(), ..Default::default() };
        self.task.update(ctx(), &req).await.map_err(shim_err)?;
        Ok(())
    }

    /// The task pid the shim reports for `id` (Connect): for a sandbox's
    /// own id, the init of its PID namespace (0: none).
    pub async fn task_pid(&self, id: &ContainerId) -> Result<u32> {
        let req = api::ConnectRequest { id: id.to_string(), ..Default::default() };
        Ok(self.task.connect(ctx(), &req).await.map_err(shim_err)?.task_pid)
    }

    pub async fn shutdown(&self, id: &ContainerId) -> Result<()> {
        let req = api::ShutdownRequest { id: id.to_string(), now: true, ..Default::default() };
        self.task.shutdown(ctx(), &req).await.map_err(shim_err)?;
        Ok(())
    }

    /// Waits (at most 2 s) until a process's output has reached its log
    /// files: berth-shim answers Wait only after that; berth-logger, under
    /// a containerd v2 shim, may still be copying.
    pub async fn drained(&self, stdout: &Path, stderr: &Path) {
        if let Dialect::V2 { .. } = self.dialect.as_ref() {
            let (stdout, stderr) = (stdout.to_path_buf(), stderr.to_path_buf());
            let wait = move || berth_shim::logger::wait_copied(&stdout, &stderr, Duration::from_secs(2));
            let _ = tokio::task::spawn_blocking(wait).await;
        }
    }

    /// Whether this is a containerd v2 shim rather than berth-shim: it must
    /// be told to exit after its last Delete (berth-shim exits by itself),
    /// and a created task it deletes never reports an exit to Wait (the
    /// task is gone from its table before the reaper sees the death), so
    /// such a task is killed first.
    pub fn is_containerd_shim(&self) -> bool {
        matches!(self.dialect.as_ref(), Dialect::V2 { .. })
    }

    /// Whether the shim process has exited (its pidfd is readable).
    pub fn is_gone(&self) -> bool {
        match &self.pidfd {
            Some(fd) => {
                let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: poll on one valid descriptor with no timeout.
                unsafe { libc::poll(&mut p, 1, 0) > 0 }
            }
            None => nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), None).is_err(),
        }
    }

    /// Whether the shim process exits within `within` (a shim whose pid
    /// cannot be watched counts as gone once the pid is).
    pub async fn exited_within(&self, within: Duration) -> bool {
        match &self.pidfd {
            Some(fd) => tokio::time::timeout(within, fd.readable()).await.is_ok(),
            None => self.is_gone(),
        }
    }

    /// Waits, holding no connection to the shim, until the container's
    /// init (`init`, a pidfd from [`child_pidfd`]) or the shim exits; later
    /// calls connect for themselves. Returns at once if the shim cannot be
    /// watched.
    pub async fn idle_until_exit(&self, init: &AsyncFd<OwnedFd>) {
        let Some(shim) = &self.pidfd else { return };
        self.task.release();
        tokio::select! {
            _ = init.readable() => {}
            _ = shim.readable() => {}
        }
    }

    /// Waits until the shim process has exited (for ever if its pid cannot
    /// be watched).
    pub async fn exited(&self) {
        match &self.pidfd {
            Some(fd) => drop(fd.readable().await),
            None => std::future::pending().await,
        }
    }

    /// Waits (bounded) for the shim process to exit; kills it if it lingers.
    pub async fn reap(&self, within: Duration) {
        let Some(fd) = &self.pidfd else { return };
        if tokio::time::timeout(within, fd.readable()).await.is_err() {
            // Signal through the pidfd: never hits a recycled pid.
            // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
            unsafe {
                libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), libc::SIGKILL, 0usize, 0u32);
            }
            let _ = tokio::time::timeout(within, fd.readable()).await;
        }
    }
}
