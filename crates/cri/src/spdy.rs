//! SPDY/3.1 framing, the transport of Kubernetes' exec, attach and
//! port-forward streams (its peers speak it through moby/spdystream): data
//! and control frames, and header blocks compressed with zlib and SPDY/3's
//! preset dictionary, one compression context per direction for the whole
//! connection. No maintained crate serves SPDY on a plain upgraded HTTP
//! connection, so the protocol lives in this one module. Flow control is not
//! enforced (spdystream does not), and SETTINGS and WINDOW_UPDATE are read
//! and ignored.

use std::io;
use std::sync::LazyLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const FLAG_FIN: u8 = 0x01;
/// The largest payload a frame's 24-bit length can carry.
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;
/// The largest frame berth reads: clients send data in pieces of 32 KiB.
pub const MAX_FRAME: usize = 1 << 20;
/// The most a header block may decompress to, and the most headers in it.
const MAX_HEADER_BLOCK: usize = 256 * 1024;
const MAX_HEADERS: usize = 1024;

/// The entries of SPDY/3's header dictionary (draft 3, 2.6.10.1), each
/// written length-prefixed, then [`DICTIONARY_TAIL`].
const DICTIONARY_WORDS: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized",
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut d = Vec::with_capacity(1423);
    for w in DICTIONARY_WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    d
});

/// Header names (lowercase) and values, in order.
pub type Headers = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        id: u32,
        status: u32,
    },
    Ping(u32),
    GoAway {
        last: u32,
        status: u32,
    },
    Headers {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    Data {
        id: u32,
        fin: bool,
        data: Vec<u8>,
    },
    /// SETTINGS, WINDOW_UPDATE and unknown control frames: nothing to do.
    Ignored,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("SPDY: {}", msg.into()))
}

fn u32_at(b: &[u8], at: usize) -> io::Result<u32> {
    b.get(at..at + 4).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]])).ok_or_else(|| bad("frame too short"))
}

/// Writes frames: owns the compression context of the sending direction.
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(&DICTIONARY)
            .unwrap_or_else(|_| unreachable!("a fresh deflate stream takes a dictionary"));
        Encoder { deflate }
    }
}

impl Encoder {
    fn header_block(&mut self, headers: &Headers) -> io::Result<Vec<u8>> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            for s in [name.to_ascii_lowercase().as_str(), value.as_str()] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let start = self.deflate.total_in();
        loop {
            let done = (self.deflate.total_in() - start) as usize;
            out.reserve(256);
            self.deflate.compress_vec(&raw[done..], &mut out, FlushCompress::Sync).map_err(|e| bad(e.to_string()))?;
            // A sync flush is complete once all input is in and room is left.
            if (self.deflate.total_in() - start) as usize == raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    pub fn encode(&mut self, frame: &Frame) -> io::Result<Vec<u8>> {
        let fin = |f: bool| if f { FLAG_FIN } else { 0 };
        let (kind, flags, payload) = match frame {
            Frame::Data { id, fin: f, data } => {
                if data.len() > MAX_PAYLOAD {
                    return Err(bad("data frame too long"));
                }
                let mut out = Vec::with_capacity(8 + data.len());
                out.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
                out.push(fin(*f));
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
                return Ok(out);
            }
            Frame::SynStream { id, fin: f, headers } => {
                let mut p = Vec::new();
                p.extend_from_slice(&id.to_be_bytes());
                p.extend_from_slice(&0u32.to_be_bytes());
                p.extend_from_slice(&[0, 0]);
                p.extend(self.header_block(headers)?);
                (SYN_STREAM, fin(*f), p)
            }
            Frame::SynReply { id, fin: f, headers } | Frame::Headers { id, fin: f, headers } => {
                let mut p = id.to_be_bytes().to_vec();
                p.extend(self.header_block(headers)?);
                let kind = if matches!(frame, Frame::SynReply { .. }) { SYN_REPLY } else { HEADERS };
                (kind, fin(*f), p)
            }
            Frame::RstStream { id, status } => (RST_STREAM, 0, [id.to_be_bytes(), status.to_be_bytes()].concat()),
            Frame::Ping(id) => (PING, 0, id.to_be_bytes().to_vec()),
            Frame::GoAway { last, status } => (GOAWAY, 0, [last.to_be_bytes(), status.to_be_bytes()].concat()),
            Frame::Ignored => return Ok(Vec::new()),
        };
        let mut out = Vec::with_capacity(8 + payload.len());
        out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.push(flags);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&payload);
        Ok(out)
    }
}

