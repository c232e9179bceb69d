//! Container networking in the create and delete paths (SPEC B33): the
//! `--network` mode, ports and resolver options checked before anything is
//! allocated; the attachment (berth's own network namespace + CNI ADD, in
//! `berth-network`) as one step of create's rollback list; the resolver
//! files bind-mounted from the bundle; CNI DEL at delete and recovery.
//!
//! `--network none` gets a namespace the runtime makes (berthd brings its
//! loopback up before the start): nothing is mounted on the host for it.
//! A bind-mounted namespace per container costs every later container
//! start and delete on the host: the runtime reads the host's mount table
//! (libcgroups parses /proc/self/mountinfo about a dozen times per call)
//! and copies it into each new mount namespace. Namespaces are pinned only
//! where something outside the container needs them by path: CNI, a
//! sandbox's members, and a restore (CRIU's external namespace).
//! Network definitions themselves are served in `network_api.rs`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use berth_model::State;
use berth_model::{ContainerId, Namespace, NetworkAttachment, NetworkMode, PortMapping, SandboxId};
use berth_network::{AttachKey, AttachRequest, DnsOptions, Networks, Resolver};
use berth_store::{ContainerRecord, SandboxRecord};
use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use crate::error::{Error, Result};
use crate::manager::{Manager, lock};

/// `run` options about the network (CreateRequest.network, publish, dns,
/// add_hosts).
#[derive(Debug, Clone, Default)]
pub struct NetOptions {
    pub mode: String,
    pub publish: Vec<String>,
    pub dns: Resolver,
    pub add_hosts: Vec<String>,
    /// `none` gets a pinned namespace too (a restore hands CRIU the
    /// namespace by path).
    pub pin: bool,
}

impl NetOptions {
    fn is_default(&self) -> bool {
        self.mode.is_empty() && self.publish.is_empty() && self.dns.is_empty() && self.add_hosts.is_empty()
    }
}

/// berthd's networks and what creates in flight have claimed.
pub struct Net {
    pub networks: Networks,
    /// `--network` of a container that names none (`berthd --default-network`).
    pub default_mode: String,
    /// Ports claimed by creates not recorded yet (a record's ports are in
    /// the store): two concurrent creates cannot publish the same one.
    claimed: Mutex<Vec<(AttachKey, PortMapping)>>,
}

impl Net {
    pub fn new(networks: Networks, default_mode: String) -> Net {
        Net { networks, default_mode, claimed: Mutex::default() }
    }
}

/// A checked network request: everything create needs.
pub(crate) struct Plan {
    key: AttachKey,
    namespace: Namespace,
    /// The host name unless the spec names one.
    hostname: String,
    mode: NetworkMode,
    ports: Vec<PortMapping>,
    dns: Resolver,
    add_hosts: Vec<String>,
    /// A container in a sandbox shares the sandbox's attachment.
    sandbox: Option<NetworkAttachment>,
    /// Pin the namespace of `none` (see the module docs).
    pin: bool,
}

/// Gives back the ports a create claimed, however the create ends.
pub(crate) struct Claim<'a> {
    net: &'a Net,
    key: AttachKey,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        lock(&self.net.claimed).retain(|(k, _)| k != &self.key);
    }
}

pub(crate) fn attach_key(ns: &Namespace, id: &ContainerId) -> AttachKey {
    AttachKey { namespace: ns.to_string(), id: id.to_string() }
}

/// A sandbox's attachment: ':' never appears in a container id, so the
/// key is nobody else's.
fn sandbox_key(ns: &Namespace, id: &SandboxId) -> AttachKey {
    AttachKey { namespace: ns.to_string(), id: format!("sandbox:{id}") }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// Where a container's resolver files are bound (from its bundle).
pub(crate) const RESOLVER_FILES: [&str; 3] = ["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"];

/// The container's own files for its resolver, bind-mounted over the
/// rootfs's (created by the runtime if missing).
fn etc_mount(source: &Path, target: &str) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(target));
    m.set_typ(Some("bind".to_string()));
    m.set_source(Some(source.to_path_buf()));
    m.set_options(Some(vec!["rbind".to_string(), "rprivate".to_string()]));
    m
}

