//! The host's end of the guest's vsock when a user-space backend serves it
//! (vhost-device-vsock here; Firecracker and Cloud Hypervisor speak the
//! same "hybrid vsock"): connect to the backend's unix socket, ask for a
//! guest port with `CONNECT <port>\n`, and the backend answers `OK <n>\n`
//! once the guest accepted; from then on the stream is the guest's.

use std::io;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The longest answer a backend gives ("OK 4294967295\n").
const MAX_ANSWER: usize = 32;

/// A stream to the guest's `port` through the backend at `uds`.
pub async fn dial(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds).await?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    // Byte by byte: what follows the answer is the guest's.
    let mut answer = Vec::with_capacity(MAX_ANSWER);
    loop {
        let byte = stream.read_u8().await.map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => io::Error::new(io::ErrorKind::ConnectionRefused, "the guest refused"),
            _ => e,
        })?;
        if byte == b'\n' {
            break;
        }
        answer.push(byte);
        if answer.len() > MAX_ANSWER {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the vsock backend answered too long a line"));
        }
    }
    match answer.strip_prefix(b"OK ") {
        Some(_) => Ok(stream),
        None => Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("the vsock backend answered {:?}", String::from_utf8_lossy(&answer)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that reads the request and answers `answer`.
    async fn backend(
        answer: &'static [u8],
    ) -> (tempfile::TempDir, std::path::PathBuf, tokio::task::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vsock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = vec![0; 13];
            s.read_exact(&mut req).await.unwrap();
            s.write_all(answer).await.unwrap();
            String::from_utf8(req).unwrap()
        });
        (dir, path, task)
    }

    #[tokio::test]
    async fn connects_and_leaves_the_guests_bytes_unread() {
        let (_dir, path, task) = backend(b"OK 1073741824\nguest").await;
        let mut s = dial(&path, 1024).await.unwrap();
        assert_eq!(task.await.unwrap(), "CONNECT 1024\n");
        let mut rest = String::new();
        s.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "guest");
    }

    #[tokio::test]
    async fn a_refusal_is_an_error() {
        let (_dir, path, _task) = backend(b"").await;
        assert_eq!(dial(&path, 1024).await.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
        let (_dir, path, _task) = backend(b"NO\n").await;
        assert!(dial(&path, 1024).await.unwrap_err().to_string().contains("\"NO\""));
    }
}
