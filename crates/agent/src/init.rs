//! The guest's setup, in the order it must happen: kernel filesystems,
//! the modules listed in the initramfs, a move to a tmpfs root (the
//! initramfs's rootfs cannot be pivot_root'ed away from, which every
//! runtime does), then cgroup v2 with its controllers and the host's
//! shared directory (virtio-9p).

use std::path::Path;

use berth_model::vm;
use nix::errno::Errno;
use nix::mount::{MsFlags, mount};

/// The initramfs lists the modules to load, in order, relative to
/// [`MODULE_DIR`].
const MODULE_LIST: &str = "/etc/berth/modules";
const MODULE_DIR: &str = "/lib/modules";
/// What the tmpfs root keeps of the initramfs.
const KEEP: [&str; 2] = ["/init", "/bin/berth-shim"];

pub fn prepare() -> Result<(), String> {
    for (what, at, fstype) in [("devtmpfs", "/dev", "devtmpfs"), ("proc", "/proc", "proc"), ("sysfs", "/sys", "sysfs")]
    {
        mount_at(what, at, fstype, MsFlags::MS_NOSUID, None)?;
    }
    load_modules()?;
    switch_root()?;
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_at("tmpfs", "/run", "tmpfs", nodev, Some("mode=0755"))?;
    mount_at("tmpfs", "/tmp", "tmpfs", nodev, Some("mode=1777"))?;
    mount_at(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666"),
    )?;
    mount_at("shm", "/dev/shm", "tmpfs", nodev | MsFlags::MS_NOEXEC, Some("mode=1777"))?;
    mount_at("cgroup2", "/sys/fs/cgroup", "cgroup2", nodev | MsFlags::MS_NOEXEC, None)?;
    let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    let enable: Vec<String> = controllers.split_whitespace().map(|c| format!("+{c}")).collect();
    std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", enable.join(" "))
        .map_err(|e| format!("enable cgroup controllers {controllers:?}: {e}"))?;
    mount_at(vm::SHARE_TAG, vm::GUEST_SHARE, "9p", nodev, Some("trans=virtio,version=9p2000.L,msize=262144,cache=none"))
}

/// Mounts `what` on `at`, making `at` first.
fn mount_at(what: &str, at: &str, fstype: &str, flags: MsFlags, data: Option<&str>) -> Result<(), String> {
    std::fs::create_dir_all(at).map_err(|e| format!("mkdir {at}: {e}"))?;
    mount(Some(what), at, Some(fstype), flags, data).map_err(|e| format!("mount {fstype} on {at}: {e}"))
}

fn load_modules() -> Result<(), String> {
    let list = std::fs::read_to_string(MODULE_LIST).map_err(|e| format!("read {MODULE_LIST}: {e}"))?;
    for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = Path::new(MODULE_DIR).join(name);
        let file = std::fs::File::open(&path).map_err(|e| format!("open module {}: {e}", path.display()))?;
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            // Built into this kernel, or loaded as another's dependency.
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(format!("load module {name}: {e}")),
        }
    }
    Ok(())
}

/// Moves to a tmpfs root holding only the agent and the shim, freeing
/// the initramfs (as busybox's switch_root does).
fn switch_root() -> Result<(), String> {
    const NEW: &str = "/newroot";
    mount_at("tmpfs", NEW, "tmpfs", MsFlags::empty(), Some("mode=0755"))?;
    for file in KEEP {
        let to = format!("{NEW}{file}");
        if let Some(dir) = Path::new(&to).parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        }
        std::fs::copy(file, &to).map_err(|e| format!("copy {file}: {e}"))?;
    }
    let entries = std::fs::read_dir("/").map_err(|e| format!("read /: {e}"))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if ["/dev", "/proc", "/sys", NEW].iter().any(|m| path == Path::new(m)) {
            continue;
        }
        // Freed memory only: a leftover file costs nothing but RAM.
        let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
    for m in ["/dev", "/proc", "/sys"] {
        let to = format!("{NEW}{m}");
        std::fs::create_dir_all(&to).map_err(|e| format!("mkdir {to}: {e}"))?;
        mount(Some(m), to.as_str(), None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(|e| format!("move {m}: {e}"))?;
    }
    std::env::set_current_dir(NEW).map_err(|e| format!("chdir {NEW}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|e| format!("move the root: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
}

/// Ends the guest: QEMU runs with `-no-reboot`, so a reboot stops it.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // reboot(2) returns only on failure; PID 1 must not exit.
    loop {
        std::thread::park();
    }
}
