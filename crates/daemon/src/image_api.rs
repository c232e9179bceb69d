//! The gRPC front of the Images service (berth.v1): translates requests
//! into image manager calls; errors go through `api::status`, the one
//! mapping. No behaviour lives here.

use berth_api::v1 as pb;
use berth_images::{Auth, ImageRecord};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};

use crate::api::{Api, BoxStream, status};
use crate::images::{PullEvent, PullParams};

pub fn image_pb(r: ImageRecord) -> pb::Image {
    pb::Image {
        name: r.name,
        manifest_digest: r.manifest_digest,
        digest: r.digest,
        config_digest: r.config_digest,
        diff_ids: r.diff_ids,
        chain_id: r.chain_id,
        size: r.size,
        created: r.created,
    }
}

fn progress_pb(e: PullEvent) -> pb::PullProgress {
    pb::PullProgress {
        digest: e.digest,
        current: e.current,
        total: e.total,
        done: e.done,
        skipped: e.skipped,
        image: e.image.map(image_pb),
        status: e.status.to_string(),
    }
}

#[tonic::async_trait]
impl pb::images_server::Images for Api {
    type PullStream = BoxStream<pb::PullProgress>;

    async fn pull(&self, req: Request<pb::PullRequest>) -> Result<Response<Self::PullStream>, Status> {
        let r = req.into_inner();
        let auth = match (r.username.is_empty(), r.password.is_empty()) {
            (true, true) => Auth::Anonymous,
            (false, _) => Auth::Basic { username: r.username, password: r.password },
            (true, false) => return Err(Status::invalid_argument("a password needs a username")),
        };
        let params = PullParams { reference: r.reference, platform: r.platform, insecure: r.insecure, auth };
        let rx = self.mgr.images.pull(params);
        let out = tokio_stream::StreamExt::map(UnboundedReceiverStream::new(rx), |item| {
            item.map(progress_pb).map_err(status)
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn list(&self, _req: Request<pb::ImageListRequest>) -> Result<Response<pb::ImageListResponse>, Status> {
        let images = self.mgr.images.list().map_err(status)?;
        Ok(Response::new(pb::ImageListResponse { images: images.into_iter().map(image_pb).collect() }))
    }

    async fn get(&self, req: Request<pb::ImageRef>) -> Result<Response<pb::Image>, Status> {
        let r = req.into_inner();
        Ok(Response::new(image_pb(self.mgr.images.get(&r.reference).map_err(status)?)))
    }

    async fn remove(&self, req: Request<pb::ImageRemoveRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        self.mgr.images.remove(&r.reference).map_err(status)?;
        Ok(Response::new(pb::Empty {}))
    }
}
