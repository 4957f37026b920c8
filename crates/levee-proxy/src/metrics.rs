//! The proxy's metrics, in Prometheus form.
//!
//! Names follow `levee_<subsystem>_<what>_<unit>`. Every label value comes
//! from a closed set: names declared in the config (routes, upstreams,
//! listeners), status classes, or [`ErrorKind`] causes — never a raw path,
//! header or error message, so a client cannot blow up the series count.
//!
//! Handles for a route's series are resolved once per config snapshot, so
//! the request path increments atomics rather than hashing label sets.

use std::sync::Arc;

use levee_core::attempt::Stop;
use levee_core::concurrency::Priority;
use levee_core::fault::Kind as FaultKind;
use levee_core::outcome::{ErrorKind, StatusClass};
use levee_core::outlier::Detector;

use self::recorder::Recorder;
use crate::server::h2::guard::Abuse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The access log's series, resolved once.
#[derive(Clone)]
pub(crate) struct AccessLogMetrics {
    pub records: Counter,
    /// Entries dropped because the buffer was full.
    pub dropped_full: Counter,
    /// Entries lost with a write that failed.
    pub dropped_write: Counter,
    pub write_errors: Counter,
}

/// Per-endpoint series, resolved once.
pub(crate) struct EndpointMetrics {
    pub healthy: Gauge,
    pub check_ok: Counter,
    pub check_failed: Counter,
    pub ejected: Gauge,
    /// By detector: consecutive 5xx, consecutive gateway failure, success rate.
    pub ejections: [Counter; 3],
}

/// Counts of clients dropped for being too slow, by phase.
#[derive(Clone, Debug, Default)]
pub(crate) struct SlowClients {
    /// The request head did not come within `header_timeout`.
    pub head: Counter,
    /// The request body stalled or crawled below `body_min_rate`.
    pub body: Counter,
    /// The client did not take the response within `body_timeout`.
    pub send: Counter,
}

/// A listener's `levee_http2_abuse_total` series, in [`Abuse::ALL`] order.
pub(crate) type AbuseCounters = [Counter; Abuse::ALL.len()];

mod process;
pub(crate) mod recorder;
mod text;

/// Request latency buckets, in seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub upstream: String,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    pub route: String,
    pub kind: &'static str,
}

