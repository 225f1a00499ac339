//! SPDY/3.1 framing, as much as `kubectl port-forward` needs (it tunnels SPDY inside a WebSocket,
//! `SPDY/3.1+portforward.k8s.io`): frames in and out, and the zlib-compressed header blocks.
//!
//! Header blocks on a connection form one zlib stream per direction, flushed (sync) after each
//! block. The client compresses with the SPDY/3 dictionary; `flate2`'s pure-Rust backend has no
//! preset-dictionary call, so [`HeaderInflater`] primes a raw inflater with the dictionary as a
//! stored deflate block (whose output it discards) before the client's first block: back
//! references into the dictionary then resolve as zlib's would. What we send is compressed
//! without a dictionary (a zlib header without FDICT), which readers accept.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

pub const FLAG_FIN: u8 = 0x01;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes.
pub const PROTOCOL_ERROR: u32 = 1;
#[cfg(test)]
pub const CANCEL: u32 = 5;

/// Largest frame accepted (the length field allows 16 MiB).
const MAX_FRAME: usize = 16 << 20;
/// Largest header block accepted once inflated.
const MAX_HEADERS: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpdyError {
    #[error("SPDY control frame of version {0} (want 3)")]
    Version(u16),
    #[error("SPDY frame of {0} bytes is too large")]
    TooLarge(usize),
    #[error("truncated SPDY {0}")]
    Truncated(&'static str),
    #[error("SPDY header block: {0}")]
    Headers(String),
}

#[derive(Debug, PartialEq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        fin: bool,
        headers: Vec<(String, String)>,
    },
    SynReply {
        stream_id: u32,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Ping(u32),
    GoAway,
    Data {
        stream_id: u32,
        fin: bool,
        data: Vec<u8>,
    },
    /// SETTINGS, HEADERS, WINDOW_UPDATE and unknown types: nothing port-forward acts on.
    Ignored,
}

/// The SPDY/3 header dictionary (draft 3, 2.6.10.1): length-prefixed words, then a tail.
pub fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
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
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
        "501 Not Implemented503 Service Unavailable",
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
        "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch",
        "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::with_capacity(1423);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

/// The receiving side's header decompressor (one per connection).
pub struct HeaderInflater {
    raw: Decompress,
    started: bool,
}

impl Default for HeaderInflater {
    fn default() -> Self {
        HeaderInflater {
            raw: Decompress::new(false),
            started: false,
        }
    }
}

impl HeaderInflater {
    pub fn inflate(&mut self, block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let bad = |m: String| SpdyError::Headers(m);
        let mut input = block;
        if !self.started {
            self.started = true;
            let [cmf, flg, ..] = *block else {
                return Err(bad("no zlib header".into()));
            };
            if cmf & 0x0f != 8 || (u16::from(cmf) << 8 | u16::from(flg)) % 31 != 0 {
                return Err(bad("not a zlib stream".into()));
            }
            input = &block[2..];
            if flg & 0x20 != 0 {
                // FDICT: the dictionary's Adler-32 follows; prime the window with it.
                input = input
                    .get(4..)
                    .ok_or_else(|| bad("truncated dictionary id".into()))?;
                let dict = dictionary();
                let len = dict.len() as u16;
                let mut stored = vec![0x00];
                stored.extend_from_slice(&len.to_le_bytes());
                stored.extend_from_slice(&(!len).to_le_bytes());
                stored.extend_from_slice(&dict);
                let mut sink = Vec::with_capacity(dict.len() + 16);
                self.raw
                    .decompress_vec(&stored, &mut sink, FlushDecompress::Sync)
                    .map_err(|e| bad(e.to_string()))?;
            }
        }
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        loop {
            let (before, produced_before) = (self.raw.total_in(), out.len());
            let status = self
                .raw
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
                .map_err(|e| bad(e.to_string()))?;
            let used = (self.raw.total_in() - before) as usize;
            input = &input[used..];
            if used == 0 && out.len() == produced_before && out.len() < out.capacity() {
                if input.is_empty() {
                    break;
                }
                return Err(bad("the compressed block does not decode".into()));
            }
            if out.len() > MAX_HEADERS {
                return Err(bad("too large".into()));
            }
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if status == Status::StreamEnd {
                break;
            }
            out.reserve(out.capacity().max(256));
        }
        Ok(out)
    }
}

/// The sending side's header compressor (one per connection).
pub struct HeaderDeflater {
    c: Compress,
}

impl Default for HeaderDeflater {
    fn default() -> Self {
        HeaderDeflater {
            c: Compress::new(Compression::default(), true),
        }
    }
}

