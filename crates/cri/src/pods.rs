//! Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox,
//! PodSandboxStatus and ListPodSandbox over berth sandboxes (one shim and
//! one network namespace per pod, held without a pause process).

use berth_api::v1 as pb;
use pb::containers_server::Containers;
use pb::sandboxes_server::Sandboxes;
use tonic::Status;

use crate::meta::{self, POD_LABEL, PodMeta};
use crate::{Backend, Cri, NAMESPACE, cri, gone_ok, invalid, ns_i64, req, resolve_id, selected};

/// A berth sandbox made through CRI, with what CRI knows of it.
pub(crate) struct Pod {
    pub sb: pb::Sandbox,
    pub meta: PodMeta,
}

impl Pod {
    fn from_sandbox(sb: pb::Sandbox) -> Option<Pod> {
        let meta = meta::read(&sb.labels, POD_LABEL)?;
        Some(Pod { sb, meta })
    }

    pub fn state(&self) -> cri::PodSandboxState {
        if self.sb.state == "ready" {
            cri::PodSandboxState::SandboxReady
        } else {
            cri::PodSandboxState::SandboxNotready
        }
    }

    fn name_key(&self) -> String {
        name_key(&self.meta.metadata)
    }

    fn summary(self) -> cri::PodSandbox {
        let state = self.state() as i32;
        cri::PodSandbox {
            id: self.sb.id,
            metadata: Some(self.meta.metadata),
            state,
            created_at: ns_i64(self.sb.created_at_ns),
            labels: self.meta.labels,
            annotations: self.meta.annotations,
            runtime_handler: self.meta.runtime_handler,
        }
    }
}

/// A pod's name as CRI makes it unique: name, namespace, uid and attempt.
fn name_key(m: &cri::PodSandboxMetadata) -> String {
    format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

/// berth's runtime for a CRI runtime handler (RuntimeClass).
fn runtime(handler: &str) -> Result<String, Status> {
    match handler {
        "" | "embedded" | "runc" | "crun" | berth_model::VM_RUNTIME => Ok(handler.to_string()),
        other => Err(invalid(format!("unknown runtime handler {other:?} (berth has embedded, runc, crun and vm)"))),
    }
}

/// `publish` entries of berth for CRI port mappings (those with a host port).
fn publish(mappings: &[cri::PortMapping]) -> Result<Vec<String>, Status> {
    let mut out = Vec::new();
    for m in mappings.iter().filter(|m| m.host_port > 0) {
        let proto = match cri::Protocol::try_from(m.protocol) {
            Ok(cri::Protocol::Tcp) => "tcp",
            Ok(cri::Protocol::Udp) => "udp",
            _ => return Err(invalid(format!("port {}: berth publishes tcp and udp ports only", m.container_port))),
        };
        let host = if m.host_ip.is_empty() { String::new() } else { format!("{}:", m.host_ip) };
        out.push(format!("{host}{}:{}/{proto}", m.host_port, m.container_port));
    }
    Ok(out)
}

/// Namespace modes when a client gives none (crictl's minimal configs):
/// kubelet's defaults — the pod's network and IPC, a PID namespace per
/// container.
fn default_namespaces() -> cri::NamespaceOption {
    use cri::NamespaceMode as M;
    cri::NamespaceOption { network: M::Pod as i32, pid: M::Container as i32, ipc: M::Pod as i32, ..Default::default() }
}

/// The pod's network for berth: the host's, or the configured network.
fn network(cfg: &crate::Config, opts: &cri::NamespaceOption) -> String {
    if opts.network == cri::NamespaceMode::Node as i32 { "host".to_string() } else { cfg.network.clone() }
}

/// berth's sandbox namespace mode for a CRI PID or IPC mode.
pub(crate) fn share(mode: i32, what: &str) -> Result<&'static str, Status> {
    use cri::NamespaceMode as M;
    match M::try_from(mode) {
        Ok(M::Pod) => Ok("pod"),
        Ok(M::Container) => Ok("container"),
        Ok(M::Node) => Ok("host"),
        Ok(M::Target) => Err(invalid(format!("a pod's {what} namespace cannot be another container's (TARGET)"))),
        Err(_) => Err(invalid(format!("unknown {what} namespace mode {mode}"))),
    }
}

impl<B: Backend> Cri<B> {
    /// Every pod (berth sandboxes of the CRI namespace made through CRI).
    pub(crate) async fn pods(&self) -> Result<Vec<Pod>, Status> {
        let list = Sandboxes::list(&*self.b, req(pb::SandboxListRequest { namespace: NAMESPACE.into() })).await?;
        Ok(list.into_inner().sandboxes.into_iter().filter_map(Pod::from_sandbox).collect())
    }

