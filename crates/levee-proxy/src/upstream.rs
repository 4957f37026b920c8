//! Upstreams at run time: their endpoints, how traffic is spread over them
//! and what protects them, and a connection pool per endpoint.
//!
//! State that must outlive a config reload is carried over explicitly:
//! per endpoint in [`EndpointState`] (pool, in-flight count, health,
//! ejection, latency), per upstream in [`Counters`] (the circuit breakers'
//! counts and the retry budget), both keyed by name. What the config may
//! change (weights, priorities, policies) lives in [`Upstream`] and
//! [`Endpoint`] and is rebuilt; the failover state is carried level by level
//! ([`levee_core::failover::Failover::carried`]).
//!
//! The request path reads all of it without a lock: health and ejection
//! are atomics, and the share of traffic each priority level takes is
//! published by the upstream's watch task ([`watch`]) as one [`Loads`]
//! value. The task recomputes it when an endpoint's health changes (it is
//! woken), when an ejection ends or a failback ramps (it sleeps until then),
//! and runs the periodic outlier statistics.

pub(crate) mod build;
pub(crate) mod classify;
pub(crate) mod conn;
mod counters;
pub(crate) mod h1;
pub(crate) mod health;
pub(crate) mod pool;
mod requests;
pub(crate) mod stream;
pub(crate) mod watch;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::header::COOKIE;
use levee_config::{EndpointAddress, HashOn, HealthCheck, Limits, Outlier, Protocol};
use levee_core::concurrency::Limiter;
use levee_core::ewma;
use levee_core::failover::{Failover, Loads};
use levee_core::hash::hash64;
use levee_core::id::{RegionName, UpstreamName};
use levee_core::outlier::{Detector, Observation, Streaks};
use levee_core::select::{Endpoints, Selector};
use levee_core::sync::lock;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::events::Events;
use crate::fields::FieldsView;
use crate::metrics::recorder::Recorder;
use crate::metrics::{EndpointMetrics, Limit, UpstreamMetrics};

pub(crate) use counters::{Counters, Slot, millis};
pub(crate) use pool::{Pool, PoolSettings};

pub(crate) struct Upstream {
    name: UpstreamName,
    selector: Selector,
    endpoints: Vec<Endpoint>,
    protocol: Protocol,
    connect_timeout: Duration,
    response_header_timeout: Duration,
    hash_on: Option<HashOn>,
    limits: Limits,
    outlier: Option<Outlier>,
    /// The balancing policy, for the admin API.
    policy: levee_core::balance::Policy,
    /// Whether the balancer reads the endpoints' latency (`peak_ewma`).
    tracks_latency: bool,
    /// The breakers' counts and the retry budget, carried across reloads.
    counters: Arc<Counters>,
    /// The levels' priorities, most preferred first.
    priorities: Vec<u32>,
    failover: Mutex<Failover>,
    /// The failover settings, for retries that compute shares of their own.
    failover_params: levee_core::failover::Params,
    /// The share of traffic each level takes now.
    loads: ArcSwap<Loads>,
    /// Wakes the watch task: an endpoint's health changed.
    changed: Arc<Notify>,
    /// Where state changes are published.
    events: Arc<Events>,
    /// Whether traffic has left the most preferred level (carried across
    /// reloads, so a reload neither starts nor ends a failover).
    failover_active: AtomicBool,
    /// The regions, in config order, with their endpoints' indexes.
    regions: Vec<(RegionName, u32, Vec<usize>)>,
    /// Set when a reload replaced this upstream: its watch task ends.
    retired: AtomicBool,
    /// Whether its watch task was started.
    watched: AtomicBool,
    metrics: UpstreamMetrics,
    /// The adaptive concurrency limit, carried across reloads. Locked for
    /// O(1) steps only, never across an await.
    adaptive: Option<Arc<Mutex<Limiter>>>,
}

