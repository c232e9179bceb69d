//! What the CRI tests share: clients on a daemon's CRI socket, an image
//! in a loopback registry pulled through CRI, pod and container configs
//! as kubelet sends them, and the calls every test makes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_testing::Daemon;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use oci_client::secrets::RegistryAuth;
use tonic::transport::Channel;

use crate::registry::{LAYER_TAR, Registry, Unmounter, push_image, sha256, tar_of};

pub struct Clients {
    pub rt: RuntimeServiceClient<Channel>,
    pub img: ImageServiceClient<Channel>,
}

pub async fn clients(d: &Daemon) -> Clients {
    let ch = crate::channel(&d.cri_socket()).await;
    Clients { rt: RuntimeServiceClient::new(ch.clone()), img: ImageServiceClient::new(ch) }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// A one-layer busybox image whose default command sleeps.
pub fn push_busybox(reference: &str, d: &Daemon) {
    let layer = tar_of(&[], Some(&d.rootfs));
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["sleep", "1000"], "User": "0" },
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    }))
    .expect("config");
    push_image(reference, &RegistryAuth::Anonymous, &[(LAYER_TAR, &layer)], &config);
}

pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub fn pod_config(name: &str, log_dir: &std::path::Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        log_directory: log_dir.to_string_lossy().into_owned(),
        labels: labels(&[("app", name), ("tier", "test")]),
        annotations: labels(&[("note", "{\"kept\": true}")]),
        ..Default::default()
    }
}

/// A pod config as kubelet sends it: namespace modes spelled out.
pub fn kubelet_pod_config(name: &str, log_dir: &std::path::Path) -> cri::PodSandboxConfig {
    use cri::NamespaceMode as M;
    let options = cri::NamespaceOption {
        network: M::Pod as i32,
        pid: M::Container as i32,
        ipc: M::Pod as i32,
        ..Default::default()
    };
    let security_context = cri::LinuxSandboxSecurityContext { namespace_options: Some(options), ..Default::default() };
    cri::PodSandboxConfig {
        linux: Some(cri::LinuxPodSandboxConfig { security_context: Some(security_context), ..Default::default() }),
        ..pod_config(name, log_dir)
    }
}

pub fn container_config(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
        command: command.iter().map(|s| s.to_string()).collect(),
        envs: vec![cri::KeyValue { key: "WHO".into(), value: name.into() }],
        labels: labels(&[("ctr", name)]),
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

pub async fn run_pod(c: &mut Clients, config: &cri::PodSandboxConfig) -> String {
    let req = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
    c.rt.run_pod_sandbox(req).await.expect("RunPodSandbox").into_inner().pod_sandbox_id
}

pub async fn create(c: &mut Clients, pod: &str, pod_cfg: &cri::PodSandboxConfig, cfg: cri::ContainerConfig) -> String {
    let req = cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(cfg),
        sandbox_config: Some(pod_cfg.clone()),
    };
    c.rt.create_container(req).await.expect("CreateContainer").into_inner().container_id
}

pub async fn status(c: &mut Clients, id: &str) -> cri::ContainerStatus {
    let req = cri::ContainerStatusRequest { container_id: id.into(), verbose: false };
    c.rt.container_status(req).await.expect("ContainerStatus").into_inner().status.expect("status")
}

pub async fn await_exited(c: &mut Clients, id: &str) -> cri::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(c, id).await;
        if s.state == cri::ContainerState::ContainerExited as i32 {
            return s;
        }
        assert!(Instant::now() < deadline, "{id} did not exit: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn exec_sync(
    c: &mut Clients,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<cri::ExecSyncResponse, tonic::Status> {
    let req =
        cri::ExecSyncRequest { container_id: id.into(), cmd: cmd.iter().map(|s| s.to_string()).collect(), timeout };
    c.rt.exec_sync(req).await.map(|r| r.into_inner())
}

/// `sh -c script` in container `id`: its trimmed stdout and exit code.
pub async fn sh(c: &mut Clients, id: &str, script: &str) -> (String, i32) {
    let out = exec_sync(c, id, &["sh", "-c", script], 10).await.expect("ExecSync");
    (String::from_utf8_lossy(&out.stdout).trim().to_string(), out.exit_code)
}

pub async fn list_containers(c: &mut Clients, filter: cri::ContainerFilter) -> Vec<String> {
    let req = cri::ListContainersRequest { filter: Some(filter) };
    let mut ids: Vec<String> =
        c.rt.list_containers(req)
            .await
            .expect("ListContainers")
            .into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect();
    ids.sort();
    ids
}

pub async fn pod_state(c: &mut Clients, id: &str) -> i32 {
    let req = cri::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: true };
    c.rt.pod_sandbox_status(req).await.expect("PodSandboxStatus").into_inner().status.expect("status").state
}

/// The daemon, a registry holding busybox, and the image as CRI pulled it.
pub fn setup() -> (Daemon, Unmounter, Registry, String, String) {
    setup_with(&[])
}

/// Like [`setup`], with extra berthd flags.
pub fn setup_with(flags: &[&str]) -> (Daemon, Unmounter, Registry, String, String) {
    let d = Daemon::start_with(flags);
    let guard = Unmounter(d.dir().to_path_buf());
    let reg = Registry::start();
    let reference = format!("{}/busybox:1", reg.addr);
    push_busybox(&reference, &d);
    let image_ref = runtime().block_on(async {
        let mut c = clients(&d).await;
        // A loopback registry is plain HTTP without being told.
        let req = cri::PullImageRequest {
            image: Some(cri::ImageSpec { image: reference.clone(), ..Default::default() }),
            auth: None,
            sandbox_config: None,
        };
        c.img.pull_image(req).await.expect("PullImage").into_inner().image_ref
    });
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    (d, guard, reg, reference, image_ref)
}

#[track_caller]
pub fn assert_clean(d: &Daemon, ids: &[String]) {
    assert!(d.shim_pids().is_empty(), "shims left: {:?}", d.shim_pids());
    for id in ids {
        assert!(d.cgroup_dirs("k8s.io", id).is_empty(), "cgroup of {id} left");
        assert!(d.container_paths("k8s.io", id).is_empty(), "{:?}", d.container_paths("k8s.io", id));
    }
    assert!(d.leftover_mounts().is_empty(), "mounts left: {:?}", d.leftover_mounts());
}
