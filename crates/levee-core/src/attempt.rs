//! One request's tries, decided without I/O: the attempt machine.
//!
//! A request goes to an endpoint; when that try fails, or answers with a
//! status the route retries, it may go to another one after a backoff, and
//! a slow try may be hedged by a second one. What decides all of that lives
//! here, in the spirit of quinn-proto: [`Attempts`] is given each try's
//! [`Outcome`] and the time, and answers what comes [`Next`]: pass the
//! answer on, refuse, or retry at a given time (and then which endpoint to
//! send to, or that a slow try is to be hedged). The proxy does the sending
//! and the waiting; nothing here opens a socket or reads a clock.
//!
//! The rules ("nothing lost, nothing done twice"):
//! - at most [`Policy::attempts`] tries in all, hedges included, never more
//!   than [`MAX_ATTEMPTS`];
//! - an idempotent request (by method, or a route marked so) is retried on
//!   what the route's `retry_on` covers; a non-idempotent one only when it
//!   provably never reached the upstream (no connection: not one byte
//!   written), so it is never executed twice;
//! - a retry goes to an endpoint not tried yet when there is one (the
//!   [`Upstream::pick`] behind the trait prefers those);
//! - a retry waits a full-jitter backoff, or the `Retry-After` the upstream
//!   asked for when that is within `retry_after_max` (a longer one is passed
//!   on to the client instead), and is not planned when its wait would reach
//!   the request's deadline;
//! - every retry and hedge takes the upstream's retry budget, asked last,
//!   when everything else says yes, so a retry that does not happen costs
//!   no budget.

use std::time::{Duration, Instant};

use crate::outcome::{Delivery, ErrorKind, Rejection};
use crate::retry::{Backoff, Reason, RetryOn, honour_retry_after, may_retry};

/// The most tries a route may configure: the tried-endpoint set is a fixed
/// array of this size, so a request's tries cost no allocation.
pub const MAX_ATTEMPTS: usize = 10;

/// A route's retry policy (`[route.retry]`), with its defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Tries in all, the first included; 1 turns retries off.
    pub attempts: u32,
    pub retry_on: RetryOn,
    /// Deadline of each try's response head; the upstream's
    /// `response_header_timeout` when absent.
    pub per_try_timeout: Option<Duration>,
    pub backoff: Backoff,
    /// A `Retry-After` up to this long is waited out; a longer one is not
    /// retried.
    pub retry_after_max: Duration,
    /// Request bodies up to this size are kept for a retry.
    pub max_body_bytes: u64,
    /// Every method of the route counts as idempotent.
    pub idempotent: bool,
    /// Idempotent requests without a body get a second try on another
    /// endpoint when no response head came within this long.
    pub hedge_after: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            attempts: 2,
            retry_on: RetryOn::default_set(),
            per_try_timeout: None,
            backoff: Backoff::DEFAULT,
            retry_after_max: Duration::from_secs(1),
            max_body_bytes: 64 * 1024,
            idempotent: false,
            hedge_after: None,
        }
    }
}

/// What the machine asks of the upstream its tries go to. The proxy
/// implements it over the live upstream; tests over plain data.
pub trait Upstream {
    /// An endpoint for a try: one not in `tried` when there is one, else
    /// any available; `None` when none is.
    fn pick(&mut self, tried: &[usize], now: Instant) -> Option<usize>;

    /// Takes the upstream's retry budget for one more try, if it allows.
    fn retry_budget(&mut self, now: Instant) -> bool;

    /// Takes the upstream's retries breaker (`limits.max_retries`) for a
    /// retry or hedge about to be sent, if it has room; the implementation
    /// holds the slot until that try is answered.
    fn retry_slot(&mut self, reason: Reason, hedge: bool) -> bool;
}

/// What a try came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response head with this status, and the `Retry-After` it carried.
    Answered {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No response head: the try failed.
    Failed(Rejection),
}

