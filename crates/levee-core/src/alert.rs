//! Alerting policy: what an alert rule watches, and the facts it is
//! evaluated on.
//!
//! A rule names a [`Kind`]; at each evaluation the evaluator asks a
//! [`Source`] for the current [`Fact`]s of that kind (one per endpoint,
//! region, upstream, rule or process, as the kind goes) and compares each
//! fact's value with the rule's threshold. The source reads metric
//! snapshots taken off the request path; nothing here does I/O.
//!
//! Each (rule, instance) goes through the states of Prometheus's alerting
//! rules ([`RuleState::step`]): inactive → pending (the condition holds) →
//! firing (it has held for the rule's `for`) → resolved (it no longer
//! holds; reported once, then forgotten). How firing and resolved alerts
//! are batched into notifications is [`group`]'s policy.

pub mod group;

use std::collections::{BTreeMap, HashSet};
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

    /// The labels of its facts, in order: what names one instance.
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            Kind::EndpointDown => &["upstream", "region", "endpoint"],
            Kind::RegionDegraded => &["upstream", "region"],
            Kind::FailoverActive
            | Kind::ErrorRatio
            | Kind::LatencyP99
            | Kind::Shedding
            | Kind::RetryBudgetExhausted => &["upstream"],
            Kind::RateLimited => &["rate_limit"],
            Kind::RedisDegraded | Kind::ReloadFailed => &[],
        }
    }

    /// Whether a fact's value is 1 or 0 (down or not): such kinds have no
    /// threshold to set.
    pub fn is_boolean(self) -> bool {
        matches!(
            self,
            Kind::EndpointDown | Kind::RedisDegraded | Kind::ReloadFailed
        )
    }

    /// A value (or threshold) of this kind as people read it: shares as
    /// percentages, latencies in ms or s, rates per second.
    pub fn format_value(self, value: f64) -> String {
        if value.is_nan() {
            return "n/a".to_string();
        }
        match self {
            Kind::RegionDegraded | Kind::FailoverActive | Kind::ErrorRatio => {
                format!("{}%", trim(value * 100.0))
            }
            Kind::LatencyP99 if value < 1.0 => format!("{}ms", trim(value * 1000.0)),
            Kind::LatencyP99 => format!("{}s", trim(value)),
            Kind::Shedding | Kind::RateLimited => format!("{}/s", trim(value)),
            Kind::RetryBudgetExhausted | Kind::EndpointDown | Kind::RedisDegraded | Kind::ReloadFailed => {
                trim(value)
            }
        }
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

/// A number with at most one decimal (more below 1), without a trailing
/// `.0`: `12.5`, `3`, `0.25`.
fn trim(v: f64) -> String {
    let text = if v.abs() >= 1.0 || v == 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    };
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    text.to_string()
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

/// How urgent an alert is: its `severity` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Critical, Severity::Warning, Severity::Info];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// When a rule's condition holds for a fact, and for how long it must hold
/// before the alert fires.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Condition {
    pub kind: Kind,
    /// Compared with each fact's value: the alert is active while the value
    /// is above it (below it for [`Kind::fires_below`]).
    pub threshold: f64,
    /// The rule's `for`: how long the condition must hold before firing.
    pub hold: Duration,
}

impl Condition {
    /// Whether a value breaches the threshold. A value that is not a number
    /// (a ratio over no requests) says nothing, so it breaches nothing.
    pub fn breached(&self, value: f64) -> bool {
        if value.is_nan() {
            return false;
        }
        if self.kind.fires_below() {
            value < self.threshold
        } else {
            value > self.threshold
        }
    }
}

/// Where an active alert instance is in its life. Inactive instances are
/// not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The condition holds, not yet for the rule's `for`.
    Pending,
    Firing,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Firing => "firing",
        }
    }
}

/// The labels that name an instance of a rule: a fact's labels.
pub type Labels = Vec<(&'static str, String)>;

/// One active alert: a rule's condition holding for one fact's labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub labels: Labels,
    /// The fact's value at the last evaluation.
    pub value: f64,
    pub state: State,
    /// When the condition started to hold.
    pub active_since: Instant,
    /// The same moment on the wall clock, in milliseconds since the Unix
    /// epoch (for notifications and the API).
    pub active_since_ms: u64,
    /// When it started firing, on the wall clock; `None` while pending.
    pub firing_since_ms: Option<u64>,
}

