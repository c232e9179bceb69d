//! The WebSocket flavour of the remote command protocol
//! (`v5.channel.k8s.io`, and `v4.channel.k8s.io` without the close
//! signal), as kubectl speaks it since Kubernetes 1.30 and kubelet may
//! forward it: binary messages whose first byte is the channel (0 stdin,
//! 1 stdout, 2 stderr, 3 error, 4 resize); in v5 a client ends its stdin
//! with the message `[255, 0]`. The channels a request needs are given to
//! the protocol as streams opened at the start (the client opens none), so
//! exec and attach run the same code over SPDY and WebSocket.

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

/// What berth speaks, preferred first.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
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

/// The 101 answer to an upgrade and the protocol chosen.
type Accepted = (Response<Full<Bytes>>, &'static str);
/// Why an upgrade is refused.
type Refused = (StatusCode, String);

/// The 101 answer to a WebSocket upgrade, and the protocol chosen; or why
/// it is refused.
#[allow(clippy::result_large_err)]
pub(super) fn handshake<T>(req: &Request<T>, target: &Target) -> Result<Accepted, Refused> {
    if matches!(target, Target::Ports { .. }) {
        return Err((StatusCode::BAD_REQUEST, "port-forward streams over SPDY/3.1".into()));
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let key = header("Sec-WebSocket-Key");
    if key.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing".into()));
    }
    let offered: Vec<&str> = header("Sec-WebSocket-Protocol").split(',').map(str::trim).collect();
    let Some(protocol) = PROTOCOLS.into_iter().find(|p| offered.contains(p)) else {
        return Err((StatusCode::FORBIDDEN, format!("one of {PROTOCOLS:?} required; offered {offered:?}")));
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
    Ok((r, protocol))
}

/// Starts reading the upgraded connection; the request's channels come
/// first as streams.
pub(super) async fn start(io: Io, target: &Target) -> (mpsc::Receiver<Event>, Arc<Session>) {
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (sink, mut stream) = ws.split();
    let session = Arc::new(Session::new(Transport::WebSocket(tokio::sync::Mutex::new(sink))));
    let (tx, rx) = mpsc::channel(16);
    for (name, id) in channels(target) {
        let headers = vec![("streamtype".to_string(), name.to_string())];
        let _ = tx.send(Event::Stream { id, headers }).await;
    }
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
        let (r, p) = handshake(&req("v4.channel.k8s.io, v5.channel.k8s.io", "dGhlIHNhbXBsZSBub25jZQ=="), &t).unwrap();
        assert_eq!(p, "v5.channel.k8s.io");
        assert_eq!(r.headers()["Sec-WebSocket-Accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(handshake(&req("base64.channel.k8s.io", "k"), &t).unwrap_err().0, StatusCode::FORBIDDEN);
        assert_eq!(handshake(&req("v5.channel.k8s.io", ""), &t).unwrap_err().0, StatusCode::BAD_REQUEST);
        let ports = Target::Ports { netns: String::new() };
        assert_eq!(handshake(&req("v5.channel.k8s.io", "k"), &ports).unwrap_err().0, StatusCode::BAD_REQUEST);
    }
}
