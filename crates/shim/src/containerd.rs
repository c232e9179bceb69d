//! berth-shim as containerd's runtime `io.containerd.berth.v1` (binary
//! `containerd-shim-berth-v1`, SPEC B24). containerd runs it with Go-style
//! flags and an action:
//!
//! - `-namespace NS -address SOCK -publish-binary BIN -id ID start`, in the
//!   bundle: binds the shim's socket under [`SOCKET_DIR`], starts the
//!   long-lived shim on it in its own session, writes the address to the
//!   bundle's `address` file and prints it. A task whose spec names a group
//!   ([`GROUP_ANNOTATIONS`], e.g. a Kubernetes pod's sandbox id) shares one
//!   shim (`--sandbox`) with the other tasks of the group: the first start
//!   spawns it, the others print its address.
//! - `... -id ID -bundle DIR delete`: cleans up after a dead shim and prints
//!   a protobuf `DeleteResponse`.
//!
//! The long-lived shim is this binary in berthd's mode (listener on fd 3)
//! plus `--ttrpc-address`, which makes it publish events to containerd.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use berth_shim::{LISTEN_FD, timestamp};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::Message;

use crate::process::now_ns;
use crate::{cleanup, rootfs};

/// Where shims started by containerd keep their sockets and runtime state
/// (short: unix socket paths are limited to 107 bytes).
pub const SOCKET_DIR: &str = "/run/berth-shim";
/// Below [`SOCKET_DIR`]: the compiled seccomp programs every shim of
/// every containerd shares (berth_runtime's `seccomp.rs`).
const SECCOMP_CACHE: &str = "seccomp";

/// Annotations that put a task in a group served by one shim, as
/// containerd's runc shim reads them (first found wins).
pub const GROUP_ANNOTATIONS: [&str; 2] = ["io.containerd.runc.v2.group", "io.kubernetes.cri.sandbox-id"];

/// containerd's runtime name for this shim, in errors.
const NAME: &str = "containerd-shim-berth-v1";

/// The exit status reported for a task whose shim died without recording
/// one: killed (128 + SIGKILL), as containerd's own shims report.
const UNKNOWN_EXIT: u32 = 137;

#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("encode the delete response: {0}")]
    Encode(#[from] containerd_shim_protos::protobuf::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerdError {
    let what = what.into();
    move |source| ContainerdError::Io { what, source }
}

/// What containerd says on the command line.
#[derive(Debug, Default, PartialEq)]
pub struct Flags {
    pub namespace: String,
    pub address: String,
    pub id: String,
    pub bundle: Option<PathBuf>,
    pub debug: bool,
    pub action: String,
}

/// Whether `args` (without argv[0]) are containerd's: single-dash Go flags.
pub fn is_containerd_call(args: &[String]) -> bool {
    args.first().is_some_and(|a| a.starts_with('-') && !a.starts_with("--"))
}

pub fn parse(args: &[String]) -> Result<Flags, ContainerdError> {
    let mut f = Flags::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            f.action = arg.clone();
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        if name == "debug" {
            f.debug = inline.is_none_or(|v| v != "false");
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().cloned().ok_or_else(|| ContainerdError::Usage(format!("-{name} needs a value")))?,
        };
        match name {
            "namespace" => f.namespace = value,
            "address" => f.address = value,
            "id" => f.id = value,
            "bundle" => f.bundle = Some(PathBuf::from(value)),
            // Events go over ttrpc (TTRPC_ADDRESS), not through the binary.
            "publish-binary" | "socket" => {}
            _ => return Err(ContainerdError::Usage(format!("unknown flag -{name}"))),
        }
    }
    if f.namespace.is_empty() || f.id.is_empty() {
        return Err(ContainerdError::Usage("-namespace and -id are required".into()));
    }
    Ok(f)
}

/// The shim's socket and runtime root, named by a hash of containerd's
/// address, the namespace and the task's group (its id if it has none), so
/// two containerds never share one.
pub struct Paths {
    pub socket: PathBuf,
    pub runtime_root: PathBuf,
    /// The group the task belongs to, if its spec names one.
    pub group: Option<String>,
}

impl Paths {
    pub fn of(f: &Flags, bundle: &Path) -> Paths {
        let group = group_of(bundle);
        // A group's key can never equal a task's id.
        let key = match &group {
            Some(g) => format!("group\0{g}"),
            None => f.id.clone(),
        };
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in [f.address.as_bytes(), &[0], f.namespace.as_bytes(), &[0], key.as_bytes()].concat() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        let base = Path::new(SOCKET_DIR);
        Paths { socket: base.join(format!("{h:016x}.sock")), runtime_root: base.join(format!("{h:016x}")), group }
    }

