//! Legacy `docker save` archives: `manifest.json` lists, per image, its
//! config file, its layer files (plain tars, base first) and its
//! `RepoTags`. Their blobs are in the store already (imported as they
//! streamed); here each image gets an OCI image manifest built for it,
//! checked against its config's diff ids, and stored — so an imported
//! Docker image is an ordinary OCI image from then on.

use std::io::Read;

use serde::{Deserialize, Serialize};

use super::import::{ImportedImage, Seen, clean_path};
use super::{Descriptor, MAX_JSON_SIZE, OCI_CONFIG, check_name, diff_ids, read_blob};
use crate::pull::OCI_MANIFEST;
use crate::{ContentStore, Digest, ImageError};

const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// One image of `manifest.json`.
#[derive(Deserialize)]
struct Item {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// The OCI image manifest built for an item (fields in OCI order).
#[derive(Serialize)]
struct Manifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// Builds, checks and stores an OCI manifest for every image listed in
/// `manifest_json`; nothing is stored unless every image checked out.
pub(super) fn import(
    content: &ContentStore,
    manifest_json: &[u8],
    seen: &Seen,
) -> Result<Vec<ImportedImage>, ImageError> {
    let items: Vec<Item> = serde_json::from_slice(manifest_json)
        .map_err(|e| ImageError::InvalidArgument(format!("manifest.json: {e}")))?;
    let mut built = Vec::new();
    for item in &items {
        let bytes = build(content, item, seen)?;
        let names = item.repo_tags.clone().unwrap_or_default();
        for name in &names {
            check_name(name)?;
        }
        built.push((bytes, names));
    }
    let mut images = Vec::new();
    for (bytes, names) in built {
        let digest = Digest::of(&bytes);
        if !content.exists(&digest)? {
            let mut writer = content.writer(digest, Some(bytes.len() as u64))?;
            std::io::Write::write_all(&mut writer, &bytes)
                .map_err(|e| ImageError::io(format!("store manifest {digest}"), e))?;
            writer.commit()?;
        }
        let image = |name| ImportedImage { name, manifest_digest: digest, manifest_media_type: OCI_MANIFEST.into() };
        if names.is_empty() {
            images.push(image(None));
        }
        images.extend(names.into_iter().map(|n| image(Some(n))));
    }
    Ok(images)
}

/// The manifest bytes for one item, its blobs checked.
fn build(content: &ContentStore, item: &Item, seen: &Seen) -> Result<Vec<u8>, ImageError> {
    let config = blob(content, &item.config, seen)?;
    let ids = diff_ids(&config.digest, &read_blob(content, &config.digest, MAX_JSON_SIZE)?)?;
    if ids.len() != item.layers.len() {
        return Err(ImageError::InvalidArgument(format!(
            "manifest.json: image {} lists {} layers but its config {} diff ids",
            item.config,
            item.layers.len(),
            ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (path, diff_id) in item.layers.iter().zip(&ids) {
        let mut layer = blob(content, path, seen)?;
        layer.media_type = layer_media_type(content, &layer.digest)?.to_string();
        if layer.media_type == LAYER_TAR && layer.digest != *diff_id {
            return Err(ImageError::InvalidArgument(format!(
                "manifest.json: layer {path} hashes to {}, its config says {diff_id}",
                layer.digest
            )));
        }
        layers.push(layer);
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: OCI_MANIFEST,
        config: Descriptor { media_type: OCI_CONFIG.into(), ..config },
        layers,
    };
    serde_json::to_vec(&manifest).map_err(|e| ImageError::io("encode manifest", std::io::Error::other(e)))
}

/// The stored blob `manifest.json` names by archive path.
fn blob(content: &ContentStore, path: &str, seen: &Seen) -> Result<Descriptor, ImageError> {
    let clean = clean_path(path.as_bytes())
        .map_err(|why| ImageError::InvalidArgument(format!("manifest.json: path {path:?}: {why}")))?;
    let digest = seen
        .resolve(&clean)
        .ok_or_else(|| ImageError::InvalidArgument(format!("archive lacks {path:?} referenced by manifest.json")))?;
    let size = content.size(&digest)?;
    Ok(Descriptor { media_type: String::new(), digest, size, annotations: Default::default() })
}

/// A layer's OCI media type, by its magic bytes.
fn layer_media_type(content: &ContentStore, digest: &Digest) -> Result<&'static str, ImageError> {
    let mut magic = Vec::with_capacity(4);
    content
        .open_blob(digest)?
        .take(4)
        .read_to_end(&mut magic)
        .map_err(|e| ImageError::io(format!("read blob {digest}"), e))?;
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        LAYER_GZIP
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        LAYER_ZSTD
    } else {
        LAYER_TAR
    })
}
