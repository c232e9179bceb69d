//! Turns a create request into an OCI spec: either the bundle's own
//! config.json, or a default spec generated for a plain root filesystem
//! (own namespaces incl. network, /proc, /dev, /sys, Docker's default
//! capabilities). Validation happens here, before anything is created.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, LinuxCapabilities, Process, Root, Spec};

use crate::error::{Error, Result};

/// Limits on request fields (SPEC B31: oversized fields are refused).
const MAX_ARGS: usize = 1024;
const MAX_ARG_LEN: usize = 128 * 1024;
const MAX_ENV: usize = 1024;

pub struct Prepared {
    pub spec: Spec,
    pub rootfs: PathBuf,
    pub command: Vec<String>,
}

pub struct Overrides<'a> {
    pub args: &'a [String],
    pub env: &'a [String],
    pub cwd: &'a str,
    /// Give init a terminal, of this size (columns, rows) if known.
    pub tty: bool,
    pub tty_size: Option<(u32, u32)>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// Loads or generates the spec for `path` and applies the overrides.
pub fn prepare(path: &str, hostname: &str, cgroup: &str, o: &Overrides<'_>) -> Result<Prepared> {
    if path.is_empty() {
        return Err(invalid("a root filesystem or bundle directory is required"));
    }
    let dir = Path::new(path);
    if !dir.is_absolute() {
        return Err(invalid(format!("path {path:?} must be absolute")));
    }
    let dir = dir.canonicalize().map_err(|e| invalid(format!("root filesystem {path:?} is not usable: {e}")))?;
    if !dir.is_dir() {
        return Err(invalid(format!("root filesystem {path:?} is not a directory")));
    }
    let config = dir.join("config.json");
    let (mut spec, rootfs) = if config.exists() {
        let spec = Spec::load(&config).map_err(|e| invalid(format!("bad spec {}: {e}", config.display())))?;
        let root = spec.root().as_ref().ok_or_else(|| invalid("spec has no root"))?.path().clone();
        let rootfs = if root.is_absolute() { root } else { dir.join(root) };
        (spec, rootfs)
    } else {
        (default_spec(hostname), dir.clone())
    };
    if !rootfs.is_dir() {
        return Err(invalid(format!("root filesystem {} does not exist", rootfs.display())));
    }
    let mut root = Root::default();
    root.set_path(rootfs.clone());
    root.set_readonly(spec.root().as_ref().and_then(|r| r.readonly()));
    spec.set_root(Some(root));
    apply_overrides(spec.process_mut().get_or_insert_with(Default::default), o)?;
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    linux.set_cgroups_path(Some(PathBuf::from(cgroup)));
    let command = spec.process().as_ref().and_then(|p| p.args().clone()).unwrap_or_default();
    if command.is_empty() {
        return Err(invalid("spec has no process args"));
    }
    Ok(Prepared { spec, rootfs, command })
}

/// Applies a request's args, env (merged by key), cwd and terminal to a
/// process: init's at create, or an exec's copy of init's.
pub fn apply_overrides(process: &mut Process, o: &Overrides<'_>) -> Result<()> {
    if o.args.len() > MAX_ARGS || o.args.iter().any(|a| a.len() > MAX_ARG_LEN) {
        return Err(invalid(format!("too many or too long args (max {MAX_ARGS} of {MAX_ARG_LEN} bytes)")));
    }
    if o.env.len() > MAX_ENV || o.env.iter().any(|a| a.len() > MAX_ARG_LEN) {
        return Err(invalid(format!("too many or too long env entries (max {MAX_ENV})")));
    }
    process.set_terminal(Some(o.tty));
    if let (true, Some((width, height))) = (o.tty, o.tty_size) {
        let size = oci_spec::runtime::BoxBuilder::default()
            .width(width as u64)
            .height(height as u64)
            .build()
            .map_err(|e| invalid(format!("terminal size: {e}")))?;
        process.set_console_size(Some(size));
    }
    if !o.args.is_empty() {
        process.set_args(Some(o.args.to_vec()));
    }
    if !o.env.is_empty() {
        let mut env = process.env().clone().unwrap_or_default();
        for kv in o.env {
            let Some((k, _)) = kv.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                return Err(invalid(format!("env entry {kv:?} is not KEY=VALUE")));
            };
            env.retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k));
            env.push(kv.clone());
        }
        process.set_env(Some(env));
    }
    if !o.cwd.is_empty() {
        if !o.cwd.starts_with('/') {
            return Err(invalid(format!("working directory {:?} must be absolute", o.cwd)));
        }
        process.set_cwd(PathBuf::from(o.cwd));
    }
    Ok(())
}