pub(crate) struct Endpoint {
    pub address: EndpointAddress,
    pub region: RegionName,
    pub priority: u32,
    /// The weight in effect: an operator's, else the configured one.
    pub weight: u32,
    pub configured_weight: u32,
    pub state: Arc<EndpointState>,
}

/// What survives a reload for an endpoint that stays.
pub(crate) struct EndpointState {
    in_flight: AtomicU64,
    pub pool: Pool,
    in_flight_gauge: Gauge,
    pub connects: Counter,
    /// What active checks last decided; true without checks.
    healthy: AtomicBool,
    /// The upstream's current check settings (replaced on reload); `None`
    /// stops the checker.
    pub check: ArcSwapOption<HealthCheck>,
    /// Whether a checker task runs for this endpoint.
    pub checking: AtomicBool,
    /// A passing check ends an ejection (the upstream's outlier setting).
    pub uneject_on_check: AtomicBool,
    /// Until when passive detection keeps it out (a [`millis`] time), 0 if
    /// it does not.
    ejected_until: AtomicU64,
    /// Ejections so far: each lasts longer than the one before. Decays
    /// while the endpoint behaves.
    pub ejections: AtomicU32,
    /// An operator drained the endpoint: it takes no new requests. Kept
    /// across reloads, like health.
    drained: AtomicBool,
    /// A weight an operator set through the admin API (0: none, the
    /// configured weight applies). Kept across reloads.
    weight_override: AtomicU32,
    /// The last active check: when (a [`millis`] time, 0 if none yet) and
    /// how it went ([`CheckResult`] as u8).
    last_check_at: AtomicU64,
    last_check: AtomicU8,
    /// A moving average of latency to the response head, in nanoseconds
    /// as `f64` bits, for operators (balancing reads `latency`). Updated
    /// without a lock: a lost update only makes the estimate a sample late.
    typical: AtomicU64,
    passive: Mutex<Passive>,
    /// Peak-EWMA latency in nanoseconds, as `f64` bits, as of
    /// `latency_at` (a [`millis`] time).
    latency: AtomicU64,
    latency_at: AtomicU64,
    /// Requests that succeeded, and all requests, in the current
    /// success-rate interval.
    volume_ok: AtomicU64,
    volume_total: AtomicU64,
    /// Wakes the watch task of the upstream that owns the endpoint now.
    pub changed: ArcSwap<Notify>,
    /// When the endpoint last failed a try (a gateway failure: refused,
    /// reset, timed out, 502–504), as a [`millis`] time; 0 for never.
    failed_at: AtomicU64,
    /// Brings the endpoint's next active check forward: real traffic saw
    /// its level fail. Shared with the checker task, which holds no strong
    /// reference to the state.
    pub probe_soon: Arc<Notify>,
    pub metrics: EndpointMetrics,
}

/// How long after an endpoint's failed try its level counts as failing,
/// for a retry deciding whether to leave that level.
const FAILING_FOR_MS: u64 = 2_000;

/// What exchanges taught about an endpoint, updated after each.
#[derive(Default)]
struct Passive {
    streaks: Streaks,
}

/// How an active check went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CheckResult {
    Ok = 0,
    Failed = 1,
    Timeout = 2,
}

impl CheckResult {
    fn from_u8(v: u8) -> CheckResult {
        match v {
            0 => CheckResult::Ok,
            2 => CheckResult::Timeout,
            _ => CheckResult::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CheckResult::Ok => "ok",
            CheckResult::Failed => "failed",
            CheckResult::Timeout => "timeout",
        }
    }
}

