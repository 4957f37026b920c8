//! Failover between priority levels: how much of an upstream's traffic each
//! level (region priority) takes, from how healthy the levels are.
//!
//! Two modes, both computed from each level's *health score* `h` (a
//! percentage):
//!
//! - `Proportional` (Envoy's spill): `h = min(100, healthy share × factor)`
//!   with the overprovisioning factor (1.4 by default), the healthy share
//!   being the healthy endpoints' weight over the level's weight. A level
//!   keeps all the traffic it is offered until its score drops below 100%;
//!   what it cannot take cascades to the next level.
//! - `Strict`: `h` is 100 when the level has any healthy endpoint, else 0.
//!   The next level gets traffic only when the current one has nothing.
//!
//! Scores become shares of traffic: when they add up to at least 100, each
//! level in priority order takes its score or what is left; when they add up
//! to less (every level degraded), the shares are the scores scaled up to
//! 100. A level whose own healthy share is under the panic threshold, while
//! the levels together cannot take all the traffic, is in *panic*: the
//! traffic it gets is spread over all its endpoints, healthy or not, since
//! piling it on the few healthy ones would only take them down too.
//!
//! **Damped failback**, on top: a score that drops takes effect at once
//! (failover must be fast), but a score that rises must stay up for
//! `failback_after` before traffic follows, and then follows linearly over
//! `ramp`, so a recovered region is not hit by its full load at once and a
//! flapping one does not pull traffic back and forth. Damping only ever
//! withholds traffic that other levels can take: if holding a level back
//! would leave the upstream with less capacity than its scores allow, the
//! level gets the difference at once.
//!
//! Nothing here reads a clock: [`Failover::update`] takes the time.

use std::time::{Duration, Instant};

/// Shares are in basis points: 10000 is all the traffic.
pub const ALL: u32 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Proportional,
    Strict,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Proportional => "proportional",
            Mode::Strict => "strict",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        [Mode::Proportional, Mode::Strict]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// How an upstream fails over (validated by the config layer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    pub mode: Mode,
    /// The overprovisioning factor in percent (140 is Envoy's 1.4).
    pub overprovisioning_percent: u32,
    /// A level whose healthy share is below this percentage may panic.
    pub panic_threshold_percent: u32,
    pub failback_after: Duration,
    pub ramp: Duration,
}

impl Params {
    pub const DEFAULT: Params = Params {
        mode: Mode::Proportional,
        overprovisioning_percent: 140,
        panic_threshold_percent: 50,
        failback_after: Duration::from_secs(30),
        ramp: Duration::from_secs(30),
    };
}

/// One level's endpoints as they stand: the weight of those that may take
/// traffic (healthy, not ejected, not drained), of all of them, and of the
/// drained ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LevelHealth {
    pub healthy_weight: u64,
    pub total_weight: u64,
    pub drained_weight: u64,
}

impl LevelHealth {
    /// What the level can take, for the shares: a drained endpoint is
    /// capacity gone, like a failed one.
    fn share_percent(self) -> f64 {
        percent(self.healthy_weight, self.total_weight)
    }

    /// What the panic threshold judges: panic guards against health checks
    /// that wrongly fail most of a level, and an operator's drain says
    /// nothing about that. Counted, drains plus one real failure could push
    /// a level into panic and send its traffic to the failed endpoint.
    fn checked_percent(self) -> f64 {
        percent(
            self.healthy_weight,
            self.total_weight.saturating_sub(self.drained_weight),
        )
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// The traffic each level takes, by level in priority order.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Loads {
    /// Basis points; they add up to [`ALL`], or are all zero when no level
    /// has a healthy endpoint.
    pub shares: Vec<u32>,
    /// Whether traffic sent to the level goes to all its endpoints.
    pub panic: Vec<bool>,
}

impl Loads {
    /// The level a request goes to; `entropy` is uniform (a random value,
    /// or the request's hash so that a key keeps its level). `None` when no
    /// level takes traffic.
    pub fn pick(&self, entropy: u64) -> Option<usize> {
        let mut r = (entropy % u64::from(ALL)) as u32;
        for (level, &share) in self.shares.iter().enumerate() {
            if r < share {
                return Some(level);
            }
            r -= share;
        }
        None
    }

