//! One try of a request on one endpoint: a pooled HTTP/1.1 connection or
//! the endpoint's shared HTTP/2 connection, connect and response-head
//! deadlines, and what a failure means ([`classify`]). What to do with the
//! outcome is not decided here (see `levee_core::attempt`).

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, StatusCode, Version};
use levee_core::outcome::{ErrorKind, Rejection};
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::codec::raw::RawHead;
use crate::metrics::Limit;
use crate::upstream::classify::classify;
use crate::upstream::h1::{BodyPlan, Exchange, OutHead};
use crate::upstream::pool::OpenError;
use crate::upstream::{Endpoint, Upstream};

/// A response head and what its body will be read from (with, from
/// HTTP/2, the extensions hyper gave the response).
pub(super) enum Received {
    H1(Exchange, BodyPlan),
    H2(hyper::body::Incoming, http::Extensions),
}

/// A response head's fields: as received from an HTTP/1.1 upstream, or the
/// map hyper built from HTTP/2.
pub(super) enum Fields {
    Raw(RawHead),
    /// Boxed, as it is the rarer case: see [`Sent`].
    Map(Box<http::HeaderMap>),
}

/// A response's status line.
pub(super) struct StatusLine {
    pub status: StatusCode,
    pub version: Version,
}

/// A try's response head and body. Every reply moves a few times on its way
/// from the try to the answer, and a copy of more than 256 bytes costs
/// twice as much as a smaller one (callgrind): hence a status line rather
/// than `http::response::Parts`, and the boxed map.
pub(super) type Sent = (StatusLine, Fields, Received);

/// A failed try, with the request body when none of it was read (the
/// connection failed first), so that another try can send it.
pub(super) struct Failed {
    pub rejection: Rejection,
    pub body: Option<RequestBody>,
    /// Called off before anything was sent, because another connection to
    /// the endpoint failed while this try waited for one.
    pub redirected: bool,
}

impl Failed {
    fn without_body(rejection: Rejection) -> Failed {
        Failed {
            rejection,
            body: None,
            redirected: false,
        }
    }
}

/// What a try that found the endpoint gone meanwhile says, should no other
/// endpoint take it.
const REDIRECTED: Rejection = Rejection::new(
    ErrorKind::ConnectionRefused,
    "another connection to the upstream failed meanwhile",
);

/// One try of a request on one endpoint.
pub(super) struct Attempt<'a> {
    pub upstream: &'a Upstream,
    pub endpoint: &'a Endpoint,
    pub started: Instant,
    /// When the response head must have come (the per-try timeout, within
    /// the request's deadline).
    pub head_deadline: Instant,
}

