//! Peak-EWMA latency, the cost behind the `peak_ewma` balancer (after
//! Finagle's and linkerd's): each endpoint's latency estimate jumps up to
//! any sample above it at once and decays towards zero with time constant
//! `decay` (the estimate is the largest recent sample, faded by its age). So
//! an endpoint that turns slow is avoided immediately, regains traffic as
//! the memory of it fades, and an endpoint that gets no traffic because it
//! looked slow is tried again in time.
//!
//! Failures count as slow: a failed exchange, or a fast 5xx or 429, is a
//! sample of at least `penalty`, so an endpoint that answers errors quickly
//! does not look like the fastest one and attract traffic.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub decay: Duration,
    pub penalty: Duration,
}

impl Params {
    pub const DEFAULT: Params = Params {
        decay: Duration::from_secs(10),
        penalty: Duration::from_secs(1),
    };
}

/// The sample an exchange gives: its latency, raised to the penalty when it
/// failed (no response, a 5xx, a 429).
pub fn sample(p: &Params, latency: Duration, failed: bool) -> Duration {
    if failed { latency.max(p.penalty) } else { latency }
}

/// The estimate `elapsed` after it was last set (nanoseconds).
pub fn decayed(p: &Params, estimate: f64, elapsed: Duration) -> f64 {
    let tau = p.decay.as_secs_f64().max(1e-9);
    estimate * (-elapsed.as_secs_f64() / tau).exp()
}

/// The estimate after `sample`, given the estimate as it stands now
/// ([`decayed`]): the larger of the two.
pub fn observe(estimate_now: f64, sample: Duration) -> f64 {
    estimate_now.max(sample.as_nanos() as f64)
}

/// The balancer's cost of sending one more request to an endpoint: its
/// latency times the requests it would then have in flight.
pub fn cost(average: f64, in_flight: u64) -> f64 {
    // An endpoint never measured costs as if it answered in a microsecond:
    // new endpoints get tried, and in-flight counts still spread load.
    average.max(1_000.0) * (in_flight as f64 + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1_000_000.0;

    #[test]
    fn peaks_at_once_and_decays_with_time() {
        let p = Params::DEFAULT;
        let a = observe(10.0 * MS, Duration::from_millis(200));
        assert_eq!(a, 200.0 * MS, "a slow sample takes over at once");
        let b = decayed(&p, a, Duration::from_secs(10));
        assert!(
            (b - 200.0 * MS * (-1f64).exp()).abs() < 1.0,
            "one time constant fades it to 1/e"
        );
        assert_eq!(
            observe(b, Duration::from_millis(10)),
            b,
            "a fast sample does not lower it"
        );
        let faded = decayed(&p, a, Duration::from_secs(60));
        assert_eq!(
            observe(faded, Duration::from_millis(10)),
            10.0 * MS,
            "once faded, recent samples count"
        );
        assert_eq!(decayed(&p, a, Duration::ZERO), a);
    }

    #[test]
    fn failures_count_as_slow() {
        let p = Params::DEFAULT;
        assert_eq!(sample(&p, Duration::from_millis(2), true), Duration::from_secs(1));
        assert_eq!(
            sample(&p, Duration::from_millis(2), false),
            Duration::from_millis(2)
        );
        assert_eq!(sample(&p, Duration::from_secs(3), true), Duration::from_secs(3));
    }

    #[test]
    fn cost_grows_with_latency_and_load() {
        assert!(cost(5.0 * MS, 0) < cost(50.0 * MS, 0));
        assert!(cost(5.0 * MS, 0) < cost(5.0 * MS, 3));
        assert_eq!(cost(0.0, 0), 1_000.0);
    }
}
