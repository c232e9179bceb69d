//! Import of an image archive (OCI image layout or `docker save` tar,
//! optionally gzip or zstd compressed) as it streams: every file goes into
//! the content store verified (see `spool.rs`), the small JSON files stay
//! in memory, nothing is extracted anywhere else. Entry names, types and
//! link targets are checked before anything is read (SPEC B31); the images
//! found are checked complete before they are returned.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};

use super::spool::{archive_error, store_named, store_unnamed};
use super::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, DOCKER_CONFIG, Descriptor, MAX_DEPTH, MAX_JSON_SIZE, Node};
use super::{check_name, diff_ids, docker, parse_node, read_blob, read_node};
use crate::{ContentStore, Digest, ImageError};

/// At most this many entries in one archive.
const MAX_ENTRIES: u64 = 1_000_000;
/// The longest entry name accepted (OCI and Docker names are far shorter).
const MAX_PATH_LEN: usize = 255;
/// The deepest entry name accepted (`blobs/sha256/<hex>`).
const MAX_COMPONENTS: usize = 3;
/// A chain of links longer than this is refused.
const MAX_LINK_HOPS: usize = 8;

/// One image an archive held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    /// From `io.containerd.image.name`, else `org.opencontainers.image.ref.name`
    /// (OCI layout; may be a bare tag like `latest`), or one `RepoTags`
    /// entry (`docker save`); as written in the archive, for the caller
    /// to parse. `None`: the image is unnamed.
    pub name: Option<String>,
    /// The manifest (or, for a multi-platform image, the index) digest.
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
}

/// What the stream held besides blobs.
#[derive(Default)]
pub(super) struct Seen {
    /// Regular files stored as blobs, by archive path.
    files: HashMap<String, Digest>,
    /// Symbolic and hard links: archive path → target archive path.
    links: HashMap<String, String>,
    oci_layout: Option<Vec<u8>>,
    index_json: Option<Vec<u8>>,
    manifest_json: Option<Vec<u8>>,
}

impl Seen {
    /// The digest of the blob stored for archive path `path` (links followed).
    pub(super) fn resolve(&self, path: &str) -> Option<Digest> {
        let mut path = path;
        for _ in 0..=MAX_LINK_HOPS {
            if let Some(digest) = self.files.get(path) {
                return Some(*digest);
            }
            path = self.links.get(path)?;
        }
        None
    }
}

/// Imports every image of the archive read from `reader` into `content`.
/// Errors are typed: InvalidArgument for a malformed, hostile or
/// incomplete archive, SizeMismatch for a blob unlike its descriptor,
/// FailedPrecondition for manifests berth cannot run, Io for the system.
pub fn import<R: Read>(content: &ContentStore, reader: R) -> Result<Vec<ImportedImage>, ImageError> {
    let seen = stream(content, decompressed(reader)?)?;
    if let Some(index) = &seen.index_json {
        import_layout(content, &seen, index)
    } else if let Some(manifest) = &seen.manifest_json {
        docker::import(content, manifest, &seen)
    } else {
        Err(ImageError::InvalidArgument(
            "neither an OCI image layout (no index.json) nor a docker save archive (no manifest.json)".into(),
        ))
    }
}

/// The archive, decompressed if its first bytes say gzip or zstd.
fn decompressed<'a, R: Read + 'a>(reader: R) -> Result<Box<dyn Read + 'a>, ImageError> {
    let mut reader = BufReader::new(reader);
    let magic = reader.fill_buf().map_err(|e| archive_error("header", e))?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(reader)))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let decoder = zstd::Decoder::with_buffer(reader).map_err(|e| archive_error("zstd header", e))?;
        Ok(Box::new(decoder))
    } else {
        Ok(Box::new(reader))
    }
}

