//! The metadata store: one redb database holding every container record of
//! every namespace, plus the schema version. Each call is one transaction.

use std::path::{Path, PathBuf};

use berth_model::{Code, ContainerId, ExitStatus, Namespace, State};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Version of the on-disk layout. Bump it and add a migration when a record
/// changes shape.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata store: {0}")]
    Db(String),
    #[error("metadata store schema version {found} is newer than this berthd understands ({SCHEMA_VERSION})")]
    TooNew { found: u64 },
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

impl StoreError {
    pub fn code(&self) -> Code {
        Code::Internal
    }
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Where a container's shim lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimInfo {
    pub pid: u32,
    pub socket: PathBuf,
}

/// Everything berthd knows about one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub namespace: Namespace,
    pub id: ContainerId,
    pub runtime: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub command: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub created_at_ns: u64,
    pub state: State,
    pub pid: u32,
    pub exit: Option<ExitStatus>,
    pub shim: ShimInfo,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub cgroup: String,
    /// The kernel's OOM killer killed a process of the container.
    #[serde(default)]
    pub oom_killed: bool,
}

impl ContainerRecord {
    fn key(&self) -> String {
        key(&self.namespace, &self.id)
    }
}

fn key(ns: &Namespace, id: &ContainerId) -> String {
    // '/' never appears in a valid id, so the key is unambiguous.
    format!("{ns}/{id}")
}

pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the store at `path` and checks the schema version.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(db_err)?;
        let store = Store { db };
        store.check_schema()?;
        Ok(store)
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut meta = tx.open_table(META).map_err(db_err)?;
            let found = meta.get("schema_version").map_err(db_err)?.map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA_VERSION => return Err(StoreError::TooNew { found: v }),
                // Older versions would be migrated here, one step at a time.
                Some(_) => {}
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION).map_err(db_err)?;
                }
            }
            tx.open_table(CONTAINERS).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Inserts or replaces a record; durable when this returns.
    pub fn put(&self, rec: &ContainerRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec).map_err(db_err)?;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(CONTAINERS).map_err(db_err)?;
            t.insert(rec.key().as_str(), bytes.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    pub fn get(&self, ns: &Namespace, id: &ContainerId) -> Result<Option<ContainerRecord>, StoreError> {
        let k = key(ns, id);
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(CONTAINERS).map_err(db_err)?;
        let Some(v) = t.get(k.as_str()).map_err(db_err)? else {
            return Ok(None);
        };
        decode(&k, v.value()).map(Some)
    }

    pub fn remove(&self, ns: &Namespace, id: &ContainerId) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(CONTAINERS).map_err(db_err)?;
            t.remove(key(ns, id).as_str()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// All records, of one namespace or of all.
    pub fn list(&self, ns: Option<&Namespace>) -> Result<Vec<ContainerRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(CONTAINERS).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let rec = decode(k.value(), v.value())?;
            if ns.is_none_or(|n| *n == rec.namespace) {
                out.push(rec);
            }
        }
        Ok(out)
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<ContainerRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { key: key.to_string(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ns: &str, id: &str) -> ContainerRecord {
        ContainerRecord {
            namespace: Namespace::new(ns).unwrap(),
            id: ContainerId::new(id).unwrap(),
            runtime: "embedded".into(),
            bundle: "/b".into(),
            rootfs: "/r".into(),
            command: vec!["sh".into()],
            labels: Default::default(),
            created_at_ns: 1,
            state: State::Created,
            pid: 42,
            exit: None,
            shim: ShimInfo { pid: 7, socket: "/s".into() },
            stdout: "/o".into(),
            stderr: "/e".into(),
            cgroup: "/berth/default/x".into(),
            oom_killed: false,
        }
    }

    #[test]
    fn records_survive_reopen_and_are_namespaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let s = Store::open(&path).unwrap();
            s.put(&record("default", "a")).unwrap();
            s.put(&record("other", "a")).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let ns = Namespace::new("default").unwrap();
        let id = ContainerId::new("a").unwrap();
        assert_eq!(s.get(&ns, &id).unwrap().unwrap(), record("default", "a"));
        assert_eq!(s.list(Some(&ns)).unwrap().len(), 1);
        assert_eq!(s.list(None).unwrap().len(), 2);
        s.remove(&ns, &id).unwrap();
        assert!(s.get(&ns, &id).unwrap().is_none());
        assert_eq!(s.list(None).unwrap().len(), 1);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META).unwrap().insert("schema_version", SCHEMA_VERSION + 1).unwrap();
            tx.commit().unwrap();
        }
        assert!(matches!(Store::open(&path), Err(StoreError::TooNew { .. })));
    }
}
