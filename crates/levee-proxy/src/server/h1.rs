//! levee's HTTP/1.1 server side.
//!
//! levee reads HTTP/1 requests itself rather than through hyper's server:
//! the strict reading of every head ([`parse`]) and body ([`decode`]) is
//! the front door's contract, and every refusal has to be levee's own
//! response with a `Proxy-Status`, which a generic server cannot give.
//! (HTTP/2, whose framing leaves no such ambiguity, is served by hyper.)
//!
//! One task drives each connection: it reads a head, hands the request to
//! the [`Handler`], streams the request body to it while waiting for the
//! response, then writes the response while still streaming the body (an
//! upstream may answer before the upload ends). Requests on a connection
//! run strictly one after another; a pipelined request waits in the read
//! buffer and never runs if the one before it is refused.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use super::settings::Settings;
use crate::drain::Drain;
use crate::timer::LazyTimer;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use levee_core::outcome::{ErrorKind, Rejection};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

use super::handler::Handler;
use super::io::{linger_close, write_all_slices};
use crate::body::{BodyError, BodySender, Chunk, RequestBody, channel};
use crate::codec::decode::{Decoded, Decoder};
use crate::codec::encode::{
    ChunkLine, OutFraming, Persistence, encode_head, encode_last_chunk, encode_raw_head,
};
use crate::codec::parse::{Framing, Head, RequestFields, parse_head};
use crate::conn::ConnInfo;
use crate::respond;
use crate::response::{Accounted, Answer};
use crate::upstream::h1::Upgraded;

/// A request body the upstream stopped reading is read and dropped up to
/// this size so the connection can be kept; beyond it, the connection closes.
const DISCARD_LIMIT: u64 = 256 * 1024;
/// Read sizes: small for heads (most fit in one), larger for bodies.
const HEAD_READ: usize = 4 * 1024;
const BODY_READ: usize = 32 * 1024;
/// How long a keep-alive connection waits for its next request before it
/// gives its read buffer back.
const IDLE_SHRINK: Duration = Duration::from_secs(1);
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What happens to the connection after an exchange.
enum Next {
    KeepAlive,
    /// Close politely (the response is complete).
    Close,
    /// Drop at once: the client is gone, or the connection is over (a
    /// tunnel ended, a refusal was written).
    Abort,
    /// The response was cut off after part of it was written: reset the
    /// connection, so that the client cannot take a body delimited by the
    /// close (or a truncated one of any framing) for a whole one.
    Reset,
}

/// How a connection [`serve`] gave up should be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    Close,
    /// With a TCP reset (`SO_LINGER` zero), not a FIN.
    Reset,
}

/// Serves requests on one client connection until it closes.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<H, R, W>(
    handler: &H,
    conn: &ConnInfo,
    rd: &mut R,
    wr: &mut W,
    mut buf: BytesMut,
    settings: &Settings,
    draining: &Drain,
    accepted: Instant,
) -> Ending
where
    H: Handler,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(512);
    // Registered once for the connection's life rather than once a request.
    let drain = draining.watch();
    tokio::pin!(drain);
    let mut timer = LazyTimer::new();
    // The first request's head must arrive within the header timeout of the
    // accept: a client cannot hold a connection by sending nothing.
    let mut head_deadline = Some(accepted + settings.header_timeout);
    let mut served: u64 = 0;
    loop {
        let waits = Waits {
            drain: drain.as_mut(),
            timer: &mut timer,
        };
        let head = match read_head(rd, &mut buf, settings, waits, head_deadline).await {
            Ok(h) => h,
            Err(Stop::Closed) => return Ending::Close,
            Err(Stop::Reject(r)) => {
                reject(handler, conn, r, rd, wr, &mut out, settings).await;
                return Ending::Close;
            }
        };
        head_deadline = None;
        served += 1;
        let last = settings.max_requests != 0 && served >= settings.max_requests;
        match exchange(
            handler, conn, head, rd, wr, &mut buf, &mut out, settings, draining, last,
        )
        .await
        {
            Next::KeepAlive => {}
            Next::Close => {
                linger_close(rd, wr).await;
                return Ending::Close;
            }
            Next::Abort => return Ending::Close,
            Next::Reset => return Ending::Reset,
        }
    }
}

