//! Adaptive concurrency limits: how many requests an upstream may have in
//! flight, learnt from how its latency answers load, so that when it slows
//! down levee turns the excess away at once (a fast 503 with `Retry-After`)
//! instead of queueing it where it would only make the upstream slower.
//!
//! **The limit** follows the gradient of latency, as in Netflix's Gradient2
//! and Envoy's adaptive concurrency filter. Time is cut into windows: a
//! window closes at the first sample that finds it at least `window` old and
//! holding at least `min_samples` samples. Its *sample* `s` is the mean
//! latency of the requests that completed in it: the mean, because by
//! Little's law it is the mean that ties concurrency to throughput, and
//! because it costs O(1) under the caller's lock. Against the *baseline*
//! `b`, the latency the upstream shows without queueing, each window moves
//! the limit `L`:
//!
//! ```text
//! g      = clamp(tolerance × b / s, 0.5, 2)
//! target = L × g         when s > tolerance × b         (congested)
//!        = L × g + √L    otherwise, if the limit was in use
//!        = L × g + √L    otherwise, if L < initial_limit  (recovering: L' is
//!                        capped at initial_limit)
//!        = L             otherwise                      (idle)
//! L'     = clamp(L × (1 − smoothing) + target × smoothing, min_limit, max_limit)
//! ```
//!
//! Latency may grow to `tolerance` times the baseline (a queue that keeps
//! the upstream busy) before the limit shrinks, then by at most
//! `smoothing / 2` of itself a window (×0.9 with the defaults), so one noisy
//! window does not halve it. Under the threshold it grows: by up to
//! `smoothing` of itself a window (×1.2) while latency is at the baseline,
//! less as queueing builds, with `√L` keeping small limits moving. A
//! congested window never raises the limit, so the limit settles where the
//! mean latency is about `tolerance` times the baseline (single requests
//! may take longer: the mean is what is held). The limit is *in use* when the window shed a
//! request or the in-flight count reached half of it; a quiet upstream
//! keeps its limit rather than drifting to `max_limit`, where the first
//! burst would find no protection.
//!
//! **The baseline** only falls by itself: a window faster than it pulls it
//! half way down (half, so that one window of unusually fast answers does
//! not make every normal window after it look congested). A baseline that
//! could never rise would hold an upstream whose latency rose for good (a
//! slower release, a farther region) at `min_limit` forever, so it is
//! re-measured, as Envoy and BBR re-measure their minimum RTT, but only when
//! it must be: once every window for `rebase_after` was congested while the
//! limit sat at `min_limit`, without a dropped request, the baseline becomes
//! the latest window's sample. That sample was taken at the minimum
//! concurrency, so it holds no queue of levee's making (Envoy pins
//! concurrency low to measure; here congestion has already pinned it), and
//! the limit grows from there to what the slower upstream takes within
//! `tolerance`. Latency that rises with levee's own load never gets that
//! far: the limit falls, latency with it, and a window under the threshold
//! ends the run. So the baseline cannot creep up with a queue levee builds,
//! as Gradient2's long-term average can, and a hanging upstream, whose
//! windows hold drops, is never taken as the new normal.
//!
//! **Recovery** does not wait for the baseline. When a slow upstream is
//! fast again its windows come in at about the baseline or under it (the
//! baseline being the old fast latency, or the slow one re-measured), so
//! `g` is about `tolerance` or more (capped at 2): the limit grows at its
//! fastest, up to ×1.2 a window while requests are still being shed, and a
//! re-measured baseline falls back half way a window. With too little
//! traffic left to fill the cut-down limit, windows at normal latency still
//! raise it back up to `initial_limit` (no further), so the next burst is
//! not shed for a slowdown that is over.
//!
//! **Samples.** The caller records each request that got an answer from the
//! upstream ([`Completion::Answered`], whatever the status) with its
//! latency, and [`Completion::Dropped`] for one that timed out or that the
//! upstream refused for overload (a 503 or 429 that says so). Requests that
//! failed fast for any other reason (a refused connection, a dead endpoint,
//! levee's own rejections, requests this limiter shed) are not recorded:
//! their latency says nothing about queueing, and counting it would make a
//! failing upstream look fast. A drop is congestion whatever its latency, so
//! it enters the mean at no less than twice the congestion threshold
//! (`2 × tolerance × b`): a window in which more than a third of the
//! requests drop (with the default tolerance) is congested even if the rest
//! answered at the baseline, and a timeout weighs what it is, the time it
//! held its slot.
//!
//! **Admission.** Each request carries a [`Priority`], and a class may fill
//! only its share of the limit: critical all of it, default 90%, bulk 50%
//! (at least one request each, so an idle upstream takes anything). As the
//! limit shrinks bulk is turned away first, then default, and critical
//! traffic keeps the last tenth. The caller counts requests in flight (all
//! classes) and passes the count in; nothing here reads a clock or waits,
//! and every operation is O(1), to be done under a lock never held across
//! an await.

use std::time::{Duration, Instant};

