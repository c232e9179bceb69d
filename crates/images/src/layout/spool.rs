//! Writing archive entries into the content store: entries named by their
//! digest stream straight through the verifying writer; entries whose
//! digest is unknown until read are hashed into a spool file under the
//! store's `ingest/` (removed on drop, and by `clean_ingest` after a crash)
//! and then written through the verifying writer like any other blob.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use crate::{ContentStore, Digest, ImageError};

const CHUNK: usize = 64 * 1024;

static SPOOL_SEQ: AtomicU64 = AtomicU64::new(0);

/// An error reading the archive: malformed or truncated input is the
/// caller's (InvalidArgument), anything else the system's.
pub(super) fn archive_error(what: &str, e: io::Error) -> ImageError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::InvalidData
        | io::ErrorKind::InvalidInput
        | io::ErrorKind::Other => ImageError::InvalidArgument(format!("malformed archive: {what}: {e}")),
        _ => ImageError::io(format!("read archive: {what}"), e),
    }
}

/// Copies exactly `size` bytes of `entry` into `out`, feeding `hash`.
fn copy_hashed<R: Read, W: Write>(
    entry: &mut R,
    out: &mut W,
    hash: &mut Sha256,
    size: u64,
    name: &str,
) -> Result<(), ImageError> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(archive_error(name, e)),
        };
        hash.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| ImageError::io(format!("store {name}"), e))?;
        done += n as u64;
    }
    if done != size {
        return Err(ImageError::InvalidArgument(format!("malformed archive: {name}: {done} of {size} bytes")));
    }
    Ok(())
}

/// Stores the entry `name` that claims to be the blob `digest`. A blob the
/// store has already is only hashed, never rewritten; either way content
/// that does not hash to `digest` is refused and nothing of it is stored.
pub(super) fn store_named<R: Read>(
    content: &ContentStore,
    digest: Digest,
    entry: &mut R,
    size: u64,
    name: &str,
) -> Result<(), ImageError> {
    if content.exists(&digest)? {
        let mut hash = Sha256::new();
        copy_hashed(entry, &mut io::sink(), &mut hash, size, name)?;
        let actual = Digest::from_sha256(hash);
        if actual != digest {
            return Err(ImageError::InvalidArgument(format!(
                "blob {digest}: digest mismatch: content hashes to {actual}"
            )));
        }
        return Ok(());
    }
    let mut writer = content.writer(digest, Some(size))?;
    copy_hashed(entry, &mut writer, &mut Sha256::new(), size, name)?;
    writer.commit()
}

/// Stores the entry `name` whose digest is unknown: hashes it into a spool
/// file, then writes that through the verifying writer. Returns its digest.
pub(super) fn store_unnamed<R: Read>(
    content: &ContentStore,
    entry: &mut R,
    size: u64,
    name: &str,
) -> Result<Digest, ImageError> {
    let mut spool = Spool::create(content)?;
    let mut hash = Sha256::new();
    copy_hashed(entry, &mut spool.file, &mut hash, size, name)?;
    let digest = Digest::from_sha256(hash);
    if content.exists(&digest)? {
        return Ok(digest);
    }
    spool.file.rewind().map_err(|e| ImageError::io(format!("rewind {}", spool.path.display()), e))?;
    let mut writer = content.writer(digest, Some(size))?;
    io::copy(&mut spool.file, &mut writer).map_err(|e| ImageError::io(format!("store {name}"), e))?;
    writer.commit()?;
    Ok(digest)
}

/// A temp file in the store's `ingest/`, removed when dropped.
struct Spool {
    path: PathBuf,
    file: File,
}

impl Spool {
    fn create(content: &ContentStore) -> Result<Spool, ImageError> {
        let dir = content.root().join("ingest");
        loop {
            let seq = SPOOL_SEQ.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("import-{}-{seq}.spool", std::process::id()));
            match OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
                Ok(file) => return Ok(Spool { path, file }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ImageError::io(format!("create {}", path.display()), e)),
            }
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
