//! The gRPC front of the Volumes service (berth.v1): translates requests
//! into volume manager calls (`volumes.rs`); errors go through
//! `api::status`, the one mapping. No behaviour lives here.

use berth_api::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::{Api, status};
use crate::volumes::Volume;

fn volume_pb(v: Volume) -> pb::Volume {
    pb::Volume {
        name: v.name,
        mountpoint: v.mountpoint.to_string_lossy().into_owned(),
        created_at_ns: v.created_at_ns,
        used_by: v.used_by,
    }
}

#[tonic::async_trait]
impl pb::volumes_server::Volumes for Api {
    async fn create(&self, req: Request<pb::VolumeRef>) -> Result<Response<pb::Volume>, Status> {
        let r = req.into_inner();
        Ok(Response::new(volume_pb(self.mgr.volume_create(&r.name).map_err(status)?)))
    }

    async fn list(&self, _req: Request<pb::VolumeListRequest>) -> Result<Response<pb::VolumeListResponse>, Status> {
        let volumes = self.mgr.volume_list().map_err(status)?;
        Ok(Response::new(pb::VolumeListResponse { volumes: volumes.into_iter().map(volume_pb).collect() }))
    }

    async fn get(&self, req: Request<pb::VolumeRef>) -> Result<Response<pb::Volume>, Status> {
        let r = req.into_inner();
        Ok(Response::new(volume_pb(self.mgr.volume_get(&r.name).map_err(status)?)))
    }

    async fn remove(&self, req: Request<pb::VolumeRef>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        self.mgr.volume_remove(&r.name).map_err(status)?;
        Ok(Response::new(pb::Empty {}))
    }
}