/// A window's gradient is never below this: one window cuts the target to
/// at most half the limit.
const MIN_GRADIENT: f64 = 0.5;
/// Nor above this: one window at most doubles the target.
const MAX_GRADIENT: f64 = 2.0;
/// How far a faster window pulls the baseline down towards itself.
const DESCENT: f64 = 0.5;
/// Samples are taken to lie within these bounds (nanoseconds): a zero
/// latency would make any baseline infinitely slow by comparison, and no
/// request is meant to take more than an hour, which keeps sums finite.
const MIN_RTT: f64 = 1_000.0;
const MAX_RTT: f64 = 3_600.0e9;
/// `Retry-After` on a shed response stays within these (seconds).
const MIN_RETRY_AFTER: f64 = 1.0;
const MAX_RETRY_AFTER: f64 = 30.0;

/// How an upstream's limit adapts. [`Limiter::new`] checks them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// The limit before anything is known.
    pub initial_limit: u32,
    /// The limit never falls below this; it is also the concurrency at
    /// which a baseline is re-measured, so it should be small enough not to
    /// queue at the upstream.
    pub min_limit: u32,
    pub max_limit: u32,
    /// How many times the baseline latency may grow before the limit
    /// shrinks (more than 1, at most 100).
    pub tolerance: f64,
    /// How much of each window's target the limit takes (more than 0, at
    /// most 1).
    pub smoothing: f64,
    /// The shortest window.
    pub window: Duration,
    /// The fewest samples a window closes with.
    pub min_samples: u32,
    /// How long latency must stay congested with the limit at `min_limit`
    /// before the baseline is re-measured.
    pub rebase_after: Duration,
}

impl Params {
    pub const DEFAULT: Params = Params {
        initial_limit: 20,
        min_limit: 5,
        max_limit: 1000,
        tolerance: 2.0,
        smoothing: 0.2,
        window: Duration::from_millis(100),
        min_samples: 10,
        rebase_after: Duration::from_secs(30),
    };

    /// Every way these params are wrong, if any.
    pub fn errors(&self) -> Vec<ParamsError> {
        let mut errors = Vec::new();
        if self.min_limit == 0 {
            errors.push(ParamsError::MinLimitZero);
        }
        if self.min_limit > self.max_limit {
            errors.push(ParamsError::MinAboveMax {
                min: self.min_limit,
                max: self.max_limit,
            });
        } else if !(self.min_limit..=self.max_limit).contains(&self.initial_limit) {
            errors.push(ParamsError::InitialOutOfRange {
                initial: self.initial_limit,
                min: self.min_limit,
                max: self.max_limit,
            });
        }
        // Written so that NaN fails too.
        if !(self.tolerance > 1.0 && self.tolerance <= 100.0) {
            errors.push(ParamsError::Tolerance(self.tolerance));
        }
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            errors.push(ParamsError::Smoothing(self.smoothing));
        }
        if self.window.is_zero() {
            errors.push(ParamsError::WindowZero);
        }
        if self.min_samples == 0 {
            errors.push(ParamsError::MinSamplesZero);
        }
        errors
    }
}

/// A reason [`Params`] cannot be used.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ParamsError {
    #[error("min_limit must be at least 1")]
    MinLimitZero,
    #[error("min_limit {min} is above max_limit {max}")]
    MinAboveMax { min: u32, max: u32 },
    #[error("initial_limit {initial} is outside min_limit..=max_limit ({min}..={max})")]
    InitialOutOfRange { initial: u32, min: u32, max: u32 },
    #[error("tolerance must be above 1 and at most 100, not {0}")]
    Tolerance(f64),
    #[error("smoothing must be above 0 and at most 1, not {0}")]
    Smoothing(f64),
    #[error("window must be longer than zero")]
    WindowZero,
    #[error("min_samples must be at least 1")]
    MinSamplesZero,
}

impl ParamsError {
    /// The field at fault, for the config layer to put a path on.
    pub fn field(&self) -> &'static str {
        match self {
            ParamsError::MinLimitZero => "min_limit",
            ParamsError::MinAboveMax { .. } => "min_limit",
            ParamsError::InitialOutOfRange { .. } => "initial_limit",
            ParamsError::Tolerance(_) => "tolerance",
            ParamsError::Smoothing(_) => "smoothing",
            ParamsError::WindowZero => "window",
            ParamsError::MinSamplesZero => "min_samples",
        }
    }
}

/// A route's priority class: under pressure, bulk is shed first, then
/// default; critical keeps the last of the limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Priority {
    Critical,
    #[default]
    Default,
    Bulk,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Critical, Priority::Default, Priority::Bulk];

    /// The closed label set of config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Default => "default",
            Priority::Bulk => "bulk",
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The share of the limit, in percent, that requests of this class may
    /// fill (counting requests of every class).
    pub fn share_percent(self) -> u32 {
        match self {
            Priority::Critical => 100,
            Priority::Default => 90,
            Priority::Bulk => 50,
        }
    }
}

/// Whether a request may go to the upstream.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Send it; the caller counts it in flight until it completes.
    Admit,
    /// Answer at once with 503 and [`Limiter::retry_after`].
    Shed,
}

impl Admission {
    pub fn is_admitted(self) -> bool {
        self == Admission::Admit
    }
}

/// How a recorded request ended (see the module doc for which to record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// The upstream answered.
    Answered,
    /// It timed out, or the upstream refused it for overload.
    Dropped,
}

