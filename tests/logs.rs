//! Bounded container logs (issue 17 item 3): berth's log of a container is
//! rotated by its shim within `--log-max-size` × `--log-max-files` (10 MB ×
//! 3 by default), with no line lost, split or written twice across the
//! rotations; `berth logs` reads across the rotated files in order, from a
//! time (`--since`, `--until`), its last lines (`--tail`), with timestamps
//! (`-t`); an attached client following the log gets every byte however
//! often it rotates; bad bounds are refused and make nothing.

use std::time::{Duration, Instant};

use berth_testing::Daemon;

fn log_dir_bytes(d: &Daemon, id: &str) -> u64 {
    let dir = d.root.join("logs/default").join(id);
    std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum()
}

/// The process's own resident memory (heap, stacks, buffers): not the
/// pages of its executable, which come and go as code runs and as the
/// shim gives them back.
fn anon_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap_or("RssAnon: 0 kB");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_flood_of_output_stays_within_the_default_bound_and_the_shim_stays_flat() {
    let d = Daemon::start();
    // 200 MB as fast as the container can write it, once the shim has
    // given back what its create freed (100 ms after the start).
    let script = "sleep 1; yes 0123456789012345678901234567890123456789 | head -c 200000000; echo; echo END; sleep 600";
    d.run_detached("flood", &["sh", "-c", script]);
    let inspect: serde_json::Value = serde_json::from_str(d.berth(&["inspect", "--json", "flood"]).ok()).unwrap();
    assert_eq!((inspect["log_max_size"].as_u64(), inspect["log_max_files"].as_u64()), (Some(10 << 20), Some(3)));
    let shim = inspect["shim_pid"].as_u64().unwrap() as u32;
    std::thread::sleep(Duration::from_millis(700));
    let (mut low, mut high) = (u64::MAX, 0);
    wait_for("the flood to end", Duration::from_secs(120), || {
        let rss = anon_rss_kb(shim);
        eprintln!("rss {rss}");
        (low, high) = (low.min(rss), high.max(rss));
        assert!(log_dir_bytes(&d, "flood") <= 40 << 20, "{} bytes on disk", log_dir_bytes(&d, "flood"));
        d.berth(&["logs", "--tail", "1", "flood"]).ok() == "END\n"
    });
    let on_disk = log_dir_bytes(&d, "flood");
    assert!(on_disk <= 40 << 20 && on_disk > 20 << 20, "{on_disk} bytes on disk");
    let files = std::fs::read_dir(d.root.join("logs/default/flood")).unwrap().count();
    assert_eq!(files, 3, "container.log, .1 and .2");
    assert!(high - low < 2048, "the shim's own memory moved from {low} kB to {high} kB");
    d.berth(&["rm", "-f", "flood"]).ok();
}

