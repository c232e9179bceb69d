//! Create (SPEC B2): validate everything, then allocate in order — intent
//! record, log files, bundle, shim, runtime container (and its cgroup) —
//! undoing every completed step newest-first if a later one fails. A failed
//! create leaves no trace and says which step failed. The intent is
//! committed first and replaced by the record in one transaction, so a
//! berthd that dies in between finds what to release when it starts
//! (SPEC B20, `recovery.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_model::{ContainerId, Namespace, RestartPolicy, Runtime, SandboxId, State};
use berth_store::{ContainerRecord, Intent, ShimInfo, Write};

use crate::error::{Error, Result};
use crate::events::Kind;
use crate::logs::LogFormat;
use crate::manager::{Entry, Key, Manager, crash_point};
use crate::process_io::ProcessIo;
use crate::restore::RestoreFrom;
use crate::shim::{self, ShimClient};
use crate::spec;

const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY: usize = 256;
/// A value may hold a JSON document (CRI keeps a pod's or container's
/// annotations in one label); all labels together stay far below gRPC's
/// 4 MiB message limit.
const MAX_LABEL_VALUE: usize = 64 * 1024;
const MAX_LABELS_BYTES: usize = 512 * 1024;
/// How long reading and checking a create's spec may take.
const SPEC_TIMEOUT: Duration = Duration::from_secs(10);

pub struct CreateParams {
    pub namespace: Namespace,
    pub id: ContainerId,
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub runtime: String,
    pub labels: BTreeMap<String, String>,
    /// Start right after a successful create.
    pub start: bool,
    pub limits: berth_cgroups::Limits,
    /// Cgroup v2 files and hugepage limits, set at create only.
    pub create_only: crate::resources::CreateOnly,
    /// Give init a terminal (attach with `Attach`), of this size.
    pub tty: bool,
    pub tty_size: Option<(u32, u32)>,
    /// Interactive: stdin through a FIFO without tty (see `needs_stdin_fifo`).
    pub stdin: bool,
    pub restart: RestartPolicy,
    pub security: crate::confine::Security,
    /// Remove the container once its exit is recorded.
    pub auto_remove: bool,
    /// An image reference to run (then `path` is empty).
    pub image: String,
    /// Replaces the image's entrypoint (and drops its cmd).
    pub entrypoint: Option<String>,
    /// Replaces the image's User: USER[:GROUP], names resolved through the
    /// image's /etc/passwd and /etc/group (`berth_images::resolve_user`).
    pub user: String,
    /// Volumes, tmpfs mounts, read-only root, host name (`mounts.rs`).
    pub run: crate::mounts::RunOptions,
    /// Network mode, published ports, resolver options (`network.rs`).
    pub net: crate::network::NetOptions,
    /// The sandbox to place the container in (`sandbox.rs`).
    pub sandbox: Option<SandboxId>,
    /// A checkpoint to restore instead of starting afresh (`checkpoint.rs`).
    pub restore: Option<RestoreFrom>,
    /// Init's output in the CRI log format in this file, not berth's logs.
    pub log_path: Option<PathBuf>,
    /// The bound of berth's log (unset parts: berthd's).
    pub log_bound: (Option<u64>, Option<u32>),
    /// Supplementary groups on top of the image user's.
    pub groups: Vec<u32>,
    /// Namespaced kernel parameters (`sysctl.rs`).
    pub sysctls: BTreeMap<String, String>,
    /// Empty: berthd's layout; else the cgroup that holds the container's.
    pub cgroup_parent: String,
}

/// A create from an image: what it resolved to.
pub(crate) struct FromImage {
    pub name: String,
    pub chain_id: String,
    /// Named volumes and where they are mounted: pre-filled from the
    /// image when empty (`volume_fill.rs`).
    pub volumes: Vec<(String, PathBuf)>,
    /// A restored container's changes to the image (an OCI layer).
    pub diff: Option<PathBuf>,
}

