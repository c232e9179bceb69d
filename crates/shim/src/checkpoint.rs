//! Checkpoint and restore in the shim (SPEC B16): the Task API's
//! Checkpoint dumps a running (or paused) container through the runtime's
//! CRIU support, in a forked helper like every runtime call; a Create that
//! names a checkpoint restores the container instead of creating it, and
//! its Start then only records the start (the restored init runs already).

use berth_model::Code;
use berth_runtime::Checkpoint;
use berth_shim::{CHECKPOINT_TYPE_URL, to_ttrpc};
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::ttrpc;

use crate::tasks::Shim;

/// The options berthd sends with Checkpoint (and with a restoring Create),
/// and the image directory the request names.
pub(crate) fn options(any: Option<&Any>, path: &str) -> ttrpc::Result<Checkpoint> {
    let mut c: Checkpoint = match any.filter(|a| !a.type_url.is_empty()) {
        Some(a) if a.type_url == CHECKPOINT_TYPE_URL => serde_json::from_slice(&a.value)
            .map_err(|e| to_ttrpc(Code::InvalidArgument, format!("checkpoint options: {e}")))?,
        Some(a) => {
            return Err(to_ttrpc(Code::InvalidArgument, format!("unknown checkpoint options type {}", a.type_url)));
        }
        None => Checkpoint::default(),
    };
    if path.is_empty() || !path.starts_with('/') {
        return Err(to_ttrpc(Code::InvalidArgument, "a checkpoint needs an absolute image directory"));
    }
    c.images = path.into();
    if c.work.as_os_str().is_empty() {
        c.work = c.images.with_extension("work");
    }
    Ok(c)
}

impl Shim {
    pub(crate) async fn checkpoint_task(&self, req: &api::CheckpointTaskRequest) -> ttrpc::Result<()> {
        let c = options(req.options.as_ref(), &req.path)?;
        let live = self.with_task(&req.id, |t| Ok(t.started && t.exited().is_none()))?;
        if !live {
            return Err(to_ttrpc(Code::FailedPrecondition, format!("container {} is not running", req.id)));
        }
        self.runtime.checkpoint(&req.id, &c).await.map_err(|e| to_ttrpc(e.code(), e))
    }
}