fn register_faults(registry: &mut Registry) -> Family<FaultLabels, Counter> {
    let faults = Family::<FaultLabels, Counter>::default();
    registry.register(
        "route_faults_injected",
        "Faults injected into requests (route.fault, fault headers or the admin API), by kind",
        faults.clone(),
    );
    faults
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub listener: String,
    /// A [`crate::server::gate::Refusal`].
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlowLabels {
    pub listener: String,
    /// `head`, `body` or `send`.
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabels {
    pub upstream: String,
    /// A route's `priority`.
    pub priority: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AbuseLabels {
    pub listener: String,
    /// An [`Abuse`] reason.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleDecisionLabels {
    pub rule: String,
    /// `allowed` or `limited`.
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub upstream: String,
    pub region: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub upstream: String,
    pub region: String,
    pub endpoint: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriorityLabels {
    pub upstream: String,
    pub priority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabels {
    pub upstream: String,
    pub region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub upstream: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub upstream: String,
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EjectionLabels {
    pub upstream: String,
    pub region: String,
    pub endpoint: String,
    pub detector: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every metric the data plane records, registered in one registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<RouteLabels>,
    /// One counter per [`ErrorKind`], in `ErrorKind::ALL` order.
    generated: Arc<[Counter; ErrorKind::ALL.len()]>,
    pub(crate) connections_active: Family<ListenerLabels, Gauge>,
    pub(crate) connections_total: Family<ListenerLabels, Counter>,
    pub(crate) connections_refused: Family<RefusedLabels, Counter>,
    slow_clients: Family<SlowLabels, Counter>,
    h2_abuse: Family<AbuseLabels, Counter>,
    rate_limit_decisions: Family<RuleDecisionLabels, Counter>,
    concurrency_limit: Family<UpstreamLabels, Gauge>,
    shed: Family<ShedLabels, Counter>,
    rate_limit_fallbacks: Family<RuleLabels, Counter>,
    pub(crate) rate_limit_keys: Family<RuleLabels, Gauge>,
    pub(crate) redis_up: Gauge,
    pub(crate) upstream_connects: Family<EndpointLabels, Counter>,
    pub(crate) upstream_in_flight: Family<EndpointLabels, Gauge>,
    upstreams: UpstreamFamilies,
    reloads: Family<ResultLabels, Counter>,
    faults: Family<FaultLabels, Counter>,
    pub(crate) access_log: AccessLogMetrics,
}

/// The upstream and endpoint series.
struct UpstreamFamilies {
    upstream_healthy: Family<EndpointLabels, Gauge>,
    health_checks: Family<CheckLabels, Counter>,
    upstream_ejected: Family<EndpointLabels, Gauge>,
    ejections: Family<EjectionLabels, Counter>,
    priority_share: Family<PriorityLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    priority_panic: Family<PriorityLabels, Gauge>,
    failover_active: Family<UpstreamLabels, Gauge>,
    region_healthy: Family<RegionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    attempts: Family<UpstreamLabels, Counter>,
    retries: Family<ReasonLabels, Counter>,
    budget_exhausted: Family<UpstreamLabels, Counter>,
    overflow: Family<LimitLabels, Counter>,
    retried: Family<RetriedLabels, Counter>,
    failed_requests: Family<ReasonLabels, Counter>,
}

impl UpstreamFamilies {
    fn register(registry: &mut Registry) -> UpstreamFamilies {
        let upstream_healthy = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "upstream_endpoint_healthy",
            "1 while an upstream endpoint is taking traffic, 0 while its health checks fail",
            upstream_healthy.clone(),
        );
        let health_checks = Family::<CheckLabels, Counter>::default();
        registry.register(
            "upstream_health_checks",
            "Active health check probes, by result",
            health_checks.clone(),
        );
        let upstream_ejected = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "upstream_endpoint_ejected",
            "1 while passive outlier detection keeps an endpoint out of rotation",
            upstream_ejected.clone(),
        );
        let ejections = Family::<EjectionLabels, Counter>::default();
        registry.register(
            "upstream_ejections",
            "Endpoints ejected by passive outlier detection, by detector",
            ejections.clone(),
        );
        let priority_share = Family::<PriorityLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "upstream_priority_share",
            "Share of an upstream's requests sent to each priority level (0 to 1)",
            priority_share.clone(),
        );
        let priority_panic = Family::<PriorityLabels, Gauge>::default();
        registry.register(
            "upstream_priority_panic",
            "1 while a priority level is in panic (its traffic goes to all its endpoints)",
            priority_panic.clone(),
        );
        let failover_active = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "upstream_failover_active",
            "1 while part of an upstream's traffic goes to a less preferred priority level than its first",
            failover_active.clone(),
        );
        let region_healthy = Family::<RegionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "upstream_region_healthy_ratio",
            "Share of a region's endpoint weight that can take traffic (0 to 1); drained endpoints are left out",
            region_healthy.clone(),
        );
        let attempts = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_attempts",
            "Requests sent to an upstream's endpoints, first tries and retries",
            attempts.clone(),
        );
        let retries = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "upstream_retries",
            "Retries sent, by the reason the previous try failed",
            retries.clone(),
        );
        let budget_exhausted = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_retry_budget_exhausted",
            "Retries not sent because the upstream's retry budget was spent",
            budget_exhausted.clone(),
        );
        let retried = Family::<RetriedLabels, Counter>::default();
        registry.register(
            "upstream_retried_requests",
            "Requests that needed at least one retry, by how they ended (success: a response below 500)",
            retried.clone(),
        );
        let failed_requests = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "upstream_failed_requests",
            "Requests whose tries ended in a failure (a 5xx or 429, or levee's refusal), by what kept a retry from saving them",
            failed_requests.clone(),
        );
        let overflow = Family::<LimitLabels, Counter>::default();
        registry.register(
            "upstream_overflow",
            "Requests or retries refused by a full circuit breaker, by limit",
            overflow.clone(),
        );
        UpstreamFamilies {
            upstream_healthy,
            health_checks,
            upstream_ejected,
            ejections,
            priority_share,
            priority_panic,
            failover_active,
            region_healthy,
            attempts,
            retries,
            budget_exhausted,
            overflow,
            retried,
            failed_requests,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetriedLabels {
    pub upstream: String,
    pub result: &'static str,
}

/// The closed set of circuit-breaker limits, for the overflow metric.
pub(crate) const LIMITS: [&str; 4] = ["connections", "pending", "requests", "retries"];
/// The closed set of retry reasons, as [`levee_core::retry::Reason::as_str`] names them.
pub(crate) const RETRY_REASONS: [&str; 4] = ["connect_failure", "reset", "timeout", "status"];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("levee");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, upstream and status class",
            requests.clone(),
        );
        let duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time from the request head to the end of the response body",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        let generated = Family::<CauseLabels, Counter>::default();
        registry.register(
            "http_generated_responses",
            "Responses levee generated itself, by Proxy-Status cause",
            generated.clone(),
        );
        let connections_active = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "listener_connections_active",
            "Client connections open now",
            connections_active.clone(),
        );
        let connections_total = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "listener_connections",
            "Client connections accepted",
            connections_total.clone(),
        );
        let slow_clients = Family::<SlowLabels, Counter>::default();
        registry.register(
            "listener_slow_clients",
            "Client connections dropped for being too slow: the request head (header_timeout), \
             the request body (body_timeout, body_min_rate) or taking the response (body_timeout)",
            slow_clients.clone(),
        );
        let connections_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "listener_connections_refused",
            "Client connections closed at accept: denied by an access list, or over a connection cap",
            connections_refused.clone(),
        );
        let concurrency_limit = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "upstream_concurrency_limit",
            "The upstream's adaptive concurrency limit: requests it may have in flight now",
            concurrency_limit.clone(),
        );
        let shed = Family::<ShedLabels, Counter>::default();
        registry.register(
            "upstream_shed",
            "Requests answered 503 at once because the upstream's adaptive concurrency limit was reached for their priority",
            shed.clone(),
        );
        let h2_abuse = Family::<AbuseLabels, Counter>::default();
        registry.register(
            "http2_abuse",
            "HTTP/2 client connections ended in GOAWAY ENHANCE_YOUR_CALM, by the limit the client broke",
            h2_abuse.clone(),
        );
        let rate_limit_decisions = Family::<RuleDecisionLabels, Counter>::default();
        registry.register(
            "rate_limit_decisions",
            "Requests a rate limit rule decided on, by decision (allowed, limited)",
            rate_limit_decisions.clone(),
        );
        let rate_limit_fallbacks = Family::<RuleLabels, Counter>::default();
        registry.register(
            "rate_limit_redis_fallbacks",
            "Decisions of a Redis rule taken locally (this instance's share) because Redis was down, slow or busy",
            rate_limit_fallbacks.clone(),
        );
        let rate_limit_keys = Family::<RuleLabels, Gauge>::default();
        registry.register(
            "rate_limit_keys",
            "Keys a rule holds in this instance's table",
            rate_limit_keys.clone(),
        );
        let redis_up = Gauge::default();
        registry.register(
            "rate_limit_redis_up",
            "1 while levee is connected to the Redis of [redis], else 0",
            redis_up.clone(),
        );
        let upstream_connects = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "upstream_connections",
            "Connections opened to upstream endpoints",
            upstream_connects.clone(),
        );
        let upstream_in_flight = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "upstream_requests_in_flight",
            "Requests in flight to an upstream endpoint",
            upstream_in_flight.clone(),
        );
        let upstreams = UpstreamFamilies::register(&mut registry);
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, by result",
            reloads.clone(),
        );
        let access_log = register_access_log(&mut registry);
        let faults = register_faults(&mut registry);
        registry.register_collector(Box::new(process::Collector));
        // Every cause and reload result is visible from the start, at 0, so
        // alerts on rates see a series before the first event.
        let generated = Arc::new(ErrorKind::ALL.map(|kind| {
            generated.get_or_create_owned(&CauseLabels {
                cause: kind.proxy_status(),
            })
        }));
        for result in ["success", "failure"] {
            let _ = reloads.get_or_create(&ResultLabels { result });
        }
        Metrics {
            registry,
            requests,
            duration,
            generated,
            connections_active,
            connections_total,
            connections_refused,
            slow_clients,
            h2_abuse,
            rate_limit_decisions,
            concurrency_limit,
            shed,
            rate_limit_fallbacks,
            rate_limit_keys,
            redis_up,
            upstream_connects,
            upstream_in_flight,
            upstreams,
            reloads,
            faults,
            access_log,
        }
    }

    /// The registry, for the admin listener to encode.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registry, for parts outside the data plane (alerting) to add
    /// their metrics to the one exposition, before the gateway starts.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The whole exposition in OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The whole exposition in the Prometheus text format (version 0.0.4),
    /// for scrapers that do not ask for OpenMetrics (`promtool check
    /// metrics` among them).
    pub fn encode_prometheus(&self) -> String {
        text::from_openmetrics(&self.encode())
    }

    /// A listener's `levee_http2_abuse_total` series, every reason visible
    /// from the start at 0.
    pub(crate) fn h2_abuse(&self, listener: &str) -> AbuseCounters {
        Abuse::ALL.map(|abuse| {
            self.h2_abuse.get_or_create_owned(&AbuseLabels {
                listener: listener.to_string(),
                reason: abuse.as_str(),
            })
        })
    }

    /// Handles for one endpoint's health series.
    pub(crate) fn endpoint(&self, labels: &EndpointLabels) -> EndpointMetrics {
        let check = |result| {
            self.upstreams.health_checks.get_or_create_owned(&CheckLabels {
                upstream: labels.upstream.clone(),
                region: labels.region.clone(),
                endpoint: labels.endpoint.clone(),
                result,
            })
        };
        let ejections = [
            Detector::Consecutive5xx,
            Detector::ConsecutiveGatewayFailure,
            Detector::SuccessRate,
        ]
        .map(|d| {
            self.upstreams.ejections.get_or_create_owned(&EjectionLabels {
                upstream: labels.upstream.clone(),
                region: labels.region.clone(),
                endpoint: labels.endpoint.clone(),
                detector: d.as_str(),
            })
        });
        EndpointMetrics {
            healthy: self.upstreams.upstream_healthy.get_or_create_owned(labels),
            check_ok: check("success"),
            check_failed: check("failure"),
            ejected: self.upstreams.upstream_ejected.get_or_create_owned(labels),
            ejections,
        }
    }

    /// Handles for one upstream's resilience series; `priorities` are its
    /// levels, most preferred first.
    pub(crate) fn upstream(&self, upstream: &str, priorities: &[u32], regions: &[&str]) -> UpstreamMetrics {
        let u = || UpstreamLabels {
            upstream: upstream.to_string(),
        };
        let level = |p: &u32| PriorityLabels {
            upstream: upstream.to_string(),
            priority: p.to_string(),
        };
        UpstreamMetrics {
            share: priorities
                .iter()
                .map(|p| self.upstreams.priority_share.get_or_create_owned(&level(p)))
                .collect(),
            panic: priorities
                .iter()
                .map(|p| self.upstreams.priority_panic.get_or_create_owned(&level(p)))
                .collect(),
            failover_active: self.upstreams.failover_active.get_or_create_owned(&u()),
            region_healthy: regions
                .iter()
                .map(|r| {
                    self.upstreams.region_healthy.get_or_create_owned(&RegionLabels {
                        upstream: upstream.to_string(),
                        region: r.to_string(),
                    })
                })
                .collect(),
            attempts: self.upstreams.attempts.get_or_create_owned(&u()),
            retries: RETRY_REASONS.map(|reason| {
                self.upstreams.retries.get_or_create_owned(&ReasonLabels {
                    upstream: upstream.to_string(),
                    reason,
                })
            }),
            budget_exhausted: self.upstreams.budget_exhausted.get_or_create_owned(&u()),
            overflow: LIMITS.map(|limit| {
                self.upstreams.overflow.get_or_create_owned(&LimitLabels {
                    upstream: upstream.to_string(),
                    limit,
                })
            }),
            retried: ["success", "failure"].map(|result| {
                self.upstreams.retried.get_or_create_owned(&RetriedLabels {
                    upstream: upstream.to_string(),
                    result,
                })
            }),
            failed: Stop::ALL.map(|stop| {
                self.upstreams.failed_requests.get_or_create_owned(&ReasonLabels {
                    upstream: upstream.to_string(),
                    reason: stop.as_str(),
                })
            }),
            concurrency_limit: self.concurrency_limit.get_or_create_owned(&u()),
            shed: Priority::ALL.map(|p| {
                self.shed.get_or_create_owned(&ShedLabels {
                    upstream: upstream.to_string(),
                    priority: p.as_str(),
                })
            }),
        }
    }

    /// A listener's slow-client counters.
    pub(crate) fn slow_clients(&self, listener: &str) -> SlowClients {
        let phase = |phase| {
            self.slow_clients.get_or_create_owned(&SlowLabels {
                listener: listener.to_string(),
                phase,
            })
        };
        SlowClients {
            head: phase("head"),
            body: phase("body"),
            send: phase("send"),
        }
    }

    /// A rule's (allowed, limited, Redis fallback) counters.
    pub(crate) fn rate_limit(&self, rule: &str) -> (Counter, Counter, Counter) {
        let decision = |d| {
            self.rate_limit_decisions
                .get_or_create_owned(&RuleDecisionLabels {
                    rule: rule.to_string(),
                    decision: d,
                })
        };
        let fallback = self.rate_limit_fallbacks.get_or_create_owned(&RuleLabels {
            rule: rule.to_string(),
        });
        (decision("allowed"), decision("limited"), fallback)
    }

    /// Handles for one route's series (or the unmatched pseudo-route).
    /// `recorder` is the upstream's, for the history.
    pub(crate) fn route(
        &self,
        route: &str,
        upstream: &str,
        recorder: Option<Arc<Recorder>>,
    ) -> Arc<RouteMetrics> {
        let by_class = [
            StatusClass::Informational,
            StatusClass::Success,
            StatusClass::Redirection,
            StatusClass::ClientError,
            StatusClass::ServerError,
        ]
        .map(|class| {
            self.requests.get_or_create_owned(&RequestLabels {
                route: route.to_string(),
                upstream: upstream.to_string(),
                status_class: class.as_str(),
            })
        });
        let duration = self.duration.get_or_create_owned(&RouteLabels {
            route: route.to_string(),
            upstream: upstream.to_string(),
        });
        let faults = FaultKind::ALL.map(|kind| {
            self.faults.get_or_create_owned(&FaultLabels {
                route: route.to_string(),
                kind: kind.as_str(),
            })
        });
        Arc::new(RouteMetrics {
            by_class,
            duration,
            generated: self.generated.clone(),
            faults,
            recorder,
        })
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }
}

