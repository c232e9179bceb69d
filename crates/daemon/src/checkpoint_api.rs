//! The gRPC front of the Checkpoints service (berth.v1): translates requests
//! into checkpoint manager calls (`checkpoint.rs`, `checkpoint_archive.rs`);
//! errors go through `api::status`, the one mapping. No behaviour lives here.

use std::path::PathBuf;

use berth_api::v1 as pb;
use berth_model::{ContainerId, Namespace};
use tonic::{Request, Response, Status};

use crate::api::{Api, container_pb, key, ns, status};
use crate::checkpoint::{CheckpointMeta, CheckpointParams};
use crate::restore::RestoreSource;

fn info_pb(m: CheckpointMeta) -> pb::CheckpointInfo {
    pb::CheckpointInfo {
        namespace: m.namespace.to_string(),
        id: m.container.to_string(),
        name: m.name,
        created_at_ns: m.created_at_ns,
        runtime: m.runtime,
        image: m.image,
        leave_running: m.leave_running,
        tcp_established: m.tcp_established,
        size: m.size,
        duration_us: m.duration_us,
    }
}

fn id(s: &str) -> Result<ContainerId, Status> {
    ContainerId::new(s).map_err(|e| status(e.into()))
}

#[tonic::async_trait]
impl pb::checkpoints_server::Checkpoints for Api {
    async fn create(&self, req: Request<pb::CheckpointRequest>) -> Result<Response<pb::CheckpointInfo>, Status> {
        let r = req.into_inner();
        let (namespace, id) = key(&r.namespace, &r.id)?;
        let params = CheckpointParams {
            namespace,
            id,
            name: r.name,
            leave_running: r.leave_running,
            tcp_established: r.tcp_established,
            shell_job: r.shell_job,
            ext_unix_sk: r.ext_unix_sk,
        };
        Ok(Response::new(info_pb(self.mgr.checkpoint(params).await.map_err(status)?)))
    }

    async fn list(&self, req: Request<pb::ContainerRef>) -> Result<Response<pb::CheckpointList>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        let list = self.mgr.checkpoints(&ns, &id).map_err(status)?;
        Ok(Response::new(pb::CheckpointList { checkpoints: list.into_iter().map(info_pb).collect() }))
    }

    async fn remove(&self, req: Request<pb::CheckpointRef>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        self.mgr.checkpoint_remove(&ns, &id, &r.name).map_err(status)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn export(&self, req: Request<pb::CheckpointExportRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        let mgr = self.mgr.clone();
        let export = move || mgr.checkpoint_export(&ns, &id, &r.name, &PathBuf::from(&r.path));
        let done = tokio::task::spawn_blocking(export).await.map_err(|e| Status::internal(e.to_string()))?;
        done.map_err(status)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn restore(&self, req: Request<pb::RestoreRequest>) -> Result<Response<pb::Container>, Status> {
        let r = req.into_inner();
        let namespace: Namespace = ns(&r.namespace)?;
        let new_id = if r.id.is_empty() { None } else { Some(id(&r.id)?) };
        let source = match (r.archive.is_empty(), r.container.is_empty()) {
            (false, true) => RestoreSource::Archive(PathBuf::from(r.archive)),
            (true, false) => RestoreSource::Checkpoint { container: id(&r.container)?, name: r.name },
            _ => {
                return Err(Status::invalid_argument(
                    "restore from either an archive or a checkpoint (container and name)",
                ));
            }
        };
        let rec = self.mgr.restore(&namespace, new_id, source).await.map_err(status)?;
        Ok(Response::new(container_pb(rec)))
    }
}
