//! Issue 12's benchmark: containerd 1.6 running /bin/true through its own
//! shim (`io.containerd.runc.v2`) and through berth-shim
//! (`io.containerd.berth.v1`), interleaved on the same rootfs, and the mean
//! RSS/PSS of each shim with N detached containers; then berthd running
//! /bin/true through its own shim and through containerd-shim-runc-v2; and
//! the PSS of one sandbox shim serving N containers against a lone
//! container's shim (each measured as the only berth-shim running).

use std::time::Duration;

use berth_testing::Daemon;

use crate::containerd::{BERTH_V1, Containerd, RUNC_V2};
use crate::measure::{Mem, Runner, settled_memory, time_interleaved};

pub struct ShimFigures {
    pub runc_v2: Option<Duration>,
    pub berth: Option<Duration>,
    pub mem_runc_v2: Option<Mem>,
    pub mem_berth: Option<Mem>,
    /// `berth run --rm` through berth-shim and through runc-v2.
    pub berthd_own: Option<Duration>,
    pub berthd_runc_v2: Option<Duration>,
    /// berthd's shim of one lone container, and of a sandbox of N.
    pub mem_lone: Option<Mem>,
    pub mem_sandbox: Option<Mem>,
}

/// The PSS of berthd's shim for one lone sleeping container, then of one
/// sandbox shim with `containers` sleeping containers.
fn sandbox_memory(d: &Daemon, containers: usize) -> (Option<Mem>, Option<Mem>) {
    let pid_of = |v: &str| serde_json::from_str::<serde_json::Value>(v).ok()?["shim_pid"].as_u64().map(|p| p as u32);
    d.run_detached("lone", &["sleep", "1000"]);
    let lone = pid_of(d.berth(&["inspect", "--json", "lone"]).ok()).and_then(|pid| settled_memory(&[pid]));
    d.berth(&["rm", "-f", "lone"]).ok();
    d.berth(&["sandbox", "create", "--name", "bench-pod"]).ok();
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    for i in 0..containers {
        let id = format!("p{i}");
        d.berth(&["run", "-d", "--sandbox", "bench-pod", "--name", &id, &rootfs, "sleep", "1000"]).ok();
    }
    let pod = pid_of(d.berth(&["sandbox", "inspect", "bench-pod"]).ok()).and_then(|pid| settled_memory(&[pid]));
    for i in 0..containers {
        d.berth(&["rm", "-f", &format!("p{i}")]).ok();
    }
    d.berth(&["sandbox", "rm", "bench-pod"]).ok();
    (lone, pod)
}

pub fn run(d: &Daemon, rounds: usize, containers: usize) -> Option<ShimFigures> {
    let (dir, rootfs) = (d.dir(), &d.rootfs);
    let rootfs_s = rootfs.to_string_lossy().into_owned();
    eprintln!("shims: berth run --rm through berth-shim and runc-v2, {rounds} rounds …");
    let mut runners: Vec<Runner<'_>> = vec![
        Box::new(|i| d.berth(&["run", "--rm", "--name", &format!("o{i}"), &rootfs_s, "/bin/true"]).code == 0),
        Box::new(|i| {
            let args = ["run", "--rm", "--runtime", RUNC_V2, "--name", &format!("v{i}"), &rootfs_s, "/bin/true"];
            d.berth(&args).code == 0
        }),
    ];
    let berthd = time_interleaved(rounds, &mut runners);
    drop(runners);
    eprintln!("shims: a lone container's shim, then a sandbox shim with {containers} containers …");
    let (mem_lone, mem_sandbox) = sandbox_memory(d, containers);
    let c = Containerd::start(&dir.join("shim-bench"), &d.run_dir().join("shim-bench"))?;
    eprintln!("shims: ctr run --rm through runc-v2 and berth-shim, {rounds} rounds …");
    let mut runners: Vec<Runner<'_>> = vec![
        Box::new(|i| c.run_rm(RUNC_V2, rootfs, &format!("sr{i}"))),
        Box::new(|i| c.run_rm(BERTH_V1, rootfs, &format!("sb{i}"))),
    ];
    let times = time_interleaved(rounds, &mut runners);
    drop(runners);
    eprintln!("shims: {containers} detached containers each …");
    let mem_runc_v2 = settled_memory(&c.run_detached(RUNC_V2, rootfs, "mr", containers));
    let mem_berth = settled_memory(&c.run_detached(BERTH_V1, rootfs, "mb", containers));
    Some(ShimFigures {
        runc_v2: times[0],
        berth: times[1],
        mem_runc_v2,
        mem_berth,
        berthd_own: berthd[0],
        berthd_runc_v2: berthd[1],
        mem_lone,
        mem_sandbox,
    })
}
