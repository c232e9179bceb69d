//! Where berthd keeps everything. All paths derive from `--root` (durable:
//! metadata, logs) and `--state` (runtime: bundles, shim sockets), so a test
//! can run a fully isolated daemon under a temporary directory.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_model::{ContainerId, Namespace, SandboxId};

#[derive(Debug, Clone)]
pub struct Config {
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    /// Cgroup under which containers live: `<parent>/<namespace>/<id>`.
    pub cgroup_parent: String,
    pub shim_binary: PathBuf,
    pub start_timeout: Duration,
    /// The runtime of a create that names none (`--default-runtime`).
    pub default_runtime: String,
    /// CRIU, for checkpoints (`--criu`).
    pub criu: PathBuf,
    /// The bound of a container log that names none
    /// (`--container-log-max-size`, `--container-log-max-files`).
    pub log_rotation: berth_model::LogRotation,
    /// VM sandboxes' assets and accelerator (`--vm-assets`, `--vm-accel`).
    pub vm: crate::vm::VmConfig,
}

impl Config {
    pub fn db_path(&self) -> PathBuf {
        self.root.join("meta.redb")
    }

    pub fn log_dir(&self, ns: &Namespace, id: &ContainerId) -> PathBuf {
        self.root.join("logs").join(ns.as_str()).join(id.as_str())
    }

    pub fn bundle_dir(&self, ns: &Namespace, id: &ContainerId) -> PathBuf {
        self.bundles_root().join(ns.as_str()).join(id.as_str())
    }

    /// Where every bundle is (and every image container's root mount).
    pub fn bundles_root(&self) -> PathBuf {
        self.state.join("bundles")
    }

    /// Unix socket paths are limited to 107 bytes, so sockets are named by
    /// a hash of namespace and id.
    pub fn shim_socket(&self, ns: &Namespace, id: &ContainerId) -> PathBuf {
        self.hashed_socket("shims", ns, id.as_str())
    }

    /// `<state>/<dir>/<hash of namespace and id>.sock`.
    fn hashed_socket(&self, dir: &str, ns: &Namespace, id: &str) -> PathBuf {
        self.hashed(dir, ns, id, "sock")
    }

    /// `<state>/<dir>/<hash of namespace and id>.<ext>`.
    fn hashed(&self, dir: &str, ns: &Namespace, id: &str, ext: &str) -> PathBuf {
        let mut h = DefaultHasher::new();
        (ns.as_str(), id).hash(&mut h);
        self.state.join(dir).join(format!("{:016x}.{ext}", h.finish()))
    }

    /// Where the namespaces a sandbox's containers share are held.
    pub fn sandbox_ns_dir(&self) -> PathBuf {
        self.state.join("sandbox-ns")
    }

    /// The bind mount holding sandbox `id`'s `kind` (ipc, pid) namespace.
    pub fn sandbox_ns_pin(&self, ns: &Namespace, id: &SandboxId, kind: &str) -> PathBuf {
        self.hashed("sandbox-ns", ns, id.as_str(), kind)
    }

    /// A sandbox's own files: its shim's log.
    pub fn sandbox_dir(&self, ns: &Namespace, id: &SandboxId) -> PathBuf {
        self.state.join("sandboxes").join(ns.as_str()).join(id.as_str())
    }

    /// A sandbox shim's socket: in a directory of its own, so a container's
    /// teardown (which removes the sockets under `shims`) never takes it.
    pub fn sandbox_socket(&self, ns: &Namespace, id: &SandboxId) -> PathBuf {
        self.hashed_socket("sandbox-shims", ns, id.as_str())
    }

    /// The endpoint containerd v2 shims publish their events to.
    pub fn shim_events_socket(&self) -> PathBuf {
        self.state.join("shim-events.sock")
    }

    /// What a containerd v2 shim is told about this daemon.
    pub fn v2(&self) -> crate::shim_v2::V2 {
        crate::shim_v2::V2 {
            address: self.socket.clone(),
            events: self.shim_events_socket(),
            publish: std::env::current_exe().unwrap_or_else(|_| "berthd".into()),
            logger: self.shim_binary.with_file_name("berth-logger"),
        }
    }

    pub fn runtime_root(&self, runtime: &str, ns: &Namespace) -> PathBuf {
        self.state.join("runtime").join(runtime).join(ns.as_str())
    }

    /// Seccomp programs the shims of this daemon compiled, one per profile
    /// (berth_runtime's `seccomp.rs`).
    pub fn seccomp_cache(&self) -> PathBuf {
        self.state.join("seccomp")
    }

    pub fn cgroup_path(&self, ns: &Namespace, id: &ContainerId) -> String {
        format!("{}/{id}", self.namespace_cgroup(ns))
    }

    /// The cgroup that holds a namespace's container cgroups.
    pub fn namespace_cgroup(&self, ns: &Namespace) -> String {
        format!("{}/{ns}", self.cgroup_parent.trim_end_matches('/'))
    }

    /// The directories that hold one namespace's containers: logs,
    /// bundles, and the state of each runtime that has been used.
    pub fn namespace_dirs(&self, ns: &Namespace) -> Vec<PathBuf> {
        let mut dirs = vec![self.root.join("logs").join(ns.as_str()), self.state.join("bundles").join(ns.as_str())];
        let runtimes = std::fs::read_dir(self.state.join("runtime")).into_iter().flatten().flatten();
        dirs.extend(runtimes.map(|r| r.path().join(ns.as_str())));
        dirs
    }

    /// The directories holding `<namespace>/<id>` directories of
    /// containers: logs, bundles, then each used runtime's state.
    pub fn container_parents(&self) -> Vec<PathBuf> {
        let mut parents = vec![self.root.join("logs"), self.state.join("bundles")];
        let runtimes = std::fs::read_dir(self.state.join("runtime")).into_iter().flatten().flatten();
        parents.extend(runtimes.map(|r| r.path()));
        parents
    }

    /// Whether a command line (`/proc/PID/cmdline`) is a berth-shim serving
    /// this daemon: berth-shim or `--shim`'s binary, its `--runtime-root`
    /// under this daemon's runtime state.
    pub fn is_own_shim(&self, args: &[String]) -> bool {
        let runtime = self.state.join("runtime");
        args.first().is_some_and(|a| a.ends_with("berth-shim") || Path::new(a) == self.shim_binary)
            && args.windows(2).any(|w| w[0] == "--runtime-root" && Path::new(&w[1]).starts_with(&runtime))
    }

    /// Namespaces that have a directory (see [`Config::namespace_dirs`]).
    pub fn namespaces_on_disk(&self) -> Vec<Namespace> {
        let mut found: Vec<Namespace> = self
            .container_parents()
            .iter()
            .flat_map(|p| std::fs::read_dir(p).into_iter().flatten().flatten())
            .filter_map(|e| Namespace::new(e.file_name().to_string_lossy()).ok())
            .collect();
        found.sort();
        found.dedup();
        found
    }
}
