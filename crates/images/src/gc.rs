//! Garbage collection of content and snapshots (issue 10 item 1, SPEC
//! B32), mark and sweep after containerd's `pkg/gc`:
//!
//! - mark: from the roots — manifests (or indexes) of named images, chain
//!   ids of snapshots containers use (running or stopped), leases (any
//!   other digests to keep) — follow indexes to manifests, manifests to
//!   configs and layers; a kept image config keeps the snapshots of its
//!   layers (so `rmi` of another image does not force re-unpacking), and
//!   every kept snapshot keeps its parents. Parents of active snapshots are
//!   kept whatever the roots say.
//! - sweep: delete every stored blob not marked, then every committed
//!   snapshot not marked, children before parents. A removal the
//!   snapshotter refuses (an active snapshot or an unpack sits on it) is
//!   skipped and reported, not an error.
//!
//! A root that cannot be read as a manifest or index stops the collection
//! before anything is deleted. Blobs and snapshots written while GC runs
//! are not marked: callers hold off pulls and imports, or lease what they
//! write, for the duration.

use std::collections::{BTreeSet, HashMap};

use crate::layout::{MAX_JSON_SIZE, Node, diff_ids, parse_node, read_blob};
use crate::snapshot::{chain_hex, chain_id};
use crate::{ContentStore, Digest, ImageError, Snapshotter};

/// How deep indexes may nest below a root before GC refuses to guess.
const MAX_DEPTH: usize = 8;

/// What must survive a collection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roots {
    /// Manifest or index digests of named images.
    pub images: Vec<Digest>,
    /// Chain ids of committed snapshots containers use.
    pub snapshots: Vec<String>,
    /// Any other digests to keep (pulls and imports in progress); a leased
    /// manifest or index keeps what it references.
    pub leases: Vec<Digest>,
}

/// What the mark phase kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marked {
    /// Digests reachable from the roots (stored or not).
    pub blobs: BTreeSet<Digest>,
    /// Committed snapshots reachable from the roots.
    pub snapshots: BTreeSet<String>,
}

/// What a collection freed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    pub blobs_removed: usize,
    pub blob_bytes: u64,
    pub snapshots_removed: usize,
    /// Disk usage of the removed snapshots.
    pub snapshot_bytes: u64,
    /// Unmarked snapshots the snapshotter refused to remove (in use).
    pub snapshots_in_use: Vec<String>,
}

/// Marks everything reachable from `roots`; deletes nothing.
pub fn mark(content: &ContentStore, snapshots: &Snapshotter, roots: &Roots) -> Result<Marked, ImageError> {
    let mut walk = Walk { content, blobs: BTreeSet::new(), chains: BTreeSet::new() };
    for digest in &roots.images {
        walk.follow(*digest, true, 0)?;
    }
    for digest in &roots.leases {
        walk.follow(*digest, false, 0)?;
    }
    let mut wanted = walk.chains;
    for id in &roots.snapshots {
        chain_hex(id)?;
        wanted.insert(id.clone());
    }
    wanted.extend(snapshots.active()?.into_iter().map(|a| a.parent).filter(|p| !p.is_empty()));

    let parents: HashMap<String, Option<String>> =
        snapshots.committed()?.into_iter().map(|c| (c.chain_id, c.parent)).collect();
    let mut kept = BTreeSet::new();
    let mut stack: Vec<String> = wanted.into_iter().collect();
    while let Some(id) = stack.pop() {
        let Some(parent) = parents.get(&id) else { continue };
        if kept.insert(id) {
            stack.extend(parent.iter().cloned());
        }
    }
    Ok(Marked { blobs: walk.blobs, snapshots: kept })
}

