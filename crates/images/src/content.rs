//! The content store (issue 10 item 1, SPEC B32): blobs addressed by their
//! sha256 digest under `<root>/blobs/sha256/<hex>`, shared by all
//! namespaces. A blob is verified while it is written (into a temp file in
//! `<root>/ingest/`) and becomes visible only by an atomic rename after its
//! digest and size matched, so every visible blob is verified content.
//! References and garbage collection live elsewhere; `list` is their input.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use crate::ImageError;

const SHA256_PREFIX: &str = "sha256:";

/// A validated content digest: `sha256:<64 lowercase hex>` (the only
/// algorithm berth stores).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of a finished sha256 hash.
    pub fn from_sha256(hash: Sha256) -> Digest {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&hash.finalize());
        Digest(bytes)
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Digest {
        let mut hash = Sha256::new();
        hash.update(data);
        Digest::from_sha256(hash)
    }

    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// The 64 lowercase hex characters after `sha256:`.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHA256_PREFIX}{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Digest, ImageError> {
        let bad = |reason: &str| ImageError::InvalidArgument(format!("invalid digest {s:?}: {reason}"));
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(bad("expected sha256:<64 hex digits>"));
        };
        if algorithm != "sha256" {
            return Err(bad("unsupported algorithm (only sha256)"));
        }
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad("expected 64 lowercase hex digits"));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex, &mut bytes).map_err(|_| bad("expected 64 lowercase hex digits"))?;
        Ok(Digest(bytes))
    }
}

impl TryFrom<String> for Digest {
    type Error = ImageError;

    fn try_from(s: String) -> Result<Digest, ImageError> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

/// One stored blob, as `list` reports it (the input of garbage collection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBlob {
    pub digest: Digest,
    pub size: u64,
}

/// The store: `<root>/blobs/sha256/<hex>` and `<root>/ingest/`.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

/// Distinguishes temp files of concurrent writers in one process.
static INGEST_SEQ: AtomicU64 = AtomicU64::new(0);

impl ContentStore {
    /// Opens (creating if needed) the store under `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<ContentStore, ImageError> {
        let store = ContentStore { root: root.as_ref().to_path_buf() };
        for dir in [store.blobs_dir(), store.ingest_dir()] {
            fs::create_dir_all(&dir).map_err(|e| ImageError::io(format!("create {}", dir.display()), e))?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    /// Where the blob `digest` lives (whether or not it is stored).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    /// Starts writing a blob expected to hash to `expected` (and to be
    /// `expected_size` bytes long, when known). Nothing is visible until
    /// `BlobWriter::commit` verified it.
    pub fn writer(&self, expected: Digest, expected_size: Option<u64>) -> Result<BlobWriter, ImageError> {
        let dir = self.ingest_dir();
        loop {
            let seq = INGEST_SEQ.fetch_add(1, Ordering::Relaxed);
            let temp = dir.join(format!("{}.{}.{seq}.tmp", expected.hex(), std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&temp) {
                Ok(file) => {
                    return Ok(BlobWriter {
                        file: Some(file),
                        temp,
                        target: self.blob_path(&expected),
                        blobs_dir: self.blobs_dir(),
                        hash: Sha256::new(),
                        written: 0,
                        expected,
                        expected_size,
                        oversized: false,
                    });
                }
                // A leftover of a crashed process with our pid: take the next name.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ImageError::io(format!("create {}", temp.display()), e)),
            }
        }
    }

    /// Opens a stored blob for reading (not re-verified: it was on write).
    pub fn open_blob(&self, digest: &Digest) -> Result<File, ImageError> {
        File::open(self.blob_path(digest)).map_err(|e| self.not_found_or_io(digest, "open", e))
    }

    pub fn exists(&self, digest: &Digest) -> Result<bool, ImageError> {
        match fs::symlink_metadata(self.blob_path(digest)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ImageError::io(format!("stat blob {digest}"), e)),
        }
    }

    pub fn size(&self, digest: &Digest) -> Result<u64, ImageError> {
        fs::metadata(self.blob_path(digest)).map(|m| m.len()).map_err(|e| self.not_found_or_io(digest, "stat", e))
    }

    /// Removes a blob (NotFound if absent). Callers (GC) decide what is unused.
    pub fn delete(&self, digest: &Digest) -> Result<(), ImageError> {
        fs::remove_file(self.blob_path(digest)).map_err(|e| self.not_found_or_io(digest, "delete", e))?;
        sync_dir(&self.blobs_dir())
    }

    /// Every stored blob with its size, in digest order. Files whose name
    /// is not a digest are not blobs and are skipped.
    pub fn list(&self) -> Result<Vec<StoredBlob>, ImageError> {
        let dir = self.blobs_dir();
        let what = || format!("list {}", dir.display());
        let mut blobs = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| ImageError::io(what(), e))? {
            let entry = entry.map_err(|e| ImageError::io(what(), e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let Ok(digest) = format!("{SHA256_PREFIX}{name}").parse::<Digest>() else { continue };
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Deleted while we listed: not a blob any more.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ImageError::io(what(), e)),
            };
            if meta.is_file() {
                blobs.push(StoredBlob { digest, size: meta.len() });
            }
        }
        blobs.sort_by_key(|b| b.digest);
        Ok(blobs)
    }

