//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted as Envoy
//! does it.
//!
//! Each endpoint walks its own permutation of a prime-sized table and claims
//! the first free slot on its turn; heavier endpoints get turns more often.
//! Lookup is one modulo and one index. When an endpoint is removed and the
//! table rebuilt, about 1/n of keys move (plus a little churn, which the
//! paper bounds). An unavailable endpoint's slots fall through to the next
//! slots in the table, so only its own keys move.

use super::members::Members;
use crate::hash::hash64_seeded;

/// A prime well above 100 × the endpoints of a typical level, as the paper
/// advises, and small enough (256 KiB) to rebuild on every config change.
pub const TABLE_SIZE: usize = 65_537;

#[derive(Debug)]
pub struct Maglev {
    table: Vec<u32>,
}

impl Maglev {
    pub fn new(weights: &[u32], keys: &[&str]) -> Maglev {
        Maglev {
            table: build(weights, keys, TABLE_SIZE),
        }
    }

    pub fn pick(&self, members: &dyn Members, hash: u64) -> Option<usize> {
        let m = self.table.len();
        if m == 0 {
            return None;
        }
        let start = (hash % m as u64) as usize;
        // An unavailable owner's keys go to the next slots; those belong to
        // other endpoints in a well-spread order, so its load spreads too.
        (0..m)
            .map(|k| self.table[(start + k) % m] as usize)
            .find(|&i| members.available(i))
    }
}

fn build(weights: &[u32], keys: &[&str], m: usize) -> Vec<u32> {
    let n = weights.len();
    if n == 0 {
        return Vec::new();
    }
    let m64 = m as u64;
    let offset: Vec<u64> = keys
        .iter()
        .map(|k| hash64_seeded(k.as_bytes(), 1) % m64)
        .collect();
    let skip: Vec<u64> = keys
        .iter()
        .map(|k| hash64_seeded(k.as_bytes(), 2) % (m64 - 1) + 1)
        .collect();
    let max_weight = u64::from(weights.iter().copied().max().unwrap_or(1).max(1));
    let mut next = vec![0u64; n];
    let mut target = vec![0u64; n];
    let mut table = vec![u32::MAX; m];
    let mut filled = 0;
    let mut round = 0u64;
    while filled < m {
        round += 1;
        for i in 0..n {
            // Endpoint i takes a turn whenever round × w_i has caught up with
            // its target: every round at max weight, every k-th at max/k.
            if round * u64::from(weights[i].max(1)) < target[i] {
                continue;
            }
            target[i] += max_weight;
            loop {
                let slot = ((offset[i] + next[i] * skip[i]) % m64) as usize;
                next[i] += 1;
                if table[slot] == u32::MAX {
                    table[slot] = i as u32;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::fixed::{Fixed, keys};
    use crate::hash::mix;

    fn table(n: usize, weights: &[u32]) -> (Maglev, Vec<String>) {
        let k = keys(n);
        let refs: Vec<&str> = k.iter().map(String::as_str).collect();
        (Maglev::new(weights, &refs), k)
    }

    #[test]
    fn slots_follow_weights() {
        let (t, _) = table(3, &[1, 1, 2]);
        let mut counts = [0usize; 3];
        for &i in &t.table {
            counts[i as usize] += 1;
        }
        assert_eq!(counts.iter().sum::<usize>(), TABLE_SIZE);
        let quarter = TABLE_SIZE / 4;
        assert!(counts[0].abs_diff(quarter) < quarter / 50, "{counts:?}");
        assert!(counts[2].abs_diff(2 * quarter) < quarter / 50, "{counts:?}");
    }

    #[test]
    fn removing_an_endpoint_moves_about_one_nth() {
        let (before, k) = table(5, &[1; 5]);
        let kept: Vec<&str> = k.iter().map(String::as_str).filter(|s| *s != k[1]).collect();
        let after = Maglev::new(&[1; 4], &kept);
        let (m5, m4) = (Fixed::all_up(5), Fixed::all_up(4));
        let keys = 20_000u64;
        let mut moved = 0;
        for key in 0..keys {
            let h = mix(key);
            let a = &k[before.pick(&m5, h).expect("up")];
            let b = kept[after.pick(&m4, h).expect("up")];
            if a != b {
                moved += 1;
            }
        }
        // 1/5 must move; Maglev adds a little churn on top (the paper reports
        // a few percent for large tables).
        let fifth = keys / 5;
        assert!(moved >= fifth - 500 && moved <= fifth + 1_000, "moved {moved}");
    }

    #[test]
    fn unavailable_endpoint_moves_only_its_keys() {
        let (t, _) = table(4, &[1; 4]);
        let all = Fixed::all_up(4);
        let mut down = Fixed::all_up(4);
        down.up[0] = false;
        let mut spread = [0u32; 4];
        for key in 0..20_000u64 {
            let h = mix(key);
            let a = t.pick(&all, h).expect("up");
            let b = t.pick(&down, h).expect("up");
            if a == 0 {
                spread[b] += 1;
            } else {
                assert_eq!(a, b);
            }
        }
        // The orphaned keys spread over all three others, not onto one.
        for &c in &spread[1..] {
            assert!(c > 800, "{spread:?}");
        }
    }
}