/// Completed allocation steps, released newest-first on failure.
pub(crate) enum Step {
    Intent,
    Logs(PathBuf),
    Bundle(PathBuf),
    Cgroup(String),
    /// The container's active snapshot, mounted at `target`.
    Snapshot {
        key: String,
        target: PathBuf,
    },
    Shim {
        client: ShimClient,
        runtime: String,
        bundle: PathBuf,
    },
    Task(ShimClient),
    /// The container joined its sandbox's shim: if the runtime create did
    /// not complete, what it started is cleaned up (the shim stays).
    Joined {
        client: ShimClient,
        runtime: String,
        bundle: PathBuf,
    },
    /// A named volume this create made (removed unless used by then).
    Volume(String),
    /// A named volume this create pre-filled from the image (emptied
    /// again unless used by then).
    VolumeFill(String),
    /// The network attachment (namespace, CNI ADD, resolver files).
    Network,
}

/// Where a container's task goes: a shim of its own on `socket`, or its
/// sandbox's shim.
#[derive(Clone, Copy)]
pub(crate) struct Placement<'a> {
    pub socket: &'a std::path::Path,
    pub sandbox: Option<&'a SandboxId>,
    /// Restore the task from this checkpoint instead of creating it.
    pub restore: Option<&'a berth_shim::Checkpoint>,
    /// The runtime makes the network namespace (`--network none`, not
    /// pinned): its loopback is brought up before the start.
    pub loopback: bool,
}

pub(crate) fn check_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(Error::InvalidArgument(format!("at most {MAX_LABELS} labels are allowed")));
    }
    if labels.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > MAX_LABELS_BYTES {
        return Err(Error::InvalidArgument(format!("labels may hold at most {MAX_LABELS_BYTES} bytes in all")));
    }
    for (k, v) in labels {
        spec::no_nul("a label", k)?;
        spec::no_nul("a label", v)?;
        if k.is_empty() || k.len() > MAX_LABEL_KEY || v.len() > MAX_LABEL_VALUE {
            return Err(Error::InvalidArgument(format!(
                "label {:?} must have a key of 1..={MAX_LABEL_KEY} bytes and a value of at most {MAX_LABEL_VALUE}",
                k.chars().take(32).collect::<String>()
            )));
        }
    }
    Ok(())
}

/// A runtime that runs an external binary must find it on PATH (berthd's
/// and its shims' PATH are the same).
fn check_installed(runtime: &str) -> Result<()> {
    if runtime == "embedded" {
        return Ok(());
    }
    if berth_vm::on_path(runtime).is_some() {
        return Ok(());
    }
    Err(Error::FailedPrecondition(format!("runtime {runtime} is not installed (no {runtime} binary on berthd's PATH)")))
}

/// A FIFO for interactive stdin.
pub(crate) fn make_fifo(path: &std::path::Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| Error::io(format!("mkfifo {}", path.display()), e.into()))
}

fn mkdir(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))
}

/// Awaits blocking work on a user-supplied path (it may sit on a hung
/// filesystem) for at most [`SPEC_TIMEOUT`].
pub(crate) async fn with_deadline<T>(what: &str, doing: &str, work: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    match tokio::time::timeout(SPEC_TIMEOUT, work).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => Err(Error::io(what, std::io::Error::other(e))),
        Err(_) => Err(Error::DeadlineExceeded(format!("{doing} took longer than {SPEC_TIMEOUT:?}"))),
    }
}

impl Manager {
    /// An OCI runtime's binary or a containerd shim (and berth-logger, which
    /// copies its output) must be installed: checked before anything is made.
    pub(crate) fn check_runtime(&self, runtime: &Runtime) -> Result<()> {
        match runtime {
            Runtime::Builtin(berth_model::VM_RUNTIME) => self.cfg.vm.check_installed(),
            Runtime::Builtin(name) => check_installed(name),
            Runtime::Shim { .. } => {
                self.shims.resolve(runtime)?;
                let logger = self.cfg.v2().logger;
                if !logger.is_file() {
                    let msg = format!("{} is missing: it copies the output of containerd shims", logger.display());
                    return Err(Error::FailedPrecondition(msg));
                }
                Ok(())
            }
        }
    }

