//! Networking (issue 11; SPEC B2, B9, B20, B31, B33), for real: CNI
//! bridge networks with host-local addresses, published ports answering on
//! 127.0.0.1, none/host/container:ID modes, resolver files, rollback of a
//! create that fails after ADD, a berthd killed during ADD, a thousand
//! create/rm cycles that leak no address, and bad input refused with
//! nothing allocated. Each test's berthd has a bridge and subnet of its
//! own; traffic goes only to loopback and to the test's containers.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use berth_e2e::http_get;
use berth_testing::{Daemon, Output, PortmapChains, nat_rules};
use serde_json::Value;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A berthd whose default network `berth` is a bridge and /24 of its own;
/// on drop its containers and networks go (CNI DEL), then the bridges.
struct Net {
    d: Daemon,
    bridge: String,
    /// The subnet's first three octets: `10.216.N`.
    prefix: String,
    rootfs: String,
}

impl Net {
    fn start(extra: &[&str]) -> Net {
        let n = NEXT.fetch_add(1, Ordering::SeqCst) + 10 * (std::process::id() % 20);
        let (bridge, prefix) = (format!("btnet{n}"), format!("10.216.{n}"));
        let subnet = format!("{prefix}.0/24");
        let mut args = vec!["--default-network", "berth", "--network-bridge", &bridge, "--network-subnet", &subnet];
        args.extend_from_slice(extra);
        let d = Daemon::start_with(&args);
        let rootfs = d.rootfs.to_string_lossy().into_owned();
        Net { d, bridge, prefix, rootfs }
    }

    fn berth(&self, args: &[&str]) -> Output {
        self.d.berth(args)
    }

