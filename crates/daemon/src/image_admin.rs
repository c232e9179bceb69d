//! Image administration (issue 10 items 5 and 6): import and export of
//! archives, tags, inspect, and garbage collection — `prune`, and after
//! every `rmi`. Collections run with the image manager's GC lock held
//! exclusively, pulls and imports hold it shared, so a collection never
//! sweeps what is being written. Roots are every named image; the
//! snapshots containers use (running or stopped: their active snapshots
//! exist until delete) keep their parent chains through the snapshotter,
//! so a container's rootfs outlives `rmi -f` of its image while the
//! image's blobs go.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_images::gc::{self, Collected, Roots};
use berth_images::{
    Digest, Exported, ImageError, ImageRecord, Platform, Resolved, RunConfig, normalize_reference, resolve,
    unpack_image,
};

use crate::error::{Error, Result};
use crate::images::Images;
use crate::manager::Manager;

/// One image an import recorded (or left unnamed).
#[derive(Debug, Clone)]
pub struct Imported {
    /// The digest the archive named (manifest or index).
    pub digest: String,
    /// The manifest unpacked for the platform.
    pub manifest_digest: String,
    /// The record, for a named image.
    pub record: Option<ImageRecord>,
}

/// What `inspect` shows.
#[derive(Debug, Clone)]
pub struct Inspected {
    pub record: ImageRecord,
    pub resolved: Resolved,
    pub run: RunConfig,
}

impl Inspected {
    /// `os/arch[/variant]` of the image config.
    pub fn platform(&self) -> String {
        let c = &self.resolved.config;
        let mut p = format!("{}/{}", c.os(), c.architecture());
        if let Some(v) = c.variant() {
            p.push('/');
            p.push_str(v);
        }
        p
    }
}

fn absolute(path: &str, what: &str) -> Result<PathBuf> {
    let p = PathBuf::from(path);
    if path.is_empty() || !p.is_absolute() {
        return Err(Error::InvalidArgument(format!("{what} path {path:?} must be absolute")));
    }
    Ok(p)
}

fn platform(p: &str) -> Result<Platform> {
    if p.is_empty() { Ok(Platform::default()) } else { Ok(p.parse()?) }
}

/// A name as an archive wrote it → the name to record. A bare tag (an OCI
/// layout's `ref.name` like `latest`) or an unparsable one names nothing.
fn archive_name(name: Option<&str>) -> Option<String> {
    let name = name?;
    if !name.contains('/') && !name.contains(':') {
        return None;
    }
    match normalize_reference(name) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(name, "import: leaving an image unnamed: {e}");
            None
        }
    }
}