/// Whether an attachment is `none` in a namespace the runtime made (no
/// pin): its loopback is brought up once the runtime created it.
pub(crate) fn unpinned_none(a: Option<&NetworkAttachment>) -> bool {
    a.is_some_and(|a| a.netns.is_empty() && a.mode == NetworkMode::None.to_string())
}

/// The spec's network namespace: a new one (`Some("")`), the one at a path,
/// or the host's (`None`).
fn set_netns(spec: &mut Spec, netns: Option<&str>) -> Result<()> {
    crate::spec::set_namespace(spec, LinuxNamespaceType::Network, netns.map(Path::new))
}

impl Manager {
    /// Checks the network options before anything is created; `None` for
    /// a bundle (networked as its config.json says), which takes no
    /// network options. A container in a sandbox takes the sandbox's
    /// network (resolver options only). Claims the ports until `Claim`
    /// drops.
    pub(crate) fn plan_network(
        &self,
        ns: &Namespace,
        id: &ContainerId,
        o: &NetOptions,
        bundle: bool,
        sandbox: Option<&SandboxRecord>,
    ) -> Result<Option<(Plan, Claim<'_>)>> {
        if bundle {
            if !o.is_default() || sandbox.is_some() {
                return Err(invalid(
                    "network options and sandboxes apply to a root filesystem or an image; a bundle's config.json is used as written",
                ));
            }
            return Ok(None);
        }
        let key = attach_key(ns, id);
        let Some(sandbox) = sandbox else {
            return self.plan(ns, key, id.to_string(), o).map(Some);
        };
        if !o.mode.is_empty() || !o.publish.is_empty() {
            return Err(invalid(format!(
                "a container in sandbox {} shares its network: give --network and --publish to `berth sandbox create`",
                sandbox.id
            )));
        }
        berth_network::check_dns_options(&o.dns, &o.add_hosts)?;
        let shared = sandbox.network.clone().unwrap_or_default();
        let plan = Plan {
            key: key.clone(),
            namespace: ns.clone(),
            hostname: id.to_string(),
            mode: NetworkMode::parse(&shared.mode).unwrap_or(NetworkMode::Host),
            ports: Vec::new(),
            dns: o.dns.clone(),
            add_hosts: o.add_hosts.clone(),
            sandbox: Some(NetworkAttachment { mode: format!("sandbox:{}", sandbox.id), ports: Vec::new(), ..shared }),
            pin: false,
        };
        Ok(Some((plan, Claim { net: &self.net, key })))
    }

    /// The network plan of a new sandbox (no `container:ID`).
    pub(crate) fn plan_sandbox_network(
        &self,
        ns: &Namespace,
        id: &SandboxId,
        o: &NetOptions,
    ) -> Result<Option<(Plan, Claim<'_>)>> {
        if o.mode.starts_with("container:") {
            return Err(invalid("a sandbox has a network namespace of its own: --network container:ID is refused"));
        }
        // Its members join the namespace by path.
        let o = NetOptions { pin: true, ..o.clone() };
        self.plan(ns, sandbox_key(ns, id), id.to_string(), &o).map(Some)
    }

    fn plan(&self, ns: &Namespace, key: AttachKey, hostname: String, o: &NetOptions) -> Result<(Plan, Claim<'_>)> {
        let given = if o.mode.is_empty() { self.net.default_mode.as_str() } else { o.mode.as_str() };
        let mode = NetworkMode::parse(given)?;
        let ports = o.publish.iter().map(|p| p.parse::<PortMapping>()).collect::<Result<Vec<_>, _>>()?;
        berth_network::check_dns_options(&o.dns, &o.add_hosts)?;
        match &mode {
            NetworkMode::Network(name) => {
                self.net.networks.get(name)?;
            }
            _ if !ports.is_empty() => {
                return Err(invalid(format!("publishing ports needs a network, not --network {mode}")));
            }
            NetworkMode::Container(other) => {
                self.join_target(ns, other)?;
            }
            NetworkMode::Host | NetworkMode::None => {}
        }
        let mut claimed = lock(&self.net.claimed);
        if !ports.is_empty() {
            let mut in_use: Vec<(String, PortMapping)> =
                claimed.iter().map(|(k, p)| (format!("{}/{}", k.namespace, k.id), p.clone())).collect();
            for rec in self.store.list(None)? {
                let owner = format!("{}/{}", rec.namespace, rec.id);
                in_use.extend(rec.network.iter().flat_map(|a| a.ports.iter()).map(|p| (owner.clone(), p.clone())));
            }
            for rec in self.store.list_sandboxes(None)? {
                let owner = format!("{}/sandbox:{}", rec.namespace, rec.id);
                in_use.extend(rec.network.iter().flat_map(|a| a.ports.iter()).map(|p| (owner.clone(), p.clone())));
            }
            berth_network::check_ports(&ports, &in_use)?;
            claimed.extend(ports.iter().map(|p| (key.clone(), p.clone())));
        }
        drop(claimed);
        let plan = Plan {
            key: key.clone(),
            namespace: ns.clone(),
            hostname,
            mode,
            ports,
            dns: o.dns.clone(),
            add_hosts: o.add_hosts.clone(),
            sandbox: None,
            pin: o.pin,
        };
        Ok((plan, Claim { net: &self.net, key }))
    }

