//! Overlayfs snapshotter (issue 10 item 2), modelled on containerd's overlay
//! snapshotter but with its state in files, not a database:
//!
//! ```text
//! <root>/committed/<chain-hex>/{fs/,meta.json}   immutable layers, by chain id
//! <root>/active/<key>/{fs/,work/,meta.json}      containers' writable layers
//! <root>/tmp/                                    anything in progress
//! ```
//!
//! Every snapshot is built under `tmp/` and appears by one `rename`; every
//! removal starts by renaming the snapshot into `tmp/`. So a crash leaves
//! only `tmp/` entries, which [`Snapshotter::recover`] deletes at startup
//! together with stale mounts of active snapshots (SPEC B20).

mod meta;
mod mount;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::ImageError;
use meta::{Kind, Meta};
pub use meta::{chain_hex, chain_id, validate_key};
pub use mount::{OverlayMount, overlay_mounts, unmount};

const TMP: &str = "tmp";
const COMMITTED: &str = "committed";
const ACTIVE: &str = "active";
const FS: &str = "fs";
const WORK: &str = "work";
/// overlayfs stacks at most this many lower layers (OVL_MAX_STACK).
const MAX_DEPTH: usize = 500;

/// A layer being unpacked: unpack into [`Prepared::dir`], then
/// [`Snapshotter::commit`] or [`Snapshotter::abort`]. Dropping it leaves
/// the half-unpacked directory under `tmp/` for [`Snapshotter::recover`],
/// like a crash would.
#[derive(Debug)]
pub struct Prepared {
    key: String,
    parent: Option<String>,
    base: PathBuf,
    dir: PathBuf,
}

impl Prepared {
    /// The (empty at first) directory to unpack the layer into.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn key(&self) -> &str {
        &self.key
    }
    pub fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }
}

/// What [`Snapshotter::commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The unpacked directory became the committed snapshot.
    Committed,
    /// The chain id was already committed; the unpacked copy was discarded.
    AlreadyPresent,
}

/// The overlay of an active snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounts {
    /// Lower layers, topmost first (overlay's `lowerdir` order).
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: PathBuf,
    pub workdir: PathBuf,
}

/// A committed snapshot, for listing and GC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedInfo {
    pub chain_id: String,
    pub parent: Option<String>,
    /// Seconds since the epoch.
    pub created: u64,
}

/// An active snapshot, for listing and GC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveInfo {
    pub key: String,
    /// Chain id of the committed snapshot it sits on.
    pub parent: String,
    pub created: u64,
}

/// What [`Snapshotter::recover`] cleaned.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Names of the `tmp/` entries removed (half-unpacked layers,
    /// half-created or half-removed snapshots).
    pub removed_tmp: Vec<String>,
    /// Mount points of stale overlay mounts that were unmounted.
    pub unmounted: Vec<PathBuf>,
    /// Keys of active snapshots removed because their owner no longer wants them.
    pub removed_active: Vec<String>,
}

/// What the owner of an active snapshot still wants of it at recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The snapshot and its mounts (a running container).
    Mounted,
    /// The snapshot, unmounted (a stopped container keeps its files, B32).
    Snapshot,
    /// Nothing: unmount and remove it (no container owns it).
    Nothing,
}

/// An overlayfs snapshotter rooted at one directory. Clones share the
/// lock and sequence (a streaming unpack hands one to blocking threads).
#[derive(Debug, Clone)]
pub struct Snapshotter {
    root: PathBuf,
    /// Serialises changes of the snapshot graph (commit against remove …);
    /// unpacking itself runs outside it.
    lock: Arc<Mutex<()>>,
    seq: Arc<AtomicU64>,
}