impl EndpointState {
    pub fn new(
        pool: Pool,
        in_flight_gauge: Gauge,
        connects: Counter,
        metrics: EndpointMetrics,
    ) -> EndpointState {
        metrics.healthy.set(1);
        metrics.ejected.set(0);
        EndpointState {
            in_flight: AtomicU64::new(0),
            pool,
            in_flight_gauge,
            connects,
            healthy: AtomicBool::new(true),
            check: ArcSwapOption::empty(),
            checking: AtomicBool::new(false),
            uneject_on_check: AtomicBool::new(false),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            drained: AtomicBool::new(false),
            weight_override: AtomicU32::new(0),
            last_check_at: AtomicU64::new(0),
            last_check: AtomicU8::new(0),
            typical: AtomicU64::new(0f64.to_bits()),
            passive: Mutex::new(Passive::default()),
            latency: AtomicU64::new(0f64.to_bits()),
            latency_at: AtomicU64::new(0),
            volume_ok: AtomicU64::new(0),
            volume_total: AtomicU64::new(0),
            changed: ArcSwap::from_pointee(Notify::new()),
            failed_at: AtomicU64::new(0),
            probe_soon: Arc::new(Notify::new()),
            metrics,
        }
    }

    /// Records a gateway failure of a try at `now_ms` ([`millis`]).
    pub fn failed(&self, now_ms: u64) {
        self.failed_at.store(now_ms, Ordering::Relaxed);
    }

