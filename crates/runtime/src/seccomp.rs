//! Seccomp programs compiled once per profile. libcontainer compiles a
//! container's seccomp profile inside the container's init, on every
//! create: with the default profile that is about a quarter of a create.
//! The embedded runtime instead hands the init a program libseccomp
//! compiled earlier (libcontainer's `CompiledSeccomp`, a berth patch, see
//! third_party/README.md) and keeps it in a directory that all shims of a
//! daemon share (`--seccomp-cache`), so a profile is compiled once.
//!
//! A kept program is `<dir>/<SHA-256 of this executable's identity and the
//! profile>`: a SHA-256 over the identity, the profile and the program,
//! then the program. Each build of the shim keeps its own file, so after
//! an upgrade old shims (a sandbox's, still creating containers) and new
//! ones do not replace each other's. A file whose digest does not match
//! (torn by a crash, or not a program at all) is compiled again and
//! replaced, so only what this very binary compiled from this very profile
//! is ever loaded. The directory holds at most [`MAX_FILES`] programs; the
//! ones written longest ago make room.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use libcontainer::oci_spec::runtime::LinuxSeccomp;
use libcontainer::seccomp::{CompiledSeccomp, is_notify};
use sha2::{Digest, Sha256};

use crate::RuntimeError;

/// The program for `profile`: kept in `dir` if it is there, else compiled
/// (and kept when `dir` is given). `None` for a profile libcontainer must
/// load itself (one with `SCMP_ACT_NOTIFY`).
pub(crate) fn compiled(dir: Option<&Path>, profile: &LinuxSeccomp) -> Result<Option<CompiledSeccomp>, RuntimeError> {
    if is_notify(profile) {
        return Ok(None);
    }
    let Some((dir, identity)) = dir.zip(identity()) else { return compile(profile) };
    let json = serde_json::to_vec(profile).map_err(|e| compile_error(&e))?;
    let path = kept_path(dir, &identity, &json);
    if let Some(file) = read_kept(&path)
        && let Some((digest, program)) = file.split_at_checked(32)
        && digest == seal(&identity, &json, program).as_slice()
        && let Ok(kept) = CompiledSeccomp::from_parts(profile.clone(), program.to_vec())
    {
        return Ok(Some(kept));
    }
    let compiled = compile(profile)?;
    if let Some(c) = &compiled {
        // Only a cache: a program that cannot be kept is compiled again
        // next time.
        let _ = keep(dir, &path, &seal(&identity, &json, c.program()), c.program());
    }
    Ok(compiled)
}

/// The largest kept file: a digest and the kernel's longest program.
const MAX_KEPT: u64 = 32 + 8 * 4096;

/// A kept file's bytes, if it is a regular file (not a link, a FIFO or a
/// device, which a read could follow or block on) of at most [`MAX_KEPT`],
/// and only this user can have written it or its directory. The digest
/// guards against a torn or stale file, not against a forger: whoever may
/// write there could seal a program of their own.
fn read_kept(path: &Path) -> Option<Vec<u8>> {
    let ours = |m: &std::fs::Metadata| m.uid() == nix::unistd::geteuid().as_raw() && m.mode() & 0o022 == 0;
    if !ours(&std::fs::metadata(path.parent()?).ok()?) {
        return None;
    }
    let mut file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > MAX_KEPT || !ours(&meta) {
        return None;
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

fn compile(profile: &LinuxSeccomp) -> Result<Option<CompiledSeccomp>, RuntimeError> {
    CompiledSeccomp::compile(profile).map_err(|e| compile_error(&e))
}

fn compile_error(e: &dyn std::error::Error) -> RuntimeError {
    let mut message = e.to_string();
    if let Some(source) = e.source() {
        message = format!("{message}: {source}");
    }
    RuntimeError::Failed { runtime: "embedded", op: "compile the seccomp profile", message }
}

/// The running executable (device, inode, size, modification time): a
/// program compiled by another build of it is not taken.
fn identity() -> Option<Vec<u8>> {
    let m = std::fs::metadata("/proc/self/exe").ok()?;
    let fields = [m.dev(), m.ino(), m.size(), m.mtime() as u64, m.mtime_nsec() as u64];
    Some(fields.iter().flat_map(|f| f.to_le_bytes()).collect())
}

/// Where this executable (`identity`) keeps the program of `profile` (its
/// JSON).
fn kept_path(dir: &Path, identity: &[u8], profile: &[u8]) -> PathBuf {
    dir.join(hex::encode(digest(&[identity, profile])))
}

fn seal(identity: &[u8], profile: &[u8], program: &[u8]) -> [u8; 32] {
    digest(&[identity, profile, program])
}

/// A SHA-256 over `parts`, each prefixed with its length.
fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// Writes the kept program atomically (`berth_store::write_atomic`): a
/// reader sees a whole file or none. Two shims keeping the same profile at
/// once share the temporary file; what a reader may then see is not
/// sealed, and is compiled again.
fn keep(dir: &Path, path: &Path, digest: &[u8], program: &[u8]) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    berth_store::write_atomic(path, &[digest, program].concat())?;
    prune(dir, path);
    Ok(())
}

/// Kept programs at most, over every build and profile (about 8.4 MB).
const MAX_FILES: usize = 256;

/// Bounds the directory to [`MAX_FILES`] kept programs: past it, the ones
/// written longest ago go, never `newest`. A program still in use is
/// compiled and kept again at its next create. Other files (a shim's
/// temporary file) are left alone.
fn prune(dir: &Path, newest: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let kept_name =
        |name: &std::ffi::OsStr| name.len() == 64 && name.as_encoded_bytes().iter().all(u8::is_ascii_hexdigit);
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| kept_name(&e.file_name()))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    let Some(excess) = files.len().checked_sub(MAX_FILES).filter(|n| *n > 0) else { return };
    files.sort();
    for (_, path) in files.into_iter().filter(|(_, p)| p != newest).take(excess) {
        // Another shim may have removed it first.
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests;
