//! levee's answer to a request, as the client connection receives it.
//!
//! An [`Answer`] has its parts as explicit fields, owned by whoever
//! finishes the exchange (the HTTP/1 or HTTP/2 connection): the head (a
//! header map, or the lines an HTTP/1.1 upstream sent for an HTTP/1 client),
//! the [`ResponseBody`], the upstream connection after a `101`, and the
//! request's accounting. The connection streams the body through
//! [`Accounted`], which counts what passes and settles the accounting when
//! the body ends, fails or is dropped.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::body::BodyError;
use crate::codec::raw::RawOut;
use crate::completion::Completion;
use crate::fault::Paced;
use crate::upstream::h1::{Upgraded, UpstreamBody};

/// levee's answer to one request.
pub(crate) struct Answer {
    /// Status, version and (unless `raw` is set) the fields.
    pub parts: http::response::Parts,
    /// The head as an HTTP/1.1 upstream sent it, forwarded as those lines
    /// to an HTTP/1 client; `parts.headers` is then empty. Never set for an
    /// HTTP/2 client.
    pub raw: Option<RawOut>,
    pub body: ResponseBody,
    /// The upstream connection after a `101 Switching Protocols`, for the
    /// client connection to tunnel to. Boxed: it is rare, and every answer
    /// moves a few times on its way.
    pub upgraded: Option<Box<Upgraded>>,
    /// The request's metrics and access log line, settled when the answer
    /// is finished (see [`Accounted`]). `None` for an answer that replaces
    /// one already counted: an upstream body that failed before any of it
    /// reached the client.
    pub accounting: Option<Completion>,
}

/// An upstream's response body, by the protocol it came over.
pub(crate) enum UpstreamKind {
    H1(UpstreamBody),
    H2(Incoming),
}

impl UpstreamKind {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self {
            UpstreamKind::H1(b) => Pin::new(b).poll_frame(cx),
            UpstreamKind::H2(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::UpstreamH2),
        }
    }
}

/// A response body on its way to a client: an upstream's, streamed under
/// the request's deadline, or a short one levee wrote itself.
pub struct ResponseBody {
    inner: Inner,
}

enum Inner {
    Full(Option<Bytes>),
    /// Sent no faster than an injected response rate. Boxed: rare.
    Paced(Box<Paced<ResponseBody>>),
    Upstream {
        body: UpstreamKind,
        /// The route's whole-request deadline still applies to the body.
        deadline: Instant,
        /// Created only when the body has to wait, so a response that is
        /// already complete costs no timer.
        sleep: Option<Pin<Box<Sleep>>>,
    },
}

impl ResponseBody {
    pub fn empty() -> ResponseBody {
        ResponseBody::full(Bytes::new())
    }

    pub fn full(bytes: Bytes) -> ResponseBody {
        ResponseBody {
            inner: Inner::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }

    /// This body, sent no faster than `bytes_per_second` (an injected
    /// fault).
    pub(crate) fn paced(self, bytes_per_second: u64) -> ResponseBody {
        ResponseBody {
            inner: Inner::Paced(Box::new(Paced::new(self, bytes_per_second))),
        }
    }

    pub(crate) fn upstream(body: UpstreamKind, deadline: Instant) -> ResponseBody {
        ResponseBody {
            inner: Inner::Upstream {
                body,
                deadline,
                sleep: None,
            },
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    // Inlined into `Accounted`'s, its one caller on a request's way.
    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().inner {
            Inner::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Inner::Paced(paced) => paced.poll_frame(cx),
            Inner::Upstream {
                body,
                deadline,
                sleep,
            } => match body.poll_frame(cx) {
                // Checked on every data frame, not only when waiting: a body
                // that is always ready would otherwise never see its
                // deadline. Its end (or trailers) still passes: a response
                // that is complete is not cut.
                Poll::Ready(Some(Ok(frame))) if frame.is_data() && Instant::now() >= *deadline => {
                    Poll::Ready(Some(Err(BodyError::Timeout)))
                }
                Poll::Ready(frame) => Poll::Ready(frame),
                Poll::Pending => {
                    let sleep = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(*deadline)));
                    match sleep.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Timeout))),
                        Poll::Pending => Poll::Pending,
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(data) => data.is_none(),
            Inner::Paced(paced) => paced.is_end_stream(),
            Inner::Upstream { body, .. } => match body {
                UpstreamKind::H1(b) => b.is_end_stream(),
                UpstreamKind::H2(b) => b.is_end_stream(),
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Inner::Paced(paced) => paced.size_hint(),
            Inner::Upstream { body, .. } => match body {
                UpstreamKind::H1(b) => b.size_hint(),
                UpstreamKind::H2(b) => b.size_hint(),
            },
        }
    }
}

/// A body with the request's accounting: counts the bytes that pass, and
/// settles the accounting when the body ends, fails or is dropped (the
/// client went away, or a write failed), whichever comes first.
pub(crate) struct Accounted {
    body: ResponseBody,
    accounting: Option<Completion>,
}

