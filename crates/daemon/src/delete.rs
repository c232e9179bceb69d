//! Delete (SPEC B8, B9): allowed once the container has stopped (or, with
//! force, after killing it), and not while another container shares its
//! network namespace. Teardown releases newest-first — runtime container,
//! shim, socket, rootfs snapshot, network attachment, bundle, cgroup, logs
//! — and the record goes last, so a failed delete can simply be retried. A
//! container whose shim is gone is cleaned up by `berth-shim --cleanup`
//! instead.

use std::time::Duration;

use berth_model::{Code, ContainerId, ExitStatus, Namespace, Op, RestartPolicy, State};
use berth_store::{ContainerRecord, Write};

use crate::error::{Error, Result};
use crate::events::{Kind, event};
use crate::manager::{Entry, Manager, lock};
use crate::shim;

/// How long delete waits for a killed container to finish tearing down.
const TEARDOWN_WAIT: Duration = Duration::from_secs(30);

/// Removes a file or directory tree; one that is already gone is fine.
pub(crate) fn remove_path(path: &std::path::Path) -> Result<()> {
    let r = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(format!("remove {}", path.display()), e)),
        _ => Ok(()),
    }
}

/// berth-shim's socket and its terminal/console sockets (`<stem>.*`),
/// which a shim that died could not remove itself. Only in berth's own
/// socket dir (`<state>/shims`): a containerd shim's socket is wherever the
/// shim said, so it is left to that shim and to its `delete` (shim_v2.rs).
pub(crate) fn remove_shim_sockets(socket: &std::path::Path) -> Result<()> {
    if !in_shims_dir(socket) {
        return Ok(());
    }
    remove_socket_family(socket)
}

/// berth-shim's own socket, after a delete the shim carried out: it took
/// its terminal sockets down with the processes, so the shared socket
/// directory (one entry per container) is not listed for them.
fn remove_shim_socket(socket: &std::path::Path) -> Result<()> {
    if !in_shims_dir(socket) {
        return Ok(());
    }
    remove_path(socket)
}

fn in_shims_dir(socket: &std::path::Path) -> bool {
    socket.parent().and_then(|d| d.file_name()) == Some(std::ffi::OsStr::new("shims"))
}

/// A shim's socket and the terminal/console sockets named after it.
pub(crate) fn remove_socket_family(socket: &std::path::Path) -> Result<()> {
    remove_path(socket)?;
    let (Some(dir), Some(stem)) = (socket.parent(), socket.file_stem()) else { return Ok(()) };
    let prefix = format!("{}.", stem.to_string_lossy());
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            remove_path(&entry.path())?;
        }
    }
    Ok(())
}

async fn wait_exit(entry: &Entry, id: &ContainerId) -> Result<()> {
    let mut rx = entry.exit.subscribe();
    match tokio::time::timeout(TEARDOWN_WAIT, rx.wait_for(Option::is_some)).await {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::DeadlineExceeded(format!("container {id} did not exit within {TEARDOWN_WAIT:?}"))),
    }
}

impl Manager {
    pub async fn delete(&self, ns: &Namespace, id: &ContainerId, force: bool) -> Result<ExitStatus> {
        self.delete_created_at(ns, id, force, None).await
    }

