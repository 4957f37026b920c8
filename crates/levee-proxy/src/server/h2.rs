//! HTTP/2 from clients (h2c with prior knowledge, or h2 by ALPN), served
//! by hyper.
//!
//! HTTP/2's binary framing leaves no room for the HTTP/1 smuggling games,
//! and the h2 crate already refuses malformed pseudo-headers, uppercase and
//! connection-specific fields, and bodies that disagree with their
//! content-length. levee adds its own limits on top and hands each stream
//! to the same [`Handler`] as HTTP/1.
//!
//! Abuse of the protocol itself is held off in two layers: the limits h2
//! keeps, set explicitly here, and levee's [`guard`] for the floods h2 does
//! not count. Either way the connection ends in GOAWAY `ENHANCE_YOUR_CALM`,
//! counted in `levee_http2_abuse_total` by reason.

pub(crate) mod guard;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Poll, ready};
use std::time::Duration;

use crate::drain::Drain;
use crate::metrics::AbuseCounters;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use levee_core::outcome::{ErrorKind, Rejection};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use self::guard::Guarded;
use super::handler::Handler;
use super::settings::Settings;
use crate::body::RequestBody;
use crate::conn::ConnInfo;
use crate::response::{Accounted, Answer};
use crate::timer::LazyTimer;

/// Streams the client may reset while they still wait in h2's accept queue
/// (not yet handed to hyper, and counted against no other limit) before h2
/// ends the connection: h2's own bound for CVE-2023-44487, at its default.
/// Resets of streams already handed over are the guard's to count.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams h2 may reset for the client's errors (malformed requests, streams
/// over the concurrency cap, flow-control violations) over a connection's
/// life before it ends the connection; hyper's default, stated here so that
/// a change of hyper's cannot loosen it.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// How long a connection cut off by the guard gets to send its GOAWAY and
/// see the client close before it is dropped.
const ABUSE_LINGER: Duration = Duration::from_secs(2);

/// Spawns hyper's per-stream tasks on the gateway's tracker, so shutdown
/// waits for them like for connections, each under a [`StallWatch`].
#[derive(Clone)]
struct TrackedExecutor {
    tracker: TaskTracker,
    body_timeout: Duration,
}

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let watch = Arc::new(StallWatch::new());
        let body_timeout = self.body_timeout;
        self.tracker.spawn(async move {
            let stream = STALL_WATCH.scope(watch.clone(), fut);
            tokio::pin!(stream);
            let mut timer: Option<LazyTimer> = None;
            std::future::poll_fn(|cx| {
                if stream.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                // Only the stream's own polls change the watch, so what it
                // says now holds until the timer fires.
                let Some(since) = watch.stalled_since() else {
                    return Poll::Pending;
                };
                let timer = timer.get_or_insert_with(LazyTimer::new);
                ready!(timer.poll_until(since + body_timeout, cx));
                tracing::debug!("HTTP/2 client took no response data for the body timeout; stream reset");
                Poll::Ready(())
            })
            .await;
            // Dropping the stream's future resets the stream, if still open,
            // and releases the upstream exchange behind it.
        });
    }
}

tokio::task_local! {
    /// The watch of the stream whose task is running, for its response body.
    static STALL_WATCH: Arc<StallWatch>;
}

/// Whether a stream's client is keeping up with its response. hyper polls a
/// response body only when the client has granted flow-control window for
/// more; a client that stops granting it (or stops reading the socket)
/// would otherwise hold the stream, and the upstream exchange behind it,
/// for as long as it likes. So the time from a frame handed to hyper to
/// hyper asking for the next is bounded by `body_timeout`, as each write to
/// an HTTP/1 client is.
pub(crate) struct StallWatch {
    origin: Instant,
    /// When a frame was handed over and not yet followed by a poll, as
    /// milliseconds since `origin` plus one; zero when not waiting.
    since: AtomicU64,
}

impl StallWatch {
    fn new() -> StallWatch {
        StallWatch {
            origin: Instant::now(),
            since: AtomicU64::new(0),
        }
    }

    /// The response body was polled and returned a frame (`handed_over`) or
    /// not (pending, or its end).
    pub(crate) fn polled(&self, handed_over: bool) {
        let value = if handed_over {
            let millis = Instant::now().duration_since(self.origin).as_millis();
            u64::try_from(millis).unwrap_or(u64::MAX - 1) + 1
        } else {
            0
        };
        self.since.store(value, Ordering::Relaxed);
    }

    fn stalled_since(&self) -> Option<Instant> {
        let value = self.since.load(Ordering::Relaxed);
        (value > 0).then(|| self.origin + Duration::from_millis(value - 1))
    }
}

/// The streams open on one connection, to close it when it has been idle
/// (no stream open) for the keep-alive timeout. HTTP/2 PINGs keep a
/// connection alive at the protocol level but are no use to anyone.
struct Streams {
    start: Instant,
    active: AtomicUsize,
    /// Time since `start` when the last stream ended, in milliseconds.
    idle_since: AtomicU64,
    /// Streams opened, and the limit after which the connection is sent
    /// GOAWAY (0: none), as `server.max_requests_per_connection` asks.
    opened: AtomicU64,
    max_requests: u64,
    exhausted: tokio::sync::Notify,
}

impl Streams {
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.start + Duration::from_millis(self.idle_since.load(Ordering::Acquire));
        Some(now.saturating_duration_since(since))
    }
}

/// Counts a stream open until its response body is dropped (which hyper
/// does when the stream ends, completely or not), and carries the stream's
/// [`StallWatch`] to the body.
pub(crate) struct StreamGuard {
    streams: Arc<Streams>,
    watch: Option<Arc<StallWatch>>,
}

