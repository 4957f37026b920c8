//! levee's HTTP/1.1 client: one request and its response on a pooled
//! connection, driven inline by the task serving the client.
//!
//! A generic client runs each connection in a task of its own and passes
//! requests and responses through channels; for a proxy that is a wake-up
//! and a context switch on every request in each direction. Here the
//! request is written, and the response read, by whoever polls: the
//! client's connection task. It also means levee knows exactly how many
//! bytes of a request reached the socket, so "nothing was sent" is a fact,
//! not a guess, and every response is read with the same strictness as
//! requests are ([`crate::codec::parse`]).
//!
//! The request body keeps streaming while the response head is awaited and
//! while the response body is read, so an upstream that answers before the
//! upload ends (or echoes it) never deadlocks with levee.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use super::conn::{Conn, READ_CHUNK};
use super::stream::Stream;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method};
use http_body::{Body, Frame, SizeHint};
use levee_core::outcome::{ErrorKind, Rejection};

use tokio::io::AsyncWrite;
use tokio::time::Instant;

use super::EndpointState;
use super::counters::Slot;
use crate::body::{BodyError, RequestBody};
use crate::codec::decode::{Decoded, Decoder};
use crate::codec::encode::{ChunkLine, encode_last_chunk, encode_raw_request_head, encode_request_head};
use crate::codec::parse::{Framing, ResponseHead, parse_response_head, response_framing};
use crate::codec::raw::RawHead;

/// Request body bytes queued for the socket before levee stops pulling more.
const MAX_QUEUED: usize = 64 * 1024;
/// Trailer sections larger than this are refused.
const MAX_TRAILERS: usize = 64 * 1024;

/// The fields of a request on its way out.
pub(crate) enum OutHead<'a> {
    Map(&'a HeaderMap),
    /// Lines as the client sent them, less `skip`, plus `extra`.
    Raw {
        head: &'a RawHead,
        skip: u64,
        extra: &'a [u8],
    },
}

/// The upgraded connection after a `101 Switching Protocols`, with any
/// bytes the upstream sent after the head.
pub(crate) struct Upgraded {
    pub io: Stream,
    pub leftover: Bytes,
    /// Still counts against the upstream's connection limit.
    pub open: Option<Slot>,
}

/// One request in flight on a connection.
pub(crate) struct Exchange {
    /// Its `queue` holds the bytes waiting for the socket, in order.
    conn: Box<Conn>,
    queued: usize,
    /// Request bytes written so far.
    written: u64,
    /// The rest of the request body; `None` once it has all been queued.
    body: Option<RequestBody>,
    /// Whether any of the body was taken from its source (after which the
    /// request cannot be replayed on another connection).
    body_touched: bool,
    chunked: bool,
    head_request: bool,
}

impl Exchange {
    /// Prepares a request (already rewritten for the upstream) on `conn`.
    pub fn new(
        mut conn: Box<Conn>,
        method: &Method,
        target: &str,
        head: OutHead<'_>,
        body: RequestBody,
    ) -> Exchange {
        let framing = match body.size_hint().exact() {
            // Some servers insist on a length for these methods, even zero.
            Some(0) if matches!(*method, Method::POST | Method::PUT | Method::PATCH) => Framing::Length(0),
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        };
        match head {
            OutHead::Map(headers) => encode_request_head(&mut conn.wbuf, method, target, headers, framing),
            OutHead::Raw { head, skip, extra } => {
                encode_raw_request_head(&mut conn.wbuf, method, target, head, skip, extra, framing);
            }
        }
        let head = conn.wbuf.split().freeze();
        conn.queue.clear();
        let queued = head.len();
        conn.queue.push_back(head);
        let has_body = matches!(framing, Framing::Length(n) if n > 0) || framing == Framing::Chunked;
        Exchange {
            conn,
            queued,
            written: 0,
            body: has_body.then_some(body),
            body_touched: false,
            chunked: framing == Framing::Chunked,
            head_request: *method == Method::HEAD,
        }
    }

    /// Whether nothing of the request has left levee yet (neither a byte to
    /// the socket nor a byte from the body, which has not failed either), so
    /// that it can go on another connection whatever its method.
    pub fn can_retry(&self) -> bool {
        self.written == 0 && !self.body_touched
    }

    /// The request body, if none of it was read: another try can send it.
    pub fn into_untouched_body(self) -> Option<RequestBody> {
        if self.body_touched { None } else { self.body }
    }

    /// The same request on another connection, if [`Exchange::can_retry`].
    pub fn retry_on(self, mut conn: Box<Conn>) -> Option<Exchange> {
        if !self.can_retry() {
            return None;
        }
        let mut old = self.conn;
        std::mem::swap(&mut conn.queue, &mut old.queue);
        Some(Exchange { conn, ..self })
    }

