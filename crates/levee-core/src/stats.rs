//! Request statistics over a window: counts and a latency histogram fine
//! enough for quantiles, as the dashboard's charts and the alert rules on
//! error ratio and p99 read them.
//!
//! The histogram has four buckets per doubling of latency (each bucket's
//! upper bound is 2^¼ ≈ 1.19 times the one before), from 64 µs to about
//! 72 minutes: a quantile read from it is within 19% of the true value,
//! whatever the latency, with a fixed 105 counters. The recorder of a
//! running upstream keeps cumulative counts; a window is the difference of
//! two cumulative readings.

use std::time::Duration;

/// Buckets per doubling.
const PER_OCTAVE: u32 = 4;
/// Latencies up to 2^6 µs = 64 µs fall in bucket 0.
const FIRST_OCTAVE: u32 = 6;
/// 26 doublings from 64 µs reach 2^32 µs, about 72 minutes; the last
/// bucket also holds anything longer.
pub const BUCKETS: usize = 105;

/// The bucket a latency falls in.
pub fn bucket_of(latency: Duration) -> usize {
    bucket_of_micros(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX))
}

/// The bucket of a latency in microseconds. On the request path: integer
/// arithmetic only.
pub fn bucket_of_micros(micros: u64) -> usize {
    if micros <= 1 << FIRST_OCTAVE {
        return 0;
    }
    // Past the last bound everything shares the last bucket; capping first
    // keeps the products below from overflowing.
    let micros = micros.min(1 << 40);
    let octave = 63 - micros.leading_zeros();
    let base = 1u64 << octave;
    // Which quarter of the doubling: the bounds are base × 2^(k/4), to
    // four digits (1.1892, 1.4142, 1.6818).
    let scaled = micros * 10_000;
    let quarter = if micros == base {
        0
    } else if scaled <= base * 11_892 {
        1
    } else if scaled <= base * 14_142 {
        2
    } else if scaled <= base * 16_818 {
        3
    } else {
        4
    };
    let index = (octave - FIRST_OCTAVE) * PER_OCTAVE + quarter;
    (index as usize).min(BUCKETS - 1)
}

/// The upper bound of bucket `i`, in seconds.
pub fn upper_bound(i: usize) -> f64 {
    let exponent = f64::from(FIRST_OCTAVE) + i as f64 / f64::from(PER_OCTAVE);
    exponent.exp2() / 1e6
}

/// Requests, server errors and latencies, cumulative or over a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub requests: u64,
    /// Responses with a 5xx status, levee's own included.
    pub errors: u64,
    pub latency: [u64; BUCKETS],
}

impl Default for Window {
    fn default() -> Self {
        Window {
            requests: 0,
            errors: 0,
            latency: [0; BUCKETS],
        }
    }
}

impl Window {
    /// What happened between `earlier` and `self` (both cumulative).
    pub fn since(&self, earlier: &Window) -> Window {
        let mut latency = [0; BUCKETS];
        for (i, slot) in latency.iter_mut().enumerate() {
            *slot = self.latency[i].saturating_sub(earlier.latency[i]);
        }
        Window {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency,
        }
    }

    /// Server errors over requests; `None` without requests.
    pub fn error_ratio(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }

    /// The `q` quantile (0 to 1) of latency in seconds, interpolated
    /// within its bucket as Prometheus' `histogram_quantile` does; `None`
    /// without requests.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, &count) in self.latency.iter().enumerate() {
            if count == 0 {
                continue;
            }
            if (seen + count) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { upper_bound(i - 1) };
                let upper = upper_bound(i);
                let within = (rank - seen as f64) / count as f64;
                return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
            }
            seen += count;
        }
        Some(upper_bound(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_are_ordered_and_bounds_hold_their_latencies() {
        for i in 1..BUCKETS {
            assert!(upper_bound(i) > upper_bound(i - 1));
        }
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_micros(64)), 0);
        assert_eq!(bucket_of(Duration::from_micros(128)), 4);
        assert_eq!(bucket_of(Duration::from_secs(100_000)), BUCKETS - 1);
    }

    #[test]
    fn quantiles_of_known_latencies() {
        let mut w = Window::default();
        for ms in 1..=100u64 {
            w.latency[bucket_of(Duration::from_millis(ms))] += 1;
            w.requests += 1;
        }
        let p50 = w.quantile(0.5).unwrap_or_default();
        let p99 = w.quantile(0.99).unwrap_or_default();
        assert!((0.05 / 1.19..=0.05 * 1.19).contains(&p50), "{p50}");
        assert!((0.099 / 1.19..=0.099 * 1.19).contains(&p99), "{p99}");
        assert_eq!(Window::default().quantile(0.5), None);
    }

    #[test]
    fn a_window_is_the_difference_of_two_readings() {
        let mut before = Window {
            requests: 10,
            errors: 1,
            ..Window::default()
        };
        before.latency[3] = 10;
        let mut after = before.clone();
        after.requests = 30;
        after.errors = 11;
        after.latency[3] = 30;
        let w = after.since(&before);
        assert_eq!((w.requests, w.errors, w.latency[3]), (20, 10, 20));
        assert_eq!(w.error_ratio(), Some(0.5));
        assert_eq!(Window::default().error_ratio(), None);
    }

    proptest! {
        #[test]
        fn a_latency_lies_within_its_bucket(micros in 0u64..10_000_000_000_000) {
            let d = Duration::from_micros(micros);
            let i = bucket_of(d);
            let s = d.as_secs_f64();
            if i < BUCKETS - 1 {
                prop_assert!(s <= upper_bound(i) * (1.0 + 1e-4));
            }
            if i > 0 {
                prop_assert!(s > upper_bound(i - 1) * (1.0 - 1e-4));
            }
        }

        #[test]
        fn quantiles_are_monotone(counts in proptest::collection::vec(0u64..50, BUCKETS)) {
            let mut w = Window::default();
            w.latency.copy_from_slice(&counts);
            let qs: Vec<Option<f64>> = [0.1, 0.5, 0.9, 0.99].iter().map(|&q| w.quantile(q)).collect();
            for pair in qs.windows(2) {
                if let (Some(a), Some(b)) = (pair[0], pair[1]) {
                    prop_assert!(a <= b);
                }
            }
        }
    }
}
