//! Startup guards: berthd refuses to start where it would take over or
//! damage what is not its own. It holds an exclusive lock on `--root` and on
//! `--state` for its whole life; it binds `--socket` only if nothing answers
//! there and never deletes anything at that path that is not a socket (and,
//! on exit, only the socket it bound itself); and it never starts on a
//! damaged metadata store, nor on an empty one while `--state` still holds
//! bundles or live shims of the containers a lost store owned (SPEC B19).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_store::{Store, StoreError};

use crate::config::Config;

/// The file locked under `--root` and under `--state`.
pub const LOCK_FILE: &str = "berthd.lock";
/// How long a process at the socket path may take to accept a connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How many leftover containers an error names before "…".
const NAMED: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(
        "another berthd{holder} holds the lock {}: refusing to share its --root/--state (stop that daemon, or give this one its own --root and --state)",
        path.display()
    )]
    Locked { path: PathBuf, holder: String },
    #[error("lock {}: {source}", path.display())]
    Lock { path: PathBuf, source: std::io::Error },
    #[error(
        "another process answers on the socket {}: refusing to take it over (stop that daemon, or pass another --socket)",
        path.display()
    )]
    SocketInUse { path: PathBuf },
    #[error(
        "{} exists and is not a socket: refusing to replace it (move it away, or pass another --socket)",
        path.display()
    )]
    NotASocket { path: PathBuf },
    #[error("socket {}: {source}", path.display())]
    Socket { path: PathBuf, source: std::io::Error },
    #[error("{source}; berthd will not start on it: {steps}")]
    Damaged { source: StoreError, steps: String },
    #[error(
        "refusing to start: the metadata store {} holds no containers, but {leftovers} — starting empty would orphan them: {steps}",
        path.display()
    )]
    LostStore { path: PathBuf, leftovers: String, steps: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Exclusive locks on berthd's directories, released when dropped (or
/// when the process dies, however it dies).
pub struct Locks {
    _files: Vec<File>,
}

/// Takes an exclusive, non-blocking lock on `LOCK_FILE` in each of `dirs`
/// (once per directory, however it is spelled) and writes our pid in it.
pub fn lock_dirs(dirs: &[&Path]) -> Result<Locks, GuardError> {
    let mut seen = Vec::new();
    let mut files = Vec::new();
    for dir in dirs {
        let dir = std::fs::canonicalize(dir).map_err(|source| GuardError::Lock { path: dir.to_path_buf(), source })?;
        if seen.contains(&dir) {
            continue;
        }
        files.push(lock(&dir.join(LOCK_FILE))?);
        seen.push(dir);
    }
    Ok(Locks { _files: files })
}

fn lock(path: &Path) -> Result<File, GuardError> {
    let err = |source| GuardError::Lock { path: path.to_path_buf(), source };
    // std opens with O_CLOEXEC: no shim or helper inherits the lock.
    // No symlink is followed: a planted link must not make us truncate
    // another file.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(err)?;
    if !file.metadata().map_err(err)?.is_file() {
        return Err(err(std::io::Error::other("not a regular file")));
    }
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            let holder = if pid.is_empty() { String::new() } else { format!(" (pid {pid})") };
            return Err(GuardError::Locked { path: path.to_path_buf(), holder });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
    }
    file.set_len(0).map_err(err)?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes()).map_err(err)?;
    Ok(file)
}

/// What is at the socket path now.
enum AtPath {
    Nothing,
    /// A socket nobody accepts connections on (a daemon that died).
    StaleSocket,
}

/// Refuses a socket path that is not a socket, or that some live process
/// answers on.
pub async fn check_socket(path: &Path) -> Result<(), GuardError> {
    probe(path).await.map(drop)
}

async fn probe(path: &Path) -> Result<AtPath, GuardError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(AtPath::Nothing),
        Err(source) => return Err(GuardError::Socket { path: path.to_path_buf(), source }),
    };
    if !meta.file_type().is_socket() {
        return Err(GuardError::NotASocket { path: path.to_path_buf() });
    }
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::UnixStream::connect(path)).await {
        Err(_) | Ok(Ok(_)) => Err(GuardError::SocketInUse { path: path.to_path_buf() }),
        Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => Ok(AtPath::StaleSocket),
        Ok(Err(e)) if e.kind() == ErrorKind::NotFound => Ok(AtPath::Nothing),
        // A full backlog: someone is there.
        Ok(Err(e)) if e.kind() == ErrorKind::WouldBlock => Err(GuardError::SocketInUse { path: path.to_path_buf() }),
        Ok(Err(source)) => Err(GuardError::Socket { path: path.to_path_buf(), source }),
    }
}

