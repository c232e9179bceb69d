//! Container logs (SPEC B17): how a process's output is written (a
//! [`LogFormat`]) and how it is streamed back, across rotated files, from
//! a time or the last lines, optionally following it until the process has
//! exited and all is drained.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_model::{ExitStatus, LogRotation, Runtime};
use berth_shim::crilog::{self, Filter, Parser};
use berth_store::ContainerRecord;
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Result};

/// How a process's output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Each stream's bytes in a file of its own, as written (a containerd
    /// shim's container: berth-logger or the shim copies them).
    Plain,
    /// kubelet's CRI log file, both streams, rotated by kubelet.
    Kubelet,
    /// berth's own log: CRI records, both streams, rotated by berth-shim.
    Berth(LogRotation),
}

impl LogFormat {
    /// The format of a container's init.
    pub fn of(rec: &ContainerRecord) -> LogFormat {
        match (rec.cri_log, rec.log_rotation) {
            (false, _) => LogFormat::Plain,
            (true, None) => LogFormat::Kubelet,
            (true, Some(r)) => LogFormat::Berth(r),
        }
    }

    /// The format of a new container: kubelet's file if it names one,
    /// else berth's log within `bound` (`default` where it names none),
    /// written by berth-shim or berth-logger — but plain files when the
    /// process's containerd shim copies its output itself (`shim_copies`:
    /// interactive without a terminal).
    pub fn choose(
        kubelet: Option<&Path>,
        runtime: &Runtime,
        default: LogRotation,
        bound: (Option<u64>, Option<u32>),
        shim_copies: bool,
    ) -> Result<LogFormat> {
        let bounded = bound.0.is_some() || bound.1.is_some();
        if let Some(path) = kubelet {
            check_cri_log_path(path, runtime)?;
            if bounded {
                return Err(Error::InvalidArgument(
                    "a log bound applies to berth's own log, not a CRI log path".into(),
                ));
            }
            return Ok(LogFormat::Kubelet);
        }
        let rotation = default.with(bound.0, bound.1)?;
        match shim_copies {
            true if bounded => Err(Error::InvalidArgument(
                "a containerd shim writes an interactive container's output itself: no log bound applies".into(),
            )),
            true => Ok(LogFormat::Plain),
            false => Ok(LogFormat::Berth(rotation)),
        }
    }

    /// Where init's (`exec_id` empty) or an exec's stdout and stderr go in
    /// the container's log dir.
    pub fn files(&self, dir: &Path, exec_id: &str) -> (PathBuf, PathBuf) {
        let name = |stream: &str| match (exec_id, stream) {
            ("", "") => dir.join("container.log"),
            ("", s) => dir.join(format!("{s}.log")),
            (e, "") => dir.join(format!("exec-{e}.log")),
            (e, s) => dir.join(format!("exec-{e}.{s}.log")),
        };
        match self {
            LogFormat::Plain => (name("stdout"), name("stderr")),
            LogFormat::Kubelet | LogFormat::Berth(_) => (name(""), name("")),
        }
    }

    /// Removes a process's log files (a finished exec's).
    pub fn remove(&self, stdout: &Path, stderr: &Path) {
        let _ = std::fs::remove_file(stdout);
        let _ = std::fs::remove_file(stderr);
        if let LogFormat::Berth(r) = self {
            for n in 1..r.max_files {
                let _ = std::fs::remove_file(LogRotation::rotated(stdout, n));
            }
            // berth-logger's lock beside it (a containerd shim's exec).
            let mut lock = stdout.as_os_str().to_os_string();
            lock.push(".lock");
            let _ = std::fs::remove_file(lock);
        }
    }
}

impl crate::manager::Manager {
    /// How init's output is written (checked before anything is made):
    /// plain files in the sandbox of a shim an older berthd started.
    pub(crate) fn log_format(&self, p: &crate::create::CreateParams, runtime: &Runtime) -> Result<LogFormat> {
        let shim_copies = matches!(runtime, Runtime::Shim { .. }) && p.stdin && !p.tty;
        let log = LogFormat::choose(p.log_path.as_deref(), runtime, self.cfg.log_rotation, p.log_bound, shim_copies)?;
        let old_shim = p.sandbox.as_ref().is_some_and(|s| self.sandbox_shim_is_old(&p.namespace, s));
        Ok(if old_shim && matches!(log, LogFormat::Berth(_)) { LogFormat::Plain } else { log })
    }
}