/// What a connection waits on between requests, kept for its whole life.
struct Waits<'a, 'd> {
    drain: Pin<&'a mut crate::drain::Watch<'d>>,
    timer: &'a mut LazyTimer,
}

/// Why no request head came.
enum Stop {
    /// The client closed, went idle too long, or the server is draining at
    /// a request boundary: close without a word.
    Closed,
    Reject(Rejection),
}

async fn read_head<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    settings: &Settings,
    mut waits: Waits<'_, '_>,
    mut head_deadline: Option<Instant>,
) -> Result<Head, Stop> {
    let now = Instant::now();
    let idle_deadline = now + settings.keepalive_timeout;
    // A connection idle this long gives its read buffer back: idle
    // keep-alive connections are most of a busy server's connections, and
    // 4 KiB each adds up. A busy one never waits this long, so it keeps
    // its buffer and pays nothing.
    let shrink_at = (now + IDLE_SHRINK).min(idle_deadline);
    let mut shrunk = false;
    loop {
        if !buf.is_empty() {
            shrunk = false;
            if let Some(head) = parse_head(buf, settings.limits).map_err(Stop::Reject)? {
                return Ok(head);
            }
            // The first byte of a follow-up request starts its head's clock.
            head_deadline.get_or_insert_with(|| Instant::now() + settings.header_timeout);
        }
        let idle = buf.is_empty() && head_deadline.is_none();
        let deadline = match head_deadline {
            Some(d) => d,
            None if idle && !shrunk && shrink_at < idle_deadline => shrink_at,
            None => idle_deadline,
        };
        // Once shrunk, the next read takes what its first bytes need (a
        // small allocation) and the buffer grows back from there.
        if !shrunk && buf.capacity() - buf.len() < 512 {
            buf.reserve(HEAD_READ);
        }
        tokio::select! {
            biased;
            _ = waits.drain.as_mut(), if buf.is_empty() => return Err(Stop::Closed),
            read = rd.read_buf(buf) => match read {
                Ok(0) | Err(_) => return Err(Stop::Closed),
                Ok(_) => {}
            },
            _ = waits.timer.until(deadline) => {
                if idle && !shrunk && deadline == shrink_at {
                    *buf = BytesMut::new();
                    shrunk = true;
                    continue;
                }
                // A head that never came, as opposed to a keep-alive
                // connection that went quiet between requests.
                if head_deadline.is_some() {
                    settings.slow.head.inc();
                }
                return Err(if buf.is_empty() {
                    Stop::Closed
                } else {
                    Stop::Reject(Rejection::new(ErrorKind::RequestTimeout, "request head timed out"))
                });
            }
        }
    }
}

/// Writes levee's response to a refused request, then closes: what follows
/// a malformed request cannot be trusted to be a request.
async fn reject<H, R, W>(
    handler: &H,
    conn: &ConnInfo,
    r: Rejection,
    rd: &mut R,
    wr: &mut W,
    out: &mut BytesMut,
    settings: &Settings,
) where
    H: Handler,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let res = handler.reject(r, conn);
    if write_generated(*res, Persistence::Close, wr, out, settings).await {
        linger_close(rd, wr).await;
    }
}

/// Writes a response levee generated (its body is whole and ready at once).
async fn write_generated<W: AsyncWrite + Unpin>(
    answer: Answer,
    persistence: Persistence,
    wr: &mut W,
    out: &mut BytesMut,
    settings: &Settings,
) -> bool {
    let parts = answer.parts;
    let mut body = Accounted::new(answer.body, answer.accounting);
    let data = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    };
    encode_head(out, &parts, OutFraming::Length(data.len() as u64), persistence);
    let mut slices = [&out[..], &data[..]];
    let write = write_all_slices(wr, &mut slices);
    match timeout(settings.body_timeout, write).await {
        Ok(r) => r.is_ok(),
        Err(_) => {
            settings.slow.send.inc();
            false
        }
    }
}

