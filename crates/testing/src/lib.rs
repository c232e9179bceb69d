//! Test fixtures, used by the end-to-end tests and the benchmarks:
//! a busybox root filesystem built from Debian's busybox-static, and an
//! isolated berthd (temporary root, state, socket and cgroup parent) that
//! cleans up after itself — shims, cgroups, files — even when a test fails;
//! a private containerd driving berth-shim, cleaned up the same way; and a
//! guard for the shared nat chains of the portmap CNI plugin.

pub mod containerd;
mod daemon;
mod events;
mod iptables;
mod rootfs;

pub use containerd::Containerd;
pub use daemon::{Daemon, Output};
pub use events::EventLog;
pub use iptables::{PortmapChains, nat_rules};
pub use rootfs::{bin_path, busybox_rootfs};