    /// Whether any level takes traffic.
    pub fn any(&self) -> bool {
        self.shares.iter().any(|&s| s > 0)
    }
}

/// The failover state of one upstream: each level's damped score.
#[derive(Clone, Debug)]
pub struct Failover {
    params: Params,
    levels: Vec<Level>,
    started: bool,
}

#[derive(Clone, Debug, Default)]
struct Level {
    /// The score traffic follows now (percent).
    effective: f64,
    /// The score at the last update, to notice a relapse during a recovery.
    target: f64,
    /// A rise being waited out or ramped in.
    recovery: Option<Recovery>,
}

#[derive(Clone, Copy, Debug)]
struct Recovery {
    since: Instant,
    from: f64,
}

impl Failover {
    pub fn new(params: Params, levels: usize) -> Failover {
        Failover {
            params,
            levels: vec![Level::default(); levels],
            started: false,
        }
    }

    /// A failover for a reloaded upstream: levels that were there before (by
    /// priority value) keep their damped state.
    pub fn carried(params: Params, priorities: &[u32], old: &Failover, old_priorities: &[u32]) -> Failover {
        let levels = priorities
            .iter()
            .map(|p| {
                old_priorities
                    .iter()
                    .position(|q| q == p)
                    .and_then(|i| old.levels.get(i).cloned())
                    .unwrap_or_default()
            })
            .collect();
        Failover {
            params,
            levels,
            started: old.started,
        }
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Whether a failback is being waited out or ramped in: the loads then
    /// change with time alone, and the caller should update again soon.
    pub fn is_recovering(&self) -> bool {
        self.levels.iter().any(|l| l.recovery.is_some())
    }

    /// The loads for the levels' health at `now`. `health` has one entry per
    /// level, in priority order.
    pub fn update(&mut self, now: Instant, health: &[LevelHealth]) -> Loads {
        if self.levels.len() != health.len() {
            self.levels.resize(health.len(), Level::default());
        }
        let targets: Vec<f64> = health.iter().map(|&h| score(&self.params, h)).collect();
        if !self.started {
            // Nothing to fail back from at start: traffic follows health.
            for (level, &t) in self.levels.iter_mut().zip(&targets) {
                level.effective = t;
                level.target = t;
            }
            self.started = true;
        }
        for (level, &target) in self.levels.iter_mut().zip(&targets) {
            level.step(now, target, &self.params);
        }
        let mut values: Vec<f64> = self.levels.iter().map(|l| l.effective).collect();
        lift(&mut values, &targets);
        loads(&values, health, &self.params)
    }
}

/// The loads for `health` as it stands, without damping: for a retry,
/// which must go where the levels can take it now.
pub fn undamped(params: &Params, health: &[LevelHealth]) -> Loads {
    let values: Vec<f64> = health.iter().map(|&h| score(params, h)).collect();
    loads(&values, health, params)
}

/// A level's health score (percent) in the upstream's mode.
fn score(params: &Params, h: LevelHealth) -> f64 {
    match params.mode {
        Mode::Strict if h.healthy_weight > 0 => 100.0,
        Mode::Strict => 0.0,
        Mode::Proportional => {
            (h.share_percent() * f64::from(params.overprovisioning_percent) / 100.0).min(100.0)
        }
    }
}

impl Level {
    fn step(&mut self, now: Instant, target: f64, p: &Params) {
        let relapse = target < self.target;
        self.target = target;
        if target <= self.effective {
            // Failover: at once.
            self.effective = target;
            self.recovery = None;
            return;
        }
        if relapse {
            // Worse again during a recovery, if only partly: the wait starts
            // over from where the traffic is now.
            self.recovery = None;
        }
        let rec = *self.recovery.get_or_insert(Recovery {
            since: now,
            from: self.effective,
        });
        let elapsed = now.saturating_duration_since(rec.since);
        let Some(ramping) = elapsed.checked_sub(p.failback_after) else {
            return;
        };
        let progress = if p.ramp.is_zero() {
            1.0
        } else {
            (ramping.as_secs_f64() / p.ramp.as_secs_f64()).min(1.0)
        };
        self.effective = rec.from + (target - rec.from) * progress;
        if progress >= 1.0 {
            self.effective = target;
            self.recovery = None;
        }
    }
}

/// Gives damped levels back what the others cannot take: the values must
/// add up to at least what the undamped targets do (capped at 100).
fn lift(values: &mut [f64], targets: &[f64]) {
    let need = targets.iter().sum::<f64>().min(100.0);
    let have = values.iter().sum::<f64>().min(100.0);
    let mut missing = need - have;
    for (v, &t) in values.iter_mut().zip(targets) {
        if missing <= 0.0 {
            break;
        }
        let add = (t - *v).clamp(0.0, missing);
        *v += add;
        missing -= add;
    }
}

/// Scores to shares and panic flags.
fn loads(values: &[f64], health: &[LevelHealth], p: &Params) -> Loads {
    let total: f64 = values.iter().sum();
    let n = values.len();
    if total <= 0.0 {
        return Loads {
            shares: vec![0; n],
            panic: vec![false; n],
        };
    }
    let percents: Vec<f64> = if total >= 100.0 {
        let mut left = 100.0;
        values
            .iter()
            .map(|&v| {
                let take = v.min(left);
                left -= take;
                take
            })
            .collect()
    } else {
        values.iter().map(|&v| v * 100.0 / total).collect()
    };
    let shares = to_basis_points(&percents);
    let degraded = total < 100.0;
    let panic = health
        .iter()
        .zip(&shares)
        .map(|(&h, &s)| degraded && s > 0 && h.checked_percent() < f64::from(p.panic_threshold_percent))
        .collect();
    Loads { shares, panic }
}

/// Percentages (adding up to 100) as basis points adding up to exactly
/// [`ALL`]: largest remainders get the rounding.
fn to_basis_points(percents: &[f64]) -> Vec<u32> {
    let exact: Vec<f64> = percents.iter().map(|p| p * f64::from(ALL) / 100.0).collect();
    let mut shares: Vec<u32> = exact.iter().map(|e| e.floor().max(0.0) as u32).collect();
    let given: u32 = shares.iter().sum();
    let mut order: Vec<usize> = (0..shares.len()).filter(|&i| exact[i] > 0.0).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &i in order.iter().cycle().take(ALL.saturating_sub(given) as usize) {
        shares[i] += 1;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(healthy: u64, total: u64) -> LevelHealth {
        LevelHealth {
            healthy_weight: healthy,
            total_weight: total,
            drained_weight: 0,
        }
    }

    /// Damping of `failback` seconds then a `ramp` of seconds.
    fn damped(failback: u64, ramp: u64) -> Params {
        Params {
            failback_after: Duration::from_secs(failback),
            ramp: Duration::from_secs(ramp),
            ..Params::DEFAULT
        }
    }

    /// Seconds from now, as instants.
    fn clock() -> impl Fn(u64) -> Instant {
        let t0 = Instant::now();
        move |secs| t0 + Duration::from_secs(secs)
    }

    const NO_DAMPING: Params = Params {
        failback_after: Duration::ZERO,
        ramp: Duration::ZERO,
        ..Params::DEFAULT
    };

    fn shares(params: Params, health: &[LevelHealth]) -> Vec<u32> {
        Failover::new(params, health.len())
            .update(Instant::now(), health)
            .shares
    }

    #[test]
    fn a_healthy_first_level_takes_everything() {
        assert_eq!(shares(NO_DAMPING, &[h(3, 3), h(2, 2)]), [ALL, 0]);
    }

    #[test]
    fn one_of_three_down_spills_about_seven_percent() {
        // 2/3 × 1.4 = 93.3%: the rest goes to the next level.
        assert_eq!(shares(NO_DAMPING, &[h(2, 3), h(2, 2)]), [9333, 667]);
        let strict = Params {
            mode: Mode::Strict,
            ..NO_DAMPING
        };
        assert_eq!(shares(strict, &[h(2, 3), h(2, 2)]), [ALL, 0]);
    }

    #[test]
    fn a_dark_level_hands_everything_over() {
        assert_eq!(shares(NO_DAMPING, &[h(0, 3), h(2, 2)]), [0, ALL]);
        let strict = Params {
            mode: Mode::Strict,
            ..NO_DAMPING
        };
        assert_eq!(shares(strict, &[h(0, 3), h(1, 2)]), [0, ALL]);
    }

    #[test]
    fn degraded_levels_share_in_proportion_and_panic_below_the_threshold() {
        // 1/3 × 1.4 = 46.7 and 1/2 × 1.4 = 70: together 116.7, so a cascade.
        let loads = Failover::new(NO_DAMPING, 2).update(Instant::now(), &[h(1, 3), h(1, 2)]);
        assert_eq!(loads.shares, [4667, 5333]);
        assert_eq!(loads.panic, [false, false], "together they can take it all");
        // 1/4 × 1.4 = 35 and nothing else: scaled up to everything, in panic.
        let loads = Failover::new(NO_DAMPING, 2).update(Instant::now(), &[h(1, 4), h(0, 2)]);
        assert_eq!(loads.shares, [ALL, 0]);
        assert_eq!(loads.panic, [true, false]);
        // 3/5 × 1.4 = 84: degraded, but not under the threshold.
        let loads = Failover::new(NO_DAMPING, 1).update(Instant::now(), &[h(3, 5)]);
        assert_eq!(loads.panic, [false]);
    }

    #[test]
    fn drained_endpoints_take_capacity_away_but_never_cause_panic() {
        // One healthy, one failed, one drained: 1/3 × 1.4 = 46.7, degraded.
        let level = LevelHealth {
            drained_weight: 1,
            ..h(1, 3)
        };
        let loads = Failover::new(NO_DAMPING, 1).update(Instant::now(), &[level]);
        assert_eq!(loads.shares, [ALL]);
        // The checks see one of two up: 50%, not under the threshold, so
        // the failed endpoint gets no traffic.
        assert_eq!(loads.panic, [false]);
        // The same without the drain is one of three up: panic.
        let loads = Failover::new(NO_DAMPING, 1).update(Instant::now(), &[h(1, 3)]);
        assert_eq!(loads.panic, [true]);
        // With a second level, the drain still moves traffic there.
        let loads = Failover::new(NO_DAMPING, 2).update(Instant::now(), &[level, h(2, 2)]);
        assert_eq!(loads.shares, [4667, 5333]);
    }

    #[test]
    fn no_healthy_endpoint_anywhere_takes_nothing() {
        let loads = Failover::new(NO_DAMPING, 2).update(Instant::now(), &[h(0, 3), h(0, 2)]);
        assert_eq!(loads.shares, [0, 0]);
        assert!(!loads.any());
        assert_eq!(loads.pick(7), None);
    }

    #[test]
    fn failback_waits_then_ramps_linearly() {
        let p = damped(10, 20);
        let s = clock();
        let mut f = Failover::new(p, 2);
        let up = [h(3, 3), h(2, 2)];
        let down = [h(0, 3), h(2, 2)];
        assert_eq!(f.update(s(0), &up).shares, [ALL, 0]);
        // Failover is immediate.
        assert_eq!(f.update(s(1), &down).shares, [0, ALL]);
        // Recovered at 2 s: nothing moves during the 10 s dwell.
        assert_eq!(f.update(s(2), &up).shares, [0, ALL]);
        assert!(f.is_recovering());
        assert_eq!(f.update(s(11), &up).shares, [0, ALL]);
        // Then a linear ramp over 20 s: a quarter at 5 s in, half at 10 s.
        assert_eq!(f.update(s(17), &up).shares, [2500, 7500]);
        assert_eq!(f.update(s(22), &up).shares, [5000, 5000]);
        assert_eq!(f.update(s(32), &up).shares, [ALL, 0]);
        assert!(!f.is_recovering());
    }

    #[test]
    fn a_relapse_during_failback_restarts_the_wait() {
        let p = damped(10, 10);
        let s = clock();
        let mut f = Failover::new(p, 2);
        let up = [h(3, 3), h(2, 2)];
        let down = [h(0, 3), h(2, 2)];
        f.update(s(0), &up);
        f.update(s(1), &down);
        f.update(s(2), &up);
        assert_eq!(f.update(s(17), &up).shares, [5000, 5000]);
        // Down again: traffic leaves at once, and the next rise waits anew.
        assert_eq!(f.update(s(18), &down).shares, [0, ALL]);
        assert_eq!(f.update(s(19), &up).shares, [0, ALL]);
        assert_eq!(f.update(s(28), &up).shares, [0, ALL]);
        assert_eq!(f.update(s(34), &up).shares, [5000, 5000]);
    }

    #[test]
    fn a_partial_relapse_restarts_the_wait_too() {
        let p = damped(10, 10);
        let s = clock();
        let mut f = Failover::new(p, 2);
        let up = [h(3, 3), h(2, 2)];
        let down = [h(0, 3), h(2, 2)];
        let partly = [h(1, 3), h(2, 2)];
        f.update(s(0), &up);
        f.update(s(1), &down);
        f.update(s(2), &up);
        // Partly down during the wait: still above what traffic follows (0),
        // but the wait starts again from 5 s.
        assert_eq!(f.update(s(5), &partly).shares, [0, ALL]);
        assert_eq!(f.update(s(6), &up).shares, [0, ALL]);
        assert_eq!(f.update(s(14), &up).shares, [0, ALL], "12 s after the first rise");
        assert_eq!(
            f.update(s(20), &up).shares,
            [5000, 5000],
            "half way through the new ramp"
        );
    }

    #[test]
    fn damping_never_withholds_what_no_other_level_can_take() {
        let p = damped(60, 60);
        let t0 = Instant::now();
        let mut f = Failover::new(p, 2);
        f.update(t0, &[h(0, 3), h(0, 2)]);
        // The first level comes back while the second is still dark: it
        // takes everything at once rather than waiting out the dwell.
        let loads = f.update(t0 + Duration::from_secs(1), &[h(3, 3), h(0, 2)]);
        assert_eq!(loads.shares, [ALL, 0]);
    }

    #[test]
    fn reloaded_levels_keep_their_damping_by_priority() {
        let p = damped(10, 0);
        let t0 = Instant::now();
        let mut f = Failover::new(p, 2);
        f.update(t0, &[h(3, 3), h(2, 2)]);
        f.update(t0 + Duration::from_secs(1), &[h(0, 3), h(2, 2)]);
        f.update(t0 + Duration::from_secs(2), &[h(3, 3), h(2, 2)]);
        // A reload adds a level at priority 5 behind the other two.
        let mut g = Failover::carried(p, &[0, 1, 5], &f, &[0, 1]);
        let health = [h(3, 3), h(2, 2), h(1, 1)];
        assert_eq!(g.update(t0 + Duration::from_secs(3), &health).shares, [0, ALL, 0]);
        assert_eq!(
            g.update(t0 + Duration::from_secs(12), &health).shares,
            [ALL, 0, 0]
        );
    }

    #[test]
    fn picking_follows_the_shares() {
        let loads = Loads {
            shares: vec![2500, 0, 7500],
            panic: vec![false; 3],
        };
        let mut counts = [0u32; 3];
        for e in 0..u64::from(ALL) {
            counts[loads.pick(e).expect("some level")] += 1;
        }
        assert_eq!(counts, [2500, 0, 7500]);
    }

    fn health_strategy() -> impl Strategy<Value = Vec<LevelHealth>> {
        proptest::collection::vec((1u64..20).prop_flat_map(|total| (0..=total, Just(total))), 1..5)
            .prop_map(|v| v.into_iter().map(|(healthy, total)| h(healthy, total)).collect())
    }

    proptest! {
        #[test]
        fn shares_add_up_to_all_or_nothing(health in health_strategy(), strict: bool) {
            let params = Params { mode: if strict { Mode::Strict } else { Mode::Proportional }, ..NO_DAMPING };
            let shares = shares(params, &health);
            let sum: u32 = shares.iter().sum();
            let any_healthy = health.iter().any(|l| l.healthy_weight > 0);
            prop_assert_eq!(sum, if any_healthy { ALL } else { 0 });
        }

        #[test]
        fn a_level_gets_more_as_it_gets_healthier(health in health_strategy(), level in 0usize..4) {
            let level = level % health.len();
            let before = shares(NO_DAMPING, &health);
            let mut better = health.clone();
            if better[level].healthy_weight < better[level].total_weight {
                better[level].healthy_weight += 1;
            }
            let after = shares(NO_DAMPING, &better);
            prop_assert!(after[level] + 1 >= before[level], "{before:?} -> {after:?}");
            // Every other level gets the same or less.
            for i in (0..health.len()).filter(|&i| i != level) {
                prop_assert!(after[i] <= before[i] + 1, "level {i}: {before:?} -> {after:?}");
            }
        }

        #[test]
        fn damped_shares_still_add_up(steps in proptest::collection::vec((health_strategy(), 0u64..5000), 1..30)) {
            let p = Params { failback_after: Duration::from_secs(2), ramp: Duration::from_secs(3), ..Params::DEFAULT };
            let n = steps[0].0.len();
            let mut f = Failover::new(p, n);
            let mut now = Instant::now();
            for (health, advance_ms) in steps {
                let mut health = health;
                health.resize(n, h(1, 1));
                now += Duration::from_millis(advance_ms);
                let loads = f.update(now, &health);
                let sum: u32 = loads.shares.iter().sum();
                let any_healthy = health.iter().any(|l| l.healthy_weight > 0);
                prop_assert_eq!(sum, if any_healthy { ALL } else { 0 });
                // Traffic never goes to a level with nothing healthy.
                for (l, s) in health.iter().zip(&loads.shares) {
                    prop_assert!(l.healthy_weight > 0 || *s == 0);
                }
            }
        }
    }
}
