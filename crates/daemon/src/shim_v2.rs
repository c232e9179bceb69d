//! berthd driving containerd v2 shims that nobody here wrote (SPEC B23,
//! B24), e.g. Debian's `containerd-shim-runc-v2`: runtime names resolved to
//! shim binaries (cached), the `start` and `delete` subcommands of the
//! shim protocol, the runc options and stdio such a shim expects, and the
//! events endpoint shims publish to (`TTRPC_ADDRESS`).
//!
//! Exits still come from the Task API's `Wait` (and from recovery), and OOM
//! kills from berthd's own cgroup watcher, exactly as with berth-shim: one
//! source each, so a forwarded TaskExit can never make a second event.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_model::{Code, ExitStatus, Runtime};
use containerd_shim_protos::protobuf::CodedOutputStream;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Events, create_events};
use containerd_shim_protos::ttrpc::{self, asynchronous::Server};

use crate::error::{Error, Result};
use crate::shim::ShimArgs;

/// How long a shim's `start` or `delete` subcommand may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Where containerd's shims (1.5 and later) put their sockets.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// The options type containerd's runc shims decode from CreateTaskRequest.
const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";

/// Finds shim binaries the way containerd does: an absolute path as is,
/// otherwise PATH, then the directory of berthd's own executable; each
/// result is cached for the life of the daemon.
pub struct Resolver {
    cache: Mutex<HashMap<String, PathBuf>>,
    own_dir: Option<PathBuf>,
}

fn executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Resolver {
    pub fn new() -> Resolver {
        let own_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf));
        Resolver { cache: Mutex::new(HashMap::new()), own_dir }
    }

    /// The shim binary of a runtime that names one; `None` for berth-shim's
    /// own runtimes.
    pub fn resolve(&self, runtime: &Runtime) -> Result<Option<PathBuf>> {
        let Runtime::Shim { name, binary } = runtime else { return Ok(None) };
        if let Some(found) = crate::manager::lock(&self.cache).get(binary) {
            return Ok(Some(found.clone()));
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        let candidates = if binary.starts_with('/') {
            vec![PathBuf::from(binary)]
        } else {
            // A relative PATH entry would resolve against the bundle later.
            let dirs = std::env::split_paths(&path).filter(|d| d.is_absolute()).chain(self.own_dir.clone());
            dirs.map(|d| d.join(binary)).collect()
        };
        let found = candidates.into_iter().find(|p| executable(p)).ok_or_else(|| {
            let beside = self.own_dir.as_deref().map(|d| format!(" nor in {}", d.display())).unwrap_or_default();
            Error::FailedPrecondition(format!(
                "runtime {name} is not installed: no executable {binary} on berthd's PATH{beside}"
            ))
        })?;
        crate::manager::lock(&self.cache).insert(binary.clone(), found.clone());
        Ok(Some(found))
    }
}

/// What a containerd v2 shim is told besides its container.
#[derive(Clone, Debug)]
pub struct V2 {
    /// berthd's API socket: the shim's `-address` (it also names the
    /// shim's socket, so two daemons never share one).
    pub address: PathBuf,
    /// The events endpoint (`TTRPC_ADDRESS`).
    pub events: PathBuf,
    /// `-publish-binary`: berthd's own executable.
    pub publish: PathBuf,
    /// berth-logger, which copies the container's output into its log files.
    pub logger: PathBuf,
}

