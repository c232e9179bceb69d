//! The Task API of a VM shim: each call forwarded to the guest's shim.
//! Paths move into the share (`guest_spec.rs`); guest pids are answered as
//! 0, since they name no host process (berthd must never signal or read
//! one); a process's stdio stays on the host, streamed over vsock
//! (`stdio.rs`); what a guest cannot do yet (checkpoints, containerd's
//! rootfs mounts) is refused as FailedPrecondition.

use std::path::PathBuf;

use async_trait::async_trait;
use berth_model::Code;
use berth_shim::to_ttrpc;
use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;

use super::guest_spec::GuestBundle;
use super::stdio::{Reservation, open_targets};
use super::{TtrpcResult, VmProxy, ctx};
use crate::service::exit_fields;

fn unsupported(what: &str) -> containerd_shim_protos::ttrpc::Error {
    to_ttrpc(Code::FailedPrecondition, format!("{what} is not supported in a VM sandbox yet"))
}

impl VmProxy {
    fn check(&self, id: &str) -> TtrpcResult<()> {
        if !self.sandbox && id != self.id {
            return Err(crate::tasks::not_served(id));
        }
        Ok(())
    }

    /// Runs `f` with the guest bundle of container `id`.
    fn with_bundle<T>(&self, id: &str, f: impl FnOnce(&GuestBundle, &PathBuf) -> TtrpcResult<T>) -> TtrpcResult<T> {
        let bundles = self.bundles.lock().map_err(|_| to_ttrpc(Code::Internal, "bundles lock poisoned"))?;
        let (guest, host) = bundles.get(id).ok_or_else(|| crate::tasks::not_served(id))?;
        f(guest, host)
    }
}

