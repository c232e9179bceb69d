//! Image records (issue 10): a name (`registry/repo:tag`, normalised) →
//! the manifest and config digests, the layers' diff ids, the chain id of
//! the top layer, size and creation time. One small JSON file per name
//! under `<root>/`, written atomically (`berth_store::write_atomic`), the
//! name percent-escaped into a safe file name. Names are references to
//! content and snapshots, never their owners: removing a name frees
//! nothing by itself (garbage collection decides what is unused).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use crate::{ContentStore, Digest, ImageError};

/// Longest escaped file name (NAME_MAX less room for the suffix).
const MAX_FILE_NAME: usize = 240;
const SUFFIX: &str = ".json";

/// One named image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The normalised reference (`docker.io/library/busybox:latest`).
    pub name: String,
    /// The manifest pulled for the platform.
    pub manifest_digest: String,
    /// What the reference resolved to (an index, or the manifest itself).
    #[serde(default)]
    pub digest: String,
    pub config_digest: String,
    /// The layers' diff ids, base first (the config's rootfs.diff_ids).
    pub diff_ids: Vec<String>,
    /// Chain id of the top layer: the parent of containers' snapshots.
    pub chain_id: String,
    /// Compressed size of the layers and the config, in bytes.
    pub size: u64,
    /// The image config's creation time (RFC 3339), if it has one.
    #[serde(default)]
    pub created: String,
    /// When this name was stored, seconds since the epoch.
    #[serde(default)]
    pub stored_at: u64,
}

/// What a container takes from its image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: String,
}

impl RunConfig {
    pub fn from_config(config: &ImageConfiguration) -> RunConfig {
        let Some(c) = config.config() else { return RunConfig::default() };
        RunConfig {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
            stop_signal: c.stop_signal().clone().unwrap_or_default(),
        }
    }
}

/// Reads and parses the config blob `digest` from the content store.
pub fn read_config(content: &ContentStore, digest: &str) -> Result<ImageConfiguration, ImageError> {
    let digest: Digest = digest.parse()?;
    let file = content.open_blob(&digest)?;
    ImageConfiguration::from_reader(io::BufReader::new(file))
        .map_err(|e| ImageError::InvalidArgument(format!("image config {digest}: {e}")))
}

/// Normalises a user's reference the way a pull names the image
/// (`busybox` → `docker.io/library/busybox:latest`).
pub fn normalize_reference(reference: &str) -> Result<String, ImageError> {
    let parsed: oci_client::Reference = reference
        .parse()
        .map_err(|e| ImageError::InvalidArgument(format!("invalid image reference {reference:?}: {e}")))?;
    Ok(parsed.whole())
}

