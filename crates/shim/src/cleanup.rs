//! What is left of a container when its init is gone or its shim died:
//! stray processes in its cgroup, and the runtime's state. Used by the
//! exit watcher (SPEC B4), by `berth-shim --cleanup BUNDLE`, which berthd
//! runs for a container whose shim is gone (SPEC B19), and by containerd's
//! `delete` action.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_cgroups::Hierarchies;
use berth_model::ExitStatus;
use berth_runtime::Runtime;
use nix::fcntl::{Flock, FlockArg};

/// How long cleanup waits for killed processes to leave the cgroup.
const DRAIN: Duration = Duration::from_secs(5);

/// The container's cgroup, from the bundle's config.json.
pub fn cgroup_of(bundle: &Path) -> Option<String> {
    let text = std::fs::read_to_string(bundle.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.pointer("/linux/cgroupsPath")?.as_str().map(str::to_string)
}

/// SIGKILLs (and thaws) every process in the cgroup and the cgroups below
/// it; returns how many there were.
pub fn kill_leftovers(h: Option<&Hierarchies>, cgroup: Option<&str>) -> usize {
    let (Some(cg), Some(h)) = (cgroup, h) else { return 0 };
    h.kill_all(cg)
}

/// The exit recorded by the shim, if it got that far.
pub fn recorded_exit(bundle: &Path) -> Option<ExitStatus> {
    serde_json::from_slice(&std::fs::read(bundle.join("exit.json")).ok()?).ok()
}

/// Cleans up after a dead shim: kills what is left in the container's
/// cgroup, waits for it to drain, and deletes the runtime's state. Returns
/// the exit the shim recorded, if any. Two cleanups of one bundle (berthd's
/// exit monitor and an `rm -f` of the same dead shim) take turns on a lock
/// of the bundle: run together, the runtime's delete of one would fail on
/// what the other just removed; in turn, the second finds nothing left.
pub fn run(id: &str, bundle: &Path, runtime: &dyn Runtime) -> Result<Option<ExitStatus>, String> {
    // A bundle already removed (by a delete that failed after it) leaves
    // nothing to take turns on.
    let _turn = match std::fs::File::open(bundle) {
        Ok(dir) => Some(
            Flock::lock(dir, FlockArg::LockExclusive).map_err(|(_, e)| format!("lock {}: {e}", bundle.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("open {}: {e}", bundle.display())),
    };
    let cgroup = cgroup_of(bundle);
    let hierarchies = Hierarchies::detect().ok();
    let deadline = Instant::now() + DRAIN;
    while kill_leftovers(hierarchies.as_ref(), cgroup.as_deref()) > 0 {
        if Instant::now() > deadline {
            return Err(format!("processes of {id} did not die within {DRAIN:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let (Some(h), Some(cg)) = (&hierarchies, &cgroup) {
        h.remove_children(cg).map_err(|e| format!("remove the sub-cgroups of {cg}: {e}"))?;
    }
    runtime.delete(id, true).map_err(|e| e.to_string())?;
    Ok(recorded_exit(bundle))
}
