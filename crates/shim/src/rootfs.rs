//! The root filesystem containerd hands a task: the mounts of its snapshot
//! (an overlay, or a bind of a directory), mounted in order at
//! `<bundle>/rootfs` on Create and unmounted on Delete. A task whose spec
//! names an absolute root (`ctr run --rootfs DIR`) comes with none.

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// The rootfs directory of a bundle.
pub fn target(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}

/// Mounts `mounts` at `<bundle>/rootfs`; on failure undoes what it did.
/// Returns whether anything was mounted.
pub fn mount_all(bundle: &Path, mounts: &[Mount]) -> Result<bool, String> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let dir = target(bundle);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    for m in mounts {
        if let Err(e) = mount_one(m, &dir) {
            unmount_all(bundle);
            return Err(e);
        }
    }
    Ok(true)
}

fn mount_one(m: &Mount, dir: &Path) -> Result<(), String> {
    let (flags, data) = parse_options(&m.options);
    let fstype = if m.type_ == "bind" || m.type_.is_empty() { None } else { Some(m.type_.as_str()) };
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(Some(m.source.as_str()), dir, fstype, flags, data)
        .map_err(|e| format!("mount {} ({}) at {}: {e}", m.source, m.type_, dir.display()))?;
    // A bind mount takes read-only (and the other per-mount flags) only
    // on a remount.
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, dir, None::<&str>, remount, None::<&str>)
            .map_err(|e| format!("remount {} read-only: {e}", dir.display()))?;
    }
    Ok(())
}

/// Splits mount(8)-style options into flags and filesystem data.
fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            _ => {
                data.push(o.as_str());
                continue;
            }
        };
        flags = (flags | set) - clear;
    }
    (flags, data.join(","))
}

/// Unmounts everything at `<bundle>/rootfs` (nothing mounted: a no-op).
pub fn unmount_all(bundle: &Path) {
    let dir = target(bundle);
    // Each call takes off the top mount; stop when none is left.
    while umount2(&dir, MntFlags::MNT_DETACH).is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["rbind", "ro", "lowerdir=/a:/b", "index=off"].iter().map(|s| s.to_string()).collect();
        let (flags, data) = parse_options(&opts);
        assert_eq!(flags, MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY);
        assert_eq!(data, "lowerdir=/a:/b,index=off");
        let (flags, _) = parse_options(&["ro".to_string(), "rw".to_string()]);
        assert!(flags.is_empty());
    }
}
