//! The network crate's typed errors, each mapped onto one model code.

use std::path::PathBuf;

use berth_model::Code;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("network {0} not found")]
    NotFound(String),
    #[error("network {0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A plugin named by a config list is in none of the plugin directories.
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    PluginNotFound { plugin: String, dirs: String },
    /// A plugin ran and reported an error (CNI error JSON or exit status).
    #[error("CNI plugin {plugin} {command} failed: {message}")]
    PluginFailed { plugin: String, command: &'static str, message: String },
    #[error("CNI plugin {plugin} {command} did not finish within {secs} s")]
    PluginTimeout { plugin: String, command: &'static str, secs: u64 },
    /// A config list that does not parse or misses required fields.
    #[error("network config {}: {reason}", path.display())]
    BadConfig { path: PathBuf, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { what: what.into(), source }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) | Error::BadConfig { .. } => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) | Error::PluginNotFound { .. } => Code::FailedPrecondition,
            Error::PluginTimeout { .. } => Code::DeadlineExceeded,
            Error::PluginFailed { .. } | Error::Io { .. } => Code::Internal,
        }
    }
}
