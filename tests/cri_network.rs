//! A CRI pod on a CNI network (issue 15 item 2): berthd's default bridge
//! network (a bridge and subnet of this test's own), the pod's IP in its
//! status, a port mapping (portmap) answering on 127.0.0.1, the pod's DNS
//! servers, hostname and sysctls in its containers, its network
//! statistics, and nothing of the network left once the pod is removed.

use std::net::{TcpListener, TcpStream};

use berth_e2e::cri_support::*;
use berth_e2e::http_get;
use berth_testing::{PortmapChains, nat_rules};
use k8s_cri::v1 as cri;

const BRIDGE: &str = "btcri0";
const PREFIX: &str = "10.216.240";

#[test]
fn a_pod_on_a_cni_network_publishes_its_port_and_takes_its_dns() {
    let _chains = PortmapChains::note();
    let subnet = format!("{PREFIX}.0/24");
    let (d, _guard, _reg, _reference, image) =
        setup_with(&["--default-network", "berth", "--network-bridge", BRIDGE, "--network-subnet", &subnet]);
    let _cleanup = berth_e2e::NetworkCleanup(&d, BRIDGE.to_string());
    let logs = d.dir().join("pod-logs");
    let host_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    runtime().block_on(async {
        let mut c = clients(&d).await;
        let st = c.rt.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
        let network_ready = st.status.unwrap().conditions.into_iter().find(|c| c.r#type == "NetworkReady").unwrap();
        assert!(network_ready.status, "{network_ready:?}");
        let mut cfg = pod_config("web", &logs);
        cfg.port_mappings = vec![cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 80,
            host_port: i32::from(host_port),
            host_ip: "127.0.0.1".into(),
        }];
        cfg.dns_config = Some(cri::DnsConfig { servers: vec!["10.0.0.53".into()], ..Default::default() });
        let sysctls = [("net.core.somaxconn", "1234"), ("kernel.shm_rmid_forced", "1")];
        let sysctls = sysctls.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        cfg.linux = Some(cri::LinuxPodSandboxConfig { sysctls, ..Default::default() });
        let pod = run_pod(&mut c, &cfg).await;
        let status =
            c.rt.pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: true });
        let status = status.await.unwrap().into_inner();
        let ip = status.status.unwrap().network.expect("the pod's network").ip;
        assert!(ip.starts_with(&format!("{PREFIX}.")), "pod IP {ip} in {subnet}");
        assert!(status.info["info"].contains(&ip), "{:?}", status.info);

        let httpd = "mkdir -p /www && echo hello-from-the-pod > /www/index.html && exec httpd -f -p 80 -h /www";
        let id = create(&mut c, &pod, &cfg, container_config("web", &image, &["sh", "-c", httpd])).await;
        c.rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.unwrap();
        let page = tokio::task::spawn_blocking(move || http_get(host_port)).await.unwrap();
        assert!(page.contains("hello-from-the-pod"), "{page}");
        let script = "cat /etc/resolv.conf; hostname; ip -4 addr show eth0; \
                      echo somaxconn=$(cat /proc/sys/net/core/somaxconn) rmid=$(cat /proc/sys/kernel/shm_rmid_forced)";
        let out = exec_sync(&mut c, &id, &["sh", "-c", script], 10).await.unwrap();
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.contains("nameserver 10.0.0.53"), "{out}");
        assert!(out.contains("web-host"), "{out}");
        assert!(out.contains(&ip), "{out}");
        assert!(out.contains("somaxconn=1234 rmid=1"), "the pod's sysctls: {out}");
        let stats = c.rt.pod_sandbox_stats(cri::PodSandboxStatsRequest { pod_sandbox_id: pod.clone() });
        let net = stats.await.unwrap().into_inner().stats.unwrap().linux.unwrap().network.expect("network stats");
        let eth0 = net.default_interface.expect("eth0");
        assert_eq!(eth0.name, "eth0");
        assert!(eth0.rx_bytes.unwrap().value > 0 && eth0.tx_bytes.unwrap().value > 0, "{eth0:?}");

        c.rt.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
        assert!(TcpStream::connect(("127.0.0.1", host_port)).is_err(), "the port is unpublished at stop");
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    });
    assert_clean(&d, &[]);
    assert!(d.network_leftovers().is_empty(), "network left: {:?}", d.network_leftovers());
    let mine: Vec<String> =
        nat_rules().into_iter().filter(|r| r.contains(&format!("{PREFIX}.")) && !r.contains("berth network")).collect();
    assert!(mine.is_empty(), "nat rules left: {mine:?}");
    d.berth(&["network", "rm", "berth"]).ok();
    let left: Vec<String> = nat_rules().into_iter().filter(|r| r.contains(&format!("{PREFIX}."))).collect();
    assert!(left.is_empty(), "nat rules left: {left:?}");
}
