//! Rate limiting: how many requests a key (a client IP, a header value, a
//! route) may send, decided by GCRA, the Generic Cell Rate Algorithm.
//!
//! GCRA is a token bucket kept as a single number per key, the theoretical
//! arrival time (TAT): the moment the key's bucket would be full again if it
//! sent nothing more. Each admitted request pushes the TAT one emission
//! interval `T = per / rate` later, and a request is refused while that would
//! put the TAT more than `burst × T` ahead of now. So `burst` requests pass at
//! one instant, then one every `T`, and over any window of length `W` at most
//! `burst + ⌊W / T⌋` pass. There is nothing to refill in the background: a
//! key's state is brought up to date only when it sends, and a key whose TAT
//! has passed is exactly the same as one never seen. That one-timestamp state
//! is also what the fleet-wide limits keep in Redis, where a Lua script runs
//! the same arithmetic ([`gcra`]).
//!
//! [`KeyedLimiter`] keeps the TATs of many keys in a sharded table whose size
//! is capped whatever the number of distinct keys. A full shard first drops
//! the keys that have fully recovered, which changes no decision, and only if
//! that is not enough forgets some active keys, each of which then gets a
//! fresh burst. Under a flood of more active keys than the cap the limiter
//! thus errs towards admitting (up to `burst` more per forgotten key) rather
//! than growing without bound.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// The shortest emission interval a [`Quota`] may have. Time is counted in
/// whole nanoseconds and `per / rate` is rounded down, so from one
/// microsecond up the limit enforced is within 0.1% of the one configured.
/// More than a million requests a second is no per-key limit anyway.
pub const MIN_INTERVAL: Duration = Duration::from_nanos(MIN_INTERVAL_NANOS);

const MIN_INTERVAL_NANOS: u64 = 1_000;

/// Why a quota cannot be enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("rate must be at least 1")]
    ZeroRate,
    #[error("period must be longer than zero")]
    ZeroPeriod,
    #[error("burst must be at least 1")]
    ZeroBurst,
    #[error("period / rate must be at least 1µs (at most a million requests a second)")]
    TooFast,
    #[error("burst × period / rate must be under 584 years")]
    TooLong,
}

/// `rate` requests per `per`, of which up to `burst` may arrive at once.
///
/// `burst = 1` spaces requests strictly `per / rate` apart; a larger burst
/// lets an idle client send that many together, then the rate again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    rate: u32,
    per: Duration,
    burst: u32,
    /// T, in nanoseconds.
    interval: u64,
    /// `burst × T`: how far ahead of now the TAT may run, counting the
    /// request being decided.
    span: u64,
}

impl Quota {
    pub fn new(rate: u32, per: Duration, burst: u32) -> Result<Quota, QuotaError> {
        if rate == 0 {
            return Err(QuotaError::ZeroRate);
        }
        if per.is_zero() {
            return Err(QuotaError::ZeroPeriod);
        }
        if burst == 0 {
            return Err(QuotaError::ZeroBurst);
        }
        let per_nanos = u64::try_from(per.as_nanos()).map_err(|_| QuotaError::TooLong)?;
        // Rounding down gives the sub-nanosecond to the client, so one that
        // paces itself at exactly the configured rate is never refused.
        let interval = per_nanos / u64::from(rate);
        if interval < MIN_INTERVAL_NANOS {
            return Err(QuotaError::TooFast);
        }
        let span = interval
            .checked_mul(u64::from(burst))
            .ok_or(QuotaError::TooLong)?;
        Ok(Quota {
            rate,
            per,
            burst,
            interval,
            span,
        })
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    pub fn per(&self) -> Duration {
        self.per
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The emission interval `T = per / rate`, rounded down to the
    /// nanosecond: a full bucket refills one request every `T`.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }

    /// The delay variation tolerance `τ = T × (burst − 1)`: how far ahead
    /// of now an admitted request may leave the TAT.
    pub fn tolerance(&self) -> Duration {
        Duration::from_nanos(self.span - self.interval)
    }
}

/// The decision on one request.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed {
        /// The key's new TAT, to be stored, in the caller's nanoseconds.
        tat: u64,
        /// How many more requests would be admitted at this same instant
        /// (the `r` of the RateLimit header).
        remaining: u32,
        /// How long until the bucket is full again (its `t`).
        reset: Duration,
    },
    /// Refused, for a 429. The key's state is unchanged: refused requests
    /// do not count against it.
    Limited {
        /// How long until a request would be admitted (`Retry-After`).
        retry_after: Duration,
        /// How long until the bucket is full again.
        reset: Duration,
    },
}

