//! Alerting policy: what an alert rule watches, and the facts it is
//! evaluated on.
//!
//! A rule names a [`Kind`]; at each evaluation the evaluator asks a
//! [`Source`] for the current [`Fact`]s of that kind (one per endpoint,
//! region, upstream, rule or process, as the kind goes) and compares each
//! fact's value with the rule's threshold. The source reads metric
//! snapshots taken off the request path; nothing here does I/O.

use std::time::{Duration, Instant};

/// What an alert rule watches. The closed set of `kind` values of
/// `[[alert]]` in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An endpoint takes no traffic: its health checks fail or outlier
    /// detection ejected it. Value: 1 when down. One fact per endpoint.
    EndpointDown,
    /// The healthy share (by weight) of a region's endpoints. Fires when
    /// below the threshold. One fact per upstream and region.
    RegionDegraded,
    /// Traffic has left an upstream's most preferred priority level.
    /// Value: the share of traffic on the other levels (0 to 1).
    FailoverActive,
    /// 5xx responses (levee's own included) over all responses of an
    /// upstream, over the rule's window.
    ErrorRatio,
    /// An upstream's 99th percentile latency over the window, in seconds.
    LatencyP99,
    /// Requests shed by adaptive concurrency per second, over the window.
    Shedding,
    /// Requests a rate limit rule refused per second, over the window.
    RateLimited,
    /// Retries refused because an upstream's retry budget was spent, over
    /// the window.
    RetryBudgetExhausted,
    /// Redis of `[redis]` unreachable: value 1 while down.
    RedisDegraded,
    /// The last config reload failed: value 1 until one succeeds.
    ReloadFailed,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::EndpointDown,
        Kind::RegionDegraded,
        Kind::FailoverActive,
        Kind::ErrorRatio,
        Kind::LatencyP99,
        Kind::Shedding,
        Kind::RateLimited,
        Kind::RetryBudgetExhausted,
        Kind::RedisDegraded,
        Kind::ReloadFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::EndpointDown => "endpoint_down",
            Kind::RegionDegraded => "region_degraded",
            Kind::FailoverActive => "failover_active",
            Kind::ErrorRatio => "error_ratio",
            Kind::LatencyP99 => "latency_p99",
            Kind::Shedding => "shedding",
            Kind::RateLimited => "rate_limited",
            Kind::RetryBudgetExhausted => "retry_budget_exhausted",
            Kind::RedisDegraded => "redis_degraded",
            Kind::ReloadFailed => "reload_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether the rule fires when the value is below its threshold rather
    /// than above it.
    pub fn fires_below(self) -> bool {
        matches!(self, Kind::RegionDegraded)
    }

    /// Whether the kind reads a window of history (the rule's `window`).
    pub fn uses_window(self) -> bool {
        matches!(
            self,
            Kind::ErrorRatio
                | Kind::LatencyP99
                | Kind::Shedding
                | Kind::RateLimited
                | Kind::RetryBudgetExhausted
        )
    }
}

/// One observed value of a kind, for one instance: an endpoint, a region,
/// an upstream, a rate limit rule or the process, named by `labels`
/// (`upstream`, `region`, `endpoint`, `rate_limit`), in that order.
#[derive(Clone, Debug, PartialEq)]
pub struct Fact {
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

impl Fact {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Where facts come from. `window` is the rule's window for the kinds that
/// read history ([`Kind::uses_window`]); a window longer than the history
/// kept is cut to it.
pub trait Source {
    fn facts(&self, kind: Kind, window: Duration, now: Instant) -> Vec<Fact>;
}
