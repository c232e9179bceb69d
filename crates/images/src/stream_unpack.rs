//! Unpacking layers while they download (issue 10, item 3): a `BlobSink`
//! that tees each verified layer stream into the content store's writer
//! and, on a blocking thread, into decompress + untar of the layer's
//! snapshot prepare dir.
//!
//! Design: layers download concurrently, but each one is *unpacked in
//! layer order*: a layer's thread waits until its parent's snapshot is
//! committed before it prepares its own (the snapshotter needs a committed
//! parent). While it waits it keeps writing its download to the blob's
//! temp file, so downloads never stall; once the parent is committed it
//! unpacks what is already on disk, then the rest as it arrives. Lower
//! layers never wait for higher ones, so this always progresses.
//! On the verified end of the stream the thread checks the DiffID against
//! the config's `rootfs.diff_ids`, commits the blob, then the snapshot
//! under its chain id. Any failure (digest, DiffID, hostile tar, transport,
//! another layer's failure) aborts the prepare and drops the blob writer
//! (its temp file goes): nothing half is left.
//!
//! Layers whose blob *and* snapshot are present are not fetched. Layers
//! the plan cannot stream (a repeated digest, a present blob without its
//! snapshot below a missing one) are only stored; `unpack_image` after the
//! pull unpacks them from the content store as before.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::{Buf, Bytes};
use oci_spec::image::{ImageConfiguration, ImageManifest};

use crate::pull::SinkFuture;
use crate::sink::{Chunk, feed};
use crate::snapshot::chain_id;
use crate::{
    BlobInfo, BlobKind, BlobSink, BlobStream, BlobWriter, Compression, ContentStore, Digest, ImageError, Snapshotter,
    UnpackOptions, Whiteouts, unpack_layer,
};

/// Chunks in flight between the pulling task and a layer's unpack thread.
const CHANNEL_DEPTH: usize = 64;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// One manifest layer as the plan sees it.
#[derive(Debug, Clone)]
struct PlannedLayer {
    digest: String,
    media_type: String,
    diff_id: String,
    chain: String,
    parent: Option<String>,
    /// Unpacked from its download stream (else only stored).
    stream: bool,
}

#[derive(Debug, Default)]
struct State {
    layers: Vec<PlannedLayer>,
    /// Per manifest index: its snapshot is committed.
    committed: Vec<bool>,
    /// A layer failed: waiting layers give up.
    failed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn fail(&self) {
        self.lock().failed = true;
        self.changed.notify_all();
    }
}

/// A pull's sink that stores blobs in `content` and unpacks layers into
/// committed snapshots of `snapshots` as they stream. Use one per pull.
#[derive(Debug)]
pub struct StreamingUnpack {
    content: ContentStore,
    snapshots: Snapshotter,
    shared: Arc<Shared>,
}

impl StreamingUnpack {
    pub fn new(content: &ContentStore, snapshots: &Snapshotter) -> StreamingUnpack {
        StreamingUnpack { content: content.clone(), snapshots: snapshots.clone(), shared: Arc::default() }
    }

    fn blob_present(&self, digest: &str) -> bool {
        digest.parse::<Digest>().is_ok_and(|d| self.content.exists(&d).unwrap_or(false))
    }

    /// The layer's plan if it is to be unpacked from its stream.
    fn streamed(&self, blob: &BlobInfo) -> Option<PlannedLayer> {
        let BlobKind::Layer { index } = blob.kind else {
            return None;
        };
        let state = self.shared.lock();
        state.layers.get(index).filter(|l| l.stream && l.digest == blob.digest).cloned()
    }
}

/// Sets the shared failure flag unless disarmed: a write that errs or is
/// dropped mid-way releases the layers waiting on it.
struct FailGuard(Option<Arc<Shared>>);

impl Drop for FailGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.fail();
        }
    }
}

impl BlobSink for StreamingUnpack {
    fn has(&self, digest: &str) -> bool {
        if !self.blob_present(digest) {
            return false;
        }
        let state = self.shared.lock();
        // A layer counts as present only with its snapshot.
        state.layers.iter().zip(&state.committed).filter(|(l, _)| l.digest == digest).all(|(_, done)| *done)
    }

    fn image_ready(&self, manifest: &ImageManifest, config: &ImageConfiguration) -> Result<(), ImageError> {
        let diff_ids = config.rootfs().diff_ids();
        let layers = manifest.layers();
        let mut state = self.shared.lock();
        *state = State::default();
        if layers.len() != diff_ids.len() {
            // Nothing streams; unpack_image reports the mismatch.
            return Ok(());
        }
        let committed: HashSet<String> = self.snapshots.committed()?.into_iter().map(|c| c.chain_id).collect();
        let mut parent: Option<String> = None;
        let mut seen = HashSet::new();
        // Every layer below can be relied on to get committed.
        let mut below_ok = true;
        for (layer, diff_id) in layers.iter().zip(diff_ids) {
            let digest = layer.digest().to_string();
            let chain = chain_id(parent.as_deref(), diff_id)?;
            let done = committed.contains(&chain);
            let first = seen.insert(digest.clone());
            let stream = below_ok && first && !done;
            below_ok &= done || stream;
            state.layers.push(PlannedLayer {
                digest,
                media_type: layer.media_type().to_string(),
                diff_id: diff_id.clone(),
                chain: chain.clone(),
                parent: parent.clone(),
                stream,
            });
            state.committed.push(done);
            parent = Some(chain);
        }
        // A streamed layer whose blob is present still downloads (`has`
        // says no): that is what unpacks it.
        Ok(())
    }

