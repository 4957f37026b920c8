use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

/// An upstream of `n` endpoints, all available unless marked down, with a
/// retry budget of `budget` grants and a breaker of `slots` retries. Every
/// endpoint is in level 0 unless `levels` says otherwise.
struct Fleet {
    n: usize,
    down: Vec<usize>,
    /// Each endpoint's level, when not all are in level 0.
    levels: Vec<usize>,
    /// Levels whose endpoints look like they are failing.
    failing: Vec<usize>,
    /// Every `leave` a pick was asked with.
    left: Vec<Option<usize>>,
    budget: u32,
    slots: u32,
    /// Grants the budget gave.
    granted: u32,
    /// Every `tried` set a pick was asked with.
    asked: Vec<Vec<usize>>,
}

impl Fleet {
    fn level(&self, endpoint: usize) -> usize {
        self.levels.get(endpoint).copied().unwrap_or(0)
    }

    fn new(n: usize) -> Fleet {
        Fleet {
            n,
            down: Vec::new(),
            levels: Vec::new(),
            failing: Vec::new(),
            left: Vec::new(),
            budget: u32::MAX,
            slots: u32::MAX,
            granted: 0,
            asked: Vec::new(),
        }
    }
}

impl Upstream for Fleet {
    fn pick(&mut self, tried: &[usize], leave: Option<usize>, _now: Instant) -> Option<usize> {
        self.asked.push(tried.to_vec());
        self.left.push(leave);
        let left = leave.map(|e| self.level(e));
        let up = (0..self.n).filter(|e| !self.down.contains(e));
        up.clone()
            .find(|&e| !tried.contains(&e) && Some(self.level(e)) != left)
            .or_else(|| up.clone().find(|e| !tried.contains(e)))
            .or_else(|| up.clone().next())
    }

    fn level_failing(&mut self, endpoint: usize, _now: Instant) -> bool {
        self.failing.contains(&self.level(endpoint))
    }

    fn retry_budget(&mut self, _now: Instant) -> bool {
        if self.budget == 0 {
            return false;
        }
        self.budget -= 1;
        self.granted += 1;
        true
    }

    fn retry_slot(&mut self, _reason: Reason, _hedge: bool) -> bool {
        if self.slots == 0 {
            return false;
        }
        self.slots -= 1;
        true
    }
}

const SECOND: Duration = Duration::from_secs(1);
const REFUSED: Rejection = Rejection::new(ErrorKind::ConnectionRefused, "upstream refused the connection");
const RESET: Rejection = Rejection::new(ErrorKind::ConnectionTerminated, "reset");
const TIMED_OUT: Rejection = Rejection::RESPONSE_TIMEOUT;

fn answered(status: u16) -> Outcome {
    Outcome::Answered {
        status,
        retry_after: None,
    }
}

fn sent_to(next: Result<Try, Rejection>) -> usize {
    match next {
        Ok(t) => t.endpoint,
        Err(r) => panic!("expected a try, got {r:?}"),
    }
}

/// A policy whose backoff is zero for entropy 0 and at most 25 ms.
fn policy(attempts: u32) -> Policy {
    Policy {
        attempts,
        ..Policy::default()
    }
}

#[test]
fn a_refused_connection_is_retried_elsewhere_even_for_a_post() {
    let p = policy(2);
    let t0 = Instant::now();
    let mut fleet = Fleet::new(3);
    let mut a = Attempts::new(&p, false, SECOND, t0 + 10 * SECOND, false);
    assert!(!a.keeps_body(), "a POST's body is never kept for a retry");
    assert_eq!(sent_to(a.start(t0, &mut fleet)), 0);
    let next = a.outcome(Outcome::Failed(REFUSED), t0, true, 0, &mut fleet);
    assert_eq!(next, Next::RetryAt(t0), "zero entropy draws no backoff");
    assert_eq!(sent_to(a.resume(t0, &mut fleet)), 1, "another endpoint");
    assert_eq!(fleet.asked.last(), Some(&vec![0]));
    assert_eq!(a.outcome(answered(200), t0, true, 0, &mut fleet), Next::Answer);
    assert_eq!(a.tries(), 2);
}