    pub async fn create(self: &Arc<Self>, mut p: CreateParams) -> Result<ContainerRecord> {
        let t0 = std::time::Instant::now();
        // A container in a sandbox runs with the sandbox's runtime; the
        // sandbox cannot be removed while the create is in flight.
        let joining = match &p.sandbox {
            Some(sandbox) => Some(self.join_sandbox(&p.namespace, sandbox, &p.runtime).await?),
            None => None,
        };
        if let Some(j) = &joining {
            p.runtime = j.record.runtime.clone();
        }
        let named = if p.runtime.is_empty() { &self.cfg.default_runtime } else { &p.runtime };
        let parsed = Runtime::parse(named)?;
        self.check_runtime(&parsed)?;
        let runtime = parsed.name();
        crate::vm::check_create(runtime, &mut p)?;
        check_labels(&p.labels)?;
        self.log_format(&p, &parsed)?;
        if p.auto_remove && p.restart != RestartPolicy::No {
            return Err(Error::InvalidArgument("auto-remove cannot be combined with a restart policy".into()));
        }
        let (run, is_bundle) = self.check_run_options(&p).await?;
        let key = (p.namespace.clone(), p.id.clone());
        let Some(_reservation) = self.reserve(key.clone()) else {
            return Err(Error::AlreadyExists(p.id.to_string()));
        };
        if self.store.get(&p.namespace, &p.id)?.is_some() {
            return Err(Error::AlreadyExists(p.id.to_string()));
        }
        let sandbox = joining.as_ref().map(|j| &j.record);
        // Only the embedded runtime's containers get an unpinned `none`:
        // runc's and crun's checkpoints treat a namespace without a path
        // as theirs to dump, and a containerd shim's task pid need not be
        // in the container (network.rs).
        let net = crate::network::NetOptions { pin: p.net.pin || runtime != "embedded", ..p.net.clone() };
        let network = self.plan_network(&p.namespace, &p.id, &net, is_bundle, sandbox)?;
        crate::manager::lock(&self.removed).forget(&p.namespace, &p.id);
        let cgroup =
            crate::resources::container_cgroup(&self.cfg, &self.cgroups, &p.namespace, &p.id, &p.cgroup_parent)?;
        let (mut prepared, mut image) = if let Some(from) = &p.restore {
            self.prepare_restore(&p, from, &cgroup)?
        } else if p.image.is_empty() {
            if p.entrypoint.is_some() {
                return Err(Error::InvalidArgument("an entrypoint applies to an image only".into()));
            }
            if !p.user.is_empty() {
                return Err(Error::InvalidArgument("a user applies to an image only".into()));
            }
            if !p.groups.is_empty() {
                return Err(Error::InvalidArgument("supplementary groups apply to an image only".into()));
            }
            (self.prepare_spec(&p, &cgroup).await?, None)
        } else {
            self.prepare_image_spec(&mut p, &cgroup)?
        };
        // A restored spec is the checkpoint's, as it was.
        if p.restore.is_none() {
            crate::resources::apply_to_spec(&mut prepared.spec, &p.limits, &p.create_only, &self.cgroups)?;
            crate::mounts::apply(&mut prepared.spec, &run, |n| self.volumes.data_dir(n))?;
            // The network whose parameters net.* would set.
            let mode = match (sandbox, p.net.mode.as_str()) {
                (Some(s), _) => s.network.as_ref().map_or("host", |n| n.mode.as_str()),
                (None, "") => self.net.default_mode.as_str(),
                (None, mode) => mode,
            };
            crate::sysctl::apply(&mut prepared.spec, &p.sysctls, is_bundle, mode)?;
            if let Some(sandbox) = sandbox {
                crate::sandbox_ns::join(&mut prepared.spec, &self.cfg, sandbox, &run)?;
            }
        }
        if let Some(image) = image.as_mut() {
            image.volumes = run
                .binds
                .iter()
                .filter_map(|b| match &b.source {
                    crate::mounts::Source::Volume(name) => Some((name.clone(), b.target.clone())),
                    crate::mounts::Source::Host(_) => None,
                })
                .collect();
        }

        let mut done = Vec::new();
        let _hold = self.volumes.hold(&p.run.volume_names());
        let plan = network.as_ref().map(|(plan, _claim)| plan);
        self.phases.end("create.check", t0);
        let sandbox_vm = joining.as_ref().and_then(|j| j.record.vm.clone());
        match self.allocate(&p, runtime, prepared, image, plan, cgroup, sandbox_vm, &mut done).await {
            Ok((rec, client)) => {
                let entry = Arc::new(Entry::new(client, None));
                self.watch(key, entry, &rec, false);
                if p.start {
                    return self.start(&p.namespace, &p.id).await;
                }
                Ok(rec)
            }
            Err(e) => {
                self.release(&p.namespace, &p.id, done).await;
                Err(e)
            }
        }
    }

