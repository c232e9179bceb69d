//! Kubernetes CRI v1 over berth (SPEC B28): the RuntimeService and
//! ImageService kubelet speaks, translated into calls of berth's own API
//! services — a [`Backend`] is the set of berth.v1 handlers berthd serves
//! on its main socket, called in-process — so no lifecycle logic lives
//! here. Pods are berth sandboxes and containers are berth containers, all
//! in the berth namespace [`NAMESPACE`]; what CRI knows and berth does not
//! (metadata, CRI labels and annotations, the log path, the image as asked
//! for) rides in one reserved label per object (`meta.rs`).

mod containers;
mod exec;
mod images;
mod meta;
mod pods;
mod runtime;
mod service;
pub mod spdy;
mod stats;
mod streaming;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use berth_api::v1 as pb;
use tonic::{Request, Status};

pub use k8s_cri::v1 as cri;
pub use service::{ImageServer, RuntimeServer, servers};

/// The berth namespace of everything made through CRI (containerd's too).
pub const NAMESPACE: &str = "k8s.io";

/// What CRI is translated into: berth's Containers, Sandboxes, Images,
/// Events and Checkpoints services (berthd's `Api`).
pub trait Backend:
    pb::containers_server::Containers
    + pb::sandboxes_server::Sandboxes
    + pb::images_server::Images
    + pb::events_server::Events
    + pb::checkpoints_server::Checkpoints
    + AttachIo
    + Send
    + Sync
    + 'static
{
}

impl<T> Backend for T where
    T: pb::containers_server::Containers
        + pb::sandboxes_server::Sandboxes
        + pb::images_server::Images
        + pb::events_server::Events
        + pb::checkpoints_server::Checkpoints
        + AttachIo
        + Send
        + Sync
        + 'static
{
}

/// Interactive I/O with a container's process, which berth's gRPC API
/// offers only as a client-streaming call (not callable in-process).
#[tonic::async_trait]
pub trait AttachIo {
    /// Attaches to init (`exec_id` empty) or an exec of container `id` in
    /// [`NAMESPACE`]: `input` feeds its terminal or its stdin (without a
    /// terminal and with `close_stdin`, the end of `input` is the process's
    /// end of input); the receiver yields the terminal's output (nothing
    /// without a terminal).
    async fn attach_io(
        &self,
        id: &str,
        exec_id: &str,
        input: tokio::sync::mpsc::Receiver<Vec<u8>>,
        close_stdin: bool,
    ) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>, Status>;
}

/// What the CRI layer needs to know of its daemon.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// berthd's version, reported by Version.
    pub runtime_version: String,
    /// Where berthd keeps image content, then snapshots (ImageFsInfo).
    pub image_dirs: Vec<PathBuf>,
    /// CNI config lists written by an administrator.
    pub cni_conf_dir: PathBuf,
    /// Directories holding CNI plugins.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The berth network pods join (empty: berthd's default).
    pub network: String,
    /// The event log's last sequence number when berthd started: every
    /// GetContainerEvents stream replays the events after it (those berthd
    /// recorded while it recovered included), then follows.
    pub replay_since: u64,
}

/// The CRI services over one backend.
pub struct Cri<B> {
    b: Arc<B>,
    cfg: Config,
    /// Set by UpdateRuntimeConfig (kubelet's pod CIDR), reported in Status.
    pod_cidr: Mutex<String>,
    /// Pod and container names being created: CRI names are unique.
    reserved: Mutex<std::collections::HashSet<String>>,
    /// Each running container's last CPU sample (time, usage), both in ns.
    cpu_samples: Mutex<std::collections::HashMap<String, (u64, u64)>>,
    /// URLs handed out by Exec, Attach and PortForward.
    tokens: streaming::Tokens,
    /// This very value, for work that outlives a call (event streams).
    me: std::sync::Weak<Cri<B>>,
}

impl<B: Backend> Cri<B> {
    pub fn new(b: B, cfg: Config) -> Arc<Self> {
        Arc::new_cyclic(|me| Cri {
            b: Arc::new(b),
            cfg,
            pod_cidr: Mutex::default(),
            reserved: Mutex::default(),
            cpu_samples: Mutex::default(),
            tokens: Default::default(),
            me: me.clone(),
        })
    }
}

/// A CRI name held while the object that carries it is created; a second
/// create with the same name is AlreadyExists until the first ends.
pub(crate) struct Reservation<'a> {
    set: &'a Mutex<std::collections::HashSet<String>>,
    name: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.name);
    }
}

impl<B> Cri<B> {
    pub(crate) fn reserve(&self, name: String) -> Result<Reservation<'_>, Status> {
        if !lock(&self.reserved).insert(name.clone()) {
            return Err(Status::already_exists(format!("the name {name} is being created")));
        }
        Ok(Reservation { set: &self.reserved, name })
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn req<T>(t: T) -> Request<T> {
    Request::new(t)
}

pub(crate) fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

/// Turns NotFound into success: removing or stopping what is already gone
/// succeeds in CRI.
pub(crate) fn gone_ok<T: Default>(r: Result<T, Status>) -> Result<T, Status> {
    match r {
        Err(s) if s.code() == tonic::Code::NotFound => Ok(T::default()),
        r => r,
    }
}

/// Nanoseconds as CRI's int64 timestamps.
pub(crate) fn ns_i64(ns: u64) -> i64 {
    i64::try_from(ns).unwrap_or(i64::MAX)
}

/// Whether `labels` holds every pair of `selector` (CRI label selectors
/// are exact matches, all of them).
pub(crate) fn selected(
    labels: &std::collections::HashMap<String, String>,
    selector: &std::collections::HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// One id among `ids` that `wanted` names exactly or as a unique prefix
/// (crictl users type prefixes, as with containerd).
pub(crate) fn resolve_id<'a>(wanted: &str, ids: impl Iterator<Item = &'a str>) -> Result<String, Status> {
    if wanted.is_empty() {
        return Err(invalid("an id is required"));
    }
    let matches: Vec<&str> = ids.filter(|id| id.starts_with(wanted)).collect();
    if let Some(exact) = matches.iter().find(|id| **id == wanted) {
        return Ok(exact.to_string());
    }
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(Status::not_found(format!("{wanted} not found"))),
        _ => Err(invalid(format!("{wanted} is the prefix of {} ids: give more of it", matches.len()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_resolve_exactly_or_by_a_unique_prefix() {
        let ids = ["abc123", "abd456", "abc"];
        assert_eq!(resolve_id("abc", ids.into_iter()).unwrap(), "abc");
        assert_eq!(resolve_id("abc1", ids.into_iter()).unwrap(), "abc123");
        assert_eq!(resolve_id("abd", ids.into_iter()).unwrap(), "abd456");
        assert_eq!(resolve_id("ab", ids.into_iter()).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(resolve_id("x", ids.into_iter()).unwrap_err().code(), tonic::Code::NotFound);
        assert_eq!(resolve_id("", ids.into_iter()).unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn selectors_match_every_pair() {
        let labels: std::collections::HashMap<String, String> =
            [("app", "web"), ("tier", "1")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let sel = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(selected(&labels, &sel(&[])));
        assert!(selected(&labels, &sel(&[("app", "web")])));
        assert!(!selected(&labels, &sel(&[("app", "web"), ("tier", "2")])));
        assert!(!selected(&labels, &sel(&[("other", "x")])));
    }
}