    /// `berth run --rm [flags] ROOTFS sh -c script`; its output.
    fn sh(&self, flags: &[&str], script: &str) -> String {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[&self.rootfs, "sh", "-c", script]);
        self.berth(&args).ok().to_string()
    }

    /// The container's first address, without the prefix length.
    fn ip(&self, id: &str) -> String {
        let c = self.d.inspect(id);
        let cidr = c["network"]["ips"][0].as_str().unwrap_or_else(|| panic!("no address: {c}")).to_string();
        cidr.split('/').next().unwrap().to_string()
    }

    /// Addresses host-local still holds for this daemon's networks.
    fn reservations(&self) -> Vec<String> {
        let ipam = self.d.state.join("network/ipam");
        let nets = std::fs::read_dir(&ipam).into_iter().flatten().flatten();
        nets.flat_map(|n| std::fs::read_dir(n.path()).into_iter().flatten().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    /// Asserts that no container of this daemon holds anything of the
    /// network: address, veth on the bridge, namespace, attachment record.
    #[track_caller]
    fn assert_clean(&self) {
        assert!(self.reservations().is_empty(), "addresses still reserved: {:?}", self.reservations());
        // The kernel removes a dropped namespace's veth in the background.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !bridge_ports(&self.bridge).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let ports = bridge_ports(&self.bridge);
        assert!(ports.is_empty(), "veths left on {}: {ports:?}", self.bridge);
        assert!(self.d.network_leftovers().is_empty(), "left: {:?}", self.d.network_leftovers());
        let nat = nat_rules();
        // The network's own masquerade rule stays as long as the network.
        let per_container = |r: &&String| r.contains(&format!("{}.", self.prefix)) && !r.contains("berth network");
        let mine: Vec<&String> = nat.iter().filter(per_container).collect();
        assert!(mine.is_empty(), "nat rules left for {}.0/24: {mine:?}", self.prefix);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        berth_e2e::remove_networks(&self.d, &self.bridge);
    }
}

/// Interfaces enslaved to `bridge`.
fn bridge_ports(bridge: &str) -> Vec<String> {
    berth_e2e::registry::entries(&PathBuf::from(format!("/sys/class/net/{bridge}/brif")))
}

/// A TCP port free on the host right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Waits until `run --rm` removals are done (berthd removes after the exit).
fn await_no_containers(d: &Daemon) {
    berth_e2e::registry::await_no_containers(d, "run --rm removals");
}

#[test]
fn containers_reach_each_other_and_a_published_port_answers_on_loopback() {
    let _chains = PortmapChains::note();
    let net = Net::start(&[]);
    let port = free_port().to_string();
    let publish = format!("{port}:80");
    let script = "echo hello-from-web > /www/index.html && exec httpd -f -p 80 -h /www";
    let args = ["run", "-d", "--name", "web", "--tmpfs", "/www", "-p", &publish, &net.rootfs, "sh", "-c", script];
    net.berth(&args).ok();
    let web = net.d.inspect("web");
    let ip = net.ip("web");
    assert!(ip.starts_with(&format!("{}.", net.prefix)), "{web}");
    assert_eq!(web["network"]["mode"], "berth");
    assert_eq!(web["network"]["interface"], "eth0");
    assert_eq!(web["network"]["gateway"], format!("{}.1", net.prefix));
    assert_eq!(web["network"]["mac"].as_str().map(|m| m.len()), Some(17), "{web}");
    assert_eq!(web["network"]["ports"], serde_json::json!([format!("{port}:80/tcp")]));
    assert!(net.berth(&["ps"]).ok().contains(&format!("{port}->80/tcp")));

    // From the host, on loopback, through the published port.
    assert!(http_get(port.parse().unwrap()).ends_with("hello-from-web\n"));
    // From another container on the network, by address.
    let got = net.sh(&[], &format!("wget -q -O - http://{ip}/ || (sleep 1; wget -q -O - http://{ip}/)"));
    assert_eq!(got, "hello-from-web\n");

    // A port that is taken: by another container, or by the host.
    let out = net.berth(&["run", "-d", "--name", "web2", "-p", &publish, &net.rootfs, "true"]);
    assert!(out.fails_with("failed precondition").contains("already published by default/web"));
    let host = TcpListener::bind("0.0.0.0:0").expect("bind");
    let taken = format!("{}:80", host.local_addr().unwrap().port());
    let out = net.berth(&["run", "-d", "--name", "web3", "-p", &taken, &net.rootfs, "true"]);
    assert!(out.fails_with("failed precondition").contains("in use on the host"), "{out:?}");
    drop(host);
    for id in ["web2", "web3"] {
        net.berth(&["inspect", id]).fails_with("not found");
    }

    net.berth(&["rm", "-f", "web"]).ok();
    await_no_containers(&net.d);
    net.assert_clean();
    assert!(!nat_rules().iter().any(|r| r.contains(&format!("--dport {port}"))), "port rules left");
}

#[test]
fn none_host_and_container_modes() {
    let net = Net::start(&[]);
    let ns_of = |flags: &[&str]| net.sh(flags, "readlink /proc/self/ns/net").trim().to_string();
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap().to_string_lossy().into_owned();

    let devices = net.sh(&["--network", "none"], "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '");
    assert_eq!(devices, "lo\n", "none: loopback only");
    assert_eq!(net.sh(&["--network", "none"], "ping -c1 -W1 127.0.0.1 >/dev/null && echo up"), "up\n");
    assert_eq!(ns_of(&["--network", "host"]), host_ns);
    assert_ne!(ns_of(&[]), host_ns);

    net.berth(&["run", "-d", "--name", "a", &net.rootfs, "sleep", "1000"]).ok();
    let a_ns = net.berth(&["exec", "a", "readlink", "/proc/self/ns/net"]).ok().trim().to_string();
    assert_eq!(ns_of(&["--network", "container:a"]), a_ns);
    let ip = net.ip("a");
    assert!(net.sh(&["--network", "container:a"], "ip -4 addr show eth0").contains(&ip));

    // CHECK on demand: intact, then broken from inside (a container may
    // break its own network only with NET_ADMIN), then not applicable.
    net.berth(&["network", "check", "a"]).ok();
    net.berth(&["run", "-d", "--name", "admin", "--cap-add", "NET_ADMIN", &net.rootfs, "sleep", "1000"]).ok();
    net.berth(&["network", "check", "admin"]).ok();
    net.berth(&["exec", "admin", "ip", "addr", "flush", "dev", "eth0"]).ok();
    let e = net.berth(&["network", "check", "admin"]).fails_with_any();
    assert!(e.contains("CHECK failed"), "{e}");
    net.berth(&["rm", "-f", "admin"]).ok();

    // A container that shares a's namespace keeps a from going.
    net.berth(&["run", "-d", "--name", "b", "--network", "container:a", &net.rootfs, "sleep", "1000"]).ok();
    let e = net.berth(&["rm", "-f", "a"]).fails_with("failed precondition");
    assert!(e.contains("shares its network namespace with b"), "{e}");
    assert_eq!(net.berth(&["exec", "b", "readlink", "/proc/self/ns/net"]).ok().trim(), a_ns);
    let e = net.berth(&["network", "check", "b"]).fails_with("failed precondition");
    assert!(e.contains("--network container:a"), "{e}");
    net.berth(&["rm", "-f", "b"]).ok();
    net.berth(&["rm", "-f", "a"]).ok();
    await_no_containers(&net.d);
    net.assert_clean();
}

/// `--network none` takes a namespace the runtime makes: nothing is
/// mounted on the host for it, its loopback is up (also after a restart).
/// The first `container:ID` join pins it, and from then on the target's
/// restarts and its joiners share the pin, released with the target.
#[test]
fn none_namespace_is_pinned_only_when_joined() {
    let net = Net::start(&[]);
    // Namespaces this daemon pinned (other tests run beside it; the
    // directory's own mount stays while berthd runs).
    let dir = net.d.dir().to_string_lossy().into_owned();
    let pins = || std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounts = || pins().lines().filter(|l| l.contains(&dir) && l.contains(" nsfs ")).count();
    let before = mounts();
    let run = ["run", "-d", "--name", "n", "--network", "none", "--restart", "always"];
    net.berth(&[&run[..], &[net.rootfs.as_str(), "sleep", "1000"]].concat()).ok();
    assert_eq!(mounts(), before, "no mount on the host for a none namespace");
    assert_eq!(net.d.inspect("n")["network"]["netns"].as_str().unwrap_or(""), "");
    let lo_up = |id: &str| net.berth(&["exec", id, "sh", "-c", "ping -c1 -W1 127.0.0.1 >/dev/null && echo up"]);
    let ns_of = |id: &str| net.berth(&["exec", id, "readlink", "/proc/self/ns/net"]).ok().trim().to_string();
    assert_eq!(lo_up("n").ok(), "up\n");
    let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap().to_string_lossy().into_owned();
    assert_ne!(ns_of("n"), host_ns);

    // A restart before anyone joined makes a new namespace, lo up again.
    net.berth(&["kill", "-s", "KILL", "n"]).ok();
    net.d.inspect_until("n", |c| c["state"] == "running" && c["restart_count"] == 1);
    assert_eq!(lo_up("n").ok(), "up\n");

    // Joining pins it; the target's restart stays in it with its joiner.
    let n_ns = ns_of("n");
    net.berth(&["run", "-d", "--name", "j", "--network", "container:n", &net.rootfs, "sleep", "1000"]).ok();
    assert_eq!(ns_of("j"), n_ns);
    assert!(!net.d.inspect("n")["network"]["netns"].as_str().unwrap_or("").is_empty(), "pinned on join");
    net.berth(&["kill", "-s", "KILL", "n"]).ok();
    net.d.inspect_until("n", |c| c["state"] == "running" && c["restart_count"] == 2);
    assert_eq!(ns_of("n"), n_ns, "a restart joins the pin");
    assert_eq!(lo_up("n").ok(), "up\n");
    let e = net.berth(&["rm", "-f", "n"]).fails_with("failed precondition");
    assert!(e.contains("shares its network namespace with j"), "{e}");
    net.berth(&["rm", "-f", "j"]).ok();
    net.berth(&["rm", "-f", "n"]).ok();
    assert_eq!(mounts(), before, "the pin goes with the target");

    // A created (not started) target can be joined; a stopped one cannot.
    net.berth(&["create", "--name", "c", "--network", "none", &net.rootfs, "sleep", "1000"]).ok();
    net.berth(&["run", "-d", "--name", "cj", "--network", "container:c", &net.rootfs, "sleep", "1000"]).ok();
    assert_eq!(lo_up("cj").ok(), "up\n");
    net.berth(&["rm", "-f", "cj"]).ok();
    net.berth(&["rm", "-f", "c"]).ok();
    net.berth(&["run", "-d", "--name", "s", "--network", "none", &net.rootfs, "sleep", "1000"]).ok();
    net.berth(&["stop", "-t", "1", "s"]).ok();
    let e =
        net.berth(&["run", "--rm", "--network", "container:s", &net.rootfs, "true"]).fails_with("failed precondition");
    assert!(e.contains("exists only while it runs"), "{e}");
    net.berth(&["rm", "-f", "s"]).ok();
    assert_eq!(mounts(), before);
    await_no_containers(&net.d);
    net.assert_clean();
}

#[test]
fn resolver_files_follow_the_options() {
    let net = Net::start(&[]);
    let flags = ["--hostname", "web", "--dns", "192.0.2.53", "--add-host", "db:192.0.2.10", "--name", "files"];
    let mut args = vec!["run", "-d"];
    args.extend_from_slice(&flags);
    args.extend_from_slice(&[&net.rootfs, "sleep", "1000"]);
    net.berth(&args).ok();
    let cat = |f: &str| net.berth(&["exec", "files", "cat", f]).ok().to_string();
    assert_eq!(cat("/etc/hostname"), "web\n");
    assert_eq!(net.berth(&["exec", "files", "hostname"]).ok(), "web\n");
    let hosts = cat("/etc/hosts");
    let ip = net.ip("files");
    assert!(hosts.lines().any(|l| l.starts_with("127.0.0.1") && l.contains("localhost")), "{hosts}");
    assert!(hosts.lines().any(|l| l.starts_with(&ip) && l.split_whitespace().any(|w| w == "web")), "{hosts}");
    assert!(hosts.lines().any(|l| l.starts_with("192.0.2.10") && l.split_whitespace().any(|w| w == "db")), "{hosts}");
    let resolv = cat("/etc/resolv.conf");
    let servers: Vec<&str> = resolv.lines().filter(|l| l.starts_with("nameserver")).collect();
    assert_eq!(servers, ["nameserver 192.0.2.53"], "{resolv}");

    // Without --dns: the host's servers, but none on loopback (unreachable
    // from another namespace).
    let resolv = net.sh(&[], "cat /etc/resolv.conf");
    assert!(resolv.lines().any(|l| l.starts_with("nameserver")), "{resolv}");
    assert!(!resolv.lines().any(|l| l.starts_with("nameserver 127.") || l == "nameserver ::1"), "{resolv}");
    // Host mode: the host's own hosts file.
    let host_hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    assert_eq!(net.sh(&["--network", "host"], "cat /etc/hosts"), host_hosts);
    net.berth(&["rm", "-f", "files"]).ok();
    await_no_containers(&net.d);
    net.assert_clean();
}

#[test]
fn a_create_that_fails_after_the_network_is_attached_leaves_nothing() {
    let net = Net::start(&[]);
    for runtime in ["embedded", "runc"] {
        let out = net.berth(&["create", "--name", "broken", "--runtime", runtime, &net.rootfs, "/no/such/binary"]);
        assert!(out.fails_with_any().contains("runtime create"), "{runtime}: {out:?}");
        net.berth(&["inspect", "broken"]).fails_with("not found");
        net.assert_clean();
    }
    // The network itself works on: the next container gets an address.
    assert!(net.sh(&[], "ip -4 addr show eth0").contains(&format!("{}.", net.prefix)));
}

/// A conf-dir network whose bridge plugin is a script (in its own plugin
/// directory) that first runs `prelude`, then the real plugin.
fn scripted_network(dir: &Path, name: &str, bridge: &str, prefix: &str, prelude: &str) -> (PathBuf, PathBuf) {
    let (bin, conf) = (dir.join("cni-bin"), dir.join("cni-conf"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    let plugin = bin.join(format!("{name}-bridge"));
    std::fs::write(&plugin, format!("#!/bin/sh\n{prelude}\nexec /usr/lib/cni/bridge \"$@\"\n")).unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&plugin).unwrap().permissions(), 0o755);
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let list = serde_json::json!({
        "cniVersion": "1.0.0", "name": name,
        "plugins": [{
            "type": format!("{name}-bridge"), "bridge": bridge, "isGateway": true, "ipMasq": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": format!("{prefix}.0/24")}]],
                     "dataDir": dir.join("admin-ipam").to_string_lossy()}
        }]
    });
    std::fs::write(conf.join(format!("{name}.conflist")), list.to_string()).unwrap();
    (bin, conf)
}

