//! Kubernetes CRI v1 end to end (issue 15; SPEC B28), driven as kubelet
//! drives it, with the `k8s-cri` client on berthd's CRI socket: an image
//! pulled from a loopback registry, a pod with two containers, status
//! reasons, filters, ExecSync with its timeout, stop and remove (both
//! idempotent), security contexts (user, read-only root, capabilities,
//! seccomp, privileged) and an OOM kill, CRI-format logs and their
//! rotation, a checkpoint exported, a berthd killed with kill -9 while a
//! pod runs, and bad requests that change nothing.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use berth_e2e::cri_support::*;
use berth_e2e::metrics::{get, parse, sample};
use k8s_cri::v1 as cri;

#[test]
fn a_pod_with_two_containers_through_its_whole_life() {
    let (d, _guard, _reg, reference, image_ref) = setup();
    let mode = std::fs::metadata(d.cri_socket()).expect("CRI socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "CRI socket mode");
    let logs = d.dir().join("pod-logs");
    let rt = runtime();
    let (pod, web, job) = rt.block_on(async {
        let mut c = clients(&d).await;
        let v = c.rt.version(cri::VersionRequest { version: "v1".into() }).await.unwrap().into_inner();
        assert_eq!((v.runtime_name.as_str(), v.runtime_api_version.as_str()), ("berth", "v1"));
        let st = c.rt.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
        let conds = st.status.unwrap().conditions;
        assert!(conds.iter().any(|c| c.r#type == "RuntimeReady" && c.status), "{conds:?}");
        assert!(conds.iter().any(|c| c.r#type == "NetworkReady"), "{conds:?}");
        let rc = c.rt.runtime_config(cri::RuntimeConfigRequest {}).await.unwrap().into_inner();
        assert_eq!(rc.linux.unwrap().cgroup_driver, cri::CgroupDriver::Cgroupfs as i32);

        // The image, by name and by the id PullImage returned.
        for spec in [&reference, &image_ref] {
            let req = cri::ImageStatusRequest {
                image: Some(cri::ImageSpec { image: spec.clone(), ..Default::default() }),
                verbose: false,
            };
            let image = c.img.image_status(req).await.unwrap().into_inner().image.expect("image present");
            assert_eq!(image.id, image_ref);
            assert_eq!(image.repo_tags, std::slice::from_ref(&reference));
            assert_eq!(image.uid.map(|u| u.value), Some(0));
        }
        let listed = c.img.list_images(cri::ListImagesRequest { filter: None }).await.unwrap().into_inner().images;
        assert_eq!(listed.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), [image_ref.as_str()]);

        let cfg = kubelet_pod_config("web", &logs);
        let pod = run_pod(&mut c, &cfg).await;
        // Not idempotent: the same pod again is refused.
        let again = cri::RunPodSandboxRequest { config: Some(cfg.clone()), runtime_handler: String::new() };
        let e = c.rt.run_pod_sandbox(again).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e}");
        assert_eq!(pod_state(&mut c, &pod).await, cri::PodSandboxState::SandboxReady as i32);

        // One container from the image id with the image's command, one by
        // name with its own.
        let mut web_cfg = container_config("web", &image_ref, &[]);
        let security_context =
            cri::LinuxContainerSecurityContext { supplemental_groups: vec![1234, 5678], ..Default::default() };
        web_cfg.linux =
            Some(cri::LinuxContainerConfig { security_context: Some(security_context), ..Default::default() });
        let web = create(&mut c, &pod, &cfg, web_cfg).await;
        let job =
            create(&mut c, &pod, &cfg, container_config("job", &reference, &["sh", "-c", "echo $WHO; exit 3"])).await;
        let dup = cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("web", &image_ref, &[])),
            sandbox_config: Some(cfg.clone()),
        };
        assert_eq!(c.rt.create_container(dup).await.unwrap_err().code(), tonic::Code::AlreadyExists);
        let s = status(&mut c, &web).await;
        assert_eq!(s.state, cri::ContainerState::ContainerCreated as i32);
        assert_eq!(s.log_path, logs.join("web/0.log").to_string_lossy());
        assert_eq!(s.image_ref, image_ref);
        for id in [&web, &job] {
            c.rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.expect("start");
        }
        let s = status(&mut c, &web).await;
        assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
        assert!(s.started_at >= s.created_at && s.started_at > 0, "{s:?}");
        assert_eq!(s.labels, labels(&[("ctr", "web")]));
        let s = await_exited(&mut c, &job).await;
        assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"), "{s:?}");
        // Its output is in kubelet's log file, in the CRI format.
        let log = std::fs::read_to_string(logs.join("job/0.log")).expect("job's CRI log");
        let fields: Vec<&str> = log.trim_end().splitn(4, ' ').collect();
        assert_eq!(fields[1..], ["stdout", "F", "job"], "{log}");
        assert!(fields[0].ends_with('Z') && fields[0].contains('T'), "RFC 3339 timestamp: {log}");
        assert!(s.finished_at >= s.started_at, "{s:?}");

        // ExecSync: output, exit code, the pod's hostname; a timeout kills.
        let groups = exec_sync(&mut c, &web, &["id", "-G"], 10).await.unwrap();
        let groups = String::from_utf8_lossy(&groups.stdout).to_string();
        assert!(
            groups.split_whitespace().any(|g| g == "1234") && groups.contains("5678"),
            "supplemental groups: {groups}"
        );
        let out = exec_sync(&mut c, &web, &["sh", "-c", "echo out; echo err >&2; hostname; exit 4"], 10).await.unwrap();
        assert_eq!(
            (out.stdout.as_slice(), out.stderr.as_slice(), out.exit_code),
            (&b"out\nweb-host\n"[..], &b"err\n"[..], 4)
        );
        let started = Instant::now();
        let e = exec_sync(&mut c, &web, &["sleep", "30"], 1).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e}");
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

        // Filters.
        let by_pod = cri::ContainerFilter { pod_sandbox_id: pod.clone(), ..Default::default() };
        let mut both = vec![web.clone(), job.clone()];
        both.sort();
        assert_eq!(list_containers(&mut c, by_pod).await, both);
        let running = cri::ContainerFilter {
            state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning as i32 }),
            ..Default::default()
        };
        assert_eq!(list_containers(&mut c, running).await, std::slice::from_ref(&web));
        let by_label = cri::ContainerFilter { label_selector: labels(&[("ctr", "job")]), ..Default::default() };
        assert_eq!(list_containers(&mut c, by_label).await, std::slice::from_ref(&job));
        let by_prefix = cri::ContainerFilter { id: web[..6].to_string(), ..Default::default() };
        assert_eq!(list_containers(&mut c, by_prefix).await, std::slice::from_ref(&web));
        let pods = |selector: &[(&str, &str)]| cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter { label_selector: labels(selector), ..Default::default() }),
        };
        let items = c.rt.list_pod_sandbox(pods(&[("app", "web")])).await.unwrap().into_inner().items;
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].annotations, labels(&[("note", "{\"kept\": true}")]));
        assert_eq!(items[0].metadata.as_ref().unwrap().name, "web");
        assert!(c.rt.list_pod_sandbox(pods(&[("app", "other")])).await.unwrap().into_inner().items.is_empty());

        // Statistics: the running container's, twice (cores in use need two
        // samples), and the pod's sums.
        let list = || cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter { pod_sandbox_id: pod.clone(), ..Default::default() }),
        };
        let first = c.rt.list_container_stats(list()).await.unwrap().into_inner().stats;
        assert_eq!(
            first.iter().map(|s| s.attributes.as_ref().unwrap().id.as_str()).collect::<Vec<_>>(),
            [web.as_str()]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = c.rt.list_container_stats(list()).await.unwrap().into_inner().stats;
        let (cpu, mem) = (second[0].cpu.unwrap(), second[0].memory.unwrap());
        assert!(cpu.usage_core_nano_seconds.unwrap().value > 0, "{cpu:?}");
        assert!(cpu.usage_nano_cores.is_some(), "{cpu:?}");
        assert!(mem.working_set_bytes.unwrap().value > 0, "{mem:?}");
        let one =
            c.rt.container_stats(cri::ContainerStatsRequest { container_id: job.clone() }).await.unwrap().into_inner();
        assert!(one.stats.unwrap().cpu.is_none(), "an exited container has no figures");
        let ps = c.rt.pod_sandbox_stats(cri::PodSandboxStatsRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
        let linux = ps.into_inner().stats.unwrap().linux.unwrap();
        assert_eq!(linux.containers.len(), 2);
        assert!(linux.process.unwrap().process_count.unwrap().value >= 1);
        assert!(linux.memory.unwrap().working_set_bytes.unwrap().value > 0);
        let listed = c.rt.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None }).await.unwrap();
        assert_eq!(listed.into_inner().stats.len(), 1);

        // Stop: sleep as pid 1 ignores SIGTERM and is killed after 1 s.
        let stop = cri::StopContainerRequest { container_id: web.clone(), timeout: 1 };
        c.rt.stop_container(stop.clone()).await.expect("StopContainer");
        let s = status(&mut c, &web).await;
        assert_eq!(
            (s.state, s.exit_code, s.reason.as_str()),
            (cri::ContainerState::ContainerExited as i32, 137, "Error")
        );
        c.rt.stop_container(stop).await.expect("stopping a stopped container");

        // The pod: stop twice, nothing joins it, remove twice.
        for _ in 0..2 {
            c.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() })
                .await
                .expect("StopPodSandbox");
        }
        assert_eq!(pod_state(&mut c, &pod).await, cri::PodSandboxState::SandboxNotready as i32);
        let late = cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("late", &image_ref, &[])),
            sandbox_config: Some(cfg.clone()),
        };
        assert_eq!(c.rt.create_container(late).await.unwrap_err().code(), tonic::Code::FailedPrecondition);
        (pod, web, job)
    });
    assert!(d.shim_pids().is_empty(), "a stopped pod keeps no shim: {:?}", d.shim_pids());
    rt.block_on(async {
        let mut c = clients(&d).await;
        for _ in 0..2 {
            c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() })
                .await
                .expect("remove");
        }
        assert!(list_containers(&mut c, Default::default()).await.is_empty());
        let e = c.rt.pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false });
        assert_eq!(e.await.unwrap_err().code(), tonic::Code::NotFound);
        let e = c.rt.container_status(cri::ContainerStatusRequest { container_id: web.clone(), verbose: false }).await;
        assert_eq!(e.unwrap_err().code(), tonic::Code::NotFound);
        c.rt.remove_container(cri::RemoveContainerRequest { container_id: web.clone() }).await.expect("gone is fine");
        let e = c.rt.start_container(cri::StartContainerRequest { container_id: job.clone() }).await;
        assert_eq!(e.unwrap_err().code(), tonic::Code::NotFound);

        let remove =
            cri::RemoveImageRequest { image: Some(cri::ImageSpec { image: image_ref.clone(), ..Default::default() }) };
        c.img.remove_image(remove.clone()).await.expect("RemoveImage");
        c.img.remove_image(remove).await.expect("RemoveImage of a removed image");
        let req = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec { image: reference.clone(), ..Default::default() }),
            verbose: false,
        };
        assert!(c.img.image_status(req).await.unwrap().into_inner().image.is_none());
        let fs = c.img.image_fs_info(cri::ImageFsInfoRequest {}).await.unwrap().into_inner();
        assert_eq!(fs.image_filesystems.len(), 2, "{fs:?}");
        assert!(fs.image_filesystems[0].fs_id.as_ref().unwrap().mountpoint.ends_with("/content"), "{fs:?}");
    });
    assert_clean(&d, &[web, job]);
}

