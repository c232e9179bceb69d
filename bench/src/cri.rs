//! CRI scenario (issue 15 benchmark): the pod round trip a kubelet makes —
//! RunPodSandbox, CreateContainer, StartContainer (image present), wait
//! for the exit, StopPodSandbox, RemovePodSandbox — against berthd's CRI
//! socket and against containerd 1.6's CRI plugin (Debian's containerd,
//! its own root, a bridge CNI network of its own), interleaved, median of
//! the rounds; then 100 pods started at once on each. Both pull the same
//! busybox image from a loopback docker-registry; containerd's sandbox
//! image (its pause container) is that image too. containerd runs with
//! `restrict_oom_score_adj` (its sandboxes' -998 is refused on a host
//! where the benchmark lacks CAP_SYS_RESOURCE, as here).

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::cnihost::berthd_on_bridge;
use crate::image::Registry;
use crate::measure::{Runner, time_interleaved};

const BERTH_BRIDGE: &str = "bcri0";
const BERTH_SUBNET: &str = "10.216.250.0/24";
const CTR_BRIDGE: &str = "bcri1";
const CTR_SUBNET: &str = "10.216.251.0/24";
/// Pods started at once.
pub const CONCURRENT: usize = 100;

#[derive(Debug, Default, Clone, Copy)]
pub struct CriFigures {
    pub berth_pod: Option<Duration>,
    pub ctr_pod: Option<Duration>,
    pub berth_many: Option<Duration>,
    pub ctr_many: Option<Duration>,
}

#[derive(Clone)]
struct Clients {
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
}

async fn connect(socket: &Path) -> Option<Clients> {
    let path = socket.to_path_buf();
    let ch = Endpoint::from_static("http://cri")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .ok()?;
    Some(Clients { rt: RuntimeServiceClient::new(ch.clone()), img: ImageServiceClient::new(ch) })
}

fn pod_config(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        ..Default::default()
    }
}

/// Pod, container from `image` running `cmd`, started; (pod, container).
async fn start_pod(c: &mut Clients, image: &str, name: &str, cmd: &[&str]) -> Option<(String, String)> {
    let config = pod_config(name);
    let pod = c
        .rt
        .run_pod_sandbox(cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() });
    let pod = match pod.await {
        Ok(r) => r.into_inner().pod_sandbox_id,
        Err(e) => {
            eprintln!("cri: RunPodSandbox {name}: {e}");
            return None;
        }
    };
    let ctr = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: "c".into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let create =
        cri::CreateContainerRequest { pod_sandbox_id: pod.clone(), config: Some(ctr), sandbox_config: Some(config) };
    let id = match c.rt.create_container(create).await {
        Ok(r) => r.into_inner().container_id,
        Err(e) => {
            eprintln!("cri: CreateContainer {name}: {e}");
            return None;
        }
    };
    c.rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.ok()?;
    Some((pod, id))
}

async fn remove_pod(c: &mut Clients, pod: &str) -> bool {
    c.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.into() }).await.is_ok()
        && c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.into() }).await.is_ok()
}

/// One whole round trip of a pod whose container runs /bin/true.
async fn round_trip(c: &mut Clients, image: &str, name: &str) -> bool {
    let Some((pod, id)) = start_pod(c, image, name, &["/bin/true"]).await else { return false };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.rt.container_status(cri::ContainerStatusRequest { container_id: id.clone(), verbose: false }).await;
        match s.ok().and_then(|s| s.into_inner().status) {
            Some(s) if s.state == cri::ContainerState::ContainerExited as i32 => break,
            Some(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(2)).await,
            _ => return false,
        }
    }
    remove_pod(c, &pod).await
}

/// `CONCURRENT` pods with a sleeping container started at once; the time
/// until every StartContainer returned. The pods are removed afterwards.
async fn many(c: &Clients, image: &str, prefix: &str) -> Option<Duration> {
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CONCURRENT {
        let (mut c, image, name) = (c.clone(), image.to_string(), format!("{prefix}{i}"));
        tasks.spawn(async move { start_pod(&mut c, &image, &name, &["sleep", "1000"]).await });
    }
    let mut pods = Vec::new();
    while let Some(r) = tasks.join_next().await {
        pods.push(r.ok().flatten());
    }
    let elapsed = t.elapsed();
    let mut c = c.clone();
    let ok = pods.iter().all(Option::is_some);
    for (pod, _) in pods.into_iter().flatten() {
        remove_pod(&mut c, &pod).await;
    }
    ok.then_some(elapsed)
}

/// containerd 1.6 with its CRI plugin on, under `base`.
struct CriContainerd {
    child: std::process::Child,
    socket: std::path::PathBuf,
}

