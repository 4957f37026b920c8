//! The proxy itself: route a request, choose an endpoint, forward it on a
//! pooled connection, and pass the response back.
//!
//! Everything that can go wrong ends here as a [`Rejection`], which
//! [`crate::respond`] turns into the client's response; the outcome is
//! counted once, when the response body ends.

mod headers;

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use levee_config::Protocol;
use levee_core::outcome::{ErrorKind, Rejection};
use tokio::time::Instant;

use crate::body::{BodyError, RequestBody, ResponseBody};
use crate::metrics::RouteMetrics;
use crate::respond::error_response;
use crate::router::{RouteInput, normalise_host};
use crate::server::{ConnInfo, Handler, h1};
use crate::snapshot::Snapshot;
use crate::upstream::{Connection, Endpoint, EndpointState, InFlight, Upstream};

pub(crate) use headers::via;

/// Upgraded upstream I/O for a `101 Switching Protocols` response, handed to
/// the client connection through the response's extensions (which require
/// `Clone`, hence the shared slot; only the connection takes it).
#[derive(Clone)]
pub(crate) struct UpstreamUpgrade(Arc<std::sync::Mutex<Option<hyper::upgrade::OnUpgrade>>>);

impl UpstreamUpgrade {
    fn new(on_upgrade: hyper::upgrade::OnUpgrade) -> UpstreamUpgrade {
        UpstreamUpgrade(Arc::new(std::sync::Mutex::new(Some(on_upgrade))))
    }