impl Snapshotter {
    /// Opens (creating if needed) a snapshotter at `root`. The root must
    /// not contain `,` `:` or `\`, which overlay options cannot carry.
    pub fn new(root: &Path) -> Result<Snapshotter, ImageError> {
        for sub in [TMP, COMMITTED, ACTIVE] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(|e| ImageError::io(format!("create {}", dir.display()), e))?;
        }
        let root = fs::canonicalize(root).map_err(|e| ImageError::io(format!("resolve {}", root.display()), e))?;
        let text = root.to_str().ok_or_else(|| ImageError::InvalidArgument("snapshot root is not UTF-8".into()))?;
        if text.contains([',', ':', '\\']) {
            return Err(ImageError::InvalidArgument(format!("snapshot root {text} contains one of , : \\")));
        }
        Ok(Snapshotter { root, lock: Arc::new(Mutex::new(())), seq: Arc::new(AtomicU64::new(0)) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Starts unpacking a layer on top of committed `parent` (None: a base layer).
    pub fn prepare_layer(&self, key: &str, parent: Option<&str>) -> Result<Prepared, ImageError> {
        validate_key(key)?;
        let _g = self.guard();
        if let Some(p) = parent {
            self.committed_meta(p)?;
        }
        let base = self.root.join(TMP).join(format!("prepare-{key}"));
        if let Err(e) = fs::create_dir(&base) {
            return Err(match e.kind() {
                io::ErrorKind::AlreadyExists => ImageError::AlreadyExists(format!("snapshot {key} being prepared")),
                _ => ImageError::io(format!("create {}", base.display()), e),
            });
        }
        let dir = base.join(FS);
        let made = (|| {
            fs::create_dir(&dir).map_err(|e| ImageError::io(format!("create {}", dir.display()), e))?;
            // A layer without a `./` entry keeps its parent's root owner and mode.
            if let Some(p) = parent {
                copy_owner_and_mode(&self.root.join(COMMITTED).join(chain_hex(p)?).join(FS), &dir)?;
            }
            Meta::new(Kind::Prepare, key, parent).write(&base)
        })();
        if let Err(e) = made {
            self.discard(&base);
            return Err(e);
        }
        Ok(Prepared { key: key.to_string(), parent: parent.map(str::to_string), base, dir })
    }

    /// Makes an unpacked layer the committed snapshot `chain_id`, by one
    /// rename after syncing its file system. If `chain_id` is already
    /// committed ours is discarded. On error nothing of ours is left.
    pub fn commit(&self, prepared: Prepared, chain_id: &str) -> Result<CommitOutcome, ImageError> {
        let result = self.commit_inner(&prepared, chain_id);
        if !matches!(result, Ok(CommitOutcome::Committed)) {
            self.discard(&prepared.base);
        }
        result
    }

    fn commit_inner(&self, p: &Prepared, chain_id: &str) -> Result<CommitOutcome, ImageError> {
        let hex = chain_hex(chain_id)?;
        syncfs(&p.base)?;
        Meta::new(Kind::Committed, chain_id, p.parent.as_deref()).write(&p.base)?;
        let _g = self.guard();
        let dest = self.root.join(COMMITTED).join(hex);
        match fs::rename(&p.base, &dest) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                return Ok(CommitOutcome::AlreadyPresent);
            }
            Err(e) => return Err(ImageError::io(format!("rename into {}", dest.display()), e)),
        }
        self.fsync(COMMITTED)?;
        Ok(CommitOutcome::Committed)
    }

    /// Abandons an unpack (a failed pull step): nothing of it is left.
    pub fn abort(&self, prepared: Prepared) {
        self.discard(&prepared.base);
    }

    /// Creates the writable snapshot `key` on committed `parent_chain_id`.
    pub fn create_active(&self, key: &str, parent_chain_id: &str) -> Result<Mounts, ImageError> {
        validate_key(key)?;
        chain_hex(parent_chain_id)?;
        let _g = self.guard();
        let lowers = self.lower_chain(parent_chain_id)?;
        let dest = self.root.join(ACTIVE).join(key);
        if dest.exists() {
            return Err(ImageError::AlreadyExists(format!("active snapshot {key}")));
        }
        let base = self.tmp_path(&format!("active-{key}"));
        let made = (|| {
            for d in [&base, &base.join(FS), &base.join(WORK)] {
                fs::create_dir(d).map_err(|e| ImageError::io(format!("create {}", d.display()), e))?;
            }
            // The merged root takes the upper dir's owner and mode: copy the image's.
            if let Some(top) = lowers.first() {
                copy_owner_and_mode(top, &base.join(FS))?;
            }
            Meta::new(Kind::Active, key, Some(parent_chain_id)).write(&base)?;
            fs::rename(&base, &dest).map_err(|e| ImageError::io(format!("rename into {}", dest.display()), e))?;
            self.fsync(ACTIVE)
        })();
        if let Err(e) = made {
            self.discard(&base);
            return Err(e);
        }
        self.mounts_of(key, parent_chain_id)
    }

