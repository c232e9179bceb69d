//! Prometheus metrics (SPEC B30, issue 17 item 1), in the OpenMetrics text
//! format (prometheus-client), on `--metrics-address`: a loopback TCP
//! address or a unix socket path (mode 0600); off by default.
//!
//! A scrape reads the records (containers by namespace and state,
//! sandboxes), the event log's sequence number, berthd's own process
//! figures and, with `--metrics-per-container`, each running container's
//! cgroup figures; counters of events by type and the phase histograms are
//! kept as they happen. Shims' memory is sampled in the background every
//! [`SHIM_SAMPLE`], never on a scrape. No lock is held across a shim call:
//! a scrape calls no shim.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use berth_model::State;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

use crate::manager::Manager;

/// How often shims' memory is sampled.
const SHIM_SAMPLE: Duration = Duration::from_secs(30);
/// How long a scrape is served again instead of made anew.
const SCRAPE_REUSE: Duration = Duration::from_secs(1);

type Labels = Vec<(&'static str, String)>;

/// What is counted as it happens, and the last shim sample.
pub struct Metrics {
    /// Events by type (start, exit, oom, restart, …).
    events: Family<Labels, Counter>,
    shims: AtomicU64,
    shims_rss: AtomicU64,
    shims_pss: AtomicU64,
    /// Whether scrapes include each running or paused container's figures.
    pub per_container: bool,
    /// CRI requests' durations by method.
    pub cri_requests: crate::timed::RequestHistograms,
    /// The last scrape, and when it was made.
    last: tokio::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            events: Family::default(),
            shims: AtomicU64::default(),
            shims_rss: AtomicU64::default(),
            shims_pss: AtomicU64::default(),
            per_container: false,
            cri_requests: crate::timed::histograms(),
            last: Default::default(),
        }
    }
}

/// berthd's CPU time (user and system) in seconds, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let fields = crate::control::stat_fields("self");
    // utime and stime are fields 14 and 15 (11 and 12 after the name).
    let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    ticks as f64 / hz
}

/// Where metrics are served.
pub enum Address {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl Address {
    /// A loopback `IP:PORT` or an absolute unix socket path.
    pub fn parse(s: &str) -> Result<Address, String> {
        if s.starts_with('/') {
            return Ok(Address::Unix(PathBuf::from(s)));
        }
        let addr: std::net::SocketAddr =
            s.parse().map_err(|_| format!("--metrics-address {s:?}: not IP:PORT nor an absolute socket path"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("--metrics-address {s}: must be a loopback address (metrics name every container)"));
        }
        Ok(Address::Tcp(addr))
    }
}

/// Bytes of a `Key: N kB` line of a /proc status-like file.
fn kb_field(text: &str, key: &str) -> u64 {
    let line = text.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_default();
    line.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0) * 1024
}

fn gauge(value: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    g
}

impl Manager {
    /// Counts events as they are published, and samples shims' memory.
    pub(crate) fn start_metrics(self: &Arc<Self>) {
        // Live events from now on, caught up from the log after a burst.
        match crate::events::stream(self, crate::events::Filter::default(), None, true) {
            Ok(mut rx) => {
                let mgr = self.clone();
                tokio::spawn(async move {
                    loop {
                        match rx.recv().await {
                            Some(Ok(ev)) => {
                                mgr.metrics.events.get_or_create(&vec![("type", ev.kind.as_str().to_string())]).inc();
                            }
                            Some(Err(e)) => return tracing::warn!("events are no longer counted: {e}"),
                            None => return,
                        }
                    }
                });
            }
            Err(e) => tracing::warn!("events are not counted: {e}"),
        }
        let mgr = self.clone();
        tokio::spawn(async move {
            loop {
                let m = mgr.clone();
                let _ = tokio::task::spawn_blocking(move || m.sample_shims()).await;
                tokio::time::sleep(SHIM_SAMPLE).await;
            }
        });
    }

    /// Shims of records and sandboxes, and their resident and proportional
    /// memory (smaps_rollup).
    fn sample_shims(&self) {
        let mut pids: Vec<u32> = self.store.list(None).unwrap_or_default().iter().map(|r| r.shim.pid).collect();
        pids.extend(self.store.list_sandboxes(None).unwrap_or_default().iter().map(|s| s.shim.pid));
        pids.retain(|p| *p != 0);
        pids.sort_unstable();
        pids.dedup();
        let (mut count, mut rss, mut pss) = (0, 0, 0);
        for pid in pids {
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else { continue };
            count += 1;
            rss += kb_field(&text, "Rss:");
            pss += kb_field(&text, "Pss:");
        }
        self.metrics.shims.store(count, Ordering::Relaxed);
        self.metrics.shims_rss.store(rss, Ordering::Relaxed);
        self.metrics.shims_pss.store(pss, Ordering::Relaxed);
    }

