//! Where berthd keeps everything. All paths derive from `--root` (durable:
//! metadata, logs) and `--state` (runtime: bundles, shim sockets), so a test
//! can run a fully isolated daemon under a temporary directory.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use berth_model::{ContainerId, Namespace};

#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    /// Cgroup under which containers live: `<parent>/<namespace>/<id>`.
    pub cgroup_parent: String,
    pub shim_binary: PathBuf,
    pub start_timeout: Duration,
}

impl Config {
    pub fn db_path(&self) -> PathBuf {
        self.root.join("meta.redb")
    }

    pub fn log_dir(&self, ns: &Namespace, id: &ContainerId) -> PathBuf {
        self.root.join("logs").join(ns.as_str()).join(id.as_str())
    }

    pub fn bundle_dir(&self, ns: &Namespace, id: &ContainerId) -> PathBuf {
        self.state.join("bundles").join(ns.as_str()).join(id.as_str())
    }

    /// Unix socket paths are limited to 107 bytes, so sockets are named by
    /// a hash of namespace and id.
    pub fn shim_socket(&self, ns: &Namespace, id: &ContainerId) -> PathBuf {
        let mut h = DefaultHasher::new();
        (ns.as_str(), id.as_str()).hash(&mut h);
        self.state.join("shims").join(format!("{:016x}.sock", h.finish()))
    }

    pub fn runtime_root(&self, runtime: &str, ns: &Namespace) -> PathBuf {
        self.state.join("runtime").join(runtime).join(ns.as_str())
    }

    pub fn cgroup_path(&self, ns: &Namespace, id: &ContainerId) -> String {
        format!("{}/{ns}/{id}", self.cgroup_parent.trim_end_matches('/'))
    }
}
