//! Confinement of containers that run from a plain root filesystem (the
//! spec berthd generates): Docker's 14 capabilities, a devices cgroup that
//! denies everything but the standard devices, masked and read-only paths,
//! a seccomp allowlist (`seccomp.rs`) — and the explicit opt-outs:
//! `--privileged`, `--cap-add/--cap-drop`, `--device`, `--security-opt`.
//! A bundle's own config.json is used as written, like runc does.

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxSeccomp, Spec,
};

use crate::error::{Error, Result};

/// What a create request asks of the confinement.
#[derive(Default, Clone)]
pub struct Security {
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// HOST[:CONTAINER[:PERMISSIONS]].
    pub devices: Vec<String>,
    /// Empty: the default profile; "unconfined"; or an OCI seccomp JSON.
    pub seccomp: String,
    pub no_new_privileges: bool,
    /// Paths masked / made read-only instead of the defaults (empty: the
    /// defaults; a privileged container gets none either way).
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    /// An AppArmor profile loaded on the host (empty: none); ignored with a
    /// note where the host has no AppArmor.
    pub apparmor: String,
}

impl Security {
    /// Whether the request asks for anything but the defaults.
    pub fn is_default(&self) -> bool {
        !self.privileged
            && self.cap_add.is_empty()
            && self.cap_drop.is_empty()
            && self.devices.is_empty()
            && self.seccomp.is_empty()
            && !self.no_new_privileges
            && self.masked_paths.is_empty()
            && self.readonly_paths.is_empty()
            && self.apparmor.is_empty()
    }
}

/// Paths a request may mask or make read-only.
const MAX_PATHS: usize = 256;

/// Checked masked or read-only paths: absolute, no `..`, one line each.
fn paths(what: &str, given: &[String], defaults: &[&str]) -> Result<Vec<String>> {
    if given.is_empty() {
        return Ok(defaults.iter().map(|p| p.to_string()).collect());
    }
    if given.len() > MAX_PATHS {
        return Err(invalid(format!("at most {MAX_PATHS} {what} paths")));
    }
    for p in given {
        let bad = !p.starts_with('/') || p.len() > 4096 || p.contains(['\0', '\n']) || p.split('/').any(|c| c == "..");
        if bad {
            return Err(invalid(format!(
                "{what} path {:?} must be absolute, without '..'",
                p.chars().take(80).collect::<String>()
            )));
        }
    }
    Ok(given.to_vec())
}

/// The AppArmor profile to give the process: `None` where the host has no
/// AppArmor (a note is logged) or none is asked for.
fn apparmor(profile: &str) -> Result<Option<String>> {
    if profile.is_empty() {
        return Ok(None);
    }
    if profile.len() > 255 || !profile.chars().all(|c| c.is_ascii_graphic()) {
        return Err(invalid(format!(
            "AppArmor profile {:?} is not a profile name",
            profile.chars().take(80).collect::<String>()
        )));
    }
    let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|v| v.trim() == "Y");
    if !enabled {
        tracing::info!(profile, "AppArmor profile ignored: this host has no AppArmor");
        return Ok(None);
    }
    Ok(Some(profile.to_string()))
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// Docker's default capability set: enough for ordinary programs, nothing
/// that reaches outside the container.
pub const DEFAULT_CAPS: &[Capability] = &[
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

/// Every capability, in the kernel's bit order (CAP_CHOWN is bit 0).
const ALL_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capabilities berthd itself may hand on: its bounding set (a
/// container cannot get more; Docker's --privileged means the same).
fn available_caps() -> HashSet<Capability> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string())))
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .unwrap_or(u64::MAX);
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1 << bit) != 0)
        .filter_map(|(_, c)| c.parse().ok())
        .collect()
}

/// Docker's masked paths: unreadable inside the container.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Docker's read-only paths.
const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The standard devices (type, major, minor or all): what containerd and
/// runc allow by default. Every other device is denied, mknod included.
const STANDARD_DEVICES: &[(LinuxDeviceType, i64, Option<i64>)] = &[
    (LinuxDeviceType::C, 1, Some(3)), // null
    (LinuxDeviceType::C, 1, Some(5)), // zero
    (LinuxDeviceType::C, 1, Some(7)), // full
    (LinuxDeviceType::C, 1, Some(8)), // random
    (LinuxDeviceType::C, 1, Some(9)), // urandom
    (LinuxDeviceType::C, 5, Some(0)), // tty
    (LinuxDeviceType::C, 5, Some(1)), // console
    (LinuxDeviceType::C, 5, Some(2)), // ptmx
    (LinuxDeviceType::C, 136, None),  // pts
];

