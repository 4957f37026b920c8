//! What the request path asks of an upstream: admission under its
//! adaptive limit and its breakers, an endpoint for each try, the retry
//! budget, and what each try taught about its endpoint. Each answer is
//! counted in the upstream's metrics here, so that no caller can forget.

use std::time::Duration;

use levee_core::attempt::Stop;
use levee_core::concurrency::{self, Priority};
use levee_core::failover::{Loads, undamped};
use levee_core::outlier::Observation;
use levee_core::retry::Reason;
use levee_core::select::Endpoints;
use levee_core::sync::lock;
use tokio::time::Instant;

use super::counters::{AwaitingHead, Slot, millis};
use super::{Choice, Upstream};
use crate::metrics::Limit;

impl Upstream {
    /// Admits a request of `priority` under the adaptive concurrency
    /// limit: a guard to hold until its response head (`None` without a
    /// limit), or, when the limit is reached for its class, the
    /// `Retry-After` of the shed 503.
    pub fn admit(&self, priority: Priority) -> Result<Option<AwaitingHead<'_>>, Duration> {
        let Some(adaptive) = &self.adaptive else {
            return Ok(None);
        };
        match self.counters.admit_adaptive(adaptive, priority) {
            Ok(awaiting) => Ok(Some(awaiting)),
            Err(retry_after) => {
                let class = Priority::ALL.iter().position(|p| *p == priority).unwrap_or(1);
                self.metrics.shed[class].inc();
                Err(retry_after)
            }
        }
    }

    /// A request's place in the requests breaker, held until its response
    /// ends; `None` when the upstream is full (a fast 503 rather than a
    /// queue).
    pub fn take_request_slot(&self, now: Instant) -> Option<Slot> {
        let slot = Slot::take(&self.counters, Limit::Requests, self.limits.max_requests);
        if slot.is_none() {
            self.metrics.overflow(Limit::Requests);
            if self.counters.warn_now(now) {
                tracing::warn!(
                    upstream = %self.name,
                    limit = self.limits.max_requests,
                    "circuit breaker: too many requests in flight, answering 503 (logged at most every 10 s)",
                );
            }
        }
        slot
    }

    /// A retry's (or hedge's) place in the retries breaker, held until it
    /// is answered; `None` when the breaker is full.
    pub fn take_retry_slot(&self, reason: Reason) -> Option<Slot> {
        let slot = Slot::take(&self.counters, Limit::Retries, self.limits.max_retries);
        match &slot {
            Some(_) => self.metrics.retry(reason),
            None => self.metrics.overflow(Limit::Retries),
        }
        slot
    }

    /// Takes the retry budget for one more try, if it allows; counts (and
    /// now and then logs) a try it refuses.
    pub fn take_retry_budget(&self, now: Instant) -> bool {
        let counters = &self.counters;
        let admitted =
            lock(&counters.budget).try_acquire(now.into_std(), counters.requests(), counters.retries());
        if !admitted {
            self.metrics.budget_exhausted.inc();
            if counters.warn_now(now) {
                tracing::warn!(
                    upstream = %self.name,
                    "retry budget exhausted: failed tries are not retried (logged at most every 10 s)",
                );
            }
        }
        admitted
    }

    /// An endpoint for a try: one not in `tried` when there is one, else
    /// any available; outside the priority level of endpoint `leave` when
    /// another level has one.
    ///
    /// A retry sees the levels' shares as if the endpoints already tried
    /// (and the level it leaves) were down: when a level's endpoints fail
    /// one after another (a region going dark), retries spill to the next
    /// level in proportion, as the shares will once the failures are known,
    /// rather than trying the dark level's endpoints one by one.
    pub fn pick(
        &self,
        tried: &[usize],
        leave: Option<usize>,
        hash: Option<u64>,
        now: Instant,
    ) -> Option<usize> {
        let now_ms = millis(now);
        let choose = |view: &Choice<'_>, loads: &Loads| {
            (self.selector)
                .select(view, loads, hash, fastrand::u64(..))
                .map(|s| s.endpoint)
        };
        let first = Choice {
            upstream: self,
            now_ms,
            tried: &[],
            leaving: None,
        };
        if tried.is_empty() && leave.is_none() {
            return choose(&first, &self.loads.load());
        }
        let retry = |leaving: Option<u32>| {
            let view = Choice {
                upstream: self,
                now_ms,
                tried,
                leaving,
            };
            let health = self.level_health(|i| view.available(i));
            choose(&view, &undamped(&self.failover_params, &health))
        };
        let leaving = leave.map(|e| self.endpoints[e].priority);
        (leaving.is_some().then(|| retry(leaving)).flatten())
            .or_else(|| retry(None))
            .or_else(|| choose(&first, &self.loads.load()))
    }

    /// Whether the priority level of `endpoint` looks like it is going
    /// down: another of its endpoints is out of rotation or failed a try
    /// moments ago.
    pub fn level_failing(&self, endpoint: usize, now: Instant) -> bool {
        let now_ms = millis(now);
        let priority = self.endpoints[endpoint].priority;
        (self.endpoints.iter().enumerate())
            .any(|(i, e)| i != endpoint && e.priority == priority && e.state.is_failing(now_ms))
    }

    /// Counts a try sent to one of the endpoints.
    pub fn count_try(&self) {
        self.metrics.attempts.inc();
    }

    /// Records what a try on `endpoint` taught: its latency and outlier
    /// streaks (with `observation`, ejecting the endpoint if a detector
    /// trips), and, with `completion`, a sample for the adaptive limit.
    pub fn observe(
        &self,
        endpoint: usize,
        now: Instant,
        latency: Duration,
        observation: Option<(Observation, bool)>,
        completion: Option<concurrency::Completion>,
    ) {
        if let Some((observation, failed)) = observation {
            let state = &self.endpoints[endpoint].state;
            if observation == Observation::GatewayFailure {
                state.failed(millis(now));
                self.probe_level_soon(endpoint);
            }
            if let Some(detector) = state.observe(now, latency, observation, failed, self) {
                self.consider_ejection(endpoint, detector, now);
            }
        }
        if let (Some(adaptive), Some(completion)) = (&self.adaptive, completion)
            && let Some(update) = lock(adaptive).record(now.into_std(), latency, completion)
        {
            self.metrics.concurrency_limit.set(i64::from(update.limit));
        }
    }

    /// Brings the active checks of `endpoint` and the rest of its level
    /// forward: a try on it failed, and a region going dark should be known
    /// in milliseconds, not at the next check. (Each checker keeps a
    /// minimum gap between probes, so a burst of failures probes once.)
    fn probe_level_soon(&self, endpoint: usize) {
        let priority = self.endpoints[endpoint].priority;
        for e in self.endpoints.iter().filter(|e| e.priority == priority) {
            e.state.probe_soon.notify_one();
        }
    }

    /// Counts a request that ended on a failure, by why no retry saved it.
    pub fn count_failed(&self, stop: Stop) {
        self.metrics.failed(stop);
    }

    /// Counts how a request that needed retries (`tries` > 1) ended.
    pub fn count_retried(&self, tries: usize, success: bool) {
        if tries > 1 {
            self.metrics.retried[usize::from(!success)].inc();
        }
    }
}
