//! Named volumes (issue 10, item 7): directories under
//! `<root>/volumes/<name>/_data`, each with a small `volume.json` record,
//! shared by all namespaces. A volume is made whole in a hidden temporary
//! directory and renamed into place, and removed by renaming it away
//! first, so a crash never leaves half a volume visible (startup removes
//! the leftovers). Volumes outlive their containers; removal is refused
//! while any container record (running or stopped) or a create in flight
//! uses the volume (SPEC B32).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use berth_store::{ContainerRecord, fsync_dir, write_atomic};

use crate::error::{Error, Result};
use crate::manager::Manager;
use crate::mounts::check_volume_name;

const RECORD: &str = "volume.json";
const DATA: &str = "_data";
/// Prefixes of work directories (never valid volume names: they start
/// with a dot).
const TMP_PREFIX: &str = ".tmp-";
const RM_PREFIX: &str = ".rm-";

/// A volume as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub mountpoint: PathBuf,
    pub created_at_ns: u64,
    /// `namespace/id` of each container that uses it.
    pub used_by: Vec<String>,
}

pub struct Volumes {
    dir: PathBuf,
    /// Volumes used by creates in flight (name → count); guarded together
    /// with the in-use check of a removal.
    busy: Mutex<HashMap<String, usize>>,
    /// Held while a create pre-fills a volume from its image.
    pub(crate) filling: tokio::sync::Mutex<()>,
}

/// Releases a create's hold on its volumes, however the create ends.
pub struct Hold<'a> {
    volumes: &'a Volumes,
    names: Vec<String>,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        let mut busy = self.volumes.lock();
        for n in &self.names {
            if let Some(count) = busy.get_mut(n) {
                *count -= 1;
                if *count == 0 {
                    busy.remove(n);
                }
            }
        }
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("{what} {}", path.display()), e)
}

impl Volumes {
    /// The volumes under `root`; removes what a crash left half made or
    /// half removed.
    pub fn new(root: &Path) -> Volumes {
        let dir = root.join("volumes");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if (name.starts_with(TMP_PREFIX) || name.starts_with(RM_PREFIX))
                    && let Err(err) = std::fs::remove_dir_all(e.path())
                {
                    tracing::warn!("remove leftover volume work directory {name}: {err}");
                }
            }
        }
        Volumes { dir, busy: Mutex::default(), filling: tokio::sync::Mutex::new(()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The host directory mounted into containers.
    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name).join(DATA)
    }

    pub fn exists(&self, name: &str) -> bool {
        self.dir.join(name).join(RECORD).is_file()
    }

    /// Marks volumes as used by a create in flight, so a removal waits for
    /// the create's record (or its rollback).
    pub fn hold(&self, names: &[String]) -> Hold<'_> {
        let mut busy = self.lock();
        for n in names {
            *busy.entry(n.clone()).or_default() += 1;
        }
        Hold { volumes: self, names: names.to_vec() }
    }

    /// Creates the volume unless it exists; true when this call created it.
    pub fn ensure(&self, name: &str) -> Result<bool> {
        check_volume_name(name)?;
        if self.exists(name) {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| io("create", &self.dir, e))?;
        let tmp = self.dir.join(format!("{TMP_PREFIX}{name}-{}", crate::now_ns()));
        let made = (|| {
            std::fs::create_dir(&tmp)?;
            std::fs::create_dir(tmp.join(DATA))?;
            // Like Docker's: containers running as any user may write.
            std::fs::set_permissions(tmp.join(DATA), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
            let record = serde_json::json!({ "name": name, "created_at_ns": crate::now_ns() });
            write_atomic(&tmp.join(RECORD), record.to_string().as_bytes())?;
            fsync_dir(&tmp)?;
            std::fs::rename(&tmp, self.dir.join(name))?;
            fsync_dir(&self.dir)
        })();
        match made {
            Ok(()) => Ok(true),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                // Another create made it at the same moment.
                if self.exists(name) { Ok(false) } else { Err(io("create volume", &self.dir.join(name), e)) }
            }
        }
    }

    fn read(&self, name: &str) -> Result<Volume> {
        let path = self.dir.join(name).join(RECORD);
        let text = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::VolumeNotFound(name.to_string()),
            _ => io("read", &path, e),
        })?;
        let v: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| io("parse", &path, std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        let created_at_ns = v.get("created_at_ns").and_then(serde_json::Value::as_u64).unwrap_or(0);
        Ok(Volume { name: name.to_string(), mountpoint: self.data_dir(name), created_at_ns, used_by: Vec::new() })
    }

    fn names(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("read", &self.dir, e)),
        };
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| check_volume_name(n).is_ok() && self.exists(n))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Removes a volume and its data: renamed away first (atomic), then
    /// deleted.
    fn remove_dir(&self, name: &str) -> Result<()> {
        let from = self.dir.join(name);
        let to = self.dir.join(format!("{RM_PREFIX}{name}-{}", crate::now_ns()));
        std::fs::rename(&from, &to).map_err(|e| io("remove", &from, e))?;
        fsync_dir(&self.dir).map_err(|e| io("sync", &self.dir, e))?;
        std::fs::remove_dir_all(&to).map_err(|e| io("remove", &to, e))
    }
}

