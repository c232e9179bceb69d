//! Names of the runtimes a container can ask for (SPEC B23, B25): berth's
//! own shim with one of its OCI runtimes, or a containerd v2 shim binary.

use crate::error::ModelError;

/// What berth-shim runs containers with: an OCI runtime (`embedded` needs
/// no external binary), or `vm`, a VM per shim whose guest runs them
/// (SPEC B26).
pub const RUNTIMES: &[&str] = &["embedded", "runc", "crun", VM_RUNTIME];
pub const DEFAULT_RUNTIME: &str = "embedded";
/// berth-shim's own name as a containerd runtime: the embedded runtime.
pub const BERTH_SHIM_RUNTIME: &str = "io.containerd.berth.v1";
/// The VM backend (docs/vm.md), and its name as a containerd runtime.
pub const VM_RUNTIME: &str = "vm";
pub const BERTH_VM_RUNTIME: &str = "io.containerd.berth-vm.v1";

/// Checks an OCI runtime name for berth-shim; empty means the default.
pub fn runtime_name(name: &str) -> Result<&'static str, ModelError> {
    if name.is_empty() || name == BERTH_SHIM_RUNTIME {
        return Ok(DEFAULT_RUNTIME);
    }
    if name == BERTH_VM_RUNTIME {
        return Ok(VM_RUNTIME);
    }
    RUNTIMES
        .iter()
        .find(|r| **r == name)
        .copied()
        .ok_or_else(|| ModelError::UnknownRuntime(name.chars().take(64).collect()))
}

/// What a runtime name stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runtime {
    /// berth-shim running this OCI runtime.
    Builtin(&'static str),
    /// A containerd v2 shim: `name` as given, `binary` the file name to look
    /// up (`io.containerd.runc.v2` → `containerd-shim-runc-v2`) or an
    /// absolute path used as is.
    Shim { name: String, binary: String },
}

impl Runtime {
    /// Resolves `name` the way containerd does (SPEC B23); empty means the
    /// default runtime.
    pub fn parse(name: &str) -> Result<Runtime, ModelError> {
        if let Ok(builtin) = runtime_name(name) {
            return Ok(Runtime::Builtin(builtin));
        }
        let unknown = || ModelError::UnknownRuntime(name.chars().take(64).collect());
        if name.starts_with('/') {
            let clean = name.len() <= 4096
                && !name.contains('\0')
                && !name.ends_with('/')
                && name.split('/').all(|c| c != ".." && c != ".");
            return if clean { Ok(Runtime::Shim { name: name.into(), binary: name.into() }) } else { Err(unknown()) };
        }
        let parts: Vec<&str> = name.split('.').collect();
        let good = |p: &&str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if name.len() > 255 || parts.len() < 2 || !parts.iter().all(good) {
            return Err(unknown());
        }
        let binary = format!("containerd-shim-{}-{}", parts[parts.len() - 2], parts[parts.len() - 1]);
        Ok(Runtime::Shim { name: name.into(), binary })
    }

    /// The name kept in the container's record.
    pub fn name(&self) -> &str {
        match self {
            Runtime::Builtin(n) => n,
            Runtime::Shim { name, .. } => name,
        }
    }

    /// A directory name for the runtime's state (an absolute path is not one).
    pub fn dir_name(&self) -> String {
        match self {
            Runtime::Builtin(n) => n.to_string(),
            Runtime::Shim { name, .. } if !name.starts_with('/') => name.clone(),
            Runtime::Shim { name, .. } => {
                use std::hash::{DefaultHasher, Hash, Hasher};
                let mut h = DefaultHasher::new();
                name.hash(&mut h);
                format!("shim-{:016x}", h.finish())
            }
        }
    }
}

/// The annotation berth's embedded runtime puts on a config.json it has
/// adapted for libcontainer (`berth_runtime`'s embedded.rs), masked-equal
/// seccomp arguments swapped among other things.
pub const ADAPTED_KEY: &str = "io.berth.embedded.adapted";

/// Swaps value and valueTwo of every masked-equal seccomp argument filter
/// of an OCI spec; returns whether there was one. libcontainer 0.7 reads
/// the mask from `valueTwo`, runc from `value`: the swap turns either
/// order into the other.
pub fn swap_masked_eq(spec: &mut serde_json::Value) -> bool {
    let Some(syscalls) = spec.pointer_mut("/linux/seccomp/syscalls").and_then(|s| s.as_array_mut()) else {
        return false;
    };
    let mut changed = false;
    for arg in syscalls.iter_mut().filter_map(|s| s.get_mut("args")?.as_array_mut()).flatten() {
        let Some(a) =
            arg.as_object_mut().filter(|a| a.get("op").and_then(|o| o.as_str()) == Some("SCMP_CMP_MASKED_EQ"))
        else {
            continue;
        };
        let mask = a.get("value").cloned().unwrap_or(serde_json::json!(0));
        let datum = a.get("valueTwo").cloned().unwrap_or(serde_json::json!(0));
        a.insert("value".into(), datum);
        a.insert("valueTwo".into(), mask);
        changed = true;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(runtime_name("").unwrap(), "embedded");
        assert_eq!(runtime_name("runc").unwrap(), "runc");
        assert_eq!(runtime_name(BERTH_SHIM_RUNTIME).unwrap(), "embedded");
        assert_eq!(runtime_name(BERTH_VM_RUNTIME).unwrap(), "vm");
        assert_eq!(Runtime::parse("io.containerd.berth-vm.v1").unwrap(), Runtime::Builtin("vm"));
        assert!(runtime_name("kata").is_err());
    }

    #[test]
    fn containerd_names_resolve_to_shim_binaries() {
        let r = Runtime::parse("io.containerd.runc.v2").unwrap();
        assert_eq!(r, Runtime::Shim { name: "io.containerd.runc.v2".into(), binary: "containerd-shim-runc-v2".into() });
        assert_eq!(r.dir_name(), "io.containerd.runc.v2");
        assert_eq!(Runtime::parse("crun").unwrap(), Runtime::Builtin("crun"));
        assert_eq!(Runtime::parse("io.containerd.berth.v1").unwrap(), Runtime::Builtin("embedded"));
        let abs = Runtime::parse("/opt/shims/containerd-shim-x-v1").unwrap();
        assert!(matches!(&abs, Runtime::Shim { binary, .. } if binary == "/opt/shims/containerd-shim-x-v1"));
        assert!(abs.dir_name().starts_with("shim-") && !abs.dir_name().contains('/'));
        for bad in ["kata", "a./b", "../x.v1", "/opt/../x", "/opt/x/", "io.containerd..v2", "x.v1\0", "a b.v1"] {
            assert!(Runtime::parse(bad).is_err(), "{bad:?}");
        }
    }
}
