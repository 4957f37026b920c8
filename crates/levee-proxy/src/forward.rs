//! The proxy itself: route a request, choose an endpoint, forward it on a
//! pooled connection, and pass the response back.
//!
//! Everything that can go wrong ends here as a [`Rejection`], which
//! [`crate::respond`] turns into the client's response; the outcome is
//! counted once, when the response body ends.

mod headers;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use levee_config::ClientIpHeader;
use levee_config::{EndpointAddress, Protocol};
use levee_core::access::{client_from_chain, forwarded_for, x_forwarded_for};
use levee_core::concurrency::{self, Priority};
use levee_core::failover::{Loads, undamped};
use levee_core::id::ListenerName;
use levee_core::outcome::{Blame, Delivery, ErrorKind, Rejection};
use levee_core::outlier::Observation;
use levee_core::retry::{Reason, honour_retry_after, is_idempotent_method, may_retry};
use levee_core::select::Endpoints;
use tokio::time::Instant;

use crate::access_log::{self, Pending, Sink};
use crate::body::{Bodies, BodyError, RequestBody, ResponseBody, UpstreamKind};
use crate::codec::parse::RawRequest;
use crate::codec::raw::{Known, MAX_RAW_FIELDS, RawHead, RawOut};
use crate::fields::FieldsView;
use crate::metrics::{Limit, RouteMetrics};
use crate::ratelimit::{KeyInput, Limited, Rule};
use crate::respond::error_response;
use crate::router::{RouteInput, normalise_host};
use crate::server::{ConnInfo, Handler, ListenerPolicy};
use crate::snapshot::Snapshot;
use crate::upstream::h1::{BodyPlan, Exchange, OutHead, Upgraded};
use crate::upstream::pool::OpenError;
use crate::upstream::{Choice, Endpoint, InFlight, Slot, Upstream, millis};

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
    /// Where requests hand in their access log entries, when logging.
    pub access_log: ArcSwapOption<Sink>,
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
        let client_ip = client_ip(conn, view, &snap.config.server);
        let mut log = self.access_log.load().as_ref().map(|sink| {
            let head = access_log::Head {
                method: req.method(),
                uri: req.uri(),
                version: req.version(),
                host: host_value.as_ref(),
                fields: view,
                request_id: &request_id,
            };
            sink.begin(&snap, conn, client_ip, Some(head))
        });
        if let Some(rules) = snap.listener_limits(&conn.listener) {
            let input = KeyInput {
                client: client_ip,
                route: None,
                fields: view,
            };
            if let Some(limited) = first_limited(rules, &input, start).await {
                let rejection = Rejection::new(ErrorKind::RateLimited, "rate limit exceeded");
                return self.fail_with(
                    rejection,
                    limited.fields(),
                    &request_id,
                    &snap.unmatched,
                    start,
                    log,
                );
            }
        }
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
        if let (Some(log), Some(i)) = (&mut log, route_index) {
            log.route(i);
        }
        let Some(route) = route_index.map(|i| &snap.routes[i]) else {
            return self.fail(
                Rejection::new(ErrorKind::NoRoute, "no route matches the request"),
                &request_id,
                &snap.unmatched,
                start,
                log,
            );
        };
        let upstream = &snap.upstreams[route.upstream];
        let deadline = start + route.request_timeout;
        if !route.access.permits(client_ip) {
            return self.fail(
                Rejection::new(
                    ErrorKind::AccessDenied,
                    "the client address may not use this route",
                ),
                &request_id,
                &route.metrics,
                start,
                log,
            );
        }
        if !route.rate_limits.is_empty() {
            let input = KeyInput {
                client: client_ip,
                route: Some(&route.name),
                fields: view,
            };
            if let Some(limited) = first_limited(&route.rate_limits, &input, start).await {
                let rejection = Rejection::new(ErrorKind::RateLimited, "rate limit exceeded");
                return self.fail_with(
                    rejection,
                    limited.fields(),
                    &request_id,
                    &route.metrics,
                    start,
                    log,
                );
            }
        }

        // Held until this returns, with the response head or an error.
        let _awaiting_head = match &upstream.adaptive {
            None => None,
            Some(adaptive) => match upstream.counters.admit_adaptive(adaptive, route.priority) {
                Ok(awaiting) => Some(awaiting),
                Err(retry_after) => {
                    let class = Priority::ALL
                        .iter()
                        .position(|p| *p == route.priority)
                        .unwrap_or(1);
                    upstream.metrics.shed[class].inc();
                    let rejection =
                        Rejection::new(ErrorKind::Overloaded, "the upstream is at its concurrency limit");
                    let retry_after = (
                        header::RETRY_AFTER,
                        HeaderValue::from(retry_after.as_secs().max(1)),
                    );
                    return self.fail_with(rejection, [retry_after], &request_id, &route.metrics, start, log);
                }
            },
        };

        let hash = upstream.hash_key(view, client_ip);
        // The requests breaker: a full upstream fails fast rather than queue.
        let Some(admitted) = Slot::take(&upstream.counters, Limit::Requests, upstream.limits.max_requests)
        else {
            upstream.metrics.overflow(Limit::Requests);
            if upstream.counters.warn_now(start) {
                tracing::warn!(
                    upstream = %upstream.name,
                    limit = upstream.limits.max_requests,
                    "circuit breaker: too many requests in flight, answering 503 (logged at most every 10 s)",
                );
            }
            return self.fail(
                Rejection::new(
                    ErrorKind::ConnectionLimit,
                    "too many requests in flight to the upstream",
                ),
                &request_id,
                &route.metrics,
                start,
                log,
            );
        };

        let client_h1 = req.version() != Version::HTTP_2;
        let hop = headers::Hop {
            client: &conn.client,
            proto: if conn.tls { "https" } else { "http" },
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
        let (upgrade, head) = match raw {
            Some(r) => {
                let upgrade =
                    req.version() == Version::HTTP_11 && r.kept().any(|(_, f)| f.known == Known::Upgrade);
                (upgrade, Head::Raw(r))
            }
            None => (prepare_request(&mut req, &hop, upstream.protocol), Head::Map),
        };
        let (mut parts, body) = req.into_parts();
        let policy = &route.retry;
        let idempotent = policy.idempotent || is_idempotent_method(parts.method.as_str());
        let mut bodies = Bodies::new(body, idempotent && policy.attempts > 1, policy.max_body_bytes);
        let id_to_add = id_generated.then_some(&request_id);
        let mut tried = Tried::default();
        let mut retry_slot = None;
        let mut last_failure = Rejection::new(ErrorKind::NoEndpoint, "no endpoint available");
        // Hedging needs a request that can go to two endpoints at once: no
        // body, and a head that is the same for both.
        let hedge_after = policy
            .hedge_after
            .filter(|_| idempotent && matches!(bodies, Bodies::Empty) && hop.host.is_some());
        let done = loop {
            let now = Instant::now();
            let (Some(first), Some(body)) = (pick(upstream, &tried, hash, now), bodies.next()) else {
                count_retried(upstream, &tried, false);
                return self.fail(last_failure, &request_id, &route.metrics, start, log);
            };
            tried.push(first);
            if hop.host.is_none()
                && let Head::Map = head
            {
                set_default_host(&mut parts, upstream.protocol, &upstream.endpoints[first].address);
            }
            let request = Outgoing {
                upstream,
                parts: &parts,
                head: &head,
                hop: &hop,
                id_to_add,
                upgrade,
                per_try: policy.per_try_timeout.unwrap_or(upstream.response_header_timeout),
                deadline,
            };
            let done = match hedge_after.filter(|_| tried.len() < policy.attempts as usize) {
                // Boxed: two tries in one future would double the size of
                // every request's future, hedged or not.
                Some(after) => Box::pin(request.hedged(first, after, &mut tried, hash)).await,
                None => request.send(first, body, now).await,
            };
            if let Some(log) = &mut log {
                log.tried(done.endpoint, tried.len());
            }
            // A retry's breaker slot lasts until its try has an answer.
            drop(retry_slot.take());
            let answered = Instant::now();
            let elapsed = answered.saturating_duration_since(done.started);
            // Why this try might be repeated, whether the upstream may have
            // seen it, and how long it asked levee to wait.
            let repeatable = match &done.sent {
                Ok((head, fields, _)) => {
                    let status = head.status.as_u16();
                    let failed = status >= 500 || status == 429;
                    let observation = Observation::of_status(status);
                    observe(upstream, done.endpoint, answered, elapsed, observation, failed);
                    sample(upstream, answered, elapsed, Some(answered_with(status)));
                    if policy.retry_on.covers(Reason::Status(status)) {
                        last_failure = status_failure(status);
                        // A `Retry-After` beyond what the route waits: passed on.
                        match retry_after(fields) {
                            None => Some((Reason::Status(status), true, Duration::ZERO)),
                            Some(after) => honour_retry_after(after, policy.retry_after_max)
                                .map(|wait| (Reason::Status(status), true, wait)),
                        }
                    } else {
                        None
                    }
                }
                Err(failed) => {
                    let kind = failed.rejection.kind;
                    if kind.blame() == Blame::Upstream {
                        let observation = Observation::GatewayFailure;
                        observe(upstream, done.endpoint, answered, elapsed, observation, true);
                    }
                    sample(upstream, answered, elapsed, failed_with(kind));
                    last_failure = failed.rejection;
                    Reason::of_error(kind).map(|r| (r, kind.delivery() != Delivery::NotSent, Duration::ZERO))
                }
            };
            let retry = repeatable.filter(|&(reason, sent_any, _)| {
                tried.len() < policy.attempts as usize
                    && may_retry(reason, &policy.retry_on, idempotent, sent_any)
            });
            let mut done = done;
            if let Err(failed) = &mut done.sent {
                bodies.put_back(failed.body.take());
            }
            // The whole decision comes before the answer is set aside: when
            // a retry cannot happen after all, the upstream's answer (or
            // failure) is what the client gets.
            let planned = retry
                .filter(|_| bodies.can_resend())
                .and_then(|(reason, _, wait)| {
                    let delay = policy
                        .backoff
                        .delay(tried.len() as u32, fastrand::u64(..))
                        .max(wait);
                    let now = Instant::now();
                    if now + delay >= deadline {
                        return None;
                    }
                    pick(upstream, &tried, hash, now)?;
                    budget_allows(upstream, now).then_some((delay, reason))
                });
            let Some((delay, reason)) = planned else {
                if let Ok((head, _, _)) = &done.sent {
                    count_retried(upstream, &tried, head.status.as_u16() < 500);
                    bodies.commit();
                    break done;
                }
                count_retried(upstream, &tried, false);
                return self.fail(last_failure, &request_id, &route.metrics, start, log);
            };
            // The answer set aside closes its connection before the wait.
            drop(done);
            tokio::time::sleep(delay).await;
            // The breaker counts retries in flight, not retries waiting: a
            // burst of failures waits out its backoffs side by side.
            match retry_slot_for(upstream, reason) {
                Some(slot) => retry_slot = Some(slot),
                None => {
                    count_retried(upstream, &tried, false);
                    return self.fail(last_failure, &request_id, &route.metrics, start, log);
                }
            }
        };
        let endpoint = &upstream.endpoints[done.endpoint];
        let in_flight = done.in_flight;
        let (mut parts, fields, body) = match done.sent {
            Ok(sent) => sent,
            Err(failed) => return self.fail(failed.rejection, &request_id, &route.metrics, start, log),
        };
        let is_upgrade = parts.status == StatusCode::SWITCHING_PROTOCOLS;
        if is_upgrade && !upgrade {
            return self.fail(
                Rejection::new(ErrorKind::UpstreamProtocol, "upstream switched protocols unasked"),
                &request_id,
                &route.metrics,
                start,
                log,
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
        )
        .holding(admitted)
        .logging(log);
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

    fn reject(&self, rejection: Rejection, conn: &ConnInfo) -> Response<ResponseBody> {
        let snap = self.state.load_full();
        // Refused before its head could be read: only the peer is known.
        let log = (self.access_log.load().as_ref())
            .map(|sink| sink.begin(&snap, conn, conn.peer.ip().to_canonical(), None));
        self.fail(
            rejection,
            &HeaderValue::from_static(""),
            &snap.unmatched,
            Instant::now(),
            log,
        )
    }

    fn policy(&self, listener: &ListenerName) -> Option<Arc<ListenerPolicy>> {
        let snap = self.state.load();
        snap.listeners
            .iter()
            .find(|(name, _)| name == listener)
            .map(|(_, p)| p.clone())
    }
}

/// The client's address, for access lists, rate-limit keys and hashing:
/// the peer's, unless the peer is a trusted proxy that says otherwise.
/// (`X-Forwarded-For` itself still gets the peer appended: it records hops.)
fn client_ip(conn: &ConnInfo, view: FieldsView<'_>, server: &levee_config::Server) -> IpAddr {
    let peer = conn.peer.ip();
    let trusted = &server.trusted_proxies;
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer.to_canonical();
    }
    let name = match server.client_ip_header {
        ClientIpHeader::XForwardedFor => &headers::X_FORWARDED_FOR,
        ClientIpHeader::Forwarded => &header::FORWARDED,
    };
    // A value that is not text cannot name an address: it breaks the chain.
    let values = view
        .all(name)
        .into_iter()
        .map(|v| std::str::from_utf8(v).unwrap_or("?"));
    let chain = match server.client_ip_header {
        ClientIpHeader::XForwardedFor => x_forwarded_for(values),
        ClientIpHeader::Forwarded => forwarded_for(values),
    };
    client_from_chain(peer, chain.into_iter(), trusted)
}