#[test]
fn berthd_killed_during_cni_add_leaves_nothing_after_restart() {
    let scratch = tempfile::tempdir().unwrap();
    let n = NEXT.fetch_add(1, Ordering::SeqCst) + 10 * (std::process::id() % 20);
    let (bridge, prefix) = (format!("btslow{n}"), format!("10.218.{n}"));
    let (bin, conf) = scripted_network(scratch.path(), "slow", &bridge, &prefix, "sleep 1");
    let bin_dirs = format!("{}:/usr/lib/cni", bin.display());
    let net = Net::start(&["--cni-bin-dir", &bin_dirs, "--cni-conf-dir", conf.to_str().unwrap()]);
    let _bridge = BridgeGuard(bridge.clone());
    let mut client = net.d.berth_spawn(&["run", "-d", "--name", "cut", "--network", "slow", &net.rootfs, "sleep", "9"]);
    // Kill berthd while the plugin runs (its namespace and cache exist).
    let deadline = Instant::now() + Duration::from_secs(10);
    while net.d.network_leftovers().len() < 2 {
        assert!(Instant::now() < deadline, "the attachment never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    net.d.kill9();
    let _ = client.wait();
    net.d.spawn();
    // Whatever the killed ADD would still have done must not appear later.
    std::thread::sleep(Duration::from_millis(1500));
    net.berth(&["inspect", "cut"]).fails_with("not found");
    assert!(net.d.network_leftovers().is_empty(), "left: {:?}", net.d.network_leftovers());
    let ipam = berth_e2e::registry::entries(&scratch.path().join("admin-ipam/slow"));
    assert!(ipam.iter().all(|f| f == "lock" || f.starts_with("last_reserved_ip")), "addresses left: {ipam:?}");
    assert!(bridge_ports(&bridge).is_empty(), "veths left: {:?}", bridge_ports(&bridge));
    assert!(!nat_rules().iter().any(|r| r.contains(&format!("{prefix}."))), "nat rules left");
    // The network still works after the restart.
    assert!(net.sh(&["--network", "slow"], "ip -4 addr show eth0").contains(&format!("{prefix}.")));
    await_no_containers(&net.d);
    net.assert_clean();
}

/// Deletes a bridge the test's own conflist made.
struct BridgeGuard(String);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = berth_network::delete_bridge(&self.0);
    }
}

