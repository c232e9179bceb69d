//! A VM's network (docs/vm.md): berthd attaches the container's or the
//! sandbox's network namespace as for any container (CNI: a veth `eth0`
//! with the address, a port mapping to it). This shim then makes a tap in
//! that namespace for QEMU's virtio-net and joins the two with tc redirects
//! both ways, as Kata does: every frame arriving on `eth0` leaves by the
//! tap into the guest and back. The guest's `eth0` takes the veth's MAC
//! and address (kernel command line, set by berth-agent), so the bridge,
//! ARP and NAT see the VM where they saw the container. The tap goes with
//! the VM (QEMU and this shim hold its descriptors); the redirect on
//! `eth0` stays with the namespace until the next VM there replaces it.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_vm::GuestNet;
use serde_json::Value;

/// The interface CNI makes in the namespace.
const IFNAME: &str = "eth0";
/// The tap's name in the namespace.
const TAP: &str = "tap0";

/// The network namespace a bundle's spec joins by path, if any.
pub fn netns_of(bundle: &Path) -> Option<PathBuf> {
    let spec: Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json")).ok()?).ok()?;
    spec.pointer("/linux/namespaces")?
        .as_array()?
        .iter()
        .find(|n| n.get("type").and_then(Value::as_str) == Some("network"))?
        .get("path")?
        .as_str()
        .map(PathBuf::from)
}

/// Bridges the namespace at `netns` to a new tap for the guest; `None` if
/// the namespace has no `eth0` with an IPv4 address (the guest then has
/// loopback only).
pub fn attach(netns: &Path) -> Result<Option<GuestNet>, String> {
    use std::os::unix::fs::MetadataExt;
    let ns = File::open(netns).map_err(|e| format!("open {}: {e}", netns.display()))?;
    // Never the host's own network (a bundle may name any namespace).
    let theirs = ns.metadata().map_err(|e| format!("{}: {e}", netns.display()))?;
    let host = std::fs::metadata("/proc/self/ns/net").map_err(|e| format!("the host's network namespace: {e}"))?;
    if (theirs.dev(), theirs.ino()) == (host.dev(), host.ino()) {
        return Err(format!("{} is the host's network namespace", netns.display()));
    }
    // setns applies to the calling thread only: a thread of its own joins
    // the namespace, and the commands it starts are born in it.
    std::thread::scope(|s| s.spawn(|| attach_in(&ns)).join()).map_err(|_| "attach the VM's network: panicked")?
}

fn attach_in(ns: &File) -> Result<Option<GuestNet>, String> {
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("join the network: {e}"))?;
    let Some((mac, cidr, mtu)) = interface()? else { return Ok(None) };
    let gateway = gateway()?;
    let tap = open_tap()?;
    let mtu_s = mtu.to_string();
    let redirect = |from: &'static str, to: &'static str| -> [Vec<&str>; 2] {
        [
            vec!["tc", "qdisc", "add", "dev", from, "ingress"],
            vec![
                "tc", "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match", "u8", "0",
                "0",
            ]
            .into_iter()
            .chain(["action", "mirred", "egress", "redirect", "dev", to])
            .collect(),
        ]
    };
    // An earlier VM of this namespace (a restart, a sandbox's new shim)
    // left its redirect on eth0: it goes, with its filter.
    let _ = run(&["tc", "qdisc", "del", "dev", IFNAME, "ingress"]);
    let steps: Vec<Vec<&str>> = [vec!["ip", "link", "set", TAP, "mtu", &mtu_s, "up"]]
        .into_iter()
        .chain(redirect(IFNAME, TAP))
        .chain(redirect(TAP, IFNAME))
        .collect();
    for step in steps {
        if let Err(e) = run(&step) {
            let _ = run(&["tc", "qdisc", "del", "dev", IFNAME, "ingress"]);
            return Err(e);
        }
    }
    Ok(Some(GuestNet { tap: std::sync::Arc::new(tap), mac, cidr, gateway, mtu }))
}

/// Runs one command (in this thread's namespace).
fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{}: {}", args.join(" "), err.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `eth0`'s MAC, first IPv4 address (`ADDRESS/PREFIX`) and MTU.
fn interface() -> Result<Option<(String, String, u32)>, String> {
    let link: Value = match run(&["ip", "-j", "addr", "show", "dev", IFNAME]) {
        Ok(json) => serde_json::from_str(&json).map_err(|e| format!("ip addr: {e}"))?,
        Err(e) if e.contains("does not exist") => return Ok(None),
        Err(e) => return Err(e),
    };
    let link = &link[0];
    let v4 = link["addr_info"].as_array().into_iter().flatten().find(|a| a["family"] == "inet");
    let (Some(mac), Some(addr)) = (link["address"].as_str(), v4) else { return Ok(None) };
    let cidr = format!("{}/{}", addr["local"].as_str().unwrap_or_default(), addr["prefixlen"].as_u64().unwrap_or(32));
    Ok(Some((mac.to_string(), cidr, link["mtu"].as_u64().unwrap_or(1500) as u32)))
}

/// The namespace's default IPv4 gateway, if it has one.
fn gateway() -> Result<Option<String>, String> {
    let routes: Value = serde_json::from_str(&run(&["ip", "-j", "-4", "route", "show", "default"])?)
        .map_err(|e| format!("ip route: {e}"))?;
    Ok(routes[0]["gateway"].as_str().map(String::from))
}

/// A new tap `tap0` in this thread's namespace: no packet information
/// header, close-on-exec (QEMU alone inherits it, `berth_vm::qemu`).
fn open_tap() -> Result<OwnedFd, String> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    let tun = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun");
    let tun = tun.map_err(|e| format!("open /dev/net/tun: {e}"))?;
    // SAFETY: an all-zero ifreq is valid; the name and flags are set below.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(TAP.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes an ifreq we own.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
        return Err(format!("make the tap: {}", std::io::Error::last_os_error()));
    }
    Ok(OwnedFd::from(tun))
}
