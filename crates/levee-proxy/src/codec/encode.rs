//! Response heads and chunked framing for HTTP/1.1 clients.

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap};
use http::response::Parts;

use super::raw::{Known, RawHead, RawOut};

/// How a response body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OutFraming {
    /// No body follows (HEAD, 1xx, 204, 304): the head's fields are kept as
    /// the upstream sent them, `Content-Length` included.
    Bodyless,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and no known length).
    Close,
}

/// What the head says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Persistence {
    /// HTTP/1.1 default: nothing to say.
    Default,
    /// An HTTP/1.0 client that asked to keep the connection.
    KeepAlive,
    Close,
    /// A `101 Switching Protocols`: the fields carry `Connection: upgrade`.
    Upgrade,
}

pub(crate) fn encode_head(out: &mut BytesMut, parts: &Parts, framing: OutFraming, persistence: Persistence) {
    out.clear();
    out.reserve(256);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(parts.status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in &parts.headers {
        let framing_field = name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING;
        let skip = name == header::CONNECTION && persistence != Persistence::Upgrade
            || name == header::TRANSFER_ENCODING
            || framing_field && framing != OutFraming::Bodyless;
        if skip {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    finish_head(out, framing, persistence);
}

/// A response head for a client from a raw upstream head: the status line,
/// the upstream's lines that are kept (copied in runs), levee's fields,
/// then framing and persistence as [`encode_head`] writes them.
pub(crate) fn encode_raw_head(
    out: &mut BytesMut,
    status: http::StatusCode,
    raw: &RawOut,
    framing: OutFraming,
    persistence: Persistence,
) {
    out.clear();
    out.reserve(raw.head.bytes.len() + 160);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    let bytes = &raw.head.bytes;
    let mut run: Option<(u32, u32)> = None;
    for (i, f) in raw.head.fields.iter().enumerate() {
        // Framing is levee's, except for a body-less response, whose
        // Content-Length says what a GET would have had.
        let framing_field = f.known == Known::ContentLength && framing != OutFraming::Bodyless;
        if raw.skip & (1 << i) != 0 || framing_field {
            continue;
        }
        run = match run {
            Some((start, end)) if end == f.line.0 => Some((start, f.line.1)),
            Some((start, end)) => {
                out.put_slice(&bytes[start as usize..end as usize]);
                Some(f.line)
            }
            None => Some(f.line),
        };
    }
    if let Some((start, end)) = run {
        out.put_slice(&bytes[start as usize..end as usize]);
    }
    out.put_slice(b"via: ");
    out.put_slice(raw.via.as_bytes());
    out.put_slice(b"\r\n");
    if let Some(id) = &raw.request_id {
        out.put_slice(b"x-request-id: ");
        out.put_slice(id.as_bytes());
        out.put_slice(b"\r\n");
    }
    finish_head(out, framing, persistence);
}

/// The framing and connection fields, and the empty line.
fn finish_head(out: &mut BytesMut, framing: OutFraming, persistence: Persistence) {
    match framing {
        OutFraming::Length(n) => put_framing(out, Some(n)),
        OutFraming::Chunked => put_framing(out, None),
        OutFraming::Bodyless | OutFraming::Close => {}
    }
    match persistence {
        Persistence::Close => out.put_slice(b"connection: close\r\n"),
        Persistence::KeepAlive => out.put_slice(b"connection: keep-alive\r\n"),
        Persistence::Default | Persistence::Upgrade => {}
    }
    out.put_slice(b"\r\n");
}

fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

/// The size line of a chunk: hex length and CRLF, in a small buffer.
pub(crate) struct ChunkLine {
    buf: [u8; 18],
    len: usize,
}

impl ChunkLine {
    pub fn new(size: usize) -> ChunkLine {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; 16];
        let mut n = size;
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = HEX[n & 0xf];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        let mut buf = [0u8; 18];
        let len = digits.len() - i;
        buf[..len].copy_from_slice(&digits[i..]);
        buf[len] = b'\r';
        buf[len + 1] = b'\n';
        ChunkLine { buf, len: len + 2 }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The last chunk and trailer section: `0\r\n`, the fields, `\r\n`.
pub(crate) fn encode_last_chunk(out: &mut BytesMut, trailers: Option<&HeaderMap>) {
    out.clear();
    out.put_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

/// A request head for an upstream from a raw client head: the request line,
/// the client's lines that are kept (copied in runs), levee's lines, and
/// levee's framing.
pub(crate) fn encode_raw_request_head(
    out: &mut BytesMut,
    method: &http::Method,
    target: &str,
    raw: &RawHead,
    skip: u64,
    extra: &[u8],
    framing: super::parse::Framing,
) {
    out.clear();
    out.reserve(raw.bytes.len() + extra.len() + 64);
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    let mut run: Option<(u32, u32)> = None;
    for (i, f) in raw.fields.iter().enumerate() {
        let framing_field = matches!(f.known, Known::ContentLength | Known::TransferEncoding);
        if skip & super::raw::bit(i) != 0 || framing_field {
            continue;
        }
        run = match run {
            Some((start, end)) if end == f.line.0 => Some((start, f.line.1)),
            Some((start, end)) => {
                out.put_slice(&raw.bytes[start as usize..end as usize]);
                Some(f.line)
            }
            None => Some(f.line),
        };
    }
    if let Some((start, end)) = run {
        out.put_slice(&raw.bytes[start as usize..end as usize]);
    }
    out.put_slice(extra);
    put_request_framing(out, framing);
    out.put_slice(b"\r\n");
}

fn put_request_framing(out: &mut BytesMut, framing: super::parse::Framing) {
    use super::parse::Framing;
    match framing {
        Framing::Length(n) => put_framing(out, Some(n)),
        Framing::Chunked => put_framing(out, None),
        Framing::Empty | Framing::UntilClose => {}
    }
}

/// `content-length: n` for a known length, else `transfer-encoding: chunked`.
fn put_framing(out: &mut BytesMut, length: Option<u64>) {
    match length {
        Some(n) => {
            out.put_slice(b"content-length: ");
            put_decimal(out, n);
            out.put_slice(b"\r\n");
        }
        None => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
}

/// A request head for an upstream: origin-form target, the fields as
/// given except framing ones, then levee's framing.
pub(crate) fn encode_request_head(
    out: &mut BytesMut,
    method: &http::Method,
    target: &str,
    headers: &HeaderMap,
    framing: super::parse::Framing,
) {
    out.clear();
    out.reserve(512);
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    put_request_framing(out, framing);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;

    fn head(res: Response<()>, framing: OutFraming, p: Persistence) -> String {
        let (parts, ()) = res.into_parts();
        let mut out = BytesMut::new();
        encode_head(&mut out, &parts, framing, p);
        String::from_utf8(out.to_vec()).expect("ascii")
    }

    #[test]
    fn heads() {
        let res = Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .header("content-length", "999")
            .header("connection", "keep-alive")
            .header("transfer-encoding", "chunked")
            .body(())
            .expect("response");
        assert_eq!(
            head(res, OutFraming::Length(5), Persistence::Default),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\n"
        );
        let res = Response::builder().status(599).body(()).expect("response");
        assert_eq!(
            head(res, OutFraming::Chunked, Persistence::Close),
            "HTTP/1.1 599 \r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        let res = Response::builder()
            .status(200)
            .header("content-length", "42")
            .body(())
            .expect("response");
        assert_eq!(
            head(res, OutFraming::Bodyless, Persistence::KeepAlive),
            "HTTP/1.1 200 OK\r\ncontent-length: 42\r\nconnection: keep-alive\r\n\r\n"
        );
        let res = Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(())
            .expect("response");
        assert_eq!(
            head(res, OutFraming::Bodyless, Persistence::Upgrade),
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
        );
    }

    #[test]
    fn request_heads() {
        let mut h = HeaderMap::new();
        h.insert("host", "a.example".parse().expect("value"));
        h.insert("content-length", "99".parse().expect("value"));
        let mut out = BytesMut::new();
        encode_request_head(
            &mut out,
            &http::Method::PUT,
            "/x?y",
            &h,
            super::super::parse::Framing::Length(3),
        );
        assert_eq!(
            &out[..],
            b"PUT /x?y HTTP/1.1\r\nhost: a.example\r\ncontent-length: 3\r\n\r\n"
        );
        encode_request_head(
            &mut out,
            &http::Method::POST,
            "/",
            &h,
            super::super::parse::Framing::Chunked,
        );
        assert_eq!(
            &out[..],
            b"POST / HTTP/1.1\r\nhost: a.example\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn chunk_lines() {
        assert_eq!(ChunkLine::new(0).as_bytes(), b"0\r\n");
        assert_eq!(ChunkLine::new(255).as_bytes(), b"ff\r\n");
        assert_eq!(ChunkLine::new(65536).as_bytes(), b"10000\r\n");
        assert_eq!(ChunkLine::new(usize::MAX).as_bytes(), b"ffffffffffffffff\r\n");
    }

    #[test]
    fn last_chunk_with_trailers() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().expect("value"));
        let mut out = BytesMut::new();
        encode_last_chunk(&mut out, Some(&t));
        assert_eq!(&out[..], b"0\r\ngrpc-status: 0\r\n\r\n");
        encode_last_chunk(&mut out, None);
        assert_eq!(&out[..], b"0\r\n\r\n");
    }
}
