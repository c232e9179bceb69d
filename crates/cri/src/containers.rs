//! Containers: CreateContainer (image config and CRI overrides), Start,
//! Stop, Remove, List, ContainerStatus and UpdateContainerResources over
//! berth containers placed in their pod's sandbox.

use berth_api::v1 as pb;
use pb::containers_server::Containers;
use tonic::Status;

use crate::meta::{self, CONTAINER_LABEL, ContainerMeta, PodMeta};
use crate::{Backend, Cri, NAMESPACE, cri, gone_ok, invalid, ns_i64, req, resolve_id, selected};

/// A berth container made through CRI, with what CRI knows of it.
pub(crate) struct Ctr {
    pub c: pb::Container,
    pub meta: ContainerMeta,
}

impl Ctr {
    fn from_container(c: pb::Container) -> Option<Ctr> {
        let meta = meta::read(&c.labels, CONTAINER_LABEL)?;
        Some(Ctr { c, meta })
    }

    pub fn state(&self) -> cri::ContainerState {
        match self.c.state.as_str() {
            "created" => cri::ContainerState::ContainerCreated,
            "running" | "paused" => cri::ContainerState::ContainerRunning,
            "stopped" => cri::ContainerState::ContainerExited,
            _ => cri::ContainerState::ContainerUnknown,
        }
    }

    /// CRI's status of the container (`image_ref`: its image's id).
    pub fn status(&self, image_ref: String) -> cri::ContainerStatus {
        let c = &self.c;
        cri::ContainerStatus {
            id: c.id.clone(),
            metadata: Some(self.meta.metadata.clone()),
            state: self.state() as i32,
            created_at: ns_i64(c.created_at_ns),
            started_at: ns_i64(c.started_at_ns),
            finished_at: c.exit.as_ref().map_or(0, |e| ns_i64(e.exited_at_ns)),
            exit_code: c.exit.as_ref().map_or(0, |e| e.code as i32),
            image: Some(self.meta.image.clone()),
            image_ref: image_ref.clone(),
            reason: reason(c).to_string(),
            message: String::new(),
            labels: self.meta.labels.clone(),
            annotations: self.meta.annotations.clone(),
            mounts: self.meta.mounts.clone(),
            log_path: self.meta.log_path.clone(),
            resources: None,
            image_id: image_ref,
            user: None,
        }
    }

    fn summary(self, image_ref: String) -> cri::Container {
        let state = self.state() as i32;
        cri::Container {
            id: self.c.id,
            pod_sandbox_id: self.c.sandbox,
            metadata: Some(self.meta.metadata),
            image: Some(self.meta.image),
            image_ref: image_ref.clone(),
            state,
            created_at: ns_i64(self.c.created_at_ns),
            labels: self.meta.labels,
            annotations: self.meta.annotations,
            image_id: image_ref,
        }
    }
}

/// Why a container exited, as kubelet words it.
fn reason(c: &pb::Container) -> &'static str {
    match &c.exit {
        None => "",
        Some(_) if c.oom_killed => "OOMKilled",
        Some(e) if e.code == 0 => "Completed",
        Some(_) => "Error",
    }
}

/// berth's limits for CRI's (zero or empty: not set).
pub(crate) fn limits(r: &cri::LinuxContainerResources) -> pb::ResourceLimits {
    let positive = |v: i64| (v > 0).then_some(v);
    pb::ResourceLimits {
        memory: positive(r.memory_limit_in_bytes),
        memory_swap: positive(r.memory_swap_limit_in_bytes),
        cpu_shares: positive(r.cpu_shares).map(|v| v as u64),
        cpu_quota: positive(r.cpu_quota),
        cpu_period: positive(r.cpu_period).map(|v| v as u64),
        cpuset_cpus: (!r.cpuset_cpus.is_empty()).then(|| r.cpuset_cpus.clone()),
        pids: None,
    }
}

/// A berth mount (`HOST:CTR[:ro]`) for a CRI mount.
fn volume(m: &cri::Mount) -> Result<String, Status> {
    for path in [&m.host_path, &m.container_path] {
        if !path.starts_with('/') || path.contains(':') {
            return Err(invalid(format!("mount path {path:?} must be absolute and hold no ':'")));
        }
    }
    let mode = if m.readonly { "ro" } else { "rw" };
    let propagation = match cri::MountPropagation::try_from(m.propagation) {
        Ok(cri::MountPropagation::PropagationPrivate) => "rprivate",
        Ok(cri::MountPropagation::PropagationHostToContainer) => "rslave",
        Ok(cri::MountPropagation::PropagationBidirectional) => "rshared",
        Err(_) => return Err(invalid(format!("unknown mount propagation {}", m.propagation))),
    };
    Ok(format!("{}:{}:{mode},{propagation}", m.host_path, m.container_path))
}

