//! Checkpoints (SPEC B16): CRIU images of a running or paused container,
//! taken by its shim (berth-shim only) and kept under
//! `<root>/checkpoints/<ns>/<id>/<name>/` — `images/` (CRIU's), the
//! container's `config.json` and `checkpoint.json` (what a restore needs:
//! rootfs or image, network, runtime), written last so a checkpoint is
//! visible only once complete. CRIU's logs stay under
//! `<state>/criu/<ns>/<id>/<name>/`, named in errors. Restores are in
//! `restore.rs`, archives in `checkpoint_archive.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_model::{ContainerId, Namespace, NetworkMode, State};
use berth_shim::Checkpoint;
use berth_store::ContainerRecord;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::events::{Kind, event};
use crate::manager::Manager;

pub(crate) const META: &str = "checkpoint.json";
pub(crate) const SPEC: &str = "config.json";
pub(crate) const IMAGES: &str = "images";
/// An image container's changes to its image, as an OCI layer.
pub(crate) const ROOTFS_DIFF: &str = "rootfs-diff.tar";
/// How long a dump or a restore may take.
const CRIU_TIMEOUT: Duration = Duration::from_secs(120);
/// The oldest CRIU that works on the kernels berth runs on.
const CRIU_MIN: (u32, u32) = (4, 0);

pub struct CheckpointParams {
    pub namespace: Namespace,
    pub id: ContainerId,
    /// Empty: `checkpoint-<unix time>`.
    pub name: String,
    pub leave_running: bool,
    pub tcp_established: bool,
    pub shell_job: bool,
    pub ext_unix_sk: bool,
}

/// `checkpoint.json`: what the checkpoint is of, and what a restore needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub name: String,
    pub namespace: Namespace,
    pub container: ContainerId,
    pub created_at_ns: u64,
    pub runtime: String,
    /// The image the container ran (empty: a directory rootfs).
    #[serde(default)]
    pub image: String,
    /// The rootfs directory of a container not run from an image.
    #[serde(default)]
    pub rootfs: PathBuf,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `--network` of the container (a network name or `none`).
    pub network: String,
    /// Its published ports (`-p`), published again by a restore.
    #[serde(default)]
    pub ports: Vec<String>,
    /// The chain id of its image's top layer: a restore needs that image.
    #[serde(default)]
    pub chain_id: String,
    pub leave_running: bool,
    pub tcp_established: bool,
    pub shell_job: bool,
    pub ext_unix_sk: bool,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub duration_us: u64,
}

fn bad_name(name: &str) -> Option<String> {
    berth_model::ContainerId::new(name).err().map(|e| e.to_string().replace("container id", "checkpoint name"))
}

/// `criu --version` → (major, minor), or an error that names the fix.
fn criu_version(criu: &Path) -> Result<(u32, u32)> {
    let fix = "install it with `make criu` (docs/operations.md, CRIU) or pass berthd --criu PATH";
    let out = std::process::Command::new(criu).arg("--version").output().map_err(|e| {
        Error::FailedPrecondition(format!(
            "CRIU is needed for checkpoints and {} cannot run ({e}): {fix}",
            criu.display()
        ))
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.lines().find_map(|l| l.trim().strip_prefix("Version:")).map(str::trim).unwrap_or("");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if !out.status.success() || found < CRIU_MIN {
        return Err(Error::FailedPrecondition(format!(
            "CRIU {} at {} is too old or broken: berth needs {}.{} or newer; {fix}",
            if version.is_empty() { "(unknown version)" } else { version },
            criu.display(),
            CRIU_MIN.0,
            CRIU_MIN.1
        )));
    }
    Ok(found)
}

fn dir_size(dir: &Path) -> u64 {
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    entries.filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
}

pub(crate) fn read_meta(dir: &Path) -> Result<CheckpointMeta> {
    let path = dir.join(META);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))
}