/// A CRI log file asked for at create: absolute, and written by berth's
/// own shim (a containerd shim knows no such format).
fn check_cri_log_path(path: &Path, runtime: &Runtime) -> Result<()> {
    crate::spec::no_nul("the log path", &path.to_string_lossy())?;
    if !path.is_absolute() || path.file_name().is_none() {
        return Err(Error::InvalidArgument(format!("log path {} must be an absolute file path", path.display())));
    }
    if matches!(runtime, Runtime::Shim { .. }) {
        return Err(Error::InvalidArgument("a CRI log path needs berth's own shim, not a containerd shim".into()));
    }
    Ok(())
}

/// Files a follower may fall behind by (at least; 4 × the files the log
/// keeps if more): it holds them open, so their bytes stay on disk until
/// it has read them; one that stopped reading loses the oldest beyond.
const FOLLOW_BEHIND: usize = 16;

/// How often a followed log is checked for new output while the container runs.
const FOLLOW_TICK: Duration = Duration::from_millis(50);
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What a reader of a log asks for.
#[derive(Default)]
pub struct Options {
    /// Follow until the process has exited (`None`: what is there now).
    pub follow: Option<watch::Receiver<Option<ExitStatus>>>,
    /// Only what is written from now on (an attach).
    pub from_end: bool,
    /// Only the last lines.
    pub tail: Option<u64>,
    pub filter: Filter,
}

/// Streams a process's log.
pub fn stream(format: LogFormat, stdout: PathBuf, stderr: PathBuf, opts: Options) -> Result<Receiver> {
    let f = opts.filter;
    let timed = f.since_ns.is_some() || f.until_ns.is_some() || f.timestamps;
    let readers = match format {
        LogFormat::Plain if timed => {
            return Err(Error::FailedPrecondition(
                "this log is plain files without timestamps (an older berthd's container, or a containerd shim's interactive one): --since, --until and -t need berth's own log"
                    .into(),
            ));
        }
        LogFormat::Plain => vec![
            Reader::new(Decode::Plain(Stream::Stdout), stdout, 0),
            Reader::new(Decode::Plain(Stream::Stderr), stderr, 0),
        ],
        LogFormat::Kubelet => vec![Reader::new(Decode::Cri(Parser::new(f)), stdout, 0)],
        LogFormat::Berth(r) => vec![Reader::new(Decode::Cri(Parser::new(f)), stdout, r.max_files)],
    };
    // A bounded read ends at `until`, as docker's does.
    let follow = if f.until_ns.is_some() { None } else { opts.follow };
    let mut readers = readers;
    for r in readers.iter_mut().filter(|r| r.rotated > 0 && follow.is_some()) {
        r.arrivals = watch(&r.path, FOLLOW_BEHIND.max(4 * r.rotated as usize));
    }
    // Where an attach starts is fixed before it returns: output that
    // follows it is not skipped.
    if opts.from_end {
        for r in &mut readers {
            r.open();
            r.skip_to_end();
        }
    }
    let tail = if opts.from_end { None } else { opts.tail };
    Ok(spawn(readers, follow, !opts.from_end, tail))
}

pub type Receiver = mpsc::Receiver<(Stream, Vec<u8>)>;
type Sender = mpsc::Sender<(Stream, Vec<u8>)>;

enum Decode {
    /// One stream's bytes as written.
    Plain(Stream),
    /// CRI records of both streams, decoded as they come.
    Cri(Parser),
}

/// An open file of a log and how far it was read.
struct Open {
    file: File,
    ino: u64,
    offset: u64,
}

/// Opens a log file: only a regular file, never through a symlink, and
/// without blocking on a FIFO planted in the log directory (whoever could
/// write there: berthd trusts no file it did not make for this).
fn open(path: &Path) -> Option<Open> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    Some(Open { file, ino: meta.ino(), offset: 0 })
}

/// One log: its live file and, for berth's, the rotated ones.
struct Reader {
    decode: Decode,
    path: PathBuf,
    /// How many files the log may hold (`PATH.1` … are looked for).
    rotated: u32,
    /// Files still to read, oldest first; the last is the live file.
    files: VecDeque<Open>,
    /// Followed berth log: each live file opened as it appeared ([`watch`]).
    arrivals: Option<Arrivals>,
}