    /// Re-hashes a stored blob (fsck): `Ok(false)` if its content no longer
    /// matches its digest.
    pub fn verify(&self, digest: &Digest) -> Result<bool, ImageError> {
        let mut file = self.open_blob(digest)?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(|e| ImageError::io(format!("read blob {digest}"), e))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
        }
        Ok(Digest::from_sha256(hash) == *digest)
    }

    /// Removes temp files a crashed writer left in `ingest/`; run at startup,
    /// before any writer exists. Returns how many were removed.
    pub fn clean_ingest(&self) -> Result<usize, ImageError> {
        let dir = self.ingest_dir();
        let what = || format!("clean {}", dir.display());
        let mut removed = 0;
        for entry in fs::read_dir(&dir).map_err(|e| ImageError::io(what(), e))? {
            let path = entry.map_err(|e| ImageError::io(what(), e))?.path();
            let result = match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path),
                Ok(_) => fs::remove_file(&path),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::io(format!("remove {}", path.display()), e)),
            }
        }
        Ok(removed)
    }

    fn not_found_or_io(&self, digest: &Digest, op: &str, e: io::Error) -> ImageError {
        if e.kind() == io::ErrorKind::NotFound {
            ImageError::NotFound(format!("blob {digest}"))
        } else {
            ImageError::io(format!("{op} blob {digest}"), e)
        }
    }
}

/// A blob being written: hashes every byte it is given; `commit` verifies
/// and publishes, dropping it uncommitted removes its temp file.
#[derive(Debug)]
pub struct BlobWriter {
    /// `None` once committed or failed (the temp file is gone then).
    file: Option<File>,
    temp: PathBuf,
    target: PathBuf,
    blobs_dir: PathBuf,
    hash: Sha256,
    written: u64,
    expected: Digest,
    expected_size: Option<u64>,
    oversized: bool,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn expected(&self) -> &Digest {
        &self.expected
    }

    /// The temp file being written (unbuffered: another handle reads what
    /// was written so far); gone after commit or drop.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Verifies size and digest, fsyncs and renames the blob into place.
    /// On a mismatch (InvalidArgument) nothing is stored and the temp file
    /// is removed. A blob already present is fine: this copy is discarded.
    pub fn commit(mut self) -> Result<(), ImageError> {
        let Some(file) = self.file.take() else {
            return Err(ImageError::FailedPrecondition(format!("writer of {} already finished", self.expected)));
        };
        let result = self.publish(file);
        if result.is_err() {
            let _ = fs::remove_file(&self.temp);
        }
        result
    }

