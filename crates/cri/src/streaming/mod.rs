//! The streaming server behind CRI's Exec, Attach and PortForward: those
//! calls only return a URL (`http://127.0.0.1:PORT/{exec|attach|portforward}/TOKEN`);
//! the client then upgrades an HTTP request to it to SPDY/3.1 and speaks
//! Kubernetes' `v4.channel.k8s.io` (exec, attach) or `portforward.k8s.io`
//! protocol. A token is single-use and expires after a minute, like
//! kubelet's. The session layer here reads frames, answers each new stream
//! with SYN_REPLY (spdystream drops data on a stream not replied to) and
//! hands streams and data to the protocol (`remotecommand.rs`,
//! `portforward.rs`).

mod portforward;
mod remotecommand;
mod websocket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;

use crate::spdy::{self, Decoder, Encoder, Frame};
use crate::{Backend, lock};

/// How long a URL stays valid.
const TOKEN_TTL: Duration = Duration::from_secs(60);
/// How long a client may take to open the streams its request needs.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to send its request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 256;
const EXEC_PROTOCOL: &str = "v4.channel.k8s.io";
const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// What a token was issued for.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A new process in a container (or init, when `exec` is `None`).
    Process {
        container: String,
        exec: Option<Vec<String>>,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        tty: bool,
        /// An attach's end of input ends the container's (CRI `stdin_once`).
        stdin_once: bool,
    },
    /// Ports of a pod: its network namespace (empty: the host's).
    Ports { netns: String },
}

impl Target {
    fn path(&self) -> &'static str {
        match self {
            Target::Process { exec: Some(_), .. } => "exec",
            Target::Process { exec: None, .. } => "attach",
            Target::Ports { .. } => "portforward",
        }
    }
}

/// Issued tokens and where the server listens.
#[derive(Default)]
pub(crate) struct Tokens {
    issued: Mutex<HashMap<String, (Instant, Target)>>,
    base: std::sync::OnceLock<String>,
}

impl Tokens {
    /// A single-use URL for `target`.
    pub fn issue(&self, target: Target) -> Result<String, tonic::Status> {
        let base = self.base.get().ok_or_else(|| tonic::Status::unavailable("the streaming server is not running"))?;
        let token = berth_model::random_hex(16).map_err(|e| tonic::Status::internal(format!("token: {e}")))?;
        let path = target.path();
        let mut issued = lock(&self.issued);
        issued.retain(|_, (at, _)| at.elapsed() < TOKEN_TTL);
        issued.insert(token.clone(), (Instant::now(), target));
        Ok(format!("{base}/{path}/{token}"))
    }

    /// The target of a valid token, which is used up.
    fn redeem(&self, path: &str, token: &str) -> Option<Target> {
        let (at, target) = lock(&self.issued).remove(token)?;
        (at.elapsed() < TOKEN_TTL && target.path() == path).then_some(target)
    }
}

impl<B: Backend> crate::Cri<B> {
    /// Exec and Attach: a URL for a process of a running container.
    pub(crate) async fn process_url(
        &self,
        container: &str,
        exec: Option<Vec<String>>,
        (stdin, stdout, stderr, tty): (bool, bool, bool, bool),
    ) -> Result<String, tonic::Status> {
        if exec.as_ref().is_some_and(Vec::is_empty) {
            return Err(crate::invalid("cmd is required"));
        }
        if !(stdin || stdout || stderr) {
            return Err(crate::invalid("one of stdin, stdout and stderr must be set"));
        }
        if tty && stderr {
            return Err(crate::invalid("with a tty, stderr goes to stdout: stderr cannot be set"));
        }
        let c = self.ctr(container).await?;
        if c.state() != crate::cri::ContainerState::ContainerRunning {
            return Err(tonic::Status::failed_precondition(format!("container {} is not running", c.c.id)));
        }
        let stdin_once = c.meta.stdin_once;
        self.tokens.issue(Target::Process { container: c.c.id, exec, stdin, stdout, stderr, tty, stdin_once })
    }

    /// PortForward: a URL for the ports of a ready pod.
    pub(crate) async fn port_forward_url(&self, pod: &str) -> Result<String, tonic::Status> {
        let pod = self.pod(pod).await?;
        if pod.state() != crate::cri::PodSandboxState::SandboxReady {
            return Err(tonic::Status::failed_precondition(format!("pod sandbox {} is not ready", pod.sb.id)));
        }
        // A VM pod's ports are the guest's: its namespace's loopback on the
        // host does not reach them.
        if pod.sb.vm.is_some() {
            return Err(tonic::Status::failed_precondition(format!(
                "pod sandbox {} runs in a VM: port forwarding into a VM is not supported yet",
                pod.sb.id
            )));
        }
        let netns = pod.sb.network.map(|n| n.netns).unwrap_or_default();
        self.tokens.issue(Target::Ports { netns })
    }