#[test]
fn a_post_that_may_have_reached_the_upstream_is_never_retried() {
    let p = policy(3);
    let t0 = Instant::now();
    for outcome in [Outcome::Failed(RESET), Outcome::Failed(TIMED_OUT), answered(503)] {
        let mut fleet = Fleet::new(3);
        let mut a = Attempts::new(&p, false, SECOND, t0 + 10 * SECOND, false);
        let _ = a.start(t0, &mut fleet);
        let next = a.outcome(outcome, t0, true, 0, &mut fleet);
        let expected = match outcome {
            Outcome::Failed(r) => Next::Refuse(r),
            Outcome::Answered { .. } | Outcome::Redirected => Next::Answer,
        };
        assert_eq!(next, expected, "{outcome:?}");
        assert_eq!(fleet.granted, 0, "no budget taken for a retry that cannot happen");
    }
}

#[test]
fn a_route_marked_idempotent_retries_every_method() {
    let p = Policy {
        idempotent: true,
        ..policy(2)
    };
    let t0 = Instant::now();
    let mut fleet = Fleet::new(2);
    let mut a = Attempts::new(&p, false, SECOND, t0 + SECOND, false);
    assert!(a.keeps_body());
    let _ = a.start(t0, &mut fleet);
    assert_eq!(
        a.outcome(Outcome::Failed(RESET), t0, true, 0, &mut fleet),
        Next::RetryAt(t0)
    );
}

#[test]
fn tries_stop_at_the_cap_and_the_last_answer_stands() {
    let p = policy(3);
    let t0 = Instant::now();
    let mut fleet = Fleet::new(5);
    let mut a = Attempts::new(&p, true, SECOND, t0 + 10 * SECOND, false);
    let mut sent = vec![sent_to(a.start(t0, &mut fleet))];
    for _ in 0..2 {
        assert_eq!(
            a.outcome(answered(503), t0, true, 0, &mut fleet),
            Next::RetryAt(t0)
        );
        sent.push(sent_to(a.resume(t0, &mut fleet)));
    }
    assert_eq!(sent, [0, 1, 2], "each retry to an endpoint not tried yet");
    assert_eq!(a.outcome(answered(503), t0, true, 0, &mut fleet), Next::Answer);
    assert_eq!(a.tries(), 3);
}

#[test]
fn the_cap_never_exceeds_the_fixed_set() {
    let p = policy(50);
    let t0 = Instant::now();
    let mut fleet = Fleet::new(3);
    let mut a = Attempts::new(&p, true, SECOND, t0 + 100 * SECOND, false);
    let mut next = a.start(t0, &mut fleet);
    let mut sends = 0;
    // Bounded, so that a machine that never stops fails rather than hangs.
    for _ in 0..2 * MAX_ATTEMPTS {
        if next.is_err() {
            break;
        }
        sends += 1;
        next = match a.outcome(Outcome::Failed(RESET), t0, true, 0, &mut fleet) {
            Next::RetryAt(_) => a.resume(t0, &mut fleet),
            Next::Refuse(r) => Err(r),
            Next::Answer => panic!("a failure is no answer"),
        };
    }
    assert_eq!(sends, MAX_ATTEMPTS);
    assert_eq!(next, Err(RESET));
}

#[test]
fn statuses_outside_retry_on_are_answers() {
    let p = policy(2);
    let t0 = Instant::now();
    let mut fleet = Fleet::new(2);
    let mut a = Attempts::new(&p, true, SECOND, t0 + SECOND, false);
    let _ = a.start(t0, &mut fleet);
    assert_eq!(a.outcome(answered(500), t0, true, 0, &mut fleet), Next::Answer);
    assert_eq!(fleet.granted, 0);
}

#[test]
fn a_retry_that_finds_no_endpoint_refuses_as_the_status_said() {
    let t0 = Instant::now();
    for (status, kind) in [
        (503, ErrorKind::NoEndpoint),
        (429, ErrorKind::NoEndpoint),
        (504, ErrorKind::ResponseTimeout),
        (502, ErrorKind::ConnectionTerminated),
    ] {
        let p = Policy {
            retry_on: RetryOn {
                statuses: vec![429, 502, 503, 504],
                ..RetryOn::default_set()
            },
            ..policy(2)
        };
        let mut fleet = Fleet::new(2);
        let mut a = Attempts::new(&p, true, SECOND, t0 + SECOND, false);
        let _ = a.start(t0, &mut fleet);
        assert_eq!(
            a.outcome(answered(status), t0, true, 0, &mut fleet),
            Next::RetryAt(t0)
        );
        fleet.down = vec![0, 1];
        match a.resume(t0, &mut fleet) {
            Err(r) => assert_eq!(r.kind, kind, "{status}"),
            other => panic!("{status}: {other:?}"),
        }
    }
}

