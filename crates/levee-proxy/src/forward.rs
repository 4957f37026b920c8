//! The proxy itself: a request's way from its head to its answer, as a
//! pipeline that reads top to bottom (`Proxy::handle`):
//!
//! 1. the request's [`record`]: id, host, the client's address, the access
//!    log entry ([`Proxy::begin`]);
//! 2. the listener's rate limits, before any route is known;
//! 3. the route ([`crate::router`]), its access list and rate limits;
//! 4. injected faults ([`crate::fault`]): a delay, an abort, a paced
//!    response body;
//! 5. admission: the upstream's adaptive concurrency limit and its requests
//!    breaker;
//! 6. the request as the upstream will see it ([`prepare`]);
//! 7. the tries ([`tries`]): the attempt machine of `levee_core::attempt`
//!    decides, [`exchange`] sends each try on a pooled connection;
//! 8. the answer ([`answer`]): the upstream's head rewritten, its body
//!    streamed, the request's accounting attached.
//!
//! Every stage either passes the request on or returns a [`Refusal`];
//! [`Record::refuse`] is the one place a refusal becomes a response.

mod answer;
mod exchange;
mod headers;
mod prepare;
mod record;
mod tries;

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::header::{self, HeaderValue};
use http::{Request, Version};
use levee_config::ClientIpHeader;
use levee_config::Protocol;
use levee_core::access::{client_from_chain, forwarded_for, x_forwarded_for};
use levee_core::attempt::Attempts;
use levee_core::fault::Injected;
use levee_core::id::ListenerName;
use levee_core::outcome::{ErrorKind, Rejection};
use levee_core::retry::is_idempotent_method;
use tokio::time::Instant;

use self::prepare::{prepare_request, version_str};
use self::record::{Record, Refusal};
use self::tries::Outgoing;
use crate::access_log::{self, Sink};
use crate::body::{Bodies, RequestBody};
use crate::codec::parse::RawRequest;
use crate::codec::raw::Known;
use crate::conn::ConnInfo;
use crate::fault;
use crate::fields::FieldsView;
use crate::ratelimit::{KeyInput, Rule};
use crate::response::{Answer, ResponseBody};
use crate::router::{RouteInput, normalise_host};
use crate::server::{Handler, ListenerPolicy};
use crate::snapshot::{RouteRuntime, Snapshot};
use crate::upstream::{Slot, Upstream};

pub(crate) struct Proxy {
    pub state: Arc<ArcSwap<Snapshot>>,
    /// Where requests hand in their access log entries, when logging.
    pub access_log: ArcSwapOption<Sink>,
}

/// What the request's head says before it is routed.
struct Inbound {
    /// The host the client asked for (`Host` or the target's authority).
    host: Option<HeaderValue>,
    /// The client's address, as trusted proxies report it.
    client: IpAddr,
    /// The request came without a usable id: levee made one up, which the
    /// upstream must be given.
    id_generated: bool,
}

impl Handler for Proxy {
    /// The request's way through the gateway, stage by stage, to the
    /// upstream's answer or levee's refusal.
    // The stages run in this one async level up to the tries: a level of
    // their own would copy the request into its future, and that future
    // into this one (callgrind: about 300 instructions per request). The
    // gate's level only borrows the request.
    async fn handle(
        &self,
        mut req: Request<RequestBody>,
        mut raw: Option<RawRequest>,
        conn: &ConnInfo,
    ) -> Box<Answer> {
        let snap = self.state.load_full();
        let (mut record, inbound) = self.begin(&snap, &mut req, raw.as_ref(), conn);
        let view = fields_of(&req, raw.as_ref());
        let route = match gate(&snap, &mut record, &inbound, &req, view, conn).await {
            Ok(route) => route,
            Err(refusal) => return Box::new(record.refuse(refusal)),
        };
        let response_rate = match fault::injected(&route.fault, view, conn.peer.ip()) {
            None => None,
            // Boxed: only a request with faults pays for their state, not
            // every request's future.
            Some(injected) => match Box::pin(suffer(&mut record, injected)).await {
                Ok(rate) => rate,
                Err(refusal) => return Box::new(record.refuse(refusal)),
            },
        };
        let upstream = &snap.upstreams[route.upstream];
        // The guard is held until the response head, or a refusal, is at hand.
        let (_awaiting_head, admitted) = match admit(upstream, route, record.start) {
            Ok(admission) => admission,
            Err(refusal) => return Box::new(record.refuse(refusal)),
        };
        let hash = upstream.hash_key(view, inbound.client);

        let deadline = record.start + route.request_timeout;
        let client_h1 = req.version() != Version::HTTP_2;
        let idempotent = is_idempotent_method(req.method().as_str());
        // Built here, not returned from a helper: moving the request out of
        // a function copies it (callgrind).
        let hop = headers::Hop {
            client: &conn.client,
            proto: if conn.tls { "https" } else { "http" },
            host: inbound.host.as_ref(),
            received: version_str(req.version()),
        };
        let id_to_add = inbound.id_generated.then_some(&record.request_id);
        let upgrade = to_upstream(upstream, &mut req, &mut raw, &hop, id_to_add);
        let (parts, body) = req.into_parts();
        let mut out = Outgoing {
            upstream,
            parts,
            head: raw,
            hop,
            upgrade,
        };
        let shared_head = matches!(body, RequestBody::Empty) && out.hop.host.is_some();
        let per_try = upstream.response_header_timeout();
        let mut attempts = Attempts::new(
            &route.retry,
            idempotent,
            per_try,
            deadline.into_std(),
            shared_head,
        );
        let mut bodies = Bodies::new(body, attempts.keeps_body(), route.retry.max_body_bytes);
        let tried = tries::run(
            &mut out,
            id_to_add,
            &mut attempts,
            &mut bodies,
            hash,
            &mut record.log,
        );
        match answer::answer(tried.await, &out, admitted, client_h1, deadline, &mut record) {
            Ok(mut answer) => {
                if let Some(rate) = response_rate {
                    answer.body = std::mem::replace(&mut answer.body, ResponseBody::empty()).paced(rate);
                }
                answer
            }
            Err(refusal) => Box::new(record.refuse(refusal)),
        }
    }

