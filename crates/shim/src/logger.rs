//! berth's logger for containerd's `binary://` stdio scheme, so a
//! third-party shim (containerd-shim-runc-v2) writes a container's output
//! to the log files berthd reads.
//!
//! What containerd 1.6 does with `binary:///path?k1=v1&k2=v2`
//! (pkg/process/io.go `NewBinaryIO` / `newBinaryCmd`; runtime/v2/runc/
//! platform.go `CopyConsole` for a terminal):
//! - runs the URI's path with the query flattened to `k1 v1 k2 v2` in Go's
//!   map order (random), and an environment of only `CONTAINER_ID` and
//!   `CONTAINER_NAMESPACE`;
//! - fd 3 is the read end of the process's stdout pipe, fd 4 of its stderr
//!   pipe, fd 5 the write end of a pipe the shim reads one byte (or EOF)
//!   from before it starts the container: the logger's "ready";
//! - with a terminal, the console's output arrives on fd 3 and nothing ever
//!   arrives on fd 4, whose write end the shim leaks until garbage
//!   collection;
//! - without one, the shim closes both write ends only when the process is
//!   deleted, then sends SIGTERM and kills the logger 12 s later.
//!
//! With `max_size` and `max_files` both streams go to one berth log
//! (`crilog`) the logger rotates. The logger holds an exclusive `flock` on
//! the stdout log (a rotating log's `.lock` file beside it) for its whole
//! life, so two loggers of one container (a restart) never interleave;
//! [`wait_copied`] tells berthd when the copy has caught up.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::crilog::{CriLog, LogRotation, Target};

/// The fds containerd hands the logger: stdout, stderr, ready.
const STDOUT_FD: RawFd = 3;
const STDERR_FD: RawFd = 4;
const READY_FD: RawFd = 5;
/// The binary's file name, to find a logger by its command line.
const LOGGER: &str = "berth-logger";

/// How long stderr may stay silent after stdout reached EOF before the
/// logger gives up on it: with a terminal its write end is never closed.
const STDERR_GRACE: Duration = Duration::from_millis(500);

/// The `binary://` URI that makes a containerd shim run `logger_binary`
/// writing to these two files. Everything but unreserved characters and
/// `/` is percent-encoded, so Go's `url.Parse` and `Query()` give back the
/// exact paths (`+` would mean a space in a query; `;` makes Go drop the
/// pair).
/// With `rotation`, both streams go to one berth log (`crilog`) the
/// logger keeps within it.
pub fn logger_uri(logger_binary: &Path, stdout: &Path, stderr: &Path, rotation: Option<LogRotation>) -> String {
    let bound = rotation.map(|r| format!("&max_size={}&max_files={}", r.max_size, r.max_files)).unwrap_or_default();
    format!(
        "binary://{}?stdout={}&stderr={}{bound}",
        escape(logger_binary.as_os_str().as_bytes()),
        escape(stdout.as_os_str().as_bytes()),
        escape(stderr.as_os_str().as_bytes())
    )
}

fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How long the log files must stay unchanged to count as settled.
const QUIET: Duration = Duration::from_millis(20);

/// Waits (at most `limit`) until everything the process wrote is in its
/// log files. Under a containerd shim the logger's pipes end only at the
/// task's Delete, so an exit cannot wait for the copy's end; instead the
/// logger's pipes (its fds 3 and 4, opened again through /proc) must hold
/// no unread bytes, and then the files must stop growing for [`QUIET`]
/// (what the logger had read is written right after).
pub fn wait_copied(stdout: &Path, stderr: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let pipes = logger_pipes(stdout);
    while pipes.iter().any(|p| unread(p) > 0) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    wait_settled(&[stdout, stderr], deadline.saturating_duration_since(Instant::now()))
}

/// The output pipes of the berth-logger process that writes `stdout`.
fn logger_pipes(stdout: &Path) -> Vec<File> {
    let wanted = stdout.as_os_str().as_bytes();
    let mut pipes = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_logger = args.first().is_some_and(|a| Path::new(std::ffi::OsStr::from_bytes(a)).ends_with(LOGGER));
        if is_logger && args.windows(2).any(|w| w[0] == b"stdout" && w[1] == wanted) {
            for fd in [STDOUT_FD, STDERR_FD] {
                let path = entry.path().join("fd").join(fd.to_string());
                let opened = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path);
                pipes.extend(opened.ok().filter(|f| f.metadata().is_ok_and(|m| m.file_type().is_fifo())));
            }
        }
    }
    pipes
}

