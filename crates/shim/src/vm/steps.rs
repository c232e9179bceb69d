//! Where a lone VM's time goes (issue 16's benchmark): the host shim's own
//! steps and its waits on the guest, kept in memory in the order they
//! ended and written into the host bundle as `vm-steps.json`
//! (`berth_model::vm::STEPS_FILE`) once the container's exit has powered
//! its VM off (`berth-bench --only vm` reads it). Each step is a span in
//! microseconds since the shim started; steps named `guest.*` are the
//! guest's work (boot, and each call the guest answers), which may
//! overlap (a Wait is asked before the Start); the others are the host's.

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// Spans kept: a lone VM's run has about ten; a sandbox's shim, which
/// records every container's calls and writes none, stops here.
const MAX_SPANS: usize = 64;

pub struct Steps {
    epoch: Instant,
    spans: Mutex<Vec<(&'static str, u64, u64)>>,
}

impl Default for Steps {
    fn default() -> Steps {
        Steps { epoch: Instant::now(), spans: Mutex::default() }
    }
}

impl Steps {
    /// Records step `name`, begun at `since`, as ended now: the start of
    /// the next.
    pub fn record(&self, name: &'static str, since: Instant) -> Instant {
        let now = Instant::now();
        let at = |t: Instant| t.saturating_duration_since(self.epoch).as_micros() as u64;
        if let Ok(mut spans) = self.spans.lock()
            && spans.len() < MAX_SPANS
        {
            spans.push((name, at(since), at(now)));
        }
        now
    }

    /// Records step `name` from `since`, or from the end of the last step
    /// named `after` if that is later (a Wait asked before the Start
    /// waits on the guest only from the Start's end).
    pub fn record_after(&self, name: &'static str, since: Instant, after: &'static str) -> Instant {
        let started = self.spans.lock().ok().and_then(|s| s.iter().rev().find(|(n, ..)| *n == after).map(|s| s.2));
        let since = started.map_or(since, |end| since.max(self.epoch + std::time::Duration::from_micros(end)));
        self.record(name, since)
    }

    /// Writes the steps into `bundle` as `[["step", from, to], …]` (best
    /// effort: a figure for a benchmark, never a reason to fail a
    /// container).
    pub fn write(&self, bundle: &Path) {
        let spans = self.spans.lock().map(|s| s.clone()).unwrap_or_default();
        if let Ok(json) = serde_json::to_vec(&spans) {
            let _ = berth_store::write_atomic(&bundle.join(berth_model::vm::STEPS_FILE), &json);
        }
    }
}
