//! Balancing: which endpoint of one priority level serves a request.
//!
//! A [`Balancer`] is built once per level from the endpoints' weights and
//! stable keys (their addresses) and then picks with `&self`, so the request
//! path shares it without a lock. It sees the level through [`Members`]:
//! whether an endpoint may take traffic now, and how many requests it has in
//! flight. Randomness comes in as an argument (`entropy`), which keeps every
//! policy deterministic under test.

#[cfg(test)]
mod fixed;
mod maglev;
mod members;
mod ring;
mod round_robin;

use crate::hash::mix;

pub use maglev::Maglev;
pub use members::Members;
pub use ring::Ring;
pub use round_robin::SmoothWeighted;

/// The balancing policies an upstream can use (`upstream.<u>.balance`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Smooth weighted round-robin (nginx's): weights are honoured without bursts.
    RoundRobin,
    /// Power of two choices on in-flight requests per unit of weight.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Consistent hashing on a ring with virtual nodes (ketama-style).
    RingHash,
    /// Consistent hashing with a Maglev lookup table.
    Maglev,
    /// Power of two choices on peak-EWMA latency × in-flight requests, per
    /// unit of weight; failures count as slow ([`crate::ewma`]).
    PeakEwma,
}

impl Policy {
    pub const ALL: [Policy; 6] = [
        Policy::RoundRobin,
        Policy::LeastRequest,
        Policy::Random,
        Policy::RingHash,
        Policy::Maglev,
        Policy::PeakEwma,
    ];

    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastRequest => "least_request",
            Policy::Random => "random",
            Policy::RingHash => "ring_hash",
            Policy::Maglev => "maglev",
            Policy::PeakEwma => "peak_ewma",
        }
    }

    pub fn parse(s: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Whether the policy needs a hash key to be meaningful.
    pub fn is_hashing(self) -> bool {
        matches!(self, Policy::RingHash | Policy::Maglev)
    }
}

/// One level's balancer.
#[derive(Debug)]
pub struct Balancer {
    weights: Vec<u32>,
    total_weight: u64,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    RoundRobin(SmoothWeighted),
    LeastRequest,
    PeakEwma,
    Random,
    Ring(Ring),
    Maglev(Maglev),
}