impl V2 {
    fn command(&self, a: &ShimArgs, bundle: &Path, subcommand: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&a.binary);
        cmd.arg("-namespace")
            .arg(a.namespace.as_str())
            .arg("-address")
            .arg(&self.address)
            .arg("-publish-binary")
            .arg(&self.publish)
            .arg("-id")
            .arg(a.id.as_str())
            .arg(subcommand)
            .current_dir(bundle)
            .env("TTRPC_ADDRESS", &self.events)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        crate::nofile::restore_in(&mut cmd);
        cmd
    }

    /// Whether a process with command line `args` is the long-lived shim of
    /// `a` under this daemon: `BINARY -namespace NS -id ID -address A`,
    /// flags parsed as Go's flag package does (a subcommand such as `start`
    /// ends them), the binary compared after resolving symlinks (a Go shim
    /// re-executes `os.Executable()`, the resolved path).
    pub fn matches(&self, a: &ShimArgs, args: &[String]) -> bool {
        let Some((binary, rest)) = args.split_first() else { return false };
        let mut flags = HashMap::new();
        let mut rest = rest.iter();
        while let Some(arg) = rest.next() {
            match arg.strip_prefix('-') {
                None => return false, // a subcommand: `start` or `delete`
                Some(bool_flag) if bool_flag == "debug" || bool_flag.contains('=') => {}
                Some(flag) => drop(flags.insert(flag, rest.next().map(String::as_str).unwrap_or(""))),
            }
        }
        let resolved = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        resolved(Path::new(binary)) == resolved(&a.binary)
            && flags.get("namespace") == Some(&a.namespace.as_str())
            && flags.get("id") == Some(&a.id.as_str())
            && flags.get("address").copied() == self.address.to_str()
    }

    /// Runs the shim's `start` in the bundle and returns the socket it
    /// announced, and whether it speaks Task v3: a plain `unix://` address
    /// (containerd 1.x shims: Task v2) or the bootstrap JSON of containerd
    /// 2.x shims (Task v3).
    pub async fn start(&self, a: &ShimArgs, bundle: &Path) -> Result<(PathBuf, bool)> {
        // The shim sends its own log to `log` in its working directory.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(bundle.join("log"))
            .map_err(|e| Error::io("create the shim's log", e))?;
        let out = run(self.command(a, bundle, "start"), a).await?;
        socket_of(&String::from_utf8_lossy(&out))
    }

    /// Runs the shim's `delete` (cleanup after a dead shim): it kills and
    /// deletes the runtime container. Its answer (a DeleteResponse) always
    /// says 137, "killed now", not an exit anyone saw: the container's exit
    /// is unknown (SPEC B19), so none is returned.
    pub async fn delete(&self, a: &ShimArgs, bundle: &Path) -> Result<Option<ExitStatus>> {
        if !bundle.is_dir() {
            return Ok(None);
        }
        // runc-v2 writes `runtime` when it creates the task; before that
        // there is nothing to delete, and its `delete` fails for want of it.
        if bundle.join("runtime").exists() {
            run(self.command(a, bundle, "delete"), a).await?;
        }
        // A SIGKILLed shim leaves its socket; the next shim of this id
        // (same address) must not find it. Only a socket where containerd's
        // shims keep theirs: the file is the shim's word, not berthd's.
        if let Ok(address) = std::fs::read_to_string(bundle.join("address"))
            && let Ok((socket, _)) = socket_of(&address)
            && socket.parent() == Some(Path::new(SHIM_SOCKET_DIR))
            && std::fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket())
        {
            let _ = std::fs::remove_file(socket);
        }
        Ok(None)
    }

    /// CreateTaskRequest options: a runc shim keeps its runc state under
    /// berth's runtime root instead of containerd's.
    pub fn options(&self, a: &ShimArgs) -> Option<Any> {
        let name = a.binary.file_name()?.to_string_lossy();
        if !name.starts_with("containerd-shim-runc-") {
            return None;
        }
        // The shim adds the namespace to Options.root (field 7) itself.
        let root = a.runtime_root.parent()?;
        let mut value = Vec::new();
        let mut os = CodedOutputStream::vec(&mut value);
        os.write_string(7, &root.to_string_lossy()).ok()?;
        os.flush().ok()?;
        drop(os);
        let mut any = Any::new();
        any.type_url = RUNC_OPTIONS_TYPE.to_string();
        any.value = value;
        Some(any)
    }
}

fn shim_error(message: String) -> Error {
    Error::Shim { code: Code::Internal, message }
}

/// Runs a shim subcommand to its end; its stdout on success.
async fn run(mut cmd: tokio::process::Command, a: &ShimArgs) -> Result<Vec<u8>> {
    let binary = a.binary.display();
    let out = tokio::time::timeout(COMMAND_TIMEOUT, cmd.output())
        .await
        .map_err(|_| Error::DeadlineExceeded(format!("{binary} took longer than {COMMAND_TIMEOUT:?}")))?
        .map_err(|e| Error::io(format!("run {binary}"), e))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let last = msg.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        return Err(shim_error(format!("{binary} failed ({}): {}", out.status, last.trim())));
    }
    Ok(out.stdout)
}

/// The socket path in a shim's announcement, and whether it is a Task v3
/// shim.
fn socket_of(announced: &str) -> Result<(PathBuf, bool)> {
    let s = announced.trim();
    let v3 = s.starts_with('{');
    let address = if v3 {
        let b: serde_json::Value =
            serde_json::from_str(s).map_err(|e| shim_error(format!("shim announced bad bootstrap JSON: {e}")))?;
        let protocol = b["protocol"].as_str().unwrap_or("ttrpc");
        if protocol != "ttrpc" {
            return Err(shim_error(format!("shim speaks {protocol}; berthd speaks ttrpc only")));
        }
        let address = b["address"].as_str().ok_or_else(|| shim_error("shim's bootstrap JSON has no address".into()))?;
        address.to_string()
    } else {
        s.to_string()
    };
    let path = address.strip_prefix("unix://").unwrap_or(&address);
    if !path.starts_with('/') {
        return Err(shim_error(format!("shim announced {address:?}: berthd connects to unix socket paths only")));
    }
    Ok((PathBuf::from(path), v3))
}

/// The endpoint shims publish their events to. It takes them (a shim
/// whose events go nowhere retries and complains) and logs them; see the
/// module docs for why exits and OOM kills are not taken from here.
struct Forwarded;