/// The files a [`watch`] opened, oldest first; dropping it ends the watch.
struct Arrivals {
    files: std::sync::Arc<std::sync::Mutex<Vec<Open>>>,
    /// The files the reader found when it opened the log, not to be read
    /// twice.
    initial: Vec<(u64, File)>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Opens each file that becomes the live file at `path` as soon as it is
/// made, for a follower: one that lags several rotations behind (a slow
/// client) still reads every file, as its descriptor keeps the bytes of
/// a file rotated out. Ends with the follower.
fn watch(path: &Path, keep: usize) -> Option<Arrivals> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let (dir, name) = (path.parent()?, path.file_name()?.to_os_string());
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
    inotify.add_watch(dir, AddWatchFlags::IN_CREATE).ok()?;
    struct Watcher(Inotify);
    impl std::os::fd::AsRawFd for Watcher {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            use std::os::fd::AsFd;
            self.0.as_fd().as_raw_fd()
        }
    }
    // SAFETY: the AsyncFd owns the inotify descriptor for its whole life.
    let fd = unsafe { tokio::io::unix::AsyncFd::register(Watcher(inotify)) }.ok()?;
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let arrivals = Arrivals { files: Default::default(), initial: Vec::new(), _stop: stop };
    let files = arrivals.files.clone();
    let path = path.to_path_buf();
    tokio::spawn(async move {
        loop {
            let mut ready = tokio::select! {
                r = fd.readable() => match r { Ok(r) => r, Err(_) => return },
                _ = &mut stopped => return,
            };
            let Ok(events) = fd.get_ref().0.read_events() else {
                ready.clear_ready();
                continue;
            };
            if events.iter().any(|e| e.name.as_ref() == Some(&name)) {
                let mut all = files.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(o) = open(&path).filter(|o| all.last().is_none_or(|l| l.ino != o.ino)) {
                    all.push(o);
                }
                // A follower that stopped reading (a paused pager) holds
                // no more than `keep` files: the oldest go.
                let excess = all.len().saturating_sub(keep);
                all.drain(..excess);
            }
        }
    });
    Some(arrivals)
}

impl Reader {
    fn new(decode: Decode, path: PathBuf, rotated: u32) -> Reader {
        Reader { decode, path, rotated, files: VecDeque::new(), arrivals: None }
    }

    /// Opens what the log holds now: the live file first, then older ones,
    /// each file once (a rotation in between shows one twice).
    fn open(&mut self) {
        let Some(live) = open(&self.path) else { return };
        let mut seen = vec![live.ino];
        self.files.push_back(live);
        for n in 1..self.rotated {
            let Some(older) = open(&LogRotation::rotated(&self.path, n)) else { break };
            if !seen.contains(&older.ino) {
                seen.push(older.ino);
                self.files.push_front(older);
            }
        }
        // A watched log: the watcher may yet report these files (made
        // before it looked); held open, their inodes stay theirs.
        if let Some(a) = self.arrivals.as_mut() {
            a.initial = self.files.iter().filter_map(|o| Some((o.ino, o.file.try_clone().ok()?))).collect();
        }
    }

    /// Skips what is there now.
    fn skip_to_end(&mut self) {
        while self.files.len() > 1 {
            self.files.pop_front();
        }
        if let Some(live) = self.files.back_mut() {
            live.offset = live.file.metadata().map_or(0, |m| m.len());
        }
    }

    /// Starts at the `n`th line from the end.
    fn tail(&mut self, n: u64) {
        let mut starts: VecDeque<(usize, u64)> = VecDeque::new();
        let mut buf = vec![0u8; CHUNK];
        for (i, f) in self.files.iter_mut().enumerate() {
            let mut mark = |at: u64| {
                starts.push_back((i, at));
                if starts.len() as u64 > n {
                    starts.pop_front();
                }
            };
            let mut parser = Parser::default();
            let mut at = f.offset;
            let mut last = None;
            if f.file.seek(SeekFrom::Start(at)).is_err() {
                continue;
            }
            while let Ok(read @ 1..) = f.file.read(&mut buf) {
                match self.decode {
                    Decode::Plain(_) => {
                        for (j, b) in buf[..read].iter().enumerate() {
                            if last.is_none_or(|l| l == b'\n') {
                                mark(at + j as u64);
                            }
                            last = Some(*b);
                        }
                    }
                    Decode::Cri(_) => parser.line_starts(&buf[..read], at, &mut mark),
                }
                at += read as u64;
            }
        }
        match starts.front() {
            Some(&(i, at)) if n > 0 => {
                self.files.drain(..i);
                self.files[0].offset = at;
            }
            _ => self.skip_to_end(),
        }
    }