/// The first of `rules` that refuses the request. Rules before it have
/// counted the request, as every rule sees each request that reaches it.
async fn first_limited(rules: &[Arc<Rule>], input: &KeyInput<'_>, start: Instant) -> Option<Limited> {
    let now = start.into_std();
    for rule in rules {
        if let Some(limited) = rule.check(input, now).await {
            return Some(limited);
        }
    }
    None
}

impl Proxy {
    /// levee's response for a failed request with fields of its own (a
    /// 429's `Retry-After` and `RateLimit`, a shed 503's `Retry-After`).
    fn fail_with(
        &self,
        rejection: Rejection,
        fields: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
        request_id: &HeaderValue,
        metrics: &Arc<RouteMetrics>,
        start: Instant,
        log: Option<Pending>,
    ) -> Response<ResponseBody> {
        let mut res = self.fail(rejection, request_id, metrics, start, log);
        res.headers_mut().extend(fields);
        res
    }

    /// levee's own response for a failed request, counted like any other.
    fn fail(
        &self,
        rejection: Rejection,
        request_id: &HeaderValue,
        metrics: &Arc<RouteMetrics>,
        start: Instant,
        log: Option<Pending>,
    ) -> Response<ResponseBody> {
        let id = (!request_id.is_empty()).then_some(request_id);
        let completion = Completion::new(start, 0, metrics.clone(), None).logging(log);
        completion.into_error_response(rejection, id)
    }
}