/// Bytes waiting in a pipe.
fn unread(pipe: &File) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through a valid pointer.
    let ok = unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut n) } == 0;
    if ok { n.max(0) as usize } else { 0 }
}

/// Waits (at most `limit`) until `files` have stopped growing for [`QUIET`].
fn wait_settled(files: &[&Path], limit: Duration) -> bool {
    let sizes = || files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).ok()).collect::<Vec<_>>();
    let deadline = Instant::now() + limit;
    let mut last = sizes();
    loop {
        if Instant::now() + QUIET > deadline {
            return false;
        }
        std::thread::sleep(QUIET);
        let now = sizes();
        if now == last {
            return true;
        }
        last = now;
    }
}

/// The log files named by the arguments containerd passes.
#[derive(Debug, PartialEq)]
struct Targets {
    stdout: PathBuf,
    stderr: PathBuf,
    /// One berth log for both streams, kept within this bound.
    rotation: Option<LogRotation>,
}

fn parse_args(args: &[OsString]) -> Result<Targets, String> {
    let (mut stdout, mut stderr, mut max_size, mut max_files) = (None, None, None, None);
    let mut it = args.iter();
    while let Some(key) = it.next() {
        let value = it.next().ok_or_else(|| format!("no value for {key:?}"))?;
        let number = || value.to_str().and_then(|v| v.parse::<u64>().ok()).ok_or(format!("{key:?} is not a number"));
        let slot = match key.to_str() {
            Some("stdout") => &mut stdout,
            Some("stderr") => &mut stderr,
            Some("max_size") => {
                max_size = Some(number()?);
                continue;
            }
            Some("max_files") => {
                max_files = Some(u32::try_from(number()?).map_err(|_| "max_files is too large")?);
                continue;
            }
            _ => return Err(format!("unknown argument {key:?} (want stdout and stderr)")),
        };
        let path = PathBuf::from(value);
        if !path.is_absolute() {
            return Err(format!("{key:?} must be an absolute path, not {value:?}"));
        }
        *slot = Some(path);
    }
    let rotation = match (max_size, max_files) {
        (None, None) => None,
        (Some(size), Some(files)) => Some(LogRotation::new(size, files).map_err(|e| e.to_string())?),
        _ => return Err("max_size and max_files come together".into()),
    };
    match (stdout, stderr) {
        (Some(stdout), Some(stderr)) if rotation.is_some() && stdout != stderr => {
            Err("a bounded log is one file: stdout and stderr must name it both".into())
        }
        (Some(stdout), Some(stderr)) => Ok(Targets { stdout, stderr, rotation }),
        _ => Err("both stdout and stderr log paths are required".into()),
    }
}

/// Takes one of the inherited descriptors, if it is open.
fn inherited(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only queries; an open fd at this number was given to
    // us by the parent and nothing else in this process owns it yet.
    (unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The write end of the self-pipe SIGTERM is reported on.
static TERM_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_term(_: libc::c_int) {
    let fd = TERM_PIPE.load(Ordering::Relaxed);
    // SAFETY: write(2) is async-signal-safe.
    unsafe { libc::write(fd, b"t".as_ptr().cast(), 1) };
}

/// Reports SIGTERM as a readable pipe, so the copy loop's poll sees it
/// without races.
fn term_pipe() -> std::io::Result<OwnedFd> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    TERM_PIPE.store(fds[1], Ordering::Relaxed);
    // SAFETY: installs a handler that only calls write(2).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_term as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fds[0]))
    }
}

fn open_log(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))
}

/// Where a stream goes: its own file, or its records in a berth log.
enum Sink {
    File(File),
    Log(CriLog),
}

/// One stream being copied into its log file.
struct Stream {
    from: File,
    to: Sink,
    name: &'static str,
    open: bool,
    /// A write failed: keep reading (so the container never blocks on a
    /// full pipe) but drop the data; say so once.
    failed: bool,
}