impl Images {
    /// Imports the archive at `path` (read by the daemon): blobs verified
    /// into the content store, each image unpacked, named images recorded.
    pub async fn import(self: &Arc<Self>, path: &str, platform_: &str) -> Result<Vec<Imported>> {
        let path = absolute(path, "archive")?;
        let platform = platform(platform_)?;
        let _lease = self.gc_lock.read().await;
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.import_blocking(&path, &platform))
            .await
            .map_err(|e| Error::io("import", std::io::Error::other(e)))?
    }

    fn import_blocking(&self, path: &Path, platform: &Platform) -> Result<Vec<Imported>> {
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Image(ImageError::NotFound(format!("archive {}", path.display()))),
            _ => Error::io(format!("open {}", path.display()), e),
        })?;
        let found = berth_images::import(&self.content, BufReader::new(file))?;
        let mut out = Vec::new();
        for image in found {
            let resolved = resolve(&self.content, &image.manifest_digest, platform)?;
            let chain_id = unpack_image(&self.content, &self.snapshots, &resolved.manifest, &resolved.config)?;
            let record = match archive_name(image.name.as_deref()) {
                Some(name) => {
                    let record = ImageRecord {
                        name,
                        manifest_digest: resolved.manifest_digest.to_string(),
                        digest: image.manifest_digest.to_string(),
                        config_digest: resolved.manifest.config().digest().to_string(),
                        diff_ids: resolved.config.rootfs().diff_ids().clone(),
                        chain_id,
                        size: resolved.size(),
                        created: resolved.config.created().clone().unwrap_or_default(),
                        stored_at: crate::now_ns() / 1_000_000_000,
                    };
                    self.names.put(&record)?;
                    Some(record)
                }
                None => None,
            };
            out.push(Imported {
                digest: image.manifest_digest.to_string(),
                manifest_digest: resolved.manifest_digest.to_string(),
                record,
            });
        }
        Ok(out)
    }

    /// Writes the images `references` as an OCI layout tar at `path`:
    /// into a temporary file beside it, synced, then renamed.
    pub async fn export(self: &Arc<Self>, references: &[String], path: &str) -> Result<Exported> {
        let path = absolute(path, "archive")?;
        if references.is_empty() {
            return Err(Error::InvalidArgument("export needs at least one image".into()));
        }
        let mut images = Vec::new();
        for r in references {
            let rec = self.get(r)?;
            let top: Digest = if rec.digest.is_empty() { &rec.manifest_digest } else { &rec.digest }.parse()?;
            let top = if self.content.exists(&top)? { top } else { rec.manifest_digest.parse()? };
            images.push((rec.name, top));
        }
        let _lease = self.gc_lock.read().await;
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.export_blocking(&images, &path))
            .await
            .map_err(|e| Error::io("export", std::io::Error::other(e)))?
    }

    fn export_blocking(&self, images: &[(String, Digest)], path: &Path) -> Result<Exported> {
        let (Some(dir), Some(file_name)) = (path.parent(), path.file_name()) else {
            return Err(Error::InvalidArgument(format!("{} names no file", path.display())));
        };
        let tmp = dir.join(format!(".{}.berth-tmp-{}", file_name.to_string_lossy(), std::process::id()));
        let written = (|| -> Result<Exported> {
            let file = File::create(&tmp).map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
            let mut w = BufWriter::new(file);
            let exported = berth_images::export(&self.content, images, &mut w)?;
            let file = w.into_inner().map_err(|e| Error::io("write archive", e.into_error()))?;
            file.sync_all().map_err(|e| Error::io("sync archive", e))?;
            std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("rename to {}", path.display()), e))?;
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(exported)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Records `target` as another name of `source`'s image.
    pub fn tag(&self, source: &str, target: &str) -> Result<ImageRecord> {
        let mut rec = self.get(source)?;
        rec.name = normalize_reference(target)?;
        rec.stored_at = crate::now_ns() / 1_000_000_000;
        self.names.put(&rec)?;
        Ok(rec)
    }

    pub fn inspect(&self, reference: &str) -> Result<Inspected> {
        let record = self.get(reference)?;
        let resolved = resolve(&self.content, &record.manifest_digest.parse()?, &Platform::default())?;
        let run = RunConfig::from_config(&resolved.config);
        Ok(Inspected { record, resolved, run })
    }

    /// Collects garbage: every named image is a root; pulls and imports
    /// in progress are waited for.
    pub async fn collect(self: &Arc<Self>) -> Result<Collected> {
        let _exclusive = self.gc_lock.write().await;
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut roots = Roots::default();
            for rec in me.names.list()? {
                for d in [&rec.digest, &rec.manifest_digest] {
                    if let Ok(d) = d.parse::<Digest>()
                        && me.content.exists(&d)?
                    {
                        roots.images.push(d);
                    }
                }
            }
            let freed = gc::collect(&me.content, &me.snapshots, &roots)?;
            tracing::info!(
                blobs = freed.blobs_removed,
                blob_bytes = freed.blob_bytes,
                snapshots = freed.snapshots_removed,
                snapshot_bytes = freed.snapshot_bytes,
                in_use = ?freed.snapshots_in_use,
                "image garbage collected"
            );
            Ok(freed)
        })
        .await
        .map_err(|e| Error::io("collect", std::io::Error::other(e)))?
    }
}

impl Manager {
    /// Removes an image name, then collects garbage. A container (running
    /// or stopped) created from the name makes it FailedPrecondition,
    /// unless `force`: then the name goes and the container keeps its
    /// snapshot chain.
    pub async fn remove_image(&self, reference: &str, force: bool) -> Result<Collected> {
        let name = normalize_reference(reference)?;
        self.images.names.get(&name)?;
        if !force && let Some(rec) = self.store.list(None)?.into_iter().find(|r| r.image == name) {
            return Err(Error::FailedPrecondition(format!(
                "image {name} is used by container {}/{} (remove it first, or rmi -f)",
                rec.namespace, rec.id
            )));
        }
        self.images.remove(&name)?;
        self.images.collect().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_skip_bare_tags() {
        assert_eq!(archive_name(None), None);
        assert_eq!(archive_name(Some("latest")), None);
        assert_eq!(archive_name(Some("127.0.0.1:5000/a:1")).as_deref(), Some("127.0.0.1:5000/a:1"));
        assert_eq!(archive_name(Some("busybox:1")).as_deref(), Some("docker.io/library/busybox:1"));
        assert_eq!(archive_name(Some("Bad:Name:x/y")), None);
    }

    #[test]
    fn archive_paths_must_be_absolute() {
        assert!(matches!(absolute("x.tar", "archive"), Err(Error::InvalidArgument(_))));
        assert!(matches!(absolute("", "archive"), Err(Error::InvalidArgument(_))));
        assert!(absolute("/tmp/x.tar", "archive").is_ok());
    }
}