/// Rewrites a client's request (its fields as a map) for the upstream.
/// Returns whether it is a protocol upgrade being forwarded.
fn prepare_request(req: &mut Request<RequestBody>, hop: &headers::Hop<'_>, protocol: Protocol) -> bool {
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
            if let Some(host) = hop.host
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
            if let Some(authority) = hop.host.and_then(|v| v.to_str().ok()) {
                set_authority(req.uri_mut(), authority);
            }
            *req.version_mut() = Version::HTTP_2;
        }
    }
    upgrade
}

/// A request without a host (HTTP/1.0 allows that) goes to each endpoint
/// with the endpoint's address as its host.
fn set_default_host(parts: &mut http::request::Parts, protocol: Protocol, endpoint: &EndpointAddress) {
    let host = endpoint.to_string();
    match protocol {
        Protocol::Http1 => {
            if let Ok(v) = HeaderValue::from_str(&host) {
                parts.headers.insert(header::HOST, v);
            }
        }
        Protocol::Http2 => set_authority(&mut parts.uri, &host),
    }
}

fn set_authority(uri: &mut Uri, authority: &str) {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    if let Ok(with) = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(pq)
        .build()
    {
        *uri = with;
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        _ => "1.1",
    }
}

/// The request's fields, prepared once for all its tries.
enum Head {
    /// Lines as received, rewritten per try by [`headers::raw_plan`].
    Raw(RawRequest),
    /// Rewritten in the request's header map.
    Map,
}