/// A change of an instance's state, as one evaluation found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// inactive → pending.
    Pending,
    /// pending → firing (or inactive → firing, for a rule without `for`).
    Firing,
    /// firing → resolved: the condition no longer holds.
    Resolved,
    /// pending → inactive: the condition ended before `for`. Never notified.
    Inactive,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Pending => "pending",
            Change::Firing => "firing",
            Change::Resolved => "resolved",
            Change::Inactive => "inactive",
        }
    }
}

/// One state change and the instance it happened to (as it was at the
/// change: a resolved instance's last value is the one that breached).
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub change: Change,
    pub instance: Instance,
    /// For [`Change::Resolved`], when it resolved (wall clock ms).
    pub resolved_ms: Option<u64>,
}

/// The active instances of one rule. Instances are keyed by their labels;
/// an instance whose fact disappears (an endpoint removed by a reload)
/// counts as no longer breaching.
#[derive(Clone, Debug, Default)]
pub struct RuleState {
    instances: BTreeMap<Labels, Instance>,
}

impl RuleState {
    pub fn new() -> RuleState {
        RuleState::default()
    }

    /// Evaluates the rule on this evaluation's facts. `now` is monotonic
    /// (for `for`); `now_ms` is the same moment on the wall clock. Returns
    /// the state changes, in label order.
    pub fn step(
        &mut self,
        condition: &Condition,
        facts: &[Fact],
        now: Instant,
        now_ms: u64,
    ) -> Vec<Transition> {
        let mut changes = Vec::new();
        let mut seen: HashSet<&Labels> = HashSet::with_capacity(facts.len());
        // The instances whose condition holds now; every other one ends.
        let mut breaching: HashSet<&Labels> = HashSet::with_capacity(self.instances.len());
        for fact in facts {
            // A source that repeats an instance is believed once.
            if !seen.insert(&fact.labels) || !condition.breached(fact.value) {
                continue;
            }
            breaching.insert(&fact.labels);
            match self.instances.get_mut(&fact.labels) {
                None => {
                    let mut instance = Instance {
                        labels: fact.labels.clone(),
                        value: fact.value,
                        state: State::Pending,
                        active_since: now,
                        active_since_ms: now_ms,
                        firing_since_ms: None,
                    };
                    if condition.hold.is_zero() {
                        // Without `for` an alert fires at once; it is never
                        // reported as pending.
                        instance.state = State::Firing;
                        instance.firing_since_ms = Some(now_ms);
                        changes.push(transition(Change::Firing, &instance, None));
                    } else {
                        changes.push(transition(Change::Pending, &instance, None));
                    }
                    self.instances.insert(fact.labels.clone(), instance);
                }
                Some(instance) => {
                    instance.value = fact.value;
                    if instance.state == State::Pending
                        && now.saturating_duration_since(instance.active_since) >= condition.hold
                    {
                        instance.state = State::Firing;
                        instance.firing_since_ms = Some(now_ms);
                        changes.push(transition(Change::Firing, instance, None));
                    }
                }
            }
        }
        let ended: Vec<Labels> = self
            .instances
            .keys()
            .filter(|labels| !breaching.contains(labels))
            .cloned()
            .collect();
        for labels in ended {
            if let Some(instance) = self.instances.remove(&labels) {
                changes.push(end(instance, now_ms));
            }
        }
        changes
    }

    /// Ends every active instance, as when the rule is removed: firing ones
    /// resolve, pending ones return to inactive.
    pub fn clear(&mut self, now_ms: u64) -> Vec<Transition> {
        std::mem::take(&mut self.instances)
            .into_values()
            .map(|instance| end(instance, now_ms))
            .collect()
    }

    /// The active instances, in label order.
    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values()
    }
}

