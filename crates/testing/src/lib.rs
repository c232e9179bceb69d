//! Test fixtures, used by the end-to-end tests and the benchmarks:
//! a busybox root filesystem built from Debian's busybox-static, and an
//! isolated berthd (temporary root, state, socket and cgroup parent) that
//! cleans up after itself — shims, cgroups, files — even when a test fails;
//! a private containerd driving berth-shim, cleaned up the same way; and a
//! guard for the shared nat chains of the portmap CNI plugin; the VM
//! guest's assets and bundles.

pub mod containerd;
mod daemon;
mod events;
mod iptables;
mod rootfs;
pub mod vm;

pub use containerd::Containerd;
pub use daemon::{DAEMON_LOG_ENV, Daemon, Output, sweep_cgroup, unmount_under};
pub use events::EventLog;
pub use iptables::{PortmapChains, nat_rules};
pub use rootfs::{bin_path, busybox_rootfs};

/// Every mount point of this process's mount namespace, in mountinfo's
/// order, unescaped.
pub fn mount_points() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    berth_model::mountinfo::mounts(&text).map(|m| m.point.into_owned()).collect()
}

/// berthd flags for each shim the shared suites run against (issue 12):
/// berth's own shim, and Debian's containerd-shim-runc-v2 — a shim nobody
/// here wrote — as the daemon's default runtime.
pub const BERTH_SHIM: &[&str] = &[];
pub const RUNC_V2: &[&str] = &["--default-runtime", "io.containerd.runc.v2"];

/// Runs each named `fn test(shim: &[&str])` once per shim: as
/// `berth_shim::test` and `runc_v2::test`.
#[macro_export]
macro_rules! on_both_shims {
    ($($test:ident),* $(,)?) => {
        mod berth_shim {
            $( #[test] fn $test() { super::$test($crate::BERTH_SHIM) } )*
        }
        mod runc_v2 {
            $( #[test] fn $test() { super::$test($crate::RUNC_V2) } )*
        }
    };
}
