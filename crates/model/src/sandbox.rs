//! Sandboxes (SPEC B34): a group of containers sharing namespaces and one
//! shim. Their states and the one transition table every sandbox change
//! goes through, [`SandboxState::apply`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxState {
    /// The record is written, its namespaces and shim are being made: a
    /// berthd that dies now finds the record and releases what it names.
    Creating,
    /// The shim serves; containers may join.
    Ready,
    /// The shim is gone (died, or lost with berthd): its containers were
    /// cleaned up; the next container to join starts a new shim.
    NotReady,
    /// Stopped (CRI StopPodSandbox): its containers were stopped, its shim
    /// and network released; the record stays until it is removed and no
    /// container may join.
    Stopped,
    /// Being removed (recorded before anything is released, so a berthd
    /// that dies half way finishes the removal when it starts); no
    /// container may join.
    Removing,
    /// Removed: the record is gone.
    Removed,
}

/// What is being done to a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxOp {
    /// Its namespaces and shim are up.
    Ready,
    /// A container is placed in it.
    Join,
    /// Its shim was lost.
    LoseShim,
    /// A new shim serves it again.
    StartShim,
    /// Stop it: no container joins from then on; its containers are
    /// stopped, its shim and network released.
    Stop,
    /// Remove it, holding this many containers (only an empty one goes).
    Remove { containers: usize },
    /// Its shim, network and files are released: the record goes.
    Release,
}

impl fmt::Display for SandboxOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SandboxOp::Ready => "make ready",
            SandboxOp::Join => "add a container to",
            SandboxOp::LoseShim => "lose the shim of",
            SandboxOp::StartShim => "start a shim for",
            SandboxOp::Stop => "stop",
            SandboxOp::Remove { .. } => "remove",
            SandboxOp::Release => "release",
        })
    }
}

impl SandboxState {
    /// The transition table. Returns the new state or a typed error naming
    /// the current state (or the containers still in the sandbox).
    pub fn apply(self, op: SandboxOp) -> Result<SandboxState, ModelError> {
        use SandboxOp as O;
        use SandboxState::*;
        let next = match (self, op) {
            (Creating, O::Ready) => Ready,
            (Ready, O::Join) => Ready,
            (Ready, O::LoseShim) => NotReady,
            (NotReady, O::StartShim) => Ready,
            // Stopping again finishes a stop cut short (idempotent, as CRI
            // wants).
            (Ready | NotReady | Stopped, O::Stop) => Stopped,
            (Creating | Ready | NotReady | Stopped, O::Remove { containers: 0 }) => Removing,
            (Creating | Ready | NotReady | Stopped, O::Remove { containers }) => {
                return Err(ModelError::SandboxNotEmpty { containers });
            }
            // A retried removal (no container can have joined meanwhile).
            (Removing, O::Remove { .. }) => Removing,
            // Released when removed, or when its create is rolled back.
            (Creating | Removing, O::Release) => Removed,
            _ => return Err(ModelError::BadSandboxTransition { from: self, op }),
        };
        Ok(next)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Ready => "ready",
            SandboxState::NotReady => "not-ready",
            SandboxState::Stopped => "stopped",
            SandboxState::Removing => "removing",
            SandboxState::Removed => "removed",
        }
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whose namespace of one kind (PID, IPC) a sandbox's containers are in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NsShare {
    /// Each container its own (what records made before sharing existed say).
    #[default]
    Container,
    /// One for the whole sandbox, held while it is ready.
    Pod,
    /// The host's.
    Host,
}

impl NsShare {
    /// `container`, `pod` or `host`; empty gives `default`.
    pub fn parse(s: &str, what: &'static str, default: NsShare) -> Result<NsShare, ModelError> {
        match s {
            "" => Ok(default),
            "container" => Ok(NsShare::Container),
            "pod" => Ok(NsShare::Pod),
            "host" => Ok(NsShare::Host),
            other => Err(ModelError::BadNsShare { what, value: other.chars().take(64).collect() }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NsShare::Container => "container",
            NsShare::Pod => "pod",
            NsShare::Host => "host",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SandboxOp as O;
    use SandboxState::*;

    #[test]
    fn allowed_transitions() {
        let ok = [
            (Creating, O::Ready, Ready),
            (Ready, O::Join, Ready),
            (Ready, O::LoseShim, NotReady),
            (NotReady, O::StartShim, Ready),
            (Ready, O::Stop, Stopped),
            (NotReady, O::Stop, Stopped),
            (Stopped, O::Stop, Stopped),
            (Stopped, O::Remove { containers: 0 }, Removing),
            (Creating, O::Remove { containers: 0 }, Removing),
            (Ready, O::Remove { containers: 0 }, Removing),
            (NotReady, O::Remove { containers: 0 }, Removing),
            (Removing, O::Remove { containers: 0 }, Removing),
            (Removing, O::Remove { containers: 2 }, Removing),
            (Removing, O::Release, Removed),
            (Creating, O::Release, Removed),
        ];
        for (from, op, to) in ok {
            assert_eq!(from.apply(op).unwrap(), to, "{from} --{op}-->");
        }
    }

    #[test]
    fn everything_else_is_refused_with_the_reason() {
        let states = [Creating, Ready, NotReady, Stopped, Removing, Removed];
        let ops = [
            O::Ready,
            O::Join,
            O::LoseShim,
            O::StartShim,
            O::Stop,
            O::Remove { containers: 0 },
            O::Remove { containers: 2 },
            O::Release,
        ];
        let mut refused = 0;
        for from in states {
            for op in ops {
                if let Err(e) = from.apply(op) {
                    refused += 1;
                    assert_eq!(e.code(), crate::Code::FailedPrecondition);
                    match op {
                        O::Remove { containers: 2 } if from != Removed => {
                            assert!(e.to_string().contains("2 container(s)"), "{e}")
                        }
                        _ => assert!(e.to_string().contains(from.as_str()), "{e}"),
                    }
                }
            }
        }
        // 48 pairs, 15 allowed.
        assert_eq!(refused, 48 - 15);
    }

    #[test]
    fn a_sandbox_joins_only_when_ready() {
        for from in [Creating, NotReady, Stopped, Removing, Removed] {
            let e = from.apply(O::Join).unwrap_err();
            assert_eq!(e.to_string(), format!("cannot add a container to a sandbox that is {from}"));
        }
    }

    #[test]
    fn namespace_modes_parse_with_a_default() {
        assert_eq!(NsShare::parse("", "ipc", NsShare::Pod).unwrap(), NsShare::Pod);
        for m in [NsShare::Container, NsShare::Pod, NsShare::Host] {
            assert_eq!(NsShare::parse(m.as_str(), "pid", NsShare::Container).unwrap(), m);
        }
        assert!(NsShare::parse("shared", "pid", NsShare::Container).is_err());
    }
}
