//! Request body decoding: by length, or chunked (RFC 9112 §7.1), strictly.
//!
//! The decoder works on the connection's read buffer and hands out data as
//! `Bytes` split off that buffer, so body bytes are never copied. A chunked
//! body that bends the grammar — a size with spaces, a missing CR, data
//! running past its declared size, an oversized extension — is an error: the
//! bytes after it cannot be trusted to be what the client meant.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use levee_core::outcome::{ErrorKind, Rejection};

use super::parse::Framing;

/// Chunk extensions are legal but unused by anything levee proxies; a long
/// one is a resource attack.
const MAX_CHUNK_EXT: usize = 1024;
/// A chunk size has at most 16 hex digits (a u64).
const MAX_SIZE_DIGITS: usize = 16;

const BAD_CHUNK: Rejection = Rejection::new(ErrorKind::BadRequest, "malformed chunked body");

/// What one decoding step produced.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The buffer holds no complete unit; read more.
    NeedMore,
    /// The body is complete.
    End,
}

#[derive(Debug)]
pub(crate) struct Decoder {
    state: State,
    /// Bytes of body data decoded so far.
    received: u64,
    max_trailer_bytes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Length {
        remaining: u64,
    },
    /// Everything until the connection closes (a response without length).
    UntilClose,
    /// Reading the hex size; `digits` so far and the size accumulated.
    Size {
        digits: usize,
        size: u64,
    },
    /// After `;`: extension bytes until CR.
    Extension {
        size: u64,
        len: usize,
    },
    /// After the CR that ends a size line.
    SizeLf {
        size: u64,
    },
    Data {
        remaining: u64,
    },
    /// The CRLF after a chunk's data.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty line.
    Trailers,
    Done,
}

