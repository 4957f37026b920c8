//! The cost of one rate-limit decision on the request path.
//!
//! ```sh
//! cargo bench -p levee-core --bench ratelimit -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Time is an argument of the limiter, so no clock is read in the measured
//! code: iteration `i` arrives at `epoch + i × 1µs`, a gateway taking a
//! million requests a second. Each case's limiter, key draw and time are
//! made once, outside the closure Criterion calls for every sample, so they
//! carry over from warm-up to samples: what is measured is the steady
//! state (for `keys_1M`, a full table), not a table filling up.
//!
//! What each case measures:
//!
//! - `gcra`: the arithmetic alone, on one TAT.
//! - `hot_key`: [`KeyedLimiter::check`] on one key: hashing, the shard lock,
//!   the map lookup. At 1µs per request the key is over its quota, so almost
//!   every decision is `Limited`.
//! - `keys_10k`: keys drawn uniformly from 10,000; they all fit under the
//!   100,000-key cap, so this is a lookup in a larger table (cache misses).
//! - `keys_1M`: keys from 1,000,000 with a 100,000-key cap: most requests
//!   bring a key the table does not hold, so they insert, and full shards
//!   make room. Each key is seen about once a second and recovers 10ms after
//!   its request, so what is dropped is almost all recovered keys.
//! - `keys_1M_all_active`: the same draw with a quota whose keys stay
//!   limited for a minute, so every held key is active and making room
//!   forgets active keys: the worst case (a flood of distinct clients).
//! - `contended/*`: two threads deciding at once on one shared limiter, one
//!   check each per iteration (time per iteration is the time for both,
//!   running in parallel): on one key (one shard lock, one cache line
//!   bouncing) and on 10,000 keys (spread over the shards).

use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use levee_core::ratelimit::{KeyedLimiter, Quota, Verdict, gcra};

/// Arrival spacing: a million requests a second.
const STEP_NANOS: u64 = 1_000;
const MAX_KEYS: usize = 100_000;

/// 100 requests a second, bursts of 20: a per-client limit.
fn per_client() -> Quota {
    Quota::new(100, Duration::from_secs(1), 20).expect("valid quota")
}

/// One request a minute: every key that sent stays limited for the whole
/// benchmark.
fn per_minute() -> Quota {
    Quota::new(1, Duration::from_secs(60), 1).expect("valid quota")
}

/// The arrival of request `i`.
fn at(epoch: Instant, i: u64) -> Instant {
    epoch + Duration::from_nanos(i * STEP_NANOS)
}

fn bench_gcra(c: &mut Criterion) {
    let quota = per_client();
    let mut g = c.benchmark_group("ratelimit");
    g.throughput(Throughput::Elements(1));
    let mut tat = 0u64;
    let mut now = 0u64;
    g.bench_function("gcra", |b| {
        b.iter(|| {
            now += STEP_NANOS;
            let verdict = gcra(black_box(&quota), black_box(tat), black_box(now));
            if let Verdict::Allowed { tat: next, .. } = verdict {
                tat = next;
            }
            verdict
        });
    });
    g.finish();
}

fn bench_keyed(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit");
    g.throughput(Throughput::Elements(1));

    let epoch = Instant::now();
    let limiter = KeyedLimiter::<u64>::new(per_client(), MAX_KEYS, epoch);
    let mut i = 0u64;
    g.bench_function("hot_key", |b| {
        b.iter(|| {
            i += 1;
            limiter.check(black_box(&42u64), at(epoch, i))
        });
    });

    for (name, keys, quota) in [
        ("keys_10k", 10_000u64, per_client()),
        ("keys_1M", 1_000_000, per_client()),
        ("keys_1M_all_active", 1_000_000, per_minute()),
    ] {
        let epoch = Instant::now();
        let limiter = KeyedLimiter::<u64>::new(quota, MAX_KEYS, epoch);
        // A fixed seed: every run draws the same keys.
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let mut i = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                i += 1;
                let key = rng.u64(..keys);
                limiter.check(&key, at(epoch, i))
            });
        });
    }
    g.finish();
}

/// Two threads, `iters` checks each, started together; returns the wall
/// time until both are done. Request `i` of either thread arrives at
/// `base + i`; `base` then moves past them, so that time keeps advancing
/// from one sample to the next.
fn two_threads(
    limiter: &KeyedLimiter<u64>,
    epoch: Instant,
    base: &mut u64,
    keys: u64,
    iters: u64,
) -> Duration {
    let first = *base;
    *base += iters;
    let start = Barrier::new(3);
    thread::scope(|s| {
        let workers: Vec<_> = (0..2u64)
            .map(|t| {
                let start = &start;
                s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(t);
                    start.wait();
                    for i in 0..iters {
                        let key = if keys == 1 { 42 } else { rng.u64(..keys) };
                        let _ = black_box(limiter.check(&key, at(epoch, first + i)));
                    }
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        for w in workers {
            if let Err(panic) = w.join() {
                std::panic::resume_unwind(panic);
            }
        }
        t0.elapsed()
    })
}

fn bench_contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit/contended");
    // Each iteration is one check on each thread.
    g.throughput(Throughput::Elements(2));
    for (name, keys) in [("2_threads_hot_key", 1u64), ("2_threads_keys_10k", 10_000)] {
        let epoch = Instant::now();
        let limiter = KeyedLimiter::<u64>::new(per_client(), MAX_KEYS, epoch);
        let mut base = 0;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| two_threads(&limiter, epoch, &mut base, keys, iters));
        });
    }
    g.finish();
}

criterion_group!(benches, bench_gcra, bench_keyed, bench_contended);
criterion_main!(benches);
