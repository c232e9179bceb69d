//! Durable state: the redb metadata store (with a schema version and the
//! event log) and the atomic file write used for every file berth persists
//! (SPEC B18).

mod atomic;
mod db;
mod events;
mod open;
mod sandboxes;

pub use atomic::{fsync_dir, write_atomic};
pub use db::{ContainerRecord, Intent, SCHEMA_VERSION, ShimInfo, Store, StoreError, Write};
pub use events::{Event, RETAINED_EVENTS};
pub use sandboxes::SandboxRecord;