impl Verdict {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allowed { .. })
    }

    /// Requests that would still be admitted at this instant.
    pub fn remaining(&self) -> u32 {
        match *self {
            Verdict::Allowed { remaining, .. } => remaining,
            Verdict::Limited { .. } => 0,
        }
    }

    /// How long until the bucket is full again.
    pub fn reset(&self) -> Duration {
        match *self {
            Verdict::Allowed { reset, .. } | Verdict::Limited { reset, .. } => reset,
        }
    }
}

/// One GCRA step: the whole algorithm, on a key's TAT and the request's
/// arrival, both in nanoseconds since an epoch of the caller's choosing (a
/// [`KeyedLimiter`]'s, or the Redis server's clock). A key never seen passes
/// 0: a TAT at or before `now` means a full bucket, whatever its value. On
/// [`Verdict::Allowed`] the caller stores the new TAT; on
/// [`Verdict::Limited`] it stores nothing.
///
/// In full, for the Redis script to repeat (`T` and `burst × T` from the
/// [`Quota`]):
///
/// ```text
/// tat   = max(tat, now)
/// ahead = tat + T − now                  the TAT's lead if this request counts
/// if ahead ≤ burst × T:  allowed, tat' = tat + T,
///                        remaining = ⌊(burst × T − ahead) / T⌋, reset = ahead
/// else:                  limited, retry_after = ahead − burst × T, reset = tat − now
/// ```
pub fn gcra(quota: &Quota, tat: u64, now: u64) -> Verdict {
    let tat = tat.max(now);
    let next = tat.saturating_add(quota.interval);
    let ahead = next - now;
    if ahead <= quota.span {
        let remaining = (quota.span - ahead) / quota.interval;
        Verdict::Allowed {
            tat: next,
            // At most burst − 1.
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            reset: Duration::from_nanos(ahead),
        }
    } else {
        Verdict::Limited {
            retry_after: Duration::from_nanos(ahead - quota.span),
            reset: Duration::from_nanos(tat - now),
        }
    }
}

/// Below this many keys a shard, fewer shards: keys never spread evenly over
/// shards, and each shard enforces its own share of the cap, so small shards
/// would start forgetting active keys long before the table is full.
const MIN_KEYS_PER_SHARD: usize = 256;
const MAX_SHARDS: usize = 32;

/// GCRA state for many keys, shared by every thread on the request path,
/// holding at most `max_keys` keys.
///
/// Time is kept as `u64` nanoseconds since the `epoch` given to
/// [`KeyedLimiter::new`] (the TATs in its verdicts are in those units);
/// instants before the epoch count as the epoch.
///
/// The keys are spread by hash over up to 32 shards, each a mutex over a
/// map, locked only for one [`gcra`] step. Each shard holds its share of
/// `max_keys`; a new key that finds its shard full makes room there: keys
/// that have recovered go first, and if that frees less than a sixteenth of
/// the shard, arbitrary keys go too until it does. Freeing a sixteenth at
/// once pays for the scan over the next sixteenth of new keys, so the cost
/// per request stays O(1) even when every key is active. Because keys do not
/// spread exactly evenly, a shard may fill before `len()` reaches
/// `max_keys`: size the cap with headroom over the keys expected to be
/// active at once.
pub struct KeyedLimiter<K> {
    quota: Quota,
    epoch: Instant,
    max_keys: usize,
    /// A panic while a shard is locked cannot leave it inconsistent (every
    /// change is one insert, update or retain of plain integers), so a
    /// poisoned shard is used as it is.
    shards: Box<[Padded<Mutex<Shard<K>>>]>,
    /// Picks the shard. Each shard's map hashes with its own seed, so the
    /// keys of one shard still spread over all of its buckets.
    router: RandomState,
}

/// Keeps each shard's lock on its own cache lines (two, as adjacent lines
/// are prefetched together), so that threads working on different shards do
/// not slow each other down through false sharing.
#[repr(align(128))]
struct Padded<T>(T);

struct Shard<K> {
    tats: HashMap<K, u64>,
    /// This shard's share of `max_keys`.
    cap: usize,
}

