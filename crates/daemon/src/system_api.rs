//! The gRPC front of the System service (berth.v1): berthd's own figures.
//! No behaviour lives here.

use berth_api::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::Api;

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
}
