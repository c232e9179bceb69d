//! Attachments for real, as root: bridge + host-local + portmap from
//! /usr/lib/cni on a bridge and subnet unique to each test, fake plugins
//! (shell scripts) for failures. Every test checks that nothing is left:
//! no cache, namespace, veth, IPAM reservation or iptables rule.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use berth_model::Protocol;

use super::*;
use crate::Config;
use crate::netns::{DirMount, in_netns};

/// A berth state dir in a temp dir, a plugin dir of fake plugins next to
/// /usr/lib/cni, and a bridge network of its own. Dropping it detaches
/// whatever is still attached and deletes the bridge.
struct Fixture {
    nets: Networks,
    bridge: String,
    /// `10.X.Y.` of the test's /24.
    prefix: String,
    _mount: DirMount,
    tmp: tempfile::TempDir,
    /// Dropped after the attachments are gone.
    _chains: berth_testing::PortmapChains,
}

impl Fixture {
    /// `tag` (one letter) and `octet` keep tests apart from each other.
    fn new(tag: char, octet: u8, timeout: Duration) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for (name, body) in [
            ("slow", "sleep 30"),
            ("fail", r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"refused by test"}'; exit 1"#),
            ("failadd", r#"[ "$CNI_COMMAND" = ADD ] || exit 0; echo '{"code":11,"msg":"second refuses"}'; exit 1"#),
        ] {
            let path = bin.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let state = tmp.path().join("state");
        let pid = std::process::id();
        let cfg = Config {
            bin_dirs: vec!["/usr/lib/cni".into(), bin],
            conf_dir: tmp.path().join("conf"),
            root: tmp.path().join("root"),
            state: state.clone(),
            default_bridge: "unused0".into(),
            default_subnet: "10.255.255.0/24".into(),
            plugin_timeout: timeout,
        };
        Fixture {
            nets: Networks { cfg, masqueraded: Default::default() },
            bridge: format!("bt{tag}{}", pid % 10000),
            prefix: format!("10.{octet}.{}.", pid % 250),
            _mount: DirMount(state.join("netns")),
            tmp,
            _chains: berth_testing::PortmapChains::note(),
        }
    }

    /// bridge + host-local (IPAM data in the temp dir) + portmap, then `extra`.
    fn list(&self, extra: &[Value]) -> ConfList {
        let mut plugins = vec![
            serde_json::json!({
                "type": "bridge", "bridge": self.bridge, "isGateway": true, "ipMasq": true,
                "ipam": {
                    "type": "host-local", "dataDir": self.tmp.path().join("ipam"),
                    "ranges": [[{"subnet": format!("{}0/24", self.prefix)}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            }),
            serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}),
        ];
        plugins.extend_from_slice(extra);
        let json = serde_json::json!({"cniVersion": "1.0.0", "name": self.bridge, "plugins": plugins});
        ConfList::from_value(json, Path::new("test.conflist")).unwrap()
    }

    fn fake(&self, ty: &str) -> ConfList {
        let json = serde_json::json!({"cniVersion": "1.0.0", "name": "fake", "plugins": [{"type": ty}]});
        ConfList::from_value(json, Path::new("fake.conflist")).unwrap()
    }

    async fn attach(&self, id: &str, list: Option<ConfList>, ports: &[PortMapping]) -> Result<NetworkAttachment> {
        let network = list.as_ref().map(|l| l.name.clone());
        let req = AttachRequest { key: key(id), network: network.as_deref(), ports };
        self.nets.attach_with(req, list).await
    }

    /// Nothing of any attachment is left: caches, namespaces, IPAM
    /// reservations, veths on the bridge, iptables rules for the subnet.
    fn assert_clean(&self) {
        assert_eq!(self.nets.attached().unwrap(), vec![], "attachment caches left");
        assert_eq!(names(&self.nets.cache_dir()), Vec::<String>::new(), "cache dir");
        assert_eq!(names(&self.nets.netns_dir()), Vec::<String>::new(), "namespaces left");
        let reserved: Vec<String> = names(&self.tmp.path().join("ipam").join(&self.bridge))
            .into_iter()
            .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
            .collect();
        assert_eq!(reserved, Vec::<String>::new(), "IPAM reservations left");
        let ports = names(&Path::new("/sys/class/net").join(&self.bridge).join("brif"));
        assert_eq!(ports, Vec::<String>::new(), "veths left on {}", self.bridge);
        for table in ["nat", "filter"] {
            let out = std::process::Command::new("iptables").args(["-w", "-t", table, "-S"]).output().unwrap();
            let rules = String::from_utf8_lossy(&out.stdout);
            let left: Vec<&str> = rules.lines().filter(|l| l.contains(&self.prefix)).collect();
            assert!(left.is_empty(), "iptables {table} rules left: {left:?}");
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let keys = self.nets.attached().unwrap_or_default();
        let nets = &self.nets;
        // A runtime of its own: drop may run inside the test's runtime.
        std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                for key in &keys {
                    let _ = rt.block_on(nets.detach(key));
                }
            });
        });
        let _ = crate::networks::delete_bridge(&self.bridge);
    }
}

