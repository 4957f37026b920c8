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
use levee_config::{EndpointAddress, Protocol};
use levee_core::outcome::{ErrorKind, Rejection};
use tokio::time::Instant;

use crate::body::{BodyError, RequestBody, ResponseBody, UpstreamKind};
use crate::codec::parse::RawRequest;
use crate::codec::raw::{Known, MAX_RAW_FIELDS, RawHead, RawOut};
use crate::fields::FieldsView;
use crate::metrics::RouteMetrics;
use crate::respond::error_response;
use crate::router::{RouteInput, normalise_host};
use crate::server::{ConnInfo, Handler, h1};
use crate::snapshot::Snapshot;
use crate::upstream::h1::{BodyPlan, Exchange, OutHead, Upgraded};
use crate::upstream::{Endpoint, InFlight, Upstream};

pub(crate) use headers::{ClientAddr, via};

/// The upstream connection after a `101 Switching Protocols`, handed to the
/// client connection through the response's extensions (which require
/// `Clone`, hence the shared slot; only the connection takes it).
#[derive(Clone)]
pub(crate) struct UpstreamUpgrade(Arc<std::sync::Mutex<Option<Upgraded>>>);

impl UpstreamUpgrade {
    fn new(upgraded: Upgraded) -> UpstreamUpgrade {
        UpstreamUpgrade(Arc::new(std::sync::Mutex::new(Some(upgraded))))
    }