impl Balancer {
    /// Builds a balancer for endpoints with these weights (each ≥ 1) and
    /// stable keys (used to place them on a hash ring or Maglev table).
    pub fn new(policy: Policy, weights: &[u32], keys: &[&str]) -> Balancer {
        debug_assert_eq!(weights.len(), keys.len());
        let weights: Vec<u32> = weights.iter().map(|&w| w.max(1)).collect();
        let kind = match policy {
            Policy::RoundRobin => Kind::RoundRobin(SmoothWeighted::new(&weights)),
            Policy::LeastRequest => Kind::LeastRequest,
            Policy::PeakEwma => Kind::PeakEwma,
            Policy::Random => Kind::Random,
            Policy::RingHash => Kind::Ring(Ring::new(&weights, keys)),
            Policy::Maglev => Kind::Maglev(Maglev::new(&weights, keys)),
        };
        let total_weight = weights.iter().map(|&w| u64::from(w)).sum();
        Balancer {
            weights,
            total_weight,
            kind,
        }
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Picks an available endpoint, or `None` when none is available.
    ///
    /// `hash` is the request's consistent-hash key, when the upstream hashes
    /// and the request carries the key; without it a hashing policy falls
    /// back to weighted random, as Envoy does. `entropy` is a fresh random
    /// value per call.
    pub fn pick(&self, members: &dyn Members, hash: Option<u64>, entropy: u64) -> Option<usize> {
        let n = self.weights.len();
        if n == 0 || members.len() != n {
            return None;
        }
        match (&self.kind, hash) {
            (Kind::RoundRobin(rr), _) => rr.pick(members),
            (Kind::Ring(ring), Some(h)) => ring.pick(members, h),
            (Kind::Maglev(table), Some(h)) => table.pick(members, h),
            (Kind::LeastRequest, _) => self.pick_two(members, entropy, |i| members.in_flight(i) as f64),
            (Kind::PeakEwma, _) => self.pick_two(members, entropy, |i| {
                crate::ewma::cost(members.latency(i), members.in_flight(i))
            }),
            (Kind::Random | Kind::Ring(_) | Kind::Maglev(_), _) => self.pick_random(members, entropy),
        }
    }

    /// Weighted random: a few independent draws, then a scan so that a
    /// level with one available endpoint out of many still finds it.
    fn pick_random(&self, members: &dyn Members, entropy: u64) -> Option<usize> {
        let mut e = entropy;
        for _ in 0..4 {
            let i = self.weighted_index(e % self.total_weight);
            if members.available(i) {
                return Some(i);
            }
            e = mix(e.wrapping_add(0x9e37_79b9_7f4a_7c15));
        }
        let start = (e % self.weights.len() as u64) as usize;
        first_available_from(members, start)
    }

    fn weighted_index(&self, mut point: u64) -> usize {
        for (i, &w) in self.weights.iter().enumerate() {
            let w = u64::from(w);
            if point < w {
                return i;
            }
            point -= w;
        }
        self.weights.len() - 1
    }

    /// Power of two choices: draw two distinct available endpoints, keep
    /// the one with the lower `load` per unit of weight (ties go to the
    /// first draw, which is itself random). Distinct, because with few
    /// endpoints two equal draws would ignore load half of the time.
    fn pick_two(&self, members: &dyn Members, entropy: u64, load: impl Fn(usize) -> f64) -> Option<usize> {
        let a = self.pick_random(members, entropy)?;
        let b = self.pick_other(members, a, mix(entropy ^ 0x5851_f42d_4c95_7f2d));
        let Some(b) = b else {
            return Some(a);
        };
        // Compare load(a)/w(a) with load(b)/w(b) without division.
        let load_a = load(a) * f64::from(self.weights[b]);
        let load_b = load(b) * f64::from(self.weights[a]);
        Some(if load_b < load_a { b } else { a })
    }

    /// A weighted-random available endpoint other than `not`, if any.
    fn pick_other(&self, members: &dyn Members, not: usize, entropy: u64) -> Option<usize> {
        let mut e = entropy;
        for _ in 0..4 {
            let i = self.weighted_index(e % self.total_weight);
            if i != not && members.available(i) {
                return Some(i);
            }
            e = mix(e.wrapping_add(0x9e37_79b9_7f4a_7c15));
        }
        let n = self.weights.len();
        let start = (e % n as u64) as usize;
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| i != not && members.available(i))
    }
}

/// The first available endpoint at or after `start`, wrapping around.
fn first_available_from(members: &dyn Members, start: usize) -> Option<usize> {
    let n = members.len();
    (0..n).map(|k| (start + k) % n).find(|&i| members.available(i))
}

#[cfg(test)]
mod tests {
    use super::fixed::{Fixed, keys};
    use super::*;

    fn balancer(policy: Policy, weights: &[u32]) -> Balancer {
        let keys = keys(weights.len());
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        Balancer::new(policy, weights, &refs)
    }

    #[test]
    fn policy_names_round_trip() {
        for p in Policy::ALL {
            assert_eq!(Policy::parse(p.as_str()), Some(p));
        }
        assert_eq!(Policy::parse("roundrobin"), None);
    }

    #[test]
    fn empty_or_all_down_picks_nothing() {
        for p in Policy::ALL {
            let b = balancer(p, &[1, 1]);
            let mut m = Fixed::all_up(2);
            m.up = vec![false, false];
            assert_eq!(b.pick(&m, Some(7), 42), None, "{p:?}");
            let empty = balancer(p, &[]);
            assert_eq!(empty.pick(&Fixed::all_up(0), Some(7), 42), None);
        }
    }

