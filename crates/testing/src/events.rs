//! A recording of `berth events --json` for the length of a test step.

use std::process::Child;
use std::time::Duration;

use serde_json::Value;

use crate::Daemon;

/// Events recorded from `berth events --json` since `Daemon::record_events`.
pub struct EventLog {
    child: Child,
}

impl Daemon {
    /// Starts recording events (optionally of one container only).
    pub fn record_events(&self, id: Option<&str>) -> EventLog {
        let mut args = vec!["events", "--json"];
        if let Some(id) = id {
            args.extend(["--id", id]);
        }
        let child = self.berth_spawn(&args);
        // Let the subscription attach before the test acts.
        std::thread::sleep(Duration::from_millis(200));
        EventLog { child }
    }
}

impl Daemon {
    /// Every recorded event after sequence number `since`, from the
    /// daemon's durable log (`berth events --since N --no-follow`).
    pub fn events_since(&self, since: u64) -> Vec<Value> {
        let since = since.to_string();
        let out = self.berth(&["events", "--json", "--since", &since, "--no-follow"]);
        out.ok().lines().map(|l| serde_json::from_str(l).expect("event JSON")).collect()
    }

    /// `berth inspect --json ID`.
    pub fn inspect(&self, id: &str) -> Value {
        serde_json::from_str(self.berth(&["inspect", "--json", id]).ok()).expect("inspect JSON")
    }

    /// Polls `inspect` until `done` holds (10 s at most) and returns it.
    #[track_caller]
    pub fn inspect_until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let c = self.inspect(id);
            if done(&c) {
                return c;
            }
            assert!(std::time::Instant::now() < deadline, "condition never held: {c}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl EventLog {
    /// Stops recording (after a moment for the last events) and returns
    /// them in order.
    pub fn finish(mut self) -> Vec<Value> {
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.kill();
        let out = self.child.wait_with_output().expect("events output");
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Like `finish`, only the event types.
    pub fn types(self) -> Vec<String> {
        self.finish().iter().filter_map(|e| e["type"].as_str().map(str::to_string)).collect()
    }
}