/// The endpoints a request's tries went to, so that a retry goes elsewhere.
#[derive(Default)]
struct Tried {
    endpoints: [usize; 10],
    len: usize,
}

impl Tried {
    fn push(&mut self, endpoint: usize) {
        if self.len < self.endpoints.len() {
            self.endpoints[self.len] = endpoint;
            self.len += 1;
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn as_slice(&self) -> &[usize] {
        &self.endpoints[..self.len]
    }
}

/// An endpoint for the next try: one not tried yet for the request when
/// there is one, else any.
///
/// A retry sees the levels' shares as if the endpoints already tried were
/// down: when a level's endpoints fail one after another (a region going
/// dark), retries spill to the next level in proportion, as the shares
/// will once the failures are known, rather than trying the dark level's
/// endpoints one by one.
fn pick(upstream: &Upstream, tried: &Tried, hash: Option<u64>, now: Instant) -> Option<usize> {
    let now_ms = millis(now);
    let choose = |tried: &[usize], loads: &Loads| {
        let view = Choice {
            upstream,
            now_ms,
            tried,
        };
        upstream
            .selector
            .select(&view, loads, hash, fastrand::u64(..))
            .map(|s| s.endpoint)
    };
    let published = upstream.loads.load();
    if tried.is_empty() {
        return choose(&[], &published);
    }
    let view = Choice {
        upstream,
        now_ms,
        tried: tried.as_slice(),
    };
    let health = upstream.level_health(|i| view.available(i));
    let loads = undamped(&upstream.failover_params, &health);
    choose(tried.as_slice(), &loads).or_else(|| choose(&[], &published))
}

/// One try's outcome, with the endpoint it went to.
struct Try {
    endpoint: usize,
    started: Instant,
    in_flight: InFlight,
    sent: Result<Sent, Failed>,
}

/// Everything a try of the request needs besides its endpoint and body.
struct Outgoing<'a> {
    upstream: &'a Upstream,
    parts: &'a http::request::Parts,
    head: &'a Head,
    hop: &'a headers::Hop<'a>,
    id_to_add: Option<&'a HeaderValue>,
    upgrade: bool,
    per_try: Duration,
    deadline: Instant,
}

impl Outgoing<'_> {
    /// One try on endpoint `index`, starting at `started`.
    async fn send(&self, index: usize, body: RequestBody, started: Instant) -> Try {
        let endpoint = &self.upstream.endpoints[index];
        let in_flight = InFlight::start(&endpoint.state);
        self.upstream.metrics.attempts.inc();
        let attempt = Attempt {
            upstream: self.upstream,
            endpoint,
            started,
            head_deadline: self.deadline.min(started + self.per_try),
        };
        let sent = match self.head {
            Head::Raw(r) => {
                let plan = headers::raw_plan(r, self.hop, self.id_to_add, self.upgrade, &endpoint.address);
                let out = OutHead::Raw {
                    head: &r.head,
                    skip: plan.skip,
                    extra: &plan.extra,
                };
                attempt.send_h1(self.parts, out, body).await
            }
            Head::Map => match self.upstream.protocol {
                Protocol::Http1 => {
                    attempt
                        .send_h1(self.parts, OutHead::Map(&self.parts.headers), body)
                        .await
                }
                Protocol::Http2 => attempt.send_h2(self.parts, body).await,
            },
        };
        Try {
            endpoint: index,
            started,
            in_flight,
            sent,
        }
    }

