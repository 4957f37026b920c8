//! A raw HTTP/2 client for wire-level tests: it writes exactly the frames it
//! is given (floods, resets, header blocks no library would send) over h2c
//! with prior knowledge, and reports exactly what came back, frame by frame.
//!
//! [`hpack`] encodes just enough of HPACK to write requests (no Huffman
//! coding) and to insert and reference dynamic table entries, which is what
//! an HPACK bomb needs.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use crate::framing::timed_out;

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Deadline for connecting and for each write.
const IO_DEADLINE: Duration = Duration::from_secs(10);
/// Frames larger than this from the server are a broken test, not a frame.
const MAX_FRAME: usize = 1 << 24;
/// Copies of a flood frame written at once.
const FLOOD_BATCH: usize = 256;

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
}

/// Error codes (RFC 9113 §7).
pub mod code {
    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const COMPRESSION_ERROR: u32 = 0x9;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// SETTINGS identifiers.
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// One frame, as sent or received.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.payload.len().min(32);
        write!(
            f,
            "Frame {{ kind: {:#x}, flags: {:#x}, stream: {}, payload ({} bytes): {:?}{} }}",
            self.kind,
            self.flags,
            self.stream,
            self.payload.len(),
            &self.payload[..shown],
            if shown < self.payload.len() { "..." } else { "" }
        )
    }
}

impl Frame {
    pub fn new(kind: u8, flags: u8, stream: u32, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            kind,
            flags,
            stream,
            payload: payload.into(),
        }
    }

    pub fn settings(values: &[(u16, u32)]) -> Frame {
        let mut payload = Vec::with_capacity(values.len() * 6);
        for (id, value) in values {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        Frame::new(kind::SETTINGS, 0, 0, payload)
    }

    pub fn settings_ack() -> Frame {
        Frame::new(kind::SETTINGS, flag::ACK, 0, Vec::new())
    }

    pub fn ping(data: [u8; 8]) -> Frame {
        Frame::new(kind::PING, 0, 0, data.to_vec())
    }

    pub fn rst_stream(stream: u32, error: u32) -> Frame {
        Frame::new(kind::RST_STREAM, 0, stream, error.to_be_bytes().to_vec())
    }

    pub fn headers(stream: u32, flags: u8, block: impl Into<Vec<u8>>) -> Frame {
        Frame::new(kind::HEADERS, flags, stream, block)
    }

    pub fn continuation(stream: u32, flags: u8, block: impl Into<Vec<u8>>) -> Frame {
        Frame::new(kind::CONTINUATION, flags, stream, block)
    }

    pub fn data(stream: u32, flags: u8, data: impl Into<Vec<u8>>) -> Frame {
        Frame::new(kind::DATA, flags, stream, data)
    }

    pub fn window_update(stream: u32, increment: u32) -> Frame {
        Frame::new(kind::WINDOW_UPDATE, 0, stream, increment.to_be_bytes().to_vec())
    }

    /// The frame on the wire.
    ///
    /// # Panics
    /// If the payload does not fit a frame (16 MiB).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.payload.len());
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        let len = u32::try_from(self.payload.len())
            .ok()
            .filter(|&l| l < 1 << 24)
            .expect("payload fits a frame");
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&(self.stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(&self.payload);
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }

    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            kind::RST_STREAM => 0,
            kind::GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The values of a SETTINGS frame, in order.
    pub fn settings_values(&self) -> Vec<(u16, u32)> {
        if self.kind != kind::SETTINGS {
            return Vec::new();
        }
        self.payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }
}

/// Frames concatenated, as one write.
pub fn encode_all(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.encode_into(&mut out);
    }
    out
}

/// A GOAWAY the server sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoAway {
    pub last_stream: u32,
    pub error: u32,
    pub debug: Vec<u8>,
}

impl GoAway {
    fn parse(frame: &Frame) -> Option<GoAway> {
        let p = &frame.payload;
        if frame.kind != kind::GOAWAY || p.len() < 8 {
            return None;
        }
        Some(GoAway {
            last_stream: u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff,
            error: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            debug: p[8..].to_vec(),
        })
    }

    pub fn debug_text(&self) -> String {
        String::from_utf8_lossy(&self.debug).into_owned()
    }
}

