//! Choosing an endpoint of an upstream: first the priority level, then the
//! endpoint within it.
//!
//! Endpoints are grouped by the priority of their region; level 0 is the
//! most preferred. Today the rule is the simplest one that is still correct
//! when endpoints become unavailable: use the most preferred level that has
//! an available endpoint. Health-weighted spill between levels, panic mode
//! and damped failback extend [`Selector::select`] without changing its
//! callers.

use crate::balance::{Balancer, Members, Policy};

/// What the selector may know about every endpoint of the upstream, by the
/// endpoint's index in the upstream.
pub trait Endpoints {
    fn available(&self, endpoint: usize) -> bool;
    fn in_flight(&self, endpoint: usize) -> u64;
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
    /// Priority of the level it was chosen from.
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

    /// Picks an endpoint, or `None` when no endpoint of any level is available.
    pub fn select(&self, endpoints: &dyn Endpoints, hash: Option<u64>, entropy: u64) -> Option<Selection> {
        self.levels.iter().find_map(|level| {
            let view = LevelView {
                members: &level.members,
                endpoints,
            };
            level.balancer.pick(&view, hash, entropy).map(|local| Selection {
                endpoint: level.members[local],
                priority: level.priority,
            })
        })
    }
}

/// One level seen through the upstream-wide view.
struct LevelView<'a> {
    members: &'a [usize],
    endpoints: &'a dyn Endpoints,
}

impl Members for LevelView<'_> {
    fn len(&self) -> usize {
        self.members.len()
    }
    fn available(&self, i: usize) -> bool {
        self.endpoints.available(self.members[i])
    }
    fn in_flight(&self, i: usize) -> u64 {
        self.endpoints.in_flight(self.members[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::mix;

    struct Up(Vec<bool>);

    impl Endpoints for Up {
        fn available(&self, e: usize) -> bool {
            self.0[e]
        }
        fn in_flight(&self, _: usize) -> u64 {
            0
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
    fn priority_zero_takes_everything_while_it_has_endpoints() {
        for policy in Policy::ALL {
            let s = two_regions(policy);
            assert_eq!(s.priorities().collect::<Vec<_>>(), vec![0, 1]);
            let up = Up(vec![true; 5]);
            for e in 0..300u64 {
                let sel = s.select(&up, Some(mix(e)), mix(e ^ 1)).expect("up");
                assert_eq!(sel.priority, 0, "{policy:?}");
                assert!(sel.endpoint < 3);
            }
        }
    }

    #[test]
    fn next_level_serves_when_the_first_has_none_available() {
        let s = two_regions(Policy::RoundRobin);
        let up = Up(vec![false, false, false, true, true]);
        let picks: Vec<usize> = (0..4)
            .map(|e| s.select(&up, None, e).expect("up").endpoint)
            .collect();
        assert_eq!(picks, vec![3, 4, 3, 4]);
        assert_eq!(s.select(&Up(vec![false; 5]), None, 0), None);
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
        let sel = s.select(&Up(vec![true, true]), None, 9).expect("up");
        assert_eq!(
            sel,
            Selection {
                endpoint: 1,
                priority: 1
            }
        );
    }
}