    /// The overlay of the active snapshot `key`.
    pub fn mounts(&self, key: &str) -> Result<Mounts, ImageError> {
        validate_key(key)?;
        let meta = Meta::read(&self.root.join(ACTIVE).join(key), &format!("active snapshot {key}"))?;
        let parent =
            meta.parent.ok_or_else(|| ImageError::FailedPrecondition(format!("active {key} has no parent")))?;
        self.mounts_of(key, &parent)
    }

    fn mounts_of(&self, key: &str, parent: &str) -> Result<Mounts, ImageError> {
        let dir = self.root.join(ACTIVE).join(key);
        Ok(Mounts { lowerdirs: self.lower_chain(parent)?, upperdir: dir.join(FS), workdir: dir.join(WORK) })
    }

    /// Mounts the active snapshot `key` as overlayfs at `target`. Lower
    /// layers are named relative to the root, which fits about 50 layers in
    /// mount(2)'s one-page option limit; more go through the new mount API
    /// (Linux 6.8+), and on older kernels are refused with FailedPrecondition.
    pub fn mount(&self, key: &str, target: &Path) -> Result<(), ImageError> {
        let mounts = self.mounts(key)?;
        let _g = self.guard();
        if !mounts.upperdir.exists() {
            return Err(ImageError::NotFound(format!("active snapshot {key}")));
        }
        mount::mount_overlay(&self.root, &mounts, target)
    }

    /// Unmounts `target` (lazy detach when busy; not mounted → Ok).
    pub fn unmount(&self, target: &Path) -> Result<(), ImageError> {
        unmount(target)
    }

    /// Where the active snapshot `key` is mounted now.
    pub fn mounted_at(&self, key: &str) -> Result<Vec<PathBuf>, ImageError> {
        validate_key(key)?;
        let upper = self.root.join(ACTIVE).join(key).join(FS);
        Ok(overlay_mounts()?
            .into_iter()
            .filter(|m| m.upperdir.as_deref() == Some(upper.as_path()))
            .map(|m| m.mount_point)
            .collect())
    }

    /// Removes the active snapshot `key`; refused while it is mounted.
    pub fn remove_active(&self, key: &str) -> Result<(), ImageError> {
        validate_key(key)?;
        let _g = self.guard();
        let mounted = self.mounted_at(key)?;
        let dir = self.root.join(ACTIVE).join(key);
        if !dir.exists() {
            return Err(ImageError::NotFound(format!("active snapshot {key}")));
        }
        if let Some(at) = mounted.first() {
            return Err(ImageError::FailedPrecondition(format!(
                "active snapshot {key} is mounted at {}",
                at.display()
            )));
        }
        self.remove_dir(&dir, ACTIVE)
    }

    /// Removes the committed snapshot `chain_id`; refused while a committed
    /// child, an active snapshot or an unpack in progress sits on it.
    pub fn remove_committed(&self, chain_id: &str) -> Result<(), ImageError> {
        let hex = chain_hex(chain_id)?;
        let _g = self.guard();
        self.committed_meta(chain_id)?;
        let users = self.list(COMMITTED)?.into_iter().chain(self.list(ACTIVE)?).chain(self.list(TMP)?);
        if let Some(user) = users.into_iter().find(|m| m.parent.as_deref() == Some(chain_id)) {
            let kind = match user.kind {
                Kind::Committed => "child snapshot",
                Kind::Active => "active snapshot",
                Kind::Prepare => "layer being unpacked",
            };
            return Err(ImageError::FailedPrecondition(format!("snapshot {chain_id} is used by {kind} {}", user.name)));
        }
        self.remove_dir(&self.root.join(COMMITTED).join(hex), COMMITTED)
    }

    /// Committed snapshots, for GC.
    pub fn committed(&self) -> Result<Vec<CommittedInfo>, ImageError> {
        let _g = self.guard();
        Ok(self
            .list(COMMITTED)?
            .into_iter()
            .map(|m| CommittedInfo { chain_id: m.name, parent: m.parent, created: m.created })
            .collect())
    }

    /// Active snapshots with their parents, for GC.
    pub fn active(&self) -> Result<Vec<ActiveInfo>, ImageError> {
        let _g = self.guard();
        Ok(self
            .list(ACTIVE)?
            .into_iter()
            .map(|m| ActiveInfo { key: m.name, parent: m.parent.unwrap_or_default(), created: m.created })
            .collect())
    }