#[test]
fn pods_survive_a_berthd_kill_and_exits_meanwhile_are_reported() {
    let (d, _guard, _reg, _reference, image_ref) = setup();
    let logs = d.dir().join("pod-logs");
    let rt = runtime();
    let cfg = pod_config("survivor", &logs);
    let (pod, long, short) = rt.block_on(async {
        let mut c = clients(&d).await;
        let pod = run_pod(&mut c, &cfg).await;
        let long = create(&mut c, &pod, &cfg, container_config("long", &image_ref, &[])).await;
        let short =
            create(&mut c, &pod, &cfg, container_config("short", &image_ref, &["sh", "-c", "sleep 1; exit 0"])).await;
        for id in [&long, &short] {
            c.rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.expect("start");
        }
        (pod, long, short)
    });
    d.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    d.spawn();
    rt.block_on(async {
        let mut c = clients(&d).await;
        // A stream opened after the restart gets the exit berthd found.
        let mut events = c.rt.get_container_events(cri::GetEventsRequest {}).await.unwrap().into_inner();
        let replayed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let e = events.message().await.expect("event stream").expect("an event");
                if e.container_id == short {
                    return e;
                }
            }
        })
        .await
        .expect("the exit during the downtime is replayed");
        assert_eq!(replayed.container_event_type, cri::ContainerEventType::ContainerStoppedEvent as i32);
        let items =
            c.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await.unwrap().into_inner().items;
        assert_eq!(items.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), [pod.as_str()]);
        assert_eq!(items[0].state, cri::PodSandboxState::SandboxReady as i32);
        let mut both = vec![long.clone(), short.clone()];
        both.sort();
        assert_eq!(list_containers(&mut c, Default::default()).await, both);
        assert_eq!(status(&mut c, &long).await.state, cri::ContainerState::ContainerRunning as i32);
        let s = await_exited(&mut c, &short).await;
        assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"), "{s:?}");
        // Still usable: exec into the survivor, then tear down.
        let out = exec_sync(&mut c, &long, &["echo", "alive"], 5).await.unwrap();
        assert_eq!(out.stdout, b"alive\n");
        c.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    });
    assert_clean(&d, &[long, short]);
}

