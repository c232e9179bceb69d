//! berth's core vocabulary: validated ids, container states and the one
//! transition table (SPEC B1), exit statuses and error codes. No I/O here.

mod error;
mod event;
mod exit;
mod id;
mod logs;
pub mod mountinfo;
mod network;
mod restart;
mod runtime;
mod sandbox;
mod signal;
mod state;
pub mod vm;

pub use error::{Code, ModelError};
pub use event::EventKind;
pub use exit::{ExitStatus, UNKNOWN_EXIT_CODE, now_ns};
pub use id::{ContainerId, DEFAULT_NAMESPACE, ExecId, Namespace, NetworkName, SandboxId, VolumeName, random_hex};
pub use logs::{LogRotation, parse_size};
pub use network::{DEFAULT_NETWORK, NetworkAttachment, NetworkMode, PortMapping, Protocol};
pub use restart::{BACKOFF_RESET, RestartPolicy, backoff};
pub use runtime::{
    ADAPTED_KEY, BERTH_SHIM_RUNTIME, BERTH_VM_RUNTIME, DEFAULT_RUNTIME, RUNTIMES, Runtime, VM_RUNTIME, runtime_name,
    swap_masked_eq,
};
pub use sandbox::{NsShare, SandboxOp, SandboxState};
pub use signal::signal_number;
pub use state::{Op, State};