/// Reads every entry once, storing files as blobs.
fn stream(content: &ContentStore, reader: Box<dyn Read + '_>) -> Result<Seen, ImageError> {
    let mut seen = Seen::default();
    let mut archive = tar::Archive::new(reader);
    let mut count = 0u64;
    for entry in archive.entries().map_err(|e| archive_error("entries", e))? {
        let mut entry = entry.map_err(|e| archive_error("entry header", e))?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(ImageError::InvalidArgument(format!("archive has more than {MAX_ENTRIES} entries")));
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let path = clean_path(&raw).map_err(|why| refuse(&shown, &why))?;
        if kind.is_dir() {
            continue; // `./` included
        }
        if path.is_empty() {
            return Err(refuse(&shown, "empty name"));
        }
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry.link_name_bytes().ok_or_else(|| refuse(&shown, "link without a target"))?.into_owned();
            let target = link_target(&path, &target, kind.is_symlink()).map_err(|why| refuse(&shown, &why))?;
            if seen.files.contains_key(&path) || seen.links.insert(path, target).is_some() {
                return Err(refuse(&shown, "duplicate entry"));
            }
            continue;
        }
        if !(kind.is_file() || kind.is_contiguous()) {
            return Err(refuse(&shown, &format!("unexpected entry type {:?}", kind.as_byte() as char)));
        }
        let size = entry.size();
        let small = match path.as_str() {
            "oci-layout" => Some(&mut seen.oci_layout),
            "index.json" => Some(&mut seen.index_json),
            "manifest.json" => Some(&mut seen.manifest_json),
            _ => None,
        };
        if let Some(slot) = small {
            if slot.is_some() {
                return Err(refuse(&shown, "duplicate entry"));
            }
            *slot = Some(read_small(&mut entry, size, &shown)?);
            continue;
        }
        if is_legacy_metadata(&path) {
            continue; // `repositories`, `<id>/json`, `<id>/VERSION`: names and v1 ids, unused.
        }
        if seen.files.contains_key(&path) || seen.links.contains_key(&path) {
            return Err(refuse(&shown, "duplicate entry"));
        }
        let digest = match blob_name(&path).map_err(|e| with_entry(&shown, e))? {
            Some(digest) => {
                store_named(content, digest, &mut entry, size, &shown)?;
                digest
            }
            None => store_unnamed(content, &mut entry, size, &shown)?,
        };
        seen.files.insert(path, digest);
    }
    Ok(seen)
}

fn refuse(name: &str, why: &str) -> ImageError {
    ImageError::InvalidArgument(format!("archive entry {name:?}: {why}"))
}

fn with_entry(name: &str, e: ImageError) -> ImageError {
    match e {
        ImageError::InvalidArgument(m) => refuse(name, &m),
        other => other,
    }
}

fn read_small<R: Read>(entry: &mut R, size: u64, name: &str) -> Result<Vec<u8>, ImageError> {
    if size > MAX_JSON_SIZE {
        return Err(refuse(name, &format!("{size} bytes, more than {MAX_JSON_SIZE}")));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    entry.take(MAX_JSON_SIZE).read_to_end(&mut bytes).map_err(|e| archive_error(name, e))?;
    Ok(bytes)
}

fn is_legacy_metadata(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    path == "repositories" || (parts.len() == 2 && matches!(parts[1], "json" | "VERSION"))
}

/// The digest an entry's name gives: `blobs/sha256/<hex>`; other names
/// under `blobs/` are refused, names elsewhere give none.
fn blob_name(path: &str) -> Result<Option<Digest>, ImageError> {
    let Some(rest) = path.strip_prefix("blobs/") else { return Ok(None) };
    match rest.split_once('/') {
        Some(("sha256", hex)) => Ok(Some(format!("sha256:{hex}").parse()?)),
        Some((algorithm, _)) => {
            Err(ImageError::FailedPrecondition(format!("blob algorithm {algorithm:?} is not supported (only sha256)")))
        }
        None => Err(ImageError::InvalidArgument("a file directly under blobs/".into())),
    }
}

/// Normalises an archive path: `./` and empty components dropped, a
/// trailing `/` ignored (so `./` becomes empty); refused when absolute, with `..`, not UTF-8, too
/// long, too deep, or with characters outside `[A-Za-z0-9._:+@-]`.
pub(super) fn clean_path(raw: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "name is not UTF-8".to_string())?;
    if text.starts_with('/') {
        return Err("absolute name".into());
    }
    normalise(text.split('/'))
}

fn normalise<'a>(parts: impl Iterator<Item = &'a str>) -> Result<String, String> {
    let mut out: Vec<&str> = Vec::new();
    for part in parts {
        match part {
            "" | "." => {}
            ".." => return Err("name leaves the archive (\"..\")".into()),
            p if p.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:+@-".contains(&b)) => out.push(p),
            _ => return Err("unexpected characters in name".into()),
        }
    }
    let path = out.join("/");
    if path.len() > MAX_PATH_LEN || out.len() > MAX_COMPONENTS {
        return Err(format!("name longer than {MAX_PATH_LEN} bytes or {MAX_COMPONENTS} components"));
    }
    Ok(path)
}

/// Where a link entry at `path` points, as an archive path: relative to
/// the link's directory for a symlink, to the archive root for a hard
/// link; refused if it leaves the archive.
fn link_target(path: &str, target: &[u8], symlink: bool) -> Result<String, String> {
    let target = std::str::from_utf8(target).map_err(|_| "link target is not UTF-8".to_string())?;
    if target.starts_with('/') {
        return Err("absolute link target".into());
    }
    let mut parts: Vec<&str> = Vec::new();
    if symlink {
        parts.extend(path.split('/'));
        parts.pop();
    }
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop().ok_or_else(|| "link target leaves the archive".to_string())?;
            }
            p => parts.push(p),
        }
    }
    normalise(parts.into_iter()).map_err(|why| format!("link target: {why}"))
}