#[test]
fn bad_requests_are_typed_and_change_nothing() {
    let (d, _guard, _reg, _reference, image_ref) = setup();
    let logs = d.dir().join("pod-logs");
    runtime().block_on(async {
        let mut c = clients(&d).await;
        let code = |r: Result<tonic::Response<cri::RunPodSandboxResponse>, tonic::Status>| r.unwrap_err().code();
        let no_meta = cri::RunPodSandboxRequest { config: Some(Default::default()), runtime_handler: String::new() };
        assert_eq!(code(c.rt.run_pod_sandbox(no_meta).await), tonic::Code::InvalidArgument);
        let handler =
            cri::RunPodSandboxRequest { config: Some(pod_config("h", &logs)), runtime_handler: "kata".into() };
        assert_eq!(code(c.rt.run_pod_sandbox(handler).await), tonic::Code::InvalidArgument);
        let mut sctp = pod_config("s", &logs);
        sctp.port_mappings = vec![cri::PortMapping {
            protocol: cri::Protocol::Sctp as i32,
            container_port: 1,
            host_port: 1,
            host_ip: String::new(),
        }];
        let sctp = cri::RunPodSandboxRequest { config: Some(sctp), runtime_handler: String::new() };
        assert_eq!(code(c.rt.run_pod_sandbox(sctp).await), tonic::Code::InvalidArgument);
        let mut target_pid = kubelet_pod_config("p", &logs);
        let ctx = target_pid.linux.as_mut().and_then(|l| l.security_context.as_mut()).unwrap();
        ctx.namespace_options.as_mut().unwrap().pid = cri::NamespaceMode::Target as i32;
        let target_pid = cri::RunPodSandboxRequest { config: Some(target_pid), runtime_handler: String::new() };
        assert_eq!(code(c.rt.run_pod_sandbox(target_pid).await), tonic::Code::InvalidArgument);
        let mut bad_dns = pod_config("d", &logs);
        bad_dns.dns_config = Some(cri::DnsConfig { searches: vec!["a b".into()], ..Default::default() });
        let bad_dns = cri::RunPodSandboxRequest { config: Some(bad_dns), runtime_handler: String::new() };
        assert_eq!(code(c.rt.run_pod_sandbox(bad_dns).await), tonic::Code::InvalidArgument);
        assert!(
            c.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                .await
                .unwrap()
                .into_inner()
                .items
                .is_empty()
        );

        let cfg = pod_config("ok", &logs);
        let pod = run_pod(&mut c, &cfg).await;
        let create = |pod: &str, image: &str| cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(container_config("c", image, &[])),
            sandbox_config: Some(cfg.clone()),
        };
        assert_eq!(c.rt.create_container(create("nope", &image_ref)).await.unwrap_err().code(), tonic::Code::NotFound);
        assert_eq!(c.rt.create_container(create(&pod, "absent:1")).await.unwrap_err().code(), tonic::Code::NotFound);
        let mut bad_mount = container_config("m", &image_ref, &[]);
        bad_mount.mounts =
            vec![cri::Mount { host_path: "relative".into(), container_path: "/x".into(), ..Default::default() }];
        let req =
            cri::CreateContainerRequest { pod_sandbox_id: pod.clone(), config: Some(bad_mount), sandbox_config: None };
        assert_eq!(c.rt.create_container(req).await.unwrap_err().code(), tonic::Code::InvalidArgument);
        assert!(list_containers(&mut c, Default::default()).await.is_empty());
        let e = exec_sync(&mut c, "nope", &["true"], 1).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let e = c.rt.stop_container(cri::StopContainerRequest { container_id: "nope".into(), timeout: 0 }).await;
        assert_eq!(e.unwrap_err().code(), tonic::Code::NotFound);
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    });
    assert_clean(&d, &[]);
}

