//! Passive outlier detection: taking an endpoint out of rotation because of
//! how its real traffic goes, between (or without) active checks.
//!
//! Three detectors, as in Envoy: `consecutive_5xx` 5xx answers (or gateway
//! failures) in a row; `consecutive_gateway_failure` failures in a row to get
//! any answer at all (a refused or reset connection, a timeout) or 502, 503,
//! 504; and, every interval, a *success rate* far enough below the other
//! endpoints' (under mean − k·σ, among endpoints with enough requests). An
//! ejection lasts `base × n` for the endpoint's n-th ejection, capped, plus
//! jitter so that endpoints ejected together do not return together. Two
//! limits keep detection from doing more harm than the outliers:
//! [`may_eject`] never lets more than a share of an upstream be ejected
//! (always at least one endpoint, so a cluster of three can lose one), and
//! never takes a region below a minimum of endpoints that can take traffic.

use std::time::Duration;

/// Outlier detection settings (validated by the config layer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// 5xx answers (or gateway failures) in a row that eject; 0 disables.
    pub consecutive_5xx: u32,
    /// Gateway failures in a row that eject; 0 disables.
    pub consecutive_gateway_failure: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    /// Up to this much extra, uniformly, on each ejection.
    pub jitter: Duration,
    /// At most this share of an upstream's endpoints ejected at once (and
    /// never fewer than one).
    pub max_ejection_percent: u32,
    /// A region keeps at least this many endpoints that can take traffic.
    pub min_available_per_region: u32,
    pub success_rate: Option<SuccessRate>,
}

/// The success-rate detector's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SuccessRate {
    /// Endpoints with at least `request_volume` requests in the interval
    /// that are needed for the statistics to mean anything.
    pub minimum_hosts: u32,
    pub request_volume: u64,
    /// k in mean − k·σ.
    pub stdev_factor: f64,
    pub interval: Duration,
}

impl Params {
    pub const DEFAULT: Params = Params {
        consecutive_5xx: 5,
        consecutive_gateway_failure: 5,
        base_ejection_time: Duration::from_secs(30),
        max_ejection_time: Duration::from_secs(300),
        jitter: Duration::from_secs(1),
        max_ejection_percent: 10,
        min_available_per_region: 1,
        success_rate: Some(SuccessRate::DEFAULT),
    };
}

impl SuccessRate {
    pub const DEFAULT: SuccessRate = SuccessRate {
        minimum_hosts: 5,
        request_volume: 100,
        stdev_factor: 1.9,
        interval: Duration::from_secs(10),
    };
}

/// What one exchange with an endpoint says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// A response below 500.
    Success,
    /// A 5xx response other than a gateway failure.
    ServerError,
    /// No usable answer (connection refused or reset, timeout), or 502,
    /// 503, 504.
    GatewayFailure,
}

impl Observation {
    pub fn of_status(status: u16) -> Observation {
        match status {
            502..=504 => Observation::GatewayFailure,
            500..=599 => Observation::ServerError,
            _ => Observation::Success,
        }
    }
}

/// The two consecutive-failure counters of one endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streaks {
    pub errors_5xx: u32,
    pub gateway_failures: u32,
}

/// Which detector asks for an ejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detector {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    SuccessRate,
}

impl Detector {
    /// The closed label set of the ejection metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::Consecutive5xx => "consecutive_5xx",
            Detector::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            Detector::SuccessRate => "success_rate",
        }
    }
}

impl Streaks {
    /// Counts one observation; returns the detector that trips, if one does.
    pub fn observe(&mut self, o: Observation, p: &Params) -> Option<Detector> {
        match o {
            Observation::Success => {
                *self = Streaks::default();
                None
            }
            Observation::ServerError => {
                self.gateway_failures = 0;
                self.errors_5xx = self.errors_5xx.saturating_add(1);
                self.tripped(p)
            }
            Observation::GatewayFailure => {
                self.gateway_failures = self.gateway_failures.saturating_add(1);
                self.errors_5xx = self.errors_5xx.saturating_add(1);
                self.tripped(p)
            }
        }
    }

    fn tripped(&self, p: &Params) -> Option<Detector> {
        let hit = |count: u32, limit: u32| limit > 0 && count >= limit;
        if hit(self.gateway_failures, p.consecutive_gateway_failure) {
            Some(Detector::ConsecutiveGatewayFailure)
        } else if hit(self.errors_5xx, p.consecutive_5xx) {
            Some(Detector::Consecutive5xx)
        } else {
            None
        }
    }
}

/// How long the `nth` ejection (1 for the first) of an endpoint lasts.
pub fn ejection_time(p: &Params, nth: u32, entropy: u64) -> Duration {
    let base = p
        .base_ejection_time
        .saturating_mul(nth.max(1))
        .min(p.max_ejection_time);
    let jitter = u64::try_from(p.jitter.as_nanos()).unwrap_or(u64::MAX);
    base + Duration::from_nanos(entropy % jitter.saturating_add(1))
}

/// The most endpoints of an upstream of `total` that may be ejected at once.
pub fn max_ejected(p: &Params, total: usize) -> usize {
    (total * p.max_ejection_percent as usize / 100).max(1).min(total)
}

