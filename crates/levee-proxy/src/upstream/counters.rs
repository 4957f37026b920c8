//! Per-upstream counts behind the circuit breakers (requests, retries,
//! connections and connects pending), the requests awaiting a head under
//! the adaptive limit, and the retry budget: carried across reloads, and
//! read by everything that opens or sends on the upstream's behalf.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use levee_core::retry::Budget;
use levee_core::sync::lock;
use tokio::time::Instant;

use crate::metrics::Limit;
use crate::metrics::recorder::Recorder;

/// Milliseconds since a process-wide origin, plus one (so that 0 can mean
/// "never" in the atomics that hold these times).
pub(crate) fn millis(t: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    let since = t.saturating_duration_since(origin);
    // Not `as_millis`: a 128-bit division on every request.
    since.as_secs() * 1000 + u64::from(since.subsec_millis()) + 1
}

/// Per-upstream counts behind the circuit breakers, and the retry budget.
pub(crate) struct Counters {
    /// Client requests in flight (not attempts).
    requests: AtomicU64,
    /// Retries in flight.
    retries: AtomicU64,
    /// Connections open to the upstream's endpoints, idle ones included.
    connections: AtomicU64,
    /// Requests waiting for a connection to open.
    pending: AtomicU64,
    /// Requests the adaptive concurrency limit admitted that have no
    /// response head yet: what the limit is about (its samples are times
    /// to the head), unlike `requests`, which stay counted while a slow
    /// client takes its body.
    awaiting_head: AtomicU64,
    pub budget: Mutex<Budget>,
    /// Serialises ejection decisions, which read the whole upstream.
    pub ejecting: Mutex<()>,
    /// Responses and their latency, for the history and alert rules.
    pub recorder: Arc<Recorder>,
    /// When a breaker or the budget last logged a warning (a [`millis`]
    /// time): a storm of refusals is one line every 10 s, not one each.
    warned_at: AtomicU64,
}

/// A request counted in `Counters::awaiting_head` until dropped.
pub(crate) struct AwaitingHead<'a>(&'a AtomicU64);

impl Drop for AwaitingHead<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Counters {
    /// Admits a request under the adaptive limit, counting it until its
    /// response head (the guard's drop). Counted under the limiter's lock,
    /// so racing requests cannot both take the last place.
    pub fn admit_adaptive(
        &self,
        limiter: &Mutex<levee_core::concurrency::Limiter>,
        priority: levee_core::concurrency::Priority,
    ) -> Result<AwaitingHead<'_>, Duration> {
        let mut limiter = lock(limiter);
        let in_flight = u32::try_from(self.awaiting_head.load(Ordering::Acquire)).unwrap_or(u32::MAX);
        if limiter.try_admit(priority, in_flight).is_admitted() {
            self.awaiting_head.fetch_add(1, Ordering::AcqRel);
            Ok(AwaitingHead(&self.awaiting_head))
        } else {
            Err(limiter.retry_after())
        }
    }

    pub fn new(budget: Budget) -> Counters {
        Counters {
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            awaiting_head: AtomicU64::new(0),
            budget: Mutex::new(budget),
            ejecting: Mutex::new(()),
            recorder: Arc::new(Recorder::default()),
            warned_at: AtomicU64::new(0),
        }
    }

    /// Whether a refusal should be logged now (at most once every 10 s).
    pub fn warn_now(&self, now: Instant) -> bool {
        const EVERY_MS: u64 = 10_000;
        let now_ms = millis(now);
        let last = self.warned_at.load(Ordering::Relaxed);
        (last == 0 || now_ms >= last + EVERY_MS)
            && self
                .warned_at
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

/// One unit of a breaker's count, held while it lasts.
pub(crate) struct Slot {
    counters: Arc<Counters>,
    limit: Limit,
}

impl Slot {
    fn counter(&self) -> &AtomicU64 {
        let c = &self.counters;
        match self.limit {
            Limit::Connections => &c.connections,
            Limit::Pending => &c.pending,
            Limit::Requests => &c.requests,
            Limit::Retries => &c.retries,
        }
    }

    /// Takes a slot if fewer than `max` are taken. Increment first, then
    /// check, so that racing requests cannot both slip under the limit.
    pub fn take(counters: &Arc<Counters>, limit: Limit, max: u64) -> Option<Slot> {
        let slot = Slot {
            counters: counters.clone(),
            limit,
        };
        let before = slot.counter().fetch_add(1, Ordering::AcqRel);
        // On failure the slot is dropped, which gives the count back.
        (before < max).then_some(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counter().fetch_sub(1, Ordering::AcqRel);
    }
}
