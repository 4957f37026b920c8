//! The backend's HTTP/1.1 side, written on `httparse` rather than hyper so
//! that it can reset connections, hang, and send malformed bytes on purpose,
//! and so that it reports exactly what it received.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::serving::{
    Action, HANG_LIMIT, IO_DEADLINE, InFlight, MID_BODY_PROMISED, MID_BODY_SENT, Page, Plan, Shared,
    bodiless, default_body, pattern_piece, reason,
};
use crate::framing::{BodyReader, BufStream, Deadline, Framing, timed_out};
use crate::ledger::{Draft, header, header_all};

/// Largest request head accepted (answered `431` beyond).
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 256;
/// How long a closing connection waits for the peer's own close.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);
/// Pause between `CloseMidBody`'s partial body and its reset, so the head
/// and first bytes are on their way (and being forwarded) when it lands.
const MID_BODY_PAUSE: Duration = Duration::from_millis(50);

const IDLE: Deadline = Deadline::Idle(IO_DEADLINE);

/// Serves one connection until it ends or the backend is killed.
pub(super) async fn serve(stream: TcpStream, shared: Arc<Shared>, kill: CancellationToken) {
    let mut io = BufStream::new(stream);
    let killed = tokio::select! {
        () = connection(&mut io, &shared) => false,
        () = kill.cancelled() => true,
    };
    if killed {
        reset(&io);
    }
    // Dropping `io` closes the socket: a reset if `reset` armed it.
}

/// Arms an abortive close: with `SO_LINGER` 0, closing sends RST.
fn reset(io: &BufStream) {
    let _ = socket2::SockRef::from(&io.stream).set_linger(Some(Duration::ZERO));
}

/// What the connection does after a request.
enum Next {
    KeepAlive,
    /// Close gracefully (FIN, then wait briefly for the peer).
    Close,
    /// Close abortively (RST).
    Reset,
    /// The connection is already broken; just drop it.
    Gone,
}

async fn connection(io: &mut BufStream, shared: &Arc<Shared>) {
    loop {
        let head = match read_head(io).await {
            HeadRead::Request(head) => head,
            HeadRead::Closed { fragment } => {
                if fragment {
                    record_garbage(shared);
                }
                return;
            }
            HeadRead::Malformed { status, why } => {
                record_garbage(shared);
                let mut reply = Reply::bare(shared);
                reply.keep_alive = false;
                let _ = reply.simple(io, status, why).await;
                graceful_close(io).await;
                return;
            }
        };
        match request(io, shared, head).await {
            Next::KeepAlive => {}
            Next::Close => {
                graceful_close(io).await;
                return;
            }
            Next::Reset => {
                reset(io);
                return;
            }
            Next::Gone => return,
        }
    }
}

/// Bytes that never became a request still reached the origin: record them
/// (empty method, incomplete) so a test checking that nothing was forwarded
/// cannot be fooled by garbage the backend could not parse.
fn record_garbage(shared: &Shared) {
    drop(Draft::new(
        &shared.ledger,
        &shared.name,
        String::new(),
        String::new(),
        String::new(),
        Vec::new(),
    ));
}

struct Head {
    method: String,
    target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    minor: u8,
    headers: Vec<(String, String)>,
}

enum HeadRead {
    Request(Head),
    /// EOF, reset or timeout; `fragment` if part of a head had arrived.
    Closed {
        fragment: bool,
    },
    Malformed {
        status: u16,
        why: &'static str,
    },
}

async fn read_head(io: &mut BufStream) -> HeadRead {
    loop {
        // RFC 9112 section 2.2: ignore empty lines before a request line.
        while io.buf.starts_with(b"\r\n") {
            io.buf.advance(2);
        }
        if !io.buf.is_empty() {
            match parse_head(&io.buf) {
                Ok(Some((head, len))) => {
                    io.buf.advance(len);
                    return HeadRead::Request(head);
                }
                Ok(None) if io.buf.len() > MAX_HEAD => {
                    return HeadRead::Malformed {
                        status: 431,
                        why: "request head too large",
                    };
                }
                Ok(None) => {}
                Err(malformed) => return malformed,
            }
        }
        match io.fill(IDLE).await {
            Ok(n) if n > 0 => {}
            _ => {
                return HeadRead::Closed {
                    fragment: !io.buf.is_empty(),
                };
            }
        }
    }
}

/// A complete head and its length, `None` if more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadRead> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadRead::Malformed {
                status: 431,
                why: "too many header fields",
            });
        }
        Err(_) => {
            return Err(HeadRead::Malformed {
                status: 400,
                why: "malformed request head",
            });
        }
    };
    let head = Head {
        method: req.method.unwrap_or_default().to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        minor: req.version.unwrap_or(1),
        headers: req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    };
    Ok(Some((head, len)))
}

