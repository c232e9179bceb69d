//! What the network benchmark borrows from the host, and gives back.
//!
//! `ctr run --cni` (containerd 1.6) reads its CNI config from /etc/cni/net.d
//! and its plugins from /opt/cni/bin: go-cni's defaults, compiled in, with
//! no flag or variable to point elsewhere. So `CtrCni::setup` creates those
//! directories only if they are absent (with one conflist of its own on a
//! bridge and subnet of its own, and /opt/cni/bin a symlink to Debian's
//! /usr/lib/cni), and its drop removes exactly what it created. libcni also
//! caches results under /var/lib/cni; that too is removed if the benchmark
//! created it, else only the files of the benchmark's network.
//!
//! `HostGuard` snapshots the nat table first and, on drop, deletes the
//! rules that appeared since and name one of the benchmark's subnets (the
//! bridge plugin's ipMasq rules; `ctr run --rm --cni` leaves one per run, as
//! its DEL passes no namespace), the chains they jump to, the portmap
//! plugin's shared CNI-HOSTPORT-* chains if they were absent before
//! (`berth_testing::PortmapChains`), and the bridges it was told about if
//! they were absent before.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use berth_testing::{PortmapChains, nat_rules};

/// go-cni's compiled-in directories, and libcni's cache.
const CONF_DIR: &str = "/etc/cni/net.d";
const BIN_DIR: &str = "/opt/cni/bin";
const CACHE_DIR: &str = "/var/lib/cni";
/// Debian's containernetworking-plugins.
const DEBIAN_PLUGINS: &str = "/usr/lib/cni";
/// The CNI directories ctr reads, set up for one network.
pub struct CtrCni {
    /// Paths this made, in creation order (removed in reverse).
    created: Vec<PathBuf>,
    network: String,
    cache_existed: bool,
}

impl CtrCni {
    /// Writes a bridge + host-local + portmap conflist named `network` on
    /// `bridge`/`subnet` (host-local's leases under `dir`), the same plugins
    /// berth's default network uses. None (with a note) if /etc/cni/net.d
    /// already exists (an administrator's configs would be used too) or the
    /// plugins are missing.
    pub fn setup(dir: &Path, network: &str, bridge: &str, subnet: &str, gateway: &str) -> Option<CtrCni> {
        if Path::new(CONF_DIR).exists() {
            eprintln!("{CONF_DIR} exists: not touching it; skipping the ctr --cni figures");
            return None;
        }
        let plugins_at = |d: &Path| ["bridge", "host-local", "portmap"].iter().all(|p| d.join(p).is_file());
        let mut cni = CtrCni { created: Vec::new(), network: network.to_string(), cache_existed: false };
        if Path::new(BIN_DIR).exists() {
            if !plugins_at(Path::new(BIN_DIR)) {
                eprintln!("{BIN_DIR} lacks bridge/host-local/portmap; skipping the ctr --cni figures");
                return None;
            }
        } else if plugins_at(Path::new(DEBIAN_PLUGINS)) {
            cni.create_dirs(Path::new("/opt/cni"))?;
            if let Err(e) = std::os::unix::fs::symlink(DEBIAN_PLUGINS, BIN_DIR) {
                eprintln!("cannot link {BIN_DIR} to {DEBIAN_PLUGINS}: {e}; skipping the ctr --cni figures");
                return None;
            }
            cni.created.push(BIN_DIR.into());
        } else {
            eprintln!("no CNI plugins in {DEBIAN_PLUGINS} (apt-get install containernetworking-plugins)");
            return None;
        }
        cni.create_dirs(Path::new(CONF_DIR))?;
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": subnet, "gateway": gateway }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": dir.join("ctr-ipam").to_string_lossy(),
                    },
                },
                { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true },
            ],
        });
        let file = Path::new(CONF_DIR).join(format!("10-{network}.conflist"));
        let bytes = serde_json::to_vec_pretty(&conf).ok()?;
        if let Err(e) = std::fs::write(&file, bytes) {
            eprintln!("cannot write {}: {e}; skipping the ctr --cni figures", file.display());
            return None;
        }
        cni.created.push(file);
        cni.cache_existed = Path::new(CACHE_DIR).exists();
        Some(cni)
    }

    /// Creates `dir` and its missing parents, remembering each one made.
    fn create_dirs(&mut self, dir: &Path) -> Option<()> {
        let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
        for d in missing.into_iter().rev() {
            if let Err(e) = std::fs::create_dir(d) {
                eprintln!("cannot create {}: {e}; skipping the ctr --cni figures", d.display());
                return None;
            }
            self.created.push(d.to_path_buf());
        }
        Some(())
    }
}

