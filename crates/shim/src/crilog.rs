//! Container output in the Kubernetes CRI log format, one file for both
//! streams: `RFC3339Nano STREAM P|F CONTENT\n` per line, where `F` ends a
//! line and `P` is a part of one. berthd tells the shim to write it with a
//! stdout/stderr target ([`target`], [`berth_target`]); berthd reads it
//! back with [`Parser`]. Two flavours:
//! - kubelet's file (`cri-log:`): whole lines (one longer than
//!   [`MAX_LINE`] is cut into parts); kubelet rotates it, and once the path
//!   names another file (or none) the writer reopens it;
//! - berth's own log (`berth-log:`): what the process wrote is recorded at
//!   once, an unended line as a part (an attached client sees a prompt),
//!   and the shim rotates the file itself ([`LogRotation`]): the streams of
//!   a process share one writer, so no record is lost, split or written
//!   twice across a rotation.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

pub use berth_model::LogRotation;

/// Prefix of a kubelet CRI log target.
const PREFIX: &str = "cri-log:";
/// Prefix of a berth log target: `berth-log:STREAM:MAX_SIZE:MAX_FILES:PATH`.
const BERTH_PREFIX: &str = "berth-log:";
/// The longest content of one record; longer lines become `P` records.
pub const MAX_LINE: usize = 16 * 1024;

/// The shim's target for `stream` ("stdout" or "stderr") of a kubelet log.
pub fn target(stream: &str, path: &Path) -> String {
    format!("{PREFIX}{stream}:{}", path.display())
}

/// The shim's target for `stream` of a log berth keeps within `rotation`.
pub fn berth_target(stream: &str, path: &Path, rotation: LogRotation) -> String {
    format!("{BERTH_PREFIX}{stream}:{}:{}:{}", rotation.max_size, rotation.max_files, path.display())
}

/// A parsed log target.
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a> {
    pub stream: &'static str,
    pub path: &'a Path,
    /// Set for berth's own log.
    pub rotation: Option<LogRotation>,
}

/// The stream, path and rotation of a log target; `None` for anything else.
pub fn parse_target(s: &str) -> Option<Target<'_>> {
    let stream = |name: &str| match name {
        "stdout" => Some("stdout"),
        "stderr" => Some("stderr"),
        _ => None,
    };
    if let Some(rest) = s.strip_prefix(PREFIX) {
        let (name, path) = rest.split_once(':')?;
        return Some(Target { stream: stream(name)?, path: Path::new(path), rotation: None });
    }
    let mut parts = s.strip_prefix(BERTH_PREFIX)?.splitn(4, ':');
    let stream = stream(parts.next()?)?;
    let rotation = LogRotation::new(parts.next()?.parse().ok()?, parts.next()?.parse().ok()?).ok()?;
    Some(Target { stream, path: Path::new(parts.next()?), rotation: Some(rotation) })
}

/// The file a log's writers append to.
struct LogFile {
    path: PathBuf,
    file: File,
    ino: u64,
    size: u64,
    rotation: Option<LogRotation>,
    /// Per stream (stdout, stderr): its last record was a part, so the
    /// line goes on in the next one.
    open: [bool; 2],
}

impl LogFile {
    fn open(path: &Path, rotation: Option<LogRotation>) -> std::io::Result<LogFile> {
        let file = OpenOptions::new().append(true).create(true).mode(0o640).open(path)?;
        let m = file.metadata()?;
        Ok(LogFile { path: path.to_path_buf(), file, ino: m.ino(), size: m.len(), rotation, open: [false; 2] })
    }