/// Comma-separated tokens of every `name` field, trimmed and lowercased.
fn tokens(headers: &[(String, String)], name: &str) -> Vec<String> {
    header_all(headers, name)
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Request body framing per RFC 9112 section 6.3, and whether the
/// connection must close after this request (both Transfer-Encoding and
/// Content-Length were sent: the framing was ambiguous).
fn request_framing(head: &Head) -> Result<(Framing, bool), &'static str> {
    let te = tokens(&head.headers, "transfer-encoding");
    let cl = header_all(&head.headers, "content-length");
    if !te.is_empty() {
        if head.minor == 0 {
            return Err("transfer-encoding in an HTTP/1.0 request");
        }
        if te.last().map(String::as_str) != Some("chunked") {
            return Err("transfer-encoding does not end in chunked");
        }
        return Ok((Framing::Chunked, !cl.is_empty()));
    }
    let mut length = None;
    for value in cl.iter().flat_map(|v| v.split(',')) {
        let value = value.trim();
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err("bad content-length");
        }
        let n: u64 = value.parse().map_err(|_| "bad content-length")?;
        if length.is_some_and(|l| l != n) {
            return Err("conflicting content-length values");
        }
        length = Some(n);
    }
    Ok((Framing::Length(length.unwrap_or(0)), false))
}

fn wants_keep_alive(head: &Head) -> bool {
    let connection = tokens(&head.headers, "connection");
    if head.minor == 0 {
        connection.iter().any(|t| t == "keep-alive")
    } else {
        !connection.iter().any(|t| t == "close")
    }
}

fn is_websocket_upgrade(head: &Head) -> bool {
    head.minor == 1
        && tokens(&head.headers, "upgrade").iter().any(|t| t == "websocket")
        && tokens(&head.headers, "connection").iter().any(|t| t == "upgrade")
}

/// The response headers every answer to one request carries, and how the
/// connection ends after it.
struct Reply {
    headers: Vec<(&'static str, String)>,
    keep_alive: bool,
    /// HTTP/1.0 peers get neither chunked bodies nor implicit keep-alive.
    http10: bool,
    head_only: bool,
}

impl Reply {
    fn bare(shared: &Shared) -> Reply {
        Reply {
            headers: vec![("x-backend", shared.name.clone())],
            keep_alive: true,
            http10: false,
            head_only: false,
        }
    }

    fn new(shared: &Shared, head: &Head, seq: u64) -> Reply {
        let mut reply = Reply::bare(shared);
        reply.headers.push(("x-testkit-seq", seq.to_string()));
        if let Some(id) = header(&head.headers, "x-request-id") {
            reply.headers.push(("x-request-id", id.to_owned()));
        }
        reply.keep_alive = wants_keep_alive(head);
        reply.http10 = head.minor == 0;
        reply.head_only = head.method == "HEAD";
        reply
    }