/// The socket berthd bound: removed on exit only if it is still this one.
pub struct BoundSocket {
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// Keeps the socket's inode alive until [`BoundSocket::remove`], so no
    /// later socket at the path can reuse its number.
    _keep: OwnedFd,
    /// The lock on `<socket>.lock`.
    _lock: File,
}

/// Binds the API socket (mode 0600), replacing only a stale socket. A lock
/// on `<socket>.lock`, held for berthd's life, keeps two daemons starting
/// at once (with different roots) from both taking a stale socket.
pub async fn bind_socket(path: &Path) -> Result<(tokio::net::UnixListener, BoundSocket), GuardError> {
    let err = |source| GuardError::Socket { path: path.to_path_buf(), source };
    if std::fs::symlink_metadata(path).is_ok_and(|m| !m.file_type().is_socket()) {
        return Err(GuardError::NotASocket { path: path.to_path_buf() });
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let socket_lock = lock(Path::new(&lock_path))?;
    if let AtPath::StaleSocket = probe(path).await? {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(err(e)),
            _ => {}
        }
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    let meta = std::fs::symlink_metadata(path).map_err(err)?;
    let keep = listener.as_fd().try_clone_to_owned().map_err(err)?;
    let bound =
        BoundSocket { path: path.to_path_buf(), dev: meta.dev(), ino: meta.ino(), _keep: keep, _lock: socket_lock };
    Ok((listener, bound))
}

impl BoundSocket {
    /// Removes the socket if the path still names the one we bound (a
    /// daemon started after us may have replaced it).
    pub fn remove(self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == (self.dev, self.ino));
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(socket = %self.path.display(), "cannot remove the socket: {e}");
        }
    }
}

/// What containers of a lost store left under `--state`: how recovery
/// finds them too (bundles by directory, shims by their command line).
#[derive(Debug, Default)]
struct Leftovers {
    /// `namespace/id` of every bundle directory.
    bundles: Vec<String>,
    /// Pids of live berth-shim processes whose runtime root is under `--state`.
    shims: Vec<u32>,
}

impl Leftovers {
    fn find(cfg: &Config) -> Leftovers {
        let entries = |p: PathBuf| std::fs::read_dir(p).into_iter().flatten().flatten();
        let mut bundles: Vec<String> = entries(cfg.state.join("bundles"))
            .flat_map(|ns| {
                let name = ns.file_name().to_string_lossy().into_owned();
                entries(ns.path()).map(move |id| format!("{name}/{}", id.file_name().to_string_lossy()))
            })
            .collect();
        bundles.sort();
        let mut shims: Vec<u32> = entries(PathBuf::from("/proc"))
            .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
            .filter(|pid| cfg.is_own_shim(&crate::control::cmdline(*pid)))
            .collect();
        shims.sort();
        Leftovers { bundles, shims }
    }

    fn is_empty(&self) -> bool {
        self.bundles.is_empty() && self.shims.is_empty()
    }

    /// "STATE still holds 2 bundle(s) (default/a, default/b) and 1 live
    /// shim(s) (pids 7)".
    fn describe(&self, cfg: &Config) -> String {
        let mut named: Vec<&str> = self.bundles.iter().take(NAMED).map(String::as_str).collect();
        if self.bundles.len() > NAMED {
            named.push("…");
        }
        let pids: Vec<String> = self.shims.iter().map(u32::to_string).collect();
        let list = |items: &[&str]| if items.is_empty() { String::new() } else { format!(" ({})", items.join(", ")) };
        format!(
            "{} still holds {} bundle(s){} and {} live shim(s){}",
            cfg.state.display(),
            self.bundles.len(),
            list(&named),
            self.shims.len(),
            if pids.is_empty() { String::new() } else { format!(" (pids {})", pids.join(" ")) },
        )
    }

    /// How to end the leftovers by hand.
    fn cleanup_steps(&self, cfg: &Config) -> String {
        let kill = if self.shims.is_empty() {
            String::new()
        } else {
            let pids: Vec<String> = self.shims.iter().map(u32::to_string).collect();
            format!("kill -9 {}, ", pids.join(" "))
        };
        format!(
            "{kill}kill the processes left in the cgroups under {} and remove those cgroups, then remove {s}/bundles, {s}/shims and {s}/runtime",
            cfg.cgroup_parent,
            s = cfg.state.display(),
        )
    }
}

