//! HTTP/1.1 message framing shared by the backend (reading requests) and the
//! raw client (reading responses): a buffered stream whose every read has a
//! deadline, and a body decoder for Content-Length, chunked and
//! close-delimited bodies that yields pieces as they arrive, so a 1 GiB body
//! is never held whole.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How much to ask the socket for per read.
const READ_CHUNK: usize = 64 * 1024;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 64 * 1024;

/// When a read gives up.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Deadline {
    /// Each read may wait this long: a server's idle timeout, so a steady
    /// trickle is served however long it takes.
    Idle(Duration),
    /// Every read must finish by this instant: a client's overall deadline.
    At(Instant),
}

impl Deadline {
    fn instant(self) -> Instant {
        match self {
            Deadline::Idle(d) => Instant::now() + d,
            Deadline::At(at) => at,
        }
    }
}

pub(crate) fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "deadline expired")
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed mid-message")
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// A TCP stream with a read buffer; bytes read past the current message stay
/// in `buf` for the next one (pipelining).
pub(crate) struct BufStream {
    pub(crate) stream: TcpStream,
    pub(crate) buf: BytesMut,
}

impl BufStream {
    pub(crate) fn new(stream: TcpStream) -> BufStream {
        BufStream {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at EOF.
    pub(crate) async fn fill(&mut self, deadline: Deadline) -> io::Result<usize> {
        self.buf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline.instant(), self.stream.read_buf(&mut self.buf)).await {
            Ok(r) => r,
            Err(_) => Err(timed_out()),
        }
    }

    /// Takes one CRLF-terminated line, without the CRLF; `None` at a clean
    /// EOF before the line started. A bare LF is rejected: lenient line
    /// endings are exactly what smuggling tests probe, so this side is strict.
    async fn read_line(&mut self, limit: usize, deadline: Deadline) -> io::Result<Option<BytesMut>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                if i == 0 || self.buf[i - 1] != b'\r' {
                    return Err(invalid("bare LF in chunked framing"));
                }
                if i - 1 > limit {
                    return Err(invalid("chunked framing line too long"));
                }
                let mut line = self.buf.split_to(i + 1);
                line.truncate(i - 1);
                return Ok(Some(line));
            }
            if self.buf.len() > limit + 1 {
                return Err(invalid("chunked framing line too long"));
            }
            if self.fill(deadline).await? == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(eof()) };
            }
        }
    }

    /// Takes up to `max` bytes of body, reading if the buffer is empty;
    /// `None` at EOF.
    async fn take(&mut self, max: u64, deadline: Deadline) -> io::Result<Option<Bytes>> {
        if self.buf.is_empty() && self.fill(deadline).await? == 0 {
            return Ok(None);
        }
        let n = usize::try_from(max).unwrap_or(usize::MAX).min(self.buf.len());
        Ok(Some(self.buf.split_to(n).freeze()))
    }
}

/// How a message body is delimited (RFC 9112 section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
    /// Only for responses: the body runs to EOF.
    UntilClose,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    UntilClose,
    Done,
}

/// Decodes one message body from a [`BufStream`], a piece at a time.
pub(crate) struct BodyReader {
    state: State,
    trailer_bytes: usize,
    pub(crate) trailers: Vec<(String, String)>,
}

impl BodyReader {
    pub(crate) fn new(framing: Framing) -> BodyReader {
        BodyReader {
            state: match framing {
                Framing::Length(0) => State::Done,
                Framing::Length(n) => State::Length(n),
                Framing::Chunked => State::ChunkSize,
                Framing::UntilClose => State::UntilClose,
            },
            trailer_bytes: 0,
            trailers: Vec::new(),
        }
    }

    /// The next piece of body, `Ok(None)` once the body is complete.
    /// `UnexpectedEof` when the peer closed early; `InvalidData` when the
    /// chunked framing is broken.
    pub(crate) async fn next(&mut self, io: &mut BufStream, deadline: Deadline) -> io::Result<Option<Bytes>> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Length(remaining) => {
                    let piece = io.take(remaining, deadline).await?.ok_or_else(eof)?;
                    let left = remaining - piece.len() as u64;
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length(left)
                    };
                    return Ok(Some(piece));
                }
                State::UntilClose => match io.take(u64::MAX, deadline).await? {
                    Some(piece) => return Ok(Some(piece)),
                    None => self.state = State::Done,
                },
                State::ChunkSize => {
                    let line = io.read_line(MAX_CHUNK_LINE, deadline).await?.ok_or_else(eof)?;
                    let size = parse_chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkData(remaining) => {
                    let piece = io.take(remaining, deadline).await?.ok_or_else(eof)?;
                    let left = remaining - piece.len() as u64;
                    self.state = if left == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left)
                    };
                    return Ok(Some(piece));
                }
                State::ChunkEnd => {
                    let line = io.read_line(0, deadline).await?.ok_or_else(eof)?;
                    if !line.is_empty() {
                        return Err(invalid("chunk data longer than its size"));
                    }
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let line = io.read_line(MAX_TRAILERS, deadline).await?.ok_or_else(eof)?;
                    if line.is_empty() {
                        self.state = State::Done;
                        continue;
                    }
                    self.trailer_bytes += line.len() + 2;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(invalid("trailer section too large"));
                    }
                    let (name, value) = parse_field_line(&line)?;
                    self.trailers.push((name, value));
                }
            }
        }
    }
}

/// `chunk-size [ chunk-ext ]`: hex digits, then nothing or an extension
/// introduced by optional whitespace and `;`.
fn parse_chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(invalid("chunk size is not hex"));
    }
    let rest = &line[digits..];
    let ext = rest.iter().skip_while(|&&b| b == b' ' || b == b'\t');
    if let Some(&first) = ext.clone().next()
        && first != b';'
    {
        return Err(invalid("junk after chunk size"));
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let d = char::from(b).to_digit(16).map_or(0, u64::from);
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(d))
            .ok_or_else(|| invalid("chunk size overflows"))?;
    }
    Ok(size)
}

fn parse_field_line(line: &[u8]) -> io::Result<(String, String)> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| invalid("trailer line without a colon"))?;
    let name = &line[..colon];
    if name.is_empty() || name.iter().any(|b| b.is_ascii_whitespace()) {
        return Err(invalid("bad trailer name"));
    }
    let value = String::from_utf8_lossy(&line[colon + 1..]);
    Ok((
        String::from_utf8_lossy(name).to_ascii_lowercase(),
        value.trim_matches([' ', '\t']).to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a").unwrap(), 26);
        assert_eq!(parse_chunk_size(b"0").unwrap(), 0);
        assert_eq!(parse_chunk_size(b"A;name=value").unwrap(), 10);
        assert_eq!(parse_chunk_size(b"a ;x").unwrap(), 10);
        assert!(parse_chunk_size(b"").is_err());
        assert!(parse_chunk_size(b"g").is_err());
        assert!(parse_chunk_size(b"1 2").is_err());
        assert!(parse_chunk_size(b"10000000000000000").is_err());
    }

    #[test]
    fn trailer_lines() {
        assert_eq!(
            parse_field_line(b"X-Sum:  abc ").unwrap(),
            ("x-sum".to_owned(), "abc".to_owned())
        );
        assert!(parse_field_line(b"no colon").is_err());
        assert!(parse_field_line(b"bad name: v").is_err());
    }
}
