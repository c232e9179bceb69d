//! Container output in the Kubernetes CRI log format, one file for both
//! streams: `RFC3339Nano STREAM P|F CONTENT\n` per line, where `F` ends a
//! line and `P` is a part of one (a line longer than [`MAX_LINE`] is cut
//! into parts). berthd tells the shim to write it with a stdout/stderr
//! target `cri-log:STREAM:PATH` ([`target`]); berthd reads it back with
//! [`Parser`]. The writer follows kubelet's rotation: once the path names
//! another file (or none), it reopens it before the next record.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Prefix of a CRI log target.
const PREFIX: &str = "cri-log:";
/// The longest content of one record; longer lines become `P` records.
pub const MAX_LINE: usize = 16 * 1024;

/// The shim's target for `stream` ("stdout" or "stderr") of a CRI log.
pub fn target(stream: &str, path: &Path) -> String {
    format!("{PREFIX}{stream}:{}", path.display())
}

/// The stream and path of a CRI log target; `None` for anything else.
pub fn parse_target(s: &str) -> Option<(&'static str, &Path)> {
    let rest = s.strip_prefix(PREFIX)?;
    let (stream, path) = rest.split_once(':')?;
    let stream = match stream {
        "stdout" => "stdout",
        "stderr" => "stderr",
        _ => return None,
    };
    Some((stream, Path::new(path)))
}

/// One stream's writer into a CRI log file.
pub struct CriLog {
    path: PathBuf,
    file: File,
    ino: u64,
    stream: &'static str,
    /// The start of a line not ended yet.
    pending: Vec<u8>,
}

fn open(path: &Path) -> std::io::Result<(File, u64)> {
    let file = OpenOptions::new().append(true).create(true).mode(0o640).open(path)?;
    let ino = file.metadata()?.ino();
    Ok((file, ino))
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

impl CriLog {
    pub fn open(stream: &'static str, path: &Path) -> std::io::Result<CriLog> {
        let (file, ino) = open(path)?;
        Ok(CriLog { path: path.to_path_buf(), file, ino, stream, pending: Vec::new() })
    }

    /// Writes the records `data` completes (a line still open waits for
    /// its end, or for [`MAX_LINE`] bytes). Errors lose output, not the
    /// process.
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
        out
    }

    /// One write per batch of whole records (O_APPEND: the other stream's
    /// records never land inside them), to the file the path names now.
    fn append(&mut self, out: &[u8]) {
        if out.is_empty() {
            return;
        }
        let moved = std::fs::metadata(&self.path).map_or(true, |m| m.ino() != self.ino);
        if moved && let Ok((file, ino)) = open(&self.path) {
            (self.file, self.ino) = (file, ino);
        }
        let _ = self.file.write_all(out);
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

/// Reads a CRI log back: bytes in, (stream, content) out, a line's parts
/// joined and its newline restored once it is full. Incomplete records wait
/// for the next bytes.
#[derive(Default)]
pub struct Parser {
    buf: Vec<u8>,
}

/// Which stream a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Parser {
    pub fn feed(&mut self, data: &[u8]) -> Vec<(Stream, Vec<u8>)> {
        self.buf.extend_from_slice(data);
        let mut out: Vec<(Stream, Vec<u8>)> = Vec::new();
        let mut start = 0;
        while let Some(i) = memchr::memchr(b'\n', &self.buf[start..]) {
            let line = &self.buf[start..start + i];
            start += i + 1;
            let Some((stream, full, content)) = parse_record(line) else { continue };
            let mut chunk = content.to_vec();
            if full {
                chunk.push(b'\n');
            }
            match out.last_mut() {
                Some((s, prev)) if *s == stream => prev.extend_from_slice(&chunk),
                _ => out.push((stream, chunk)),
            }
        }
        self.buf.drain(..start);
        out
    }
}

/// `TIMESTAMP STREAM TAG CONTENT` → (stream, full, content).
fn parse_record(line: &[u8]) -> Option<(Stream, bool, &[u8])> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let _ts = parts.next()?;
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
    Some((stream, full, parts.next().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_records_and_long_ones_parts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = CriLog::open("stdout", &path).unwrap();
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
        let mut log = CriLog::open("stderr", &path).unwrap();
        log.write(b"before\n");
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        log.write(b"after\n");
        assert!(std::fs::read_to_string(dir.path().join("0.log.1")).unwrap().ends_with(" stderr F before\n"));
        assert!(std::fs::read_to_string(&path).unwrap().ends_with(" stderr F after\n"));
    }

    #[test]
    fn the_parser_joins_parts_and_waits_for_whole_records() {
        let mut p = Parser::default();
        assert!(p.feed(b"T stdout P ab").is_empty());
        let got = p.feed(b"c\nT stdout F d\nT stderr F e\ngarbage\nT stdout F");
        assert_eq!(got, [(Stream::Stdout, b"abcd\n".to_vec()), (Stream::Stderr, b"e\n".to_vec())]);
        assert_eq!(p.feed(b" f\n"), [(Stream::Stdout, b"f\n".to_vec())]);
        assert_eq!(parse_target(&target("stderr", Path::new("/l/0.log"))), Some(("stderr", Path::new("/l/0.log"))));
        assert_eq!(parse_target("/plain/file"), None);
        assert_eq!(parse_target("cri-log:stdin:/x"), None);
    }
}