#[test]
fn a_thousand_create_rm_cycles_leak_no_address() {
    let net = Net::start(&[]);
    let cycles: usize = std::env::var("BERTH_NET_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for worker in 0..2 {
            let net = &net;
            s.spawn(move || {
                for i in (worker..cycles).step_by(2) {
                    let id = format!("c{i}");
                    net.berth(&["create", "--name", &id, &net.rootfs, "true"]).ok();
                    net.berth(&["rm", "-f", &id]).ok();
                }
            });
        }
    });
    // A /24 has 253 addresses: a leak would have failed the creates above.
    eprintln!("{cycles} create/rm cycles on a /24 in {:.1?}", t0.elapsed());
    net.assert_clean();
}

#[test]
fn bad_network_input_is_refused_and_allocates_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let n = NEXT.fetch_add(1, Ordering::SeqCst) + 10 * (std::process::id() % 20);
    let bridge = format!("btbad{n}");
    let (bin, conf) = scripted_network(scratch.path(), "hangs", &bridge, &format!("10.219.{n}"), "sleep 30");
    std::fs::write(
        bin.join("fails-bridge"),
        "#!/bin/sh\ncat >/dev/null\necho '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"no luck today\"}'\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(bin.join("fails-bridge"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let one = |name: &str, plugin: &str| {
        let list = serde_json::json!({"cniVersion": "1.0.0", "name": name, "plugins": [{"type": plugin}]});
        std::fs::write(conf.join(format!("{name}.conflist")), list.to_string()).unwrap();
    };
    one("fails", "fails-bridge");
    one("absent", "no-such-plugin");
    std::fs::write(conf.join("broken.conflist"), "{\"name\": \"broken\", \"plugins\": [").unwrap();
    let bin_dirs = format!("{}:/usr/lib/cni", bin.display());
    let conf_dir = conf.to_string_lossy().into_owned();
    let net = Net::start(&["--cni-bin-dir", &bin_dirs, "--cni-conf-dir", &conf_dir, "--cni-timeout", "2"]);
    let _bridge = BridgeGuard(bridge);
    let create = |flags: &[&str]| {
        let mut args = vec!["create", "--name", "bad"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[&net.rootfs, "true"]);
        net.berth(&args)
    };
    let refused = |flags: &[&str], kind: &str, says: &str| {
        let e = create(flags).fails_with(kind);
        assert!(e.contains(says), "{flags:?}: {e}");
        net.berth(&["inspect", "bad"]).fails_with("not found");
        net.assert_clean();
    };
    refused(&["--network", "nosuch"], "not found", "network nosuch not found");
    refused(&["--network", "a/b"], "invalid argument", "network name");
    refused(&["--network", "container:nosuch"], "invalid argument", "no such container");
    refused(&["-p", "80"], "invalid argument", "port mapping");
    refused(&["-p", "70000:80"], "invalid argument", "port mapping");
    refused(&["-p", "8080:80", "--network", "none"], "invalid argument", "publishing ports needs a network");
    refused(&["-p", "8080:80", "-p", "8080:81"], "invalid argument", "8080");
    refused(&["--dns", "not-an-ip"], "invalid argument", "not-an-ip");
    refused(&["--add-host", "no-address"], "invalid argument", "no-address");
    refused(&["--network", "broken"], "invalid argument", "broken");
    refused(&["--network", "absent"], "failed precondition", "no-such-plugin");
    refused(&["--network", "fails"], "error", "no luck today");
    let t0 = Instant::now();
    refused(&["--network", "hangs"], "deadline exceeded", "did not finish within 2 s");
    assert!(t0.elapsed() < Duration::from_secs(15), "the timeout took {:?}", t0.elapsed());

    // Networks: bad subnets, overlaps, duplicates, removal rules.
    let overlap = format!("{}.128/25", net.prefix);
    net.berth(&["network", "ls"]).ok();
    net.berth(&["run", "--rm", &net.rootfs, "true"]).ok(); // makes the default network
    assert!(
        net.berth(&["network", "create", "--subnet", &overlap, "x"]).fails_with("invalid argument").contains("overlap")
    );
    net.berth(&["network", "create", "--subnet", "10.1.2.3/24", "x"]).fails_with("invalid argument");
    net.berth(&["network", "create", "--subnet", "nonsense", "x"]).fails_with("invalid argument");
    net.berth(&["network", "create", "host"]).fails_with("invalid argument");
    net.berth(&["network", "create", "berth"]).fails_with("already exists");
    net.berth(&["network", "inspect", "x"]).fails_with("not found");
    net.berth(&["network", "rm", "fails"]).fails_with("failed precondition");
    net.berth(&["create", "--name", "holder", &net.rootfs, "true"]).ok();
    let e = net.berth(&["network", "rm", "berth"]).fails_with("failed precondition");
    assert!(e.contains("default/holder"), "{e}");
    net.berth(&["rm", "-f", "holder"]).ok();
    await_no_containers(&net.d);
    net.assert_clean();
}

