//! Task events for containerd (a shim containerd started; berthd watches
//! its shims itself and gets none): each event is wrapped in an envelope
//! and forwarded, in order, to the events service on containerd's ttrpc
//! socket (`TTRPC_ADDRESS`), as containerd's own shims do. A containerd
//! restart only delays delivery: the sender reconnects and retries.

use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_cgroups::OomWatch;
use berth_model::ExitStatus;
use containerd_shim_protos::api::CreateTaskRequest;
use containerd_shim_protos::events::task::{TaskCreate, TaskExit, TaskIO, TaskOOM};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::EventsClient;
use containerd_shim_protos::topics::{TASK_CREATE_EVENT_TOPIC, TASK_EXIT_EVENT_TOPIC, TASK_OOM_EVENT_TOPIC};
use containerd_shim_protos::ttrpc::{asynchronous::Client, context};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::output::register;
use crate::process::now_ns;
use crate::service::exit_fields;
use crate::tasks::Shim;

/// How long one event is retried while containerd is away (restarting).
const RETRY_FOR: Duration = Duration::from_secs(60);
/// Deadline of one Forward call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a shim about to exit waits for its last events to go out.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends events to containerd in the order they were published.
pub struct Publisher {
    namespace: String,
    queue: Mutex<Option<mpsc::UnboundedSender<Envelope>>>,
    sender: Mutex<Option<JoinHandle<()>>>,
}

impl Publisher {
    /// Starts the sender for containerd's ttrpc socket at `address`
    /// (`unix://` optional).
    pub fn spawn(address: &str, namespace: String) -> Publisher {
        let address = if address.starts_with("unix://") { address.to_string() } else { format!("unix://{address}") };
        let (tx, rx) = mpsc::unbounded_channel();
        let sender = tokio::spawn(send_all(address, rx));
        Publisher { namespace, queue: Mutex::new(Some(tx)), sender: Mutex::new(Some(sender)) }
    }

    /// Queues `event` under `topic`; never blocks.
    pub fn publish<M: berth_shim::Packed>(&self, topic: &str, event: &M) {
        let any = match berth_shim::any_of(event) {
            Ok(any) => any,
            Err(e) => {
                tracing::warn!(topic, "cannot encode event: {e}");
                return;
            }
        };
        let envelope = Envelope {
            timestamp: Some(berth_shim::timestamp(now_ns())).into(),
            namespace: self.namespace.clone(),
            topic: topic.to_string(),
            event: Some(any).into(),
            ..Default::default()
        };
        if let Some(q) = self.queue.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = q.send(envelope);
        }
    }

    /// Closes the queue and waits (a while) until what is in it was sent.
    pub async fn flush(&self) {
        drop(self.queue.lock().unwrap_or_else(|p| p.into_inner()).take());
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(sender) = sender {
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, sender).await;
        }
    }
}

async fn send_all(address: String, mut rx: mpsc::UnboundedReceiver<Envelope>) {
    let mut client: Option<EventsClient> = None;
    while let Some(envelope) = rx.recv().await {
        let req = ForwardRequest { envelope: Some(envelope).into(), ..Default::default() };
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let mut pause = Duration::from_millis(50);
        loop {
            if client.is_none() {
                client = Client::connect(&address).await.ok().map(EventsClient::new);
            }
            if let Some(c) = &client {
                match c.forward(context::with_timeout(CALL_TIMEOUT.as_nanos() as i64), &req).await {
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(topic = %req.envelope.topic, "forward event: {e}");
                        client = None;
                    }
                }
            }
            if tokio::time::Instant::now() + pause > deadline {
                tracing::warn!(topic = %req.envelope.topic, "event dropped: containerd unreachable at {address}");
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

impl Shim {
    /// Publishes a task event to containerd, if containerd started us.
    pub(crate) fn publish<M: berth_shim::Packed>(&self, topic: &str, event: &M) {
        if let Some(p) = &self.events {
            p.publish(topic, event);
        }
    }

    /// What a process's exit watcher does for containerd: publish the
    /// OOM kill that ended it, if any (init only: `oom`), then TaskExit
    /// (after the exit was recorded, before any waiter sees it).
    pub(crate) fn exit_event(
        &self,
        container_id: &str,
        exec_id: &str,
        pid: u32,
        oom: Option<Oom>,
    ) -> impl FnOnce(&ExitStatus) + Send + 'static {
        let (events, container_id) = (self.events.clone(), container_id.to_string());
        let id = if exec_id.is_empty() { container_id.clone() } else { exec_id.to_string() };
        move |status: &ExitStatus| {
            let Some(p) = events else { return };
            if let Some(oom) = oom {
                oom.publish_new(&p);
            }
            let (exit_status, exited_at) = exit_fields(Some(*status));
            let exit = TaskExit { container_id, id, pid, exit_status, exited_at, ..Default::default() };
            p.publish(TASK_EXIT_EVENT_TOPIC, &exit);
        }
    }

    /// Publishes TaskCreate.
    pub(crate) fn created(&self, req: &CreateTaskRequest, pid: u32) {
        let io = TaskIO {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            ..Default::default()
        };
        let created = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(io).into(),
            pid,
            ..Default::default()
        };
        self.publish(TASK_CREATE_EVENT_TOPIC, &created);
    }

    /// Under containerd: publishes a TaskOOM for every OOM kill in the
    /// container's memory cgroup until the cgroup is gone.
    pub(crate) fn watch_oom(&self, id: &str, cgroup: Option<&str>) -> Option<Oom> {
        let (Some(events), Some(h), Some(cgroup)) = (&self.events, &self.cgroups, cgroup) else { return None };
        let watch = OomWatch::new(h, cgroup).inspect_err(|e| tracing::warn!(id, "no OOM events: {e}")).ok()?;
        // Readiness comes through a duplicate of the watch's descriptor, so
        // the exit watcher can read the watch too (see `exit_event`).
        let afd = watch
            .as_fd()
            .try_clone_to_owned()
            .and_then(register)
            .inspect_err(|e| tracing::warn!(id, "no OOM events: {e}"))
            .ok()?;
        let oom = Oom { watch: Arc::new(Mutex::new(watch)), container_id: id.to_string() };
        let (events, watcher) = (events.clone(), oom.clone());
        tokio::spawn(async move {
            loop {
                let Ok(mut guard) = afd.readable().await else { return };
                guard.clear_ready();
                if !watcher.publish_new(&events) {
                    return;
                }
            }
        });
        Some(oom)
    }
}

/// A container's OOM watch, shared by its watcher task and init's exit.
#[derive(Clone)]
pub(crate) struct Oom {
    watch: Arc<Mutex<OomWatch>>,
    container_id: String,
}

impl Oom {
    /// Publishes a TaskOOM if there were OOM kills since the last look;
    /// false once the cgroup is gone.
    fn publish_new(&self, events: &Publisher) -> bool {
        let kills = self.watch.lock().unwrap_or_else(|p| p.into_inner()).read();
        if kills.as_ref().is_ok_and(|n| *n > 0) {
            let event = TaskOOM { container_id: self.container_id.clone(), ..Default::default() };
            events.publish(TASK_OOM_EVENT_TOPIC, &event);
        }
        kills.is_ok()
    }
}
