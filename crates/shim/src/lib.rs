//! The contract between berthd and berth-shim that the containerd shim v2
//! protocol leaves open: how a shim is started, and the one mapping between
//! berth's error codes and ttrpc status codes, used by both sides.

pub mod crilog;
pub mod logger;
pub mod metrics;
pub mod resources;

use berth_model::Code;
use containerd_shim_protos::cgroups::metrics as cgroups_v1;
use containerd_shim_protos::cgroups_v2::metrics as cgroups_v2;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::ttrpc;

/// berthd binds the shim's socket and hands the listener over as this fd, so
/// the daemon can connect the moment the shim is spawned.
pub const LISTEN_FD: i32 = 3;

/// The environment variable glibc reads its malloc settings from, and
/// [`malloc_tunables`] its value for a shim.
pub const MALLOC_TUNABLES_VAR: &str = "GLIBC_TUNABLES";

/// glibc's malloc settings for a shim process, after any the caller has:
/// no caches of freed blocks by size (tcache, fastbins), so what a create
/// frees coalesces and `malloc_trim` gives it back. A shim per container
/// makes every private page count (issue 14: 304 → 242 KB per shim). The
/// container's processes get the spec's environment, not this one.
pub fn malloc_tunables() -> std::ffi::OsString {
    const SHIM: &str = "glibc.malloc.tcache_count=0:glibc.malloc.mxfast=0";
    match std::env::var_os(MALLOC_TUNABLES_VAR).filter(|v| !v.is_empty()) {
        Some(mut own) => {
            own.push(":");
            own.push(SHIM);
            own
        }
        None => SHIM.into(),
    }
}

/// Gives back what a burst of work (a create and start, berthd's recovery)
/// left resident and the quiet time after it does not need: the heap pages
/// it freed (`malloc_trim`), and this process's mappings of its own
/// executable that hold no page of their own — the code and the read-only
/// data, all of it still the file's. Their pages stay in the page cache,
/// shared with every other shim; only this process's page table entries go
/// (`MADV_DONTNEED`), and what runs next faults its pages back in. With
/// fault-around mapping 16 neighbours per fault, a started shim otherwise
/// keeps its whole create path counted in its RSS. A mapping with an
/// anonymous page (a relocated GOT, written data) is left alone: dropping
/// it would reset that page to the file's contents. A debugger's
/// breakpoints in the text go with it.
pub fn release_memory() {
    // SAFETY: plain libc call.
    unsafe { libc::malloc_trim(0) };
    let maps = own_mappings();
    let here = release_memory as *const () as usize;
    let Some(exe) = maps.iter().find(|m| m.range.contains(&here) && !m.path.is_empty()) else { return };
    for m in maps.iter().filter(|m| m.path == exe.path && !m.writable && m.anonymous_kb == 0) {
        // SAFETY: a read-only private mapping of the executable with no
        // page of its own: dropping its entries loses nothing the file
        // does not hold, and the next access faults the page back in.
        unsafe { libc::madvise(m.range.start as *mut libc::c_void, m.range.len(), libc::MADV_DONTNEED) };
    }
}

/// One mapping of this process, as /proc/self/smaps gives it.
#[derive(Debug)]
pub struct Mapping {
    pub range: std::ops::Range<usize>,
    pub writable: bool,
    pub path: String,
    pub rss_kb: u64,
    pub anonymous_kb: u64,
}

/// This process's mappings (none if /proc cannot be read).
pub fn own_mappings() -> Vec<Mapping> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let first = fields.next().unwrap_or_default();
        let kb = || fields.clone().next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match (first, out.last_mut()) {
            ("Rss:", Some(m)) => m.rss_kb = kb(),
            ("Anonymous:", Some(m)) => m.anonymous_kb = kb(),
            (range, _) if !range.ends_with(':') => {
                let Some((a, b)) = range.split_once('-') else { continue };
                let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else { continue };
                let perms = fields.next().unwrap_or_default();
                let path = fields.nth(3).unwrap_or_default().to_string();
                out.push(Mapping { range: a..b, writable: perms.contains('w'), path, rss_kb: 0, anonymous_kb: 0 });
            }
            _ => {}
        }
    }
    out
}

/// In the version a berth-shim answers Connect with when it writes berth's
/// rotated logs (`crilog::berth_target`): one started by an older berthd
/// does not, and gets plain log files.
pub const LOG_ROTATION_FEATURE: &str = "+berth-log";

/// What a berth-shim answers Connect with: its version and features.
pub fn shim_version(namespace: &str) -> String {
    format!("berth-shim {} ({namespace}) {LOG_ROTATION_FEATURE}", env!("CARGO_PKG_VERSION"))
}

