//! VM fixtures (docs/vm.md): where `make vm-assets` put the guest's
//! assets, and a container bundle in a VM's shared directory as its guest
//! sees it, for driving the guest's Task API directly.

use std::path::{Path, PathBuf};

use crate::busybox_rootfs;

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
