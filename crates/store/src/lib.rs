//! Durable state: the redb metadata store (with a schema version) and the
//! atomic file write used for every file berth persists (SPEC B18).

mod atomic;
mod db;

pub use atomic::{fsync_dir, write_atomic};
pub use db::{ContainerRecord, SCHEMA_VERSION, ShimInfo, Store, StoreError};