/// The AppArmor profile for berth: a `Localhost` profile's name; none for
/// `RuntimeDefault` (berth ships no AppArmor profile) and `Unconfined`.
/// SELinux options are not applied (berth labels nothing).
fn apparmor(sc: &cri::LinuxContainerSecurityContext) -> Result<String, Status> {
    use cri::security_profile::ProfileType;
    let Some(p) = &sc.apparmor else { return Ok(String::new()) };
    match ProfileType::try_from(p.profile_type) {
        Ok(ProfileType::Localhost) => Ok(p.localhost_ref.clone()),
        Ok(_) => Ok(String::new()),
        Err(_) => Err(invalid(format!("unknown AppArmor profile type {}", p.profile_type))),
    }
}

/// The process user for berth: `USER[:GROUP]` from CRI's security context.
fn user(sc: &cri::LinuxContainerSecurityContext) -> String {
    let group = sc.run_as_group.as_ref().map(|g| format!(":{}", g.value)).unwrap_or_default();
    match (&sc.run_as_user, sc.run_as_username.as_str()) {
        (Some(uid), _) => format!("{}{group}", uid.value),
        (None, name) if !name.is_empty() => format!("{name}{group}"),
        // A group alone applies to the image's user.
        _ => String::new(),
    }
}

/// Supplementary group ids as berth takes them (32-bit, not negative).
fn groups(gids: &[i64]) -> Result<Vec<u32>, Status> {
    gids.iter()
        .map(|g| u32::try_from(*g).map_err(|_| invalid(format!("supplemental group {g} is out of range"))))
        .collect()
}

/// berth's seccomp setting for CRI's profile (unset: the runtime default).
fn seccomp(profile: Option<&cri::SecurityProfile>) -> Result<String, Status> {
    use cri::security_profile::ProfileType;
    let Some(p) = profile else { return Ok(String::new()) };
    match ProfileType::try_from(p.profile_type) {
        Ok(ProfileType::RuntimeDefault) => Ok(String::new()),
        Ok(ProfileType::Unconfined) => Ok("unconfined".into()),
        Ok(ProfileType::Localhost) => std::fs::read_to_string(&p.localhost_ref)
            .map_err(|e| invalid(format!("seccomp profile {}: {e}", p.localhost_ref))),
        Err(_) => Err(invalid(format!("unknown seccomp profile type {}", p.profile_type))),
    }
}

/// The berth create request for a CRI container of `pod` (id `id`).
fn create_request(
    id: String,
    sandbox: String,
    pod: &PodMeta,
    image: String,
    config: cri::ContainerConfig,
) -> Result<pb::CreateRequest, Status> {
    let linux = config.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    let mut args = config.args.clone();
    let entrypoint = match config.command.split_first() {
        Some((first, rest)) => {
            args = rest.iter().chain(&config.args).cloned().collect();
            Some(first.clone())
        }
        None => None,
    };
    let log_path: String = match (pod.log_directory.as_str(), config.log_path.as_str()) {
        (_, "") => String::new(),
        ("", file) => file.to_string(),
        (dir, file) => std::path::Path::new(dir).join(file).to_string_lossy().into_owned(),
    };
    let meta = ContainerMeta {
        metadata: config.metadata.clone().unwrap_or_default(),
        labels: config.labels.clone(),
        annotations: config.annotations.clone(),
        image: config.image.clone().unwrap_or_default(),
        log_path: log_path.clone(),
        mounts: config.mounts.clone(),
        stdin_once: config.stdin_once,
    };
    Ok(pb::CreateRequest {
        namespace: NAMESPACE.into(),
        id,
        image,
        entrypoint,
        args,
        env: config.envs.iter().map(|kv| format!("{}={}", kv.key, kv.value)).collect(),
        cwd: config.working_dir.clone(),
        labels: [meta::label(CONTAINER_LABEL, &meta)?].into_iter().collect(),
        resources: linux.resources.as_ref().map(limits),
        tty: config.tty,
        stdin: config.stdin,
        privileged: sc.privileged,
        cap_add: caps.add_capabilities,
        cap_drop: caps.drop_capabilities,
        devices: config
            .devices
            .iter()
            .map(|d| format!("{}:{}:{}", d.host_path, d.container_path, d.permissions))
            .collect(),
        seccomp: seccomp(sc.seccomp.as_ref())?,
        masked_paths: sc.masked_paths.clone(),
        readonly_paths: sc.readonly_paths.clone(),
        apparmor_profile: apparmor(&sc)?,
        no_new_privileges: sc.no_new_privs,
        volumes: config.mounts.iter().map(volume).collect::<Result<_, _>>()?,
        read_only: sc.readonly_rootfs,
        hostname: pod.hostname.clone(),
        user: user(&sc),
        dns: pod.dns.as_ref().map(|d| d.servers.clone()).unwrap_or_default(),
        dns_search: pod.dns.as_ref().map(|d| d.searches.clone()).unwrap_or_default(),
        dns_options: pod.dns.as_ref().map(|d| d.options.clone()).unwrap_or_default(),
        sandbox,
        log_path,
        groups: groups(&sc.supplemental_groups)?,
        sysctls: pod.sysctls.clone(),
        cgroup_parent: pod.cgroup_parent.clone(),
        unified: linux.resources.as_ref().map(|r| r.unified.clone().into_iter().collect()).unwrap_or_default(),
        hugepage_limits: linux
            .resources
            .iter()
            .flat_map(|r| &r.hugepage_limits)
            .map(|h| (h.page_size.clone(), h.limit))
            .collect(),
        oom_score_adj: linux.resources.as_ref().map(|r| i32::try_from(r.oom_score_adj).unwrap_or(i32::MAX)),
        ..Default::default()
    })
}