impl Attempt<'_> {
    /// Sends the request on a pooled HTTP/1.1 connection, or a new one, and
    /// waits for the response head.
    pub async fn send_h1(
        &self,
        parts: &http::request::Parts,
        head: OutHead<'_>,
        body: RequestBody,
    ) -> Result<Sent, Failed> {
        let pool = &self.endpoint.state.pool;
        let (conn, mut reused) = match pool.checkout(self.started) {
            Some(c) => (c, true),
            None => match self.connect_h1().await {
                Ok(c) => (c, false),
                Err(e) => return Err(self.open_failed(e, Some(body))),
            },
        };
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut exchange = Exchange::new(conn, &parts.method, target, head, body);
        loop {
            let polled = std::future::poll_fn(|cx| exchange.poll_head_until(self.head_deadline, cx)).await;
            let rejection = match polled {
                Ok(head) => {
                    let plan = exchange.plan(&head);
                    let line = StatusLine {
                        status: head.status,
                        version: head.version,
                    };
                    return Ok((line, Fields::Raw(head.raw), Received::H1(exchange, plan)));
                }
                Err(r) => r,
            };
            // A pooled connection the upstream had closed, caught before any
            // of the request left levee: the request goes on a fresh
            // connection, whatever its method, since the upstream cannot
            // have seen it.
            if reused && exchange.can_retry() {
                match self.connect_h1().await {
                    Ok(fresh) => {
                        if let Some(again) = exchange.retry_on(fresh) {
                            exchange = again;
                            reused = false;
                            continue;
                        }
                    }
                    Err(e) => return Err(self.open_failed(e, exchange.into_untouched_body())),
                }
            }
            return Err(Failed::without_body(rejection));
        }
    }

    async fn connect_h1(&self) -> Result<Box<crate::upstream::conn::Conn>, OpenError> {
        // Connecting counts against the try's own deadline too.
        let timeout = self
            .upstream
            .connect_timeout()
            .min(self.head_deadline.saturating_duration_since(Instant::now()));
        let state = &self.endpoint.state;
        let limits = self.upstream.limits();
        let conn = match state.pool.connect_h1(timeout, limits).await {
            Err(OpenError::Full(Limit::Connections)) if self.upstream.close_an_idle_connection() => {
                state.pool.connect_h1(timeout, limits).await
            }
            opened => opened,
        }?;
        state.connects.inc();
        Ok(conn)
    }

    /// The failed try for a connection that could not be had, with the
    /// request body when none of it was sent.
    fn open_failed(&self, e: OpenError, body: Option<RequestBody>) -> Failed {
        let rejection = match e {
            OpenError::Failed(kind) => connect_rejection(kind),
            OpenError::Full(limit) => {
                self.upstream.overflowed(limit);
                Rejection::new(ErrorKind::ConnectionLimit, "too many connections to the upstream")
            }
            OpenError::Redirected => REDIRECTED,
        };
        Failed {
            rejection,
            body,
            redirected: e == OpenError::Redirected,
        }
    }

    /// Sends the request on the endpoint's shared HTTP/2 connection.
    pub async fn send_h2(&self, parts: &http::request::Parts, body: RequestBody) -> Result<Sent, Failed> {
        let timeout = self
            .upstream
            .connect_timeout()
            .min(self.head_deadline.saturating_duration_since(Instant::now()));
        let state = &self.endpoint.state;
        let (mut sender, opened) = match state.pool.h2(timeout, self.upstream.limits()).await {
            Ok(s) => s,
            Err(e) => return Err(self.open_failed(e, Some(body))),
        };
        if opened {
            state.connects.inc();
        }
        if tokio::time::timeout_at(self.head_deadline, sender.ready())
            .await
            .is_err()
        {
            return Err(Failed {
                rejection: Rejection::RESPONSE_TIMEOUT,
                body: Some(body),
                redirected: false,
            });
        }
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        match tokio::time::timeout_at(self.head_deadline, sender.send_request(req)).await {
            Ok(Ok(res)) => {
                let (parts, body) = res.into_parts();
                let line = StatusLine {
                    status: parts.status,
                    version: parts.version,
                };
                let fields = Fields::Map(Box::new(parts.headers));
                Ok((line, fields, Received::H2(body, parts.extensions)))
            }
            Ok(Err(e)) => Err(Failed::without_body(classify(&e))),
            Err(_) => Err(Failed::without_body(Rejection::RESPONSE_TIMEOUT)),
        }
    }
}

fn connect_rejection(kind: ErrorKind) -> Rejection {
    let detail = match kind {
        ErrorKind::ConnectionTimeout => "connecting to the upstream timed out",
        ErrorKind::DnsError => "upstream name did not resolve",
        ErrorKind::DestinationUnreachable => "no route to the upstream",
        ErrorKind::TlsCertificate => "upstream certificate refused",
        ErrorKind::TlsProtocol => "TLS handshake with the upstream failed",
        ErrorKind::ConnectionTerminated => "upstream closed the connection during the handshake",
        _ => "upstream refused the connection",
    };
    Rejection::new(kind, detail)
}

/// The `Retry-After` of a response: delay-seconds or an HTTP date.
pub(super) fn retry_after(fields: &Fields) -> Option<Duration> {
    let value = match fields {
        Fields::Raw(raw) => raw
            .fields
            .iter()
            .find(|f| raw.name(f).eq_ignore_ascii_case(b"retry-after"))
            .map(|f| raw.value(f)),
        Fields::Map(map) => map.get(header::RETRY_AFTER).map(HeaderValue::as_bytes),
    }?;
    let text = std::str::from_utf8(value).ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}