    /// A try on `first` and, when it has no response head after `after`, a
    /// second on another endpoint at once: the first head wins, the other
    /// try is dropped (which closes its connection). Only for requests
    /// without a body.
    async fn hedged(&self, first: usize, after: Duration, tried: &mut Tried, hash: Option<u64>) -> Try {
        let one = self.send(first, RequestBody::Empty, Instant::now());
        tokio::pin!(one);
        tokio::select! {
            biased;
            done = &mut one => return done,
            () = tokio::time::sleep(after) => {}
        }
        let now = Instant::now();
        let second = pick(self.upstream, tried, hash, now).filter(|&s| s != first);
        let (Some(second), Some(slot)) = (
            second,
            second.and_then(|_| admit_retry(self.upstream, Reason::Timeout)),
        ) else {
            return one.await;
        };
        tried.push(second);
        let two = self.send(second, RequestBody::Empty, now);
        tokio::pin!(two);
        // A try that fails waits for the other; the last failure stands.
        let done = tokio::select! {
            done = &mut one => done,
            done = &mut two => done,
        };
        let finished_first = done.endpoint == first;
        if done.sent.is_ok() {
            drop(slot);
            return done;
        }
        self.observe_failure(&done);
        let other = if finished_first { two.await } else { one.await };
        drop(slot);
        other
    }

