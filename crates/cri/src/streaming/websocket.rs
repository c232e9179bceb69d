//! The WebSocket flavour of the remote command protocol
//! (`v5.channel.k8s.io`, and `v4.channel.k8s.io` without the close
//! signal), as kubectl speaks it since Kubernetes 1.30 and kubelet may
//! forward it: binary messages whose first byte is the channel (0 stdin,
//! 1 stdout, 2 stderr, 3 error, 4 resize); in v5 a client ends its stdin
//! with the message `[255, 0]`. The channels a request needs are given to
//! the protocol as streams opened at the start (the client opens none), so
//! exec and attach run the same code over SPDY and WebSocket.
//!
//! Port-forward over WebSocket (`v4.channel.k8s.io`, kubelet's flavour):
//! the ports are the URL's `port` query parameters; port number i gets
//! data channel 2i and error channel 2i+1, each of which first carries the
//! port as two little-endian bytes; one connection per port. They are
//! handed to the port-forward code as SPDY-like stream pairs.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::{Event, Io, Session, Target, Transport};
use crate::lock;

/// What berth speaks for exec and attach, preferred first.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// What it speaks for port-forward.
const PORT_PROTOCOLS: [&str; 1] = ["v4.channel.k8s.io"];
/// Ports one WebSocket port-forward may name (two channels each, numbered
/// in one byte).
const MAX_PORTS: usize = 32;
/// v5's "this channel is closed" message: `[CLOSE, channel]`.
const CLOSE: u8 = 255;

pub(super) type Sink = SplitSink<WebSocketStream<Io>, Message>;

/// Channel numbers of the streams a request needs.
fn channels(target: &Target) -> Vec<(&'static str, u32)> {
    let Target::Process { stdin, stdout, stderr, tty, .. } = *target else { return Vec::new() };
    let all = [
        (true, "error", 3),
        (stdin, "stdin", 0),
        (stdout, "stdout", 1),
        (stderr && !tty, "stderr", 2),
        (tty, "resize", 4),
    ];
    all.into_iter().filter(|(on, _, _)| *on).map(|(_, name, ch)| (name, ch)).collect()
}

/// The 101 answer to an upgrade, the protocol chosen and, for a
/// port-forward, the ports.
type Accepted = (Response<Full<Bytes>>, &'static str, Vec<u16>);
/// Why an upgrade is refused.
type Refused = (StatusCode, String);

/// The ports of a WebSocket port-forward URL: one or more `port=N`.
fn ports_of(query: Option<&str>) -> Result<Vec<u16>, Refused> {
    let bad = |msg: String| (StatusCode::BAD_REQUEST, msg);
    let mut ports = Vec::new();
    for (k, v) in query.unwrap_or_default().split('&').filter_map(|kv| kv.split_once('=')) {
        if k == "port" {
            match v.parse::<u16>() {
                Ok(p) if p > 0 => ports.push(p),
                _ => return Err(bad(format!("invalid port {:?}", v.chars().take(16).collect::<String>()))),
            }
        }
    }
    if ports.is_empty() || ports.len() > MAX_PORTS {
        return Err(bad(format!("1 to {MAX_PORTS} \"port\" query parameters are required")));
    }
    Ok(ports)
}

/// The 101 answer to a WebSocket upgrade, the protocol chosen and the
/// ports of a port-forward; or why it is refused.
#[allow(clippy::result_large_err)]
pub(super) fn handshake<T>(req: &Request<T>, target: &Target) -> Result<Accepted, Refused> {
    let (known, ports) = match target {
        Target::Ports { .. } => (&PORT_PROTOCOLS[..], ports_of(req.uri().query())?),
        Target::Process { .. } => (&PROTOCOLS[..], Vec::new()),
    };
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let key = header("Sec-WebSocket-Key");
    if key.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing".into()));
    }
    let offered: Vec<&str> = header("Sec-WebSocket-Protocol").split(',').map(str::trim).collect();
    let Some(protocol) = known.iter().copied().find(|p| offered.contains(p)) else {
        return Err((StatusCode::FORBIDDEN, format!("one of {known:?} required; offered {offered:?}")));
    };
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("Upgrade"));
    h.insert(hyper::header::UPGRADE, hyper::header::HeaderValue::from_static("websocket"));
    let accept = derive_accept_key(key.as_bytes());
    let accept = hyper::header::HeaderValue::from_str(&accept).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    h.insert("Sec-WebSocket-Accept", accept);
    h.insert("Sec-WebSocket-Protocol", hyper::header::HeaderValue::from_static(protocol));
    Ok((r, protocol, ports))
}

