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
    while let Some(Ok(s)) = stream.next() {
        used = stream.byte_offset();
        out.push((s.width, s.height));
    }
    buf.drain(..used);
    out
}

pub(super) async fn serve<B: Backend>(
    cri: &Arc<Cri<B>>,
    session: Arc<Session>,
    mut events: mpsc::Receiver<Event>,
    target: Target,
) -> std::io::Result<()> {
    let Target::Process { container, exec, stdin, stdout, stderr, tty } = target else {
        return Ok(());
    };
    let mut wanted = vec!["error"];
    for (on, name) in [(stdin, "stdin"), (stdout, "stdout"), (stderr && !tty, "stderr"), (tty, "resize")] {
        if on {
            wanted.push(name);
        }
    }
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut early = Vec::new();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while !wanted.iter().all(|w| ids.contains_key(*w)) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Stream { id, headers })) => {
                if let Some(kind) = spdy::header(&headers, "streamtype") {
                    ids.insert(kind.to_string(), id);
                }
            }
            Ok(Some(other)) => early.push(other),
            Ok(None) => return Ok(()),
            Err(_) => return Err(std::io::Error::other("the client did not open its streams in time")),
        }
    }
    let stream = |name: &str| ids.get(name).copied();
    let error_id = stream("error").unwrap_or_default();
    let command = exec.clone().unwrap_or_default();
    let result = run(cri, &session, &container, exec, tty, &ids, early, &mut events).await;
    let _ = session.data(error_id, status(&result, &command).as_bytes()).await;
    for name in ["error", "stdout", "stderr"] {
        if let Some(id) = stream(name) {
            session.finish(id).await;
        }
    }
    Ok(())
}

/// Runs the process (or attaches to init) with the client's streams; its
/// exit code.
#[allow(clippy::too_many_arguments)]
async fn run<B: Backend>(
    cri: &Arc<Cri<B>>,
    session: &Arc<Session>,
    container: &str,
    exec: Option<Vec<String>>,
    tty: bool,
    ids: &HashMap<String, u32>,
    early: Vec<Event>,
    events: &mut mpsc::Receiver<Event>,
) -> Result<u32, String> {
    let stream = |name: &str| ids.get(name).copied();
    let attach = exec.is_none();
    let exec_id = match &exec {
        Some(args) => {
            let exec_id = berth_model::random_hex(8).map_err(|e| e.to_string())?;
            let r = pb::ExecRequest {
                namespace: NAMESPACE.into(),
                id: container.to_string(),
                exec_id: exec_id.clone(),
                args: args.clone(),
                tty,
                stdin: stream("stdin").is_some(),
                ..Default::default()
            };
            Containers::exec(&cri.b, req(r)).await.map_err(|s| s.message().to_string())?;
            exec_id
        }
        None => String::new(),
    };
    // Input: the client's stdin, fed until it ends.
    let (input, input_rx) = mpsc::channel::<Vec<u8>>(16);
    let mut pumps = Vec::new();
    if stream("stdin").is_some() || tty {
        let mut terminal = cri.b.attach_io(container, &exec_id, input_rx).await.map_err(|s| s.message().to_string())?;
        if let (true, Some(out)) = (tty, stream("stdout")) {
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
    if !tty && (stream("stdout").is_some() || stream("stderr").is_some()) {
        let logs = pb::LogsRequest {
            namespace: NAMESPACE.into(),
            id: container.to_string(),
            follow: true,
            exec_id: exec_id.clone(),
            from_end: attach,
        };
        let mut output =
            Box::pin(Containers::logs(&cri.b, req(logs)).await.map_err(|s| s.message().to_string())?.into_inner());
        let (out, err) = (stream("stdout"), stream("stderr"));
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
    // The client's input and resizes, until the process ends.
    let (stdin_id, resize_id) = (stream("stdin"), stream("resize"));
    let mut input = Some(input);
    let mut resize_buf = Vec::new();
    let mut pending = early.into_iter();
    let exec_ref = pb::ExecRef { namespace: NAMESPACE.into(), id: container.to_string(), exec_id: exec_id.clone() };
    let (b, waited) = (&cri.b, exec_ref.clone());
    let wait = async move {
        if attach {
            let r = pb::ContainerRef { namespace: waited.namespace, id: waited.id };
            Containers::wait(b, req(r)).await
        } else {
            Containers::exec_wait(b, req(waited)).await
        }
    };
    tokio::pin!(wait);
    let exit = loop {
        let event = match pending.next() {
            Some(e) => Some(e),
            None => tokio::select! {
                exit = &mut wait => break exit,
                e = events.recv() => e,
            },
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
                        id: container.to_string(),
                        exec_id: exec_id.clone(),
                        width,
                        height,
                    };
                    let _ = Containers::resize(&cri.b, req(r)).await;
                }
            }
            Some(_) => {}
            // The client went away: an attach ends, an exec runs on.
            None if attach => return Err("the client went away".into()),
            None => break (&mut wait).await,
        }
    };
    drop(input);
    for pump in pumps {
        let _ = tokio::time::timeout(DRAIN, pump).await;
    }
    if !attach {
        let _ = Containers::exec_delete(&cri.b, req(exec_ref)).await;
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
    }
}