    #[test]
    fn every_policy_skips_unavailable_endpoints() {
        for p in Policy::ALL {
            let b = balancer(p, &[1, 1, 1, 1]);
            let mut m = Fixed::all_up(4);
            m.up[1] = false;
            m.up[2] = false;
            for e in 0..2_000u64 {
                let i = b.pick(&m, Some(mix(e)), mix(e + 1)).expect("one is up");
                assert!(i == 0 || i == 3, "{p:?} picked {i}");
            }
        }
    }

    #[test]
    fn random_follows_weights() {
        let b = balancer(Policy::Random, &[1, 3]);
        let m = Fixed::all_up(2);
        let mut counts = [0u32; 2];
        for e in 0..40_000u64 {
            counts[b.pick(&m, None, mix(e)).expect("up")] += 1;
        }
        // Expect 10k / 30k; allow 5% of the total either way.
        assert!((8_000..12_000).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let b = balancer(Policy::LeastRequest, &[1, 1, 1]);
        let m = Fixed::all_up(3);
        *m.in_flight.borrow_mut() = vec![10, 0, 10];
        let mut counts = [0u32; 3];
        for e in 0..9_000u64 {
            counts[b.pick(&m, None, mix(e)).expect("up")] += 1;
        }
        // Endpoint 1 wins every draw it is in: 1 - (2/3)^2 = 5/9 of picks.
        assert!(counts[1] > 4_500, "{counts:?}");
        assert!(counts[1] > counts[0] * 2 && counts[1] > counts[2] * 2);
    }

    #[test]
    fn least_request_with_two_endpoints_always_takes_the_idler() {
        let b = balancer(Policy::LeastRequest, &[1, 1]);
        let m = Fixed::all_up(2);
        *m.in_flight.borrow_mut() = vec![3, 1];
        for e in 0..1_000u64 {
            assert_eq!(b.pick(&m, None, mix(e)), Some(1));
        }
    }

    #[test]
    fn least_request_weighs_load_by_weight() {
        // Equal in-flight, endpoint 1 has 4x the weight: it is less loaded per unit.
        let b = balancer(Policy::LeastRequest, &[1, 4]);
        let m = Fixed::all_up(2);
        *m.in_flight.borrow_mut() = vec![4, 4];
        let mut counts = [0u32; 2];
        for e in 0..10_000u64 {
            counts[b.pick(&m, None, mix(e)).expect("up")] += 1;
        }
        assert!(counts[1] > counts[0] * 3, "{counts:?}");
    }

    #[test]
    fn peak_ewma_avoids_the_slow_endpoint_and_weighs_its_load() {
        let b = balancer(Policy::PeakEwma, &[1, 1, 1]);
        let mut m = Fixed::all_up(3);
        // Endpoint 2 answers errors fast, which counts as a one-second latency.
        m.latency = vec![5e6, 5e6, 1e9];
        let mut counts = [0u32; 3];
        for e in 0..9_000u64 {
            counts[b.pick(&m, None, mix(e)).expect("up")] += 1;
        }
        assert!(counts[2] < 100, "{counts:?}");
        // Equal latency: in-flight decides.
        m.latency = vec![5e6; 3];
        *m.in_flight.borrow_mut() = vec![0, 9, 9];
        let wins = (0..9_000u64)
            .filter(|&e| b.pick(&m, None, mix(e)) == Some(0))
            .count();
        assert!(wins > 4_500, "{wins}");
    }

    #[test]
    fn hashing_without_a_key_falls_back_to_random() {
        for p in [Policy::RingHash, Policy::Maglev] {
            let b = balancer(p, &[1, 1]);
            let m = Fixed::all_up(2);
            let mut seen = [false; 2];
            for e in 0..100u64 {
                seen[b.pick(&m, None, mix(e)).expect("up")] = true;
            }
            assert_eq!(seen, [true, true], "{p:?}");
        }
    }
}
