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
//!   [`Upstream::pick`] behind the trait prefers those), and, as
//!   [`LeaveRegion`] says, outside the level (region) of the try that
//!   failed when that level looks like it is going down, so that a region
//!   going dark does not take a request's every try with it;
//! - a retry waits a full-jitter backoff, or the `Retry-After` the upstream
//!   asked for when that is within `retry_after_max` (a longer one is passed
//!   on to the client instead), and is not planned when its wait would reach
//!   the request's deadline;
//! - every retry and hedge takes the upstream's retry budget, asked last,
//!   when everything else says yes, so a retry that does not happen costs
//!   no budget;
//! - when a failure stands, the machine says why no retry saved it
//!   ([`Attempts::stop`]), for the access log and the metrics.

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
    /// When a retry leaves the level (region) of the try that failed.
    pub leave_region: LeaveRegion,
}

/// When a retry leaves the priority level of the try before it, for
/// another level that has an endpoint available (in the spirit of Envoy's
/// `previous_priorities` retry predicate). A level left is only avoided:
/// when no other has an endpoint, the retry stays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LeaveRegion {
    /// When the level looks like it is going down: the try failed without
    /// an answer (refused, reset, timed out), or another endpoint of its
    /// level has failed, been ejected or failed its checks moments ago.
    #[default]
    WhenFailing,
    /// After every failed try.
    Always,
    /// Never: retries follow the levels' shares (with the endpoints tried
    /// counted as down).
    Never,
}

impl LeaveRegion {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveRegion::WhenFailing => "when_failing",
            LeaveRegion::Always => "always",
            LeaveRegion::Never => "never",
        }
    }
}

/// Why a request's last failure stands: what kept another try from saving
/// it. A closed set: the label values of the metric and the access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The route does not retry this failure (`retry_on`).
    NotRetryable,
    /// The request may have reached the upstream and is not idempotent.
    NotIdempotent,
    /// The request body was too large to be kept for another try.
    BodyNotKept,
    /// The upstream asked to wait longer (`Retry-After`) than the route does.
    RetryAfter,
    /// Every try the route allows was made.
    Attempts,
    /// Every try was made, some on an endpoint already tried: the upstream
    /// had no other endpoint to try.
    NoUntriedEndpoint,
    /// No endpoint was available at all: every level was down.
    AllDown,
    /// The retry's wait would have reached the request's deadline.
    Deadline,
    /// The upstream's retry budget was spent.
    Budget,
    /// The upstream's retries breaker (`max_retries`) was full.
    Breaker,
}

impl Stop {
    pub const ALL: [Stop; 10] = [
        Stop::NotRetryable,
        Stop::NotIdempotent,
        Stop::BodyNotKept,
        Stop::RetryAfter,
        Stop::Attempts,
        Stop::NoUntriedEndpoint,
        Stop::AllDown,
        Stop::Deadline,
        Stop::Budget,
        Stop::Breaker,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stop::NotRetryable => "not_retryable",
            Stop::NotIdempotent => "not_idempotent",
            Stop::BodyNotKept => "body_not_kept",
            Stop::RetryAfter => "retry_after",
            Stop::Attempts => "attempts",
            Stop::NoUntriedEndpoint => "no_untried_endpoint",
            Stop::AllDown => "all_down",
            Stop::Deadline => "deadline",
            Stop::Budget => "budget",
            Stop::Breaker => "breaker",
        }
    }
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
            leave_region: LeaveRegion::WhenFailing,
        }
    }
}

/// What the machine asks of the upstream its tries go to. The proxy
/// implements it over the live upstream; tests over plain data.
pub trait Upstream {
    /// An endpoint for a try: one not in `tried` when there is one, else
    /// any available; outside the level of endpoint `leave` when another
    /// level has one; `None` when no endpoint is available.
    fn pick(&mut self, tried: &[usize], leave: Option<usize>, now: Instant) -> Option<usize>;

