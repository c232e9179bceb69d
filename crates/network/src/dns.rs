//! The files a container's resolver reads — `hosts`, `resolv.conf` and
//! `hostname` — written into a directory (the container's bundle) for the
//! runtime to bind-mount over `/etc/…`. Derived from the host's files and
//! `--hostname`, `--dns`, `--add-host`, the way docker does it.

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Nameservers when the host names none a container can reach: docker's
/// defaults (Google's public resolvers).
const FALLBACK_NAMESERVERS: [&str; 2] = ["8.8.8.8", "8.8.4.4"];
/// systemd-resolved's stub listener; when the host's resolv.conf names only
/// it, its upstream servers are in /run/systemd/resolve/resolv.conf (docker
/// reads that).
const RESOLVED_STUB: &str = "127.0.0.53";
const MAX_HOST_NAME: usize = 253;

/// Search domains and options a resolv.conf may hold (glibc reads 6
/// domains, musl 32 lines; longer lists are refused, not cut).
const MAX_SEARCH: usize = 32;
const MAX_OPTIONS: usize = 32;

/// What a container's resolv.conf says instead of the host's: each list
/// that is not empty replaces the host's lines of its kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolver {
    /// `--dns`: nameserver addresses.
    pub servers: Vec<String>,
    /// `--dns-search`: search domains (`.` alone: none).
    pub search: Vec<String>,
    /// `--dns-option`: resolver options such as `ndots:5`.
    pub options: Vec<String>,
}

impl Resolver {
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.search.is_empty() && self.options.is_empty()
    }
}

/// What a container's resolver files say.
#[derive(Debug, Clone, Copy)]
pub struct DnsOptions<'a> {
    pub hostname: &'a str,
    /// Nameservers, search domains and options that replace the host's.
    pub dns: &'a Resolver,
    /// `--add-host NAME:IP`.
    pub add_hosts: &'a [String],
    /// The container's addresses in CIDR form; each names the hostname.
    pub ips: &'a [String],
    /// `--network host`: the host's files, loopback nameservers included.
    pub host_network: bool,
}

/// The files written, to bind-mount over `/etc/hosts`, `/etc/resolv.conf`
/// and `/etc/hostname`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcFiles {
    pub hosts: PathBuf,
    pub resolv: PathBuf,
    pub hostname: PathBuf,
}

/// The host files the container's are made from.
struct HostFiles<'a> {
    hosts: &'a Path,
    resolv: &'a Path,
    /// systemd-resolved's list of upstream nameservers.
    resolved_upstream: &'a Path,
}

/// Checks `--dns` addresses, search domains, options and `--add-host
/// NAME:IP` entries, so that a create is refused before anything is made.
pub fn check_dns_options(dns: &Resolver, add_hosts: &[String]) -> Result<()> {
    for server in &dns.servers {
        parse_ip(server, "--dns")?;
    }
    if dns.search.len() > MAX_SEARCH || dns.options.len() > MAX_OPTIONS {
        return Err(Error::InvalidArgument(format!(
            "at most {MAX_SEARCH} DNS search domains and {MAX_OPTIONS} options"
        )));
    }
    for domain in dns.search.iter().filter(|d| d.as_str() != ".") {
        check_host_name(domain.strip_suffix('.').unwrap_or(domain), "DNS search domain")?;
    }
    for option in &dns.options {
        let printable = |c: char| c.is_ascii_graphic();
        if option.is_empty() || option.len() > MAX_HOST_NAME || !option.chars().all(printable) {
            return Err(Error::InvalidArgument(format!(
                "invalid DNS option {:?}: one word of printable characters, such as ndots:5",
                truncate(option)
            )));
        }
    }
    for entry in add_hosts {
        parse_add_host(entry)?;
    }
    Ok(())
}

/// Writes `hosts`, `resolv.conf` and `hostname` (mode 0644) into `dir`,
/// which must exist.
pub fn write_etc_files(dir: &Path, o: &DnsOptions) -> Result<EtcFiles> {
    let host = HostFiles {
        hosts: Path::new("/etc/hosts"),
        resolv: Path::new("/etc/resolv.conf"),
        resolved_upstream: Path::new("/run/systemd/resolve/resolv.conf"),
    };
    write_from(dir, o, &host)
}