/// A try to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Try {
    pub endpoint: usize,
    /// When its response head must have come: the per-try timeout, within
    /// the request's deadline.
    pub head_deadline: Instant,
    /// Ask [`Attempts::hedge`] for a second try when no head came by then.
    pub hedge_after: Option<Duration>,
}

/// What comes after a try's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Next {
    /// The try's answer is the client's.
    Answer,
    /// No try answered: levee refuses with this.
    Refuse(Rejection),
    /// Set the try's answer aside (closing its connection), wait until
    /// then, and call [`Attempts::resume`] for the retry.
    RetryAt(Instant),
}

/// The endpoints a request's tries went to.
#[derive(Clone, Copy, Debug, Default)]
struct Tried {
    endpoints: [usize; MAX_ATTEMPTS],
    len: usize,
}

impl Tried {
    fn push(&mut self, endpoint: usize) {
        if let Some(slot) = self.endpoints.get_mut(self.len) {
            *slot = endpoint;
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[usize] {
        &self.endpoints[..self.len]
    }
}

/// One request's tries.
#[derive(Debug)]
pub struct Attempts<'p> {
    policy: &'p Policy,
    /// The cap on tries: the policy's, within [`MAX_ATTEMPTS`].
    cap: usize,
    idempotent: bool,
    /// Whether a slow try may be hedged (see [`Attempts::new`]).
    hedgeable: bool,
    per_try: Duration,
    deadline: Instant,
    tried: Tried,
    /// What the client gets if no later try answers.
    last_failure: Rejection,
    /// The reason of the retry being waited for.
    waiting: Option<Reason>,
}

const NO_ENDPOINT: Rejection = Rejection::new(ErrorKind::NoEndpoint, "no endpoint available");

impl<'p> Attempts<'p> {
    /// A request's tries under `policy`. `idempotent_method` is the
    /// method's idempotency (the route may add it); `per_try` the head
    /// deadline of each try when the policy sets none; `deadline` the
    /// request's. `replayable_head` says the request has no body and a head
    /// that is the same for every endpoint, which hedging needs: two tries
    /// at once cannot share one body.
    pub fn new(
        policy: &'p Policy,
        idempotent_method: bool,
        per_try: Duration,
        deadline: Instant,
        replayable_head: bool,
    ) -> Attempts<'p> {
        let idempotent = policy.idempotent || idempotent_method;
        Attempts {
            policy,
            cap: (policy.attempts as usize).min(MAX_ATTEMPTS),
            idempotent,
            hedgeable: idempotent && replayable_head && policy.hedge_after.is_some(),
            per_try: policy.per_try_timeout.unwrap_or(per_try),
            deadline,
            tried: Tried::default(),
            last_failure: NO_ENDPOINT,
            waiting: None,
        }
    }

    /// Whether a retry may need the request body again, so that it has to
    /// be kept as the first try reads it.
    pub fn keeps_body(&self) -> bool {
        self.idempotent && self.cap > 1
    }

    /// Tries sent so far.
    pub fn tries(&self) -> usize {
        self.tried.len
    }

    /// The request's first try, or levee's refusal when no endpoint is
    /// available.
    pub fn start(&mut self, now: Instant, upstream: &mut impl Upstream) -> Result<Try, Rejection> {
        self.send_next(now, upstream)
    }

    /// After a [`Next::RetryAt`]: the retry, if the breaker lets it go and
    /// an endpoint is there for it; else the refusal the last try earned.
    pub fn resume(&mut self, now: Instant, upstream: &mut impl Upstream) -> Result<Try, Rejection> {
        // The breaker counts retries in flight, not retries waiting: a burst
        // of failures waits out its backoffs side by side.
        let reason = self.waiting.take().unwrap_or(Reason::Timeout);
        if !upstream.retry_slot(reason, false) {
            return Err(self.last_failure);
        }
        self.send_next(now, upstream)
    }

