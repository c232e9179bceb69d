//! Image administration end to end (issue 10; SPEC B29, B31, B32): import
//! and export round trip exact by digest, tag and inspect, `rmi` refusing
//! an image a container uses (unless -f) and collecting garbage after it,
//! `image prune` never freeing what a running container's snapshot needs,
//! and `berth login` credentials for a registry behind htpasswd basic
//! auth. A loopback Debian `docker-registry` serves a two-layer image
//! built here; every registry, daemon and mount is released on drop.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use berth_e2e::registry::{
    LAYER_TAR, LAYER_TAR_GZIP, Registry, Unmounter, append_file, await_no_containers, entries, gzip, push_image,
    sha256, tar_of,
};
use berth_testing::{Daemon, Output, bin_path};
use oci_client::secrets::RegistryAuth;

fn count(dir: PathBuf) -> usize {
    entries(&dir).len()
}

fn blobs(d: &Daemon) -> usize {
    count(d.root.join("content/blobs/sha256"))
}

fn committed(d: &Daemon) -> usize {
    count(d.root.join("snapshots/committed"))
}

/// Builds and pushes a two-layer image (busybox + /work, then /new,
/// gzip) to `reference`, with `auth`.
fn push_test_image(reference: &str, rootfs: &Path, auth: &RegistryAuth) {
    push_custom(reference, rootfs, auth, tar_of(&[("new", b"new\n")], None), "0:0");
}

/// Like `push_test_image` with the top layer `top` and the config's `User`.
fn push_custom(reference: &str, rootfs: &Path, auth: &RegistryAuth, top: Vec<u8>, user: &str) {
    let base = tar_of(&[("work/.keep", b"")], Some(rootfs));
    let top_gz = gzip(&top, flate2::Compression::fast());
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2024-05-01T12:00:00Z",
        "config": {"Env": ["PATH=/bin", "GREETING=hi"], "Cmd": ["sh", "-c", "echo $GREETING"],
                   "Entrypoint": ["/bin/env"], "WorkingDir": "/work", "User": user},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&base), sha256(&top)]},
    }))
    .expect("config");
    push_image(reference, auth, &[(LAYER_TAR, &base), (LAYER_TAR_GZIP, &top_gz)], &config);
}

/// A daemon and a registry holding the test image, pulled.
fn setup() -> (Daemon, Unmounter, Registry, String) {
    let d = Daemon::start();
    let guard = Unmounter(d.dir().to_path_buf());
    let reg = Registry::start();
    let reference = format!("{}/admin:1", reg.addr);
    push_test_image(&reference, &d.rootfs, &RegistryAuth::Anonymous);
    d.berth(&["pull", "--insecure", &reference]).ok();
    (d, guard, reg, reference)
}

fn images_json(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(d.berth(&["images", "--json"]).ok()).expect("images json")
}

