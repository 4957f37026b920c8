//! Retries: which failures may be tried again, how long to wait first, and
//! the budget that keeps a total outage from turning into a retry storm.
//!
//! Retries exist so that no request is lost to a failure another attempt
//! could have survived, without ever sending twice a request that must not
//! run twice: an idempotent request is retried on a connection failure, a
//! reset, a timeout before the response, or a retriable status; a
//! non-idempotent one only when it provably never reached the upstream (the
//! connection was never established, so not one byte was written). Retries
//! go to another endpoint when there is one (the caller's job), after a
//! full-jitter backoff, and only while the upstream's [`Budget`] allows.

use std::time::{Duration, Instant};

use crate::outcome::ErrorKind;

/// Why an attempt may be worth repeating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No connection: refused, unreachable, timed out or unresolved. Nothing
    /// was sent.
    ConnectFailure,
    /// The connection failed or closed before a complete response head.
    Reset,
    /// No response head within the per-try or response-header timeout.
    Timeout,
    /// The upstream answered with a status the route retries.
    Status(u16),
}

impl Reason {
    /// The closed label set of the retry metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ConnectFailure => "connect_failure",
            Reason::Reset => "reset",
            Reason::Timeout => "timeout",
            Reason::Status(_) => "status",
        }
    }

    /// The reason a failed attempt gives, if any.
    pub fn of_error(kind: ErrorKind) -> Option<Reason> {
        match kind {
            ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionTimeout
            | ErrorKind::DestinationUnreachable
            | ErrorKind::DnsError
            // Another endpoint may well have a valid certificate.
            | ErrorKind::TlsCertificate
            | ErrorKind::TlsProtocol => Some(Reason::ConnectFailure),
            ErrorKind::ConnectionTerminated => Some(Reason::Reset),
            ErrorKind::ResponseTimeout => Some(Reason::Timeout),
            _ => None,
        }
    }
}

/// What a route retries on (`route.retry.retry_on`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryOn {
    pub connect_failure: bool,
    pub reset: bool,
    pub timeout: bool,
    /// Statuses that are retried (502, 503 and 504 by default).
    pub statuses: Vec<u16>,
}

impl RetryOn {
    pub fn default_set() -> RetryOn {
        RetryOn {
            connect_failure: true,
            reset: true,
            timeout: true,
            statuses: vec![502, 503, 504],
        }
    }

    pub fn covers(&self, reason: Reason) -> bool {
        match reason {
            Reason::ConnectFailure => self.connect_failure,
            Reason::Reset => self.reset,
            Reason::Timeout => self.timeout,
            Reason::Status(s) => self.statuses.contains(&s),
        }
    }
}

/// The methods RFC 9110 §9.2.2 defines as idempotent, less those levee
/// never forwards (`CONNECT`) and plus the safe ones.
pub fn is_idempotent_method(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE")
}

/// Whether a failed attempt may be repeated. `idempotent` is the method's
/// (or the route's) idempotency; `sent` whether any byte of the request
/// reached the upstream.
pub fn may_retry(reason: Reason, retry_on: &RetryOn, idempotent: bool, sent: bool) -> bool {
    if !retry_on.covers(reason) {
        return false;
    }
    // A request that never left levee cannot have been executed.
    idempotent || (reason == Reason::ConnectFailure && !sent)
}

/// Jittered exponential backoff (the AWS architecture blog's): the wait
/// before retry `n` (1 for the first) grows as `base × 2^(n-1)` up to
/// `cap`, and is drawn at random below that [`ceiling`](Backoff::ceiling)
/// so that clients that failed together do not retry together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub const DEFAULT: Backoff = Backoff {
        base: Duration::from_millis(25),
        cap: Duration::from_millis(250),
    };

    /// The longest wait before retry `retry`: `min(cap, base × 2^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let shift = retry.saturating_sub(1).min(30);
        self.base.saturating_mul(1 << shift).min(self.cap)
    }

    /// Full jitter: uniform in `[0, ceiling]`, which spreads a burst of
    /// retries widest and keeps the average wait shortest.
    pub fn delay(&self, retry: u32, entropy: u64) -> Duration {
        up_to(self.ceiling(retry), entropy)
    }

    /// Equal jitter: uniform in `[ceiling / 2, ceiling]`. For reconnecting
    /// to one server, where a wait near zero would only be another attempt
    /// at a server that has just failed.
    pub fn delay_equal_jitter(&self, retry: u32, entropy: u64) -> Duration {
        let ceiling = self.ceiling(retry);
        let half = ceiling / 2;
        half + up_to(ceiling - half, entropy)
    }
}

/// Uniform in `[0, max]`, from a random `entropy`.
fn up_to(max: Duration, entropy: u64) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(entropy % nanos.saturating_add(1))
}

/// How long to wait before retrying a response that carries `Retry-After`:
/// the upstream's wish when it is within `cap`, or `None` when it asks for
/// longer (the response is then passed on rather than retried). A zero cap
/// passes on every response that carries one.
pub fn honour_retry_after(retry_after: Duration, cap: Duration) -> Option<Duration> {
    (!cap.is_zero() && retry_after <= cap).then_some(retry_after)
}

/// The retry budget of one upstream: retries in flight may be up to
/// `percent` of the requests in flight, plus `min_per_sec` a second (with a
/// burst of one second's worth) so that an upstream with little traffic can
/// still retry at all. Envoy's retry budget, with a rate floor instead of a
/// concurrency floor.
#[derive(Clone, Debug)]
pub struct Budget {
    percent: u32,
    min_per_sec: u32,
    tokens: f64,
    refilled: Option<Instant>,
}