fn write_from(dir: &Path, o: &DnsOptions, host: &HostFiles) -> Result<EtcFiles> {
    check_dns_options(o.dns, o.add_hosts)?;
    check_hostname(o.hostname)?;
    let ips = o
        .ips
        .iter()
        .map(|cidr| parse_ip(cidr.split_once('/').map_or(cidr.as_str(), |(ip, _)| ip), "address"))
        .collect::<Result<Vec<_>>>()?;

    let mut hosts = if o.host_network {
        let mut text = read_or_empty(host.hosts)?;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text
    } else {
        let mut text = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        for ip in &ips {
            text.push_str(&format!("{ip}\t{}\n", o.hostname));
        }
        text
    };
    for entry in o.add_hosts {
        let (name, ip) = parse_add_host(entry)?;
        hosts.push_str(&format!("{ip}\t{name}\n"));
    }
    let resolv = resolv_conf(&host_resolv(host, o.host_network)?, o.dns, o.host_network);

    let files = EtcFiles { hosts: dir.join("hosts"), resolv: dir.join("resolv.conf"), hostname: dir.join("hostname") };
    for (path, text) in [(&files.hosts, hosts), (&files.resolv, resolv), (&files.hostname, format!("{}\n", o.hostname))]
    {
        // Bundle files are runtime state: written once before the runtime
        // reads them, gone with the machine, so neither renamed nor synced.
        let what = || format!("write {}", path.display());
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(path)
            .map_err(|e| Error::io(what(), e))?;
        file.write_all(text.as_bytes()).map_err(|e| Error::io(what(), e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o644)).map_err(|e| Error::io(what(), e))?;
    }
    Ok(files)
}

/// The host's resolv.conf a container's starts from. Outside the host's
/// network namespace, a resolv.conf naming only systemd-resolved's stub is
/// replaced by resolved's upstream list when that exists.
fn host_resolv(host: &HostFiles, host_network: bool) -> Result<String> {
    let text = read_or_empty(host.resolv)?;
    let mut servers = text.lines().filter_map(nameserver);
    if !host_network && servers.next() == Some(RESOLVED_STUB) && servers.next().is_none() {
        let upstream = read_or_empty(host.resolved_upstream)?;
        if upstream.lines().any(|line| nameserver(line).is_some()) {
            return Ok(upstream);
        }
    }
    Ok(text)
}

