//! The gRPC front (berth.v1): translates requests into manager calls and
//! errors into statuses, in this one place. No behaviour lives here.

use std::pin::Pin;
use std::sync::Arc;

use berth_api::v1 as pb;
use berth_cgroups::{ContainerStats, Limits};
use berth_model::{Code, ContainerId, ExitStatus, Namespace};
use berth_store::ContainerRecord;
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::control::Attached;
use crate::create::CreateParams;
use crate::error::Error;
use crate::events::{Event, Filter};
use crate::exec::ExecParams;
use crate::logs;
use crate::manager::Manager;
use crate::paging;

pub struct Api {
    pub mgr: Arc<Manager>,
}

/// The one mapping from berth errors to gRPC statuses.
pub fn status(e: Error) -> Status {
    let msg = e.to_string();
    match e.code() {
        Code::InvalidArgument => Status::invalid_argument(msg),
        Code::NotFound => Status::not_found(msg),
        Code::AlreadyExists => Status::already_exists(msg),
        Code::FailedPrecondition => Status::failed_precondition(msg),
        Code::DeadlineExceeded => Status::deadline_exceeded(msg),
        Code::Unavailable => Status::unavailable(msg),
        Code::Internal => Status::internal(msg),
    }
}

/// Runs `work` to its end even if the client hangs up: a start or exec cut
/// off after the shim acted would leave the record behind the shim (no
/// start recorded, an exec with no pid and no exit monitor).
async fn to_the_end<T: Send + 'static>(
    work: impl std::future::Future<Output = crate::error::Result<T>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(work).await.map_err(|e| Status::internal(e.to_string()))?.map_err(status)
}

pub(crate) fn ns(s: &str) -> Result<Namespace, Status> {
    if s.is_empty() {
        return Ok(Namespace::default());
    }
    Namespace::new(s).map_err(|e| status(e.into()))
}

pub(crate) fn key(ns_: &str, id: &str) -> Result<(Namespace, ContainerId), Status> {
    Ok((ns(ns_)?, ContainerId::new(id).map_err(|e| status(e.into()))?))
}

/// An optional sandbox id: empty for none.
pub(crate) fn optional_id(s: &str) -> Result<Option<berth_model::SandboxId>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    berth_model::SandboxId::new(s).map(Some).map_err(|e| status(e.into()))
}

fn exit_pb(e: ExitStatus) -> pb::ExitStatus {
    pb::ExitStatus { code: e.code, exited_at_ns: e.exited_at_ns }
}

pub(crate) fn attachment_pb(a: berth_model::NetworkAttachment) -> pb::NetworkAttachment {
    pb::NetworkAttachment {
        mode: a.mode,
        netns: a.netns,
        interface: a.interface,
        ips: a.ips,
        gateway: a.gateway,
        mac: a.mac,
        ports: a.ports.iter().map(ToString::to_string).collect(),
    }
}

pub(crate) fn container_pb(r: ContainerRecord) -> pb::Container {
    pb::Container {
        namespace: r.namespace.to_string(),
        id: r.id.to_string(),
        state: r.state.to_string(),
        pid: r.pid,
        runtime: r.runtime,
        bundle: r.bundle.to_string_lossy().into_owned(),
        rootfs: r.rootfs.to_string_lossy().into_owned(),
        command: r.command,
        created_at_ns: r.created_at_ns,
        exit: r.exit.map(exit_pb),
        labels: r.labels.into_iter().collect(),
        shim_pid: r.shim.pid,
        cgroup: r.cgroup,
        oom_killed: r.oom_killed,
        restart_policy: r.restart_policy.to_string(),
        restart_count: r.restart_count,
        stopped_by_user: r.stopped_by_user,
        auto_remove: r.auto_remove,
        image: r.image,
        volumes: r.volumes,
        network: r.network.map(attachment_pb),
        sandbox: r.sandbox.map(String::from).unwrap_or_default(),
        restored_from: r.restored_from,
        started_at_ns: r.started_at_ns,
        log_path: if r.cri_log { r.stdout.to_string_lossy().into_owned() } else { String::new() },
        log_max_size: r.log_rotation.map_or(0, |l| l.max_size),
        log_max_files: r.log_rotation.map_or(0, |l| l.max_files),
        vm: r.vm.map(vm_pb),
    }
}