/// One request and its response; with `last`, the connection's final one.
#[allow(clippy::too_many_arguments)]
async fn exchange<H, R, W>(
    handler: &H,
    conn: &ConnInfo,
    head: Head,
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    settings: &Settings,
    draining: &Drain,
    last: bool,
) -> Next
where
    H: Handler,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if let (Some(max), Framing::Length(n)) = (settings.max_body, head.framing)
        && n > max
    {
        let r = Rejection::new(ErrorKind::BodyTooLarge, "request body too large");
        reject(handler, conn, r, rd, wr, out, settings).await;
        return Next::Abort;
    }
    let Head {
        method,
        uri,
        version,
        fields,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
    } = head;
    let is_head = method == Method::HEAD;
    let (mut pump, body) = body_of(framing, expect_continue, settings);
    // Built here rather than returned from a helper: moving a request out
    // of a function copies it (callgrind).
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    let raw = match fields {
        RequestFields::Raw(raw) => Some(raw),
        RequestFields::Map(map) => {
            *req.headers_mut() = map;
            None
        }
    };

    // Phase 1: wait for the response head, feeding the request body.
    let response = {
        // Inline, not boxed: boxing this future (3 KB) or the whole
        // exchange would take that much off each idle connection, but the
        // copy into the box and the allocation cost 6-7% more instructions
        // per request (callgrind), measured and declined.
        let fut = handler.handle(req, raw, conn);
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                res = &mut fut => break Ok(res),
                step = pump_step(&mut pump, rd, buf, Some(&mut *wr)) => match step {
                    Ok(()) => {}
                    // The request is refused mid-body: stop the upstream
                    // exchange (dropping it aborts the upstream request).
                    Err(PumpError::Client(r)) => break Err(r),
                    Err(PumpError::Gone) => return Next::Abort,
                }
            }
        }
    };
    let answer = match response {
        Ok(res) => res,
        Err(r) => {
            reject(handler, conn, r, rd, wr, out, settings).await;
            return Next::Abort;
        }
    };
    if answer.parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // The exchange is counted now; the tunnel is the upgraded
        // connection's, not the request's.
        let Answer {
            parts,
            body,
            upgraded,
            accounting,
            ..
        } = *answer;
        drop((body, accounting));
        if let Some(upgraded) = upgraded.filter(|_| upgrade) {
            switch_protocols(&parts, *upgraded, rd, wr, buf, out, settings).await;
        }
        return Next::Abort;
    }
    // Only the body and its accounting move out of the box; the head is
    // read where it is (each move is a copy, callgrind).
    let mut body = Accounted::new(answer.body, answer.accounting);
    let (parts, raw_head) = (&answer.parts, &answer.raw);
    // A client still waiting for 100 Continue will send its body or not;
    // either way the connection's framing is in doubt.
    let awaiting_continue = pump.as_ref().is_some_and(Pump::awaiting_continue);
    let reusable = keep_alive && !last && !draining.is_started() && !awaiting_continue;
    let (framing_out, keep, persistence) = response_framing(parts, &body, is_head, version, reusable);
    if pump.as_ref().is_some_and(Pump::awaiting_continue) {
        // The body was never asked for; don't read it.
        pump = None;
    }
    match raw_head {
        Some(raw) => encode_raw_head(out, parts.status, raw, framing_out, persistence),
        None => encode_head(out, parts, framing_out, persistence),
    }

    // Phase 2: the response body, still feeding the request body.
    match write_body(&mut body, framing_out, out, rd, wr, buf, &mut pump, settings).await {
        Written::Complete => body.end(),
        Written::Broken => return Next::Reset,
        Written::FailedBeforeHead(e) => {
            // Nothing reached the client yet: it gets levee's answer, not
            // a silent close.
            let rejection = body_failure(&e);
            let request_id = match raw_head {
                Some(raw) => raw.request_id(),
                None => parts.headers.get("x-request-id").cloned(),
            };
            let answer = respond::refuse(rejection, request_id.as_ref(), body.take_accounting());
            if !write_generated(answer, persistence, wr, out, settings).await {
                return Next::Abort;
            }
        }
    }
    // A request body that broke leaves the connection's framing unknown.
    if pump.as_ref().is_some_and(|p| p.broken) {
        return Next::Close;
    }
    // Whatever is left of the request body must be read before the next
    // request can be; a bounded amount is, beyond it the connection closes.
    // The response is complete, so nobody needs the rest: it is discarded
    // (waiting to hand it over could wait on an upstream that stopped
    // taking it, with no deadline).
    if let Some(p) = pump.as_mut() {
        p.sender = None;
    }
    while pump.as_ref().is_some_and(|p| !p.done) {
        if pump_step(&mut pump, rd, buf, None::<&mut W>).await.is_err() {
            return Next::Close;
        }
    }
    if keep { Next::KeepAlive } else { Next::Close }
}

