//! A minimal busybox root filesystem and the location of berth's binaries.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

const BUSYBOX: &str = "/bin/busybox";

/// Builds `<dir>/rootfs`: a static busybox with a link per applet, plus the
/// usual mount points. Panics with a hint when busybox-static is missing.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    fs::create_dir_all(&bin).expect("create rootfs/bin");
    for d in ["proc", "sys", "dev", "tmp", "etc", "root"] {
        fs::create_dir_all(root.join(d)).expect("create rootfs dir");
    }
    let out = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .unwrap_or_else(|e| panic!("{BUSYBOX} missing ({e}): apt-get install -y busybox-static"));
    let static_check = Command::new("sh")
        .arg("-c")
        .arg(format!("LC_ALL=C ldd {BUSYBOX} 2>&1 | grep -q 'not a dynamic'"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(static_check, "{BUSYBOX} is not static: apt-get install -y busybox-static");
    fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox");
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = symlink("busybox", bin.join(applet));
        }
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        .expect("write passwd");
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("write group");
    root
}

/// Path of a workspace binary (berthd, berth, berth-shim) in the cargo
/// target directory the running test or bench was built into.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(p.exists(), "{} not built: run `cargo build --workspace --bins` first", p.display());
    p
}
