//! Connection to berthd over its unix socket, and error display.

use std::path::PathBuf;

use berth_api::v1::containers_client::ContainersClient;
use berth_api::v1::events_client::EventsClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

pub struct Client {
    pub containers: ContainersClient<Channel>,
    pub events: EventsClient<Channel>,
    pub namespace: String,
}

/// A CLI failure: one line for people, and the process exit code.
pub struct Failure {
    pub message: String,
    pub exit_code: i32,
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Failure {
        let code = match s.code() {
            tonic::Code::InvalidArgument => "invalid argument",
            tonic::Code::NotFound => "not found",
            tonic::Code::AlreadyExists => "already exists",
            tonic::Code::FailedPrecondition => "failed precondition",
            tonic::Code::DeadlineExceeded => "deadline exceeded",
            tonic::Code::Unavailable => "unavailable",
            _ => "error",
        };
        Failure { message: format!("{code}: {}", s.message()), exit_code: 1 }
    }
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Failure {
        Failure { message: message.into(), exit_code: 1 }
    }
}

pub async fn connect(socket: PathBuf, namespace: String) -> Result<Client, Failure> {
    let path = socket.clone();
    // The URI is required by the API but unused: the connector dials the socket.
    let channel = Endpoint::from_static("http://berthd")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| {
            let cause = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_else(|| e.to_string());
            Failure::new(format!("cannot reach berthd at {}: {cause}", socket.display()))
        })?;
    Ok(Client { containers: ContainersClient::new(channel.clone()), events: EventsClient::new(channel), namespace })
}