impl StreamGuard {
    fn open(streams: &Arc<Streams>) -> StreamGuard {
        streams.active.fetch_add(1, Ordering::AcqRel);
        let opened = streams.opened.fetch_add(1, Ordering::AcqRel) + 1;
        if opened == streams.max_requests {
            streams.exhausted.notify_one();
        }
        StreamGuard {
            streams: streams.clone(),
            watch: None,
        }
    }

    /// Called from the response body after each poll by hyper.
    pub(crate) fn polled(&self, handed_over: bool) {
        if let Some(w) = &self.watch {
            w.polled(handed_over);
        }
    }
}

/// An answer as hyper sends it on a stream: the head as a map (levee
/// forwards raw heads to HTTP/1 clients only), the body with the request's
/// accounting, and the stream's guard for as long as the body lives.
fn stream_response(answer: Box<Answer>, guard: StreamGuard) -> Response<StreamBody> {
    let answer = *answer;
    let body = StreamBody {
        body: Accounted::new(answer.body, answer.accounting),
        guard,
    };
    Response::from_parts(answer.parts, body)
}

/// A response body on an HTTP/2 stream.
pub(crate) struct StreamBody {
    body: Accounted,
    guard: StreamGuard,
}

impl http_body::Body for StreamBody {
    type Data = bytes::Bytes;
    type Error = crate::body::BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        this.guard
            .polled(matches!(polled, std::task::Poll::Ready(Some(Ok(_)))));
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let s = &self.streams;
        let millis = u64::try_from(Instant::now().duration_since(s.start).as_millis()).unwrap_or(u64::MAX);
        s.idle_since.store(millis, Ordering::Release);
        s.active.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) async fn serve<H, IO>(
    handler: Arc<H>,
    conn: Arc<ConnInfo>,
    io: IO,
    settings: &Settings,
    draining: &Drain,
    tracker: &TaskTracker,
    abuse: &AbuseCounters,
) where
    H: Handler,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = settings.limits;
    let max_body = settings.max_body;
    let streams = Arc::new(Streams {
        start: Instant::now(),
        active: AtomicUsize::new(0),
        idle_since: AtomicU64::new(0),
        opened: AtomicU64::new(0),
        max_requests: settings.max_requests,
        exhausted: tokio::sync::Notify::new(),
    });
    let counted = streams.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        let conn = conn.clone();
        let mut guard = StreamGuard::open(&counted);
        async move {
            // Runs in the stream's own task, where its watch is set.
            guard.watch = STALL_WATCH.try_with(Arc::clone).ok();
            let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
            let declared = req
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| crate::codec::parse::parse_content_length(v.as_bytes()));
            let res = if uri_len > limits.max_uri {
                handler.reject(
                    Rejection::new(ErrorKind::UriTooLong, "request target too long"),
                    &conn,
                )
            } else if req.headers().len() > limits.max_headers {
                handler.reject(
                    Rejection::new(ErrorKind::HeaderTooLarge, "too many header fields"),
                    &conn,
                )
            } else if declared.zip(max_body).is_some_and(|(n, max)| n > max) {
                handler.reject(
                    Rejection::new(ErrorKind::BodyTooLarge, "request body too large"),
                    &conn,
                )
            } else {
                let req = req.map(|body| RequestBody::h2(body, max_body));
                handler.handle(req, None, &conn).await
            };
            Ok::<_, Infallible>(stream_response(res, guard))
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TrackedExecutor {
        tracker: tracker.clone(),
        body_timeout: settings.body_timeout,
    });
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.h2.max_concurrent_streams)
        // Checked against the decoded size, so an HPACK bomb (one table
        // entry referenced over and over) is a 431 and, past four times
        // this, the connection's end: h2 stops decoding there.
        .max_header_list_size(u32::try_from(limits.max_head).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        // PINGs find dead peers under long streams; idleness is judged by
        // open streams, not by whether the peer answers PINGs.
        .keep_alive_interval(Some(settings.keepalive_timeout / 2))
        .keep_alive_timeout(settings.header_timeout);
    let (io, verdict) = Guarded::new(io, settings.h2.budgets);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let idle = settings.keepalive_timeout;
    let idle_watch = async {
        loop {
            let now = Instant::now();
            match streams.idle_for(now) {
                Some(d) if d >= idle => return,
                Some(d) => tokio::time::sleep(idle - d).await,
                None => tokio::time::sleep(idle).await,
            }
        }
    };
    enum Next {
        Ended,
        CutOff,
        GoAway,
    }
    let next = tokio::select! {
        _ = connection.as_mut() => Next::Ended,
        _ = verdict.tripped() => Next::CutOff,
        _ = draining.watch() => Next::GoAway,
        _ = idle_watch => Next::GoAway,
        _ = streams.exhausted.notified() => Next::GoAway,
    };
    let cut_off = match next {
        Next::Ended => false,
        Next::CutOff => true,
        Next::GoAway => {
            // GOAWAY: streams already open finish, new ones are refused.
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                _ = connection.as_mut() => false,
                _ = verdict.tripped() => true,
            }
        }
    };
    if cut_off {
        // The guard's GOAWAY goes out and the client may close; then the
        // connection is dropped, which resets its streams and so cancels
        // their upstream work.
        let _ = tokio::time::timeout(ABUSE_LINGER, connection.as_mut()).await;
    }
    if let Some(why) = verdict.reason() {
        abuse[why.index()].inc();
    }
}