impl Stream {
    /// Copies what one read returns; false at EOF.
    fn pump(&mut self, buf: &mut [u8]) -> bool {
        match self.from.read(buf) {
            Ok(0) => {
                self.open = false;
                false
            }
            Ok(n) => {
                match &mut self.to {
                    Sink::File(f) if !self.failed => {
                        if let Err(e) = f.write_all(&buf[..n]) {
                            eprintln!("berth-logger: write {}: {e}; dropping its output", self.name);
                            self.failed = true;
                        }
                    }
                    Sink::File(_) => {}
                    // A berth log loses what cannot be written, not the stream.
                    Sink::Log(log) => log.write(&buf[..n]),
                }
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => true,
            // Nothing more for now (only in the final non-blocking drain).
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => {
                eprintln!("berth-logger: read {}: {e}", self.name);
                self.open = false;
                false
            }
        }
    }
}

/// The logger's whole life; the binary exits 1 with the message on error.
///
/// # Safety
/// Takes ownership of descriptors 3, 4 and 5 (containerd's protocol): only
/// a process started as a binary logger, from its `main`, may call it.
pub unsafe fn run(args: &[OsString]) -> Result<(), String> {
    // Claim the inherited fds before opening anything that could take
    // their numbers.
    let out_fd = inherited(STDOUT_FD).ok_or("fd 3 (stdout pipe) is not open")?;
    let err_fd = inherited(STDERR_FD).ok_or("fd 4 (stderr pipe) is not open")?;
    let ready = inherited(READY_FD);
    let targets = parse_args(args)?;
    let term = term_pipe().map_err(|e| format!("SIGTERM handler: {e}"))?;
    // A rotated log's live file changes: its lock is a file beside it.
    let lock = match targets.rotation {
        Some(_) => {
            let mut lock = targets.stdout.clone().into_os_string();
            lock.push(".lock");
            open_log(Path::new(&lock))?
        }
        None => open_log(&targets.stdout)?,
    };
    // Blocks while an earlier logger of the same file still drains, so
    // two never interleave.
    // SAFETY: flock on a descriptor we own; held until exit.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!("lock {}: {}", targets.stdout.display(), std::io::Error::last_os_error()));
    }
    let sink = |stream: &'static str, path: &Path| -> Result<Sink, String> {
        match targets.rotation {
            Some(rotation) => CriLog::open(&Target { stream, path, rotation: Some(rotation) })
                .map(Sink::Log)
                .map_err(|e| format!("open {}: {e}", path.display())),
            None if stream == "stdout" => Ok(Sink::File(lock.try_clone().map_err(|e| e.to_string())?)),
            None => open_log(path).map(Sink::File),
        }
    };
    let (stdout_log, stderr_log) = (sink("stdout", &targets.stdout)?, sink("stderr", &targets.stderr)?);
    if let Some(ready) = ready {
        // One byte then EOF: containerd 1.6 takes either as ready, newer
        // strict variants want the byte.
        let _ = File::from(ready).write_all(b"r");
    }
    let mut streams = [
        Stream { from: File::from(out_fd), to: stdout_log, name: "stdout", open: true, failed: false },
        Stream { from: File::from(err_fd), to: stderr_log, name: "stderr", open: true, failed: false },
    ];
    copy(&mut streams, &term);
    Ok(())
}

