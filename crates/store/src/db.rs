//! The metadata store: one redb database holding every container record of
//! every namespace, the event log (`events.rs`), create intents and the
//! schema version. Each call is one transaction; [`Store::write`] commits a
//! record change together with its event and intent, so a crash never
//! separates a state change from its report (SPEC B18, B22).

use std::path::{Path, PathBuf};

use berth_model::{Code, ContainerId, ExitStatus, Namespace, RestartPolicy, State};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

/// Version of the on-disk layout. Bump it and add a migration when a record
/// changes shape.
/// - 1: containers.
/// - 2: adds the `events` and `intents` tables and the record fields for
///   restart policies, all defaulted: a version-1 store is read as is.
/// - 3: adds the `sandboxes` table and the container's `sandbox` and
///   `restored_from` fields (defaulted): an older store is read as is.
pub const SCHEMA_VERSION: u64 = 3;

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
const INTENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("intents");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata store: {0}")]
    Db(String),
    #[error("metadata store schema version {found} is newer than this berthd understands ({SCHEMA_VERSION})")]
    TooNew { found: u64 },
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// The file is not a store berthd could have written (empty, not redb,
    /// failing its checksums); it is left as it is.
    #[error("metadata store {} is damaged: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
}

impl StoreError {
    pub fn code(&self) -> Code {
        Code::Internal
    }
}

pub(crate) fn db_err(e: impl std::fmt::Display) -> StoreError {
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
    /// Interactive stdin FIFO and terminal, as created (a restart reuses them).
    #[serde(default)]
    pub stdin: Option<PathBuf>,
    #[serde(default)]
    pub terminal: bool,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Restarts so far (SPEC B21).
    #[serde(default)]
    pub restart_count: u32,
    /// Restarts in a row without a run long enough to reset the backoff.
    #[serde(default)]
    pub restart_streak: u32,
    /// When init last started (0: never).
    #[serde(default)]
    pub started_at_ns: u64,
    /// `stdout` and `stderr` name one file in the Kubernetes CRI log format.
    #[serde(default)]
    pub cri_log: bool,
    /// Set when that file is berth's own log, rotated by the shim within
    /// this bound (`berth_shim::crilog`); unset for kubelet's file.
    #[serde(default)]
    pub log_rotation: Option<berth_model::LogRotation>,
    /// `berth stop` (or a forced delete) ended it: no policy restarts it.
    #[serde(default)]
    pub stopped_by_user: bool,
    /// Execs started whose exit is not reported yet: exec id → pid. Each
    /// leaves in the transaction that records its exit event.
    #[serde(default)]
    pub execs: std::collections::BTreeMap<String, u32>,
    /// Remove the container once its exit is recorded (`run --rm`).
    #[serde(default)]
    pub auto_remove: bool,
    /// The image the container was created from (normalised reference;
    /// empty for a directory). Its rootfs is then the container's active
    /// snapshot, mounted at `rootfs`.
    #[serde(default)]
    pub image: String,
    /// Named volumes the container mounts: `volume rm` refuses them while
    /// the record exists.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Its network attachment (SPEC B33); `None` for a bundle, networked
    /// as its config.json says.
    #[serde(default)]
    pub network: Option<berth_model::NetworkAttachment>,
    /// The sandbox whose shim and namespaces it shares (SPEC B34); `None`
    /// for a container with a shim of its own.
    #[serde(default)]
    pub sandbox: Option<berth_model::SandboxId>,
    /// The checkpoint it was restored from (`NS/ID/NAME` or an archive).
    #[serde(default)]
    pub restored_from: String,
    /// Its VM, for a container in a VM of its own (runtime `vm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<berth_model::vm::VmInfo>,
}

/// A create in progress, written before anything is allocated and removed
/// in the same transaction as the record it becomes (or after a rollback).
/// Everything create allocates derives from these fields, so a berthd that
/// died mid-create can find and release it (SPEC B20).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub namespace: Namespace,
    pub id: ContainerId,
    pub runtime: String,
    pub created_at_ns: u64,
    /// Named volumes that did not exist when the create began: the ones it
    /// may make, removed with the rest unless a container uses them.
    #[serde(default)]
    pub new_volumes: Vec<String>,
    /// The sandbox whose shim the container joins: its task there goes too.
    #[serde(default)]
    pub sandbox: Option<berth_model::SandboxId>,
    /// The container's cgroup (absent in intents of older berthds: the
    /// default path under berthd's cgroup parent).
    #[serde(default)]
    pub cgroup: Option<String>,
}

/// One transaction: any of a record to put, a record to remove, an intent
/// to put or clear, and an event to append.
#[derive(Default)]
pub struct Write<'a> {
    pub put: Option<&'a ContainerRecord>,
    pub remove: Option<(&'a Namespace, &'a ContainerId)>,
    pub intent: Option<&'a Intent>,
    pub clear_intent: Option<(&'a Namespace, &'a ContainerId)>,
    pub event: Option<crate::Event>,
}

