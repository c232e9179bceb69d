//! Issue 12's benchmark: containerd 1.6 running /bin/true through its own
//! shim (`io.containerd.runc.v2`) and through berth-shim
//! (`io.containerd.berth.v1`), interleaved on the same rootfs, and the mean
//! RSS/PSS of each shim with N detached containers.

use std::path::Path;
use std::time::Duration;

use crate::containerd::{BERTH_V1, Containerd, RUNC_V2};
use crate::measure::{Mem, Runner, shim_memory, time_interleaved};

pub struct ShimFigures {
    pub runc_v2: Option<Duration>,
    pub berth: Option<Duration>,
    pub mem_runc_v2: Option<Mem>,
    pub mem_berth: Option<Mem>,
}

pub fn run(dir: &Path, rootfs: &Path, rounds: usize, containers: usize) -> Option<ShimFigures> {
    let c = Containerd::start(&dir.join("shim-bench"))?;
    eprintln!("shims: ctr run --rm through runc-v2 and berth-shim, {rounds} rounds …");
    let mut runners: Vec<Runner<'_>> = vec![
        Box::new(|i| c.run_rm(RUNC_V2, rootfs, &format!("sr{i}"))),
        Box::new(|i| c.run_rm(BERTH_V1, rootfs, &format!("sb{i}"))),
    ];
    let times = time_interleaved(rounds, &mut runners);
    drop(runners);
    eprintln!("shims: {containers} detached containers each …");
    let mem_runc_v2 = shim_memory(&c.run_detached(RUNC_V2, rootfs, "mr", containers));
    let mem_berth = shim_memory(&c.run_detached(BERTH_V1, rootfs, "mb", containers));
    Some(ShimFigures { runc_v2: times[0], berth: times[1], mem_runc_v2, mem_berth })
}
