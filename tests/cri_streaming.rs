//! CRI streaming end to end (issue 15 item 5): Exec, Attach and
//! PortForward return URLs of berthd's streaming server, and a SPDY/3.1
//! client (berth-cri's codec, opening streams as client-go does) speaks
//! `v4.channel.k8s.io` and `portforward.k8s.io` to them: stdin, stdout and
//! stderr of an exec with its exit code in the error stream's Status, a
//! terminal resized, an attach to a running container, a TCP connection
//! to a server inside a pod, single-use URLs and refused requests; and a
//! WebSocket client (tokio-tungstenite) speaks `v5.channel.k8s.io`.

use std::time::Duration;

use berth_e2e::cri_support::*;
use berth_e2e::spdy_client::SpdyClient;
use k8s_cri::v1 as cri;

const EXEC: &str = "v4.channel.k8s.io";
const LIMIT: Duration = Duration::from_secs(20);

/// A running pod with one container running `command`; (pod, container).
async fn running(
    c: &mut Clients,
    logs: &std::path::Path,
    image: &str,
    name: &str,
    command: &[&str],
    stdin: bool,
) -> (String, String) {
    let cfg = pod_config(name, logs);
    let pod = run_pod(c, &cfg).await;
    let mut ctr = container_config(name, image, command);
    ctr.stdin = stdin;
    let id = create(c, &pod, &cfg, ctr).await;
    c.rt.start_container(cri::StartContainerRequest { container_id: id.clone() }).await.expect("start");
    (pod, id)
}

fn exec_request(id: &str, cmd: &[&str], stdin: bool, tty: bool) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

fn status_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("status JSON {text:?}: {e}"))
}

#[test]
fn exec_streams_stdio_and_reports_the_exit_code() {
    let (d, _guard, _reg, _reference, image) = setup();
    let logs = d.dir().join("pod-logs");
    runtime().block_on(async {
        let mut c = clients(&d).await;
        let (pod, id) = running(&mut c, &logs, &image, "web", &[], false).await;
        let script = "echo out; echo err >&2; read x; echo got:$x; exit 7";
        let url = c.rt.exec(exec_request(&id, &["sh", "-c", script], true, false)).await.unwrap().into_inner().url;
        assert!(url.starts_with("http://127.0.0.1:") && url.contains("/exec/"), "{url}");
        let (code, client) = SpdyClient::connect(&url, &[EXEC, "v3.channel.k8s.io"]).await;
        assert_eq!(code, 101);
        let mut s = client.unwrap();
        let error = s.open(&[("streamType", "error")]).await;
        let stdin = s.open(&[("streamType", "stdin")]).await;
        let stdout = s.open(&[("streamType", "stdout")]).await;
        let stderr = s.open(&[("streamType", "stderr")]).await;
        s.send(stdin, b"hello\n", true).await;
        let got = s.read_until_end(error, LIMIT).await;
        for id in [error, stdin, stdout, stderr] {
            assert!(got.replied.contains(&id), "stream {id} replied: {got:?}");
        }
        assert_eq!(got.text(stdout), "out\ngot:hello\n");
        assert_eq!(got.text(stderr), "err\n");
        let status = status_of(&got.text(error));
        assert_eq!(status["status"], "Failure", "{status}");
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0], serde_json::json!({"reason": "ExitCode", "message": "7"}));

        // Success, and a URL is good for one session only.
        let url = c.rt.exec(exec_request(&id, &["true"], false, false)).await.unwrap().into_inner().url;
        let mut s = SpdyClient::connect(&url, &[EXEC]).await.1.expect("upgraded");
        let error = s.open(&[("streamType", "error")]).await;
        s.open(&[("streamType", "stdout")]).await;
        s.open(&[("streamType", "stderr")]).await;
        let got = s.read_until_end(error, LIMIT).await;
        assert_eq!(status_of(&got.text(error))["status"], "Success");
        assert_eq!(SpdyClient::connect(&url, &[EXEC]).await.0, 404, "a used URL");
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    });
    assert_clean(&d, &[]);
}