/// What reading from the server came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    Frame(Frame),
    /// EOF or a reset: the server closed the connection.
    Closed,
    TimedOut,
}

/// How a connection ended, as far as the client could tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The server sent GOAWAY (the first one it sent).
    GoAway(GoAway),
    /// The server closed the connection without a GOAWAY.
    Closed,
    /// Neither happened within the deadline.
    TimedOut,
}

/// An h2c connection driven frame by frame. Every frame read is kept in
/// [`H2Conn::received`].
pub struct H2Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
    pub received: Vec<Frame>,
}

impl H2Conn {
    /// Connects and sends the preface and an empty SETTINGS frame.
    pub async fn connect(addr: SocketAddr) -> io::Result<H2Conn> {
        H2Conn::connect_with(addr, &[]).await
    }

    /// Connects and sends the preface and these SETTINGS.
    pub async fn connect_with(addr: SocketAddr, settings: &[(u16, u32)]) -> io::Result<H2Conn> {
        let stream = tokio::time::timeout(IO_DEADLINE, TcpStream::connect(addr))
            .await
            .map_err(|_| timed_out())??;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let mut conn = H2Conn {
            rd,
            wr,
            buf: BytesMut::with_capacity(64 * 1024),
            received: Vec::new(),
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(Frame::settings(settings).encode());
        conn.send_raw(&hello).await?;
        Ok(conn)
    }

    pub async fn send(&mut self, frames: &[Frame]) -> io::Result<()> {
        self.send_raw(&encode_all(frames)).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        tokio::time::timeout(IO_DEADLINE, self.wr.write_all(bytes))
            .await
            .map_err(|_| timed_out())?
    }

    fn reader(&mut self) -> Reader<'_> {
        Reader {
            rd: &mut self.rd,
            buf: &mut self.buf,
            received: &mut self.received,
        }
    }

    /// The next frame from the server, by `deadline`.
    pub async fn read_frame(&mut self, deadline: Instant) -> Read {
        self.reader().read_frame(deadline).await
    }

    /// Reads frames until the server's first GOAWAY, or until it closes the
    /// connection, within `within`.
    pub async fn until_end(&mut self, within: Duration) -> End {
        self.reader().until_end(Instant::now() + within).await
    }

    /// Reads frames until one matches `want`, within `within`; `None` if the
    /// connection ended or the deadline passed first.
    pub async fn until(&mut self, within: Duration, mut want: impl FnMut(&Frame) -> bool) -> Option<Frame> {
        let deadline = Instant::now() + within;
        loop {
            match self.read_frame(deadline).await {
                Read::Frame(f) if want(&f) => return Some(f),
                Read::Frame(_) => {}
                Read::Closed | Read::TimedOut => return None,
            }
        }
    }

    /// Whether the server closes the connection within `within` (frames
    /// read meanwhile are kept).
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            match self.read_frame(deadline).await {
                Read::Frame(_) => {}
                Read::Closed => return true,
                Read::TimedOut => return false,
            }
        }
    }

    /// Writes `bytes` `times` times over, as fast as the server takes them,
    /// while reading its frames, until the server's GOAWAY or close (or
    /// `within` passes). Returns how it ended and how many copies had been
    /// written whole by then.
    pub async fn flood(&mut self, bytes: &[u8], times: usize, within: Duration) -> (End, usize) {
        let deadline = Instant::now() + within;
        let batch = bytes.repeat(FLOOD_BATCH.min(times));
        let written = Cell::new(0);
        let wr = &mut self.wr;
        let writer = async {
            while written.get() < times {
                let n = FLOOD_BATCH.min(times - written.get());
                match tokio::time::timeout_at(deadline, wr.write_all(&batch[..n * bytes.len()])).await {
                    Ok(Ok(())) => written.set(written.get() + n),
                    // The server stopped taking bytes, or closed.
                    _ => break,
                }
            }
            std::future::pending::<()>().await;
        };
        let mut reader = Reader {
            rd: &mut self.rd,
            buf: &mut self.buf,
            received: &mut self.received,
        };
        let end = tokio::select! {
            end = reader.until_end(deadline) => end,
            () = writer => End::TimedOut,
        };
        (end, written.get())
    }
}

