//! Unpacking a pulled image into snapshots (issue 10 item 2): each layer
//! not yet committed is unpacked from the content store into a snapshot
//! keyed by its chain id, its DiffID checked against the config's
//! `rootfs.diff_ids`. A mismatch or a hostile layer aborts that prepare:
//! nothing of it is left; layers committed before it stay (they are valid
//! and shared by chain id).

use std::collections::HashSet;
use std::io::BufReader;
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::image::{ImageConfiguration, ImageManifest};

use crate::snapshot::chain_id;
use crate::{Compression, ContentStore, Digest, ImageError, Snapshotter, UnpackOptions, Whiteouts, unpack_layer};

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Unpacks every layer of `manifest` that has no committed snapshot yet
/// and returns the chain id of the top layer (the parent of containers'
/// active snapshots). Blocking: run it off the async workers.
pub fn unpack_image(
    content: &ContentStore,
    snapshotter: &Snapshotter,
    manifest: &ImageManifest,
    config: &ImageConfiguration,
) -> Result<String, ImageError> {
    let diff_ids = config.rootfs().diff_ids();
    let layers = manifest.layers();
    if layers.is_empty() {
        return Err(ImageError::InvalidArgument("image has no layers".into()));
    }
    if layers.len() != diff_ids.len() {
        return Err(ImageError::InvalidArgument(format!(
            "manifest has {} layers but the config lists {} diff ids",
            layers.len(),
            diff_ids.len()
        )));
    }
    let committed: HashSet<String> = snapshotter.committed()?.into_iter().map(|c| c.chain_id).collect();
    let mut parent: Option<String> = None;
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        let chain = chain_id(parent.as_deref(), diff_id)?;
        if !committed.contains(&chain) {
            let digest: Digest = layer.digest().to_string().parse()?;
            let key = format!(
                "unpack-{}-{}-{}",
                &digest.hex()[..16],
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            );
            let prepared = snapshotter.prepare_layer(&key, parent.as_deref())?;
            let mut options = UnpackOptions::new(Whiteouts::Overlay);
            options.compression = Compression::from_media_type(layer.media_type().as_ref());
            let unpacked = content
                .open_blob(&digest)
                .and_then(|blob| unpack_layer(BufReader::new(blob), prepared.dir(), &options));
            match unpacked {
                Ok(u) if u.diff_id.to_string() == *diff_id => {
                    snapshotter.commit(prepared, &chain)?;
                }
                Ok(u) => {
                    snapshotter.abort(prepared);
                    return Err(ImageError::DigestMismatch {
                        expected: diff_id.clone(),
                        actual: u.diff_id.to_string(),
                    });
                }
                Err(e) => {
                    snapshotter.abort(prepared);
                    return Err(e);
                }
            }
        }
        parent = Some(chain);
    }
    parent.ok_or_else(|| ImageError::InvalidArgument("image has no layers".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            tar.append_data(&mut h, name, *data).expect("entry");
        }
        tar.into_inner().expect("tar")
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(data).expect("gzip");
        gz.finish().expect("gzip")
    }

    fn put(content: &ContentStore, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        let mut w = content.writer(d, Some(data.len() as u64)).expect("writer");
        w.write_all(data).expect("write");
        w.commit().expect("commit");
        d
    }

    /// An image of gzip layers; `diff_ids` as given (to test mismatches).
    fn image(content: &ContentStore, layers: &[Vec<u8>], diff_ids: &[String]) -> (ImageManifest, ImageConfiguration) {
        let descs: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| {
                let gz = gzip(l);
                let d = put(content, &gz);
                serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                   "digest": d.to_string(), "size": gz.len()})
            })
            .collect();
        let config = serde_json::json!({"architecture": "amd64", "os": "linux",
                                        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
        let config_bytes = serde_json::to_vec(&config).expect("json");
        let cd = put(content, &config_bytes);
        let manifest = serde_json::json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(),
                       "size": config_bytes.len()},
            "layers": descs});
        (
            ImageManifest::from_reader(&serde_json::to_vec(&manifest).expect("json")[..]).expect("manifest"),
            ImageConfiguration::from_reader(&config_bytes[..]).expect("config"),
        )
    }

    fn tmp_is_empty(s: &Snapshotter) -> bool {
        std::fs::read_dir(s.root().join("tmp")).expect("tmp").next().is_none()
    }

    #[test]
    fn layers_unpack_once_by_chain_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let content = ContentStore::open(dir.path().join("content")).expect("content");
        let snaps = Snapshotter::new(&dir.path().join("snapshots")).expect("snapshotter");
        let base = tar_of(&[("etc/base", b"base\n"), ("gone", b"x")]);
        let top = tar_of(&[(".wh.gone", b""), ("new", b"new\n")]);
        let ids = vec![Digest::of(&base).to_string(), Digest::of(&top).to_string()];
        let (manifest, config) = image(&content, &[base, top], &ids);
        let chain = unpack_image(&content, &snaps, &manifest, &config).expect("unpack");
        let want = chain_id(Some(&ids[0]), &ids[1]).expect("chain");
        assert_eq!(chain, want);
        let committed: Vec<String> = snaps.committed().expect("list").into_iter().map(|c| c.chain_id).collect();
        assert_eq!(committed.len(), 2);
        assert!(committed.contains(&ids[0]) && committed.contains(&want));
        // Again: nothing new is unpacked.
        assert_eq!(unpack_image(&content, &snaps, &manifest, &config).expect("again"), want);
        assert_eq!(snaps.committed().expect("list").len(), 2);
        assert!(tmp_is_empty(&snaps));
    }

    #[test]
    fn a_diff_id_mismatch_leaves_nothing_of_that_layer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let content = ContentStore::open(dir.path().join("content")).expect("content");
        let snaps = Snapshotter::new(&dir.path().join("snapshots")).expect("snapshotter");
        let base = tar_of(&[("a", b"a")]);
        let ids = vec![Digest::of(b"something else").to_string()];
        let (manifest, config) = image(&content, &[base], &ids);
        let err = unpack_image(&content, &snaps, &manifest, &config).expect_err("mismatch");
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err:?}");
        assert!(snaps.committed().expect("list").is_empty());
        assert!(tmp_is_empty(&snaps));
        // Counts that disagree are refused before anything is prepared.
        let (manifest, _) = image(&content, &[tar_of(&[("b", b"b")])], &ids);
        let (_, config) = image(&content, &[], &[]);
        assert_eq!(
            unpack_image(&content, &snaps, &manifest, &config).unwrap_err().code(),
            berth_model::Code::InvalidArgument
        );
    }
}