/// The OCI image layout path: `oci-layout` checked, each `index.json`
/// entry checked complete, named from its annotations.
fn import_layout(content: &ContentStore, seen: &Seen, index: &[u8]) -> Result<Vec<ImportedImage>, ImageError> {
    check_layout_version(seen.oci_layout.as_deref())?;
    let manifests = match parse_node(&Digest::of(index), index) {
        Ok(Node::Index { manifests, .. }) => manifests,
        Ok(_) => return Err(ImageError::InvalidArgument("index.json is not an image index".into())),
        Err(e) => return Err(ImageError::InvalidArgument(format!("index.json: {e}"))),
    };
    let mut images = Vec::new();
    for desc in &manifests {
        let node = check_tree(content, desc, "index.json", 0)?;
        let name = desc.annotations.get(ANNOTATION_IMAGE_NAME).or_else(|| desc.annotations.get(ANNOTATION_REF_NAME));
        if let Some(name) = name {
            check_name(name)?;
        }
        images.push(ImportedImage {
            name: name.cloned(),
            manifest_digest: desc.digest,
            manifest_media_type: node.media_type().to_string(),
        });
    }
    Ok(images)
}

fn check_layout_version(oci_layout: Option<&[u8]>) -> Result<(), ImageError> {
    #[derive(serde::Deserialize)]
    struct Layout {
        #[serde(rename = "imageLayoutVersion")]
        version: String,
    }
    let bad = |why: &str| ImageError::InvalidArgument(format!("oci-layout: {why}"));
    let bytes = oci_layout.ok_or_else(|| bad("missing (index.json without an oci-layout file)"))?;
    let layout: Layout = serde_json::from_slice(bytes).map_err(|e| bad(&e.to_string()))?;
    if !layout.version.starts_with("1.") {
        return Err(bad(&format!("unsupported imageLayoutVersion {:?}", layout.version)));
    }
    Ok(())
}

/// Checks that the blob `desc` is stored with its size.
fn present(content: &ContentStore, desc: &Descriptor, referrer: &str) -> Result<(), ImageError> {
    match content.size(&desc.digest) {
        Ok(size) if size == desc.size => Ok(()),
        Ok(actual) => Err(ImageError::SizeMismatch { digest: desc.digest.to_string(), expected: desc.size, actual }),
        Err(ImageError::NotFound(_)) => {
            Err(ImageError::InvalidArgument(format!("archive lacks blob {} referenced by {referrer}", desc.digest)))
        }
        Err(e) => Err(e),
    }
}

/// Checks the image `desc` complete: a manifest with its config and
/// layers (and, at the top, a config of as many layers as it lists), or an
/// index of which at least one manifest is present and every present one
/// is complete (an archive may hold some platforms only).
fn check_tree(content: &ContentStore, desc: &Descriptor, referrer: &str, depth: usize) -> Result<Node, ImageError> {
    present(content, desc, referrer)?;
    let node = read_node(content, &desc.digest)?;
    let me = format!("manifest {}", desc.digest);
    match &node {
        Node::Manifest { config, layers, .. } => {
            present(content, config, &me)?;
            for layer in layers {
                present(content, layer, &me)?;
            }
            let is_image = config.media_type == super::OCI_CONFIG || config.media_type == DOCKER_CONFIG;
            if depth == 0 && !is_image {
                return Err(ImageError::FailedPrecondition(format!(
                    "{me}: config type {:?} is not an image config",
                    config.media_type
                )));
            }
            if is_image {
                let ids = diff_ids(&config.digest, &read_blob(content, &config.digest, MAX_JSON_SIZE)?)?;
                if ids.len() != layers.len() {
                    return Err(ImageError::InvalidArgument(format!(
                        "{me}: {} layers but its config lists {} diff ids",
                        layers.len(),
                        ids.len()
                    )));
                }
            }
        }
        Node::Index { manifests, .. } => {
            if depth >= MAX_DEPTH {
                return Err(ImageError::InvalidArgument(format!("index {} nests too deep", desc.digest)));
            }
            let mut found = 0;
            for child in manifests {
                if content.exists(&child.digest)? {
                    check_tree(content, child, &format!("index {}", desc.digest), depth + 1)?;
                    found += 1;
                }
            }
            if found == 0 {
                return Err(ImageError::InvalidArgument(format!(
                    "archive lacks every manifest of index {}",
                    desc.digest
                )));
            }
        }
    }
    Ok(node)
}
