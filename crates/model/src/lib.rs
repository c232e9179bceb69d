//! berth's core vocabulary: validated ids, container states and the one
//! transition table (SPEC B1), exit statuses and error codes. No I/O here.

mod error;
mod exit;
mod id;
mod state;

pub use error::{Code, ModelError};
pub use exit::{ExitStatus, UNKNOWN_EXIT_CODE};
pub use id::{ContainerId, ExecId, Namespace, DEFAULT_NAMESPACE};
pub use state::{Op, State};
