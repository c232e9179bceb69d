//! The image manager (issue 10): owns the content store, the overlay
//! snapshotter and the image names under `--root` (`content/`,
//! `snapshots/`, `images/`). Pulls stream layer progress to the caller,
//! then unpack into committed snapshots and record the name. Containers
//! created from an image get an active snapshot keyed by their namespace
//! and id (so a crash can always find it), mounted at `<bundle>/rootfs`;
//! create's rollback, delete and startup recovery release it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_images::{
    Auth, ContentStore, Digest, ImageError, ImageRecord, ImageStore, Keep, LayerProgress, Platform, Puller, RunConfig,
    Snapshotter, normalize_reference, read_config, unpack_image,
};
use berth_model::{ContainerId, Namespace, State};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::manager::Manager;
use prometheus_client::metrics::counter::Counter;

/// Progress events of one layer closer than this many bytes are folded.
const PROGRESS_STEP: u64 = 512 * 1024;

pub struct PullParams {
    pub reference: String,
    pub platform: String,
    pub insecure: bool,
    pub auth: Auth,
}

/// One pull progress event; the last one carries the image.
#[derive(Debug, Clone, Default)]
pub struct PullEvent {
    pub digest: String,
    pub current: u64,
    pub total: u64,
    pub done: bool,
    pub skipped: bool,
    pub status: &'static str,
    pub image: Option<ImageRecord>,
}

pub struct Images {
    pub content: ContentStore,
    pub snapshots: Snapshotter,
    pub names: ImageStore,
    puller: Puller,
    /// Pulls and imports hold it shared, garbage collection exclusively:
    /// a collection never sweeps what a pull or import is writing.
    pub(crate) gc_lock: tokio::sync::RwLock<()>,
    /// Pulls by result, and the bytes their layers downloaded (metrics).
    pub pulls: prometheus_client::metrics::family::Family<Vec<(&'static str, String)>, Counter>,
    pub pulled_bytes: Counter,
}

/// The active snapshot key of a container: derived from namespace and id
/// only (a crash mid-create finds it from the intent), a valid key whatever
/// the id looks like.
pub fn snapshot_key(ns: &Namespace, id: &ContainerId) -> String {
    let hex = Digest::of(format!("{ns}/{id}").as_bytes()).hex();
    format!("ctr-{}", &hex[..48])
}

impl Images {
    /// Opens the stores under `root`.
    pub fn open(root: &Path) -> Result<Images> {
        Ok(Images {
            content: ContentStore::open(root.join("content"))?,
            snapshots: Snapshotter::new(&root.join("snapshots"))?,
            names: ImageStore::open(root.join("images"))?,
            puller: Puller::new(),
            pulls: Default::default(),
            pulled_bytes: Counter::default(),
            gc_lock: tokio::sync::RwLock::new(()),
        })
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.names.list()?)
    }

    pub fn get(&self, reference: &str) -> Result<ImageRecord> {
        Ok(self.names.get(&normalize_reference(reference)?)?)
    }

    /// Removes a name. Content and snapshots are left for garbage
    /// collection, which never frees what a container still uses (B32).
    pub fn remove(&self, reference: &str) -> Result<()> {
        Ok(self.names.remove(&normalize_reference(reference)?)?)
    }

    /// The record and run defaults of a present image (NotFound: pull first).
    pub fn resolve(&self, reference: &str) -> Result<(ImageRecord, RunConfig)> {
        let rec = match self.get(reference) {
            Err(Error::Image(ImageError::NotFound(_))) => {
                return Err(Error::NotFound(format!("image {reference} (pull it first)")));
            }
            other => other?,
        };
        let config = read_config(&self.content, &rec.config_digest)?;
        Ok((rec, RunConfig::from_config(&config)))
    }

