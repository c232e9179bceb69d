//! Run options real images need (issue 10, item 7; SPEC B2, B9, B31, B32):
//! bind mounts, named volumes that outlive their containers and cannot be
//! removed while a container (even a stopped one) uses them, tmpfs mounts,
//! a read-only root and the host name — for both runtimes — named volumes
//! pre-filled from an image, and bad input refused before anything (a
//! container, a volume) exists.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_e2e::registry::{Unmounter, await_no_containers, sha256, tar_of};
use berth_testing::Daemon;

const RUNTIMES: [&str; 2] = ["embedded", "runc"];

/// `berth run --rm` of a shell script in the busybox rootfs; its output.
fn sh(d: &Daemon, runtime: &str, flags: &[&str], script: &str) -> String {
    let rootfs = d.rootfs.to_str().expect("utf-8 path");
    let mut args = vec!["run", "--rm", "--runtime", runtime];
    args.extend_from_slice(flags);
    args.extend_from_slice(&[rootfs, "sh", "-c", script]);
    let out = d.berth(&args);
    assert_eq!(out.code, 0, "{runtime} {flags:?}: {out:?}");
    out.stdout
}

/// Names of the volume directories under the daemon's root.
fn volume_dirs(d: &Daemon) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(d.root.join("volumes"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits until no container uses `vol` (`run --rm` removes its container
/// in berthd, right after the exit the CLI saw).
fn await_unused(d: &Daemon, vol: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v: serde_json::Value = serde_json::from_str(d.berth(&["volume", "inspect", vol]).ok()).expect("JSON");
        if v["used_by"] == serde_json::json!([]) {
            return;
        }
        assert!(Instant::now() < deadline, "{vol} still used: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn volume_json(d: &Daemon) -> Vec<serde_json::Value> {
    let out = d.berth(&["volume", "ls", "--json"]);
    serde_json::from_str::<serde_json::Value>(out.ok()).expect("JSON").as_array().cloned().expect("array")
}

#[test]
fn bind_mounts_are_visible_and_writable_and_ro_is_not() {
    let d = Daemon::start();
    let host = d.dir().join("shared");
    std::fs::create_dir(&host).expect("host dir");
    std::fs::write(host.join("from-host"), "hello from the host\n").expect("host file");
    let (rw, ro) = (format!("{}:/data", host.display()), format!("{}:/ro-data:ro", host.display()));
    for rt in RUNTIMES {
        let script = "cat /data/from-host; echo written > /data/from-$0 && echo RW-OK; \
                      cat /ro-data/from-host; touch /ro-data/x 2>/dev/null && echo RO-WRITTEN; \
                      grep ' /ro-data ' /proc/mounts";
        let rootfs = d.rootfs.to_str().expect("utf-8");
        let out = d.berth(&["run", "--rm", "--runtime", rt, "-v", &rw, "-v", &ro, rootfs, "sh", "-c", script, rt]);
        let text = out.ok();
        assert_eq!(text.matches("hello from the host").count(), 2, "{rt}: {text}");
        assert!(text.contains("RW-OK"), "{rt}: {text}");
        assert!(!text.contains("RO-WRITTEN"), "{rt}: a :ro bind was writable: {text}");
        let ro_line = text.lines().find(|l| l.contains(" /ro-data ")).expect("ro mount listed");
        assert!(ro_line.split(' ').nth(3).is_some_and(|o| o.split(',').any(|f| f == "ro")), "{rt}: {ro_line}");
        assert_eq!(std::fs::read_to_string(host.join(format!("from-{rt}"))).expect("written through"), "written\n");
        assert!(!host.join("x").exists());
    }
}

#[test]
fn a_named_volume_outlives_its_container_and_is_kept_while_used() {
    let d = Daemon::start();
    for rt in RUNTIMES {
        let vol = format!("data-{rt}");
        let mount = format!("{vol}:/vol");
        let writer = format!("writer-{rt}");
        let rootfs = d.rootfs.to_str().expect("utf-8");
        // Created on first use; the container stays (stopped).
        let args = ["run", "--name", &writer, "--runtime", rt, "-v", &mount, rootfs, "sh", "-c", "echo kept > /vol/f"];
        d.berth(&args).ok();
        assert_eq!(
            std::fs::read_to_string(d.root.join("volumes").join(&vol).join("_data/f")).expect("in the volume"),
            "kept\n"
        );
        let inspect: serde_json::Value =
            serde_json::from_str(d.berth(&["inspect", "--json", &writer]).ok()).expect("inspect JSON");
        assert_eq!(inspect["volumes"], serde_json::json!([vol]), "{inspect}");
        let listed = volume_json(&d);
        let entry = listed.iter().find(|v| v["name"] == vol.as_str()).expect("listed");
        assert_eq!(entry["used_by"], serde_json::json!([format!("default/{writer}")]), "{entry}");
        // Refused while a stopped container uses it, naming that container.
        let err = d.berth(&["volume", "rm", &vol]).fails_with("failed precondition");
        assert!(err.contains(&format!("default/{writer}")), "{err}");
        d.berth(&["rm", &writer]).ok();
        // The volume survives the container; a second one reads it.
        assert_eq!(sh(&d, rt, &["-v", &format!("{vol}:/v:ro")], "cat /v/f"), "kept\n");
        await_unused(&d, &vol);
        d.berth(&["volume", "rm", &vol]).ok();
        assert!(!d.root.join("volumes").join(&vol).exists());
        d.berth(&["volume", "inspect", &vol]).fails_with("not found");
        d.berth(&["volume", "rm", &vol]).fails_with("not found");
    }
    // Explicit creation, idempotent; listed without users.
    assert_eq!(d.berth(&["volume", "create", "made"]).ok().trim(), "made");
    d.berth(&["volume", "create", "made"]).ok();
    let table = d.berth(&["volume", "ls"]).ok().to_string();
    assert!(table.lines().any(|l| l.starts_with("made ")), "{table}");
    d.berth(&["volume", "rm", "made"]).ok();
    assert!(volume_dirs(&d).is_empty(), "{:?}", volume_dirs(&d));
}

#[test]
fn tmpfs_read_only_root_and_hostname() {
    let d = Daemon::start();
    for rt in RUNTIMES {
        let flags = [
            "--read-only",
            "--tmpfs",
            "/scratch",
            "--tmpfs",
            "/big:size=1m,exec",
            "-v",
            "scratchvol:/vol",
            "--hostname",
            "box-1.example",
        ];
        let script = "touch /root-file 2>/dev/null && echo ROOT-WRITTEN; touch /scratch/a && echo TMPFS-OK; \
                      touch /vol/a && echo VOL-OK; grep -E ' /(scratch|big) ' /proc/mounts; \
                      echo host=$(hostname)";
        let out = sh(&d, rt, &flags, script);
        assert!(!out.contains("ROOT-WRITTEN"), "{rt}: --read-only root was writable: {out}");
        assert!(out.contains("TMPFS-OK") && out.contains("VOL-OK"), "{rt}: {out}");
        let line = |at: &str| out.lines().find(|l| l.split(' ').nth(1) == Some(at)).map(str::to_string);
        let scratch = line("/scratch").unwrap_or_else(|| panic!("{rt}: no tmpfs at /scratch: {out}"));
        let fields: Vec<&str> = scratch.split(' ').collect();
        assert_eq!(fields[2], "tmpfs", "{rt}: {scratch}");
        for opt in ["rw", "nosuid", "nodev", "noexec"] {
            assert!(fields[3].split(',').any(|o| o == opt), "{rt}: {opt} missing: {scratch}");
        }
        let big = line("/big").unwrap_or_else(|| panic!("{rt}: no tmpfs at /big: {out}"));
        assert!(big.contains("size=1024k") && !big.contains("noexec"), "{rt}: {big}");
        assert!(out.contains("host=box-1.example"), "{rt}: {out}");
        assert!(!d.rootfs.join("root-file").exists());
    }
    await_unused(&d, "scratchvol");
    d.berth(&["volume", "rm", "scratchvol"]).ok();
}

/// Writes an OCI image layout archive of one uncompressed `layer` named
/// `name`, for `berth image import`.
fn image_archive(layer: &[u8], name: &str, at: &Path) {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
    }))
    .expect("config");
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config),
                   "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer),
                    "size": layer.len()}],
    }))
    .expect("manifest");
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(&manifest),
                       "size": manifest.len(), "annotations": {"io.containerd.image.name": name}}],
    }))
    .expect("index");
    let mut out = tar::Builder::new(std::fs::File::create(at).expect("archive"));
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.append_data(&mut h, path, data).expect("append");
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for blob in [layer, config.as_slice(), manifest.as_slice()] {
        let digest = sha256(blob);
        add(&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:")), blob);
    }
    out.finish().expect("finish archive");
}

