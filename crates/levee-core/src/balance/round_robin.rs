//! Smooth weighted round-robin without a lock.
//!
//! nginx's smooth WRR interleaves endpoints so that weights 5:1:1 give
//! `a a b a c a a` rather than `a a a a a b c`. For fixed weights its
//! sequence is periodic with period Σw (after dividing by the gcd), so it is
//! computed once when the level is built and the request path only advances
//! an atomic cursor through it. Unavailable endpoints are skipped by moving
//! on to the next slot, which keeps the remaining endpoints in proportion.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::members::Members;

/// Weighted schedules longer than this are computed on proportionally
/// scaled-down weights; the proportions stay within 1/1024 of the truth.
const MAX_SCHEDULE: u64 = 1 << 16;

#[derive(Debug)]
pub struct SmoothWeighted {
    schedule: Vec<u32>,
    cursor: AtomicUsize,
}

impl SmoothWeighted {
    pub fn new(weights: &[u32]) -> SmoothWeighted {
        SmoothWeighted {
            schedule: schedule(&reduce(weights)),
            cursor: AtomicUsize::new(0),
        }
    }

    pub fn pick(&self, members: &dyn Members) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        for _ in 0..len {
            // Relaxed: the cursor only spreads picks; no other memory hangs on it.
            let slot = self.cursor.fetch_add(1, Ordering::Relaxed) % len;
            let i = self.schedule[slot] as usize;
            if members.available(i) {
                return Some(i);
            }
        }
        None
    }
}

/// Divides by the gcd and, when the period would still be too long, scales
/// the weights down (never below 1).
fn reduce(weights: &[u32]) -> Vec<u64> {
    let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)));
    if g == 0 {
        return Vec::new();
    }
    let mut reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w) / g).collect();
    let total: u64 = reduced.iter().sum();
    if total > MAX_SCHEDULE {
        let scale = total.div_ceil(MAX_SCHEDULE);
        for w in &mut reduced {
            *w = (*w / scale).max(1);
        }
    }
    reduced
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One period of nginx's smooth weighted round-robin.
fn schedule(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        out.push(best as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::fixed::Fixed;

    fn picks(rr: &SmoothWeighted, m: &Fixed, n: usize) -> Vec<usize> {
        (0..n).map(|_| rr.pick(m).expect("up")).collect()
    }

    #[test]
    fn matches_nginx_smooth_sequence() {
        // The sequence from nginx's commit introducing smooth WRR, weights 5,1,1.
        let rr = SmoothWeighted::new(&[5, 1, 1]);
        assert_eq!(picks(&rr, &Fixed::all_up(3), 7), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn equal_weights_rotate() {
        let rr = SmoothWeighted::new(&[1, 1, 1]);
        assert_eq!(picks(&rr, &Fixed::all_up(3), 6), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn gcd_shortens_the_period() {
        let rr = SmoothWeighted::new(&[200, 100]);
        assert_eq!(rr.schedule.len(), 3);
    }

    #[test]
    fn huge_weights_are_scaled_not_refused() {
        let rr = SmoothWeighted::new(&[1_000_000, 999_999, 1]);
        assert!(rr.schedule.len() as u64 <= MAX_SCHEDULE + 3);
        let counts = picks(&rr, &Fixed::all_up(3), 10_000)
            .into_iter()
            .fold([0u32; 3], |mut c, i| {
                c[i] += 1;
                c
            });
        assert!(counts[0].abs_diff(counts[1]) < 100, "{counts:?}");
        assert!(counts[2] >= 1 || rr.schedule.contains(&2));
    }

    #[test]
    fn skipping_keeps_the_rest_in_proportion() {
        let rr = SmoothWeighted::new(&[2, 1, 1]);
        let mut m = Fixed::all_up(3);
        m.up[0] = false;
        let counts = picks(&rr, &m, 1_000).into_iter().fold([0u32; 3], |mut c, i| {
            c[i] += 1;
            c
        });
        assert_eq!(counts[0], 0);
        assert_eq!(counts[1], 500);
        assert_eq!(counts[2], 500);
    }
}