    fn publish(&mut self, file: File) -> Result<(), ImageError> {
        let expected = self.expected;
        if let Some(size) = self.expected_size
            && (self.oversized || self.written != size)
        {
            let got = if self.oversized { "more".to_string() } else { self.written.to_string() };
            return Err(ImageError::InvalidArgument(format!(
                "blob {expected}: size mismatch: expected {size} bytes, got {got}"
            )));
        }
        let hash = std::mem::replace(&mut self.hash, Sha256::new());
        let actual = Digest::from_sha256(hash);
        if actual != expected {
            return Err(ImageError::InvalidArgument(format!(
                "blob {expected}: digest mismatch: content hashes to {actual}"
            )));
        }
        file.sync_all().map_err(|e| ImageError::io(format!("fsync {}", self.temp.display()), e))?;
        drop(file);
        if self.target.exists() {
            fs::remove_file(&self.temp).map_err(|e| ImageError::io(format!("remove {}", self.temp.display()), e))?;
            return Ok(());
        }
        fs::rename(&self.temp, &self.target).map_err(|e| ImageError::io(format!("publish blob {expected}"), e))?;
        sync_dir(&self.blobs_dir)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("blob writer already finished"));
        };
        if let Some(size) = self.expected_size
            && self.written.saturating_add(buf.len() as u64) > size
        {
            self.oversized = true;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {} is larger than its expected {size} bytes", self.expected),
            ));
        }
        let n = file.write(buf)?;
        self.hash.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Makes a rename or unlink in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| ImageError::io(format!("fsync {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ContentStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(dir.path().join("content")).expect("open");
        (dir, store)
    }

    fn ingest_files(store: &ContentStore) -> usize {
        fs::read_dir(store.ingest_dir()).expect("read ingest").count()
    }

    fn put(store: &ContentStore, data: &[u8], digest: Digest, size: Option<u64>) -> Result<(), ImageError> {
        let mut w = store.writer(digest, size)?;
        match w.write_all(data) {
            Ok(()) => w.commit(),
            Err(e) => Err(ImageError::io("write", e)),
        }
    }

    #[test]
    fn good_write_is_stored_listed_and_readable() {
        let (_dir, store) = store();
        let data = b"hello berth";
        let d = Digest::of(data);
        assert!(!store.exists(&d).unwrap());
        put(&store, data, d, Some(data.len() as u64)).unwrap();
        assert!(store.exists(&d).unwrap());
        assert_eq!(store.size(&d).unwrap(), data.len() as u64);
        let mut got = Vec::new();
        store.open_blob(&d).unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
        assert_eq!(store.blob_path(&d), store.root().join("blobs/sha256").join(d.hex()));
        assert_eq!(store.list().unwrap(), vec![StoredBlob { digest: d, size: data.len() as u64 }]);
        assert!(store.verify(&d).unwrap());
        assert_eq!(ingest_files(&store), 0, "temp file renamed away");
    }

    #[test]
    fn digest_mismatch_stores_nothing() {
        let (_dir, store) = store();
        let claimed = Digest::of(b"something else");
        let err = put(&store, b"actual", claimed, None).unwrap_err();
        assert!(matches!(err, ImageError::InvalidArgument(ref m) if m.contains("digest mismatch")), "{err}");
        assert!(!store.exists(&claimed).unwrap());
        assert!(!store.exists(&Digest::of(b"actual")).unwrap());
        assert!(store.list().unwrap().is_empty());
        assert_eq!(ingest_files(&store), 0);
    }

    #[test]
    fn size_mismatch_stores_nothing() {
        let (_dir, store) = store();
        let data = b"twelve bytes";
        let d = Digest::of(data);
        // Too short a claim: the writer refuses the excess bytes.
        let err = put(&store, data, d, Some(5)).unwrap_err();
        assert!(matches!(err, ImageError::Io { .. }), "{err}");
        // Too long a claim: commit refuses.
        let err = put(&store, data, d, Some(100)).unwrap_err();
        assert!(matches!(err, ImageError::InvalidArgument(ref m) if m.contains("size mismatch")), "{err}");
        // A write error still leaves commit refusing the short blob.
        let mut w = store.writer(d, Some(5)).unwrap();
        assert!(w.write_all(data).is_err());
        let err = w.commit().unwrap_err();
        assert!(matches!(err, ImageError::InvalidArgument(ref m) if m.contains("size mismatch")), "{err}");
        assert!(!store.exists(&d).unwrap());
        assert_eq!(ingest_files(&store), 0);
    }

    #[test]
    fn dropped_writer_removes_its_temp_file() {
        let (_dir, store) = store();
        let d = Digest::of(b"never finished");
        let mut w = store.writer(d, None).unwrap();
        w.write_all(b"never").unwrap();
        assert_eq!(ingest_files(&store), 1);
        drop(w);
        assert_eq!(ingest_files(&store), 0);
        assert!(!store.exists(&d).unwrap());
    }

    #[test]
    fn duplicate_commit_is_fine_and_keeps_one_blob() {
        let (_dir, store) = store();
        let data = b"same bytes twice";
        let d = Digest::of(data);
        let mut first = store.writer(d, None).unwrap();
        let mut second = store.writer(d, Some(data.len() as u64)).unwrap();
        first.write_all(data).unwrap();
        second.write_all(data).unwrap();
        first.commit().unwrap();
        second.commit().unwrap();
        put(&store, data, d, None).unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(store.verify(&d).unwrap());
        assert_eq!(ingest_files(&store), 0);
    }

    #[test]
    fn digest_strings_are_validated() {
        let good = "sha256:".to_string() + &"ab".repeat(32);
        let d: Digest = good.parse().unwrap();
        assert_eq!(d.to_string(), good);
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{good}\""));
        assert_eq!(serde_json::from_str::<Digest>(&format!("\"{good}\"")).unwrap(), d);
        let bad = [
            String::new(),
            "sha256:".into(),
            "ab".repeat(32),
            "sha512:".to_string() + &"ab".repeat(64),
            "sha256:".to_string() + &"AB".repeat(32),
            "sha256:".to_string() + &"ab".repeat(31),
            "sha256:".to_string() + &"ab".repeat(33),
            "sha256:".to_string() + &"zz".repeat(32),
            "sha256:../../".to_string() + &"a".repeat(58),
        ];
        for s in bad {
            let err = s.parse::<Digest>().unwrap_err();
            assert!(matches!(err, ImageError::InvalidArgument(_)), "{s:?}: {err}");
            assert!(serde_json::from_str::<Digest>(&format!("\"{s}\"")).is_err(), "{s:?}");
        }
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn clean_ingest_removes_crash_leftovers_only() {
        let (_dir, store) = store();
        let kept = Digest::of(b"kept");
        put(&store, b"kept", kept, None).unwrap();
        fs::write(store.ingest_dir().join("leftover.1.0.tmp"), b"half").unwrap();
        fs::create_dir(store.ingest_dir().join("odd-dir")).unwrap();
        assert_eq!(store.clean_ingest().unwrap(), 2);
        assert_eq!(ingest_files(&store), 0);
        assert_eq!(store.list().unwrap(), vec![StoredBlob { digest: kept, size: 4 }]);
    }

    #[test]
    fn delete_verify_and_missing_blobs() {
        let (_dir, store) = store();
        let d = Digest::of(b"to delete");
        put(&store, b"to delete", d, None).unwrap();
        fs::write(store.blob_path(&d), b"corrupted").unwrap();
        assert!(!store.verify(&d).unwrap(), "verify re-hashes the content");
        store.delete(&d).unwrap();
        assert!(!store.exists(&d).unwrap());
        for err in [
            store.delete(&d).unwrap_err(),
            store.open_blob(&d).unwrap_err(),
            store.size(&d).unwrap_err(),
            store.verify(&d).unwrap_err(),
        ] {
            assert!(matches!(err, ImageError::NotFound(_)), "{err}");
        }
    }
}
