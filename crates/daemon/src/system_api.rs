//! The gRPC front of the System service (berth.v1): berthd's own figures,
//! information and disk usage (`system_info.rs`).
//! No behaviour lives here.

use berth_api::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::{Api, status};

#[tonic::async_trait]
impl pb::system_server::System for Api {
    async fn phases(&self, req: Request<pb::PhasesRequest>) -> Result<Response<pb::PhasesResponse>, Status> {
        let phases = self.mgr.phases.summary();
        if req.into_inner().reset {
            self.mgr.phases.reset();
        }
        let phases = phases
            .into_iter()
            .map(|s| pb::Phase {
                name: s.phase.to_string(),
                count: s.count,
                median_us: s.median_us,
                p90_us: s.p90_us,
                max_us: s.max_us,
            })
            .collect();
        Ok(Response::new(pb::PhasesResponse { phases }))
    }

    async fn version(&self, _: Request<pb::VersionRequest>) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse { version: env!("CARGO_PKG_VERSION").into() }))
    }

    async fn info(&self, _: Request<pb::InfoRequest>) -> Result<Response<pb::SystemInfo>, Status> {
        let mgr = self.mgr.clone();
        let info = tokio::task::spawn_blocking(move || mgr.system_info())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(info.map_err(status)?))
    }

    async fn df(&self, _: Request<pb::DfRequest>) -> Result<Response<pb::DfResponse>, Status> {
        let mgr = self.mgr.clone();
        let entries =
            tokio::task::spawn_blocking(move || mgr.system_df()).await.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::DfResponse { entries: entries.map_err(status)? }))
    }

    async fn doctor(&self, req: Request<pb::DoctorRequest>) -> Result<Response<pb::DoctorReport>, Status> {
        Ok(Response::new(self.mgr.doctor(req.into_inner().fix).await.map_err(status)?))
    }
}
