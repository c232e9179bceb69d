//! How long each phase of create, start, exit and delete took (issue 14):
//! the last [`KEPT`] durations of every phase, in memory, recorded with one
//! short lock per phase end (no I/O on the hot path) and summarised on
//! request (`System.Phases`, `berth system phases`, `berth-bench
//! --breakdown`). Phases are named `verb.step`; `shim.spawn` and
//! `runtime.create` are shared by create and restart.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::manager::lock;

/// Labels of a phase's histogram: `phase="create.intent"`.
pub type PhaseLabels = Vec<(&'static str, &'static str)>;
/// Every phase's durations in seconds, for Prometheus (`metrics.rs`).
pub type PhaseHistograms = Family<PhaseLabels, Histogram, fn() -> Histogram>;

/// 50 µs to about 13 s, doubling.
pub(crate) fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

/// Durations kept per phase (a ring): enough for a stable median.
const KEPT: usize = 1024;

#[derive(Default)]
struct Ring {
    micros: Vec<u64>,
    next: usize,
    count: u64,
}

/// One phase's figures over its kept durations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub phase: &'static str,
    /// Every time the phase ended since berthd started (or the last reset).
    pub count: u64,
    pub median_us: u64,
    pub p90_us: u64,
    pub max_us: u64,
}

pub struct Phases {
    rings: Mutex<HashMap<&'static str, Ring>>,
    /// The same durations, cumulative, for scrapes (never reset).
    pub histograms: PhaseHistograms,
}

impl Default for Phases {
    fn default() -> Self {
        Phases { rings: Mutex::default(), histograms: Family::new_with_constructor(histogram) }
    }
}

impl Phases {
    /// Records that `phase` took from `since` until now; returns now, the
    /// start of the next phase.
    pub fn end(&self, phase: &'static str, since: Instant) -> Instant {
        let now = Instant::now();
        let took = now.duration_since(since);
        let us = took.as_micros() as u64;
        self.histograms.get_or_create(&vec![("phase", phase)]).observe(took.as_secs_f64());
        let mut rings = lock(&self.rings);
        let ring = rings.entry(phase).or_default();
        if ring.micros.len() < KEPT {
            ring.micros.push(us);
        } else {
            ring.micros[ring.next] = us;
        }
        ring.next = (ring.next + 1) % KEPT;
        ring.count += 1;
        now
    }

    /// Every phase recorded, by name.
    pub fn summary(&self) -> Vec<Summary> {
        let rings = lock(&self.rings);
        let mut all: Vec<Summary> = rings
            .iter()
            .map(|(phase, ring)| {
                let mut v = ring.micros.clone();
                v.sort_unstable();
                let at = |q: usize| v.get((v.len() * q / 100).min(v.len().saturating_sub(1))).copied().unwrap_or(0);
                Summary { phase, count: ring.count, median_us: at(50), p90_us: at(90), max_us: at(100) }
            })
            .collect();
        all.sort_by_key(|s| s.phase);
        all
    }

    pub fn reset(&self) {
        lock(&self.rings).clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn keeps_the_last_durations_and_summarises_them() {
        let p = Phases::default();
        let t = Instant::now() - Duration::from_millis(5);
        p.end("create.intent", t);
        for ms in 1..=(KEPT as u64 + 10) {
            p.end("start.runtime", Instant::now() - Duration::from_millis(ms.min(100)));
        }
        let s = p.summary();
        assert_eq!(s.iter().map(|s| s.phase).collect::<Vec<_>>(), ["create.intent", "start.runtime"]);
        assert_eq!(s[0].count, 1);
        assert!(s[0].median_us >= 5_000 && s[0].median_us == s[0].max_us, "{s:?}");
        assert_eq!(s[1].count, KEPT as u64 + 10);
        assert!(s[1].median_us >= 100_000 && s[1].p90_us >= s[1].median_us, "mostly 100 ms: {s:?}");
        p.reset();
        assert!(p.summary().is_empty());
    }
}
