//! Tests of network definitions: temp dirs for root, state and the config
//! directory; the only bridges touched are ones these tests make, named
//! `btB<pid>…`, and deleted again even when a test fails.

use std::time::Duration;

use tempfile::TempDir;

use super::*;

/// Runs a future to completion (`remove` is async: it runs iptables).
fn block<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(fut)
}

struct Fixture {
    dir: TempDir,
    networks: Networks,
}

impl Fixture {
    /// A fresh root whose default network has the bridge `btB<pid><tag>`.
    fn new(tag: char) -> Fixture {
        Fixture::try_with(&test_bridge(tag), "10.213.0.0/24").unwrap()
    }

    /// A fixture whose default network is `bridge` on `subnet`, if
    /// `Networks::new` takes them.
    fn try_with(bridge: &str, subnet: &str) -> Result<Fixture> {
        let dir = tempfile::tempdir().unwrap();
        let conf_dir = dir.path().join("conf");
        fs::create_dir(&conf_dir).unwrap();
        let cfg = Config {
            bin_dirs: vec![],
            conf_dir,
            root: dir.path().join("root"),
            state: dir.path().join("state"),
            default_bridge: bridge.to_string(),
            default_subnet: subnet.to_string(),
            plugin_timeout: Duration::from_secs(5),
        };
        Ok(Fixture { networks: Networks::new(cfg)?, dir })
    }

    fn conf(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join("conf").join(file);
        fs::write(&path, text).unwrap();
        path
    }

    fn own_files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.networks.own_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

fn test_bridge(tag: char) -> String {
    format!("btB{}{tag}", std::process::id() % 10000)
}

/// A network name unique to this test process (bridge names derive from it).
fn unique(name: &str) -> String {
    format!("{name}{}", std::process::id())
}

/// Deletes the bridge when dropped, whether the test passed or not.
struct BridgeGuard(String);

impl BridgeGuard {
    fn add(name: &str) -> BridgeGuard {
        bridge_ioctl(&control_socket().unwrap(), SIOCBRADDBR, &ifreq(name).unwrap()).unwrap();
        BridgeGuard(name.to_string())
    }
}

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = delete_bridge(&self.0);
    }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn admin_list(name: &str, bridge: &str, subnet: &str) -> String {
    format!(
        r#"{{"cniVersion":"0.4.0","name":"{name}","plugins":[{{"type":"bridge","bridge":"{bridge}",
        "ipam":{{"type":"host-local","subnet":"{subnet}","gateway":"{}"}}}}]}}"#,
        subnet.replace(".0/", ".1/").split('/').next().unwrap()
    )
}

fn route(iface: &str, net: &str) -> Route {
    Route { iface: iface.to_string(), net: Subnet::parse_lenient(net).unwrap() }
}