impl<B: Backend> Cri<B> {
    /// Every container made through CRI.
    pub(crate) async fn ctrs(&self) -> Result<Vec<Ctr>, Status> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let list = pb::ListRequest { namespace: NAMESPACE.into(), page_token, ..Default::default() };
            let page = Containers::list(&*self.b, req(list)).await?.into_inner();
            out.extend(page.containers.into_iter().filter_map(Ctr::from_container));
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            page_token = page.next_page_token;
        }
    }

    /// The container `id` names, exactly or by a unique prefix.
    pub(crate) async fn ctr(&self, id: &str) -> Result<Ctr, Status> {
        let cref = pb::ContainerRef { namespace: NAMESPACE.into(), id: id.to_string() };
        match Containers::get(&*self.b, req(cref)).await {
            Ok(c) => return Ctr::from_container(c.into_inner()).ok_or_else(|| not_found(id)),
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument) => {}
            Err(s) => return Err(s),
        }
        let all = self.ctrs().await?;
        let id = resolve_id(id, all.iter().map(|c| c.c.id.as_str()))?;
        all.into_iter().find(|c| c.c.id == id).ok_or_else(|| not_found(&id))
    }

    pub(crate) async fn create_container(
        &self,
        r: cri::CreateContainerRequest,
    ) -> Result<cri::CreateContainerResponse, Status> {
        let config = r.config.ok_or_else(|| invalid("config is required"))?;
        let metadata = config.metadata.clone().ok_or_else(|| invalid("config.metadata is required"))?;
        if metadata.name.is_empty() {
            return Err(invalid("config.metadata.name is required"));
        }
        let spec = config.image.clone().ok_or_else(|| invalid("config.image is required"))?;
        let pod = self.pod(&r.pod_sandbox_id).await?;
        if pod.state() != cri::PodSandboxState::SandboxReady {
            return Err(Status::failed_precondition(format!("pod sandbox {} is not ready", pod.sb.id)));
        }
        let image = self.resolve_image(&spec.image).await?.ok_or_else(|| {
            Status::not_found(format!("image {:?} is not present: pull it first (PullImage)", spec.image))
        })?;
        let key = format!("{}_{}_{}", pod.sb.id, metadata.name, metadata.attempt);
        let _reserved = self.reserve(key.clone())?;
        let taken = self.ctrs().await?.into_iter().any(|c| {
            c.c.sandbox == pod.sb.id
                && c.meta.metadata.name == metadata.name
                && c.meta.metadata.attempt == metadata.attempt
        });
        if taken {
            return Err(Status::already_exists(format!("container {key} exists")));
        }
        let id = berth_model::random_hex(16).map_err(|e| Status::internal(format!("read /dev/urandom: {e}")))?;
        let create = create_request(id, pod.sb.id.clone(), &pod.meta, image.name, config)?;
        let c = Containers::create(&*self.b, req(create)).await?.into_inner();
        Ok(cri::CreateContainerResponse { container_id: c.id })
    }

    pub(crate) async fn start_container(&self, id: &str) -> Result<(), Status> {
        let c = self.ctr(id).await?;
        let cref = pb::ContainerRef { namespace: NAMESPACE.into(), id: c.c.id };
        Containers::start(&*self.b, req(cref)).await.map(drop)
    }

    /// The stop signal, then SIGKILL after `timeout` seconds; a container
    /// that has exited already is fine.
    pub(crate) async fn stop_container(&self, id: &str, timeout: i64) -> Result<(), Status> {
        let c = self.ctr(id).await?;
        if c.state() == cri::ContainerState::ContainerExited {
            return Ok(());
        }
        let timeout_seconds = Some(u32::try_from(timeout.max(0)).unwrap_or(u32::MAX));
        let stop = pb::StopRequest { namespace: NAMESPACE.into(), id: c.c.id, timeout_seconds };
        Containers::stop(&*self.b, req(stop)).await.map(drop)
    }

    /// Removes the container, killing it if it runs; one already gone is fine.
    pub(crate) async fn remove_container(&self, id: &str) -> Result<(), Status> {
        let c = match self.ctr(id).await {
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
            r => r?,
        };
        let del = pb::DeleteRequest { namespace: NAMESPACE.into(), id: c.c.id, force: true };
        gone_ok(Containers::delete(&*self.b, req(del)).await.map(drop))
    }

    pub(crate) async fn list_containers(
        &self,
        r: cri::ListContainersRequest,
    ) -> Result<cri::ListContainersResponse, Status> {
        let filter = r.filter.unwrap_or_default();
        let images = self.image_refs().await?;
        let containers = self
            .ctrs()
            .await?
            .into_iter()
            .filter(|c| filter.id.is_empty() || c.c.id.starts_with(&filter.id))
            .filter(|c| filter.pod_sandbox_id.is_empty() || c.c.sandbox.starts_with(&filter.pod_sandbox_id))
            .filter(|c| filter.state.as_ref().is_none_or(|s| s.state == c.state() as i32))
            .filter(|c| selected(&c.meta.labels, &filter.label_selector))
            .map(|c| {
                let image_ref = images.get(&c.c.image).cloned().unwrap_or_default();
                c.summary(image_ref)
            })
            .collect();
        Ok(cri::ListContainersResponse { containers })
    }

    pub(crate) async fn container_status(
        &self,
        r: cri::ContainerStatusRequest,
    ) -> Result<cri::ContainerStatusResponse, Status> {
        let ctr = self.ctr(&r.container_id).await?;
        let image_ref = self.image_refs().await?.get(&ctr.c.image).cloned().unwrap_or_default();
        let mut info = std::collections::HashMap::new();
        if r.verbose {
            let verbose = serde_json::json!({
                "pid": ctr.c.pid,
                "shim_pid": ctr.c.shim_pid,
                "runtime": ctr.c.runtime,
                "bundle": ctr.c.bundle,
                "rootfs": ctr.c.rootfs,
                "cgroup": ctr.c.cgroup,
                "command": ctr.c.command,
                "image": ctr.c.image,
                "state": ctr.c.state,
            });
            info.insert("info".to_string(), verbose.to_string());
        }
        Ok(cri::ContainerStatusResponse { status: Some(ctr.status(image_ref)), info })
    }

    /// Kubelet has renamed the log file to rotate it: a new one is made at
    /// the path, and the container's shim moves to it at its next line.
    pub(crate) async fn reopen_container_log(&self, id: &str) -> Result<(), Status> {
        use std::os::unix::fs::OpenOptionsExt;
        let c = self.ctr(id).await?;
        if c.state() != cri::ContainerState::ContainerRunning {
            return Err(Status::failed_precondition(format!("container {} is not running", c.c.id)));
        }
        if c.meta.log_path.is_empty() {
            return Err(Status::failed_precondition(format!("container {} has no log path", c.c.id)));
        }
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&c.meta.log_path)
            .map(drop)
            .map_err(|e| Status::internal(format!("reopen {}: {e}", c.meta.log_path)))
    }

    pub(crate) async fn update_container_resources(
        &self,
        r: cri::UpdateContainerResourcesRequest,
    ) -> Result<(), Status> {
        let c = self.ctr(&r.container_id).await?;
        let resources = r.linux.as_ref().map(limits);
        let update = pb::UpdateRequest { namespace: NAMESPACE.into(), id: c.c.id, resources };
        Containers::update(&*self.b, req(update)).await.map(drop)
    }
}