#[test]
fn export_import_round_trip_tag_and_inspect() {
    let (d, _guard, reg, reference) = setup();
    let v: serde_json::Value =
        serde_json::from_str(d.berth(&["image", "inspect", "--json", &reference]).ok()).expect("inspect json");
    assert_eq!(v["name"], reference.as_str());
    assert_eq!(v["platform"], "linux/amd64");
    assert_eq!(v["created"], "2024-05-01T12:00:00Z");
    assert_eq!(v["layers"].as_array().map(Vec::len), Some(2));
    assert!(v["layers"][1]["diff_id"].as_str().is_some_and(|s| s.starts_with("sha256:")), "{v}");
    assert_eq!(v["config"]["entrypoint"], serde_json::json!(["/bin/env"]));
    assert_eq!(v["config"]["cmd"], serde_json::json!(["sh", "-c", "echo $GREETING"]));
    assert_eq!(v["config"]["env"], serde_json::json!(["PATH=/bin", "GREETING=hi"]));
    assert_eq!(v["config"]["working_dir"], "/work");
    assert_eq!(v["config"]["user"], "0:0");
    let table = d.berth(&["image", "inspect", &reference]).ok().to_string();
    assert!(table.contains("WorkingDir:") && table.contains("/work"), "{table}");
    d.berth(&["image", "inspect", "nosuch:1"]).fails_with("not found");

    // A tag is a second name for the same content.
    let copy = format!("{}/copy:2", reg.addr);
    assert_eq!(d.berth(&["tag", &reference, &copy]).ok().trim(), copy);
    let before = images_json(&d);
    let digests: Vec<&serde_json::Value> = before.as_array().expect("list").iter().map(|i| &i["digest"]).collect();
    assert_eq!(digests.len(), 2);
    assert_eq!(digests[0], digests[1]);
    d.berth(&["tag", "nosuch:1", &copy]).fails_with("not found");
    d.berth(&["tag", &reference, "Not A Ref!"]).fails_with("invalid argument");

    // Export both names; written atomically, nothing else left beside it.
    let out_dir = tempfile::tempdir().expect("tempdir");
    let archive = out_dir.path().join("images.tar");
    let archive_s = archive.to_string_lossy().into_owned();
    let out = d.berth(&["image", "export", &reference, &copy, &archive_s]).ok().to_string();
    assert!(out.starts_with("exported 4 blobs"), "{out}");
    assert_eq!(count(out_dir.path().to_path_buf()), 1, "only the archive");
    d.berth(&["image", "export", "nosuch:1", &archive_s]).fails_with("not found");
    assert!(archive.exists(), "a failed export leaves the old archive");

    // Remove both names: the last rmi frees everything.
    d.berth(&["rmi", &copy]).ok();
    let out = d.berth(&["rmi", &reference]).ok().to_string();
    assert!(out.contains("freed 4 blobs"), "{out}");
    assert_eq!(blobs(&d), 0);
    assert_eq!(committed(&d), 0);
    assert_eq!(images_json(&d), serde_json::json!([]));

    // Import restores the same digests and a runnable image.
    let out = d.berth(&["image", "import", &archive_s]).ok().to_string();
    assert!(out.contains(&format!("imported {reference} (")), "{out}");
    assert!(out.contains(&format!("imported {copy} (")), "{out}");
    assert_eq!(images_json(&d), before, "same names, same digests");
    assert_eq!(blobs(&d), 4);
    assert_eq!(d.berth(&["run", "--rm", &reference, "cat", "/new"]).ok(), "new\n");

    // Bad archives change nothing.
    d.berth(&["image", "import", "/no/such.tar"]).fails_with("not found");
    let junk = out_dir.path().join("junk.tar");
    std::fs::write(&junk, b"not a tar at all").expect("junk");
    d.berth(&["image", "import", &junk.to_string_lossy()]).fails_with("invalid argument");
    assert_eq!(images_json(&d).as_array().map(Vec::len), Some(2));
}

#[test]
fn rmi_and_prune_keep_what_a_running_container_uses() {
    let (d, _guard, _reg, reference) = setup();
    d.berth(&["run", "-d", "--name", "live", &reference, "sleep", "1000"]).ok();
    let err = d.berth(&["rmi", &reference]).fails_with("failed precondition");
    assert!(err.contains("default/live"), "{err}");
    assert_eq!(blobs(&d), 4, "a refused rmi changes nothing");

    // -f: the name goes, the blobs are freed, the container's chain stays.
    let out = d.berth(&["rmi", "-f", &reference]).ok().to_string();
    assert!(out.contains("freed 4 blobs") && out.contains("0 snapshots"), "{out}");
    assert_eq!(blobs(&d), 0);
    assert_eq!(committed(&d), 2, "both layers stay under the running container");
    assert_eq!(d.berth(&["exec", "live", "cat", "/new"]).ok(), "new\n");
    let out = d.berth(&["image", "prune"]).ok().to_string();
    assert_eq!(out.trim(), "freed 0 blobs (0 B), 0 snapshots (0 B)");
    assert_eq!(d.berth(&["exec", "live", "cat", "/new"]).ok(), "new\n");

    // With the container gone, prune frees the rest.
    d.berth(&["rm", "-f", "live"]).ok();
    let v: serde_json::Value = serde_json::from_str(d.berth(&["image", "prune", "--json"]).ok()).expect("prune json");
    assert_eq!(v["snapshots_removed"], 2, "{v}");
    assert!(v["snapshot_bytes"].as_u64().is_some_and(|b| b > 0), "{v}");
    assert_eq!(committed(&d), 0);
    assert!(d.leftover_mounts().is_empty(), "mounts left: {:?}", d.leftover_mounts());
}

/// Runs the CLI with `HOME` set (for `login`), `input` on stdin.
fn berth_home(d: &Daemon, home: &Path, args: &[&str], input: &str) -> Output {
    d.berth_with_env_input(&[("HOME", home)], args, input)
}