    /// Sends everything written since the last call; false once the
    /// receiver is gone.
    fn drain(&mut self, tx: &Sender) -> bool {
        if self.files.is_empty() {
            self.open();
        }
        loop {
            while let Some(f) = self.files.front_mut() {
                if !read_to_end(&mut self.decode, f, tx) {
                    return false;
                }
                if self.files.len() == 1 {
                    break;
                }
                self.files.pop_front();
                self.decode.restart();
            }
            let Some(live) = self.files.back_mut() else { return true };
            let Ok(now) = std::fs::metadata(&self.path) else { return true };
            if now.ino() == live.ino {
                if now.len() >= live.offset {
                    return true;
                }
                // Cut short (copytruncate): read it again from its start.
                live.offset = 0;
                self.decode.restart();
                continue;
            }
            // Rotated: the writer renames only after its last write, so the
            // old file is read to its end (the loop above), then the files
            // made since, in order (a file still held is not read twice:
            // its inode cannot have been reused).
            let (next, initial): (Vec<Open>, &mut Vec<(u64, File)>) = match &mut self.arrivals {
                Some(a) => (std::mem::take(&mut *a.files.lock().unwrap_or_else(|e| e.into_inner())), &mut a.initial),
                None => (open(&self.path).into_iter().collect(), &mut Vec::new()),
            };
            let before = self.files.len();
            for o in next {
                let found_at_open = initial.iter().any(|(ino, _)| *ino == o.ino);
                if !found_at_open {
                    // The watcher reports in order: whatever it reports of
                    // the files found at open came before this one.
                    initial.clear();
                }
                if !found_at_open && !self.files.iter().any(|f| f.ino == o.ino) {
                    self.files.push_back(o);
                }
            }
            if self.files.len() == before {
                return true;
            }
        }
    }
}

impl Decode {
    fn restart(&mut self) {
        if let Decode::Cri(parser) = self {
            parser.restart();
        }
    }
}

/// Sends a file's bytes from where it was left to its end.
fn read_to_end(decode: &mut Decode, f: &mut Open, tx: &Sender) -> bool {
    if f.file.seek(SeekFrom::Start(f.offset)).is_err() {
        return true;
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match f.file.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(n) => n,
        };
        f.offset += n as u64;
        let chunks = match decode {
            Decode::Plain(stream) => vec![(*stream, buf[..n].to_vec())],
            Decode::Cri(parser) => parser
                .feed(&buf[..n])
                .into_iter()
                .map(|(s, data)| match s {
                    crilog::Stream::Stdout => (Stream::Stdout, data),
                    crilog::Stream::Stderr => (Stream::Stderr, data),
                })
                .collect(),
        };
        for chunk in chunks {
            if tx.blocking_send(chunk).is_err() {
                return false;
            }
        }
    }
}

/// Streams the readers, opening them first unless they are (blocking file
/// work on the blocking pool).
fn spawn(
    readers: Vec<Reader>,
    exit: Option<watch::Receiver<Option<ExitStatus>>>,
    open: bool,
    tail: Option<u64>,
) -> Receiver {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let start = move || {
            let mut readers = readers;
            for r in readers.iter_mut().filter(|_| open) {
                r.open();
                if let Some(n) = tail {
                    r.tail(n);
                }
            }
            readers
        };
        let Ok(mut readers) = tokio::task::spawn_blocking(start).await else { return };
        let mut exit = exit;
        loop {
            let exited = exit.as_ref().is_none_or(|rx| rx.borrow().is_some());
            let sender = tx.clone();
            let drain = move || {
                let alive = readers.iter_mut().all(|r| r.drain(&sender));
                (readers, alive)
            };
            let Ok((back, alive)) = tokio::task::spawn_blocking(drain).await else { return };
            readers = back;
            if !alive || exited {
                return;
            }
            if let Some(rx) = exit.as_mut() {
                tokio::select! {
                    r = rx.changed() => if r.is_err() { exit = None },
                    _ = tokio::time::sleep(FOLLOW_TICK) => {}
                    _ = tx.closed() => return,
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    /// A symlink or a FIFO planted in a log directory is no log file.
    #[test]
    fn only_regular_files_are_opened_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("container.log");
        std::fs::write(&log, b"line\n").unwrap();
        assert!(super::open(&log).is_some());
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        assert!(super::open(&link).is_none());
        let fifo = dir.path().join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(super::open(&fifo).is_none(), "neither blocks nor opens");
    }
}