    /// The container that `container:ID` names, if it has a namespace to
    /// join: a pinned one, or an unpinned `none` one while its init lives.
    fn join_target(&self, ns: &Namespace, other: &ContainerId) -> Result<ContainerRecord> {
        let rec = self
            .store
            .get(ns, other)?
            .ok_or_else(|| invalid(format!("--network container:{other}: no such container")))?;
        // Its eth0 leads into a guest: a joiner's traffic would be the guest's.
        if rec.runtime == berth_model::VM_RUNTIME {
            return Err(Error::FailedPrecondition(format!(
                "--network container:{other}: it runs in a VM, whose network is bridged into the guest"
            )));
        }
        match rec.network.as_ref() {
            Some(a) if !a.netns.is_empty() => Ok(rec),
            a if unpinned_none(a) => match rec.state {
                State::Created | State::Running | State::Paused if rec.pid > 0 && rec.exit.is_none() => Ok(rec),
                state => Err(Error::FailedPrecondition(format!(
                    "--network container:{other}: it is {state}; its network namespace exists only while it runs"
                ))),
            },
            _ => Err(invalid(format!("--network container:{other}: it has no network namespace of berth's to join"))),
        }
    }

    /// The path of the namespace `container:ID` joins. An unpinned `none`
    /// namespace is pinned first, under the target's operation lock, and
    /// the target's record and bundle are pointed at the pin: joiners and
    /// the target's restarts then share it, and the target's removal
    /// (refused while joiners exist) releases it.
    async fn joined_netns(&self, ns: &Namespace, other: &ContainerId) -> Result<String> {
        let pinned = |rec: &ContainerRecord| rec.network.as_ref().map(|a| a.netns.clone()).filter(|n| !n.is_empty());
        if let Some(path) = pinned(&self.join_target(ns, other)?) {
            return Ok(path);
        }
        let _op = self.lock_op(ns, other).await;
        let rec = self.join_target(ns, other)?;
        if let Some(path) = pinned(&rec) {
            return Ok(path);
        }
        let key = attach_key(ns, other);
        // An unpinned container has no attachment: one found is what a pin
        // cut short by a crash left.
        self.net.networks.detach(&key).await?;
        let path = self.net.networks.pin(&key, rec.pid).await?;
        // Its init is the shim's child until recorded dead: the pid was
        // still this container's if the record still names it live.
        let live = self.join_target(ns, other).is_ok_and(|r| r.pid == rec.pid);
        let pointed = if live { self.point_at_pin(ns, other, &rec.bundle, &path) } else { Ok(()) };
        if !live || pointed.is_err() {
            let _ = self.net.networks.detach(&key).await;
            pointed?;
            return Err(Error::FailedPrecondition(format!("--network container:{other}: it stopped meanwhile")));
        }
        Ok(path)
    }

