//! Checkpoint archives (SPEC B16, B31): a checkpoint as one tar file —
//! `checkpoint.json`, `config.json`, `images/…` (CRIU's files) and, for a
//! container from an image, `rootfs-diff.tar` (its writable layer) — written
//! by export and validated entry by entry on import: only those names,
//! regular files and the `images` directory, no absolute paths, no `..`,
//! no links or devices, bounded size and count. A bad archive is a typed
//! error and leaves nothing behind.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use berth_model::{ContainerId, Namespace};

use crate::checkpoint::{IMAGES, META, ROOTFS_DIFF, SPEC, read_meta};
use crate::error::{Error, Result};
use crate::manager::Manager;
use crate::network::RESOLVER_FILES;

/// The directories imports unpack into, under the checkpoints root.
const IMPORT_PREFIX: &str = ".import-";

/// Limits of an imported archive.
const MAX_ENTRIES: usize = 100_000;
const MAX_BYTES: u64 = 64 << 30;
/// `checkpoint.json` and `config.json` are small; a bigger one is refused
/// before it is read.
const MAX_JSON: u64 = 4 << 20;

fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("checkpoint archive {}: {why}", path.display()))
}

/// An absolute path on berthd's host (the caller's working directory is
/// not berthd's).
fn absolute(path: &Path) -> Result<()> {
    if !path.is_absolute() {
        return Err(Error::InvalidArgument(format!("{} is not an absolute path", path.display())));
    }
    Ok(())
}

/// Where an archive entry may go inside the checkpoint directory.
fn entry_target(name: &Path) -> Option<PathBuf> {
    let parts: Vec<&str> = name
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [f] if [META, SPEC, IMAGES, ROOTFS_DIFF].contains(f) => Some(PathBuf::from(f)),
        [d, f] if *d == IMAGES && !f.is_empty() => Some(Path::new(IMAGES).join(f)),
        _ => None,
    }
}

impl Manager {
    /// Writes checkpoint `name` of `id` to the new file `path`.
    pub fn checkpoint_export(&self, ns: &Namespace, id: &ContainerId, name: &str, path: &Path) -> Result<()> {
        absolute(path)?;
        let dir = self.checkpoint_of(ns, id, name)?;
        if path.symlink_metadata().is_ok() {
            return Err(Error::AlreadyExists(path.display().to_string()));
        }
        // A new file only readable by root (it holds the container's
        // memory), never through a link, renamed into place without
        // replacing anything that appeared meanwhile.
        let tmp = path.with_extension(format!("tmp-{}-{}", std::process::id(), crate::now_ns()));
        let write = || -> std::io::Result<()> {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            let mut tar = tar::Builder::new(file);
            tar.mode(tar::HeaderMode::Deterministic);
            tar.append_path_with_name(dir.join(META), META)?;
            tar.append_path_with_name(dir.join(SPEC), SPEC)?;
            if dir.join(ROOTFS_DIFF).is_file() {
                tar.append_path_with_name(dir.join(ROOTFS_DIFF), ROOTFS_DIFF)?;
            }
            tar.append_dir(IMAGES, dir.join(IMAGES))?;
            for entry in std::fs::read_dir(dir.join(IMAGES))? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    tar.append_path_with_name(entry.path(), Path::new(IMAGES).join(entry.file_name()))?;
                }
            }
            tar.into_inner()?.sync_all()?;
            std::fs::hard_link(&tmp, path)
        };
        let written = write();
        let _ = std::fs::remove_file(&tmp);
        written.map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::AlreadyExists(path.display().to_string()),
            _ => Error::io(format!("write {}", path.display()), e),
        })
    }

    /// At startup (no restore is in flight yet): imports a crash cut short.
    pub(crate) fn remove_interrupted_imports(&self) {
        let imports = std::fs::read_dir(self.cfg.root.join("checkpoints")).into_iter().flatten().flatten();
        for dir in imports.filter(|e| e.file_name().to_string_lossy().starts_with(IMPORT_PREFIX)) {
            tracing::warn!(dir = %dir.path().display(), "removing an import cut short by a crash");
            let _ = std::fs::remove_dir_all(dir.path());
        }
    }

    /// Unpacks and checks an archive into a new directory under the
    /// checkpoints root; returns it (the caller keeps or removes it).
    pub(crate) fn import_checkpoint(&self, path: &Path) -> Result<PathBuf> {
        absolute(path)?;
        let file =
            File::options().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::NotFound(path.display().to_string()),
                _ => Error::io(format!("open {}", path.display()), e),
            })?;
        // Not a FIFO or a device that would never end.
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(bad(path, "not a regular file"));
        }
        let root = self.cfg.root.join("checkpoints");
        std::fs::create_dir_all(&root).map_err(|e| Error::io("create the checkpoints directory", e))?;
        let dir = root.join(format!("{IMPORT_PREFIX}{}-{}", std::process::id(), crate::now_ns()));
        std::fs::create_dir(&dir).map_err(|e| Error::io("create an import directory", e))?;
        match unpack(file, path, &dir).and_then(|()| check(path, &dir)) {
            Ok(()) => Ok(dir),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }
}