    /// Disk usage in bytes (allocated blocks, hard links counted once) of
    /// the committed snapshot `chain_id`'s files.
    pub fn usage(&self, chain_id: &str) -> Result<u64, ImageError> {
        let hex = chain_hex(chain_id)?;
        self.committed_meta(chain_id)?;
        let mut seen = HashSet::new();
        Ok(du(&self.root.join(COMMITTED).join(hex).join(FS), &mut seen)?.bytes)
    }

    /// Disk usage of the active snapshot `key`'s own files (its writable
    /// layer: what the container wrote), bytes and inodes.
    pub fn active_usage(&self, key: &str) -> Result<Usage, ImageError> {
        validate_key(key)?;
        let dir = self.root.join(ACTIVE).join(key);
        Meta::read(&dir, key).map_err(|_| ImageError::NotFound(format!("active snapshot {key}")))?;
        du(&dir.join(FS), &mut HashSet::new())
    }

    /// Startup cleanup (SPEC B20). `keep` tells, once per active snapshot,
    /// what its owner still wants; overlay mounts of snapshots under this
    /// root are unmounted unless their snapshot is [`Keep::Mounted`],
    /// active snapshots [`Keep::Nothing`] (or without metadata) are
    /// removed, and everything under `tmp/` is deleted. `keep` must not
    /// call back into the snapshotter (it runs under its lock).
    pub fn recover(&self, keep: &dyn Fn(&str) -> Keep) -> Result<Recovered, ImageError> {
        let _g = self.guard();
        let mut report = Recovered::default();
        let active_dir = self.root.join(ACTIVE);
        let mut fates = HashMap::new();
        for entry in read_dir(&active_dir)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let valid = Meta::read(&entry.path(), &name).is_ok_and(|m| m.name == name);
            let fate = if valid { keep(&name) } else { Keep::Nothing };
            fates.insert(name, fate);
        }
        for m in overlay_mounts()? {
            let Some(upper) = m.upperdir.as_deref() else { continue };
            if !upper.starts_with(&self.root) {
                continue;
            }
            let key =
                upper.strip_prefix(&active_dir).ok().and_then(|rel| rel.to_str()).and_then(|r| r.strip_suffix("/fs"));
            if key.and_then(|k| fates.get(k)) == Some(&Keep::Mounted) {
                continue;
            }
            mount::unmount(&m.mount_point)?;
            report.unmounted.push(m.mount_point);
        }
        for (name, fate) in &fates {
            if *fate == Keep::Nothing {
                self.remove_dir(&active_dir.join(name), ACTIVE)?;
                report.removed_active.push(name.clone());
            }
        }
        let tmp = self.root.join(TMP);
        for entry in read_dir(&tmp)? {
            let path = entry.path();
            let removed =
                if path.is_dir() && !path.is_symlink() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            removed.map_err(|e| ImageError::io(format!("remove {}", path.display()), e))?;
            report.removed_tmp.push(entry.file_name().to_string_lossy().into_owned());
        }
        self.fsync(TMP)?;
        report.removed_tmp.sort();
        report.removed_active.sort();
        Ok(report)
    }

    // ---- internals ----

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn committed_meta(&self, chain_id: &str) -> Result<Meta, ImageError> {
        let hex = chain_hex(chain_id)?;
        Meta::read(&self.root.join(COMMITTED).join(hex), &format!("snapshot {chain_id}"))
    }

    /// The `fs` dirs of `top` and its ancestors, topmost first.
    fn lower_chain(&self, top: &str) -> Result<Vec<PathBuf>, ImageError> {
        let mut out = Vec::new();
        let mut next = Some(top.to_string());
        while let Some(id) = next {
            if out.len() == MAX_DEPTH {
                return Err(ImageError::FailedPrecondition(format!("snapshot {top} has more than {MAX_DEPTH} layers")));
            }
            next = self.committed_meta(&id)?.parent;
            out.push(self.root.join(COMMITTED).join(chain_hex(&id)?).join(FS));
        }
        Ok(out)
    }

    /// The metadata of every snapshot in one area (`committed`, `active`,
    /// `tmp`); entries without readable metadata are skipped.
    fn list(&self, area: &str) -> Result<Vec<Meta>, ImageError> {
        Ok(read_dir(&self.root.join(area))?.iter().filter_map(|e| Meta::read(&e.path(), "").ok()).collect())
    }

    fn tmp_path(&self, what: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.root.join(TMP).join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Removes a snapshot dir: rename into `tmp/` (atomic), then delete.
    /// A failed delete leaves only a `tmp/` entry for [`Self::recover`].
    fn remove_dir(&self, dir: &Path, area: &str) -> Result<(), ImageError> {
        let trash = self.tmp_path("rm");
        fs::rename(dir, &trash).map_err(|e| ImageError::io(format!("move {} aside", dir.display()), e))?;
        self.fsync(area)?;
        fs::remove_dir_all(&trash).map_err(|e| ImageError::io(format!("remove {}", trash.display()), e))
    }

    /// Best-effort removal of something already under `tmp/` (errors leave
    /// it to recovery).
    fn discard(&self, path: &Path) {
        let trash = self.tmp_path("rm");
        let target = if fs::rename(path, &trash).is_ok() { trash } else { path.to_path_buf() };
        let _ = fs::remove_dir_all(target);
    }

    fn fsync(&self, area: &str) -> Result<(), ImageError> {
        let dir = self.root.join(area);
        berth_store::fsync_dir(&dir).map_err(|e| ImageError::io(format!("fsync {}", dir.display()), e))
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, ImageError> {
    let err = |e| ImageError::io(format!("read {}", dir.display()), e);
    fs::read_dir(dir).map_err(err)?.collect::<Result<Vec<_>, _>>().map_err(err)
}

/// Flushes the file system holding `dir` (an unpacked layer) to disk.
fn syncfs(dir: &Path) -> Result<(), ImageError> {
    let f = fs::File::open(dir).map_err(|e| ImageError::io(format!("open {}", dir.display()), e))?;
    // SAFETY: syncfs only reads the descriptor, which `f` keeps open.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(ImageError::io(format!("syncfs {}", dir.display()), io::Error::last_os_error()));
    }
    Ok(())
}

fn copy_owner_and_mode(from: &Path, to: &Path) -> Result<(), ImageError> {
    let md = fs::metadata(from).map_err(|e| ImageError::io(format!("stat {}", from.display()), e))?;
    std::os::unix::fs::lchown(to, Some(md.uid()), Some(md.gid()))
        .and_then(|()| fs::set_permissions(to, md.permissions()))
        .map_err(|e| ImageError::io(format!("chown/chmod {}", to.display()), e))
}

/// Disk usage of the tree at `path` (nothing if it is missing).
pub fn disk_usage(path: &Path) -> Result<Usage, ImageError> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(Usage::default());
    }
    du(path, &mut HashSet::new())
}