/// The request's body for the handler, and the pump that will feed it
/// from the connection.
fn body_of(framing: Framing, expect_continue: bool, settings: &Settings) -> (Option<Pump>, RequestBody) {
    match framing {
        // A request is never delimited by the close (the parser says so).
        Framing::Empty | Framing::UntilClose => (None, RequestBody::Empty),
        Framing::Length(n) => {
            let (tx, rx) = channel(Some(n));
            (
                Some(Pump::new(framing, tx, expect_continue, settings)),
                RequestBody::H1(rx),
            )
        }
        Framing::Chunked => {
            let (tx, rx) = channel(None);
            (
                Some(Pump::new(framing, tx, expect_continue, settings)),
                RequestBody::H1(rx),
            )
        }
    }
}

/// How the response is delimited, and whether the connection is kept
/// after it (`reusable`: nothing else stands against it).
fn response_framing(
    parts: &http::response::Parts,
    body: &Accounted,
    is_head: bool,
    version: Version,
    reusable: bool,
) -> (OutFraming, bool, Persistence) {
    let bodyless = is_head
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let framing = if bodyless {
        OutFraming::Bodyless
    } else if let Some(n) = body.size_hint().exact() {
        OutFraming::Length(n)
    } else if version == Version::HTTP_11 {
        OutFraming::Chunked
    } else {
        OutFraming::Close
    };
    let keep = reusable && framing != OutFraming::Close;
    let persistence = match (keep, version) {
        (false, _) => Persistence::Close,
        (true, Version::HTTP_10) => Persistence::KeepAlive,
        (true, _) => Persistence::Default,
    };
    (framing, keep, persistence)
}