/// Writes an image container's overlay upper dir as an OCI layer.
fn write_rootfs_diff(upper: &Path, path: &Path) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| Error::io(format!("create {}", path.display()), e))?;
    let file = berth_images::write_upper_as_layer(upper, std::io::BufWriter::new(file))?;
    file.into_inner()
        .map_err(|e| Error::io("write the rootfs diff", e.into_error()))?
        .sync_all()
        .map_err(|e| Error::io("write the rootfs diff", e))
}

/// fsyncs a checkpoint's files and directories.
fn sync_checkpoint(dir: &Path) -> Result<()> {
    let sync = |p: &Path| std::fs::File::open(p).and_then(|f| f.sync_all());
    let io = |e| Error::io("sync the checkpoint", e);
    for entry in std::fs::read_dir(dir.join(IMAGES)).map_err(io)? {
        let path = entry.map_err(io)?.path();
        sync(&path).map_err(io)?;
    }
    for path in [dir.join(SPEC), dir.join(IMAGES), dir.to_path_buf()] {
        sync(&path).map_err(io)?;
    }
    Ok(())
}

/// Whether CRIU's dump into `dir` completed (its inventory comes last).
fn dump_complete(dir: &Path) -> bool {
    dir.join(IMAGES).join("inventory.img").is_file()
}

/// How a checkpoint of a sandbox member names its network.
pub(crate) const SANDBOX_NETWORK: &str = "sandbox:";

/// The network a checkpointed container can be restored into: its own
/// namespace of berth's (a CNI network or `none`), or its sandbox's
/// (`sandbox:ID`: CRIU treats the sandbox's namespace as external; such a
/// checkpoint can be exported, e.g. by CRI's CheckpointContainer, but not
/// restored yet). Named volumes do not travel with a checkpoint.
fn restorable_network(rec: &ContainerRecord) -> Result<String> {
    let refuse =
        |why: &str| Err(Error::FailedPrecondition(format!("container {} cannot be checkpointed: {why}", rec.id)));
    if rec.terminal {
        return refuse("it has a terminal");
    }
    if let Some(sandbox) = &rec.sandbox {
        return Ok(format!("{SANDBOX_NETWORK}{sandbox}"));
    }
    if !rec.volumes.is_empty() {
        return refuse("it mounts named volumes, which checkpoints do not carry yet");
    }
    let Some(net) = &rec.network else { return refuse("it runs from a bundle (networked as its config.json says)") };
    match NetworkMode::parse(&net.mode) {
        Ok(NetworkMode::Network(_) | NetworkMode::None) => Ok(net.mode.clone()),
        _ => refuse(&format!("--network {} has no namespace of its own", net.mode)),
    }
}

impl Manager {
    /// The configured CRIU, checked once per daemon (SPEC B16).
    pub(crate) fn check_criu(&self) -> Result<()> {
        if self.criu_checked.get().is_some() {
            return Ok(());
        }
        criu_version(&self.cfg.criu)?;
        let _ = self.criu_checked.set(());
        Ok(())
    }

    pub(crate) fn checkpoint_dir(&self, ns: &Namespace, id: &ContainerId, name: &str) -> PathBuf {
        self.cfg.root.join("checkpoints").join(ns.as_str()).join(id.as_str()).join(name)
    }

    pub(crate) fn criu_work(&self, ns: &Namespace, id: &ContainerId, name: &str) -> PathBuf {
        self.cfg.state.join("criu").join(ns.as_str()).join(id.as_str()).join(name)
    }

