//! The content store as a pull's `BlobSink` (SPEC B32): bytes go to a
//! `BlobWriter` on a blocking thread, fed chunk by chunk; the blob is
//! committed (verified, fsynced, renamed) only once its stream ended
//! cleanly. A stream error or a dropped future drops the writer, which
//! removes its temp file: nothing half-written is ever visible.

use bytes::Bytes;
use futures_util::StreamExt;
use std::io::Write;

use crate::pull::SinkFuture;
use crate::{BlobInfo, BlobSink, BlobStream, ContentStore, Digest, ImageError};

/// Chunks in flight between the pulling task and the writing thread.
const CHANNEL_DEPTH: usize = 16;

/// What a blob's writing thread receives from the pulling task.
pub(crate) enum Chunk {
    Data(Bytes),
    /// The stream ended cleanly (digest and size verified): commit.
    End,
}

/// Sends a verified blob stream to a writing thread, then `End` if the
/// stream ended cleanly. `Ok(false)`: the thread stopped taking chunks
/// (its own error says why); `Err`: the stream failed.
pub(crate) async fn feed(
    content: &mut BlobStream,
    tx: &tokio::sync::mpsc::Sender<Chunk>,
    digest: &str,
) -> Result<bool, ImageError> {
    while let Some(item) = content.next().await {
        let data = item.map_err(|e| ImageError::io(format!("read blob {digest}"), e))?;
        if tx.send(Chunk::Data(data)).await.is_err() {
            return Ok(false);
        }
    }
    Ok(tx.send(Chunk::End).await.is_ok())
}

impl BlobSink for ContentStore {
    fn has(&self, digest: &str) -> bool {
        digest.parse::<Digest>().is_ok_and(|d| self.exists(&d).unwrap_or(false))
    }

    fn write<'a>(&'a self, blob: &'a BlobInfo, mut content: BlobStream) -> SinkFuture<'a> {
        Box::pin(async move {
            let digest: Digest = blob.digest.parse()?;
            let writer = self.writer(digest, Some(blob.size))?;
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Chunk>(CHANNEL_DEPTH);
            let task = tokio::task::spawn_blocking(move || -> Result<(), ImageError> {
                let mut writer = writer;
                while let Some(chunk) = rx.blocking_recv() {
                    match chunk {
                        Chunk::Data(data) => writer
                            .write_all(&data)
                            .map_err(|e| ImageError::io(format!("write blob {}", writer.expected()), e))?,
                        Chunk::End => return writer.commit(),
                    }
                }
                // The sender went away before the end: drop (remove) the temp file.
                Err(ImageError::FailedPrecondition(format!("blob {} ended early", writer.expected())))
            });
            let fed = feed(&mut content, &tx, &blob.digest).await;
            drop(tx);
            let written = task.await.map_err(|e| ImageError::io("blob writer", std::io::Error::other(e)))?;
            // A stream error wins over the writer's view of the short blob.
            fed?;
            written
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BlobKind;
    use futures_util::stream;

    fn info(data: &[u8]) -> BlobInfo {
        BlobInfo {
            digest: Digest::of(data).to_string(),
            size: data.len() as u64,
            media_type: "application/octet-stream".into(),
            kind: BlobKind::Config,
        }
    }

    fn ingest_len(store: &ContentStore) -> usize {
        std::fs::read_dir(store.root().join("ingest")).expect("ingest").count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clean_stream_is_committed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path()).expect("open");
        let data = b"hello, content store".to_vec();
        let blob = info(&data);
        assert!(!store.has(&blob.digest));
        let chunks = vec![Ok(Bytes::from(data[..5].to_vec())), Ok(Bytes::from(data[5..].to_vec()))];
        store.write(&blob, Box::pin(stream::iter(chunks))).await.expect("write");
        assert!(store.has(&blob.digest));
        assert_eq!(std::fs::read(store.blob_path(&blob.digest.parse().expect("digest"))).expect("read"), data);
        assert_eq!(ingest_len(&store), 0);
        assert!(!store.has("not a digest"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_stream_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path()).expect("open");
        let data = b"some bytes that never finish".to_vec();
        let blob = info(&data);
        let chunks = vec![Ok(Bytes::from(data[..4].to_vec())), Err(std::io::Error::other("connection reset"))];
        let err = store.write(&blob, Box::pin(stream::iter(chunks))).await.expect_err("stream error");
        assert!(err.to_string().contains("connection reset"), "{err}");
        assert!(!store.has(&blob.digest));
        assert_eq!(ingest_len(&store), 0);
        // Wrong content under the digest: refused at commit, nothing stored.
        let chunks = vec![Ok(Bytes::from(vec![b'x'; data.len()]))];
        let err = store.write(&blob, Box::pin(stream::iter(chunks))).await.expect_err("digest mismatch");
        assert_eq!(err.code(), berth_model::Code::InvalidArgument, "{err}");
        assert!(!store.has(&blob.digest));
        assert_eq!(ingest_len(&store), 0);
    }
}
