//! Registry pull (issue 10, item 3): resolve a reference, fetch its
//! manifest (through an index or manifest list for the wanted platform),
//! and stream the config and every layer into a caller's `BlobSink`,
//! verifying digest and size as bytes pass (SPEC B32). Protocol, tokens
//! and basic auth come from `oci-client` (a refused token is renewed once
//! here); plain HTTP only when asked.

mod manifest;
mod platform;
mod verify;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};

pub use manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
pub use platform::Platform;

use crate::ImageError;
use manifest::{Parsed, registry_error};
use verify::{SharedOutcome, VerifiedStream};

/// Layers fetched at once unless the puller is told otherwise.
pub const DEFAULT_CONCURRENCY: usize = 3;

/// The largest image config the puller holds in memory.
const MAX_CONFIG_SIZE: u64 = 16 << 20;

/// Credentials for a registry, given by the caller.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// No credentials; anonymous bearer tokens are still fetched.
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Anonymous => f.write_str("Anonymous"),
            Auth::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
        }
    }
}

/// What a blob is to the image, so a sink can decide what to do with it
/// (unpack layers, index manifests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    Index,
    Manifest,
    Config,
    /// The `index`-th layer of the manifest, base first.
    Layer {
        index: usize,
    },
}

/// A blob about to be written: its descriptor as the manifest states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub kind: BlobKind,
}

/// A blob's bytes, verified as they pass: the stream ends (`None`) only
/// after the last byte matched the digest and size; a mismatch or a
/// transport failure is an `Err` item and nothing more follows.
pub type BlobStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// The future a sink's write returns.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ImageError>> + Send + 'a>>;

/// Where pulled blobs go (a content store, an unpacker, a test double).
///
/// Contract: `write` commits the blob only if `content` ended cleanly
/// (`None` after the last chunk); on an `Err` item, or if the future is
/// dropped (another layer failed), it must leave nothing visible.
/// Writes run concurrently on the pulling task: blocking work (fsync,
/// decompress + unpack) belongs in `spawn_blocking`, reading `content`
/// through e.g. `tokio_util::io::StreamReader` + `SyncIoBridge`.
pub trait BlobSink: Send + Sync {
    /// Whether the blob is already present; present blobs are not fetched.
    fn has(&self, digest: &str) -> bool;
    /// Consumes `content` to its end and commits it under `blob.digest`.
    fn write<'a>(&'a self, blob: &'a BlobInfo, content: BlobStream) -> SinkFuture<'a>;
    /// The image's manifest and (verified) config, known before any layer
    /// is fetched or `has` is asked about one (a streaming unpacker plans
    /// its snapshots here). An error aborts the pull.
    fn image_ready(&self, _manifest: &ImageManifest, _config: &ImageConfiguration) -> Result<(), ImageError> {
        Ok(())
    }
}

/// One progress report for a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerProgress<'a> {
    pub digest: &'a str,
    /// Bytes received (and hashed) so far; verified only once `done`.
    pub current: u64,
    pub total: u64,
    /// The layer is complete: verified and handed to the sink, or skipped.
    pub done: bool,
    /// The sink already had the layer; nothing was fetched.
    pub skipped: bool,
}