    fn sent_all(&self) -> bool {
        self.body.is_none() && self.conn.queue.is_empty()
    }

    /// Writes what is queued and pulls more of the body; `Ready(Ok)` once
    /// the whole request is on the socket.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Rejection>> {
        loop {
            // Gather what the body has ready, so that the head and the first
            // bytes leave in one write.
            while self.queued < MAX_QUEUED {
                let Some(body) = self.body.as_mut() else { break };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(None) => self.finish_body(None),
                    Poll::Ready(Some(Ok(frame))) => {
                        self.body_touched = true;
                        match frame.into_data() {
                            Ok(data) => self.push_data(data),
                            Err(frame) => self.finish_body(frame.into_trailers().ok()),
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        // The client's body failed: that is final, never a
                        // reason to try the request on another connection.
                        self.body_touched = true;
                        return Poll::Ready(Err(RequestBody::rejection(&e)));
                    }
                }
            }
            if self.conn.queue.is_empty() {
                return if self.body.is_none() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            if let Err(e) = ready!(self.poll_write_queue(cx)) {
                tracing::debug!(error = %e, "writing to upstream failed");
                return Poll::Ready(Err(Rejection::new(
                    ErrorKind::ConnectionTerminated,
                    "upstream connection failed while sending the request",
                )));
            }
        }
    }

    fn push(&mut self, bytes: Bytes) {
        self.queued += bytes.len();
        self.conn.queue.push_back(bytes);
    }

    fn push_data(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        if self.chunked {
            self.push(Bytes::copy_from_slice(ChunkLine::new(data.len()).as_bytes()));
            self.push(data);
            self.push(Bytes::from_static(b"\r\n"));
        } else {
            self.push(data);
        }
    }

    fn finish_body(&mut self, trailers: Option<HeaderMap>) {
        if self.chunked {
            let mut last = BytesMut::new();
            encode_last_chunk(&mut last, trailers.as_ref());
            self.push(last.freeze());
        }
        self.body = None;
    }

