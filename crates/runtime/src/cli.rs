//! runc-compatible CLI runtimes (runc, crun). Errors come from the runtime's
//! JSON log, so callers see the runtime's own message (SPEC B3).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as ProcStdio};

use crate::{Checkpoint, Runtime, RuntimeError, Stdio};

pub struct CliRuntime {
    binary: &'static str,
    root: PathBuf,
}

impl CliRuntime {
    pub fn new(binary: &'static str, root: &Path) -> Result<Self, RuntimeError> {
        if binary == "crun" {
            check_crun_cgroups()?;
        }
        Ok(CliRuntime { binary, root: root.to_path_buf() })
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.root.join(format!("{id}.log.json"))
    }

    fn command(&self, id: &str) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(self.binary);
        cmd.arg("--root").arg(&self.root).arg("--log").arg(self.log_path(id)).arg("--log-format").arg("json");
        // SAFETY: signal(2) and sigprocmask(2) only, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                crate::default_signals();
                Ok(())
            });
        }
        cmd
    }

    /// `<runtime> <global flags> <op> [--console-socket PATH]`.
    fn with_console(&self, id: &str, op: &str, stdio: &Stdio) -> Command {
        let mut cmd = self.command(id);
        cmd.arg(op);
        if let Some(sock) = &stdio.console_socket {
            cmd.arg("--console-socket").arg(sock);
        }
        cmd
    }

    /// Runs a command whose stdio the container process inherits. runc
    /// reports its own errors through the JSON log, so fd 2 can be the
    /// container's stderr.
    fn run_with_stdio(&self, op: &'static str, id: &str, mut cmd: Command, stdio: Stdio) -> Result<(), RuntimeError> {
        cmd.stdin(stdio.stdin.map(ProcStdio::from).unwrap_or_else(ProcStdio::null));
        cmd.stdout(stdio.stdout.map(ProcStdio::from).unwrap_or_else(ProcStdio::null));
        cmd.stderr(stdio.stderr.map(ProcStdio::from).unwrap_or_else(ProcStdio::null));
        self.run(op, id, cmd, false)
    }

    fn read_pid(&self, pid_file: &Path, op: &'static str) -> Result<u32, RuntimeError> {
        let text = fs::read_to_string(pid_file).map_err(|e| RuntimeError::io("read pid file", e))?;
        text.trim().parse::<u32>().map_err(|e| RuntimeError::Failed {
            runtime: self.binary,
            op,
            message: format!("bad pid file: {e}"),
        })
    }

    /// `<runtime> <op> <id>`.
    fn simple(&self, op: &'static str, id: &str) -> Result<(), RuntimeError> {
        let mut cmd = self.command(id);
        cmd.arg(op).arg(id);
        self.run(op, id, cmd, true)
    }

    /// Runs one runtime command. With `capture`, its stdout/stderr are read
    /// for error messages; without, they stay as the caller set them (for
    /// create, they become the container's stdio).
    fn run(&self, op: &'static str, id: &str, mut cmd: Command, capture: bool) -> Result<(), RuntimeError> {
        let unavailable = |e: std::io::Error| RuntimeError::Unavailable {
            runtime: self.binary,
            reason: format!("cannot run {}: {e}", self.binary),
        };
        let (status, stderr) = if capture {
            let out = cmd.stdin(ProcStdio::null()).stdout(ProcStdio::null()).stderr(ProcStdio::piped());
            let out = out.output().map_err(unavailable)?;
            (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
        } else {
            (cmd.status().map_err(unavailable)?, String::new())
        };
        if status.success() {
            return Ok(());
        }
        let message = last_error(&self.log_path(id))
            .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_string))
            .unwrap_or_else(|| format!("{} {op} exited with {status}", self.binary));
        Err(RuntimeError::Failed { runtime: self.binary, op, message })
    }
}

/// CRIU's directories (the work one made here) and options, as runc takes
/// them.
fn criu_flags(cmd: &mut Command, c: &Checkpoint) -> Result<(), RuntimeError> {
    fs::create_dir_all(&c.work).map_err(|e| RuntimeError::io("create the criu work directory", e))?;
    if let Some(config) = crate::criu::criu_config(c)? {
        cmd.env("CRIU_CONFIG_FILE", config);
    }
    cmd.arg("--image-path").arg(&c.images).arg("--work-path").arg(&c.work);
    for (on, flag) in
        [(c.tcp_established, "--tcp-established"), (c.shell_job, "--shell-job"), (c.ext_unix_sk, "--ext-unix-sk")]
    {
        if on {
            cmd.arg(flag);
        }
    }
    Ok(())
}

