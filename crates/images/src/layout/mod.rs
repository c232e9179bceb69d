//! Image archives (issue 10 item 5): [`import`] of OCI image layout tars
//! and `docker save` tars into the content store, [`export`] of images as
//! an OCI image layout tar. Knows nothing of the daemon's image names
//! beyond returning and accepting them; also home of the one reading of
//! manifests and indexes that import, export and GC share.
//!
//! Archive format decisions:
//! - An archive with an `index.json` is an OCI image layout (this covers
//!   Docker 25+ `docker save`, which also carries a `manifest.json`); its
//!   images keep their digests. Otherwise `manifest.json` makes it a legacy
//!   `docker save` archive, whose layers (plain `.tar` files) are stored as
//!   blobs as they are, and for which an OCI image manifest is built
//!   (config `application/vnd.oci.image.config.v1+json`, layers
//!   `…layer.v1.tar[+gzip|+zstd]` by their magic bytes) and stored.
//! - Only `blobs/sha256/<hex>` names are taken as digests (verified while
//!   written); any other file is hashed while it is spooled, then written
//!   through the content store's verifying writer.
//! - A referenced blob that is neither in the archive nor already in the
//!   store refuses the import; verified blobs written before the refusal
//!   stay, unreferenced, for GC (they are content-addressed and harmless).

mod docker;
mod export;
mod import;
mod spool;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::pull::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use crate::{ContentStore, Digest, ImageError};

pub use export::{Exported, export};
pub use import::{ImportedImage, import};

/// The largest manifest, index, config or layout JSON file read into memory.
pub const MAX_JSON_SIZE: u64 = 16 << 20;
/// Index annotation holding an image's full name (containerd, Docker 25+).
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// OCI index annotation holding an image's reference name.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Media type of an OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of a Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Indexes nest at most this deep (an index of indexes of manifests is 2).
const MAX_DEPTH: usize = 4;
/// The longest image name accepted in or written to an archive.
const MAX_NAME_LEN: usize = 255;

/// A content descriptor as manifests and indexes carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What a manifest-like blob references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// An OCI index or Docker manifest list.
    Index { media_type: String, manifests: Vec<Descriptor> },
    /// An OCI or Docker schema-2 image manifest.
    Manifest { media_type: String, config: Descriptor, layers: Vec<Descriptor> },
}

impl Node {
    pub fn media_type(&self) -> &str {
        match self {
            Node::Index { media_type, .. } | Node::Manifest { media_type, .. } => media_type,
        }
    }
}

#[derive(Deserialize)]
struct RawNode {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u64>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

/// Recognises `bytes` (the blob `digest`) as an index or an image manifest:
/// by `mediaType` when present, else by shape. Anything else is refused.
pub(crate) fn parse_node(digest: &Digest, bytes: &[u8]) -> Result<Node, ImageError> {
    let invalid = |why: String| ImageError::InvalidArgument(format!("manifest {digest}: {why}"));
    let raw: RawNode = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    if raw.schema_version != Some(2) {
        return Err(invalid("schemaVersion is not 2".into()));
    }
    let media_type = match (raw.media_type, &raw.manifests, &raw.config) {
        (Some(m), _, _) => m,
        (None, Some(_), None) => OCI_INDEX.to_string(),
        (None, None, Some(_)) => OCI_MANIFEST.to_string(),
        _ => return Err(invalid("neither an index nor an image manifest".into())),
    };
    match media_type.as_str() {
        OCI_INDEX | DOCKER_LIST => {
            let manifests = raw.manifests.ok_or_else(|| invalid("index without manifests".into()))?;
            Ok(Node::Index { media_type, manifests })
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = raw.config.ok_or_else(|| invalid("manifest without config".into()))?;
            Ok(Node::Manifest { media_type, config, layers: raw.layers.unwrap_or_default() })
        }
        other => Err(ImageError::FailedPrecondition(format!("manifest {digest}: unsupported media type {other}"))),
    }
}

/// Reads a stored blob of at most `limit` bytes into memory.
pub(crate) fn read_blob(content: &ContentStore, digest: &Digest, limit: u64) -> Result<Vec<u8>, ImageError> {
    let file = content.open_blob(digest)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| ImageError::io(format!("read blob {digest}"), e))?;
    if bytes.len() as u64 > limit {
        return Err(ImageError::InvalidArgument(format!("blob {digest} is larger than {limit} bytes")));
    }
    Ok(bytes)
}

/// Reads and recognises the stored manifest or index `digest`.
pub(crate) fn read_node(content: &ContentStore, digest: &Digest) -> Result<Node, ImageError> {
    parse_node(digest, &read_blob(content, digest, MAX_JSON_SIZE)?)
}

/// The `rootfs.diff_ids` of an image config, base layer first.
pub(crate) fn diff_ids(digest: &Digest, config: &[u8]) -> Result<Vec<Digest>, ImageError> {
    #[derive(Deserialize)]
    struct RootFs {
        #[serde(rename = "type")]
        kind: String,
        diff_ids: Vec<Digest>,
    }
    #[derive(Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    let config: Config = serde_json::from_slice(config)
        .map_err(|e| ImageError::InvalidArgument(format!("image config {digest}: {e}")))?;
    if config.rootfs.kind != "layers" {
        return Err(ImageError::InvalidArgument(format!(
            "image config {digest}: rootfs type {:?} is not \"layers\"",
            config.rootfs.kind
        )));
    }
    Ok(config.rootfs.diff_ids)
}

/// Checks an image name found in or written to an archive: bounded, no
/// whitespace or control characters (the daemon parses it further).
pub(crate) fn check_name(name: &str) -> Result<(), ImageError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ImageError::InvalidArgument(format!(
            "invalid image name {name:?}: want 1 to {MAX_NAME_LEN} characters without spaces or control characters"
        )));
    }
    Ok(())
}