#[test]
fn logs_read_across_rotations_in_order_and_followers_lose_nothing() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    // Lines 1..=400000 (18 MB as records) through 256 KiB files, three kept.
    let small = ["--log-max-size", "256k", "--log-max-files", "3"];
    let mut args = vec!["run", "-d", "--name", "seq"];
    args.extend_from_slice(&small);
    args.extend_from_slice(&[rootfs.as_str(), "sh", "-c", "seq 1 400000; sleep 600"]);
    d.berth(&args).ok();
    wait_for("the last line", Duration::from_secs(60), || d.berth(&["logs", "--tail", "1", "seq"]).ok() == "400000\n");
    let all = d.berth(&["logs", "seq"]).ok().to_string();
    let numbers: Vec<u64> = all.lines().map(|l| l.parse().unwrap_or_else(|_| panic!("a whole line: {l:?}"))).collect();
    assert_eq!(numbers.last(), Some(&400000));
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "in order, none lost or twice within what is kept");
    assert!(numbers.len() > 10_000 && numbers[0] > 1, "the oldest were dropped: {} kept", numbers.len());
    let tail = d.berth(&["logs", "--tail", "3", "seq"]).ok().to_string();
    assert_eq!(tail, "399998\n399999\n400000\n");
    assert_eq!(d.berth(&["logs", "--tail", "0", "seq"]).ok(), "");

    // An attached client follows 50 MB through the default bound (five
    // rotations, the file it reads dropped meanwhile): every byte.
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(&[rootfs.as_str(), "sh", "-c", "yes 0123456789abcdef | head -c 50000000; echo; echo END"]);
    let out = d.berth(&args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.len(), 50_000_005);
    assert!(out.stdout.ends_with("\nEND\n"));
    d.berth(&["rm", "-f", "seq"]).ok();

    // A containerd shim's container: berth-logger keeps the same bound.
    let mut args = vec!["run", "-d", "--name", "v2", "--runtime", "io.containerd.runc.v2"];
    args.extend_from_slice(&small);
    args.extend_from_slice(&[rootfs.as_str(), "sh", "-c", "seq 1 100000; sleep 600"]);
    d.berth(&args).ok();
    wait_for("the shim's last line", Duration::from_secs(60), || {
        d.berth(&["logs", "--tail", "1", "v2"]).ok() == "100000\n"
    });
    let files: Vec<_> =
        std::fs::read_dir(d.root.join("logs/default/v2")).unwrap().flatten().map(|e| e.file_name()).collect();
    let logs: Vec<_> = files.iter().filter(|f| !f.to_string_lossy().ends_with(".lock")).collect();
    assert!(logs.len() <= 3 && log_dir_bytes(&d, "v2") <= 4 * 256 * 1024, "{files:?}");
    let numbers: Vec<u64> = d.berth(&["logs", "v2"]).ok().lines().map(|l| l.parse().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1) && numbers.len() > 10_000);
    d.berth(&["rm", "-f", "v2"]).ok();
}

#[test]
fn logs_by_time_with_timestamps_and_bad_bounds_refused() {
    let d = Daemon::start();
    d.run_detached(
        "t",
        &["sh", "-c", "echo first; echo err >&2; sleep 1.5; printf 'second'; sleep 0.3; echo ' line'; sleep 600"],
    );
    wait_for("the second line", Duration::from_secs(20), || d.berth(&["logs", "t"]).ok().contains("second line"));
    let stamped = d.berth(&["logs", "-t", "t"]);
    let lines: Vec<&str> = stamped.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stamped:?}");
    let (t1, rest) = lines[0].split_once(' ').unwrap();
    assert_eq!(rest, "first");
    assert!(t1.ends_with('Z') && t1.len() == "2026-12-03T00:00:00.000000000Z".len(), "{t1}");
    let (t2, rest) = lines[1].split_once(' ').unwrap();
    assert_eq!(rest, "second line", "one timestamp for a line written in parts");
    assert!(stamped.stderr.contains(" err\n"), "{stamped:?}");
    // A time between the two lines splits them.
    // 1 s after the first line (the second came 1.5 s later), in Unix
    // seconds (`date` reads the RFC 3339 times).
    let unix = |t: &str| -> f64 {
        let out = std::process::Command::new("date").args(["-u", "-d", t, "+%s.%N"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    assert!(unix(t2) - unix(t1) > 1.4, "{t1} {t2}");
    let between = format!("{:.6}", unix(t1) + 1.0);
    assert_eq!(d.berth(&["logs", "--since", &between, "t"]).ok(), "second line\n");
    let before = d.berth(&["logs", "--until", &between, "t"]);
    assert_eq!(before.stdout, "first\n", "{before:?}");
    assert_eq!(d.berth(&["logs", "--since", "1h", "--tail", "1", "t"]).ok(), "second line\n");
    assert_eq!(d.berth(&["logs", "--since", "2099-01-01T00:00:00Z", "t"]).ok(), "");

    // Bad input: one line, nothing made.
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    for (flag, value) in [("--log-max-size", "1k"), ("--log-max-files", "0"), ("--log-max-files", "101")] {
        d.berth(&["run", "-d", "--name", "bad", flag, value, &rootfs, "true"]).fails_with("invalid argument");
        d.berth(&["inspect", "bad"]).fails_with("not found");
    }
    d.berth(&["run", "-d", "--name", "bad", "--log-max-size", "lots", &rootfs, "true"]).fails_with_any();
    for args in
        [&["logs", "--since", "yesterday", "t"][..], &["logs", "--tail", "x", "t"], &["logs", "--until", "5x", "t"]]
    {
        d.berth(args).fails_with_any();
    }
    d.berth(&["rm", "-f", "t"]).ok();
}