fn key(id: &str) -> AttachKey {
    AttachKey { namespace: "test".into(), id: id.into() }
}

/// File names in `dir`, sorted; none if it does not exist.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn ipv4(attachment: &NetworkAttachment) -> Ipv4Addr {
    assert_eq!(attachment.ips.len(), 1, "{attachment:?}");
    attachment.ips[0].split('/').next().unwrap().parse().unwrap()
}

/// A host port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn exchange(stream: &mut TcpStream, listener: &TcpListener) {
    let (mut server, _) = listener.accept().unwrap();
    stream.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn two_containers_reach_each_other_and_detach_leaves_nothing() {
    let fx = Fixture::new('a', 213, Duration::from_secs(30));
    let host_port = free_port();
    let ports = [PortMapping { host_ip: String::new(), host_port, container_port: 7000, protocol: Protocol::Tcp }];
    let a = fx.attach("a", Some(fx.list(&[])), &[]).await.unwrap();
    let b = fx.attach("b", Some(fx.list(&[])), &ports).await.unwrap();
    let (ip_a, ip_b) = (ipv4(&a), ipv4(&b));
    assert_ne!(ip_a, ip_b);
    for (att, ip) in [(&a, ip_a), (&b, ip_b)] {
        assert!(ip.to_string().starts_with(&fx.prefix), "{ip} not in {}0/24", fx.prefix);
        assert_eq!(att.gateway, format!("{}1", fx.prefix));
        assert_eq!((att.mode.as_str(), att.interface.as_str()), (fx.bridge.as_str(), "eth0"));
        assert_eq!(att.mac.len(), 17, "{att:?}");
        assert!(Path::new(&att.netns).exists());
    }
    assert_eq!(b.ports, ports);
    assert_eq!(fx.nets.attached().unwrap(), vec![key("a"), key("b")]);
    assert_eq!(fx.nets.netns_path(&key("a")), Path::new(&a.netns));
    fx.nets.check(&key("a")).await.unwrap();
    let again = fx.attach("a", Some(fx.list(&[])), &[]).await.unwrap_err();
    assert!(matches!(again, Error::FailedPrecondition(_)), "{again}");

    // A listener in B's namespace, reached from A's and through the
    // published port on the host's loopback.
    let listener = in_netns(Path::new(&b.netns), || TcpListener::bind("0.0.0.0:7000").unwrap());
    let mut from_a =
        in_netns(Path::new(&a.netns), move || TcpStream::connect_timeout(&(ip_b, 7000).into(), Duration::from_secs(5)))
            .unwrap();
    exchange(&mut from_a, &listener);
    let mut from_host = TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, host_port).into(), Duration::from_secs(5))
        .expect("published port answers on 127.0.0.1");
    exchange(&mut from_host, &listener);
    drop((from_a, from_host, listener));

    fx.nets.detach(&key("a")).await.unwrap();
    fx.nets.detach(&key("b")).await.unwrap();
    fx.nets.detach(&key("b")).await.unwrap();
    assert!(!Path::new(&a.netns).exists() && !Path::new(&b.netns).exists());
    fx.assert_clean();
    let e = fx.nets.check(&key("a")).await.unwrap_err();
    assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
}