fn message(r: Result<impl fmt::Debug>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn create_list_get_remove_round_trip() {
    let f = Fixture::new('r');
    let name = unique("web");
    let info = f.networks.create(&name, Some("10.91.0.0/24")).unwrap();
    let bridge = format!("br-{}", &hex::encode(Sha256::digest(name.as_bytes()))[..12]);
    assert_eq!(bridge.len(), 15);
    let expected = NetworkInfo {
        name: name.clone(),
        bridge: bridge.clone(),
        subnet: "10.91.0.0/24".into(),
        gateway: "10.91.0.1".into(),
        plugins: vec!["bridge".into(), "portmap".into()],
        path: f.networks.own_path(&name),
        managed: true,
        cni_version: "1.0.0".into(),
    };
    assert_eq!(info, expected);
    let written: Value = serde_json::from_slice(&fs::read(&info.path).unwrap()).unwrap();
    let bridge_plugin = &written["plugins"][0];
    assert_eq!(
        (bridge_plugin["isGateway"].clone(), bridge_plugin["ipMasq"].clone()),
        (json!(true), json!(false)),
        "masquerade is one rule per network (masq.rs)"
    );
    assert_eq!(bridge_plugin["hairpinMode"], true);
    assert_eq!(bridge_plugin["ipam"]["type"], "host-local");
    assert_eq!(bridge_plugin["ipam"]["routes"], json!([{ "dst": "0.0.0.0/0" }]));
    assert_eq!(bridge_plugin["ipam"]["dataDir"], json!(f.networks.ipam_dir()));
    assert_eq!(
        written["plugins"][1],
        json!({ "type": "portmap", "capabilities": { "portMappings": true }, "snat": true })
    );
    assert_eq!(written["plugins"].as_array().unwrap().len(), 2);

    assert_eq!(f.networks.list().unwrap(), vec![expected.clone()]);
    assert_eq!(f.networks.get(&name).unwrap(), expected);
    let (path, list) = f.networks.conflist(&name).unwrap();
    assert_eq!((path, list.name), (expected.path.clone(), name.clone()));

    // The bridge CNI would have made and host-local's leases go with it.
    let _guard = BridgeGuard::add(&bridge);
    assert!(link_exists(&bridge));
    let leases = f.networks.ipam_dir().join(&name);
    fs::create_dir_all(&leases).unwrap();
    fs::write(leases.join("10.91.0.2"), "id").unwrap();
    block(f.networks.remove(&name)).unwrap();
    assert!(!link_exists(&bridge));
    assert!(!leases.exists());
    assert!(f.own_files().is_empty());
    assert!(matches!(f.networks.get(&name), Err(Error::NotFound(_))));
    assert!(matches!(block(f.networks.remove(&name)), Err(Error::NotFound(_))));
    assert!(f.networks.list().unwrap().is_empty());
}

#[test]
fn default_network_is_made_on_first_get() {
    let f = Fixture::new('d');
    assert!(f.networks.list().unwrap().is_empty());
    assert!(matches!(f.networks.get("other"), Err(Error::NotFound(_))));
    let info = f.networks.get(DEFAULT_NETWORK).unwrap();
    assert_eq!((info.bridge.as_str(), info.subnet.as_str()), (test_bridge('d').as_str(), "10.213.0.0/24"));
    assert_eq!((info.gateway.as_str(), info.managed), ("10.213.0.1", true));
    assert_eq!(f.own_files(), vec!["berth.conflist"]);
    assert_eq!(f.networks.list().unwrap(), vec![info.clone()]);
    assert_eq!(f.networks.conflist(DEFAULT_NETWORK).unwrap().0, info.path);
    assert!(matches!(f.networks.create(DEFAULT_NETWORK, None), Err(Error::AlreadyExists(_))));
    // Removable like any of berth's; the next use makes it again.
    block(f.networks.remove(DEFAULT_NETWORK)).unwrap();
    assert!(f.own_files().is_empty());
    assert_eq!(f.networks.get(DEFAULT_NETWORK).unwrap(), info);

    let fresh = Fixture::new('e');
    let e = message(fresh.networks.create(DEFAULT_NETWORK, Some("10.95.0.0/24")));
    assert!(e.contains("--network-subnet"), "{e}");

    // A bad default subnet or bridge name stops berthd at startup.
    let e = message(Fixture::try_with(&test_bridge('f'), "10.213.0.1/24").map(drop));
    assert!(e.starts_with("default network subnet: invalid subnet") && e.contains("10.213.0.0/24"), "{e}");
    let e = message(Fixture::try_with("a-bridge-name-too-long", "10.213.0.0/24").map(drop));
    assert!(e.contains("1 to 15 characters"), "{e}");
}

#[test]
fn overlapping_subnets_are_refused() {
    let f = Fixture::new('o');
    f.networks.create_with_routes("a", Some(Subnet::parse("10.92.0.0/24").unwrap()), &[]).unwrap();
    f.conf("adm.conflist", &admin_list("adm", "adm0", "10.96.8.0/22"));
    let routes = [route("eth9", "10.93.0.0/16")];
    let create = |name: &str, subnet: &str| f.networks.create_with_routes(name, Some(Subnet::parse(subnet)?), &routes);
    let e = message(create("b", "10.92.0.0/16"));
    assert_eq!(e, "subnet 10.92.0.0/16 overlaps network a (10.92.0.0/24)");
    let e = message(create("b", "10.96.10.0/24"));
    assert_eq!(e, "subnet 10.96.10.0/24 overlaps network adm (10.96.8.0/22)");
    let e = message(create("b", "10.93.7.0/24"));
    assert_eq!(e, "subnet 10.93.7.0/24 overlaps the host route 10.93.0.0/16 on eth9");
    assert!(matches!(create("b", "10.93.7.0/24"), Err(Error::InvalidArgument(_))));
    assert_eq!(f.own_files(), vec!["a.conflist"]);
    // A route on the bridge this network would get is a leftover of its own.
    let own = [route(&f.networks.bridge_name("c"), "10.97.0.0/24")];
    let info = f.networks.create_with_routes("c", Some(Subnet::parse("10.97.0.0/24").unwrap()), &own).unwrap();
    assert_eq!(info.subnet, "10.97.0.0/24");
    // The real routing table is read too.
    assert!(!host_routes(Path::new(HOST_ROUTES)).unwrap().iter().any(|r| r.net.prefix == 0));
}

#[test]
fn auto_subnet_picks_the_first_free_one() {
    let f = Fixture::new('a');
    f.networks.create_with_routes("x", Some(Subnet::parse("10.90.1.0/24").unwrap()), &[]).unwrap();
    f.conf("adm.conflist", &admin_list("adm", "adm0", "10.90.2.0/23"));
    let routes = [route("eth9", "10.90.0.0/24")];
    let info = f.networks.create_with_routes("auto", None, &routes).unwrap();
    assert_eq!((info.subnet.as_str(), info.gateway.as_str()), ("10.90.4.0/24", "10.90.4.1"));
    let next = f.networks.create_with_routes("auto2", None, &routes).unwrap();
    assert_eq!(next.subnet, "10.90.5.0/24");
    let all = [route("eth9", "10.0.0.0/8")];
    let e = f.networks.create_with_routes("none-left", None, &all).unwrap_err();
    assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
    // Through the public call, against the host's real routes.
    let public = f.networks.create(&unique("pub"), None).unwrap();
    assert!(public.subnet.starts_with("10.") && public.subnet.ends_with(".0/24"), "{}", public.subnet);
}

#[test]
fn duplicate_names_are_refused() {
    let f = Fixture::new('u');
    f.networks.create_with_routes("a", Some(Subnet::parse("10.98.0.0/24").unwrap()), &[]).unwrap();
    assert!(matches!(f.networks.create("a", Some("10.98.1.0/24")), Err(Error::AlreadyExists(_))));
    f.conf("10-adm.conflist", &admin_list("adm", "adm0", "10.98.4.0/24"));
    assert!(matches!(f.networks.create("adm", Some("10.98.5.0/24")), Err(Error::AlreadyExists(_))));
    assert_eq!(f.own_files(), vec!["a.conflist"]);
}

#[test]
fn bad_names_and_subnets_are_refused_with_nothing_written() {
    let f = Fixture::new('b');
    for name in ["", "host", "none", "container:abc", "a/b", "../x", "-a", "a b", &"n".repeat(129)] {
        let e = f.networks.create(name, Some("10.99.0.0/24")).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{name}: {e}");
    }
    for (subnet, hint) in [
        ("10.1.2.3/24", "did you mean 10.1.2.0/24?"),
        ("10.0.0.0/7", "from 8 to 30"),
        ("10.0.0.0/31", "from 8 to 30"),
        ("10.0.0.0/x", "from 8 to 30"),
        ("fd00::/64", "IPv4 CIDR"),
        ("10.0.0.0", "IPv4 CIDR"),
        ("300.1.1.0/24", "IPv4 CIDR"),
    ] {
        let e = f.networks.create("ok", Some(subnet)).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)) && e.to_string().contains(hint), "{subnet}: {e}");
    }
    for name in ["a/b", "..", ""] {
        assert!(matches!(f.networks.get(name), Err(Error::InvalidArgument(_))), "{name}");
        assert!(matches!(block(f.networks.remove(name)), Err(Error::InvalidArgument(_))), "{name}");
    }
    assert!(f.own_files().is_empty());
}