    fn send_next(&mut self, now: Instant, upstream: &mut impl Upstream) -> Result<Try, Rejection> {
        let Some(endpoint) = upstream.pick(self.tried.as_slice(), now) else {
            return Err(self.last_failure);
        };
        self.tried.push(endpoint);
        Ok(Try {
            endpoint,
            head_deadline: self.head_deadline(now),
            hedge_after: self
                .policy
                .hedge_after
                .filter(|_| self.hedgeable && self.tried.len < self.cap),
        })
    }

    fn head_deadline(&self, now: Instant) -> Instant {
        self.deadline.min(now + self.per_try)
    }

    /// A try on `first` has had no head for its `hedge_after`: a second try
    /// on another endpoint, at once, if the budget and the breaker allow.
    /// The first head of the two wins.
    pub fn hedge(&mut self, now: Instant, first: usize, upstream: &mut impl Upstream) -> Option<Try> {
        if self.tried.len >= self.cap {
            return None;
        }
        let second = upstream
            .pick(self.tried.as_slice(), now)
            .filter(|&e| e != first)?;
        if !upstream.retry_budget(now) || !upstream.retry_slot(Reason::Timeout, true) {
            return None;
        }
        self.tried.push(second);
        Some(Try {
            endpoint: second,
            head_deadline: self.head_deadline(now),
            hedge_after: None,
        })
    }

    /// What a try came to, at `now`. `replayable` says whether the request
    /// body could be sent again (always, for a request without one);
    /// `entropy` draws the backoff's jitter.
    pub fn outcome(
        &mut self,
        outcome: Outcome,
        now: Instant,
        replayable: bool,
        entropy: u64,
        upstream: &mut impl Upstream,
    ) -> Next {
        let done = match outcome {
            Outcome::Answered { .. } => Next::Answer,
            Outcome::Failed(rejection) => {
                self.last_failure = rejection;
                Next::Refuse(rejection)
            }
        };
        let Some((reason, wait)) = self.repeatable(outcome) else {
            return done;
        };
        if !replayable {
            return done;
        }
        let delay = self
            .policy
            .backoff
            .delay(self.tried.len as u32, entropy)
            .max(wait);
        let at = now + delay;
        // The whole decision comes before the answer is set aside: when a
        // retry cannot happen after all, the upstream's answer (or failure)
        // is what the client gets. The budget is asked last, so that only a
        // retry that happens takes it.
        if at >= self.deadline
            || upstream.pick(self.tried.as_slice(), now).is_none()
            || !upstream.retry_budget(now)
        {
            return done;
        }
        self.waiting = Some(reason);
        Next::RetryAt(at)
    }

    /// Why the try might be repeated and the least wait first, when the
    /// rules allow repeating it at all.
    fn repeatable(&mut self, outcome: Outcome) -> Option<(Reason, Duration)> {
        let (reason, sent, wait) = match outcome {
            Outcome::Answered { status, retry_after } => {
                let reason = Reason::Status(status);
                if !self.policy.retry_on.covers(reason) {
                    return None;
                }
                self.last_failure = status_failure(status);
                let wait = match retry_after {
                    None => Duration::ZERO,
                    // A `Retry-After` beyond what the route waits: passed on.
                    Some(after) => honour_retry_after(after, self.policy.retry_after_max)?,
                };
                (reason, true, wait)
            }
            Outcome::Failed(rejection) => {
                let kind = rejection.kind;
                let reason = Reason::of_error(kind)?;
                (reason, kind.delivery() != Delivery::NotSent, Duration::ZERO)
            }
        };
        let room = self.tried.len < self.cap;
        (room && may_retry(reason, &self.policy.retry_on, self.idempotent, sent)).then_some((reason, wait))
    }
}

/// What the client gets when a retried status's next try finds no endpoint:
/// levee's own answer of the same kind.
fn status_failure(status: u16) -> Rejection {
    match status {
        504 => Rejection::RESPONSE_TIMEOUT,
        503 | 429 => NO_ENDPOINT,
        _ => Rejection::new(
            ErrorKind::ConnectionTerminated,
            "upstream failed and no other endpoint was available",
        ),
    }
}

#[cfg(test)]
mod tests;