/// The image names, one file each.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<ImageStore, ImageError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| ImageError::io(format!("create {}", dir.display()), e))?;
        Ok(ImageStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> Result<PathBuf, ImageError> {
        let file = escape(name) + SUFFIX;
        if name.is_empty() || file.len() > MAX_FILE_NAME {
            return Err(ImageError::InvalidArgument(format!("image name {name:?} is empty or too long")));
        }
        Ok(self.dir.join(file))
    }

    /// Stores (or replaces) the record of `record.name`.
    pub fn put(&self, record: &ImageRecord) -> Result<(), ImageError> {
        let path = self.path(&record.name)?;
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| ImageError::io("encode image record", io::Error::other(e)))?;
        berth_store::write_atomic(&path, &bytes).map_err(|e| ImageError::io(format!("write {}", path.display()), e))
    }

    /// The record named `name` (normalised), NotFound if none.
    pub fn get(&self, name: &str) -> Result<ImageRecord, ImageError> {
        let path = self.path(name)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ImageError::NotFound(format!("image {name}")));
            }
            Err(e) => return Err(ImageError::io(format!("read {}", path.display()), e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            ImageError::io(format!("parse {}", path.display()), io::Error::new(io::ErrorKind::InvalidData, e))
        })
    }

    /// Every record, by name. Unreadable files (not records) are skipped.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let what = || format!("list {}", self.dir.display());
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| ImageError::io(what(), e))? {
            let entry = entry.map_err(|e| ImageError::io(what(), e))?;
            let Some(name) = entry.file_name().to_str().and_then(|n| n.strip_suffix(SUFFIX)).map(unescape) else {
                continue;
            };
            match self.get(&name) {
                Ok(rec) if rec.name == name => out.push(rec),
                _ => continue,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes the name `name` (NotFound if absent).
    pub fn remove(&self, name: &str) -> Result<(), ImageError> {
        let path = self.path(name)?;
        match fs::remove_file(&path) {
            Ok(()) => berth_store::fsync_dir(&self.dir).map_err(|e| ImageError::io("fsync images", e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ImageError::NotFound(format!("image {name}"))),
            Err(e) => Err(ImageError::io(format!("remove {}", path.display()), e)),
        }
    }
}

/// Percent-escapes everything but `[A-Za-z0-9._-]`, so a name is one safe
/// path component (never `.` or `..`: a leading dot is escaped too).
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() * 2);
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(file: &str) -> String {
    let bytes = file.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = file.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> ImageRecord {
        ImageRecord {
            name: name.into(),
            manifest_digest: Digest::of(b"m").to_string(),
            digest: Digest::of(b"m").to_string(),
            config_digest: Digest::of(b"c").to_string(),
            diff_ids: vec![Digest::of(b"l").to_string()],
            chain_id: Digest::of(b"l").to_string(),
            size: 42,
            created: "2024-01-01T00:00:00Z".into(),
            stored_at: 1,
        }
    }

    #[test]
    fn put_get_list_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(dir.path().join("images")).expect("open");
        let names = ["127.0.0.1:5000/test:1", "docker.io/library/busybox:latest", "r/a@sha256:00"];
        for n in names {
            store.put(&record(n)).expect("put");
        }
        for entry in fs::read_dir(store.dir()).expect("read") {
            let file = entry.expect("entry").file_name().into_string().expect("utf-8");
            assert!(!file.contains('/') && !file.contains(':') && !file.starts_with('.'), "{file}");
        }
        assert_eq!(store.get(names[0]).expect("get"), record(names[0]));
        let listed: Vec<String> = store.list().expect("list").into_iter().map(|r| r.name).collect();
        let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(listed, want);
        let mut replaced = record(names[0]);
        replaced.size = 7;
        store.put(&replaced).expect("replace");
        assert_eq!(store.get(names[0]).expect("get").size, 7);
        store.remove(names[0]).expect("remove");
        assert_eq!(store.get(names[0]).unwrap_err().code(), berth_model::Code::NotFound);
        assert_eq!(store.remove(names[0]).unwrap_err().code(), berth_model::Code::NotFound);
        assert_eq!(store.list().expect("list").len(), 2);
        for bad in ["", &"x".repeat(300)] {
            assert_eq!(store.get(bad).unwrap_err().code(), berth_model::Code::InvalidArgument);
        }
        assert_eq!(store.get("../../etc/passwd").unwrap_err().code(), berth_model::Code::NotFound);
    }

    #[test]
    fn escaping_round_trips() {
        for n in ["a/b:c", "..", ".hidden", "x%y", "127.0.0.1:5000/t@sha256:ab"] {
            let e = escape(n);
            assert!(!e.contains('/') && e != "." && e != ".." && !e.starts_with('.'), "{e}");
            assert_eq!(unescape(&e), n);
        }
    }

    #[test]
    fn references_are_normalised() {
        assert_eq!(normalize_reference("busybox").expect("ref"), "docker.io/library/busybox:latest");
        assert_eq!(normalize_reference("127.0.0.1:5000/test:1").expect("ref"), "127.0.0.1:5000/test:1");
        assert_eq!(normalize_reference("Not A Ref!").unwrap_err().code(), berth_model::Code::InvalidArgument);
    }
}