impl ContainerRecord {
    fn key(&self) -> String {
        key(&self.namespace, &self.id)
    }
}

pub(crate) fn key(ns: &Namespace, id: &ContainerId) -> String {
    // '/' never appears in a valid id, so the key is unambiguous.
    format!("{ns}/{id}")
}

pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the store at `path` and checks the schema version.
    /// A damaged file is [`StoreError::Damaged`], never a panic (`open.rs`).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        crate::open::guarded(path, || {
            let store = Store { db: crate::open::database(path)? };
            store.check_schema()?;
            Ok(store)
        })
    }

    /// Whether the store holds no container or sandbox record and no
    /// create intent.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let containers = tx.open_table(CONTAINERS).map_err(db_err)?.len().map_err(db_err)?;
        let intents = tx.open_table(INTENTS).map_err(db_err)?.len().map_err(db_err)?;
        let sandboxes = tx.open_table(crate::sandboxes::SANDBOXES).map_err(db_err)?.len().map_err(db_err)?;
        Ok(containers == 0 && intents == 0 && sandboxes == 0)
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut meta = tx.open_table(META).map_err(db_err)?;
            let found = meta.get("schema_version").map_err(db_err)?.map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA_VERSION => return Err(StoreError::TooNew { found: v }),
                Some(SCHEMA_VERSION) => {}
                // Older versions are migrated here, one step at a time;
                // 1 → 2 → 3 only add tables and defaulted fields.
                Some(_) | None => {
                    meta.insert("schema_version", SCHEMA_VERSION).map_err(db_err)?;
                }
            }
            tx.open_table(CONTAINERS).map_err(db_err)?;
            tx.open_table(INTENTS).map_err(db_err)?;
            tx.open_table(crate::events::EVENTS).map_err(db_err)?;
            tx.open_table(crate::sandboxes::SANDBOXES).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// Inserts or replaces a record; durable when this returns.
    pub fn put(&self, rec: &ContainerRecord) -> Result<(), StoreError> {
        self.write(Write { put: Some(rec), ..Default::default() }).map(drop)
    }

    /// Commits everything `w` names in one transaction, durable when this
    /// returns. The event, if any, comes back with its sequence number.
    pub fn write(&self, w: Write<'_>) -> Result<Option<crate::Event>, StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(CONTAINERS).map_err(db_err)?;
            if let Some(rec) = w.put {
                let bytes = serde_json::to_vec(rec).map_err(db_err)?;
                t.insert(rec.key().as_str(), bytes.as_slice()).map_err(db_err)?;
            }
            if let Some((ns, id)) = w.remove {
                t.remove(key(ns, id).as_str()).map_err(db_err)?;
            }
            let mut intents = tx.open_table(INTENTS).map_err(db_err)?;
            if let Some(intent) = w.intent {
                let bytes = serde_json::to_vec(intent).map_err(db_err)?;
                intents.insert(key(&intent.namespace, &intent.id).as_str(), bytes.as_slice()).map_err(db_err)?;
            }
            if let Some((ns, id)) = w.clear_intent {
                intents.remove(key(ns, id).as_str()).map_err(db_err)?;
            }
        }
        let event = match w.event {
            Some(ev) => Some(crate::events::append(&tx, ev)?),
            None => None,
        };
        tx.commit().map_err(db_err)?;
        Ok(event)
    }

    /// Creates that were in progress when berthd stopped.
    pub fn intents(&self) -> Result<Vec<Intent>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(INTENTS).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
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
        self.write(Write { remove: Some((ns, id)), ..Default::default() }).map(drop)
    }

    /// All records, of one namespace or of all.
    pub fn list(&self, ns: Option<&Namespace>) -> Result<Vec<ContainerRecord>, StoreError> {
        self.scan(ns, |_| true)
    }

    /// The records of `ns` whose stored form contains `needle`, decoding
    /// only those: a question about a few records (who joined a
    /// container's network?) stays cheap with thousands of them.
    pub fn list_mentioning(&self, ns: &Namespace, needle: &str) -> Result<Vec<ContainerRecord>, StoreError> {
        let finder = memchr::memmem::Finder::new(needle.as_bytes());
        self.scan(Some(ns), |v| finder.find(v).is_some())
    }

    /// Records of `ns` (its key range) or of all namespaces, decoded where
    /// `keep` accepts the stored bytes.
    fn scan(&self, ns: Option<&Namespace>, keep: impl Fn(&[u8]) -> bool) -> Result<Vec<ContainerRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(CONTAINERS).map_err(db_err)?;
        let items = match ns {
            Some(ns) => {
                let (from, to) = (format!("{ns}/"), format!("{ns}0"));
                t.range(from.as_str()..to.as_str()).map_err(db_err)?
            }
            None => t.iter().map_err(db_err)?,
        };
        let mut out = Vec::new();
        for item in items {
            let (k, v) = item.map_err(db_err)?;
            if keep(v.value()) {
                out.push(decode(k.value(), v.value())?);
            }
        }
        Ok(out)
    }

    /// Whether any container record lives in `ns` (without reading them:
    /// the keys `<ns>/…` are one range, ending before `<ns>0`).
    pub fn any_in(&self, ns: &Namespace) -> Result<bool, StoreError> {
        let (from, to) = (format!("{ns}/"), format!("{ns}0"));
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(CONTAINERS).map_err(db_err)?;
        let mut range = t.range(from.as_str()..to.as_str()).map_err(db_err)?;
        Ok(range.next().transpose().map_err(db_err)?.is_some())
    }
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
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
            stdin: None,
            terminal: false,
            restart_policy: RestartPolicy::OnFailure { max: 3 },
            restart_count: 1,
            restart_streak: 1,
            started_at_ns: 5,
            stopped_by_user: false,
            execs: [("e1".to_string(), 43)].into(),
            auto_remove: false,
            image: String::new(),
            volumes: Vec::new(),
            network: None,
            sandbox: None,
            restored_from: String::new(),
            vm: None,
            cri_log: false,
            log_rotation: None,
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
    fn any_in_sees_only_its_own_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("meta.redb")).unwrap();
        let ns = |n: &str| Namespace::new(n).unwrap();
        // Keys of neighbouring namespaces sort right around "a/…".
        s.put(&record("a-b", "x")).unwrap();
        s.put(&record("a0", "x")).unwrap();
        s.put(&record("a.b", "x")).unwrap();
        assert!(!s.any_in(&ns("a")).unwrap());
        s.put(&record("a", "x")).unwrap();
        assert!(s.any_in(&ns("a")).unwrap());
        assert!(!s.any_in(&ns("b")).unwrap());
        s.remove(&ns("a"), &ContainerId::new("x").unwrap()).unwrap();
        assert!(!s.any_in(&ns("a")).unwrap());
        assert!(s.any_in(&ns("a-b")).unwrap());
    }

    #[test]
    fn list_mentioning_reads_only_its_namespace_and_matches() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("meta.redb")).unwrap();
        let ns = |n: &str| Namespace::new(n).unwrap();
        let joined = |n: &str, id: &str| ContainerRecord {
            network: Some(berth_model::NetworkAttachment { mode: "container:web".into(), ..Default::default() }),
            ..record(n, id)
        };
        s.put(&joined("a", "j1")).unwrap();
        s.put(&joined("a-b", "j2")).unwrap();
        s.put(&record("a", "web")).unwrap();
        let ids = |v: Vec<ContainerRecord>| v.into_iter().map(|r| r.id.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(s.list_mentioning(&ns("a"), "container:web").unwrap()), vec!["j1"]);
        assert!(s.list_mentioning(&ns("a"), "container:db").unwrap().is_empty());
        assert_eq!(ids(s.list(Some(&ns("a"))).unwrap()), vec!["j1", "web"]);
        assert_eq!(s.list(None).unwrap().len(), 3);
    }

    #[test]
    fn an_intent_becomes_a_record_in_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("meta.redb")).unwrap();
        let rec = record("default", "a");
        let intent = Intent {
            namespace: rec.namespace.clone(),
            id: rec.id.clone(),
            runtime: "embedded".into(),
            created_at_ns: 1,
            new_volumes: Vec::new(),
            sandbox: None,
            cgroup: Some("/pods/a".into()),
        };
        s.write(Write { intent: Some(&intent), ..Default::default() }).unwrap();
        assert_eq!(s.intents().unwrap(), std::slice::from_ref(&intent));
        assert!(s.list(None).unwrap().is_empty());
        s.write(Write { put: Some(&rec), clear_intent: Some((&rec.namespace, &rec.id)), ..Default::default() })
            .unwrap();
        assert!(s.intents().unwrap().is_empty());
        assert_eq!(s.list(None).unwrap(), [rec]);
    }

    #[test]
    fn upgrades_a_version_1_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META).unwrap().insert("schema_version", 1).unwrap();
            // A version-1 record: none of the restart fields.
            let mut v = serde_json::to_value(record("default", "old")).unwrap();
            for f in
                ["stdin", "terminal", "restart_policy", "restart_count", "restart_streak", "started_at_ns", "execs"]
            {
                v.as_object_mut().unwrap().remove(f);
            }
            let bytes = serde_json::to_vec(&v).unwrap();
            tx.open_table(CONTAINERS).unwrap().insert("default/old", bytes.as_slice()).unwrap();
            tx.commit().unwrap();
        }
        let s = Store::open(&path).unwrap();
        let rec = s.list(None).unwrap().remove(0);
        assert_eq!((rec.restart_policy, rec.restart_count), (RestartPolicy::No, 0));
        assert_eq!(s.last_seq().unwrap(), 0);
        drop(s);
        let db = Database::create(&path).unwrap();
        let tx = db.begin_read().unwrap();
        assert_eq!(tx.open_table(META).unwrap().get("schema_version").unwrap().unwrap().value(), SCHEMA_VERSION);
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
