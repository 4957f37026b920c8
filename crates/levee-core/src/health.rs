//! Active health checking: how check results turn into "healthy" or not.
//!
//! An endpoint changes state only after `rise` consecutive successes (to
//! healthy) or `fall` consecutive failures (to unhealthy), as in HAProxy:
//! one lost probe does not take an endpoint out, and one lucky probe does
//! not put a failing one back. The schedule of probes (a faster interval
//! while unhealthy, jitter so a fleet does not probe in step) is also
//! decided here, from the time passed in.

use std::time::Duration;

/// The thresholds and timing of a check (validated by the config layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub rise: u32,
    pub fall: u32,
    pub interval: Duration,
    pub unhealthy_interval: Duration,
    /// Each delay is moved by up to this fraction of itself, either way.
    pub jitter_percent: u32,
}

/// A state change worth telling someone about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    BecameHealthy,
    BecameUnhealthy,
}

/// One endpoint's health as active checks see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    healthy: bool,
    /// Consecutive results against the current state.
    streak: u32,
}

impl Health {
    /// Endpoints start healthy, so traffic flows from the first moment; a
    /// dead one is taken out after `fall` failed probes.
    pub fn new() -> Health {
        Health {
            healthy: true,
            streak: 0,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Records one probe's result; returns the state change, if any.
    pub fn observe(&mut self, success: bool, t: &Thresholds) -> Option<Transition> {
        if success == self.healthy {
            // A result that agrees with the state breaks any streak against it.
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy { t.fall } else { t.rise };
        if self.streak < needed.max(1) {
            return None;
        }
        self.healthy = success;
        self.streak = 0;
        Some(if success {
            Transition::BecameHealthy
        } else {
            Transition::BecameUnhealthy
        })
    }

    /// The delay before the next probe: the interval for the current state,
    /// moved by jitter. `entropy` is a fresh random value.
    pub fn next_delay(&self, t: &Thresholds, entropy: u64) -> Duration {
        let base = if self.healthy {
            t.interval
        } else {
            t.unhealthy_interval
        };
        jittered(base, t.jitter_percent, entropy)
    }
}

impl Default for Health {
    fn default() -> Health {
        Health::new()
    }
}

/// `base` moved uniformly within ±`percent`% of itself.
pub fn jittered(base: Duration, percent: u32, entropy: u64) -> Duration {
    let percent = u64::from(percent.min(100));
    let nanos = base.as_nanos().min(u128::from(u64::MAX)) as u64;
    let span = nanos / 100 * percent;
    if span == 0 {
        return base;
    }
    // Uniform in [base - span, base + span].
    let offset = entropy % (2 * span + 1);
    Duration::from_nanos(nanos - span + offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: Thresholds = Thresholds {
        rise: 2,
        fall: 3,
        interval: Duration::from_secs(2),
        unhealthy_interval: Duration::from_millis(500),
        jitter_percent: 10,
    };

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let mut h = Health::new();
        assert_eq!(h.observe(false, &T), None);
        assert_eq!(h.observe(false, &T), None);
        assert!(h.is_healthy());
        assert_eq!(h.observe(false, &T), Some(Transition::BecameUnhealthy));
        assert!(!h.is_healthy());
        assert_eq!(h.observe(true, &T), None);
        assert_eq!(h.observe(true, &T), Some(Transition::BecameHealthy));
        assert!(h.is_healthy());
    }

    #[test]
    fn an_agreeing_result_resets_the_streak() {
        let mut h = Health::new();
        h.observe(false, &T);
        h.observe(false, &T);
        h.observe(true, &T);
        assert_eq!(h.observe(false, &T), None);
        assert_eq!(h.observe(false, &T), None);
        assert!(h.is_healthy(), "two failures since the last success");
    }

    #[test]
    fn flapping_faster_than_the_thresholds_changes_nothing() {
        // Up one probe, down the next: never `fall` failures in a row.
        let mut h = Health::new();
        for i in 0..100 {
            assert_eq!(h.observe(i % 2 == 0, &T), None);
        }
        assert!(h.is_healthy());
    }

    #[test]
    fn unhealthy_endpoints_are_probed_faster() {
        let mut h = Health::new();
        let no_jitter = Thresholds {
            jitter_percent: 0,
            ..T
        };
        assert_eq!(h.next_delay(&no_jitter, 7), Duration::from_secs(2));
        for _ in 0..3 {
            h.observe(false, &T);
        }
        assert_eq!(h.next_delay(&no_jitter, 7), Duration::from_millis(500));
    }

    proptest! {
        #[test]
        fn jitter_stays_within_its_bounds(base_ms in 1u64..100_000, percent in 0u32..=100, entropy: u64) {
            let base = Duration::from_millis(base_ms);
            let d = jittered(base, percent, entropy);
            let span = base.as_nanos() as u64 / 100 * u64::from(percent);
            prop_assert!(d.as_nanos() as u64 >= base.as_nanos() as u64 - span);
            prop_assert!(d.as_nanos() as u64 <= base.as_nanos() as u64 + span);
        }

        #[test]
        fn state_changes_only_after_enough_agreeing_results(results in proptest::collection::vec(any::<bool>(), 0..200)) {
            let mut h = Health::new();
            let mut run = (true, 0u32);
            for ok in results {
                run = if ok == run.0 { (ok, run.1 + 1) } else { (ok, 1) };
                if let Some(t) = h.observe(ok, &T) {
                    let needed = if ok { T.rise } else { T.fall };
                    prop_assert!(run.1 >= needed, "{t:?} after {} in a row", run.1);
                }
            }
        }
    }
}
