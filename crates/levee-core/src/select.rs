//! Choosing an endpoint of an upstream: first the priority level, then the
//! endpoint within it.
//!
//! Endpoints are grouped by the priority of their region; level 0 is the
//! most preferred. Which level serves a request follows the upstream's
//! [`Loads`] (computed by [`crate::failover`] from the levels' health); a
//! level in panic serves from all its endpoints, healthy or not. Should the
//! chosen level have nothing to offer after all (the loads are a moment old,
//! or a retry excludes what is left), the other levels are tried in
//! priority order.

use crate::balance::{Balancer, Members, Policy};
use crate::failover::Loads;

/// What the selector may know about every endpoint of the upstream, by the
/// endpoint's index in the upstream.
pub trait Endpoints {
    /// Whether the endpoint may take traffic (healthy, not ejected, not
    /// excluded).
    fn available(&self, endpoint: usize) -> bool;
    /// Whether the endpoint must not be chosen even in panic (a retry's
    /// earlier attempts, a drained endpoint).
    fn excluded(&self, endpoint: usize) -> bool {
        let _ = endpoint;
        false
    }
    fn in_flight(&self, endpoint: usize) -> u64;
    /// Peak-EWMA latency in nanoseconds, for `peak_ewma`.
    fn latency(&self, endpoint: usize) -> f64 {
        let _ = endpoint;
        0.0
    }
}

/// One endpoint as the selector needs it.
#[derive(Clone, Debug)]
pub struct EndpointSpec<'a> {
    pub priority: u32,
    pub weight: u32,
    /// A stable key (the address) for consistent hashing.
    pub key: &'a str,
}

/// The result of a selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    /// Index of the endpoint in the upstream.
    pub endpoint: usize,
    /// Index of the level it was chosen from (0 is the most preferred).
    pub level: usize,
    /// Priority of that level.
    pub priority: u32,
}

#[derive(Debug)]
pub struct Selector {
    levels: Vec<Level>,
}

#[derive(Debug)]
struct Level {
    priority: u32,
    /// Upstream indices of this level's endpoints.
    members: Vec<usize>,
    balancer: Balancer,
}

impl Selector {
    pub fn new(policy: Policy, endpoints: &[EndpointSpec<'_>]) -> Selector {
        let mut priorities: Vec<u32> = endpoints.iter().map(|e| e.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        let levels = priorities
            .into_iter()
            .map(|priority| {
                let members: Vec<usize> = endpoints
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.priority == priority)
                    .map(|(i, _)| i)
                    .collect();
                let weights: Vec<u32> = members.iter().map(|&i| endpoints[i].weight).collect();
                let keys: Vec<&str> = members.iter().map(|&i| endpoints[i].key).collect();
                Level {
                    priority,
                    balancer: Balancer::new(policy, &weights, &keys),
                    members,
                }
            })
            .collect();
        Selector { levels }
    }

    /// The priorities present, most preferred first.
    pub fn priorities(&self) -> impl Iterator<Item = u32> + '_ {
        self.levels.iter().map(|l| l.priority)
    }

    /// The upstream indices of each level's endpoints, most preferred first.
    pub fn levels(&self) -> impl Iterator<Item = &[usize]> + '_ {
        self.levels.iter().map(|l| l.members.as_slice())
    }

    /// Picks an endpoint, or `None` when `loads` sends traffic nowhere (no
    /// endpoint is healthy) or nothing is left to choose. The level comes
    /// from the request's hash when it has one (a key keeps its level), or
    /// from `entropy`.
    pub fn select(
        &self,
        endpoints: &dyn Endpoints,
        loads: &Loads,
        hash: Option<u64>,
        entropy: u64,
    ) -> Option<Selection> {
        if !loads.any() {
            return None;
        }
        let chosen = if loads.shares.len() == self.levels.len() {
            loads.pick(hash.map_or(entropy, crate::hash::mix))
        } else {
            None
        };
        let from_level = |index: usize| {
            let level = &self.levels[index];
            let view = LevelView {
                members: &level.members,
                endpoints,
                panic: loads.panic.get(index).copied().unwrap_or(false),
            };
            level.balancer.pick(&view, hash, entropy).map(|local| Selection {
                endpoint: level.members[local],
                level: index,
                priority: level.priority,
            })
        };
        chosen.and_then(from_level).or_else(|| {
            (0..self.levels.len())
                .filter(|&i| Some(i) != chosen)
                .find_map(from_level)
        })
    }
}

/// One level seen through the upstream-wide view.
struct LevelView<'a> {
    members: &'a [usize],
    endpoints: &'a dyn Endpoints,
    /// Every endpoint not excluded counts as available.
    panic: bool,
}