impl Accounted {
    pub fn new(body: ResponseBody, accounting: Option<Completion>) -> Accounted {
        let mut accounted = Accounted { body, accounting };
        // A body with nothing to send is finished before any poll.
        accounted.finish_if_ended();
        accounted
    }

    fn finish_if_ended(&mut self) {
        if self.body.is_end_stream() {
            drop(self.accounting.take());
        }
    }

    /// Drops the body and settles the accounting, as dropping the whole
    /// would, but in place: moving it out to drop it copies it (callgrind).
    pub fn end(&mut self) {
        self.body = ResponseBody::empty();
        drop(self.accounting.take());
    }

    /// The accounting, for an answer that replaces this one before any of
    /// it reached the client; `None` once settled.
    pub fn take_accounting(&mut self) -> Option<Completion> {
        self.accounting.take()
    }
}

impl Body for Accounted {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(c)) = (frame.data_ref(), &mut this.accounting) {
                    c.sent(data.len());
                }
                this.finish_if_ended();
            }
            Poll::Ready(None | Some(Err(_))) => drop(this.accounting.take()),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use http::{HeaderMap, Method};
    use http_body_util::BodyExt;
    use levee_config::{EndpointAddress, Protocol};
    use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::body::RequestBody;
    use crate::metrics::{EndpointLabels, Metrics};
    use crate::upstream::conn::Conn;
    use crate::upstream::h1::{Exchange, OutHead};
    use crate::upstream::{Counters, EndpointState, Pool, PoolSettings};

    fn response_body(upstream: UpstreamBody, deadline: Instant) -> ResponseBody {
        ResponseBody::upstream(UpstreamKind::H1(upstream), deadline)
    }

    #[test]
    fn accounting_is_settled_with_the_last_frame_or_at_once_for_no_body() {
        let route = Metrics::new().route("r", "u", None);
        let completion = Completion::new(Instant::now(), 200, route.clone(), None);
        let mut body = Accounted::new(ResponseBody::full(Bytes::from_static(b"abc")), Some(completion));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let frame = Pin::new(&mut body).poll_frame(&mut cx);
        assert!(matches!(frame, Poll::Ready(Some(Ok(_)))));
        assert!(body.take_accounting().is_none(), "settled with its last frame");

        let completion = Completion::new(Instant::now(), 204, route, None);
        let mut empty = Accounted::new(ResponseBody::empty(), Some(completion));
        assert!(empty.take_accounting().is_none(), "settled before any poll");
    }

    /// An upstream body read from a real connection whose origin sends
    /// `response` at once and then holds the connection open.
    async fn upstream_body(response: Vec<u8>) -> (UpstreamBody, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let origin = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut scratch = [0u8; 1024];
            let _ = s.read(&mut scratch).await.expect("request");
            s.write_all(&response).await.expect("response");
            let _ = s.read(&mut scratch).await;
        });
        let conn = Conn::new(
            crate::upstream::stream::Stream::Plain(TcpStream::connect(addr).await.expect("connect")),
            None,
        );
        let headers = HeaderMap::new();
        let mut exchange = Exchange::new(
            conn,
            &Method::GET,
            "/",
            OutHead::Map(&headers),
            RequestBody::Empty,
        );
        let head = std::future::poll_fn(|cx| exchange.poll_head(cx))
            .await
            .expect("head");
        let plan = exchange.plan(&head);
        let settings = PoolSettings {
            protocol: Protocol::Http1,
            max_idle: 1,
            idle_timeout: Duration::from_secs(1),
        };
        let labels = EndpointLabels {
            upstream: "u".into(),
            region: "r".into(),
            endpoint: addr.to_string(),
        };
        let state = Arc::new(EndpointState::new(
            Pool::new(
                EndpointAddress::Ip(addr),
                settings,
                Arc::new(Counters::new(levee_core::retry::Budget::new(20, 10))),
            ),
            Gauge::default(),
            Counter::default(),
            Metrics::new().endpoint(&labels),
        ));
        (exchange.into_body(plan, state), origin)
    }

    #[tokio::test]
    async fn the_deadline_holds_for_a_body_that_is_always_ready() {
        const LEN: usize = 256 * 1024;
        let mut response = format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\n\r\n").into_bytes();
        response.resize(response.len() + LEN, b'x');
        let (upstream, origin) = upstream_body(response).await;
        // The whole body waits in the socket: every poll would find data.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut body = response_body(upstream, Instant::now());
        match body.frame().await {
            Some(Err(BodyError::Timeout)) => {}
            Some(Ok(f)) => panic!(
                "a frame after the deadline: {:?} bytes",
                f.data_ref().map(Bytes::len)
            ),
            other => panic!("{other:?}"),
        }
        origin.abort();
    }

    #[tokio::test]
    async fn a_body_that_ended_is_not_cut_by_the_deadline() {
        let response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".to_vec();
        let (upstream, origin) = upstream_body(response).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut body = response_body(upstream, Instant::now());
        assert!(body.frame().await.is_none(), "the end, not a timeout");
        origin.abort();
    }
}