/// `levee_access_log_*`; every series visible from the start, at 0.
fn register_access_log(registry: &mut Registry) -> AccessLogMetrics {
    let records = Counter::default();
    registry.register("access_log_records", "Access log lines written", records.clone());
    let dropped = Family::<DropLabels, Counter>::default();
    registry.register(
        "access_log_dropped",
        "Access log lines lost: the buffer was full (buffer_full) or their write failed (write_error)",
        dropped.clone(),
    );
    let write_errors = Counter::default();
    registry.register(
        "access_log_write_errors",
        "Access log writes (or opens of its file) that failed",
        write_errors.clone(),
    );
    AccessLogMetrics {
        records,
        dropped_full: dropped.get_or_create_owned(&DropLabels {
            reason: "buffer_full",
        }),
        dropped_write: dropped.get_or_create_owned(&DropLabels {
            reason: "write_error",
        }),
        write_errors,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `buffer_full` or `write_error`.
    pub reason: &'static str,
}

/// One upstream's resilience series, resolved once per snapshot.
pub(crate) struct UpstreamMetrics {
    /// By level, most preferred first.
    pub share: Vec<Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub panic: Vec<Gauge>,
    pub failover_active: Gauge,
    /// By region, in [`crate::upstream::Upstream::regions`] order.
    pub region_healthy: Vec<Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub attempts: Counter,
    /// In [`RETRY_REASONS`] order.
    pub retries: [Counter; 4],
    pub budget_exhausted: Counter,
    /// In [`LIMITS`] order.
    pub overflow: [Counter; 4],
    /// Requests that needed retries: succeeded, failed.
    pub retried: [Counter; 2],
    /// Requests that ended on a failure, in `Stop::ALL` order.
    pub failed: [Counter; Stop::ALL.len()],
    /// The adaptive concurrency limit now (0 without one).
    pub concurrency_limit: Gauge,
    /// Requests shed by the adaptive limit, in `Priority::ALL` order.
    pub shed: [Counter; 3],
}

impl UpstreamMetrics {
    pub fn retry(&self, reason: levee_core::retry::Reason) {
        if let Some(i) = RETRY_REASONS.iter().position(|&r| r == reason.as_str()) {
            self.retries[i].inc();
        }
    }

    /// Counts a request that ended on a failure no retry saved, by why.
    pub fn failed(&self, stop: Stop) {
        if let Some(i) = Stop::ALL.iter().position(|&s| s == stop) {
            self.failed[i].inc();
        }
    }

    pub fn overflow(&self, limit: Limit) {
        self.overflow[limit as usize].inc();
    }
}

/// A circuit breaker's limit, indexing [`LIMITS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    Connections = 0,
    Pending = 1,
    Requests = 2,
    Retries = 3,
}