    /// Deletes the container — only the one created at `created_at_ns` when
    /// that is given (an auto-removal must not take a newer container that
    /// reuses the id): another one is NotFound.
    pub(crate) async fn delete_created_at(
        &self,
        ns: &Namespace,
        id: &ContainerId,
        force: bool,
        created_at_ns: Option<u64>,
    ) -> Result<ExitStatus> {
        self.get(ns, id)?;
        let _op = self.lock_op(ns, id).await;
        // A restart may have replaced the entry while we waited.
        let entry = self.entry(ns, id).ok();
        let rec = self.get(ns, id)?;
        if created_at_ns.is_some_and(|at| at != rec.created_at_ns) {
            return Err(Error::NotFound(format!("{id} (created at {})", rec.created_at_ns)));
        }
        self.check_no_joiners(&rec)?;
        // An unknown container may still have processes: it needs force too.
        let live = matches!(rec.state, State::Created | State::Running | State::Paused | State::Unknown);
        if live && !force {
            rec.state.apply(Op::Delete)?;
        }
        // No restart policy brings back what is being removed, even if this
        // delete fails half way. Without a policy nothing would: no commit.
        if rec.restart_policy != RestartPolicy::No {
            self.mark_stopped_by_user(ns, id)?;
        }
        let t = std::time::Instant::now();
        let by_shim = match &entry {
            Some(e) => {
                // A created container's runtime delete kills it too, but a
                // shim of its own (a containerd shim is always one) is
                // killed first: its exit monitor asks Wait only once the
                // init is gone, and must find the task. A sandbox's shim
                // deletes its members itself.
                let kill = live && (rec.state != State::Created || !e.shim.shared);
                teardown_with_shim(e, id, kill).await?
            }
            None => false,
        };
        if !by_shim {
            let status = self.teardown_without_shim(&rec).await?;
            // Waiters on the lost shim get the exit too.
            if let Some(e) = &entry {
                e.exit.send_replace(Some(status));
            }
        }
        // Execs whose shim went away with the container.
        self.report_pending_execs(ns, id, &rec.bundle)?;
        match by_shim {
            true => remove_shim_socket(&rec.shim.socket)?,
            false => remove_shim_sockets(&rec.shim.socket)?,
        }
        let t = self.phases.end("delete.runtime", t);
        // The runtime container is gone: its rootfs snapshot goes, before
        // the bundle that holds its mount point.
        if !rec.image.is_empty() {
            self.images.release_rootfs(&crate::images::snapshot_key(ns, id), &rec.rootfs)?;
        }
        if rec.network.is_some() {
            self.detach_network(ns, id).await?;
        }
        let t = self.phases.end("delete.rootfs+network", t);
        remove_path(&rec.bundle)?;
        self.cgroups.remove(&rec.cgroup).map_err(|e| Error::io(format!("remove cgroup {}", rec.cgroup), e))?;
        // berth's own log directory (a CRI log file is kubelet's to remove).
        remove_path(&self.cfg.log_dir(ns, id))?;
        let t = self.phases.end("delete.files", t);
        let rec = self.get(ns, id)?;
        let deleted = event(Kind::Delete, ns, id, "", rec.pid, rec.exit);
        self.write(Write { remove: Some((ns, id)), event: Some(deleted), ..Default::default() })?;
        self.phases.end("delete.record", t);
        let key = (ns.clone(), id.clone());
        self.remove_entry(&key);
        self.forget_op(&key);
        self.remove_namespace_if_unused(ns);
        Ok(rec.exit.unwrap_or(ExitStatus::unknown(0)))
    }

    /// Once the last container of `ns` is gone, its namespace-level
    /// directories (logs, bundles, runtime state) and its cgroup in every
    /// hierarchy go too. Only empty ones, by `rmdir`, which fails for
    /// anything in use. Holding `creating` keeps a create in `ns` from
    /// starting meanwhile; a later one makes them again (`create_dir_all`,
    /// the runtime root, the runtime's cgroup path). Failures only cost an
    /// empty directory, so they are logged, not returned.
    pub(crate) fn remove_namespace_if_unused(&self, ns: &Namespace) {
        let creating = lock(&self.creating);
        if creating.iter().any(|(n, _)| n == ns) {
            return;
        }
        // A sandbox's shim keeps the namespace's runtime state directory.
        let sandboxes = self.store.list_sandboxes(Some(ns)).map(|s| !s.is_empty());
        match self.store.any_in(ns).and_then(|c| sandboxes.map(|s| c || s)) {
            Ok(false) => {}
            Ok(true) => return,
            Err(e) => return tracing::warn!(%ns, "namespace cleanup: {e}"),
        }
        for dir in self.cfg.namespace_dirs(ns) {
            match std::fs::remove_dir(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound || berth_cgroups::in_use(&e) => {}
                Err(e) => tracing::warn!(%ns, "remove {}: {e}", dir.display()),
                Ok(()) => tracing::debug!(%ns, "removed {}", dir.display()),
            }
        }
        let cgroup = self.cfg.namespace_cgroup(ns);
        if let Err(e) = self.cgroups.remove_if_empty(&cgroup) {
            tracing::warn!(%ns, "remove cgroup {cgroup}: {e}");
        }
        drop(creating);
    }

