//! Small, stable 64-bit hashes.
//!
//! Whatever levee hashes to agree with other instances (consistent-hash
//! placement, the keys of fleet-wide rate limits in Redis) or with what it
//! said before (alert fingerprints) must not depend on the process (std's
//! `RandomState` does) nor on the Rust release (`DefaultHasher` may
//! change). [`Fnv1a`] is plain 64-bit FNV-1a, stable by definition. For
//! ring and Maglev placement, [`hash64`] follows it with the splitmix64
//! finaliser: fast on short keys, and it avalanches well enough.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bits, fed incrementally: the same value in every instance
/// and every build.
///
/// Deliberately not a [`std::hash::Hasher`]: `Hash` impls feed integers in
/// native byte order and lengths as `usize`, which would make a value
/// depend on the platform. Callers write the exact bytes they mean.
#[derive(Clone, Debug)]
pub struct Fnv1a(u64);

impl Fnv1a {
    pub const fn new() -> Fnv1a {
        Fnv1a(FNV_OFFSET)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a {
    fn default() -> Fnv1a {
        Fnv1a::new()
    }
}

/// Hashes `bytes` to a well-mixed 64-bit value.
pub fn hash64(bytes: &[u8]) -> u64 {
    hash64_seeded(bytes, 0)
}

/// Like [`hash64`], with a seed, for the second independent hash Maglev needs.
pub fn hash64_seeded(bytes: &[u8], seed: u64) -> u64 {
    // The seed moves FNV's starting point; seed 0 is plain FNV-1a.
    let mut h = Fnv1a(FNV_OFFSET ^ seed.wrapping_mul(FNV_PRIME));
    h.write(bytes);
    mix(h.finish())
}

/// The splitmix64 finaliser: spreads every input bit over the output.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_values() {
        // Pinned: a change here would remap every consistent-hash key in a fleet.
        assert_eq!(hash64(b""), mix(FNV_OFFSET));
        assert_eq!(hash64(b"client-1"), hash64(b"client-1"));
        assert_ne!(hash64(b"client-1"), hash64(b"client-2"));
        assert_ne!(hash64_seeded(b"a", 1), hash64_seeded(b"a", 2));
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference test suite.
        let fnv = |bytes: &[u8]| {
            let mut h = Fnv1a::new();
            h.write(bytes);
            h.finish()
        };
        assert_eq!(fnv(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv(b"foobar"), 0x8594_4171_f739_67e8);
        // Fed in pieces, the same as in one go.
        let mut h = Fnv1a::new();
        h.write(b"foo");
        h.write(b"");
        h.write(b"bar");
        assert_eq!(h.finish(), fnv(b"foobar"));
    }

    #[test]
    fn values_are_pinned() {
        // Ring and Maglev placements across a fleet (and across upgrades)
        // depend on these exact values.
        assert_eq!(hash64(b""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(hash64(b"client-1"), 0x38b3_fd24_3825_1cb2);
        assert_eq!(hash64_seeded(b"10.0.0.1:80", 1), 0x6b09_d09a_7149_adf5);
        assert_eq!(hash64_seeded(b"10.0.0.1:80", 2), 0xe13a_e4c6_0940_4bfc);
    }

    #[test]
    fn spreads_sequential_keys() {
        // Sequential keys must land evenly in 8 buckets (each within 20% of fair).
        let mut buckets = [0u32; 8];
        for i in 0..80_000u32 {
            buckets[(hash64(&i.to_le_bytes()) % 8) as usize] += 1;
        }
        for b in buckets {
            assert!((8_000..12_000).contains(&b), "{buckets:?}");
        }
    }
}