    /// Whether the level of `endpoint` looks like it is going down: another
    /// of its endpoints failed, was ejected or failed its checks moments
    /// before `now`.
    fn level_failing(&mut self, endpoint: usize, now: Instant) -> bool;

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
    /// The try was called off before anything was sent, because another
    /// connection to its endpoint failed meanwhile (it waited on a connect
    /// that was going to fail too). It goes elsewhere at once, and counts
    /// against neither the route's attempts nor the budget: nothing reached
    /// the upstream, so a redirect adds no load.
    Redirected,
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
    /// Tries in `tried` that were redirected before sending anything.
    redirected: usize,
    /// What the client gets if no later try answers.
    last_failure: Rejection,
    /// The reason of the retry being waited for.
    waiting: Option<Reason>,
    /// The endpoint whose level the next try leaves.
    leave: Option<usize>,
    /// A try went to an endpoint tried before.
    repeated: bool,
    /// Why the last failure stands, once no retry follows it.
    stop: Option<Stop>,
}

const NO_ENDPOINT: Rejection = Rejection::new(ErrorKind::NoEndpoint, "no endpoint available");
const REDIRECTED: Rejection = Rejection::new(
    ErrorKind::ConnectionRefused,
    "the endpoint failed another connection meanwhile, and no other was available",
);

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
            redirected: 0,
            last_failure: NO_ENDPOINT,
            waiting: None,
            leave: None,
            repeated: false,
            stop: None,
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

    /// Why no further try followed the last one, when the request ends on
    /// a failure (or on an answer the route would have retried).
    pub fn stop(&self) -> Option<Stop> {
        self.stop
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
        // A redirect is no retry: it takes no slot (`waiting` is `None`).
        if let Some(reason) = self.waiting.take()
            && !upstream.retry_slot(reason, false)
        {
            self.stop = Some(Stop::Breaker);
            return Err(self.last_failure);
        }
        self.send_next(now, upstream)
    }

    /// Tries that count against the route's attempts: redirects do not.
    fn counted(&self) -> usize {
        self.tried.len - self.redirected
    }

    /// Whether the route's attempts (and the fixed set) have room for one
    /// more try.
    fn has_room(&self) -> bool {
        self.counted() < self.cap && self.tried.len < MAX_ATTEMPTS
    }

    fn send_next(&mut self, now: Instant, upstream: &mut impl Upstream) -> Result<Try, Rejection> {
        let Some(endpoint) = upstream.pick(self.tried.as_slice(), self.leave, now) else {
            self.stop = Some(Stop::AllDown);
            return Err(self.last_failure);
        };
        self.repeated |= self.tried.as_slice().contains(&endpoint);
        self.tried.push(endpoint);
        Ok(Try {
            endpoint,
            head_deadline: self.head_deadline(now),
            hedge_after: self
                .policy
                .hedge_after
                .filter(|_| self.hedgeable && self.has_room()),
        })
    }

    fn head_deadline(&self, now: Instant) -> Instant {
        self.deadline.min(now + self.per_try)
    }

    /// A try on `first` has had no head for its `hedge_after`: a second try
    /// on another endpoint, at once, if the budget and the breaker allow.
    /// The first head of the two wins.
    pub fn hedge(&mut self, now: Instant, first: usize, upstream: &mut impl Upstream) -> Option<Try> {
        if !self.has_room() {
            return None;
        }
        let second = upstream
            .pick(self.tried.as_slice(), None, now)
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
            Outcome::Redirected => return self.redirect(now, upstream),
        };
        let (reason, wait) = match self.repeatable(outcome) {
            Ok(repeat) => repeat,
            Err(stop) => return self.stopped(stop, done),
        };
        if !replayable {
            return self.stopped(Stop::BodyNotKept, done);
        }
        let delay = self
            .policy
            .backoff
            .delay(self.counted() as u32, entropy)
            .max(wait);
        let at = now + delay;
        let leave = self.leave_after(outcome, now, upstream);
        // The whole decision comes before the answer is set aside: when a
        // retry cannot happen after all, the upstream's answer (or failure)
        // is what the client gets. The budget is asked last, so that only a
        // retry that happens takes it.
        if at >= self.deadline {
            return self.stopped(Stop::Deadline, done);
        }
        if upstream.pick(self.tried.as_slice(), leave, now).is_none() {
            return self.stopped(Stop::AllDown, done);
        }
        if !upstream.retry_budget(now) {
            return self.stopped(Stop::Budget, done);
        }
        self.leave = leave;
        self.waiting = Some(reason);
        Next::RetryAt(at)
    }

    /// After [`Outcome::Redirected`]: at once, to another endpoint, away
    /// from the redirected try's level when another has one.
    fn redirect(&mut self, now: Instant, upstream: &mut impl Upstream) -> Next {
        self.redirected += 1;
        if self.last_failure == NO_ENDPOINT {
            self.last_failure = REDIRECTED;
        }
        let refuse = Next::Refuse(self.last_failure);
        if self.tried.len >= MAX_ATTEMPTS {
            return self.stopped(Stop::Attempts, refuse);
        }
        let leave = self.tried.as_slice().last().copied();
        if now >= self.deadline {
            return self.stopped(Stop::Deadline, refuse);
        }
        if upstream.pick(self.tried.as_slice(), leave, now).is_none() {
            return self.stopped(Stop::AllDown, refuse);
        }
        self.leave = leave;
        self.waiting = None;
        Next::RetryAt(now)
    }

    fn stopped(&mut self, stop: Stop, done: Next) -> Next {
        self.stop = Some(stop);
        done
    }

    /// The endpoint whose level the retry after `outcome` leaves, if any:
    /// the latest try's, as the route's [`LeaveRegion`] says.
    fn leave_after(&self, outcome: Outcome, now: Instant, upstream: &mut impl Upstream) -> Option<usize> {
        let last = *self.tried.as_slice().last()?;
        let leave = match self.policy.leave_region {
            LeaveRegion::Never => false,
            LeaveRegion::Always => true,
            // No answer at all is what a region going dark looks like; an
            // answered 5xx only when the level's other endpoints agree.
            LeaveRegion::WhenFailing => {
                matches!(outcome, Outcome::Failed(_)) || upstream.level_failing(last, now)
            }
        };
        leave.then_some(last)
    }

    /// Why the try might be repeated and the least wait first, when the
    /// rules allow repeating it at all.
    fn repeatable(&mut self, outcome: Outcome) -> Result<(Reason, Duration), Stop> {
        let (reason, sent, wait) = match outcome {
            Outcome::Answered { status, retry_after } => {
                let reason = Reason::Status(status);
                if !self.policy.retry_on.covers(reason) {
                    return Err(Stop::NotRetryable);
                }
                self.last_failure = status_failure(status);
                let wait = match retry_after {
                    None => Duration::ZERO,
                    // A `Retry-After` beyond what the route waits: passed on.
                    Some(after) => {
                        honour_retry_after(after, self.policy.retry_after_max).ok_or(Stop::RetryAfter)?
                    }
                };
                (reason, true, wait)
            }
            Outcome::Failed(rejection) => {
                let kind = rejection.kind;
                let reason = Reason::of_error(kind).ok_or(Stop::NotRetryable)?;
                (reason, kind.delivery() != Delivery::NotSent, Duration::ZERO)
            }
            Outcome::Redirected => return Ok((Reason::ConnectFailure, Duration::ZERO)),
        };
        if !may_retry(reason, &self.policy.retry_on, self.idempotent, sent) {
            let covered = self.policy.retry_on.covers(reason);
            return Err(if covered {
                Stop::NotIdempotent
            } else {
                Stop::NotRetryable
            });
        }
        if !self.has_room() {
            return Err(if self.repeated {
                Stop::NoUntriedEndpoint
            } else {
                Stop::Attempts
            });
        }
        Ok((reason, wait))
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