    /// The paths `start` wrote into the bundle's `address` file (what the
    /// task's shim really used, whichever berth-shim started it), else the
    /// computed ones.
    pub fn recorded(f: &Flags, bundle: &Path) -> Paths {
        let computed = Paths::of(f, bundle);
        let recorded = std::fs::read_to_string(bundle.join("address")).ok();
        match recorded.as_deref().map(str::trim).and_then(|a| a.strip_prefix("unix://")).map(PathBuf::from) {
            Some(socket) if socket.parent() == Some(Path::new(SOCKET_DIR)) => {
                Paths { runtime_root: socket.with_extension(""), socket, group: computed.group }
            }
            _ => computed,
        }
    }
}

/// The group a bundle's spec names (see [`GROUP_ANNOTATIONS`]), if any.
fn group_of(bundle: &Path) -> Option<String> {
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json")).ok()?).ok()?;
    let annotations = spec.get("annotations")?;
    GROUP_ANNOTATIONS
        .iter()
        .find_map(|a| annotations.get(a).and_then(|v| v.as_str()))
        .filter(|g| !g.is_empty() && g.len() <= 256 && !g.contains('\0'))
        .map(str::to_string)
}

fn bundle_of(f: &Flags) -> Result<PathBuf, ContainerdError> {
    match &f.bundle {
        Some(b) => Ok(b.clone()),
        None => std::env::current_dir().map_err(io("current directory")),
    }
}

/// Runs containerd's action; the answer goes to stdout.
pub fn run(f: &Flags) -> Result<(), ContainerdError> {
    match f.action.as_str() {
        "start" => start(f),
        "delete" => delete(f),
        other => Err(ContainerdError::Usage(format!("{NAME}: unknown action {other:?} (start, delete)"))),
    }
}

/// Starts the long-lived shim and prints its address. containerd reads
/// stdout and stderr until both close, so the shim gets neither.
fn start(f: &Flags) -> Result<(), ContainerdError> {
    let bundle = bundle_of(f)?;
    let paths = Paths::of(f, &bundle);
    let address = format!("unix://{}", paths.socket.display());
    std::fs::create_dir_all(SOCKET_DIR).map_err(io(format!("create {SOCKET_DIR}")))?;
    // A live shim already serves this task (containerd retried) or its
    // group: reuse it.
    if std::os::unix::net::UnixStream::connect(&paths.socket).is_err() {
        let _ = std::fs::remove_file(&paths.socket);
        spawn(f, &bundle, &paths)?;
    }
    berth_store::write_atomic(&bundle.join("address"), address.as_bytes()).map_err(io("write the address file"))?;
    let mut out = std::io::stdout().lock();
    out.write_all(address.as_bytes()).and_then(|()| out.flush()).map_err(io("print the address"))
}