/// `namespace/id` of every container whose record names the volume.
fn users(recs: &[ContainerRecord], name: &str) -> Vec<String> {
    recs.iter().filter(|r| r.volumes.iter().any(|v| v == name)).map(|r| format!("{}/{}", r.namespace, r.id)).collect()
}

impl Manager {
    fn volume_users(&self, name: &str) -> Result<Vec<String>> {
        Ok(users(&self.store.list(None)?, name))
    }

    pub fn volume_create(&self, name: &str) -> Result<Volume> {
        self.volumes.ensure(name)?;
        self.volume_get(name)
    }

    pub fn volume_get(&self, name: &str) -> Result<Volume> {
        check_volume_name(name)?;
        let mut v = self.volumes.read(name)?;
        v.used_by = self.volume_users(name)?;
        Ok(v)
    }

    pub fn volume_list(&self) -> Result<Vec<Volume>> {
        let recs = self.store.list(None)?;
        let mut out = Vec::new();
        for name in self.volumes.names()? {
            let mut v = match self.volumes.read(&name) {
                Ok(v) => v,
                Err(Error::VolumeNotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            v.used_by = users(&recs, &name);
            out.push(v);
        }
        Ok(out)
    }

    /// Removes a volume that no container uses (SPEC B32).
    pub fn volume_remove(&self, name: &str) -> Result<()> {
        check_volume_name(name)?;
        let busy = self.volumes.lock();
        if !self.volumes.exists(name) {
            return Err(Error::VolumeNotFound(name.to_string()));
        }
        let users = self.volume_users(name)?;
        if let Some(first) = users.first() {
            return Err(Error::FailedPrecondition(format!(
                "volume {name} is in use by container {first}{}",
                if users.len() > 1 { format!(" (and {} more)", users.len() - 1) } else { String::new() }
            )));
        }
        if busy.contains_key(name) {
            return Err(Error::FailedPrecondition(format!("volume {name} is in use by a container being created")));
        }
        self.volumes.remove_dir(name)
    }

    /// Rollback of a failed create (or, at startup, of one a crash cut
    /// short): removes a volume that create made, unless something else
    /// uses it by now.
    pub(crate) fn volume_release_new(&self, name: &str) -> Result<()> {
        self.volume_undo(name, || self.volumes.remove_dir(name))
    }

    /// Rollback of a pre-fill from the image (`volume_fill.rs`): empties
    /// the volume again, unless something else uses it by now.
    pub(crate) fn volume_unfill(&self, name: &str) -> Result<()> {
        self.volume_undo(name, || crate::volume_fill::empty(&self.volumes.data_dir(name)))
    }

    /// Runs `undo` on an existing volume that nothing but the failed
    /// create uses, holding the in-use lock.
    fn volume_undo(&self, name: &str, undo: impl FnOnce() -> Result<()>) -> Result<()> {
        let busy = self.volumes.lock();
        // The failed create still holds it once.
        if busy.get(name).copied().unwrap_or(0) > 1 || !self.volume_users(name)?.is_empty() {
            return Ok(());
        }
        if !self.volumes.exists(name) {
            return Ok(());
        }
        undo()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_appear_whole_and_leftovers_go_at_start() {
        let root = std::env::temp_dir().join(format!("berth-volumes-{}-{}", std::process::id(), crate::now_ns()));
        let v = Volumes::new(&root);
        assert_eq!(v.names().expect("no directory yet"), Vec::<String>::new());
        assert!(v.ensure("data").expect("create"));
        assert!(!v.ensure("data").expect("exists"), "a second ensure creates nothing");
        assert!(v.data_dir("data").is_dir());
        assert!(matches!(v.ensure("../x"), Err(Error::InvalidArgument(_))));
        // What a crash leaves: half made and half removed volumes.
        for junk in [".tmp-half-1", ".rm-gone-2"] {
            std::fs::create_dir_all(root.join("volumes").join(junk).join(DATA)).expect("junk");
        }
        assert_eq!(v.names().expect("list"), ["data"]);
        let v = Volumes::new(&root);
        let mut left: Vec<String> = std::fs::read_dir(root.join("volumes"))
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["data"]);
        v.remove_dir("data").expect("remove");
        assert!(!root.join("volumes/data").exists());
        assert!(matches!(v.read("data"), Err(Error::VolumeNotFound(_))));
        let _ = std::fs::remove_dir_all(&root);
    }
}
