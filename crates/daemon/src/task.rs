//! A client of the shim v2 Task API under either of its service names:
//! containerd 1.6/1.7 shims (Debian's containerd-shim-runc-v2) serve
//! `containerd.task.v2.Task`, containerd 2.x shims and containerd-shim-protos
//! `containerd.task.v3.Task` (berth-shim serves both). The messages are the
//! same; containerd-shim-protos' generated client knows only v3.
//!
//! A client keeps its connection until [`Task::release`]; from then on each
//! call connects for itself, so berthd holds no connection to the shim of
//! a container that only runs (issue 14: a connection costs berthd and the
//! shim memory).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use berth_shim::{TASK_V2, TASK_V3};
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::ttrpc::{self, asynchronous::Client, asynchronous::transport::Socket, context::Context};

#[derive(Clone)]
pub struct Task {
    socket: Arc<Path>,
    kept: Arc<Mutex<Kept>>,
    service: &'static str,
}

/// The connection calls share, until released.
struct Kept {
    client: Option<Client>,
    released: bool,
}

impl Task {
    /// A client connected to the shim at `socket` that calls `v3` or, for
    /// a containerd 1.x shim, `v2`.
    pub async fn open(socket: &Path, v3: bool) -> std::io::Result<Task> {
        let task = Task::idle(socket, v3);
        task.kept().client = Some(dial(socket).await?);
        Ok(task)
    }

    /// A client of the shim at `socket` that connects at its first call.
    pub fn idle(socket: &Path, v3: bool) -> Task {
        Task {
            socket: socket.into(),
            kept: Arc::new(Mutex::new(Kept { client: None, released: false })),
            service: if v3 { TASK_V3 } else { TASK_V2 },
        }
    }

    fn kept(&self) -> MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the shared connection once the calls in flight are done;
    /// every later call makes its own.
    pub fn release(&self) {
        let mut kept = self.kept();
        kept.client = None;
        kept.released = true;
    }

    async fn connected(&self) -> ttrpc::Result<Client> {
        if let Some(client) = self.kept().client.clone() {
            return Ok(client);
        }
        let client = dial(&self.socket)
            .await
            .map_err(|e| ttrpc::Error::Socket(format!("connect to shim at {}: {e}", self.socket.display())))?;
        let mut kept = self.kept();
        if kept.released {
            return Ok(client);
        }
        // A call that connected meanwhile keeps its connection for both.
        Ok(kept.client.get_or_insert(client).clone())
    }

    /// Says hello (Connect) under the chosen name, then under the other
    /// one if the shim does not serve the first; keeps the name that
    /// answered. Returns the shim's answer (its own pid, its version).
    pub async fn hello(&mut self, ctx: impl Fn() -> Context, id: &str) -> ttrpc::Result<api::ConnectResponse> {
        let req = api::ConnectRequest { id: id.to_string(), ..Default::default() };
        match self.connect(ctx(), &req).await {
            // Rust ttrpc says NOT_FOUND, Go ttrpc UNIMPLEMENTED ("service …").
            Err(ttrpc::Error::RpcStatus(s))
                if matches!(s.code(), ttrpc::Code::NOT_FOUND | ttrpc::Code::UNIMPLEMENTED)
                    && s.message().starts_with("service") =>
            {
                self.service = if self.service == TASK_V3 { TASK_V2 } else { TASK_V3 };
                self.connect(ctx(), &req).await
            }
            answer => answer,
        }
    }

    async fn call<Req: Message, Resp: Message>(&self, method: &str, ctx: Context, req: &Req) -> ttrpc::Result<Resp> {
        use ttrpc::proto::{Codec, RequestInit};
        let payload = Codec::encode(req).map_err(|e| ttrpc::Error::Others(format!("encoding request: {e}")))?;
        let mut creq = RequestInit::init_request(
            self.service.to_string(),
            method.to_string(),
            ctx.timeout_nano,
            ttrpc::context::to_pb(ctx.metadata),
        );
        RequestInit::set_payload(&mut creq, payload);
        // The request runs to its answer even if its caller goes away: a
        // connection of its own closing would cancel the shim's handler
        // half way (a start or exec would be left half done).
        let client = self.connected().await?;
        let res = tokio::spawn(async move { client.request(creq).await })
            .await
            .unwrap_or_else(|e| Err(ttrpc::Error::Others(format!("shim call: {e}"))));
        if let Err(ttrpc::Error::Socket(_) | ttrpc::Error::LocalClosed | ttrpc::Error::RemoteClosed) = res {
            // A broken connection is not kept for the next call.
            self.kept().client = None;
        }
        let res = res?;
        let mut resp = Resp::new();
        Codec::merge(&mut resp, &res.payload).map_err(|e| ttrpc::Error::Others(format!("decoding answer: {e}")))?;
        Ok(resp)
    }
}

/// A new connection to the shim at `socket`.
async fn dial(socket: &Path) -> std::io::Result<Client> {
    Ok(Client::new(Socket::from(tokio::net::UnixStream::connect(socket).await?)))
}

macro_rules! methods {
    ($($name:ident($req:ty) -> $resp:ty = $method:literal;)*) => {
        impl Task {
            $(
                pub async fn $name(&self, ctx: Context, req: &$req) -> ttrpc::Result<$resp> {
                    self.call($method, ctx, req).await
                }
            )*
        }
    };
}

methods! {
    connect(api::ConnectRequest) -> api::ConnectResponse = "Connect";
    create(api::CreateTaskRequest) -> api::CreateTaskResponse = "Create";
    start(api::StartRequest) -> api::StartResponse = "Start";
    exec(api::ExecProcessRequest) -> api::Empty = "Exec";
    kill(api::KillRequest) -> api::Empty = "Kill";
    wait(api::WaitRequest) -> api::WaitResponse = "Wait";
    delete(api::DeleteRequest) -> api::DeleteResponse = "Delete";
    state(api::StateRequest) -> api::StateResponse = "State";
    pause(api::PauseRequest) -> api::Empty = "Pause";
    resume(api::ResumeRequest) -> api::Empty = "Resume";
    pids(api::PidsRequest) -> api::PidsResponse = "Pids";
    close_io(api::CloseIORequest) -> api::Empty = "CloseIO";
    resize_pty(api::ResizePtyRequest) -> api::Empty = "ResizePty";
    stats(api::StatsRequest) -> api::StatsResponse = "Stats";
    update(api::UpdateTaskRequest) -> api::Empty = "Update";
    shutdown(api::ShutdownRequest) -> api::Empty = "Shutdown";
    checkpoint(api::CheckpointTaskRequest) -> api::Empty = "Checkpoint";
}
