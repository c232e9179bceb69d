//! Opening the redb file safely: a file berthd cannot have written (empty,
//! not redb, failing its page checksums) is reported as
//! [`StoreError::Damaged`] and left exactly as it is — never silently
//! replaced by an empty store, and never a panic inside redb.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use redb::Database;

use crate::StoreError;

/// Opens (or, when `path` does not exist, creates) the database, verifying
/// every page of the committed trees first: redb trusts a cleanly closed
/// file and may panic on one altered behind its back.
pub(crate) fn database(path: &Path) -> Result<Database, StoreError> {
    match std::fs::metadata(path) {
        // redb would initialise an empty file as a new database: a store
        // berthd wrote is never empty, so this one lost its contents.
        Ok(m) if m.is_file() && m.len() == 0 => return Err(damaged(path, "the file is empty (0 bytes)")),
        Ok(m) if !m.is_file() => {
            return Err(StoreError::Db(format!("{} is not a regular file", path.display())));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::Db(format!("{}: {e}", path.display()))),
    }
    Database::builder()
        .set_check_integrity_on_open(true)
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| classify(path, e))
}

/// redb's page cache (its default is 1 GiB, filled as pages are read).
/// Records are read once at startup and then mostly written; the kernel's
/// page cache serves later reads, so berthd's RSS does not grow with the
/// file.
const CACHE_BYTES: usize = 4 << 20;

/// Runs `f` (an open and its first reads), turning a panic inside redb
/// into [`StoreError::Damaged`].
pub(crate) fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|panic| Err(damaged(path, &format!("redb failed reading it ({})", panic_message(&panic)))))
}

fn damaged(path: &Path, reason: &str) -> StoreError {
    StoreError::Damaged { path: path.to_path_buf(), reason: reason.to_string() }
}

/// Errors that say the file's contents are bad are damage; the rest (I/O,
/// a lock held by another process) are reported as they are.
fn classify(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    let is_damage = match &e {
        redb::Error::Corrupted(_)
        | redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_) => true,
        // redb's "not a redb database" (bad magic number).
        redb::Error::Io(io) => io.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    };
    if is_damage { damaged(path, &e.to_string()) } else { StoreError::Db(format!("open {}: {e}", path.display())) }
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "internal error".to_string())
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use berth_model::{ContainerId, Namespace};

    use crate::{Intent, Store, StoreError};

    fn intent(id: &str) -> Intent {
        Intent {
            namespace: Namespace::new("default").unwrap(),
            id: ContainerId::new(id).unwrap(),
            runtime: "embedded".into(),
            created_at_ns: 1,
            new_volumes: Vec::new(),
            sandbox: None,
            cgroup: None,
        }
    }

    /// A store with enough entries to span many pages.
    fn filled(path: &std::path::Path) {
        let s = Store::open(path).unwrap();
        for i in 0..300 {
            s.write(crate::Write { intent: Some(&intent(&format!("c{i}"))), ..Default::default() }).unwrap();
        }
    }

    #[test]
    fn an_empty_file_is_damage_and_stays_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        std::fs::write(&path, b"").unwrap();
        let err = Store::open(&path).err().expect("an empty file must not open");
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        assert!(err.to_string().contains("empty"), "{err}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "the damaged file must be left as it was");
    }

    #[test]
    fn garbage_in_the_middle_is_damage_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        filled(&path);
        let len = std::fs::metadata(&path).unwrap().len();
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // Past the header, over the pages holding the tables.
        f.seek(SeekFrom::Start(4096)).unwrap();
        let garbage: Vec<u8> = (0..(len - 4096) / 2).map(|i| (i * 7919 % 251) as u8).collect();
        f.write_all(&garbage).unwrap();
        drop(f);
        let err = Store::open(&path).err().expect("a corrupted file must not open");
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
    }

    #[test]
    fn a_file_that_is_not_redb_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = Store::open(&path).err().expect("not a redb file");
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 8192]);
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open(dir.path()).err().expect("a directory is no store");
        assert!(matches!(err, StoreError::Db(_)), "{err}");
    }

    #[test]
    fn a_panic_becomes_damage() {
        let path = std::path::Path::new("/x/meta.redb");
        let r: Result<(), _> = super::guarded(path, || panic!("boom"));
        let err = r.unwrap_err();
        assert!(matches!(err, StoreError::Damaged { .. }) && err.to_string().contains("boom"), "{err}");
    }

    #[test]
    fn is_empty_sees_records_and_intents() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("meta.redb")).unwrap();
        assert!(s.is_empty().unwrap());
        s.write(crate::Write { intent: Some(&intent("a")), ..Default::default() }).unwrap();
        assert!(!s.is_empty().unwrap());
    }
}
