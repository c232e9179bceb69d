//! Snapshot names and per-snapshot metadata: validation of keys and chain
//! ids (they become directory names, so never a path), and the small JSON
//! file each snapshot directory keeps, written atomically.

use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ImageError;

/// Name of the metadata file inside every snapshot directory.
pub(super) const META: &str = "meta.json";

/// What a snapshot directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Kind {
    /// A layer being unpacked (lives under `tmp/`).
    Prepare,
    /// An immutable layer, keyed by chain id.
    Committed,
    /// A container's writable snapshot.
    Active,
}

/// The metadata file of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Meta {
    pub kind: Kind,
    /// The key (prepare, active) or chain id (committed).
    pub name: String,
    /// Chain id of the parent committed snapshot.
    pub parent: Option<String>,
    /// Creation time, seconds since the epoch.
    pub created: u64,
}

impl Meta {
    pub fn new(kind: Kind, name: &str, parent: Option<&str>) -> Meta {
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Meta { kind, name: name.to_string(), parent: parent.map(str::to_string), created }
    }

    /// Writes `dir/meta.json` atomically (temp, fsync, rename, fsync dir).
    pub fn write(&self, dir: &Path) -> Result<(), ImageError> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| ImageError::io("encode snapshot metadata", io::Error::other(e)))?;
        let path = dir.join(META);
        berth_store::write_atomic(&path, &bytes).map_err(|e| ImageError::io(format!("write {}", path.display()), e))
    }

    /// Reads `dir/meta.json`; a missing directory or file is NotFound.
    pub fn read(dir: &Path, what: &str) -> Result<Meta, ImageError> {
        let path = dir.join(META);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ImageError::NotFound(what.to_string())),
            Err(e) => return Err(ImageError::io(format!("read {}", path.display()), e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            ImageError::io(format!("parse {}", path.display()), io::Error::new(io::ErrorKind::InvalidData, e))
        })
    }
}

/// Checks a snapshot key: `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}` (SPEC B2 id
/// syntax), so it is one path component and never `.` or `..`.
pub fn validate_key(key: &str) -> Result<(), ImageError> {
    let mut chars = key.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || key.len() > 128 || key.contains("..") {
        return Err(ImageError::InvalidArgument(format!(
            "invalid snapshot key {key:?}: want [A-Za-z0-9][A-Za-z0-9_.-]{{0,127}} without \"..\""
        )));
    }
    Ok(())
}

/// Checks a chain id (`sha256:` and 64 lowercase hex digits) and returns
/// its hex part, the committed snapshot's directory name.
pub fn chain_hex(chain_id: &str) -> Result<&str, ImageError> {
    match chain_id.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
            Ok(hex)
        }
        _ => Err(ImageError::InvalidArgument(format!(
            "invalid chain id {chain_id:?}: want sha256:<64 lowercase hex digits>"
        ))),
    }
}

/// The chain id of a layer (OCI image spec): its diff id for a base layer,
/// else `sha256(parent_chain_id + " " + diff_id)`. Both inputs are checked.
pub fn chain_id(parent: Option<&str>, diff_id: &str) -> Result<String, ImageError> {
    chain_hex(diff_id)?;
    match parent {
        None => Ok(diff_id.to_string()),
        Some(p) => {
            chain_hex(p)?;
            Ok(format!("sha256:{}", hex::encode(Sha256::digest(format!("{p} {diff_id}").as_bytes()))))
        }
    }
}