    fn write<'a>(&'a self, blob: &'a BlobInfo, mut content: BlobStream) -> SinkFuture<'a> {
        let Some(layer) = self.streamed(blob) else {
            return self.content.write(blob, content);
        };
        Box::pin(async move {
            let mut guard = FailGuard(Some(self.shared.clone()));
            let BlobKind::Layer { index } = blob.kind else {
                return Err(ImageError::FailedPrecondition(format!("blob {} is not a layer", blob.digest)));
            };
            let writer = self.content.writer(blob.digest.parse()?, Some(blob.size))?;
            let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(CHANNEL_DEPTH);
            let job = Job { snapshots: self.snapshots.clone(), shared: self.shared.clone(), index, layer };
            let task = tokio::task::spawn_blocking(move || job.run(writer, rx));
            let fed = feed(&mut content, &tx, &blob.digest).await;
            drop(tx);
            if fed.is_err() {
                // Release layers waiting on this one before joining.
                self.shared.fail();
            }
            let unpacked = task.await.map_err(|e| ImageError::io("layer unpack", io::Error::other(e)))?;
            // A stream error wins over the unpacker's view of the short blob.
            fed?;
            if !unpacked? {
                // Another layer failed: its error ends the pull, which drops
                // this future; answering first would hide the cause.
                guard.0 = None;
                return std::future::pending().await;
            }
            guard.0 = None;
            Ok(())
        })
    }
}

/// One layer's unpack, on a blocking thread.
struct Job {
    snapshots: Snapshotter,
    shared: Arc<Shared>,
    index: usize,
    layer: PlannedLayer,
}

impl Job {
    /// Ok(false): not unpacked because another layer failed.
    fn run(self, writer: BlobWriter, rx: tokio::sync::mpsc::Receiver<Chunk>) -> Result<bool, ImageError> {
        let mut tee = Tee { rx, writer, pending: Bytes::new(), ended: false };
        let read_error = |e: io::Error| ImageError::io(format!("read blob {}", self.layer.digest), e);
        if !self.wait_for_parent(&mut tee).map_err(read_error)? {
            return Ok(false);
        }
        // What arrived while waiting is in the temp file already.
        let spilled = tee.writer.written();
        let early = std::fs::File::open(tee.writer.temp_path())
            .map_err(|e| ImageError::io(format!("open {}", tee.writer.temp_path().display()), e))?;
        let digest: Digest = self.layer.digest.parse()?;
        let key =
            format!("stream-{}-{}-{}", &digest.hex()[..16], std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let prepared = self.snapshots.prepare_layer(&key, self.layer.parent.as_deref())?;
        let mut options = UnpackOptions::new(Whiteouts::Overlay);
        options.compression = Compression::from_media_type(&self.layer.media_type);
        let unpacked = unpack_layer(early.take(spilled).chain(&mut tee), prepared.dir(), &options).and_then(|u| {
            if u.diff_id.to_string() != self.layer.diff_id {
                return Err(ImageError::DigestMismatch {
                    expected: self.layer.diff_id.clone(),
                    actual: u.diff_id.to_string(),
                });
            }
            // Whatever follows the compressed stream still belongs to the blob.
            io::copy(&mut tee, &mut io::sink()).map_err(read_error)?;
            Ok(())
        });
        // The blob is committed before the snapshot: a snapshot implies its blob.
        if let Err(e) = unpacked.and_then(|()| tee.writer.commit()) {
            self.snapshots.abort(prepared);
            return Err(e);
        }
        self.snapshots.commit(prepared, &self.layer.chain)?;
        let mut state = self.shared.lock();
        if let Some(done) = state.committed.get_mut(self.index) {
            *done = true;
        }
        drop(state);
        self.shared.changed.notify_all();
        Ok(true)
    }

    /// Until the parent layer's snapshot is committed (true) or another
    /// layer failed (false), writes arriving chunks to the blob only
    /// (checking between chunks); after the stream's end, just waits.
    fn wait_for_parent(&self, tee: &mut Tee) -> io::Result<bool> {
        let Some(parent) = self.index.checked_sub(1) else {
            return Ok(true);
        };
        loop {
            let mut state = self.shared.lock();
            loop {
                if state.failed {
                    return Ok(false);
                }
                if state.committed.get(parent).copied().unwrap_or(false) {
                    return Ok(true);
                }
                if !tee.ended {
                    break;
                }
                state = self.shared.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            drop(state);
            tee.spill()?;
        }
    }
}

/// Reads the layer's chunks for the unpacker, writing each one to the
/// blob writer as it passes. EOF only after the stream's verified end.
struct Tee {
    rx: tokio::sync::mpsc::Receiver<Chunk>,
    writer: BlobWriter,
    pending: Bytes,
    ended: bool,
}

impl Tee {
    /// Takes one chunk into the blob only (not for the unpacker).
    fn spill(&mut self) -> io::Result<()> {
        match self.rx.blocking_recv() {
            Some(Chunk::Data(data)) => self.writer.write_all(&data),
            Some(Chunk::End) => {
                self.ended = true;
                Ok(())
            }
            None => Err(io::Error::other("the layer stream ended early")),
        }
    }
}

impl Read for Tee {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            if self.ended || out.is_empty() {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(data)) => {
                    self.writer.write_all(&data)?;
                    self.pending = data;
                }
                Some(Chunk::End) => self.ended = true,
                None => return Err(io::Error::other("the layer stream ended early")),
            }
        }
        let n = out.len().min(self.pending.len());
        out[..n].copy_from_slice(&self.pending[..n]);
        self.pending.advance(n);
        Ok(n)
    }
}
