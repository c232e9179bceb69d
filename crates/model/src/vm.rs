//! What the host side of a VM sandbox and its guest agent agree on
//! (SPEC B26, docs/vm.md): where the agent listens, how the host's shared
//! directory is tagged and where the guest mounts it, and the kernel
//! command line keys the agent reads.

/// The vsock port the guest's berth-shim serves the Task API on.
pub const AGENT_PORT: u32 = 1024;

/// The mount tag of the directory the host shares with the guest.
pub const SHARE_TAG: &str = "berth";

/// Where the guest mounts the shared directory: a host path `SHARE/P`
/// is `GUEST_SHARE/P` in the guest.
pub const GUEST_SHARE: &str = "/run/berth/share";

/// Kernel command line key naming the sandbox (the guest shim's `--id`).
pub const CMDLINE_ID: &str = "berth.id";

/// Kernel command line key with the guest shim's log level (optional).
pub const CMDLINE_LOG: &str = "berth.log";

/// Kernel command line key with the guest's network: `CIDR,GATEWAY,MTU`
/// for its `eth0` (the gateway may be empty). Absent: loopback only.
pub const CMDLINE_NET: &str = "berth.net";

/// The line the agent prints on the console once the shim listens: the
/// end of the guest's boot in the VM start breakdown.
pub const READY_LINE: &str = "berth-agent: ready";

/// The file a guest's shim writes in a container's bundle when init exits
/// after OOM kills in its cgroup (their count), before the exit is
/// answered; the host's shim copies it to the host bundle, where berthd
/// reads it at the exit (SPEC B15).
pub const OOM_KILLS_FILE: &str = "oom-kills";

/// The file a lone VM's host shim writes in its container's bundle once
/// the exit has powered the VM off: `[["step", from, to], …]` in
/// microseconds since the shim started, its own steps and its waits on
/// the guest (`guest.*`), for the benchmark.
pub const STEPS_FILE: &str = "vm-steps.json";

/// The value of `key` on a kernel command line (`key=value` words).
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_ascii_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_values_by_whole_key() {
        let line = "console=ttyS0 berth.idx=no berth.id=sb-1 quiet";
        assert_eq!(cmdline_value(line, CMDLINE_ID), Some("sb-1"));
        assert_eq!(cmdline_value(line, CMDLINE_LOG), None);
        assert_eq!(cmdline_value("berth.id", CMDLINE_ID), None);
    }
}

/// The VM a container or a sandbox runs in (runtime `vm`): the
/// accelerator berthd gave it (`kvm` or `tcg`) and its size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmInfo {
    pub accel: String,
    pub cpus: u32,
    pub memory_mib: u64,
}