impl<K: Hash + Eq> KeyedLimiter<K> {
    /// A table enforcing `quota` on each key, holding at most `max_keys`
    /// keys (at least one).
    pub fn new(quota: Quota, max_keys: usize, epoch: Instant) -> KeyedLimiter<K> {
        let max_keys = max_keys.max(1);
        let n = (max_keys / MIN_KEYS_PER_SHARD).clamp(1, MAX_SHARDS);
        let shards = (0..n)
            .map(|i| {
                Padded(Mutex::new(Shard {
                    tats: HashMap::new(),
                    cap: max_keys / n + usize::from(i < max_keys % n),
                }))
            })
            .collect();
        KeyedLimiter {
            quota,
            epoch,
            max_keys,
            shards,
            router: RandomState::new(),
        }
    }

    /// Decides one request of `key` arriving at `now`, and counts it if
    /// admitted.
    pub fn check<Q>(&self, key: &Q, now: Instant) -> Verdict
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let now = self.nanos(now);
        self.shard(key).check(&self.quota, key, now)
    }

    /// Drops every key that has fully recovered and returns how many went.
    /// No decision changes. Callers run it now and then (every few seconds)
    /// so that a table gives memory back after a burst of keys rather than
    /// keeping its peak until new keys fill a shard again. Locks one shard at
    /// a time.
    pub fn sweep(&self, now: Instant) -> usize {
        let now = self.nanos(now);
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = lock(&shard.0);
            let before = shard.tats.len();
            shard.tats.retain(|_, tat| *tat > now);
            let len = shard.tats.len();
            removed += before - len;
            // A map keeps its largest allocation; a sweep is the time to
            // hand it back, leaving room to grow again without rehashing.
            if shard.tats.capacity() > 64 && len < shard.tats.capacity() / 4 {
                shard.tats.shrink_to(len * 2);
            }
        }
        removed
    }

    /// The keys held, recovered or not: never more than `max_keys`. Locks
    /// one shard at a time, so it is not a snapshot under concurrent use.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.0).tats.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| lock(&s.0).tats.is_empty())
    }

    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    fn nanos(&self, now: Instant) -> u64 {
        // u64 nanoseconds last 584 years past the epoch.
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, Shard<K>> {
        let hash = self.router.hash_one(key);
        // Multiply-shift maps the hash onto the shards without a division.
        let i = ((u128::from(hash) * self.shards.len() as u128) >> 64) as usize;
        lock(&self.shards[i].0)
    }
}