    /// Records `path` as the container's namespace, in its record and in
    /// its bundle's spec (a restart joins the pin).
    fn point_at_pin(&self, ns: &Namespace, id: &ContainerId, bundle: &Path, path: &str) -> Result<()> {
        let config = bundle.join("config.json");
        let what = |verb: &str| format!("{verb} {}", config.display());
        let point = |netns: &str| -> Result<()> {
            let mut spec = Spec::load(&config).map_err(|e| Error::io(what("read"), std::io::Error::other(e)))?;
            set_netns(&mut spec, Some(netns))?;
            spec.save(&config).map_err(|e| Error::io(what("write"), std::io::Error::other(e)))
        };
        point(path)?;
        let recorded = self.update(ns, id, |r| {
            if let Some(a) = r.network.as_mut() {
                a.netns = path.to_string();
            }
            Ok(())
        });
        if let Err(e) = recorded {
            // Back to a namespace of the runtime's, as the record says.
            let _ = point("");
            return Err(e);
        }
        Ok(())
    }

    /// The create step: attach (CNI ADD into berth's namespace), write the
    /// resolver files under the bundle, and point the spec at both. On an
    /// error nothing is left (the attachment undoes itself); once it
    /// succeeded, `detach_network` is its release.
    pub(crate) async fn attach_network(
        &self,
        plan: &Plan,
        bundle: &Path,
        spec: &mut Spec,
    ) -> Result<NetworkAttachment> {
        let attachment = match &plan.sandbox {
            Some(shared) => shared.clone(),
            None => self.attach_plan(plan).await?,
        };
        if let Err(e) = self.finish_attach(plan, &attachment, bundle, spec) {
            let _ = self.net.networks.detach(&plan.key).await;
            return Err(e);
        }
        Ok(attachment)
    }

    /// The namespace (and CNI ADD) a plan asks for.
    async fn attach_plan(&self, plan: &Plan) -> Result<NetworkAttachment> {
        let mode = plan.mode.to_string();
        Ok(match &plan.mode {
            NetworkMode::Host => NetworkAttachment { mode, ..Default::default() },
            NetworkMode::Container(other) => NetworkAttachment {
                mode,
                netns: self.joined_netns(&plan.namespace, other).await?,
                ..Default::default()
            },
            NetworkMode::None if !plan.pin => NetworkAttachment { mode, ..Default::default() },
            NetworkMode::None | NetworkMode::Network(_) => {
                let network = match &plan.mode {
                    NetworkMode::Network(n) => Some(n.as_str()),
                    _ => None,
                };
                let req = AttachRequest { key: plan.key.clone(), network, ports: &plan.ports };
                let mut a = self.net.networks.attach(req).await?;
                a.mode = mode;
                a
            }
        })
    }

    /// A sandbox's network: its own namespace (and CNI ADD), no files (each
    /// container writes its resolver files in its bundle).
    pub(crate) async fn attach_sandbox_network(&self, plan: &Plan) -> Result<NetworkAttachment> {
        self.attach_plan(plan).await
    }

    /// Releases a sandbox's attachment (idempotent).
    pub(crate) async fn detach_sandbox_network(&self, ns: &Namespace, id: &SandboxId) -> Result<()> {
        Ok(self.net.networks.detach(&sandbox_key(ns, id)).await?)
    }

    fn finish_attach(&self, plan: &Plan, a: &NetworkAttachment, bundle: &Path, spec: &mut Spec) -> Result<()> {
        let hostname = spec.hostname().clone().unwrap_or_else(|| plan.hostname.clone());
        let new_netns = unpinned_none(Some(a));
        // Host mode, or a sandbox in host mode: no namespace of berth's.
        let host_network = a.netns.is_empty() && !new_netns;
        let o =
            DnsOptions { hostname: &hostname, dns: &plan.dns, add_hosts: &plan.add_hosts, ips: &a.ips, host_network };
        let files = berth_network::write_etc_files(bundle, &o)?;
        set_netns(spec, (!host_network).then_some(a.netns.as_str()))?;
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for (source, target) in [&files.hosts, &files.resolv, &files.hostname].into_iter().zip(RESOLVER_FILES) {
            mounts.push(etc_mount(source, target));
        }
        spec.set_mounts(Some(mounts));
        Ok(())
    }

    /// Releases a container's attachment: CNI DEL and its namespace.
    /// Idempotent; nothing to do for host and container:ID modes.
    pub(crate) async fn detach_network(&self, ns: &Namespace, id: &ContainerId) -> Result<()> {
        Ok(self.net.networks.detach(&attach_key(ns, id)).await?)
    }

