//! The Task service as ttrpc serves it, with every call that changes
//! something run to its end. ttrpc drops the handlers of a connection
//! when the connection goes (berthd killed mid-call, a client that gives
//! up): a Start dropped while the runtime starts the container left a
//! running container that the shim went on reporting as created, so
//! berthd's recovery recorded no start; an exec start dropped there left a
//! process with no exit watcher; a pause dropped there a frozen cgroup the
//! shim called running. Here each such call runs in a task of its own,
//! which the connection's end does not cancel, and the caller (if still
//! there) gets its answer as before. Calls that only read (state, pids,
//! stats, connect) and the wait for an exit are served in place: dropping
//! them changes nothing.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use berth_model::Code;
use berth_shim::to_ttrpc;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::Result as TtrpcResult;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;

/// `T`'s Task service, its changing calls run to the end.
pub(crate) struct ToTheEnd<T>(pub(crate) Arc<T>);

/// Runs `work` to its end even if the caller is dropped. Its first steps,
/// up to its first wait, run here and now, as they did when the call ran
/// in place: ttrpc reads a connection's next request only once a handler
/// waits, so a call's first steps (an exec registered, a start's checks)
/// still come before the next request's. Only the rest moves to a task of
/// its own, which is polled at once and so takes over every wake-up.
async fn run_to_the_end<R: Send + 'static>(
    work: impl Future<Output = R> + Send + 'static,
) -> Result<R, tokio::task::JoinError> {
    let mut work = Box::pin(work);
    if let Poll::Ready(done) = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await {
        return Ok(done);
    }
    tokio::spawn(work).await
}

/// The Task impl: the `to_the_end` methods run in a task of their own
/// (the services here read nothing of the request's context, so the task
/// gets an empty one); the `in_place` ones are awaited where they are.
macro_rules! task_impl {
    (
        to_the_end { $($spawned:ident($sreq:ty) -> $sresp:ty;)* }
        in_place { $($direct:ident($dreq:ty) -> $dresp:ty;)* }
    ) => {
        #[async_trait::async_trait]
        impl<T: Task + Send + Sync + 'static> Task for ToTheEnd<T> {
            $(
                async fn $spawned(&self, _ctx: &TtrpcContext, req: $sreq) -> TtrpcResult<$sresp> {
                    let service = self.0.clone();
                    run_to_the_end(async move { service.$spawned(&TtrpcContext::default(), req).await })
                        .await
                        .map_err(|e| to_ttrpc(Code::Internal, format!("{}: {e}", stringify!($spawned))))?
                }
            )*
            $(
                async fn $direct(&self, ctx: &TtrpcContext, req: $dreq) -> TtrpcResult<$dresp> {
                    self.0.$direct(ctx, req).await
                }
            )*
        }
    };
}

task_impl! {
    to_the_end {
        create(api::CreateTaskRequest) -> api::CreateTaskResponse;
        start(api::StartRequest) -> api::StartResponse;
        delete(api::DeleteRequest) -> api::DeleteResponse;
        pause(api::PauseRequest) -> Empty;
        resume(api::ResumeRequest) -> Empty;
        checkpoint(api::CheckpointTaskRequest) -> Empty;
        kill(api::KillRequest) -> Empty;
        exec(api::ExecProcessRequest) -> Empty;
        resize_pty(api::ResizePtyRequest) -> Empty;
        close_io(api::CloseIORequest) -> Empty;
        update(api::UpdateTaskRequest) -> Empty;
        shutdown(api::ShutdownRequest) -> Empty;
    }
    in_place {
        state(api::StateRequest) -> api::StateResponse;
        pids(api::PidsRequest) -> api::PidsResponse;
        wait(api::WaitRequest) -> api::WaitResponse;
        stats(api::StatsRequest) -> api::StatsResponse;
        connect(api::ConnectRequest) -> api::ConnectResponse;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_call_still_runs_to_its_end_and_its_first_steps_run_in_place() {
        let steps = Arc::new(AtomicU32::new(0));
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let s = steps.clone();
        let mut call = Box::pin(run_to_the_end(async move {
            s.store(1, Ordering::SeqCst);
            let _ = wait.await;
            s.store(2, Ordering::SeqCst);
        }));
        // One poll of the call, as ttrpc's handler gets before it waits.
        let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        assert!(first.is_pending());
        assert_eq!(steps.load(Ordering::SeqCst), 1, "the first steps ran in place");
        // The connection goes: ttrpc drops the handler.
        drop(call);
        go.send(()).unwrap();
        for _ in 0..100 {
            if steps.load(Ordering::SeqCst) == 2 {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the dropped call did not finish");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_call_that_never_waits_answers_in_place() {
        assert_eq!(run_to_the_end(async { 7 }).await.unwrap(), 7);
    }
}