/// Opens the metadata store, refusing a damaged one and an empty one over
/// leftovers of containers, each with the steps to recover.
pub fn open_store(cfg: &Config) -> Result<Store, GuardError> {
    let path = cfg.db_path();
    let aside = format!("mv {p} {p}.damaged", p = path.display());
    match Store::open(&path) {
        Err(source @ StoreError::Damaged { .. }) => {
            let left = Leftovers::find(cfg);
            let steps = if left.is_empty() {
                format!("restore it from a backup, or move it aside ({aside}) to start with an empty store")
            } else {
                format!(
                    "restore it from a backup; or move it aside ({aside}) and, since {}, end those containers ({}) before starting berthd (see docs/operations.md)",
                    left.describe(cfg),
                    left.cleanup_steps(cfg)
                )
            };
            Err(GuardError::Damaged { source, steps })
        }
        Err(e) => Err(e.into()),
        Ok(store) => {
            if store.is_empty()? {
                let left = Leftovers::find(cfg);
                if !left.is_empty() {
                    let steps = format!(
                        "if {} was lost or replaced, restore it from a backup; otherwise end those containers ({}) and start berthd again (see docs/operations.md)",
                        path.display(),
                        left.cleanup_steps(cfg)
                    );
                    return Err(GuardError::LostStore { path, leftovers: left.describe(cfg), steps });
                }
            }
            Ok(store)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("berth-guard-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_second_lock_on_the_same_dir_is_refused_and_names_the_holder() {
        let dir = Scratch::new("lock");
        let held = lock_dirs(&[dir.path(), dir.path()]).expect("one lock per directory, however often named");
        let Err(GuardError::Locked { holder, .. }) = lock_dirs(&[dir.path()]) else { panic!("second lock taken") };
        assert_eq!(holder, format!(" (pid {})", std::process::id()));
        drop(held);
        lock_dirs(&[dir.path()]).expect("free again once released");
    }

    #[test]
    fn a_planted_lock_symlink_is_not_followed() {
        let dir = Scratch::new("symlink");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(LOCK_FILE)).unwrap();
        assert!(lock_dirs(&[dir.path()]).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    fn config(dir: &Path) -> Config {
        Config {
            root: dir.join("root"),
            state: dir.join("state"),
            socket: dir.join("s.sock"),
            cgroup_parent: "/berth-guard-test".into(),
            shim_binary: "/nonexistent/berth-shim".into(),
            start_timeout: Duration::from_secs(1),
            default_runtime: "embedded".into(),
            criu: "criu".into(),
            log_rotation: berth_model::LogRotation::DEFAULT,
            vm: crate::vm::VmConfig { assets: "/nonexistent".into(), accel: berth_vm::Accel::Tcg, note: None },
        }
    }

    #[test]
    fn an_empty_store_over_bundles_is_refused_and_a_damaged_one_named() {
        let dir = Scratch::new("store");
        let cfg = config(dir.path());
        std::fs::create_dir_all(&cfg.root).unwrap();
        std::fs::create_dir_all(cfg.state.join("bundles/default")).unwrap();
        // An empty namespace directory is no leftover.
        drop(open_store(&cfg).expect("nothing left: an empty store is fine"));
        std::fs::create_dir_all(cfg.state.join("bundles/default/web")).unwrap();
        let Err(e @ GuardError::LostStore { .. }) = open_store(&cfg) else { panic!("started empty over a bundle") };
        assert!(e.to_string().contains("1 bundle(s) (default/web) and 0 live shim(s)"), "{e}");

        std::fs::write(cfg.db_path(), b"").unwrap();
        let Err(e @ GuardError::Damaged { .. }) = open_store(&cfg) else { panic!("opened an empty file") };
        let mv = format!("mv {0} {0}.damaged", cfg.db_path().display());
        assert!(e.to_string().contains(&mv) && e.to_string().contains("default/web"), "{e}");
    }

    #[tokio::test]
    async fn only_stale_sockets_are_replaced_and_only_ours_removed() {
        let dir = Scratch::new("socket");
        let file = dir.path().join("file");
        std::fs::write(&file, "keep").unwrap();
        assert!(matches!(bind_socket(&file).await, Err(GuardError::NotASocket { .. })));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");

        // A socket nobody listens on any more is replaced.
        let sock = dir.path().join("s.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let (_live, ours) = bind_socket(&sock).await.unwrap();
        // A live one is not: its daemon holds the socket's lock, and answers.
        assert!(matches!(bind_socket(&sock).await, Err(GuardError::Locked { .. })));
        assert!(matches!(check_socket(&sock).await, Err(GuardError::SocketInUse { .. })));

        // Someone else's socket now at the path survives our exit.
        std::fs::remove_file(&sock).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        ours.remove();
        assert!(sock.exists(), "a socket bound after ours must stay");

        let other = dir.path().join("o.sock");
        let (_l, bound) = bind_socket(&other).await.unwrap();
        bound.remove();
        assert!(!other.exists(), "our own socket is removed");
    }
}
