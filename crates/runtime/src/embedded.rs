//! The embedded runtime: youki's libcontainer, in the calling process.

use std::path::{Path, PathBuf};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;

use crate::{Runtime, RuntimeError, Stdio};

pub struct Embedded {
    root: PathBuf,
}

impl Embedded {
    pub fn new(root: &Path) -> Self {
        Embedded { root: root.to_path_buf() }
    }

    fn load(&self, id: &str, op: &'static str) -> Result<Option<Container>, RuntimeError> {
        let dir = self.root.join(id);
        if !dir.exists() {
            return Ok(None);
        }
        Container::load(dir).map(Some).map_err(|e| failed(op, e))
    }

    fn builder(&self, id: &str, stdio: Stdio) -> Result<ContainerBuilder, RuntimeError> {
        let mut builder = ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(&self.root)
            .map_err(|e| failed("create", e))?;
        if let Some(fd) = stdio.stdin {
            builder = builder.with_stdin(fd);
        }
        if let Some(fd) = stdio.stdout {
            builder = builder.with_stdout(fd);
        }
        if let Some(fd) = stdio.stderr {
            builder = builder.with_stderr(fd);
        }
        Ok(builder.with_console_socket(stdio.console_socket))
    }

    fn existing(&self, id: &str, op: &'static str) -> Result<Container, RuntimeError> {
        self.load(id, op)?.ok_or_else(|| RuntimeError::Failed {
            runtime: "embedded",
            op,
            message: format!("container {id} does not exist"),
        })
    }
}

/// Flattens libcontainer's error chain into one line.
fn failed(op: &'static str, err: impl std::error::Error) -> RuntimeError {
    let mut message = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        src = s.source();
    }
    RuntimeError::Failed { runtime: "embedded", op, message }
}

impl Runtime for Embedded {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn create(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<u32, RuntimeError> {
        let result = self
            .builder(id, stdio)?
            .validate_id()
            .and_then(|b| b.as_init(bundle).with_systemd(false).with_detach(true).build());
        match result {
            Ok(container) => container.pid().map(|p| p.as_raw() as u32).ok_or_else(|| RuntimeError::Failed {
                runtime: "embedded",
                op: "create",
                message: "container has no init pid".into(),
            }),
            Err(e) => {
                let err = failed("create", e);
                // libcontainer may leave its state directory behind.
                let _ = self.delete(id, true);
                Err(err)
            }
        }
    }

    fn exec(&self, id: &str, process: &Path, stdio: Stdio) -> Result<u32, RuntimeError> {
        let pid = self
            .builder(id, stdio)?
            .as_tenant()
            .with_process(Some(process))
            .with_detach(true)
            .build()
            .map_err(|e| failed("exec", e))?;
        Ok(pid.as_raw() as u32)
    }

    fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.existing(id, "start")?.start().map_err(|e| failed("start", e))
    }

    fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), RuntimeError> {
        let mut c = self.existing(id, "kill")?;
        let sig = Signal::try_from(signal).map_err(|e| failed("kill", e))?;
        c.kill(sig, all).map_err(|e| failed("kill", e))
    }

    fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.existing(id, "pause")?.pause().map_err(|e| failed("pause", e))
    }

    fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.existing(id, "resume")?.resume().map_err(|e| failed("resume", e))
    }

    fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        match self.load(id, "delete") {
            Ok(Some(mut c)) => c.delete(force).map_err(|e| failed("delete", e)),
            Ok(None) => Ok(()),
            // A state directory without a readable state file: creation died
            // half way. Nothing runs from it; remove it.
            Err(_) => {
                std::fs::remove_dir_all(self.root.join(id)).map_err(|e| RuntimeError::io("remove runtime state", e))
            }
        }
    }
}
