//! berth's networks: CNI plugin execution (`cni.rs`), network namespaces
//! that berth owns and holds by bind mounts (`netns.rs`), network
//! definitions kept as CNI config lists (`networks.rs`), the attachment of
//! one container (`attach.rs`: namespace, ADD/CHECK/DEL, the cache that
//! crash recovery reads), IP masquerade of berth's own networks
//! (`masq.rs`), the files a container's resolver reads
//! (`dns.rs`), port checks (`ports.rs`) and plugins a killed berthd left
//! running (`orphans.rs`). Depends on the model and store only.

mod attach;
mod cni;
mod conflist;
mod dns;
mod error;
mod masq;
mod netns;
mod networks;
mod orphans;
mod ports;

use std::path::PathBuf;
use std::time::Duration;

pub use attach::{AttachKey, AttachRequest};
pub use dns::{DnsOptions, EtcFiles, Resolver};
pub use dns::{check_dns_options, write_etc_files};
pub use error::{Error, Result};
pub use netns::loopback_up;
/// Namespaces of other kinds held by bind mounts (a pod's IPC and PID).
pub mod pin {
    pub use crate::netns::{NsKind, bind_process, create_ipc, prepare_dir, release_dir, remove};
}
pub use networks::{NetworkInfo, delete_bridge};
pub use ports::check_ports;

/// Where plugins, configs and state live, and the default network's shape.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directories searched for plugin binaries, in order
    /// (`--cni-bin-dir`, default /usr/lib/cni:/opt/cni/bin).
    pub bin_dirs: Vec<PathBuf>,
    /// Config lists an administrator wrote (`--cni-conf-dir`, default
    /// /etc/cni/net.d): listed and usable, never written or removed.
    pub conf_dir: PathBuf,
    /// berth's own network definitions: `<root>/networks/NAME.conflist`.
    pub root: PathBuf,
    /// Runtime state: namespaces (`<state>/netns/`), host-local IPAM data,
    /// attachment caches.
    pub state: PathBuf,
    /// The bridge and subnet of the default network `berth`, made on first
    /// use (`--network-bridge`, `--network-subnet`).
    pub default_bridge: String,
    pub default_subnet: String,
    /// A plugin that runs longer is killed and the call fails.
    pub plugin_timeout: Duration,
}

/// The networks of one berthd.
pub struct Networks {
    cfg: Config,
    /// (network, subnet) whose masquerade rule this berthd has ensured.
    masqueraded: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}