#[test]
fn exec_with_a_terminal_follows_resizes() {
    let (d, _guard, _reg, _reference, image) = setup();
    let logs = d.dir().join("pod-logs");
    runtime().block_on(async {
        let mut c = clients(&d).await;
        let (pod, id) = running(&mut c, &logs, &image, "term", &[], false).await;
        let script = "read x; stty size; tty; exit 0";
        let url = c.rt.exec(exec_request(&id, &["sh", "-c", script], true, true)).await.unwrap().into_inner().url;
        let mut s = SpdyClient::connect(&url, &[EXEC]).await.1.expect("upgraded");
        let error = s.open(&[("streamType", "error")]).await;
        let stdin = s.open(&[("streamType", "stdin")]).await;
        let stdout = s.open(&[("streamType", "stdout")]).await;
        let resize = s.open(&[("streamType", "resize")]).await;
        s.send(resize, br#"{"Width":100,"Height":40}"#, false).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.send(stdin, b"go\n", false).await;
        let got = s.read_until_end(error, LIMIT).await;
        let out = got.text(stdout);
        assert!(out.contains("40 100"), "the terminal's size: {out:?}");
        assert!(out.contains("/dev/pts/"), "a terminal: {out:?}");
        assert_eq!(status_of(&got.text(error))["status"], "Success");
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    });
    assert_clean(&d, &[]);
}

/// What a WebSocket session sent on each channel until it closed.
async fn channels<S>(ws: &mut S) -> std::collections::HashMap<u8, Vec<u8>>
where
    S: futures_util::Stream<
            Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>,
        > + Unpin,
{
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut got: std::collections::HashMap<u8, Vec<u8>> = Default::default();
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Binary(b) if !b.is_empty() => got.entry(b[0]).or_default().extend_from_slice(&b[1..]),
            Message::Close(_) => break,
            _ => {}
        }
    }
    got
}

#[test]
fn exec_over_websocket_speaks_v5_channels() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (d, _guard, _reg, _reference, image) = setup();
    let logs = d.dir().join("pod-logs");
    runtime().block_on(async {
        let mut c = clients(&d).await;
        let (pod, id) = running(&mut c, &logs, &image, "ws", &[], false).await;
        let script = "read x; echo got:$x; echo err >&2; exit 3";
        let url = c.rt.exec(exec_request(&id, &["sh", "-c", script], true, false)).await.unwrap().into_inner().url;
        let mut request = url.replace("http://", "ws://").into_client_request().unwrap();
        request.headers_mut().insert("Sec-WebSocket-Protocol", "v5.channel.k8s.io".parse().unwrap());
        let (mut ws, response) = tokio_tungstenite::connect_async(request).await.expect("WebSocket upgrade");
        assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "v5.channel.k8s.io");
        ws.send(Message::Binary(b"\x00hello\n".to_vec().into())).await.unwrap();
        // v5: stdin (channel 0) is closed.
        ws.send(Message::Binary(vec![255, 0].into())).await.unwrap();
        let got = tokio::time::timeout(LIMIT, channels(&mut ws)).await.expect("the session ended in time");
        let text = |ch: u8| String::from_utf8_lossy(got.get(&ch).map(Vec::as_slice).unwrap_or_default()).into_owned();
        assert_eq!(text(1), "got:hello\n");
        assert_eq!(text(2), "err\n");
        let status = status_of(&text(3));
        assert_eq!(status["details"]["causes"][0]["message"], "3", "{status}");
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    });
    assert_clean(&d, &[]);
}

/// Attaches to container `id` with stdin and stdout; the client and its
/// stdin and stdout streams.
async fn attach(c: &mut Clients, id: &str) -> (SpdyClient, u32, u32, u32) {
    let req = cri::AttachRequest { container_id: id.into(), stdin: true, tty: false, stdout: true, stderr: true };
    let url = c.rt.attach(req).await.unwrap().into_inner().url;
    assert!(url.contains("/attach/"), "{url}");
    let mut s = SpdyClient::connect(&url, &[EXEC]).await.1.expect("upgraded");
    let error = s.open(&[("streamType", "error")]).await;
    let stdin = s.open(&[("streamType", "stdin")]).await;
    let stdout = s.open(&[("streamType", "stdout")]).await;
    s.open(&[("streamType", "stderr")]).await;
    (s, error, stdin, stdout)
}