    pub(crate) fn take(&self) -> Option<Upgraded> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

pub(crate) struct Proxy {
    pub state: Arc<ArcSwap<Snapshot>>,
}

impl Handler for Proxy {
    async fn handle(
        &self,
        mut req: Request<RequestBody>,
        mut raw: Option<RawRequest>,
        conn: &ConnInfo,
    ) -> Response<ResponseBody> {
        let start = Instant::now();
        let snap = self.state.load_full();
        // With `raw`, the request's fields are the lines received (the
        // request's own map is empty); without, the map.
        let (request_id, id_generated) = match &raw {
            Some(r) => match r.value_of(Known::RequestId).filter(headers::usable_request_id) {
                Some(id) => (id, false),
                None => (headers::new_request_id(), true),
            },
            None => (headers::ensure_request_id(req.headers_mut()), false),
        };
        let host_value = match &raw {
            Some(r) => r.host(),
            None => req.headers().get(header::HOST).cloned().or_else(|| {
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            }),
        };
        let view = match &raw {
            Some(r) => FieldsView::Raw(r),
            None => FieldsView::Map(req.headers()),
        };
        let host = host_value
            .as_ref()
            .filter(|_| snap.router.uses_hosts())
            .and_then(|h| h.to_str().ok())
            .map(normalise_host);
        let route_index = snap.router.find(&RouteInput {
            listener: &conn.listener,
            method: req.method(),
            host: host.as_deref(),
            path: req.uri().path(),
            headers: view,
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

        let hash = upstream.hash_key(view, conn.peer.ip());
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

        let client_h1 = req.version() != Version::HTTP_2;
        let hop = headers::Hop {
            client: &conn.client,
            proto: "http",
            host: host_value.as_ref(),
            received: version_str(req.version()),
        };
        // Raw lines go only to an HTTP/1.1 upstream; HTTP/2 needs a map.
        if upstream.protocol == Protocol::Http2
            && let Some(r) = raw.take()
        {
            let map = req.headers_mut();
            *map = r.into_map(8);
            if id_generated {
                map.insert(headers::X_REQUEST_ID, request_id.clone());
            }
        }
        let (upgrade, sent) = match raw {
            Some(r) => {
                let upgrade =
                    req.version() == Version::HTTP_11 && r.kept().any(|(_, f)| f.known == Known::Upgrade);
                let plan = headers::raw_plan(
                    &r,
                    &hop,
                    id_generated.then_some(&request_id),
                    upgrade,
                    &endpoint.address,
                );
                let out = OutHead::Raw {
                    head: &r.head,
                    skip: plan.skip,
                    extra: &plan.extra,
                };
                let (parts, body) = req.into_parts();
                (
                    upgrade,
                    send_h1(upstream, endpoint, &parts, out, body, deadline).await,
                )
            }
            None => {
                let upgrade = prepare_request(&mut req, &hop, upstream.protocol, &endpoint.address);
                let sent = match upstream.protocol {
                    Protocol::Http1 => {
                        let (parts, body) = req.into_parts();
                        send_h1(
                            upstream,
                            endpoint,
                            &parts,
                            OutHead::Map(&parts.headers),
                            body,
                            deadline,
                        )
                        .await
                    }
                    Protocol::Http2 => send_h2(upstream, endpoint, req, deadline).await,
                };
                (upgrade, sent)
            }
        };
        let (mut parts, fields, body) = match sent {
            Ok(r) => r,
            Err(rejection) => return self.fail(rejection, &request_id, &route.metrics, start),
        };
        let is_upgrade = parts.status == StatusCode::SWITCHING_PROTOCOLS;
        if is_upgrade && !upgrade {
            return self.fail(
                Rejection::new(ErrorKind::UpstreamProtocol, "upstream switched protocols unasked"),
                &request_id,
                &route.metrics,
                start,
            );
        }
        let via = via(version_str(parts.version));
        // An HTTP/1.1 response for an HTTP/1 client is forwarded as the lines
        // that arrived; anything else goes through a header map.
        let raw_out = match fields {
            Fields::Raw(raw) if client_h1 && !is_upgrade && raw.fields.len() <= MAX_RAW_FIELDS => {
                let skip = raw.hop_by_hop_mask();
                let has_id = raw
                    .fields
                    .iter()
                    .enumerate()
                    .any(|(i, f)| f.known == Known::RequestId && skip & (1 << i) == 0);
                Some(RawOut {
                    head: raw,
                    skip,
                    via,
                    request_id: (!has_id).then_some(request_id),
                })
            }
            fields => {
                let mut h = match fields {
                    Fields::Raw(raw) => raw.to_header_map(3),
                    Fields::Map(map) => map,
                };
                if headers::strip_hop_by_hop(&mut h, is_upgrade) {
                    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                }
                h.append(header::VIA, via);
                if !h.contains_key(&headers::X_REQUEST_ID) {
                    h.insert(headers::X_REQUEST_ID, request_id);
                }
                parts.headers = h;
                None
            }
        };
        let completion = Completion::new(
            start,
            parts.status.as_u16(),
            route.metrics.clone(),
            Some(in_flight),
        );
        let mut body = match body {
            Received::H1(exchange, _) if is_upgrade => {
                parts
                    .extensions
                    .insert(UpstreamUpgrade::new(exchange.into_upgraded()));
                ResponseBody::empty().with_completion(completion)
            }
            Received::H1(exchange, plan) => {
                let body = exchange.into_body(plan, endpoint.state.clone());
                ResponseBody::upstream(UpstreamKind::H1(body), deadline, completion)
            }
            Received::H2(incoming) => {
                ResponseBody::upstream(UpstreamKind::H2(incoming), deadline, completion)
            }
        };
        if let Some(raw) = raw_out {
            body.set_raw_head(raw);
        }
        Response::from_parts(parts, body)
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
        let completion = Completion::new(start, 0, metrics.clone(), None);
        completion.into_error_response(rejection, id)
    }
}

/// Rewrites a client's request (its fields as a map) for the upstream.
/// A request without a host (HTTP/1.0 allows that) is sent with the
/// endpoint's address as its host. Returns whether it is a protocol upgrade
/// being forwarded.
fn prepare_request(
    req: &mut Request<RequestBody>,
    hop: &headers::Hop<'_>,
    protocol: Protocol,
    endpoint: &EndpointAddress,
) -> bool {
    let wants_trailers = headers::wants_trailers(req.headers());
    let asked_upgrade = req.version() == Version::HTTP_11 && req.headers().contains_key(header::UPGRADE);
    let upgrade = asked_upgrade && protocol == Protocol::Http1;
    let h = req.headers_mut();
    let upgrade_kept = headers::strip_hop_by_hop(h, upgrade);
    headers::add_forwarding(h, hop);
    match protocol {
        Protocol::Http1 => {
            if upgrade_kept {
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            if !h.contains_key(header::HOST) {
                let host = match hop.host {
                    Some(host) => Some(host.clone()),
                    None => HeaderValue::from_str(&endpoint.to_string()).ok(),
                };
                if let Some(host) = host {
                    h.insert(header::HOST, host);
                }
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
            let fallback;
            let authority = match hop.host.and_then(|v| v.to_str().ok()) {
                Some(host) => host,
                None => {
                    fallback = endpoint.to_string();
                    &fallback
                }
            };
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

/// A response head and what its body will be read from.
enum Received {
    H1(Exchange, BodyPlan),
    H2(hyper::body::Incoming),
}

/// A response head's fields: as received from an HTTP/1.1 upstream, or the
/// map hyper built from HTTP/2.
enum Fields {
    Raw(RawHead),
    Map(http::HeaderMap),
}

type Sent = (http::response::Parts, Fields, Received);

/// Sends the request on a pooled HTTP/1.1 connection, or a new one, and
/// waits for the response head until the response-header timeout or the
/// request's deadline, whichever is first.
async fn send_h1(
    upstream: &Upstream,
    endpoint: &Endpoint,
    parts: &http::request::Parts,
    head: OutHead<'_>,
    body: RequestBody,
    deadline: Instant,
) -> Result<Sent, Rejection> {
    let pool = &endpoint.state.pool;
    let now = Instant::now();
    let head_deadline = deadline.min(now + upstream.response_header_timeout);
    let (conn, reused) = match pool.checkout(now) {
        Some(c) => (c, true),
        None => (connect_h1(upstream, endpoint, deadline).await?, false),
    };
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut exchange = Exchange::new(conn, &parts.method, target, head, body);
    let mut reused = reused;
    loop {
        let polled = std::future::poll_fn(|cx| exchange.poll_head_until(head_deadline, cx)).await;
        let rejection = match polled {
            Ok(head) => {
                let plan = exchange.plan(&head);
                let (mut parts, ()) = Response::new(()).into_parts();
                parts.status = head.status;
                parts.version = head.version;
                return Ok((parts, Fields::Raw(head.raw), Received::H1(exchange, plan)));
            }
            Err(r) => r,
        };
        // A pooled connection the upstream had closed, caught before any of
        // the request left levee: the request goes on a fresh connection,
        // whatever its method, since the upstream cannot have seen it.
        if reused && exchange.can_retry() {
            let fresh = connect_h1(upstream, endpoint, deadline).await?;
            if let Some(again) = exchange.retry_on(fresh) {
                exchange = again;
                reused = false;
                continue;
            }
        }
        return Err(rejection);
    }
}

async fn connect_h1(
    upstream: &Upstream,
    endpoint: &Endpoint,
    deadline: Instant,
) -> Result<Box<crate::upstream::h1::Conn>, Rejection> {
    let timeout = upstream
        .connect_timeout
        .min(deadline.saturating_duration_since(Instant::now()));
    let conn = endpoint
        .state
        .pool
        .connect_h1(timeout)
        .await
        .map_err(connect_rejection)?;
    endpoint.state.connects.inc();
    Ok(conn)
}

/// Sends the request on the endpoint's shared HTTP/2 connection.
async fn send_h2(
    upstream: &Upstream,
    endpoint: &Endpoint,
    req: Request<RequestBody>,
    deadline: Instant,
) -> Result<Sent, Rejection> {
    let now = Instant::now();
    let head_deadline = deadline.min(now + upstream.response_header_timeout);
    let timeout = upstream
        .connect_timeout
        .min(deadline.saturating_duration_since(now));
    let (mut sender, opened) = endpoint.state.pool.h2(timeout).await.map_err(connect_rejection)?;
    if opened {
        endpoint.state.connects.inc();
    }
    if tokio::time::timeout_at(head_deadline, sender.ready())
        .await
        .is_err()
    {
        return Err(response_timeout());
    }
    match tokio::time::timeout_at(head_deadline, sender.send_request(req)).await {
        Ok(Ok(res)) => {
            let (mut parts, body) = res.into_parts();
            let headers = std::mem::take(&mut parts.headers);
            Ok((parts, Fields::Map(headers), Received::H2(body)))
        }
        Ok(Err(e)) => Err(classify(&e)),
        Err(_) => Err(response_timeout()),
    }
}

fn response_timeout() -> Rejection {
    Rejection::new(ErrorKind::ResponseTimeout, "upstream response timed out")
}

fn connect_rejection(kind: ErrorKind) -> Rejection {
    let detail = match kind {
        ErrorKind::ConnectionTimeout => "connecting to the upstream timed out",
        ErrorKind::DnsError => "upstream name did not resolve",
        ErrorKind::DestinationUnreachable => "no route to the upstream",
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
        if let Some(e @ (BodyError::RequestAborted | BodyError::RequestTooLarge | BodyError::Downstream(_))) =
            s.downcast_ref::<BodyError>()
        {
            return RequestBody::rejection(e);
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
}

impl Completion {
    pub(crate) fn new(
        start: Instant,
        status: u16,
        metrics: Arc<RouteMetrics>,
        in_flight: Option<InFlight>,
    ) -> Completion {
        Completion {
            start,
            status,
            metrics,
            in_flight,
        }
    }

    /// levee's response for this request after all, counted as such.
    pub(crate) fn into_error_response(
        mut self,
        rejection: Rejection,
        request_id: Option<&HeaderValue>,
    ) -> Response<ResponseBody> {
        self.metrics.generated(rejection.kind);
        self.status = rejection.kind.status();
        error_response(rejection, request_id).map(|b| b.with_completion(self))
    }

    /// Records the request, when its response ended or was dropped.
    pub(crate) fn finish(mut self) {
        let now = Instant::now();
        self.metrics
            .record(self.status, now.duration_since(self.start).as_secs_f64());
        drop(self.in_flight.take());
    }
}