    /// The pod `id` names, exactly or by a unique prefix.
    pub(crate) async fn pod(&self, id: &str) -> Result<Pod, Status> {
        let sref = pb::SandboxRef { namespace: NAMESPACE.into(), id: id.to_string() };
        match Sandboxes::get(&*self.b, req(sref)).await {
            Ok(sb) => return Pod::from_sandbox(sb.into_inner()).ok_or_else(|| not_found(id)),
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument) => {}
            Err(s) => return Err(s),
        }
        let pods = self.pods().await?;
        let id = resolve_id(id, pods.iter().map(|p| p.sb.id.as_str()))?;
        pods.into_iter().find(|p| p.sb.id == id).ok_or_else(|| not_found(&id))
    }

    pub(crate) async fn run_pod_sandbox(
        &self,
        r: cri::RunPodSandboxRequest,
    ) -> Result<cri::RunPodSandboxResponse, Status> {
        let config = r.config.ok_or_else(|| invalid("config is required"))?;
        let metadata = config.metadata.clone().ok_or_else(|| invalid("config.metadata is required"))?;
        if metadata.name.is_empty() || metadata.namespace.is_empty() || metadata.uid.is_empty() {
            return Err(invalid("config.metadata needs a name, a namespace and a uid"));
        }
        let linux = config.linux.clone().unwrap_or_default();
        let opts = linux.security_context.and_then(|s| s.namespace_options).unwrap_or_else(default_namespaces);
        let network = network(&self.cfg, &opts);
        let (pid, ipc) = (share(opts.pid, "PID")?, share(opts.ipc, "IPC")?);
        if network == "host" && linux.sysctls.keys().any(|k| k.starts_with("net.")) {
            return Err(invalid(
                "net.* sysctls would change the host's network: refused for a pod on the host network",
            ));
        }
        if let Some(dns) = &config.dns_config {
            let resolver = berth_network::Resolver {
                servers: dns.servers.clone(),
                search: dns.searches.clone(),
                options: dns.options.clone(),
            };
            berth_network::check_dns_options(&resolver, &[]).map_err(|e| invalid(format!("dns_config: {e}")))?;
        }
        if !linux.cgroup_parent.is_empty() && !linux.cgroup_parent.starts_with('/') {
            return Err(invalid(format!(
                "cgroup_parent {:?} is not a cgroupfs path: berth's cgroup driver is cgroupfs (kubelet's cgroupDriver must be cgroupfs)",
                linux.cgroup_parent.chars().take(80).collect::<String>()
            )));
        }
        let runtime = runtime(&r.runtime_handler)?;
        let publish = publish(&config.port_mappings)?;
        let key = name_key(&metadata);
        let _reserved = self.reserve(key.clone())?;
        if self.pods().await?.iter().any(|p| p.name_key() == key) {
            return Err(Status::already_exists(format!("a pod named {key} exists")));
        }
        let pod = PodMeta {
            metadata,
            labels: config.labels,
            annotations: config.annotations,
            runtime_handler: r.runtime_handler,
            log_directory: config.log_directory,
            hostname: config.hostname,
            dns: config.dns_config,
            sysctls: linux.sysctls,
            namespace_options: Some(opts),
            cgroup_parent: linux.cgroup_parent,
        };
        let labels = [meta::label(POD_LABEL, &pod)?].into_iter().collect();
        let create = pb::SandboxCreateRequest {
            namespace: NAMESPACE.into(),
            id: String::new(),
            runtime,
            labels,
            network,
            publish,
            pid: pid.into(),
            ipc: ipc.into(),
            ..Default::default()
        };
        let sb = Sandboxes::create(&*self.b, req(create)).await?.into_inner();
        Ok(cri::RunPodSandboxResponse { pod_sandbox_id: sb.id })
    }

    /// Kills the pod's containers at once (kubelet has already stopped them
    /// gracefully), releases its shim and network, keeps its records.
    pub(crate) async fn stop_pod_sandbox(&self, id: &str) -> Result<(), Status> {
        let pod = match self.pod(id).await {
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
            r => r?,
        };
        let stop = pb::SandboxStopRequest { namespace: NAMESPACE.into(), id: pod.sb.id, timeout_s: 0 };
        gone_ok(Sandboxes::stop(&*self.b, req(stop)).await.map(drop))
    }

    /// Removes the pod's containers (killed if they run), then the pod.
    pub(crate) async fn remove_pod_sandbox(&self, id: &str) -> Result<(), Status> {
        let pod = match self.pod(id).await {
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
            r => r?,
        };
        for cid in &pod.sb.containers {
            let del = pb::DeleteRequest { namespace: NAMESPACE.into(), id: cid.clone(), force: true };
            gone_ok(Containers::delete(&*self.b, req(del)).await.map(drop))?;
        }
        let sref = pb::SandboxRef { namespace: NAMESPACE.into(), id: pod.sb.id };
        gone_ok(Sandboxes::remove(&*self.b, req(sref)).await.map(drop))
    }

    pub(crate) async fn pod_sandbox_status(
        &self,
        r: cri::PodSandboxStatusRequest,
    ) -> Result<cri::PodSandboxStatusResponse, Status> {
        let pod = self.pod(&r.pod_sandbox_id).await?;
        let mut info = std::collections::HashMap::new();
        if r.verbose {
            let sandbox = serde_json::json!({
                "runtime": pod.sb.runtime,
                "state": pod.sb.state,
                "shim_pid": pod.sb.shim_pid,
                "containers": pod.sb.containers,
                "network": pod.sb.network.as_ref().map(|n| serde_json::json!({
                    "mode": n.mode, "netns": n.netns, "interface": n.interface, "ips": n.ips,
                    "gateway": n.gateway, "mac": n.mac, "ports": n.ports,
                })),
            });
            info.insert("info".to_string(), sandbox.to_string());
        }
        let ips: Vec<String> = pod
            .sb
            .network
            .as_ref()
            .map(|n| n.ips.iter().map(|ip| ip.split('/').next().unwrap_or(ip).to_string()).collect())
            .unwrap_or_default();
        let network = ips.split_first().map(|(first, rest)| cri::PodSandboxNetworkStatus {
            ip: first.clone(),
            additional_ips: rest.iter().map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
        });
        let linux = cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace { options: pod.meta.namespace_options.clone() }),
        };
        let state = pod.state() as i32;
        let status = cri::PodSandboxStatus {
            id: pod.sb.id,
            metadata: Some(pod.meta.metadata),
            state,
            created_at: ns_i64(pod.sb.created_at_ns),
            network,
            linux: Some(linux),
            labels: pod.meta.labels,
            annotations: pod.meta.annotations,
            runtime_handler: pod.meta.runtime_handler,
        };
        Ok(cri::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses: Vec::new(),
            timestamp: ns_i64(berth_model::now_ns()),
        })
    }

    /// A pod's status and its containers' (for container events); nothing
    /// for a pod that is gone.
    pub(crate) async fn pod_statuses(&self, pod: &str) -> (Option<cri::PodSandboxStatus>, Vec<cri::ContainerStatus>) {
        let req = cri::PodSandboxStatusRequest { pod_sandbox_id: pod.to_string(), verbose: false };
        let Ok(status) = self.pod_sandbox_status(req).await else { return (None, Vec::new()) };
        // One listing of containers and of images for all of them.
        let images = self.image_refs().await.unwrap_or_default();
        let containers = self.ctrs().await.unwrap_or_default().into_iter().filter(|c| c.c.sandbox == pod);
        let statuses = containers.map(|c| c.status(images.get(&c.c.image).cloned().unwrap_or_default())).collect();
        (status.status, statuses)
    }

    pub(crate) async fn list_pod_sandbox(
        &self,
        r: cri::ListPodSandboxRequest,
    ) -> Result<cri::ListPodSandboxResponse, Status> {
        let filter = r.filter.unwrap_or_default();
        let items = self
            .pods()
            .await?
            .into_iter()
            .filter(|p| filter.id.is_empty() || p.sb.id.starts_with(&filter.id))
            .filter(|p| filter.state.as_ref().is_none_or(|s| s.state == p.state() as i32))
            .filter(|p| selected(&p.meta.labels, &filter.label_selector))
            .map(Pod::summary)
            .collect();
        Ok(cri::ListPodSandboxResponse { items })
    }
}