/// The progress callback; called from the pulling task, keep it cheap.
pub type ProgressFn = Arc<dyn Fn(&LayerProgress<'_>) + Send + Sync>;

/// The result of a pull.
#[derive(Debug)]
pub struct Pulled {
    /// The reference, normalised (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// What the reference resolved to: the index or manifest list digest
    /// for a multi-platform image, else the manifest digest.
    pub digest: String,
    /// The digest of the image manifest pulled for the platform.
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub manifest: ImageManifest,
    pub manifest_bytes: Vec<u8>,
    pub config: ImageConfiguration,
    pub config_bytes: Vec<u8>,
    /// Digests of the layers fetched and of those the sink already had.
    pub layers_fetched: Vec<String>,
    pub layers_skipped: Vec<String>,
}

/// Pulls images from OCI distribution (v2) registries.
#[derive(Debug, Clone)]
pub struct Puller {
    concurrency: usize,
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl Default for Puller {
    fn default() -> Self {
        Puller::new()
    }
}

impl Puller {
    pub fn new() -> Puller {
        Puller {
            concurrency: DEFAULT_CONCURRENCY,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(120),
        }
    }

    /// At most `n` (at least one) layers downloading at once.
    pub fn with_concurrency(mut self, n: usize) -> Puller {
        self.concurrency = n.max(1);
        self
    }

    /// Pulls `reference` (`registry/repo:tag` or `registry/repo@sha256:…`;
    /// Docker Hub defaults as oci-client applies them) for `platform`,
    /// fetching the manifest, then the config (handed to the sink's
    /// `image_ready`), then writing layers, config, manifest and index (in that order, so a
    /// present manifest implies its blobs) into `sink`, skipping what it
    /// has. `insecure` allows plain HTTP to this reference's registry.
    /// A bearer token the registry refuses mid-pull is renewed once.
    pub async fn pull<S: BlobSink + ?Sized>(
        &self,
        reference: &str,
        platform: &Platform,
        auth: &Auth,
        insecure: bool,
        sink: &S,
        progress: ProgressFn,
    ) -> Result<Pulled, ImageError> {
        let reference: Reference = reference
            .parse()
            .map_err(|e| ImageError::InvalidArgument(format!("invalid image reference {reference:?}: {e}")))?;
        let auth = match auth {
            Auth::Anonymous => RegistryAuth::Anonymous,
            Auth::Basic { username, password } => RegistryAuth::Basic(username.clone(), password.clone()),
        };
        let (client, bearer) = self.connect(&reference, &auth, insecure).await?;
        match self.pull_with(&client, &reference, &auth, platform, sink, &progress).await {
            // A registry may refuse a bearer token it issued (rotated,
            // revoked, expired early), and oci-client does not ask for a
            // new one: one more try with a fresh client and token. What
            // the first try committed is skipped; a second refusal stands.
            Err(ImageError::Unauthorized(_)) if bearer => {
                let (client, _) = self.connect(&reference, &auth, insecure).await?;
                self.pull_with(&client, &reference, &auth, platform, sink, &progress).await
            }
            other => other,
        }
    }

    /// A client for the reference's registry, authenticated for pulls;
    /// true when the registry handed out a bearer token.
    async fn connect(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
        insecure: bool,
    ) -> Result<(oci_client::Client, bool), ImageError> {
        let client = self.client(reference, insecure)?;
        let token = client
            .auth(reference, auth, RegistryOperation::Pull)
            .await
            .map_err(|e| registry_error(&format!("authenticating to {}", reference.resolve_registry()), e))?;
        Ok((client, token.is_some()))
    }

    /// One pull of `reference` through an authenticated client.
    async fn pull_with<S: BlobSink + ?Sized>(
        &self,
        client: &oci_client::Client,
        reference: &Reference,
        auth: &RegistryAuth,
        platform: &Platform,
        sink: &S,
        progress: &ProgressFn,
    ) -> Result<Pulled, ImageError> {
        let top = manifest::fetch(client, reference, auth, None).await?;
        let (index, image) = match top.parsed {
            Parsed::Manifest(_) => (None, top),
            Parsed::Index(ref idx) => {
                let entry = descriptor_info(platform.select(idx)?, BlobKind::Manifest)?;
                let child = reference.clone_with_digest(entry.digest.clone());
                let image = manifest::fetch(client, &child, auth, Some(&entry)).await?;
                if !matches!(image.parsed, Parsed::Manifest(_)) {
                    return Err(ImageError::FailedPrecondition(format!(
                        "index entry {} for {platform} is not an image manifest",
                        entry.digest
                    )));
                }
                (Some(top), image)
            }
        };
        let Parsed::Manifest(ref manifest) = image.parsed else {
            return Err(ImageError::FailedPrecondition("expected an image manifest".into()));
        };

        let config_info = descriptor_info(manifest.config(), BlobKind::Config)?;
        let config_bytes = fetch_config(client, reference, &config_info).await?;
        let config = ImageConfiguration::from_reader(&config_bytes[..])
            .map_err(|e| ImageError::InvalidArgument(format!("image config {}: {e}", config_info.digest)))?;

        sink.image_ready(manifest, &config)?;
        let (fetched, skipped) = self.pull_layers(client, reference, manifest, sink, progress).await?;

        write_bytes(sink, &config_info, &config_bytes).await?;
        write_bytes(sink, &image.blob, &image.bytes).await?;
        if let Some(index) = &index {
            write_bytes(sink, &index.blob, &index.bytes).await?;
        }
        let manifest = (**manifest).clone();
        Ok(Pulled {
            reference: reference.whole(),
            digest: index.as_ref().map_or_else(|| image.blob.digest.clone(), |i| i.blob.digest.clone()),
            manifest_digest: image.blob.digest,
            manifest_media_type: image.blob.media_type,
            manifest,
            manifest_bytes: image.bytes,
            config,
            config_bytes,
            layers_fetched: fetched,
            layers_skipped: skipped,
        })
    }

    /// Streams every layer the sink lacks into it, `concurrency` at once;
    /// the first failure cancels the others. Returns (fetched, skipped).
    async fn pull_layers<S: BlobSink + ?Sized>(
        &self,
        client: &oci_client::Client,
        reference: &Reference,
        manifest: &ImageManifest,
        sink: &S,
        progress: &ProgressFn,
    ) -> Result<(Vec<String>, Vec<String>), ImageError> {
        let mut layers: Vec<BlobInfo> = Vec::new();
        for (index, layer) in manifest.layers().iter().enumerate() {
            let info = descriptor_info(layer, BlobKind::Layer { index })?;
            if !layers.iter().any(|l| l.digest == info.digest) {
                layers.push(info);
            }
        }
        let mut skipped = Vec::new();
        let mut wanted = Vec::new();
        for layer in layers {
            if sink.has(&layer.digest) {
                progress(&LayerProgress {
                    digest: &layer.digest,
                    current: layer.size,
                    total: layer.size,
                    done: true,
                    skipped: true,
                });
                skipped.push(layer.digest);
            } else {
                wanted.push(layer);
            }
        }
        // Collected first so no closure lives in the (Send) future's state.
        let tasks: Vec<_> =
            wanted.iter().map(|layer| fetch_layer(client, reference, layer, sink, progress.clone())).collect();
        let mut running = stream::iter(tasks).buffer_unordered(self.concurrency);
        let mut fetched = Vec::new();
        while let Some(result) = running.next().await {
            fetched.push(result?);
        }
        Ok((fetched, skipped))
    }

    fn client(&self, reference: &Reference, insecure: bool) -> Result<oci_client::Client, ImageError> {
        let protocol = if insecure {
            ClientProtocol::HttpsExcept(vec![reference.resolve_registry().to_string()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            platform_resolver: None,
            max_concurrent_download: self.concurrency,
            connect_timeout: Some(self.connect_timeout),
            read_timeout: Some(self.read_timeout),
            ..ClientConfig::default()
        };
        oci_client::Client::try_from(config).map_err(|e| registry_error("building the registry client", e))
    }
}

/// Streams one layer from the registry into the sink; returns its digest.
async fn fetch_layer<S: BlobSink + ?Sized>(
    client: &oci_client::Client,
    reference: &Reference,
    layer: &BlobInfo,
    sink: &S,
    progress: ProgressFn,
) -> Result<String, ImageError> {
    let content = open_blob(client, reference, layer).await?;
    deliver(sink, layer, content, Some(progress)).await?;
    Ok(layer.digest.clone())
}

/// A manifest descriptor as a `BlobInfo`, its digest validated.
fn descriptor_info(desc: &Descriptor, kind: BlobKind) -> Result<BlobInfo, ImageError> {
    let digest = desc.digest().to_string();
    verify::Hasher::for_digest(&digest)?;
    Ok(BlobInfo { digest, size: desc.size(), media_type: desc.media_type().to_string(), kind })
}

/// Opens the registry's byte stream for `blob`, checking a declared
/// length against the descriptor before any byte is read.
async fn open_blob(
    client: &oci_client::Client,
    reference: &Reference,
    blob: &BlobInfo,
) -> Result<BoxStream<'static, io::Result<Bytes>>, ImageError> {
    let size = i64::try_from(blob.size)
        .map_err(|_| ImageError::InvalidArgument(format!("blob {} has an absurd size", blob.digest)))?;
    let desc = OciDescriptor {
        media_type: blob.media_type.clone(),
        digest: blob.digest.clone(),
        size,
        ..OciDescriptor::default()
    };
    let sized = client
        .pull_blob_stream(reference, &desc)
        .await
        .map_err(|e| registry_error(&format!("blob {}", blob.digest), e))?;
    if let Some(length) = sized.content_length
        && length != blob.size
    {
        return Err(ImageError::SizeMismatch { digest: blob.digest.clone(), expected: blob.size, actual: length });
    }
    Ok(sized.stream)
}

/// Fetches the (small) config into memory, verified.
async fn fetch_config(
    client: &oci_client::Client,
    reference: &Reference,
    blob: &BlobInfo,
) -> Result<Vec<u8>, ImageError> {
    if blob.size > MAX_CONFIG_SIZE {
        return Err(ImageError::InvalidArgument(format!(
            "image config {} is {} bytes, more than {MAX_CONFIG_SIZE}",
            blob.digest, blob.size
        )));
    }
    let outcome = SharedOutcome::default();
    let inner = open_blob(client, reference, blob).await?;
    let mut content = VerifiedStream::new(inner, blob.clone(), outcome.clone(), None)?;
    let mut bytes = Vec::with_capacity(blob.size as usize);
    while let Some(chunk) = content.next().await {
        match chunk {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(_) => break,
        }
    }
    let outcome = verify::take(&outcome);
    match outcome.error {
        Some(error) => Err(error),
        None => Ok(bytes),
    }
}

/// Writes bytes already in memory (and already verified) through the same
/// verifying path, unless the sink has them.
async fn write_bytes<S: BlobSink + ?Sized>(sink: &S, blob: &BlobInfo, bytes: &[u8]) -> Result<(), ImageError> {
    if sink.has(&blob.digest) {
        return Ok(());
    }
    let chunk = Bytes::copy_from_slice(bytes);
    deliver(sink, blob, stream::once(async move { Ok(chunk) }).boxed(), None).await
}

/// Hands `inner` to the sink through a verifying stream; the stream's own
/// verdict wins over whatever the sink made of it, and a sink that returns
/// before the verified end has not stored the blob.
async fn deliver<S: BlobSink + ?Sized>(
    sink: &S,
    blob: &BlobInfo,
    inner: BoxStream<'static, io::Result<Bytes>>,
    progress: Option<ProgressFn>,
) -> Result<(), ImageError> {
    let outcome = SharedOutcome::default();
    let content = VerifiedStream::new(inner, blob.clone(), outcome.clone(), progress)?;
    let written = sink.write(blob, Box::pin(content)).await;
    let outcome = verify::take(&outcome);
    if let Some(error) = outcome.error {
        return Err(error);
    }
    written?;
    if !outcome.verified {
        return Err(ImageError::FailedPrecondition(format!(
            "the sink returned before the end of blob {}",
            blob.digest
        )));
    }
    Ok(())
}