#[test]
fn login_stores_credentials_that_pull_uses() {
    let d = Daemon::start();
    let _guard = Unmounter(d.dir().to_path_buf());
    let reg = Registry::start_with(Some(("berth", "s3cret")), "warn");
    let reference = format!("{}/private:1", reg.addr);
    let auth = RegistryAuth::Basic("berth".into(), "s3cret".into());
    push_test_image(&reference, &d.rootfs, &auth);
    let home = tempfile::tempdir().expect("home");

    let err = berth_home(&d, home.path(), &["pull", "--insecure", &reference], "").fails_with("failed precondition");
    assert!(err.contains("authentication"), "{err}");
    assert_eq!(blobs(&d), 0);

    let wrong = berth_home(&d, home.path(), &["login", "-u", "berth", "--password-stdin", &reg.addr], "nope\n");
    wrong.ok();
    berth_home(&d, home.path(), &["pull", "--insecure", &reference], "").fails_with("failed precondition");

    berth_home(&d, home.path(), &["login", "-u", "berth", "--password-stdin", &reg.addr], "s3cret\n").ok();
    let file = home.path().join(".config/berth/auth.json");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(file.parent().expect("dir")), 0o700);
    let out = berth_home(&d, home.path(), &["pull", "--insecure", &reference], "").ok().to_string();
    assert!(out.contains(&format!("pulled {reference}")), "{out}");
    assert_eq!(berth_home(&d, home.path(), &["run", "--rm", &reference, "cat", "/new"], "").ok(), "new\n");

    berth_home(&d, home.path(), &["logout", &reg.addr], "").ok();
    berth_home(&d, home.path(), &["logout", &reg.addr], "").fails_with_any();
    await_no_containers(&d, "run --rm left its container");
    berth_home(&d, home.path(), &["rmi", &reference], "").ok();
    berth_home(&d, home.path(), &["pull", "--insecure", &reference], "").fails_with("failed precondition");
}

/// Not a terminal: one plain line per event; `-q`: the name only; on a
/// terminal (`script` gives one): a display redrawn in place that ends
/// and shows every layer.
#[test]
fn pull_progress_plain_quiet_and_on_a_terminal() {
    let (d, _guard, _reg, reference) = setup();
    let v: serde_json::Value =
        serde_json::from_str(d.berth(&["image", "inspect", "--json", &reference]).ok()).expect("inspect");
    let shorts: Vec<String> = v["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest")[7..19].to_string())
        .collect();
    assert_eq!(shorts.len(), 2);

    let out = d.berth(&["pull", "--insecure", &reference]).ok().to_string();
    assert!(!out.contains('\x1b'), "no escapes when not a terminal: {out:?}");
    for line in out.lines() {
        let layer = line.split_once(": ").is_some_and(|(digest, rest)| {
            digest.len() == 12
                && digest.chars().all(|c| c.is_ascii_hexdigit())
                && (rest.starts_with("downloading ") || rest.starts_with("downloaded ") || rest == "already present")
        });
        assert!(layer || line == "unpacking..." || line.starts_with("pulled "), "{line:?} in {out}");
    }
    assert_eq!(out.lines().filter(|l| l.ends_with("already present")).count(), 2, "each layer once: {out}");
    assert_eq!(d.berth(&["pull", "-q", "--insecure", &reference]).ok(), format!("{reference}\n"));

    // A cold pull on a terminal.
    d.berth(&["rmi", &reference]).ok();
    assert_eq!(blobs(&d), 0);
    let command = format!("{} pull --insecure {reference}", bin_path("berth").display());
    let out = Command::new("timeout")
        .args(["60", "script", "-qec", &command, "/dev/null"])
        .env("BERTH_SOCKET", &d.socket)
        .env_remove("BERTH_NAMESPACE")
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("\x1b[2K"), "redrawn in place: {text:?}");
    for s in &shorts {
        assert!(text.contains(&format!("{s}: downloaded ")), "{s} in {text:?}");
    }
    assert!(text.contains(&format!("pulled {reference} (sha256:")), "{text:?}");
    assert_eq!(blobs(&d), 4);
}

