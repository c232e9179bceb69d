//! The gRPC front: CRI's RuntimeService and ImageService traits, each
//! method handing its request to the translation in the other modules.

use std::pin::Pin;
use std::sync::Arc;

use berth_api::v1 as pb;
use futures_util::{Stream, StreamExt};
use pb::events_server::Events;
use tonic::{Request, Response, Status};

use crate::cri::image_service_server::{ImageService, ImageServiceServer};
use crate::cri::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use crate::{Backend, Cri, NAMESPACE, cri, req};

pub type RuntimeServer<B> = RuntimeServiceServer<Cri<B>>;
pub type ImageServer<B> = ImageServiceServer<Cri<B>>;

/// Both CRI services over one [`Cri`].
pub fn servers<B: Backend>(cri: Arc<Cri<B>>) -> (RuntimeServer<B>, ImageServer<B>) {
    (RuntimeServiceServer::from_arc(cri.clone()), ImageServiceServer::from_arc(cri))
}

type Reply<T> = Result<Response<T>, Status>;

fn ok<T>(t: T) -> Reply<T> {
    Ok(Response::new(t))
}

/// berth's event type → CRI's container event (others are not reported).
fn event_type(kind: &str) -> Option<cri::ContainerEventType> {
    match kind {
        "create" => Some(cri::ContainerEventType::ContainerCreatedEvent),
        "start" | "restart" => Some(cri::ContainerEventType::ContainerStartedEvent),
        "exit" => Some(cri::ContainerEventType::ContainerStoppedEvent),
        "delete" => Some(cri::ContainerEventType::ContainerDeletedEvent),
        _ => None,
    }
}

#[tonic::async_trait]
impl<B: Backend> RuntimeService for Cri<B> {
    async fn version(&self, _: Request<cri::VersionRequest>) -> Reply<cri::VersionResponse> {
        ok(Cri::version(self))
    }

    async fn run_pod_sandbox(&self, r: Request<cri::RunPodSandboxRequest>) -> Reply<cri::RunPodSandboxResponse> {
        ok(Cri::run_pod_sandbox(self, r.into_inner()).await?)
    }

