//! A process's stdio across a VM's vsock (docs/vm.md). The host's shim
//! names each stream of a process in its guest `vsock:PORT:TOKEN`; the
//! guest's shim dials the host (CID 2) at PORT, sends TOKEN and a newline,
//! and then the stream's bytes. The host's shim (`vm/stdio.rs`) takes only
//! a connection that proves the token (a container in the guest can dial
//! the host too) and copies the stream to or from the process's real
//! target on the host, so no host file is ever shared with the guest.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

const SCHEME: &str = "vsock:";

/// Random bytes in a token (sent as twice as many hex digits).
const TOKEN_BYTES: usize = 16;

/// The line a connection starts with: the token and a newline.
pub const TOKEN_LINE: usize = 2 * TOKEN_BYTES + 1;

/// The name a guest gets for the stream at `port` proved by `token`.
pub fn name(port: u32, token: &str) -> String {
    format!("{SCHEME}{port}:{token}")
}

/// The port and token of a stream's name; `None` for anything else.
pub fn parse(path: &str) -> Option<(u32, &str)> {
    let (port, token) = path.strip_prefix(SCHEME)?.split_once(':')?;
    let hex = token.len() + 1 == TOKEN_LINE && token.bytes().all(|b| b.is_ascii_hexdigit());
    Some((port.parse().ok()?, token)).filter(|_| hex)
}

/// A new random token.
pub fn new_token() -> io::Result<String> {
    Ok(hex::encode(random::<TOKEN_BYTES>()?))
}

/// Host ports a stream may get: 2^26 above the privileged ones, so its
/// socket's name (`vsock_<port>`) has at most 8 digits.
const STREAM_PORTS: u32 = 1 << 26;

/// A random host port for a stream.
pub fn random_port() -> io::Result<u32> {
    let n = u32::from_ne_bytes(random::<4>()?);
    Ok(1024 + n % STREAM_PORTS)
}

fn random<const N: usize>() -> io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// In the guest: the stream named `path`, dialled and proved, as a
/// non-blocking descriptor.
pub fn dial(path: &str) -> io::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, VsockAddr, connect, socket};
    let (port, token) =
        parse(path).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{path} names no stream")))?;
    let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    match connect(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_HOST, port)) {
        // A signal (the shim's SIGCHLD) cut the wait short; the connect
        // goes on: wait for it to finish and take its outcome.
        Err(nix::errno::Errno::EINTR) => finish_connect(&fd)?,
        other => other?,
    }
    let mut stream = std::fs::File::from(fd);
    stream.write_all(format!("{token}\n").as_bytes())?;
    let fd = OwnedFd::from(stream);
    crate::tty::set_nonblocking(&fd)?;
    Ok(fd)
}

/// Waits for an interrupted connect of `fd` to finish; its error, if any.
fn finish_connect(fd: &OwnedFd) -> io::Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => break,
        }
    }
    match nix::sys::socket::getsockopt(fd, nix::sys::socket::sockopt::SocketError)? {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_nothing_else_does() {
        let token = new_token().unwrap();
        assert_eq!(token.len() + 1, TOKEN_LINE);
        assert_ne!(token, new_token().unwrap());
        assert_eq!(parse(&name(2049, &token)), Some((2049, token.as_str())));
        for bad in ["", "/var/log/x", "vsock:", "vsock:1:", "vsock:x:00", "vsock:1:zz", "vsock:99999999999:00"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(parse(&format!("vsock:1:{}", "g".repeat(TOKEN_LINE - 1))), None);
        let ports: Vec<u32> = (0..64).map(|_| random_port().unwrap()).collect();
        assert!(ports.iter().all(|p| (1024..1024 + STREAM_PORTS).contains(p)), "{ports:?}");
        assert!(ports.windows(2).any(|w| w[0] != w[1]));
    }
}
