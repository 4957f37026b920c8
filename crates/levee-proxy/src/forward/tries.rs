//! A request's tries, driven by the attempt machine: this module sends,
//! waits and observes; `levee_core::attempt` decides. What each try taught
//! about its endpoint (latency, outlier streaks, the adaptive limit's
//! samples) is recorded here, once per try.

use std::time::Duration;

use http::header::HeaderValue;
use levee_config::Protocol;
use levee_core::attempt::{self, Attempts, Next, Outcome, Try};
use levee_core::concurrency;
use levee_core::outcome::{Blame, ErrorKind, Rejection};
use levee_core::outlier::Observation;
use levee_core::retry::Reason;
use tokio::time::Instant;

use super::exchange::{Attempt, Failed, Sent, retry_after};
use super::headers::{self, Hop};
use super::prepare::{Head, set_default_host};
use crate::access_log::Pending;
use crate::body::{Bodies, RequestBody};
use crate::upstream::h1::OutHead;
use crate::upstream::{InFlight, Slot, Upstream};

/// One try's reply, with the endpoint it went to.
pub(super) struct Reply {
    pub endpoint: usize,
    pub started: Instant,
    pub in_flight: InFlight,
    pub sent: Result<Sent, Failed>,
}

/// The request as every try sends it.
pub(super) struct Outgoing<'a> {
    pub upstream: &'a Upstream,
    pub parts: http::request::Parts,
    pub head: Head,
    pub hop: Hop<'a>,
    pub upgrade: bool,
}

/// Sends the request's tries as `attempts` decides, until one answers (its
/// reply, with a response head) or the machine refuses.
pub(super) async fn run(
    out: &mut Outgoing<'_>,
    id_to_add: Option<&HeaderValue>,
    attempts: &mut Attempts<'_>,
    bodies: &mut Bodies,
    hash: Option<u64>,
    log: &mut Option<Pending>,
) -> Result<Reply, Rejection> {
    let upstream = out.upstream;
    let mut fleet = Fleet {
        upstream,
        hash,
        retry: None,
        hedge: None,
    };
    let mut next = attempts.start(Instant::now().into_std(), &mut fleet);
    loop {
        let try_ = match next {
            Ok(t) => t,
            Err(rejection) => {
                ended(upstream, attempts, false, log);
                return Err(rejection);
            }
        };
        let started = Instant::now();
        let body = out.body_for(&try_, bodies);
        // Awaited here, not in a function of its own: each async level
        // copies the reply it returns (callgrind).
        let mut reply = match try_.hedge_after {
            // Boxed: two tries in one future would double the size of
            // every request's future, hedged or not.
            Some(after) => Box::pin(out.hedged(try_, after, id_to_add, attempts, &mut fleet)).await,
            None => out.send(try_, body, id_to_add, started).await,
        };
        if let Some(log) = log {
            log.tried(reply.endpoint, attempts.tries());
        }
        // A retry's breaker slot lasts until its try has an answer.
        drop(fleet.retry.take());
        let now = Instant::now();
        let outcome = observe_reply(upstream, &mut reply, now);
        if let Err(failed) = &mut reply.sent {
            bodies.put_back(failed.body.take());
        }
        match attempts.outcome(
            outcome,
            now.into_std(),
            bodies.can_resend(),
            fastrand::u64(..),
            &mut fleet,
        ) {
            Next::Answer => {
                if let Outcome::Answered { status, .. } = outcome {
                    ended(upstream, attempts, status < 500 && status != 429, log);
                }
                bodies.commit();
                return Ok(reply);
            }
            Next::Refuse(rejection) => {
                ended(upstream, attempts, false, log);
                return Err(rejection);
            }
            Next::RetryAt(at) => {
                // The answer set aside closes its connection before the wait.
                drop(reply);
                tokio::time::sleep_until(Instant::from_std(at)).await;
                next = attempts.resume(Instant::now().into_std(), &mut fleet);
            }
        }
    }
}

/// Counts how a request's tries ended, and for one that ended on a failure,
/// records why no retry saved it.
fn ended(upstream: &Upstream, attempts: &Attempts<'_>, success: bool, log: &mut Option<Pending>) {
    upstream.count_retried(attempts.tries(), success);
    if success {
        return;
    }
    if let Some(stop) = attempts.stop() {
        upstream.count_failed(stop);
        if let Some(log) = log {
            log.stopped(stop);
        }
    }
}

/// What a try's reply says, for the attempt machine, after recording what
/// it taught about its endpoint.
fn observe_reply(upstream: &Upstream, reply: &mut Reply, now: Instant) -> Outcome {
    let elapsed = now.saturating_duration_since(reply.started);
    match &reply.sent {
        Ok((head, fields, _)) => {
            let status = head.status.as_u16();
            let failed = status >= 500 || status == 429;
            let observation = Some((Observation::of_status(status), failed));
            upstream.observe(
                reply.endpoint,
                now,
                elapsed,
                observation,
                Some(answered_with(status)),
            );
            // Only a 429 or a 5xx can be retried (validation allows no
            // other in `retry_on`), so only those have their fields searched.
            let retry_after = failed.then(|| retry_after(fields)).flatten();
            Outcome::Answered { status, retry_after }
        }
        // Nothing was sent: the endpoint's failure is the other try's to
        // count.
        Err(failed) if failed.redirected => Outcome::Redirected,
        Err(failed) => {
            let kind = failed.rejection.kind;
            let observation =
                (kind.blame() == Blame::Upstream).then_some((Observation::GatewayFailure, true));
            upstream.observe(reply.endpoint, now, elapsed, observation, failed_with(kind));
            Outcome::Failed(failed.rejection)
        }
    }
}