/// The message of the last error line of a runc/crun JSON log.
fn last_error(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if v.get("level")?.as_str()? == "error" { v.get("msg")?.as_str().map(str::to_string) } else { None }
    })
}

/// crun 1.8 refuses a hybrid layout whose cgroup2 mount holds controllers.
fn check_crun_cgroups() -> Result<(), RuntimeError> {
    let unified = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
    if let Ok(ctrls) = fs::read_to_string(unified)
        && !ctrls.trim().is_empty()
    {
        return Err(RuntimeError::Unavailable {
            runtime: "crun",
            reason: format!(
                "cgroup hybrid layout with controllers in cgroup2 ({}) is not supported by crun",
                ctrls.trim()
            ),
        });
    }
    Ok(())
}

impl Runtime for CliRuntime {
    fn name(&self) -> &'static str {
        self.binary
    }

    fn create(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<u32, RuntimeError> {
        let pid_file = self.root.join(format!("{id}.pid"));
        let mut cmd = self.with_console(id, "create", &stdio);
        cmd.arg("--bundle").arg(bundle).arg("--pid-file").arg(&pid_file).arg(id);
        let result = self.run_with_stdio("create", id, cmd, stdio).and_then(|()| self.read_pid(&pid_file, "create"));
        let _ = fs::remove_file(&pid_file);
        if result.is_err() {
            let _ = self.delete(id, true);
        }
        result
    }

    fn exec(&self, id: &str, process: &Path, stdio: Stdio) -> Result<u32, RuntimeError> {
        let pid_file = process.with_extension("pid");
        let mut cmd = self.with_console(id, "exec", &stdio);
        cmd.arg("--detach").arg("--pid-file").arg(&pid_file).arg("--process").arg(process).arg(id);
        let result = self.run_with_stdio("exec", id, cmd, stdio).and_then(|()| self.read_pid(&pid_file, "exec"));
        let _ = fs::remove_file(&pid_file);
        result
    }

    fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.simple("start", id)
    }

    fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.simple("pause", id)
    }

    fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.simple("resume", id)
    }

    fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), RuntimeError> {
        let mut cmd = self.command(id);
        cmd.arg("kill");
        if all {
            cmd.arg("--all");
        }
        cmd.arg(id).arg(signal.to_string());
        self.run("kill", id, cmd, true)
    }

    fn checkpoint(&self, id: &str, c: &Checkpoint) -> Result<(), RuntimeError> {
        let mut cmd = self.command(id);
        cmd.arg("--criu").arg(crate::criu_path()).arg("checkpoint");
        criu_flags(&mut cmd, c)?;
        if c.leave_running {
            cmd.arg("--leave-running");
        }
        cmd.arg(id);
        self.run("checkpoint", id, cmd, true)
    }

    fn restore(&self, id: &str, bundle: &Path, stdio: Stdio, c: &Checkpoint) -> Result<u32, RuntimeError> {
        let pid_file = self.root.join(format!("{id}.pid"));
        let mut cmd = self.command(id);
        cmd.arg("--criu").arg(crate::criu_path()).arg("restore").arg("--detach");
        criu_flags(&mut cmd, c)?;
        if let Some(sock) = &stdio.console_socket {
            cmd.arg("--console-socket").arg(sock);
        }
        cmd.arg("--bundle").arg(bundle).arg("--pid-file").arg(&pid_file).arg(id);
        let result = self.run_with_stdio("restore", id, cmd, stdio).and_then(|()| self.read_pid(&pid_file, "restore"));
        let _ = fs::remove_file(&pid_file);
        if result.is_err() {
            let _ = self.delete(id, true);
        }
        result
    }

    fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        if !self.root.join(id).exists() {
            let _ = fs::remove_file(self.log_path(id));
            return Ok(());
        }
        let mut cmd = self.command(id);
        cmd.arg("delete");
        if force {
            cmd.arg("--force");
        }
        cmd.arg(id);
        self.run("delete", id, cmd, true)?;
        let _ = fs::remove_file(self.log_path(id));
        Ok(())
    }
}
