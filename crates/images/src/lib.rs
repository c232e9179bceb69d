//! The image side of a node (issue 10): a content store addressed by
//! digest, layer unpacking into overlayfs snapshots keyed by chain id, and
//! registry pulls. Depends on the model and the store, never on the daemon.

mod apply;
mod content;
mod diff;
mod error;
pub mod gc;
mod image_store;
pub mod layout;
pub mod pull;
mod resolve;
mod sink;
pub mod snapshot;
mod stream_unpack;
mod unpack;
mod userdb;

pub use apply::unpack_image;
pub use content::{BlobWriter, ContentStore, Digest, StoredBlob};
pub use diff::write_upper_as_layer;
pub use error::ImageError;
pub use image_store::{ImageRecord, ImageStore, RunConfig, normalize_reference, read_config};
pub use layout::{Exported, ImportedImage, export, import};
pub use pull::{Auth, BlobInfo, BlobKind, BlobSink, BlobStream, LayerProgress, Platform, Pulled, Puller};
pub use resolve::{Resolved, resolve};
pub use snapshot::{CommitOutcome, Keep, Mounts, Prepared, Snapshotter, Usage, disk_usage};
pub use stream_unpack::StreamingUnpack;
pub use unpack::{
    Compression, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_TOTAL_SIZE, MAX_NAME_LEN, UnpackOptions, Unpacked, Whiteouts,
    unpack_layer,
};
pub use userdb::{UserIds, resolve_user};
