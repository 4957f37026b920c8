//! Request bodies on their way to an upstream, streamed frame by frame.
//!
//! [`RequestBody`] is what the upstream client reads: bytes arriving on a
//! client's HTTP/1 connection (through [`channel`]) or HTTP/2 stream, or a
//! replay of them for a retry ([`Bodies`]). No body is ever held whole in
//! memory. (Response bodies are in `crate::response`.)

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use levee_core::sync::lock;
use tokio::sync::{Notify, mpsc};

/// Why a body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the client's request body ended early or was malformed")]
    RequestAborted,
    #[error("the client's request body is larger than allowed")]
    RequestTooLarge,
    #[error("the upstream response body did not complete within the request timeout")]
    Timeout,
    #[error("upstream body: {0}")]
    Upstream(levee_core::outcome::Rejection),
    #[error("upstream body: {0}")]
    UpstreamH2(#[source] hyper::Error),
    #[error("client body: {0}")]
    Downstream(#[source] hyper::Error),
}

/// A request body on its way to an upstream.
pub enum RequestBody {
    Empty,
    /// From a client's HTTP/1 connection.
    H1(H1Body),
    /// Another body as recorded for retries ([`Bodies`]).
    Replay(ReplayReader),
    /// From a client's HTTP/2 stream, counted against `server.max_body_bytes`.
    H2 {
        body: Incoming,
        limit: Option<u64>,
        seen: u64,
        /// Set once the body went over `limit`: it stays failed, so that no
        /// reader can mistake what follows for the rest of a whole body.
        too_large: bool,
    },
}

impl RequestBody {
    pub(crate) fn h2(body: Incoming, limit: Option<u64>) -> RequestBody {
        RequestBody::H2 {
            body,
            limit,
            seen: 0,
            too_large: false,
        }
    }

    /// How a failure of this body should be answered (the client's fault).
    pub(crate) fn rejection(e: &BodyError) -> levee_core::outcome::Rejection {
        use levee_core::outcome::{ErrorKind, Rejection};
        match e {
            BodyError::RequestTooLarge => Rejection::new(ErrorKind::BodyTooLarge, "request body too large"),
            _ => Rejection::new(ErrorKind::BadRequest, "request body ended early"),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::H1(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Replay(b) => b.poll(cx),
            RequestBody::H2 {
                body,
                limit,
                seen,
                too_large,
            } => {
                if *too_large {
                    return Poll::Ready(Some(Err(BodyError::RequestTooLarge)));
                }
                let frame = ready!(Pin::new(body).poll_frame(cx));
                if let (Some(Ok(f)), Some(max)) = (&frame, *limit) {
                    *seen += f.data_ref().map_or(0, |d| d.len() as u64);
                    if *seen > max {
                        *too_large = true;
                        return Poll::Ready(Some(Err(BodyError::RequestTooLarge)));
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(BodyError::Downstream)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::H1(b) => b.is_end_stream(),
            RequestBody::Replay(b) => b.is_end_stream(),
            RequestBody::H2 { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::H1(b) => b.size_hint(),
            RequestBody::Replay(b) => b.size_hint(),
            RequestBody::H2 { body, .. } => body.size_hint(),
        }
    }
}

/// Where each try of a request gets its body.
///
/// A body is streamed, never read whole before it is sent, so a retry can
/// send it again only if it was kept on the way: [`Bodies::Replay`] keeps
/// the frames the first try took (reference-counted slices, not copies) up
/// to the route's `retry.max_body_bytes`, and a retry reads them again
/// before the rest. A body larger than that cannot be sent twice. A body
/// that never left levee (the connection failed first) comes back whole and
/// needs no recording: that is how a non-idempotent request, whose body is
/// never recorded, is retried after a refused connection.
pub(crate) enum Bodies {
    /// Any number of tries, each with an empty body.
    Empty,
    /// The body, until a try takes it; back when it comes back untouched.
    Once(Option<RequestBody>),
    /// Recorded as the tries read it.
    Replay {
        recording: Arc<std::sync::Mutex<Recording>>,
        /// The body a failed try gave back untouched, to use before a
        /// reader of the recording.
        spare: Option<RequestBody>,
        started: bool,
    },
}

impl Bodies {
    /// `record` is whether retries may need the body again (an idempotent
    /// request on a route that retries); `limit` the most kept.
    pub fn new(body: RequestBody, record: bool, limit: u64) -> Bodies {
        if matches!(body, RequestBody::Empty) {
            return Bodies::Empty;
        }
        let size = body.size_hint().exact();
        if !record || limit == 0 || size.is_some_and(|n| n > limit) {
            return Bodies::Once(Some(body));
        }
        Bodies::Replay {
            recording: Arc::new(std::sync::Mutex::new(Recording {
                source: Some(body),
                chunks: Vec::new(),
                kept: 0,
                limit,
                overflow: false,
                ended: false,
                trailers: None,
                size,
                generation: 0,
            })),
            spare: None,
            started: false,
        }
    }

    /// The body for the next try, or `None` when it cannot be sent again.
    pub fn next(&mut self) -> Option<RequestBody> {
        match self {
            Bodies::Empty => Some(RequestBody::Empty),
            Bodies::Once(body) => body.take(),
            Bodies::Replay {
                recording,
                spare,
                started,
            } => {
                if let Some(b) = spare.take() {
                    return Some(b);
                }
                let mut r = lock(recording);
                if *started && r.overflow {
                    return None;
                }
                *started = true;
                // Only the newest reader may read: an older try's reader
                // (hyper's HTTP/2 client may keep one alive) must not take
                // frames from the client that the new one would then miss.
                r.generation += 1;
                Some(RequestBody::Replay(ReplayReader {
                    recording: recording.clone(),
                    generation: r.generation,
                    next: 0,
                    sent: 0,
                    trailers_sent: false,
                }))
            }
        }
    }

    /// Whether another try could get a body.
    pub fn can_resend(&self) -> bool {
        match self {
            Bodies::Empty => true,
            Bodies::Once(body) => body.is_some(),
            Bodies::Replay { recording, spare, .. } => spare.is_some() || !lock(recording).overflow,
        }
    }

    /// A body a failed try gave back without having read any of it.
    pub fn put_back(&mut self, body: Option<RequestBody>) {
        let Some(body) = body else { return };
        match self {
            Bodies::Empty => {}
            Bodies::Once(slot) => *slot = Some(body),
            Bodies::Replay { spare, .. } => *spare = Some(body),
        }
    }

    /// No more tries: nothing more is recorded. What was (at most the
    /// limit) stays until the request ends, since the current reader may
    /// not have replayed all of it yet.
    pub fn commit(&mut self) {
        if let Bodies::Replay { recording, .. } = self {
            lock(recording).overflow = true;
        }
    }
}

/// A request body being recorded for retries.
pub(crate) struct Recording {
    /// The client's body; `None` once it ended.
    source: Option<RequestBody>,
    chunks: Vec<Bytes>,
    kept: u64,
    limit: u64,
    /// More than `limit` went by (or the source failed): a new reader
    /// would not see the whole body.
    overflow: bool,
    /// The source ended, after `chunks` and `trailers`.
    ended: bool,
    trailers: Option<HeaderMap>,
    /// The whole body's length, when the client declared it.
    size: Option<u64>,
    /// The reader allowed to read (the newest).
    generation: u64,
}

/// One try's reading of a recorded body: what was recorded first, then the
/// rest from the client (recording it too).
pub struct ReplayReader {
    recording: Arc<std::sync::Mutex<Recording>>,
    generation: u64,
    /// The next recorded chunk to give.
    next: usize,
    /// Body bytes given so far.
    sent: u64,
    trailers_sent: bool,
}

impl ReplayReader {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut r = lock(&self.recording);
        if r.generation != self.generation {
            return Poll::Ready(Some(Err(BodyError::RequestAborted)));
        }
        if let Some(chunk) = r.chunks.get(self.next).cloned() {
            self.next += 1;
            self.sent += chunk.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if r.ended {
            if !self.trailers_sent
                && let Some(t) = r.trailers.clone()
            {
                self.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            return Poll::Ready(None);
        }
        let Some(source) = r.source.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(source).poll_frame(cx));
        let r = &mut *r;
        match frame {
            None => {
                r.ended = true;
                r.source = None;
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                // A failed body is never sent again.
                r.overflow = true;
                r.chunks = Vec::new();
                Poll::Ready(Some(Err(e)))
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                    if !r.overflow {
                        if r.kept + data.len() as u64 <= r.limit {
                            r.kept += data.len() as u64;
                            r.chunks.push(data.clone());
                            self.next += 1;
                        } else {
                            r.overflow = true;
                            r.chunks = Vec::new();
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    // Trailers end a body: a replay must send them too.
                    self.trailers_sent = true;
                    r.trailers = Some(t.clone());
                    r.ended = true;
                    r.source = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let r = lock(&self.recording);
        r.ended && self.next >= r.chunks.len() && (self.trailers_sent || r.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        match lock(&self.recording).size {
            Some(n) => SizeHint::with_exact(n.saturating_sub(self.sent)),
            None => SizeHint::default(),
        }
    }
}

/// What travels from an HTTP/1 connection to the body reader.
#[derive(Debug)]
pub(crate) enum Chunk {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete. Without it, a closed channel means the body
    /// was cut short: a truncated body must never look like a whole one.
    End,
}

/// Signals that the reader wants the body: levee sends `100 Continue` only
/// then, and a client waiting on it sends nothing before.
#[derive(Default)]
pub(crate) struct Want {
    wanted: AtomicBool,
    notify: Notify,
}

impl Want {
    pub async fn wanted(&self) {
        if !self.wanted.load(Ordering::Acquire) {
            self.notify.notified().await;
        }
    }
}

/// A body channel: the HTTP/1 connection sends, the upstream client reads.
/// One chunk of buffering: the client is read only as fast as the upstream
/// takes the body.
pub(crate) fn channel(length: Option<u64>) -> (BodySender, H1Body) {
    let (tx, rx) = mpsc::channel(1);
    let want = Arc::new(Want::default());
    (
        BodySender {
            tx,
            want: want.clone(),
        },
        H1Body {
            rx,
            want,
            remaining: length,
            done: false,
            aborted: false,
        },
    )
}

pub(crate) struct BodySender {
    pub tx: mpsc::Sender<Chunk>,
    pub want: Arc<Want>,
}

pub struct H1Body {
    rx: mpsc::Receiver<Chunk>,
    want: Arc<Want>,
    /// Bytes still to come, when the length is known.
    remaining: Option<u64>,
    done: bool,
    /// The body was cut short; it stays failed, so that no reader can take
    /// what it has seen for a whole body.
    aborted: bool,
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.aborted {
            return Poll::Ready(Some(Err(BodyError::RequestAborted)));
        }
        if self.done {
            return Poll::Ready(None);
        }
        if !self.want.wanted.swap(true, Ordering::AcqRel) {
            self.want.notify.notify_one();
        }
        match ready!(self.rx.poll_recv(cx)) {
            Some(Chunk::Data(data)) => {
                if let Some(r) = self.remaining.as_mut() {
                    *r = r.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Chunk::Trailers(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Some(Chunk::End) => {
                self.done = true;
                Poll::Ready(None)
            }
            None => {
                self.aborted = true;
                Poll::Ready(Some(Err(BodyError::RequestAborted)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;
    use http_body_util::BodyExt;

    use super::*;

    /// A client body that sends `pieces` then trailers and its end.
    fn client_body(pieces: &'static [&'static [u8]]) -> RequestBody {
        let (sender, body) = channel(None);
        tokio::spawn(async move {
            for p in pieces {
                let _ = sender.tx.send(Chunk::Data(Bytes::from_static(p))).await;
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("x-sum", http::HeaderValue::from_static("7"));
            let _ = sender.tx.send(Chunk::Trailers(trailers)).await;
            let _ = sender.tx.send(Chunk::End).await;
        });
        RequestBody::H1(body)
    }

    /// Data and trailers of a body, read to its end.
    async fn read_all(body: &mut RequestBody) -> (Vec<u8>, Option<HeaderMap>) {
        let (mut data, mut trailers) = (Vec::new(), None);
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("frame");
            match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        (data, trailers)
    }

    #[tokio::test]
    async fn a_retry_sends_the_whole_body_and_its_trailers_again() {
        let mut bodies = Bodies::new(client_body(&[b"ab", b"cd"]), true, 1024);
        let mut first = bodies.next().expect("a first body");
        // The first try reads one piece, then fails.
        let piece = first.frame().await.expect("a frame").expect("ok");
        assert_eq!(piece.into_data().expect("data"), "ab");
        assert!(bodies.can_resend());
        let mut second = bodies.next().expect("a second body");
        // The first try's reader may not take what the second needs.
        assert!(matches!(
            first.frame().await,
            Some(Err(BodyError::RequestAborted))
        ));
        let (data, trailers) = read_all(&mut second).await;
        assert_eq!(data, b"abcd");
        assert_eq!(trailers.expect("trailers")["x-sum"], "7");
        // A third try after the whole body went by gets it all again.
        let mut third = bodies.next().expect("a third body");
        let (data, trailers) = read_all(&mut third).await;
        assert_eq!(data, b"abcd");
        assert!(trailers.is_some(), "the trailers are replayed too");
        // After the last try is chosen, what was kept still serves it.
        bodies.commit();
        assert!(!bodies.can_resend());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_not_sent_twice() {
        let mut bodies = Bodies::new(client_body(&[b"ab", b"cd"]), true, 3);
        let mut first = bodies.next().expect("a first body");
        let (data, _) = read_all(&mut first).await;
        assert_eq!(data, b"abcd", "the first try gets it all");
        assert!(!bodies.can_resend());
        assert!(bodies.next().is_none());
        // A body never touched comes back whole, recorded or not.
        let mut once = Bodies::new(client_body(&[b"xy"]), false, 0);
        let body = once.next().expect("the body");
        assert!(once.next().is_none());
        once.put_back(Some(body));
        let (data, _) = read_all(&mut once.next().expect("given back")).await;
        assert_eq!(data, b"xy");
    }
}
