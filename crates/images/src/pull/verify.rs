//! The verifying stream a sink reads a blob through: it hashes and counts
//! bytes as they pass, reports progress, and ends cleanly only when the
//! content matches its descriptor's digest and size (SPEC B32). Any other
//! ending is an `Err` item, and the typed cause is kept for the puller.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use futures_util::stream::BoxStream;
use sha2::Digest as _;

use super::{BlobInfo, LayerProgress, ProgressFn};
use crate::ImageError;

/// A running hash of one of the algorithms OCI digests use.
#[derive(Clone)]
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// The hasher for `digest`'s algorithm; other algorithms are refused.
    pub(crate) fn for_digest(digest: &str) -> Result<Hasher, ImageError> {
        match digest.split_once(':').map(|(algorithm, _)| algorithm) {
            Some("sha256") => Ok(Hasher::Sha256(sha2::Sha256::new())),
            Some("sha512") => Ok(Hasher::Sha512(sha2::Sha512::new())),
            _ => Err(ImageError::InvalidArgument(format!("unsupported digest {digest:?}"))),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The `algorithm:hex` digest of everything hashed so far.
    pub(crate) fn digest(&self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.clone().finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.clone().finalize())),
        }
    }
}

/// Checks `data` against `blob`'s size and digest.
pub(crate) fn check_bytes(blob: &BlobInfo, data: &[u8]) -> Result<(), ImageError> {
    let mut hasher = Hasher::for_digest(&blob.digest)?;
    let actual = data.len() as u64;
    if actual != blob.size {
        return Err(ImageError::SizeMismatch { digest: blob.digest.clone(), expected: blob.size, actual });
    }
    hasher.update(data);
    let actual = hasher.digest();
    if actual != blob.digest {
        return Err(ImageError::DigestMismatch { expected: blob.digest.clone(), actual });
    }
    Ok(())
}

/// How a verified stream ended, shared between the stream (owned by the
/// sink) and the puller that reads it once the sink returns.
#[derive(Default)]
pub(crate) struct Outcome {
    /// The typed reason the stream failed, if it did.
    pub(crate) error: Option<ImageError>,
    /// The stream reached its end with digest and size matching.
    pub(crate) verified: bool,
}

pub(crate) type SharedOutcome = Arc<Mutex<Outcome>>;

/// Records `outcome` without panicking on a poisoned lock.
fn record(outcome: &SharedOutcome, update: impl FnOnce(&mut Outcome)) {
    let mut guard = match outcome.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    update(&mut guard);
}

/// Takes the recorded outcome.
pub(crate) fn take(outcome: &SharedOutcome) -> Outcome {
    let mut taken = Outcome::default();
    record(outcome, |o| std::mem::swap(o, &mut taken));
    taken
}

pub(crate) struct VerifiedStream {
    inner: BoxStream<'static, io::Result<Bytes>>,
    blob: BlobInfo,
    hasher: Hasher,
    seen: u64,
    finished: bool,
    outcome: SharedOutcome,
    progress: Option<ProgressFn>,
}

impl VerifiedStream {
    pub(crate) fn new(
        inner: BoxStream<'static, io::Result<Bytes>>,
        blob: BlobInfo,
        outcome: SharedOutcome,
        progress: Option<ProgressFn>,
    ) -> Result<VerifiedStream, ImageError> {
        let hasher = Hasher::for_digest(&blob.digest)?;
        Ok(VerifiedStream { inner, blob, hasher, seen: 0, finished: false, outcome, progress })
    }

    fn report(&self, done: bool) {
        if let Some(progress) = &self.progress {
            progress(&LayerProgress {
                digest: &self.blob.digest,
                current: self.seen,
                total: self.blob.size,
                done,
                skipped: false,
            });
        }
    }

    /// Ends the stream with `error`, keeping it for the puller.
    fn fail(&mut self, error: ImageError) -> Poll<Option<io::Result<Bytes>>> {
        self.finished = true;
        let message = error.to_string();
        record(&self.outcome, |o| o.error = Some(error));
        Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, message))))
    }

    /// The end-of-content check: size first, then digest.
    fn verify_end(&self) -> Result<(), ImageError> {
        if self.seen != self.blob.size {
            return Err(ImageError::SizeMismatch {
                digest: self.blob.digest.clone(),
                expected: self.blob.size,
                actual: self.seen,
            });
        }
        let actual = self.hasher.digest();
        if actual != self.blob.digest {
            return Err(ImageError::DigestMismatch { expected: self.blob.digest.clone(), actual });
        }
        Ok(())
    }
}

impl Stream for VerifiedStream {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                this.seen += chunk.len() as u64;
                if this.seen > this.blob.size {
                    let error = ImageError::SizeMismatch {
                        digest: this.blob.digest.clone(),
                        expected: this.blob.size,
                        actual: this.seen,
                    };
                    return this.fail(error);
                }
                this.hasher.update(&chunk);
                this.report(false);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                // oci-client ends a stream whose bytes do not match with an
                // error of its own; prefer our typed verdict when all bytes
                // arrived, and call anything else a transport failure.
                let error = match this.verify_end() {
                    Err(mismatch) if this.seen == this.blob.size => mismatch,
                    _ => ImageError::Registry(format!("reading blob {}: {e}", this.blob.digest)),
                };
                this.fail(error)
            }
            Poll::Ready(None) => match this.verify_end() {
                Ok(()) => {
                    this.finished = true;
                    record(&this.outcome, |o| o.verified = true);
                    this.report(true);
                    Poll::Ready(None)
                }
                Err(error) => this.fail(error),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{StreamExt, stream};

    use super::*;

    fn blob(data: &[u8]) -> BlobInfo {
        let mut h = Hasher::for_digest("sha256:").expect("sha256");
        h.update(data);
        BlobInfo {
            digest: h.digest(),
            size: data.len() as u64,
            media_type: "application/octet-stream".into(),
            kind: super::super::BlobKind::Config,
        }
    }

    async fn drain(chunks: Vec<&'static [u8]>, info: BlobInfo) -> (Vec<io::Result<Bytes>>, Outcome) {
        let outcome = SharedOutcome::default();
        let inner = stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c)))).boxed();
        let s = VerifiedStream::new(inner, info, outcome.clone(), None).expect("stream");
        let items = s.collect::<Vec<_>>().await;
        (items, take(&outcome))
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures_util::FutureExt::now_or_never(f).expect("ready stream")
    }

    #[test]
    fn matching_content_ends_cleanly() {
        let (items, outcome) = block_on(drain(vec![b"hello ", b"world"], blob(b"hello world")));
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(|i| i.is_ok()));
        assert!(outcome.verified && outcome.error.is_none());
    }

    #[test]
    fn wrong_bytes_end_with_a_typed_digest_error() {
        let (items, outcome) = block_on(drain(vec![b"hello ", b"WORLD"], blob(b"hello world")));
        assert!(items.last().is_some_and(|i| i.is_err()));
        assert!(!outcome.verified);
        assert!(matches!(outcome.error, Some(ImageError::DigestMismatch { .. })));
    }

    #[test]
    fn too_many_or_too_few_bytes_are_size_errors() {
        let (items, outcome) = block_on(drain(vec![b"hello world!"], blob(b"hello world")));
        assert_eq!(items.len(), 1, "the oversized chunk is never handed out");
        assert!(matches!(outcome.error, Some(ImageError::SizeMismatch { actual: 12, .. })));
        let (_, outcome) = block_on(drain(vec![b"hello"], blob(b"hello world")));
        assert!(matches!(outcome.error, Some(ImageError::SizeMismatch { actual: 5, .. })));
    }
}