/// Writes a `101` and tunnels the connection to the upgraded upstream one
/// until either side closes or it idles out.
async fn switch_protocols<R, W>(
    parts: &http::response::Parts,
    upgraded: Upgraded,
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    settings: &Settings,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    encode_head(out, parts, OutFraming::Bodyless, Persistence::Upgrade);
    let mut slices = [&out[..], &upgraded.leftover[..]];
    if !matches!(
        timeout(settings.body_timeout, write_all_slices(wr, &mut slices)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let leftover = buf.split().freeze();
    // Still one of the upstream's connections while the tunnel lasts.
    let _counted = upgraded.open;
    tunnel(rd, wr, leftover, upgraded.io, settings.tunnel_idle_timeout).await;
}

/// levee's answer for a response body that failed before any of it was
/// written.
fn body_failure(e: &BodyError) -> Rejection {
    match e {
        BodyError::Upstream(r) => *r,
        BodyError::UpstreamH2(e) => crate::upstream::classify::classify(e),
        BodyError::Timeout => Rejection::RESPONSE_TIMEOUT,
        _ => Rejection::new(ErrorKind::ConnectionTerminated, "upstream response body failed"),
    }
}

/// How writing a response body ended.
enum Written {
    Complete,
    /// Cut short after the client saw part of it: the connection must be
    /// dropped, so that the client sees a broken message, never a clean end.
    Broken,
    /// The body failed before anything was written.
    FailedBeforeHead(BodyError),
}

/// Streams the response body.
#[allow(clippy::too_many_arguments)]
async fn write_body<R, W>(
    body: &mut Accounted,
    framing: OutFraming,
    out: &mut BytesMut,
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
    pump: &mut Option<Pump>,
    settings: &Settings,
) -> Written
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut head_pending = true;
    let mut trailers: Option<HeaderMap> = None;
    if framing != OutFraming::Bodyless {
        loop {
            // The first frame is usually ready with the head: send both in
            // one write. Otherwise the head goes now, so a streaming
            // response (server-sent events) shows its head at once.
            let frame = if head_pending {
                match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
                    Poll::Ready(f) => Some(f),
                    Poll::Pending => {
                        if !send(wr, &mut [&out[..]], rd, buf, pump, settings).await {
                            return Written::Broken;
                        }
                        head_pending = false;
                        None
                    }
                }
            } else {
                None
            };
            let frame = match frame {
                Some(f) => f,
                None => match next_frame(body, rd, buf, pump, settings).await {
                    Some(f) => f,
                    None => return Written::Broken,
                },
            };
            let data: Bytes = match frame {
                None => break,
                Some(Err(e)) if head_pending => return Written::FailedBeforeHead(e),
                Some(Err(_)) => return Written::Broken,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        continue;
                    }
                },
            };
            if data.is_empty() {
                continue;
            }
            let head: &[u8] = if head_pending { &out[..] } else { &[] };
            let ok = if framing == OutFraming::Chunked {
                let line = ChunkLine::new(data.len());
                send(
                    wr,
                    &mut [head, line.as_bytes(), &data[..], b"\r\n"],
                    rd,
                    buf,
                    pump,
                    settings,
                )
                .await
            } else {
                send(wr, &mut [head, &data[..]], rd, buf, pump, settings).await
            };
            if !ok {
                return Written::Broken;
            }
            head_pending = false;
        }
    }
    // The end: the head if nothing was written yet, and the last chunk.
    let mut last = BytesMut::new();
    if framing == OutFraming::Chunked {
        encode_last_chunk(&mut last, trailers.as_ref());
    }
    let head: &[u8] = if head_pending { &out[..] } else { &[] };
    let sent = send(wr, &mut [head, &last[..]], rd, buf, pump, settings).await
        && timeout(settings.body_timeout, wr.flush()).await.is_ok();
    if sent { Written::Complete } else { Written::Broken }
}

/// The next response frame, within the body idle timeout, while feeding the
/// request body. `None` when the body stalled or the client is gone.
async fn next_frame<R: AsyncRead + Unpin>(
    body: &mut Accounted,
    rd: &mut R,
    buf: &mut BytesMut,
    pump: &mut Option<Pump>,
    settings: &Settings,
) -> Option<Option<Result<http_body::Frame<Bytes>, crate::body::BodyError>>> {
    let frame = body.frame();
    tokio::pin!(frame);
    let deadline = Instant::now() + settings.body_timeout;
    loop {
        tokio::select! {
            biased;
            f = timeout_at(deadline, &mut frame) => return f.ok(),
            step = pump_step(pump, rd, buf, None::<&mut tokio::io::Sink>) => if step.is_err() {
                // The request body broke mid-response: stop reading it; the
                // response may still complete, but the connection closes.
                break_pump(pump);
            }
        }
    }
}