    /// CNI CHECK of the container's attachment (on demand: `berth network
    /// check`); only a container attached to a CNI network has one.
    pub async fn check_network(&self, ns: &Namespace, id: &ContainerId) -> Result<()> {
        let rec = self.get(ns, id)?;
        let mode = rec.network.as_ref().map(|a| NetworkMode::parse(&a.mode)).transpose()?;
        if !matches!(mode, Some(NetworkMode::Network(_))) {
            let how = rec.network.map(|a| format!("--network {}", a.mode)).unwrap_or_else(|| "a bundle".into());
            return Err(Error::FailedPrecondition(format!("container {id} has no CNI network to check ({how})")));
        }
        Ok(self.net.networks.check(&attach_key(ns, id)).await?)
    }

    /// Containers that joined `rec`'s namespace (`--network container:ID`):
    /// it cannot go while they exist. Only a namespace berth pinned can
    /// have joiners: the first join pins it and records the pin under the
    /// container's operation lock, before the joiner's record exists
    /// (`joined_netns`). So a record without a pin, read under that lock,
    /// needs no look through the other records.
    pub(crate) fn check_no_joiners(&self, rec: &ContainerRecord) -> Result<()> {
        if rec.network.as_ref().is_none_or(|a| a.netns.is_empty()) {
            return Ok(());
        }
        let (ns, id) = (&rec.namespace, &rec.id);
        let mode = NetworkMode::Container(id.clone()).to_string();
        let joiners: Vec<String> = self
            .store
            .list_mentioning(ns, &mode)?
            .into_iter()
            .filter(|r| r.network.as_ref().is_some_and(|a| a.mode == mode))
            .map(|r| r.id.to_string())
            .collect();
        if joiners.is_empty() {
            return Ok(());
        }
        Err(Error::FailedPrecondition(format!(
            "container {id} shares its network namespace with {}: remove them first",
            joiners.join(", ")
        )))
    }

    /// At startup, after interrupted creates are released: attachments no
    /// container record owns (a berthd killed between ADD and the record).
    pub(crate) async fn release_orphan_attachments(&self) -> Result<()> {
        for key in self.orphan_attachments()? {
            let (ns, id) = (&key.namespace, &key.id);
            tracing::warn!(%ns, %id, "releasing a network attachment no container owns");
            self.net.networks.detach(&key).await?;
        }
        Ok(())
    }

    /// Attachments no container or sandbox record owns.
    pub(crate) fn orphan_attachments(&self) -> Result<Vec<berth_network::AttachKey>> {
        let mut orphans = Vec::new();
        for key in self.net.networks.attached()? {
            let Ok(ns) = Namespace::new(&key.namespace) else { continue };
            let owned = match key.id.strip_prefix("sandbox:").map(SandboxId::new) {
                Some(Ok(sandbox)) => self.store.get_sandbox(&ns, &sandbox)?.is_some(),
                Some(Err(_)) => continue,
                None => match ContainerId::new(&key.id) {
                    Ok(id) => self.store.get(&ns, &id)?.is_some(),
                    Err(_) => continue,
                },
            };
            if !owned {
                orphans.push(key);
            }
        }
        Ok(orphans)
    }

    /// Containers (namespace/id) and sandboxes (namespace/sandbox:id)
    /// attached to the network `name`.
    pub(crate) fn network_users(&self, name: &str) -> Result<Vec<String>> {
        let uses = |a: &Option<NetworkAttachment>| a.as_ref().is_some_and(|a| a.mode == name);
        let containers = self.store.list(None)?.into_iter().filter(|r| uses(&r.network));
        let mut users: Vec<String> = containers.map(|r| format!("{}/{}", r.namespace, r.id)).collect();
        let sandboxes = self.store.list_sandboxes(None)?.into_iter().filter(|r| uses(&r.network));
        users.extend(sandboxes.map(|r| format!("{}/sandbox:{}", r.namespace, r.id)));
        Ok(users)
    }

    pub async fn network_remove(&self, name: &str) -> Result<()> {
        let users = self.network_users(name)?;
        if !users.is_empty() {
            return Err(Error::FailedPrecondition(format!("network {name} is in use by {}", users.join(", "))));
        }
        Ok(self.net.networks.remove(name).await?)
    }
}
