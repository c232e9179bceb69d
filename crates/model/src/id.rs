//! Validated identifiers. An id is never a path: `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

pub const DEFAULT_NAMESPACE: &str = "default";
const MAX_LEN: usize = 128;

fn validate(what: &'static str, value: &str) -> Result<(), ModelError> {
    let err = |reason| Err(ModelError::InvalidId { what, value: value.chars().take(64).collect(), reason });
    let mut chars = value.chars();
    match chars.next() {
        None => return err("must not be empty"),
        Some(c) if !c.is_ascii_alphanumeric() => return err("must start with a letter or digit"),
        Some(_) => {}
    }
    if value.len() > MAX_LEN {
        return err("must be at most 128 characters");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return err("may contain only letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

/// An id nobody chose: `bytes` bytes of the kernel's random pool as
/// lowercase hex (a valid id of any kind).
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex::encode(buf))
}

macro_rules! id_type {
    ($name:ident, $what:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Result<Self, ModelError> {
                let value = value.into();
                validate($what, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ModelError;
            fn try_from(value: String) -> Result<Self, ModelError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(ContainerId, "container id");
id_type!(Namespace, "namespace");
id_type!(ExecId, "exec id");
id_type!(VolumeName, "volume name");
id_type!(NetworkName, "network name");
id_type!(SandboxId, "sandbox id");

impl Default for Namespace {
    fn default() -> Self {
        Namespace(DEFAULT_NAMESPACE.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for ok in ["a", "A1", "web-1", "x_y.z", &"a".repeat(128)] {
            assert_eq!(ContainerId::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_paths_and_oversized_ids() {
        for bad in ["", "../x", "/abs", "a/b", ".hidden", "-x", "a b", "é", &"a".repeat(129)] {
            let err = ContainerId::new(bad).unwrap_err();
            assert_eq!(err.code(), crate::Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn serde_validates() {
        let bad: Result<ContainerId, _> = serde_json::from_str("\"../etc\"");
        assert!(bad.is_err());
    }
}
