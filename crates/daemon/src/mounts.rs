//! Run options of a generated spec (issue 10, item 7): bind mounts and
//! named volumes (`-v`, with mount propagation), tmpfs mounts (`--tmpfs`),
//! a read-only root (`--read-only`), the host name (`--hostname`), the
//! host's PID or IPC namespace (`--pid host`, `--ipc host`) and the OOM
//! score adjustment (`--oom-score-adj`). [`check`] parses and
//! validates them before create changes anything (SPEC B2, B31); [`apply`]
//! writes them into the spec once the volumes exist. A bundle's config.json
//! is used as written, so these options are refused for a bundle.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use crate::error::{Error, Result};
use crate::spec::MAX_HOSTNAME;

/// Mounts per container: more is a mistake or an attack on the record size.
const MAX_MOUNTS: usize = 128;
/// Longest path accepted on either side of a mount (PATH_MAX).
const MAX_PATH: usize = 4096;
/// Docker's tmpfs defaults.
const TMPFS_DEFAULTS: &[&str] = &["rw", "nosuid", "nodev", "noexec", "relatime"];
/// tmpfs flags a user may add.
const TMPFS_FLAGS: &[&str] = &[
    "rw",
    "ro",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "diratime",
    "nodiratime",
    "sync",
    "async",
    "dirsync",
];
/// tmpfs options with a value (`size=64m`, `mode=1777` …).
const TMPFS_VALUES: &[&str] = &["size", "mode", "uid", "gid", "nr_inodes", "nr_blocks"];

/// The run options of a create request, as the caller gave them.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `HOST:CTR[:ro|rw]` or `NAME:CTR[:ro|rw]`.
    pub volumes: Vec<String>,
    /// `PATH[:OPTIONS]`.
    pub tmpfs: Vec<String>,
    pub read_only: bool,
    pub hostname: String,
    /// `--pid` and `--ipc`: empty (its own) or `host`.
    pub pid: String,
    pub ipc: String,
    pub oom_score_adj: Option<i32>,
}

impl RunOptions {
    pub fn is_default(&self) -> bool {
        self.volumes.is_empty()
            && self.tmpfs.is_empty()
            && !self.read_only
            && self.hostname.is_empty()
            && self.pid.is_empty()
            && self.ipc.is_empty()
            && self.oom_score_adj.is_none()
    }

    /// The named volumes (sources not starting with `/`), each once, in
    /// order of appearance; meaningful once [`check`] accepted the options.
    pub fn volume_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for v in &self.volumes {
            let src = v.split(':').next().unwrap_or_default();
            if !src.starts_with('/') && !names.iter().any(|n| n == src) {
                names.push(src.to_string());
            }
        }
        names
    }
}

/// What a `-v` mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A host path (absolute, existing, symlinks resolved).
    Host(PathBuf),
    /// A named volume.
    Volume(String),
}

#[derive(Debug, Clone)]
pub struct Bind {
    pub source: Source,
    pub target: PathBuf,
    pub read_only: bool,
    /// rprivate (default), rslave or rshared (and their non-recursive forms).
    pub propagation: &'static str,
}

/// Mount propagation modes a volume may ask for.
const PROPAGATIONS: &[&str] = &["private", "rprivate", "slave", "rslave", "shared", "rshared"];

#[derive(Debug, Clone)]
pub struct Tmpfs {
    pub target: PathBuf,
    pub options: Vec<String>,
}

