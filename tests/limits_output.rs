//! Issue 9, items 11, 14 and 12: listings bigger than one gRPC message are
//! paged and `berth ps` follows the pages; text output escapes control
//! characters while JSON keeps them exact; a namespace's directories and
//! cgroups go with its last container, and come back with the next one.

use std::collections::BTreeSet;

use berth_testing::Daemon;
use serde_json::Value;

/// The most labels a container may have, each of the longest value.
fn max_labels() -> Vec<String> {
    (0..64).map(|i| format!("label-{i:02}={}", "v".repeat(4096))).collect()
}

#[test]
fn ps_lists_every_container_when_the_list_passes_the_message_limit() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    let labels = max_labels();
    // 20 × 64 × 4 KiB ≈ 5.6 MB of labels: more than gRPC's 4 MiB message.
    let ids: BTreeSet<String> = (0..20).map(|i| format!("big{i:02}")).collect();
    for id in &ids {
        let mut args = vec!["create", "--name", id.as_str()];
        for l in &labels {
            args.extend(["-l", l.as_str()]);
        }
        args.extend([rootfs, "true"]);
        d.berth(&args).ok();
    }
    // A small container in another namespace, for --all-namespaces.
    d.berth(&["-n", "other", "create", "--name", "small", rootfs, "true"]).ok();

    let table = d.berth(&["ps", "-a"]).ok().to_string();
    let listed: BTreeSet<String> =
        table.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect();
    assert_eq!(listed, ids, "{table}");

    let json: Value = serde_json::from_str(d.berth(&["ps", "-a", "--json"]).ok()).unwrap();
    let all = json.as_array().unwrap();
    assert_eq!(all.len(), ids.len());
    let listed: BTreeSet<String> = all.iter().map(|c| c["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(listed, ids);
    for c in all {
        let l = c["labels"].as_object().unwrap();
        assert_eq!(l.len(), 64, "{}", c["id"]);
        assert!(l.values().all(|v| v.as_str().is_some_and(|v| v.len() == 4096)), "{}", c["id"]);
    }

    // Without -a (created containers are listed too) and across namespaces.
    let json: Value = serde_json::from_str(d.berth(&["ps", "--all-namespaces", "--json"]).ok()).unwrap();
    let mut keys: Vec<(String, String)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["namespace"].as_str().unwrap().into(), c["id"].as_str().unwrap().into()))
        .collect();
    keys.sort();
    let before = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), before, "a container listed twice");
    assert_eq!(keys.len(), ids.len() + 1);
    assert!(keys.contains(&("other".into(), "small".into())));

    // Stats (of no live container here) still answers.
    assert_eq!(d.berth(&["stats", "--no-stream", "--json"]).ok().trim(), "[]");
}

/// No character a terminal would take as a control (newlines aside).
#[track_caller]
fn assert_inert(what: &str, text: &str) {
    let bad: Vec<char> = text.chars().filter(|c| c.is_control() && *c != '\n').collect();
    assert!(bad.is_empty(), "{what} printed raw control characters {bad:?}: {text:?}");
}

#[test]
fn control_characters_are_escaped_in_text_and_exact_in_json() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    let script = "sleep 1000; : \x1b[2J\u{9b}31m";
    let out = d.berth(&[
        "run",
        "-d",
        "--name",
        "evil",
        "-l",
        "clear=\x1b[2J",
        "-l",
        "csi=\u{9b}31m",
        "-l",
        "title\x1b]0;x\x07=bell\x7f",
        rootfs,
        "sh",
        "-c",
        script,
    ]);
    out.ok();

    let ps = d.berth(&["ps"]).ok().to_string();
    assert_inert("ps", &ps);
    assert!(ps.contains("\\x1b[2J"), "{ps}");

    let text = d.berth(&["inspect", "evil"]).ok().to_string();
    assert_inert("inspect", &text);
    for shown in ["clear=\\x1b[2J", "csi=\\u{9b}31m", "title\\x1b]0;x\\x07=bell\\x7f", "\\x1b[2J\\u{9b}31m"] {
        assert!(text.contains(shown), "inspect lacks {shown:?}: {text}");
    }

    let top = d.berth(&["top", "evil"]).ok().to_string();
    assert_inert("top", &top);
    assert!(top.contains("\\x1b[2J"), "{top}");

    let json: Value = serde_json::from_str(d.berth(&["inspect", "evil", "--json"]).ok()).unwrap();
    assert_eq!(json["labels"]["clear"], "\x1b[2J");
    assert_eq!(json["labels"]["csi"], "\u{9b}31m");
    assert_eq!(json["labels"]["title\x1b]0;x\x07"], "bell\x7f");
    assert_eq!(json["command"][2], script);
    let json: Value = serde_json::from_str(d.berth(&["ps", "--json"]).ok()).unwrap();
    assert_eq!(json[0]["command"][2], script);
    let json: Value = serde_json::from_str(d.berth(&["top", "evil", "--json"]).ok()).unwrap();
    let cmds: Vec<String> = json.as_array().unwrap().iter().map(|p| p["command"].to_string()).collect();
    assert!(cmds.iter().any(|c| c.contains("\\u001b[2J")), "{cmds:?}");

    d.berth(&["rm", "-f", "evil"]).ok();
}

