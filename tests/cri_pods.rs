//! Pod-level settings through CRI (issue 15; SPEC B28, B34), as kubelet
//! sends them: a shared PID namespace (`shareProcessNamespace`, PID 1 the
//! pod's init, no pause container) and IPC namespace, the host's PID and
//! IPC namespaces, the pod's DNS config in resolv.conf, OOM score
//! adjustments, container cgroups below the pod's cgroup, the writable
//! layer's usage in statistics, masked and read-only paths, and mount
//! propagation of volumes (None, HostToContainer, Bidirectional) against a
//! shared host directory the test makes.

use std::path::Path;

use berth_e2e::cri_support::*;
use k8s_cri::v1 as cri;

fn with_namespaces(
    mut cfg: cri::PodSandboxConfig,
    pid: cri::NamespaceMode,
    ipc: cri::NamespaceMode,
) -> cri::PodSandboxConfig {
    let linux = cfg.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    let options = sc.namespace_options.get_or_insert_with(Default::default);
    (options.pid, options.ipc) = (pid as i32, ipc as i32);
    cfg
}

fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap().to_string_lossy().into_owned()
}

async fn started(c: &mut Clients, pod: &str, pod_cfg: &cri::PodSandboxConfig, cfg: cri::ContainerConfig) -> String {
    let id = create(c, pod, pod_cfg, cfg).await;
    c.rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.expect("start");
    id
}

fn mount(host: &Path, ctr: &str, propagation: cri::MountPropagation) -> cri::Mount {
    cri::Mount {
        host_path: host.to_string_lossy().into_owned(),
        container_path: ctr.into(),
        propagation: propagation as i32,
        ..Default::default()
    }
}

/// Whether `path` is a mount point of this (the host's) mount namespace.
fn is_mount_point(path: &Path) -> bool {
    berth_testing::mount_points().iter().any(|m| Path::new(m) == path)
}

/// Removes a cgroup and its children in every hierarchy (kubelet makes
/// and removes pod cgroups; here the test stands in for it).
struct CgroupTree(String);

impl Drop for CgroupTree {
    fn drop(&mut self) {
        fn remove(dir: &Path) {
            for child in std::fs::read_dir(dir).into_iter().flatten().flatten().filter(|e| e.path().is_dir()) {
                remove(&child.path());
            }
            let _ = std::fs::remove_dir(dir);
        }
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            remove(&hierarchy.path().join(self.0.trim_start_matches('/')));
        }
    }
}

