//! Error codes shared by every layer, and the model's own typed errors.

use std::fmt;

use crate::sandbox::{SandboxOp, SandboxState};
use crate::state::{Op, State};

/// The small set of outcomes a caller can act on; every crate's error maps
/// onto exactly one of these, and the API layer maps these onto gRPC codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Code {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    DeadlineExceeded,
    Unavailable,
    Internal,
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Code::InvalidArgument => "invalid argument",
            Code::NotFound => "not found",
            Code::AlreadyExists => "already exists",
            Code::FailedPrecondition => "failed precondition",
            Code::DeadlineExceeded => "deadline exceeded",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        };
        f.write_str(s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidId { what: &'static str, value: String, reason: &'static str },
    #[error("cannot {op} a container that is {from}")]
    BadTransition { from: State, op: Op },
    #[error("cannot {op} a sandbox that is {from}")]
    BadSandboxTransition { from: SandboxState, op: SandboxOp },
    #[error("the sandbox still holds {containers} container(s): remove them first")]
    SandboxNotEmpty { containers: usize },
    #[error("unknown runtime {0:?} (known: embedded, runc, crun, io.containerd.NAME.vN, or a shim's absolute path)")]
    UnknownRuntime(String),
    #[error("unknown state {0:?}")]
    UnknownState(String),
    #[error(
        "unknown event type {0:?} (known: create, start, exit, oom, pause, resume, exec-added, exec-started, restart, delete, checkpoint, restore)"
    )]
    UnknownEventKind(String),
    #[error("invalid restart policy {0:?} (no, always, on-failure[:N] with N > 0, unless-stopped)")]
    BadRestartPolicy(String),
    #[error("invalid port mapping {value:?}: {reason}")]
    InvalidPort { value: String, reason: String },
    #[error("invalid {what} namespace mode {value:?}: use container, pod or host")]
    BadNsShare { what: &'static str, value: String },
    #[error("{0}")]
    BadLogRotation(String),
    #[error("invalid size {0:?} (use bytes or a k/m/g suffix)")]
    BadSize(String),
}

impl ModelError {
    pub fn code(&self) -> Code {
        match self {
            ModelError::InvalidId { .. }
            | ModelError::UnknownState(_)
            | ModelError::UnknownRuntime(_)
            | ModelError::UnknownEventKind(_)
            | ModelError::BadRestartPolicy(_)
            | ModelError::InvalidPort { .. }
            | ModelError::BadNsShare { .. }
            | ModelError::BadLogRotation(_)
            | ModelError::BadSize(_) => Code::InvalidArgument,
            ModelError::BadTransition { .. }
            | ModelError::BadSandboxTransition { .. }
            | ModelError::SandboxNotEmpty { .. } => Code::FailedPrecondition,
        }
    }
}