impl Decoder {
    pub fn new(framing: Framing, max_trailer_bytes: usize) -> Decoder {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length { remaining: n },
            Framing::Chunked => State::Size { digits: 0, size: 0 },
            Framing::UntilClose => State::UntilClose,
        };
        Decoder {
            state,
            received: 0,
            max_trailer_bytes,
        }
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes still to come, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length { remaining } => Some(remaining),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// The peer closed the connection: the end of a body delimited by the
    /// close, a truncation for any other.
    pub fn at_eof(&mut self) -> Result<(), Rejection> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(Rejection::new(
                ErrorKind::ConnectionTerminated,
                "body ended early",
            )),
        }
    }

    /// Decodes the next unit from `buf`, consuming what it uses.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Rejection> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length { remaining } => {
                    let Some((data, left)) = take(buf, remaining) else {
                        return Ok(Decoded::NeedMore);
                    };
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length { remaining: left }
                    };
                    self.received += data.len() as u64;
                    return Ok(Decoded::Data(data));
                }
                State::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    self.received += buf.len() as u64;
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                State::Data { remaining } => {
                    let Some((data, left)) = take(buf, remaining) else {
                        return Ok(Decoded::NeedMore);
                    };
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { remaining: left }
                    };
                    self.received += data.len() as u64;
                    return Ok(Decoded::Data(data));
                }
                State::Trailers => return self.trailers(buf),
                _ => {
                    // The byte-at-a-time states of the chunk framing.
                    let Some(&b) = buf.first() else {
                        return Ok(Decoded::NeedMore);
                    };
                    buf.advance(1);
                    self.state = self.step(b)?;
                }
            }
        }
    }

    fn step(&self, b: u8) -> Result<State, Rejection> {
        Ok(match self.state {
            State::Size { digits, size } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if digits == MAX_SIZE_DIGITS {
                        return Err(BAD_CHUNK);
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0);
                    State::Size {
                        digits: digits + 1,
                        size: (size << 4) | u64::from(d),
                    }
                }
                b';' if digits > 0 => State::Extension { size, len: 0 },
                b'\r' if digits > 0 => State::SizeLf { size },
                _ => return Err(BAD_CHUNK),
            },
            State::Extension { size, len } => match b {
                b'\r' => State::SizeLf { size },
                // Extension text: visible ASCII, spaces and tabs (BWS, quoted strings).
                b'\t' | b' '..=b'~' if len < MAX_CHUNK_EXT => State::Extension { size, len: len + 1 },
                _ => return Err(BAD_CHUNK),
            },
            State::SizeLf { size } => match (b, size) {
                (b'\n', 0) => State::Trailers,
                (b'\n', n) => State::Data { remaining: n },
                _ => return Err(BAD_CHUNK),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(BAD_CHUNK),
            },
            State::DataLf => match b {
                b'\n' => State::Size { digits: 0, size: 0 },
                _ => return Err(BAD_CHUNK),
            },
            _ => return Err(BAD_CHUNK),
        })
    }

    /// Trailer section: header lines ending in an empty line, all CRLF.
    /// Nothing is consumed until the whole section is in the buffer.
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, Rejection> {
        if buf.starts_with(b"\r\n") {
            // The common case: no trailers, just the final CRLF.
            buf.advance(2);
            self.state = State::Done;
            return Ok(Decoded::End);
        }
        let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
            if buf.len() > self.max_trailer_bytes {
                return Err(Rejection::new(
                    ErrorKind::HeaderTooLarge,
                    "trailer section too large",
                ));
            }
            if memchr::memchr_iter(b'\n', buf).any(|i| i == 0 || buf[i - 1] != b'\r') {
                return Err(BAD_CHUNK);
            }
            return Ok(Decoded::NeedMore);
        };
        let section = buf.split_to(end + 4);
        if section.len() > self.max_trailer_bytes {
            return Err(Rejection::new(
                ErrorKind::HeaderTooLarge,
                "trailer section too large",
            ));
        }
        if memchr::memchr_iter(b'\n', &section).any(|i| i == 0 || section[i - 1] != b'\r') {
            return Err(BAD_CHUNK);
        }
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let parsed = match httparse::parse_headers(&section, &mut fields) {
            Ok(httparse::Status::Complete((_, parsed))) => parsed,
            _ => return Err(Rejection::new(ErrorKind::BadRequest, "malformed trailer section")),
        };
        let mut map = HeaderMap::with_capacity(parsed.len());
        for f in parsed {
            let name = HeaderName::from_bytes(f.name.as_bytes());
            let value = HeaderValue::from_bytes(f.value);
            match (name, value) {
                (Ok(n), Ok(v)) if !is_forbidden_trailer(&n) => {
                    map.append(n, v);
                }
                (Ok(_), Ok(_)) => {}
                _ => return Err(Rejection::new(ErrorKind::BadRequest, "malformed trailer section")),
            }
        }
        self.state = State::Done;
        Ok(if map.is_empty() {
            Decoded::End
        } else {
            Decoded::Trailers(map)
        })
    }
}

/// Up to `remaining` bytes from the front of `buf` (without copying them),
/// and how many will remain after; `None` when `buf` is empty.
fn take(buf: &mut BytesMut, remaining: u64) -> Option<(Bytes, u64)> {
    if buf.is_empty() {
        return None;
    }
    let n = remaining.min(buf.len() as u64) as usize;
    Some((buf.split_to(n).freeze(), remaining - n as u64))
}