impl Members for LevelView<'_> {
    fn len(&self) -> usize {
        self.members.len()
    }
    fn available(&self, i: usize) -> bool {
        let e = self.members[i];
        if self.panic {
            !self.endpoints.excluded(e)
        } else {
            self.endpoints.available(e)
        }
    }
    fn in_flight(&self, i: usize) -> u64 {
        self.endpoints.in_flight(self.members[i])
    }
    fn latency(&self, i: usize) -> f64 {
        self.endpoints.latency(self.members[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::ALL;
    use crate::hash::mix;

    struct Up {
        up: Vec<bool>,
        excluded: Vec<bool>,
    }

    fn up(v: Vec<bool>) -> Up {
        let n = v.len();
        Up {
            up: v,
            excluded: vec![false; n],
        }
    }

    impl Endpoints for Up {
        fn available(&self, e: usize) -> bool {
            self.up[e] && !self.excluded[e]
        }
        fn excluded(&self, e: usize) -> bool {
            self.excluded[e]
        }
        fn in_flight(&self, _: usize) -> u64 {
            0
        }
    }

    fn loads(shares: &[u32]) -> Loads {
        Loads {
            shares: shares.to_vec(),
            panic: vec![false; shares.len()],
        }
    }

    /// Two regions as in examples/two-regions.toml: 3 at priority 0, 2 at 1.
    fn two_regions(policy: Policy) -> Selector {
        let keys = ["p1", "p2", "p3", "s1", "s2"];
        let specs: Vec<EndpointSpec<'_>> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| EndpointSpec {
                priority: if i < 3 { 0 } else { 1 },
                weight: 1,
                key: k,
            })
            .collect();
        Selector::new(policy, &specs)
    }

    #[test]
    fn the_loads_choose_the_level() {
        for policy in Policy::ALL {
            let s = two_regions(policy);
            assert_eq!(s.priorities().collect::<Vec<_>>(), vec![0, 1]);
            let all = up(vec![true; 5]);
            let mut per_level = [0u32; 2];
            for e in 0..4_000u64 {
                let sel = s
                    .select(&all, &loads(&[7_500, 2_500]), Some(mix(e)), mix(e ^ 1))
                    .expect("up");
                assert_eq!(sel.level < 1, sel.endpoint < 3, "{policy:?}");
                per_level[sel.level] += 1;
            }
            assert!(
                (2_800..3_200).contains(&per_level[0]),
                "{policy:?}: {per_level:?}"
            );
            let only_first = s.select(&all, &loads(&[ALL, 0]), None, 5).expect("up");
            assert_eq!(only_first.priority, 0);
        }
    }

    #[test]
    fn a_level_with_nothing_left_hands_over_to_the_others() {
        let s = two_regions(Policy::RoundRobin);
        // The loads still favour the first level, which has just gone dark.
        let dark_first = up(vec![false, false, false, true, true]);
        let picks: Vec<usize> = (0..4)
            .map(|e| {
                s.select(&dark_first, &loads(&[ALL, 0]), None, e)
                    .expect("up")
                    .endpoint
            })
            .collect();
        assert_eq!(picks, vec![3, 4, 3, 4]);
        // A retry that excludes the last one of the second level goes back.
        let mut retry = up(vec![true, false, false, true, false]);
        retry.excluded[3] = true;
        let sel = s.select(&retry, &loads(&[0, ALL]), None, 0).expect("up");
        assert_eq!(sel.endpoint, 0);
    }

    #[test]
    fn no_healthy_endpoint_anywhere_selects_nothing() {
        let s = two_regions(Policy::Random);
        assert_eq!(s.select(&up(vec![true; 5]), &loads(&[0, 0]), None, 0), None);
    }

    #[test]
    fn a_level_in_panic_serves_from_all_but_the_excluded() {
        let s = two_regions(Policy::RoundRobin);
        let mut sick = up(vec![false, false, true, false, false]);
        sick.excluded[0] = true;
        let mut panic = loads(&[ALL, 0]);
        panic.panic = vec![true, false];
        let picks: Vec<usize> = (0..4)
            .map(|e| s.select(&sick, &panic, None, e).expect("some").endpoint)
            .collect();
        assert!(
            picks.contains(&1),
            "an unhealthy endpoint serves in panic: {picks:?}"
        );
        assert!(!picks.contains(&0), "never an excluded one: {picks:?}");
    }

    #[test]
    fn levels_are_ordered_by_priority_not_declaration() {
        let specs = [
            EndpointSpec {
                priority: 5,
                weight: 1,
                key: "late",
            },
            EndpointSpec {
                priority: 1,
                weight: 1,
                key: "early",
            },
        ];
        let s = Selector::new(Policy::Random, &specs);
        let sel = s
            .select(&up(vec![true, true]), &loads(&[ALL, 0]), None, 9)
            .expect("up");
        assert_eq!(
            sel,
            Selection {
                endpoint: 1,
                level: 0,
                priority: 1
            }
        );
        let levels: Vec<&[usize]> = s.levels().collect();
        assert_eq!(levels, [&[1][..], &[0][..]]);
    }

    #[test]
    fn loads_for_other_levels_fall_back_to_priority_order() {
        let s = two_regions(Policy::Random);
        let sel = s
            .select(&up(vec![false, true, false, true, true]), &loads(&[ALL]), None, 3)
            .expect("up");
        assert_eq!(sel.endpoint, 1);
    }
}