/// The busybox rootfs plus /data (uid 1000, 0750) holding `seed` (0640),
/// `sub/` and the link `link -> seed`; /escape, a symlink to `host` (a
/// host directory, absolute), and at that same path in the image a
/// directory holding `inside`.
fn seeded_layer(rootfs: &Path, host: &Path) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", rootfs).expect("tar rootfs");
    let host = host.to_str().expect("utf-8");
    let inside = format!("{}/inside", host.trim_start_matches('/'));
    let entries: [(&str, tar::EntryType, u32, &str); 6] = [
        ("data", tar::EntryType::Directory, 0o750, ""),
        ("data/seed", tar::EntryType::Regular, 0o640, "seed\n"),
        ("data/sub", tar::EntryType::Directory, 0o755, ""),
        ("data/link", tar::EntryType::Symlink, 0o777, "seed"),
        ("escape", tar::EntryType::Symlink, 0o777, host),
        (&inside, tar::EntryType::Regular, 0o644, "image\n"),
    ];
    for (path, kind, mode, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        let owner = if path.starts_with("data") { 1000 } else { 0 };
        h.set_uid(owner);
        h.set_gid(owner);
        h.set_mtime(1_700_000_000);
        if kind == tar::EntryType::Symlink {
            h.set_size(0);
            tar.append_link(&mut h, path, data).expect("symlink entry");
        } else {
            let body = if kind == tar::EntryType::Regular { data.as_bytes() } else { b"" };
            h.set_size(body.len() as u64);
            h.set_cksum();
            tar.append_data(&mut h, path, body).expect("tar entry");
        }
    }
    tar.into_inner().expect("tar")
}