    /// The status line and headers, `extra` after the common ones.
    fn head(&self, status: u16, extra: &[(&str, String)]) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (name, value) in self
            .headers
            .iter()
            .map(|(n, v)| (*n, v))
            .chain(extra.iter().map(|(n, v)| (*n, v)))
        {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        if !self.keep_alive {
            out.push_str("connection: close\r\n");
        } else if self.http10 {
            out.push_str("connection: keep-alive\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    /// A short text answer with a content-length.
    async fn simple(&self, io: &mut BufStream, status: u16, text: &str) -> io::Result<()> {
        let body = format!("{text}\n");
        let mut out = self.head(
            status,
            &[
                ("content-type", "text/plain".to_owned()),
                ("content-length", body.len().to_string()),
            ],
        );
        if !self.head_only {
            out.extend_from_slice(body.as_bytes());
        }
        write(io, &out).await
    }

    fn after(&self) -> Next {
        if self.keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }
}

async fn write(io: &mut BufStream, bytes: &[u8]) -> io::Result<()> {
    match tokio::time::timeout(IO_DEADLINE, io.stream.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(timed_out()),
    }
}

/// One chunk of a chunked body, in one write.
fn chunk(piece: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(piece.len() + 20);
    out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
    out.extend_from_slice(piece);
    out.extend_from_slice(b"\r\n");
    out
}

/// Handles one request; the arrival is recorded by `draft` (as incomplete
/// if this returns or is cancelled before the body has all arrived).
async fn request(io: &mut BufStream, shared: &Arc<Shared>, head: Head) -> Next {
    let _in_flight = InFlight::enter(shared);
    let version = if head.minor == 0 { "HTTP/1.0" } else { "HTTP/1.1" };
    let mut draft = Draft::new(
        &shared.ledger,
        &shared.name,
        head.method.clone(),
        head.target.clone(),
        version.to_owned(),
        head.headers.clone(),
    );
    let mut reply = Reply::new(shared, &head, draft.seq());

    let framing = match request_framing(&head) {
        Ok((framing, ambiguous)) => {
            reply.keep_alive &= !ambiguous;
            framing
        }
        Err(why) => {
            // The body's extent is unknown, so the connection cannot go on.
            reply.keep_alive = false;
            let _ = reply.simple(io, 400, why).await;
            return Next::Close;
        }
    };
    let scripted = Plan::for_request(shared, &head.headers)
        .and_then(|plan| Page::of(&head.method, &head.target).map(|page| (plan, page)));
    let (plan, page) = match scripted {
        Ok(scripted) => scripted,
        Err(why) => {
            // Closing spares reading a body nobody wants.
            reply.keep_alive = false;
            let _ = reply.simple(io, 400, &why).await;
            return Next::Close;
        }
    };
    if plan.action == Action::Reset {
        if framing == Framing::Length(0) {
            draft.finish();
        }
        return Next::Reset;
    }

    let has_body = framing != Framing::Length(0);
    if has_body
        && head.minor == 1
        && header(&head.headers, "expect").is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
        && write(io, b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err()
    {
        return Next::Gone;
    }

    let mut body = BodyReader::new(framing);
    if page == Page::Echo && plan.action == Action::Respond && !bodiless(plan.status) {
        return echo(io, plan, body, draft, reply).await;
    }

    loop {
        match body.next(io, IDLE).await {
            Ok(Some(piece)) => draft.body(&piece),
            Ok(None) => break,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                reply.keep_alive = false;
                let _ = reply.simple(io, 400, "malformed chunked body").await;
                return Next::Close;
            }
            Err(_) => return Next::Gone,
        }
    }
    draft.trailers(std::mem::take(&mut body.trailers));
    let (body_len, body_sha256) = draft.finish();
    reply.headers.push(("x-body-len", body_len.to_string()));
    reply.headers.push(("x-body-sha256", body_sha256));

    match plan.action {
        // Handled before the body was read; kept for exhaustiveness.
        Action::Reset => Next::Reset,
        Action::Hang => {
            tokio::time::sleep(HANG_LIMIT).await;
            Next::Close
        }
        Action::Raw(bytes) => {
            let _ = write(io, &bytes).await;
            Next::Close
        }
        Action::CloseMidBody => {
            let mut out = reply.head(
                200,
                &[
                    ("content-type", "application/octet-stream".to_owned()),
                    ("content-length", MID_BODY_PROMISED.to_string()),
                ],
            );
            out.extend_from_slice(&pattern_piece(MID_BODY_SENT as u64));
            let _ = write(io, &out).await;
            tokio::time::sleep(MID_BODY_PAUSE).await;
            Next::Reset
        }
        Action::Respond => {
            tokio::time::sleep(plan.delay).await;
            if is_websocket_upgrade(&head) && plan.status == 200 {
                return tunnel(io, &reply).await;
            }
            respond(io, shared, &head, plan.status, page, &mut reply).await
        }
    }
}

/// Writes the path's answer with `status`.
async fn respond(
    io: &mut BufStream,
    shared: &Shared,
    head: &Head,
    status: u16,
    page: Page,
    reply: &mut Reply,
) -> Next {
    if bodiless(status) {
        let out = reply.head(status, &[]);
        return match write(io, &out).await {
            Ok(()) => reply.after(),
            Err(_) => Next::Gone,
        };
    }
    let written = match page {
        Page::Bytes { len, chunked } => {
            let mut extra = vec![("content-type", "application/octet-stream".to_owned())];
            // Chunked to an HTTP/1.0 peer is impossible: the body then runs
            // to the close instead.
            let framing = if reply.head_only || !chunked {
                extra.push(("content-length", len.to_string()));
                Framing::Length(len)
            } else if reply.http10 {
                reply.keep_alive = false;
                Framing::UntilClose
            } else {
                extra.push(("transfer-encoding", "chunked".to_owned()));
                Framing::Chunked
            };
            let out = reply.head(status, &extra);
            match write(io, &out).await {
                Ok(()) if reply.head_only => Ok(()),
                Ok(()) => write_pattern(io, len, framing).await,
                Err(e) => Err(e),
            }
        }
        Page::Healthz | Page::Default | Page::Echo => {
            let body = if page == Page::Healthz {
                Bytes::from_static(b"ok\n")
            } else {
                default_body(shared, &head.method, &head.target)
            };
            let extra = [
                ("content-type", "text/plain".to_owned()),
                ("content-length", body.len().to_string()),
            ];
            let mut out = reply.head(status, &extra);
            if !reply.head_only {
                out.extend_from_slice(&body);
            }
            write(io, &out).await
        }
    };
    match written {
        Ok(()) => reply.after(),
        Err(_) => Next::Gone,
    }
}

/// Streams `len` pattern bytes without ever holding more than one piece.
async fn write_pattern(io: &mut BufStream, len: u64, framing: Framing) -> io::Result<()> {
    let mut left = len;
    while left > 0 {
        let piece = pattern_piece(left);
        left -= piece.len() as u64;
        if framing == Framing::Chunked {
            write(io, &chunk(&piece)).await?;
        } else {
            write(io, &piece).await?;
        }
    }
    if framing == Framing::Chunked {
        write(io, b"0\r\n\r\n").await?;
    }
    Ok(())
}

/// `/echo`: the request body goes back as it arrives, chunked (or up to the
/// close for HTTP/1.0), so nothing is held whole.
async fn echo(
    io: &mut BufStream,
    plan: Plan,
    mut body: BodyReader,
    mut draft: Draft,
    mut reply: Reply,
) -> Next {
    tokio::time::sleep(plan.delay).await;
    let chunked = !reply.http10;
    let mut extra = vec![("content-type", "application/octet-stream".to_owned())];
    if chunked {
        extra.push(("transfer-encoding", "chunked".to_owned()));
    } else {
        reply.keep_alive = false;
    }
    let out = reply.head(plan.status, &extra);
    if write(io, &out).await.is_err() {
        return Next::Gone;
    }
    loop {
        let piece = match body.next(io, IDLE).await {
            Ok(Some(piece)) => piece,
            Ok(None) => break,
            // The response is already under way: a reset is the only way
            // left to tell the client it is broken rather than complete.
            Err(_) => return Next::Reset,
        };
        draft.body(&piece);
        let written = if chunked {
            write(io, &chunk(&piece)).await
        } else {
            write(io, &piece).await
        };
        if written.is_err() {
            return Next::Gone;
        }
    }
    draft.trailers(std::mem::take(&mut body.trailers));
    draft.finish();
    if chunked && write(io, b"0\r\n\r\n").await.is_err() {
        return Next::Gone;
    }
    reply.after()
}

/// Answers a WebSocket upgrade with `101`, then echoes raw bytes until EOF.
async fn tunnel(io: &mut BufStream, reply: &Reply) -> Next {
    let mut reply_head = Reply {
        headers: reply.headers.clone(),
        keep_alive: true,
        http10: false,
        head_only: false,
    };
    reply_head.headers.push(("upgrade", "websocket".to_owned()));
    reply_head.headers.push(("connection", "upgrade".to_owned()));
    let out = reply_head.head(101, &[]);
    if write(io, &out).await.is_err() {
        return Next::Gone;
    }
    loop {
        if !io.buf.is_empty() {
            let bytes = io.buf.split().freeze();
            if write(io, &bytes).await.is_err() {
                return Next::Gone;
            }
        }
        match io.fill(IDLE).await {
            Ok(0) => return Next::Close,
            Ok(_) => {}
            Err(_) => return Next::Gone,
        }
    }
}

/// Sends FIN, then reads until the peer closes too (briefly): closing with
/// unread bytes in the receive buffer would send RST, and a RST can destroy
/// a response the peer has not read yet.
async fn graceful_close(io: &mut BufStream) {
    let end = Instant::now() + DRAIN_LIMIT;
    if tokio::time::timeout_at(end, io.stream.shutdown()).await.is_err() {
        return;
    }
    loop {
        io.buf.clear();
        match io.fill(Deadline::At(end)).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(minor: u8, headers: &[(&str, &str)]) -> Head {
        Head {
            method: "POST".into(),
            target: "/".into(),
            minor,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn framing_follows_rfc9112() {
        assert_eq!(
            request_framing(&head(1, &[])).unwrap(),
            (Framing::Length(0), false)
        );
        assert_eq!(
            request_framing(&head(1, &[("content-length", "5")])).unwrap(),
            (Framing::Length(5), false)
        );
        assert_eq!(
            request_framing(&head(1, &[("content-length", "5, 5")])).unwrap(),
            (Framing::Length(5), false)
        );
        assert!(request_framing(&head(1, &[("content-length", "5, 6")])).is_err());
        assert!(request_framing(&head(1, &[("content-length", "+5")])).is_err());
        assert_eq!(
            request_framing(&head(
                1,
                &[("transfer-encoding", "chunked"), ("content-length", "3")]
            ))
            .unwrap(),
            (Framing::Chunked, true)
        );
        assert!(request_framing(&head(1, &[("transfer-encoding", "chunked, gzip")])).is_err());
        assert!(request_framing(&head(0, &[("transfer-encoding", "chunked")])).is_err());
    }

    #[test]
    fn keep_alive_defaults_by_version() {
        assert!(wants_keep_alive(&head(1, &[])));
        assert!(!wants_keep_alive(&head(1, &[("connection", "Close")])));
        assert!(!wants_keep_alive(&head(0, &[])));
        assert!(wants_keep_alive(&head(0, &[("connection", "keep-alive")])));
    }
}