#[test]
fn networks_are_created_listed_inspected_and_removed() {
    let net = Net::start(&[]);
    let n = NEXT.fetch_add(1, Ordering::SeqCst) + 10 * (std::process::id() % 20);
    let subnet = format!("10.217.{n}.0/24");
    net.berth(&["network", "create", "--subnet", &subnet, "front"]).ok();
    let info: Value = serde_json::from_str(net.berth(&["network", "inspect", "front"]).ok()).unwrap();
    assert_eq!(info["subnet"], subnet.as_str());
    assert_eq!(info["managed"], true);
    assert_eq!(info["plugins"], serde_json::json!(["bridge", "portmap"]));
    net.berth(&["run", "--rm", "--network", "front", &net.rootfs, "true"]).ok();
    let masquerade =
        format!("-A POSTROUTING -s {subnet} ! -d {subnet} -m comment --comment \"berth network front\" -j MASQUERADE");
    assert!(nat_rules().contains(&masquerade), "no masquerade rule {masquerade}: {:?}", nat_rules());
    let bridge = info["bridge"].as_str().unwrap().to_string();
    assert!(bridge.starts_with("br-") && bridge.len() <= 15, "{info}");
    let _bridge = BridgeGuard(bridge.clone());

    net.berth(&["run", "-d", "--name", "f", "--network", "front", &net.rootfs, "sleep", "1000"]).ok();
    assert!(net.ip("f").starts_with(&format!("10.217.{n}.")));
    let list: Value = serde_json::from_str(net.berth(&["network", "ls", "--json"]).ok()).unwrap();
    let front = list.as_array().unwrap().iter().find(|x| x["name"] == "front").cloned().unwrap();
    assert_eq!(front["containers"], serde_json::json!(["default/f"]));
    assert!(net.berth(&["network", "ls"]).ok().contains(&bridge));
    net.berth(&["network", "rm", "front"]).fails_with("failed precondition");
    net.berth(&["rm", "-f", "f"]).ok();
    net.berth(&["network", "rm", "front"]).ok();
    assert!(!Path::new(&format!("/sys/class/net/{bridge}")).exists(), "bridge {bridge} left");
    let masquerade: Vec<String> = nat_rules().into_iter().filter(|r| r.contains(&format!("10.217.{n}."))).collect();
    assert!(masquerade.is_empty(), "rules of the removed network left: {masquerade:?}");
    net.berth(&["network", "inspect", "front"]).fails_with("not found");
    net.assert_clean();
}