impl Outgoing<'_> {
    /// The body for a try, with the request's host set for its endpoint
    /// when the client sent none.
    fn body_for(&mut self, try_: &Try, bodies: &mut Bodies) -> RequestBody {
        if self.hop.host.is_none() && self.head.is_none() {
            let address = &self.upstream.endpoints()[try_.endpoint].address;
            set_default_host(&mut self.parts, self.upstream.protocol(), address);
        }
        // The machine sends a try only while the body can be sent again.
        bodies.next().unwrap_or(RequestBody::Empty)
    }

    /// One try, starting at `started`.
    async fn send(
        &self,
        try_: Try,
        body: RequestBody,
        id_to_add: Option<&HeaderValue>,
        started: Instant,
    ) -> Reply {
        let endpoint = &self.upstream.endpoints()[try_.endpoint];
        let in_flight = InFlight::start(&endpoint.state);
        self.upstream.count_try();
        let attempt = Attempt {
            upstream: self.upstream,
            endpoint,
            started,
            head_deadline: Instant::from_std(try_.head_deadline),
        };
        let sent = match &self.head {
            Some(r) => {
                let plan = headers::raw_plan(r, &self.hop, id_to_add, self.upgrade, &endpoint.address);
                let out = OutHead::Raw {
                    head: &r.head,
                    skip: plan.skip,
                    extra: &plan.extra,
                };
                attempt.send_h1(&self.parts, out, body).await
            }
            None => match self.upstream.protocol() {
                Protocol::Http1 => {
                    let out = OutHead::Map(&self.parts.headers);
                    attempt.send_h1(&self.parts, out, body).await
                }
                Protocol::Http2 => attempt.send_h2(&self.parts, body).await,
            },
        };
        Reply {
            endpoint: try_.endpoint,
            started,
            in_flight,
            sent,
        }
    }

    /// A try and, when it has no response head after `after`, a second on
    /// another endpoint at once (if the machine allows one): the first head
    /// wins, the other try is dropped (which closes its connection). Only
    /// for requests without a body.
    async fn hedged(
        &self,
        first: Try,
        after: Duration,
        id_to_add: Option<&HeaderValue>,
        attempts: &mut Attempts<'_>,
        fleet: &mut Fleet<'_>,
    ) -> Reply {
        let one = self.send(first, RequestBody::Empty, id_to_add, Instant::now());
        tokio::pin!(one);
        tokio::select! {
            biased;
            done = &mut one => return done,
            () = tokio::time::sleep(after) => {}
        }
        let now = Instant::now();
        let Some(second) = attempts.hedge(now.into_std(), first.endpoint, fleet) else {
            return one.await;
        };
        let two = self.send(second, RequestBody::Empty, id_to_add, now);
        tokio::pin!(two);
        // A try that fails waits for the other; the last failure stands.
        let done = tokio::select! {
            done = &mut one => done,
            done = &mut two => done,
        };
        let finished_first = done.endpoint == first.endpoint;
        if done.sent.is_ok() {
            drop(fleet.hedge.take());
            return done;
        }
        self.observe_failure(&done);
        let other = if finished_first { two.await } else { one.await };
        drop(fleet.hedge.take());
        other
    }

    /// Counts a failed try that is not the request's last word.
    fn observe_failure(&self, done: &Reply) {
        if let Err(failed) = &done.sent
            && !failed.redirected
            && failed.rejection.kind.blame() == Blame::Upstream
        {
            let now = Instant::now();
            let latency = now.saturating_duration_since(done.started);
            let observation = Some((Observation::GatewayFailure, true));
            let completion = failed_with(failed.rejection.kind);
            self.upstream
                .observe(done.endpoint, now, latency, observation, completion);
        }
    }
}

/// The live upstream as the attempt machine sees it. Holds the retries
/// breaker's slots for the tries in flight.
struct Fleet<'a> {
    upstream: &'a Upstream,
    hash: Option<u64>,
    /// The slot of the retry in flight, released when it is answered.
    retry: Option<Slot>,
    /// The slot of the hedge in flight, released when the pair resolves.
    hedge: Option<Slot>,
}

impl attempt::Upstream for Fleet<'_> {
    fn pick(&mut self, tried: &[usize], leave: Option<usize>, now: std::time::Instant) -> Option<usize> {
        self.upstream
            .pick(tried, leave, self.hash, Instant::from_std(now))
    }

    fn level_failing(&mut self, endpoint: usize, now: std::time::Instant) -> bool {
        self.upstream.level_failing(endpoint, Instant::from_std(now))
    }

    fn retry_budget(&mut self, now: std::time::Instant) -> bool {
        self.upstream.take_retry_budget(Instant::from_std(now))
    }

    fn retry_slot(&mut self, reason: Reason, hedge: bool) -> bool {
        let upstream = self.upstream;
        let slot = upstream.take_retry_slot(reason);
        let admitted = slot.is_some();
        if hedge {
            self.hedge = slot;
        } else {
            self.retry = slot;
        }
        admitted
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