    pub(crate) fn take(&self) -> Option<hyper::upgrade::OnUpgrade> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// How many pooled connections to try when they turn out to be closed
/// before a new one is opened. Such attempts sent nothing, so any request
/// may move on to the next.
const STALE_ATTEMPTS: usize = 3;

pub(crate) struct Proxy {
    pub state: Arc<ArcSwap<Snapshot>>,
}

impl Handler for Proxy {
    async fn handle(&self, mut req: Request<RequestBody>, conn: &ConnInfo) -> Response<ResponseBody> {
        let start = Instant::now();
        let snap = self.state.load_full();
        let request_id = headers::ensure_request_id(req.headers_mut());

        let host_value = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let host = host_value
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .map(normalise_host);
        let route_index = snap.router.find(&RouteInput {
            listener: &conn.listener,
            method: req.method(),
            host: host.as_deref(),
            path: req.uri().path(),
            headers: req.headers(),
        });
        let Some(route) = route_index.map(|i| &snap.routes[i]) else {
            return self.fail(
                Rejection::new(ErrorKind::NoRoute, "no route matches the request"),
                &request_id,
                &snap.unmatched,
                start,
            );
        };
        let upstream = &snap.upstreams[route.upstream];
        let deadline = start + route.request_timeout;

        let hash = upstream.hash_key(&req, conn.peer.ip());
        let Some(selection) = upstream.selector.select(&**upstream, hash, fastrand::u64(..)) else {
            return self.fail(
                Rejection::new(ErrorKind::NoEndpoint, "no endpoint available"),
                &request_id,
                &route.metrics,
                start,
            );
        };
        let endpoint = &upstream.endpoints[selection.endpoint];
        let in_flight = InFlight::start(&endpoint.state);

        let upgrade = prepare_request(&mut req, conn, upstream.protocol, host_value.as_ref());
        let (mut res, sender) = match send(upstream, endpoint, req, deadline).await {
            Ok(r) => r,
            Err(rejection) => return self.fail(rejection, &request_id, &route.metrics, start),
        };

        if !h1::response_framing_is_strict(res.headers()) {
            // The connection's framing is in doubt: `sender` is dropped with
            // the response, which closes it rather than pooling it.
            return self.fail(
                Rejection::new(ErrorKind::UpstreamProtocol, "ambiguous upstream response framing"),
                &request_id,
                &route.metrics,
                start,
            );
        }
        let is_upgrade = res.status() == StatusCode::SWITCHING_PROTOCOLS;
        if is_upgrade && !upgrade {
            return self.fail(
                Rejection::new(ErrorKind::UpstreamProtocol, "upstream switched protocols unasked"),
                &request_id,
                &route.metrics,
                start,
            );
        }
        let upstream_version = res.version();
        let h = res.headers_mut();
        let upgrade_value = headers::strip_hop_by_hop(h, is_upgrade);
        if let Some(v) = upgrade_value {
            h.insert(header::UPGRADE, v);
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        h.append(header::VIA, via(version_str(upstream_version)));
        if !h.contains_key("x-request-id") {
            h.insert("x-request-id", request_id);
        }

        let mut completion = Completion {
            start,
            status: res.status().as_u16(),
            metrics: route.metrics.clone(),
            in_flight: Some(in_flight),
            pooled: None,
        };
        if is_upgrade {
            let on_upgrade = hyper::upgrade::on(&mut res);
            res.extensions_mut().insert(UpstreamUpgrade::new(on_upgrade));
        } else if let Some(sender) = sender {
            completion.pooled = Some((endpoint.state.clone(), sender));
        }
        res.map(|body| ResponseBody::upstream(body, deadline, completion))
    }

    fn reject(&self, rejection: Rejection, _conn: &ConnInfo) -> Response<ResponseBody> {
        let snap = self.state.load();
        self.fail(
            rejection,
            &HeaderValue::from_static(""),
            &snap.unmatched,
            Instant::now(),
        )
    }

    fn settings(&self) -> h1::Settings {
        h1::Settings::from_config(&self.state.load().config.server)
    }
}

impl Proxy {
    /// levee's own response for a failed request, counted like any other.
    fn fail(
        &self,
        rejection: Rejection,
        request_id: &HeaderValue,
        metrics: &Arc<RouteMetrics>,
        start: Instant,
    ) -> Response<ResponseBody> {
        let id = (!request_id.is_empty()).then_some(request_id);
        let completion = Completion {
            start,
            status: 0,
            metrics: metrics.clone(),
            in_flight: None,
            pooled: None,
        };
        completion.into_error_response(rejection, id)
    }
}

/// Rewrites a client's request for the upstream. Returns whether it is a
/// protocol upgrade being forwarded.
fn prepare_request(
    req: &mut Request<RequestBody>,
    conn: &ConnInfo,
    protocol: Protocol,
    host: Option<&HeaderValue>,
) -> bool {
    let received = version_str(req.version());
    let wants_trailers = headers::wants_trailers(req.headers());
    let asked_upgrade = req.version() == Version::HTTP_11 && req.headers().contains_key(header::UPGRADE);
    let upgrade = asked_upgrade && protocol == Protocol::Http1;
    let h = req.headers_mut();
    let upgrade_value = headers::strip_hop_by_hop(h, upgrade);
    headers::add_forwarding(
        h,
        &headers::Hop {
            client: conn.peer.ip(),
            proto: "http",
            host,
            received,
        },
    );
    match protocol {
        Protocol::Http1 => {
            if let Some(v) = upgrade_value {
                h.insert(header::UPGRADE, v);
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            if let Some(host) = host
                && !h.contains_key(header::HOST)
            {
                h.insert(header::HOST, host.clone());
            }
            // Origin form: the upstream sees the path, the host is in Host.
            if req.uri().scheme().is_some() {
                let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                if let Ok(uri) = Uri::try_from(pq) {
                    *req.uri_mut() = uri;
                }
            }
            *req.version_mut() = Version::HTTP_11;
        }
        Protocol::Http2 => {
            if wants_trailers {
                h.insert(header::TE, HeaderValue::from_static("trailers"));
            }
            // HTTP/2 carries the host as :authority.
            h.remove(header::HOST);
            let authority = host.and_then(|v| v.to_str().ok()).unwrap_or("localhost");
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            if let Ok(uri) = Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(pq)
                .build()
            {
                *req.uri_mut() = uri;
            }
            *req.version_mut() = Version::HTTP_2;
        }
    }
    upgrade
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        _ => "1.1",
    }
}

type Sent = (Response<Incoming>, Option<http1::SendRequest<RequestBody>>);

/// Sends the request to the endpoint: on a pooled connection if one is
/// usable, else on a new one. Waits for the response head until the
/// response-header timeout or the request's deadline, whichever is first.
async fn send(
    upstream: &Upstream,
    endpoint: &Endpoint,
    mut req: Request<RequestBody>,
    deadline: Instant,
) -> Result<Sent, Rejection> {
    let pool = &endpoint.state.pool;
    let head_deadline = deadline.min(Instant::now() + upstream.response_header_timeout);
    let mut pooled_attempts = 0;
    loop {
        let now = Instant::now();
        let (conn, reused) = match (pooled_attempts < STALE_ATTEMPTS)
            .then(|| pool.checkout(now))
            .flatten()
        {
            Some(c) => {
                pooled_attempts += 1;
                (c, true)
            }
            None => {
                pooled_attempts = STALE_ATTEMPTS;
                let timeout = upstream
                    .connect_timeout
                    .min(deadline.saturating_duration_since(now));
                let (conn, opened) = pool.connect(timeout).await.map_err(connect_rejection)?;
                if opened {
                    endpoint.state.connects.inc();
                }
                (conn, false)
            }
        };
        let mut err = match conn {
            Connection::H1(mut sender) => {
                // A pooled connection may still be finishing its last
                // exchange; a closed one fails below and the next is tried.
                if tokio::time::timeout_at(head_deadline, sender.ready())
                    .await
                    .is_err()
                {
                    return Err(response_timeout());
                }
                match tokio::time::timeout_at(head_deadline, sender.try_send_request(req)).await {
                    Ok(Ok(res)) => return Ok((res, Some(sender))),
                    Ok(Err(e)) => e,
                    Err(_) => return Err(response_timeout()),
                }
            }
            Connection::H2(mut sender) => {
                if tokio::time::timeout_at(head_deadline, sender.ready())
                    .await
                    .is_err()
                {
                    return Err(response_timeout());
                }
                match tokio::time::timeout_at(head_deadline, sender.try_send_request(req)).await {
                    Ok(Ok(res)) => return Ok((res, None)),
                    Ok(Err(e)) => e,
                    Err(_) => return Err(response_timeout()),
                }
            }
        };
        match err.take_message() {
            // Not sent at all: safe to try another connection, whatever the method.
            Some(r) if reused || pooled_attempts < STALE_ATTEMPTS => req = r,
            _ => return Err(classify(err.error())),
        }
    }
}

fn response_timeout() -> Rejection {
    Rejection::new(ErrorKind::ResponseTimeout, "upstream response timed out")
}

fn connect_rejection(kind: ErrorKind) -> Rejection {
    let detail = match kind {
        ErrorKind::ConnectionTimeout => "connecting to the upstream timed out",
        ErrorKind::DnsError => "upstream name did not resolve",
        ErrorKind::ConnectionTerminated => "upstream closed the connection during the handshake",
        _ => "upstream refused the connection",
    };
    Rejection::new(kind, detail)
}

/// Classifies a failed exchange with an upstream.
pub(crate) fn classify(e: &hyper::Error) -> Rejection {
    // The client's body failing is the client's fault, not the upstream's;
    // hyper reports a body it cannot decode as invalid data or input.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(BodyError::RequestAborted | BodyError::Downstream(_)) = s.downcast_ref::<BodyError>() {
            return Rejection::new(ErrorKind::BadRequest, "request body ended early");
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                    return malformed_response();
                }
                std::io::ErrorKind::UnexpectedEof => return incomplete_response(),
                _ => {}
            }
        }
        source = s.source();
    }
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        malformed_response()
    } else if e.is_incomplete_message() {
        incomplete_response()
    } else if e.is_timeout() {
        response_timeout()
    } else {
        Rejection::new(
            ErrorKind::ConnectionTerminated,
            "upstream connection failed before a response",
        )
    }
}