#[test]
fn attach_reaches_a_running_containers_stdin_and_output() {
    let (d, _guard, _reg, _reference, image) = setup();
    let logs = d.dir().join("pod-logs");
    runtime().block_on(async {
        let mut c = clients(&d).await;
        let (pod, id) = running(&mut c, &logs, &image, "cat", &["sh", "-c", "echo before; exec cat"], true).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A client that leaves does not end the container's input.
        let (mut s, _error, stdin, stdout) = attach(&mut c, &id).await;
        s.send(stdin, b"ping\n", false).await;
        let out = s.read_until_data(stdout, "ping\n", LIMIT).await;
        assert_eq!(out, "ping\n", "only what came after the attach");
        s.send(stdin, b"", true).await;
        drop(s);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(status(&mut c, &id).await.state, cri::ContainerState::ContainerRunning as i32);
        // A second attach; the container's end ends it, with its Status.
        let (mut s, error, stdin, stdout) = attach(&mut c, &id).await;
        s.send(stdin, b"pong\n", false).await;
        assert_eq!(s.read_until_data(stdout, "pong\n", LIMIT).await, "pong\n");
        let stop = cri::StopContainerRequest { container_id: id.clone(), timeout: 0 };
        c.rt.stop_container(stop).await.unwrap();
        let got = s.read_until_end(error, LIMIT).await;
        assert_eq!(status_of(&got.text(error))["status"], "Failure", "killed: exit 137");
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    });
    assert_clean(&d, &[]);
}

#[test]
fn an_exec_whose_client_goes_away_is_killed_and_removed() {
    let (d, _guard, _reg, _reference, image) = setup();
    let logs = d.dir().join("pod-logs");
    runtime().block_on(async {
        let mut c = clients(&d).await;
        let (pod, id) = running(&mut c, &logs, &image, "web", &[], false).await;
        let script = "sleep 778 & echo started; exec sleep 777";
        let url = c.rt.exec(exec_request(&id, &["sh", "-c", script], true, false));
        let url = url.await.unwrap().into_inner().url;
        let mut s = SpdyClient::connect(&url, &[EXEC]).await.1.expect("upgraded");
        s.open(&[("streamType", "error")]).await;
        s.open(&[("streamType", "stdin")]).await;
        let stdout = s.open(&[("streamType", "stdout")]).await;
        s.open(&[("streamType", "stderr")]).await;
        s.read_until_data(stdout, "started", LIMIT).await;
        drop(s);
        // The exec's sleep goes with the child it started, and berth
        // forgets the exec.
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            let ps = exec_sync(&mut c, &id, &["ps", "-o", "args"], 5).await.unwrap();
            let ps = String::from_utf8_lossy(&ps.stdout);
            if !ps.contains("sleep 777") && !ps.contains("sleep 778") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the exec outlived its client: {}", d.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    });
    assert_clean(&d, &[]);
}

#[test]
fn port_forward_reaches_a_server_inside_the_pod() {
    let (d, _guard, _reg, _reference, image) = setup();
    let logs = d.dir().join("pod-logs");
    runtime().block_on(async {
        let mut c = clients(&d).await;
        let httpd = "mkdir -p /www && echo hi-from-the-pod > /www/index.html && exec httpd -f -p 8080 -h /www";
        let (pod, _id) = running(&mut c, &logs, &image, "httpd", &["sh", "-c", httpd], false).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let req = cri::PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![8080] };
        let url = c.rt.port_forward(req).await.unwrap().into_inner().url;
        assert_eq!(SpdyClient::connect(&url, &[EXEC]).await.0, 403, "port-forward needs its own protocol");
        let url = c.rt.port_forward(cri::PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![8080] });
        let url = url.await.unwrap().into_inner().url;
        let mut s = SpdyClient::connect(&url, &["portforward.k8s.io"]).await.1.expect("upgraded");
        // Two connections: one to httpd, one to a port nobody listens on.
        let e0 = s.open(&[("streamType", "error"), ("port", "8080"), ("requestID", "0")]).await;
        let d0 = s.open(&[("streamType", "data"), ("port", "8080"), ("requestID", "0")]).await;
        s.send(d0, b"GET /index.html HTTP/1.0\r\n\r\n", false).await;
        let got = s.read_until_end(d0, LIMIT).await;
        let page = got.text(d0);
        assert!(page.starts_with("HTTP/1.") && page.contains("hi-from-the-pod"), "{page:?}");
        assert_eq!(got.text(e0), "", "no error");
        let e1 = s.open(&[("streamType", "error"), ("port", "9"), ("requestID", "1")]).await;
        s.open(&[("streamType", "data"), ("port", "9"), ("requestID", "1")]).await;
        let got = s.read_until_end(e1, LIMIT).await;
        assert!(got.text(e1).contains("port 9"), "{:?}", got.text(e1));

        // The same over WebSocket, kubelet's way: ports in the query, two
        // channels per port, each opening with its port (little-endian).
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = c.rt.port_forward(cri::PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![8080] });
        let url = url.await.unwrap().into_inner().url;
        let mut request =
            format!("{}?port=8080&port=9", url.replace("http://", "ws://")).into_client_request().unwrap();
        request.headers_mut().insert("Sec-WebSocket-Protocol", "v4.channel.k8s.io".parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.expect("WebSocket upgrade");
        ws.send(Message::Binary(b"\x00GET /index.html HTTP/1.0\r\n\r\n".to_vec().into())).await.unwrap();
        let got = tokio::time::timeout(LIMIT, channels(&mut ws)).await.expect("the session ends with its connections");
        let channel = |ch: u8| got.get(&ch).cloned().unwrap_or_default();
        for (ch, port) in [(0u8, 8080u16), (1, 8080), (2, 9), (3, 9)] {
            assert_eq!(channel(ch)[..2], port.to_le_bytes(), "channel {ch}");
        }
        let page = String::from_utf8_lossy(&channel(0)[2..]).into_owned();
        assert!(page.starts_with("HTTP/1.") && page.contains("hi-from-the-pod"), "{page:?}");
        assert_eq!(channel(1).len(), 2, "no error for 8080");
        assert!(String::from_utf8_lossy(&channel(3)[2..]).contains("port 9"), "{:?}", channel(3));
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    });
    assert_clean(&d, &[]);
}

