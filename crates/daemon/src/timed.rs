//! Times each request to the CRI socket for the metrics
//! (`berth_cri_request_duration_seconds{method}`): a tower layer over the
//! gRPC server, measuring until the handler returns its response (for a
//! stream, when the stream begins, not when it ends).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// Durations in seconds by method (`RunPodSandbox`, `ListContainers` …).
pub type RequestHistograms = Family<Vec<(&'static str, String)>, Histogram, fn() -> Histogram>;

pub fn histograms() -> RequestHistograms {
    Family::new_with_constructor(crate::phases::histogram)
}

/// The layer that times each request into `h`.
pub fn layer<S>(h: RequestHistograms) -> impl tower::Layer<S, Service = Timed<S>> + Clone {
    tower::layer::layer_fn(move |inner| Timed { inner, histograms: h.clone() })
}

#[derive(Clone)]
pub struct Timed<S> {
    inner: S,
    histograms: RequestHistograms,
}

/// CRI v1's methods (RuntimeService, ImageService).
const METHODS: &[&str] = &[
    "Version",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ListContainers",
    "ContainerStatus",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "UpdateRuntimeConfig",
    "Status",
    "CheckpointContainer",
    "GetContainerEvents",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "RuntimeConfig",
    "UpdatePodSandboxResources",
    "ListImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
];

/// The method of a CRI gRPC path `/runtime.v1.Service/Method`; anything
/// else is "other" (a label per stray path would grow without end).
fn method(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((service, m)) if service.starts_with("/runtime.v1.") && METHODS.contains(&m) => m.to_string(),
        _ => "other".into(),
    }
}

impl<S, B> tower::Service<hyper::Request<B>> for Timed<S>
where
    S: tower::Service<hyper::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: hyper::Request<B>) -> Self::Future {
        let (method, started) = (method(req.uri().path()), Instant::now());
        let histograms = self.histograms.clone();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let r = answer.await;
            histograms.get_or_create(&vec![("method", method)]).observe(started.elapsed().as_secs_f64());
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_named_by_the_last_path_segment_of_a_cri_service() {
        assert_eq!(method("/runtime.v1.RuntimeService/RunPodSandbox"), "RunPodSandbox");
        assert_eq!(method("/runtime.v1.ImageService/PullImage"), "PullImage");
        for stray in ["/", "/x", "/other.Service/Method", "/runtime.v1.RuntimeService/NoSuchMethod", "/runtime.v1.X/"] {
            assert_eq!(method(stray), "other", "{stray}");
        }
    }
}
