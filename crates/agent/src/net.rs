//! The guest's network (docs/vm.md): loopback up, and with the kernel
//! command line's `berth.net=CIDR,GATEWAY,MTU` the host's tap arrives as
//! `eth0` (virtio-net, the MAC the host gave QEMU), which gets that
//! address, MTU and default route. The guest's containers share this
//! network namespace. Plain ioctls: the initramfs holds no `ip` program.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use berth_model::vm;

/// The guest's interface (virtio-net's first); `route` names it too.
const GUEST_IF: &str = "eth0";

/// glibc's `struct rtentry` (not in the libc crate for glibc).
#[repr(C)]
struct RtEntry {
    pad1: libc::c_ulong,
    dst: libc::sockaddr,
    gateway: libc::sockaddr,
    genmask: libc::sockaddr,
    flags: libc::c_ushort,
    pad2: libc::c_short,
    pad3: libc::c_ulong,
    pad4: *mut libc::c_void,
    metric: libc::c_short,
    dev: *mut libc::c_char,
    mtu: libc::c_ulong,
    window: libc::c_ulong,
    irtt: libc::c_ushort,
}

/// The guest's address, prefix length, gateway and MTU, from `value`.
fn parse(value: &str) -> Result<(Ipv4Addr, u8, Option<Ipv4Addr>, i32), String> {
    let bad = || format!("{}={value:?} is not CIDR,GATEWAY,MTU", vm::CMDLINE_NET);
    let mut parts = value.split(',');
    let (addr, prefix) = parts.next().and_then(|c| c.split_once('/')).ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
    let gateway = match parts.next().ok_or_else(bad)? {
        "" => None,
        g => Some(g.parse().map_err(|_| bad())?),
    };
    let mtu: i32 = parts.next().and_then(|m| m.parse().ok()).filter(|m| (68..=65535).contains(m)).ok_or_else(bad)?;
    Ok((addr, prefix, gateway, mtu))
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes, and an AF_INET
    // sockaddr is read as a sockaddr_in.
    unsafe { std::mem::transmute(sin) }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn ioctl<T>(sock: &OwnedFd, request: libc::c_ulong, arg: &mut T, what: &str) -> Result<(), String> {
    // SAFETY: `arg` is the structure `request` reads and writes.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request as _, arg as *mut T) } < 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn up(sock: &OwnedFd, name: &str) -> Result<(), String> {
    let mut req = ifreq(name);
    ioctl(sock, libc::SIOCGIFFLAGS, &mut req, &format!("flags of {name}"))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(sock, libc::SIOCSIFFLAGS, &mut req, &format!("bring {name} up"))
}

/// Brings loopback up and, if the command line gives one, `eth0`.
pub fn configure(cmdline: &str) -> Result<(), String> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    up(&sock, "lo")?;
    let Some(value) = vm::cmdline_value(cmdline, vm::CMDLINE_NET) else { return Ok(()) };
    let (addr, prefix, gateway, mtu) = parse(value)?;
    let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0));
    let mut req = ifreq(GUEST_IF);
    req.ifr_ifru.ifru_addr = sockaddr(addr);
    ioctl(&sock, libc::SIOCSIFADDR, &mut req, "set eth0's address")?;
    req.ifr_ifru.ifru_netmask = sockaddr(mask);
    ioctl(&sock, libc::SIOCSIFNETMASK, &mut req, "set eth0's netmask")?;
    req.ifr_ifru.ifru_mtu = mtu;
    ioctl(&sock, libc::SIOCSIFMTU, &mut req, "set eth0's MTU")?;
    up(&sock, GUEST_IF)?;
    if let Some(gateway) = gateway {
        // A gateway outside the subnet (a /32 address, as some CNI
        // plugins give) is reached through eth0 directly.
        let same = |ip: Ipv4Addr| u32::from(ip) & u32::from(mask);
        let routed = match same(gateway) == same(addr) {
            true => Ok(()),
            false => route(&sock, gateway, Ipv4Addr::BROADCAST, None, libc::RTF_HOST),
        }
        .and_then(|()| route(&sock, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, Some(gateway), libc::RTF_GATEWAY));
        // The guest still serves its containers, reachable on the subnet.
        if let Err(e) = routed {
            eprintln!("berth-agent: no default route via {gateway}: {e}");
        }
    }
    Ok(())
}

/// Adds a route to `dst`/`mask` on eth0, through `gateway` if given.
fn route(sock: &OwnedFd, dst: Ipv4Addr, mask: Ipv4Addr, gateway: Option<Ipv4Addr>, flags: u16) -> Result<(), String> {
    let mut dev = *b"eth0\0";
    let mut entry = RtEntry {
        pad1: 0,
        dst: sockaddr(dst),
        gateway: sockaddr(gateway.unwrap_or(Ipv4Addr::UNSPECIFIED)),
        genmask: sockaddr(mask),
        flags: libc::RTF_UP | flags,
        pad2: 0,
        pad3: 0,
        pad4: std::ptr::null_mut(),
        metric: 0,
        dev: dev.as_mut_ptr().cast(),
        mtu: 0,
        window: 0,
        irtt: 0,
    };
    ioctl(sock, libc::SIOCADDRT, &mut entry, &format!("add the route to {dst}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_network_is_parsed_strictly() {
        let gw = Some(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(parse("10.0.0.5/24,10.0.0.1,1500"), Ok((Ipv4Addr::new(10, 0, 0, 5), 24, gw, 1500)));
        assert_eq!(parse("10.0.0.5/32,,9000"), Ok((Ipv4Addr::new(10, 0, 0, 5), 32, None, 9000)));
        for bad in ["10.0.0.5,10.0.0.1,1500", "10.0.0.5/33,,1500", "x/24,,1500", "10.0.0.5/24,x,1500", "10.0.0.5/24,,1"]
        {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