pub(crate) fn vm_pb(v: berth_model::vm::VmInfo) -> pb::VmInfo {
    pb::VmInfo { accel: v.accel, cpus: v.cpus, memory_mib: v.memory_mib }
}

/// A terminal size, if both sides are given and plausible.
fn size(width: u32, height: u32) -> Option<(u32, u32)> {
    (width > 0 && height > 0 && width <= u16::MAX as u32 && height <= u16::MAX as u32).then_some((width, height))
}

fn limits_from_pb(r: pb::ResourceLimits) -> Limits {
    Limits {
        memory: r.memory,
        memory_swap: r.memory_swap,
        cpu_shares: r.cpu_shares,
        cpu_quota: r.cpu_quota,
        cpu_period: r.cpu_period,
        cpuset_cpus: r.cpuset_cpus,
        pids: r.pids,
    }
}

fn stats_pb(ns: &Namespace, id: &ContainerId, s: ContainerStats) -> pb::ContainerStats {
    let c = s.cpu;
    let m = s.memory;
    pb::ContainerStats {
        namespace: ns.to_string(),
        id: id.to_string(),
        timestamp_ns: crate::now_ns(),
        cpu: Some(pb::CpuStats {
            usage_total: c.usage_total,
            usage_user: c.usage_user,
            usage_kernel: c.usage_kernel,
            per_cpu: c.per_cpu,
            throttling_periods: c.throttling_periods,
            throttled_periods: c.throttled_periods,
            throttled_time: c.throttled_time,
        }),
        memory: Some(pb::MemoryStats {
            usage: m.usage,
            limit: m.limit,
            max_usage: m.max_usage,
            cache: m.cache,
            rss: m.rss,
            swap_usage: m.swap_usage,
            swap_limit: m.swap_limit,
            fail_count: m.fail_count,
            inactive_file: m.inactive_file,
            oom_kills: m.oom_kills,
        }),
        pids: Some(pb::PidsStats { current: s.pids.current, limit: s.pids.limit }),
        blkio: s
            .blkio
            .into_iter()
            .map(|b| pb::BlkioEntry { major: b.major, minor: b.minor, op: b.op, bytes: b.bytes })
            .collect(),
        hugetlb: s
            .hugetlb
            .into_iter()
            .map(|h| pb::HugetlbEntry {
                page_size: h.page_size,
                usage: h.usage,
                max_usage: h.max_usage,
                fail_count: h.fail_count,
            })
            .collect(),
        writable_layer: None,
    }
}

fn event_pb(e: Event) -> pb::Event {
    pb::Event {
        seq: e.seq,
        r#type: e.kind.as_str().to_string(),
        namespace: e.namespace.to_string(),
        id: e.id.to_string(),
        timestamp_ns: e.timestamp_ns,
        pid: e.pid,
        exit: e.exit.map(exit_pb),
        exec_id: e.exec_id,
        vm: e.vm.map(vm_pb),
    }
}

pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Api {
    /// Interactive I/O with init (`exec_id` empty) or an exec: `input`
    /// feeds its terminal or stdin FIFO (without a terminal its end closes
    /// the process's stdin); the receiver yields the terminal's output
    /// (nothing without one). Shared by Attach and CRI's streaming.
    async fn attach_input(
        &self,
        ns: berth_model::Namespace,
        id: ContainerId,
        exec_id: String,
        mut input: Pin<Box<dyn futures_util::Stream<Item = Vec<u8>> + Send>>,
        close_stdin: bool,
    ) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        match self.mgr.attach(&ns, &id, &exec_id).await.map_err(status)? {
            Attached::Terminal(conn) => {
                // Init's terminal output: an auto-removal waits for it.
                let follower = exec_id.is_empty().then(|| self.mgr.follow(&ns, &id)).flatten();
                let (mut from_tty, mut to_tty) = conn.into_split();
                tokio::spawn(async move {
                    while let Some(data) = input.next().await {
                        if to_tty.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let _follower = follower;
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = from_tty.read(&mut buf).await {
                        if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Attached::Stdin(mut fifo) => {
                // Output goes to the logs; the output stream ends with the input.
                let mgr = self.mgr.clone();
                tokio::spawn(async move {
                    while let Some(data) = input.next().await {
                        if fifo.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                    drop(fifo);
                    if close_stdin && let Err(e) = mgr.close_stdin(&ns, &id, &exec_id).await {
                        tracing::debug!(%ns, %id, "close stdin: {e}");
                    }
                    drop(tx);
                });
            }
        }
        Ok(rx)
    }
}

#[tonic::async_trait]
impl berth_cri::AttachIo for Api {
    async fn attach_io(
        &self,
        id: &str,
        exec_id: &str,
        input: tokio::sync::mpsc::Receiver<Vec<u8>>,
        close_stdin: bool,
    ) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>, Status> {
        let (ns, id) = key(berth_cri::NAMESPACE, id)?;
        self.attach_input(ns, id, exec_id.to_string(), Box::pin(ReceiverStream::new(input)), close_stdin).await
    }
}

#[tonic::async_trait]
impl pb::containers_server::Containers for Api {
    async fn create(&self, req: Request<pb::CreateRequest>) -> Result<Response<pb::Container>, Status> {
        let r = req.into_inner();
        let (namespace, id) = key(&r.namespace, &r.id)?;
        let params = CreateParams {
            namespace,
            id,
            path: r.path,
            args: r.args,
            env: r.env,
            cwd: r.cwd,
            runtime: r.runtime,
            labels: r.labels.into_iter().collect(),
            start: r.start,
            limits: limits_from_pb(r.resources.unwrap_or_default()),
            create_only: crate::resources::CreateOnly {
                unified: r.unified.into_iter().collect(),
                hugepages: r.hugepage_limits.into_iter().collect(),
            },
            tty: r.tty,
            tty_size: size(r.tty_width, r.tty_height),
            stdin: r.stdin,
            restart: r.restart_policy.parse().map_err(|e: berth_model::ModelError| status(e.into()))?,
            security: crate::confine::Security {
                privileged: r.privileged,
                cap_add: r.cap_add,
                cap_drop: r.cap_drop,
                devices: r.devices,
                seccomp: r.seccomp,
                no_new_privileges: r.no_new_privileges,
                masked_paths: r.masked_paths,
                readonly_paths: r.readonly_paths,
                apparmor: r.apparmor_profile,
            },
            auto_remove: r.auto_remove,
            image: r.image,
            entrypoint: r.entrypoint,
            user: r.user,
            run: crate::mounts::RunOptions {
                volumes: r.volumes,
                tmpfs: r.tmpfs,
                read_only: r.read_only,
                hostname: r.hostname,
                pid: r.pid,
                ipc: r.ipc,
                oom_score_adj: r.oom_score_adj,
            },
            net: crate::network::NetOptions {
                mode: r.network,
                publish: r.publish,
                dns: berth_network::Resolver { servers: r.dns, search: r.dns_search, options: r.dns_options },
                add_hosts: r.add_hosts,
                pin: false,
            },
            sandbox: optional_id(&r.sandbox)?,
            restore: None,
            log_path: (!r.log_path.is_empty()).then(|| std::path::PathBuf::from(&r.log_path)),
            log_bound: (r.log_max_size, r.log_max_files),
            groups: r.groups,
            sysctls: r.sysctls.into_iter().collect(),
            cgroup_parent: r.cgroup_parent,
        };
        let rec = self.mgr.create(params).await.map_err(status)?;
        Ok(Response::new(container_pb(rec)))
    }

    async fn start(&self, req: Request<pb::ContainerRef>) -> Result<Response<pb::Container>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        let mgr = self.mgr.clone();
        let rec = to_the_end(async move { mgr.start(&ns, &id).await }).await?;
        Ok(Response::new(container_pb(rec)))
    }

    async fn get(&self, req: Request<pb::ContainerRef>) -> Result<Response<pb::Container>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        Ok(Response::new(container_pb(self.mgr.get(&ns, &id).map_err(status)?)))
    }

    async fn list(&self, req: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        let r = req.into_inner();
        let filter = if r.all_namespaces { None } else { Some(ns(&r.namespace)?) };
        let after = paging::parse_token(&r.page_token).map_err(status)?;
        let recs = self.mgr.list_after(filter.as_ref(), after.as_ref()).map_err(status)?;
        let mut page = paging::Pager::new(r.page_size);
        for rec in recs {
            let key = (rec.namespace.clone(), rec.id.clone());
            let c = container_pb(rec);
            let size = paging::item_len(&c);
            if !page.push(key, c, size) {
                break;
            }
        }
        let (containers, next_page_token) = page.finish();
        Ok(Response::new(pb::ListResponse { containers, next_page_token }))
    }

    async fn kill(&self, req: Request<pb::KillRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        self.mgr.kill(&ns, &id, &r.exec_id, r.signal, r.all).await.map_err(status)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn stop(&self, req: Request<pb::StopRequest>) -> Result<Response<pb::ExitStatus>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        let timeout =
            r.timeout_seconds.map_or(crate::stop::DEFAULT_STOP_TIMEOUT, |s| std::time::Duration::from_secs(s.into()));
        Ok(Response::new(exit_pb(self.mgr.stop(&ns, &id, timeout).await.map_err(status)?)))
    }

    async fn wait(&self, req: Request<pb::ContainerRef>) -> Result<Response<pb::ExitStatus>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        Ok(Response::new(exit_pb(self.mgr.wait(&ns, &id).await.map_err(status)?)))
    }

    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::ExitStatus>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        Ok(Response::new(exit_pb(self.mgr.delete(&ns, &id, r.force).await.map_err(status)?)))
    }

    async fn pause(&self, req: Request<pb::ContainerRef>) -> Result<Response<pb::Container>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        Ok(Response::new(container_pb(self.mgr.pause(&ns, &id).await.map_err(status)?)))
    }

    async fn resume(&self, req: Request<pb::ContainerRef>) -> Result<Response<pb::Container>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        Ok(Response::new(container_pb(self.mgr.resume(&ns, &id).await.map_err(status)?)))
    }

    async fn top(&self, req: Request<pb::ContainerRef>) -> Result<Response<pb::TopResponse>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        let procs = self.mgr.top(&ns, &id).await.map_err(status)?;
        let processes =
            procs.into_iter().map(|p| pb::Process { pid: p.pid, exec_id: p.exec_id, command: p.command }).collect();
        Ok(Response::new(pb::TopResponse { processes }))
    }

    async fn exec(&self, req: Request<pb::ExecRequest>) -> Result<Response<pb::ExecResponse>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        let params = ExecParams {
            exec_id: r.exec_id,
            args: r.args,
            env: r.env,
            cwd: r.cwd,
            uid: r.uid,
            gid: r.gid,
            tty: r.tty,
            tty_size: size(r.tty_width, r.tty_height),
            stdin: r.stdin,
        };
        let mgr = self.mgr.clone();
        let pid = to_the_end(async move { mgr.exec(&ns, &id, params).await }).await?;
        Ok(Response::new(pb::ExecResponse { pid }))
    }

    async fn exec_wait(&self, req: Request<pb::ExecRef>) -> Result<Response<pb::ExitStatus>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        Ok(Response::new(exit_pb(self.mgr.exec_wait(&ns, &id, &r.exec_id).await.map_err(status)?)))
    }

    async fn exec_delete(&self, req: Request<pb::ExecRef>) -> Result<Response<pb::ExitStatus>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        Ok(Response::new(exit_pb(self.mgr.exec_delete(&ns, &id, &r.exec_id).await.map_err(status)?)))
    }

    async fn stats(&self, req: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        let r = req.into_inner();
        let ns = ns(&r.namespace)?;
        let ids =
            r.ids.into_iter().map(ContainerId::new).collect::<Result<Vec<_>, _>>().map_err(|e| status(e.into()))?;
        let after = paging::parse_token(&r.page_token).map_err(status)?.map(|(_, id)| id);
        let mut page = paging::Pager::new(r.page_size);
        let add = |id: ContainerId, s: ContainerStats| {
            let item = stats_pb(&ns, &id, s);
            let size = paging::item_len(&item);
            page.push((ns.clone(), id), item, size)
        };
        self.mgr.stats_page(&ns, ids, after.as_ref(), add).await.map_err(status)?;
        let (mut stats, next_page_token) = page.finish();
        if r.writable_layer {
            let (mgr, ns) = (self.mgr.clone(), ns.clone());
            let mountpoint = self.mgr.images.snapshots.root().to_string_lossy().into_owned();
            stats = tokio::task::spawn_blocking(move || {
                for s in &mut stats {
                    let usage = ContainerId::new(&s.id).ok().and_then(|id| mgr.writable_usage(&ns, &id));
                    s.writable_layer = usage.map(|u| pb::WritableLayer {
                        used_bytes: u.bytes,
                        inodes_used: u.inodes,
                        mountpoint: mountpoint.clone(),
                    });
                }
                stats
            })
            .await
            .map_err(|e| Status::internal(format!("writable layer usage: {e}")))?;
        }
        Ok(Response::new(pb::StatsResponse { stats, next_page_token }))
    }

    async fn update(&self, req: Request<pb::UpdateRequest>) -> Result<Response<pb::Container>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        let limits = limits_from_pb(r.resources.unwrap_or_default());
        Ok(Response::new(container_pb(self.mgr.update_limits(&ns, &id, limits).await.map_err(status)?)))
    }

    type AttachStream = BoxStream<pb::AttachOutput>;

    async fn attach(
        &self,
        req: Request<tonic::Streaming<pb::AttachRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut input = req.into_inner();
        let first = input
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("attach needs a first message naming the process"))?;
        let (ns, id) = key(&first.namespace, &first.id)?;
        let rest = futures_util::stream::unfold(input, |mut s| async move {
            s.message().await.ok().flatten().map(|m| (m.input, s))
        });
        let all = futures_util::stream::once(async move { first.input }).chain(rest);
        let output = self.attach_input(ns, id, first.exec_id, Box::pin(all), true).await?;
        let output = tokio_stream::StreamExt::map(ReceiverStream::new(output), |data| Ok(pb::AttachOutput { data }));
        Ok(Response::new(Box::pin(output)))
    }

    async fn resize(&self, req: Request<pb::ResizeRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        self.mgr.resize(&ns, &id, &r.exec_id, r.width, r.height).await.map_err(status)?;
        Ok(Response::new(pb::Empty {}))
    }

    type LogsStream = BoxStream<pb::LogChunk>;

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let r = req.into_inner();
        let (ns, id) = key(&r.namespace, &r.id)?;
        let rec = self.mgr.get(&ns, &id).map_err(status)?;
        let mut follower = None;
        let filter =
            berth_shim::crilog::Filter { since_ns: r.since_ns, until_ns: r.until_ns, timestamps: r.timestamps };
        let mut opts = logs::Options { follow: None, from_end: r.from_end, tail: r.tail, filter };
        let rx = if r.exec_id.is_empty() {
            opts.follow = if r.follow { self.mgr.entry(&ns, &id).ok().map(|e| e.exit.subscribe()) } else { None };
            follower = r.follow.then(|| self.mgr.follow(&ns, &id)).flatten();
            logs::stream(logs::LogFormat::of(&rec), rec.stdout, rec.stderr, opts)
        } else {
            let entry = self.mgr.entry(&ns, &id).map_err(status)?;
            let info = self.mgr.exec_info(&entry, &r.exec_id).map_err(status)?;
            opts.follow = r.follow.then(|| info.exit.subscribe());
            logs::stream(info.log, info.stdout.clone(), info.stderr.clone(), opts)
        }
        .map_err(status)?;
        let out = tokio_stream::StreamExt::map(ReceiverStream::new(rx), move |(s, data)| {
            // Released when the client is done with the stream.
            let _ = &follower;
            let stream = match s {
                logs::Stream::Stdout => pb::Stream::Stdout,
                logs::Stream::Stderr => pb::Stream::Stderr,
            };
            Ok(pb::LogChunk { stream: stream as i32, data })
        });
        Ok(Response::new(Box::pin(out)))
    }
}

#[tonic::async_trait]
impl pb::events_server::Events for Api {
    type SubscribeStream = BoxStream<pb::Event>;

    async fn subscribe(&self, req: Request<pb::SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = req.into_inner();
        let parse = |e: berth_model::ModelError| status(e.into());
        let filter = Filter {
            namespace: if r.namespace.is_empty() { None } else { Some(ns(&r.namespace)?) },
            kinds: r.types.iter().map(|t| t.parse()).collect::<Result<_, _>>().map_err(parse)?,
            id: if r.id.is_empty() { None } else { Some(ContainerId::new(&r.id).map_err(parse)?) },
        };
        if r.no_follow && r.since.is_none() {
            return Err(Status::invalid_argument("no_follow needs since: there is nothing to replay"));
        }
        let rx = crate::events::stream(&self.mgr, filter, r.since, !r.no_follow).map_err(status)?;
        let out = tokio_stream::StreamExt::map(ReceiverStream::new(rx), |item| item.map(event_pb).map_err(status));
        Ok(Response::new(Box::pin(out)))
    }
}
