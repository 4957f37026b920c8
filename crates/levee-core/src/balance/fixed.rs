//! Test support shared by the balancers' tests: a level whose state the
//! tests set by hand.

use std::cell::RefCell;

use super::members::Members;

/// A level with availability, in-flight counts and latencies set by hand.
pub(crate) struct Fixed {
    pub up: Vec<bool>,
    pub in_flight: RefCell<Vec<u64>>,
    pub latency: Vec<f64>,
}

impl Fixed {
    pub fn all_up(n: usize) -> Fixed {
        Fixed {
            up: vec![true; n],
            in_flight: RefCell::new(vec![0; n]),
            latency: vec![0.0; n],
        }
    }
}

impl Members for Fixed {
    fn len(&self) -> usize {
        self.up.len()
    }
    fn available(&self, i: usize) -> bool {
        self.up[i]
    }
    fn in_flight(&self, i: usize) -> u64 {
        self.in_flight.borrow()[i]
    }
    fn latency(&self, i: usize) -> f64 {
        self.latency[i]
    }
}

/// `n` distinct endpoint keys, shaped like the addresses levee uses.
pub(crate) fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
}