/// Reads frames: owns the decompression context of the receiving direction.
pub struct Decoder {
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { inflate: Decompress::new(true) }
    }
}

impl Decoder {
    fn header_block(&mut self, block: &[u8]) -> io::Result<Headers> {
        let mut raw = Vec::with_capacity(block.len() * 4 + 64);
        let start = self.inflate.total_in();
        loop {
            let done = (self.inflate.total_in() - start) as usize;
            if done == block.len() && raw.len() < raw.capacity() {
                break;
            }
            raw.reserve(1024);
            match self.inflate.decompress_vec(&block[done..], &mut raw, FlushDecompress::Sync) {
                Ok(Status::Ok | Status::BufError) => {}
                Ok(Status::StreamEnd) => break,
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(&DICTIONARY).map_err(|e| bad(e.to_string()))?;
                }
                Err(e) => return Err(bad(format!("header block: {e}"))),
            }
            if raw.len() > MAX_HEADER_BLOCK {
                return Err(bad("header block too large"));
            }
        }
        parse_headers(&raw)
    }

    /// One frame from the front of `buf`, and the bytes it took; `None`
    /// until a whole frame is there.
    pub fn decode(&mut self, buf: &[u8]) -> io::Result<Option<(Frame, usize)>> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if len > MAX_FRAME {
            return Err(bad(format!("a frame of {len} bytes (at most {MAX_FRAME})")));
        }
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let (flags, p) = (buf[4], &buf[8..8 + len]);
        let fin = flags & FLAG_FIN != 0;
        if buf[0] & 0x80 == 0 {
            let id = u32_at(buf, 0)?;
            return Ok(Some((Frame::Data { id, fin, data: p.to_vec() }, 8 + len)));
        }
        let version = u16::from_be_bytes([buf[0] & 0x7f, buf[1]]);
        if version != VERSION {
            return Err(bad(format!("version {version}")));
        }
        let id = || u32_at(p, 0).map(|v| v & 0x7fff_ffff);
        let frame = match u16::from_be_bytes([buf[2], buf[3]]) {
            SYN_STREAM => {
                let headers = self.header_block(p.get(10..).ok_or_else(|| bad("short SYN_STREAM"))?)?;
                Frame::SynStream { id: id()?, fin, headers }
            }
            SYN_REPLY => Frame::SynReply { id: id()?, fin, headers: self.header_block(&p[4.min(p.len())..])? },
            HEADERS => Frame::Headers { id: id()?, fin, headers: self.header_block(&p[4.min(p.len())..])? },
            RST_STREAM => Frame::RstStream { id: id()?, status: u32_at(p, 4)? },
            PING => Frame::Ping(u32_at(p, 0)?),
            GOAWAY => Frame::GoAway { last: id()?, status: u32_at(p, 4).unwrap_or(0) },
            // SPDY/3: a control frame of an unknown type is ignored.
            _ => Frame::Ignored,
        };
        Ok(Some((frame, 8 + len)))
    }
}

fn parse_headers(raw: &[u8]) -> io::Result<Headers> {
    let n = u32_at(raw, 0)? as usize;
    // Each pair takes at least 8 bytes.
    if n > MAX_HEADERS || n > raw.len() / 8 {
        return Err(bad(format!("{n} headers")));
    }
    let mut at = 4;
    let mut out = Vec::with_capacity(n.min(64));
    let string = |at: &mut usize| -> io::Result<String> {
        let len = u32_at(raw, *at)? as usize;
        let s = raw.get(*at + 4..*at + 4 + len).ok_or_else(|| bad("header block cut short"))?;
        *at += 4 + len;
        String::from_utf8(s.to_vec()).map_err(|_| bad("header not UTF-8"))
    };
    for _ in 0..n {
        let name = string(&mut at)?;
        let value = string(&mut at)?;
        out.push((name, value));
    }
    Ok(out)
}