#[test]
fn no_endpoint_at_all_is_refused_as_such() {
    let p = policy(2);
    let t0 = Instant::now();
    let mut fleet = Fleet::new(0);
    let mut a = Attempts::new(&p, true, SECOND, t0 + SECOND, false);
    assert_eq!(a.start(t0, &mut fleet), Err(NO_ENDPOINT));
    assert_eq!(a.tries(), 0);
}

#[test]
fn retry_after_within_the_cap_is_waited_out_and_beyond_it_passed_on() {
    let p = policy(2); // retry_after_max 1 s
    let t0 = Instant::now();
    let wait = |after: Duration| {
        let mut fleet = Fleet::new(2);
        let mut a = Attempts::new(&p, true, SECOND, t0 + 10 * SECOND, false);
        let _ = a.start(t0, &mut fleet);
        let outcome = Outcome::Answered {
            status: 503,
            retry_after: Some(after),
        };
        a.outcome(outcome, t0, true, u64::MAX, &mut fleet)
    };
    assert_eq!(
        wait(Duration::from_millis(300)),
        Next::RetryAt(t0 + Duration::from_millis(300)),
        "the longer of Retry-After and the backoff (at most 25 ms)"
    );
    assert_eq!(wait(Duration::from_secs(5)), Next::Answer);
}

#[test]
fn the_backoff_grows_with_each_retry_within_its_cap() {
    let p = Policy {
        backoff: Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(250),
        },
        ..policy(4)
    };
    let t0 = Instant::now();
    let mut fleet = Fleet::new(4);
    let mut a = Attempts::new(&p, true, SECOND, t0 + 10 * SECOND, false);
    let _ = a.start(t0, &mut fleet);
    let mut waits = Vec::new();
    for _ in 0..3 {
        // Entropy one past the ceiling's nanoseconds draws the ceiling.
        match a.outcome(Outcome::Failed(RESET), t0, true, u64::MAX, &mut fleet) {
            Next::RetryAt(at) => waits.push(at - t0),
            other => panic!("{other:?}"),
        }
        let _ = a.resume(t0, &mut fleet);
    }
    for (wait, ceiling) in waits.iter().zip([100, 200, 250]) {
        assert!(*wait <= Duration::from_millis(ceiling), "{waits:?}");
    }
}

#[test]
fn no_retry_is_planned_whose_wait_reaches_the_deadline() {
    let p = policy(2);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_millis(100);
    for (after, expected) in [
        (99, Next::RetryAt(t0 + Duration::from_millis(99))),
        (100, Next::Answer),
    ] {
        let mut fleet = Fleet::new(2);
        let mut a = Attempts::new(&p, true, SECOND, deadline, false);
        let _ = a.start(t0, &mut fleet);
        let outcome = Outcome::Answered {
            status: 503,
            retry_after: Some(Duration::from_millis(after)),
        };
        assert_eq!(
            a.outcome(outcome, t0, true, 0, &mut fleet),
            expected,
            "{after} ms"
        );
    }
}

