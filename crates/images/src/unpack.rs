//! Layer unpacking (issue 10 item 2, SPEC B31): applies one OCI layer — a
//! tar stream, plain, gzip or zstd (detected by magic bytes, the media type
//! a hint) — onto a directory while it streams in, and returns its DiffID
//! (sha256 of the uncompressed tar). Whiteouts become overlayfs whiteouts
//! or real deletions (`Whiteouts`). Every path is resolved beneath the
//! target (`tree.rs`); hostile entries are refused by name and leave
//! nothing behind. Entries before a refused one stay: callers unpack into a
//! fresh snapshot directory and discard it on error.

mod tree;

use std::io::{self, Cursor, Read};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::{Digest, ImageError};
use tree::{Kind, Meta, Tree};

/// Longest entry or link name accepted (PATH_MAX).
pub const MAX_NAME_LEN: usize = 4096;
/// Default bound on the number of entries in one layer.
pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;
/// Default bound on the uncompressed size of one layer (64 GiB).
pub const DEFAULT_MAX_TOTAL_SIZE: u64 = 64 << 30;

/// How whiteouts (`.wh.NAME`, `.wh..wh..opq`) are represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// For an overlayfs upper dir: a 0/0 character device at NAME, and
    /// `trusted.overlay.opaque=y` on an opaque directory.
    Overlay,
    /// For a flattened rootfs: NAME is deleted, an opaque directory loses
    /// everything that this layer did not write.
    Apply,
}

/// A layer's compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression an OCI or Docker layer media type names, if any.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
            Some(Compression::Gzip)
        } else if media_type.ends_with("+zstd") {
            Some(Compression::Zstd)
        } else if media_type.ends_with(".tar") {
            Some(Compression::None)
        } else {
            None
        }
    }

    fn from_magic(prefix: &[u8]) -> Compression {
        if prefix.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What `unpack_layer` does and how much it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackOptions {
    pub whiteouts: Whiteouts,
    /// From the layer's media type; the magic bytes decide, but a stream
    /// that is not compressed as the hint says is refused.
    pub compression: Option<Compression>,
    /// At most this many tar entries.
    pub max_entries: u64,
    /// At most this many uncompressed bytes of entry data.
    pub max_total_size: u64,
}

impl UnpackOptions {
    pub fn new(whiteouts: Whiteouts) -> UnpackOptions {
        UnpackOptions {
            whiteouts,
            compression: None,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_total_size: DEFAULT_MAX_TOTAL_SIZE,
        }
    }
}

/// The result of a successful unpack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// sha256 of the uncompressed tar stream: compare with the image
    /// config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    /// Tar entries read (PAX and GNU long-name headers fold into the
    /// entry they describe and are not counted).
    pub entries: u64,
    /// Uncompressed bytes read.
    pub size: u64,
}

/// Applies the layer read from `reader` onto the directory `target`.
pub fn unpack_layer<R: Read>(reader: R, target: &Path, options: &UnpackOptions) -> Result<Unpacked, ImageError> {
    let mut tree = Tree::open(target, options.whiteouts)?;
    let stream = HashingReader { inner: decompress(reader, options.compression)?, hash: Sha256::new(), count: 0 };
    let mut archive = tar::Archive::new(stream);
    let mut entries = 0u64;
    let mut total = 0u64;
    for entry in archive.entries().map_err(stream_error)? {
        let mut entry = entry.map_err(stream_error)?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        entries += 1;
        if entries > options.max_entries {
            return Err(refuse(&name, &format!("layer has more than {} entries", options.max_entries)));
        }
        total = total.saturating_add(entry.size());
        if total > options.max_total_size {
            return Err(refuse(
                &name,
                &format!("size {} takes the layer over its bound of {} bytes", entry.size(), options.max_total_size),
            ));
        }
        let path = clean_path(&raw).map_err(|why| refuse(&name, why))?;
        let Some(kind) = kind_of(&mut entry).map_err(|why| refuse(&name, &why))? else {
            continue;
        };
        let meta = meta_of(&mut entry).map_err(|why| refuse(&name, &why))?;
        tree.apply(&name, &path, kind, &meta, &mut entry)?;
    }
    let mut stream = archive.into_inner();
    // The DiffID covers the whole stream, padding after the end blocks too.
    let rest = options.max_total_size.saturating_sub(total).saturating_add(1 << 20);
    io::copy(&mut (&mut stream).take(rest), &mut io::sink()).map_err(stream_error)?;
    if stream.read(&mut [0u8; 1]).map_err(stream_error)? != 0 {
        return Err(ImageError::InvalidArgument("layer has too much data after its end".into()));
    }
    tree.finish()?;
    Ok(Unpacked { diff_id: Digest::from_sha256(stream.hash), entries, size: stream.count })
}

fn refuse(name: &str, why: &str) -> ImageError {
    ImageError::InvalidArgument(format!("layer entry {name:?}: {why}"))
}