/// The read side of an [`H2Conn`], borrowed apart from its write side.
struct Reader<'a> {
    rd: &'a mut OwnedReadHalf,
    buf: &'a mut BytesMut,
    received: &'a mut Vec<Frame>,
}

impl Reader<'_> {
    async fn read_frame(&mut self, deadline: Instant) -> Read {
        loop {
            if let Some(frame) = parse(self.buf) {
                self.received.push(frame.clone());
                return Read::Frame(frame);
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(64 * 1024);
            }
            match tokio::time::timeout_at(deadline, self.rd.read_buf(self.buf)).await {
                Err(_) => return Read::TimedOut,
                Ok(Ok(0)) | Ok(Err(_)) => return Read::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn until_end(&mut self, deadline: Instant) -> End {
        loop {
            match self.read_frame(deadline).await {
                Read::Frame(f) if f.kind == kind::GOAWAY => {
                    return GoAway::parse(&f).map_or(End::Closed, End::GoAway);
                }
                Read::Frame(_) => {}
                Read::Closed => return End::Closed,
                Read::TimedOut => return End::TimedOut,
            }
        }
    }
}

fn parse(buf: &mut BytesMut) -> Option<Frame> {
    if buf.len() < 9 {
        return None;
    }
    let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
    assert!(len <= MAX_FRAME, "server frame of {len} bytes");
    if buf.len() < 9 + len {
        return None;
    }
    let kind = buf[3];
    let flags = buf[4];
    let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
    buf.advance(9);
    let payload = buf.split_to(len).to_vec();
    Some(Frame::new(kind, flags, stream, payload))
}

/// Just enough HPACK (RFC 7541) for requests and bombs.
pub mod hpack {
    /// The first index of the dynamic table.
    pub const FIRST_DYNAMIC: usize = 62;

    /// An integer with an `n`-bit prefix, the high bits of the first byte
    /// set to `flags`.
    pub fn int(out: &mut Vec<u8>, n: u8, flags: u8, value: usize) {
        let max = (1usize << n) - 1;
        if value < max {
            // value < 2^n <= 128.
            out.push(flags | value as u8);
            return;
        }
        out.push(flags | max as u8);
        let mut rest = value - max;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
    }

    /// A string literal, not Huffman coded.
    pub fn string(out: &mut Vec<u8>, s: &[u8]) {
        int(out, 7, 0, s.len());
        out.extend_from_slice(s);
    }

    /// An indexed field: one table entry, by index.
    pub fn indexed(out: &mut Vec<u8>, index: usize) {
        int(out, 7, 0x80, index);
    }

    /// A literal field with a new name, not added to the table.
    pub fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.push(0x00);
        string(out, name);
        string(out, value);
    }

    /// A literal field whose name is the table entry `index`, not added.
    pub fn literal_with_name(out: &mut Vec<u8>, index: usize, value: &[u8]) {
        int(out, 4, 0x00, index);
        string(out, value);
    }

    /// A literal field with a new name, added to the dynamic table (as
    /// index [`FIRST_DYNAMIC`], pushing older entries up).
    pub fn literal_indexed(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.push(0x40);
        string(out, name);
        string(out, value);
    }

    /// The pseudo-header fields of an `http` request.
    pub fn request(method: &str, path: &str, authority: &str) -> Vec<u8> {
        let mut out = Vec::new();
        match method {
            "GET" => indexed(&mut out, 2),
            "POST" => indexed(&mut out, 3),
            other => literal_with_name(&mut out, 2, other.as_bytes()),
        }
        indexed(&mut out, 6);
        if path == "/" {
            indexed(&mut out, 4);
        } else {
            literal_with_name(&mut out, 4, path.as_bytes());
        }
        literal_with_name(&mut out, 1, authority.as_bytes());
        out
    }

    /// The `:status` of a response header block, when it is the block's
    /// first field and coded without the dynamic table (as h2 codes the
    /// first response of each status on a connection).
    pub fn status(block: &[u8]) -> Option<u16> {
        let mut block = block;
        // Dynamic table size updates may come first.
        while block.first().is_some_and(|b| b & 0xe0 == 0x20) {
            let (_, rest) = read_int(block, 5)?;
            block = rest;
        }
        let first = *block.first()?;
        if first & 0x80 != 0 {
            let (index, _) = read_int(block, 7)?;
            return match index {
                8 => Some(200),
                9 => Some(204),
                10 => Some(206),
                11 => Some(304),
                12 => Some(400),
                13 => Some(404),
                14 => Some(500),
                _ => None,
            };
        }
        // A literal with name `:status` (static 8..=14), added or not.
        let prefix = if first & 0x40 != 0 { 6 } else { 4 };
        let (name, rest) = read_int(block, prefix)?;
        if !(8..=14).contains(&name) {
            return None;
        }
        let huffman = rest.first()? & 0x80 != 0;
        let (len, rest) = read_int(rest, 7)?;
        let value = rest.get(..len)?;
        let digits = if huffman {
            huffman_digits(value)?
        } else {
            value.to_vec()
        };
        std::str::from_utf8(&digits).ok()?.parse().ok()
    }

    fn read_int(bytes: &[u8], n: u8) -> Option<(usize, &[u8])> {
        let max = (1usize << n) - 1;
        let first = usize::from(*bytes.first()?) & max;
        if first < max {
            return Some((first, &bytes[1..]));
        }
        let mut value = max;
        let mut shift = 0;
        for (i, b) in bytes[1..].iter().enumerate() {
            value += usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return Some((value, &bytes[i + 2..]));
            }
            if shift > 28 {
                return None;
            }
        }
        None
    }

    /// Huffman-decodes a string of digits (RFC 7541 Appendix B: `0`-`2`
    /// are 5-bit codes, `3`-`9` 6-bit ones); `None` for anything else.
    fn huffman_digits(coded: &[u8]) -> Option<Vec<u8>> {
        const FIVE: [(u8, u8); 3] = [(0b00000, b'0'), (0b00001, b'1'), (0b00010, b'2')];
        let mut out = Vec::new();
        let bits: Vec<bool> = coded
            .iter()
            .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1 == 1))
            .collect();
        let code = |from: usize, n: usize| {
            bits[from..from + n]
                .iter()
                .fold(0u8, |acc, &bit| acc << 1 | u8::from(bit))
        };
        let mut at = 0;
        while at < bits.len() {
            let left = bits.len() - at;
            // Padding: fewer than 8 one bits.
            if left < 8 && bits[at..].iter().all(|&b| b) {
                break;
            }
            if left >= 5
                && let Some(&(_, d)) = FIVE.iter().find(|(c, _)| *c == code(at, 5))
            {
                out.push(d);
                at += 5;
                continue;
            }
            if left >= 6 {
                let c = code(at, 6);
                if (0b011001..=0b011111).contains(&c) {
                    out.push(b'3' + (c - 0b011001));
                    at += 6;
                    continue;
                }
            }
            return None;
        }
        Some(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn integers_follow_the_rfc_examples() {
            // RFC 7541 C.1.1 to C.1.3.
            let mut out = Vec::new();
            int(&mut out, 5, 0, 10);
            assert_eq!(out, [10]);
            let mut out = Vec::new();
            int(&mut out, 5, 0, 1337);
            assert_eq!(out, [31, 154, 10]);
            assert_eq!(read_int(&out, 5), Some((1337, &[][..])));
            let mut out = Vec::new();
            int(&mut out, 8, 0, 42);
            assert_eq!(out, [42]);
        }

        #[test]
        fn statuses_are_read_indexed_literal_and_huffman_coded() {
            assert_eq!(status(&[0x88]), Some(200));
            assert_eq!(status(&[0x3f, 0xe1, 0x1f, 0x8d]), Some(404));
            assert_eq!(status(&[0x48, 0x03, b'4', b'3', b'1']), Some(431));
            // "431" Huffman coded: 011010 011001 00001, padded with ones.
            assert_eq!(status(&[0x48, 0x83, 0x69, 0x90, 0xff]), Some(431));
            // "503": 011011 00000 011001.
            assert_eq!(status(&[0x08, 0x83, 0x6c, 0x0c, 0xff]), Some(503));
            assert_eq!(status(&[0xbe]), None);
        }
    }
}