fn rule(allow: bool, typ: LinuxDeviceType, major: Option<i64>, minor: Option<i64>, access: &str) -> LinuxDeviceCgroup {
    let mut r = LinuxDeviceCgroup::default();
    r.set_allow(allow);
    r.set_typ(Some(typ));
    r.set_major(major);
    r.set_minor(minor);
    r.set_access(Some(access.to_string()));
    r
}

/// Parses a capability name: NET_ADMIN, cap_net_admin, CAP_NET_ADMIN.
fn capability(name: &str) -> Result<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare.parse().map_err(|_| invalid(format!("unknown capability {name:?}")))
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

/// The capability set: the defaults (all with `--privileged` or
/// `--cap-add ALL`), minus drops (`ALL`: none), plus explicit adds.
fn capabilities(s: &Security) -> Result<HashSet<Capability>> {
    let adds: Vec<Capability> =
        s.cap_add.iter().filter(|c| !is_all(c)).map(|c| capability(c)).collect::<Result<_>>()?;
    let drops: Vec<Capability> =
        s.cap_drop.iter().filter(|c| !is_all(c)).map(|c| capability(c)).collect::<Result<_>>()?;
    let available = available_caps();
    if let Some(missing) = adds.iter().find(|c| !available.contains(c)) {
        return Err(Error::FailedPrecondition(format!(
            "capability {missing} is not in berthd's own bounding set, so no container can have it"
        )));
    }
    let mut caps: HashSet<Capability> = if s.privileged || s.cap_add.iter().any(|c| is_all(c)) {
        available
    } else {
        DEFAULT_CAPS.iter().copied().filter(|c| available.contains(c)).collect()
    };
    if s.cap_drop.iter().any(|c| is_all(c)) {
        caps.clear();
    }
    for d in &drops {
        caps.remove(d);
    }
    caps.extend(adds);
    Ok(caps)
}

/// A `--device HOST[:CONTAINER[:PERMISSIONS]]`: the node to create and its
/// cgroup rule.
fn device(arg: &str) -> Result<(LinuxDevice, LinuxDeviceCgroup)> {
    let mut parts = arg.splitn(3, ':');
    let host = parts.next().unwrap_or_default();
    let (ctr, perms) = match (parts.next(), parts.next()) {
        (Some(p), None) if !p.starts_with('/') => (host, p),
        (Some(c), p) => (c, p.unwrap_or("rwm")),
        (None, _) => (host, "rwm"),
    };
    let bad = |why: &str| invalid(format!("device {arg:?}: {why}"));
    if !host.starts_with('/') || !ctr.starts_with('/') {
        return Err(bad("paths must be absolute (HOST[:CONTAINER[:PERMISSIONS]])"));
    }
    if ctr.split('/').any(|c| c == "..") || ctr.contains('\0') {
        return Err(bad("the container path must not leave the container's /"));
    }
    if perms.is_empty() || !perms.chars().all(|c| "rwm".contains(c)) {
        return Err(bad("permissions must be a subset of rwm"));
    }
    let meta = std::fs::metadata(host).map_err(|e| bad(&e.to_string()))?;
    let typ = match meta.file_type() {
        t if t.is_char_device() => LinuxDeviceType::C,
        t if t.is_block_device() => LinuxDeviceType::B,
        _ => return Err(bad("not a character or block device")),
    };
    let (major, minor) = (nix::sys::stat::major(meta.rdev()) as i64, nix::sys::stat::minor(meta.rdev()) as i64);
    let mut dev = LinuxDevice::default();
    dev.set_path(PathBuf::from(ctr));
    dev.set_typ(typ);
    dev.set_major(major);
    dev.set_minor(minor);
    dev.set_file_mode(Some(meta.mode() & 0o777));
    dev.set_uid(Some(0));
    dev.set_gid(Some(0));
    Ok((dev, rule(true, typ, Some(major), Some(minor), perms)))
}

/// Every device node under the host's /dev (for `--privileged`), except
/// the per-container ones the runtime makes itself.
fn host_devices() -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::from("/dev")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if !["/dev/pts", "/dev/shm", "/dev/mqueue"].iter().any(|p| path == Path::new(p)) {
                    dirs.push(path);
                }
            } else if (ft.is_char_device() || ft.is_block_device())
                && path != Path::new("/dev/console")
                && path != Path::new("/dev/ptmx")
                && let Some(p) = path.to_str()
                && let Ok((dev, _)) = device(p)
            {
                out.push(dev);
            }
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

fn seccomp(s: &Security, caps: &HashSet<Capability>) -> Result<Option<LinuxSeccomp>> {
    match s.seccomp.as_str() {
        _ if s.privileged => Ok(None),
        "unconfined" => Ok(None),
        "" => Ok(Some(crate::seccomp::default_profile(caps))),
        json => parse_profile(json).map(Some),
    }
}

