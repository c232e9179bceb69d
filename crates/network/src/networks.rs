//! Network definitions, kept as CNI config lists: berth's own in
//! `<root>/networks/NAME.conflist` (made and removed here, written
//! atomically) and an administrator's in the CNI config directory (listed and
//! usable, never written or removed). The default network `berth` is made on
//! first use. Also the deletion of a network's bridge, by ioctl: a fresh
//! Debian has no `ip` binary.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use berth_model::{DEFAULT_NETWORK, NetworkName};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::conflist::{ConfList, plugin_type};
use crate::{Config, Error, Networks, Result};

/// Serialises create and remove (and the default network's creation): the
/// existence checks, the subnet choice and the write of one must not
/// interleave with another's. berthd is the only writer of its root.
static WRITE_LOCK: Mutex<()> = Mutex::new(());

/// The kernel's IPv4 routing table, whose subnets a new network must avoid.
const HOST_ROUTES: &str = "/proc/net/route";
/// Automatic subnets are the /24s from 10.90.0.0 up to 10.255.255.0.
const AUTO_FIRST: u32 = u32::from_be_bytes([10, 90, 0, 0]);
const AUTO_LAST: u32 = u32::from_be_bytes([10, 255, 255, 0]);
/// Names `--network` gives another meaning.
const RESERVED_NAMES: [&str; 2] = ["host", "none"];
/// The files libcni reads from a config directory.
const CONF_EXTENSIONS: [&str; 3] = ["conflist", "conf", "json"];
/// The name the bridge plugin uses when a config gives none.
const CNI_DEFAULT_BRIDGE: &str = "cni0";
/// linux/sockios.h; the libc crate defines these for Android only.
const SIOCBRDELBR: libc::c_ulong = 0x89a1;
#[cfg(test)]
const SIOCBRADDBR: libc::c_ulong = 0x89a0;

/// A network as `berth network ls/inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkInfo {
    pub name: String,
    /// The bridge plugin's bridge; empty when the network has none.
    pub bridge: String,
    /// The first IPAM subnet and its gateway as configured (may be empty).
    pub subnet: String,
    pub gateway: String,
    /// Plugin types in order.
    pub plugins: Vec<String>,
    pub path: PathBuf,
    /// berth made it (and may remove it).
    pub managed: bool,
    pub cni_version: String,
}

/// A config list found on disk.
struct Definition {
    path: PathBuf,
    list: ConfList,
    managed: bool,
}

impl Definition {
    fn info(&self) -> NetworkInfo {
        let ipam = self.list.plugins.iter().find_map(|p| p.get("ipam"));
        // host-local's `ranges` form, else the older single `subnet`.
        let range = ipam.and_then(|i| i.pointer("/ranges/0/0")).or(ipam);
        let field = |key: &str| range.and_then(|r| r.get(key)).and_then(Value::as_str).unwrap_or_default().to_string();
        NetworkInfo {
            name: self.list.name.clone(),
            bridge: bridge_of(&self.list).unwrap_or_default(),
            subnet: field("subnet"),
            gateway: field("gateway"),
            plugins: self.list.plugins.iter().map(|p| plugin_type(p).to_string()).collect(),
            path: self.path.clone(),
            managed: self.managed,
            cni_version: self.list.cni_version.clone(),
        }
    }
}

impl Networks {
    /// Opens the networks of `cfg`, making berth's directories.
    pub fn new(cfg: Config) -> Result<Networks> {
        check_bridge_name(&cfg.default_bridge)?;
        Subnet::parse(&cfg.default_subnet)
            .map_err(|e| Error::InvalidArgument(format!("default network subnet: {e}")))?;
        let networks = Networks { cfg, masqueraded: Default::default() };
        for dir in [networks.own_dir(), networks.ipam_dir()] {
            fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        }
        Ok(networks)
    }