    /// Counts a failed try that is not the request's last word.
    fn observe_failure(&self, done: &Try) {
        if let Err(failed) = &done.sent
            && failed.rejection.kind.blame() == Blame::Upstream
        {
            let now = Instant::now();
            let latency = now.saturating_duration_since(done.started);
            observe(
                self.upstream,
                done.endpoint,
                now,
                latency,
                Observation::GatewayFailure,
                true,
            );
            sample(self.upstream, now, latency, failed_with(failed.rejection.kind));
        }
    }
}

/// Records what a try taught about its endpoint (latency, outlier
/// streaks), ejecting it if a detector trips.
fn observe(
    upstream: &Upstream,
    index: usize,
    now: Instant,
    latency: Duration,
    observation: Observation,
    failed: bool,
) {
    let state = &upstream.endpoints[index].state;
    if let Some(detector) = state.observe(now, latency, observation, failed, upstream) {
        upstream.consider_ejection(index, detector, now);
    }
}

/// Feeds the upstream's adaptive concurrency limit one try's outcome.
fn sample(upstream: &Upstream, now: Instant, latency: Duration, completion: Option<concurrency::Completion>) {
    let (Some(adaptive), Some(completion)) = (&upstream.adaptive, completion) else {
        return;
    };
    let update =
        adaptive
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(now.into_std(), latency, completion);
    if let Some(update) = update {
        upstream.metrics.concurrency_limit.set(i64::from(update.limit));
    }
}

/// What an answered try says about the upstream's queueing, as the
/// adaptive limit reads it: every answer counts with its latency, and a 503
/// or 429 counts as overload.
fn answered_with(status: u16) -> concurrency::Completion {
    if status == 503 || status == 429 {
        concurrency::Completion::Dropped
    } else {
        concurrency::Completion::Answered
    }
}

/// A timeout counts as overload; other failures (a refused connection, a
/// reset) are fast and say nothing about queueing, and counting them would
/// make a dead upstream look fast.
fn failed_with(kind: ErrorKind) -> Option<concurrency::Completion> {
    matches!(kind, ErrorKind::ResponseTimeout | ErrorKind::ConnectionTimeout)
        .then_some(concurrency::Completion::Dropped)
}