/// Writes slices within the body timeout while feeding the request body, so
/// a client that uploads and downloads at once never deadlocks with levee.
async fn send<R, W>(
    wr: &mut W,
    slices: &mut [&[u8]],
    rd: &mut R,
    buf: &mut BytesMut,
    pump: &mut Option<Pump>,
    settings: &Settings,
) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let write = timeout(settings.body_timeout, write_all_slices(wr, slices));
    tokio::pin!(write);
    loop {
        tokio::select! {
            biased;
            r = &mut write => {
                if r.is_err() {
                    settings.slow.send.inc();
                }
                return matches!(r, Ok(Ok(())));
            }
            step = pump_step(pump, rd, buf, None::<&mut tokio::io::Sink>) => if step.is_err() {
                break_pump(pump);
            }
        }
    }
}

/// Stops a pump whose body failed. Dropping its sender without the end
/// marker tells the upstream side the body was cut short.
fn break_pump(pump: &mut Option<Pump>) {
    if let Some(p) = pump.as_mut() {
        p.broken = true;
        p.sender = None;
    }
}

/// Moves a request body from the client connection to the handler.
struct Pump {
    decoder: Decoder,
    /// `None` once the handler dropped the body: the rest is discarded.
    sender: Option<BodySender>,
    expect_continue: bool,
    continue_sent: bool,
    max_body: Option<u64>,
    body_timeout: Duration,
    /// The minimum rate: by `started + grace + credit + received / rate`
    /// the body must have come this far.
    min_rate: u64,
    started: Instant,
    grace: Duration,
    /// Time the client spent waiting on levee (for `100 Continue`, or for
    /// an upstream slower to take the body than the client to send it),
    /// which is not the client's slowness.
    credit: Duration,
    blocked_since: Option<Instant>,
    slow: Counter,
    done: bool,
    /// The body failed (malformed, too large, too slow, or the client went
    /// away): nothing more is read, and the connection is not reused.
    broken: bool,
}

enum PumpError {
    /// The body is malformed, too large or too slow.
    Client(Rejection),
    /// The client closed the connection or it failed.
    Gone,
}

impl Pump {
    /// When the body must have reached one byte more than it has, at the
    /// minimum rate; `None` without one.
    fn rate_deadline(&self) -> Option<Instant> {
        if self.min_rate == 0 {
            return None;
        }
        let due = Duration::from_secs_f64((self.decoder.received() + 1) as f64 / self.min_rate as f64);
        Some(self.started + self.grace + self.credit + due)
    }

    fn unblock(&mut self) {
        if let Some(since) = self.blocked_since.take() {
            self.credit += since.elapsed();
        }
    }

    fn new(framing: Framing, sender: BodySender, expect_continue: bool, settings: &Settings) -> Pump {
        Pump {
            decoder: Decoder::new(framing, settings.limits.max_head),
            sender: Some(sender),
            expect_continue,
            continue_sent: false,
            max_body: settings.max_body,
            body_timeout: settings.body_timeout,
            min_rate: settings.body_min_rate,
            started: Instant::now(),
            grace: settings.header_timeout,
            credit: Duration::ZERO,
            blocked_since: None,
            slow: settings.slow.body.clone(),
            done: false,
            broken: false,
        }
    }

    fn awaiting_continue(&self) -> bool {
        self.expect_continue && !self.continue_sent
    }
}