#[tokio::test]
async fn network_none_has_only_loopback() {
    let fx = Fixture::new('n', 214, Duration::from_secs(30));
    let port = PortMapping { host_ip: String::new(), host_port: 1, container_port: 1, protocol: Protocol::Tcp };
    let e = fx.attach("c", None, std::slice::from_ref(&port)).await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let att = fx.attach("c", None, &[]).await.unwrap();
    assert_eq!((att.mode.as_str(), att.interface.as_str(), att.ips.len()), ("none", "", 0));
    let links = in_netns(Path::new(&att.netns), || {
        let dev = fs::read_to_string("/proc/thread-self/net/dev").unwrap();
        dev.lines().skip(2).filter_map(|l| l.split(':').next()).map(|n| n.trim().to_string()).collect::<Vec<_>>()
    });
    assert_eq!(links, vec!["lo"]);
    fx.nets.check(&key("c")).await.unwrap();
    fx.nets.detach(&key("c")).await.unwrap();
    fx.assert_clean();
}

#[tokio::test]
async fn missing_failing_and_hanging_plugins_leave_nothing() {
    let fx = Fixture::new('m', 215, Duration::from_secs(1));
    let missing = fx.list(&[serde_json::json!({"type": "nosuch"})]);
    let e = fx.attach("m", Some(missing), &[]).await.unwrap_err();
    assert!(matches!(&e, Error::PluginNotFound { plugin, .. } if plugin == "nosuch"), "{e}");
    fx.assert_clean();

    let e = fx.attach("m", Some(fx.fake("fail")), &[]).await.unwrap_err();
    assert!(
        matches!(&e, Error::PluginFailed { plugin, command: "ADD", message }
        if plugin == "fail" && message.starts_with("refused by test")),
        "{e}"
    );
    fx.assert_clean();

    let started = Instant::now();
    let e = fx.attach("m", Some(fx.fake("slow")), &[]).await.unwrap_err();
    assert!(matches!(&e, Error::PluginTimeout { plugin, command: "ADD", .. } if plugin == "slow"), "{e}");
    // ADD's deadline, then the undoing DEL's.
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    fx.assert_clean();

    let port = PortMapping { host_ip: String::new(), host_port: 1, container_port: 1, protocol: Protocol::Tcp };
    let e = fx.attach("m", Some(fx.fake("fail")), &[port]).await.unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
}

#[tokio::test]
async fn a_failing_second_plugin_undoes_the_first() {
    let fx = Fixture::new('f', 216, Duration::from_secs(30));
    let e = fx.attach("f", Some(fx.list(&[serde_json::json!({"type": "failadd"})])), &[]).await.unwrap_err();
    assert!(matches!(&e, Error::PluginFailed { plugin, .. } if plugin == "failadd"), "{e}");
    assert!(Path::new("/sys/class/net").join(&fx.bridge).exists(), "the bridge plugin ran");
    fx.assert_clean();
}

/// After a reboot (or a crash inside netns::create) the namespace file is
/// there but holds no namespace, or someone removed it: DEL must still
/// succeed and release the address and the port rules. (Not ipMasq's
/// rules: bridge 1.1.1 finds those through the addresses of the vanished
/// eth0, so this test runs without ipMasq; a reboot clears them anyway.)
#[tokio::test]
async fn detach_finishes_when_the_namespace_is_gone() {
    let fx = Fixture::new('g', 218, Duration::from_secs(30));
    let ports =
        [PortMapping { host_ip: String::new(), host_port: free_port(), container_port: 80, protocol: Protocol::Tcp }];
    let mut list = fx.list(&[]);
    list.plugins[0]["ipMasq"] = false.into();
    let unmounted = fx.attach("u", Some(list.clone()), &ports).await.unwrap();
    nix::mount::umount2(Path::new(&unmounted.netns), nix::mount::MntFlags::MNT_DETACH).unwrap();
    let missing = fx.attach("m", Some(list), &[]).await.unwrap();
    netns::remove(Path::new(&missing.netns)).unwrap();
    fx.nets.detach(&key("u")).await.unwrap();
    fx.nets.detach(&key("m")).await.unwrap();
    fx.assert_clean();
}
