//! Turns a create request into an OCI spec: either the bundle's own
//! config.json, or a default spec generated for a plain root filesystem
//! (own namespaces incl. network, /proc, /dev, /sys, and the confinement
//! of `confine.rs`). Validation happens here, before anything is created.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Process, Root, Spec};

use crate::confine::{self, Security};
use crate::error::{Error, Result};

/// Limits on request fields (SPEC B31: oversized fields are refused).
const MAX_ARGS: usize = 1024;
const MAX_ARG_LEN: usize = 128 * 1024;
const MAX_ENV: usize = 1024;
/// Args and env together: the kernel's own limit for execve is about this.
const MAX_PROCESS_BYTES: usize = 1024 * 1024;
/// A bundle's config.json larger than this is refused.
const MAX_SPEC_BYTES: u64 = 4 * 1024 * 1024;
/// The largest uid/gid runc accepts (2^31 - 1); larger ones wrap to root.
pub const MAX_ID: u32 = i32::MAX as u32;
/// Host directories that must never be a container's root filesystem: the
/// runtime would create mount points (proc, dev, sys) in them. These exact
/// directories …
const SYSTEM_DIRS: &[&str] = &[
    "/",
    "/home",
    "/media",
    "/mnt",
    "/opt",
    "/root",
    "/run",
    "/srv",
    "/tmp",
    "/usr",
    "/usr/local",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/run",
    "/var/tmp",
];
/// … and these with everything below them.
const SYSTEM_TREES: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/sbin",
    "/sys",
    "/usr/bin",
    "/usr/include",
    "/usr/lib",
    "/usr/lib32",
    "/usr/lib64",
    "/usr/libexec",
    "/usr/local/bin",
    "/usr/local/lib",
    "/usr/local/sbin",
    "/usr/sbin",
    "/usr/share",
];

/// A directory that may be a container's root filesystem: it exists and
/// is none of the host's system directories. Returns it canonical.
pub(crate) fn check_rootfs(rootfs: &Path) -> Result<PathBuf> {
    let rootfs = rootfs
        .canonicalize()
        .ok()
        .filter(|r| r.is_dir())
        .ok_or_else(|| invalid(format!("root filesystem {} does not exist", rootfs.display())))?;
    if SYSTEM_DIRS.iter().any(|d| rootfs == Path::new(d)) || SYSTEM_TREES.iter().any(|d| rootfs.starts_with(d)) {
        return Err(invalid(format!(
            "root filesystem {} is a system directory of the host; give a container its own directory",
            rootfs.display()
        )));
    }
    Ok(rootfs)
}

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