    /// Starts a pull; events arrive on the returned channel, an error ends it.
    pub fn pull(self: &Arc<Self>, p: PullParams) -> mpsc::UnboundedReceiver<Result<PullEvent>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let me = self.clone();
        tokio::spawn(async move {
            let _lease = me.gc_lock.read().await;
            let result = me.pull_inner(p, &tx).await;
            let outcome = if result.is_ok() { "ok" } else { "error" };
            me.pulls.get_or_create(&vec![("result", outcome.to_string())]).inc();
            let _ =
                tx.send(result.map(|image| PullEvent { status: "pulled", image: Some(image), ..Default::default() }));
        });
        rx
    }

    async fn pull_inner(
        self: &Arc<Self>,
        p: PullParams,
        tx: &mpsc::UnboundedSender<Result<PullEvent>>,
    ) -> Result<ImageRecord> {
        let platform: Platform = if p.platform.is_empty() { Platform::default() } else { p.platform.parse()? };
        let last: Mutex<HashMap<String, u64>> = Mutex::default();
        let events = tx.clone();
        let bytes = self.pulled_bytes.clone();
        let progress = Arc::new(move |l: &LayerProgress<'_>| {
            if l.done && !l.skipped {
                bytes.inc_by(l.current);
            }
            let mut last = crate::manager::lock(&last);
            let seen = last.entry(l.digest.to_string()).or_insert(0);
            let first = *seen == 0 && l.current == 0;
            if !(l.done || first || l.current >= *seen + PROGRESS_STEP) {
                return;
            }
            *seen = l.current.max(1);
            let status = match (l.done, l.skipped) {
                (true, true) => "exists",
                (true, false) => "done",
                _ => "downloading",
            };
            let _ = events.send(Ok(PullEvent {
                digest: l.digest.to_string(),
                current: l.current,
                total: l.total,
                done: l.done,
                skipped: l.skipped,
                status,
                image: None,
            }));
        });
        // Layers unpack into snapshots as they stream; unpack_image below
        // only fills in what the stream could not (and records the chain).
        let sink = berth_images::StreamingUnpack::new(&self.content, &self.snapshots);
        let pulled = self.puller.pull(&p.reference, &platform, &p.auth, p.insecure, &sink, progress).await?;
        let _ = tx.send(Ok(PullEvent { status: "unpacking", ..Default::default() }));
        let me = self.clone();
        let (manifest, config) = (pulled.manifest.clone(), pulled.config.clone());
        let chain_id =
            tokio::task::spawn_blocking(move || unpack_image(&me.content, &me.snapshots, &manifest, &config))
                .await
                .map_err(|e| Error::io("unpack", std::io::Error::other(e)))??;
        let size = pulled.manifest.layers().iter().map(|l| l.size()).sum::<u64>() + pulled.manifest.config().size();
        let record = ImageRecord {
            name: pulled.reference,
            manifest_digest: pulled.manifest_digest,
            digest: pulled.digest,
            config_digest: pulled.manifest.config().digest().to_string(),
            diff_ids: pulled.config.rootfs().diff_ids().clone(),
            chain_id,
            size,
            created: pulled.config.created().clone().unwrap_or_default(),
            stored_at: crate::now_ns() / 1_000_000_000,
        };
        self.names.put(&record)?;
        Ok(record)
    }

    /// Creates the container's active snapshot on `chain_id`, with the
    /// changes of layer `diff` applied (a restored container's), and mounts
    /// it at `target` (created if needed). On error nothing is left.
    pub fn mount_rootfs(&self, key: &str, chain_id: &str, target: &Path, diff: Option<&Path>) -> Result<()> {
        let mounts = self.snapshots.create_active(key, chain_id)?;
        let applied = match diff {
            Some(layer) => std::fs::File::open(layer)
                .map_err(|e| Error::io(format!("open {}", layer.display()), e))
                .and_then(|f| {
                    let opts = berth_images::UnpackOptions::new(berth_images::Whiteouts::Overlay);
                    Ok(berth_images::unpack_layer(std::io::BufReader::new(f), &mounts.upperdir, &opts).map(drop)?)
                }),
            None => Ok(()),
        };
        let mounted = applied
            .and_then(|()| {
                std::fs::create_dir_all(target).map_err(|e| Error::io(format!("create {}", target.display()), e))
            })
            .and_then(|()| Ok(self.snapshots.mount(key, target)?));
        if let Err(e) = mounted {
            if let Err(e) = self.snapshots.remove_active(key) {
                tracing::warn!(key, "removing the snapshot of a failed mount: {e}");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Mounts the container's snapshot at `target` again if it is not (a
    /// stopped container's, unmounted at startup, before a restart).
    pub fn ensure_mounted(&self, key: &str, target: &Path) -> Result<()> {
        // Mountinfo names the canonical path.
        let target = std::fs::canonicalize(target)
            .or_else(|_| std::path::absolute(target))
            .map_err(|e| Error::io("resolve rootfs", e))?;
        if self.snapshots.mounted_at(key)?.contains(&target) {
            return Ok(());
        }
        std::fs::create_dir_all(&target).map_err(|e| Error::io(format!("create {}", target.display()), e))?;
        self.snapshots.mount(key, &target)?;
        tracing::info!(key, target = %target.display(), "remounted a stopped container's rootfs snapshot");
        Ok(())
    }

    /// Unmounts `target` and removes the active snapshot `key`; both may
    /// already be gone (idempotent, SPEC B9).
    pub fn release_rootfs(&self, key: &str, target: &Path) -> Result<()> {
        self.snapshots.unmount(target)?;
        for at in self.snapshots.mounted_at(key)? {
            self.snapshots.unmount(&at)?;
        }
        match self.snapshots.remove_active(key) {
            Err(ImageError::NotFound(_)) => Ok(()),
            other => Ok(other?),
        }
    }
}

impl Manager {
    /// Startup (before any intent or record is recovered): temp files of
    /// interrupted pulls go, half-made snapshots go, and each active
    /// snapshot is kept as its container needs it — mounted for a live
    /// one, unmounted for a stopped one, removed when no record owns it
    /// (a create cut short) (SPEC B20).
    pub(crate) fn recover_images(&self) -> Result<()> {
        let removed = self.images.content.clean_ingest()?;
        let mut fates: HashMap<String, Keep> = HashMap::new();
        for rec in self.store.list(None)? {
            if rec.image.is_empty() {
                continue;
            }
            let fate = if rec.state == State::Stopped { Keep::Snapshot } else { Keep::Mounted };
            fates.insert(snapshot_key(&rec.namespace, &rec.id), fate);
        }
        let report = self.images.snapshots.recover(&|key| fates.get(key).copied().unwrap_or(Keep::Nothing))?;
        if removed > 0 || report != Default::default() {
            tracing::info!(
                ingest = removed,
                tmp = ?report.removed_tmp,
                unmounted = ?report.unmounted,
                active = ?report.removed_active,
                "image storage recovered"
            );
        }
        Ok(())
    }

    /// The rootfs mount point of a container created from an image.
    pub(crate) fn image_rootfs(&self, ns: &Namespace, id: &ContainerId) -> PathBuf {
        self.cfg.bundle_dir(ns, id).join("rootfs")
    }

    /// What container `id` wrote on top of its image (a walk of its
    /// snapshot's upper layer: call off the async workers); `None` for a
    /// container not made from an image, or gone.
    pub(crate) fn writable_usage(&self, ns: &Namespace, id: &ContainerId) -> Option<berth_images::Usage> {
        let rec = self.store.get(ns, id).ok()??;
        if rec.image.is_empty() {
            return None;
        }
        self.images.snapshots.active_usage(&snapshot_key(ns, id)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_keys_are_valid_and_distinct_per_namespace_and_id() {
        let key = |ns: &str, id: &str| {
            snapshot_key(&Namespace::new(ns).expect("namespace"), &ContainerId::new(id).expect("id"))
        };
        let long = "a".repeat(128);
        let keys = [key("default", "web"), key("other", "web"), key("default", "web2"), key("default", &long)];
        for k in &keys {
            berth_images::snapshot::validate_key(k).expect("a valid snapshot key");
        }
        assert_eq!(key("default", "web"), keys[0], "derivable again from namespace and id");
        let distinct: std::collections::HashSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
        // "a..b" is a valid id but not a valid key by itself: the hash is.
        berth_images::snapshot::validate_key(&key("default", "a..b")).expect("valid");
    }
}