/// One step of the pump; never completes when there is nothing to pump, so
/// it can sit in a `select!` beside the work it runs alongside.
///
/// Cancel-safe: it is dropped whenever the other branch wins. Every await
/// point either completes atomically (a single write, a reserve, a read
/// into the buffer) or has no effect until it completes.
async fn pump_step<R, W>(
    pump: &mut Option<Pump>,
    rd: &mut R,
    buf: &mut BytesMut,
    wr: Option<&mut W>,
) -> Result<(), PumpError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(p) = pump.as_mut().filter(|p| !p.done && !p.broken) else {
        return std::future::pending().await;
    };
    // A wait cut short by the caller still counts as levee's.
    p.unblock();
    if p.awaiting_continue() {
        let (Some(sender), Some(wr)) = (&p.sender, wr) else {
            // No go-ahead can be given now; the client sends nothing more.
            return std::future::pending().await;
        };
        p.blocked_since = Some(Instant::now());
        sender.want.wanted().await;
        p.unblock();
        // One write call: it writes all 25 bytes or nothing when cancelled.
        match wr.write(CONTINUE).await {
            Ok(n) if n == CONTINUE.len() => {}
            _ => return Err(PumpError::Gone),
        }
        p.continue_sent = true;
        return Ok(());
    }
    // Reserve room first: if the handler dropped the body, switch to discarding.
    p.blocked_since = Some(Instant::now());
    let reserved = match p.sender.as_ref().map(|s| s.tx.clone()) {
        Some(tx) => Some(tx.reserve_owned().await),
        None => None,
    };
    p.unblock();
    let permit = match reserved {
        Some(reserved) => match reserved {
            Ok(permit) => Some(permit),
            Err(_) => {
                p.sender = None;
                None
            }
        },
        None => None,
    };
    loop {
        let decoded = p.decoder.decode(buf).map_err(PumpError::Client)?;
        let chunk = match decoded {
            Decoded::NeedMore => {
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(BODY_READ);
                }
                let idle = Instant::now() + p.body_timeout;
                let crawl = p.rate_deadline();
                let deadline = crawl.map_or(idle, |c| c.min(idle));
                match timeout_at(deadline, rd.read_buf(buf)).await {
                    Ok(Ok(0) | Err(_)) => return Err(PumpError::Gone),
                    Ok(Ok(_)) => continue,
                    Err(_) => {
                        p.slow.inc();
                        let detail = if crawl.is_some_and(|c| c < idle) {
                            "request body too slow"
                        } else {
                            "request body timed out"
                        };
                        return Err(PumpError::Client(Rejection::new(
                            ErrorKind::RequestTimeout,
                            detail,
                        )));
                    }
                }
            }
            Decoded::Data(data) => {
                let over = p.max_body.is_some_and(|max| p.decoder.received() > max);
                if over {
                    return Err(PumpError::Client(Rejection::new(
                        ErrorKind::BodyTooLarge,
                        "request body too large",
                    )));
                }
                if p.sender.is_none() && p.decoder.received() > DISCARD_LIMIT {
                    return Err(PumpError::Client(Rejection::new(
                        ErrorKind::BodyTooLarge,
                        "unread request body too large",
                    )));
                }
                Chunk::Data(data)
            }
            Decoded::Trailers(t) => Chunk::Trailers(t),
            Decoded::End => {
                p.done = true;
                Chunk::End
            }
        };
        let end = matches!(chunk, Chunk::End);
        if let Some(permit) = permit {
            permit.send(chunk);
        }
        if end {
            // Dropping the sender after End is the clean close.
            p.sender = None;
        }
        return Ok(());
    }
}

/// Copies bytes both ways between the client and the upgraded upstream
/// until both sides are done or nothing moves for `idle`.
async fn tunnel<R, W, U>(rd: &mut R, wr: &mut W, leftover: Bytes, upstream: U, idle: Duration)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut up_rd, mut up_wr) = tokio::io::split(upstream);
    if !leftover.is_empty() && up_wr.write_all(&leftover).await.is_err() {
        return;
    }
    // Activity of either direction, as time since `start`.
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let client_to_upstream = copy_one_way(rd, &mut up_wr, start, &last);
    let upstream_to_client = copy_one_way(&mut up_rd, wr, start, &last);
    let watchdog = async {
        loop {
            let due = start + Duration::from_nanos(last.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    };
    tokio::select! {
        _ = async { tokio::join!(client_to_upstream, upstream_to_client) } => {}
        _ = watchdog => {}
    }
}

/// Copies until EOF, then half-closes the destination.
async fn copy_one_way<A, B>(from: &mut A, to: &mut B, start: Instant, last: &AtomicU64)
where
    A: AsyncRead + Unpin,
    B: AsyncWrite + Unpin,
{
    let mut scratch = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut scratch).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let since = Instant::now().duration_since(start).as_nanos();
                last.store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
                if to.write_all(&scratch[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}
