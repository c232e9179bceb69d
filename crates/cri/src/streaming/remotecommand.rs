//! Kubernetes' remote command protocol, version 4 (`v4.channel.k8s.io`),
//! for exec and attach: the client opens an `error` stream and, as its
//! request asked, `stdin`, `stdout`, `stderr` (not with a terminal) and
//! `resize` (with one: JSON `{"Width":W,"Height":H}` messages). Output goes
//! out on its streams as it comes; at the end the `error` stream carries a
//! JSON Status: `Success`, or `Failure` with reason `NonZeroExitCode` and
//! the code as an `ExitCode` cause, which kubectl and crictl turn into
//! their own exit code.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_api::v1 as pb;
use futures_util::StreamExt;
use pb::containers_server::Containers;
use tokio::sync::mpsc;

use super::{Event, STREAM_CREATION_TIMEOUT, Session, Target};
use crate::{Backend, Cri, NAMESPACE, req, spdy};

/// How long output may still come after the process has exited.
const DRAIN: Duration = Duration::from_secs(5);
/// The most input a client may send before its streams are all open.
const MAX_EARLY: usize = 1 << 20;

/// The Status JSON the error stream ends with.
fn status(result: &Result<u32, String>, command: &[String]) -> String {
    let json = match result {
        Ok(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Ok(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(message) => serde_json::json!({
            "metadata": {}, "status": "Failure", "message": message, "reason": "InternalError",
        }),
    };
    json.to_string()
}

/// Terminal sizes in what the resize stream has sent so far (whole JSON
/// objects; a partial one stays in `buf`).
fn sizes(buf: &mut Vec<u8>) -> Vec<(u32, u32)> {
    #[derive(serde::Deserialize)]
    struct Size {
        #[serde(rename = "Width")]
        width: u32,
        #[serde(rename = "Height")]
        height: u32,
    }
    let mut out = Vec::new();
    let mut stream = serde_json::Deserializer::from_slice(buf).into_iter::<Size>();
    let mut used = 0;
    loop {
        match stream.next() {
            Some(Ok(s)) => {
                used = stream.byte_offset();
                out.push((s.width, s.height));
            }
            // A message cut short: the rest comes in the next frame.
            Some(Err(e)) if e.is_eof() && buf.len() - used < 4096 => break,
            // Malformed: dropped, and the next messages are read again.
            Some(Err(_)) => {
                used = buf.len();
                break;
            }
            None => break,
        }
    }
    buf.drain(..used);
    out
}

/// The client's side of a session once its streams are open.
struct Client<'a> {
    ids: HashMap<String, u32>,
    /// Events that came while the streams were being opened.
    early: std::vec::IntoIter<Event>,
    events: &'a mut mpsc::Receiver<Event>,
}

impl Client<'_> {
    fn stream(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    async fn next(&mut self) -> Option<Event> {
        match self.early.next() {
            Some(e) => Some(e),
            None => self.events.recv().await,
        }
    }
}

/// The process a session drives.
struct Process {
    container: String,
    /// Empty for an attach to init.
    exec_id: String,
    tty: bool,
    /// Whether the end of the client's input ends the process's input
    /// (an exec, or a container made with `stdin_once`).
    close_stdin: bool,
}

pub(super) async fn serve<B: Backend>(
    cri: &Arc<Cri<B>>,
    session: Arc<Session>,
    mut events: mpsc::Receiver<Event>,
    target: Target,
) -> std::io::Result<()> {
    let Target::Process { container, exec, stdin, stdout, stderr, tty, stdin_once } = target else {
        return Ok(());
    };
    let mut wanted = vec!["error"];
    for (on, name) in [(stdin, "stdin"), (stdout, "stdout"), (stderr && !tty, "stderr"), (tty, "resize")] {
        if on {
            wanted.push(name);
        }
    }
    let mut ids: HashMap<String, u32> = HashMap::new();
    let (mut early, mut early_bytes) = (Vec::new(), 0);
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while !wanted.iter().all(|w| ids.contains_key(*w)) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Stream { id, headers })) => {
                if let Some(kind) = spdy::header(&headers, "streamtype") {
                    ids.insert(kind.to_string(), id);
                }
            }
            Ok(Some(other)) => {
                early_bytes += if let Event::Data { data, .. } = &other { data.len() } else { 0 };
                if early_bytes > MAX_EARLY {
                    return Err(std::io::Error::other("too much input before the streams were open"));
                }
                early.push(other);
            }
            Ok(None) => return Ok(()),
            Err(_) => return Err(std::io::Error::other("the client did not open its streams in time")),
        }
    }
    let command = exec.clone().unwrap_or_default();
    let mut client = Client { ids, early: early.into_iter(), events: &mut events };
    let result = match exec {
        Some(args) => run_exec(cri, &session, &mut client, container, args, tty).await,
        None => {
            let p = Process { container, exec_id: String::new(), tty, close_stdin: stdin_once };
            drive(cri, &session, &mut client, &p).await
        }
    };
    let error_id = client.stream("error").unwrap_or_default();
    let _ = session.data(error_id, status(&result, &command).as_bytes()).await;
    for name in ["error", "stdout", "stderr"] {
        if let Some(id) = client.stream(name) {
            session.finish(id).await;
        }
    }
    Ok(())
}