    async fn stop_pod_sandbox(&self, r: Request<cri::StopPodSandboxRequest>) -> Reply<cri::StopPodSandboxResponse> {
        Cri::stop_pod_sandbox(self, &r.into_inner().pod_sandbox_id).await?;
        ok(cri::StopPodSandboxResponse {})
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> Reply<cri::RemovePodSandboxResponse> {
        Cri::remove_pod_sandbox(self, &r.into_inner().pod_sandbox_id).await?;
        ok(cri::RemovePodSandboxResponse {})
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> Reply<cri::PodSandboxStatusResponse> {
        ok(Cri::pod_sandbox_status(self, r.into_inner()).await?)
    }

    async fn list_pod_sandbox(&self, r: Request<cri::ListPodSandboxRequest>) -> Reply<cri::ListPodSandboxResponse> {
        ok(Cri::list_pod_sandbox(self, r.into_inner()).await?)
    }

    async fn create_container(&self, r: Request<cri::CreateContainerRequest>) -> Reply<cri::CreateContainerResponse> {
        ok(Cri::create_container(self, r.into_inner()).await?)
    }

    async fn start_container(&self, r: Request<cri::StartContainerRequest>) -> Reply<cri::StartContainerResponse> {
        Cri::start_container(self, &r.into_inner().container_id).await?;
        ok(cri::StartContainerResponse {})
    }

    async fn stop_container(&self, r: Request<cri::StopContainerRequest>) -> Reply<cri::StopContainerResponse> {
        let r = r.into_inner();
        Cri::stop_container(self, &r.container_id, r.timeout).await?;
        ok(cri::StopContainerResponse {})
    }

    async fn remove_container(&self, r: Request<cri::RemoveContainerRequest>) -> Reply<cri::RemoveContainerResponse> {
        Cri::remove_container(self, &r.into_inner().container_id).await?;
        ok(cri::RemoveContainerResponse {})
    }

    async fn list_containers(&self, r: Request<cri::ListContainersRequest>) -> Reply<cri::ListContainersResponse> {
        ok(Cri::list_containers(self, r.into_inner()).await?)
    }

    async fn container_status(&self, r: Request<cri::ContainerStatusRequest>) -> Reply<cri::ContainerStatusResponse> {
        ok(Cri::container_status(self, r.into_inner()).await?)
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Reply<cri::UpdateContainerResourcesResponse> {
        Cri::update_container_resources(self, r.into_inner()).await?;
        ok(cri::UpdateContainerResourcesResponse {})
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> Reply<cri::ReopenContainerLogResponse> {
        Cri::reopen_container_log(self, &r.into_inner().container_id).await?;
        ok(cri::ReopenContainerLogResponse {})
    }

    async fn exec_sync(&self, r: Request<cri::ExecSyncRequest>) -> Reply<cri::ExecSyncResponse> {
        ok(Cri::exec_sync(self, r.into_inner()).await?)
    }

    async fn exec(&self, r: Request<cri::ExecRequest>) -> Reply<cri::ExecResponse> {
        let r = r.into_inner();
        let io = (r.stdin, r.stdout, r.stderr, r.tty);
        ok(cri::ExecResponse { url: self.process_url(&r.container_id, Some(r.cmd), io).await? })
    }

    async fn attach(&self, r: Request<cri::AttachRequest>) -> Reply<cri::AttachResponse> {
        let r = r.into_inner();
        let io = (r.stdin, r.stdout, r.stderr, r.tty);
        ok(cri::AttachResponse { url: self.process_url(&r.container_id, None, io).await? })
    }

    async fn port_forward(&self, r: Request<cri::PortForwardRequest>) -> Reply<cri::PortForwardResponse> {
        ok(cri::PortForwardResponse { url: self.port_forward_url(&r.into_inner().pod_sandbox_id).await? })
    }

    async fn container_stats(&self, r: Request<cri::ContainerStatsRequest>) -> Reply<cri::ContainerStatsResponse> {
        ok(Cri::container_stats(self, &r.into_inner().container_id).await?)
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> Reply<cri::ListContainerStatsResponse> {
        ok(Cri::list_container_stats(self, r.into_inner()).await?)
    }

    async fn pod_sandbox_stats(&self, r: Request<cri::PodSandboxStatsRequest>) -> Reply<cri::PodSandboxStatsResponse> {
        ok(Cri::pod_sandbox_stats(self, &r.into_inner().pod_sandbox_id).await?)
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Reply<cri::ListPodSandboxStatsResponse> {
        ok(Cri::list_pod_sandbox_stats(self, r.into_inner()).await?)
    }

    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Reply<cri::UpdateRuntimeConfigResponse> {
        Cri::update_runtime_config(self, r.into_inner())?;
        ok(cri::UpdateRuntimeConfigResponse {})
    }

    async fn status(&self, r: Request<cri::StatusRequest>) -> Reply<cri::StatusResponse> {
        ok(Cri::status(self, r.into_inner()))
    }

    async fn checkpoint_container(
        &self,
        r: Request<cri::CheckpointContainerRequest>,
    ) -> Reply<cri::CheckpointContainerResponse> {
        Cri::checkpoint_container(self, r.into_inner()).await?;
        ok(cri::CheckpointContainerResponse {})
    }

    type GetContainerEventsStream = Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

    /// Container events as berth records them (live from the call on),
    /// each with its pod's status and the statuses of the pod's containers,
    /// as kubelet's evented PLEG reads them.
    async fn get_container_events(&self, _: Request<cri::GetEventsRequest>) -> Reply<Self::GetContainerEventsStream> {
        let sub = pb::SubscribeRequest {
            namespace: NAMESPACE.into(),
            types: ["create", "start", "restart", "exit", "delete"].map(String::from).to_vec(),
            since: Some(self.cfg.replay_since),
            ..Default::default()
        };
        let events = Events::subscribe(&*self.b, req(sub)).await?.into_inner();
        let me = self.me.upgrade().ok_or_else(|| Status::unavailable("berthd is stopping"))?;
        // Each container's pod, learnt while it exists (a deleted one is gone).
        let pods: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>> = Default::default();
        let mapped = events.filter_map(move |e| {
            let (me, pods) = (me.clone(), pods.clone());
            async move {
                let e = match e {
                    Ok(e) => e,
                    Err(s) => return Some(Err(s)),
                };
                // An exec's exit is not the container's.
                let kind = event_type(&e.r#type).filter(|_| e.exec_id.is_empty())?;
                if let Ok(c) = me.ctr(&e.id).await {
                    crate::lock(&pods).insert(e.id.clone(), c.c.sandbox.clone());
                }
                let pod = crate::lock(&pods).get(&e.id).cloned();
                let (pod_sandbox_status, containers_statuses) = match pod {
                    Some(pod) => me.pod_statuses(&pod).await,
                    None => (None, Vec::new()),
                };
                if kind == cri::ContainerEventType::ContainerDeletedEvent {
                    crate::lock(&pods).remove(&e.id);
                }
                Some(Ok(cri::ContainerEventResponse {
                    container_id: e.id,
                    container_event_type: kind as i32,
                    created_at: crate::ns_i64(e.timestamp_ns),
                    pod_sandbox_status,
                    containers_statuses,
                }))
            }
        });
        ok(Box::pin(mapped))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Reply<cri::ListMetricDescriptorsResponse> {
        // berth exports no pod metrics through CRI (kubelet then uses the
        // stats calls): an empty list, as containerd without metrics.
        ok(cri::ListMetricDescriptorsResponse { descriptors: Vec::new() })
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Reply<cri::ListPodSandboxMetricsResponse> {
        ok(cri::ListPodSandboxMetricsResponse { pod_metrics: Vec::new() })
    }

    async fn runtime_config(&self, _: Request<cri::RuntimeConfigRequest>) -> Reply<cri::RuntimeConfigResponse> {
        ok(Cri::runtime_config(self))
    }
}

#[tonic::async_trait]
impl<B: Backend> ImageService for Cri<B> {
    async fn list_images(&self, r: Request<cri::ListImagesRequest>) -> Reply<cri::ListImagesResponse> {
        ok(Cri::list_images(self, r.into_inner()).await?)
    }

    async fn image_status(&self, r: Request<cri::ImageStatusRequest>) -> Reply<cri::ImageStatusResponse> {
        ok(Cri::image_status(self, r.into_inner()).await?)
    }

    async fn pull_image(&self, r: Request<cri::PullImageRequest>) -> Reply<cri::PullImageResponse> {
        ok(Cri::pull_image(self, r.into_inner()).await?)
    }

    async fn remove_image(&self, r: Request<cri::RemoveImageRequest>) -> Reply<cri::RemoveImageResponse> {
        Cri::remove_image(self, r.into_inner()).await?;
        ok(cri::RemoveImageResponse {})
    }

    async fn image_fs_info(&self, _: Request<cri::ImageFsInfoRequest>) -> Reply<cri::ImageFsInfoResponse> {
        ok(Cri::image_fs_info(self))
    }
}
