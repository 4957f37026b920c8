//! A raw-bytes HTTP/1.x client for wire-level tests: it sends exactly the
//! bytes it is given (smuggling attempts, bad framing, pipelines) and reports
//! exactly what came back, including responses that end early.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Buf;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::framing::{BodyReader, BufStream, Deadline, Framing, timed_out};
use crate::ledger::{header, header_all};

/// Deadline for connecting and for each `send`.
const IO_DEADLINE: Duration = Duration::from_secs(30);
const MAX_HEAD: usize = 256 * 1024;
const MAX_HEADERS: usize = 256;

/// A TCP connection with a read buffer; bytes past one response stay
/// buffered for the next.
pub struct RawConn {
    io: BufStream,
}

/// One HTTP/1.x response as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawResponse {
    pub status: u16,
    /// `"HTTP/1.0"` or `"HTTP/1.1"`.
    pub version: String,
    /// Header fields in the order received, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body, decoded if it was chunked.
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body, names lowercased.
    pub trailers: Vec<(String, String)>,
    /// False when the connection ended (EOF or reset) before the body's
    /// framing said it was done: a broken message, not a short one.
    pub complete: bool,
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Every value of header `name` (case-insensitive), in order received.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        header_all(&self.headers, name)
    }

    /// The body as text, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> io::Result<RawConn> {
        let stream = tokio::time::timeout(IO_DEADLINE, TcpStream::connect(addr))
            .await
            .map_err(|_| timed_out())??;
        stream.set_nodelay(true)?;
        Ok(RawConn {
            io: BufStream::new(stream),
        })
    }

    /// Connects from a chosen loopback address (any of 127.0.0.0/8), so a
    /// test can be several clients.
    pub async fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> io::Result<RawConn> {
        let socket = match from {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(from, 0))?;
        let stream = tokio::time::timeout(IO_DEADLINE, socket.connect(addr))
            .await
            .map_err(|_| timed_out())??;
        stream.set_nodelay(true)?;
        Ok(RawConn {
            io: BufStream::new(stream),
        })
    }

    /// Writes all of `bytes` (within 30 s).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        tokio::time::timeout(IO_DEADLINE, self.io.stream.write_all(bytes))
            .await
            .map_err(|_| timed_out())?
    }

    /// Half-closes the connection: the peer sees EOF, reading still works.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        tokio::time::timeout(IO_DEADLINE, self.io.stream.shutdown())
            .await
            .map_err(|_| timed_out())?
    }

    /// Reads one HTTP/1.x response: status line, headers, and a body framed
    /// by chunked encoding, content-length, or the close (RFC 9112 section
    /// 6.3). A 1xx interim response is returned on its own; call again for
    /// the final one. Fails if the head does not arrive and parse, or the
    /// deadline passes; a body cut short by EOF or reset is returned with
    /// `complete: false`.
    pub async fn read_response(&mut self, deadline: Duration) -> anyhow::Result<RawResponse> {
        self.read(deadline, true).await
    }

    /// As [`read_response`](Self::read_response), for the answer to a HEAD
    /// request, which has framing headers but no body.
    pub async fn read_response_to_head(&mut self, deadline: Duration) -> anyhow::Result<RawResponse> {
        self.read(deadline, false).await
    }

    async fn read(&mut self, deadline: Duration, has_body: bool) -> anyhow::Result<RawResponse> {
        let deadline = Deadline::At(Instant::now() + deadline);
        let (mut response, len) = loop {
            if let Some(parsed) = parse_head(&self.io.buf)? {
                break parsed;
            }
            if self.io.buf.len() > MAX_HEAD {
                bail!("response head larger than {MAX_HEAD} bytes");
            }
            let n = self
                .io
                .fill(deadline)
                .await
                .with_context(|| format!("reading response head ({} bytes so far)", self.io.buf.len()))?;
            if n == 0 {
                bail!(
                    "connection closed before a complete response head ({} bytes: {:?})",
                    self.io.buf.len(),
                    String::from_utf8_lossy(&self.io.buf)
                );
            }
        };
        self.io.buf.advance(len);
        let Some(framing) = response_framing(&response, has_body)? else {
            response.complete = true;
            return Ok(response);
        };
        let mut reader = BodyReader::new(framing);
        loop {
            match reader.next(&mut self.io, deadline).await {
                Ok(Some(piece)) => response.body.extend_from_slice(&piece),
                Ok(None) => {
                    response.complete = true;
                    break;
                }
                Err(e) if is_connection_end(&e) => break,
                Err(e) => {
                    return Err(anyhow!(e)).context(format!(
                        "reading response body ({} bytes so far)",
                        response.body.len()
                    ));
                }
            }
        }
        response.trailers = reader.trailers;
        Ok(response)
    }

    /// True when the peer closes (EOF or reset) within `deadline` without
    /// sending anything more; false if any byte arrives (or is already
    /// buffered) or the deadline passes.
    pub async fn closed_within(&mut self, deadline: Duration) -> bool {
        if !self.io.buf.is_empty() {
            return false;
        }
        match self.io.fill(Deadline::At(Instant::now() + deadline)).await {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => is_connection_end(&e),
        }
    }

    /// Everything the peer sends until it closes, or the deadline, including
    /// bytes already buffered.
    pub async fn read_to_end_within(&mut self, deadline: Duration) -> Vec<u8> {
        let deadline = Deadline::At(Instant::now() + deadline);
        loop {
            match self.io.fill(deadline).await {
                Ok(n) if n > 0 => {}
                _ => return self.io.buf.split().to_vec(),
            }
        }
    }

    /// Bytes received but not yet consumed by a read.
    pub fn buffered(&self) -> &[u8] {
        &self.io.buf
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.stream.local_addr()
    }
}

fn is_connection_end(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

fn parse_head(buf: &[u8]) -> anyhow::Result<Option<(RawResponse, usize)>> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut fields);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => bail!(
            "malformed response head ({e}): {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(512)])
        ),
    };
    let response = RawResponse {
        status: res.code.unwrap_or_default(),
        version: format!("HTTP/1.{}", res.version.unwrap_or(1)),
        headers: res
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: Vec::new(),
        trailers: Vec::new(),
        complete: false,
    };
    Ok(Some((response, len)))
}

/// Body framing of a response (RFC 9112 section 6.3), `None` for no body.
fn response_framing(response: &RawResponse, has_body: bool) -> anyhow::Result<Option<Framing>> {
    if !has_body || (100..200).contains(&response.status) || matches!(response.status, 204 | 304) {
        return Ok(None);
    }
    let te: Vec<String> = response
        .header_all("transfer-encoding")
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    if !te.is_empty() {
        return Ok(Some(if te.last().map(String::as_str) == Some("chunked") {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }));
    }
    let lengths = response.header_all("content-length");
    if lengths.is_empty() {
        return Ok(Some(Framing::UntilClose));
    }
    let mut length = None;
    for value in lengths.iter().flat_map(|v| v.split(',')) {
        let value = value.trim();
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            bail!("bad content-length {value:?} in response");
        }
        let n: u64 = value
            .parse()
            .with_context(|| format!("content-length {value:?} overflows"))?;
        if length.is_some_and(|l| l != n) {
            bail!("conflicting content-length values in response: {lengths:?}");
        }
        length = Some(n);
    }
    Ok(length.map(Framing::Length))
}