    /// At a clean exit: the namespace directory's own mount goes once no
    /// container holds a namespace there (it is made again on first use).
    pub fn release(&self) -> Result<()> {
        crate::netns::release_dir(&self.netns_dir()).map(drop)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Every network by name; berth's own shadow a config directory's list
    /// of the same name. Malformed files are skipped with a warning.
    pub fn list(&self) -> Result<Vec<NetworkInfo>> {
        let mut by_name = BTreeMap::new();
        for def in self.definitions()? {
            by_name.entry(def.list.name.clone()).or_insert_with(|| def.info());
        }
        Ok(by_name.into_values().collect())
    }

    /// One network; the default network is made on first use.
    pub fn get(&self, name: &str) -> Result<NetworkInfo> {
        Ok(self.find_or_default(name)?.info())
    }

    /// The config list that attaching to `name` runs, and its file.
    pub(crate) fn conflist(&self, name: &str) -> Result<(PathBuf, ConfList)> {
        let def = self.find_or_default(name)?;
        Ok((def.path, def.list))
    }

    /// Makes a bridge network on `subnet` (IPv4 CIDR) or on the first free
    /// /24 from 10.90.0.0 up. Nothing is written on any error.
    pub fn create(&self, name: &str, subnet: Option<&str>) -> Result<NetworkInfo> {
        check_name(name)?;
        if RESERVED_NAMES.contains(&name) {
            return Err(Error::InvalidArgument(format!("network name {name} is reserved (--network {name})")));
        }
        let subnet = subnet.map(Subnet::parse).transpose()?;
        let routes = host_routes(Path::new(HOST_ROUTES))?;
        self.create_with_routes(name, subnet, &routes)
    }

    /// Removes a network berth made: its masquerade rule, its bridge, its
    /// IPAM reservations and its config list. The caller checks that no
    /// container uses it.
    pub async fn remove(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let own = self.own_path(name);
        if let Ok(list) = ConfList::load(&own) {
            self.remove_masquerade(name, &self.masquerade_of(&own, &list)).await?;
        }
        self.remove_definition(name)
    }

    /// The subnets berth masquerades for the network defined at `path`:
    /// those of its own networks, none of an administrator's.
    pub(crate) fn masquerade_of(&self, path: &Path, list: &ConfList) -> Vec<String> {
        if path != self.own_path(&list.name) {
            return Vec::new();
        }
        ipv4_subnets(list).iter().map(ToString::to_string).collect()
    }

    fn remove_definition(&self, name: &str) -> Result<()> {
        let _guard = write_lock();
        let path = self.own_path(name);
        if !exists(&path)? {
            return match self.find(name)? {
                Some(def) => Err(Error::FailedPrecondition(format!(
                    "network {name} is defined by {}, which berth does not manage; delete that file to remove it",
                    def.path.display()
                ))),
                None => Err(Error::NotFound(name.to_string())),
            };
        }
        // A damaged list of ours is still removable: its bridge has the name berth gives.
        let bridge = match ConfList::load(&path) {
            Ok(list) => bridge_of(&list),
            Err(e) => {
                tracing::warn!(network = name, error = %e, "removing a malformed network config");
                Some(self.bridge_name(name))
            }
        };
        if let Some(bridge) = bridge {
            delete_bridge(&bridge)?;
        }
        let ipam = self.ipam_dir().join(name);
        match fs::remove_dir_all(&ipam) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(Error::io(format!("remove {}", ipam.display()), e));
            }
            _ => {}
        }
        fs::remove_file(&path).map_err(|e| Error::io(format!("remove {}", path.display()), e))?;
        berth_store::fsync_dir(&self.own_dir()).map_err(|e| Error::io(format!("sync {}", self.own_dir().display()), e))
    }

    /// `create` against a given routing table (tests feed their own).
    fn create_with_routes(&self, name: &str, subnet: Option<Subnet>, routes: &[Route]) -> Result<NetworkInfo> {
        let _guard = write_lock();
        if self.find(name)?.is_some() {
            return Err(Error::AlreadyExists(name.to_string()));
        }
        if name == DEFAULT_NETWORK {
            return Err(Error::InvalidArgument(format!(
                "{name} is the default network, made on first use; its subnet is berthd's --network-subnet"
            )));
        }
        Ok(self.write_network(name, subnet, routes)?.info())
    }

    fn find_or_default(&self, name: &str) -> Result<Definition> {
        check_name(name)?;
        if let Some(def) = self.find(name)? {
            return Ok(def);
        }
        if name != DEFAULT_NETWORK {
            return Err(Error::NotFound(name.to_string()));
        }
        let _guard = write_lock();
        if let Some(def) = self.find(name)? {
            return Ok(def);
        }
        let default = |e: Error| match e {
            Error::InvalidArgument(m) => Error::InvalidArgument(format!("default network {name}: {m}")),
            e => e,
        };
        let subnet = Subnet::parse(&self.cfg.default_subnet).map_err(default)?;
        let routes = host_routes(Path::new(HOST_ROUTES))?;
        self.write_network(name, Some(subnet), &routes).map_err(default)
    }

    /// Checks the subnet (or picks one) and writes the config list. Called
    /// under the write lock, after the name is known to be free.
    fn write_network(&self, name: &str, subnet: Option<Subnet>, routes: &[Route]) -> Result<Definition> {
        let bridge = self.bridge_name(name);
        // A route on this very bridge is a leftover of an earlier network of this name.
        let routes: Vec<&Route> = routes.iter().filter(|r| r.iface != bridge).collect();
        let mut taken = Vec::new();
        for def in self.definitions()? {
            taken.extend(ipv4_subnets(&def.list).into_iter().map(|s| (def.list.name.clone(), s)));
        }
        let overlap = |s: Subnet| {
            if let Some((network, other)) = taken.iter().find(|(_, other)| other.overlaps(s)) {
                return Some(format!("network {network} ({other})"));
            }
            routes.iter().find(|r| r.net.overlaps(s)).map(|r| format!("the host route {} on {}", r.net, r.iface))
        };
        let subnet = match subnet {
            Some(s) => match overlap(s) {
                Some(what) => return Err(Error::InvalidArgument(format!("subnet {s} overlaps {what}"))),
                None => s,
            },
            None => (AUTO_FIRST..=AUTO_LAST)
                .step_by(256)
                .map(|net| Subnet { net, prefix: 24 })
                .find(|&s| overlap(s).is_none())
                .ok_or_else(|| {
                    Error::FailedPrecondition(
                        "no free /24 subnet left in 10.90.0.0-10.255.255.255; give --subnet".into(),
                    )
                })?,
        };
        let data_dir = self.ipam_dir();
        let data_dir = data_dir.to_str().ok_or_else(|| {
            Error::InvalidArgument(format!("state directory {} is not valid UTF-8", self.cfg.state.display()))
        })?;
        let value = json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    // One masquerade rule per network instead (masq.rs).
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": subnet.to_string(), "gateway": subnet.gateway().to_string() }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": data_dir,
                    },
                },
                { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true },
            ],
        });
        let path = self.own_path(name);
        let list = ConfList::from_value(value.clone(), &path)?;
        let mut bytes = serde_json::to_vec_pretty(&value)
            .map_err(|e| Error::BadConfig { path: path.clone(), reason: e.to_string() })?;
        bytes.push(b'\n');
        berth_store::write_atomic(&path, &bytes).map_err(|e| Error::io(format!("write {}", path.display()), e))?;
        Ok(Definition { path, list, managed: true })
    }

    /// The definition named `name`: berth's own file, else the first list
    /// of that name in the config directory. A malformed config-directory
    /// file whose file name is `name` is an error rather than skipped.
    fn find(&self, name: &str) -> Result<Option<Definition>> {
        let own = self.own_path(name);
        if exists(&own)? {
            return Ok(Some(Definition { list: ConfList::load(&own)?, path: own, managed: true }));
        }
        for (path, list) in read_lists(&self.cfg.conf_dir)? {
            match list {
                Ok(list) if list.name == name => return Ok(Some(Definition { path, list, managed: false })),
                Err(e) if path.file_stem().is_some_and(|stem| stem == name) => return Err(e),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Every readable definition, berth's first, then the config
    /// directory's in file-name order.
    fn definitions(&self) -> Result<Vec<Definition>> {
        let mut defs = Vec::new();
        for (dir, managed) in [(self.own_dir(), true), (self.cfg.conf_dir.clone(), false)] {
            for (path, list) in read_lists(&dir)? {
                match list {
                    Ok(list) => defs.push(Definition { path, list, managed }),
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "skipping a network config"),
                }
            }
        }
        Ok(defs)
    }

    fn own_dir(&self) -> PathBuf {
        self.cfg.root.join("networks")
    }

    fn own_path(&self, name: &str) -> PathBuf {
        self.own_dir().join(format!("{name}.conflist"))
    }

    /// host-local's `dataDir`; it keeps each network's leases in `NAME/`.
    fn ipam_dir(&self) -> PathBuf {
        self.cfg.state.join("network").join("ipam")
    }

    /// The default network's bridge is configured; another's is `br-` and
    /// 12 hex digits of its name's hash (15 characters, the kernel's limit).
    fn bridge_name(&self, name: &str) -> String {
        if name == DEFAULT_NETWORK {
            return self.cfg.default_bridge.clone();
        }
        let hash = hex::encode(Sha256::digest(name.as_bytes()));
        format!("br-{}", &hash[..12])
    }
}

/// A bridge device name the kernel takes: 1 to 15 bytes, no '/', ':' or
/// whitespace.
fn check_bridge_name(name: &str) -> Result<()> {
    let bad = name.is_empty() || name.len() > 15 || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if bad {
        return Err(Error::InvalidArgument(format!(
            "bridge name {name:?} must be 1 to 15 characters without '/', ':' or spaces"
        )));
    }
    Ok(())
}

fn write_lock() -> MutexGuard<'static, ()> {
    // The lock guards no data, so a panic while it was held leaves nothing torn.
    WRITE_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn check_name(name: &str) -> Result<()> {
    // Ids refuse ':', so `container:ID` can never name a network.
    NetworkName::new(name).map(drop).map_err(|e| Error::InvalidArgument(e.to_string()))
}

fn exists(path: &Path) -> Result<bool> {
    path.try_exists().map_err(|e| Error::io(format!("stat {}", path.display()), e))
}

/// The config files of `dir` in file-name order, each parsed or the error
/// that parsing gave. A missing directory has none.
fn read_lists(dir: &Path) -> Result<Vec<(PathBuf, Result<ConfList>)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(format!("read {}", dir.display()), e))?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
        if CONF_EXTENSIONS.contains(&ext) && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|path| {
            let list = ConfList::load(&path);
            (path, list)
        })
        .collect())
}