/// Issue 10 item 7, as Docker: a named volume that is empty when a
/// container from an image mounts it gets the image's content at the
/// mount point (owners, modes, links; the volume root takes the
/// directory's), once; bind mounts never; an image path that is a symlink
/// out of the rootfs resolves inside it and copies nothing from the host;
/// a create that fails after the fill leaves the volume as it was (SPEC
/// B2, B9).
#[test]
fn named_volumes_are_filled_from_the_image_when_empty() {
    use std::os::unix::fs::MetadataExt;
    let d = Daemon::start();
    let _guard = Unmounter(d.dir().to_path_buf());
    let host = d.dir().join("host-secret");
    std::fs::create_dir(&host).expect("host dir");
    std::fs::write(host.join("secret"), "host\n").expect("host file");
    let archive = d.dir().join("seeded.tar");
    let name = "127.0.0.1:5999/seeded:1";
    image_archive(&seeded_layer(&d.rootfs, &host), name, &archive);
    d.berth(&["image", "import", archive.to_str().expect("utf-8")]).ok();
    let run = |args: &[&str]| {
        let mut all = vec!["run", "--rm", "--pull", "never"];
        all.extend_from_slice(args);
        d.berth(&all).ok().to_string()
    };
    let data = |vol: &str| d.root.join("volumes").join(vol).join("_data");
    let ids = |p: &Path| std::fs::symlink_metadata(p).map(|m| (m.uid(), m.gid(), m.mode() & 0o7777)).expect("stat");

    assert_eq!(run(&["-v", "seeded:/data", name, "cat", "/data/seed"]), "seed\n");
    assert_eq!(ids(&data("seeded")), (1000, 1000, 0o750), "the volume root takes the image dir's owner and mode");
    assert_eq!(ids(&data("seeded").join("seed")), (1000, 1000, 0o640));
    assert!(data("seeded").join("sub").is_dir());
    assert_eq!(std::fs::read_link(data("seeded").join("link")).expect("a link"), Path::new("seed"));
    // Once filled, the volume keeps what containers make of it.
    run(&["-v", "seeded:/data", name, "sh", "-c", "echo changed > /data/seed; rm /data/link"]);
    assert_eq!(run(&["-v", "seeded:/data", name, "sh", "-c", "cat /data/seed; ls /data"]), "changed\nseed\nsub\n");
    // An existing empty volume is filled as well; a bind mount never is.
    d.berth(&["volume", "create", "made-before"]).ok();
    assert_eq!(run(&["-v", "made-before:/data", name, "ls", "/data"]), "link\nseed\nsub\n");
    let bind = d.dir().join("bind");
    std::fs::create_dir(&bind).expect("bind dir");
    let bind_arg = format!("{}:/data", bind.display());
    assert_eq!(run(&["-v", &bind_arg, name, "ls", "-A", "/data"]), "");
    assert_eq!(std::fs::read_dir(&bind).expect("bind dir").count(), 0, "a bind mount was filled");
    // /escape points at the host directory: resolved inside the image (as
    // the runtime resolves the mount point), so the image's directory at
    // that path is copied, never the host's.
    assert_eq!(run(&["-v", "esc:/escape", name, "ls", "-A", "/escape"]), "inside\n");
    assert_eq!(std::fs::read_to_string(data("esc").join("inside")).expect("from the image"), "image\n");
    assert!(!data("esc").join("secret").exists(), "a host file was copied");

    // A create failing after the fill (no such command): a volume it made
    // is gone, an empty one it filled is empty again.
    d.berth(&["volume", "create", "was-empty"]).ok();
    for (vol, existed) in [("fresh", false), ("was-empty", true)] {
        let mount = format!("{vol}:/data");
        let out = d.berth(&["run", "--name", "fails", "--pull", "never", "-v", &mount, name, "/no/such/binary"]);
        assert!(out.code != 0 && out.stderr.contains("runtime create"), "{out:?}");
        assert_eq!(data(vol).is_dir(), existed, "{vol}");
        if existed {
            assert_eq!(std::fs::read_dir(data(vol)).expect("volume").count(), 0, "{vol} was not emptied");
            assert_eq!(ids(&data(vol)), (0, 0, 0o755), "{vol}: the owner and mode of a new volume");
        }
        d.berth(&["inspect", "fails"]).fails_with("not found");
    }
    await_no_containers(&d, "run --rm containers left");
    assert!(d.leftover_mounts().is_empty(), "mounts left: {:?}", d.leftover_mounts());
}

