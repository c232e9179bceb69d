//! Plugins a killed berthd left running. berthd runs each plugin in a
//! process group of its own; if berthd dies in the middle of an ADD, the
//! plugin carries on and could finish its ADD after the restarted berthd
//! has torn the attachment down (leaking an address, a veth, rules). So at
//! startup, before any teardown, the groups of plugins working for a
//! cached attachment (found by the `CNI_CONTAINERID` in their environment,
//! a digest no other runtime uses) are killed and awaited. Only
//! attachments to a CNI network run plugins; without any, /proc is not
//! read at all (reading every process's environment costs milliseconds
//! per thousand processes).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::{Networks, Result};

/// How long killed plugins may take to be gone.
const GONE_WITHIN: Duration = Duration::from_secs(5);

/// Pids of processes whose environment names one of `ids` as CNI container.
fn plugins_of(ids: &HashSet<String>) -> Vec<i32> {
    let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    procs
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            env.split(|b| *b == 0).any(|var| {
                var.strip_prefix(b"CNI_CONTAINERID=")
                    .is_some_and(|id| std::str::from_utf8(id).is_ok_and(|id| ids.contains(id)))
            })
        })
        .collect()
}

/// The process group of `pid` (0 if it is gone).
fn group_of(pid: i32) -> i32 {
    nix::unistd::getpgid(Some(Pid::from_raw(pid))).map(Pid::as_raw).unwrap_or(0)
}

impl Networks {
    /// Kills the plugins still working for cached attachments (see the
    /// module docs) and waits until they are gone; returns how many there
    /// were. Call it before recovery detaches anything.
    pub fn stop_orphan_plugins(&self) -> Result<usize> {
        let ids: HashSet<String> =
            self.caches()?.into_iter().filter(|c| c.network.is_some()).map(|c| c.runtime.container_id).collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let found = plugins_of(&ids);
        if found.is_empty() {
            return Ok(0);
        }
        for pid in &found {
            // A group whose leader is one of them is a plugin's (each runs
            // in a group of its own) and goes whole, with what it started.
            let group = group_of(*pid);
            if found.contains(&group) {
                let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
            } else {
                let _ = nix::sys::signal::kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
        }
        let deadline = Instant::now() + GONE_WITHIN;
        while !plugins_of(&ids).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(count = found.len(), "killed CNI plugins a previous berthd left running");
        Ok(found.len())
    }
}