/// The bridge a list's bridge plugin makes, if it has one.
fn bridge_of(list: &ConfList) -> Option<String> {
    let plugin = list.plugins.iter().find(|p| plugin_type(p) == "bridge")?;
    Some(plugin.get("bridge").and_then(Value::as_str).unwrap_or(CNI_DEFAULT_BRIDGE).to_string())
}

/// The IPv4 subnets a list's IPAM hands out (`ranges` and the older
/// `subnet`), for the overlap check.
fn ipv4_subnets(list: &ConfList) -> Vec<Subnet> {
    let mut subnets = Vec::new();
    for ipam in list.plugins.iter().filter_map(|p| p.get("ipam")) {
        let ranges = ipam.get("ranges").and_then(Value::as_array).into_iter().flatten();
        let in_ranges = ranges.filter_map(Value::as_array).flatten();
        for range in in_ranges.chain(std::iter::once(ipam)) {
            subnets.extend(range.get("subnet").and_then(Value::as_str).and_then(Subnet::parse_lenient));
        }
    }
    subnets
}

/// An IPv4 network: address (host bits zero) and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Subnet {
    net: u32,
    prefix: u8,
}

impl Subnet {
    /// A subnet given by a user: IPv4, prefix 8 to 30, the exact network
    /// address.
    fn parse(s: &str) -> Result<Subnet> {
        let bad = |why: String| Error::InvalidArgument(format!("invalid subnet {:?}: {why}", truncate(s)));
        let (addr, prefix) =
            s.split_once('/').ok_or_else(|| bad("expected an IPv4 CIDR such as 10.1.2.0/24".into()))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("expected an IPv4 CIDR such as 10.1.2.0/24".into()))?;
        let prefix = prefix.parse::<u8>().ok().filter(|p| (8..=30).contains(p));
        let prefix = prefix.ok_or_else(|| bad("the prefix length must be from 8 to 30".into()))?;
        let subnet = Subnet { net: u32::from(addr) & mask(prefix), prefix };
        if subnet.net != u32::from(addr) {
            return Err(bad(format!("host bits are set; did you mean {subnet}?")));
        }
        Ok(subnet)
    }

    /// A subnet as a config gives it: host bits are dropped, anything but
    /// IPv4 is `None`.
    fn parse_lenient(s: &str) -> Option<Subnet> {
        let (addr, prefix) = s.split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        let prefix = prefix.parse::<u8>().ok().filter(|&p| p <= 32)?;
        Some(Subnet { net: u32::from(addr) & mask(prefix), prefix })
    }

    fn overlaps(self, other: Subnet) -> bool {
        let m = mask(self.prefix.min(other.prefix));
        self.net & m == other.net & m
    }

    fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::from(self.net + 1)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.net), self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A host route: its destination network and interface.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    iface: String,
    net: Subnet,
}