#[test]
fn namespace_dirs_and_cgroups_go_with_its_last_container() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    let t = |args: &[&str]| {
        let mut all = vec!["-n", "tenant"];
        all.extend_from_slice(args);
        d.berth(&all)
    };
    d.run_detached("keep", &["sleep", "1000"]);
    t(&["run", "-d", "--name", "a", rootfs, "sleep", "1000"]).ok();
    t(&["run", "-d", "--runtime", "runc", "--name", "b", rootfs, "sleep", "1000"]).ok();
    t(&["create", "--name", "c", rootfs, "true"]).ok();
    assert!(d.namespace_paths("tenant").len() >= 4, "{:?}", d.namespace_paths("tenant"));
    assert!(!d.namespace_cgroup_dirs("tenant").is_empty());

    // Not the last one: the namespace stays.
    t(&["rm", "-f", "a"]).ok();
    t(&["rm", "-f", "c"]).ok();
    assert!(!d.namespace_cgroup_dirs("tenant").is_empty());
    assert!(!d.namespace_paths("tenant").is_empty());

    t(&["rm", "-f", "b"]).ok();
    assert_eq!(d.namespace_paths("tenant"), Vec::<std::path::PathBuf>::new());
    assert_eq!(d.namespace_cgroup_dirs("tenant"), Vec::<std::path::PathBuf>::new());
    // Other namespaces keep theirs.
    assert!(!d.namespace_paths("default").is_empty());
    assert!(!d.namespace_cgroup_dirs("default").is_empty());

    // The namespace works again, with either runtime, and goes again.
    for runtime in ["embedded", "runc"] {
        let out = t(&["run", "--runtime", runtime, "--name", "again", rootfs, "echo", "back"]);
        assert_eq!(out.ok().trim(), "back");
        t(&["rm", "again"]).ok();
        assert_eq!(d.namespace_paths("tenant"), Vec::<std::path::PathBuf>::new(), "{runtime}");
        assert_eq!(d.namespace_cgroup_dirs("tenant"), Vec::<std::path::PathBuf>::new(), "{runtime}");
    }
    d.berth(&["rm", "-f", "keep"]).ok();
    assert_eq!(d.namespace_paths("default"), Vec::<std::path::PathBuf>::new());
}

#[test]
fn a_create_racing_the_last_delete_of_its_namespace_succeeds() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    d.berth(&["-n", "race", "create", "--name", "r0", rootfs, "true"]).ok();
    for i in 0..8 {
        let (old, new) = (format!("r{i}"), format!("r{}", i + 1));
        let rm = d.berth_spawn(&["-n", "race", "rm", "-f", &old]);
        let create = d.berth_spawn(&["-n", "race", "create", "--name", &new, rootfs, "true"]);
        for (what, child) in [("rm", rm), ("create", create)] {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{what} in round {i}: {}", String::from_utf8_lossy(&out.stderr));
        }
        // The new container has what it needs: it runs.
        d.berth(&["-n", "race", "start", &new]).ok();
        assert_eq!(d.berth(&["-n", "race", "wait", &new]).ok().trim(), "0");
        assert!(!d.namespace_cgroup_dirs("race").is_empty() || !d.namespace_paths("race").is_empty());
    }
    d.berth(&["-n", "race", "rm", "r8"]).ok();
    assert_eq!(d.namespace_paths("race"), Vec::<std::path::PathBuf>::new());
    assert_eq!(d.namespace_cgroup_dirs("race"), Vec::<std::path::PathBuf>::new());
}

#[test]
fn empty_namespace_dirs_left_behind_go_at_startup() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().unwrap();
    d.berth(&["-n", "live", "create", "--name", "x", rootfs, "true"]).ok();
    d.kill9();
    // Left by a berthd that died between a delete and its cleanup.
    for dir in [d.state.join("bundles/gone"), d.root.join("logs/gone"), d.state.join("runtime/embedded/gone")] {
        std::fs::create_dir_all(dir).unwrap();
    }
    // Not berth's to judge: a namespace directory with something in it.
    std::fs::create_dir_all(d.state.join("bundles/odd/stray")).unwrap();
    d.spawn();
    assert_eq!(d.namespace_paths("gone"), Vec::<std::path::PathBuf>::new());
    assert!(d.state.join("bundles/odd/stray").is_dir());
    assert!(!d.namespace_paths("live").is_empty(), "a namespace with a container keeps its directories");
    d.berth(&["-n", "live", "rm", "-f", "x"]).ok();
    assert_eq!(d.namespace_paths("live"), Vec::<std::path::PathBuf>::new());
}
