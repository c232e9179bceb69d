//! A SPDY/3.1 client for the streaming tests, on berth-cri's frame codec:
//! it upgrades a request to a streaming URL and opens streams the way
//! kubectl's and crictl's clients (client-go over moby/spdystream) do.

use std::collections::HashMap;
use std::time::Duration;

use berth_cri::spdy::{Decoder, Encoder, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct SpdyClient {
    tcp: TcpStream,
    enc: Encoder,
    dec: Decoder,
    buf: Vec<u8>,
    next_id: u32,
}

impl SpdyClient {
    /// Upgrades a request to `url` (`http://HOST:PORT/PATH`) offering
    /// `protocols`; the HTTP status and the client (on 101).
    pub async fn connect(url: &str, protocols: &[&str]) -> (u16, Option<SpdyClient>) {
        let rest = url.strip_prefix("http://").expect("an http URL");
        let (host, path) = rest.split_once('/').expect("a path");
        let mut tcp = TcpStream::connect(host).await.expect("connect to the streaming server");
        let mut request =
            format!("POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n");
        for p in protocols {
            request.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
        }
        request.push_str("Content-Length: 0\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.expect("send the upgrade");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if tcp.read(&mut b).await.expect("read the response") == 0 {
                break;
            }
            head.push(b[0]);
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let code: u16 = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        if code != 101 {
            return (code, None);
        }
        // What client-go checks before it speaks SPDY.
        let lower = text.to_ascii_lowercase();
        assert!(lower.contains("\r\nconnection: upgrade\r\n"), "Connection: Upgrade in {text:?}");
        assert!(lower.contains("\r\nupgrade: spdy/3.1\r\n"), "Upgrade: SPDY/3.1 in {text:?}");
        let client = SpdyClient { tcp, enc: Encoder::default(), dec: Decoder::default(), buf: Vec::new(), next_id: 1 };
        (code, Some(client))
    }

    /// Opens a stream with these headers; its id.
    pub async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.write(&Frame::SynStream { id, fin: false, headers }).await;
        id
    }

    pub async fn send(&mut self, id: u32, data: &[u8], fin: bool) {
        self.write(&Frame::Data { id, fin, data: data.to_vec() }).await;
    }

    async fn write(&mut self, frame: &Frame) {
        let bytes = self.enc.encode(frame).expect("encode");
        self.tcp.write_all(&bytes).await.expect("write a frame");
    }

    /// The next frame; `None` once the server has closed the connection.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = self.dec.decode(&self.buf).expect("a valid frame") {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Frames until the data of stream `id` holds `needle`; that data.
    pub async fn read_until_data(&mut self, id: u32, needle: &str, limit: Duration) -> String {
        let mut got = Vec::new();
        let read = async {
            while let Some(frame) = self.next().await {
                if let Frame::Data { id: i, data, .. } = frame
                    && i == id
                {
                    got.extend_from_slice(&data);
                    if String::from_utf8_lossy(&got).contains(needle) {
                        return;
                    }
                }
            }
        };
        tokio::time::timeout(limit, read).await.expect("the output came in time");
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Frames until stream `until` has ended (FIN) on the server's side:
    /// the data of every stream, and the streams that were replied to.
    pub async fn read_until_end(&mut self, until: u32, limit: Duration) -> Received {
        let mut got = Received::default();
        let read = async {
            while let Some(frame) = self.next().await {
                match frame {
                    Frame::SynReply { id, .. } => got.replied.push(id),
                    Frame::Data { id, fin, data } => {
                        got.data.entry(id).or_default().extend_from_slice(&data);
                        if fin {
                            got.ended.push(id);
                            if id == until {
                                return;
                            }
                        }
                    }
                    Frame::GoAway { .. } => got.goaway = true,
                    _ => {}
                }
            }
        };
        tokio::time::timeout(limit, read).await.expect("the server ended the stream in time");
        got
    }
}

/// What a client received.
#[derive(Default, Debug)]
pub struct Received {
    pub data: HashMap<u32, Vec<u8>>,
    pub replied: Vec<u32>,
    pub ended: Vec<u32>,
    pub goaway: bool,
}

impl Received {
    pub fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.data.get(&id).map(Vec::as_slice).unwrap_or_default()).into_owned()
    }
}