fn malformed_response() -> Rejection {
    Rejection::new(ErrorKind::UpstreamProtocol, "malformed upstream response")
}

fn incomplete_response() -> Rejection {
    Rejection::new(
        ErrorKind::ConnectionTerminated,
        "upstream closed the connection before a complete response",
    )
}

/// Accounting for one request, run once when its response ends or is dropped.
pub(crate) struct Completion {
    start: Instant,
    status: u16,
    metrics: Arc<RouteMetrics>,
    in_flight: Option<InFlight>,
    pooled: Option<(Arc<EndpointState>, http1::SendRequest<RequestBody>)>,
}

impl Completion {
    /// levee's response for this request after all, counted as such. The
    /// upstream connection, if any, is broken and is not pooled.
    pub(crate) fn into_error_response(
        mut self,
        rejection: Rejection,
        request_id: Option<&HeaderValue>,
    ) -> Response<ResponseBody> {
        self.metrics.generated(rejection.kind);
        self.status = rejection.kind.status();
        self.pooled = None;
        error_response(rejection, request_id).map(|b| b.with_completion(self))
    }

    /// `clean`: the body reached its end, so the connection can be reused.
    pub(crate) fn finish(mut self, clean: bool) {
        let now = Instant::now();
        self.metrics
            .record(self.status, now.duration_since(self.start).as_secs_f64());
        if let Some((state, sender)) = self.pooled.take()
            && clean
        {
            state.pool.give_back(sender, now);
        }
        drop(self.in_flight.take());
    }
}