/// Counts how a request that needed retries ended.
fn count_retried(upstream: &Upstream, tried: &Tried, success: bool) {
    if tried.len() > 1 {
        upstream.metrics.retried[usize::from(!success)].inc();
    }
}

/// Whether the upstream's retry budget allows one more retry (taking it).
fn budget_allows(upstream: &Upstream, now: Instant) -> bool {
    let counters = &upstream.counters;
    let admitted = counters
        .budget
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .try_acquire(now.into_std(), counters.requests(), counters.retries());
    if !admitted {
        upstream.metrics.budget_exhausted.inc();
        if counters.warn_now(now) {
            tracing::warn!(
                upstream = %upstream.name,
                "retry budget exhausted: failed tries are not retried (logged at most every 10 s)",
            );
        }
    }
    admitted
}

/// The `max_retries` breaker's slot for a retry about to be sent.
fn retry_slot_for(upstream: &Upstream, reason: Reason) -> Option<Slot> {
    let slot = Slot::take(&upstream.counters, Limit::Retries, upstream.limits.max_retries);
    match &slot {
        Some(_) => upstream.metrics.retry(reason),
        None => upstream.metrics.overflow(Limit::Retries),
    }
    slot
}

/// The budget and the breaker for a retry sent at once (a hedge).
fn admit_retry(upstream: &Upstream, reason: Reason) -> Option<Slot> {
    if !budget_allows(upstream, Instant::now()) {
        return None;
    }
    retry_slot_for(upstream, reason)
}

/// What the client gets when a retried status's next try finds no endpoint:
/// levee's own answer of the same kind.
fn status_failure(status: u16) -> Rejection {
    match status {
        504 => Rejection::new(ErrorKind::ResponseTimeout, "upstream response timed out"),
        503 | 429 => Rejection::new(ErrorKind::NoEndpoint, "no endpoint available"),
        _ => Rejection::new(
            ErrorKind::ConnectionTerminated,
            "upstream failed and no other endpoint was available",
        ),
    }
}

/// The `Retry-After` of a response: delay-seconds or an HTTP date.
fn retry_after(fields: &Fields) -> Option<Duration> {
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

/// A failed try, with the request body when none of it was read (the
/// connection failed first), so that another try can send it.
struct Failed {
    rejection: Rejection,
    body: Option<RequestBody>,
}

impl Failed {
    fn without_body(rejection: Rejection) -> Failed {
        Failed {
            rejection,
            body: None,
        }
    }
}

/// One try of a request on one endpoint.
struct Attempt<'a> {
    upstream: &'a Upstream,
    endpoint: &'a Endpoint,
    started: Instant,
    /// When the response head must have come (the per-try timeout, within
    /// the request's deadline).
    head_deadline: Instant,
}

