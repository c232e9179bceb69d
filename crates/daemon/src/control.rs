//! Control of a running container through its shim: pause and resume
//! (SPEC B11), the process list (SPEC B13), and terminals (attach, resize).

use berth_model::{ContainerId, Namespace, Op, State};
use berth_store::ContainerRecord;

use tokio::net::unix::pipe;

use crate::error::{Error, Result};
use crate::events::Kind;
use crate::exec::stdin_fifo;
use crate::manager::Manager;

/// What an attach connects to.
pub enum Attached {
    /// The shim's terminal socket: output and input.
    Terminal(tokio::net::UnixStream),
    /// The process's stdin FIFO: input only.
    Stdin(pipe::Sender),
}

/// One process of a container.
pub struct Process {
    pub pid: u32,
    pub exec_id: String,
    pub command: Vec<String>,
}

/// A process's command line, empty if it is gone.
pub(crate) fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
        })
        .unwrap_or_default()
}

/// The fields of `/proc/<process>/stat` after the command's closing
/// parenthesis: state, parent, … (`proc(5)`'s third field on); empty if
/// the process is gone.
pub(crate) fn stat_fields(process: &str) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{process}/stat")).unwrap_or_default();
    stat.rsplit_once(')').map_or_else(Vec::new, |(_, rest)| rest.split_whitespace().map(String::from).collect())
}

/// The parent of process `pid`, if it exists.
pub(crate) fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(&pid.to_string()).get(1)?.parse().ok()
}

/// Sends `signal` to every process below `pid` (from each thread's
/// `/proc/PID/task/TID/children`), the deepest first.
pub(crate) fn signal_descendants(pid: u32, signal: u32) {
    let mut found: Vec<u32> = Vec::new();
    let mut next = vec![pid];
    while let Some(p) = next.pop() {
        let tasks = std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten();
        for task in tasks {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for c in children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
                if c != pid && !found.contains(&c) && found.len() < 65536 {
                    found.push(c);
                    next.push(c);
                }
            }
        }
    }
    for c in found.into_iter().rev() {
        // SAFETY: kill(2) on a pid read from /proc just now.
        unsafe { libc::kill(c as libc::pid_t, signal as libc::c_int) };
    }
}

impl Manager {
    pub async fn pause(&self, ns: &Namespace, id: &ContainerId) -> Result<ContainerRecord> {
        self.shim_transition(ns, id, Op::Pause, Kind::Pause).await
    }

    pub async fn resume(&self, ns: &Namespace, id: &ContainerId) -> Result<ContainerRecord> {
        self.shim_transition(ns, id, Op::Resume, Kind::Resume).await
    }

    /// Checks the transition, has the shim carry it out, then records it.
    async fn shim_transition(&self, ns: &Namespace, id: &ContainerId, op: Op, kind: Kind) -> Result<ContainerRecord> {
        self.get(ns, id)?.state.apply(op)?;
        let _op = self.lock_op(ns, id).await;
        let entry = self.entry(ns, id)?;
        self.get(ns, id)?.state.apply(op)?;
        match op {
            Op::Pause => entry.shim.pause(id).await?,
            _ => entry.shim.resume(id).await?,
        }
        crate::manager::crash_point(kind.as_str());
        self.change(ns, id, Some(kind), |r| {
            r.state = r.state.apply(op)?;
            Ok(())
        })
    }

    /// Connects to the terminal, or else the interactive stdin, of init
    /// (`exec_id` empty) or an exec.
    pub async fn attach(&self, ns: &Namespace, id: &ContainerId, exec_id: &str) -> Result<Attached> {
        let rec = self.get(ns, id)?;
        if !exec_id.is_empty() {
            self.exec_info(&*self.entry(ns, id)?, exec_id)?;
        }
        let tty = berth_shim::tty_socket(&rec.shim.socket, rec.id.as_str(), exec_id);
        if let Ok(conn) = tokio::net::UnixStream::connect(&tty).await {
            return Ok(Attached::Terminal(conn));
        }
        let fifo = stdin_fifo(&self.cfg.log_dir(ns, id), exec_id);
        if let Some(terminal) = self.containerd_terminal(&rec, exec_id)? {
            let input = pipe::OpenOptions::new().open_sender(fifo).ok();
            return crate::attach::terminal(input, terminal).map(Attached::Terminal);
        }
        match pipe::OpenOptions::new().open_sender(fifo) {
            Ok(sender) => Ok(Attached::Stdin(sender)),
            Err(_) => Err(Error::FailedPrecondition(
                "nothing to attach to: the process has neither a terminal nor interactive stdin, or has ended".into(),
            )),
        }
    }

    pub async fn close_stdin(&self, ns: &Namespace, id: &ContainerId, exec_id: &str) -> Result<()> {
        self.entry(ns, id)?.shim.close_stdin(id, exec_id).await
    }

    pub async fn resize(&self, ns: &Namespace, id: &ContainerId, exec_id: &str, width: u32, height: u32) -> Result<()> {
        if width == 0 || height == 0 || width > u16::MAX as u32 || height > u16::MAX as u32 {
            return Err(Error::InvalidArgument(format!("invalid window size {width}x{height}")));
        }
        self.get(ns, id)?;
        self.entry(ns, id)?.shim.resize(id, exec_id, width, height).await
    }

    pub async fn top(&self, ns: &Namespace, id: &ContainerId) -> Result<Vec<Process>> {
        let rec = self.get(ns, id)?;
        if !matches!(rec.state, State::Created | State::Running | State::Paused) {
            return Err(Error::FailedPrecondition(format!("container {id} is {}: it has no processes", rec.state)));
        }
        let entry = self.entry(ns, id)?;
        let pids = entry.shim.pids(id).await?;
        let execs = self.exec_pids(&entry);
        // A VM's pids are the guest's: the host's /proc knows nothing of them.
        let in_vm = rec.runtime == berth_model::VM_RUNTIME;
        Ok(pids
            .into_iter()
            .map(|pid| {
                let exec_id = execs.iter().find(|(p, _)| *p == pid).map(|(_, e)| e.clone()).unwrap_or_default();
                Process { pid, exec_id, command: if in_vm { Vec::new() } else { cmdline(pid) } }
            })
            .collect())
    }
}