/// The numbers of the `line N` records of a CRI log.
fn numbered_lines(text: &str) -> Vec<u32> {
    text.lines().filter_map(|l| l.rsplit_once(" F line").and_then(|(_, n)| n.parse().ok())).collect()
}

#[test]
fn logs_are_rotated_by_kubelet_without_losing_a_line() {
    let (d, _guard, _reg, _reference, image_ref) = setup();
    let logs = d.dir().join("pod-logs");
    let log = logs.join("talker/0.log");
    let rotated = logs.join("talker/0.log.20261202-000000");
    runtime().block_on(async {
        let mut c = clients(&d).await;
        let cfg = pod_config("talk", &logs);
        let pod = run_pod(&mut c, &cfg).await;
        let script = "i=0; while [ $i -lt 30 ]; do echo line$i; i=$((i+1)); sleep 0.05; done";
        let id = create(&mut c, &pod, &cfg, container_config("talker", &image_ref, &["sh", "-c", script])).await;
        c.rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while numbered_lines(&std::fs::read_to_string(&log).unwrap_or_default()).len() < 5 {
            assert!(Instant::now() < deadline, "no output in {}", log.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // kubelet's rotation: rename, then ReopenContainerLog.
        std::fs::rename(&log, &rotated).unwrap();
        c.rt.reopen_container_log(cri::ReopenContainerLogRequest { container_id: id.clone() }).await.expect("reopen");
        let s = await_exited(&mut c, &id).await;
        assert_eq!(s.reason, "Completed");
        let e = c.rt.reopen_container_log(cri::ReopenContainerLogRequest { container_id: id.clone() }).await;
        assert_eq!(e.unwrap_err().code(), tonic::Code::FailedPrecondition, "only a running container's log");
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    });
    let (old, new) = (std::fs::read_to_string(&rotated).unwrap(), std::fs::read_to_string(&log).unwrap());
    let (old, new) = (numbered_lines(&old), numbered_lines(&new));
    assert!(!old.is_empty() && !new.is_empty(), "old {old:?} new {new:?}");
    let all: Vec<u32> = old.iter().chain(&new).copied().collect();
    assert_eq!(all, (0..30).collect::<Vec<_>>(), "every line once, in order, across the rotation");
    assert_clean(&d, &[]);
}

#[test]
fn a_running_container_is_checkpointed_to_an_archive_and_keeps_running() {
    let (d, _guard, _reg, _reference, image_ref) = setup();
    let logs = d.dir().join("pod-logs");
    let archive = d.dir().join("checkpoints/web.tar");
    std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
    runtime().block_on(async {
        let mut c = clients(&d).await;
        let cfg = pod_config("ckpt", &logs);
        let pod = run_pod(&mut c, &cfg).await;
        let id = create(&mut c, &pod, &cfg, container_config("web", &image_ref, &[])).await;
        c.rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap();
        let req = |location: &str| cri::CheckpointContainerRequest {
            container_id: id.clone(),
            location: location.into(),
            timeout: 60,
        };
        let e = c.rt.checkpoint_container(req("relative.tar")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        c.rt.checkpoint_container(req(&archive.to_string_lossy())).await.expect("CheckpointContainer");
        assert_eq!(status(&mut c, &id).await.state, cri::ContainerState::ContainerRunning as i32);
        // The archive exists already: refused, the first one untouched.
        let size = std::fs::metadata(&archive).expect("archive").len();
        assert!(size > 0);
        assert!(c.rt.checkpoint_container(req(&archive.to_string_lossy())).await.is_err());
        assert_eq!(std::fs::metadata(&archive).unwrap().len(), size);
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    });
    let entries = tar::Archive::new(std::fs::File::open(&archive).unwrap())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert!(entries.iter().any(|p| p.ends_with(".img")), "CRIU images in {entries:?}");
    assert!(entries.iter().all(|p| !p.starts_with("cri-")), "no checkpoint is kept by berth: {entries:?}");
    assert_clean(&d, &[]);
    let kept = std::fs::read_dir(d.root.join("checkpoints/k8s.io")).into_iter().flatten().count();
    assert_eq!(kept, 0, "berth keeps no copy of an exported CRI checkpoint");
    // Restoring into a sandbox is not supported: refused, nothing made.
    let e = d.berth(&["-n", "k8s.io", "restore", "--from", &archive.to_string_lossy()]).fails_with("invalid argument");
    assert!(e.contains("a checkpoint has a network of its own"), "{e}");
    let left: serde_json::Value = serde_json::from_str(d.berth(&["-n", "k8s.io", "ps", "-a", "--json"]).ok()).unwrap();
    assert_eq!(left, serde_json::json!([]), "no container was made");
}

/// The container `ctr` of pod `pod` with this security context and
/// limits, started; its id.
async fn confined(
    c: &mut Clients,
    (pod, cfg): &(String, cri::PodSandboxConfig),
    mut ctr: cri::ContainerConfig,
    sc: cri::LinuxContainerSecurityContext,
    resources: Option<cri::LinuxContainerResources>,
) -> String {
    ctr.linux = Some(cri::LinuxContainerConfig { security_context: Some(sc), resources });
    let id = create(c, pod, cfg, ctr).await;
    c.rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.expect("start");
    id
}

#[test]
fn security_contexts_confine_and_oom_kills_are_reported() {
    let (d, _guard, _reg, _reference, image) = setup();
    let logs = d.dir().join("pod-logs");
    runtime().block_on(async {
        let mut c = clients(&d).await;
        let cfg = pod_config("sec", &logs);
        let p = (run_pod(&mut c, &cfg).await, cfg);
        let ctr = |name: &str, cmd: &[&str]| container_config(name, &image, cmd);
        let idle = &["sleep", "1000"][..];

        // A user, a read-only root, no new privileges, no capabilities.
        let sc = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            run_as_group: Some(cri::Int64Value { value: 3000 }),
            readonly_rootfs: true,
            no_new_privs: true,
            capabilities: Some(cri::Capability { drop_capabilities: vec!["ALL".into()], ..Default::default() }),
            ..Default::default()
        };
        let locked = confined(&mut c, &p, ctr("locked", idle), sc, None).await;
        assert_eq!(sh(&mut c, &locked, "echo $(id -u):$(id -g)").await.0, "1000:3000");
        assert_ne!(sh(&mut c, &locked, "touch /x").await.1, 0, "a read-only root");
        assert_eq!(sh(&mut c, &locked, "grep NoNewPrivs /proc/self/status | tr -d '\\t '").await.0, "NoNewPrivs:1");
        assert_eq!(
            sh(&mut c, &locked, "grep CapBnd /proc/self/status | tr -d '\\t '").await.0,
            "CapBnd:0000000000000000"
        );

        // The runtime default confinement (seccomp, no NET_ADMIN) versus an
        // added capability, and privileged.
        let default = confined(&mut c, &p, ctr("plain", idle), Default::default(), None).await;
        assert_eq!(sh(&mut c, &default, "grep Seccomp: /proc/self/status | tr -d '\\t '").await.0, "Seccomp:2");
        let net_admin = "ip addr add 10.99.99.1/32 dev lo && ip addr del 10.99.99.1/32 dev lo";
        assert_ne!(sh(&mut c, &default, net_admin).await.1, 0, "no NET_ADMIN by default");
        let sc = cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability { add_capabilities: vec!["NET_ADMIN".into()], ..Default::default() }),
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::Unconfined as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let admin = confined(&mut c, &p, ctr("admin", idle), sc, None).await;
        assert_eq!(sh(&mut c, &admin, "grep Seccomp: /proc/self/status | tr -d '\\t '").await.0, "Seccomp:0");
        assert_eq!(sh(&mut c, &admin, net_admin).await.1, 0, "NET_ADMIN added");
        let sc = cri::LinuxContainerSecurityContext { privileged: true, ..Default::default() };
        let privileged = confined(&mut c, &p, ctr("priv", idle), sc, None).await;
        let (bnd, _) = sh(&mut c, &privileged, "grep CapBnd /proc/self/status | tr -d '\\t '").await;
        assert_ne!(bnd, "CapBnd:0000000000000000", "{bnd}");
        assert_eq!(sh(&mut c, &privileged, "grep Seccomp: /proc/self/status | tr -d '\\t '").await.0, "Seccomp:0");

        // A memory limit the container passes: OOMKilled.
        let hog = "sleep 0.2; x=$(head -c 60000000 /dev/zero | tr '\\0' a); sleep 1000";
        let limits = cri::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            memory_swap_limit_in_bytes: 16 << 20,
            ..Default::default()
        };
        let hog = confined(&mut c, &p, ctr("hog", &["sh", "-c", hog]), Default::default(), Some(limits)).await;
        let s = await_exited(&mut c, &hog).await;
        assert_eq!((s.exit_code, s.reason.as_str()), (137, "OOMKilled"), "{s:?}");
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: p.0 }).await.unwrap();
    });
    assert_clean(&d, &[]);
}