    /// A scrape: one at a time, and one less than [`SCRAPE_REUSE`] old is
    /// served again, so scrapers cannot make berthd read every record and
    /// cgroup over and over.
    async fn scraped(self: &Arc<Self>) -> Result<String, String> {
        let mut last = self.metrics.last.lock().await;
        if let Some((_, text)) = last.as_ref().filter(|(at, _)| at.elapsed() < SCRAPE_REUSE) {
            return Ok(text.clone());
        }
        let mgr = self.clone();
        let text = tokio::task::spawn_blocking(move || mgr.scrape()).await.map_err(|e| e.to_string())??;
        *last = Some((std::time::Instant::now(), text.clone()));
        Ok(text)
    }

    /// One scrape, in the OpenMetrics text format (blocking: reads the
    /// store, /proc and, per container, cgroup files).
    fn scrape(&self) -> Result<String, String> {
        let mut reg = Registry::with_prefix("berth");
        let recs = self.store.list(None).map_err(|e| e.to_string())?;
        let containers: Family<Labels, Gauge> = Family::default();
        let mut by_state: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
        for r in &recs {
            *by_state.entry((r.namespace.to_string(), r.state.as_str())).or_default() += 1;
        }
        for ((ns, state), n) in by_state {
            containers.get_or_create(&vec![("namespace", ns), ("state", state.to_string())]).set(n);
        }
        reg.register("containers", "Containers by namespace and state", containers);
        let sandboxes = self.store.list_sandboxes(None).map_err(|e| e.to_string())?.len() as u64;
        reg.register("sandboxes", "Sandboxes", gauge(sandboxes));
        reg.register("events", "Events published, by type", self.metrics.events.clone());
        let seq = self.store.last_seq().map_err(|e| e.to_string())?;
        reg.register("event_log_sequence", "Sequence number of the last event in the event log", gauge(seq));
        let held = self.store.event_count().map_err(|e| e.to_string())?;
        reg.register("event_log_events", "Events the event log holds (older ones are pruned)", gauge(held));
        let store_bytes = std::fs::metadata(self.cfg.db_path()).map_or(0, |m| m.len());
        reg.register("store_bytes", "Size of the metadata store (events included)", gauge(store_bytes));
        reg.register(
            "phase_duration_seconds",
            "Durations of the phases of create, start, exit and delete",
            self.phases.histograms.clone(),
        );
        let m = &self.metrics;
        reg.register("shims", "Shim processes (sampled)", gauge(m.shims.load(Ordering::Relaxed)));
        reg.register("shims_resident_bytes", "Shims' total RSS (sampled)", gauge(m.shims_rss.load(Ordering::Relaxed)));
        reg.register(
            "shims_proportional_bytes",
            "Shims' total PSS (sampled)",
            gauge(m.shims_pss.load(Ordering::Relaxed)),
        );
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        reg.register("process_resident_bytes", "berthd's resident memory", gauge(kb_field(&status, "VmRSS:")));
        let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
        reg.register("process_open_fds", "berthd's open file descriptors", gauge(fds));
        let cpu = prometheus_client::metrics::counter::ConstCounter::new(cpu_seconds());
        reg.register("process_cpu_seconds", "berthd's CPU time, user and system", cpu);
        reg.register("image_pulls", "Image pulls, by result", self.images.pulls.clone());
        reg.register("image_pull_bytes", "Bytes of layers downloaded by pulls", self.images.pulled_bytes.clone());
        reg.register("cri_request_duration_seconds", "CRI requests' durations, by method", m.cri_requests.clone());
        if m.per_container {
            self.register_per_container(&mut reg, &recs);
        }
        let mut out = String::new();
        encode(&mut out, &reg).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// CPU, memory and process count of each running or paused container.
    fn register_per_container(&self, reg: &mut Registry, recs: &[berth_store::ContainerRecord]) {
        let (cpu, memory, pids): (Family<Labels, Gauge>, Family<Labels, Gauge>, Family<Labels, Gauge>) =
            Default::default();
        for r in recs.iter().filter(|r| matches!(r.state, State::Running | State::Paused)) {
            let Some(u) = self.cgroups.usage(&r.cgroup) else { continue };
            let labels = vec![("namespace", r.namespace.to_string()), ("id", r.id.to_string())];
            cpu.get_or_create(&labels).set(i64::try_from(u.cpu_ns / 1000).unwrap_or(i64::MAX));
            memory.get_or_create(&labels).set(i64::try_from(u.memory).unwrap_or(i64::MAX));
            pids.get_or_create(&labels).set(i64::try_from(u.pids).unwrap_or(i64::MAX));
        }
        reg.register("container_cpu_microseconds", "CPU time of a running container", cpu);
        reg.register("container_memory_bytes", "Memory usage of a running container", memory);
        reg.register("container_pids", "Processes of a running container", pids);
    }

    /// Serves GET /metrics on `addr` until the returned task is aborted.
    pub(crate) async fn serve_metrics(self: &Arc<Self>, addr: Address) -> Result<Serving, String> {
        let mgr = self.clone();
        let handle = move |req: Request<hyper::body::Incoming>| {
            let mgr = mgr.clone();
            async move {
                if req.uri().path() != "/metrics" {
                    return Ok::<_, Infallible>(reply(StatusCode::NOT_FOUND, "GET /metrics\n".into()));
                }
                Ok(match mgr.scraped().await {
                    Ok(text) => reply(StatusCode::OK, text),
                    Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e),
                })
            }
        };
        match addr {
            Address::Tcp(a) => {
                let listener =
                    tokio::net::TcpListener::bind(a).await.map_err(|e| format!("--metrics-address {a}: {e}"))?;
                tracing::info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving metrics");
                Ok(Serving { task: accepting(TcpListenerStream::new(listener), handle), socket: None })
            }
            Address::Unix(path) => {
                // Mode 0600, a live socket of another daemon refused, only a
                // stale one replaced, and removed only if still ours.
                let (listener, bound) = crate::guard::bind_socket(&path)
                    .await
                    .map_err(|e| format!("--metrics-address {}: {e}", path.display()))?;
                tracing::info!(socket = %path.display(), "serving metrics");
                Ok(Serving { task: accepting(UnixListenerStream::new(listener), handle), socket: Some(bound) })
            }
        }
    }
}