/// Starts reading the upgraded connection; the request's channels come
/// first as streams (a port-forward's after each sent its port).
pub(super) async fn start(io: Io, target: &Target, ports: &[u16]) -> (mpsc::Receiver<Event>, Arc<Session>) {
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (mut sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::channel(16 + 2 * MAX_PORTS);
    for (name, id) in channels(target) {
        let headers = vec![("streamtype".to_string(), name.to_string())];
        let _ = tx.send(Event::Stream { id, headers }).await;
    }
    for (i, port) in ports.iter().enumerate() {
        for (name, id) in [("data", 2 * i as u32), ("error", 2 * i as u32 + 1)] {
            let _ = send(&mut sink, id, &port.to_le_bytes()).await;
            let headers = [("streamtype", name), ("port", &port.to_string()), ("requestid", &i.to_string())];
            let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let _ = tx.send(Event::Stream { id, headers }).await;
        }
    }
    let session = Arc::new(Session::new(Transport::WebSocket(tokio::sync::Mutex::new(sink))));
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let event = match msg {
                Message::Binary(b) if b.len() >= 2 && b[0] == CLOSE => Event::End { id: u32::from(b[1]) },
                Message::Binary(b) if !b.is_empty() => Event::Data { id: u32::from(b[0]), data: b[1..].to_vec() },
                Message::Close(_) => return,
                _ => continue,
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    *lock(&session.reader) = Some(reader);
    (rx, session)
}

/// One message on channel `id`.
pub(super) async fn send(sink: &mut Sink, id: u32, data: &[u8]) -> std::io::Result<()> {
    let mut msg = Vec::with_capacity(1 + data.len());
    msg.push(id as u8);
    msg.extend_from_slice(data);
    sink.send(Message::Binary(msg.into())).await.map_err(std::io::Error::other)
}

/// A normal close.
pub(super) async fn close(sink: &mut Sink) {
    let _ = sink.send(Message::Close(None)).await;
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(stdin: bool, stderr: bool, tty: bool) -> Target {
        Target::Process { container: "c".into(), exec: None, stdin, stdout: true, stderr, tty, stdin_once: false }
    }

    #[test]
    fn a_request_opens_the_channels_it_needs() {
        assert_eq!(channels(&process(true, true, false)), [("error", 3), ("stdin", 0), ("stdout", 1), ("stderr", 2)]);
        assert_eq!(channels(&process(false, false, true)), [("error", 3), ("stdout", 1), ("resize", 4)]);
        assert!(channels(&Target::Ports { netns: String::new() }).is_empty());
    }

    #[test]
    fn the_handshake_picks_a_protocol_and_answers_the_key() {
        let req = |proto: &str, key: &str| {
            Request::builder()
                .header("Sec-WebSocket-Protocol", proto)
                .header("Sec-WebSocket-Key", key)
                .body(())
                .unwrap()
        };
        let t = process(false, true, false);
        // RFC 6455's example key and answer.
        let (r, p, _) =
            handshake(&req("v4.channel.k8s.io, v5.channel.k8s.io", "dGhlIHNhbXBsZSBub25jZQ=="), &t).unwrap();
        assert_eq!(p, "v5.channel.k8s.io");
        assert_eq!(r.headers()["Sec-WebSocket-Accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(handshake(&req("base64.channel.k8s.io", "k"), &t).unwrap_err().0, StatusCode::FORBIDDEN);
        assert_eq!(handshake(&req("v5.channel.k8s.io", ""), &t).unwrap_err().0, StatusCode::BAD_REQUEST);
        let ports = Target::Ports { netns: String::new() };
        // A port-forward names its ports in the query and speaks v4.
        assert_eq!(handshake(&req("v4.channel.k8s.io", "k"), &ports).unwrap_err().0, StatusCode::BAD_REQUEST);
        let with_ports = |uri: &str, proto: &str| {
            Request::builder()
                .uri(uri)
                .header("Sec-WebSocket-Protocol", proto)
                .header("Sec-WebSocket-Key", "k")
                .body(())
                .unwrap()
        };
        let (_, p, found) =
            handshake(&with_ports("/portforward/t?port=80&port=8443", "v4.channel.k8s.io"), &ports).unwrap();
        assert_eq!((p, found), ("v4.channel.k8s.io", vec![80, 8443]));
        let refused = handshake(&with_ports("/portforward/t?port=80", "v5.channel.k8s.io"), &ports).unwrap_err();
        assert_eq!(refused.0, StatusCode::FORBIDDEN);
        for bad in ["?port=0", "?port=70000", "?port=x", "?other=1"] {
            let uri = format!("/portforward/t{bad}");
            assert_eq!(
                handshake(&with_ports(&uri, "v4.channel.k8s.io"), &ports).unwrap_err().0,
                StatusCode::BAD_REQUEST
            );
        }
        let many = (1..=33).map(|p| format!("port={p}")).collect::<Vec<_>>().join("&");
        let uri = format!("/portforward/t?{many}");
        assert_eq!(handshake(&with_ports(&uri, "v4.channel.k8s.io"), &ports).unwrap_err().0, StatusCode::BAD_REQUEST);
    }
}