impl<K> fmt::Debug for KeyedLimiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("quota", &self.quota)
            .field("max_keys", &self.max_keys)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq> Shard<K> {
    fn check<Q>(&mut self, quota: &Quota, key: &Q, now: u64) -> Verdict
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(tat) = self.tats.get_mut(key) {
            let verdict = gcra(quota, *tat, now);
            if let Verdict::Allowed { tat: next, .. } = verdict {
                *tat = next;
            }
            return verdict;
        }
        let verdict = gcra(quota, 0, now);
        // Always allowed (a fresh key has its whole burst), but a refused
        // request would have no state to keep anyway.
        if let Verdict::Allowed { tat, .. } = verdict {
            if self.tats.len() >= self.cap {
                self.make_room(now);
            }
            self.tats.insert(key.to_owned(), tat);
        }
        verdict
    }

    fn make_room(&mut self, now: u64) {
        // A recovered key is indistinguishable from an absent one.
        self.tats.retain(|_, tat| *tat > now);
        let keep = self.cap - (self.cap / 16).max(1);
        let mut excess = self.tats.len().saturating_sub(keep);
        if excess > 0 {
            // Forgetting an active key gives it a fresh burst. Which keys go
            // follows the map's iteration order, which depends on its random
            // seed, so a client cannot aim evictions at other keys.
            self.tats.retain(|_, _| {
                if excess == 0 {
                    return true;
                }
                excess -= 1;
                false
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;

    fn quota(rate: u32, per: Duration, burst: u32) -> Quota {
        Quota::new(rate, per, burst).unwrap()
    }

    /// Runs arrivals (nanoseconds) through one key's state; returns the
    /// verdicts.
    fn run(q: &Quota, arrivals: impl IntoIterator<Item = u64>) -> Vec<Verdict> {
        let mut tat = 0;
        arrivals
            .into_iter()
            .map(|now| {
                let v = gcra(q, tat, now);
                if let Verdict::Allowed { tat: next, .. } = v {
                    tat = next;
                }
                v
            })
            .collect()
    }

    #[test]
    fn quotas_that_cannot_be_enforced_are_rejected() {
        let s = Duration::from_secs(1);
        assert_eq!(Quota::new(0, s, 1), Err(QuotaError::ZeroRate));
        assert_eq!(Quota::new(1, Duration::ZERO, 1), Err(QuotaError::ZeroPeriod));
        assert_eq!(Quota::new(1, s, 0), Err(QuotaError::ZeroBurst));
        assert_eq!(Quota::new(1_000_001, s, 1), Err(QuotaError::TooFast));
        assert!(Quota::new(1_000_000, s, 1).is_ok());
        assert_eq!(Quota::new(1, Duration::MAX, 1), Err(QuotaError::TooLong));
        assert_eq!(
            Quota::new(1, Duration::from_secs(3600 * 24 * 365), 1000),
            Err(QuotaError::TooLong)
        );
        let q = quota(3, s, 4);
        assert_eq!(q.interval(), Duration::from_nanos(333_333_333));
        assert_eq!(q.tolerance(), Duration::from_nanos(999_999_999));
    }

    #[test]
    fn from_empty_exactly_the_burst_is_admitted_at_once() {
        for (rate, per, burst) in [(1, 1000, 1), (10, 1000, 5), (3, 1000, 7), (100, 60_000, 20)] {
            let q = quota(rate, Duration::from_millis(per), burst);
            let now = 5 * SEC;
            let verdicts = run(&q, std::iter::repeat_n(now, burst as usize + 1));
            for (i, v) in verdicts[..burst as usize].iter().enumerate() {
                assert_eq!(v.remaining(), burst - 1 - i as u32, "{q:?} request {i}");
            }
            assert_eq!(
                verdicts[burst as usize],
                Verdict::Limited {
                    retry_after: q.interval(),
                    reset: q.interval() * burst
                },
                "{q:?}"
            );
        }
    }

    #[test]
    fn sending_at_exactly_the_rate_is_never_limited() {
        // 3 a second does not divide a second into whole nanoseconds.
        for (rate, burst) in [(3, 1), (100, 1), (7, 4)] {
            let q = quota(rate, Duration::from_secs(1), burst);
            let arrivals = (0..10_000u64).map(|k| k * SEC / u64::from(rate));
            assert!(run(&q, arrivals).iter().all(Verdict::is_allowed), "{q:?}");
        }
    }

    #[test]
    fn five_times_the_rate_gets_the_rate_plus_the_burst() {
        let q = quota(100, Duration::from_secs(1), 10);
        // Every 2 ms for 10 s.
        let admitted = run(&q, (0..5000).map(|k| k * 2 * MS))
            .iter()
            .filter(|v| v.is_allowed())
            .count();
        assert!((1009..=1011).contains(&admitted), "{admitted}");
    }

    #[test]
    fn remaining_and_reset_in_a_worked_example() {
        // T = 100 ms, burst 5.
        let q = quota(10, Duration::from_secs(1), 5);
        let ms = Duration::from_millis;
        let v = run(&q, [0; 6]);
        assert_eq!(
            v[0],
            Verdict::Allowed {
                tat: 100 * MS,
                remaining: 4,
                reset: ms(100)
            }
        );
        assert_eq!(
            v[4],
            Verdict::Allowed {
                tat: 500 * MS,
                remaining: 0,
                reset: ms(500)
            }
        );
        assert_eq!(
            v[5],
            Verdict::Limited {
                retry_after: ms(100),
                reset: ms(500)
            }
        );
        // 250 ms later two and a half requests' worth have come back: one
        // more now leaves one and a half, so one.
        let tat = 500 * MS;
        let now = 250 * MS;
        assert_eq!(
            gcra(&q, tat, now),
            Verdict::Allowed {
                tat: 600 * MS,
                remaining: 1,
                reset: ms(350)
            }
        );
        assert_eq!(gcra(&q, 600 * MS, now).remaining(), 0);
        assert_eq!(
            gcra(&q, 700 * MS, now),
            Verdict::Limited {
                retry_after: ms(50),
                reset: ms(450)
            }
        );
        // A refused request did not count: at the retry time it passes.
        assert!(gcra(&q, 700 * MS, now + 50 * MS).is_allowed());
        assert!(!gcra(&q, 700 * MS, now + 50 * MS - 1).is_allowed());
    }

    #[test]
    fn keys_are_independent() {
        let t0 = Instant::now();
        let limiter = KeyedLimiter::new(quota(1, Duration::from_secs(1), 2), 100, t0);
        assert!(limiter.check(&1u64, t0).is_allowed());
        assert!(limiter.check(&1u64, t0).is_allowed());
        assert!(!limiter.check(&1u64, t0).is_allowed());
        assert_eq!(limiter.check(&2u64, t0).remaining(), 1, "key 2 has its own burst");
        assert!(!limiter.check(&1u64, t0).is_allowed());
        assert!(limiter.check(&1u64, t0 + Duration::from_secs(1)).is_allowed());
    }

    #[test]
    fn keys_can_be_looked_up_borrowed() {
        let t0 = Instant::now();
        let limiter: KeyedLimiter<String> = KeyedLimiter::new(quota(1, Duration::from_secs(1), 1), 10, t0);
        assert!(limiter.check("alice", t0).is_allowed());
        assert!(!limiter.check("alice", t0).is_allowed());
        assert!(limiter.check("bob", t0).is_allowed());
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn concurrent_checks_admit_exactly_the_burst() {
        fn shared<T: Send + Sync>(_: &T) {}
        let t0 = Instant::now();
        let limiter = KeyedLimiter::new(quota(1, Duration::from_secs(1), 10), 1000, t0);
        shared(&limiter);
        let admitted: usize = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..100).filter(|_| limiter.check(&7u64, t0).is_allowed()).count()))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        assert_eq!(admitted, 10);
    }

    /// One million keys, one request each, `step` apart; the table must never
    /// hold more than its cap, nor (when no key recovers) forget much more
    /// than it must.
    fn flood(step: Duration) {
        let t0 = Instant::now();
        let max_keys = 10_000;
        let q = quota(1, Duration::from_secs(1), 3);
        let limiter = KeyedLimiter::new(q, max_keys, t0);
        let mut now = t0;
        for batch in 0..1000u64 {
            for key in batch * 1000..(batch + 1) * 1000 {
                assert_eq!(limiter.check(&key, now).remaining(), 2, "a new key has its burst");
                now += step;
            }
            let len = limiter.len();
            assert!(len <= max_keys, "{len} keys after batch {batch}");
            let any_recovered = step * 1000 * (batch as u32 + 1) > q.interval();
            if batch >= 10 && !any_recovered {
                assert!(len >= max_keys * 7 / 8, "{len} keys after batch {batch}");
            }
        }
    }

    #[test]
    fn a_million_keys_arriving_together_stay_within_the_cap() {
        flood(Duration::ZERO);
    }

    #[test]
    fn a_million_keys_arriving_over_time_stay_within_the_cap() {
        // Keys recover after a second: the first half of the flood is
        // recovered by the end, the rest is active.
        flood(Duration::from_micros(2));
    }

    #[test]
    fn making_room_with_recovered_keys_changes_no_decision() {
        // One shard of 64. Every 25 ms (a quarter of T) eight regular keys
        // send at four times the rate, and a new key sends once: the table
        // is full of one-off keys over and over, most of them recovered.
        let t0 = Instant::now();
        let q = quota(10, Duration::from_secs(1), 2);
        let limiter = KeyedLimiter::new(q, 64, t0);
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut limited = 0;
        for step in 0..2000u64 {
            let now = step * 25 * MS;
            for key in 0..8 {
                let expected = run_model(&q, &mut model, key, now);
                assert_eq!(limiter.check(&key, t0 + Duration::from_nanos(now)), expected);
                limited += usize::from(!expected.is_allowed());
            }
            assert!(
                limiter
                    .check(&(1000 + step), t0 + Duration::from_nanos(now))
                    .is_allowed()
            );
            assert!(limiter.len() <= 64);
        }
        assert!(limited > 8000, "the regular keys were limited ({limited} times)");
    }

    #[test]
    fn a_sweep_gives_memory_back() {
        let t0 = Instant::now();
        let limiter = KeyedLimiter::new(quota(1, Duration::from_secs(1), 1), 10_000, t0);
        for key in 0..5000u64 {
            let _ = limiter.check(&key, t0);
        }
        assert_eq!(
            limiter.sweep(t0 + Duration::from_millis(999)),
            0,
            "nothing recovered yet"
        );
        assert_eq!(limiter.sweep(t0 + Duration::from_secs(1)), 5000);
        assert!(limiter.is_empty());
        assert!(limiter.shards.iter().all(|s| lock(&s.0).tats.capacity() <= 64));
    }

    fn run_model(q: &Quota, model: &mut HashMap<u64, u64>, key: u64, now: u64) -> Verdict {
        let tat = model.entry(key).or_insert(0);
        let v = gcra(q, *tat, now);
        if let Verdict::Allowed { tat: next, .. } = v {
            *tat = next;
        }
        v
    }

    fn quotas() -> impl Strategy<Value = Quota> {
        // Every combination is valid: per / rate ≥ 1 ms / 1000 = 1 µs.
        (1u32..1000, 1u64..10_000, 1u32..20)
            .prop_map(|(rate, per_ms, burst)| quota(rate, Duration::from_millis(per_ms), burst))
    }

    proptest! {
        #[test]
        fn the_interval_rounds_down_by_under_a_nanosecond(rate in 1u32..1_000_000, per_ms in 1u64..100_000) {
            let per = Duration::from_millis(per_ms);
            match Quota::new(rate, per, 1) {
                Ok(q) => {
                    let t = q.interval().as_nanos();
                    prop_assert!(t * u128::from(rate) <= per.as_nanos());
                    prop_assert!(per.as_nanos() < (t + 1) * u128::from(rate));
                    prop_assert!(t >= MIN_INTERVAL.as_nanos());
                }
                Err(e) => {
                    prop_assert_eq!(e, QuotaError::TooFast);
                    prop_assert!(per.as_nanos() / u128::from(rate) < MIN_INTERVAL.as_nanos());
                }
            }
        }

        #[test]
        fn no_window_admits_more_than_the_burst_plus_the_rate(
            q in quotas(),
            // Thousandths of T; a third of the gaps are zero.
            gaps in proptest::collection::vec((0u64..3000).prop_map(|g| g.saturating_sub(1000)), 1..300),
        ) {
            let t = q.interval;
            let mut now = 0;
            let arrivals: Vec<u64> = gaps.iter().map(|g| { now += t * g / 1000; now }).collect();
            let admitted: Vec<u64> = arrivals
                .iter()
                .zip(run(&q, arrivals.iter().copied()))
                .filter(|(_, v)| v.is_allowed())
                .map(|(at, _)| *at)
                .collect();
            for i in 0..admitted.len() {
                for j in i..admitted.len() {
                    let count = (j - i + 1) as u64;
                    let limit = u64::from(q.burst()) + (admitted[j] - admitted[i]) / t;
                    prop_assert!(count <= limit, "{} admitted in [{}, {}], limit {}", count, admitted[i], admitted[j], limit);
                }
            }
        }

        #[test]
        fn a_client_within_the_rate_is_never_limited(
            q in quotas(),
            start: u32,
            extra in proptest::collection::vec(0u64..2000, 1..300),
        ) {
            let t = q.interval;
            let mut now = u64::from(start);
            let arrivals = extra.iter().map(|e| { let at = now; now += t + t * e / 1000; at });
            prop_assert!(run(&q, arrivals).iter().all(Verdict::is_allowed));
        }

        #[test]
        fn the_table_agrees_with_the_pure_step_and_sweeps_change_nothing(
            q in quotas(),
            ops in proptest::collection::vec((0u64..16, 0u64..3000, any::<bool>()), 1..300),
        ) {
            // Steps of up to 3 T; a sweep before some of them.
            let t0 = Instant::now();
            let limiter = KeyedLimiter::new(q, 1000, t0);
            let mut model = HashMap::new();
            let mut now = 0;
            for (key, advance, sweep) in ops {
                now += q.interval * advance / 1000;
                let at = t0 + Duration::from_nanos(now);
                if sweep {
                    let before = limiter.len();
                    let removed = limiter.sweep(at);
                    let recovered = model.values().filter(|tat| **tat <= now).count();
                    prop_assert_eq!(removed, recovered);
                    prop_assert_eq!(limiter.len(), before - removed);
                    model.retain(|_, tat| *tat > now);
                }
                prop_assert_eq!(limiter.check(&key, at), run_model(&q, &mut model, key, now));
            }
        }
    }
}