    /// Appends `stream`'s whole records (O_APPEND: another writer's records
    /// never land inside them), to the file the path names now (kubelet's),
    /// or to a new file once this one is full (berth's). A file is full
    /// between lines, so none starts in one file and ends in the next; a
    /// line that never ends cannot hold it past twice its size.
    fn append(&mut self, out: &[u8], stream: usize) {
        match self.rotation {
            None => {
                let moved = std::fs::metadata(&self.path).map_or(true, |m| m.ino() != self.ino);
                if moved && let Ok(f) = LogFile::open(&self.path, None) {
                    *self = LogFile { open: self.open, ..f };
                }
                self.write(out);
            }
            Some(r) if r.max_size > 0 && self.size + out.len() as u64 > r.max_size => {
                // Line by line (through each record that ends one): a file
                // is full before the line that would pass its size, unless
                // a line of either stream is still open in it.
                let (mut start, mut at, mut size, mut open) = (0, 0, self.size, self.open[stream]);
                while at < out.len() {
                    let found = first_line_end(&out[at..]);
                    let end = found.map_or(out.len(), |n| at + n);
                    let line = (end - at) as u64;
                    let between = !open && !self.open[1 - stream];
                    if size > 0 && size + line > r.max_size && (between || size + line > 2 * r.max_size) {
                        self.write(&out[start..at]);
                        self.rotate(r);
                        (start, size) = (at, 0);
                    }
                    size += line;
                    open = found.is_none();
                    at = end;
                }
                self.write(&out[start..]);
            }
            Some(_) => self.write(out),
        }
        if let Some(last) = out.strip_suffix(b"\n").map(|o| o.rsplit(|b| *b == b'\n').next().unwrap_or(o)) {
            self.open[stream] = parse_record(last).is_some_and(|r| !r.full);
        }
    }

    fn write(&mut self, out: &[u8]) {
        if !out.is_empty() && self.file.write_all(out).is_ok() {
            self.size += out.len() as u64;
        }
    }

    /// `PATH.N-1` → `PATH.N` … `PATH` → `PATH.1`, the oldest dropped, then
    /// a new `PATH`. A reader holding the old file reads it to its end. A
    /// line still open began in an older file: it holds the new one to
    /// nothing (no line is open in it).
    fn rotate(&mut self, r: LogRotation) {
        if r.max_files > 1 {
            for n in (1..r.max_files - 1).rev() {
                let _ = std::fs::rename(LogRotation::rotated(&self.path, n), LogRotation::rotated(&self.path, n + 1));
            }
            let _ = std::fs::rename(&self.path, LogRotation::rotated(&self.path, 1));
        } else {
            let _ = std::fs::remove_file(&self.path);
        }
        if let Ok(f) = LogFile::open(&self.path, Some(r)) {
            *self = f;
        }
    }
}

/// berth logs open in this shim, by path: every process stream writing one
/// shares its writer.
static SHARED: Mutex<Vec<(PathBuf, Weak<Mutex<LogFile>>)>> = Mutex::new(Vec::new());

fn shared(path: &Path, rotation: LogRotation) -> std::io::Result<Arc<Mutex<LogFile>>> {
    let mut all = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|(_, w)| w.strong_count() > 0);
    if let Some(f) = all.iter().find(|(p, _)| p == path).and_then(|(_, w)| w.upgrade()) {
        return Ok(f);
    }
    let f = Arc::new(Mutex::new(LogFile::open(path, Some(rotation))?));
    all.push((path.to_path_buf(), Arc::downgrade(&f)));
    Ok(f)
}

/// The offset just past the first record of `out` that ends a line.
fn first_line_end(out: &[u8]) -> Option<usize> {
    let mut at = 0;
    for line in out.split_inclusive(|b| *b == b'\n') {
        at += line.len();
        if parse_record(&line[..line.len() - 1]).is_some_and(|r| r.full) {
            return Some(at);
        }
    }
    None
}

fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Appends one record to `out`.
fn record(out: &mut Vec<u8>, ts: &str, stream: &str, full: bool, content: &[u8]) {
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(if full { b" F " } else { b" P " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// One stream's writer into a CRI log file.
pub struct CriLog {
    file: Arc<Mutex<LogFile>>,
    stream: &'static str,
    /// Write an unended line's start at once (berth's log).
    eager: bool,
    /// The start of a line not ended yet.
    pending: Vec<u8>,
}

impl CriLog {
    /// The writer of a parsed target.
    pub fn open(target: &Target) -> std::io::Result<CriLog> {
        let file = match target.rotation {
            Some(r) => shared(target.path, r)?,
            None => Arc::new(Mutex::new(LogFile::open(target.path, None)?)),
        };
        Ok(CriLog { file, stream: target.stream, eager: target.rotation.is_some(), pending: Vec::new() })
    }

    /// Writes the records `data` completes (a line still open waits for
    /// its end, or for [`MAX_LINE`] bytes, unless the writer is eager).
    /// Errors lose output, not the process.
    pub fn write(&mut self, data: &[u8]) {
        let out = self.records(data, &timestamp());
        self.append(&out);
    }

    fn records(&mut self, mut data: &[u8], ts: &str) -> Vec<u8> {
        let mut out = Vec::new();
        while !data.is_empty() {
            match memchr::memchr(b'\n', data) {
                Some(i) if self.pending.len() + i <= MAX_LINE => {
                    self.pending.extend_from_slice(&data[..i]);
                    record(&mut out, ts, self.stream, true, &self.pending);
                    self.pending.clear();
                    data = &data[i + 1..];
                }
                _ => {
                    let take = (MAX_LINE - self.pending.len()).min(data.len());
                    self.pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.pending.len() == MAX_LINE {
                        record(&mut out, ts, self.stream, false, &self.pending);
                        self.pending.clear();
                    }
                }
            }
        }
        if self.eager && !self.pending.is_empty() {
            record(&mut out, ts, self.stream, false, &self.pending);
            self.pending.clear();
        }
        out
    }

    fn append(&mut self, out: &[u8]) {
        if !out.is_empty() {
            let stream = usize::from(self.stream == "stderr");
            self.file.lock().unwrap_or_else(|e| e.into_inner()).append(out, stream);
        }
    }
}

impl Drop for CriLog {
    /// The end of the stream ends its last line.
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let mut out = Vec::new();
            record(&mut out, &timestamp(), self.stream, true, &self.pending);
            self.append(&out);
        }
    }
}

/// Which records a reader keeps, and how it shows them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Filter {
    /// Records written at or after this time (ns since the epoch).
    pub since_ns: Option<u64>,
    /// Records written at or before this time.
    pub until_ns: Option<u64>,
    /// Each line starts with its record's timestamp and a space.
    pub timestamps: bool,
}

/// Reads a CRI log back: bytes in, (stream, content) out, a line's parts
/// joined and its newline restored once it is full. Incomplete records wait
/// for the next bytes.
#[derive(Default)]
pub struct Parser {
    buf: Vec<u8>,
    filter: Filter,
    /// Per stream: a line was started and not ended yet.
    open: [bool; 2],
}

/// Which stream a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Parser {
    pub fn new(filter: Filter) -> Parser {
        Parser { filter, ..Default::default() }
    }

    pub fn feed(&mut self, data: &[u8]) -> Vec<(Stream, Vec<u8>)> {
        let mut out: Vec<(Stream, Vec<u8>)> = Vec::new();
        let filter = self.filter;
        let mut open = self.open;
        self.each_record(data, |_, r| {
            let starts = !std::mem::replace(&mut open[r.stream as usize], !r.full);
            if filter.since_ns.is_some() || filter.until_ns.is_some() {
                let Some(ns) = parse_time(r.time) else { return };
                if filter.since_ns.is_some_and(|t| ns < t) || filter.until_ns.is_some_and(|t| ns > t) {
                    return;
                }
            }
            let mut chunk = Vec::with_capacity(r.content.len() + 32);
            if filter.timestamps && starts {
                chunk.extend_from_slice(r.time);
                chunk.push(b' ');
            }
            chunk.extend_from_slice(r.content);
            if r.full {
                chunk.push(b'\n');
            }
            match out.last_mut() {
                Some((s, prev)) if *s == r.stream => prev.extend_from_slice(&chunk),
                _ => out.push((r.stream, chunk)),
            }
        });
        self.open = open;
        out
    }

    /// Calls `mark` with the offset (counted from `at`, where `data`
    /// starts) of each record that starts a line: where a tail may begin.
    pub fn line_starts(&mut self, data: &[u8], at: u64, mut mark: impl FnMut(u64)) {
        let mut open = self.open;
        let base = at - self.buf.len() as u64;
        self.each_record(data, |offset, r| {
            if !std::mem::replace(&mut open[r.stream as usize], !r.full) {
                mark(base + offset as u64);
            }
        });
        self.open = open;
    }

    /// Forgets a record left incomplete (the reader moves to another file).
    pub fn restart(&mut self) {
        self.buf.clear();
    }

    /// Each whole record of the bytes so far, with its offset in them.
    fn each_record(&mut self, data: &[u8], mut f: impl FnMut(usize, Record)) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(i) = memchr::memchr(b'\n', &self.buf[start..]) {
            if let Some(r) = parse_record(&self.buf[start..start + i]) {
                f(start, r);
            }
            start += i + 1;
        }
        self.buf.drain(..start);
    }
}