/// One route's request counters by status class and its latency histogram.
pub(crate) struct RouteMetrics {
    by_class: [Counter; 5],
    duration: Histogram,
    generated: Arc<[Counter; ErrorKind::ALL.len()]>,
    /// Faults injected, in `FaultKind::ALL` order.
    faults: [Counter; FaultKind::ALL.len()],
    recorder: Option<Arc<Recorder>>,
}

impl RouteMetrics {
    /// Counts the faults injected into one request.
    pub fn faulted(&self, kinds: impl Iterator<Item = FaultKind>) {
        for kind in kinds {
            if let Some(i) = FaultKind::ALL.iter().position(|&k| k == kind) {
                self.faults[i].inc();
            }
        }
    }

    /// Counts a response levee generated itself.
    pub fn generated(&self, kind: ErrorKind) {
        if let Some(i) = ErrorKind::ALL.iter().position(|&k| k == kind) {
            self.generated[i].inc();
        }
    }

    pub fn record(&self, status: u16, seconds: f64) {
        self.by_class[StatusClass::of(status).index()].inc();
        self.duration.observe(seconds);
        if let Some(r) = &self.recorder {
            r.record(status, seconds);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_documented_names() {
        let m = Metrics::new();
        let route = m.route("api", "app", None);
        route.record(204, 0.003);
        route.generated(ErrorKind::NoRoute);
        m.reload(true);
        let abuse = m.h2_abuse("main");
        abuse[Abuse::PingFlood.index()].inc();
        let text = m.encode();
        for needle in [
            "levee_http_requests_total{route=\"api\",upstream=\"app\",status_class=\"2xx\"} 1",
            "levee_http_request_duration_seconds_bucket{le=\"0.005\",route=\"api\",upstream=\"app\"} 1",
            "levee_http_generated_responses_total{cause=\"destination_not_found\"} 1",
            "levee_http_generated_responses_total{cause=\"connection_refused\"} 0",
            "levee_config_reloads_total{result=\"success\"} 1",
            "levee_http2_abuse_total{listener=\"main\",reason=\"ping_flood\"} 1",
            "levee_http2_abuse_total{listener=\"main\",reason=\"rapid_reset\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
