//! Restore (SPEC B16): a create (`create.rs`) whose spec, rootfs or image
//! (with its writable layer), network, runtime and labels come from a
//! checkpoint of this daemon or from an imported archive
//! (`checkpoint_archive.rs`), and whose task the shim restores instead of
//! creating. An imported archive is kept as a checkpoint of the new
//! container.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_model::{ContainerId, Namespace, RestartPolicy};
use berth_shim::Checkpoint;
use berth_store::ContainerRecord;

use crate::checkpoint::{CheckpointMeta, IMAGES, ROOTFS_DIFF, SPEC, read_meta};
use crate::create::{CreateParams, FromImage};
use crate::error::{Error, Result};
use crate::events::{Kind, event};
use crate::manager::Manager;
use crate::network::RESOLVER_FILES;
use crate::spec;

/// Where a restore comes from.
pub enum RestoreSource {
    Checkpoint { container: ContainerId, name: String },
    Archive(PathBuf),
}

/// A checkpoint a create restores from (`CreateParams::restore`).
#[derive(Clone)]
pub struct RestoreFrom {
    pub dir: PathBuf,
    pub meta: CheckpointMeta,
    /// What `inspect` shows: `NS/ID/NAME`, or the archive.
    pub origin: String,
}

impl CreateParams {
    /// A create that restores `from`, running, under `id`: its spec,
    /// rootfs or image, network, runtime and labels are the checkpoint's.
    pub fn restoring(namespace: Namespace, id: ContainerId, from: RestoreFrom) -> CreateParams {
        let m = &from.meta;
        CreateParams {
            namespace,
            id,
            path: String::new(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: String::new(),
            runtime: m.runtime.clone(),
            labels: m.labels.clone(),
            start: true,
            limits: Default::default(),
            create_only: Default::default(),
            tty: false,
            tty_size: None,
            stdin: false,
            restart: RestartPolicy::No,
            security: Default::default(),
            auto_remove: false,
            image: m.image.clone(),
            entrypoint: None,
            user: String::new(),
            run: Default::default(),
            // CRIU is handed the namespace by path, `none` included.
            net: crate::network::NetOptions {
                mode: m.network.clone(),
                publish: m.ports.clone(),
                pin: true,
                ..Default::default()
            },
            sandbox: None,
            restore: Some(from),
            log_path: None,
            log_bound: (None, None),
            groups: Vec::new(),
            sysctls: Default::default(),
            cgroup_parent: String::new(),
        }
    }
}

impl Manager {
    /// Creates and starts a container from a checkpoint of this daemon or
    /// from an archive; an imported archive is kept as a checkpoint of the
    /// new container.
    pub async fn restore(
        self: &Arc<Self>,
        ns: &Namespace,
        id: Option<ContainerId>,
        source: RestoreSource,
    ) -> Result<ContainerRecord> {
        self.check_criu()?;
        let (dir, origin, imported) = match source {
            RestoreSource::Checkpoint { container, name } => {
                let dir = self.checkpoint_of(ns, &container, &name)?;
                (dir, format!("{ns}/{container}/{name}"), false)
            }
            RestoreSource::Archive(path) => {
                // Unpacking is blocking work on a path of the caller's.
                let (mgr, at) = (self.clone(), path.clone());
                let dir = tokio::task::spawn_blocking(move || mgr.import_checkpoint(&at))
                    .await
                    .map_err(|e| Error::io("import the checkpoint", std::io::Error::other(e)))??;
                (dir, path.display().to_string(), true)
            }
        };
        let restored = match read_meta(&dir) {
            Ok(meta) => self.restore_from(ns, id, &dir, meta, origin).await,
            Err(e) => Err(e),
        };
        if imported {
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let name = restored.as_ref().map(|(_, name)| name.clone()).unwrap_or(name);
            let kept = restored.as_ref().ok().map(|(rec, _)| self.checkpoint_dir(ns, &rec.id, &name));
            match kept.filter(|k| !k.exists()) {
                Some(target) => {
                    let moved = target
                        .parent()
                        .map(std::fs::create_dir_all)
                        .transpose()
                        .and_then(|_| std::fs::rename(&dir, &target));
                    if moved.is_err() {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                }
                None => {
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        restored.map(|(rec, _)| rec)
    }

    /// The restore proper; returns the record and the checkpoint's name.
    async fn restore_from(
        self: &Arc<Self>,
        ns: &Namespace,
        id: Option<ContainerId>,
        dir: &Path,
        meta: CheckpointMeta,
        origin: String,
    ) -> Result<(ContainerRecord, String)> {
        if meta.network.starts_with(crate::checkpoint::SANDBOX_NETWORK) {
            return Err(Error::FailedPrecondition(format!(
                "checkpoint {} was taken in a sandbox ({}): restoring into a sandbox is not supported yet",
                meta.name, meta.network
            )));
        }
        let id = id.unwrap_or_else(|| meta.container.clone());
        let name = meta.name.clone();
        let from = RestoreFrom { dir: dir.to_path_buf(), meta, origin };
        let params = crate::create::CreateParams::restoring(ns.clone(), id.clone(), from);
        let rec = self.create(params).await?;
        self.publish(event(Kind::Restore, ns, &id, "", rec.pid, None))?;
        Ok((rec, name))
    }

    /// What the shim is told to restore from, for a restore into `id`.
    pub(crate) fn restore_options(&self, ns: &Namespace, id: &ContainerId, from: &RestoreFrom) -> Checkpoint {
        let m = &from.meta;
        Checkpoint {
            images: from.dir.join(IMAGES),
            work: self.criu_work(ns, id, &format!("restore-{}", m.name)),
            leave_running: false,
            tcp_established: m.tcp_established,
            shell_job: m.shell_job,
            ext_unix_sk: m.ext_unix_sk,
        }
    }

    /// The checkpoint's spec for a restore into `p.id`: its cgroup, and the
    /// rootfs it had or a new snapshot of its image (which must be here).
    pub(crate) fn prepare_restore(
        &self,
        p: &CreateParams,
        from: &RestoreFrom,
        cgroup: &str,
    ) -> Result<(spec::Prepared, Option<FromImage>)> {
        let mut spec = restored_spec(&from.dir, cgroup)?;
        let (rootfs, image) = if from.meta.image.is_empty() {
            if !from.meta.rootfs.is_dir() {
                return Err(Error::FailedPrecondition(format!(
                    "the checkpoint's root filesystem {} is not on this host",
                    from.meta.rootfs.display()
                )));
            }
            (spec::check_rootfs(&from.meta.rootfs)?, None)
        } else {
            let (image, _) = self.images.resolve(&from.meta.image)?;
            if !from.meta.chain_id.is_empty() && image.chain_id != from.meta.chain_id {
                return Err(Error::FailedPrecondition(format!(
                    "image {} here is not the one the checkpoint was taken on (its layers differ)",
                    from.meta.image
                )));
            }
            let diff = Some(from.dir.join(ROOTFS_DIFF)).filter(|d| d.is_file());
            let image = FromImage { name: image.name, chain_id: image.chain_id, volumes: Vec::new(), diff };
            (self.image_rootfs(&p.namespace, &p.id), Some(image))
        };
        if let Some(root) = spec.root_mut() {
            root.set_path(rootfs.clone());
        }
        Ok((spec::Prepared { spec, rootfs, command: from.meta.command.clone() }, image))
    }
}

/// The checkpoint's spec, made the new container's: its cgroup; the
/// network namespace and resolver files of the old one dropped (the
/// restore's network attachment sets its own).
pub(crate) fn restored_spec(dir: &Path, cgroup: &str) -> Result<oci_spec::runtime::Spec> {
    let path = dir.join(SPEC);
    let mut spec = oci_spec::runtime::Spec::load(&path)
        .map_err(|e| Error::InvalidArgument(format!("checkpoint spec {}: {e}", path.display())))?;
    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or_else(|| Error::InvalidArgument("checkpoint spec has no linux section".into()))?;
    linux.set_cgroups_path(Some(cgroup.into()));
    let mounts = spec.mounts().clone().unwrap_or_default();
    let kept = mounts.into_iter().filter(|m| !RESOLVER_FILES.iter().any(|r| m.destination() == Path::new(r))).collect();
    spec.set_mounts(Some(kept));
    Ok(spec)
}
