//! The gRPC front of the Images service (berth.v1): translates requests
//! into image manager calls; errors go through `api::status`, the one
//! mapping. No behaviour lives here.

use berth_api::v1 as pb;
use berth_images::gc::Collected;
use berth_images::{Auth, ImageRecord};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};

use crate::api::{Api, BoxStream, status};
use crate::image_admin::{Imported, Inspected};
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

fn freed_pb(c: Collected) -> pb::ImagePruneResponse {
    pb::ImagePruneResponse {
        blobs_removed: c.blobs_removed as u64,
        blob_bytes: c.blob_bytes,
        snapshots_removed: c.snapshots_removed as u64,
        snapshot_bytes: c.snapshot_bytes,
    }
}

fn imported_pb(i: Imported) -> pb::ImportedImage {
    pb::ImportedImage {
        name: i.record.as_ref().map(|r| r.name.clone()).unwrap_or_default(),
        digest: i.digest,
        image: i.record.map(image_pb),
        manifest_digest: i.manifest_digest,
    }
}

fn inspect_pb(i: Inspected) -> pb::ImageInspect {
    let platform = i.platform();
    let diff_ids = i.record.diff_ids.clone();
    let layers = i
        .resolved
        .manifest
        .layers()
        .iter()
        .enumerate()
        .map(|(n, l)| pb::ImageLayer {
            digest: l.digest().to_string(),
            diff_id: diff_ids.get(n).cloned().unwrap_or_default(),
            size: l.size(),
            media_type: l.media_type().to_string(),
        })
        .collect();
    pb::ImageInspect {
        image: Some(image_pb(i.record)),
        layers,
        entrypoint: i.run.entrypoint,
        cmd: i.run.cmd,
        env: i.run.env,
        working_dir: i.run.working_dir,
        user: i.run.user,
        stop_signal: i.run.stop_signal,
        platform,
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

    async fn remove(&self, req: Request<pb::ImageRemoveRequest>) -> Result<Response<pb::ImageRemoveResponse>, Status> {
        let r = req.into_inner();
        let freed = self.mgr.remove_image(&r.reference, r.force).await.map_err(status)?;
        Ok(Response::new(pb::ImageRemoveResponse { freed: Some(freed_pb(freed)) }))
    }

    async fn import(&self, req: Request<pb::ImageImportRequest>) -> Result<Response<pb::ImageImportResponse>, Status> {
        let r = req.into_inner();
        let images = self.mgr.images.import(&r.path, &r.platform).await.map_err(status)?;
        Ok(Response::new(pb::ImageImportResponse { images: images.into_iter().map(imported_pb).collect() }))
    }

    async fn export(&self, req: Request<pb::ImageExportRequest>) -> Result<Response<pb::ImageExportResponse>, Status> {
        let r = req.into_inner();
        let e = self.mgr.images.export(&r.references, &r.path).await.map_err(status)?;
        Ok(Response::new(pb::ImageExportResponse { blobs: e.blobs as u64, bytes: e.bytes }))
    }

    async fn tag(&self, req: Request<pb::ImageTagRequest>) -> Result<Response<pb::Image>, Status> {
        let r = req.into_inner();
        Ok(Response::new(image_pb(self.mgr.images.tag(&r.source, &r.target).map_err(status)?)))
    }

    async fn inspect(&self, req: Request<pb::ImageRef>) -> Result<Response<pb::ImageInspect>, Status> {
        let r = req.into_inner();
        Ok(Response::new(inspect_pb(self.mgr.images.inspect(&r.reference).map_err(status)?)))
    }

    async fn prune(&self, _req: Request<pb::ImagePruneRequest>) -> Result<Response<pb::ImagePruneResponse>, Status> {
        Ok(Response::new(freed_pb(self.mgr.images.collect().await.map_err(status)?)))
    }
}