    /// At startup: the namespace directories and cgroups that no container
    /// uses any more (left by a berthd that stopped between a delete and
    /// its cleanup, or by an older berthd). Namespaces are found by their
    /// directories only: children of the cgroup parent may not be ours.
    pub fn remove_unused_namespaces(&self) {
        for ns in self.cfg.namespaces_on_disk() {
            self.remove_namespace_if_unused(&ns);
        }
    }

    /// The shim is gone: `berth-shim --cleanup` kills what is left and
    /// deletes the runtime state; the exit the shim recorded (or "unknown
    /// exit", 255) is recorded and published once (SPEC B19).
    pub(crate) async fn teardown_without_shim(&self, rec: &ContainerRecord) -> Result<ExitStatus> {
        let (ns, id) = (&rec.namespace, &rec.id);
        let args = self.shim_args(ns, id, &rec.runtime);
        let recorded = shim::cleanup(&args, &rec.bundle).await?;
        // A shim still alive here is one given up on (unreachable): it must
        // not outlive its container (SPEC B10).
        if args.matches(rec.shim.pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(rec.shim.pid as i32), nix::sys::signal::SIGKILL);
        }
        self.report_pending_execs(ns, id, &rec.bundle)?;
        let status = match rec.exit {
            Some(exit) => exit,
            None => self.record_exit(ns, id, recorded.unwrap_or(ExitStatus::unknown(crate::now_ns())))?,
        };
        // The cgroup is empty now; whatever keeps it (a zombie not yet
        // reaped) is retried by `rm`. The bundle stays for a restart policy.
        if let Err(e) = self.cgroups.remove(&rec.cgroup) {
            tracing::info!(%ns, %id, "cgroup {} stays until rm: {e}", rec.cgroup);
        }
        Ok(status)
    }
}

/// Tears the container down through its shim: kill (if `kill`), runtime
/// delete, shim exit. Returns false if the shim turned out to be gone.
pub(crate) async fn teardown_with_shim(e: &Entry, id: &ContainerId, kill: bool) -> Result<bool> {
    // Unreachable is not enough: only a shim whose process is gone is
    // treated as dead (a slow one must not be cleaned up under its feet).
    let gone = |err: &Error| err.code() == Code::Unavailable && e.shim.is_gone();
    if kill {
        match e.shim.kill(id, "", libc::SIGKILL as u32, true).await {
            Err(err) if gone(&err) => return Ok(false),
            Err(err) if err.code() != Code::NotFound => return Err(err),
            _ => wait_exit(e, id).await?,
        }
    }
    match e.shim.delete(id, "").await {
        Ok(_) => wait_exit(e, id).await?,
        Err(err) if gone(&err) => return Ok(false),
        // Already deleted by an earlier, interrupted attempt.
        Err(err) if err.code() == Code::NotFound => {}
        Err(err) => return Err(err),
    }
    if e.shim.is_containerd_shim() {
        let _ = e.shim.shutdown(id).await;
    }
    // A sandbox's shim serves on; a container's own exits after the delete.
    if !e.shim.shared {
        e.shim.reap(Duration::from_secs(5)).await;
    }
    Ok(true)
}
