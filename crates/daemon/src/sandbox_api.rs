//! The gRPC front of the Sandboxes service (berth.v1): translates requests
//! into sandbox manager calls (`sandbox.rs`); errors go through
//! `api::status`, the one mapping. No behaviour lives here.

use berth_api::v1 as pb;
use berth_model::{Namespace, NsShare, SandboxId};
use berth_store::SandboxRecord;
use tonic::{Request, Response, Status};

use crate::api::{Api, attachment_pb, ns, optional_id, status};
use crate::sandbox::SandboxParams;

fn key(namespace: &str, id: &str) -> Result<(Namespace, SandboxId), Status> {
    Ok((ns(namespace)?, SandboxId::new(id).map_err(|e| status(e.into()))?))
}

impl Api {
    fn sandbox_pb(&self, r: SandboxRecord) -> Result<pb::Sandbox, Status> {
        let containers = self.mgr.sandbox_members(&r.namespace, &r.id).map_err(status)?;
        Ok(pb::Sandbox {
            namespace: r.namespace.to_string(),
            id: r.id.to_string(),
            state: r.state.to_string(),
            runtime: r.runtime,
            labels: r.labels.into_iter().collect(),
            created_at_ns: r.created_at_ns,
            shim_pid: r.shim.pid,
            network: r.network.map(attachment_pb),
            containers: containers.into_iter().map(String::from).collect(),
            pid: r.pid.as_str().into(),
            ipc: r.ipc.as_str().into(),
            vm: r.vm.map(crate::api::vm_pb),
        })
    }
}

#[tonic::async_trait]
impl pb::sandboxes_server::Sandboxes for Api {
    async fn create(&self, req: Request<pb::SandboxCreateRequest>) -> Result<Response<pb::Sandbox>, Status> {
        let r = req.into_inner();
        let params = SandboxParams {
            namespace: ns(&r.namespace)?,
            id: optional_id(&r.id)?,
            runtime: r.runtime,
            labels: r.labels.into_iter().collect(),
            net: crate::network::NetOptions { mode: r.network, publish: r.publish, ..Default::default() },
            pid: NsShare::parse(&r.pid, "pid", NsShare::Container).map_err(|e| status(e.into()))?,
            ipc: NsShare::parse(&r.ipc, "ipc", NsShare::Pod).map_err(|e| status(e.into()))?,
            cpus: r.cpus,
            memory: r.memory,
        };
        let rec = self.mgr.sandbox_create(params).await.map_err(status)?;
        Ok(Response::new(self.sandbox_pb(rec)?))
    }

    async fn get(&self, req: Request<pb::SandboxRef>) -> Result<Response<pb::Sandbox>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        let rec = self.mgr.sandbox_get(&ns, &id).map_err(status)?;
        Ok(Response::new(self.sandbox_pb(rec)?))
    }

    async fn list(&self, req: Request<pb::SandboxListRequest>) -> Result<Response<pb::SandboxListResponse>, Status> {
        let r = req.into_inner();
        let filter = if r.namespace.is_empty() { None } else { Some(ns(&r.namespace)?) };
        let mut recs = self.mgr.sandbox_list(filter.as_ref()).map_err(status)?;
        recs.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
        let sandboxes = recs.into_iter().map(|r| self.sandbox_pb(r)).collect::<Result<_, _>>()?;
        Ok(Response::new(pb::SandboxListResponse { sandboxes }))
    }

    async fn stop(&self, req: Request<pb::SandboxStopRequest>) -> Result<Response<pb::Sandbox>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        let timeout = std::time::Duration::from_secs(r.timeout_s.into());
        let rec = self.mgr.sandbox_stop(&ns, &id, timeout).await.map_err(status)?;
        Ok(Response::new(self.sandbox_pb(rec)?))
    }

    async fn remove(&self, req: Request<pb::SandboxRef>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        self.mgr.sandbox_remove(&ns, &id).await.map_err(status)?;
        Ok(Response::new(pb::Empty {}))
    }
}