    /// Serves streaming on `addr` (loopback; port 0 picks one) until the
    /// returned task is aborted; its address is what URLs name.
    pub async fn serve_streaming(self: &Arc<Self>, addr: SocketAddr) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let _ = self.tokens.base.set(format!("http://{local}"));
        let cri = self.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        Ok(tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let tcp = match listener.accept().await {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // Out of descriptors, say: no busy loop.
                        tracing::warn!("streaming server: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let cri = cri.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let svc = hyper::service::service_fn(move |req| {
                        let cri = cri.clone();
                        async move { Ok::<_, std::convert::Infallible>(cri.upgrade(req)) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(tcp), svc);
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!("streaming connection: {e}");
                    }
                });
            }
        }))
    }

    /// Runs a session over either transport until it ends, then closes it.
    async fn serve_session(self: &Arc<Self>, session: Arc<Session>, events: mpsc::Receiver<Event>, target: Target) {
        let done = match target {
            Target::Ports { netns } => portforward::serve(session.clone(), events, netns).await,
            process => remotecommand::serve(self, session.clone(), events, process).await,
        };
        if let Err(e) = done {
            tracing::debug!("streaming session: {e}");
        }
        session.close().await;
    }

    /// Answers the upgrade request and starts the session behind it.
    fn upgrade(self: &Arc<Self>, mut req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let refuse = |code: StatusCode, msg: String| {
            let mut r = Response::new(Full::new(Bytes::from(msg)));
            *r.status_mut() = code;
            r
        };
        let mut parts = req.uri().path().trim_start_matches('/').splitn(2, '/');
        let (path, token) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let Some(target) = self.tokens.redeem(path, token) else {
            return refuse(StatusCode::NOT_FOUND, "unknown or expired streaming URL".into());
        };
        let upgrade = req.headers().get(hyper::header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if upgrade.eq_ignore_ascii_case("websocket") {
            return match websocket::handshake(&req, &target) {
                Ok((response, protocol, ports)) => {
                    let cri = self.clone();
                    tokio::spawn(async move {
                        match hyper::upgrade::on(&mut req).await {
                            Ok(upgraded) => {
                                let (events, session) = websocket::start(TokioIo::new(upgraded), &target, &ports).await;
                                tracing::debug!(%protocol, "a WebSocket streaming session");
                                cri.serve_session(session, events, target).await;
                            }
                            Err(e) => tracing::debug!("streaming upgrade: {e}"),
                        }
                    });
                    response
                }
                Err((code, msg)) => refuse(code, msg),
            };
        }
        if !upgrade.eq_ignore_ascii_case("SPDY/3.1") {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("upgrade to SPDY/3.1 or websocket expected, not {upgrade:?}"),
            );
        }
        let wanted = if matches!(target, Target::Ports { .. }) { PORT_FORWARD_PROTOCOL } else { EXEC_PROTOCOL };
        let offered: Vec<String> = req
            .headers()
            .get_all("X-Stream-Protocol-Version")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
            .collect();
        if !offered.iter().any(|p| p == wanted) {
            return refuse(StatusCode::FORBIDDEN, format!("protocol {wanted} required; offered {offered:?}"));
        }
        let cri = self.clone();
        tokio::spawn(async move {
            match hyper::upgrade::on(&mut req).await {
                Ok(upgraded) => {
                    let (events, session) = Session::start(TokioIo::new(upgraded));
                    cri.serve_session(session, events, target).await;
                }
                Err(e) => tracing::debug!("streaming upgrade: {e}"),
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("Upgrade"));
        h.insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static("SPDY/3.1"));
        h.insert("X-Stream-Protocol-Version", hyper::header::HeaderValue::from_static(wanted));
        r
    }
}

/// What the peer did on the connection.
#[derive(Debug)]
pub(crate) enum Event {
    /// A new stream, already replied to.
    Stream {
        id: u32,
        headers: spdy::Headers,
    },
    Data {
        id: u32,
        data: Vec<u8>,
    },
    /// The peer will send nothing more on the stream (FIN or reset).
    End {
        id: u32,
    },
}

type Io = TokioIo<hyper::upgrade::Upgraded>;

/// How a session sends.
enum Transport {
    Spdy(tokio::sync::Mutex<(WriteHalf<Io>, Encoder)>),
    /// WebSocket: a stream's id is its channel number, sent as each
    /// message's first byte.
    WebSocket(tokio::sync::Mutex<websocket::Sink>),
}