/// Marks from `roots`, then deletes every blob and committed snapshot not
/// marked; returns what was freed.
pub fn collect(content: &ContentStore, snapshots: &Snapshotter, roots: &Roots) -> Result<Collected, ImageError> {
    let marked = mark(content, snapshots, roots)?;
    let mut freed = Collected::default();
    for blob in content.list()? {
        if marked.blobs.contains(&blob.digest) {
            continue;
        }
        match content.delete(&blob.digest) {
            Ok(()) => {
                freed.blobs_removed += 1;
                freed.blob_bytes += blob.size;
            }
            Err(ImageError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }

    let committed = snapshots.committed()?;
    let parents: HashMap<&str, Option<&str>> =
        committed.iter().map(|c| (c.chain_id.as_str(), c.parent.as_deref())).collect();
    let mut doomed: Vec<(usize, &str)> = committed
        .iter()
        .filter(|c| !marked.snapshots.contains(&c.chain_id))
        .map(|c| (depth(&parents, &c.chain_id), c.chain_id.as_str()))
        .collect();
    // Children before parents: a parent's removal is refused while a child exists.
    doomed.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    for (_, id) in doomed {
        let usage = match snapshots.usage(id) {
            Ok(bytes) => bytes,
            Err(ImageError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        match snapshots.remove_committed(id) {
            Ok(()) => {
                freed.snapshots_removed += 1;
                freed.snapshot_bytes += usage;
            }
            Err(ImageError::FailedPrecondition(_)) => freed.snapshots_in_use.push(id.to_string()),
            Err(ImageError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(freed)
}

/// How many ancestors `id` has among the committed snapshots.
fn depth(parents: &HashMap<&str, Option<&str>>, id: &str) -> usize {
    let mut n = 0;
    let mut next = parents.get(id).copied().flatten();
    while let Some(p) = next {
        n += 1;
        if n > parents.len() {
            break; // a cycle in damaged metadata: any order will do
        }
        next = parents.get(p).copied().flatten();
    }
    n
}

/// The mark phase's state.
struct Walk<'a> {
    content: &'a ContentStore,
    blobs: BTreeSet<Digest>,
    chains: BTreeSet<String>,
}

impl Walk<'_> {
    /// Marks `digest` and, if it is a manifest or index, what it
    /// references. `strict`: it must be one (an image root), else GC stops.
    fn follow(&mut self, digest: Digest, strict: bool, depth: usize) -> Result<(), ImageError> {
        if !self.blobs.insert(digest) {
            return Ok(());
        }
        if depth > MAX_DEPTH {
            return Err(ImageError::FailedPrecondition(format!("gc: {digest} nests more than {MAX_DEPTH} deep")));
        }
        let size = match self.content.size(&digest) {
            Ok(size) => size,
            Err(ImageError::NotFound(_)) => return Ok(()), // nothing stored, nothing to follow
            Err(e) => return Err(e),
        };
        if !strict && size > MAX_JSON_SIZE {
            return Ok(()); // a leased layer
        }
        let bytes = read_blob(self.content, &digest, MAX_JSON_SIZE)?;
        if !strict && bytes.trim_ascii_start().first() != Some(&b'{') {
            return Ok(());
        }
        let node = match parse_node(&digest, &bytes) {
            Ok(node) => node,
            Err(e) if strict => {
                return Err(ImageError::FailedPrecondition(format!("gc: image root {digest} is unreadable: {e}")));
            }
            Err(_) => return Ok(()), // a leased blob that is no manifest
        };
        match node {
            Node::Manifest { config, layers, .. } => {
                self.blobs.insert(config.digest);
                self.blobs.extend(layers.iter().map(|l| l.digest));
                self.mark_chains(&config.digest)?;
            }
            Node::Index { manifests, .. } => {
                for child in manifests {
                    // Children of unknown kinds are kept, not followed.
                    self.follow(child.digest, false, depth + 1)?;
                }
            }
        }
        Ok(())
    }

    /// Marks the chain ids of an image config's layers, if it is one
    /// (absent, oversized or other configs mark none).
    fn mark_chains(&mut self, config: &Digest) -> Result<(), ImageError> {
        let bytes = match read_blob(self.content, config, MAX_JSON_SIZE) {
            Ok(bytes) => bytes,
            Err(ImageError::NotFound(_) | ImageError::InvalidArgument(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let Ok(ids) = diff_ids(config, &bytes) else { return Ok(()) };
        let mut parent: Option<String> = None;
        for diff_id in ids {
            let id = chain_id(parent.as_deref(), &diff_id.to_string())?;
            self.chains.insert(id.clone());
            parent = Some(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;
    use crate::layout::tests::{image, layer, put, store};
    use crate::pull::{OCI_INDEX, OCI_MANIFEST};

    fn snapshotter(dir: &tempfile::TempDir) -> Snapshotter {
        Snapshotter::new(&dir.path().join("snapshots")).expect("snapshotter")
    }

    /// Commits `chain` on `parent` holding one 8 KiB file.
    fn commit(snaps: &Snapshotter, chain: &str, parent: Option<&str>) {
        let key = format!("unpack-{}", &chain_hex(chain).expect("chain")[..16]);
        let prepared = snaps.prepare_layer(&key, parent).expect("prepare");
        std::fs::write(prepared.dir().join("data"), vec![7u8; 8192]).expect("write");
        snaps.commit(prepared, chain).expect("commit");
    }

    fn chain_of(layers: &[&[u8]]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for tar in layers {
            let id = chain_id(out.last().map(String::as_str), &Digest::of(tar).to_string()).expect("chain id");
            out.push(id);
        }
        out
    }

    fn blobs(content: &ContentStore) -> BTreeSet<Digest> {
        content.list().expect("list").into_iter().map(|b| b.digest).collect()
    }

    fn committed(snaps: &Snapshotter) -> BTreeSet<String> {
        snaps.committed().expect("committed").into_iter().map(|c| c.chain_id).collect()
    }

    #[test]
    fn keeps_what_roots_reach_frees_the_rest_and_then_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_c, content) = store();
        let snaps = snapshotter(&dir);
        let (base, a2, b2) = (layer(&[("base", b"base")]), layer(&[("a", b"a")]), layer(&[("b", b"b")]));
        // Image A: a named image. Image B: untagged, but a stopped container uses its snapshot.
        let (ma, ca, la) = image(&content, &[(base.clone(), false), (a2.clone(), true)]);
        let (mb, cb, lb) = image(&content, &[(base.clone(), false), (b2.clone(), false)]);
        // Image D: named through an index; image C: leased (a pull in progress).
        let (md, cd, ld) = image(&content, &[(layer(&[("d", b"d")]), true)]);
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": md.digest.to_string(), "size": md.size}]});
        let index = put(&content, &serde_json::to_vec(&index).expect("json"));
        let (mc, cc, lc) = image(&content, &[(layer(&[("c", b"c")]), false)]);
        let leased = put(&content, b"a leased blob");
        let stray = put(&content, b"garbage");

        let chain_a = chain_of(&[&base, &a2]);
        let chain_b = chain_of(&[&base, &b2]);
        let orphans = chain_of(&[b"orphan one", b"orphan two"]);
        let under_active = chain_of(&[b"running container's image"]);
        let under_unpack = chain_of(&[b"layer an unpack sits on"]);
        commit(&snaps, &chain_a[0], None);
        commit(&snaps, &chain_a[1], Some(&chain_a[0]));
        commit(&snaps, &chain_b[1], Some(&chain_a[0]));
        commit(&snaps, &orphans[0], None);
        commit(&snaps, &orphans[1], Some(&orphans[0]));
        commit(&snaps, &under_active[0], None);
        commit(&snaps, &under_unpack[0], None);
        snaps.create_active("ctr-running", &under_active[0]).expect("active");
        let unpacking = snaps.prepare_layer("unpack-in-progress", Some(&under_unpack[0])).expect("prepare");

        let roots = Roots {
            images: vec![ma.digest, index.digest],
            snapshots: vec![chain_b[1].clone()],
            leases: vec![mc.digest, leased.digest],
        };
        let marked = mark(&content, &snaps, &roots).expect("mark");
        assert!(marked.snapshots.is_superset(&chain_a.iter().cloned().collect()), "an image keeps its snapshots");

        let before = blobs(&content);
        let freed = collect(&content, &snaps, &roots).expect("gc");
        let kept: BTreeSet<Digest> = [&ma, &ca, &la[0], &la[1], &index, &md, &cd, &ld[0], &mc, &cc, &lc[0], &leased]
            .iter()
            .map(|d| d.digest)
            .collect();
        assert_eq!(blobs(&content), kept, "everything reachable from a root, and only that");
        let gone = [&mb, &cb, &lb[1], &stray];
        assert_eq!(before.difference(&kept).count(), gone.len());
        assert_eq!(freed.blobs_removed, gone.len());
        assert_eq!(freed.blob_bytes, gone.iter().map(|d| d.size).sum::<u64>());
        assert!(content.exists(&lb[0].digest).expect("exists"), "B's base layer is A's too");

        let want: BTreeSet<String> =
            [&chain_a[0], &chain_a[1], &chain_b[1], &under_active[0], &under_unpack[0]].into_iter().cloned().collect();
        assert_eq!(committed(&snaps), want, "in-use chains, image chains and parents stay");
        assert_eq!(freed.snapshots_removed, 2, "both orphans, the child first");
        assert!(freed.snapshot_bytes >= 2 * 8192, "{freed:?}");
        assert_eq!(freed.snapshots_in_use, [under_unpack[0].clone()], "refused, skipped, reported");

        let again = collect(&content, &snaps, &roots).expect("second gc");
        let nothing = Collected { snapshots_in_use: vec![under_unpack[0].clone()], ..Collected::default() };
        assert_eq!(again, nothing, "a second collection frees nothing");
        assert_eq!(blobs(&content), kept);

        // Once the unpack is gone and the roots shrink, the rest goes too.
        snaps.abort(unpacking);
        snaps.remove_active("ctr-running").expect("remove active");
        let last = collect(&content, &snaps, &Roots::default()).expect("gc all");
        assert!(blobs(&content).is_empty() && committed(&snaps).is_empty(), "{last:?}");
        assert_eq!((last.blobs_removed, last.snapshots_removed), (kept.len(), want.len()));
        assert!(last.snapshots_in_use.is_empty());
    }

    #[test]
    fn an_unreadable_root_stops_gc_before_anything_is_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_c, content) = store();
        let snaps = snapshotter(&dir);
        let stray = put(&content, b"garbage");
        let bogus = put(&content, b"this is no manifest");
        let orphan = chain_of(&[b"orphan"]);
        commit(&snaps, &orphan[0], None);
        let roots = Roots { images: vec![bogus.digest], ..Roots::default() };
        let err = collect(&content, &snaps, &roots).expect_err("unreadable root");
        assert!(matches!(err, ImageError::FailedPrecondition(_)), "{err}");
        assert!(content.exists(&stray.digest).expect("exists"));
        assert_eq!(committed(&snaps).len(), 1);

        // A root that is simply absent marks nothing, and is no error.
        let roots = Roots { images: vec![Digest::of(b"deleted image")], ..Roots::default() };
        let freed = collect(&content, &snaps, &roots).expect("gc");
        assert_eq!((freed.blobs_removed, freed.snapshots_removed), (2, 1));
        let bad = Roots { snapshots: vec!["../../etc".into()], ..Roots::default() };
        assert!(matches!(collect(&content, &snaps, &bad), Err(ImageError::InvalidArgument(_))));
    }
}