/// The value of header `name` (names are lowercase on the wire).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        // zlib names the dictionary by its Adler-32 in the stream header:
        // SPDY/3 header blocks start 78 xx e3 c6 a7 c2.
        let block = Encoder::default().header_block(&vec![("streamtype".into(), "error".into())]).unwrap();
        assert_eq!(block[0], 0x78);
        assert_eq!(&block[2..6], &[0xe3, 0xc6, 0xa7, 0xc2]);
    }

    #[test]
    fn frames_round_trip_with_one_compression_context_per_direction() {
        let (mut enc, mut dec) = (Encoder::default(), Decoder::default());
        let h = |t: &str| vec![("streamtype".to_string(), t.to_string()), ("port".to_string(), "80".to_string())];
        let frames = [
            Frame::SynStream { id: 1, fin: false, headers: h("error") },
            Frame::SynStream { id: 3, fin: true, headers: h("stdout") },
            Frame::SynReply { id: 1, fin: false, headers: Vec::new() },
            Frame::Headers { id: 3, fin: false, headers: h("x") },
            Frame::Data { id: 3, fin: true, data: b"hello".to_vec() },
            Frame::Data { id: 5, fin: false, data: Vec::new() },
            Frame::RstStream { id: 3, status: 5 },
            Frame::Ping(7),
            Frame::GoAway { last: 3, status: 0 },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(enc.encode(f).unwrap());
        }
        let mut got = Vec::new();
        let mut at = 0;
        // Fed a byte at a time: a partial frame waits for the rest.
        let mut buf = Vec::new();
        while at < wire.len() {
            buf.push(wire[at]);
            at += 1;
            if let Some((f, used)) = dec.decode(&buf).unwrap() {
                buf.drain(..used);
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn frames_another_implementation_compressed_are_read() {
        // node-spdy's test vectors: a SYN_STREAM and a SYN_REPLY as its
        // framer writes them, each from a fresh compression context.
        let syn = hex(concat!(
            "800300010000002c0000000100000000000078f9e3c6a7c202e50e507ab442a45a77d7105006",
            "b32a4804974d8cfa00000000ffff"
        ));
        let (frame, used) = Decoder::default().decode(&syn).unwrap().unwrap();
        assert_eq!(used, syn.len());
        let Frame::SynStream { id: 1, fin: false, headers } = frame else { panic!("{frame:?}") };
        assert_eq!(header(&headers, ":method"), Some("GET"));
        assert_eq!(header(&headers, ":path"), Some("/"));
        let reply = hex("80030002000000140000000178f9e3c6a7c202a6230600000000ffff");
        let (frame, _) = Decoder::default().decode(&reply).unwrap().unwrap();
        assert!(matches!(frame, Frame::SynReply { id: 1, fin: false, .. }), "{frame:?}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut dec = Decoder::default();
        // A control frame of SPDY/2.
        assert!(dec.decode(&[0x80, 0x02, 0, 1, 0, 0, 0, 0]).is_err());
        // A SYN_STREAM whose header block is not zlib.
        let mut f = vec![0x80, 0x03, 0, 1, 0, 0, 0, 14];
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
        assert!(dec.decode(&f).is_err());
        // An unknown control frame type is ignored.
        assert_eq!(Decoder::default().decode(&[0x80, 0x03, 0, 99, 0, 0, 0, 0]).unwrap(), Some((Frame::Ignored, 8)));
        // A frame over the limit is refused from its header alone.
        assert!(Decoder::default().decode(&[0, 0, 0, 1, 0, 0x20, 0, 0]).is_err());
        // Header counts beyond the block.
        assert!(parse_headers(&[0, 0, 0, 5, 0, 0, 0, 1]).is_err());
    }
}