/// The host's IPv4 routes but the default route.
fn host_routes(path: &Path) -> Result<Vec<Route>> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    Ok(parse_routes(&text))
}

/// Parses /proc/net/route: addresses are hex numbers in host byte order.
fn parse_routes(text: &str) -> Vec<Route> {
    let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(|n| u32::from_be_bytes(n.to_ne_bytes()));
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (iface, dst, mask) = (fields.first()?, hex(fields.get(1)?)?, hex(fields.get(7)?)?);
            Some(Route { iface: iface.to_string(), net: Subnet { net: dst & mask, prefix: mask.count_ones() as u8 } })
        })
        .filter(|r| r.net.prefix > 0)
        .collect()
}

/// Deletes the bridge `name`: sets it down, then SIOCBRDELBR. An absent
/// bridge is not an error; an interface that is not a bridge is left alone.
pub fn delete_bridge(name: &str) -> Result<()> {
    let what = |verb: &str| format!("{verb} bridge {name}");
    let sock = control_socket().map_err(|e| Error::io(what("delete"), e))?;
    let mut req = ifreq(name)?;
    // SAFETY: `req` is a valid ifreq that outlives the call; the kernel writes only ifr_flags.
    match cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) }) {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(()),
        Err(e) => return Err(Error::io(what("query"), e)),
        Ok(()) => {}
    }
    if !exists(&Path::new("/sys/class/net").join(name).join("bridge"))? {
        return Err(Error::FailedPrecondition(format!("interface {name} is not a bridge; not deleting it")));
    }
    // SAFETY: the ifr_flags member was just filled in by SIOCGIFFLAGS.
    unsafe { req.ifr_ifru.ifru_flags &= !(libc::IFF_UP as libc::c_short) };
    // SAFETY: as above; the kernel only reads `req`.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) })
        .map_err(|e| Error::io(what("set down"), e))?;
    match bridge_ioctl(&sock, SIOCBRDELBR, &req) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENXIO | libc::ENODEV)) => Ok(()),
        result => result.map_err(|e| Error::io(what("delete"), e)),
    }
}

/// SIOCBRADDBR/SIOCBRDELBR: the argument is the bridge's name, `req`'s
/// first field.
fn bridge_ioctl(sock: &OwnedFd, request: libc::c_ulong, req: &libc::ifreq) -> io::Result<()> {
    // SAFETY: the kernel reads at most IFNAMSIZ bytes of the NUL-terminated name in `req`.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req.ifr_name.as_ptr()) })
}

/// A socket for interface ioctls (any family serves).
fn control_socket() -> io::Result<OwnedFd> {
    socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).map_err(io::Error::from)
}

/// An ifreq naming interface `name` (1 to 15 bytes, no '/', NUL or space).
fn ifreq(name: &str) -> Result<libc::ifreq> {
    if name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name.bytes().any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
    {
        return Err(Error::InvalidArgument(format!("invalid interface name {:?}", truncate(name))));
    }
    // SAFETY: ifreq is plain data for which all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

fn cvt(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(test)]
mod tests;