    /// Checks the run options (`mounts.rs`) off the async workers, with a
    /// deadline (host paths may sit on a hung filesystem); refused for a
    /// bundle, whose config.json is used as written. Also says whether the
    /// path is a bundle.
    async fn check_run_options(&self, p: &CreateParams) -> Result<(crate::mounts::Checked, bool)> {
        if p.path.is_empty() && p.run.is_default() {
            return Ok(Default::default());
        }
        let (path, run) = (p.path.clone(), p.run.clone());
        let work = tokio::task::spawn_blocking(move || {
            let bundle = !path.is_empty() && spec::is_bundle(std::path::Path::new(&path));
            if run.is_default() {
                return Ok((Default::default(), bundle));
            }
            if bundle {
                return Err(Error::InvalidArgument(
                    "volumes, tmpfs, read-only and hostname apply to a root filesystem or an image; a bundle's config.json is used as written"
                        .into(),
                ));
            }
            Ok((crate::mounts::check(&run)?, false))
        });
        with_deadline("check run options", "checking the volumes", work).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn allocate(
        self: &Arc<Self>,
        p: &CreateParams,
        runtime: &str,
        mut prepared: spec::Prepared,
        image: Option<FromImage>,
        network: Option<&crate::network::Plan>,
        cgroup: String,
        sandbox_vm: Option<berth_model::vm::VmInfo>,
        done: &mut Vec<Step>,
    ) -> Result<(ContainerRecord, ShimClient)> {
        let (ns, id) = (&p.namespace, &p.id);
        let t = std::time::Instant::now();
        let volumes = p.run.volume_names();
        let intent = Intent {
            namespace: ns.clone(),
            id: id.clone(),
            runtime: runtime.to_string(),
            created_at_ns: crate::now_ns(),
            new_volumes: volumes.iter().filter(|n| !self.volumes.exists(n)).cloned().collect(),
            sandbox: p.sandbox.clone(),
            cgroup: Some(cgroup.clone()),
        };
        self.write(Write { intent: Some(&intent), ..Default::default() }).map_err(|e| e.at("intent"))?;
        done.push(Step::Intent);
        crash_point("intent");
        let t = self.phases.end("create.intent", t);
        for name in &volumes {
            if self.volumes.ensure(name).map_err(|e| e.at("volumes"))? {
                done.push(Step::Volume(name.clone()));
            }
        }
        if !volumes.is_empty() {
            crash_point("volumes");
        }
        let log = self.log_format(p, &Runtime::parse(runtime)?)?;
        let logs = self.cfg.log_dir(ns, id);
        mkdir(&logs).map_err(|e| e.at("logs"))?;
        done.push(Step::Logs(logs.clone()));
        crash_point("logs");
        let (stdout, stderr) = match &p.log_path {
            Some(file) => {
                // kubelet's directory; it stays with the file (kubelet's).
                if let Some(dir) = file.parent() {
                    mkdir(dir).map_err(|e| e.at("logs"))?;
                }
                (file.clone(), file.clone())
            }
            None => log.files(&logs, ""),
        };
        let mut t = self.phases.end("create.logs", t);

        let bundle = self.cfg.bundle_dir(ns, id);
        mkdir(&bundle).map_err(|e| e.at("bundle"))?;
        done.push(Step::Bundle(bundle.clone()));
        if let Some(image) = &image {
            let key = crate::images::snapshot_key(ns, id);
            let target = prepared.rootfs.clone();
            let diff = image.diff.as_deref();
            self.images.mount_rootfs(&key, &image.chain_id, &target, diff).map_err(|e| e.at("snapshot"))?;
            done.push(Step::Snapshot { key, target });
            crash_point("snapshot");
            for (name, at) in &image.volumes {
                if self.volume_fill(name, &prepared.rootfs, at).await.map_err(|e| e.at("volume fill"))? {
                    done.push(Step::VolumeFill(name.clone()));
                }
            }
            t = self.phases.end("create.snapshot", t);
        }
        let attachment = match network {
            Some(plan) => {
                let a = self.attach_network(plan, &bundle, &mut prepared.spec).await.map_err(|e| e.at("network"))?;
                done.push(Step::Network);
                crash_point("network");
                t = self.phases.end("create.network", t);
                Some(a)
            }
            None => None,
        };
        let json = serde_json::to_vec_pretty(&prepared.spec)
            .map_err(|e| Error::InvalidArgument(format!("spec: {e}")).at("bundle"))?;
        // The bundle is runtime state (under --state): it needs no fsync, as
        // nothing that uses it survives the machine going down.
        std::fs::write(bundle.join("config.json"), &json)
            .map_err(|e| Error::io("write config.json", e).at("bundle"))?;
        crash_point("bundle");
        self.phases.end("create.bundle", t);
        let socket = self.cfg.shim_socket(ns, id);
        self.prepare_cgroup_parent(ns, id, &cgroup);
        // The cgroup may appear as soon as the runtime starts working; it is
        // released after the shim (and what it may have started) is gone.
        done.push(Step::Cgroup(cgroup.clone()));
        let containerd_shim = matches!(Runtime::parse(runtime), Ok(Runtime::Shim { .. }));
        let stdin = crate::process_io::needs_stdin_fifo(p.stdin, p.tty, containerd_shim).then(|| logs.join("stdin"));
        let io = ProcessIo { stdin: stdin.as_deref(), stdout: &stdout, stderr: &stderr, terminal: p.tty, log };
        let restore = p.restore.as_ref().map(|from| self.restore_options(ns, id, from));
        let loopback = crate::network::unpinned_none(attachment.as_ref());
        let placed = Placement { socket: &socket, sandbox: p.sandbox.as_ref(), restore: restore.as_ref(), loopback };
        let (client, pid) = self.spawn_task(ns, id, runtime, &bundle, placed, &io, done).await?;
        crash_point("runtime create");
        let t = std::time::Instant::now();
        // Its own VM, or its VM sandbox's.
        let vm = sandbox_vm.or_else(|| self.cfg.vm.own_vm(runtime, p.sandbox.is_some(), &bundle));
        let rec = ContainerRecord {
            namespace: ns.clone(),
            id: id.clone(),
            runtime: runtime.to_string(),
            bundle,
            rootfs: prepared.rootfs,
            command: prepared.command,
            labels: p.labels.clone(),
            created_at_ns: crate::now_ns(),
            state: State::Created,
            pid,
            exit: None,
            shim: ShimInfo { pid: client.pid, socket: client.socket.clone() },
            stdout,
            stderr,
            cgroup,
            oom_killed: false,
            stdin,
            terminal: p.tty,
            restart_policy: p.restart,
            restart_count: 0,
            restart_streak: 0,
            started_at_ns: 0,
            stopped_by_user: false,
            execs: Default::default(),
            auto_remove: p.auto_remove,
            image: image.map(|i| i.name).unwrap_or_default(),
            volumes: p.run.volume_names(),
            network: attachment,
            sandbox: p.sandbox.clone(),
            restored_from: p.restore.as_ref().map(|r| r.origin.clone()).unwrap_or_default(),
            vm,
            cri_log: log != LogFormat::Plain,
            log_rotation: match log {
                LogFormat::Berth(r) => Some(r),
                _ => None,
            },
        };
        let created = crate::manager::record_event(Kind::Create, &rec);
        let w = Write { put: Some(&rec), clear_intent: Some((ns, id)), event: Some(created), ..Default::default() };
        self.write(w).map_err(|e| e.at("record"))?;
        self.phases.end("create.record", t);
        Ok((rec, client))
    }

    /// Starts a shim for the container (or takes its sandbox's) and has it
    /// create the runtime container from `bundle` (create, and a restart:
    /// `restart.rs`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn spawn_task(
        self: &Arc<Self>,
        ns: &Namespace,
        id: &ContainerId,
        runtime: &str,
        bundle: &std::path::Path,
        placed: Placement<'_>,
        io: &ProcessIo<'_>,
        done: &mut Vec<Step>,
    ) -> Result<(ShimClient, u32)> {
        let t = std::time::Instant::now();
        let client = match placed.sandbox {
            Some(sandbox) => {
                let client = self.sandbox_shim(ns, sandbox).await.map_err(|e| e.at("shim"))?;
                let step = Step::Joined { client: client.clone(), runtime: runtime.to_string(), bundle: bundle.into() };
                done.push(step);
                client
            }
            None => {
                let args = self.shim_args(ns, id, runtime);
                let client = shim::spawn(&args, placed.socket, bundle).await.map_err(|e| e.at("shim"))?;
                let step = Step::Shim { client: client.clone(), runtime: runtime.to_string(), bundle: bundle.into() };
                done.push(step);
                client
            }
        };
        crash_point("shim");
        if let Some(fifo) = io.stdin {
            make_fifo(fifo).map_err(|e| e.at("logs"))?;
        }
        let t = self.phases.end("shim.spawn", t);
        let pid = client.create(id, bundle, io, placed.restore).await.map_err(|e| e.at("runtime create"))?;
        self.phases.end("runtime.create", t);
        done.push(Step::Task(client.clone()));
        if placed.loopback {
            berth_network::loopback_up(pid).map_err(|e| Error::from(e).at("network"))?;
        }
        Ok((client, pid))
    }