fn not_found(id: &str) -> Status {
    Status::not_found(format!("container {id} not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: "web".into(), attempt: 1 }),
            image: Some(cri::ImageSpec { image: "busybox".into(), ..Default::default() }),
            log_path: "web/1.log".into(),
            ..Default::default()
        }
    }

    #[test]
    fn command_replaces_the_entrypoint_and_args_the_cmd() {
        let pod = PodMeta { log_directory: "/var/log/pods/x".into(), hostname: "pod".into(), ..Default::default() };
        let mut c = config();
        c.command = vec!["/bin/sh".into(), "-c".into()];
        c.args = vec!["echo hi".into()];
        let r = create_request("id".into(), "sb".into(), &pod, "img".into(), c).unwrap();
        assert_eq!(r.entrypoint.as_deref(), Some("/bin/sh"));
        assert_eq!(r.args, ["-c", "echo hi"]);
        assert_eq!(r.hostname, "pod");
        assert_eq!(r.sandbox, "sb");
        let meta: ContainerMeta = meta::read(&r.labels.into_iter().collect(), CONTAINER_LABEL).unwrap();
        assert_eq!(meta.log_path, "/var/log/pods/x/web/1.log");
        // Args alone replace the image's cmd and keep its entrypoint.
        let mut c = config();
        c.args = vec!["a".into()];
        let r = create_request("id".into(), "sb".into(), &pod, "img".into(), c).unwrap();
        assert_eq!((r.entrypoint, r.args), (None, vec!["a".to_string()]));
    }

    #[test]
    fn security_context_maps_to_berth_options() {
        let sc = |uid: Option<i64>, gid: Option<i64>, name: &str| cri::LinuxContainerSecurityContext {
            run_as_user: uid.map(|value| cri::Int64Value { value }),
            run_as_group: gid.map(|value| cri::Int64Value { value }),
            run_as_username: name.into(),
            ..Default::default()
        };
        assert_eq!(user(&sc(Some(1000), Some(100), "")), "1000:100");
        assert_eq!(user(&sc(Some(0), None, "")), "0");
        assert_eq!(user(&sc(None, Some(5), "nobody")), "nobody:5");
        assert_eq!(user(&sc(None, None, "")), "");
        use cri::security_profile::ProfileType;
        let profile =
            |t: ProfileType, path: &str| cri::SecurityProfile { profile_type: t as i32, localhost_ref: path.into() };
        assert_eq!(seccomp(None).unwrap(), "");
        assert_eq!(seccomp(Some(&profile(ProfileType::RuntimeDefault, ""))).unwrap(), "");
        assert_eq!(seccomp(Some(&profile(ProfileType::Unconfined, ""))).unwrap(), "unconfined");
        let e = seccomp(Some(&profile(ProfileType::Localhost, "/nonexistent/profile.json"))).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn mounts_and_limits_translate() {
        let m = |host: &str, ctr: &str, ro| cri::Mount {
            host_path: host.into(),
            container_path: ctr.into(),
            readonly: ro,
            ..Default::default()
        };
        assert_eq!(volume(&m("/srv", "/data", true)).unwrap(), "/srv:/data:ro,rprivate");
        assert_eq!(volume(&m("/srv", "/data", false)).unwrap(), "/srv:/data:rw,rprivate");
        let to_ctr = cri::Mount {
            propagation: cri::MountPropagation::PropagationHostToContainer as i32,
            ..m("/s", "/d", false)
        };
        assert_eq!(volume(&to_ctr).unwrap(), "/s:/d:rw,rslave");
        let both =
            cri::Mount { propagation: cri::MountPropagation::PropagationBidirectional as i32, ..m("/s", "/d", false) };
        assert_eq!(volume(&both).unwrap(), "/s:/d:rw,rshared");
        assert!(volume(&cri::Mount { propagation: 9, ..m("/s", "/d", false) }).is_err());
        assert!(volume(&m("/a:b", "/data", false)).is_err());
        assert!(volume(&m("rel", "/data", false)).is_err());
        let r = cri::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        };
        let l = limits(&r);
        assert_eq!(
            (l.memory, l.cpu_shares, l.cpu_quota, l.cpu_period),
            (Some(64 << 20), Some(512), Some(50_000), Some(100_000))
        );
        assert_eq!((l.memory_swap, l.cpuset_cpus, l.pids), (None, None, None));
    }

    #[test]
    fn exit_reasons_are_kubelets() {
        let c = |code, oom| pb::Container {
            exit: Some(pb::ExitStatus { code, exited_at_ns: 1 }),
            oom_killed: oom,
            ..Default::default()
        };
        assert_eq!(reason(&c(0, false)), "Completed");
        assert_eq!(reason(&c(2, false)), "Error");
        assert_eq!(reason(&c(137, true)), "OOMKilled");
        assert_eq!(reason(&pb::Container::default()), "");
    }
}
