//! ExecSync: a command in a running container, its output collected (each
//! stream capped at 16 MiB, the rest discarded, as the CRI API asks since
//! CVE-2022-1708) and its exit code returned; past the timeout it is
//! killed and the call fails with DeadlineExceeded. CheckpointContainer:
//! a CRIU checkpoint of a running container exported as an archive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use berth_api::v1 as pb;
use futures_util::StreamExt;
use pb::checkpoints_server::Checkpoints;
use pb::containers_server::Containers;
use tonic::Status;

use crate::{Backend, Cri, NAMESPACE, cri, invalid, req};

const SIGKILL: u32 = 9;

/// The most of each stream ExecSync returns.
pub const MAX_OUTPUT: usize = 16 << 20;

/// Appends what still fits under [`MAX_OUTPUT`].
fn append_capped(buf: &mut Vec<u8>, data: &[u8]) {
    let room = MAX_OUTPUT.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

impl<B: Backend> Cri<B> {
    /// Runs in a task of its own: a client that gives up (its call is
    /// cancelled) leaves neither the process nor berth's record of it.
    pub(crate) async fn exec_sync(&self, r: cri::ExecSyncRequest) -> Result<cri::ExecSyncResponse, Status> {
        if r.cmd.is_empty() {
            return Err(invalid("cmd is required"));
        }
        let ctr = self.ctr(&r.container_id).await?;
        let task = tokio::spawn(exec_sync(self.b.clone(), ctr.c.id, r.cmd, r.timeout));
        task.await.map_err(|e| Status::internal(format!("ExecSync task: {e}")))?
    }

    /// A checkpoint of a running container written as an archive at
    /// `location` (kubelet's forensic checkpoint); the container keeps
    /// running and berth keeps no copy. The work runs in a task of its own:
    /// past the timeout (or if the call is cancelled) it still cleans up,
    /// and an archive that comes too late is removed.
    pub(crate) async fn checkpoint_container(&self, r: cri::CheckpointContainerRequest) -> Result<(), Status> {
        if !r.location.starts_with('/') {
            return Err(invalid("location must be an absolute path"));
        }
        let c = self.ctr(&r.container_id).await?;
        let name = format!("cri-{}", berth_model::random_hex(6).map_err(|e| Status::internal(e.to_string()))?);
        let abandoned = Arc::new(AtomicBool::new(false));
        let (b, id, location, gave_up) = (self.b.clone(), c.c.id.clone(), r.location.clone(), abandoned.clone());
        let work = tokio::spawn(async move {
            let create = pb::CheckpointRequest {
                namespace: NAMESPACE.into(),
                id: id.clone(),
                name: name.clone(),
                leave_running: true,
                ..Default::default()
            };
            Checkpoints::create(&*b, req(create)).await?;
            let export = pb::CheckpointExportRequest {
                namespace: NAMESPACE.into(),
                id: id.clone(),
                name: name.clone(),
                path: location.clone(),
            };
            let exported = Checkpoints::export(&*b, req(export)).await.map(drop);
            let remove = pb::CheckpointRef { namespace: NAMESPACE.into(), id, name: name.clone() };
            if let Err(e) = Checkpoints::remove(&*b, req(remove)).await {
                tracing::warn!("removing the exported checkpoint {name}: {e}");
            }
            if exported.is_ok() && gave_up.load(Ordering::SeqCst) {
                let _ = std::fs::remove_file(&location);
            }
            exported
        });
        let joined = match u64::try_from(r.timeout) {
            Ok(secs) if secs > 0 => match tokio::time::timeout(Duration::from_secs(secs), work).await {
                Ok(joined) => joined,
                Err(_) => {
                    abandoned.store(true, Ordering::SeqCst);
                    return Err(Status::deadline_exceeded(format!("checkpoint of {} took over {secs}s", c.c.id)));
                }
            },
            _ => work.await,
        };
        joined.map_err(|e| Status::internal(format!("checkpoint task: {e}")))?
    }
}

/// ExecSync proper.
async fn exec_sync<B: Backend>(
    b: Arc<B>,
    id: String,
    cmd: Vec<String>,
    timeout: i64,
) -> Result<cri::ExecSyncResponse, Status> {
    let exec_id = berth_model::random_hex(8).map_err(|e| Status::internal(format!("read /dev/urandom: {e}")))?;
    let exec = pb::ExecRequest {
        namespace: NAMESPACE.into(),
        id: id.clone(),
        exec_id: exec_id.clone(),
        args: cmd.clone(),
        ..Default::default()
    };
    Containers::exec(&*b, req(exec)).await?;
    let eref = pb::ExecRef { namespace: NAMESPACE.into(), id: id.clone(), exec_id: exec_id.clone() };
    let logs = pb::LogsRequest {
        namespace: NAMESPACE.into(),
        id: id.clone(),
        follow: true,
        exec_id: exec_id.clone(),
        from_end: false,
        ..Default::default()
    };
    let run = async {
        let mut stream = std::pin::pin!(Containers::logs(&*b, req(logs)).await?.into_inner());
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            let buf = if chunk.stream == pb::Stream::Stderr as i32 { &mut stderr } else { &mut stdout };
            append_capped(buf, &chunk.data);
        }
        let exit = Containers::exec_wait(&*b, req(eref.clone())).await?.into_inner();
        Ok::<_, Status>((stdout, stderr, exit))
    };
    let result = match u64::try_from(timeout) {
        Ok(secs) if secs > 0 => tokio::time::timeout(Duration::from_secs(secs), run).await.ok(),
        _ => Some(run.await),
    };
    // Past the timeout, or when berth failed half way: the process goes.
    if !matches!(result, Some(Ok(_))) {
        let kill = pb::KillRequest { namespace: NAMESPACE.into(), id: id.clone(), signal: SIGKILL, all: true, exec_id };
        let _ = Containers::kill(&*b, req(kill)).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), Containers::exec_wait(&*b, req(eref.clone()))).await;
    }
    if let Err(e) = Containers::exec_delete(&*b, req(eref)).await {
        tracing::warn!("removing a finished ExecSync process: {e}");
    }
    let Some(result) = result else {
        return Err(Status::deadline_exceeded(format!("command {cmd:?} in container {id} timed out after {timeout}s")));
    };
    let (stdout, stderr, exit) = result?;
    Ok(cri::ExecSyncResponse { stdout, stderr, exit_code: exit.code as i32 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_capped_per_stream() {
        let mut buf = Vec::new();
        append_capped(&mut buf, &vec![1u8; MAX_OUTPUT - 10]);
        append_capped(&mut buf, &[2u8; 100]);
        assert_eq!(buf.len(), MAX_OUTPUT);
        assert_eq!(&buf[MAX_OUTPUT - 11..], &[1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]);
        append_capped(&mut buf, &[3u8; 5]);
        assert_eq!(buf.len(), MAX_OUTPUT);
    }
}