/// A top layer with /new, an /etc/passwd and /etc/group naming `app`
/// (1234, primary group 2345), `staff` (3456) and `audio` (63) with `app`
/// among their members, and `wheel` (10) without it; or, with `escape`,
/// an /etc/passwd that is a symlink out of the image.
fn users_layer(rootfs: &Path, escape: bool) -> Vec<u8> {
    let base_passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let passwd = format!("{base_passwd}app:x:1234:2345:app:/:/bin/sh\n");
    let group = "root:x:0:\nstaff:x:3456:app\nwheel:x:10:apple,bob\naudio:x:63:bob,app\n";
    let mut tar = tar::Builder::new(Vec::new());
    let files: Vec<(&str, &[u8])> = if escape {
        vec![("new", b"new\n"), ("etc/group", group.as_bytes())]
    } else {
        vec![("new", b"new\n"), ("etc/passwd", passwd.as_bytes()), ("etc/group", group.as_bytes())]
    };
    for (name, data) in files {
        append_file(&mut tar, name, data);
    }
    if escape {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        tar.append_link(&mut h, "etc/passwd", "../../../../../../../etc/passwd").expect("symlink");
    }
    tar.into_inner().expect("tar")
}

/// The image's `User` and `-u` resolve names through the image's own
/// /etc/passwd and /etc/group, with the user's supplementary groups when
/// no group is given and the image knows the user (as runc and Docker);
/// a missing name, or one only the host knows (a symlink out of the
/// image), is `invalid argument` and creates nothing.
#[test]
fn user_names_resolve_through_the_image() {
    let d = Daemon::start();
    let _guard = Unmounter(d.dir().to_path_buf());
    let reg = Registry::start();
    let named = format!("{}/users:1", reg.addr);
    push_custom(&named, &d.rootfs, &RegistryAuth::Anonymous, users_layer(&d.rootfs, false), "app");
    let ids = |args: &[&str]| d.berth(args).ok().trim().to_string();
    // `id -G`: the primary group, then the supplementary ones as the kernel
    // sorts them.
    let idcmd = ["sh", "-c", "echo $(id -u):$(id -g):$(id -G)"];
    let mut args = vec!["run", "--rm", "--insecure", &named];
    args.extend(idcmd);
    assert_eq!(ids(&args), "1234:2345:2345 63 3456", "the image's User by name");
    let cases = [
        ("app", "1234:2345:2345 63 3456"),
        ("1234", "1234:2345:2345 63 3456"),
        ("app:staff", "1234:3456:3456"),
        ("root", "0:0:0"),
        ("77:staff", "77:3456:3456"),
        ("5:6", "5:6:6"),
        ("4242", "4242:0:0"),
    ];
    for (u, want) in cases {
        let mut args = vec!["run", "--rm", "-u", u, &named];
        args.extend(idcmd);
        assert_eq!(ids(&args), want, "-u {u}");
    }
    let mut args = vec!["run", "--rm", "--runtime", "runc", &named];
    args.extend(idcmd);
    assert_eq!(ids(&args), "1234:2345:2345 63 3456", "runc sets the same groups");
    // An exec runs with init's groups.
    d.berth(&["run", "-d", "--name", "grp", &named, "sleep", "100"]).ok();
    assert_eq!(d.berth(&["exec", "grp", "id", "-G"]).ok(), "2345 63 3456\n");
    d.berth(&["rm", "-f", "grp"]).ok();
    for bad in ["nobody-here", "app:nogroup", ":staff"] {
        let err = d.berth(&["run", "--rm", "--name", "bad", "-u", bad, &named, "true"]).fails_with("invalid argument");
        assert!(err.contains("passwd") || err.contains("group") || err.contains("USER"), "{bad}: {err}");
        d.berth(&["inspect", "bad"]).fails_with("not found");
    }
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    d.berth(&["run", "--rm", "-u", "app", &rootfs, "true"]).fails_with("invalid argument");

    // /etc/passwd a symlink to the host's: resolved inside the image (where
    // it points at itself), never the host's, so names are refused.
    let escaping = format!("{}/escape:1", reg.addr);
    push_custom(&escaping, &d.rootfs, &RegistryAuth::Anonymous, users_layer(&d.rootfs, true), "");
    d.berth(&["pull", "-q", "--insecure", &escaping]).ok();
    d.berth(&["run", "--rm", "-u", "root", &escaping, "true"]).fails_with("invalid argument");
    assert_eq!(d.berth(&["run", "--rm", "-u", "0:0", &escaping, "id", "-u"]).ok(), "0\n");
    await_no_containers(&d, "containers left");
    assert!(d.leftover_mounts().is_empty(), "mounts left: {:?}", d.leftover_mounts());
}