#[test]
fn each_try_has_the_per_try_deadline_within_the_request_deadline() {
    let t0 = Instant::now();
    let mut fleet = Fleet::new(2);
    let p = policy(2);
    let mut a = Attempts::new(&p, true, Duration::from_millis(300), t0 + SECOND, false);
    match a.start(t0, &mut fleet) {
        Ok(t) => assert_eq!(t.head_deadline, t0 + Duration::from_millis(300)),
        other => panic!("{other:?}"),
    }
    let _ = a.outcome(Outcome::Failed(RESET), t0, true, 0, &mut fleet);
    let late = t0 + Duration::from_millis(900);
    match a.resume(late, &mut fleet) {
        Ok(t) => assert_eq!(t.head_deadline, t0 + SECOND, "capped by the request's"),
        other => panic!("{other:?}"),
    }
    let own = Policy {
        per_try_timeout: Some(Duration::from_millis(50)),
        ..policy(2)
    };
    let mut a = Attempts::new(&own, true, Duration::from_millis(300), t0 + SECOND, false);
    match a.start(t0, &mut fleet) {
        Ok(t) => assert_eq!(t.head_deadline, t0 + Duration::from_millis(50)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_budget_is_asked_last_and_a_refusal_keeps_the_answer() {
    let p = policy(2);
    let t0 = Instant::now();
    let mut fleet = Fleet::new(2);
    fleet.budget = 0;
    let mut a = Attempts::new(&p, true, SECOND, t0 + SECOND, false);
    let _ = a.start(t0, &mut fleet);
    assert_eq!(a.outcome(answered(503), t0, true, 0, &mut fleet), Next::Answer);

    // A body that cannot be sent again takes no budget.
    let mut fleet = Fleet::new(2);
    let mut a = Attempts::new(&p, true, SECOND, t0 + SECOND, false);
    let _ = a.start(t0, &mut fleet);
    assert_eq!(
        a.outcome(Outcome::Failed(RESET), t0, false, 0, &mut fleet),
        Next::Refuse(RESET)
    );
    assert_eq!(fleet.granted, 0);
}

#[test]
fn a_full_breaker_after_the_wait_refuses_with_the_last_failure() {
    let p = policy(2);
    let t0 = Instant::now();
    let mut fleet = Fleet::new(2);
    fleet.slots = 0;
    let mut a = Attempts::new(&p, true, SECOND, t0 + SECOND, false);
    let _ = a.start(t0, &mut fleet);
    assert_eq!(
        a.outcome(Outcome::Failed(RESET), t0, true, 0, &mut fleet),
        Next::RetryAt(t0)
    );
    assert_eq!(a.resume(t0, &mut fleet), Err(RESET));
    assert_eq!(a.tries(), 1);
}

#[test]
fn a_slow_try_is_hedged_on_another_endpoint() {
    let after = Duration::from_millis(50);
    let p = Policy {
        hedge_after: Some(after),
        ..policy(2)
    };
    let t0 = Instant::now();
    let mut fleet = Fleet::new(2);
    let mut a = Attempts::new(&p, true, SECOND, t0 + 10 * SECOND, true);
    let first = match a.start(t0, &mut fleet) {
        Ok(t) => {
            assert_eq!(t.hedge_after, Some(after));
            t.endpoint
        }
        other => panic!("{other:?}"),
    };
    let second = a.hedge(t0 + after, first, &mut fleet).expect("a hedge");
    assert_ne!(second.endpoint, first);
    assert_eq!(second.head_deadline, t0 + after + SECOND);
    assert_eq!(fleet.granted, 1, "a hedge takes the budget");
    assert_eq!(a.tries(), 2);
    // Both tries count: the cap of 2 leaves no retry.
    assert_eq!(
        a.outcome(Outcome::Failed(RESET), t0 + after, true, 0, &mut fleet),
        Next::Refuse(RESET)
    );
}

#[test]
fn hedges_need_an_idempotent_request_a_shared_head_and_another_endpoint() {
    let after = Duration::from_millis(50);
    let p = Policy {
        hedge_after: Some(after),
        ..policy(3)
    };
    let t0 = Instant::now();
    let hedge_of = |idempotent: bool, replayable_head: bool, endpoints: usize| {
        let mut fleet = Fleet::new(endpoints);
        let mut a = Attempts::new(&p, idempotent, SECOND, t0 + SECOND, replayable_head);
        match a.start(t0, &mut fleet) {
            Ok(t) => t
                .hedge_after
                .and_then(|_| a.hedge(t0 + after, t.endpoint, &mut fleet)),
            other => panic!("{other:?}"),
        }
    };
    assert!(hedge_of(true, true, 2).is_some());
    assert!(hedge_of(false, true, 2).is_none(), "not a POST");
    assert!(hedge_of(true, false, 2).is_none(), "not with a body");
    assert!(hedge_of(true, true, 1).is_none(), "not on the same endpoint");
}

/// One step of a random run: what the try came to, and what the world
/// says on the way.
/// Endpoints 0–2 in level 0 (the primary region), 3–4 in level 1.
fn two_levels() -> Fleet {
    let mut fleet = Fleet::new(5);
    fleet.levels = vec![0, 0, 0, 1, 1];
    fleet
}

#[test]
fn a_retry_after_a_gateway_failure_leaves_the_level() {
    let p = policy(2);
    let t0 = Instant::now();
    for failure in [REFUSED, RESET, TIMED_OUT] {
        let mut fleet = two_levels();
        let mut a = Attempts::new(&p, true, SECOND, t0 + 10 * SECOND, false);
        assert_eq!(sent_to(a.start(t0, &mut fleet)), 0);
        assert_eq!(fleet.left.last(), Some(&None), "a first try leaves nothing");
        let next = a.outcome(Outcome::Failed(failure), t0, true, 0, &mut fleet);
        assert_eq!(next, Next::RetryAt(t0));
        assert_eq!(
            sent_to(a.resume(t0, &mut fleet)),
            3,
            "{failure:?}: the other level"
        );
        assert_eq!(
            fleet.left.last(),
            Some(&Some(0)),
            "asked to leave endpoint 0's level"
        );
    }
}

#[test]
fn an_answered_5xx_leaves_the_level_only_when_the_level_is_failing() {
    let p = policy(2);
    let t0 = Instant::now();
    for (failing, expected) in [(false, 1), (true, 3)] {
        let mut fleet = two_levels();
        if failing {
            fleet.failing = vec![0];
        }
        let mut a = Attempts::new(&p, true, SECOND, t0 + 10 * SECOND, false);
        let _ = a.start(t0, &mut fleet);
        assert_eq!(
            a.outcome(answered(503), t0, true, 0, &mut fleet),
            Next::RetryAt(t0)
        );
        assert_eq!(
            sent_to(a.resume(t0, &mut fleet)),
            expected,
            "level failing: {failing}"
        );
    }
}

#[test]
fn leave_region_always_and_never() {
    let t0 = Instant::now();
    for (leave_region, failure, expected) in [
        (LeaveRegion::Always, answered(503), 3),
        (LeaveRegion::Never, Outcome::Failed(REFUSED), 1),
    ] {
        let p = Policy {
            leave_region,
            ..policy(2)
        };
        let mut fleet = two_levels();
        let mut a = Attempts::new(&p, true, SECOND, t0 + 10 * SECOND, false);
        let _ = a.start(t0, &mut fleet);
        assert_eq!(a.outcome(failure, t0, true, 0, &mut fleet), Next::RetryAt(t0));
        assert_eq!(sent_to(a.resume(t0, &mut fleet)), expected, "{leave_region:?}");
    }
}

#[test]
fn a_level_left_is_only_avoided_when_no_other_has_an_endpoint() {
    let p = policy(2);
    let t0 = Instant::now();
    let mut fleet = two_levels();
    fleet.down = vec![3, 4];
    let mut a = Attempts::new(&p, true, SECOND, t0 + 10 * SECOND, false);
    let _ = a.start(t0, &mut fleet);
    assert_eq!(
        a.outcome(Outcome::Failed(REFUSED), t0, true, 0, &mut fleet),
        Next::RetryAt(t0)
    );
    assert_eq!(
        sent_to(a.resume(t0, &mut fleet)),
        1,
        "the same level's next endpoint"
    );
}

#[test]
fn a_redirect_goes_elsewhere_at_once_and_costs_no_attempt_or_budget() {
    let p = policy(2);
    let t0 = Instant::now();
    let mut fleet = two_levels();
    fleet.budget = 1;
    fleet.slots = 0;
    let mut a = Attempts::new(&p, false, SECOND, t0 + 10 * SECOND, false);
    let _ = a.start(t0, &mut fleet);
    // Even with a full breaker and a backoff drawn at its ceiling.
    assert_eq!(
        a.outcome(Outcome::Redirected, t0, true, u64::MAX, &mut fleet),
        Next::RetryAt(t0)
    );
    assert_eq!(sent_to(a.resume(t0, &mut fleet)), 3, "away from the level");
    assert_eq!(fleet.granted, 0);
    // The route's two tries are both still there.
    fleet.slots = 1;
    let next = a.outcome(Outcome::Failed(REFUSED), t0, true, 0, &mut fleet);
    assert_eq!(next, Next::RetryAt(t0), "a POST never sent may be retried");
    assert!(a.resume(t0, &mut fleet).is_ok());
    assert_eq!(a.tries(), 3);
    let next = a.outcome(Outcome::Failed(REFUSED), t0, true, 0, &mut fleet);
    assert_eq!(next, Next::Refuse(REFUSED));
    assert_eq!(a.stop(), Some(Stop::Attempts));
}

#[test]
fn every_failure_that_stands_says_why() {
    let t0 = Instant::now();
    let deadline = t0 + 10 * SECOND;
    let case = |p: &Policy, idempotent: bool, fleet: &mut Fleet, outcome: Outcome, replayable: bool| {
        let mut a = Attempts::new(p, idempotent, SECOND, deadline, false);
        let _ = a.start(t0, fleet);
        let next = a.outcome(outcome, t0, replayable, 0, fleet);
        if let Next::RetryAt(at) = next
            && a.resume(at, fleet).is_ok()
        {
            let _ = a.outcome(outcome, at, replayable, 0, fleet);
        }
        a.stop()
    };
    let two = policy(2);
    let one = policy(1);
    let failed = Outcome::Failed(RESET);
    assert_eq!(
        case(&one, true, &mut Fleet::new(3), failed, true),
        Some(Stop::Attempts)
    );
    assert_eq!(
        case(&two, true, &mut Fleet::new(1), failed, true),
        Some(Stop::NoUntriedEndpoint)
    );
    assert_eq!(
        case(&two, false, &mut Fleet::new(3), failed, true),
        Some(Stop::NotIdempotent)
    );
    assert_eq!(
        case(&two, true, &mut Fleet::new(3), answered(500), true),
        Some(Stop::NotRetryable)
    );
    assert_eq!(
        case(&two, true, &mut Fleet::new(3), failed, false),
        Some(Stop::BodyNotKept)
    );
    let mut broke = Fleet::new(3);
    broke.budget = 0;
    assert_eq!(case(&two, true, &mut broke, failed, true), Some(Stop::Budget));
    let mut full = Fleet::new(3);
    full.slots = 0;
    assert_eq!(case(&two, true, &mut full, failed, true), Some(Stop::Breaker));
    let mut dark = Fleet::new(3);
    dark.down = vec![0, 1, 2];
    assert_eq!(case(&two, true, &mut dark, failed, true), Some(Stop::AllDown));
    let slow = Outcome::Answered {
        status: 503,
        retry_after: Some(Duration::from_secs(30)),
    };
    assert_eq!(
        case(&two, true, &mut Fleet::new(3), slow, true),
        Some(Stop::RetryAfter)
    );
    let late = Policy {
        backoff: Backoff {
            base: 20 * SECOND,
            cap: 20 * SECOND,
        },
        ..policy(2)
    };
    let mut a = Attempts::new(&late, true, SECOND, deadline, false);
    let _ = a.start(t0, &mut Fleet::new(3));
    let next = a.outcome(failed, t0, true, u64::MAX, &mut Fleet::new(3));
    assert_eq!(next, Next::Refuse(RESET));
    assert_eq!(a.stop(), Some(Stop::Deadline));
}

#[derive(Clone, Debug)]
struct Step {
    outcome: u8,
    status: u16,
    retry_after_ms: Option<u64>,
    replayable: bool,
    entropy: u64,
    advance_ms: u64,
    hedge: bool,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0u8..7,
        prop::sample::select(vec![200u16, 429, 500, 502, 503, 504]),
        prop::option::of(0u64..2000),
        prop::bool::weighted(0.8),
        any::<u64>(),
        0u64..400,
        any::<bool>(),
    )
        .prop_map(
            |(outcome, status, retry_after_ms, replayable, entropy, advance_ms, hedge)| Step {
                outcome,
                status,
                retry_after_ms,
                replayable,
                entropy,
                advance_ms,
                hedge,
            },
        )
}

fn outcome_of(s: &Step) -> Outcome {
    let failed = |kind, detail| Outcome::Failed(Rejection::new(kind, detail));
    match s.outcome {
        0 => failed(ErrorKind::ConnectionRefused, "refused"),
        1 => failed(ErrorKind::ConnectionTimeout, "connect timeout"),
        2 => failed(ErrorKind::ConnectionTerminated, "reset"),
        3 => failed(ErrorKind::ResponseTimeout, "timeout"),
        4 => failed(ErrorKind::UpstreamProtocol, "malformed"),
        5 => Outcome::Redirected,
        _ => Outcome::Answered {
            status: s.status,
            retry_after: s.retry_after_ms.map(Duration::from_millis),
        },
    }
}

/// Whether the upstream may have seen the request in this try.
fn maybe_sent(o: Outcome) -> bool {
    match o {
        Outcome::Answered { .. } => true,
        Outcome::Failed(r) => r.kind.delivery() != Delivery::NotSent,
        Outcome::Redirected => false,
    }
}

proptest! {
    #[test]
    fn the_rules_hold_whatever_the_tries_come_to(
        attempts in 1u32..14,
        idempotent_method: bool,
        route_idempotent in prop::bool::weighted(0.2),
        hedge in prop::option::of(1u64..200),
        endpoints in 0usize..5,
        budget in 0u32..6,
        slots in 0u32..6,
        deadline_ms in 1u64..3000,
        steps in prop::collection::vec(step(), 1..30),
    ) {
        let p = Policy {
            attempts,
            idempotent: route_idempotent,
            hedge_after: hedge.map(Duration::from_millis),
            ..Policy::default()
        };
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_millis(deadline_ms);
        let mut fleet = Fleet::new(endpoints);
        fleet.budget = budget;
        fleet.slots = slots;
        let idempotent = idempotent_method || route_idempotent;
        let mut a = Attempts::new(&p, idempotent_method, SECOND, deadline, true);
        let mut now = t0;
        let mut sends = 0usize;
        let mut redirects = 0usize;
        let mut seen = false;
        let mut next = a.start(now, &mut fleet);
        let mut steps = steps.iter();
        let finished = loop {
            let Ok(try_) = next else { break true };
            sends += 1;
            prop_assert!(
                idempotent || !seen,
                "a non-idempotent request sent again after the upstream may have seen it"
            );
            prop_assert!(try_.head_deadline <= deadline);
            let Some(s) = steps.next() else { break false };
            if let (Some(after), true) = (try_.hedge_after, s.hedge) {
                prop_assert!(idempotent, "a hedge of a non-idempotent request");
                if a.hedge(now + after, try_.endpoint, &mut fleet).is_some() {
                    sends += 1;
                }
            }
            now += Duration::from_millis(s.advance_ms);
            let outcome = outcome_of(s);
            seen |= maybe_sent(outcome);
            redirects += usize::from(outcome == Outcome::Redirected);
            next = match a.outcome(outcome, now, s.replayable, s.entropy, &mut fleet) {
                Next::Answer => {
                    let failed = matches!(outcome, Outcome::Answered { status, .. } if status >= 500 || status == 429);
                    prop_assert!(!failed || a.stop().is_some(), "a failure stands unexplained");
                    break true;
                }
                Next::Refuse(_) => {
                    prop_assert!(a.stop().is_some(), "a refusal unexplained");
                    break true;
                }
                Next::RetryAt(at) => {
                    prop_assert!(at < deadline, "a wait that reaches the deadline");
                    prop_assert!(at >= now);
                    now = at;
                    a.resume(now, &mut fleet)
                }
            };
        };
        // A redirect sent nothing: it counts against neither the cap nor
        // the budget, only against the fixed set.
        let counted = sends - redirects.min(sends);
        prop_assert!(counted <= (attempts as usize).min(MAX_ATTEMPTS), "{counted} tries, cap {attempts}");
        prop_assert!(sends <= MAX_ATTEMPTS);
        prop_assert_eq!(sends, a.tries());
        let retries = sends.saturating_sub(1).saturating_sub(redirects);
        prop_assert!(
            retries <= fleet.granted as usize,
            "{} retries beyond a budget that granted {}", retries, fleet.granted
        );
        if finished {
            prop_assert!(retries <= fleet.granted as usize);
        }
    }
}