    fn reject(&self, rejection: Rejection, conn: &ConnInfo) -> Box<Answer> {
        let snap = self.state.load_full();
        // Refused before its head could be read: only the peer is known.
        let log = (self.access_log.load().as_ref())
            .map(|sink| sink.begin(&snap, conn, conn.peer.ip().to_canonical(), None));
        let record = Record {
            start: Instant::now(),
            request_id: HeaderValue::from_static(""),
            metrics: &snap.unmatched,
            log,
        };
        Box::new(record.refuse(rejection.into()))
    }

    fn policy(&self, listener: &ListenerName) -> Option<Arc<ListenerPolicy>> {
        let snap = self.state.load();
        snap.listeners
            .iter()
            .find(|(name, _)| name == listener)
            .map(|(_, p)| p.clone())
    }
}

/// The faults injected into a request: counted and logged, a delay waited
/// out, an abort refused; what is left is the response rate, if any.
async fn suffer(record: &mut Record<'_>, injected: Injected) -> Result<Option<u64>, Refusal> {
    record.faulted(&injected);
    if let Some(delay) = injected.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some((status, grpc)) = injected.abort {
        return Err(Refusal::fault(status, grpc));
    }
    Ok(injected.response_rate)
}

/// The request's fields: the lines received when it came with them (its
/// own map is then empty), else its map.
fn fields_of<'r>(req: &'r Request<RequestBody>, raw: Option<&'r RawRequest>) -> FieldsView<'r> {
    match raw {
        Some(r) => FieldsView::Raw(r),
        None => FieldsView::Map(req.headers()),
    }
}

impl Proxy {
    /// The request's record and what its head says, before anything can
    /// refuse it.
    // Inlined into the request's future: called, it would return the record
    // through memory, a copy on every request.
    #[inline(always)]
    fn begin<'s>(
        &self,
        snap: &'s Arc<Snapshot>,
        req: &mut Request<RequestBody>,
        raw: Option<&RawRequest>,
        conn: &ConnInfo,
    ) -> (Record<'s>, Inbound) {
        let start = Instant::now();
        let (request_id, id_generated) = match raw {
            Some(r) => match r.value_of(Known::RequestId).filter(headers::usable_request_id) {
                Some(id) => (id, false),
                None => (headers::new_request_id(), true),
            },
            None => (headers::ensure_request_id(req.headers_mut()), false),
        };
        let host = match raw {
            Some(r) => r.host(),
            None => req.headers().get(header::HOST).cloned().or_else(|| {
                req.uri()
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            }),
        };
        let view = fields_of(req, raw);
        let client = client_ip(conn, view, &snap.config.server);
        let log = self.access_log.load().as_ref().map(|sink| {
            let head = access_log::Head {
                method: req.method(),
                uri: req.uri(),
                version: req.version(),
                host: host.as_ref(),
                fields: view,
                request_id: &request_id,
            };
            sink.begin(snap, conn, client, Some(head))
        });
        let record = Record {
            start,
            request_id,
            metrics: &snap.unmatched,
            log,
        };
        let inbound = Inbound {
            host,
            client,
            id_generated,
        };
        (record, inbound)
    }
}