fn unpack(file: File, path: &Path, dir: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(file);
    let (mut count, mut bytes) = (0usize, 0u64);
    for entry in archive.entries().map_err(|e| bad(path, e))? {
        let mut entry = entry.map_err(|e| bad(path, e))?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(bad(path, format!("more than {MAX_ENTRIES} entries")));
        }
        let name = entry.path().map_err(|e| bad(path, e))?.into_owned();
        let target = entry_target(&name).ok_or_else(|| bad(path, format!("unexpected entry {:?}", name)))?;
        match entry.header().entry_type() {
            tar::EntryType::Directory if target == Path::new(IMAGES) => {
                std::fs::create_dir_all(dir.join(IMAGES)).map_err(|e| bad(path, format!("images: {e}")))?;
            }
            tar::EntryType::Regular => {
                let size = entry.size();
                bytes += size;
                if bytes > MAX_BYTES {
                    return Err(bad(path, format!("more than {MAX_BYTES} bytes")));
                }
                let is_json = target == Path::new(META) || target == Path::new(SPEC);
                if is_json && size > MAX_JSON {
                    return Err(bad(path, format!("{:?} is larger than {MAX_JSON} bytes", name)));
                }
                let out = dir.join(&target);
                if let Some(parent) = out.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| bad(path, format!("{:?}: {e}", name)))?;
                }
                let mut f = File::options().write(true).create_new(true).open(&out).map_err(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => bad(path, format!("{:?} appears twice", name)),
                    _ => Error::io("unpack", e),
                })?;
                let copied = std::io::copy(&mut (&mut entry).take(size), &mut f).map_err(|e| bad(path, e))?;
                if copied != size {
                    return Err(bad(path, format!("{:?} is cut short", name)));
                }
            }
            other => return Err(bad(path, format!("{:?} is a {:?}, not a file", name, other))),
        }
    }
    Ok(())
}

/// An unpacked archive must hold a readable checkpoint of the kind berth
/// takes: what would act on the host beyond a container's own (hooks, bind
/// mounts of host paths, a system directory or another runtime) is
/// refused. An archive still restores processes as CRIU recorded them:
/// restore only archives of checkpoints you took (see docs/cli.md).
fn check(path: &Path, dir: &Path) -> Result<()> {
    let meta = read_meta(dir).map_err(|e| bad(path, format!("{META}: {e}")))?;
    if ContainerId::new(&meta.name).is_err() {
        return Err(bad(path, format!("bad checkpoint name {:?}", meta.name)));
    }
    if !matches!(meta.runtime.as_str(), "embedded" | "runc") {
        return Err(bad(path, format!("runtime {:?} (checkpoints are taken with embedded or runc)", meta.runtime)));
    }
    match berth_model::NetworkMode::parse(&meta.network) {
        Ok(berth_model::NetworkMode::Network(_) | berth_model::NetworkMode::None) => {}
        _ => return Err(bad(path, format!("network {:?} (a checkpoint has a network of its own)", meta.network))),
    }
    if meta.image.is_empty() {
        crate::spec::check_rootfs(&meta.rootfs).map_err(|e| bad(path, e))?;
    } else {
        berth_images::normalize_reference(&meta.image).map_err(|e| bad(path, e))?;
    }
    if meta.command.iter().map(String::len).sum::<usize>() > MAX_JSON as usize {
        return Err(bad(path, "the command is too long"));
    }
    let spec = oci_spec::runtime::Spec::load(dir.join(SPEC)).map_err(|e| bad(path, format!("{SPEC}: {e}")))?;
    // Hooks run on the host as root at restore; berth never writes any, so
    // an archive that has them did not come from a berth checkpoint.
    if spec.hooks().is_some() {
        return Err(bad(path, format!("{SPEC} has hooks, which berth's checkpoints never carry")));
    }
    // The resolver files are the only binds a berth checkpoint has (a
    // restore binds its own); any other would bind a host path chosen by
    // whoever made the archive.
    let binds = spec.mounts().iter().flatten().filter(|m| {
        let bind = m.typ().as_deref() == Some("bind")
            || m.options().as_ref().is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"));
        bind && !RESOLVER_FILES.iter().any(|f| m.destination() == Path::new(f))
    });
    if let Some(m) = binds.into_iter().next() {
        return Err(bad(path, format!("{SPEC} binds a host path at {}", m.destination().display())));
    }
    for needed in ["inventory.img", "descriptors.json"] {
        if !dir.join(IMAGES).join(needed).is_file() {
            return Err(bad(path, format!("{IMAGES}/{needed} is missing")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_checkpoints_own_names_are_accepted() {
        assert_eq!(entry_target(Path::new("checkpoint.json")), Some(PathBuf::from("checkpoint.json")));
        assert_eq!(entry_target(Path::new("./images/pages-1.img")), Some(PathBuf::from("images/pages-1.img")));
        assert_eq!(entry_target(Path::new("images")), Some(PathBuf::from("images")));
        for hostile in
            ["/etc/passwd", "../x", "images/../../x", "images/a/b", "other.json", "images/..", "config.json/x"]
        {
            assert_eq!(entry_target(Path::new(hostile)), None, "{hostile}");
        }
    }
}