#[async_trait]
impl Task for VmProxy {
    async fn connect(&self, _ctx: &TtrpcContext, _req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            version: berth_shim::shim_version(&self.namespace),
            ..Default::default()
        })
    }

    async fn create(&self, c: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        self.check(&req.id)?;
        if !req.rootfs.is_empty() || !req.checkpoint.is_empty() {
            return Err(unsupported("a rootfs from mounts or a restore"));
        }
        if self.bundles.lock().is_ok_and(|b| b.contains_key(&req.id)) {
            return Err(to_ttrpc(Code::AlreadyExists, format!("container {} exists", req.id)));
        }
        let host = PathBuf::from(&req.bundle);
        let created = async {
            let t = std::time::Instant::now();
            let share = self.ensure_share()?;
            // A count from an earlier run of the container is not this one's.
            let _ = std::fs::remove_file(host.join(berth_model::vm::OOM_KILLS_FILE));
            let guest = match GuestBundle::prepare(&share, &self.stage(), &req.id, &host) {
                Ok(guest) => guest,
                Err(e) => {
                    let _ = share.remove(&req.id);
                    return Err(to_ttrpc(Code::InvalidArgument, e));
                }
            };
            let bundle = guest.guest_dir.clone();
            if let Ok(mut b) = self.bundles.lock() {
                b.insert(req.id.clone(), (guest, host.clone()));
            }
            let targets = open_targets(req.terminal, [&req.stdin, &req.stdout, &req.stderr])?;
            self.steps.record("host.prepare", t);
            let booted = self.boot(&host).await?;
            let t = std::time::Instant::now();
            let (io, [stdin, stdout, stderr]) = self.streams(&req.id, "", targets)?;
            let t = self.steps.record("host.streams", t);
            let fwd = api::CreateTaskRequest {
                id: req.id.clone(),
                bundle,
                terminal: req.terminal,
                stdin,
                stdout,
                stderr,
                options: req.options.clone(),
                ..Default::default()
            };
            let r = booted.task.create(ctx(Some(c.timeout_nano)), &fwd).await?;
            self.steps.record("guest.create", t);
            if let Ok(mut ios) = self.ios.lock() {
                ios.insert((req.id.clone(), String::new()), io);
            }
            Ok(r)
        };
        match created.await {
            Ok(r) => Ok(api::CreateTaskResponse { pid: 0, ..r }),
            Err(e) => {
                self.forget(&req.id);
                if !self.sandbox {
                    self.power_off().await;
                }
                Err(e)
            }
        }
    }

    async fn start(&self, c: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        self.check(&req.id)?;
        let t = std::time::Instant::now();
        let r = self.booted()?.task.start(ctx(Some(c.timeout_nano)), &req).await?;
        if req.exec_id.is_empty() {
            self.steps.record("guest.start", t);
        }
        Ok(api::StartResponse { pid: 0, ..r })
    }

    async fn wait(&self, c: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        self.check(&req.id)?;
        // After the exit powered the VM off (also while this call was in
        // flight, with another waiter first): the recorded exit.
        let ended = || match (self.ended(), req.exec_id.is_empty()) {
            (Some(exit), true) => {
                let (exit_status, exited_at) = exit_fields(Some(exit));
                Some(Ok(api::WaitResponse { exit_status, exited_at, ..Default::default() }))
            }
            (Some(_), false) => {
                Some(Err(to_ttrpc(Code::NotFound, format!("exec {} is gone with its VM", req.exec_id))))
            }
            (None, _) => None,
        };
        if let Some(answer) = ended() {
            return answer;
        }
        let t = std::time::Instant::now();
        let r = match self.booted()?.task.wait(ctx(Some(c.timeout_nano)), &req).await {
            Ok(r) => r,
            Err(e) => return ended().unwrap_or(Err(e)),
        };
        let init = req.exec_id.is_empty();
        let t = match init {
            true => self.steps.record_after("guest.wait", t, "guest.start"),
            false => t,
        };
        // Its output is in its targets before anyone hears of the exit.
        let drained =
            self.ios.lock().ok().and_then(|ios| ios.get(&(req.id.clone(), req.exec_id.clone())).map(|io| io.drained()));
        if let Some(drained) = drained {
            drained.wait().await;
        }
        // The guest recorded the exit in the share; it is the host's record
        // (in the host bundle) before anyone hears of it.
        let name = match req.exec_id.as_str() {
            "" => "exit.json".to_string(),
            exec => format!("exec-{exec}.exit.json"),
        };
        self.with_bundle(&req.id, |guest, host| {
            let exit = guest
                .guest_exit(&name)
                .ok_or_else(|| to_ttrpc(Code::Internal, format!("the guest left no valid {name}")))?;
            let oom_file = berth_model::vm::OOM_KILLS_FILE;
            if let Some(kills) = req.exec_id.is_empty().then(|| guest.guest_oom_kills()).flatten() {
                berth_store::write_atomic(&host.join(oom_file), kills.to_string().as_bytes())
                    .map_err(|e| to_ttrpc(Code::Internal, format!("record the OOM kills: {e}")))?;
            }
            let bytes = serde_json::to_vec(&exit).map_err(|e| to_ttrpc(Code::Internal, e))?;
            berth_store::write_atomic(&host.join(&name), &bytes)
                .map_err(|e| to_ttrpc(Code::Internal, format!("record the exit: {e}")))?;
            Ok(exit)
        })
        .map(|exit| {
            // A lone container's VM has nothing left to run: it goes now,
            // not at the Delete (a stopped container costs no VM).
            if req.exec_id.is_empty()
                && !self.sandbox
                && let Ok(mut ended) = self.ended.lock()
            {
                *ended = Some(exit);
            }
        })?;
        if init && !self.sandbox {
            self.steps.record("host.exit", t);
            self.power_off().await;
            if let Ok(host) = self.with_bundle(&req.id, |_, host| Ok(host.clone())) {
                self.steps.write(&host);
            }
        }
        Ok(r)
    }

    async fn delete(&self, c: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        self.check(&req.id)?;
        let r = match (self.ended(), req.exec_id.is_empty()) {
            (Some(exit), true) => {
                let (exit_status, exited_at) = exit_fields(Some(exit));
                api::DeleteResponse { exit_status, exited_at, ..Default::default() }
            }
            _ => match self.booted()?.task.delete(ctx(Some(c.timeout_nano)), &req).await {
                Ok(r) => r,
                Err(e) => {
                    // The guest holds no such process: neither do we.
                    if berth_shim::from_ttrpc(&e).0 == Code::NotFound {
                        match req.exec_id.is_empty() {
                            true => self.forget(&req.id),
                            false => self.forget_exec(&req.id, &req.exec_id),
                        }
                    }
                    return Err(e);
                }
            },
        };
        if !req.exec_id.is_empty() {
            self.forget_exec(&req.id, &req.exec_id);
        }
        if req.exec_id.is_empty() {
            self.forget(&req.id);
            if !self.sandbox {
                self.power_off().await;
                self.shutdown.notify_one();
            }
        }
        Ok(api::DeleteResponse { pid: 0, ..r })
    }

    async fn exec(&self, c: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        self.check(&req.id)?;
        let guest = self.booted()?;
        let held = Reservation::take(&self.ios, (req.id.clone(), req.exec_id.clone()))?;
        let targets = open_targets(req.terminal, [&req.stdin, &req.stdout, &req.stderr])?;
        let (io, [stdin, stdout, stderr]) = self.streams(&req.id, &req.exec_id, targets)?;
        let fwd = api::ExecProcessRequest { stdin, stdout, stderr, ..req.clone() };
        guest.task.exec(ctx(Some(c.timeout_nano)), &fwd).await?;
        held.fill(io);
        Ok(Empty::new())
    }

    async fn state(&self, c: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        self.check(&req.id)?;
        let bundle = self.with_bundle(&req.id, |_, host| Ok(host.to_string_lossy().into_owned()))?;
        if let (Some(exit), true) = (self.ended(), req.exec_id.is_empty()) {
            let (exit_status, exited_at) = exit_fields(Some(exit));
            let status = Status::STOPPED.into();
            return Ok(api::StateResponse { id: req.id, bundle, status, exit_status, exited_at, ..Default::default() });
        }
        let r = self.booted()?.task.state(ctx(Some(c.timeout_nano)), &req).await?;
        Ok(api::StateResponse { pid: 0, bundle, ..r })
    }

    async fn kill(&self, c: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        self.check(&req.id)?;
        if self.ended().is_some() {
            return Err(to_ttrpc(Code::NotFound, format!("process of container {} already finished", req.id)));
        }
        self.booted()?.task.kill(ctx(Some(c.timeout_nano)), &req).await
    }

    async fn pids(&self, c: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        self.check(&req.id)?;
        if self.ended().is_some() {
            return Ok(api::PidsResponse::default());
        }
        self.booted()?.task.pids(ctx(Some(c.timeout_nano)), &req).await
    }

    async fn pause(&self, c: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        self.check(&req.id)?;
        self.booted()?.task.pause(ctx(Some(c.timeout_nano)), &req).await
    }

    async fn resume(&self, c: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        self.check(&req.id)?;
        self.booted()?.task.resume(ctx(Some(c.timeout_nano)), &req).await
    }

    async fn update(&self, c: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        self.check(&req.id)?;
        let guest = self.booted()?;
        // microvm has no memory or CPU hotplug: limits must fit the VM.
        if req.resources.type_url == berth_shim::LIMITS_TYPE_URL {
            let limits: berth_cgroups::Limits = serde_json::from_slice(&req.resources.value)
                .map_err(|e| to_ttrpc(Code::InvalidArgument, format!("limits: {e}")))?;
            let memory_room = (guest.memory_mib - berth_vm::GUEST_OVERHEAD_MIB.min(guest.memory_mib / 2)) << 20;
            if let Some(m) = limits.memory.filter(|m| *m as u64 > memory_room) {
                return Err(to_ttrpc(
                    Code::FailedPrecondition,
                    format!(
                        "the VM has {} MiB and cannot grow: a memory limit of {m} bytes does not fit",
                        guest.memory_mib
                    ),
                ));
            }
            if let (Some(q), Some(p)) = (limits.cpu_quota, limits.cpu_period.filter(|p| *p > 0))
                && q as u64 > guest.cpus as u64 * p
            {
                return Err(to_ttrpc(
                    Code::FailedPrecondition,
                    format!("the VM has {} vCPUs and cannot grow: a quota of {q}/{p} does not fit", guest.cpus),
                ));
            }
        }
        guest.task.update(ctx(Some(c.timeout_nano)), &req).await
    }

    async fn stats(&self, c: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        self.check(&req.id)?;
        self.booted()?.task.stats(ctx(Some(c.timeout_nano)), &req).await
    }

    /// The host holds a process's stdin (`stdio.rs`): it ends here, and the
    /// guest's once the host's stream closes.
    async fn close_io(&self, _c: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        self.check(&req.id)?;
        let mut ios = self.ios.lock().map_err(|_| to_ttrpc(Code::Internal, "stdio lock poisoned"))?;
        let io = ios
            .get_mut(&(req.id.clone(), req.exec_id.clone()))
            .ok_or_else(|| to_ttrpc(Code::NotFound, format!("no process {:?} in container {}", req.exec_id, req.id)))?;
        if req.stdin {
            io.close_stdin();
        }
        Ok(Empty::new())
    }

    async fn resize_pty(&self, c: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<Empty> {
        self.check(&req.id)?;
        self.booted()?.task.resize_pty(ctx(Some(c.timeout_nano)), &req).await
    }

    async fn checkpoint(&self, _c: &TtrpcContext, _req: api::CheckpointTaskRequest) -> TtrpcResult<Empty> {
        Err(unsupported("checkpointing"))
    }

    async fn shutdown(&self, c: &TtrpcContext, req: api::ShutdownRequest) -> TtrpcResult<Empty> {
        let held = self.bundles.lock().map(|b| b.len()).unwrap_or(0);
        if held > 0 && !req.now {
            return Ok(Empty::new());
        }
        let _ = c;
        self.power_off().await;
        self.shutdown.notify_one();
        Ok(Empty::new())
    }
}