/// The Task service's name in containerd-shim-protos (and containerd 2.x).
pub const TASK_V3: &str = "containerd.task.v3.Task";
/// The name containerd 1.6 and 1.7 use and their shims serve: the same messages.
pub const TASK_V2: &str = "containerd.task.v2.Task";

/// Type URL of the JSON-encoded `berth_cgroups::ContainerStats` a shim
/// returns from Stats.
pub const STATS_TYPE_URL: &str = "berth.dev/cgroups/v1/ContainerStats";
/// Type URL of the JSON-encoded `berth_cgroups::Limits` berthd sends with
/// Update.
pub const LIMITS_TYPE_URL: &str = "berth.dev/cgroups/v1/Limits";

/// Type URL of the JSON-encoded `berth_runtime::Checkpoint` berthd sends
/// with Checkpoint and with a Create that restores.
pub const CHECKPOINT_TYPE_URL: &str = "berth.dev/runtime/v1/Checkpoint";

/// Runtime name of berth's own shim (SPEC B23).
pub const SHIM_RUNTIME_NAME: &str = "io.containerd.berth.v1";

pub fn to_ttrpc(code: Code, message: impl ToString) -> ttrpc::Error {
    use ttrpc::Code as T;
    let c = match code {
        Code::InvalidArgument => T::INVALID_ARGUMENT,
        Code::NotFound => T::NOT_FOUND,
        Code::AlreadyExists => T::ALREADY_EXISTS,
        Code::FailedPrecondition => T::FAILED_PRECONDITION,
        Code::DeadlineExceeded => T::DEADLINE_EXCEEDED,
        Code::Unavailable => T::UNAVAILABLE,
        Code::Internal => T::INTERNAL,
    };
    ttrpc::Error::RpcStatus(ttrpc::get_status(c, message))
}

/// Splits a ttrpc error into berth's code and the server's message.
pub fn from_ttrpc(err: &ttrpc::Error) -> (Code, String) {
    use ttrpc::Code as T;
    match err {
        ttrpc::Error::RpcStatus(s) => {
            let code = match s.code() {
                T::INVALID_ARGUMENT => Code::InvalidArgument,
                T::NOT_FOUND => Code::NotFound,
                T::ALREADY_EXISTS => Code::AlreadyExists,
                T::FAILED_PRECONDITION => Code::FailedPrecondition,
                T::DEADLINE_EXCEEDED => Code::DeadlineExceeded,
                T::UNAVAILABLE => Code::Unavailable,
                _ => Code::Internal,
            };
            (code, s.message().to_string())
        }
        // The client-side "Request deadline elapsed": the shim is alive but
        // slow, which must not be mistaken for a dead shim.
        ttrpc::Error::Others(m) if m.contains("deadline") => (Code::DeadlineExceeded, err.to_string()),
        // Connection trouble: the shim is unreachable (callers check whether
        // it is actually gone before acting on that).
        other => (Code::Unavailable, other.to_string()),
    }
}

pub use berth_runtime::{CRIU_ENV, Checkpoint, pidfd_open};

