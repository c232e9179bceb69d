//! Network vocabulary: how a container is networked (`--network`), the
//! ports it publishes (`-p`) and what its attachment turned out to be. Pure
//! parsing and data; the work is in `berth-network`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{ContainerId, ModelError};

/// The network every container of a root filesystem or image joins unless
/// told otherwise.
pub const DEFAULT_NETWORK: &str = "berth";

/// `--network`: a named CNI network, the host's namespace, loopback only,
/// or another container's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    Network(String),
    Host,
    None,
    Container(ContainerId),
}

impl NetworkMode {
    /// Network names follow the id rules (letters, digits, `_.-`).
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        match s {
            "host" => Ok(Self::Host),
            "none" => Ok(Self::None),
            "" => Ok(Self::Network(DEFAULT_NETWORK.to_string())),
            _ => match s.strip_prefix("container:") {
                Some(id) => Ok(Self::Container(ContainerId::new(id)?)),
                None => {
                    crate::NetworkName::new(s)?;
                    Ok(Self::Network(s.to_string()))
                }
            },
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Network(n) => f.write_str(n),
            Self::Host => f.write_str("host"),
            Self::None => f.write_str("none"),
            Self::Container(id) => write!(f, "container:{id}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// `-p [HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Empty: every host address.
    #[serde(default)]
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl PortMapping {
    /// Two mappings that cannot both be published: same protocol and host
    /// port, and host addresses that overlap (empty overlaps everything).
    pub fn conflicts_with(&self, other: &PortMapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && (self.host_ip.is_empty() || other.host_ip.is_empty() || self.host_ip == other.host_ip)
    }
}

impl FromStr for PortMapping {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        let bad = |reason: &str| ModelError::InvalidPort { value: s.chars().take(64).collect(), reason: reason.into() };
        let (addr, protocol) = match s.rsplit_once('/') {
            Some((a, "tcp")) => (a, Protocol::Tcp),
            Some((a, "udp")) => (a, Protocol::Udp),
            Some(_) => return Err(bad("the protocol must be tcp or udp")),
            None => (s, Protocol::Tcp),
        };
        // The host address may be IPv6 in brackets: [::1]:8080:80.
        let (host_ip, rest) = if let Some(v6) = addr.strip_prefix('[') {
            let (ip, rest) = v6.split_once("]:").ok_or_else(|| bad("expected [HOSTIP]:HOSTPORT:CTRPORT"))?;
            (ip, rest)
        } else {
            match addr.matches(':').count() {
                1 => ("", addr),
                2 => addr.split_once(':').unwrap_or(("", addr)),
                _ => return Err(bad("expected [HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp]")),
            }
        };
        if !host_ip.is_empty() && host_ip.parse::<IpAddr>().is_err() {
            return Err(bad("the host address is not an IP address"));
        }
        let (host, ctr) = rest.split_once(':').ok_or_else(|| bad("expected [HOSTIP:]HOSTPORT:CTRPORT[/tcp|udp]"))?;
        let port =
            |p: &str| p.parse::<u16>().ok().filter(|&n| n != 0).ok_or_else(|| bad("ports are numbers from 1 to 65535"));
        Ok(PortMapping { host_ip: host_ip.to_string(), host_port: port(host)?, container_port: port(ctr)?, protocol })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Ok(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            Err(_) => {}
        }
        write!(f, "{}:{}/{}", self.host_port, self.container_port, self.protocol.as_str())
    }
}

/// What a container's network turned out to be, kept in its record.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// `--network` as given (`berth`, a network name, `none`, `host`,
    /// `container:ID`).
    pub mode: String,
    /// The network namespace berth holds (bind mount under the state dir);
    /// empty in host mode. A `container:ID` attachment names the other
    /// container's.
    #[serde(default)]
    pub netns: String,
    /// The interface CNI made in the namespace (`eth0`), its addresses in
    /// CIDR form, gateway and MAC.
    #[serde(default)]
    pub interface: String,
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub gateway: String,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_port_mappings() {
        let p: PortMapping = "8080:80".parse().unwrap();
        assert_eq!((p.host_ip.as_str(), p.host_port, p.container_port, p.protocol), ("", 8080, 80, Protocol::Tcp));
        let p: PortMapping = "127.0.0.1:53:5353/udp".parse().unwrap();
        assert_eq!(
            (p.host_ip.as_str(), p.host_port, p.container_port, p.protocol),
            ("127.0.0.1", 53, 5353, Protocol::Udp)
        );
        let p: PortMapping = "[::1]:8080:80/tcp".parse().unwrap();
        assert_eq!(p.host_ip, "::1");
        assert_eq!(p.to_string(), "[::1]:8080:80/tcp");
        assert_eq!("1.2.3.4:1:2/udp".parse::<PortMapping>().unwrap().to_string(), "1.2.3.4:1:2/udp");
        for bad in ["80", "0:80", "80:0", "x:80", "80:70000", "8080:80/sctp", "host:1:2", "1:2:3:4", "[::1:1:2", ""] {
            let e = bad.parse::<PortMapping>().unwrap_err();
            assert_eq!(e.code(), crate::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn port_conflicts() {
        let p = |s: &str| s.parse::<PortMapping>().unwrap();
        assert!(p("8080:80").conflicts_with(&p("127.0.0.1:8080:81")));
        assert!(!p("8080:80").conflicts_with(&p("8080:80/udp")));
        assert!(!p("127.0.0.1:8080:80").conflicts_with(&p("127.0.0.2:8080:80")));
    }

    #[test]
    fn parses_modes() {
        assert_eq!(NetworkMode::parse("").unwrap(), NetworkMode::Network("berth".into()));
        assert_eq!(NetworkMode::parse("host").unwrap(), NetworkMode::Host);
        assert_eq!(NetworkMode::parse("none").unwrap(), NetworkMode::None);
        assert_eq!(NetworkMode::parse("container:abc").unwrap().to_string(), "container:abc");
        assert_eq!(NetworkMode::parse("front-end").unwrap(), NetworkMode::Network("front-end".into()));
        for bad in ["container:", "a/b", "../x", "container:a b"] {
            assert!(NetworkMode::parse(bad).is_err(), "{bad}");
        }
    }
}