/// Docker's default capability set: enough for ordinary programs, nothing
/// that reaches outside the container.
const DEFAULT_CAPS: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The kernel's limit on host names (HOST_NAME_MAX).
const MAX_HOSTNAME: usize = 64;

fn default_spec(hostname: &str) -> Spec {
    let mut spec = Spec::default();
    // Ids may be longer than a host name can be; ids are ASCII, so this
    // cut is on a character boundary.
    spec.set_hostname(Some(hostname[..hostname.len().min(MAX_HOSTNAME)].to_string()));
    let caps: HashSet<Capability> = DEFAULT_CAPS.iter().copied().collect();
    let mut lc = LinuxCapabilities::default();
    lc.set_bounding(Some(caps.clone()));
    lc.set_effective(Some(caps.clone()));
    lc.set_permitted(Some(caps));
    lc.set_inheritable(None);
    lc.set_ambient(None);
    if let Some(p) = spec.process_mut() {
        p.set_capabilities(Some(lc));
        p.set_args(Some(vec!["/bin/sh".to_string()]));
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Overrides<'static> {
        Overrides { args: &[], env: &[], cwd: "", tty: false, tty_size: None }
    }

    #[test]
    fn default_spec_for_plain_rootfs() {
        let dir = std::env::temp_dir();
        let env = vec!["A=1".to_string(), "PATH=/x".to_string()];
        let args = vec!["echo".to_string(), "hi".to_string()];
        let o = Overrides { args: &args, env: &env, cwd: "/tmp", tty: false, tty_size: None };
        let p = prepare(dir.to_str().unwrap(), "web", "/berth/default/web", &o).unwrap();
        assert_eq!(p.command, args);
        let process = p.spec.process().as_ref().unwrap();
        let e = process.env().as_ref().unwrap();
        assert!(e.contains(&"A=1".to_string()) && e.contains(&"PATH=/x".to_string()));
        assert_eq!(e.iter().filter(|v| v.starts_with("PATH=")).count(), 1);
        assert_eq!(process.cwd(), Path::new("/tmp"));
        let linux = p.spec.linux().as_ref().unwrap();
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/berth/default/web")));
        assert_eq!(p.spec.hostname().as_deref(), Some("web"));
    }

    #[test]
    fn bad_inputs_are_invalid_arguments() {
        let cases = [
            ("", none()),
            ("relative/dir", none()),
            ("/no/such/dir/at/all", none()),
            ("/tmp", Overrides { args: &[], env: &["NOEQUALS".to_string()], cwd: "", tty: false, tty_size: None }),
            ("/tmp", Overrides { args: &[], env: &[], cwd: "relative", tty: false, tty_size: None }),
        ];
        for (path, o) in cases {
            let err = prepare(path, "x", "/c", &o).err().expect(path);
            assert_eq!(err.code(), berth_model::Code::InvalidArgument, "{path}: {err}");
        }
    }

    #[test]
    fn bad_bundle_spec_is_refused() {
        let dir = std::env::temp_dir().join(format!("berth-spec-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), b"{not json").unwrap();
        let err = prepare(dir.to_str().unwrap(), "x", "/c", &none()).err().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.to_string().contains("bad spec"), "{err}");
    }
}