/// What a closed window measured and did, for metrics and tests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Update {
    /// The window's mean latency, drops raised as the module doc says.
    pub sample: Duration,
    /// The baseline the window was judged against.
    pub baseline: Duration,
    /// Whether the sample was above `tolerance × baseline`.
    pub congested: bool,
    /// The limit after the window.
    pub limit: u32,
    /// Whether the window re-measured the baseline (it is now `sample`).
    pub rebased: bool,
}

/// The adaptive concurrency limit of one upstream.
#[derive(Clone, Debug)]
pub struct Limiter {
    params: Params,
    /// Kept fractional so that small steps add up.
    limit: f64,
    /// Nanoseconds; `None` until the first window closes.
    baseline: Option<f64>,
    last_sample: Option<f64>,
    /// When a run of congested windows at `min_limit` began.
    stale_since: Option<Instant>,
    window: Window,
}

/// The open window.
#[derive(Clone, Debug, Default)]
struct Window {
    /// The time of its first sample.
    start: Option<Instant>,
    samples: u64,
    /// Nanoseconds.
    sum: f64,
    drops: u64,
    /// The most requests in flight just after an admission.
    peak_in_flight: u32,
    shed: u64,
}

impl Limiter {
    pub fn new(params: Params) -> Result<Limiter, ParamsError> {
        if let Some(e) = params.errors().into_iter().next() {
            return Err(e);
        }
        Ok(Limiter {
            params,
            limit: f64::from(params.initial_limit),
            baseline: None,
            last_sample: None,
            stale_since: None,
            window: Window::default(),
        })
    }

    /// New params for a reloaded upstream: what was learnt stays, the limit
    /// moved within the new bounds.
    pub fn set_params(&mut self, params: Params) -> Result<(), ParamsError> {
        if let Some(e) = params.errors().into_iter().next() {
            return Err(e);
        }
        self.params = params;
        self.limit = self
            .limit
            .clamp(f64::from(params.min_limit), f64::from(params.max_limit));
        Ok(())
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The limit on requests in flight, of all classes.
    pub fn limit(&self) -> u32 {
        // Within [min_limit, max_limit], so the cast cannot saturate.
        self.limit.floor() as u32
    }

    /// The latency the upstream shows without queueing, once measured.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline.map(duration)
    }

    /// The in-flight count at which requests of `priority` are shed.
    pub fn capacity(&self, priority: Priority) -> u32 {
        let share = u64::from(self.limit()) * u64::from(priority.share_percent()) / 100;
        u32::try_from(share).unwrap_or(u32::MAX).max(1)
    }

    /// Whether one more request of `priority` may go, with `in_flight`
    /// requests (of every class, not counting this one) outstanding.
    pub fn try_admit(&mut self, priority: Priority, in_flight: u32) -> Admission {
        if in_flight < self.capacity(priority) {
            let w = &mut self.window;
            w.peak_in_flight = w.peak_in_flight.max(in_flight.saturating_add(1));
            Admission::Admit
        } else {
            self.window.shed = self.window.shed.saturating_add(1);
            Admission::Shed
        }
    }

    /// Records a request that completed at `now` after `rtt` (see the module
    /// doc for which requests to record). Returns what the window did if
    /// this sample closed it.
    pub fn record(&mut self, now: Instant, rtt: Duration, completion: Completion) -> Option<Update> {
        let mut nanos = (rtt.as_nanos() as f64).clamp(MIN_RTT, MAX_RTT);
        if completion == Completion::Dropped {
            self.window.drops = self.window.drops.saturating_add(1);
            if let Some(b) = self.baseline {
                nanos = nanos.max(2.0 * self.params.tolerance * b).min(MAX_RTT);
            }
        }
        let w = &mut self.window;
        let start = *w.start.get_or_insert(now);
        w.samples = w.samples.saturating_add(1);
        w.sum += nanos;
        let closes = now.saturating_duration_since(start) >= self.params.window
            && w.samples >= u64::from(self.params.min_samples);
        closes.then(|| self.close(now))
    }