impl HeaderDeflater {
    pub fn deflate(&mut self, block: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(block.len() + 64);
        let mut input = block;
        loop {
            let before = self.c.total_in();
            if self.c.compress_vec(input, &mut out, FlushCompress::Sync).is_err() {
                return out;
            }
            input = &input[(self.c.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                return out;
            }
            out.reserve(out.capacity().max(64));
        }
    }
}

/// A name/value header block, uncompressed: count, then length-prefixed names and values.
pub fn encode_headers(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut b = (headers.len() as u32).to_be_bytes().to_vec();
    for (n, v) in headers {
        b.extend_from_slice(&(n.len() as u32).to_be_bytes());
        b.extend_from_slice(n.as_bytes());
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    b
}

pub fn decode_headers(b: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], SpdyError> {
        let s = b.get(at..at + n).ok_or(SpdyError::Truncated("header block"))?;
        at += n;
        Ok(s)
    };
    let u32_of = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
    let count = u32_of(take(4)?);
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = u32_of(take(4)?);
        let name = String::from_utf8_lossy(take(n)?).to_ascii_lowercase();
        let n = u32_of(take(4)?);
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        headers.push((name, value));
    }
    Ok(headers)
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&0x8003u16.to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

pub fn data(stream_id: u32, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    f.push(if fin { FLAG_FIN } else { 0 });
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

pub fn syn_reply(stream_id: u32, deflater: &mut HeaderDeflater) -> Vec<u8> {
    let mut p = stream_id.to_be_bytes().to_vec();
    p.extend(deflater.deflate(&encode_headers(&[])));
    control(SYN_REPLY, 0, &p)
}

pub fn rst_stream(stream_id: u32, status: u32) -> Vec<u8> {
    let mut p = stream_id.to_be_bytes().to_vec();
    p.extend_from_slice(&status.to_be_bytes());
    control(RST_STREAM, 0, &p)
}

pub fn ping(id: u32) -> Vec<u8> {
    control(PING, 0, &id.to_be_bytes())
}

pub fn window_update(stream_id: u32, delta: u32) -> Vec<u8> {
    let mut p = stream_id.to_be_bytes().to_vec();
    p.extend_from_slice(&delta.to_be_bytes());
    control(WINDOW_UPDATE, 0, &p)
}

/// Client side, for tests: a SYN_STREAM.
#[cfg(test)]
pub fn syn_stream(stream_id: u32, headers: &[(&str, &str)], deflater: &mut HeaderDeflater) -> Vec<u8> {
    let mut p = stream_id.to_be_bytes().to_vec();
    p.extend_from_slice(&0u32.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend(deflater.deflate(&encode_headers(headers)));
    control(SYN_STREAM, 0, &p)
}

/// Splits a byte stream (WebSocket messages need not align with frames) into frames.
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
    inflater: HeaderInflater,
}

impl Reader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, if there is one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SpdyError> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, self.buf[5], self.buf[6], self.buf[7]]) as usize;
        if len > MAX_FRAME {
            return Err(SpdyError::TooLarge(len));
        }
        if self.buf.len() < 8 + len {
            return Ok(None);
        }
        let head: [u8; 8] = [
            self.buf[0],
            self.buf[1],
            self.buf[2],
            self.buf[3],
            self.buf[4],
            self.buf[5],
            self.buf[6],
            self.buf[7],
        ];
        let payload: Vec<u8> = self.buf[8..8 + len].to_vec();
        self.buf.drain(..8 + len);
        let flags = head[4];
        let word = |p: &[u8], i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        if head[0] & 0x80 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: word(&head, 0) & 0x7fff_ffff,
                fin: flags & FLAG_FIN != 0,
                data: payload,
            }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != 3 {
            return Err(SpdyError::Version(version));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        Ok(Some(match kind {
            SYN_STREAM => {
                if payload.len() < 10 {
                    return Err(SpdyError::Truncated("SYN_STREAM"));
                }
                let block = self.inflater.inflate(&payload[10..])?;
                Frame::SynStream {
                    stream_id: word(&payload, 0) & 0x7fff_ffff,
                    fin: flags & FLAG_FIN != 0,
                    headers: decode_headers(&block)?,
                }
            }
            SYN_REPLY => {
                if payload.len() < 4 {
                    return Err(SpdyError::Truncated("SYN_REPLY"));
                }
                self.inflater.inflate(&payload[4..])?;
                Frame::SynReply {
                    stream_id: word(&payload, 0) & 0x7fff_ffff,
                }
            }
            HEADERS => {
                if payload.len() < 4 {
                    return Err(SpdyError::Truncated("HEADERS"));
                }
                // Keep the zlib stream in step even though nothing uses these.
                self.inflater.inflate(&payload[4..])?;
                Frame::Ignored
            }
            RST_STREAM => {
                if payload.len() < 8 {
                    return Err(SpdyError::Truncated("RST_STREAM"));
                }
                Frame::RstStream {
                    stream_id: word(&payload, 0) & 0x7fff_ffff,
                    status: word(&payload, 4),
                }
            }
            PING => {
                if payload.len() < 4 {
                    return Err(SpdyError::Truncated("PING"));
                }
                Frame::Ping(word(&payload, 0))
            }
            GOAWAY => Frame::GoAway,
            SETTINGS | WINDOW_UPDATE => Frame::Ignored,
            _ => Frame::Ignored,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in data {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        b << 16 | a
    }

    #[test]
    fn the_dictionary_is_the_specs() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        // The id SPDY/3 clients put in their zlib header (FDICT).
        assert_eq!(adler32(&d), 0xe3c6_a7c2);
    }

    /// A zlib stream that uses the dictionary, as Go's `zlib.NewWriterLevelDict` writes it:
    /// header with FDICT and the dictionary id, then a fixed-Huffman block whose only symbol is
    /// a back reference into the dictionary ("options" at distance 1423), sync-flushed.
    #[test]
    fn blocks_compressed_against_the_dictionary_inflate() {
        // The raw deflate data by hand: fixed Huffman, length 7, distance 1423 - 4 (the
        // dictionary's first word, "options", starts at offset 4).
        let mut bits = BitWriter::default();
        bits.put(0, 1); // BFINAL = 0
        bits.put(1, 2); // BTYPE = 01 (fixed)
                        // Length 7: code 261 (7-bit code 0000101), no extra bits.
        bits.put_rev(0b0000101, 7);
        // Distance 1419: code 20 (base 1025, 9 extra bits), extra = 394.
        bits.put_rev(20, 5);
        bits.put(1419 - 1025, 9);
        bits.put_rev(0, 7); // end of block (256)
                            // Sync flush: an empty stored block.
        bits.put(0, 1);
        bits.put(0, 2);
        let mut raw = bits.finish();
        raw.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut stream = vec![0x78, 0xbb];
        assert_eq!((0x78u16 << 8 | 0xbb) % 31, 0);
        stream.extend_from_slice(&0xe3c6_a7c2u32.to_be_bytes());
        stream.extend(raw);
        let mut inflater = HeaderInflater::default();
        assert_eq!(inflater.inflate(&stream).unwrap(), b"options");
    }

    #[derive(Default)]
    struct BitWriter {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }

    impl BitWriter {
        /// `count` bits of `v`, least significant first (deflate's order for values).
        fn put(&mut self, v: u32, count: u32) {
            self.acc |= u64::from(v) << self.n;
            self.n += count;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// A Huffman code: most significant bit first.
        fn put_rev(&mut self, code: u32, count: u32) {
            let mut r = 0;
            for i in 0..count {
                r |= ((code >> i) & 1) << (count - 1 - i);
            }
            self.put(r, count);
        }
        fn finish(mut self) -> Vec<u8> {
            if self.n > 0 {
                self.out.push(self.acc as u8);
            }
            self.out
        }
    }

    #[test]
    fn garbage_header_blocks_are_errors_not_hangs() {
        let mut inflater = HeaderInflater::default();
        assert!(inflater.inflate(b"\x78\x9c\xff\xff\xff\xff\xff").is_err());
        let mut inflater = HeaderInflater::default();
        assert!(inflater.inflate(b"not zlib").is_err());
    }

    #[test]
    fn frames_round_trip_through_the_reader() {
        let mut client = HeaderDeflater::default();
        let mut wire = syn_stream(
            1,
            &[("streamtype", "error"), ("port", "80"), ("requestid", "0")],
            &mut client,
        );
        wire.extend(syn_stream(
            3,
            &[("streamtype", "data"), ("port", "80"), ("requestid", "0")],
            &mut client,
        ));
        wire.extend(data(3, false, b"GET / HTTP/1.0\r\n\r\n"));
        wire.extend(ping(7));
        wire.extend(data(3, true, b""));
        wire.extend(rst_stream(1, CANCEL));
        let mut r = Reader::default();
        // Delivered in awkward pieces, as WebSocket messages may cut frames anywhere.
        let mut frames = Vec::new();
        for piece in wire.chunks(5) {
            r.push(piece);
            while let Some(f) = r.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 6);
        assert_eq!(
            frames[1],
            Frame::SynStream {
                stream_id: 3,
                fin: false,
                headers: vec![
                    ("streamtype".into(), "data".into()),
                    ("port".into(), "80".into()),
                    ("requestid".into(), "0".into())
                ],
            }
        );
        assert_eq!(
            frames[2],
            Frame::Data {
                stream_id: 3,
                fin: false,
                data: b"GET / HTTP/1.0\r\n\r\n".to_vec()
            }
        );
        assert_eq!(frames[3], Frame::Ping(7));
        assert_eq!(
            frames[4],
            Frame::Data {
                stream_id: 3,
                fin: true,
                data: vec![]
            }
        );
        assert_eq!(
            frames[5],
            Frame::RstStream {
                stream_id: 1,
                status: CANCEL
            }
        );
        // What the server sends back parses too (its own zlib stream).
        let mut server = HeaderDeflater::default();
        let mut r = Reader::default();
        r.push(&syn_reply(1, &mut server));
        r.push(&syn_reply(3, &mut server));
        assert_eq!(r.next_frame().unwrap(), Some(Frame::SynReply { stream_id: 1 }));
        assert_eq!(r.next_frame().unwrap(), Some(Frame::SynReply { stream_id: 3 }));
    }
}