/// The fields of the OCI spec's seccomp profile, per level. Anything else
/// (Docker's `archMap`, `includes`, `excludes` …) would be dropped by the
/// parser, silently loosening the profile: it is refused instead.
const PROFILE_FIELDS: [&[&str]; 3] = [
    &["defaultAction", "defaultErrnoRet", "architectures", "flags", "listenerPath", "listenerMetadata", "syscalls"],
    &["names", "action", "errnoRet", "args"],
    &["index", "value", "valueTwo", "op"],
];

fn parse_profile(json: &str) -> Result<LinuxSeccomp> {
    let bad = |why: String| invalid(format!("seccomp profile: {why}"));
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let unknown = |obj: &serde_json::Value, level: usize| {
        obj.as_object().and_then(|o| o.keys().find(|k| !PROFILE_FIELDS[level].contains(&k.as_str())).cloned())
    };
    let syscalls = v.get("syscalls").and_then(|s| s.as_array()).into_iter().flatten();
    let args = syscalls.clone().filter_map(|s| s.get("args")?.as_array()).flatten();
    let found = unknown(&v, 0)
        .or_else(|| syscalls.clone().find_map(|s| unknown(s, 1)))
        .or_else(|| args.clone().find_map(|a| unknown(a, 2)));
    if let Some(field) = found {
        return Err(bad(format!(
            "unknown field {field:?}: give the OCI runtime spec's linux.seccomp form (Docker's profile format with \
             archMap/includes/excludes is not supported)"
        )));
    }
    serde_json::from_value(v).map_err(|e| bad(e.to_string()))
}