#[async_trait::async_trait]
impl Events for Forwarded {
    async fn forward(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: ForwardRequest,
    ) -> ttrpc::Result<containerd_shim_protos::protobuf::well_known_types::empty::Empty> {
        if let Some(e) = req.envelope.as_ref() {
            tracing::debug!(namespace = %e.namespace, topic = %e.topic, "shim event");
        }
        Ok(Default::default())
    }
}

/// Serves the events endpoint on `socket` (under berthd's state dir, which
/// berthd's lock makes its own) until the returned server is dropped.
pub async fn serve_events(socket: &Path) -> Result<Server> {
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket)
        .map_err(|e| Error::io(format!("bind {}", socket.display()), e))?;
    listener.set_nonblocking(true).map_err(|e| Error::io("events listener", e))?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(|e| Error::io("events listener", e))?;
    let mut server = Server::new()
        .register_service(create_events(Arc::new(Forwarded)))
        .add_listener(ttrpc::asynchronous::transport::Listener::from(listener));
    server.start().await.map_err(|e| shim_error(format!("events endpoint: {e}")))?;
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements() {
        let plain = socket_of("unix:///run/containerd/s/ab\n").unwrap();
        assert_eq!(plain, (PathBuf::from("/run/containerd/s/ab"), false));
        let json = r#"{"version":3,"address":"unix:///run/x.sock","protocol":"ttrpc"}"#;
        assert_eq!(socket_of(json).unwrap(), (PathBuf::from("/run/x.sock"), true));
        let grpc = r#"{"version":3,"address":"unix:///run/x.sock","protocol":"grpc"}"#;
        assert!(socket_of(grpc).unwrap_err().to_string().contains("ttrpc only"));
        assert!(socket_of("unix://@abstract").is_err());
        assert!(socket_of("{garbage").is_err());
    }

    #[test]
    fn resolution_is_refused_for_a_missing_shim_and_cached_once_found() {
        let r = Resolver::new();
        let missing = Runtime::parse("io.containerd.nosuchshim.v9").unwrap();
        let e = r.resolve(&missing).unwrap_err().to_string();
        assert!(e.contains("containerd-shim-nosuchshim-v9"), "{e}");
        assert_eq!(r.resolve(&Runtime::Builtin("embedded")).unwrap(), None);
        let sh = Runtime::parse("/bin/sh").unwrap();
        assert_eq!(r.resolve(&sh).unwrap(), Some(PathBuf::from("/bin/sh")));
        assert!(crate::manager::lock(&r.cache).contains_key("/bin/sh"));
    }

    #[test]
    fn a_shim_is_recognised_by_its_flags_whatever_its_id() {
        let v2 = V2 {
            address: "/run/b.sock".into(),
            events: "/run/e.sock".into(),
            publish: "/usr/bin/berthd".into(),
            logger: "/usr/bin/berth-logger".into(),
        };
        let args_for = |id: &str| ShimArgs {
            sandbox: false,
            pid_init: false,
            extra: Vec::new(),
            binary: "/bin/sh".into(),
            namespace: berth_model::Namespace::new("delete").unwrap(),
            id: berth_model::ContainerId::new(id).unwrap(),
            runtime: "io.containerd.runc.v2".into(),
            runtime_root: "/tmp/r/default".into(),
            v2: None,
        };
        let cmd = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let a = args_for("start");
        // Names that are also subcommands are values, not subcommands.
        assert!(v2.matches(&a, &cmd("/bin/sh -namespace delete -id start -address /run/b.sock")));
        assert!(v2.matches(&a, &cmd("/bin/sh -debug -namespace delete -id start -address /run/b.sock")));
        // The resolved binary counts (`/usr/bin/sh` on a merged-/usr host).
        let resolved = std::fs::canonicalize("/bin/sh").unwrap();
        let line = format!("{} -namespace delete -id start -address /run/b.sock", resolved.display());
        assert!(v2.matches(&a, &cmd(&line)));
        for other in [
            "/bin/sh -namespace delete -id start -address /run/b.sock start",
            "/bin/sh -namespace delete -id other -address /run/b.sock",
            "/bin/sh -namespace delete -id start -address /run/other.sock",
            "/bin/true -namespace delete -id start -address /run/b.sock",
            "/bin/sh -namespace delete -id",
        ] {
            assert!(!v2.matches(&a, &cmd(other)), "{other}");
        }
    }

    #[test]
    fn a_shim_beside_berthd_is_found_when_path_has_none() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("berth-resolver-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let shim = dir.join("containerd-shim-besideberthd-v1");
        std::fs::write(&shim, "#!/bin/sh\n").unwrap();
        let r = Resolver { cache: Mutex::new(HashMap::new()), own_dir: Some(dir.clone()) };
        let runtime = Runtime::parse("io.containerd.besideberthd.v1").unwrap();
        // Not executable: not a shim.
        assert!(r.resolve(&runtime).is_err());
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(r.resolve(&runtime).unwrap(), Some(shim.clone()));
        // Cached: found again even once it is gone.
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(r.resolve(&runtime).unwrap(), Some(shim));
    }
}
