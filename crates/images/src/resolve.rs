//! Resolving a stored image (issue 10 item 5): from the digest a name
//! points at — an index (the platform's manifest is chosen) or a manifest
//! — to the manifest and its config, all read from the content store.
//! Used by import (to unpack and name what an archive held) and inspect.

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

use crate::layout::{MAX_JSON_SIZE, Node, parse_node, read_blob};
use crate::{ContentStore, Digest, ImageError, Platform, read_config};

/// Indexes nest at most this deep below the named digest.
const MAX_DEPTH: usize = 4;

/// A stored image for one platform.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
}

impl Resolved {
    /// Compressed size of the layers and the config, in bytes.
    pub fn size(&self) -> u64 {
        self.manifest.layers().iter().map(|l| l.size()).sum::<u64>() + self.manifest.config().size()
    }
}

/// Follows `digest` (an index or a manifest) to the manifest for
/// `platform` and reads its config. Everything must be stored.
pub fn resolve(content: &ContentStore, digest: &Digest, platform: &Platform) -> Result<Resolved, ImageError> {
    let mut digest = *digest;
    for _ in 0..=MAX_DEPTH {
        let bytes = read_blob(content, &digest, MAX_JSON_SIZE)?;
        match parse_node(&digest, &bytes)? {
            Node::Index { .. } => {
                let index = ImageIndex::from_reader(bytes.as_slice())
                    .map_err(|e| ImageError::InvalidArgument(format!("index {digest}: {e}")))?;
                digest = platform.select(&index)?.digest().to_string().parse()?;
            }
            Node::Manifest { .. } => {
                let manifest = ImageManifest::from_reader(bytes.as_slice())
                    .map_err(|e| ImageError::InvalidArgument(format!("manifest {digest}: {e}")))?;
                let config = read_config(content, manifest.config().digest().as_ref())?;
                return Ok(Resolved { manifest_digest: digest, manifest, config });
            }
        }
    }
    Err(ImageError::InvalidArgument(format!("indexes nest deeper than {MAX_DEPTH} below {digest}")))
}
