//! Event kinds (SPEC B22): the one list of every state change berth reports.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Create,
    Start,
    Exit,
    Oom,
    Pause,
    Resume,
    ExecAdded,
    ExecStarted,
    Restart,
    Delete,
    Checkpoint,
    Restore,
}

impl EventKind {
    pub const ALL: [EventKind; 12] = [
        EventKind::Create,
        EventKind::Start,
        EventKind::Exit,
        EventKind::Oom,
        EventKind::Pause,
        EventKind::Resume,
        EventKind::ExecAdded,
        EventKind::ExecStarted,
        EventKind::Restart,
        EventKind::Delete,
        EventKind::Checkpoint,
        EventKind::Restore,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Create => "create",
            EventKind::Start => "start",
            EventKind::Exit => "exit",
            EventKind::Oom => "oom",
            EventKind::Pause => "pause",
            EventKind::Resume => "resume",
            EventKind::ExecAdded => "exec-added",
            EventKind::ExecStarted => "exec-started",
            EventKind::Restart => "restart",
            EventKind::Delete => "delete",
            EventKind::Checkpoint => "checkpoint",
            EventKind::Restore => "restore",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| ModelError::UnknownEventKind(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        let err = "exited".parse::<EventKind>().unwrap_err();
        assert_eq!(err.code(), crate::Code::InvalidArgument);
    }
}
