//! The gRPC front of the Networks service (berth.v1): translates requests
//! into network calls (`network.rs`, `berth-network`); errors go through
//! `api::status`, the one mapping. No behaviour lives here.

use berth_api::v1 as pb;
use berth_network::NetworkInfo;
use tonic::{Request, Response, Status};

use crate::api::{Api, status};
use crate::error::Error;

impl Api {
    fn network_pb(&self, n: NetworkInfo) -> Result<pb::Network, Status> {
        let containers = self.mgr.network_users(&n.name).map_err(status)?;
        Ok(pb::Network {
            name: n.name,
            bridge: n.bridge,
            subnet: n.subnet,
            gateway: n.gateway,
            plugins: n.plugins,
            path: n.path.to_string_lossy().into_owned(),
            managed: n.managed,
            cni_version: n.cni_version,
            containers,
        })
    }
}

fn net_err(e: berth_network::Error) -> Status {
    status(Error::from(e))
}

#[tonic::async_trait]
impl pb::networks_server::Networks for Api {
    async fn create(&self, req: Request<pb::NetworkCreateRequest>) -> Result<Response<pb::Network>, Status> {
        let r = req.into_inner();
        let subnet = (!r.subnet.is_empty()).then_some(r.subnet.as_str());
        let n = self.mgr.net.networks.create(&r.name, subnet).map_err(net_err)?;
        Ok(Response::new(self.network_pb(n)?))
    }

    async fn list(&self, _req: Request<pb::NetworkListRequest>) -> Result<Response<pb::NetworkListResponse>, Status> {
        let list = self.mgr.net.networks.list().map_err(net_err)?;
        let networks = list.into_iter().map(|n| self.network_pb(n)).collect::<Result<_, _>>()?;
        Ok(Response::new(pb::NetworkListResponse { networks }))
    }

    async fn get(&self, req: Request<pb::NetworkRef>) -> Result<Response<pb::Network>, Status> {
        let n = self.mgr.net.networks.get(&req.into_inner().name).map_err(net_err)?;
        Ok(Response::new(self.network_pb(n)?))
    }

    async fn check(&self, req: Request<pb::ContainerRef>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        let (ns, id) = crate::api::key(&r.namespace, &r.id)?;
        self.mgr.check_network(&ns, &id).await.map_err(status)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn remove(&self, req: Request<pb::NetworkRef>) -> Result<Response<pb::Empty>, Status> {
        self.mgr.network_remove(&req.into_inner().name).await.map_err(status)?;
        Ok(Response::new(pb::Empty {}))
    }
}