#[test]
fn read_only_image_snapshot_keeps_volumes_and_tmpfs_writable() {
    let d = Daemon::start();
    let archive = d.dir().join("image.tar");
    let name = "127.0.0.1:5999/volumes-test:1";
    image_archive(&tar_of(&[], Some(&d.rootfs)), name, &archive);
    let out = d.berth(&["image", "import", archive.to_str().expect("utf-8")]).ok().to_string();
    assert!(out.contains(name), "{out}");
    for rt in RUNTIMES {
        let args = [
            "run",
            "--rm",
            "--pull",
            "never",
            "--runtime",
            rt,
            "--read-only",
            "--tmpfs",
            "/scratch",
            "-v",
            "imgvol:/vol",
            "--hostname",
            "from-image",
            name,
            "sh",
            "-c",
            "touch /root-file 2>/dev/null && echo ROOT-WRITTEN; touch /scratch/a /vol/a && echo WRITABLE; hostname",
        ];
        let text = d.berth(&args).ok().to_string();
        assert!(!text.contains("ROOT-WRITTEN"), "{rt}: the snapshot root was writable: {text}");
        assert!(text.contains("WRITABLE") && text.contains("from-image"), "{rt}: {text}");
    }
    await_unused(&d, "imgvol");
    d.berth(&["volume", "rm", "imgvol"]).ok();
}

