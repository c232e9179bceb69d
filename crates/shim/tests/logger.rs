//! Runs the built `berth-logger` the way containerd's shims do: pipes on
//! fds 3 (stdout), 4 (stderr) and 5 (ready), the log files in the
//! arguments.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use berth_shim::logger::wait_copied;

fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array on success.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are new and ours.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// A copy of `fd` numbered 10 or above, so dup2 onto 3..=5 in the child
/// never finds source and target equal (which would keep FD_CLOEXEC).
fn high(fd: &impl AsRawFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we own.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    assert!(n >= 10);
    // SAFETY: just created.
    unsafe { OwnedFd::from_raw_fd(n) }
}

struct Logger {
    child: Child,
    stdout: Option<File>,
    stderr: Option<File>,
    ready: File,
    out_log: PathBuf,
    err_log: PathBuf,
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-logger-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn start(dir: &Path, args: &[&str]) -> Logger {
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let (ready_r, ready_w) = pipe();
    let fds: [OwnedFd; 3] = [high(&out_r), high(&err_r), high(&ready_w)];
    let raw: [RawFd; 3] = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
    let out_log = dir.join("out log&x=1.log");
    let err_log = dir.join("err.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth-logger"));
    for a in args {
        match *a {
            "$OUT" | "$LOG" => cmd.arg(&out_log),
            "$ERR" => cmd.arg(&err_log),
            a => cmd.arg(a),
        };
    }
    cmd.env_clear().env("CONTAINER_ID", "c1").env("CONTAINER_NAMESPACE", "berth");
    // SAFETY: dup2 is async-signal-safe; the sources stay open in the
    // parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn berth-logger");
    drop((fds, out_r, err_r, ready_w));
    Logger { child, stdout: Some(out_w), stderr: Some(err_w), ready: ready_r, out_log, err_log }
}

/// The child's exit status within `limit`, if it exited.
fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().expect("wait") {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn wait_ready(l: &mut Logger) {
    let mut b = [0u8; 1];
    assert_eq!(l.ready.read(&mut b).expect("read ready"), 1, "logger signalled no ready byte");
    // Then EOF: the logger closed its end.
    assert_eq!(l.ready.read(&mut b).expect("read ready"), 0);
}

#[test]
fn a_bounded_log_takes_both_streams_as_records_and_rotates() {
    let dir = temp_dir("bounded");
    let mut l = start(&dir, &["stdout", "$LOG", "stderr", "$LOG", "max_size", "65536", "max_files", "2"]);
    wait_ready(&mut l);
    l.stderr.as_mut().unwrap().write_all(b"err line\n").unwrap();
    assert!(wait_copied(&l.out_log, &l.out_log, Duration::from_secs(5)));
    for i in 0..4000 {
        l.stdout.as_mut().unwrap().write_all(format!("line {i}\n").as_bytes()).unwrap();
    }
    drop(l.stdout.take());
    drop(l.stderr.take());
    let status = exit_within(&mut l.child, Duration::from_secs(2)).expect("logger exited");
    assert!(status.success(), "{status:?}");
    let live = std::fs::read_to_string(&l.out_log).unwrap();
    let rotated = std::fs::read_to_string(format!("{}.1", l.out_log.display())).unwrap();
    assert!(!std::path::Path::new(&format!("{}.2", l.out_log.display())).exists(), "two files kept");
    assert!(live.len() <= 65536 && rotated.len() <= 65536);
    let last = live.lines().last().unwrap();
    assert!(last.ends_with(" stdout F line 3999"), "{last}");
    let first = rotated.lines().next().unwrap();
    assert!(first.contains(" stdout F line "), "whole records from a line's start: {first}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn copies_both_streams_and_settles_before_the_pipes_end() {
    let dir = temp_dir("copy");
    let mut l = start(&dir, &["stderr", "$ERR", "stdout", "$OUT"]);
    wait_ready(&mut l);

    l.stdout.as_mut().unwrap().write_all(b"hello out\n").unwrap();
    l.stderr.as_mut().unwrap().write_all(b"hello err\n").unwrap();
    l.stdout.as_mut().unwrap().write_all(&vec![b'x'; 200_000]).unwrap();
    // The pipes are still open (as under a shim until Delete): the copy
    // catches up all the same.
    let started = Instant::now();
    assert!(wait_copied(&l.out_log, &l.err_log, Duration::from_secs(5)));
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert_eq!(std::fs::metadata(&l.out_log).unwrap().len(), 10 + 200_000);
    drop(l.stdout.take());
    drop(l.stderr.take());
    let status = exit_within(&mut l.child, Duration::from_secs(2)).expect("logger exited");
    assert!(status.success(), "{status:?}");

    let out = std::fs::read(&l.out_log).unwrap();
    assert_eq!(&out[..10], b"hello out\n");
    assert_eq!(out.len(), 10 + 200_000);
    assert_eq!(std::fs::read(&l.err_log).unwrap(), b"hello err\n");
    let mode = std::fs::metadata(&l.out_log).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o007, 0, "no access for others");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn terminal_case_ends_without_stderr_eof() {
    // With a terminal the shim never closes stderr's write end.
    let dir = temp_dir("tty");
    let mut l = start(&dir, &["stdout", "$OUT", "stderr", "$ERR"]);
    wait_ready(&mut l);
    l.stdout.as_mut().unwrap().write_all(b"console\r\n").unwrap();
    drop(l.stdout.take());
    let status = exit_within(&mut l.child, Duration::from_secs(3)).expect("logger exited");
    assert!(status.success(), "{status:?}");
    assert_eq!(std::fs::read(&l.out_log).unwrap(), b"console\r\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigterm_drains_what_is_buffered() {
    let dir = temp_dir("term");
    let mut l = start(&dir, &["stdout", "$OUT", "stderr", "$ERR"]);
    wait_ready(&mut l);
    // Written but possibly not yet copied when SIGTERM arrives; the write
    // ends stay open, as when a stray process still holds them.
    l.stdout.as_mut().unwrap().write_all(b"last words\n").unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(l.child.id() as i32, libc::SIGTERM) };
    let status = exit_within(&mut l.child, Duration::from_secs(3)).expect("logger exited");
    assert!(status.success(), "{status:?}");
    assert_eq!(std::fs::read(&l.out_log).unwrap(), b"last words\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_argument_fails() {
    let dir = temp_dir("bad");
    let mut l = start(&dir, &["stdout", "$OUT", "stderr", "$ERR", "color", "red"]);
    let status = exit_within(&mut l.child, Duration::from_secs(3)).expect("logger exited");
    assert_eq!(status.code(), Some(1));
    // No ready byte: the shim sees EOF and learns nothing started.
    let mut b = [0u8; 1];
    assert_eq!(l.ready.read(&mut b).unwrap(), 0);
    assert!(!l.out_log.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