impl Drop for CtrCni {
    fn drop(&mut self) {
        if self.cache_existed {
            // Only our network's cached results (libcni: NETWORK-CONTAINERID-IFNAME).
            let results = Path::new(CACHE_DIR).join("results");
            for e in std::fs::read_dir(&results).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with(&format!("{}-", self.network)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(CACHE_DIR);
        }
        for path in self.created.iter().rev() {
            let removed = if path.is_symlink() || path.is_file() {
                std::fs::remove_file(path)
            } else {
                std::fs::remove_dir(path)
            };
            if let Err(e) = removed {
                eprintln!("warning: could not remove {}: {e}", path.display());
            }
        }
    }
}

/// Runs `iptables -w -t nat ARGS`, where ARGS come from `iptables -S`.
fn nat(args: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("iptables -w -t nat {args}"))
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn interface_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// A berthd whose default network `berth` is bridge `bridge` on `subnet`,
/// and the guard that gives back what the plugins make on the host
/// (addresses starting with one of `prefixes`, the `bridges`); None if a
/// bridge exists already.
pub fn berthd_on_bridge(
    prefixes: &[&str],
    bridges: &[&str],
    bridge: &str,
    subnet: &str,
) -> Option<(HostGuard, berth_testing::Daemon)> {
    let host = HostGuard::new(prefixes, bridges)?;
    let d = berth_testing::Daemon::start_with(&[
        "--default-network",
        "berth",
        "--network-bridge",
        bridge,
        "--network-subnet",
        subnet,
    ]);
    Some((host, d))
}

/// Gives back what the plugins made on the host (see the module doc).
pub struct HostGuard {
    nat_before: Vec<String>,
    /// Address prefixes of the benchmark's subnets, e.g. "10.214.0.".
    prefixes: Vec<String>,
    /// Bridges to delete at the end: those absent at the start.
    bridges: Vec<String>,
    /// Dropped after the rest is cleaned.
    _chains: PortmapChains,
}

impl HostGuard {
    /// Takes the snapshot; refuses (None) if a bridge already exists, as
    /// another user's could then be torn down.
    pub fn new(prefixes: &[&str], bridges: &[&str]) -> Option<HostGuard> {
        if let Some(b) = bridges.iter().find(|b| interface_exists(b)) {
            eprintln!("interface {b} exists already (a leftover? `ip link del {b}`); skipping the network scenario");
            return None;
        }
        Some(HostGuard {
            nat_before: nat_rules(),
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            bridges: bridges.iter().map(|b| b.to_string()).collect(),
            _chains: PortmapChains::note(),
        })
    }

    fn clean_nat(&self) {
        let after = nat_rules();
        let new = |line: &&String| !self.nat_before.contains(line);
        let fresh_chains: Vec<&str> = after.iter().filter(new).filter_map(|l| l.strip_prefix("-N ")).collect();
        // Our rules: new, and naming one of our subnets; then the chains they jump to.
        let mut chains = Vec::new();
        for rule in after.iter().filter(new).filter(|l| l.starts_with("-A ")) {
            if !self.prefixes.iter().any(|p| rule.contains(&format!(" {p}"))) {
                continue;
            }
            if let Some(target) = rule.split_whitespace().skip_while(|w| *w != "-j").nth(1)
                && fresh_chains.contains(&target)
            {
                chains.push(target.to_string());
            }
            nat(&format!("-D {}", &rule[3..]));
        }
        let rules = after.iter().filter(new).filter(|l| self.prefixes.iter().any(|p| l.contains(&format!(" {p}"))));
        eprintln!("network: removing {} nat rules and {} chains the plugins left", rules.count(), chains.len());
        for chain in &chains {
            nat(&format!("-F {chain}"));
            nat(&format!("-X {chain}"));
        }
    }
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        for bridge in &self.bridges {
            if let Err(e) = berth_network::delete_bridge(bridge) {
                eprintln!("warning: could not delete bridge {bridge}: {e}");
            }
        }
        self.clean_nat();
        let left: Vec<String> = nat_rules()
            .into_iter()
            .filter(|l| !self.nat_before.contains(l) && self.prefixes.iter().any(|p| l.contains(p.as_str())))
            .collect();
        if !left.is_empty() {
            eprintln!("warning: nat rules left behind: {left:?}");
        }
    }
}