    fn poll_write_queue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.conn.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); 16];
            let mut count = 0;
            for (slot, bytes) in slices.iter_mut().zip(self.conn.queue.iter()) {
                *slot = IoSlice::new(bytes);
                count += 1;
            }
            let mut n = ready!(Pin::new(&mut self.conn.io).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n as u64;
            self.queued -= n;
            while n > 0 {
                let Some(front) = self.conn.queue.front_mut() else {
                    break;
                };
                if n >= front.len() {
                    n -= front.len();
                    self.conn.queue.pop_front();
                } else {
                    let _ = front.split_to(n);
                    n = 0;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.conn.rbuf.capacity() - self.conn.rbuf.len() < 1024 {
            self.conn.rbuf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.conn.io), cx, &mut self.conn.rbuf)
    }

    /// Like [`Exchange::poll_head`], failing with a response timeout at
    /// `deadline` (checked after the connection, so a ready response wins).
    pub fn poll_head_until(
        &mut self,
        deadline: Instant,
        cx: &mut Context<'_>,
    ) -> Poll<Result<ResponseHead, Rejection>> {
        if let Poll::Ready(r) = self.poll_head(cx) {
            return Poll::Ready(r);
        }
        match self.conn.timer.poll_until(deadline, cx) {
            Poll::Ready(()) => Poll::Ready(Err(Rejection::RESPONSE_TIMEOUT)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Sends the request (as far as the socket and the body allow) and reads
    /// the response head. Interim 1xx responses other than 101 are skipped:
    /// levee answers `Expect: 100-continue` itself.
    pub fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<ResponseHead, Rejection>> {
        loop {
            if !self.sent_all()
                && let Poll::Ready(Err(r)) = self.poll_send(cx)
            {
                return Poll::Ready(Err(r));
            }
            if !self.conn.rbuf.is_empty() {
                match parse_response_head(&mut self.conn.rbuf) {
                    Ok(Some(head))
                        if head.status.is_informational()
                            && head.status != http::StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        continue;
                    }
                    Ok(Some(head)) => return Poll::Ready(Ok(head)),
                    Ok(None) => {}
                    Err(r) => return Poll::Ready(Err(r)),
                }
            }
            match ready!(self.poll_read(cx)) {
                Ok(0) | Err(_) => {
                    return Poll::Ready(Err(Rejection::new(
                        ErrorKind::ConnectionTerminated,
                        "upstream closed the connection before a response",
                    )));
                }
                Ok(_) => {}
            }
        }
    }

    /// How the body of the response with this head will be read.
    pub fn plan(&self, head: &ResponseHead) -> BodyPlan {
        let framing = response_framing(head, self.head_request);
        BodyPlan {
            framing,
            // An upstream that answered before it had the whole request may
            // or may not read the rest: the connection's state is unknown.
            reusable: head.keep_alive && framing != Framing::UntilClose && self.sent_all(),
        }
    }

    /// Turns the exchange into the response body, read from the connection.
    pub fn into_body(self, plan: BodyPlan, state: Arc<EndpointState>) -> UpstreamBody {
        let mut body = UpstreamBody {
            decoder: Decoder::new(plan.framing, MAX_TRAILERS),
            reusable: plan.reusable,
            exchange: Some(self),
            state,
        };
        // Nothing to read (HEAD, 204, 304, a zero length): the connection
        // is free now, even if the body is never polled.
        if body.decoder.is_done() {
            body.finish();
        }
        body
    }

    /// The connection after a `101`, for a tunnel.
    pub fn into_upgraded(self) -> Upgraded {
        let conn = *self.conn;
        let mut rbuf = conn.rbuf;
        Upgraded {
            leftover: rbuf.split().freeze(),
            io: conn.io,
            open: conn.open,
        }
    }
}

/// What a response head says about reading its body.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyPlan {
    framing: Framing,
    /// The connection can be pooled after the body.
    reusable: bool,
}

/// A response body read from an upstream HTTP/1.1 connection. When it ends
/// cleanly, with the whole request sent, the connection goes back to its
/// pool.
pub(crate) struct UpstreamBody {
    /// `None` once the body ended (the connection pooled or closed).
    exchange: Option<Exchange>,
    decoder: Decoder,
    reusable: bool,
    state: Arc<EndpointState>,
}

impl UpstreamBody {
    fn finish(&mut self) {
        if let Some(ex) = self.exchange.take()
            && self.reusable
            && ex.sent_all()
        {
            self.state.pool.give_back(ex.conn, Instant::now());
        }
    }

    fn fail(&mut self, rejection: Rejection) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // Dropping the connection closes it: it is in an unknown state.
        self.exchange = None;
        Poll::Ready(Some(Err(BodyError::Upstream(rejection))))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(ex) = this.exchange.as_mut() else {
            return Poll::Ready(None);
        };
        if !ex.sent_all()
            && let Poll::Ready(Err(r)) = ex.poll_send(cx)
        {
            return this.fail(r);
        }
        loop {
            match this.decoder.decode(&mut ex.conn.rbuf) {
                Ok(Decoded::Data(data)) => {
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(t)) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => match ready!(ex.poll_read(cx)) {
                    Ok(0) => {
                        return match this.decoder.at_eof() {
                            Ok(()) => {
                                // Delimited by the close: over, and not reusable.
                                this.exchange = None;
                                Poll::Ready(None)
                            }
                            Err(_) => this.fail(Rejection::new(
                                ErrorKind::ConnectionTerminated,
                                "upstream closed the connection before a complete response",
                            )),
                        };
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return this.fail(Rejection::new(
                            ErrorKind::ConnectionTerminated,
                            "upstream connection failed mid-response",
                        ));
                    }
                },
                Err(mut r) => {
                    if r.kind == ErrorKind::BadRequest || r.kind == ErrorKind::HeaderTooLarge {
                        r = Rejection::new(ErrorKind::UpstreamProtocol, "malformed upstream response body");
                    }
                    return this.fail(r);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.exchange.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    #[tokio::test]
    async fn a_request_whose_body_failed_is_never_retried() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connect = || async {
            Conn::new(
                Stream::Plain(TcpStream::connect(addr).await.expect("connect")),
                None,
            )
        };
        // The client's body is cut short before levee could send anything.
        let (sender, body) = crate::body::channel(None);
        drop(sender);
        let headers = HeaderMap::new();
        let mut exchange = Exchange::new(
            connect().await,
            &Method::POST,
            "/",
            OutHead::Map(&headers),
            RequestBody::H1(body),
        );
        let rejection = std::future::poll_fn(|cx| exchange.poll_head(cx))
            .await
            .expect_err("the body failed");
        assert_eq!(exchange.written, 0, "nothing reached the socket");
        assert_eq!(rejection.kind, ErrorKind::BadRequest);
        assert!(!exchange.can_retry());
        // Sending it again would send a truncated body as a whole one.
        assert!(exchange.retry_on(connect().await).is_none());
    }

    #[tokio::test]
    async fn a_cut_short_body_stays_failed() {
        let (sender, body) = crate::body::channel(None);
        drop(sender);
        let mut body = std::pin::pin!(body);
        for _ in 0..3 {
            let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
            assert!(matches!(frame, Some(Err(BodyError::RequestAborted))), "{frame:?}");
        }
    }
}
