//! Export of images as an OCI image layout tar: `oci-layout`, `index.json`
//! (one entry per name, named by both the containerd and the OCI
//! annotation), then exactly the blobs the images reference, in digest
//! order, copied byte for byte — so importing the archive gives the same
//! digests. Every blob is found before the first byte is written.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use super::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, Descriptor, MAX_DEPTH, Node, check_name, read_node};
use crate::pull::OCI_INDEX;
use crate::{ContentStore, Digest, ImageError};

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// Blobs written (each once, however many images share it).
    pub blobs: usize,
    /// Their total size in bytes.
    pub bytes: u64,
}

#[derive(Serialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    manifests: Vec<Descriptor>,
}

/// Writes the images `(name, manifest or index digest)` as an OCI image
/// layout tar into `writer`. An image whose manifest, config or a layer
/// is missing is NotFound (nothing written); of an index, the manifests
/// present are exported and the others left out, as pulled. The tar is
/// written in 512-byte pieces: give a buffered writer.
pub fn export<W: Write>(
    content: &ContentStore,
    images: &[(String, Digest)],
    writer: W,
) -> Result<Exported, ImageError> {
    let mut blobs = BTreeMap::new();
    let mut entries = Vec::new();
    for (name, digest) in images {
        check_name(name)?;
        let size = content.size(digest).map_err(|e| match e {
            ImageError::NotFound(_) => ImageError::NotFound(format!("manifest {digest} of image {name}")),
            other => other,
        })?;
        let media_type = walk(content, *digest, size, &mut blobs, 0)?;
        let annotations = [ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME].map(|k| (k.to_string(), name.clone()));
        entries.push(Descriptor { media_type, digest: *digest, size, annotations: annotations.into() });
    }
    let index = Index { schema_version: 2, media_type: OCI_INDEX, manifests: entries };
    let index =
        serde_json::to_vec(&index).map_err(|e| ImageError::io("encode index.json", std::io::Error::other(e)))?;

    let mut tar = tar::Builder::new(writer);
    let fail = |what: &str, e| ImageError::io(format!("write archive: {what}"), e);
    append(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(|e| fail("oci-layout", e))?;
    append(&mut tar, "index.json", &index).map_err(|e| fail("index.json", e))?;
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut header = header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut header, dir, std::io::empty()).map_err(|e| fail(dir, e))?;
    }
    let mut bytes = 0;
    for (digest, size) in &blobs {
        let file = content.open_blob(digest)?;
        let actual = file.metadata().map_err(|e| ImageError::io(format!("stat blob {digest}"), e))?.len();
        if actual != *size {
            return Err(ImageError::SizeMismatch { digest: digest.to_string(), expected: *size, actual });
        }
        let mut header = header(tar::EntryType::Regular, 0o644, *size);
        let path = format!("blobs/sha256/{}", digest.hex());
        tar.append_data(&mut header, &path, file).map_err(|e| fail(&path, e))?;
        bytes += size;
    }
    tar.into_inner().and_then(|mut w| w.flush()).map_err(|e| fail("end", e))?;
    Ok(Exported { blobs: blobs.len(), bytes })
}

/// Adds the blob `digest` (stored, `size` bytes) and everything it
/// references to `blobs`; returns its media type.
fn walk(
    content: &ContentStore,
    digest: Digest,
    size: u64,
    blobs: &mut BTreeMap<Digest, u64>,
    depth: usize,
) -> Result<String, ImageError> {
    let node = read_node(content, &digest)?;
    let me = format!("manifest {digest}");
    match &node {
        Node::Manifest { config, layers, .. } => {
            for desc in std::iter::once(config).chain(layers) {
                let stored = content.size(&desc.digest).map_err(|e| match e {
                    ImageError::NotFound(_) => ImageError::NotFound(format!("blob {} of {me}", desc.digest)),
                    other => other,
                })?;
                if stored != desc.size {
                    let (expected, actual) = (desc.size, stored);
                    return Err(ImageError::SizeMismatch { digest: desc.digest.to_string(), expected, actual });
                }
                blobs.insert(desc.digest, stored);
            }
        }
        Node::Index { manifests, .. } => {
            if depth >= MAX_DEPTH {
                return Err(ImageError::FailedPrecondition(format!("index {digest} nests too deep")));
            }
            let mut found = 0;
            for child in manifests {
                if !content.exists(&child.digest)? {
                    continue;
                }
                let stored = content.size(&child.digest)?;
                if stored != child.size {
                    let (expected, actual) = (child.size, stored);
                    return Err(ImageError::SizeMismatch { digest: child.digest.to_string(), expected, actual });
                }
                walk(content, child.digest, stored, blobs, depth + 1)?;
                found += 1;
            }
            if found == 0 {
                return Err(ImageError::NotFound(format!("every manifest of index {digest}")));
            }
        }
    }
    blobs.insert(digest, size);
    Ok(node.media_type().to_string())
}

/// A reproducible header: owner 0:0, time 0.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

fn append<W: Write>(tar: &mut tar::Builder<W>, path: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = header(tar::EntryType::Regular, 0o644, data.len() as u64);
    tar.append_data(&mut header, path, data)
}