/// The container's resolv.conf from the host's: `--dns` replaces every
/// nameserver; otherwise loopback nameservers, unreachable from another
/// network namespace, are dropped. Search domains (`search` and `domain`
/// lines) and `options` lines are replaced when given, kept otherwise, as
/// is the rest. In the host's namespace the host's file is kept as it is
/// (loopback is reachable there), given lists still replacing its lines.
fn resolv_conf(host: &str, dns: &Resolver, host_network: bool) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let keyword = line.split_whitespace().next();
        if matches!(keyword, Some("search" | "domain")) && !dns.search.is_empty()
            || keyword == Some("options") && !dns.options.is_empty()
        {
            continue;
        }
        if let Some(server) = nameserver(line) {
            let loopback = server.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !dns.servers.is_empty() || (loopback && !host_network) {
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    for server in &dns.servers {
        out.push_str(&format!("nameserver {server}\n"));
        servers += 1;
    }
    // `.` alone asks for no search list (docker's `--dns-search .`).
    let search: Vec<&str> = dns.search.iter().map(String::as_str).filter(|d| *d != ".").collect();
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    // Docker falls back to Google's resolvers when none is left; so do we.
    if servers == 0 && !host_network {
        for server in FALLBACK_NAMESERVERS {
            out.push_str(&format!("nameserver {server}\n"));
        }
    }
    out
}

/// The address of a `nameserver ADDR` line.
fn nameserver(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    (words.next() == Some("nameserver")).then(|| words.next()).flatten()
}

fn read_or_empty(path: &Path) -> Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

/// `NAME:IP`; the address may be IPv6 (`db:fd00::1`).
fn parse_add_host(entry: &str) -> Result<(&str, IpAddr)> {
    let (name, ip) = entry
        .split_once(':')
        .ok_or_else(|| Error::InvalidArgument(format!("invalid --add-host {:?}: expected NAME:IP", truncate(entry))))?;
    check_host_name(name, "--add-host name")?;
    Ok((name, parse_ip(ip, "--add-host address")?))
}

fn parse_ip(s: &str, what: &str) -> Result<IpAddr> {
    s.parse().map_err(|_| Error::InvalidArgument(format!("invalid {what} {:?}: not an IP address", truncate(s))))
}

/// Host names: letters, digits, '-' and '.', at most 253 characters.
fn check_host_name(name: &str, what: &str) -> Result<()> {
    check_name_chars(name, what, "-.")
}

/// The container's own name may also have '_', which container ids allow
/// and the kernel's hostname accepts.
fn check_hostname(name: &str) -> Result<()> {
    check_name_chars(name, "hostname", "-._")
}

fn check_name_chars(name: &str, what: &str, punctuation: &str) -> Result<()> {
    let valid = |c: char| c.is_ascii_alphanumeric() || punctuation.contains(c);
    if name.is_empty() || name.len() > MAX_HOST_NAME || !name.chars().all(valid) {
        let chars = punctuation.chars().map(|c| format!("'{c}'")).collect::<Vec<_>>().join(", ");
        return Err(Error::InvalidArgument(format!(
            "invalid {what} {:?}: use 1 to {MAX_HOST_NAME} letters, digits and {chars}",
            truncate(name)
        )));
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Host {
        dir: tempfile::TempDir,
    }

    impl Host {
        /// Host files in a temp dir; `None` leaves one missing.
        fn new(hosts: Option<&str>, resolv: Option<&str>, upstream: Option<&str>) -> Host {
            let dir = tempfile::tempdir().unwrap();
            for (name, text) in [("hosts", hosts), ("resolv.conf", resolv), ("upstream.conf", upstream)] {
                if let Some(text) = text {
                    fs::write(dir.path().join(name), text).unwrap();
                }
            }
            fs::create_dir(dir.path().join("bundle")).unwrap();
            Host { dir }
        }

        fn write(&self, o: &DnsOptions) -> Result<EtcFiles> {
            let (hosts, resolv, upstream) = (
                self.dir.path().join("hosts"),
                self.dir.path().join("resolv.conf"),
                self.dir.path().join("upstream.conf"),
            );
            let host = HostFiles { hosts: &hosts, resolv: &resolv, resolved_upstream: &upstream };
            write_from(&self.dir.path().join("bundle"), o, &host)
        }

        fn read(&self, o: &DnsOptions) -> (String, String, String) {
            let files = self.write(o).unwrap();
            let read = |p: &Path| fs::read_to_string(p).unwrap();
            (read(&files.hosts), read(&files.resolv), read(&files.hostname))
        }
    }

    fn opts<'a>(dns: &'a Resolver, add_hosts: &'a [String], ips: &'a [String]) -> DnsOptions<'a> {
        DnsOptions { hostname: "web", dns, add_hosts, ips, host_network: false }
    }

    fn servers(v: &[&str]) -> Resolver {
        Resolver { servers: strings(v), ..Resolver::default() }
    }

    const NONE: &Resolver = &Resolver { servers: Vec::new(), search: Vec::new(), options: Vec::new() };

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const HOST_RESOLV: &str = "# generated\nnameserver 127.0.0.1\nnameserver 10.255.255.53\nnameserver ::1\nsearch example.com\noptions ndots:2\n";

    #[test]
    fn hosts_names_localhost_the_container_and_added_hosts() {
        let host = Host::new(Some("10.0.0.1 the-host\n"), None, None);
        let (ips, adds) = (strings(&["10.88.0.5/16", "fd00::5/64"]), strings(&["db:10.1.1.1", "v6:fd00::1"]));
        let (hosts, _, hostname) = host.read(&opts(NONE, &adds, &ips));
        let (_, _, underscored) = host.read(&DnsOptions { hostname: "my_app", ..opts(NONE, &[], &[]) });
        assert_eq!(underscored, "my_app\n");
        assert_eq!(
            hosts,
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.88.0.5\tweb\nfd00::5\tweb\n\
             10.1.1.1\tdb\nfd00::1\tv6\n"
        );
        assert_eq!(hostname, "web\n");
    }

    #[test]
    fn host_network_copies_the_host_files() {
        let host = Host::new(Some("10.0.0.1 the-host"), Some(HOST_RESOLV), None);
        let adds = strings(&["db:10.1.1.1"]);
        let o = DnsOptions { host_network: true, ..opts(NONE, &adds, &[]) };
        let (hosts, resolv, _) = host.read(&o);
        assert_eq!(hosts, "10.0.0.1 the-host\n10.1.1.1\tdb\n");
        assert_eq!(resolv, HOST_RESOLV);
    }

    #[test]
    fn resolv_conf_drops_loopback_nameservers_and_keeps_the_rest() {
        let host = Host::new(None, Some(HOST_RESOLV), None);
        let (_, resolv, _) = host.read(&opts(NONE, &[], &[]));
        assert_eq!(resolv, "# generated\nnameserver 10.255.255.53\nsearch example.com\noptions ndots:2\n");
    }

    #[test]
    fn resolv_conf_falls_back_to_public_resolvers() {
        let host = Host::new(None, Some("nameserver 127.0.0.1\nsearch lan\n"), None);
        let (_, resolv, _) = host.read(&opts(NONE, &[], &[]));
        assert_eq!(resolv, "search lan\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n");
        // A missing host file behaves as an empty one.
        let (hosts, resolv, _) = Host::new(None, None, None).read(&opts(NONE, &[], &[]));
        assert_eq!(resolv, "nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"));
    }

    #[test]
    fn dns_option_replaces_every_nameserver() {
        let host = Host::new(None, Some(HOST_RESOLV), None);
        let dns = servers(&["1.1.1.1", "2606:4700::1111"]);
        let (_, resolv, _) = host.read(&opts(&dns, &[], &[]));
        assert_eq!(
            resolv,
            "# generated\nsearch example.com\noptions ndots:2\nnameserver 1.1.1.1\nnameserver 2606:4700::1111\n"
        );
        let (_, resolv, _) = host.read(&DnsOptions { host_network: true, ..opts(&dns, &[], &[]) });
        assert!(resolv.ends_with("nameserver 1.1.1.1\nnameserver 2606:4700::1111\n") && !resolv.contains("127.0.0.1"));
    }

    #[test]
    fn search_domains_and_options_replace_the_hosts() {
        let host =
            Host::new(None, Some("domain corp\nnameserver 10.0.0.53\nsearch example.com\noptions ndots:2\n"), None);
        let dns = Resolver {
            servers: strings(&["10.96.0.10"]),
            search: strings(&["default.svc.cluster.local", "svc.cluster.local"]),
            options: strings(&["ndots:5", "edns0"]),
        };
        assert_eq!(
            host.read(&opts(&dns, &[], &[])).1,
            "nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5 edns0\n"
        );
        // `.` clears the search list; the host's nameserver and options stay.
        let dot = Resolver { search: strings(&["."]), ..Resolver::default() };
        assert_eq!(host.read(&opts(&dot, &[], &[])).1, "nameserver 10.0.0.53\noptions ndots:2\n");
    }

    #[test]
    fn systemd_resolved_stub_is_replaced_by_its_upstream_servers() {
        let upstream = "nameserver 192.0.2.53\nsearch corp\n";
        let host = Host::new(None, Some("nameserver 127.0.0.53\noptions edns0\n"), Some(upstream));
        assert_eq!(host.read(&opts(NONE, &[], &[])).1, upstream);
        let o = DnsOptions { host_network: true, ..opts(NONE, &[], &[]) };
        assert_eq!(host.read(&o).1, "nameserver 127.0.0.53\noptions edns0\n");
        let no_upstream = Host::new(None, Some("nameserver 127.0.0.53\noptions edns0\n"), None);
        assert_eq!(
            no_upstream.read(&opts(NONE, &[], &[])).1,
            "options edns0\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
    }

    #[test]
    fn files_are_world_readable() {
        let host = Host::new(None, None, None);
        let files = host.write(&opts(NONE, &[], &[])).unwrap();
        for path in [&files.hosts, &files.resolv, &files.hostname] {
            assert_eq!(fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o644, "{}", path.display());
        }
        assert_eq!(files.resolv, host.dir.path().join("bundle/resolv.conf"));
    }

    #[test]
    fn bad_options_are_refused_before_anything_is_written() {
        assert!(check_dns_options(&servers(&["1.1.1.1", "::1"]), &strings(&["a-b.c:1.2.3.4", "x:::1"])).is_ok());
        for (dns, add) in [
            (vec!["8.8.8"], vec![]),
            (vec!["dns.google"], vec![]),
            (vec![], vec!["db"]),
            (vec![], vec!["db:not-ip"]),
            (vec![], vec![":1.2.3.4"]),
            (vec![], vec!["a_b:1.2.3.4"]),
            (vec![], vec!["a\nb:1.2.3.4"]),
        ] {
            let (dns, add) = (servers(&dns), strings(&add));
            assert!(matches!(check_dns_options(&dns, &add), Err(Error::InvalidArgument(_))), "{dns:?} {add:?}");
        }
        assert!(check_dns_options(NONE, &[format!("{}:1.2.3.4", "a".repeat(254))]).is_err());
        for (search, options) in [
            (vec!["a b"], vec![]),
            (vec!["x\nnameserver 1.2.3.4"], vec![]),
            (vec![""], vec![]),
            (vec![], vec!["ndots:5\nnameserver"]),
            (vec![], vec!["two words"]),
            (vec![], vec![""]),
        ] {
            let dns = Resolver { search: strings(&search), options: strings(&options), ..Resolver::default() };
            assert!(matches!(check_dns_options(&dns, &[]), Err(Error::InvalidArgument(_))), "{dns:?}");
        }
        let many = Resolver { search: vec!["a.b".into(); 33], ..Resolver::default() };
        assert!(check_dns_options(&many, &[]).is_err());
        let host = Host::new(None, None, None);
        let ips = strings(&["10.0.0.1/8"]);
        for o in [
            DnsOptions { hostname: "bad host", ..opts(NONE, &[], &ips) },
            DnsOptions { hostname: "", ..opts(NONE, &[], &ips) },
            DnsOptions { hostname: "a\nb", ..opts(NONE, &[], &ips) },
            opts(NONE, &[], &strings(&["nonsense/8"])),
            opts(&servers(&["x"]), &[], &ips),
        ] {
            assert!(matches!(host.write(&o), Err(Error::InvalidArgument(_))), "{o:?}");
        }
        assert_eq!(fs::read_dir(host.dir.path().join("bundle")).unwrap().count(), 0);
    }
}