impl CriContainerd {
    fn start(base: &Path, registry: &str, sandbox_image: &str) -> Option<CriContainerd> {
        let net = base.join("net.d");
        std::fs::create_dir_all(&net).ok()?;
        let conflist = serde_json::json!({
            "cniVersion": "0.4.0", "name": "bench-cri",
            "plugins": [
                {"type": "bridge", "bridge": CTR_BRIDGE, "isGateway": true, "ipMasq": true,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": CTR_SUBNET}]],
                          "dataDir": base.join("ipam").to_string_lossy()}},
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        std::fs::write(net.join("10-bench-cri.conflist"), conflist.to_string()).ok()?;
        let socket = base.join("c.sock");
        let toml = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n[grpc]\n  address = \"{sock}\"\n\
             [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{sandbox_image}\"\n  disable_apparmor = true\n\
             restrict_oom_score_adj = true\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{net}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{registry}\"]\n  endpoint = [\"http://{registry}\"]\n",
            root = base.join("root").display(),
            state = base.join("state").display(),
            sock = socket.display(),
            net = net.display(),
        );
        let config = base.join("config.toml");
        std::fs::write(&config, toml).ok()?;
        let log = std::fs::File::create(base.join("containerd.log")).ok()?;
        let child = std::process::Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if Instant::now() > deadline {
                eprintln!("containerd with CRI did not come up; skipping its figures");
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(CriContainerd { child, socket })
    }
}

impl Drop for CriContainerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn pull(c: &mut Clients, image: &str) -> bool {
    let req = cri::PullImageRequest {
        image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
        auth: None,
        sandbox_config: None,
    };
    match c.img.pull_image(req).await {
        Ok(_) => true,
        Err(e) => {
            eprintln!("cri: PullImage {image}: {e}");
            false
        }
    }
}

/// Removes what containerd's CRI left: its pods, then the shims' leftovers
/// go with its root (the caller's temp dir).
async fn clean_ctr(c: &mut Clients) {
    if let Ok(list) = c.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await {
        for p in list.into_inner().items {
            remove_pod(c, &p.id).await;
        }
    }
}

pub fn run(rounds: usize) -> CriFigures {
    let prefixes = ["10.216.250.", "10.216.251."];
    let Some((_host, d)) = berthd_on_bridge(&prefixes, &[BERTH_BRIDGE, CTR_BRIDGE], BERTH_BRIDGE, BERTH_SUBNET) else {
        return CriFigures::default();
    };
    let Some(registry) = Registry::start(d.dir()) else { return CriFigures::default() };
    let Some((image, _)) = crate::image::build_and_push(&d, &registry.addr, "cri-busybox", 0, &["sleep", "100000"])
    else {
        eprintln!("cri: could not push the busybox image");
        return CriFigures::default();
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let Some(mut berth) = rt.block_on(connect(&d.cri_socket())) else { return CriFigures::default() };
    assert!(rt.block_on(pull(&mut berth, &image)), "berth pulls the image");
    let ctr_base = d.dir().join("cri-containerd");
    let ctr_daemon = CriContainerd::start(&ctr_base, &registry.addr, &image);
    let mut ctr = ctr_daemon.as_ref().and_then(|c| rt.block_on(connect(&c.socket)));
    if let Some(c) = ctr.as_mut()
        && !rt.block_on(pull(c, &image))
    {
        ctr = None;
    }
    eprintln!("cri: pod round trips, berth{}: {rounds} rounds …", if ctr.is_some() { " and containerd" } else { "" });
    let (berth_c, ctr_c) = (berth.clone(), ctr.clone());
    let mut runners: Vec<Runner<'_>> = vec![Box::new(|i| {
        let mut c = berth_c.clone();
        rt.block_on(round_trip(&mut c, &image, &format!("b{i}")))
    })];
    if let Some(cc) = &ctr_c {
        runners.push(Box::new(|i| {
            let mut c = cc.clone();
            rt.block_on(round_trip(&mut c, &image, &format!("c{i}")))
        }));
    }
    let t = time_interleaved(rounds, &mut runners);
    drop(runners);
    if ctr.is_some() && t.get(1).copied().flatten().is_none() {
        let log = std::fs::read_to_string(ctr_base.join("containerd.log")).unwrap_or_default();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("level=error")).collect();
        eprintln!("cri: containerd's errors:\n{}", errors[errors.len().saturating_sub(8)..].join("\n"));
    }
    if ctr.is_some() && t.get(1).copied().flatten().is_none() {
        let log = std::fs::read_to_string(ctr_base.join("containerd.log")).unwrap_or_default();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("level=error")).collect();
        eprintln!("cri: containerd's errors:\n{}", errors[errors.len().saturating_sub(8)..].join("\n"));
    }
    eprintln!("cri: {CONCURRENT} pods at once …");
    let berth_many = rt.block_on(many(&berth, &image, "mb"));
    let ctr_many = ctr.as_ref().and_then(|c| rt.block_on(many(c, &image, "mc")));
    if let Some(c) = ctr.as_mut() {
        rt.block_on(clean_ctr(c));
    }
    drop(ctr_daemon);
    let _ = d.berth(&["network", "rm", "berth"]);
    CriFigures { berth_pod: t[0], ctr_pod: t.get(1).copied().flatten(), berth_many, ctr_many }
}