/// The spec's namespace of type `typ`: a new one (`Some("")`), the one at a
/// path, or the host's (`None`).
pub(crate) fn set_namespace(spec: &mut Spec, typ: LinuxNamespaceType, ns: Option<&Path>) -> Result<()> {
    let linux = spec.linux_mut().as_mut().ok_or_else(|| invalid("spec has no linux section"))?;
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    namespaces.retain(|n| n.typ() != typ);
    if let Some(path) = ns {
        let mut n = oci_spec::runtime::LinuxNamespace::default();
        n.set_typ(typ);
        n.set_path((!path.as_os_str().is_empty()).then(|| path.to_path_buf()));
        namespaces.push(n);
    }
    linux.set_namespaces(Some(namespaces));
    Ok(())
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// Refuses a string that cannot reach a process: the kernel cuts C strings
/// at the first NUL.
pub fn no_nul(what: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(invalid(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

/// Reads a bundle's config.json: a regular file of bounded size (a FIFO or
/// a device would block or never end), parsed with the field and line of
/// any error.
fn load_spec(path: &Path) -> Result<Spec> {
    let bad = |why: String| invalid(format!("bad spec {}: {why}", path.display()));
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| bad(e.to_string()))?;
    let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() > MAX_SPEC_BYTES {
        return Err(bad(format!("larger than {MAX_SPEC_BYTES} bytes")));
    }
    let mut text = Vec::new();
    file.take(MAX_SPEC_BYTES + 1).read_to_end(&mut text).map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))
}

/// Checks what the runtime would get wrong or wrap: NUL bytes in any
/// string of the process, uids/gids beyond runc's range, and args plus env
/// beyond what a record (and execve) can carry.
pub fn check_process(process: &Process) -> Result<()> {
    let strings = process.args().iter().flatten().chain(process.env().iter().flatten());
    if strings.map(String::len).sum::<usize>() > MAX_PROCESS_BYTES {
        return Err(invalid(format!("args and env together exceed {MAX_PROCESS_BYTES} bytes")));
    }
    for a in process.args().iter().flatten() {
        no_nul("an argument", a)?;
    }
    for e in process.env().iter().flatten() {
        no_nul("an environment entry", e)?;
    }
    no_nul("the working directory", &process.cwd().to_string_lossy())?;
    let user = process.user();
    let ids = std::iter::once(user.uid()).chain(std::iter::once(user.gid()));
    if let Some(bad) = ids.chain(user.additional_gids().iter().flatten().copied()).find(|&i| i > MAX_ID) {
        return Err(invalid(format!("user or group id {bad} is out of range (0..={MAX_ID})")));
    }
    Ok(())
}

/// Whether `dir` is an OCI bundle (holds a config.json, even a broken
/// link: that is a bad bundle, not a root filesystem).
pub fn is_bundle(dir: &Path) -> bool {
    dir.join("config.json").symlink_metadata().is_ok()
}

/// Loads or generates the spec for `path` and applies the overrides (and,
/// for a generated spec, the confinement).
pub fn prepare(path: &str, hostname: &str, cgroup: &str, o: &Overrides<'_>, security: &Security) -> Result<Prepared> {
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
    let (mut spec, rootfs) = if is_bundle(&dir) {
        if !security.is_default() {
            return Err(invalid(
                "security options apply to a root filesystem; a bundle's config.json is used as written",
            ));
        }
        let spec = load_spec(&config)?;
        let root = spec.root().as_ref().ok_or_else(|| invalid("spec has no root"))?.path().clone();
        let rootfs = if root.is_absolute() { root } else { dir.join(root) };
        (spec, rootfs)
    } else {
        let mut spec = default_spec(hostname);
        confine::apply(&mut spec, security)?;
        (spec, dir.clone())
    };
    let rootfs = check_rootfs(&rootfs)?;
    let mut root = Root::default();
    root.set_path(rootfs.clone());
    root.set_readonly(spec.root().as_ref().and_then(|r| r.readonly()));
    spec.set_root(Some(root));
    let process = spec.process_mut().get_or_insert_with(Default::default);
    apply_overrides(process, o)?;
    check_process(process)?;
    if let Some(h) = spec.hostname() {
        no_nul("the host name", h)?;
    }
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    linux.set_cgroups_path(Some(PathBuf::from(cgroup)));
    let command = spec.process().as_ref().and_then(|p| p.args().clone()).unwrap_or_default();
    if command.is_empty() {
        return Err(invalid("spec has no process args"));
    }
    Ok(Prepared { spec, rootfs, command })
}

/// What a container created from an image takes from the image's config
/// (`berth_images::RunConfig`), in spec terms.
pub struct ImageDefaults<'a> {
    pub entrypoint: &'a [String],
    pub cmd: &'a [String],
    pub env: &'a [String],
    pub working_dir: &'a str,
    /// Numeric `uid[:gid]` (names resolved by `berth_images::resolve_user`).
    pub user: &'a str,
    /// The user's supplementary groups (`process.user.additionalGids`).
    pub additional_gids: &'a [u32],
}

/// Parses an image's `User`: numeric `uid[:gid]` (gid defaults to 0);
/// empty is root. Names need the image's /etc/passwd (not yet).
fn numeric_user(user: &str) -> Result<(u32, u32)> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = user.split_once(':').unwrap_or((user, "0"));
    match (u.parse::<u32>(), g.parse::<u32>()) {
        (Ok(uid), Ok(gid)) if uid <= MAX_ID && gid <= MAX_ID => Ok((uid, gid)),
        _ => Err(invalid(format!("image user {user:?}: only numeric uid[:gid] is supported for now"))),
    }
}