    /// The runtime create failed or was cut short (a timeout, a crashed
    /// helper): whatever it started must not outlive the rollback.
    async fn cleanup_failed_create(&self, ns: &Namespace, id: &ContainerId, runtime: &str, bundle: &std::path::Path) {
        let args = self.shim_args(ns, id, runtime);
        if let Err(e) = shim::cleanup(&args, bundle).await {
            tracing::warn!(%id, "cleanup after failed create: {e}");
        }
    }

    /// Serves a container's new entry (`recovered`: one found again at
    /// berthd's start): exit monitor and OOM watcher. The monitor of a
    /// container with a shim of its own watches its init's pid rather than
    /// holding a call open, while the init is its shim's child (`rec.pid`).
    pub(crate) fn watch(self: &Arc<Self>, key: Key, entry: Arc<Entry>, rec: &ContainerRecord, recovered: bool) {
        self.insert_entry(key.clone(), entry.clone());
        // A VM's cgroups are the guest's: its shim counts OOM kills.
        match rec.runtime == berth_model::VM_RUNTIME {
            true => self.spawn_guest_oom_poll(key.clone(), entry.clone(), recovered),
            false => self.spawn_oom_watch(key.clone(), entry.clone(), rec.cgroup.clone()),
        }
        let init = match rec.exit.is_none() && !entry.shim.shared {
            true => crate::shim::child_pidfd(rec.pid, entry.shim.pid),
            false => None,
        };
        self.spawn_monitor(key, entry, init);
    }

