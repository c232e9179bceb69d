//! The attachment of one container to a network: a berth-owned network
//! namespace, CNI ADD/CHECK/DEL against it, and the cache file that makes
//! teardown possible from any point. The cache is written before anything is
//! allocated and removed only after DEL succeeded, so a berthd killed at any
//! moment finds every attachment to finish (`attached`, `detach`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use berth_model::{NetworkAttachment, PortMapping};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cni::{self, RuntimeConf};
use crate::conflist::ConfList;
use crate::{Error, Networks, Result, netns};

/// The interface CNI makes inside the namespace.
const IFNAME: &str = "eth0";

/// Which container an attachment belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttachKey {
    pub namespace: String,
    pub id: String,
}

impl AttachKey {
    /// Hex sha256 of `<namespace>/<id>`: the CNI container id and the name
    /// of the namespace and cache files (unambiguous, CNI-safe characters).
    pub(crate) fn digest(&self) -> String {
        hex::encode(Sha256::digest(format!("{}/{}", self.namespace, self.id)))
    }
}

/// What `attach` is asked to set up.
#[derive(Debug, Clone)]
pub struct AttachRequest<'a> {
    pub key: AttachKey,
    /// The network's name; `None` is `--network none`: a namespace of
    /// berth's with loopback only and no CNI.
    pub network: Option<&'a str>,
    pub ports: &'a [PortMapping],
}

/// `<state>/network/attachments/<digest>.json`: everything DEL needs.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Cache {
    namespace: String,
    id: String,
    /// `None` for `--network none`.
    pub(crate) network: Option<String>,
    /// The config list ADD used, as JSON (DEL must use the same).
    conflist: Option<Value>,
    pub(crate) runtime: RuntimeConf,
    /// The final ADD result, once there is one.
    result: Option<Value>,
}

impl Networks {
    /// Sets up the network of one container: namespace, then CNI ADD. On
    /// failure everything done so far is undone before the error returns.
    pub async fn attach(&self, req: AttachRequest<'_>) -> Result<NetworkAttachment> {
        let list = match req.network {
            Some(name) => {
                let (path, list) = self.conflist(name)?;
                self.ensure_masquerade(name, &self.masquerade_of(&path, &list)).await?;
                Some(list)
            }
            None => None,
        };
        self.attach_with(req, list).await
    }

    /// `attach` with the network's config list already resolved.
    pub(crate) async fn attach_with(
        &self,
        req: AttachRequest<'_>,
        list: Option<ConfList>,
    ) -> Result<NetworkAttachment> {
        validate(&self.cfg, &req, list.as_ref())?;
        let key = req.key;
        let netns_path = self.netns_path(&key);
        let mut cache = Cache {
            namespace: key.namespace.clone(),
            id: key.id.clone(),
            network: list.as_ref().map(|l| l.name.clone()),
            conflist: list.as_ref().map(ConfList::to_value),
            runtime: RuntimeConf {
                container_id: key.digest(),
                netns: netns_path.clone(),
                ifname: IFNAME.into(),
                port_mappings: req.ports.to_vec(),
            },
            result: None,
        };
        let cache_path = self.cache_path(&key);
        let begin = {
            let (json, cache_path, netns_path) = (to_json(&cache)?, cache_path.clone(), netns_path.clone());
            let who = format!("container {}/{}", key.namespace, key.id);
            move || begin(&who, &json, &cache_path, &netns_path, netns::create)
        };
        blocking(begin).await?;
        let Some(list) = list else {
            return Ok(NetworkAttachment {
                mode: "none".into(),
                netns: netns_path.to_string_lossy().into_owned(),
                ..Default::default()
            });
        };
        let result = match cni::add(&self.cfg, &list, &cache.runtime).await {
            Ok(result) => result,
            Err(e) => {
                // cni::add undid its plugins; what is left is ours.
                if let Err(undo) = blocking(move || finish(&cache_path, &netns_path)).await {
                    tracing::warn!(container = %key.id, "undoing a failed network attach: {undo}");
                }
                return Err(e);
            }
        };
        cache.result = Some(result);
        let store = async {
            let (json, path) = (to_json(&cache)?, cache_path.clone());
            blocking(move || write_cache(&path, &json)).await
        };
        if let Err(e) = store.await {
            if let Err(undo) = self.teardown(cache, &cache_path).await {
                tracing::warn!(container = %key.id, "undoing a failed network attach: {undo}");
            }
            return Err(e);
        }
        Ok(attachment(&list.name, &netns_path, cache.result.as_ref(), req.ports))
    }