#[test]
fn streaming_requests_that_cannot_work_are_refused() {
    let (d, _guard, _reg, _reference, image) = setup();
    let logs = d.dir().join("pod-logs");
    runtime().block_on(async {
        let mut c = clients(&d).await;
        let (pod, id) = running(&mut c, &logs, &image, "short", &["true"], false).await;
        await_exited(&mut c, &id).await;
        let code = |r: Result<tonic::Response<cri::ExecResponse>, tonic::Status>| r.unwrap_err().code();
        assert_eq!(code(c.rt.exec(exec_request(&id, &["true"], false, false)).await), tonic::Code::FailedPrecondition);
        assert_eq!(code(c.rt.exec(exec_request("nope", &["true"], false, false)).await), tonic::Code::NotFound);
        let mut none = exec_request(&id, &["true"], false, false);
        (none.stdout, none.stderr) = (false, false);
        assert_eq!(code(c.rt.exec(none).await), tonic::Code::InvalidArgument);
        assert_eq!(code(c.rt.exec(exec_request(&id, &[], false, false)).await), tonic::Code::InvalidArgument);
        let pf = c.rt.port_forward(cri::PortForwardRequest { pod_sandbox_id: "nope".into(), port: vec![] }).await;
        assert_eq!(pf.unwrap_err().code(), tonic::Code::NotFound);
        // A made-up URL.
        let url = c.rt.port_forward(cri::PortForwardRequest { pod_sandbox_id: pod.clone(), port: vec![] });
        let url = url.await.unwrap().into_inner().url;
        let forged = format!("{}0", url.rsplit_once('/').unwrap().0);
        assert_eq!(SpdyClient::connect(&format!("{forged}/x"), &["portforward.k8s.io"]).await.0, 404);
        c.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.unwrap();
    });
    assert_clean(&d, &[]);
}