/// Disk usage of a tree: allocated bytes and inodes, hard links once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

/// Disk usage of a tree, on the filesystem of its top only: mounts below
/// (a container's rootfs in its bundle) are not entered.
fn du(path: &Path, seen: &mut HashSet<(u64, u64)>) -> Result<Usage, ImageError> {
    let dev = fs::symlink_metadata(path).map_err(|e| ImageError::io(format!("stat {}", path.display()), e))?.dev();
    du_on(path, dev, seen)
}

/// Below the top, what vanishes during the walk (a container removed
/// meanwhile) counts as nothing.
fn du_on(path: &Path, dev: u64, seen: &mut HashSet<(u64, u64)>) -> Result<Usage, ImageError> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(e) if gone(&e) => return Ok(Usage::default()),
        Err(e) => return Err(ImageError::io(format!("stat {}", path.display()), e)),
    };
    if md.dev() != dev {
        return Ok(Usage::default());
    }
    let mut total = Usage::default();
    if seen.insert((md.dev(), md.ino())) {
        total = Usage { bytes: md.blocks() * 512, inodes: 1 };
    }
    if md.is_dir() {
        let entries = match fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) if gone(&e) => return Ok(total),
            Err(e) => return Err(ImageError::io(format!("read {}", path.display()), e)),
        };
        for entry in entries.flatten() {
            let sub = du_on(&entry.path(), dev, seen)?;
            total = Usage { bytes: total.bytes + sub.bytes, inodes: total.inodes + sub.inodes };
        }
    }
    Ok(total)
}