#[test]
fn conf_dir_networks_are_listed_but_not_removable() {
    let f = Fixture::new('c');
    let path = f.conf("20-adm.conflist", &admin_list("adm", "adm0", "10.100.0.0/24"));
    let single = f.conf("30-one.conf", r#"{"cniVersion":"1.0.0","name":"one","type":"macvlan","master":"eth9"}"#);
    // berth's own list of a name shadows a list of the config directory
    // that an administrator added later.
    f.networks.create_with_routes("mine", Some(Subnet::parse("10.100.2.0/24").unwrap()), &[]).unwrap();
    f.conf("40-shadow.conflist", &admin_list("mine", "adm1", "10.100.1.0/24"));
    f.conf("50-ignored.txt", "not a config");

    let list = f.networks.list().unwrap();
    let names: Vec<_> = list.iter().map(|n| (n.name.as_str(), n.managed, n.bridge.as_str())).collect();
    assert_eq!(
        names,
        vec![("adm", false, "adm0"), ("mine", true, f.networks.bridge_name("mine").as_str()), ("one", false, "")]
    );
    let adm = &list[0];
    assert_eq!(
        (adm.subnet.as_str(), adm.gateway.as_str(), adm.path.as_path()),
        ("10.100.0.0/24", "10.100.0.1", path.as_path())
    );
    assert_eq!((list[2].plugins.clone(), list[2].path.clone()), (vec!["macvlan".to_string()], single));
    assert_eq!(f.networks.get("adm").unwrap(), *adm);

    let e = block(f.networks.remove("adm")).unwrap_err();
    assert!(matches!(e, Error::FailedPrecondition(_)) && e.to_string().contains(&path.display().to_string()), "{e}");
    assert!(path.exists());
}

#[test]
fn malformed_conf_dir_files_are_skipped_in_list_and_refused_when_named() {
    let f = Fixture::new('m');
    let broken = f.conf("broken.conflist", "{");
    f.conf("adm.json", &admin_list("adm", "adm0", "10.101.0.0/24"));
    let names: Vec<_> = f.networks.list().unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(names, vec!["adm"]);
    match f.networks.get("broken") {
        Err(Error::BadConfig { path, .. }) => assert_eq!(path, broken),
        other => panic!("expected BadConfig, got {other:?}"),
    }
    assert!(matches!(f.networks.conflist("broken"), Err(Error::BadConfig { .. })));
    assert!(matches!(f.networks.create("broken", Some("10.101.1.0/24")), Err(Error::BadConfig { .. })));
    assert!(f.own_files().is_empty());
}

#[test]
fn delete_bridge_deletes_a_bridge_and_accepts_an_absent_one() {
    let name = test_bridge('z');
    let guard = BridgeGuard::add(&name);
    assert!(link_exists(&name));
    delete_bridge(&name).unwrap();
    assert!(!link_exists(&name));
    delete_bridge(&name).unwrap();
    drop(guard);
    for bad in ["", "a/b", "sixteen-chars-xx"] {
        assert!(matches!(delete_bridge(bad), Err(Error::InvalidArgument(_))), "{bad}");
    }
}

#[test]
fn parses_the_kernel_routing_table() {
    let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        br0\t0000100A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
        junk\n";
    assert_eq!(parse_routes(text), vec![route("eth0", "192.0.2.0/24"), route("br0", "10.16.0.0/16")]);
}

#[test]
fn subnet_arithmetic() {
    let s = |t: &str| Subnet::parse_lenient(t).unwrap();
    assert!(s("10.0.0.0/8").overlaps(s("10.200.3.0/24")) && s("10.200.3.0/24").overlaps(s("10.0.0.0/8")));
    assert!(!s("10.1.0.0/24").overlaps(s("10.1.1.0/24")));
    assert_eq!(s("10.1.2.3/24").to_string(), "10.1.2.0/24");
    assert_eq!(s("0.0.0.0/0").to_string(), "0.0.0.0/0");
    assert!(Subnet::parse_lenient("fd00::/64").is_none() && Subnet::parse_lenient("10.0.0.0/33").is_none());
    assert_eq!(Subnet::parse("172.30.0.0/30").unwrap().gateway(), Ipv4Addr::new(172, 30, 0, 1));
}
