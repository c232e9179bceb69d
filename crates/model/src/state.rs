//! Container states and the single transition table of SPEC B1. Every state
//! change in berth goes through [`State::apply`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Created,
    Running,
    Paused,
    Stopped,
    Deleted,
    Unknown,
}

/// What is being done to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Start,
    Pause,
    Resume,
    /// Init exited (or was killed before it started).
    Exit,
    Delete,
    /// The shim that owns the container was lost.
    LoseShim,
    /// A restart policy brings a stopped container back (SPEC B21).
    Restart,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Start => "start",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Exit => "record the exit of",
            Op::Delete => "delete",
            Op::LoseShim => "lose the shim of",
            Op::Restart => "restart",
        })
    }
}

impl State {
    /// The transition table. Returns the new state or a typed error naming
    /// the current state.
    pub fn apply(self, op: Op) -> Result<State, ModelError> {
        use Op::*;
        use State::*;
        let next = match (self, op) {
            (Created, Start) => Running,
            (Running, Pause) => Paused,
            (Paused, Resume) => Running,
            (Created | Running | Paused, Exit) => Stopped,
            (Stopped, Delete) => Deleted,
            (Created | Running | Paused, LoseShim) => Unknown,
            (Unknown, Exit) => Stopped,
            (Stopped, Restart) => Created,
            _ => return Err(ModelError::BadTransition { from: self, op }),
        };
        Ok(next)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopped => "stopped",
            State::Deleted => "deleted",
            State::Unknown => "unknown",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        [State::Created, State::Running, State::Paused, State::Stopped, State::Deleted, State::Unknown]
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ModelError::UnknownState(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Op::*;
    use State::*;

    #[test]
    fn allowed_transitions() {
        let ok = [
            (Created, Start, Running),
            (Running, Pause, Paused),
            (Paused, Resume, Running),
            (Running, Exit, Stopped),
            (Paused, Exit, Stopped),
            (Created, Exit, Stopped),
            (Stopped, Delete, Deleted),
            (Created, LoseShim, Unknown),
            (Running, LoseShim, Unknown),
            (Paused, LoseShim, Unknown),
            (Unknown, Exit, Stopped),
            (Stopped, Restart, Created),
        ];
        for (from, op, to) in ok {
            assert_eq!(from.apply(op).unwrap(), to, "{from} --{op}-->");
        }
    }

    #[test]
    fn everything_else_is_refused_with_the_current_state() {
        let states = [Created, Running, Paused, Stopped, Deleted, Unknown];
        let ops = [Start, Pause, Resume, Exit, Delete, LoseShim, Restart];
        let mut refused = 0;
        for from in states {
            for op in ops {
                if let Err(e) = from.apply(op) {
                    refused += 1;
                    assert!(e.to_string().contains(from.as_str()), "{e}");
                    assert_eq!(e.code(), crate::Code::FailedPrecondition);
                }
            }
        }
        // 42 pairs, 12 allowed.
        assert_eq!(refused, 42 - 12);
    }

    #[test]
    fn state_names_round_trip() {
        for st in [Created, Running, Paused, Stopped, Deleted, Unknown] {
            assert_eq!(st.as_str().parse::<State>().unwrap(), st);
        }
    }
}
