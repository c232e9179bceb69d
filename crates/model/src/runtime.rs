//! Names of the OCI runtimes a container can ask for (SPEC B25).

use crate::error::ModelError;

/// Runtime names berth knows; `embedded` needs no external binary.
pub const RUNTIMES: &[&str] = &["embedded", "runc", "crun"];
pub const DEFAULT_RUNTIME: &str = "embedded";

/// Checks a runtime name; empty means the default.
pub fn runtime_name(name: &str) -> Result<&'static str, ModelError> {
    if name.is_empty() {
        return Ok(DEFAULT_RUNTIME);
    }
    RUNTIMES
        .iter()
        .find(|r| **r == name)
        .copied()
        .ok_or_else(|| ModelError::UnknownRuntime(name.chars().take(64).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(runtime_name("").unwrap(), "embedded");
        assert_eq!(runtime_name("runc").unwrap(), "runc");
        assert!(runtime_name("kata").is_err());
    }
}
