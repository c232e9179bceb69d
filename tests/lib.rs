//! End-to-end tests of berth, run for real as root: see the test files.
//! This library holds what several of them share.

pub mod cri_support;
pub mod metrics;
pub mod registry;
pub mod spdy_client;

use berth_api::v1::containers_client::ContainersClient;
use berth_testing::Daemon;
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

/// Removes what a test's berthd put on the host's network: its containers
/// and sandboxes in every namespace (CNI DEL frees their addresses and
/// published ports), its managed networks (`network rm` takes each one's
/// bridge and masquerade rule, the default network's too), then the bridge
/// `bridge` and the networks' bridges, in case berthd could not.
pub fn remove_networks(d: &Daemon, bridge: &str) {
    let list = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = d.berth(args).stdout;
        serde_json::from_str::<serde_json::Value>(&out).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
    };
    let text = |v: &serde_json::Value, key: &str| v[key].as_str().unwrap_or_default().to_string();
    let mut namespaces = vec!["default".to_string(), "k8s.io".to_string()];
    for c in list(&["ps", "-a", "--all-namespaces", "--json"]) {
        let ns = text(&c, "namespace");
        d.berth(&["-n", &ns, "rm", "-f", &text(&c, "id")]);
        namespaces.push(ns);
    }
    namespaces.sort();
    namespaces.dedup();
    for ns in &namespaces {
        for s in list(&["-n", ns, "sandbox", "ls", "--json"]) {
            d.berth(&["-n", ns, "sandbox", "stop", "-t", "0", &text(&s, "id")]);
            d.berth(&["-n", ns, "sandbox", "rm", &text(&s, "id")]);
        }
    }
    let mut bridges = vec![bridge.to_string()];
    for n in list(&["network", "ls", "--json"]).into_iter().filter(|n| n["managed"] == true) {
        bridges.push(text(&n, "bridge"));
        d.berth(&["network", "rm", &text(&n, "name")]);
    }
    for b in bridges.iter().filter(|b| !b.is_empty()) {
        let _ = berth_network::delete_bridge(b);
    }
}

/// [`remove_networks`] on drop, however the test ends; declare it after
/// the daemon so it runs while berthd still answers.
pub struct NetworkCleanup<'a>(pub &'a Daemon, pub String);

impl Drop for NetworkCleanup<'_> {
    fn drop(&mut self) {
        remove_networks(self.0, &self.1);
    }
}