    /// Pins the network namespace a running container's runtime made
    /// (`--network none`, unpinned) so that others can join it by path:
    /// an attachment of mode `none` like one `attach` makes, released by
    /// `detach`. Returns the namespace's path.
    pub async fn pin(&self, key: &AttachKey, pid: u32) -> Result<String> {
        let netns_path = self.netns_path(key);
        let cache = Cache {
            namespace: key.namespace.clone(),
            id: key.id.clone(),
            network: None,
            conflist: None,
            runtime: RuntimeConf {
                container_id: key.digest(),
                netns: netns_path.clone(),
                ifname: IFNAME.into(),
                port_mappings: Vec::new(),
            },
            result: None,
        };
        let (json, cache_path, path) = (to_json(&cache)?, self.cache_path(key), netns_path.clone());
        let who = format!("container {}/{}", key.namespace, key.id);
        blocking(move || begin(&who, &json, &cache_path, &path, |p| netns::bind(p, pid))).await?;
        Ok(netns_path.to_string_lossy().into_owned())
    }

    /// Tears down a container's network: CNI DEL with what ADD used, then the
    /// namespace and the cache. Nothing attached is fine. If DEL fails the
    /// cache and namespace stay, so that a retry can finish.
    pub async fn detach(&self, key: &AttachKey) -> Result<()> {
        let path = self.cache_path(key);
        let cache = {
            let path = path.clone();
            blocking(move || read_cache(&path)).await?
        };
        match cache {
            Some(cache) => self.teardown(cache, &path).await,
            None => Ok(()),
        }
    }

    /// CNI CHECK of a container's attachment (a no-op for `--network none`
    /// and networks with `disableCheck`).
    pub async fn check(&self, key: &AttachKey) -> Result<()> {
        let path = self.cache_path(key);
        let cache = {
            let path = path.clone();
            blocking(move || read_cache(&path)).await?
        };
        let Some(cache) = cache else {
            return Err(Error::FailedPrecondition(format!("{}/{} has no network attachment", key.namespace, key.id)));
        };
        match cache.conflist {
            Some(list) => {
                let list = ConfList::from_value(list, &path)?;
                if list.disable_check {
                    return Ok(());
                }
                cni::check(&self.cfg, &list, &cache.runtime, cache.result.as_ref()).await
            }
            None => Ok(()),
        }
    }

    /// Every container with an attachment cache, torn down or not: crash
    /// recovery detaches those whose container is gone.
    pub fn attached(&self) -> Result<Vec<AttachKey>> {
        let mut keys: Vec<AttachKey> =
            self.caches()?.into_iter().map(|c| AttachKey { namespace: c.namespace, id: c.id }).collect();
        keys.sort();
        Ok(keys)
    }

    /// The attachment caches on disk (a bad one is skipped with a warning).
    pub(crate) fn caches(&self) -> Result<Vec<Cache>> {
        let dir = self.cache_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
        };
        let mut caches = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("read {}", dir.display()), e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue; // write_atomic's temp files and strangers
            }
            match read_cache(&entry.path()) {
                Ok(Some(cache)) => caches.push(cache),
                Ok(None) => {} // detached meanwhile
                // One bad file must not stop a recovery sweep over the others.
                Err(e) => tracing::warn!("skipping an attachment cache: {e}"),
            }
        }
        Ok(caches)
    }

    /// The bind mount holding the container's network namespace.
    pub fn netns_path(&self, key: &AttachKey) -> PathBuf {
        self.netns_dir().join(key.digest())
    }

    pub(crate) fn netns_dir(&self) -> PathBuf {
        self.cfg.state.join("netns")
    }

    fn cache_dir(&self) -> PathBuf {
        self.cfg.state.join("network").join("attachments")
    }

    fn cache_path(&self, key: &AttachKey) -> PathBuf {
        self.cache_dir().join(format!("{}.json", key.digest()))
    }

    /// DEL (if CNI was used), then namespace and cache removal; on a failed
    /// DEL both stay.
    async fn teardown(&self, cache: Cache, cache_path: &Path) -> Result<()> {
        if let Some(list) = cache.conflist {
            let list = ConfList::from_value(list, cache_path)?;
            let netns_path = cache.runtime.netns.clone();
            // Deleting a veth inside a namespace waits for the kernel (20-40
            // ms); dropping the namespace lets the kernel remove it in the
            // background. Only when no plugin needs the namespace's addresses
            // to find its rules (the bridge plugin's ipMasq does).
            let needs_addresses = list.plugins.iter().any(|p| p.get("ipMasq") == Some(&Value::Bool(true)));
            blocking(move || {
                if !needs_addresses {
                    netns::remove(&netns_path)?;
                }
                netns::ensure(&netns_path)
            })
            .await?;
            cni::del(&self.cfg, &list, &cache.runtime, cache.result.as_ref()).await?;
        }
        let (cache_path, netns_path) = (cache_path.to_path_buf(), cache.runtime.netns);
        blocking(move || finish(&cache_path, &netns_path)).await
    }
}

