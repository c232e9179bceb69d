//! VM fixtures (docs/vm.md): where `make vm-assets` put the guest's
//! assets, and a container bundle in a VM's shared directory as its guest
//! sees it, for driving the guest's Task API directly; and what tests
//! through berthd look for: the guest's release, the VM processes and
//! mounts a test made, and that none is left.

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use crate::{Daemon, busybox_rootfs};

/// The guest's assets: `$BERTH_VM_ASSETS`, else the workspace's
/// target/vm-assets. Panics, naming `make vm-assets`, when missing.
pub fn assets_dir() -> PathBuf {
    let dir = std::env::var_os("BERTH_VM_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/vm-assets"));
    std::fs::canonicalize(&dir).unwrap_or_else(|e| panic!("{}: {e}; run `make vm-assets`", dir.display()))
}

/// Makes `share/ID/` a bundle running `args` in a busybox root, with the
/// guest's paths (`guest_share` is where the guest mounts `share`), and
/// returns the bundle's guest path.
pub fn guest_bundle(share: &Path, guest_share: &str, id: &str, args: &[&str]) -> String {
    let rootfs = busybox_rootfs(&share.join(id));
    let guest = |p: &Path| format!("{guest_share}/{}", p.strip_prefix(share).unwrap_or(p).display());
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": args, "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": guest(&rootfs), "readonly": true},
        "hostname": id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
        ],
        "linux": {
            "cgroupsPath": format!("/berth/{id}"),
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
        },
    });
    std::fs::write(share.join(id).join("config.json"), spec.to_string()).expect("write the guest's config.json");
    guest(&share.join(id))
}

/// [`assets_dir`] as a string, for berthd's --vm-assets.
pub fn assets() -> String {
    assets_dir().display().to_string()
}

/// A berthd whose VMs use the built assets.
pub fn daemon() -> Daemon {
    Daemon::start_with(&["--vm-assets", &assets()])
}

/// The guest kernel's release, from the assets' manifest.
pub fn release() -> String {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}/assets.json", assets())).unwrap()).unwrap();
    manifest["kernel_release"].as_str().unwrap().to_string()
}

/// Processes whose arguments mention the test's directory and are not
/// berthd (shims, QEMU, vsock backends): pid and arguments.
pub fn vm_processes(d: &Daemon) -> Vec<(u32, String)> {
    let marker = d.dir().to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if args.contains(&marker) && !args.contains("berthd") {
            found.push((pid, args));
        }
    }
    found
}

pub fn qemu(d: &Daemon) -> Option<u32> {
    vm_processes(d).into_iter().find(|(_, args)| args.contains("qemu-system")).map(|(pid, _)| pid)
}

/// Mounts under the test's directory other than pinned namespaces, in
/// the host's (this test's) mount namespace.
pub fn vm_mounts(d: &Daemon) -> Vec<String> {
    let under = d.dir().to_string_lossy().into_owned();
    crate::mount_points().into_iter().filter(|p| p.starts_with(&under) && p.contains("/runtime/vm/")).collect()
}

/// Waits until nothing of the test's VMs is left.
pub fn assert_nothing_left(d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(vm_processes(d).is_empty() && vm_mounts(d).is_empty()) {
        assert!(Instant::now() < deadline, "left: {:?} {:?}\n{}", vm_processes(d), vm_mounts(d), d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let vm_root = d.state.join("runtime/vm");
    let left: Vec<_> = walk(&vm_root).into_iter().filter(|p| p.extension().is_some_and(|e| e == "vm")).collect();
    assert!(left.is_empty(), "VM directories left: {left:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        all.push(e.path());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            all.extend(walk(&e.path()));
        }
    }
    all
}