/// The transition of an instance whose condition no longer holds.
fn end(instance: Instance, now_ms: u64) -> Transition {
    match instance.state {
        State::Firing => Transition {
            change: Change::Resolved,
            instance,
            resolved_ms: Some(now_ms),
        },
        State::Pending => Transition {
            change: Change::Inactive,
            instance,
            resolved_ms: None,
        },
    }
}

fn transition(change: Change, instance: &Instance, resolved_ms: Option<u64>) -> Transition {
    Transition {
        change,
        instance: instance.clone(),
        resolved_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    fn fact(endpoint: &str, value: f64) -> Fact {
        Fact {
            labels: vec![
                ("upstream", "app".to_string()),
                ("endpoint", endpoint.to_string()),
            ],
            value,
        }
    }

    fn down(hold: Duration) -> Condition {
        Condition {
            kind: Kind::EndpointDown,
            threshold: 0.0,
            hold,
        }
    }

    fn changes(t: &[Transition]) -> Vec<(Change, String)> {
        t.iter()
            .map(|t| (t.change, t.instance.labels[1].1.clone()))
            .collect()
    }

    #[test]
    fn pending_then_firing_after_for_then_resolved_once() {
        let t0 = Instant::now();
        let c = down(10 * S);
        let mut r = RuleState::new();
        assert!(r.step(&c, &[fact("a", 0.0)], t0, 0).is_empty());
        let t = r.step(&c, &[fact("a", 1.0)], t0 + S, 1_000);
        assert_eq!(changes(&t), [(Change::Pending, "a".to_string())]);
        assert!(
            r.step(&c, &[fact("a", 1.0)], t0 + 10 * S, 10_000).is_empty(),
            "held 9 s of 10"
        );
        let t = r.step(&c, &[fact("a", 1.0)], t0 + 11 * S, 11_000);
        assert_eq!(changes(&t), [(Change::Firing, "a".to_string())]);
        assert_eq!(t[0].instance.active_since_ms, 1_000);
        assert_eq!(t[0].instance.firing_since_ms, Some(11_000));
        assert!(r.step(&c, &[fact("a", 1.0)], t0 + 12 * S, 12_000).is_empty());
        let t = r.step(&c, &[fact("a", 0.0)], t0 + 13 * S, 13_000);
        assert_eq!(changes(&t), [(Change::Resolved, "a".to_string())]);
        assert_eq!(t[0].resolved_ms, Some(13_000));
        assert!(
            r.step(&c, &[fact("a", 0.0)], t0 + 14 * S, 14_000).is_empty(),
            "then forgotten"
        );
        assert_eq!(r.instances().count(), 0);
    }

    #[test]
    fn without_for_it_fires_at_once_and_is_never_pending() {
        let t0 = Instant::now();
        let mut r = RuleState::new();
        let t = r.step(&down(Duration::ZERO), &[fact("a", 1.0)], t0, 0);
        assert_eq!(changes(&t), [(Change::Firing, "a".to_string())]);
    }

    #[test]
    fn pending_that_ends_goes_back_to_inactive_without_resolving() {
        let t0 = Instant::now();
        let c = down(10 * S);
        let mut r = RuleState::new();
        r.step(&c, &[fact("a", 1.0)], t0, 0);
        let t = r.step(&c, &[fact("a", 0.0)], t0 + 5 * S, 5_000);
        assert_eq!(changes(&t), [(Change::Inactive, "a".to_string())]);
        // Breaching again starts the `for` over.
        r.step(&c, &[fact("a", 1.0)], t0 + 6 * S, 6_000);
        assert!(r.step(&c, &[fact("a", 1.0)], t0 + 15 * S, 15_000).is_empty());
        let t = r.step(&c, &[fact("a", 1.0)], t0 + 16 * S, 16_000);
        assert_eq!(changes(&t), [(Change::Firing, "a".to_string())]);
    }

    #[test]
    fn instances_are_kept_apart_and_a_vanished_fact_resolves() {
        let t0 = Instant::now();
        let c = down(Duration::ZERO);
        let mut r = RuleState::new();
        let t = r.step(&c, &[fact("a", 1.0), fact("b", 1.0), fact("c", 0.0)], t0, 0);
        assert_eq!(changes(&t).len(), 2);
        // "b" is gone from the facts (removed by a reload).
        let t = r.step(&c, &[fact("a", 1.0)], t0 + S, 1_000);
        assert_eq!(changes(&t), [(Change::Resolved, "b".to_string())]);
        assert_eq!(r.instances().count(), 1);
        let t = r.clear(2_000);
        assert_eq!(changes(&t), [(Change::Resolved, "a".to_string())]);
    }

    #[test]
    fn thresholds_compare_by_kind() {
        let degraded = Condition {
            kind: Kind::RegionDegraded,
            threshold: 0.5,
            hold: Duration::ZERO,
        };
        assert!(degraded.breached(0.33));
        assert!(!degraded.breached(0.5));
        assert!(!degraded.breached(1.0));
        let errors = Condition {
            kind: Kind::ErrorRatio,
            threshold: 0.05,
            hold: Duration::ZERO,
        };
        assert!(errors.breached(0.06));
        assert!(!errors.breached(0.05));
        assert!(!errors.breached(f64::NAN), "no requests is no error ratio");
    }

    #[test]
    fn the_value_follows_the_fact_while_active() {
        let t0 = Instant::now();
        let c = Condition {
            kind: Kind::ErrorRatio,
            threshold: 0.1,
            hold: Duration::ZERO,
        };
        let mut r = RuleState::new();
        r.step(&c, &[fact("a", 0.2)], t0, 0);
        r.step(&c, &[fact("a", 0.4)], t0 + S, 1_000);
        assert_eq!(r.instances().next().map(|i| i.value), Some(0.4));
    }

    #[test]
    fn values_read_as_people_read_them() {
        assert_eq!(Kind::ErrorRatio.format_value(0.125), "12.5%");
        assert_eq!(Kind::FailoverActive.format_value(1.0), "100%");
        assert_eq!(Kind::RegionDegraded.format_value(1.0 / 3.0), "33.3%");
        assert_eq!(Kind::LatencyP99.format_value(0.25), "250ms");
        assert_eq!(Kind::LatencyP99.format_value(1.5), "1.5s");
        assert_eq!(Kind::Shedding.format_value(0.25), "0.25/s");
        assert_eq!(Kind::RateLimited.format_value(12.0), "12/s");
        assert_eq!(Kind::EndpointDown.format_value(1.0), "1");
        assert_eq!(Kind::ErrorRatio.format_value(f64::NAN), "n/a");
    }

    #[test]
    fn severities_and_kinds_round_trip() {
        for s in Severity::ALL {
            assert_eq!(Severity::parse(s.as_str()), Some(s));
        }
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
    }

    proptest! {
        /// For any sequence of values: an instance fires only after its
        /// condition held without a break for `for`; every firing is
        /// followed by exactly one resolution before it fires again; a
        /// pending instance never resolves.
        #[test]
        fn states_follow_the_condition(
            hold_s in 0u64..5,
            values in proptest::collection::vec(any::<bool>(), 1..80),
        ) {
            let c = down(Duration::from_secs(hold_s));
            let t0 = Instant::now();
            let mut r = RuleState::new();
            let mut breached_since: Option<u64> = None;
            let mut firing = false;
            for (i, v) in values.iter().enumerate() {
                let i = i as u64;
                let t = r.step(&c, &[fact("a", if *v { 1.0 } else { 0.0 })], t0 + Duration::from_secs(i), i);
                if *v {
                    breached_since.get_or_insert(i);
                } else {
                    breached_since = None;
                }
                for tr in &t {
                    match tr.change {
                        Change::Firing => {
                            prop_assert!(!firing);
                            let since = breached_since.unwrap_or(i);
                            prop_assert!(i - since >= hold_s);
                            firing = true;
                        }
                        Change::Resolved => {
                            prop_assert!(firing);
                            prop_assert!(!*v);
                            firing = false;
                        }
                        Change::Pending => prop_assert!(hold_s > 0 && !firing),
                        Change::Inactive => prop_assert!(!firing && !*v),
                    }
                }
                // Firing exactly when the condition has held for `for`.
                let should = breached_since.is_some_and(|s| i - s >= hold_s);
                prop_assert_eq!(firing, should);
            }
        }
    }
}