fn not_found(id: &str) -> Status {
    Status::not_found(format!("pod sandbox {id} not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_become_published_ports() {
        let m = |proto: cri::Protocol, host_ip: &str, host, ctr| cri::PortMapping {
            protocol: proto as i32,
            container_port: ctr,
            host_port: host,
            host_ip: host_ip.into(),
        };
        let got = publish(&[
            m(cri::Protocol::Tcp, "", 8080, 80),
            m(cri::Protocol::Udp, "127.0.0.1", 5353, 53),
            // No host port: nothing to publish.
            m(cri::Protocol::Tcp, "", 0, 9000),
        ])
        .unwrap();
        assert_eq!(got, ["8080:80/tcp", "127.0.0.1:5353:53/udp"]);
        let e = publish(&[m(cri::Protocol::Sctp, "", 1, 1)]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn namespace_modes_map_or_are_refused() {
        use cri::NamespaceMode as M;
        let cfg = crate::Config { network: "berth".into(), ..Default::default() };
        let opts = |network: M| cri::NamespaceOption { network: network as i32, ..Default::default() };
        assert_eq!(network(&cfg, &opts(M::Pod)), "berth");
        assert_eq!(network(&cfg, &default_namespaces()), "berth");
        assert_eq!(network(&cfg, &opts(M::Node)), "host");
        assert_eq!(
            [M::Pod, M::Container, M::Node].map(|m| share(m as i32, "PID").unwrap()),
            ["pod", "container", "host"]
        );
        for refused in [M::Target as i32, 17] {
            assert_eq!(share(refused, "PID").unwrap_err().code(), tonic::Code::InvalidArgument);
        }
        assert_eq!(runtime("runc").unwrap(), "runc");
        assert_eq!(runtime("kata").unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