/// Fields that must not appear in trailers because they frame, route or
/// authenticate the message (RFC 9110 §6.5.1); they are dropped.
fn is_forbidden_trailer(name: &HeaderName) -> bool {
    use http::header::*;
    [
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        HOST,
        CONTENT_TYPE,
        CONTENT_ENCODING,
        CONNECTION,
        TE,
        TRAILER,
        AUTHORIZATION,
        SET_COOKIE,
        COOKIE,
        CACHE_CONTROL,
        EXPECT,
        RANGE,
    ]
    .contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns the data and the end.
    fn run(
        framing: Framing,
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, bool), Rejection> {
        let mut d = Decoder::new(framing, 4096);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => out.extend_from_slice(&b),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((out, trailers, true)),
                Decoded::NeedMore => {
                    if fed == input.len() {
                        return Ok((out, trailers, false));
                    }
                    let n = step.min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn length_body() {
        for step in [1, 3, 100] {
            let (data, _, done) = run(Framing::Length(5), b"hello", step).expect("ok");
            assert_eq!(data, b"hello");
            assert!(done);
        }
    }

    #[test]
    fn length_leaves_the_next_request_in_the_buffer() {
        let mut d = Decoder::new(Framing::Length(2), 0);
        let mut buf = BytesMut::from(&b"hiGET /"[..]);
        assert_eq!(d.decode(&mut buf), Ok(Decoded::Data(Bytes::from_static(b"hi"))));
        assert_eq!(d.decode(&mut buf), Ok(Decoded::End));
        assert_eq!(&buf[..], b"GET /");
    }

    #[test]
    fn chunked_body_in_any_split() {
        let body = b"5\r\nhello\r\n6;name=\"v a\"\r\n world\r\n0\r\n\r\n";
        for step in [1, 2, 7, 1000] {
            let (data, trailers, done) = run(Framing::Chunked, body, step).expect("ok");
            assert_eq!(data, b"hello world");
            assert!(trailers.is_none());
            assert!(done, "step {step}");
        }
    }

    #[test]
    fn chunked_trailers_are_kept_but_not_framing_fields() {
        let body = b"1\r\na\r\n0\r\nX-Checksum: abc\r\nContent-Length: 9\r\n\r\n";
        for step in [1, 5, 1000] {
            let (data, trailers, done) = run(Framing::Chunked, body, step).expect("ok");
            assert_eq!(data, b"a");
            assert!(done);
            let t = trailers.expect("trailers");
            assert_eq!(t["x-checksum"], "abc");
            assert!(t.get("content-length").is_none());
        }
    }

    #[test]
    fn chunked_leaves_the_next_request_in_the_buffer() {
        let mut d = Decoder::new(Framing::Chunked, 1024);
        let mut buf = BytesMut::from(&b"0\r\n\r\nGET / HTTP/1.1\r\n"[..]);
        assert_eq!(d.decode(&mut buf), Ok(Decoded::End));
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn malformed_chunks_are_refused() {
        let cases: &[&[u8]] = &[
            b"5 \r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloXX\r\n0\r\n\r\n",
            b"3\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5\r\nhello\r\n0\n\r\n",
            b"10000000000000000\r\n",
            b"5;\x01\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
        ];
        for (i, c) in cases.iter().enumerate() {
            for step in [1, 1000] {
                assert!(
                    run(Framing::Chunked, c, step).is_err(),
                    "case {i} step {step}: {:?}",
                    String::from_utf8_lossy(c)
                );
            }
        }
    }

    #[test]
    fn oversized_extension_is_refused() {
        let mut body = b"5;".to_vec();
        body.extend(std::iter::repeat_n(b'a', MAX_CHUNK_EXT + 1));
        body.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert!(run(Framing::Chunked, &body, 100).is_err());
    }

    #[test]
    fn oversized_trailers_are_refused() {
        let mut body = b"0\r\nX-A: ".to_vec();
        body.extend(std::iter::repeat_n(b'a', 5000));
        body.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            run(Framing::Chunked, &body, 100).map(|_| ()).unwrap_err().kind,
            ErrorKind::HeaderTooLarge
        );
    }

    #[test]
    fn large_sizes_within_u64() {
        let mut d = Decoder::new(Framing::Chunked, 0);
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nab"[..]);
        assert_eq!(d.decode(&mut buf), Ok(Decoded::Data(Bytes::from_static(b"ab"))));
        assert_eq!(d.received(), 2);
    }
}
