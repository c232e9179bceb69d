//! ExecSync: a command in a running container, its output collected (each
//! stream capped at 16 MiB, the rest discarded, as the CRI API asks since
//! CVE-2022-1708) and its exit code returned; past the timeout it is
//! killed and the call fails with DeadlineExceeded. CheckpointContainer:
//! a CRIU checkpoint of a running container exported as an archive.

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
    pub(crate) async fn exec_sync(&self, r: cri::ExecSyncRequest) -> Result<cri::ExecSyncResponse, Status> {
        if r.cmd.is_empty() {
            return Err(invalid("cmd is required"));
        }
        let ctr = self.ctr(&r.container_id).await?;
        let exec_id = berth_model::random_hex(8).map_err(|e| Status::internal(format!("read /dev/urandom: {e}")))?;
        let id = ctr.c.id;
        let exec = pb::ExecRequest {
            namespace: NAMESPACE.into(),
            id: id.clone(),
            exec_id: exec_id.clone(),
            args: r.cmd.clone(),
            ..Default::default()
        };
        Containers::exec(&*self.b, req(exec)).await?;
        let eref = pb::ExecRef { namespace: NAMESPACE.into(), id: id.clone(), exec_id: exec_id.clone() };
        let logs = pb::LogsRequest {
            namespace: NAMESPACE.into(),
            id: id.clone(),
            follow: true,
            exec_id: exec_id.clone(),
            from_end: false,
        };
        let run = async {
            let mut stream = std::pin::pin!(Containers::logs(&*self.b, req(logs)).await?.into_inner());
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                let buf = if chunk.stream == pb::Stream::Stderr as i32 { &mut stderr } else { &mut stdout };
                append_capped(buf, &chunk.data);
            }
            let exit = Containers::exec_wait(&*self.b, req(eref.clone())).await?.into_inner();
            Ok::<_, Status>((stdout, stderr, exit))
        };
        let result = match u64::try_from(r.timeout) {
            Ok(secs) if secs > 0 => tokio::time::timeout(Duration::from_secs(secs), run).await.ok(),
            _ => Some(run.await),
        };
        let Some(result) = result else {
            let kill = pb::KillRequest {
                namespace: NAMESPACE.into(),
                id: id.clone(),
                signal: SIGKILL,
                all: false,
                exec_id: exec_id.clone(),
            };
            let _ = Containers::kill(&*self.b, req(kill)).await;
            let _ = Containers::exec_wait(&*self.b, req(eref.clone())).await;
            self.forget_exec(eref).await;
            return Err(Status::deadline_exceeded(format!(
                "command {:?} in container {id} timed out after {}s",
                r.cmd, r.timeout
            )));
        };
        self.forget_exec(eref).await;
        let (stdout, stderr, exit) = result?;
        Ok(cri::ExecSyncResponse { stdout, stderr, exit_code: exit.code as i32 })
    }

    /// A checkpoint of a running container written as an archive at
    /// `location` (kubelet's forensic checkpoint); the container keeps
    /// running and berth keeps no copy.
    pub(crate) async fn checkpoint_container(&self, r: cri::CheckpointContainerRequest) -> Result<(), Status> {
        if !r.location.starts_with('/') {
            return Err(invalid("location must be an absolute path"));
        }
        let c = self.ctr(&r.container_id).await?;
        let name = format!("cri-{}", berth_model::random_hex(6).map_err(|e| Status::internal(e.to_string()))?);
        let create = pb::CheckpointRequest {
            namespace: NAMESPACE.into(),
            id: c.c.id.clone(),
            name: name.clone(),
            leave_running: true,
            ..Default::default()
        };
        let work = async {
            Checkpoints::create(&*self.b, req(create)).await?;
            let export = pb::CheckpointExportRequest {
                namespace: NAMESPACE.into(),
                id: c.c.id.clone(),
                name: name.clone(),
                path: r.location.clone(),
            };
            let exported = Checkpoints::export(&*self.b, req(export)).await.map(drop);
            let remove = pb::CheckpointRef { namespace: NAMESPACE.into(), id: c.c.id.clone(), name: name.clone() };
            if let Err(e) = Checkpoints::remove(&*self.b, req(remove)).await {
                tracing::warn!("removing the exported checkpoint {name}: {e}");
            }
            exported
        };
        match u64::try_from(r.timeout) {
            Ok(secs) if secs > 0 => tokio::time::timeout(Duration::from_secs(secs), work)
                .await
                .map_err(|_| Status::deadline_exceeded(format!("checkpoint of {} took over {secs}s", c.c.id)))?,
            _ => work.await,
        }
    }

    /// Drops berth's record of a finished exec.
    async fn forget_exec(&self, eref: pb::ExecRef) {
        if let Err(e) = Containers::exec_delete(&*self.b, req(eref)).await {
            tracing::warn!("removing a finished ExecSync process: {e}");
        }
    }
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