/// Serves each connection `incoming` yields; an accept that fails (out of
/// descriptors, say) is logged and retried after a pause instead of ending
/// the server.
fn accepting<S, IO, F, Fut>(mut incoming: S, handle: F) -> tokio::task::JoinHandle<()>
where
    S: futures_util::Stream<Item = std::io::Result<IO>> + Unpin + Send + 'static,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    tokio::spawn(async move {
        while let Some(conn) = futures_util::StreamExt::next(&mut incoming).await {
            match conn {
                Ok(conn) => serve_conn(conn, handle.clone()),
                Err(e) => {
                    tracing::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
}

/// The metrics server: its task, and the socket file it removes when
/// dropped (at exit, or when a later startup step fails).
pub struct Serving {
    task: tokio::task::JoinHandle<()>,
    socket: Option<crate::guard::BoundSocket>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(s) = self.socket.take() {
            s.remove();
        }
    }
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

/// One HTTP/1 connection, with a deadline for its request head.
fn serve_conn<IO, F, Fut>(conn: IO, handle: F)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    tokio::spawn(async move {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .serve_connection(hyper_util::rt::TokioIo::new(conn), hyper::service::service_fn(handle));
        let _ = conn.await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_loopback_or_a_socket_path() {
        assert!(matches!(Address::parse("127.0.0.1:9100"), Ok(Address::Tcp(_))));
        assert!(matches!(Address::parse("[::1]:9100"), Ok(Address::Tcp(_))));
        assert!(matches!(Address::parse("/run/berth/metrics.sock"), Ok(Address::Unix(_))));
        for bad in ["0.0.0.0:9100", "10.1.2.3:80", "metrics.sock", "localhost:9100", ""] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kilobyte_fields_read_as_bytes() {
        let text = "Rss:                1234 kB\nPss:                 100 kB\n";
        assert_eq!(
            (kb_field(text, "Rss:"), kb_field(text, "Pss:"), kb_field(text, "Swap:")),
            (1234 * 1024, 102_400, 0)
        );
    }
}
