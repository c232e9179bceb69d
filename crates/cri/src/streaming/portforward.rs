//! Kubernetes' port-forward protocol (`portforward.k8s.io`): for each
//! forwarded connection the client opens an `error` and a `data` stream
//! with the same `requestid` and a `port`; berth connects to that port on
//! 127.0.0.1 inside the pod's network namespace and copies both ways. A
//! failed connection is reported on the error stream. The socket is made
//! on a thread of its own that enters the namespace and then ends, so no
//! thread of berthd stays in a pod's namespace.

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Event, Session};
use crate::spdy;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP connection to `port` on the loopback of the network namespace at
/// `netns` (empty: the host's).
fn connect_in(netns: &str, port: u16) -> std::io::Result<TcpStream> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    if netns.is_empty() {
        return TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT);
    }
    let ns = std::fs::File::open(netns)?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)
            .and_then(|()| TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT));
        let _ = tx.send(r);
    });
    rx.recv().map_err(|_| std::io::Error::other("the connecting thread died"))?
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
    let mut inputs: HashMap<u32, mpsc::UnboundedSender<Option<Vec<u8>>>> = HashMap::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Stream { id, headers } => {
                let request = spdy::header(&headers, "requestid").unwrap_or_default().to_string();
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
                    let (tx, rx) = mpsc::unbounded_channel();
                    inputs.insert(data, tx);
                    let port = pair.port;
                    pairs.remove(&request);
                    tokio::spawn(forward(session.clone(), netns.clone(), port, error, data, rx));
                }
            }
            Event::Data { id, data } => {
                if let Some(tx) = inputs.get(&id) {
                    let _ = tx.send(Some(data));
                }
            }
            Event::End { id } => {
                if let Some(tx) = inputs.remove(&id) {
                    let _ = tx.send(None);
                }
            }
        }
    }
    Ok(())
}

/// Connects and copies until both directions have ended.
async fn forward(
    session: Arc<Session>,
    netns: String,
    port: u16,
    error: u32,
    data: u32,
    mut input: mpsc::UnboundedReceiver<Option<Vec<u8>>>,
) {
    let connected = tokio::task::spawn_blocking(move || connect_in(&netns, port)).await;
    let socket = match connected.map_err(std::io::Error::other).and_then(|r| r) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod: {e}");
            let _ = session.data(error, msg.as_bytes()).await;
            session.finish(error).await;
            session.finish(data).await;
            return;
        }
    };
    let socket = match socket.set_nonblocking(true).and_then(|()| tokio::net::TcpStream::from_std(socket)) {
        Ok(s) => s,
        Err(_) => return,
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
    let _ = writer.await;
    session.finish(error).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_on_the_host_loopback_and_fails_cleanly() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(connect_in("", port).is_ok());
        drop(listener);
        assert!(connect_in("", port).is_err());
        assert!(connect_in("/nonexistent/netns", port).is_err());
    }
}
