//! Where a lone VM's time goes (issue 16's benchmark): the host shim's own
//! steps and its waits on the guest, kept in memory in the order they
//! ended and written into the host bundle as `vm-steps.json`
//! (`berth_model::vm::STEPS_FILE`) once the
//! container's exit has powered its VM off (`berth-bench --only vm` reads
//! it). Steps named `guest.*` are the guest's work: boot, and each call
//! the guest answers; the others are the host's.

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Default)]
pub struct Steps(Mutex<Vec<(&'static str, u64)>>);

impl Steps {
    /// Records step `name`, begun at `since`, as ended now: the start of
    /// the next.
    pub fn record(&self, name: &'static str, since: Instant) -> Instant {
        if let Ok(mut steps) = self.0.lock() {
            steps.push((name, since.elapsed().as_micros() as u64));
        }
        Instant::now()
    }

    /// Writes the steps into `bundle` (best effort: a figure for a
    /// benchmark, never a reason to fail a container).
    pub fn write(&self, bundle: &Path) {
        let steps = self.0.lock().map(|s| s.clone()).unwrap_or_default();
        if let Ok(json) = serde_json::to_vec(&steps) {
            let _ = std::fs::write(bundle.join(berth_model::vm::STEPS_FILE), json);
        }
    }
}