/// The spec of a container created from an image: the default spec with
/// its confinement, the rootfs at `rootfs` (the snapshot's mount point,
/// made later by create), and the image's entrypoint + cmd (request args
/// replace cmd), env (request env merged over it), working directory and
/// user; then the request's overrides.
pub fn prepare_image(
    rootfs: &Path,
    hostname: &str,
    cgroup: &str,
    image: &ImageDefaults<'_>,
    o: &Overrides<'_>,
    security: &Security,
) -> Result<Prepared> {
    let mut spec = default_spec(hostname);
    confine::apply(&mut spec, security)?;
    let mut root = Root::default();
    root.set_path(rootfs.to_path_buf());
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    let process = spec.process_mut().get_or_insert_with(Default::default);
    let cmd = if o.args.is_empty() { image.cmd } else { o.args };
    let args: Vec<String> = image.entrypoint.iter().chain(cmd).cloned().collect();
    if args.is_empty() {
        return Err(invalid("the image has no entrypoint or cmd: give a command"));
    }
    process.set_args(Some(args));
    let mut env = process.env().clone().unwrap_or_default();
    for kv in image.env {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        env.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(key));
        env.push(kv.clone());
    }
    process.set_env(Some(env));
    if !image.working_dir.is_empty() {
        if !image.working_dir.starts_with('/') {
            return Err(invalid(format!("image working directory {:?} must be absolute", image.working_dir)));
        }
        process.set_cwd(PathBuf::from(image.working_dir));
    }
    let (uid, gid) = numeric_user(image.user)?;
    let mut user = process.user().clone();
    user.set_uid(uid);
    user.set_gid(gid);
    user.set_additional_gids((!image.additional_gids.is_empty()).then(|| image.additional_gids.to_vec()));
    process.set_user(user);
    apply_overrides(process, &Overrides { args: &[], ..*o })?;
    check_process(process)?;
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    linux.set_cgroups_path(Some(PathBuf::from(cgroup)));
    let command = spec.process().as_ref().and_then(|p| p.args().clone()).unwrap_or_default();
    Ok(Prepared { spec, rootfs: rootfs.to_path_buf(), command })
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

/// The kernel's limit on host names (HOST_NAME_MAX).
pub(crate) const MAX_HOSTNAME: usize = 64;