fn spawn(f: &Flags, bundle: &Path, paths: &Paths) -> Result<(), ContainerdError> {
    let listener = std::os::unix::net::UnixListener::bind(&paths.socket)
        .map_err(io(format!("bind {}", paths.socket.display())))?;
    let log_path = bundle.join("shim.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(format!("open {}", log_path.display())))?;
    let exe = std::env::current_exe().map_err(io("find own executable"))?;
    // containerd's ttrpc socket, for events; by default next to its gRPC one.
    let ttrpc =
        std::env::var("TTRPC_ADDRESS").ok().filter(|a| !a.is_empty()).unwrap_or_else(|| format!("{}.ttrpc", f.address));
    let mut cmd = Command::new(&exe);
    cmd.env(berth_shim::MALLOC_TUNABLES_VAR, berth_shim::malloc_tunables());
    cmd.arg("--namespace")
        .arg(&f.namespace)
        .arg("--id")
        .arg(paths.group.as_deref().unwrap_or(&f.id))
        .arg("--runtime")
        .arg("embedded")
        .arg("--runtime-root")
        .arg(&paths.runtime_root)
        .arg("--seccomp-cache")
        .arg(Path::new(SOCKET_DIR).join(SECCOMP_CACHE))
        .arg("--ttrpc-address")
        .arg(ttrpc)
        .current_dir(bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if paths.group.is_some() {
        cmd.arg("--sandbox");
    }
    if f.debug && std::env::var_os("BERTH_SHIM_LOG").is_none() {
        cmd.env("BERTH_SHIM_LOG", "debug");
    }
    let fd = listener.as_raw_fd();
    // SAFETY: only async-signal-safe calls (setsid, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Own session: the shim outlives this process and containerd.
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            // dup2 onto itself would keep close-on-exec: clear it instead.
            let kept = if fd == LISTEN_FD { libc::fcntl(fd, libc::F_SETFD, 0) } else { libc::dup2(fd, LISTEN_FD) };
            if kept < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // The listener is bound and listening: containerd can connect as soon
    // as the address is printed. The shim is not waited for; it outlives
    // this process.
    cmd.spawn().map(drop).map_err(|e| {
        let _ = std::fs::remove_file(&paths.socket);
        io(format!("spawn {}", exe.display()))(e)
    })
}

/// Cleans up after a dead shim: kills what is left of the task, deletes
/// the runtime's state, unmounts the rootfs, and reports the recorded exit.
/// Problems are warnings (containerd logs stderr) as long as the answer
/// can be given.
fn delete(f: &Flags) -> Result<(), ContainerdError> {
    let bundle = bundle_of(f)?;
    let paths = Paths::recorded(f, &bundle);
    // A shim that exited normally removed its runtime root: containerd
    // asks after every shim, but only a dead one left work behind.
    let exit = if !paths.runtime_root.exists() {
        cleanup::recorded_exit(&bundle)
    } else {
        dead_shim_cleanup(f, &bundle, &paths)
    };
    rootfs::unmount_all(&bundle);
    // A group's shim state goes with its last task's.
    let emptied = std::fs::read_dir(&paths.runtime_root).map_or(true, |mut d| d.next().is_none());
    if paths.group.is_none() || emptied {
        forget(&paths.socket, &paths.runtime_root);
    }
    let (status, at) = exit.map(|e| (e.code, e.exited_at_ns)).unwrap_or((UNKNOWN_EXIT, now_ns()));
    let resp = DeleteResponse { exit_status: status, exited_at: Some(timestamp(at)).into(), ..Default::default() };
    let bytes = resp.write_to_bytes()?;
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes).and_then(|()| out.flush()).map_err(io("print the delete response"))
}

/// Kills what is left of a dead shim's task and deletes its runtime state;
/// returns the exit the shim recorded.
fn dead_shim_cleanup(f: &Flags, bundle: &Path, paths: &Paths) -> Option<berth_model::ExitStatus> {
    match berth_runtime::open("embedded", &paths.runtime_root, None) {
        Ok(rt) => cleanup::run(&f.id, bundle, rt.as_ref()).unwrap_or_else(|e| {
            eprintln!("{NAME}: cleanup of {}: {e}", f.id);
            cleanup::recorded_exit(bundle)
        }),
        Err(e) => {
            eprintln!("{NAME}: cleanup of {}: {e}", f.id);
            cleanup::recorded_exit(bundle)
        }
    }
}

/// Removes a containerd shim's socket and runtime root (once it is done).
pub fn forget(socket: &Path, runtime_root: &Path) {
    let _ = std::fs::remove_file(socket);
    let _ = std::fs::remove_dir_all(runtime_root);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn containerd_flags_parse_and_berthd_flags_do_not_match() {
        let a = args("-namespace ns -address /run/c.sock -publish-binary /usr/bin/containerd -id c1 -debug start");
        assert!(is_containerd_call(&a));
        let f = parse(&a).expect("parse");
        assert_eq!((f.namespace.as_str(), f.id.as_str(), f.action.as_str()), ("ns", "c1", "start"));
        assert!(f.debug);
        let f = parse(&args("-namespace=ns -id=c1 -bundle /b delete")).expect("parse");
        assert_eq!((f.bundle, f.action.as_str()), (Some(PathBuf::from("/b")), "delete"));
        assert!(!is_containerd_call(&args("--namespace ns --id c1")));
        assert!(parse(&args("-namespace ns start")).is_err());
    }

    #[test]
    fn paths_are_short_and_distinct_per_containerd() {
        let f = parse(&args("-namespace ns -address /a.sock -id c1 start")).expect("parse");
        let g = parse(&args("-namespace ns -address /b.sock -id c1 start")).expect("parse");
        let none = Path::new("/nonexistent");
        let (p, q) = (Paths::of(&f, none), Paths::of(&g, none));
        assert_ne!(p.socket, q.socket);
        assert!(p.socket.as_os_str().len() < 40);
        assert_eq!(p.socket.with_extension(""), p.runtime_root);
        assert_eq!(p.group, None);
    }

    #[test]
    fn tasks_of_one_group_share_a_shim() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bundle = |name: &str, annotations: serde_json::Value| {
            let b = dir.path().join(name);
            std::fs::create_dir(&b).expect("bundle");
            std::fs::write(b.join("config.json"), serde_json::json!({ "annotations": annotations }).to_string())
                .expect("config.json");
            b
        };
        let pod = bundle("a", serde_json::json!({"io.kubernetes.cri.sandbox-id": "pod1"}));
        let pod_too = bundle("b", serde_json::json!({"io.kubernetes.cri.sandbox-id": "pod1"}));
        let grouped =
            bundle("c", serde_json::json!({"io.containerd.runc.v2.group": "g", "io.kubernetes.cri.sandbox-id": "x"}));
        let empty = bundle("d", serde_json::json!({"io.kubernetes.cri.sandbox-id": ""}));
        let f = |id: &str| parse(&args(&format!("-namespace ns -address /a.sock -id {id} start"))).expect("parse");
        let (p, q) = (Paths::of(&f("c1"), &pod), Paths::of(&f("c2"), &pod_too));
        assert_eq!(p.socket, q.socket);
        assert_eq!(p.group.as_deref(), Some("pod1"));
        assert_eq!(Paths::of(&f("c3"), &grouped).group.as_deref(), Some("g"));
        let alone = Paths::of(&f("c4"), &empty);
        assert_eq!(alone.group, None);
        assert_ne!(alone.socket, p.socket);
    }
}
