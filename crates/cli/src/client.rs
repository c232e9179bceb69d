//! Connection to berthd over its unix socket, and error display.

use std::path::PathBuf;
use std::sync::OnceLock;

use berth_api::v1::checkpoints_client::CheckpointsClient;
use berth_api::v1::containers_client::ContainersClient;
use berth_api::v1::events_client::EventsClient;
use berth_api::v1::images_client::ImagesClient;
use berth_api::v1::networks_client::NetworksClient;
use berth_api::v1::sandboxes_client::SandboxesClient;
use berth_api::v1::system_client::SystemClient;
use berth_api::v1::volumes_client::VolumesClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

pub struct Client {
    pub containers: ContainersClient<Channel>,
    pub events: EventsClient<Channel>,
    pub images: ImagesClient<Channel>,
    pub volumes: VolumesClient<Channel>,
    pub networks: NetworksClient<Channel>,
    pub system: SystemClient<Channel>,
    pub sandboxes: SandboxesClient<Channel>,
    pub checkpoints: CheckpointsClient<Channel>,
    pub namespace: String,
}

/// A CLI failure: one line for people, and the process exit code.
pub struct Failure {
    pub message: String,
    pub exit_code: i32,
}

/// The socket this CLI talks to, for errors that lose the connection.
static SOCKET: OnceLock<PathBuf> = OnceLock::new();

/// "berthd is not answering at PATH: CAUSE" — the daemon is down, or
/// restarting, or hung up mid-call.
fn not_answering(cause: &str) -> String {
    match SOCKET.get() {
        Some(path) => format!("berthd is not answering at {}: {cause}", path.display()),
        None => format!("berthd is not answering: {cause}"),
    }
}

/// The innermost cause of a call that failed on the client's side of the
/// connection (berthd's own statuses carry no source), if it is one.
fn transport_cause(s: &tonic::Status) -> Option<String> {
    let mut cause: &(dyn std::error::Error + 'static) = std::error::Error::source(s)?;
    let mut transport = false;
    loop {
        transport |= cause.is::<tonic::transport::Error>() || cause.is::<std::io::Error>();
        match cause.source() {
            Some(inner) => cause = inner,
            None => break,
        }
    }
    transport.then(|| cause.to_string())
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Failure {
        if let Some(cause) = transport_cause(&s) {
            return Failure::new(not_answering(&cause));
        }
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

/// Runs `remove` for each name, printing the ones removed and one line
/// per failure; the exit code is the last failure's (0 if none).
pub async fn remove_each(
    names: Vec<String>,
    mut remove: impl AsyncFnMut(String) -> Result<(), tonic::Status>,
) -> Result<i32, Failure> {
    let mut exit_code = 0;
    for name in names {
        match remove(name.clone()).await {
            Ok(()) => println!("{name}"),
            Err(e) => {
                let f = Failure::from(e);
                eprintln!("berth: {}", f.message);
                exit_code = f.exit_code;
            }
        }
    }
    Ok(exit_code)
}

/// Checks the token of the page after the one asked for with `asked`,
/// which brought `got` items: a next page must progress, or a broken
/// server would keep a listing going forever. Empty: that was the last.
pub fn next_page(asked: &str, next: String, got: usize) -> Result<String, Failure> {
    if !next.is_empty() && (next == asked || got == 0) {
        return Err(Failure::new(format!("berthd sent a page token that does not progress ({next:?})")));
    }
    Ok(next)
}

pub async fn connect(socket: PathBuf, namespace: String) -> Result<Client, Failure> {
    let _ = SOCKET.set(socket.clone());
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
            let denied = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied);
            // berthd may well be answering, just not to us.
            if denied {
                return Failure::new(format!("cannot reach berthd at {}: {cause}", socket.display()));
            }
            Failure::new(not_answering(&cause))
        })?;
    Ok(Client {
        containers: ContainersClient::new(channel.clone()),
        events: EventsClient::new(channel.clone()),
        images: ImagesClient::new(channel.clone()),
        volumes: VolumesClient::new(channel.clone()),
        networks: NetworksClient::new(channel.clone()),
        sandboxes: SandboxesClient::new(channel.clone()),
        checkpoints: CheckpointsClient::new(channel.clone()),
        system: SystemClient::new(channel),
        namespace,
    })
}