/// Refuses what cannot work before anything is allocated.
fn validate(cfg: &crate::Config, req: &AttachRequest<'_>, list: Option<&ConfList>) -> Result<()> {
    let Some(list) = list else {
        if req.ports.is_empty() {
            return Ok(());
        }
        return Err(Error::InvalidArgument("ports cannot be published with --network none".into()));
    };
    for plugin in &list.plugins {
        cni::find_plugin(cfg, crate::conflist::plugin_type(plugin))?;
    }
    let publishes = list.plugins.iter().any(|p| cni::has_capability(p, "portMappings"));
    if !req.ports.is_empty() && !publishes {
        return Err(Error::InvalidArgument(format!(
            "network {} cannot publish ports: none of its plugins has the portMappings capability",
            list.name
        )));
    }
    Ok(())
}

/// Writes the cache (refusing a second attachment of one container), then
/// makes the namespace; on failure nothing is left.
fn begin(
    who: &str,
    json: &[u8],
    cache_path: &Path,
    netns_path: &Path,
    make: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    if let Some(dir) = cache_path.parent() {
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    }
    if cache_path.exists() {
        return Err(Error::FailedPrecondition(format!("{who} already has a network attachment")));
    }
    if let Some(dir) = netns_path.parent() {
        netns::prepare_dir(dir)?;
    }
    write_cache(cache_path, json)?;
    if let Err(e) = make(netns_path) {
        let _ = remove_cache(cache_path);
        return Err(e);
    }
    Ok(())
}

/// Removes the namespace, then the cache: the last step of a teardown.
fn finish(cache_path: &Path, netns_path: &Path) -> Result<()> {
    netns::remove(netns_path)?;
    remove_cache(cache_path)
}

fn to_json(cache: &Cache) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(cache).map_err(|e| Error::io("encode an attachment cache", io::Error::other(e)))
}

fn write_cache(path: &Path, json: &[u8]) -> Result<()> {
    berth_store::write_atomic(path, json).map_err(|e| Error::io(format!("write {}", path.display()), e))
}

/// The cache at `path`, `None` if there is none.
fn read_cache(path: &Path) -> Result<Option<Cache>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::BadConfig { path: path.to_path_buf(), reason: format!("not an attachment cache: {e}") })
}

fn remove_cache(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(format!("remove {}", path.display()), e)),
        _ => match path.parent() {
            Some(dir) => berth_store::fsync_dir(dir).map_err(|e| Error::io(format!("sync {}", dir.display()), e)),
            None => Ok(()),
        },
    }
}

/// Runs file-system and namespace work off the async worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::io("network setup task", io::Error::other(e)))?
}

/// What the container's record shows: addresses in CIDR form, gateway and
/// MAC from the final ADD result.
fn attachment(network: &str, netns: &Path, result: Option<&Value>, ports: &[PortMapping]) -> NetworkAttachment {
    let empty = Vec::new();
    let ips = result.and_then(|r| r["ips"].as_array()).unwrap_or(&empty);
    let interfaces = result.and_then(|r| r["interfaces"].as_array()).unwrap_or(&empty);
    let text = |v: &Value| v.as_str().map(str::to_string);
    NetworkAttachment {
        mode: network.to_string(),
        netns: netns.to_string_lossy().into_owned(),
        interface: IFNAME.into(),
        ips: ips.iter().filter_map(|ip| text(&ip["address"])).collect(),
        gateway: ips.iter().find_map(|ip| text(&ip["gateway"])).unwrap_or_default(),
        mac: interfaces
            .iter()
            .find(|i| i["name"] == IFNAME && i["sandbox"].as_str().is_some_and(|s| !s.is_empty()))
            .and_then(|i| text(&i["mac"]))
            .unwrap_or_default(),
        ports: ports.to_vec(),
    }
}

#[cfg(test)]
#[path = "attach_tests.rs"]
mod tests;