/// Whether one more endpoint may be ejected: the upstream has `ejected` of
/// `total` out already, and the endpoint's region would be left with
/// `region_available_after` endpoints that can take traffic.
pub fn may_eject(p: &Params, total: usize, ejected: usize, region_available_after: usize) -> bool {
    ejected < max_ejected(p, total) && region_available_after >= p.min_available_per_region as usize
}

/// One endpoint's requests over a success-rate interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Volume {
    pub successes: u64,
    pub total: u64,
}

/// The endpoints (by index) whose success rate is an outlier this interval.
pub fn success_rate_outliers(p: &SuccessRate, volumes: &[Volume]) -> Vec<usize> {
    let rated: Vec<(usize, f64)> = volumes
        .iter()
        .enumerate()
        .filter(|(_, v)| v.total >= p.request_volume.max(1))
        .map(|(i, v)| (i, v.successes as f64 / v.total as f64))
        .collect();
    if rated.len() < p.minimum_hosts.max(2) as usize {
        return Vec::new();
    }
    let n = rated.len() as f64;
    let mean = rated.iter().map(|(_, r)| r).sum::<f64>() / n;
    let variance = rated.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
    let threshold = mean - p.stdev_factor * variance.sqrt();
    rated
        .into_iter()
        .filter(|&(_, r)| r < threshold)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_trip_and_a_success_resets() {
        let p = Params::DEFAULT;
        let mut s = Streaks::default();
        for _ in 0..4 {
            assert_eq!(s.observe(Observation::ServerError, &p), None);
        }
        assert_eq!(s.observe(Observation::Success, &p), None);
        for _ in 0..4 {
            assert_eq!(s.observe(Observation::ServerError, &p), None);
        }
        assert_eq!(
            s.observe(Observation::ServerError, &p),
            Some(Detector::Consecutive5xx)
        );
        let mut s = Streaks::default();
        for _ in 0..4 {
            assert_eq!(s.observe(Observation::GatewayFailure, &p), None);
        }
        assert_eq!(
            s.observe(Observation::GatewayFailure, &p),
            Some(Detector::ConsecutiveGatewayFailure)
        );
    }

    #[test]
    fn disabled_detectors_never_trip() {
        let p = Params {
            consecutive_5xx: 0,
            consecutive_gateway_failure: 0,
            ..Params::DEFAULT
        };
        let mut s = Streaks::default();
        for _ in 0..100 {
            assert_eq!(s.observe(Observation::GatewayFailure, &p), None);
        }
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(Observation::of_status(200), Observation::Success);
        assert_eq!(Observation::of_status(404), Observation::Success);
        assert_eq!(Observation::of_status(500), Observation::ServerError);
        assert_eq!(Observation::of_status(503), Observation::GatewayFailure);
    }

    #[test]
    fn ejections_grow_with_their_count_and_are_capped() {
        let p = Params {
            jitter: Duration::ZERO,
            ..Params::DEFAULT
        };
        assert_eq!(ejection_time(&p, 1, 9), Duration::from_secs(30));
        assert_eq!(ejection_time(&p, 3, 9), Duration::from_secs(90));
        assert_eq!(ejection_time(&p, 50, 9), Duration::from_secs(300));
        let jittered = ejection_time(&Params::DEFAULT, 1, 123_456_789);
        assert!(jittered >= Duration::from_secs(30) && jittered <= Duration::from_secs(31));
    }

    #[test]
    fn small_clusters_can_eject_one_and_regions_keep_their_minimum() {
        let p = Params::DEFAULT;
        assert_eq!(max_ejected(&p, 3), 1, "10% of 3 still allows one");
        assert_eq!(max_ejected(&p, 40), 4);
        assert_eq!(max_ejected(&p, 1), 1);
        assert!(may_eject(&p, 3, 0, 2));
        assert!(!may_eject(&p, 3, 1, 1), "one is out already");
        assert!(!may_eject(&p, 3, 0, 0), "the region would have none left");
        let p = Params {
            min_available_per_region: 2,
            max_ejection_percent: 100,
            ..Params::DEFAULT
        };
        assert!(!may_eject(&p, 3, 0, 1));
    }

    #[test]
    fn success_rate_outliers_need_volume_and_hosts() {
        let p = SuccessRate::DEFAULT;
        let good = Volume {
            successes: 990,
            total: 1000,
        };
        let bad = Volume {
            successes: 500,
            total: 1000,
        };
        let mut v = vec![good; 5];
        v.push(bad);
        assert_eq!(success_rate_outliers(&p, &v), vec![5]);
        // Too few endpoints with volume: no verdict.
        assert!(success_rate_outliers(&p, &[good, good, bad]).is_empty());
        // The bad one without enough requests is not judged.
        v[5] = Volume {
            successes: 5,
            total: 10,
        };
        assert!(success_rate_outliers(&p, &v).is_empty());
        // All alike: nobody is an outlier.
        assert!(success_rate_outliers(&p, &[good; 8]).is_empty());
    }
}