struct Record<'a> {
    time: &'a [u8],
    stream: Stream,
    full: bool,
    content: &'a [u8],
}

/// `TIMESTAMP STREAM TAG CONTENT`.
fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = parts.next()?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let full = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    Some(Record { time, stream, full, content: parts.next().unwrap_or_default() })
}

/// An RFC 3339 time as ns since the epoch (`None` before 1970 or unreadable).
pub fn parse_time(s: &[u8]) -> Option<u64> {
    let t = chrono::DateTime::parse_from_rfc3339(std::str::from_utf8(s).ok()?).ok()?;
    u64::try_from(t.timestamp_nanos_opt()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubelet(stream: &'static str, path: &Path) -> CriLog {
        CriLog::open(&Target { stream, path, rotation: None }).unwrap()
    }

    #[test]
    fn lines_become_records_and_long_ones_parts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = kubelet("stdout", &path);
        assert_eq!(log.records(b"one\ntw", "T"), b"T stdout F one\n");
        assert_eq!(log.records(b"o\n\n", "T"), b"T stdout F two\nT stdout F \n");
        let long = vec![b'x'; MAX_LINE + 10];
        let out = log.records(&long, "T");
        assert_eq!(out.len(), "T stdout P ".len() + MAX_LINE + 1);
        assert_eq!(log.records(b"\n", "T"), b"T stdout F xxxxxxxxxx\n");
        // The last line, unended, is written when the stream ends.
        log.write(b"tail");
        drop(log);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with(" stdout F tail\n"), "{text}");
        let ts = text.split(' ').next().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == "2016-10-06T00:17:09.669794202Z".len(), "{ts}");
    }

    #[test]
    fn a_rotated_file_is_reopened_at_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = kubelet("stderr", &path);
        log.write(b"before\n");
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        log.write(b"after\n");
        assert!(std::fs::read_to_string(dir.path().join("0.log.1")).unwrap().ends_with(" stderr F before\n"));
        assert!(std::fs::read_to_string(&path).unwrap().ends_with(" stderr F after\n"));
    }

    #[test]
    fn berth_logs_write_parts_at_once_and_rotate_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let rotation = LogRotation::new(LogRotation::MIN_SIZE, 3).unwrap();
        let out = berth_target("stdout", &path, rotation);
        let err = berth_target("stderr", &path, rotation);
        assert_eq!(parse_target(&err), Some(Target { stream: "stderr", path: &path, rotation: Some(rotation) }));
        let mut o = CriLog::open(&parse_target(&out).unwrap()).unwrap();
        let mut e = CriLog::open(&parse_target(&err).unwrap()).unwrap();
        assert!(Arc::ptr_eq(&o.file, &e.file), "the streams of a log share its writer");
        assert_eq!(o.records(b"prompt> ", "T"), b"T stdout P prompt> \n");
        let line = [b'y'; 999];
        for i in 0..400u32 {
            let w = if i % 2 == 0 { &mut o } else { &mut e };
            w.write(&line);
            w.write(format!("{i}\n").as_bytes());
        }
        drop((o, e));
        let mut files = vec![LogRotation::rotated(&path, 2), LogRotation::rotated(&path, 1), path.clone()];
        assert!(!LogRotation::rotated(&path, 3).exists());
        let mut p = Parser::default();
        let mut all = Vec::new();
        for f in files.drain(..) {
            let bytes = std::fs::read(&f).unwrap();
            assert!(bytes.len() as u64 <= LogRotation::MIN_SIZE, "{} holds {}", f.display(), bytes.len());
            p.restart();
            all.extend(p.feed(&bytes));
        }
        // The newest lines survive, whole, in order, none twice.
        let text: Vec<String> = all.iter().map(|(_, d)| String::from_utf8_lossy(d).into_owned()).collect();
        let numbers: Vec<u32> = text.concat().lines().map(|l| l.trim_start_matches('y').parse().unwrap()).collect();
        assert_eq!(numbers.last(), Some(&399));
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
        assert!(numbers.len() > 100, "{}", numbers.len());
    }

    #[test]
    fn a_line_left_open_holds_only_the_file_it_began_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let rotation = LogRotation::new(LogRotation::MIN_SIZE, 3).unwrap();
        let target = |stream| Target { stream, path: &path, rotation: Some(rotation) };
        let (mut o, mut e) = (CriLog::open(&target("stdout")).unwrap(), CriLog::open(&target("stderr")).unwrap());
        e.write(b"progress 50%"); // never ended
        for i in 0..300 {
            o.write(format!("{}{i}\n", "x".repeat(990)).as_bytes());
        }
        // The file the open line began in may reach twice the size; the
        // ones after it break between lines again.
        for f in [LogRotation::rotated(&path, 1), path.clone()] {
            let len = std::fs::metadata(&f).unwrap().len();
            assert!(len <= LogRotation::MIN_SIZE, "{}: {len}", f.display());
        }
    }

    #[test]
    fn one_file_logs_start_anew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let rotation = LogRotation::new(LogRotation::MIN_SIZE, 1).unwrap();
        let mut o = CriLog::open(&Target { stream: "stdout", path: &path, rotation: Some(rotation) }).unwrap();
        for _ in 0..100 {
            o.write(&[b'z'; 2000]);
            o.write(b"\n");
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= LogRotation::MIN_SIZE);
        assert!(!LogRotation::rotated(&path, 1).exists());
        // Files break between lines; a line that never ends, at twice the size.
        let first = std::fs::read(&path).unwrap();
        assert!(first.starts_with(b"20") && first.ends_with(b" stdout F \n"));
        for _ in 0..100 {
            o.write(&[b'z'; 2000]);
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 2 * LogRotation::MIN_SIZE);
    }

    #[test]
    fn the_parser_joins_parts_and_waits_for_whole_records() {
        let mut p = Parser::default();
        assert_eq!(p.feed(b"T stdout P ab"), []);
        let got = p.feed(b"c\nT stdout F d\nT stderr F e\ngarbage\nT stdout F");
        assert_eq!(got, [(Stream::Stdout, b"abcd\n".to_vec()), (Stream::Stderr, b"e\n".to_vec())]);
        assert_eq!(p.feed(b" f\n"), [(Stream::Stdout, b"f\n".to_vec())]);
        let kubelet_target = target("stderr", Path::new("/l/0.log"));
        let t = parse_target(&kubelet_target).unwrap();
        assert_eq!((t.stream, t.path, t.rotation), ("stderr", Path::new("/l/0.log"), None));
        for bad in ["/plain/file", "cri-log:stdin:/x", "berth-log:stdout:10:3:/x", "berth-log:stdout:x:3:/x"] {
            assert_eq!(parse_target(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_parser_filters_by_time_and_shows_timestamps() {
        let log = b"2026-01-01T00:00:01Z stdout P a\n2026-01-01T00:00:02Z stdout F b\n\
2026-01-01T00:00:03Z stderr F c\n2026-01-01T00:00:04Z stdout F d\n";
        let t = |s: &str| parse_time(s.as_bytes());
        assert_eq!(t("2026-01-01T00:00:02Z"), Some(1_767_225_602_000_000_000));
        assert_eq!(t("2026-01-01T01:00:02.5+01:00"), Some(1_767_225_602_500_000_000));
        assert_eq!(t("nope"), None);
        let mut p = Parser::new(Filter { timestamps: true, ..Default::default() });
        let got = p.feed(log);
        assert_eq!(got[0], (Stream::Stdout, b"2026-01-01T00:00:01Z ab\n".to_vec()));
        assert_eq!(got[2], (Stream::Stdout, b"2026-01-01T00:00:04Z d\n".to_vec()));
        let mut p = Parser::new(Filter {
            since_ns: t("2026-01-01T00:00:02Z"),
            until_ns: t("2026-01-01T00:00:03Z"),
            timestamps: false,
        });
        assert_eq!(p.feed(log), [(Stream::Stdout, b"b\n".to_vec()), (Stream::Stderr, b"c\n".to_vec())]);
        // Lines start at records 0, 2 and 3 (record 1 ends record 0's line).
        let mut starts = Vec::new();
        let mut p = Parser::default();
        p.line_starts(&log[..40], 0, |at| starts.push(at));
        p.line_starts(&log[40..], 40, |at| starts.push(at));
        let expected: Vec<u64> = [0, 2, 3]
            .iter()
            .map(|n| log.split_inclusive(|b| *b == b'\n').take(*n).map(|l| l.len() as u64).sum())
            .collect();
        assert_eq!(starts, expected);
    }
}