/// A short, stable tag of a process for file names: FNV-1a of its
/// container's id and its exec id ("" for init), so the processes of all
/// the containers one (sandbox) shim holds get distinct names.
fn process_tag(container_id: &str, exec_id: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    // The separator keeps ("ab", "c") and ("a", "bc") apart: ids hold no NUL.
    for b in container_id.bytes().chain([0]).chain(exec_id.bytes()) {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// The socket on which a shim serves the terminal of one of its processes:
/// next to the shim's own socket, with a short name (unix socket paths are
/// limited to 107 bytes).
pub fn tty_socket(shim_socket: &std::path::Path, container_id: &str, exec_id: &str) -> std::path::PathBuf {
    shim_socket.with_extension(format!("{}.tty", process_tag(container_id, exec_id)))
}

/// Where the runtime hands the shim a process's pty master.
pub fn console_socket(shim_socket: &std::path::Path, container_id: &str, exec_id: &str) -> std::path::PathBuf {
    shim_socket.with_extension(format!("{}.console", process_tag(container_id, exec_id)))
}

/// A message containerd receives packed in an `Any`, with its full name.
/// Spelled out rather than asked of protobuf's reflection, whose descriptor
/// pool costs every shim that publishes events about 0.4 MB of heap and
/// the pages of its code (a test checks the names against it).
pub trait Packed: Message {
    const TYPE_URL: &'static str;
}

macro_rules! packed {
    ($($t:ty = $name:literal),* $(,)?) => { $(impl Packed for $t { const TYPE_URL: &'static str = $name; })* };
}

packed! {
    ev::TaskCreate = "containerd.events.TaskCreate",
    ev::TaskStart = "containerd.events.TaskStart",
    ev::TaskExit = "containerd.events.TaskExit",
    ev::TaskOOM = "containerd.events.TaskOOM",
    ev::TaskDelete = "containerd.events.TaskDelete",
    ev::TaskPaused = "containerd.events.TaskPaused",
    ev::TaskResumed = "containerd.events.TaskResumed",
    ev::TaskExecAdded = "containerd.events.TaskExecAdded",
    ev::TaskExecStarted = "containerd.events.TaskExecStarted",
    cgroups_v1::Metrics = "io.containerd.cgroups.v1.Metrics",
    cgroups_v2::Metrics = "io.containerd.cgroups.v2.Metrics",
}

/// A protobuf message packed as containerd packs it: an `Any` whose type
/// URL is the message's full name (e.g. `containerd.events.TaskExit`).
pub fn any_of<M: Packed>(m: &M) -> containerd_shim_protos::protobuf::Result<Any> {
    let mut any = Any::new();
    any.type_url = M::TYPE_URL.to_string();
    any.value = m.write_to_bytes()?;
    Ok(any)
}

pub fn timestamp(ns: u64) -> Timestamp {
    let mut t = Timestamp::new();
    t.seconds = (ns / 1_000_000_000) as i64;
    t.nanos = (ns % 1_000_000_000) as i32;
    t
}

pub fn from_timestamp(t: &Timestamp) -> u64 {
    t.seconds.max(0) as u64 * 1_000_000_000 + t.nanos.max(0) as u64
}

#[cfg(test)]
mod tests {

    #[test]
    fn packed_names_are_the_descriptors_full_names() {
        use containerd_shim_protos::protobuf::MessageFull;
        fn same<M: Packed + MessageFull>() {
            assert_eq!(M::TYPE_URL, M::descriptor().full_name());
        }
        same::<ev::TaskCreate>();
        same::<ev::TaskStart>();
        same::<ev::TaskExit>();
        same::<ev::TaskOOM>();
        same::<ev::TaskDelete>();
        same::<ev::TaskPaused>();
        same::<ev::TaskResumed>();
        same::<ev::TaskExecAdded>();
        same::<ev::TaskExecStarted>();
        same::<cgroups_v1::Metrics>();
        same::<cgroups_v2::Metrics>();
    }
    use super::*;

    /// The resident size of this process's mapping of its own code.
    fn text_rss_kb() -> u64 {
        let here = release_memory as *const () as usize;
        own_mappings().iter().find(|m| m.range.contains(&here)).expect("the code's mapping").rss_kb
    }

    #[test]
    fn release_memory_unmaps_code_and_keeps_data() {
        let data: Vec<u64> = (0..100_000).collect();
        let before = text_rss_kb();
        release_memory();
        let after = text_rss_kb();
        assert!(after < before, "code mapping {before} kB before, {after} kB after");
        // The heap is untouched, and code still runs.
        assert_eq!(data.iter().sum::<u64>(), 4_999_950_000);
    }

    #[test]
    fn codes_round_trip() {
        for c in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::DeadlineExceeded,
            Code::Unavailable,
            Code::Internal,
        ] {
            assert_eq!(from_ttrpc(&to_ttrpc(c, "m")), (c, "m".to_string()));
        }
    }

    #[test]
    fn tty_sockets_are_short_and_distinct() {
        let shim = std::path::Path::new("/run/berth/shims/0123456789abcdef.sock");
        let long = "c".repeat(64);
        let init = tty_socket(shim, &long, "");
        let exec = tty_socket(shim, &long, &"e".repeat(128));
        assert_ne!(init, exec);
        // Two containers' inits (and their execs of one name) in one shim.
        assert_ne!(tty_socket(shim, "a", ""), tty_socket(shim, "b", ""));
        assert_ne!(tty_socket(shim, "a", "x"), tty_socket(shim, "b", "x"));
        assert_ne!(tty_socket(shim, "ab", "c"), tty_socket(shim, "a", "bc"));
        assert_ne!(console_socket(shim, "a", ""), console_socket(shim, "b", ""));
        assert_eq!(exec.parent(), shim.parent());
        assert!(exec.as_os_str().len() < 64, "{exec:?}");
        assert!(console_socket(shim, &long, "").as_os_str().len() < 108);
        assert!(console_socket(shim, "a", "").to_string_lossy().ends_with(".console"));
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(from_timestamp(&timestamp(1_700_000_000_123_456_789)), 1_700_000_000_123_456_789);
    }
}