/// The sending side of a connection, shared by the protocol's tasks.
pub(crate) struct Session {
    out: Transport,
    /// Streams already ended on our side (a second FIN is not sent).
    closed: Mutex<std::collections::HashSet<u32>>,
    /// The task reading the connection, stopped when the session ends.
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Session {
    /// Whether it runs over WebSocket (whose port-forwards end with their
    /// connections: no stream opens later).
    fn is_websocket(&self) -> bool {
        matches!(self.out, Transport::WebSocket(_))
    }

    /// Starts reading the connection; events arrive on the receiver until
    /// the peer is gone.
    fn start(io: Io) -> (mpsc::Receiver<Event>, Arc<Session>) {
        let (read, write) = tokio::io::split(io);
        let session = Arc::new(Session::new(Transport::Spdy(tokio::sync::Mutex::new((write, Encoder::default())))));
        // Frames are at most 1 MiB: 16 queued bound what one peer holds.
        let (tx, rx) = mpsc::channel(16);
        *lock(&session.reader) = Some(tokio::spawn(read_loop(read, Arc::downgrade(&session), tx)));
        (rx, session)
    }

    fn new(out: Transport) -> Session {
        Session { out, closed: Mutex::default(), reader: Mutex::default() }
    }

    /// Sends a SPDY frame (nothing on a WebSocket).
    pub async fn send(&self, frame: &Frame) -> std::io::Result<()> {
        let Transport::Spdy(writer) = &self.out else { return Ok(()) };
        let mut w = writer.lock().await;
        let (io, enc) = &mut *w;
        let bytes = enc.encode(frame)?;
        io.write_all(&bytes).await?;
        io.flush().await
    }

    /// Sends `data` on stream `id`, in pieces of at most 32 KiB.
    pub async fn data(&self, id: u32, data: &[u8]) -> std::io::Result<()> {
        for chunk in data.chunks(32 * 1024) {
            match &self.out {
                Transport::Spdy(_) => self.send(&Frame::Data { id, fin: false, data: chunk.to_vec() }).await?,
                Transport::WebSocket(sink) => websocket::send(&mut *sink.lock().await, id, chunk).await?,
            }
        }
        Ok(())
    }

    /// Ends our side of stream `id` (once; a WebSocket channel just stops).
    pub async fn finish(&self, id: u32) {
        if lock(&self.closed).insert(id) {
            let _ = self.send(&Frame::Data { id, fin: true, data: Vec::new() }).await;
        }
    }

    /// Says goodbye and shuts the connection down.
    async fn close(&self) {
        match &self.out {
            Transport::Spdy(writer) => {
                let _ = self.send(&Frame::GoAway { last: 0, status: 0 }).await;
                let _ = writer.lock().await.0.shutdown().await;
            }
            Transport::WebSocket(sink) => websocket::close(&mut *sink.lock().await).await,
        }
        if let Some(reader) = lock(&self.reader).take() {
            reader.abort();
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut read: R, session: std::sync::Weak<Session>, tx: mpsc::Sender<Event>) {
    let mut dec = Decoder::default();
    let mut buf = Vec::with_capacity(64 * 1024);
    // Where the unread part of `buf` starts (compacted before each read).
    let mut at = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        loop {
            let (frame, used) = match dec.decode(&buf[at..]) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("streaming: {e}");
                    return;
                }
            };
            at += used;
            let Some(session) = session.upgrade() else { return };
            let events = match frame {
                Frame::SynStream { id, fin, headers } => {
                    if session.send(&Frame::SynReply { id, fin: false, headers: Vec::new() }).await.is_err() {
                        return;
                    }
                    let mut e = vec![Event::Stream { id, headers }];
                    if fin {
                        e.push(Event::End { id });
                    }
                    e
                }
                Frame::Data { id, fin, data } => {
                    let mut e = Vec::new();
                    if !data.is_empty() {
                        e.push(Event::Data { id, data });
                    }
                    if fin {
                        e.push(Event::End { id });
                    }
                    e
                }
                Frame::RstStream { id, .. } => vec![Event::End { id }],
                // The peer's pings (odd ids) are answered with the same id.
                Frame::Ping(id) => {
                    let _ = session.send(&Frame::Ping(id)).await;
                    Vec::new()
                }
                Frame::GoAway { .. } | Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Ignored => Vec::new(),
            };
            drop(session);
            for e in events {
                if tx.send(e).await.is_err() {
                    tracing::debug!("streaming: the session stopped listening");
                    return;
                }
            }
        }
        buf.drain(..at);
        at = 0;
        match read.read(&mut chunk).await {
            Ok(0) => {
                tracing::debug!("streaming: the client closed the connection");
                return;
            }
            Err(e) => {
                tracing::debug!("streaming: read: {e}");
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