    pub async fn checkpoint(&self, p: CheckpointParams) -> Result<CheckpointMeta> {
        let (ns, id) = (&p.namespace, &p.id);
        let name =
            if p.name.is_empty() { format!("checkpoint-{}", crate::now_ns() / 1_000_000_000) } else { p.name.clone() };
        if let Some(e) = bad_name(&name) {
            return Err(Error::InvalidArgument(e));
        }
        self.get(ns, id)?;
        let _op = self.lock_op(ns, id).await;
        let rec = self.get(ns, id)?;
        if !matches!(rec.state, State::Running | State::Paused) {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is {}: only a running or paused container can be checkpointed",
                rec.state
            )));
        }
        let network = restorable_network(&rec)?;
        let entry = self.entry(ns, id)?;
        if entry.shim.is_containerd_shim() {
            return Err(Error::FailedPrecondition(format!(
                "container {id} runs on a containerd shim: checkpoints need berth's own"
            )));
        }
        self.check_criu()?;
        let dir = self.checkpoint_dir(ns, id, &name);
        if dir.exists() {
            return Err(Error::CheckpointExists(format!("{id}/{name}")));
        }
        let work = self.criu_work(ns, id, &format!("dump-{name}"));
        let c = Checkpoint {
            images: dir.join(IMAGES),
            work: work.clone(),
            leave_running: p.leave_running,
            tcp_established: p.tcp_established,
            shell_job: p.shell_job,
            ext_unix_sk: p.ext_unix_sk,
        };
        let _ = std::fs::remove_dir_all(&work);
        let made = std::fs::create_dir_all(&c.images)
            .and_then(|()| std::fs::create_dir_all(&work))
            .and_then(|()| std::fs::copy(rec.bundle.join(SPEC), dir.join(SPEC)).map(drop));
        let undo = |e: Error| {
            let _ = std::fs::remove_dir_all(&dir);
            e
        };
        made.map_err(|e| undo(Error::io("prepare the checkpoint directory", e)))?;
        // A checkpoint that stops the container is a user stop: no policy
        // brings it back.
        if !p.leave_running {
            self.mark_stopped_by_user(ns, id).map_err(undo)?;
        }
        // A container left running stays frozen from its dump until its
        // writable layer is copied: consistent with the dump, and nothing
        // in it can swap a file for a link to a host file meanwhile.
        let freeze = p.leave_running && !rec.image.is_empty() && rec.state == State::Running;
        if freeze {
            entry.shim.pause(id).await.map_err(undo)?;
        }
        let t = Instant::now();
        let dumped = match tokio::time::timeout(CRIU_TIMEOUT, entry.shim.checkpoint(id, &c)).await {
            Ok(r) => r,
            Err(_) => Err(Error::DeadlineExceeded(format!("checkpoint of {id} took longer than {CRIU_TIMEOUT:?}"))),
        };
        let duration_us = t.elapsed().as_micros() as u64;
        let finished = match dumped {
            Ok(()) => self.finish_checkpoint(&rec, &name, &network, &p, &dir, duration_us).await,
            Err(e) => Err(e),
        };
        if freeze && let Err(e) = entry.shim.resume(id).await {
            tracing::warn!(%ns, %id, "thaw after the checkpoint: {e}");
        }
        // Dumped without --leave-running: the container is gone, so its
        // images are the only copy of its state and stay, incomplete.
        if let Err(e) = &finished
            && !p.leave_running
            && dump_complete(&dir)
        {
            return Err(Error::FailedPrecondition(format!(
                "checkpoint {id}/{name} was dumped (the container stopped) but could not be completed: {e}; its images are kept in {}",
                dir.display()
            )));
        }
        if let Err(e) = finished {
            // A dump that timed out may still end the container: it stays
            // a user stop then, so no policy brings it back half dumped.
            let may_still_stop = matches!(e, Error::DeadlineExceeded(_));
            if !p.leave_running && !may_still_stop {
                let _ = self.update(ns, id, |r| {
                    r.stopped_by_user = r.exit.is_some();
                    Ok(())
                });
            }
            return Err(undo(e));
        }
        let meta = finished?;
        self.publish(event(Kind::Checkpoint, ns, id, "", rec.pid, None))?;
        Ok(meta)
    }

    /// After the dump: the writable layer of an image container, then the
    /// metadata, written last (the checkpoint is listed from then on).
    async fn finish_checkpoint(
        &self,
        rec: &ContainerRecord,
        name: &str,
        network: &str,
        p: &CheckpointParams,
        dir: &Path,
        duration_us: u64,
    ) -> Result<CheckpointMeta> {
        let (ns, id) = (&rec.namespace, &rec.id);
        let mut chain_id = String::new();
        let mut upper = None;
        if !rec.image.is_empty() {
            chain_id = self.images.resolve(&rec.image)?.0.chain_id;
            upper = Some(self.images.snapshots.mounts(&crate::images::snapshot_key(ns, id))?.upperdir);
        }
        // The layer, then everything durable before the metadata says the
        // checkpoint is complete (SPEC B18).
        let at = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            if let Some(upper) = upper {
                write_rootfs_diff(&upper, &at.join(ROOTFS_DIFF))?;
            }
            sync_checkpoint(&at)
        })
        .await
        .map_err(|e| Error::io("complete the checkpoint", std::io::Error::other(e)))??;
        let meta = CheckpointMeta {
            name: name.to_string(),
            namespace: ns.clone(),
            container: id.clone(),
            created_at_ns: crate::now_ns(),
            runtime: rec.runtime.clone(),
            image: rec.image.clone(),
            rootfs: if rec.image.is_empty() { rec.rootfs.clone() } else { PathBuf::new() },
            command: rec.command.clone(),
            labels: rec.labels.clone(),
            network: network.to_string(),
            ports: rec.network.iter().flat_map(|a| a.ports.iter()).map(ToString::to_string).collect(),
            chain_id,
            leave_running: p.leave_running,
            tcp_established: p.tcp_established,
            shell_job: p.shell_job,
            ext_unix_sk: p.ext_unix_sk,
            size: dir_size(&dir.join(IMAGES)),
            duration_us,
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        berth_store::write_atomic(&dir.join(META), &json).map_err(|e| Error::io("write checkpoint.json", e))?;
        Ok(meta)
    }

    /// The checkpoints of container `id` (which may be gone), oldest first.
    pub fn checkpoints(&self, ns: &Namespace, id: &ContainerId) -> Result<Vec<CheckpointMeta>> {
        let parent = self.cfg.root.join("checkpoints").join(ns.as_str()).join(id.as_str());
        let mut out: Vec<CheckpointMeta> = std::fs::read_dir(&parent)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| read_meta(&e.path()).ok())
            .collect();
        if out.is_empty() && self.store.get(ns, id)?.is_none() {
            return Err(Error::NotFound(id.to_string()));
        }
        out.sort_by_key(|m| m.created_at_ns);
        Ok(out)
    }

    /// A complete checkpoint's directory, or NotFound.
    pub(crate) fn checkpoint_of(&self, ns: &Namespace, id: &ContainerId, name: &str) -> Result<PathBuf> {
        if let Some(e) = bad_name(name) {
            return Err(Error::InvalidArgument(e));
        }
        let dir = self.checkpoint_dir(ns, id, name);
        if !dir.join(META).is_file() {
            return Err(Error::CheckpointNotFound(format!("{id}/{name}")));
        }
        Ok(dir)
    }

    /// Removes a checkpoint, or the images of one that could not be
    /// completed.
    pub fn checkpoint_remove(&self, ns: &Namespace, id: &ContainerId, name: &str) -> Result<()> {
        if let Some(e) = bad_name(name) {
            return Err(Error::InvalidArgument(e));
        }
        let dir = self.checkpoint_dir(ns, id, name);
        if !dir.is_dir() {
            return Err(Error::CheckpointNotFound(format!("{id}/{name}")));
        }
        // The record goes first: a half-removed checkpoint is never listed.
        crate::delete::remove_path(&dir.join(META))?;
        crate::delete::remove_path(&dir)?;
        let _ = std::fs::remove_dir_all(self.criu_work(ns, id, &format!("dump-{name}")));
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        Ok(())
    }
}