impl Budget {
    pub fn new(percent: u32, min_per_sec: u32) -> Budget {
        Budget {
            percent,
            min_per_sec,
            tokens: f64::from(min_per_sec),
            refilled: None,
        }
    }

    /// Takes the budget for one more retry, if there is any. `requests` and
    /// `retries` are what is in flight now, not counting this retry.
    pub fn try_acquire(&mut self, now: Instant, requests: u64, retries: u64) -> bool {
        if (retries + 1) * 100 <= requests * u64::from(self.percent) {
            return true;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        false
    }

    fn refill(&mut self, now: Instant) {
        let rate = f64::from(self.min_per_sec);
        if let Some(then) = self.refilled {
            let dt = now.saturating_duration_since(then).as_secs_f64();
            self.tokens = (self.tokens + dt * rate).min(rate);
        }
        self.refilled = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn non_idempotent_requests_retry_only_what_never_left() {
        let on = RetryOn::default_set();
        assert!(may_retry(Reason::ConnectFailure, &on, false, false));
        assert!(!may_retry(Reason::Reset, &on, false, true));
        assert!(
            !may_retry(Reason::Reset, &on, false, false),
            "a reset may follow a sent request"
        );
        assert!(!may_retry(Reason::Timeout, &on, false, true));
        assert!(!may_retry(Reason::Status(503), &on, false, true));
        assert!(may_retry(Reason::Reset, &on, true, true));
        assert!(may_retry(Reason::Status(503), &on, true, true));
        assert!(
            !may_retry(Reason::Status(500), &on, true, true),
            "500 is not in the default set"
        );
    }

    #[test]
    fn reasons_of_errors() {
        assert_eq!(
            Reason::of_error(ErrorKind::ConnectionRefused),
            Some(Reason::ConnectFailure)
        );
        assert_eq!(
            Reason::of_error(ErrorKind::ConnectionTerminated),
            Some(Reason::Reset)
        );
        assert_eq!(
            Reason::of_error(ErrorKind::ResponseTimeout),
            Some(Reason::Timeout)
        );
        assert_eq!(Reason::of_error(ErrorKind::BadRequest), None);
        assert_eq!(Reason::of_error(ErrorKind::UpstreamProtocol), None);
    }

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"] {
            assert!(is_idempotent_method(m), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT"] {
            assert!(!is_idempotent_method(m), "{m}");
        }
    }

    #[test]
    fn retry_after_within_the_cap_is_honoured() {
        let cap = Duration::from_secs(1);
        assert_eq!(
            honour_retry_after(Duration::from_millis(300), cap),
            Some(Duration::from_millis(300))
        );
        assert_eq!(honour_retry_after(Duration::from_secs(5), cap), None);
        assert_eq!(
            honour_retry_after(Duration::ZERO, Duration::ZERO),
            None,
            "a zero cap passes all on"
        );
    }

    #[test]
    fn the_budget_scales_with_traffic_and_has_a_floor() {
        let t0 = Instant::now();
        let mut b = Budget::new(20, 10);
        // 100 requests in flight: 20 retries at once, from the percentage.
        for retries in 0..20 {
            assert!(b.try_acquire(t0, 100, retries));
        }
        // Beyond it, the floor's burst of 10, then nothing until it refills.
        for _ in 0..10 {
            assert!(b.try_acquire(t0, 100, 20));
        }
        assert!(!b.try_acquire(t0, 100, 20));
        assert!(b.try_acquire(t0 + Duration::from_millis(100), 100, 20));
        assert!(!b.try_acquire(t0 + Duration::from_millis(100), 100, 20));
    }

    proptest! {
        #[test]
        fn backoff_stays_within_its_bounds(retry in 1u32..40, entropy: u64, base_ms in 1u64..1000, cap_ms in 1u64..10_000) {
            let b = Backoff { base: Duration::from_millis(base_ms), cap: Duration::from_millis(cap_ms) };
            let d = b.delay(retry, entropy);
            prop_assert!(d <= b.cap);
            prop_assert!(d <= b.base.saturating_mul(1 << (retry - 1).min(30)));
        }

        #[test]
        fn equal_jitter_stays_in_the_upper_half(retry in 1u32..40, entropy: u64, base_ms in 1u64..1000, cap_ms in 1u64..10_000) {
            let b = Backoff { base: Duration::from_millis(base_ms), cap: Duration::from_millis(cap_ms) };
            let d = b.delay_equal_jitter(retry, entropy);
            prop_assert!(d <= b.ceiling(retry));
            prop_assert!(d >= b.ceiling(retry) / 2);
        }

        #[test]
        fn the_budget_never_admits_more_than_its_limit(
            steps in proptest::collection::vec((0u64..200, 0u64..50, 0u64..300), 1..300),
            percent in 0u32..100,
            rate in 0u32..50,
        ) {
            // Retries admitted beyond the percentage over a span of T seconds
            // are at most the floor's burst plus T × rate.
            let t0 = Instant::now();
            let mut b = Budget::new(percent, rate);
            let mut now = t0;
            let mut beyond = 0u64;
            for (requests, retries, advance_ms) in steps {
                now += Duration::from_millis(advance_ms);
                let by_percent = (retries + 1) * 100 <= requests * u64::from(percent);
                if b.try_acquire(now, requests, retries) && !by_percent {
                    beyond += 1;
                }
            }
            let span = now.duration_since(t0).as_secs_f64();
            let limit = f64::from(rate) * (1.0 + span);
            prop_assert!(beyond as f64 <= limit + 1e-9, "{beyond} > {limit}");
        }
    }
}
