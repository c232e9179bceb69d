//! berthd's typed errors. Each maps to one [`Code`]; `api.rs` maps codes to
//! gRPC statuses in one place.

use berth_images::ImageError;
use berth_model::{Code, ModelError};
use berth_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Network(#[from] berth_network::Error),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("container {0} not found")]
    NotFound(String),
    #[error("process of container {0} has already finished")]
    Finished(String),
    #[error("container {0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("shim: {message}")]
    Shim { code: Code, message: String },
    #[error("create failed at step {step}: {cause}")]
    CreateStep { step: &'static str, cause: Box<Error> },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("checkpoint {0} not found")]
    CheckpointNotFound(String),
    #[error("checkpoint {0} already exists")]
    CheckpointExists(String),
    #[error("sandbox {0} not found")]
    SandboxNotFound(String),
    #[error("sandbox {0} already exists")]
    SandboxExists(String),
    #[error("volume {0} not found")]
    VolumeNotFound(String),
}

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::Model(e) => e.code(),
            Error::Store(e) => e.code(),
            Error::Image(e) => e.code(),
            Error::Network(e) => e.code(),
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_)
            | Error::Finished(_)
            | Error::VolumeNotFound(_)
            | Error::SandboxNotFound(_)
            | Error::CheckpointNotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) | Error::SandboxExists(_) | Error::CheckpointExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Shim { code, .. } => *code,
            Error::CreateStep { cause, .. } => cause.code(),
            Error::Io { .. } => Code::Internal,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
        }
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { what: what.into(), source }
    }

    pub fn at(self, step: &'static str) -> Error {
        Error::CreateStep { step, cause: Box::new(self) }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