/// Starts an exec, drives it, and removes it in any case: killed first if
/// the session ended before it (the client went away, or berth failed).
async fn run_exec<B: Backend>(
    cri: &Arc<Cri<B>>,
    session: &Arc<Session>,
    client: &mut Client<'_>,
    container: String,
    args: Vec<String>,
    tty: bool,
) -> Result<u32, String> {
    let exec_id = berth_model::random_hex(8).map_err(|e| e.to_string())?;
    let r = pb::ExecRequest {
        namespace: NAMESPACE.into(),
        id: container.clone(),
        exec_id: exec_id.clone(),
        args,
        tty,
        stdin: client.stream("stdin").is_some(),
        ..Default::default()
    };
    Containers::exec(&*cri.b, req(r)).await.map_err(|s| s.message().to_string())?;
    let exec_ref = pb::ExecRef { namespace: NAMESPACE.into(), id: container.clone(), exec_id: exec_id.clone() };
    let p = Process { container, exec_id, tty, close_stdin: true };
    let result = drive(cri, session, client, &p).await;
    tracing::debug!(container = %p.container, exec = %p.exec_id, "exec session ended: {result:?}");
    if result.is_err() {
        let kill = pb::KillRequest {
            namespace: NAMESPACE.into(),
            id: p.container.clone(),
            signal: 9,
            all: true,
            exec_id: p.exec_id.clone(),
        };
        if let Err(e) = Containers::kill(&*cri.b, req(kill)).await {
            tracing::debug!("killing an exec left by its client: {e}");
        }
        let _ = tokio::time::timeout(DRAIN, Containers::exec_wait(&*cri.b, req(exec_ref.clone()))).await;
    }
    let _ = Containers::exec_delete(&*cri.b, req(exec_ref)).await;
    result
}

