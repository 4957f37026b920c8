//! Cumulative responses and latencies per upstream: what the request path
//! adds to (atomics only), and the history and alert rules read.

use std::sync::atomic::{AtomicU64, Ordering};

use levee_core::stats::{BUCKETS, Window, bucket_of_micros};

/// Cumulative responses and latencies of one upstream, from every route
/// that sends to it. Carried across reloads with the upstream's counters.
pub(crate) struct Recorder {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Recorder {
    pub fn record(&self, status: u16, seconds: f64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = (seconds * 1e6) as u64;
        self.latency[bucket_of_micros(micros)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self) -> Window {
        let mut w = Window {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            ..Window::default()
        };
        for (slot, counter) in w.latency.iter_mut().zip(&self.latency) {
            *slot = counter.load(Ordering::Relaxed);
        }
        w
    }
}
