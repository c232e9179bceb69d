//! Operability (issue 17 items 3, 4 and 5): `scripts/install.sh` (what
//! `make install` runs) lays out the binaries, shell completions and man
//! pages under a prefix, generated from the CLI's own definitions; berthd
//! logs JSON lines with `--log-format json` and refuses a bad
//! `--log-level`; `berth version`, `berth system info` and `berth system
//! df` say what berthd runs with and what its directories take.

use std::path::Path;
use std::process::Command;

use berth_e2e::metrics::{get, parse, sample};
use berth_testing::{Daemon, bin_path};

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn install_lays_out_binaries_completions_and_man_pages() {
    let prefix = tempfile::tempdir().unwrap();
    let bins = bin_path("berth").parent().unwrap().to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install.sh");
    let out = Command::new("bash").arg(&script).arg(prefix.path()).arg(&bins).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = prefix.path();
    for b in ["berth", "berthd", "berth-shim", "berth-logger", "containerd-shim-berth-v1"] {
        let meta = std::fs::metadata(p.join("bin").join(b)).unwrap();
        assert!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0, "{b}");
    }
    // Completions: bash parses it, and they know the subcommands.
    let bash = p.join("share/bash-completion/completions/berth");
    let check = Command::new("bash").arg("-n").arg(&bash).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert!(read(&bash).contains("sandbox") && read(&bash).contains("--oom-score-adj"));
    assert!(read(&p.join("share/zsh/site-functions/_berth")).starts_with("#compdef berth"));
    assert!(read(&p.join("share/fish/vendor_completions.d/berth.fish")).contains("complete -c berth"));
    // Man pages: berth(1), one per subcommand, berthd(8).
    let man1 = p.join("share/man/man1");
    for page in ["berth.1", "berth-run.1", "berth-sandbox.1"] {
        assert!(read(&man1.join(page)).contains(".TH"), "{page}");
    }
    assert!(read(&man1.join("berth-run.1")).contains("oom\\-score\\-adj"));
    let berthd = read(&p.join("share/man/man8/berthd.8"));
    assert!(berthd.contains(".TH berthd 8") && berthd.contains("cri\\-socket"), "{berthd}");
    // Nothing to install from: a clear error.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new("bash").arg(&script).arg(prefix.path()).arg(empty.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("build first"), "{out:?}");
    // A shell berth does not know.
    let out = Command::new(bins.join("berth")).args(["completion", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn berthd_logs_json_lines_when_asked() {
    let d = Daemon::start_with(&["--log-format", "json", "--log-level", "info"]);
    d.berth(&["ps"]).ok();
    let log = d.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{v}");
    }
    // Refused before berthd touches anything (its directories are the
    // test's anyway, should it not be).
    for bad in ["no such level!", "verbose", "berthd=loud", "info,=x"] {
        let dir = d.dir().join("refused");
        let mut child = Command::new(bin_path("berthd"))
            .args(["--root", &dir.join("root").to_string_lossy(), "--state", &dir.join("state").to_string_lossy()])
            .args(["--socket", &dir.join("s.sock").to_string_lossy(), "--cri-socket="])
            .args(["--log-level", bad])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("berthd started with --log-level {bad:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("--log-level") && !dir.join("root").exists(), "{bad}: {err}");
    }
}

#[test]
fn system_info_df_and_version_describe_the_daemon() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    let out =
        d.berth(&["run", "-d", "--name", "talker", &rootfs, "sh", "-c", "head -c 100000 /dev/urandom; sleep 100"]);
    out.ok();
    d.berth(&["run", "--name", "done", &rootfs, "true"]).ok();
    let v: serde_json::Value = serde_json::from_str(d.berth(&["version", "--json"]).ok()).unwrap();
    assert_eq!(v["client"], v["server"], "{v}");
    let info: serde_json::Value = serde_json::from_str(d.berth(&["system", "info", "--json"]).ok()).unwrap();
    assert_eq!(info["containers"]["total"], 2, "{info}");
    assert_eq!((info["containers"]["running"].as_u64(), info["containers"]["stopped"].as_u64()), (Some(1), Some(1)));
    assert_eq!(info["root"], d.dir().join("root").to_string_lossy().as_ref());
    assert_eq!(info["cgroup"]["driver"], "cgroupfs");
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    assert_eq!(info["cgroup"]["version"], if v2 { "v2" } else { "v1" });
    assert!(info["cgroup"]["controllers"].as_array().unwrap().iter().any(|c| c == "memory"), "{info}");
    let runtimes = info["runtimes"].as_array().unwrap();
    let embedded = runtimes.iter().find(|r| r["name"] == "embedded").unwrap();
    assert_eq!(embedded["available"], true);
    // runc is a test dependency (make deps): found, with its version line.
    let runc = runtimes.iter().find(|r| r["name"] == "runc").unwrap();
    assert!(runc["available"] == true && runc["version"].as_str().unwrap().starts_with("runc version"), "{runc}");
    assert!(info["root_free_bytes"].as_u64().unwrap() > 0);
    // The running container's log holds its 100 kB: logs take at least that.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let df: serde_json::Value = serde_json::from_str(d.berth(&["system", "df", "--json"]).ok()).unwrap();
        let entry = |kind: &str| df.as_array().unwrap().iter().find(|e| e["kind"] == kind).cloned().unwrap();
        assert!(entry("bundles")["bytes"].as_u64().unwrap() > 0);
        assert_eq!(entry("volumes")["bytes"], 0);
        if entry("logs")["bytes"].as_u64().unwrap() >= 100_000 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{df}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let table = d.berth(&["system", "df"]).ok().to_string();
    assert!(table.starts_with("KIND") && table.contains("logs"), "{table}");
    d.berth(&["rm", "-f", "talker", "done"]).ok();
}

#[test]
fn metrics_are_scraped_and_parsed() {
    let d0 = tempfile::tempdir().unwrap();
    let socket = d0.path().join("metrics.sock");
    let d = Daemon::start_with(&["--metrics-address", &socket.to_string_lossy(), "--metrics-per-container"]);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let scrape = || {
        let (status, body) = get(std::os::unix::net::UnixStream::connect(&socket).unwrap(), "/metrics");
        assert!(status.ends_with("200 OK"), "{status}");
        body
    };
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    d.berth(&["run", "-d", "--name", "up", &rootfs, "sleep", "100"]).ok();
    d.berth(&["run", "--name", "done", &rootfs, "true"]).ok();
    // Events are counted as they are published; a scrape may be a second old.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (text, parsed) = loop {
        let text = scrape();
        let parsed = parse(&text);
        let starts = sample(&parsed, "berth_events_total", &[("type", "start")]).unwrap_or(0.0);
        let stopped = sample(&parsed, "berth_containers", &[("namespace", "default"), ("state", "stopped")]);
        if starts >= 2.0 && stopped == Some(1.0) {
            break (text, parsed);
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(sample(&parsed, "berth_containers", &[("namespace", "default"), ("state", "running")]), Some(1.0));
    assert!(sample(&parsed, "berth_events_total", &[("type", "exit")]).unwrap_or(0.0) >= 1.0, "{text}");
    assert!(sample(&parsed, "berth_event_log_sequence", &[]).unwrap_or(0.0) >= 4.0, "{text}");
    assert!(sample(&parsed, "berth_event_log_events", &[]).unwrap_or(0.0) >= 4.0, "{text}");
    assert!(sample(&parsed, "berth_store_bytes", &[]).unwrap_or(0.0) > 0.0, "{text}");
    assert!(sample(&parsed, "berth_process_resident_bytes", &[]).unwrap_or(0.0) > 0.0, "{text}");
    // The phase histograms, as histograms.
    let create = parsed
        .samples
        .iter()
        .find(|s| s.metric == "berth_phase_duration_seconds" && s.labels.get("phase") == Some("runtime.create"));
    assert!(matches!(create.map(|s| &s.value), Some(prometheus_parse::Value::Histogram(_))), "{text}");
    // Per container: the running one only.
    assert!(sample(&parsed, "berth_container_memory_bytes", &[("id", "up")]).unwrap_or(0.0) > 0.0, "{text}");
    assert_eq!(sample(&parsed, "berth_container_memory_bytes", &[("id", "done")]), None);
    // Anything but /metrics is 404.
    let (status, _) = get(std::os::unix::net::UnixStream::connect(&socket).unwrap(), "/");
    assert!(status.contains(" 404 "), "{status}");
    d.berth(&["rm", "-f", "up", "done"]).ok();

    // Over loopback TCP (port 0: berthd logs the one it got).
    let t = Daemon::start_with(&["--metrics-address", "127.0.0.1:0"]);
    let log = t.log();
    let line = log.lines().find(|l| l.contains("serving metrics")).unwrap_or_else(|| panic!("{log}"));
    let port: String =
        line[line.rfind("127.0.0.1:").unwrap() + 10..].chars().take_while(char::is_ascii_digit).collect();
    let (status, body) =
        get(std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap(), "/metrics");
    assert!(
        status.ends_with("200 OK") && sample(&parse(&body), "berth_sandboxes", &[]) == Some(0.0),
        "{status} {body}"
    );

    // A non-loopback address is refused before anything is made.
    let dir = d.dir().join("refused");
    let out = Command::new(bin_path("berthd"))
        .args(["--root", &dir.join("root").to_string_lossy(), "--state", &dir.join("state").to_string_lossy()])
        .args(["--socket", &dir.join("s.sock").to_string_lossy(), "--cri-socket", ""])
        .args(["--metrics-address", "0.0.0.0:9"])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("loopback"), "{out:?}");
    assert!(!dir.exists(), "nothing is made for a refused flag");
}