    /// Whether the endpoint is failing at `now_ms`: out of rotation (not
    /// healthy, or ejected), or a try on it failed moments ago.
    pub fn is_failing(&self, now_ms: u64) -> bool {
        let failed_at = self.failed_at.load(Ordering::Relaxed);
        !self.is_healthy()
            || self.is_ejected(now_ms)
            || (failed_at != 0 && now_ms.saturating_sub(failed_at) < FAILING_FOR_MS)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether the endpoint may take traffic at `now_ms` ([`millis`]).
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.is_healthy() && !self.is_ejected(now_ms) && !self.is_drained()
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Drains or undrains; returns whether that changed anything.
    pub fn set_drained(&self, drained: bool) -> bool {
        let changed = self.drained.swap(drained, Ordering::Relaxed) != drained;
        if changed {
            self.changed.load().notify_one();
        }
        changed
    }

    /// The weight an operator set, if any.
    pub fn weight_override(&self) -> Option<u32> {
        Some(self.weight_override.load(Ordering::Relaxed)).filter(|&w| w != 0)
    }

    pub fn set_weight_override(&self, weight: Option<u32>) {
        self.weight_override.store(weight.unwrap_or(0), Ordering::Relaxed);
    }

    /// Records an active check's result at `now`.
    pub fn checked(&self, result: CheckResult, now: Instant) {
        self.last_check.store(result as u8, Ordering::Relaxed);
        self.last_check_at.store(millis(now), Ordering::Relaxed);
    }

    /// The last active check: its result and when, as a [`millis`] time.
    pub fn last_check(&self) -> Option<(CheckResult, u64)> {
        let at = self.last_check_at.load(Ordering::Relaxed);
        (at != 0).then(|| (CheckResult::from_u8(self.last_check.load(Ordering::Relaxed)), at))
    }

    /// The typical latency to the response head lately; zero before any
    /// response.
    pub fn typical_latency(&self) -> Duration {
        Duration::from_nanos(f64::from_bits(self.typical.load(Ordering::Relaxed)) as u64)
    }

    pub fn is_ejected(&self, now_ms: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms < until
    }

    /// When the current ejection ends, if there is one.
    pub fn ejected_until(&self) -> Option<u64> {
        Some(self.ejected_until.load(Ordering::Relaxed)).filter(|&u| u != 0)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        self.metrics.healthy.set(i64::from(healthy));
        self.changed.load().notify_one();
    }

    pub fn eject(&self, until_ms: u64) {
        self.ejected_until.store(until_ms, Ordering::Relaxed);
        self.metrics.ejected.set(1);
        self.changed.load().notify_one();
    }

    /// Ends the ejection that was to last until `until`, unless a new one
    /// replaced it meanwhile; returns whether it ended.
    pub fn end_ejection(&self, until: u64) -> bool {
        let ended = self
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if ended {
            self.metrics.ejected.set(0);
        }
        ended
    }

    /// Ends an ejection; returns whether there was one to end. (The caller
    /// wakes the watch task if it is not the watch task.)
    pub fn uneject(&self) -> bool {
        let was = self.ejected_until.swap(0, Ordering::Relaxed) != 0;
        self.metrics.ejected.set(0);
        was
    }

    /// Peak-EWMA latency in nanoseconds at `now_ms`: it decays with the
    /// time since the last sample, so an endpoint that gets no traffic
    /// (after one bad sample made it look slow) is tried again in time.
    pub fn latency(&self, now_ms: u64) -> f64 {
        let average = f64::from_bits(self.latency.load(Ordering::Relaxed));
        let since = now_ms.saturating_sub(self.latency_at.load(Ordering::Relaxed));
        ewma::decayed(&ewma::Params::DEFAULT, average, Duration::from_millis(since))
    }

    /// Records what one exchange said about the endpoint: its latency (to
    /// the response head, or to the failure), and for outlier detection
    /// what kind of answer it was. Returns the detector that asks for an
    /// ejection, if one does.
    pub fn observe(
        &self,
        now: Instant,
        latency: Duration,
        observation: Observation,
        failed: bool,
        upstream: &Upstream,
    ) -> Option<Detector> {
        // One part new, four parts history: steady enough to read, quick
        // enough to show a slowdown within a few requests.
        let old = f64::from_bits(self.typical.load(Ordering::Relaxed));
        let sample = latency.as_nanos() as f64;
        let typical = if old == 0.0 {
            sample
        } else {
            old + (sample - old) / 5.0
        };
        self.typical.store(typical.to_bits(), Ordering::Relaxed);
        // Only what the upstream's policies read is kept: most upstreams
        // need none of it, and pay nothing.
        let outlier = upstream.outlier.as_ref();
        if !upstream.tracks_latency && outlier.is_none() {
            return None;
        }
        if outlier.is_some_and(|o| o.params.success_rate.is_some()) {
            self.volume_total.fetch_add(1, Ordering::Relaxed);
            if observation == Observation::Success {
                self.volume_ok.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut passive = lock(&self.passive);
        if upstream.tracks_latency {
            // Under the lock: the read-modify-write of the average.
            let p = ewma::Params::DEFAULT;
            let now_ms = millis(now);
            let sample = ewma::sample(&p, latency, failed);
            let average = ewma::observe(self.latency(now_ms), sample);
            self.latency.store(average.to_bits(), Ordering::Relaxed);
            self.latency_at.store(now_ms, Ordering::Relaxed);
        }
        passive.streaks.observe(observation, &outlier?.params)
    }

    /// The success-rate counts of the interval that just ended (and a new
    /// one begins).
    pub fn take_volume(&self) -> levee_core::outlier::Volume {
        levee_core::outlier::Volume {
            successes: self.volume_ok.swap(0, Ordering::Relaxed),
            total: self.volume_total.swap(0, Ordering::Relaxed),
        }
    }

    /// Forgets the consecutive-failure streaks (after an ejection, the
    /// endpoint starts with a clean slate).
    pub fn reset_streaks(&self) {
        lock(&self.passive).streaks = Streaks::default();
    }
}

/// Counts a request in flight to an endpoint until dropped.
pub(crate) struct InFlight(Arc<EndpointState>);

impl InFlight {
    pub fn start(state: &Arc<EndpointState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        state.in_flight_gauge.inc();
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.in_flight_gauge.dec();
    }
}

/// The upstream as one request's selection sees it: at one moment, and
/// without the endpoints its earlier tries went to.
pub(crate) struct Choice<'a> {
    pub upstream: &'a Upstream,
    pub now_ms: u64,
    pub tried: &'a [usize],
    /// The priority level a retry leaves, if it leaves one.
    pub leaving: Option<u32>,
}

impl Choice<'_> {
    fn left(&self, endpoint: usize) -> bool {
        self.leaving == Some(self.upstream.endpoints[endpoint].priority)
    }
}

impl Endpoints for Choice<'_> {
    fn available(&self, endpoint: usize) -> bool {
        // is_available already leaves drained endpoints out.
        self.upstream.endpoints[endpoint].state.is_available(self.now_ms)
            && !self.tried.contains(&endpoint)
            && !self.left(endpoint)
    }

