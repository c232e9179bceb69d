//! The network's cost (issue 11): `berth run --rm --network none ROOTFS
//! /bin/true` against the same on the default bridge network `berth`, and
//! `ctr run --rm --rootfs` without and with `--cni` (containerd 1.6, the
//! same Debian plugins: bridge + host-local + portmap, ipMasq), interleaved
//! round by round. No port is published in the timed runs.
//!
//! `berth run --rm` returns once the exit is reported; berthd removes the
//! container (and runs CNI DEL) after that, while `ctr run --rm` runs DEL
//! and deletes before it returns. So berth is also timed as `berth run`
//! followed by `berth rm`, which includes the whole teardown.
//!
//! berthd gets its own bridge and subnet (`--network-bridge bbench0
//! --network-subnet 10.214.0.0/24`, default network `berth`); ctr's network
//! is `bctr0` on 10.215.0.0/24, written where ctr looks for it
//! (bench/src/cnihost.rs). At the end `berth network rm berth` removes the
//! bridge; the guards remove containerd, ctr's CNI files and bridge, and
//! the nat rules and chains the plugins made, however the run ends.

use std::time::Duration;

use berth_testing::Daemon;

use crate::cnihost::{CtrCni, berthd_on_bridge};
use crate::containerd::Containerd;
use crate::measure::{Runner, time_interleaved};

const BERTH_BRIDGE: &str = "bbench0";
const BERTH_SUBNET: &str = "10.214.0.0/24";
const CTR_NETWORK: &str = "berth-bench-ctr";
const CTR_BRIDGE: &str = "bctr0";
const CTR_SUBNET: &str = "10.215.0.0/24";
const CTR_GATEWAY: &str = "10.215.0.1";

#[derive(Default)]
pub struct NetworkTimes {
    pub berth_none: Option<Duration>,
    pub berth_net: Option<Duration>,
    /// `berth run` then `berth rm`: teardown (CNI DEL) included.
    pub berth_none_rm: Option<Duration>,
    pub berth_net_rm: Option<Duration>,
    pub ctr: Option<Duration>,
    pub ctr_cni: Option<Duration>,
}

/// Removes berthd's default network (and so its bridge) before the daemon
/// goes, however the scenario ends.
struct RemoveNetwork<'a>(&'a Daemon);

impl Drop for RemoveNetwork<'_> {
    fn drop(&mut self) {
        let out = self.0.berth(&["network", "rm", "berth"]);
        if out.code != 0 && !out.stderr.contains("not found") {
            eprintln!("warning: berth network rm berth: {}", out.stderr.trim());
        }
        let left = self.0.network_leftovers();
        if !left.is_empty() {
            eprintln!("warning: berthd left network namespaces or attachments: {left:?}");
        }
    }
}

/// The first IPv4 address on eth0 in `ip -4 addr` output.
fn eth0_address(text: &str) -> Option<String> {
    let inet = text.lines().map(str::trim).find(|l| l.starts_with("inet ") && !l.contains(" lo"))?;
    inet.split_whitespace().nth(1).map(str::to_string)
}

pub fn run(rounds: usize) -> NetworkTimes {
    let prefixes = ["10.214.0.", "10.215.0."];
    let Some((_host, d)) = berthd_on_bridge(&prefixes, &[BERTH_BRIDGE, CTR_BRIDGE], BERTH_BRIDGE, BERTH_SUBNET) else {
        return NetworkTimes::default();
    };
    let _network = RemoveNetwork(&d);
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    let ctr = Containerd::start(d.dir(), d.run_dir());
    let cni = ctr.as_ref().and_then(|_| CtrCni::setup(d.dir(), CTR_NETWORK, CTR_BRIDGE, CTR_SUBNET, CTR_GATEWAY));

    // Each side really networked: an address on eth0 from its subnet.
    let berth_ip = eth0_address(d.berth(&["run", "--rm", &rootfs, "ip", "-4", "addr"]).ok());
    eprintln!("network: berth run --rm (default network berth) got {berth_ip:?}");
    assert!(berth_ip.as_deref().is_some_and(|ip| ip.starts_with("10.214.0.")), "berth container not on {BERTH_SUBNET}");
    let with_cni = match (&ctr, &cni) {
        (Some(c), Some(_)) => {
            let ip = c.run_rm_cni(&d.rootfs, "ncheck", &["/bin/ip", "-4", "addr"]).and_then(|out| eth0_address(&out));
            eprintln!("network: ctr run --rm --cni got {ip:?}");
            ip.is_some_and(|ip| ip.starts_with("10.215.0."))
        }
        _ => false,
    };

    eprintln!("network: berth --network none/berth, ctr run --rm without/with --cni: {rounds} rounds …");
    let mut runners: Vec<Runner<'_>> = vec![
        Box::new(|i| {
            d.berth(&["run", "--rm", "--network", "none", "--name", &format!("nn{i}"), &rootfs, "/bin/true"]).code == 0
        }),
        Box::new(|i| {
            d.berth(&["run", "--rm", "--network", "berth", "--name", &format!("nb{i}"), &rootfs, "/bin/true"]).code == 0
        }),
    ];
    let run_then_rm = |mode: &str, id: String| {
        d.berth(&["run", "--network", mode, "--name", &id, &rootfs, "/bin/true"]).code == 0
            && d.berth(&["rm", &id]).code == 0
    };
    runners.push(Box::new(|i| run_then_rm("none", format!("mn{i}"))));
    runners.push(Box::new(|i| run_then_rm("berth", format!("mb{i}"))));
    if let Some(c) = &ctr {
        runners.push(Box::new(|i| c.run_rm(crate::containerd::RUNC_V2, &d.rootfs, &format!("nc{i}"))));
        if with_cni {
            runners.push(Box::new(|i| c.run_rm_cni(&d.rootfs, &format!("nk{i}"), &["/bin/true"]).is_some()));
        }
    }
    let t = time_interleaved(rounds, &mut runners);
    drop(runners);
    drop(cni);
    drop(ctr);
    NetworkTimes {
        berth_none: t[0],
        berth_net: t[1],
        berth_none_rm: t[2],
        berth_net_rm: t[3],
        ctr: t.get(4).copied().flatten(),
        ctr_cni: t.get(5).copied().flatten(),
    }
}