#[test]
fn container_events_come_with_their_pods_status() {
    use cri::ContainerEventType as E;
    let (d, _guard, _reg, _reference, image) = setup();
    let logs = d.dir().join("pod-logs");
    runtime().block_on(async {
        let mut c = clients(&d).await;
        let mut events = c.rt.get_container_events(cri::GetEventsRequest {}).await.unwrap().into_inner();
        let cfg = pod_config("evt", &logs);
        let pod = run_pod(&mut c, &cfg).await;
        let id = create(&mut c, &pod, &cfg, container_config("once", &image, &["true"])).await;
        c.rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap();
        await_exited(&mut c, &id).await;
        c.rt.remove_container(cri::RemoveContainerRequest { container_id: id.clone() }).await.unwrap();
        let mut seen = Vec::new();
        let read = async {
            while let Some(Ok(e)) = events.message().await.transpose() {
                if e.container_id != id {
                    continue;
                }
                let kind = E::try_from(e.container_event_type).unwrap();
                let status = e.pod_sandbox_status.as_ref().expect("the pod's status");
                assert_eq!(status.metadata.as_ref().unwrap().name, "evt");
                if kind == E::ContainerStoppedEvent {
                    let mine = e.containers_statuses.iter().find(|s| s.id == id).expect("its status");
                    assert_eq!(mine.state, cri::ContainerState::ContainerExited as i32);
                }
                seen.push(kind);
                if kind == E::ContainerDeletedEvent {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read).await.expect("the events came");
        let want =
            [E::ContainerCreatedEvent, E::ContainerStartedEvent, E::ContainerStoppedEvent, E::ContainerDeletedEvent];
        assert_eq!(seen, want);
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    });
    assert_clean(&d, &[]);
}

#[test]
fn cri_requests_and_image_pulls_are_in_the_metrics() {
    let sock = tempfile::tempdir().unwrap();
    let metrics = sock.path().join("metrics.sock");
    let (d, _guard, _reg, _reference, _image) = setup_with(&["--metrics-address", &metrics.to_string_lossy()]);
    runtime().block_on(async {
        let mut c = clients(&d).await;
        c.rt.version(cri::VersionRequest::default()).await.unwrap();
        c.rt.list_containers(cri::ListContainersRequest::default()).await.unwrap();
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (text, parsed) = loop {
        let (_, text) = get(std::os::unix::net::UnixStream::connect(&metrics).unwrap(), "/metrics");
        let parsed = parse(&text);
        let timed = |m: &str| {
            parsed.samples.iter().any(|s| {
                s.metric == "berth_cri_request_duration_seconds"
                    && s.labels.get("method") == Some(m)
                    && matches!(&s.value, prometheus_parse::Value::Histogram(_))
            })
        };
        if timed("PullImage") && timed("Version") && timed("ListContainers") {
            break (text, parsed);
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(sample(&parsed, "berth_image_pulls_total", &[("result", "ok")]), Some(1.0), "{text}");
    assert!(sample(&parsed, "berth_image_pull_bytes_total", &[]).unwrap_or(0.0) > 100_000.0, "{text}");
    assert!(sample(&parsed, "berth_process_cpu_seconds_total", &[]).unwrap_or(0.0) > 0.0, "{text}");
}