#[test]
fn pods_share_namespaces_resolver_and_mounts_as_kubelet_asks() {
    use cri::NamespaceMode as M;
    // Dropped after the daemon, once no process is left in the tree.
    let pods = format!("/berth-test-pods-{}", std::process::id());
    let _cgroups = CgroupTree(pods.clone());
    let (d, _guard, _reg, _reference, image) = setup();
    let logs = d.dir().join("pod-logs");
    let pod_cgroup = format!("{pods}/ns");
    // A shared host directory, under the test's directory (the guard
    // unmounts whatever is left there).
    let shared = d.dir().join("shared");
    std::fs::create_dir_all(shared.join("from-host")).unwrap();
    std::fs::create_dir_all(shared.join("from-ctr")).unwrap();
    let bind = |src: &Path, flags| nix::mount::mount(Some(src), src, None::<&str>, flags, None::<&str>).unwrap();
    bind(&shared, nix::mount::MsFlags::MS_BIND);
    nix::mount::mount(None::<&str>, &shared, None::<&str>, nix::mount::MsFlags::MS_SHARED, None::<&str>).unwrap();
    runtime().block_on(async {
        let mut c = clients(&d).await;
        let mut cfg = with_namespaces(kubelet_pod_config("ns", &logs), M::Pod, M::Pod);
        cfg.linux.as_mut().unwrap().cgroup_parent = pod_cgroup.clone();
        cfg.dns_config = Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        });
        let pod = run_pod(&mut c, &cfg).await;
        let req = cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false };
        let status = c.rt.pod_sandbox_status(req).await.unwrap().into_inner().status.unwrap();
        let options = status.linux.and_then(|l| l.namespaces).and_then(|n| n.options).unwrap();
        assert_eq!((options.pid, options.ipc), (M::Pod as i32, M::Pod as i32));

        let idle = &["sleep", "1000"][..];
        let mut a_cfg = container_config("a", &image, idle);
        // kubelet's: every hugepage size the node has, 0 unless asked for.
        let hugepage_limits =
            ["2MB", "1GB"].map(|size| cri::HugepageLimit { page_size: size.into(), limit: 0 }).to_vec();
        let resources = cri::LinuxContainerResources { oom_score_adj: 500, hugepage_limits, ..Default::default() };
        a_cfg.linux = Some(cri::LinuxContainerConfig { resources: Some(resources), security_context: None });
        let a = started(&mut c, &pod, &cfg, a_cfg).await;
        let mut b_cfg = container_config("b", &image, &["sleep", "2000"]);
        b_cfg.mounts = vec![
            mount(&shared, "/none", cri::MountPropagation::PropagationPrivate),
            mount(&shared, "/to-ctr", cri::MountPropagation::PropagationHostToContainer),
            mount(&shared, "/both", cri::MountPropagation::PropagationBidirectional),
        ];
        let sc = cri::LinuxContainerSecurityContext { privileged: true, ..Default::default() };
        // A Guaranteed pod's score: lowered only where berthd may lower its own.
        let resources = cri::LinuxContainerResources { oom_score_adj: -997, ..Default::default() };
        b_cfg.linux = Some(cri::LinuxContainerConfig { security_context: Some(sc), resources: Some(resources) });
        let b = started(&mut c, &pod, &cfg, b_cfg).await;

        assert_eq!(sh(&mut c, &a, "cat /proc/self/oom_score_adj").await.0, "500");
        // What a container writes shows as its writable layer's usage.
        assert_eq!(sh(&mut c, &a, "head -c 1048576 /dev/zero > /big && mkdir -p /d/e && echo ok").await.0, "ok");
        let req = cri::ContainerStatsRequest { container_id: a.clone() };
        let stats = c.rt.container_stats(req).await.unwrap().into_inner().stats.unwrap();
        let layer = stats.writable_layer.expect("writable layer");
        assert!(layer.used_bytes.unwrap().value >= 1 << 20, "{layer:?}");
        assert!(layer.inodes_used.unwrap().value >= 3, "{layer:?}");
        let mountpoint = layer.fs_id.unwrap().mountpoint;
        let fs = c.img.image_fs_info(cri::ImageFsInfoRequest {}).await.unwrap().into_inner();
        assert!(
            fs.image_filesystems.iter().any(|f| f.fs_id.as_ref().is_some_and(|i| i.mountpoint == mountpoint)),
            "{mountpoint} {fs:?}"
        );

        // The containers' cgroups are below the pod's (kubelet's) cgroup.
        let rec: serde_json::Value =
            serde_json::from_str(d.berth(&["-n", "k8s.io", "inspect", "--json", &a]).ok()).unwrap();
        assert_eq!(rec["cgroup"].as_str(), Some(format!("{pod_cgroup}/{a}").as_str()), "{rec}");
        let pid = rec["pid"].as_u64().unwrap();
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let memory = cgroups.lines().find(|l| l.contains(":memory:")).unwrap_or_default().to_string();
        assert!(memory.ends_with(&format!("{pod_cgroup}/{a}")), "{cgroups}");
        let own = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap().trim().to_string();
        let (b_adj, _) = sh(&mut c, &b, "cat /proc/self/oom_score_adj").await;
        assert!(b_adj == "-997" || b_adj == own, "{b_adj} (berthd's own: {own})");

        // One PID namespace: PID 1 is the pod's init, both sleeps are seen.
        let (ps, _) = sh(&mut c, &a, "ps -o pid,args").await;
        assert!(ps.lines().any(|l| l.trim() == "1 berth-pod-init"), "{ps}");
        assert!(ps.contains("sleep 1000") && ps.contains("sleep 2000"), "{ps}");
        for kind in ["pid", "ipc"] {
            let (in_a, _) = sh(&mut c, &a, &format!("readlink /proc/self/ns/{kind}")).await;
            let (in_b, _) = sh(&mut c, &b, &format!("readlink /proc/self/ns/{kind}")).await;
            assert_eq!(in_a, in_b, "{kind}");
            assert_ne!(in_a, host_ns(kind), "{kind}");
        }
        // The pod's DNS config is the resolver's, exactly.
        let (resolv, _) = sh(&mut c, &a, "cat /etc/resolv.conf").await;
        assert_eq!(
            resolv,
            "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5"
        );

        // A mount the host makes reaches HostToContainer and Bidirectional
        // volumes, not a private one.
        let tmpfs = |at: &Path| {
            nix::mount::mount(Some("tmpfs"), at, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>).unwrap()
        };
        tmpfs(&shared.join("from-host"));
        std::fs::write(shared.join("from-host/mark"), "host").unwrap();
        for (path, seen) in [("/none", false), ("/to-ctr", true), ("/both", true)] {
            let (out, _) = sh(&mut c, &b, &format!("cat {path}/from-host/mark 2>/dev/null")).await;
            assert_eq!(out == "host", seen, "{path}: {out:?}");
        }
        // A mount the container makes reaches the host through the
        // Bidirectional volume only.
        let (_, code) = sh(&mut c, &b, "mount -t tmpfs tmpfs /both/from-ctr").await;
        assert_eq!(code, 0);
        assert!(is_mount_point(&shared.join("from-ctr")), "the container's mount did not reach the host");
        let _ = nix::mount::umount2(&shared.join("from-ctr"), nix::mount::MntFlags::MNT_DETACH);
        let _ = nix::mount::umount2(&shared.join("from-host"), nix::mount::MntFlags::MNT_DETACH);

        // The host's PID and IPC namespaces.
        let host_cfg = with_namespaces(kubelet_pod_config("host", &logs), M::Node, M::Node);
        let host_pod = run_pod(&mut c, &host_cfg).await;
        let h = started(&mut c, &host_pod, &host_cfg, container_config("h", &image, idle)).await;
        for kind in ["pid", "ipc"] {
            assert_eq!(sh(&mut c, &h, &format!("readlink /proc/self/ns/{kind}")).await.0, host_ns(kind), "{kind}");
        }

        // A HostToContainer volume of a private host directory is refused
        // with the fix, and nothing is made.
        let private = d.dir().join("private");
        std::fs::create_dir_all(&private).unwrap();
        let mut bad = container_config("bad", &image, idle);
        bad.mounts = vec![mount(&private, "/p", cri::MountPropagation::PropagationHostToContainer)];
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(bad),
            sandbox_config: Some(cfg.clone()),
        };
        let e = c.rt.create_container(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
        assert!(e.message().contains("mount --make-shared"), "{e}");
        // Masked and read-only paths of the caller's replace the defaults;
        // an AppArmor profile is ignored on a host without AppArmor.
        let mut m_cfg = container_config("masked", &image, idle);
        let sc = cri::LinuxContainerSecurityContext {
            masked_paths: vec!["/etc/hostname".into()],
            readonly_paths: vec!["/tmp".into()],
            apparmor: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::Localhost as i32,
                localhost_ref: "berth-test-profile".into(),
            }),
            ..Default::default()
        };
        m_cfg.linux = Some(cri::LinuxContainerConfig { security_context: Some(sc), resources: None });
        let apparmor =
            std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|v| v.trim() == "Y");
        if !apparmor {
            let m = started(&mut c, &pod, &cfg, m_cfg).await;
            assert_eq!(sh(&mut c, &m, "cat /etc/hostname; echo end").await.0, "end");
            assert_ne!(sh(&mut c, &m, "touch /tmp/x").await.1, 0, "/tmp is read-only");
            assert_eq!(
                sh(&mut c, &m, "head -c 3 /proc/timer_list | wc -c").await.0,
                "3",
                "the default mask is replaced"
            );
        }

        // cgroup v2 settings need a v2 host.
        let mut v2_only = container_config("v2", &image, idle);
        let resources = cri::LinuxContainerResources {
            unified: [("memory.high".to_string(), "max".to_string())].into(),
            ..Default::default()
        };
        v2_only.linux = Some(cri::LinuxContainerConfig { resources: Some(resources), security_context: None });
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(v2_only),
            sandbox_config: Some(cfg.clone()),
        };
        let v2_host = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        match c.rt.create_container(req).await {
            Err(e) => assert!(!v2_host && e.code() == tonic::Code::FailedPrecondition, "{e}"),
            Ok(_) => assert!(v2_host, "unified settings taken on a v1 host"),
        }
        let all = list_containers(&mut c, Default::default()).await;
        assert_eq!(all.len(), 3 + usize::from(!apparmor) + usize::from(v2_host), "{all:?}");

        for p in [pod, host_pod] {
            c.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: p.clone() }).await.unwrap();
            c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: p }).await.unwrap();
        }
    });
    let _ = nix::mount::umount2(&shared, nix::mount::MntFlags::MNT_DETACH);
    assert_clean(&d, &[]);
}
