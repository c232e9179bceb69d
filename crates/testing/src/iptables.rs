//! The portmap CNI plugin's shared nat chains (CNI-HOSTPORT-*), made by
//! the first published port on a host and kept by every CNI runtime. A
//! test or benchmark that publishes ports holds a [`PortmapChains`]: on
//! drop the chains and the jumps to them go, if they were not there when
//! it was made.

use std::process::Command;

const JUMPS: [&[&str]; 3] = [
    &["PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"],
    &["OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"],
    &["POSTROUTING", "-m", "comment", "--comment", "CNI portfwd requiring masquerade", "-j", "CNI-HOSTPORT-MASQ"],
];
const CHAINS: [&str; 3] = ["CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK"];

/// `iptables -t nat -S`, one rule a line.
pub fn nat_rules() -> Vec<String> {
    let out = Command::new("iptables").args(["-t", "nat", "-S"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect()).unwrap_or_default()
}

fn nat(args: &[&str]) {
    let _ = Command::new("iptables").args(["-t", "nat"]).args(args).output();
}

pub struct PortmapChains {
    existed: bool,
}

impl PortmapChains {
    pub fn note() -> PortmapChains {
        PortmapChains { existed: nat_rules().iter().any(|r| r == "-N CNI-HOSTPORT-DNAT") }
    }
}

impl Drop for PortmapChains {
    fn drop(&mut self) {
        if self.existed {
            return;
        }
        for jump in JUMPS {
            nat(&[&["-D"], jump].concat());
        }
        for chain in CHAINS {
            nat(&["-F", chain]);
            nat(&["-X", chain]);
        }
    }
}
