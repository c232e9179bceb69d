//! Sandbox records (SPEC B34): one per sandbox, in their own table. The
//! record is written in state `creating` before anything is allocated, so
//! it is also the intent a restarted berthd releases (SPEC B20).

use std::collections::BTreeMap;

use berth_model::{Namespace, NetworkAttachment, NsShare, SandboxId, SandboxState};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::db::{ShimInfo, Store, StoreError, db_err, decode};

pub(crate) const SANDBOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("sandboxes");

/// Everything berthd knows about one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub namespace: Namespace,
    pub id: SandboxId,
    pub state: SandboxState,
    /// The runtime its shim runs every container of it with.
    pub runtime: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created_at_ns: u64,
    /// Its shim (pid 0 while none was started).
    pub shim: ShimInfo,
    /// The network namespace its containers share.
    #[serde(default)]
    pub network: Option<NetworkAttachment>,
    /// Whose PID and IPC namespaces its containers are in.
    #[serde(default)]
    pub pid: NsShare,
    #[serde(default)]
    pub ipc: NsShare,
    /// Its VM, for a sandbox whose containers run in one (runtime `vm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<berth_model::vm::VmInfo>,
}

fn key(ns: &Namespace, id: &SandboxId) -> String {
    format!("{ns}/{id}")
}

impl Store {
    /// Inserts or replaces a sandbox record; durable when this returns.
    pub fn put_sandbox(&self, rec: &SandboxRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec).map_err(db_err)?;
        let tx = self.db().begin_write().map_err(db_err)?;
        tx.open_table(SANDBOXES)
            .map_err(db_err)?
            .insert(key(&rec.namespace, &rec.id).as_str(), bytes.as_slice())
            .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    pub fn get_sandbox(&self, ns: &Namespace, id: &SandboxId) -> Result<Option<SandboxRecord>, StoreError> {
        let k = key(ns, id);
        let tx = self.db().begin_read().map_err(db_err)?;
        let t = tx.open_table(SANDBOXES).map_err(db_err)?;
        let Some(v) = t.get(k.as_str()).map_err(db_err)? else {
            return Ok(None);
        };
        decode(&k, v.value()).map(Some)
    }

    pub fn remove_sandbox(&self, ns: &Namespace, id: &SandboxId) -> Result<(), StoreError> {
        let tx = self.db().begin_write().map_err(db_err)?;
        tx.open_table(SANDBOXES).map_err(db_err)?.remove(key(ns, id).as_str()).map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// All sandbox records, of one namespace or of all.
    pub fn list_sandboxes(&self, ns: Option<&Namespace>) -> Result<Vec<SandboxRecord>, StoreError> {
        let tx = self.db().begin_read().map_err(db_err)?;
        let t = tx.open_table(SANDBOXES).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let rec: SandboxRecord = decode(k.value(), v.value())?;
            if ns.is_none_or(|n| *n == rec.namespace) {
                out.push(rec);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(ns: &str, id: &str) -> SandboxRecord {
        SandboxRecord {
            namespace: Namespace::new(ns).unwrap(),
            id: SandboxId::new(id).unwrap(),
            state: SandboxState::Creating,
            runtime: "embedded".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            created_at_ns: 1,
            shim: ShimInfo { pid: 0, socket: "/s".into() },
            network: None,
            pid: NsShare::Pod,
            ipc: NsShare::Host,
            vm: None,
        }
    }

    #[test]
    fn sandboxes_survive_reopen_apart_from_containers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let s = Store::open(&path).unwrap();
            s.put_sandbox(&sandbox("default", "pod")).unwrap();
            s.put_sandbox(&sandbox("other", "pod")).unwrap();
            let mut ready = sandbox("default", "pod");
            ready.state = SandboxState::Ready;
            s.put_sandbox(&ready).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let (ns, id) = (Namespace::new("default").unwrap(), SandboxId::new("pod").unwrap());
        assert_eq!(s.get_sandbox(&ns, &id).unwrap().unwrap().state, SandboxState::Ready);
        assert_eq!(s.list_sandboxes(Some(&ns)).unwrap().len(), 1);
        assert_eq!(s.list_sandboxes(None).unwrap().len(), 2);
        // A sandbox is not a container, and does not make the store non-empty's
        // container view lie.
        assert!(s.list(None).unwrap().is_empty());
        s.remove_sandbox(&ns, &id).unwrap();
        assert!(s.get_sandbox(&ns, &id).unwrap().is_none());
        assert_eq!(s.list_sandboxes(None).unwrap().len(), 1);
    }

    #[test]
    fn records_from_before_namespace_sharing_read_as_per_container() {
        let mut json = serde_json::to_value(sandbox("default", "old")).unwrap();
        let fields = json.as_object_mut().unwrap();
        fields.remove("pid");
        fields.remove("ipc");
        let old: SandboxRecord = serde_json::from_value(json).unwrap();
        assert_eq!((old.pid, old.ipc), (NsShare::Container, NsShare::Container));
    }
}
