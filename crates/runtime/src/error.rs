//! Runtime errors. A failure carries the runtime's own message (SPEC B3).

use berth_model::Code;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    UnknownRuntime(String),
    #[error("runtime {runtime} is not usable on this host: {reason}")]
    Unavailable { runtime: &'static str, reason: String },
    #[error("{runtime} {op} failed: {message}")]
    Failed { runtime: &'static str, op: &'static str, message: String },
    /// An error reported by a runtime running in a forked helper.
    #[error("{message}")]
    Isolated { code: Code, message: String },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub fn io(what: &'static str, source: std::io::Error) -> Self {
        RuntimeError::Io { what, source }
    }

    pub fn code(&self) -> Code {
        match self {
            RuntimeError::UnknownRuntime(_) => Code::InvalidArgument,
            RuntimeError::Unavailable { .. } => Code::FailedPrecondition,
            RuntimeError::Isolated { code, .. } => *code,
            RuntimeError::Failed { .. } | RuntimeError::Io { .. } => Code::Internal,
        }
    }
}