/// Errors reading the (decompressed) stream: corrupt input is the
/// caller's argument, anything else (a dropped connection) is I/O.
fn stream_error(e: io::Error) -> ImageError {
    match e.kind() {
        io::ErrorKind::InvalidData
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::InvalidInput
        | io::ErrorKind::Other => ImageError::InvalidArgument(format!("malformed layer: {e}")),
        _ => ImageError::io("read layer", e),
    }
}

fn decompress<'a, R: Read + 'a>(mut reader: R, hint: Option<Compression>) -> Result<Box<dyn Read + 'a>, ImageError> {
    let mut prefix = Vec::with_capacity(4);
    (&mut reader).take(4).read_to_end(&mut prefix).map_err(stream_error)?;
    let found = Compression::from_magic(&prefix);
    if found == Compression::None
        && let Some(hint @ (Compression::Gzip | Compression::Zstd)) = hint
    {
        return Err(ImageError::InvalidArgument(format!("layer media type says {hint:?} but the stream is not")));
    }
    let stream = Cursor::new(prefix).chain(reader);
    Ok(match found {
        Compression::None => Box::new(stream),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(stream)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(stream).map_err(stream_error)?),
    })
}

struct HashingReader<'a> {
    inner: Box<dyn Read + 'a>,
    hash: Sha256,
    count: u64,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Normalises an entry name to `a/b/c` (empty: the root itself), refusing
/// absolute names, `..` components and overlong names.
fn clean_path(raw: &[u8]) -> Result<Vec<u8>, &'static str> {
    if raw.len() > MAX_NAME_LEN {
        return Err("name longer than 4096 bytes");
    }
    if raw.first() == Some(&b'/') {
        return Err("absolute name");
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("`..` component in name"),
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(comp);
            }
        }
    }
    Ok(out)
}

/// What the entry creates; `None` for headers that create nothing.
fn kind_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Option<Kind>, String> {
    use tar::EntryType as T;
    let header = entry.header();
    let link = || -> Result<Vec<u8>, String> {
        let link = entry.link_name_bytes().ok_or("link without a target")?;
        if link.len() > MAX_NAME_LEN {
            return Err("link target longer than 4096 bytes".into());
        }
        Ok(link.into_owned())
    };
    Ok(Some(match header.entry_type() {
        T::Regular | T::Continuous | T::GNUSparse => Kind::File(entry.size()),
        T::Directory => Kind::Dir,
        T::Symlink => Kind::Symlink(link()?),
        T::Link => {
            let target = link()?;
            let clean = clean_path(&target).map_err(|why| format!("hard link target: {why}"))?;
            if clean.is_empty() {
                return Err("hard link to the layer root".into());
            }
            Kind::HardLink(clean)
        }
        T::Fifo => Kind::Fifo,
        T::Char => {
            let major = header.device_major().map_err(|e| e.to_string())?;
            let minor = header.device_minor().map_err(|e| e.to_string())?;
            if major.unwrap_or(0) != 0 || minor.unwrap_or(0) != 0 {
                return Err("character device node refused (only the 0:0 whiteout form is allowed)".into());
            }
            Kind::WhiteoutDevice
        }
        T::Block => return Err("block device node refused".into()),
        T::XGlobalHeader => return Ok(None),
        other => return Err(format!("unsupported entry type {:?}", other.as_byte() as char)),
    }))
}

fn meta_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Meta, String> {
    let header = entry.header();
    let id = |v: io::Result<u64>, what: &str| -> Result<u32, String> {
        let v = v.map_err(|e| format!("bad {what}: {e}"))?;
        u32::try_from(v).map_err(|_| format!("{what} {v} out of range"))
    };
    let mut meta = Meta {
        uid: id(header.uid(), "uid")?,
        gid: id(header.gid(), "gid")?,
        mode: header.mode().map_err(|e| format!("bad mode: {e}"))? & 0o7777,
        mtime: (header.mtime().map_err(|e| format!("bad mtime: {e}"))?.min(i64::MAX as u64) as i64, 0),
        xattrs: Vec::new(),
    };
    if let Some(pax) = entry.pax_extensions().map_err(|e| format!("bad PAX header: {e}"))? {
        for ext in pax {
            let ext = ext.map_err(|e| format!("bad PAX header: {e}"))?;
            let key = ext.key_bytes();
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                meta.xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
            } else if key == b"mtime"
                && let Some(t) = ext.value().ok().and_then(parse_pax_time)
            {
                meta.mtime = t;
            }
        }
    }
    Ok(meta)
}

/// `SECONDS[.FRACTION]` (non-negative) as seconds and nanoseconds.
fn parse_pax_time(s: &str) -> Option<(i64, i64)> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    if secs < 0 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    Some((secs, digits.parse().ok()?))
}

#[cfg(test)]
mod tests;