/// Checked run options.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    pub binds: Vec<Bind>,
    pub tmpfs: Vec<Tmpfs>,
    pub read_only: bool,
    pub hostname: Option<String>,
    /// The host's PID and IPC namespaces.
    pub host_pid: bool,
    pub host_ipc: bool,
    /// As given; lowered below berthd's own only with CAP_SYS_RESOURCE.
    pub oom_score_adj: Option<i32>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`, like container ids.
pub fn check_volume_name(name: &str) -> Result<()> {
    berth_model::VolumeName::new(name).map(drop).map_err(|e| invalid(format!("{e} (a host path must be absolute)")))
}

/// RFC 1123 host name: letters, digits, `-` and `.`, starting and ending
/// with a letter or digit, at most 64 bytes.
pub fn check_hostname(name: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    let ends_ok =
        name.starts_with(|c: char| c.is_ascii_alphanumeric()) && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > MAX_HOSTNAME || !name.chars().all(ok_char) || !ends_ok {
        return Err(invalid(format!(
            "host name {:?} is invalid: 1..={MAX_HOSTNAME} letters, digits, '-' and '.', starting and ending with a letter or digit",
            name.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

/// A path inside the container: absolute, without `..`, not the root nor
/// /proc (or below), /sys or /dev themselves. Returned normalised
/// (`.` and repeated or trailing slashes removed).
fn container_path(what: &str, path: &str) -> Result<PathBuf> {
    if path.contains('\0') || path.len() > MAX_PATH {
        return Err(invalid(format!("{what} path contains a NUL byte or is too long")));
    }
    if !path.starts_with('/') {
        return Err(invalid(format!("{what} path {path:?} in the container must be absolute")));
    }
    let mut out = PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid(format!("{what} path {path:?} in the container must not contain '..'")));
            }
        }
    }
    let refused = ["/", "/sys", "/dev"].iter().any(|p| out == Path::new(p)) || out.starts_with("/proc");
    if refused {
        return Err(invalid(format!(
            "{what} path {} cannot be mounted over (/, /proc, /sys and /dev belong to the runtime)",
            out.display()
        )));
    }
    Ok(out)
}

/// A host path to bind: absolute and existing; symlinks are resolved here
/// so the runtime binds what was checked.
fn host_path(path: &str) -> Result<PathBuf> {
    if path.contains('\0') || path.len() > MAX_PATH {
        return Err(invalid("host path contains a NUL byte or is too long"));
    }
    Path::new(path).canonicalize().map_err(|e| invalid(format!("host path {path:?} is not usable: {e}")))
}

fn bind(arg: &str) -> Result<Bind> {
    let parts: Vec<&str> = arg.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [s, d] => (*s, *d, ""),
        [s, d, m] => (*s, *d, *m),
        _ => return Err(invalid(format!("volume {arg:?} is not HOST:CTR[:OPTIONS] or NAME:CTR[:OPTIONS]"))),
    };
    let (mut read_only, mut propagation) = (false, "rprivate");
    for option in mode.split(',').filter(|o| !o.is_empty()) {
        match option {
            "rw" => read_only = false,
            "ro" => read_only = true,
            p => match PROPAGATIONS.iter().find(|known| **known == p) {
                Some(known) => propagation = known,
                None => {
                    return Err(invalid(format!(
                        "volume option {:?} is not ro, rw or a propagation ({})",
                        p.chars().take(64).collect::<String>(),
                        PROPAGATIONS.join(", ")
                    )));
                }
            },
        }
    }
    let target = container_path("volume", dst)?;
    let source = if src.starts_with('/') {
        let path = host_path(src)?;
        check_source_propagation(&path, propagation)?;
        Source::Host(path)
    } else {
        check_volume_name(src)?;
        Source::Volume(src.to_string())
    };
    Ok(Bind { source, target, read_only, propagation })
}

/// A bind that receives the host's new mounts (slave) needs a source on a
/// shared or slave mount, one that also gives its own (shared) a shared
/// mount: otherwise nothing would propagate (containerd refuses these too).
fn check_source_propagation(path: &Path, propagation: &str) -> Result<()> {
    let wanted = if propagation.ends_with("shared") {
        &["shared:"][..]
    } else if propagation.ends_with("slave") {
        &["shared:", "master:"][..]
    } else {
        return Ok(());
    };
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| Error::io("read mountinfo", e))?;
    let berth_model::mountinfo::Mount { point, tags, .. } =
        berth_model::mountinfo::mount_of(&info, path).unwrap_or_default();
    if tags.iter().any(|t| wanted.iter().any(|w| t.starts_with(w))) {
        return Ok(());
    }
    let needs = if wanted.len() == 1 { "a shared mount" } else { "a shared or slave mount" };
    Err(Error::FailedPrecondition(format!(
        "volume source {} is on mount {point}, which is not {needs}: {propagation} would propagate nothing (make it shared: mount --make-shared {point})",
        path.display()
    )))
}

fn tmpfs(arg: &str) -> Result<Tmpfs> {
    let (path, opts) = arg.split_once(':').unwrap_or((arg, ""));
    let target = container_path("tmpfs", path)?;
    let mut options: Vec<String> = TMPFS_DEFAULTS.iter().map(|s| s.to_string()).collect();
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        let ok = match o.split_once('=') {
            Some((k, v)) => {
                TMPFS_VALUES.contains(&k) && !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '%')
            }
            None => TMPFS_FLAGS.contains(&o),
        };
        if !ok {
            return Err(invalid(format!("tmpfs option {o:?} is not supported")));
        }
        options.push(o.to_string());
    }
    Ok(Tmpfs { target, options })
}

/// Parses and checks the run options. Host paths are looked at (they must
/// exist), nothing is changed.
pub fn check(o: &RunOptions) -> Result<Checked> {
    if o.volumes.len() + o.tmpfs.len() > MAX_MOUNTS {
        return Err(invalid(format!("at most {MAX_MOUNTS} volumes and tmpfs mounts are allowed")));
    }
    let binds = o.volumes.iter().map(|v| bind(v)).collect::<Result<Vec<_>>>()?;
    let tmpfs = o.tmpfs.iter().map(|t| tmpfs(t)).collect::<Result<Vec<_>>>()?;
    let mut targets: Vec<&Path> = Vec::new();
    for t in binds.iter().map(|b| &b.target).chain(tmpfs.iter().map(|t| &t.target)) {
        if targets.contains(&t.as_path()) {
            return Err(invalid(format!("duplicate mount point {}", t.display())));
        }
        targets.push(t);
    }
    let hostname = if o.hostname.is_empty() {
        None
    } else {
        check_hostname(&o.hostname)?;
        Some(o.hostname.clone())
    };
    let host = |what: &str, asked: &str| match asked {
        "" => Ok(false),
        "host" => Ok(true),
        other => Err(invalid(format!(
            "invalid --{what} {:?}: a container has its own namespace or the host's (host)",
            other.chars().take(64).collect::<String>()
        ))),
    };
    let (host_pid, host_ipc) = (host("pid", &o.pid)?, host("ipc", &o.ipc)?);
    if let Some(adj) = o.oom_score_adj.filter(|a| !(-1000..=1000).contains(a)) {
        return Err(invalid(format!("OOM score adjustment {adj} is out of range (-1000..1000)")));
    }
    let oom_score_adj = o.oom_score_adj;
    Ok(Checked { binds, tmpfs, read_only: o.read_only, hostname, host_pid, host_ipc, oom_score_adj })
}

/// Adds the mounts to the spec (after its own: later mounts go on top),
/// with `volume_dir` giving a named volume's host directory, and sets the
/// root's read-only flag, the host name and the host's namespaces. A
/// volume that receives (slave) or shares (shared) mounts needs the root
/// to propagate too, as containerd does for Kubernetes' HostToContainer
/// and Bidirectional.
pub fn apply(spec: &mut Spec, c: &Checked, volume_dir: impl Fn(&str) -> PathBuf) -> Result<()> {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    let wants = |p: &str| c.binds.iter().any(|b| b.propagation.ends_with(p));
    // The OCI spec's names (runc also takes rshared/rslave, youki not).
    let root_propagation = if wants("shared") {
        Some("shared")
    } else if wants("slave") {
        Some("slave")
    } else {
        None
    };
    if let (Some(p), Some(linux)) = (root_propagation, spec.linux_mut().as_mut()) {
        linux.set_rootfs_propagation(Some(p.to_string()));
    }
    for b in &c.binds {
        let source = match &b.source {
            Source::Host(p) => p.clone(),
            Source::Volume(n) => volume_dir(n),
        };
        let mut options = vec!["rbind".to_string(), b.propagation.to_string()];
        if b.read_only {
            options.push("ro".to_string());
        }
        let mut m = Mount::default();
        m.set_destination(b.target.clone());
        m.set_typ(Some("bind".to_string()));
        m.set_source(Some(source));
        m.set_options(Some(options));
        mounts.push(m);
    }
    for t in &c.tmpfs {
        let mut m = Mount::default();
        m.set_destination(t.target.clone());
        m.set_typ(Some("tmpfs".to_string()));
        m.set_source(Some(PathBuf::from("tmpfs")));
        m.set_options(Some(t.options.clone()));
        mounts.push(m);
    }
    spec.set_mounts(Some(mounts));
    if c.read_only {
        let root = spec.root_mut().as_mut().ok_or_else(|| invalid("spec has no root"))?;
        root.set_readonly(Some(true));
    }
    if let Some(h) = &c.hostname {
        spec.set_hostname(Some(h.clone()));
    }
    for (typ, host) in [(LinuxNamespaceType::Pid, c.host_pid), (LinuxNamespaceType::Ipc, c.host_ipc)] {
        if host {
            crate::spec::set_namespace(spec, typ, None)?;
        }
    }
    if let (Some(adj), Some(process)) = (c.oom_score_adj, spec.process_mut().as_mut()) {
        process.set_oom_score_adj(Some(allowed_oom_score_adj(adj)));
    }
    Ok(())
}

/// `wanted`, or berthd's own adjustment if `wanted` is lower and berthd may
/// not lower it (no CAP_SYS_RESOURCE: the runtime's write would fail), as
/// containerd's `restrict_oom_score_adj` does.
fn allowed_oom_score_adj(wanted: i32) -> i32 {
    let own = std::fs::read_to_string("/proc/self/oom_score_adj").ok().and_then(|s| s.trim().parse::<i32>().ok());
    match own {
        Some(own) if wanted < own && !has_sys_resource() => own,
        _ => wanted,
    }
}

/// Whether this process has CAP_SYS_RESOURCE in its effective set.
fn has_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).map(str::trim).unwrap_or("0");
    u64::from_str_radix(eff, 16).is_ok_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(volumes: &[&str], tmpfs: &[&str]) -> RunOptions {
        RunOptions {
            volumes: volumes.iter().map(|s| s.to_string()).collect(),
            tmpfs: tmpfs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn is_invalid(r: Result<Checked>) -> bool {
        matches!(r, Err(Error::InvalidArgument(_)))
    }

    #[test]
    fn parses_binds_volumes_and_tmpfs() {
        let o = opts(&["/tmp:/data/./x/:ro", "cache:/cache", "cache:/c2:rw"], &["/run:size=1m,exec"]);
        let c = check(&o).expect("valid options");
        assert_eq!(c.binds[0].target, Path::new("/data/x"));
        assert!(c.binds[0].read_only);
        assert_eq!(c.binds[1].source, Source::Volume("cache".into()));
        assert!(!c.binds[2].read_only);
        assert_eq!(o.volume_names(), vec!["cache".to_string()]);
        assert_eq!(c.tmpfs[0].options.last().map(String::as_str), Some("exec"));
        assert!(c.tmpfs[0].options.iter().any(|o| o == "size=1m"));
    }

    #[test]
    fn refuses_bad_mounts() {
        for v in [
            "rel/dir:/x",
            "/nonexistent-berth-path:/x",
            "/tmp:/a/../b",
            "/tmp:x",
            "/tmp:/proc/sys",
            "/tmp:/",
            "/tmp:/dev",
            "/tmp:/x:rx",
            "/tmp",
            "-bad:/x",
            "a:b:c:d",
            "/tmp:/x\0",
        ] {
            assert!(is_invalid(check(&opts(&[v], &[]))), "{v} was accepted");
        }
        assert!(is_invalid(check(&opts(&[&format!("{}:/x", "v".repeat(129))], &[]))));
        assert!(is_invalid(check(&opts(&["/tmp:/x"], &["/x"]))), "duplicate mount point");
        for t in ["rel", "/t:size=1m;rm", "/t:bogus", "/sys"] {
            assert!(is_invalid(check(&opts(&[], &[t]))), "{t} was accepted");
        }
    }

    #[test]
    fn volumes_take_a_propagation_and_the_root_follows() {
        let c = check(&opts(&["/tmp:/a:ro,rprivate", "v:/b:rslave", "w:/c:rw,rshared"], &[])).expect("valid");
        let got: Vec<_> = c.binds.iter().map(|b| (b.read_only, b.propagation)).collect();
        assert_eq!(got, [(true, "rprivate"), (false, "rslave"), (false, "rshared")]);
        let mut spec = Spec::default();
        apply(&mut spec, &c, |n| PathBuf::from(format!("/vols/{n}"))).expect("apply");
        let linux = spec.linux().clone().unwrap_or_default();
        assert_eq!(linux.rootfs_propagation().as_deref(), Some("shared"));
        let mounts = spec.mounts().clone().unwrap_or_default();
        let b = mounts.iter().find(|m| m.destination() == Path::new("/b")).expect("/b");
        assert_eq!(b.options().clone().unwrap_or_default(), ["rbind", "rslave"]);
        assert!(is_invalid(check(&opts(&["/tmp:/a:ro,bogus"], &[]))));
    }

    #[test]
    fn hostnames() {
        for ok in ["web", "a", "web-1.example", &"h".repeat(64)] {
            assert!(check_hostname(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-web", "web-", "we b", "a_b", "x\0", &"h".repeat(65)] {
            assert!(check_hostname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn apply_sets_mounts_root_and_hostname() {
        let mut spec = Spec::default();
        let mut c = check(&opts(&["/tmp:/h:ro", "vol:/v"], &["/t"])).expect("valid");
        c.read_only = true;
        c.hostname = Some("box".into());
        apply(&mut spec, &c, |n| PathBuf::from(format!("/vols/{n}/_data"))).expect("apply");
        let mounts = spec.mounts().clone().unwrap_or_default();
        let find = |d: &str| mounts.iter().find(|m| m.destination() == Path::new(d)).cloned();
        let h = find("/h").expect("bind mount");
        assert_eq!(h.options().clone().unwrap_or_default(), ["rbind", "rprivate", "ro"]);
        let v = find("/v").expect("volume mount");
        assert_eq!(v.source().clone(), Some(PathBuf::from("/vols/vol/_data")));
        assert_eq!(find("/t").and_then(|m| m.typ().clone()).as_deref(), Some("tmpfs"));
        assert_eq!(spec.root().as_ref().and_then(|r| r.readonly()), Some(true));
        assert_eq!(spec.hostname().as_deref(), Some("box"));
    }
}