    /// How long a shed client should wait: the latest window's latency,
    /// rounded up to whole seconds, from 1 to 30 (`Retry-After` counts in
    /// seconds, and a slot frees about one latency later).
    pub fn retry_after(&self) -> Duration {
        let secs = self.last_sample.map_or(MIN_RETRY_AFTER, |n| (n / 1e9).ceil());
        Duration::from_secs(secs.clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER) as u64)
    }

    fn close(&mut self, now: Instant) -> Update {
        let w = std::mem::take(&mut self.window);
        let p = self.params;
        let sample = w.sum / w.samples.max(1) as f64;
        let baseline = self.baseline.unwrap_or(sample);
        let threshold = p.tolerance * baseline;
        let congested = sample > threshold;
        let gradient = (threshold / sample).clamp(MIN_GRADIENT, MAX_GRADIENT);

        let before = self.limit;
        let in_use = w.shed > 0 || 2.0 * f64::from(w.peak_in_flight) >= before;
        let initial = f64::from(p.initial_limit);
        let recovering = !congested && !in_use && before < initial;
        let target = if congested {
            before * gradient
        } else if in_use || recovering {
            // Recovering: idle below where it started. A limit cut down
            // while the upstream was slow comes back once latency is
            // normal, even with too little traffic to fill it, so the next
            // burst is not shed against a slowdown that is over; but never
            // past the initial limit without being used.
            before * gradient + before.sqrt()
        } else {
            before
        };
        let smoothed = before * (1.0 - p.smoothing) + target * p.smoothing;
        let ceiling = if recovering {
            initial
        } else {
            f64::from(p.max_limit)
        };
        self.limit = smoothed
            .min(ceiling)
            .clamp(f64::from(p.min_limit), f64::from(p.max_limit));

        let mut rebased = false;
        if congested && before <= f64::from(p.min_limit) && w.drops == 0 {
            match self.stale_since {
                Some(since) if now.saturating_duration_since(since) >= p.rebase_after => {
                    self.baseline = Some(sample);
                    self.stale_since = None;
                    rebased = true;
                }
                Some(_) => {}
                None => self.stale_since = Some(now),
            }
        } else {
            self.stale_since = None;
            let lowered = if sample < baseline {
                baseline - (baseline - sample) * DESCENT
            } else {
                baseline
            };
            self.baseline = Some(lowered);
        }
        self.last_sample = Some(sample);

        Update {
            sample: duration(sample),
            baseline: duration(baseline),
            congested,
            limit: self.limit(),
            rebased,
        }
    }
}