/// Stages 2 and 3: the listener's rate limits, the route, its access list
/// and its rate limits. The request's route, or its refusal.
async fn gate<'s>(
    snap: &'s Snapshot,
    record: &mut Record<'s>,
    inbound: &Inbound,
    req: &Request<RequestBody>,
    view: FieldsView<'_>,
    conn: &ConnInfo,
) -> Result<&'s RouteRuntime, Refusal> {
    if let Some(rules) = snap.listener_limits(&conn.listener) {
        let input = KeyInput {
            client: inbound.client,
            route: None,
            fields: view,
        };
        first_limited(rules, &input, record.start).await?;
    }
    let (index, route) = find_route(snap, req, view, inbound, conn)?;
    record.routed(index, &route.metrics);
    if !route.access.permits(inbound.client) {
        return Err(Rejection::new(
            ErrorKind::AccessDenied,
            "the client address may not use this route",
        )
        .into());
    }
    if !route.rate_limits.is_empty() {
        let input = KeyInput {
            client: inbound.client,
            route: Some(&route.name),
            fields: view,
        };
        first_limited(&route.rate_limits, &input, record.start).await?;
    }
    Ok(route)
}

/// Stage 4, admission: the upstream's adaptive concurrency limit (a guard
/// to hold until the response head) and its requests breaker (a slot held
/// until the response ends).
fn admit<'u>(
    upstream: &'u Upstream,
    route: &RouteRuntime,
    start: Instant,
) -> Result<(impl Sized + 'u, Slot), Refusal> {
    let awaiting_head = upstream.admit(route.priority).map_err(|retry_after| {
        let rejection = Rejection::new(ErrorKind::Overloaded, "the upstream is at its concurrency limit");
        Refusal::retry_after(rejection, retry_after.as_secs().max(1))
    })?;
    let admitted = upstream.take_request_slot(start).ok_or_else(|| {
        Refusal::from(Rejection::new(
            ErrorKind::ConnectionLimit,
            "too many requests in flight to the upstream",
        ))
    })?;
    Ok((awaiting_head, admitted))
}

/// The route of the request, or the refusal when none matches.
// Inlined for the same reason as `Proxy::begin`.
#[inline(always)]
fn find_route<'s>(
    snap: &'s Snapshot,
    req: &Request<RequestBody>,
    view: FieldsView<'_>,
    inbound: &Inbound,
    conn: &ConnInfo,
) -> Result<(usize, &'s RouteRuntime), Refusal> {
    let host = (inbound.host.as_ref())
        .filter(|_| snap.router.uses_hosts())
        .and_then(|h| h.to_str().ok())
        .map(normalise_host);
    let index = snap.router.find(&RouteInput {
        listener: &conn.listener,
        method: req.method(),
        host: host.as_deref(),
        path: req.uri().path(),
        headers: view,
    });
    match index {
        Some(i) => Ok((i, &snap.routes[i])),
        None => Err(Rejection::new(ErrorKind::NoRoute, "no route matches the request").into()),
    }
}

/// Rewrites the request for `upstream`, in place: its fields as a map
/// for HTTP/2 (which takes no raw lines), or, for a request that has no
/// raw lines, hop-by-hop fields out and forwarding fields in. Returns
/// whether a protocol upgrade is forwarded.
fn to_upstream(
    upstream: &Upstream,
    req: &mut Request<RequestBody>,
    raw: &mut Option<RawRequest>,
    hop: &headers::Hop<'_>,
    id_generated: Option<&HeaderValue>,
) -> bool {
    // Raw lines go only to an HTTP/1.1 upstream; HTTP/2 needs a map.
    if upstream.protocol() == Protocol::Http2
        && let Some(r) = raw.take()
    {
        let map = req.headers_mut();
        *map = r.into_map(8);
        if let Some(id) = id_generated {
            map.insert(headers::X_REQUEST_ID, id.clone());
        }
    }
    match raw {
        Some(r) => req.version() == Version::HTTP_11 && r.kept().any(|(_, f)| f.known == Known::Upgrade),
        None => prepare_request(req, hop, upstream.protocol()),
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

/// Refuses the request with a 429 when one of `rules` does. Rules before
/// the one that refuses have counted the request, as every rule sees each
/// request that reaches it.
async fn first_limited(rules: &[Arc<Rule>], input: &KeyInput<'_>, start: Instant) -> Result<(), Refusal> {
    let now = start.into_std();
    for rule in rules {
        if let Some(limited) = rule.check(input, now).await {
            let rejection = Rejection::new(ErrorKind::RateLimited, "rate limit exceeded");
            return Err(Refusal::limited(rejection, limited));
        }
    }
    Ok(())
}
