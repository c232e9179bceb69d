//! End-to-end tests of berth, run for real as root: see the test files.
//! This library holds what several of them share.

pub mod cri_support;
pub mod metrics;
pub mod registry;
pub mod spdy_client;

use berth_api::v1::containers_client::ContainersClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// A gRPC channel to a unix socket.
pub async fn channel(socket: &std::path::Path) -> Channel {
    let path = socket.to_path_buf();
    Endpoint::from_static("http://berthd")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .expect("connect to berthd")
}

/// A raw API client on berthd's socket, for requests the CLI cannot make
/// (bytes no command line can carry, such as NUL).
pub async fn api(socket: &std::path::Path) -> ContainersClient<Channel> {
    ContainersClient::new(channel(socket).await)
}

/// `GET /` on 127.0.0.1:port, retried while the server comes up.
pub fn http_get(port: u16) -> String {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        });
        match attempt {
            Ok(body) if body.contains("200 OK") => return body,
            other => assert!(Instant::now() < deadline, "127.0.0.1:{port} does not answer: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