impl Attempt<'_> {
    /// Sends the request on a pooled HTTP/1.1 connection, or a new one, and
    /// waits for the response head.
    async fn send_h1(
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
                Err(rejection) => {
                    return Err(Failed {
                        rejection,
                        body: Some(body),
                    });
                }
            },
        };
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut exchange = Exchange::new(conn, &parts.method, target, head, body);
        loop {
            let polled = std::future::poll_fn(|cx| exchange.poll_head_until(self.head_deadline, cx)).await;
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
                    Err(rejection) => {
                        return Err(Failed {
                            rejection,
                            body: exchange.into_untouched_body(),
                        });
                    }
                }
            }
            return Err(Failed::without_body(rejection));
        }
    }

    async fn connect_h1(&self) -> Result<Box<crate::upstream::h1::Conn>, Rejection> {
        // Connecting counts against the try's own deadline too.
        let timeout = self
            .upstream
            .connect_timeout
            .min(self.head_deadline.saturating_duration_since(Instant::now()));
        let state = &self.endpoint.state;
        let limits = &self.upstream.limits;
        let conn = match state.pool.connect_h1(timeout, limits).await {
            Err(OpenError::Full(Limit::Connections)) if self.upstream.close_an_idle_connection() => {
                state.pool.connect_h1(timeout, limits).await
            }
            opened => opened,
        }
        .map_err(|e| self.open_failed(e))?;
        state.connects.inc();
        Ok(conn)
    }

    fn open_failed(&self, e: OpenError) -> Rejection {
        match e {
            OpenError::Failed(kind) => connect_rejection(kind),
            OpenError::Full(limit) => {
                self.upstream.metrics.overflow(limit);
                Rejection::new(ErrorKind::ConnectionLimit, "too many connections to the upstream")
            }
        }
    }

    /// Sends the request on the endpoint's shared HTTP/2 connection.
    async fn send_h2(&self, parts: &http::request::Parts, body: RequestBody) -> Result<Sent, Failed> {
        let timeout = self
            .upstream
            .connect_timeout
            .min(self.head_deadline.saturating_duration_since(Instant::now()));
        let state = &self.endpoint.state;
        let (mut sender, opened) = match state.pool.h2(timeout, &self.upstream.limits).await {
            Ok(s) => s,
            Err(e) => {
                return Err(Failed {
                    rejection: self.open_failed(e),
                    body: Some(body),
                });
            }
        };
        if opened {
            state.connects.inc();
        }
        if tokio::time::timeout_at(self.head_deadline, sender.ready())
            .await
            .is_err()
        {
            return Err(Failed {
                rejection: response_timeout(),
                body: Some(body),
            });
        }
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        match tokio::time::timeout_at(self.head_deadline, sender.send_request(req)).await {
            Ok(Ok(res)) => {
                let (mut parts, body) = res.into_parts();
                let headers = std::mem::take(&mut parts.headers);
                Ok((parts, Fields::Map(headers), Received::H2(body)))
            }
            Ok(Err(e)) => Err(Failed::without_body(classify(&e))),
            Err(_) => Err(Failed::without_body(response_timeout())),
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
        ErrorKind::DestinationUnreachable => "no route to the upstream",
        ErrorKind::TlsCertificate => "upstream certificate refused",
        ErrorKind::TlsProtocol => "TLS handshake with the upstream failed",
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
    /// The upstream's requests-breaker slot, released with the response.
    admitted: Option<Slot>,
    /// Response body bytes passed on to the client.
    bytes: u64,
    log: Option<Pending>,
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
            admitted: None,
            bytes: 0,
            log: None,
        }
    }

    /// Hands the request's access log entry in when the response ends.
    pub(crate) fn logging(mut self, log: Option<Pending>) -> Completion {
        self.log = log;
        self
    }

    /// Counts body bytes passed on to the client.
    pub(crate) fn sent(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }

    /// Keeps the request counted against the upstream's breaker until the
    /// response ends.
    pub(crate) fn holding(mut self, admitted: Slot) -> Completion {
        self.admitted = Some(admitted);
        self
    }

    /// levee's response for this request after all, counted as such.
    pub(crate) fn into_error_response(
        mut self,
        rejection: Rejection,
        request_id: Option<&HeaderValue>,
    ) -> Response<ResponseBody> {
        self.metrics.generated(rejection.kind);
        self.status = rejection.kind.status();
        if let Some(log) = &mut self.log {
            log.generated(rejection.kind);
        }
        error_response(rejection, request_id).map(|b| b.with_completion(self))
    }

    /// Records the request, when its response ended or was dropped.
    pub(crate) fn finish(mut self) {
        let elapsed = Instant::now().duration_since(self.start);
        self.metrics.record(self.status, elapsed.as_secs_f64());
        if let Some(log) = self.log.take() {
            log.finish(self.status, self.bytes, elapsed);
        }
        drop(self.in_flight.take());
        drop(self.admitted.take());
    }
}
