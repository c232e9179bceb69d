//! The check that the host ports a container asks to publish are free: not
//! asked for twice, not published by another container (their portmap
//! rules are iptables DNAT, which a bind does not see), and not bound by a
//! process of the host (a bind probe). The probe is a snapshot: a process
//! may still take the port before the portmap plugin's rules are in place.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use berth_model::{PortMapping, Protocol};

use crate::{Error, Result};

/// Checks `requested` against itself, against `in_use` (container name or
/// id, and a mapping it publishes) and against the host's sockets.
pub fn check_ports(requested: &[PortMapping], in_use: &[(String, PortMapping)]) -> Result<()> {
    let in_use: Vec<(&str, PortMapping)> =
        in_use.iter().map(|(ctr, p)| Ok((ctr.as_str(), normalized(p)?))).collect::<Result<_>>()?;
    let requested: Vec<PortMapping> = requested.iter().map(normalized).collect::<Result<_>>()?;
    for (i, p) in requested.iter().enumerate() {
        if let Some(earlier) = requested[..i].iter().find(|q| q.conflicts_with(p)) {
            return Err(Error::InvalidArgument(format!("port {} is requested twice ({earlier} and {p})", label(p))));
        }
        if let Some((ctr, _)) = in_use.iter().find(|(_, q)| q.conflicts_with(p)) {
            return Err(Error::FailedPrecondition(format!("port {} is already published by {ctr}", label(p))));
        }
        probe(p)?;
    }
    Ok(())
}

/// The mapping with its host address in canonical form, and the
/// unspecified address (`0.0.0.0`, `::`) as empty: every address.
fn normalized(p: &PortMapping) -> Result<PortMapping> {
    let host_ip = match p.host_ip.as_str() {
        "" => String::new(),
        ip => match ip.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() => String::new(),
            Ok(ip) => ip.to_string(),
            Err(_) => {
                return Err(Error::InvalidArgument(format!("host address {ip:?} of port {p} is not an IP address")));
            }
        },
    };
    Ok(PortMapping { host_ip, ..p.clone() })
}

/// `8080/tcp`, or `127.0.0.1:8080/tcp` when bound to one address.
fn label(p: &PortMapping) -> String {
    match p.host_ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}/{}", p.host_port, p.protocol.as_str()),
        Ok(IpAddr::V4(ip)) => format!("{ip}:{}/{}", p.host_port, p.protocol.as_str()),
        Err(_) => format!("{}/{}", p.host_port, p.protocol.as_str()),
    }
}

/// Binds the host address and port once and lets go.
fn probe(p: &PortMapping) -> Result<()> {
    let ip = p.host_ip.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let addr = SocketAddr::new(ip, p.host_port);
    let bound = match p.protocol {
        Protocol::Tcp => TcpListener::bind(addr).map(drop),
        Protocol::Udp => UdpSocket::bind(addr).map(drop),
    };
    match bound {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            Err(Error::FailedPrecondition(format!("port {} is in use on the host", label(p))))
        }
        Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => {
            Err(Error::InvalidArgument(format!("host address {ip} of port {p} is not an address of this host")))
        }
        Err(e) => Err(Error::io(format!("probe host port {}", label(p)), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PortMapping {
        s.parse().unwrap()
    }

    /// A port nothing listens on right now (the kernel's pick, then freed).
    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn err(requested: &[PortMapping], in_use: &[(String, PortMapping)]) -> Error {
        check_ports(requested, in_use).unwrap_err()
    }

    #[test]
    fn free_ports_pass() {
        let (a, b) = (free_port(), free_port());
        check_ports(&[p(&format!("127.0.0.1:{a}:80")), p(&format!("{b}:53/udp")), p(&format!("{b}:80/tcp"))], &[])
            .unwrap();
        // The same port on two distinct addresses, or under both protocols.
        check_ports(&[p(&format!("127.0.0.1:{a}:80")), p(&format!("127.0.0.1:{a}:80/udp"))], &[]).unwrap();
        check_ports(&[], &[]).unwrap();
    }

    #[test]
    fn a_port_asked_for_twice_is_refused() {
        let a = free_port();
        let e = err(&[p(&format!("{a}:80")), p(&format!("127.0.0.1:{a}:81"))], &[]);
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        assert_eq!(
            e.to_string(),
            format!("port 127.0.0.1:{a}/tcp is requested twice ({a}:80/tcp and 127.0.0.1:{a}:81/tcp)")
        );
        // 0.0.0.0 is every address, like no address.
        let e = err(&[p(&format!("0.0.0.0:{a}:80")), p(&format!("127.0.0.1:{a}:81"))], &[]);
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }

    #[test]
    fn a_port_another_container_publishes_is_refused() {
        let a = free_port();
        let in_use = [("web1".to_string(), p(&format!("127.0.0.1:{a}:80")))];
        let e = err(&[p(&format!("{a}:8080"))], &in_use);
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
        assert_eq!(e.to_string(), format!("port {a}/tcp is already published by web1"));
        check_ports(&[p(&format!("{a}:8080/udp"))], &in_use).unwrap();
        let in_use = [("web2".to_string(), p(&format!("0.0.0.0:{a}:80")))];
        assert!(err(&[p(&format!("127.0.0.1:{a}:1"))], &in_use).to_string().ends_with("by web2"));
    }

    #[test]
    fn a_port_bound_on_the_host_is_refused() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        for request in [format!("127.0.0.1:{port}:80"), format!("{port}:80")] {
            let e = err(&[p(&request)], &[]);
            assert!(matches!(e, Error::FailedPrecondition(_)), "{request}: {e}");
            assert!(e.to_string().ends_with(&format!("{port}/tcp is in use on the host")), "{e}");
        }
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        let e = err(&[p(&format!("127.0.0.1:{port}:53/udp"))], &[]);
        assert_eq!(e.to_string(), format!("port 127.0.0.1:{port}/udp is in use on the host"));
    }

    #[test]
    fn a_host_address_not_of_this_host_is_refused() {
        // TEST-NET-3: documentation only, never a local address; binding sends nothing.
        let e = err(&[p("203.0.113.77:8080:80")], &[]);
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "host address 203.0.113.77 of port 203.0.113.77:8080:80/tcp is not an address of this host"
        );
        let bad = PortMapping { host_ip: "nonsense".into(), ..p("8080:80") };
        assert!(matches!(err(&[bad], &[]), Error::InvalidArgument(_)));
    }
}
