//! Typed errors of the image crate, each with one code (SPEC B31).

use berth_model::Code;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A blob's content does not hash to the digest that names it (B32).
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    /// A blob is longer or shorter than its descriptor says.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch { digest: String, expected: u64, actual: u64 },
    /// The registry refused the credentials (or asked for some).
    #[error("registry authentication failed: {0}")]
    Unauthorized(String),
    /// The registry could not be reached or answered outside the protocol.
    #[error("registry: {0}")]
    Registry(String),
}

impl ImageError {
    pub fn code(&self) -> Code {
        match self {
            ImageError::InvalidArgument(_) => Code::InvalidArgument,
            ImageError::NotFound(_) => Code::NotFound,
            ImageError::FailedPrecondition(_) => Code::FailedPrecondition,
            ImageError::AlreadyExists(_) => Code::AlreadyExists,
            ImageError::Io { .. } => Code::Internal,
            ImageError::DigestMismatch { .. } | ImageError::SizeMismatch { .. } => Code::FailedPrecondition,
            ImageError::Unauthorized(_) => Code::FailedPrecondition,
            ImageError::Registry(_) => Code::Unavailable,
        }
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> ImageError {
        ImageError::Io { what: what.into(), source }
    }
}