/// Copies until both streams reach EOF, stderr stays silent for
/// STDERR_GRACE after stdout's EOF, or SIGTERM comes (then drains what
/// is already in the pipes).
fn copy(streams: &mut [Stream; 2], term: &OwnedFd) {
    // As berth-shim's copy: a batch and its records fit a bounded log's
    // smallest file.
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let open: Vec<usize> = (0..2).filter(|&i| streams[i].open).collect();
        if open.is_empty() {
            return;
        }
        let mut fds: Vec<libc::pollfd> = open
            .iter()
            .map(|&i| libc::pollfd { fd: streams[i].from.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        fds.push(libc::pollfd { fd: term.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        let timeout = if streams[0].open { -1 } else { STDERR_GRACE.as_millis() as libc::c_int };
        // SAFETY: fds is a valid array of fds.len() pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            eprintln!("berth-logger: poll: {}", std::io::Error::last_os_error());
            return drain(streams, &mut buf);
        }
        if n == 0 {
            return; // stderr silent since stdout's EOF
        }
        if fds[open.len()].revents != 0 {
            return drain(streams, &mut buf);
        }
        for (k, &i) in open.iter().enumerate() {
            if fds[k].revents != 0 {
                streams[i].pump(&mut buf);
            }
        }
    }
}

/// Copies whatever the pipes already hold, without waiting for more.
fn drain(streams: &mut [Stream; 2], buf: &mut [u8]) {
    for s in streams.iter_mut().filter(|s| s.open) {
        // SAFETY: fcntl flag change on a descriptor we own.
        unsafe {
            let fd = s.from.as_raw_fd();
            libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK);
        }
        while s.pump(buf) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query's key and value, as bytes.
    type Pair = (Vec<u8>, Vec<u8>);

    /// Go's `url.Parse` + `Query()` for the URIs logger_uri makes: path
    /// and query percent-decoded, `+` a space in the query.
    fn go_decode(uri: &str) -> (Vec<u8>, Vec<Pair>) {
        fn unescape(s: &str, plus_is_space: bool) -> Vec<u8> {
            let b = s.as_bytes();
            let (mut out, mut i) = (Vec::new(), 0);
            while i < b.len() {
                match b[i] {
                    b'%' => {
                        out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("hex"));
                        i += 3;
                        continue;
                    }
                    b'+' if plus_is_space => out.push(b' '),
                    c => out.push(c),
                }
                i += 1;
            }
            out
        }
        let rest = uri.strip_prefix("binary://").expect("scheme");
        assert!(!rest.contains('#') && !rest.contains(';') && !rest.contains(' '), "{uri}");
        assert!(rest.bytes().all(|b| b.is_ascii_graphic()), "{uri}");
        let (path, query) = rest.split_once('?').expect("query");
        let pairs = query
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("pair");
                (unescape(k, true), unescape(v, true))
            })
            .collect();
        (unescape(path, false), pairs)
    }

    #[test]
    fn uri_survives_go_decoding() {
        let bin = Path::new("/opt/my berth/bin/berth-logger");
        let out = Path::new("/var/log/a b&c=d%e?f#g+h;i/out.log");
        let err = Path::new("/var/log/ü/err~.log");
        let uri = logger_uri(bin, out, err, None);
        let (path, pairs) = go_decode(&uri);
        assert_eq!(path, bin.as_os_str().as_bytes());
        assert_eq!(
            pairs,
            vec![
                (b"stdout".to_vec(), out.as_os_str().as_bytes().to_vec()),
                (b"stderr".to_vec(), err.as_os_str().as_bytes().to_vec()),
            ]
        );
        assert!(uri.contains("a%20b%26c%3Dd%25e%3Ff%23g%2Bh%3Bi"), "{uri}");
        let bounded = logger_uri(bin, out, out, Some(LogRotation::DEFAULT));
        let (_, pairs) = go_decode(&bounded);
        assert_eq!(pairs[2], (b"max_size".to_vec(), b"10485760".to_vec()));
        assert_eq!(pairs[3], (b"max_files".to_vec(), b"3".to_vec()));
    }

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments_in_any_order() {
        let want = Targets { stdout: "/l/o".into(), stderr: "/l/e".into(), rotation: None };
        assert_eq!(parse_args(&args(&["stdout", "/l/o", "stderr", "/l/e"])), Ok(want));
        let want = Targets { stdout: "/l/o".into(), stderr: "/l/e".into(), rotation: None };
        assert_eq!(parse_args(&args(&["stderr", "/l/e", "stdout", "/l/o"])), Ok(want));
        let bounded = ["max_files", "2", "stdout", "/l/c", "max_size", "65536", "stderr", "/l/c"];
        let want = Targets { stdout: "/l/c".into(), stderr: "/l/c".into(), rotation: LogRotation::new(65536, 2).ok() };
        assert_eq!(parse_args(&args(&bounded)), Ok(want));
    }

    #[test]
    fn bad_arguments_are_refused() {
        for a in [
            &["stdout", "/o", "stderr", "/e", "color", "red"][..],
            &["stdout", "/o"],
            &["stdout", "/o", "stderr"],
            &["stdout", "rel/o", "stderr", "/e"],
            &["stdout", "/c", "stderr", "/c", "max_size", "65536"],
            &["stdout", "/c", "stderr", "/c", "max_size", "1", "max_files", "2"],
            &["stdout", "/c", "stderr", "/d", "max_size", "65536", "max_files", "2"],
            &["stdout", "/c", "stderr", "/c", "max_size", "x", "max_files", "2"],
        ] {
            assert!(parse_args(&args(a)).is_err(), "{a:?}");
        }
        let err = parse_args(&args(&["color", "red"])).expect_err("unknown");
        assert!(err.contains("color"), "{err}");
    }
}