/// Copies the client's input and resizes to the process and its output to
/// the client until the process ends; its exit code.
async fn drive<B: Backend>(
    cri: &Arc<Cri<B>>,
    session: &Arc<Session>,
    client: &mut Client<'_>,
    p: &Process,
) -> Result<u32, String> {
    let attach = p.exec_id.is_empty();
    // Input: the client's stdin, fed until it ends.
    let (input, input_rx) = mpsc::channel::<Vec<u8>>(16);
    let mut pumps = Vec::new();
    if client.stream("stdin").is_some() || p.tty {
        let mut terminal = cri
            .b
            .attach_io(&p.container, &p.exec_id, input_rx, p.close_stdin)
            .await
            .map_err(|s| s.message().to_string())?;
        if let (true, Some(out)) = (p.tty, client.stream("stdout")) {
            let session = session.clone();
            pumps.push(tokio::spawn(async move {
                while let Some(data) = terminal.recv().await {
                    if session.data(out, &data).await.is_err() {
                        break;
                    }
                }
            }));
        }
    }
    let (out, err) = (client.stream("stdout"), client.stream("stderr"));
    if !p.tty && (out.is_some() || err.is_some()) {
        let logs = pb::LogsRequest {
            namespace: NAMESPACE.into(),
            id: p.container.clone(),
            follow: true,
            exec_id: p.exec_id.clone(),
            from_end: attach,
            ..Default::default()
        };
        let output = Containers::logs(&*cri.b, req(logs)).await.map_err(|s| s.message().to_string())?;
        let mut output = Box::pin(output.into_inner());
        let session = session.clone();
        pumps.push(tokio::spawn(async move {
            while let Some(Ok(chunk)) = output.next().await {
                let to = if chunk.stream == pb::Stream::Stderr as i32 { err } else { out };
                if let Some(id) = to
                    && session.data(id, &chunk.data).await.is_err()
                {
                    break;
                }
            }
        }));
    }
    let (stdin_id, resize_id) = (client.stream("stdin"), client.stream("resize"));
    let mut input = Some(input);
    let mut resize_buf = Vec::new();
    let exec_ref = pb::ExecRef { namespace: NAMESPACE.into(), id: p.container.clone(), exec_id: p.exec_id.clone() };
    let b = &cri.b;
    let wait = async move {
        if attach {
            let r = pb::ContainerRef { namespace: exec_ref.namespace, id: exec_ref.id };
            Containers::wait(&**b, req(r)).await
        } else {
            Containers::exec_wait(&**b, req(exec_ref)).await
        }
    };
    tokio::pin!(wait);
    let exit = loop {
        let event = tokio::select! {
            exit = &mut wait => break exit,
            e = client.next() => e,
        };
        match event {
            Some(Event::Data { id, data }) if Some(id) == stdin_id => {
                if let Some(tx) = &input
                    && tx.send(data).await.is_err()
                {
                    input = None;
                }
            }
            Some(Event::End { id }) if Some(id) == stdin_id => input = None,
            Some(Event::Data { id, data }) if Some(id) == resize_id => {
                resize_buf.extend_from_slice(&data);
                for (width, height) in sizes(&mut resize_buf) {
                    let r = pb::ResizeRequest {
                        namespace: NAMESPACE.into(),
                        id: p.container.clone(),
                        exec_id: p.exec_id.clone(),
                        width,
                        height,
                    };
                    let _ = Containers::resize(&*cri.b, req(r)).await;
                }
            }
            Some(_) => {}
            None => {
                for pump in &pumps {
                    pump.abort();
                }
                return Err("the client went away".into());
            }
        }
    };
    drop(input);
    for mut pump in pumps {
        if tokio::time::timeout(DRAIN, &mut pump).await.is_err() {
            pump.abort();
        }
    }
    exit.map(|e| e.into_inner().code).map_err(|s| s.message().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_the_exit_code_as_kubectl_reads_it() {
        let cmd = vec!["sh".to_string()];
        assert_eq!(status(&Ok(0), &cmd), r#"{"metadata":{},"status":"Success"}"#);
        let v: serde_json::Value = serde_json::from_str(&status(&Ok(3), &cmd)).unwrap();
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0], serde_json::json!({"reason": "ExitCode", "message": "3"}));
        let v: serde_json::Value = serde_json::from_str(&status(&Err("no such container".into()), &cmd)).unwrap();
        assert_eq!((v["status"].as_str(), v["message"].as_str()), (Some("Failure"), Some("no such container")));
    }

    #[test]
    fn resize_messages_are_read_whole() {
        let mut buf = br#"{"Width":80,"Height":24}{"Width":100,"#.to_vec();
        assert_eq!(sizes(&mut buf), [(80, 24)]);
        buf.extend_from_slice(br#""Height":40}"#);
        assert_eq!(sizes(&mut buf), [(100, 40)]);
        assert!(buf.is_empty());
        // A malformed message is dropped; the next one is read.
        let mut buf = br#"{"Width":-1,"Height":2}"#.to_vec();
        assert!(sizes(&mut buf).is_empty() && buf.is_empty());
        buf.extend_from_slice(br#"{"Width":5,"Height":6}"#);
        assert_eq!(sizes(&mut buf), [(5, 6)]);
    }
}