/// Applies the confinement to a generated spec.
pub fn apply(spec: &mut Spec, s: &Security) -> Result<()> {
    let caps = capabilities(s)?;
    let mut devices = Vec::new();
    let mut rules = if s.privileged {
        vec![rule(true, LinuxDeviceType::A, None, None, "rwm")]
    } else {
        let mut r = vec![rule(false, LinuxDeviceType::A, None, None, "rwm")];
        r.extend(STANDARD_DEVICES.iter().map(|&(t, major, minor)| rule(true, t, Some(major), minor, "rwm")));
        r
    };
    if s.privileged {
        devices.extend(host_devices());
    }
    for d in &s.devices {
        let (dev, r) = device(d)?;
        devices.retain(|x: &LinuxDevice| x.path() != dev.path());
        devices.push(dev);
        rules.push(r);
    }
    let profile = seccomp(s, &caps)?;

    let process = spec.process_mut().get_or_insert_with(Default::default);
    let mut lc = LinuxCapabilities::default();
    lc.set_bounding(Some(caps.clone()));
    lc.set_effective(Some(caps.clone()));
    lc.set_permitted(Some(caps));
    lc.set_inheritable(None);
    lc.set_ambient(None);
    process.set_capabilities(Some(lc));
    process.set_no_new_privileges(s.no_new_privileges.then_some(true));
    process.set_apparmor_profile(apparmor(&s.apparmor)?);
    let (masked, readonly) =
        (paths("masked", &s.masked_paths, MASKED_PATHS)?, paths("read-only", &s.readonly_paths, READONLY_PATHS)?);

    if s.privileged
        && let Some(mounts) = spec.mounts_mut()
    {
        // Writable /sys and cgroups, as Docker's --privileged.
        for m in mounts.iter_mut().filter(|m| m.destination().starts_with("/sys")) {
            if let Some(opts) = m.options_mut() {
                opts.retain(|o| o != "ro");
            }
        }
    }
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    linux.set_masked_paths((!s.privileged).then_some(masked));
    linux.set_readonly_paths((!s.privileged).then_some(readonly));
    linux.set_devices((!devices.is_empty()).then_some(devices));
    linux.resources_mut().get_or_insert_with(Default::default).set_devices(Some(rules));
    linux.set_seccomp(profile);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps_of(spec: &Spec) -> HashSet<Capability> {
        spec.process().as_ref().unwrap().capabilities().as_ref().unwrap().bounding().clone().unwrap()
    }

    #[test]
    fn default_is_docker_like() {
        let mut spec = Spec::default();
        apply(&mut spec, &Security::default()).unwrap();
        let caps = caps_of(&spec);
        assert_eq!(caps.len(), 14);
        assert!(!caps.contains(&Capability::SysAdmin) && caps.contains(&Capability::Mknod));
        let linux = spec.linux().as_ref().unwrap();
        let rules = linux.resources().as_ref().unwrap().devices().clone().unwrap();
        assert!(!rules[0].allow() && rules[0].typ() == Some(LinuxDeviceType::A), "deny all first");
        assert!(rules[1..].iter().all(|r| r.allow() && r.typ() == Some(LinuxDeviceType::C)));
        assert!(linux.masked_paths().as_ref().unwrap().contains(&"/proc/kcore".to_string()));
        assert!(linux.readonly_paths().as_ref().unwrap().contains(&"/proc/sysrq-trigger".to_string()));
        assert!(linux.seccomp().is_some());
    }

    #[test]
    fn opt_outs() {
        let mut spec = Spec::default();
        let s = Security {
            cap_add: vec!["net_admin".into(), "CAP_SYS_PTRACE".into()],
            cap_drop: vec!["MKNOD".into()],
            devices: vec!["/dev/null:/dev/mynull:rw".into()],
            seccomp: "unconfined".into(),
            no_new_privileges: true,
            ..Default::default()
        };
        apply(&mut spec, &s).unwrap();
        let caps = caps_of(&spec);
        assert!(caps.contains(&Capability::NetAdmin) && caps.contains(&Capability::SysPtrace));
        assert!(!caps.contains(&Capability::Mknod));
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none());
        let dev = &linux.devices().as_ref().unwrap()[0];
        assert_eq!((dev.path().as_path(), dev.major(), dev.minor()), (Path::new("/dev/mynull"), 1, 3));
        let last = linux.resources().as_ref().unwrap().devices().clone().unwrap().pop().unwrap();
        assert_eq!(last.access().as_deref(), Some("rw"));
        assert_eq!(spec.process().as_ref().unwrap().no_new_privileges(), Some(true));

        let mut spec = Spec::default();
        apply(&mut spec, &Security { cap_drop: vec!["ALL".into()], ..Default::default() }).unwrap();
        assert!(caps_of(&spec).is_empty());

        // Lists of the caller's replace the default ones.
        let mut spec = Spec::default();
        let s = Security {
            masked_paths: vec!["/proc/kcore".into(), "/secret".into()],
            readonly_paths: vec!["/proc/sys".into()],
            ..Default::default()
        };
        apply(&mut spec, &s).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.masked_paths().clone().unwrap(), ["/proc/kcore", "/secret"]);
        assert_eq!(linux.readonly_paths().clone().unwrap(), ["/proc/sys"]);
    }

    #[test]
    fn an_oci_profile_is_taken_as_given() {
        let caps = DEFAULT_CAPS.iter().copied().collect();
        let profile = crate::seccomp::default_profile(&caps);
        let json = serde_json::to_string(&profile).unwrap();
        assert_eq!(parse_profile(&json).unwrap(), profile);
    }

    #[test]
    fn privileged_gets_everything() {
        let mut spec = Spec::default();
        apply(&mut spec, &Security { privileged: true, ..Default::default() }).unwrap();
        assert_eq!(caps_of(&spec), available_caps());
        assert!(caps_of(&spec).contains(&Capability::SysAdmin));
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none() && linux.masked_paths().is_none());
        let sys = spec.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new("/sys")).unwrap();
        assert!(!sys.options().as_ref().unwrap().contains(&"ro".to_string()));
        assert!(linux.devices().as_ref().is_some_and(|d| d.iter().any(|d| d.path() == Path::new("/dev/null"))));
    }

    #[test]
    fn bad_options_are_invalid_arguments() {
        for s in [
            Security { cap_add: vec!["NOPE".into()], ..Default::default() },
            Security { devices: vec!["/etc/passwd".into()], ..Default::default() },
            Security { devices: vec!["/dev/null:/dev/x:rwx".into()], ..Default::default() },
            Security { devices: vec!["relative".into()], ..Default::default() },
            Security { devices: vec!["/dev/null:/dev/../../etc/x".into()], ..Default::default() },
            Security { seccomp: "{not json".into(), ..Default::default() },
            Security { masked_paths: vec!["relative".into()], ..Default::default() },
            Security { readonly_paths: vec!["/proc/../etc".into()], ..Default::default() },
            Security { masked_paths: vec!["/a\nb".into()], ..Default::default() },
            Security { apparmor: "two words".into(), ..Default::default() },
            Security {
                seccomp: r#"{"defaultAction":"SCMP_ACT_ERRNO","archMap":[],"syscalls":[]}"#.into(),
                ..Default::default()
            },
            Security {
                seccomp: r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["unshare"],
                    "action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}}]}"#
                    .into(),
                ..Default::default()
            },
        ] {
            let err = apply(&mut Spec::default(), &s).expect_err("must fail");
            assert_eq!(err.code(), berth_model::Code::InvalidArgument, "{err}");
        }
    }
}