    /// Undoes completed create steps, newest first; failures are logged and
    /// the remaining steps still run.
    pub(crate) async fn release(&self, ns: &Namespace, id: &ContainerId, done: Vec<Step>) {
        let task_created = done.iter().any(|s| matches!(s, Step::Task(_)));
        for step in done.into_iter().rev() {
            let result = match step {
                Step::Task(c) => c.delete(id, "").await.map(drop),
                Step::Shim { client, runtime, bundle } => {
                    if !task_created {
                        self.cleanup_failed_create(ns, id, &runtime, &bundle).await;
                    }
                    let _ = client.shutdown(id).await;
                    client.reap(Duration::from_secs(5)).await;
                    crate::delete::remove_shim_sockets(&client.socket)
                }
                Step::Joined { client, runtime, bundle } => {
                    if !task_created {
                        // The shared shim may still be creating the task
                        // (the call timed out) or hold it: it undoes both.
                        let _ = client.delete(id, "").await;
                        self.cleanup_failed_create(ns, id, &runtime, &bundle).await;
                    }
                    Ok(())
                }
                Step::Cgroup(cg) => self.cgroups.remove(&cg).map_err(|e| Error::io("remove cgroup", e)),
                Step::Snapshot { key, target } => self.images.release_rootfs(&key, &target),
                Step::Bundle(dir) | Step::Logs(dir) => crate::delete::remove_path(&dir),
                Step::Volume(name) => self.volume_release_new(&name),
                Step::VolumeFill(name) => self.volume_unfill(&name),
                Step::Network => self.detach_network(ns, id).await,
                Step::Intent => self.write(Write { clear_intent: Some((ns, id)), ..Default::default() }),
            };
            if let Err(e) = result {
                tracing::warn!(%id, "rollback of failed create: {e}");
            }
        }
    }
}