fn default_spec(hostname: &str) -> Spec {
    let mut spec = Spec::default();
    // Ids may be longer than a host name can be; ids are ASCII, so this
    // cut is on a character boundary.
    spec.set_hostname(Some(hostname[..hostname.len().min(MAX_HOSTNAME)].to_string()));
    if let Some(p) = spec.process_mut() {
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

    /// A scratch directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("berth-spec-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn prep(path: &str, o: &Overrides<'_>) -> Result<Prepared> {
        prepare(path, "x", "/c", o, &Security::default())
    }

    #[test]
    fn default_spec_for_plain_rootfs() {
        let dir = Scratch::new("plain");
        let env = vec!["A=1".to_string(), "PATH=/x".to_string()];
        let args = vec!["echo".to_string(), "hi".to_string()];
        let o = Overrides { args: &args, env: &env, cwd: "/tmp", tty: false, tty_size: None };
        let p = prepare(dir.path(), "web", "/berth/default/web", &o, &Security::default()).unwrap();
        assert_eq!(p.command, args);
        let process = p.spec.process().as_ref().unwrap();
        let e = process.env().as_ref().unwrap();
        assert!(e.contains(&"A=1".to_string()) && e.contains(&"PATH=/x".to_string()));
        assert_eq!(e.iter().filter(|v| v.starts_with("PATH=")).count(), 1);
        assert_eq!(process.cwd(), Path::new("/tmp"));
        let linux = p.spec.linux().as_ref().unwrap();
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/berth/default/web")));
        assert_eq!(p.spec.hostname().as_deref(), Some("web"));
        assert!(linux.seccomp().is_some(), "generated specs are confined");
    }

    #[test]
    fn bad_inputs_are_invalid_arguments() {
        let dir = Scratch::new("bad");
        let d = dir.path();
        let nul_arg = ["true".to_string(), "a\0b".to_string()];
        let nul_env = ["A=\0".to_string()];
        let big = vec!["x".repeat(100 * 1024); 11];
        let cases = [
            ("", none()),
            ("relative/dir", none()),
            ("/no/such/dir/at/all", none()),
            ("/etc", none()),
            ("/", none()),
            ("/usr/share/doc", none()),
            ("/mnt", none()),
            (d, Overrides { args: &[], env: &["NOEQUALS".to_string()], cwd: "", tty: false, tty_size: None }),
            (d, Overrides { args: &[], env: &[], cwd: "relative", tty: false, tty_size: None }),
            (d, Overrides { args: &nul_arg, env: &[], cwd: "", tty: false, tty_size: None }),
            (d, Overrides { args: &[], env: &nul_env, cwd: "", tty: false, tty_size: None }),
            (d, Overrides { args: &[], env: &[], cwd: "/a\0", tty: false, tty_size: None }),
            (d, Overrides { args: &big, env: &[], cwd: "", tty: false, tty_size: None }),
        ];
        for (path, o) in cases {
            let err = prep(path, &o).err().expect(path);
            assert_eq!(err.code(), berth_model::Code::InvalidArgument, "{path}: {err}");
        }
    }

    #[test]
    fn image_defaults_apply_under_the_request() {
        let image = ImageDefaults {
            entrypoint: &["/bin/ep".to_string()],
            cmd: &["default".to_string()],
            env: &["PATH=/img/bin".to_string(), "A=image".to_string()],
            working_dir: "/work",
            user: "1000:100",
            additional_gids: &[50, 63],
        };
        let p = prepare_image(Path::new("/b/rootfs"), "h", "/c", &image, &none(), &Security::default()).unwrap();
        assert_eq!(p.command, ["/bin/ep", "default"]);
        let process = p.spec.process().as_ref().unwrap();
        let env = process.env().clone().unwrap();
        assert!(env.contains(&"PATH=/img/bin".to_string()) && env.contains(&"A=image".to_string()), "{env:?}");
        assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
        assert_eq!(process.cwd(), Path::new("/work"));
        assert_eq!((process.user().uid(), process.user().gid()), (1000, 100));
        assert_eq!(process.user().additional_gids().as_deref(), Some(&[50, 63][..]));
        assert_eq!(p.spec.root().as_ref().unwrap().path(), Path::new("/b/rootfs"));
        // The request's args replace cmd (not the entrypoint); env and cwd override.
        let args = ["x".to_string()];
        let env = ["A=request".to_string()];
        let o = Overrides { args: &args, env: &env, cwd: "/tmp", tty: false, tty_size: None };
        let p = prepare_image(Path::new("/r"), "h", "/c", &image, &o, &Security::default()).unwrap();
        assert_eq!(p.command, ["/bin/ep", "x"]);
        let process = p.spec.process().as_ref().unwrap();
        let env = process.env().clone().unwrap();
        assert!(env.contains(&"A=request".to_string()) && !env.contains(&"A=image".to_string()), "{env:?}");
        assert_eq!(process.cwd(), Path::new("/tmp"));
        // Names, a group id beyond runc's range and a missing command are refused.
        let bad = [
            ImageDefaults { user: "nobody", ..image },
            ImageDefaults { additional_gids: &[u32::MAX], ..image },
            ImageDefaults { entrypoint: &[], cmd: &[], ..image },
        ];
        for bad in bad {
            let err = prepare_image(Path::new("/r"), "h", "/c", &bad, &none(), &Security::default()).err().unwrap();
            assert_eq!(err.code(), berth_model::Code::InvalidArgument, "{err}");
        }
    }

    #[test]
    fn bad_bundle_specs_are_refused_with_reasons() {
        let dir = Scratch::new("bundle");
        let config = dir.0.join("config.json");
        std::fs::write(&config, b"{not json").unwrap();
        let err = prep(dir.path(), &none()).err().unwrap();
        assert!(err.to_string().contains("bad spec") && err.to_string().contains("line 1"), "{err}");
        // A spec with a missing field names it.
        std::fs::write(&config, br#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"/"}}"#).unwrap();
        let err = prep(dir.path(), &none()).err().unwrap().to_string();
        assert!(err.contains("user") || err.contains("args"), "{err}");
        // A uid that would wrap to root.
        std::fs::create_dir_all(dir.0.join("rootfs")).unwrap();
        let spec = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
            "process":{"cwd":"/","args":["true"],"user":{"uid":4294967295,"gid":0}}}"#;
        std::fs::write(&config, spec).unwrap();
        let err = prep(dir.path(), &none()).err().unwrap().to_string();
        assert!(err.contains("out of range"), "{err}");
        // A FIFO instead of a file: refused at once, nothing blocks.
        std::fs::remove_file(&config).unwrap();
        nix::unistd::mkfifo(&config, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = prep(dir.path(), &none()).err().unwrap().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        // Security options do not apply to a bundle.
        let s = Security { privileged: true, ..Default::default() };
        let err = prepare(dir.path(), "x", "/c", &none(), &s).err().unwrap();
        assert_eq!(err.code(), berth_model::Code::InvalidArgument, "{err}");
    }
}