#[test]
fn bad_run_options_are_refused_before_anything_is_created() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_str().expect("utf-8").to_string();
    let bundle = d.dir().join("bundle");
    std::fs::create_dir(&bundle).expect("bundle dir");
    std::fs::write(bundle.join("config.json"), "{}").expect("config.json");
    let bundle = bundle.to_str().expect("utf-8").to_string();
    let long_host = "h".repeat(65);
    let cases: Vec<Vec<&str>> = vec![
        vec!["-v", "relative/dir:/data"],
        vec!["-v", "/no/such/berth/dir:/data"],
        vec!["-v", "/tmp:/data/../etc"],
        vec!["-v", "/tmp:data"],
        vec!["-v", "/tmp:/proc"],
        vec!["-v", "/tmp:/data:rx"],
        vec!["--volume=-bad-name:/data"],
        vec!["-v", "fresh:/a", "-v", "bad name:/b"],
        vec!["-v", "fresh:/a", "--tmpfs", "/a"],
        vec!["-v", "fresh:/a", "--tmpfs", "/t:size=1m;x"],
        vec!["-v", "fresh:/a", "--hostname=-host"],
        vec!["-v", "fresh:/a", "--hostname", "under_score"],
        vec!["--hostname", &long_host],
    ];
    for rt in RUNTIMES {
        for (i, case) in cases.iter().enumerate() {
            let name = format!("bad-{rt}-{i}");
            let mut args = vec!["create", "--name", &name, "--runtime", rt];
            args.extend_from_slice(case);
            args.extend_from_slice(&[&rootfs, "true"]);
            d.berth(&args).fails_with("invalid argument");
            assert!(d.container_paths("default", &name).is_empty(), "{case:?}");
        }
        // Any of these options on a bundle: its config.json is used as written.
        let bundle_cases: [&[&str]; 4] =
            [&["-v", "fresh:/a"], &["--tmpfs", "/t"], &["--hostname", "h"], &["--read-only"]];
        for case in bundle_cases {
            let name = format!("bundle-{rt}");
            let mut args = vec!["create", "--name", &name, "--runtime", rt];
            args.extend_from_slice(case);
            args.extend_from_slice(&[&bundle, "true"]);
            let err = d.berth(&args).fails_with("invalid argument");
            assert!(err.contains("bundle"), "{err}");
        }
    }
    let listed: serde_json::Value = serde_json::from_str(d.berth(&["ps", "-a", "--json"]).ok()).expect("ps JSON");
    assert_eq!(listed, serde_json::json!([]), "nothing was created");
    assert!(volume_dirs(&d).is_empty(), "a refused create made a volume: {:?}", volume_dirs(&d));
    assert!(d.shim_pids().is_empty());
    // A create that fails later (the runtime cannot make a mount point
    // under a file) rolls back the volume it made, too.
    for rt in RUNTIMES {
        let name = format!("late-{rt}");
        let args = ["create", "--name", &name, "--runtime", rt, "-v", "rolled:/bin/busybox/sub", &rootfs, "true"];
        let err = d.berth(&args).fails_with_any();
        assert!(err.contains("create failed at step"), "{err}");
        assert!(d.container_paths("default", &name).is_empty());
        assert!(volume_dirs(&d).is_empty(), "{rt}: the failed create left a volume: {:?}", volume_dirs(&d));
        assert!(!Path::new(&d.root).join("volumes/rolled").exists());
    }
    assert!(d.shim_pids().is_empty());
}

/// SPEC B20: berthd killed right after a create made a new volume (or
/// later in that create) removes the volume at its next start; a volume
/// that existed before the create is kept, data and all.
#[test]
fn a_crash_mid_create_removes_the_volumes_that_create_made() {
    let d = Daemon::start();
    let rootfs = d.rootfs.to_string_lossy().into_owned();
    d.berth(&["volume", "create", "old"]).ok();
    std::fs::write(d.root.join("volumes/old/_data/keep"), "data").expect("write into old");
    for step in ["volumes", "runtime create"] {
        d.kill9();
        d.spawn_with_env(&[("BERTH_TEST_CRASH_AT", step)]);
        d.wait_serving();
        let out = d.berth(&["run", "-d", "--name", "cut", "-v", "new:/new", "-v", "old:/old", &rootfs, "sleep", "100"]);
        assert_ne!(out.code, 0, "{step}: create survived its crash point: {out:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !d.daemon_exited() {
            assert!(Instant::now() < deadline, "{step}: berthd did not die");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(d.root.join("volumes/new/_data").is_dir(), "{step}: the crash came after the volume was made");
        d.spawn();
        d.berth(&["inspect", "cut"]).fails_with("not found");
        assert_eq!(volume_dirs(&d), ["old"], "{step}");
        assert_eq!(std::fs::read_to_string(d.root.join("volumes/old/_data/keep")).expect("old data"), "data");
        assert!(d.shim_pids().is_empty(), "{step}");
        assert!(d.container_paths("default", "cut").is_empty(), "{step}");
    }
    d.berth(&["volume", "rm", "old"]).ok();
}
