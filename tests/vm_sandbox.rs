//! VM sandboxes and what runs in a VM beyond the basics (SPEC B26,
//! docs/vm.md): two containers in one guest (`sandbox create --vm`), OOM
//! kills inside the guest, `kill --all`, restart policies, an image as a
//! VM container's root, and a VM on its container's network. Under TCG here. Run as root after `make vm-assets`.

use std::time::{Duration, Instant};

use berth_e2e::registry::{LAYER_TAR, Registry, await_no_containers, push_image, sha256, tar_of};
use berth_testing::vm::{assert_nothing_left, daemon, release, vm_processes};
use berth_testing::{Daemon, PortmapChains, nat_rules};
use oci_client::secrets::RegistryAuth;
use serde_json::Value;

fn rootfs(d: &Daemon) -> String {
    d.rootfs.to_string_lossy().into_owned()
}

fn qemus(d: &Daemon) -> usize {
    vm_processes(d).iter().filter(|(_, args)| args.contains("qemu-system")).count()
}

fn json(d: &Daemon, args: &[&str]) -> Value {
    serde_json::from_str(d.berth(args).ok()).unwrap()
}

/// Waits until container `id`'s log holds `text`.
fn await_log(d: &Daemon, id: &str, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = d.berth(&["logs", id]).stdout;
        if logs.contains(text) {
            return logs;
        }
        assert!(Instant::now() < deadline, "no {text:?} in the logs of {id}: {logs}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_vm_sandbox_runs_its_containers_in_one_guest() {
    let d = daemon();
    let root = rootfs(&d);
    let e = d.berth(&["sandbox", "create", "--vm", "--network", "host"]).fails_with("failed precondition");
    assert!(e.contains("network"), "{e}");
    let e = d.berth(&["sandbox", "create", "--vm", "--pid", "pod"]).fails_with("failed precondition");
    assert!(e.contains("PID"), "{e}");
    d.berth(&["sandbox", "create", "--vm", "--cpus", "99"]).fails_with("invalid argument");
    d.berth(&["sandbox", "create", "--vm", "--memory", "2048g"]).fails_with("invalid argument");
    d.berth(&["sandbox", "create", "--cpus", "2"]).fails_with_any();
    assert_eq!(d.berth(&["sandbox", "ls", "--json"]).ok().trim(), "[]");
    assert_eq!(qemus(&d), 0);

    d.berth(&["sandbox", "create", "--vm", "--name", "pod", "--network", "none", "--cpus", "2", "--memory", "300m"])
        .ok();
    let sb = json(&d, &["sandbox", "inspect", "pod"]);
    assert_eq!((sb["runtime"].as_str(), sb["vm"]["cpus"].as_u64()), (Some("vm"), Some(2)), "{sb}");
    assert_eq!(sb["vm"]["memory_mib"], 300, "{sb}");
    assert!(["kvm", "tcg"].contains(&sb["vm"]["accel"].as_str().unwrap()), "{sb}");

    let marker = "cat /proc/sys/kernel/random/boot_id; uname -r; nproc; grep Seccomp: /proc/self/status; \
                  echo up; exec sleep 1000";
    for id in ["a", "b"] {
        d.berth(&["run", "-d", "--name", id, "--sandbox", "pod", &root, "sh", "-c", marker]).ok();
    }
    let (a, b) = (await_log(&d, "a", "up"), await_log(&d, "b", "up"));
    // One guest: one boot, its kernel, the sandbox's two vCPUs.
    assert_eq!(a.lines().next(), b.lines().next(), "one boot id: {a} {b}");
    assert_eq!(a.lines().nth(1), Some(release().as_str()), "{a}");
    assert_eq!(a.lines().nth(2), Some("2"), "{a}");
    // Both filtered: the second container loads the program the guest's
    // shim compiled for the first.
    for out in [&a, &b] {
        assert_eq!(out.lines().nth(3), Some("Seccomp:\t2"), "{out}");
    }
    assert_eq!(qemus(&d), 1, "{:?}", vm_processes(&d));
    let inspect = json(&d, &["inspect", "--json", "a"]);
    assert_eq!(inspect["sandbox"], "pod", "{inspect}");
    // A container in a VM sandbox names the sandbox's VM, as its events do.
    assert_eq!(inspect["vm"], sb["vm"], "{inspect}");
    let events = d.berth(&["events", "--since", "0", "--no-follow", "--id", "a", "--json"]).ok().to_string();
    let create: Value = serde_json::from_str(events.lines().next().unwrap()).unwrap();
    assert_eq!((&create["type"], &create["vm"]), (&Value::from("create"), &sb["vm"]), "{events}");

    // An attached run in the sandbox, with its exit code.
    let out = d.berth(&["run", "--rm", "--sandbox", "pod", &root, "sh", "-c", "echo hi; exit 3"]);
    assert_eq!((out.code, out.stdout.as_str()), (3, "hi\n"), "{out:?}");
    // One container's end leaves the VM and the other container running.
    d.berth(&["kill", "-s", "KILL", "b"]).ok();
    assert_eq!(d.berth(&["wait", "b"]).code, 137);
    assert_eq!(qemus(&d), 1);
    assert_eq!(d.berth(&["exec", "a", "echo", "still"]).ok().trim(), "still");
    let filtered = d.berth(&["exec", "a", "grep", "Seccomp:", "/proc/self/status"]).ok().trim().to_string();
    assert_eq!(filtered, "Seccomp:\t2", "an exec in the VM is filtered too");
    // Its id can be used again in the running guest.
    d.berth(&["rm", "b"]).ok();
    d.berth(&["run", "-d", "--name", "b", "--sandbox", "pod", &root, "sh", "-c", marker]).ok();
    await_log(&d, "b", "up");

    d.berth(&["sandbox", "rm", "pod"]).fails_with("failed precondition");
    d.berth(&["rm", "-f", "a", "b"]).ok();
    assert_eq!(qemus(&d), 1, "the VM is the sandbox's, not its containers'");
    d.berth(&["sandbox", "rm", "pod"]).ok();
    assert_nothing_left(&d);
}

#[test]
fn oom_kills_and_kill_all_inside_a_vm() {
    let d = daemon();
    let root = rootfs(&d);
    // 100 MB in a shell variable does not fit a 32 MiB limit in the guest.
    let hog = "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}";
    let out = d.berth(&["run", "--name", "o", "--vm", "--memory", "32m", &root, "sh", "-c", hog]);
    assert_eq!(out.code, 137, "{out:?}\n{}", d.log());
    let inspect = json(&d, &["inspect", "--json", "o"]);
    assert_eq!(inspect["oom_killed"], true, "{inspect}");
    assert_eq!(inspect["vm"]["memory_mib"], 128 + 64, "the minimum plus the guest's own: {inspect}");
    let events = d.berth(&["events", "--since", "0", "--no-follow", "--id", "o", "--json"]).ok().to_string();
    let kinds: Vec<String> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["type"].as_str().map(String::from))
        .collect();
    let (oom, exit) = (kinds.iter().position(|k| *k == "oom"), kinds.iter().position(|k| *k == "exit"));
    assert!(oom.is_some() && oom < exit, "an oom event before the exit: {events}");
    d.berth(&["rm", "o"]).ok();

    let script = "sleep 1000 & sleep 1000 & wait";
    d.berth(&["run", "-d", "--name", "k", "--vm", "--memory", "48m", &root, "sh", "-c", script]).ok();
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.berth(&["top", "k"]).stdout.lines().count() < 4 {
        assert!(Instant::now() < deadline, "{}", d.berth(&["top", "k"]).stdout);
        std::thread::sleep(Duration::from_millis(50));
    }
    // An OOM kill that leaves init running is told while it runs (from
    // the guest's count, asked every second), and once.
    // (tail looks for a line end in endless zeros: memory fast.)
    assert_eq!(d.berth(&["exec", "k", "tail", "/dev/zero"]).code, 137);
    let ooms = || {
        let events = d.berth(&["events", "--since", "0", "--no-follow", "--id", "k", "--type", "oom"]).ok().to_string();
        events.lines().count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while ooms() == 0 {
        assert!(Instant::now() < deadline, "no oom event: {}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(json(&d, &["inspect", "--json", "k"])["state"], "running");
    d.berth(&["kill", "-s", "KILL", "--all", "k"]).ok();
    assert_eq!(d.berth(&["wait", "k"]).code, 137);
    assert_eq!(ooms(), 1, "told once, not again at the exit");
    d.berth(&["rm", "k"]).ok();
    assert_nothing_left(&d);
}

#[test]
fn a_restart_policy_boots_a_new_vm_for_each_run() {
    let d = daemon();
    let root = rootfs(&d);
    let script = "uname -r; exit 3";
    d.berth(&["run", "-d", "--name", "r", "--vm", "--restart", "on-failure:2", &root, "sh", "-c", script]).ok();
    let deadline = Instant::now() + Duration::from_secs(60);
    let rec = loop {
        let rec = json(&d, &["inspect", "--json", "r"]);
        if rec["restart_count"] == 2 && rec["state"] == "stopped" {
            break rec;
        }
        assert!(Instant::now() < deadline, "{rec}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rec["exit"]["code"], 3, "{rec}");
    // Three runs, each on the guest's kernel.
    let logs = d.berth(&["logs", "r"]).ok().to_string();
    assert_eq!(logs.lines().filter(|l| *l == release()).count(), 3, "{logs}");
    d.berth(&["rm", "r"]).ok();
    assert_nothing_left(&d);
}

#[test]
fn an_image_runs_in_a_vm() {
    let d = daemon();
    let reg = Registry::start();
    let reference = format!("{}/vm/busybox:1", reg.addr);
    let layer = tar_of(&[], Some(&d.rootfs));
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["uname", "-r"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
    }))
    .unwrap();
    push_image(&reference, &RegistryAuth::Anonymous, &[(LAYER_TAR, &layer)], &config);
    d.berth(&["pull", "--insecure", &reference]).ok();
    let out = d.berth(&["run", "--rm", "--vm", &reference]);
    assert_eq!(out.ok().trim(), release(), "{}", d.log());
    // In a VM sandbox, whose shim made its mount namespace before the
    // image's root was mounted: the mount reaches it, also when another
    // container's root is mounted while the sandbox starts (which once
    // kept berthd from sharing the bundle directory).
    d.berth(&["run", "-d", "--name", "held", &reference, "sleep", "600"]).ok();
    d.berth(&["sandbox", "create", "--vm", "--name", "pod"]).ok();
    let out = d.berth(&["run", "--rm", "--sandbox", "pod", &reference]);
    assert_eq!(out.ok().trim(), release(), "{}", d.log());
    d.berth(&["rm", "-f", "held"]).ok();
    await_no_containers(&d, "run --rm removes the container");
    d.berth(&["sandbox", "rm", "pod"]).ok();
    assert_nothing_left(&d);
}

#[test]
fn a_vm_is_on_its_containers_network() {
    let _chains = PortmapChains::note();
    let n = std::process::id() % 200;
    let (bridge, prefix) = (format!("btvm{n}"), format!("10.220.{n}"));
    let subnet = format!("{prefix}.0/24");
    let net = ["--default-network", "berth", "--network-bridge", &bridge, "--network-subnet", &subnet];
    let d = Daemon::start_with(&[&net[..], &["--vm-assets", &berth_testing::vm::assets()]].concat());
    let _cleanup = berth_e2e::NetworkCleanup(&d, bridge.clone());
    let root = rootfs(&d);
    let e = d.berth(&["run", "--vm", "--network", "host", &root, "true"]).fails_with("failed precondition");
    assert!(e.contains("network"), "{e}");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let script = "echo hello-from-the-guest > /www/index.html && exec httpd -f -p 80 -h /www";
    let publish = format!("{port}:80");
    d.berth(&["run", "-d", "--name", "web", "--vm", "--tmpfs", "/www", "-p", &publish, &root, "sh", "-c", script]).ok();
    let web = json(&d, &["inspect", "--json", "web"]);
    let cidr = web["network"]["ips"][0].as_str().unwrap_or_else(|| panic!("no address: {web}")).to_string();
    let ip = cidr.split('/').next().unwrap().to_string();
    assert!(ip.starts_with(&prefix), "{web}");
    // The guest's eth0 has the container's address and MAC.
    let addr = d.berth(&["exec", "web", "ip", "addr", "show", "eth0"]).ok().to_string();
    assert!(addr.contains(&cidr) && addr.contains(web["network"]["mac"].as_str().unwrap()), "{addr}\n{web}");
    // From the host, on loopback, through the published port.
    assert!(berth_e2e::http_get(port.parse().unwrap()).ends_with("hello-from-the-guest\n"));
    // From a plain container on the same network, by address.
    let get = format!("wget -q -O - http://{ip}/ || (sleep 1; wget -q -O - http://{ip}/)");
    assert_eq!(d.berth(&["run", "--rm", &root, "sh", "-c", &get]).ok(), "hello-from-the-guest\n");
    d.berth(&["rm", "-f", "web"]).ok();

    // A restart boots a new VM in the same namespace, whose redirect
    // replaces the last one's: both runs find their address on eth0.
    let twice = "ip addr show eth0 | grep -q 'inet ' && exit 1";
    d.berth(&["run", "-d", "--name", "again", "--vm", "--restart", "on-failure:1", &root, "sh", "-c", twice]).ok();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rec = json(&d, &["inspect", "--json", "again"]);
        if rec["restart_count"] == 1 && rec["state"] == "stopped" {
            assert_eq!(rec["exit"]["code"], 1, "{rec}");
            break;
        }
        assert!(Instant::now() < deadline, "{rec}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    d.berth(&["rm", "again"]).ok();

    // A VM sandbox on the network: its containers share the guest's eth0.
    d.berth(&["sandbox", "create", "--vm", "--name", "pod"]).ok();
    d.berth(&["run", "-d", "--name", "a", "--sandbox", "pod", "--tmpfs", "/www", &root, "sh", "-c", script]).ok();
    let pod = json(&d, &["sandbox", "inspect", "pod"]);
    let ip = pod["network"]["ips"][0].as_str().unwrap_or_else(|| panic!("no address: {pod}")).split('/').next();
    let get = format!("wget -q -O - http://{0}/ || (sleep 1; wget -q -O - http://{0}/)", ip.unwrap());
    assert_eq!(d.berth(&["run", "--rm", &root, "sh", "-c", &get]).ok(), "hello-from-the-guest\n");
    d.berth(&["rm", "-f", "a"]).ok();
    d.berth(&["sandbox", "rm", "pod"]).ok();
    await_no_containers(&d, "run --rm removals");
    assert_nothing_left(&d);
    assert!(d.network_leftovers().is_empty(), "{:?}", d.network_leftovers());
    // The network's removal takes its bridge and masquerade rule.
    d.berth(&["network", "rm", "berth"]).ok();
    let left: Vec<String> = nat_rules().into_iter().filter(|r| r.contains(&format!("{prefix}."))).collect();
    assert!(left.is_empty(), "nat rules left: {left:?}");
    assert!(!std::path::Path::new("/sys/class/net").join(&bridge).exists(), "bridge {bridge} left");
}

/// A pod through CRI with the runtime handler `vm` (kubelet's
/// RuntimeClass): its containers run in the pod's VM, their output lands
/// in kubelet's log files in the CRI format, written on the host (the
/// guest gets no host file of the log directory) and followed across
/// kubelet's rotation; exec into them works.
#[test]
fn a_cri_pod_with_the_vm_handler_runs_in_a_guest() {
    use berth_e2e::cri_support::*;
    use k8s_cri::v1 as cri;
    let (d, _guard, _reg, _reference, image) = setup_with(&["--vm-assets", &berth_testing::vm::assets()]);
    let logs = d.dir().join("pod-logs");
    runtime().block_on(async {
        let mut c = clients(&d).await;
        let pod_cfg = kubelet_pod_config("vmpod", &logs);
        let req = cri::RunPodSandboxRequest { config: Some(pod_cfg.clone()), runtime_handler: "vm".into() };
        let pod = c.rt.run_pod_sandbox(req).await.expect("RunPodSandbox").into_inner().pod_sandbox_id;
        let cfg = container_config("k", &image, &["sh", "-c", "uname -r; exec sleep 1000"]);
        let id = create(&mut c, &pod, &pod_cfg, cfg).await;
        c.rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.expect("start");
        assert_eq!(sh(&mut c, &id, "uname -r").await, (release(), 0));
        let log = logs.join("k/0.log");
        // kubelet's format: TIMESTAMP STREAM TAG LINE.
        let text = logged(&log, &release()).await;
        assert!(text.lines().next().unwrap().ends_with(&format!(" stdout F {}", release())), "{text}");
        // kubelet's rotation: rename, then ReopenContainerLog; the next
        // line of the container's init goes to the new file.
        std::fs::rename(&log, logs.join("k/0.log.1")).unwrap();
        c.rt.reopen_container_log(cri::ReopenContainerLogRequest { container_id: id.clone() }).await.expect("reopen");
        assert_eq!(sh(&mut c, &id, "echo after-rotation > /proc/1/fd/1").await.1, 0);
        let text = logged(&log, "after-rotation").await;
        assert!(!text.contains(&release()), "{text}");
        let qemu = vm_processes(&d).into_iter().find(|(_, a)| a.contains("qemu-system")).map(|(pid, _)| pid);
        let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", qemu.expect("QEMU runs"))).unwrap();
        assert!(!mounts.lines().any(|l| l.contains("pod-logs")), "{mounts}");
        let e = c.rt.port_forward(cri::PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![80] }).await;
        assert_eq!(e.unwrap_err().code(), tonic::Code::FailedPrecondition);
        let stop = cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() };
        c.rt.stop_pod_sandbox(stop).await.expect("StopPodSandbox");
        let rm = cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() };
        c.rt.remove_pod_sandbox(rm).await.expect("RemovePodSandbox");
        assert_clean(&d, &[id]);
    });
    assert_nothing_left(&d);
}

/// The text of `log` once it holds `what` (within 20 s).
async fn logged(log: &std::path::Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} not in {text:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
