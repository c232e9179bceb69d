//! Kubernetes' port-forward protocol (`portforward.k8s.io`): for each
//! forwarded connection the client opens an `error` and a `data` stream
//! with the same `requestid` and a `port`; berth connects to that port on
//! 127.0.0.1 inside the pod's network namespace and copies both ways. A
//! failed connection is reported on the error stream. The socket is made
//! on a thread of its own that enters the namespace and then ends (no
//! thread of berthd stays in a pod's namespace); it connects afterwards,
//! asynchronously. A session holds at most 64 connections, and a slow pod
//! slows its client down instead of queueing without bound. Over WebSocket
//! (`websocket.rs`) the pairs are made from the URL's ports, and the
//! session ends when their connections have.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Event, Session};
use crate::spdy;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Forwarded connections a session may have at once.
const MAX_FORWARDS: usize = 64;

/// A TCP socket made inside the network namespace at `netns` (empty: the
/// host's), not connected yet: a socket stays in the namespace it was made
/// in, so only its making needs the namespace.
fn socket_in(netns: &str) -> std::io::Result<tokio::net::TcpSocket> {
    if netns.is_empty() {
        return tokio::net::TcpSocket::new_v4();
    }
    let ns = std::fs::File::open(netns)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let made = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .and_then(|()| {
                nix::sys::socket::socket(
                    nix::sys::socket::AddressFamily::Inet,
                    nix::sys::socket::SockType::Stream,
                    nix::sys::socket::SockFlag::SOCK_CLOEXEC | nix::sys::socket::SockFlag::SOCK_NONBLOCK,
                    None,
                )
            })
            .map_err(std::io::Error::from);
        let _ = tx.send(made);
    });
    let fd = rx.recv().map_err(|_| std::io::Error::other("the namespace thread died"))??;
    Ok(tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd)))
}

/// A connection to `port` on 127.0.0.1 in the namespace at `netns`.
async fn connect_in(netns: String, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::task::spawn_blocking(move || socket_in(&netns)).await.map_err(std::io::Error::other)??;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

/// One forwarded connection, as its streams arrive.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    port: u16,
}

pub(super) async fn serve(
    session: Arc<Session>,
    mut events: mpsc::Receiver<Event>,
    netns: String,
) -> std::io::Result<()> {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Bytes from the client for each data stream's socket; `None` ends them.
    let mut inputs: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>> = HashMap::new();
    // The forwards end with the session (the client went away).
    let mut forwards = tokio::task::JoinSet::new();
    // Over WebSocket every stream opens at the start, one connection per
    // port: the session ends once they all have (as kubelet's does).
    let websocket = session.is_websocket();
    loop {
        let event = tokio::select! {
            event = events.recv() => match event {
                Some(event) => event,
                None => break,
            },
            Some(_) = forwards.join_next(), if websocket => {
                if forwards.is_empty() && pairs.is_empty() {
                    break;
                }
                continue;
            }
        };
        let mut ended = false;
        while forwards.try_join_next().is_some() {
            ended = true;
        }
        // A forward that ended while this event came in may have been the
        // last one.
        if websocket && ended && forwards.is_empty() && pairs.is_empty() {
            break;
        }
        match event {
            Event::Stream { id, headers } => {
                let request = spdy::header(&headers, "requestid").unwrap_or_default().to_string();
                if !pairs.contains_key(&request) && pairs.len() + forwards.len() >= MAX_FORWARDS {
                    session.finish(id).await;
                    continue;
                }
                let port = spdy::header(&headers, "port").and_then(|p| p.parse::<u16>().ok()).unwrap_or(0);
                let pair = pairs.entry(request.clone()).or_default();
                match spdy::header(&headers, "streamtype") {
                    Some("error") => pair.error = Some(id),
                    Some("data") => {
                        pair.data = Some(id);
                        pair.port = port;
                    }
                    _ => continue,
                }
                if let (Some(error), Some(data)) = (pair.error, pair.data) {
                    let (tx, rx) = mpsc::channel(16);
                    inputs.insert(data, tx);
                    let port = pair.port;
                    pairs.remove(&request);
                    forwards.spawn(forward(session.clone(), netns.clone(), port, error, data, rx));
                }
            }
            // A pod that reads slowly slows its client down (bounded queue).
            Event::Data { id, data } => {
                if let Some(tx) = inputs.get(&id)
                    && tx.send(Some(data)).await.is_err()
                {
                    inputs.remove(&id);
                }
            }
            Event::End { id } => {
                if let Some(tx) = inputs.remove(&id) {
                    let _ = tx.send(None).await;
                }
            }
        }
    }
    forwards.abort_all();
    Ok(())
}

/// Connects and copies until both directions have ended.
async fn forward(
    session: Arc<Session>,
    netns: String,
    port: u16,
    error: u32,
    data: u32,
    mut input: mpsc::Receiver<Option<Vec<u8>>>,
) {
    let socket = match connect_in(netns, port).await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod: {e}");
            let _ = session.data(error, msg.as_bytes()).await;
            session.finish(error).await;
            session.finish(data).await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = socket.into_split();
    let writer = tokio::spawn(async move {
        while let Some(Some(bytes)) = input.recv().await {
            if to_pod.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to_pod.shutdown().await;
    });
    let mut buf = vec![0u8; 32 * 1024];
    while let Ok(n) = from_pod.read(&mut buf).await {
        if n == 0 || session.data(data, &buf[..n]).await.is_err() {
            break;
        }
    }
    session.finish(data).await;
    // Over WebSocket a client cannot end its side (v4 has no close): the
    // pod's end is the connection's, as in kubelet.
    if session.is_websocket() {
        writer.abort();
    }
    let _ = writer.await;
    session.finish(error).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_on_the_host_loopback_and_fails_cleanly() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(connect_in(String::new(), port).await.is_ok());
        drop(listener);
        assert!(connect_in(String::new(), port).await.is_err());
        assert!(connect_in("/nonexistent/netns".into(), port).await.is_err());
        // A namespace of this very process: made there, connected.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(connect_in("/proc/self/ns/net".into(), port).await.is_ok());
    }
}