    /// A retry's earlier tries and the level it leaves, and drained
    /// endpoints: a drain is an operator's order, which panic must not
    /// override.
    fn excluded(&self, endpoint: usize) -> bool {
        self.tried.contains(&endpoint)
            || self.left(endpoint)
            || self.upstream.endpoints[endpoint].state.is_drained()
    }

    fn in_flight(&self, endpoint: usize) -> u64 {
        self.upstream.endpoints[endpoint].state.in_flight()
    }

    fn latency(&self, endpoint: usize) -> f64 {
        self.upstream.endpoints[endpoint].state.latency(self.now_ms)
    }
}

impl Upstream {
    pub fn name(&self) -> &UpstreamName {
        &self.name
    }

    /// The endpoints, in config order (indexes are endpoint ids).
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// How long a try waits for a response head, unless its route says.
    pub fn response_header_timeout(&self) -> Duration {
        self.response_header_timeout
    }

    /// The circuit breakers' limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The balancing policy, for the admin API.
    pub fn policy(&self) -> levee_core::balance::Policy {
        self.policy
    }

    /// Whether traffic has left the most preferred level.
    pub fn failover_active(&self) -> bool {
        self.failover_active.load(Ordering::Relaxed)
    }

    /// The regions in config order: name, priority and endpoint indexes.
    pub fn regions(&self) -> &[(RegionName, u32, Vec<usize>)] {
        &self.regions
    }

    /// The share of traffic each priority level takes now.
    pub fn loads(&self) -> arc_swap::Guard<Arc<Loads>> {
        self.loads.load()
    }

    /// Responses and latencies of every route that sends here.
    pub fn recorder(&self) -> &Arc<Recorder> {
        &self.counters.recorder
    }

    /// Requests shed by the adaptive limit, and retries refused by the
    /// budget, since the upstream was first configured.
    pub fn refused_totals(&self) -> (u64, u64) {
        let shed = self.metrics.shed.iter().map(|c| c.get()).sum();
        (shed, self.metrics.budget_exhausted.get())
    }

    /// Counts a request or retry refused by a full breaker.
    pub fn overflowed(&self, limit: Limit) {
        self.metrics.overflow(limit);
    }

    /// Marks the upstream's watch task as started; false if it already was.
    pub fn claim_watch(&self) -> bool {
        !self.watched.swap(true, Ordering::AcqRel)
    }

    /// A reload replaced the upstream: its watch task ends.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    /// The consistent-hash key of a request, when the upstream hashes and
    /// the request carries the key.
    pub fn hash_key(&self, fields: FieldsView<'_>, client: IpAddr) -> Option<u64> {
        match self.hash_on.as_ref()? {
            HashOn::Header(name) => fields.first(name).map(hash64),
            HashOn::Cookie(name) => cookie(fields, name).map(hash64),
            HashOn::ClientIp => Some(match client {
                IpAddr::V4(ip) => hash64(&ip.octets()),
                IpAddr::V6(ip) => hash64(&ip.octets()),
            }),
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` fields.
fn cookie<'a>(fields: FieldsView<'a>, name: &str) -> Option<&'a [u8]> {
    fields.find_map(&COOKIE, |v| {
        v.split(|&b| b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let (k, val) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
            (k == name.as_bytes()).then_some(&val[1..])
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn cookie_lookup() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; session=xyz ;b=2"));
        h.append(COOKIE, HeaderValue::from_static("late=3"));
        let v = FieldsView::Map(&h);
        assert_eq!(cookie(v, "session"), Some(&b"xyz"[..]));
        assert_eq!(cookie(v, "late"), Some(&b"3"[..]));
        assert_eq!(cookie(v, "sess"), None);
        assert_eq!(cookie(v, "b"), Some(&b"2"[..]));
    }
}
