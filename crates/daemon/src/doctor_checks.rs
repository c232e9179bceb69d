//! The host checks of `berth doctor` (`doctor.rs`): the store, runtimes
//! and CRIU, the cgroup layout and its start-latency knobs, free disk,
//! the filesystem under `--state`.

use berth_api::v1 as pb;
use berth_model::mountinfo::{Mount, mount_of, mounts};

use crate::manager::Manager;

/// Free space under the root below which the disk is a problem.
const LOW_DISK_BYTES: u64 = 1 << 30;
const LOW_DISK_PERCENT: u64 = 5;

fn check(name: &str, status: &str, detail: String) -> pb::Check {
    pb::Check { name: name.into(), status: status.into(), detail }
}

/// The cgroup mounts (v1 hierarchies and cgroup2) without `favordynmods`:
/// without it a process moved through `cgroup.procs` (a join on cgroup v2,
/// or by runc) takes the cgroup threadgroup lock for writing and may wait
/// for an RCU grace period. On v1 the embedded runtime's joins skip that
/// lock (third_party/README.md, libcgroups).
fn without_favordynmods(mountinfo: &str) -> (usize, Vec<String>) {
    let cgroups: Vec<Mount> = mounts(mountinfo).filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2").collect();
    let without = cgroups.iter().filter(|m| !m.options.split(',').any(|o| o == "favordynmods"));
    (cgroups.len(), without.map(|m| m.point.to_string()).collect())
}

/// Whether the ext4 on block device `source` runs without a journal (its
/// sysfs directory names no journal thread). Without one, ext4 passes
/// over every inode freed in the last half minute when it allocates one.
fn ext4_without_journal(source: &str) -> bool {
    let device = std::fs::canonicalize(source).unwrap_or_else(|_| source.into());
    let Some(name) = device.file_name() else { return false };
    let task = std::path::Path::new("/sys/fs/ext4").join(name).join("journal_task");
    std::fs::read_to_string(task).is_ok_and(|t| t.trim() == "<none>")
}

impl Manager {
    /// Each check (blocking: runs the runtimes' `--version`).
    pub(crate) fn health_checks(&self) -> Vec<pb::Check> {
        let mut checks = vec![self.store_check()];
        match self.system_info() {
            Ok(info) => {
                for r in info.runtimes {
                    let status = if r.available { "ok" } else { "note" };
                    let detail = match (r.available, r.path.is_empty()) {
                        (true, _) => r.version,
                        (false, true) => "not installed (not on PATH)".to_string(),
                        (false, false) => format!("not usable ({}): {}", r.path, r.version),
                    };
                    checks.push(check(&format!("runtime {}", r.name), status, detail));
                }
                let criu_ok = !info.criu_version.starts_with("not usable");
                let detail =
                    if criu_ok { info.criu_version } else { format!("{}: checkpoints need it", info.criu_version) };
                checks.push(check("criu", if criu_ok { "ok" } else { "note" }, detail));
                let layout = format!(
                    "{} ({} driver), parent {}, controllers {}",
                    info.cgroup_version,
                    info.cgroup_driver,
                    info.cgroup_parent,
                    info.cgroup_controllers.join(",")
                );
                checks.push(check("cgroup layout", "ok", layout));
            }
            Err(e) => checks.push(check("runtimes", "error", e.to_string())),
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let (total, without) = without_favordynmods(&mountinfo);
        checks.push(match without.len() {
            0 => check("cgroup favordynmods", "ok", format!("set on all {total} cgroup mounts")),
            n => check(
                "cgroup favordynmods",
                "note",
                format!(
                    "off on {n} of {total} cgroup mounts ({}): remounting with -o favordynmods spares joins through cgroup.procs (cgroup v2, runc) a wait",
                    without.join(", ")
                ),
            ),
        });
        checks.push(self.disk_check());
        checks.push(self.state_check(&mountinfo));
        checks
    }

    /// `--state` belongs on a tmpfs (docs/operations.md, "Where `--state`
    /// should live"): each create writes files there, and a reboot must
    /// take them with the containers.
    fn state_check(&self, mountinfo: &str) -> pb::Check {
        const NAME: &str = "state filesystem";
        let state = &self.cfg.state;
        match nix::sys::statfs::statfs(state) {
            Ok(fs) if fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC => {
                return check(NAME, "ok", format!("{} is on a tmpfs", state.display()));
            }
            Ok(_) => {}
            Err(e) => return check(NAME, "error", format!("statfs {}: {e}", state.display())),
        }
        // Which filesystem, for the note.
        let path = std::fs::canonicalize(state).unwrap_or_else(|_| state.clone());
        let mount = mount_of(mountinfo, &path).filter(|m| !m.fstype.is_empty());
        let on = mount.as_ref().map_or("a filesystem".to_string(), |m| format!("{} ({})", m.fstype, m.source));
        let mut detail = format!(
            "{} is on {on}, not a tmpfs: it outlives a reboot and every create writes its files to it; mount a tmpfs there",
            state.display()
        );
        if let Some(m) = &mount
            && m.fstype == "ext4"
            && ext4_without_journal(&m.source)
        {
            detail.push_str(" (this ext4 has no journal: creating files there slows down after deletes)");
        }
        check(NAME, "note", detail)
    }

    fn store_check(&self) -> pb::Check {
        let read = || -> crate::error::Result<String> {
            let containers = self.store.list(None)?.len();
            let sandboxes = self.store.list_sandboxes(None)?.len();
            let intents = self.store.intents()?.len();
            let seq = self.store.last_seq()?;
            Ok(format!(
                "schema {}: {containers} container(s), {sandboxes} sandbox(es), {intents} create(s) in flight, event log at {seq}; every record decodes",
                berth_store::SCHEMA_VERSION
            ))
        };
        match read() {
            Ok(detail) => check("store", "ok", detail),
            Err(e) => check("store", "problem", format!("{e}: restore {} from a backup", self.cfg.db_path().display())),
        }
    }

    fn disk_check(&self) -> pb::Check {
        let root = &self.cfg.root;
        match nix::sys::statvfs::statvfs(root) {
            Ok(s) => {
                let free = s.blocks_available() * s.fragment_size();
                let total = (s.blocks() * s.fragment_size()).max(1);
                let percent = free * 100 / total;
                let detail = format!("{} MiB free under {} ({percent}%)", free >> 20, root.display());
                let low = free < LOW_DISK_BYTES || percent < LOW_DISK_PERCENT;
                check("disk", if low { "problem" } else { "ok" }, detail)
            }
            Err(e) => check("disk", "error", format!("statvfs {}: {e}", root.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn favordynmods_is_read_from_each_cgroup_mount() {
        let info = "30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
31 25 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate,favordynmods\n\
32 25 0:28 / /proc rw - proc proc rw\n";
        assert_eq!(without_favordynmods(info), (2, vec!["/sys/fs/cgroup/memory".to_string()]));
    }
}