fn duration(nanos: f64) -> Duration {
    // Samples are within [MIN_RTT, MAX_RTT]: the cast neither saturates nor
    // meets NaN.
    Duration::from_nanos(nanos.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    const MS: Duration = Duration::from_millis(1);

    fn limiter(initial: u32) -> Limiter {
        Limiter::new(Params {
            initial_limit: initial,
            ..Params::DEFAULT
        })
        .unwrap()
    }

    /// Closes `n` windows of samples of `rtt`, 10 ms apart, with the limit
    /// in use; returns the last update.
    fn windows(l: &mut Limiter, now: &mut Instant, n: usize, rtt: Duration) -> Update {
        let mut last = None;
        for _ in 0..n {
            let _ = l.try_admit(Priority::Critical, l.limit() - 1);
            last = loop {
                *now += 10 * MS;
                if let Some(u) = l.record(*now, rtt, Completion::Answered) {
                    break Some(u);
                }
            };
        }
        last.unwrap()
    }

    #[test]
    fn priorities_fill_their_share_of_the_limit() {
        let mut l = limiter(100);
        let at = |l: &mut Limiter, in_flight| Priority::ALL.map(|p| l.try_admit(p, in_flight).is_admitted());
        // [critical, default, bulk]
        assert_eq!(at(&mut l, 0), [true, true, true]);
        assert_eq!(at(&mut l, 49), [true, true, true]);
        assert_eq!(at(&mut l, 60), [true, true, false], "bulk goes first");
        assert_eq!(
            at(&mut l, 95),
            [true, false, false],
            "critical keeps the last tenth"
        );
        assert_eq!(at(&mut l, 100), [false, false, false]);
        assert_eq!(at(&mut l, 1000), [false, false, false]);
    }

    #[test]
    fn every_class_may_have_one_request_at_the_smallest_limit() {
        let l = Limiter::new(Params {
            initial_limit: 1,
            min_limit: 1,
            ..Params::DEFAULT
        })
        .unwrap();
        for p in Priority::ALL {
            assert_eq!(l.capacity(p), 1, "{p:?}");
        }
        let l = limiter(5);
        assert_eq!(Priority::ALL.map(|p| l.capacity(p)), [5, 4, 2]);
    }

    #[test]
    fn priorities_parse_and_default() {
        for p in Priority::ALL {
            assert_eq!(Priority::parse(p.as_str()), Some(p));
        }
        assert_eq!(Priority::parse("urgent"), None);
        assert_eq!(Priority::default(), Priority::Default);
    }

    #[test]
    fn bad_params_are_all_reported() {
        assert!(Params::DEFAULT.errors().is_empty());
        let bad = Params {
            initial_limit: 0,
            min_limit: 0,
            max_limit: 10,
            tolerance: f64::NAN,
            smoothing: 0.0,
            window: Duration::ZERO,
            min_samples: 0,
            rebase_after: Duration::ZERO,
        };
        let fields: Vec<_> = bad.errors().iter().map(ParamsError::field).collect();
        assert_eq!(
            fields,
            ["min_limit", "tolerance", "smoothing", "window", "min_samples"]
        );
        let inverted = Params {
            min_limit: 50,
            max_limit: 10,
            ..Params::DEFAULT
        };
        assert_eq!(
            Limiter::new(inverted).unwrap_err().to_string(),
            "min_limit 50 is above max_limit 10"
        );
        let outside = Params {
            initial_limit: 2,
            ..Params::DEFAULT
        };
        assert_eq!(
            outside.errors(),
            [ParamsError::InitialOutOfRange {
                initial: 2,
                min: 5,
                max: 1000
            }]
        );
        for tolerance in [1.0, 0.5, 101.0, f64::INFINITY] {
            let p = Params {
                tolerance,
                ..Params::DEFAULT
            };
            assert_eq!(p.errors(), [ParamsError::Tolerance(tolerance)]);
        }
    }

    #[test]
    fn a_window_needs_its_time_and_its_samples() {
        let t0 = Instant::now();
        let mut l = limiter(20);
        // Nine samples over a second: too few.
        for i in 1..10 {
            assert_eq!(l.record(t0 + i * 100 * MS, 5 * MS, Completion::Answered), None);
        }
        // The tenth closes it; the first window is its own baseline.
        let u = l
            .record(t0 + Duration::from_secs(1), 5 * MS, Completion::Answered)
            .unwrap();
        assert_eq!(u.sample, 5 * MS);
        assert_eq!(u.baseline, 5 * MS);
        assert!(!u.congested);
        // Ten samples at once are too soon.
        let t1 = t0 + Duration::from_secs(2);
        for _ in 0..20 {
            assert_eq!(l.record(t1, 5 * MS, Completion::Answered), None);
        }
        assert!(l.record(t1 + 100 * MS, 5 * MS, Completion::Answered).is_some());
    }

    #[test]
    fn a_limit_cut_down_comes_back_to_where_it_started_without_load() {
        let mut now = Instant::now();
        let mut l = limiter(20);
        windows(&mut l, &mut now, 3, 5 * MS);
        // Slow: the limit falls to the minimum.
        for _ in 0..100 {
            windows(&mut l, &mut now, 1, 200 * MS);
        }
        assert_eq!(l.limit(), l.params().min_limit);
        // Fast again, with one request in flight at a time: back to the
        // initial limit, and no further.
        for _ in 0..200 {
            let _ = l.try_admit(Priority::Default, 0);
            for _ in 0..10 {
                now += 10 * MS;
                let _ = l.record(now, 5 * MS, Completion::Answered);
            }
        }
        assert_eq!(l.limit(), 20);
    }

    #[test]
    fn an_idle_upstream_keeps_its_limit() {
        let t0 = Instant::now();
        let mut l = limiter(20);
        let mut now = t0;
        for _ in 0..1000 {
            // Never more than two requests in flight.
            let _ = l.try_admit(Priority::Default, 1);
            for _ in 0..10 {
                now += 10 * MS;
                let _ = l.record(now, 5 * MS, Completion::Answered);
            }
        }
        assert_eq!(l.limit(), 20);
        // Used, it grows.
        windows(&mut l, &mut now, 10, 5 * MS);
        assert!(l.limit() > 40, "{}", l.limit());
    }

    #[test]
    fn a_congested_window_shrinks_the_limit_and_a_fast_one_grows_it() {
        let mut now = Instant::now();
        let mut l = limiter(100);
        windows(&mut l, &mut now, 1, 10 * MS);
        let before = l.limit;
        let u = windows(&mut l, &mut now, 1, 30 * MS);
        assert!(u.congested);
        // Gradient 2 × 10 / 30: the target is two thirds of the limit.
        assert!((l.limit - before * (0.8 + 0.2 * 2.0 / 3.0)).abs() < 1e-9);
        let before = l.limit;
        let u = windows(&mut l, &mut now, 1, 15 * MS);
        assert!(!u.congested);
        assert!(l.limit > before);
        // Far above: the gradient stops at 0.5, ×0.9 a window.
        let before = l.limit;
        windows(&mut l, &mut now, 1, Duration::from_secs(1));
        assert!((l.limit - 0.9 * before).abs() < 1e-9);
    }

    #[test]
    fn drops_count_as_congestion() {
        let mut now = Instant::now();
        let mut l = limiter(100);
        windows(&mut l, &mut now, 1, 10 * MS);
        let before = l.limit;
        // Four fast answers and six fast drops (an upstream answering 503s
        // for overload in a millisecond): congested, not fast.
        let mut update = None;
        for i in 0..10 {
            now += 20 * MS;
            let c = if i < 4 {
                Completion::Answered
            } else {
                Completion::Dropped
            };
            update = update.or(l.record(now, MS, c));
        }
        let u = update.unwrap();
        assert!(u.congested, "{u:?}");
        assert!(l.limit < before);
        assert_eq!(l.baseline(), Some(10 * MS), "drops do not lower the baseline");
    }

    #[test]
    fn the_baseline_falls_half_way_per_faster_window() {
        let mut now = Instant::now();
        let mut l = limiter(20);
        windows(&mut l, &mut now, 1, 100 * MS);
        windows(&mut l, &mut now, 1, 20 * MS);
        assert_eq!(l.baseline(), Some(60 * MS));
        windows(&mut l, &mut now, 1, 40 * MS);
        assert_eq!(l.baseline(), Some(50 * MS), "slower windows do not raise it");
    }

    #[test]
    fn a_hanging_upstream_stays_at_the_minimum() {
        let mut now = Instant::now();
        let mut l = limiter(50);
        windows(&mut l, &mut now, 5, 5 * MS);
        // Every request times out after 15 s, five at a time.
        for _ in 0..600 {
            now += Duration::from_secs(3);
            let _ = l.record(now, Duration::from_secs(15), Completion::Dropped);
        }
        assert_eq!(l.limit(), 5);
        assert_eq!(l.baseline(), Some(5 * MS), "timeouts are never the new normal");
        assert_eq!(l.retry_after(), Duration::from_secs(15));
    }

    #[test]
    fn retry_after_is_the_latency_in_whole_seconds() {
        let mut now = Instant::now();
        let mut l = limiter(20);
        assert_eq!(l.retry_after(), Duration::from_secs(1));
        windows(&mut l, &mut now, 1, 5 * MS);
        assert_eq!(l.retry_after(), Duration::from_secs(1));
        windows(&mut l, &mut now, 1, 2500 * MS);
        assert_eq!(l.retry_after(), Duration::from_secs(3));
    }

    #[test]
    fn reloaded_params_keep_what_was_learnt() {
        let mut now = Instant::now();
        let mut l = limiter(100);
        windows(&mut l, &mut now, 3, 5 * MS);
        let p = Params {
            max_limit: 50,
            ..Params::DEFAULT
        };
        l.set_params(p).unwrap();
        assert_eq!(l.limit(), 50);
        assert_eq!(l.baseline(), Some(5 * MS));
        assert!(l.set_params(Params { smoothing: 2.0, ..p }).is_err());
        assert_eq!(l.params(), &p);
    }

    /// A backend with `workers` that each take `latency` per request and a
    /// FIFO queue in front, offered Poisson arrivals at `rate` a second,
    /// all through one limiter; simulated time, event by event.
    struct Sim {
        limiter: Limiter,
        rng: fastrand::Rng,
        t0: Instant,
        now: Instant,
        rate: f64,
        latency: Duration,
        /// When each worker is next free.
        workers: BinaryHeap<Reverse<Instant>>,
        /// Admitted requests: (completion, arrival).
        in_flight: BinaryHeap<Reverse<(Instant, Instant)>>,
        /// (completion, latency) of every admitted request.
        completed: Vec<(Duration, Duration)>,
        /// (arrival, admitted) of every request.
        arrivals: Vec<(Duration, bool)>,
        /// (time, limit) after every window.
        limits: Vec<(Duration, u32)>,
        rebases: Vec<Duration>,
    }

    impl Sim {
        fn new(workers: usize, rate: f64, latency: Duration) -> Sim {
            let t0 = Instant::now();
            Sim {
                limiter: Limiter::new(Params::DEFAULT).unwrap(),
                rng: fastrand::Rng::with_seed(7),
                t0,
                now: t0,
                rate,
                latency,
                workers: (0..workers).map(|_| Reverse(t0)).collect(),
                in_flight: BinaryHeap::new(),
                completed: Vec::new(),
                arrivals: Vec::new(),
                limits: Vec::new(),
                rebases: Vec::new(),
            }
        }

        /// Runs until `secs` after the start.
        fn run_until(&mut self, secs: f64) {
            let end = self.t0 + Duration::from_secs_f64(secs);
            loop {
                let gap = -(1.0 - self.rng.f64()).ln() / self.rate;
                let arrival = self.now + Duration::from_secs_f64(gap);
                if arrival > end {
                    self.now = end;
                    return;
                }
                while let Some(&Reverse((done, started))) = self.in_flight.peek() {
                    if done > arrival {
                        break;
                    }
                    self.in_flight.pop();
                    let rtt = done - started;
                    self.completed.push((done - self.t0, rtt));
                    if let Some(u) = self.limiter.record(done, rtt, Completion::Answered) {
                        self.limits.push((done - self.t0, u.limit));
                        if u.rebased {
                            self.rebases.push(done - self.t0);
                        }
                    }
                }
                self.now = arrival;
                let in_flight = u32::try_from(self.in_flight.len()).unwrap();
                let admitted = self.limiter.try_admit(Priority::Default, in_flight).is_admitted();
                self.arrivals.push((arrival - self.t0, admitted));
                if admitted {
                    let Reverse(free) = self.workers.pop().unwrap();
                    let done = free.max(arrival) + self.latency;
                    self.workers.push(Reverse(done));
                    self.in_flight.push(Reverse((done, arrival)));
                }
            }
        }

        fn span(from: f64, to: f64) -> std::ops::Range<Duration> {
            Duration::from_secs_f64(from)..Duration::from_secs_f64(to)
        }

        /// The limit as it stood at `secs`.
        fn limit_at(&self, secs: f64) -> u32 {
            let t = Duration::from_secs_f64(secs);
            self.limits
                .iter()
                .take_while(|(at, _)| *at <= t)
                .last()
                .map_or(Params::DEFAULT.initial_limit, |&(_, l)| l)
        }

        fn max_limit(&self, from: f64, to: f64) -> u32 {
            let span = Sim::span(from, to);
            self.limits
                .iter()
                .filter(|(at, _)| span.contains(at))
                .map(|&(_, l)| l)
                .max()
                .unwrap()
        }

        /// The share of requests arriving in the span that were shed.
        fn shed_share(&self, from: f64, to: f64) -> f64 {
            let span = Sim::span(from, to);
            let (shed, all) = self
                .arrivals
                .iter()
                .filter(|(at, _)| span.contains(at))
                .fold((0, 0), |(s, a), &(_, ok)| (s + usize::from(!ok), a + 1));
            shed as f64 / all as f64
        }

        /// The mean latency of requests completed in the span.
        fn mean(&self, from: f64, to: f64) -> Duration {
            let span = Sim::span(from, to);
            let l: Vec<Duration> = self
                .completed
                .iter()
                .filter(|(at, _)| span.contains(at))
                .map(|&(_, rtt)| rtt)
                .collect();
            l.iter().sum::<Duration>() / u32::try_from(l.len()).unwrap()
        }

        /// The 99th percentile latency of requests completed in the span.
        fn p99(&self, from: f64, to: f64) -> Duration {
            let span = Sim::span(from, to);
            let mut l: Vec<Duration> = self
                .completed
                .iter()
                .filter(|(at, _)| span.contains(at))
                .map(|&(_, rtt)| rtt)
                .collect();
            l.sort();
            l[l.len() * 99 / 100]
        }
    }

    #[test]
    fn a_slow_backend_is_shed_and_the_limit_recovers() {
        // 20 workers: 4000 requests a second at 5 ms, 100 at 200 ms. 2000 are
        // offered, 10 in flight on average while the backend is fast.
        let mut sim = Sim::new(20, 2000.0, 5 * MS);
        let min = Params::DEFAULT.min_limit;
        sim.run_until(10.0);
        let settled = sim.limit_at(10.0);
        assert!((20..=80).contains(&settled), "settled at {settled}");
        assert!(
            sim.max_limit(5.0, 10.0) <= 80,
            "a limit not in use does not inflate"
        );
        assert_eq!(sim.shed_share(2.0, 10.0), 0.0);
        assert!(sim.p99(2.0, 10.0) <= 5 * MS);

        sim.latency = 200 * MS;
        sim.run_until(25.0);
        // Under what the backend serves without a queue within 3 s, near
        // the minimum within 6 s.
        let under = |limit: u32| {
            let at = sim
                .limits
                .iter()
                .find(|&&(at, l)| at.as_secs_f64() > 10.0 && l <= limit);
            at.map(|(at, _)| at.as_secs_f64() - 10.0)
        };
        assert!(under(20).is_some_and(|s| s <= 3.0), "{:?}", under(20));
        assert!(under(min + 1).is_some_and(|s| s <= 6.0), "{:?}", under(min + 1));
        assert!(sim.max_limit(16.0, 25.0) <= min + 1);
        assert!(sim.shed_share(16.0, 25.0) > 0.9);
        let p99 = sim.p99(16.0, 25.0);
        assert!(p99 <= 2 * sim.latency, "admitted requests do not queue: {p99:?}");
        assert!(sim.rebases.is_empty(), "15 s of slowness is not a new normal");

        sim.latency = 5 * MS;
        sim.run_until(40.0);
        let recovered = sim
            .limits
            .iter()
            .find(|&&(at, l)| at.as_secs_f64() > 25.0 && l >= 15);
        let recovered = recovered.map(|(at, _)| at.as_secs_f64() - 25.0);
        assert!(
            recovered.is_some_and(|s| s <= 3.0),
            "recovered after {recovered:?} s"
        );
        assert!(
            sim.shed_share(28.0, 40.0) < 0.001,
            "{}",
            sim.shed_share(28.0, 40.0)
        );
        assert!(sim.p99(28.0, 40.0) <= 10 * MS);
        assert!((20..=80).contains(&sim.limit_at(40.0)), "{}", sim.limit_at(40.0));
    }

    #[test]
    fn a_backend_slow_for_good_is_remeasured_and_the_limit_recovers_after() {
        let mut sim = Sim::new(20, 2000.0, 5 * MS);
        sim.run_until(10.0);
        sim.latency = 200 * MS;
        sim.run_until(100.0);
        // At the minimum from about 14 s, re-measured rebase_after later.
        let first = sim.rebases.first().map(Duration::as_secs_f64);
        assert!(
            first.is_some_and(|s| (40.0..50.0).contains(&s)),
            "rebased at {first:?}"
        );
        assert_eq!(sim.rebases.len(), 1, "{:?}", sim.rebases);
        // From there the limit grows to what 20 workers take within the
        // tolerance: about 40 in flight, 20 of them queued.
        // The mean is what the limit holds near tolerance × baseline; with
        // the workers finishing in step, the tail is one service time more.
        let regrown = sim.limit_at(100.0);
        assert!((30..=60).contains(&regrown), "{regrown}");
        let mean = sim.mean(60.0, 100.0);
        assert!(mean <= 5 * sim.latency / 2, "{mean:?}");
        let p99 = sim.p99(60.0, 100.0);
        assert!(p99 <= 3 * sim.latency, "{p99:?}");
        let b = sim.limiter.baseline().unwrap();
        assert!(b >= 190 * MS && b <= 210 * MS, "{b:?}");

        sim.latency = 5 * MS;
        sim.run_until(110.0);
        assert!(sim.shed_share(101.0, 110.0) < 0.001);
        assert!(sim.p99(101.0, 110.0) <= 10 * MS);
        let b = sim.limiter.baseline().unwrap();
        assert!(b <= 6 * MS, "the baseline falls back: {b:?}");

        // And a second slowdown is shed again.
        sim.latency = 200 * MS;
        sim.run_until(120.0);
        assert!(sim.limit_at(120.0) <= Params::DEFAULT.min_limit + 1);
    }

    #[test]
    fn an_overloaded_backend_does_not_make_the_baseline_creep() {
        // Twice what 20 workers at 5 ms can serve, for ten minutes.
        let mut sim = Sim::new(20, 8000.0, 5 * MS);
        sim.run_until(600.0);
        assert!(sim.rebases.is_empty());
        let b = sim.limiter.baseline().unwrap();
        assert!(b <= 5 * MS, "{b:?}");
        let top = sim.max_limit(60.0, 600.0);
        assert!(top <= 60, "{top}");
        let p99 = sim.p99(60.0, 600.0);
        assert!(p99 <= 5 * sim.latency / 2, "{p99:?}");
        // Half the offered load is what the backend can do.
        let shed = sim.shed_share(60.0, 600.0);
        assert!((0.45..0.6).contains(&shed), "{shed}");
    }

    #[derive(Clone, Debug)]
    enum Op {
        Admit(u8, u32),
        Record {
            after_ms: u64,
            rtt_us: u64,
            dropped: bool,
        },
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            (0u8..3, 0u32..2000).prop_map(|(p, n)| Op::Admit(p, n)),
            (0u64..300, 0u64..2_000_000, proptest::bool::weighted(0.1)).prop_map(
                |(after_ms, rtt_us, dropped)| Op::Record {
                    after_ms,
                    rtt_us,
                    dropped
                }
            ),
        ];
        proptest::collection::vec(op, 1..2000)
    }

    fn params() -> impl Strategy<Value = Params> {
        (
            1u32..50,
            0u32..500,
            0u32..500,
            1.01f64..10.0,
            0.01f64..=1.0,
            1u64..500,
            1u32..30,
            0u64..5000,
        )
            .prop_map(
                |(min, extra, initial, tolerance, smoothing, window_ms, min_samples, rebase_ms)| Params {
                    initial_limit: min + initial.min(extra),
                    min_limit: min,
                    max_limit: min + extra,
                    tolerance,
                    smoothing,
                    window: Duration::from_millis(window_ms),
                    min_samples,
                    rebase_after: Duration::from_millis(rebase_ms),
                },
            )
    }

    proptest! {
        #[test]
        fn the_limit_stays_within_its_bounds(p in params(), ops in ops()) {
            let mut l = Limiter::new(p).unwrap();
            let mut now = Instant::now();
            for op in ops {
                match op {
                    Op::Admit(i, n) => {
                        let _ = l.try_admit(Priority::ALL[usize::from(i)], n);
                    }
                    Op::Record { after_ms, rtt_us, dropped } => {
                        now += Duration::from_millis(after_ms);
                        let c = if dropped { Completion::Dropped } else { Completion::Answered };
                        let _ = l.record(now, Duration::from_micros(rtt_us), c);
                    }
                }
                prop_assert!((p.min_limit..=p.max_limit).contains(&l.limit()), "{}", l.limit());
                prop_assert!(l.limit >= f64::from(p.min_limit) && l.limit <= f64::from(p.max_limit));
                for pr in Priority::ALL {
                    prop_assert!((1..=l.limit()).contains(&l.capacity(pr)));
                }
                let r = l.retry_after();
                prop_assert!(r >= Duration::from_secs(1) && r <= Duration::from_secs(30));
            }
        }

        #[test]
        fn a_congested_window_never_raises_the_limit(p in params(), ops in ops()) {
            let mut l = Limiter::new(p).unwrap();
            let mut now = Instant::now();
            // The window as this test sees it: the sum and count of its
            // samples, and whether any dropped.
            let (mut sum, mut n, mut drops) = (0.0, 0u32, false);
            for op in ops {
                let Op::Record { after_ms, rtt_us, dropped } = op else {
                    if let Op::Admit(i, k) = op {
                        let _ = l.try_admit(Priority::ALL[usize::from(i)], k);
                    }
                    continue;
                };
                now += Duration::from_millis(after_ms);
                let rtt = Duration::from_micros(rtt_us.max(1));
                sum += rtt.as_nanos() as f64;
                n += 1;
                drops |= dropped;
                let before = l.limit;
                let baseline = l.baseline;
                let c = if dropped { Completion::Dropped } else { Completion::Answered };
                let Some(u) = l.record(now, rtt, c) else {
                    prop_assert_eq!(l.limit, before, "the limit moves only when a window closes");
                    continue;
                };
                let mean = sum / f64::from(n);
                if drops {
                    prop_assert!(u.sample.as_nanos() as f64 >= mean - 1.0);
                } else {
                    let off = (u.sample.as_nanos() as f64 - mean).abs();
                    prop_assert!(off <= 1.0, "{:?} vs {}", u.sample, mean);
                }
                if let Some(b) = baseline {
                    if mean > p.tolerance * b * (1.0 + 1e-9) {
                        prop_assert!(u.congested);
                        prop_assert!(l.limit <= before, "{} > {}", l.limit, before);
                    }
                    prop_assert!(l.baseline.is_some_and(|after| after <= b || u.rebased));
                }
                (sum, n, drops) = (0.0, 0, false);
            }
        }
    }
}
