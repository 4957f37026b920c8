//! The watch task of one upstream: it turns its endpoints' health into the
//! share of traffic each priority level takes, ends ejections whose time is
//! up, and runs the periodic outlier statistics.
//!
//! One task per upstream of the current config snapshot, on the gateway's
//! tracker. It holds only a weak reference to its upstream and ends when a
//! reload retires the upstream (the new snapshot's upstream has its own
//! task), when nothing uses it any more, or when the gateway drains. It
//! sleeps until something can have changed: an endpoint's health (checkers
//! and ejections wake it), the end of an ejection, the next step of a
//! failback ramp, the next outlier interval.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use levee_core::failover::{LevelHealth, Loads};
use levee_core::outlier::{Detector, ejection_time, may_eject, success_rate_outliers};
use levee_core::sync::lock;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Upstream, millis};
use crate::events::{EventKind, LevelShare};

/// How often the loads are recomputed while a failback ramps.
const RAMP_STEP: Duration = Duration::from_millis(100);
/// The longest the task sleeps with nothing scheduled.
const IDLE_WAKE: Duration = Duration::from_secs(60);

pub(crate) async fn run(upstream: Weak<Upstream>, stop: CancellationToken) {
    let mut next_interval: Option<Instant> = None;
    loop {
        let (changed, wake) = {
            let Some(u) = upstream.upgrade() else { return };
            if u.retired.load(Ordering::Acquire) {
                return;
            }
            let now = Instant::now();
            if let Some(interval) = u.outlier_interval() {
                let due = *next_interval.get_or_insert(now + interval);
                if now >= due {
                    u.outlier_tick(now);
                    next_interval = Some(now + interval);
                }
            }
            let mut wake = u.refresh(now);
            if let Some(n) = next_interval {
                wake = wake.min(n);
            }
            (u.changed.clone(), wake)
        };
        // A change signalled while refreshing left a permit: no wake is lost.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed.notified() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

impl Upstream {
    /// Recomputes the levels' loads from the endpoints' state at `now` and
    /// publishes them; returns when to do it again at the latest.
    pub fn refresh(&self, now: Instant) -> Instant {
        let now_ms = millis(now);
        let mut wake = now + IDLE_WAKE;
        for e in &self.endpoints {
            let Some(until) = e.state.ejected_until() else {
                continue;
            };
            if now_ms >= until {
                if e.state.end_ejection(until) {
                    tracing::info!(
                        upstream = %self.name,
                        region = %e.region,
                        endpoint = %e.address,
                        "endpoint back from ejection",
                    );
                    self.events.publish(EventKind::EndpointReturned {
                        upstream: self.name.to_string(),
                        region: e.region.to_string(),
                        endpoint: e.address.to_string(),
                    });
                }
            } else {
                wake = wake.min(now + Duration::from_millis(until - now_ms));
            }
        }
        let health = self.level_health(|i| self.endpoints[i].state.is_available(now_ms));
        self.publish_region_health(now_ms);
        let mut failover = lock(&self.failover);
        let loads = failover.update(now.into_std(), &health);
        if failover.is_recovering() {
            wake = wake.min(now + RAMP_STEP);
        }
        drop(failover);
        let old = self.loads.load_full();
        if *old != loads {
            for (i, &share) in loads.shares.iter().enumerate() {
                if let Some(g) = self.metrics.share.get(i) {
                    g.set(f64::from(share) / f64::from(levee_core::failover::ALL));
                }
                if let Some(g) = self.metrics.panic.get(i) {
                    g.set(i64::from(loads.panic[i]));
                }
            }
            // Published first, announced after: whoever an event wakes (the
            // alert evaluator, the dashboard) reads the new loads.
            let loads = std::sync::Arc::new(loads);
            self.loads.store(loads.clone());
            // A new upstream's first loads are not a change anyone made.
            let first = old.shares.is_empty();
            if shape(&old) != shape(&loads) && !first {
                tracing::info!(
                    upstream = %self.name,
                    shares = %describe(&self.priorities, &loads),
                    "traffic moved between priority levels",
                );
                self.events.publish(EventKind::LoadsChanged {
                    upstream: self.name.to_string(),
                    shares: self.level_shares(&loads),
                });
            }
            self.publish_failover(&loads);
        }
        wake
    }

    /// The share of each level, for events and the API.
    pub fn level_shares(&self, loads: &Loads) -> Vec<LevelShare> {
        self.priorities
            .iter()
            .zip(&loads.shares)
            .zip(&loads.panic)
            .map(|((&priority, &share), &panic)| LevelShare {
                priority,
                share: f64::from(share) / f64::from(levee_core::failover::ALL),
                panic,
            })
            .collect()
    }

    /// Failover is active while the most preferred level takes less than
    /// all traffic (none at all when no endpoint is available anywhere).
    fn publish_failover(&self, loads: &Loads) {
        let active = loads
            .shares
            .first()
            .is_none_or(|&s| s < levee_core::failover::ALL);
        self.metrics.failover_active.set(i64::from(active));
        if self.failover_active.swap(active, Ordering::Relaxed) == active {
            return;
        }
        let upstream = self.name.to_string();
        if active {
            tracing::warn!(upstream = %self.name, shares = %describe(&self.priorities, loads), "failover started");
            self.events.publish(EventKind::FailoverStarted {
                upstream,
                shares: self.level_shares(loads),
            });
        } else {
            tracing::info!(upstream = %self.name, "failover ended: all traffic is on the first level");
            self.events.publish(EventKind::FailoverEnded { upstream });
        }
    }

    /// Each region's available share of its endpoints' weight, drained
    /// endpoints left out (a drain is an operator's choice, not a fault).
    pub fn region_health(&self, now_ms: u64) -> Vec<f64> {
        self.regions
            .iter()
            .map(|(_, _, members)| {
                let (mut healthy, mut total) = (0u64, 0u64);
                for &i in members {
                    let e = &self.endpoints[i];
                    if e.state.is_drained() {
                        continue;
                    }
                    total += u64::from(e.weight);
                    if e.state.is_available(now_ms) {
                        healthy += u64::from(e.weight);
                    }
                }
                if total == 0 {
                    1.0
                } else {
                    healthy as f64 / total as f64
                }
            })
            .collect()
    }

    fn publish_region_health(&self, now_ms: u64) {
        for (gauge, ratio) in self.metrics.region_healthy.iter().zip(self.region_health(now_ms)) {
            gauge.set(ratio);
        }
    }

    /// Each level's weight of endpoints that `available` accepts, and in all.
    pub fn level_health(&self, available: impl Fn(usize) -> bool) -> Vec<LevelHealth> {
        self.selector
            .levels()
            .map(|members| {
                let mut level = LevelHealth {
                    healthy_weight: 0,
                    total_weight: 0,
                    drained_weight: 0,
                };
                for &i in members {
                    let weight = u64::from(self.endpoints[i].weight);
                    level.total_weight += weight;
                    if available(i) {
                        level.healthy_weight += weight;
                    }
                    if self.endpoints[i].state.is_drained() {
                        level.drained_weight += weight;
                    }
                }
                level
            })
            .collect()
    }

    /// Takes endpoint `index` out of rotation for what `detector` saw, if
    /// the ejection limits allow.
    pub fn consider_ejection(&self, index: usize, detector: Detector, now: Instant) {
        let Some(outlier) = &self.outlier else { return };
        let p = &outlier.params;
        let _deciding = lock(&self.counters.ejecting);
        let now_ms = millis(now);
        let endpoint = &self.endpoints[index];
        if endpoint.state.is_ejected(now_ms) {
            return;
        }
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.state.is_ejected(now_ms))
            .count();
        let region_left = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|&(i, e)| i != index && e.region == endpoint.region && e.state.is_available(now_ms))
            .count();
        if !may_eject(p, self.endpoints.len(), ejected, region_left) {
            // The endpoint starts a new streak rather than asking again on
            // every failure while the limits hold.
            endpoint.state.reset_streaks();
            tracing::debug!(
                upstream = %self.name,
                endpoint = %endpoint.address,
                detector = detector.as_str(),
                "ejection skipped: the upstream's ejection limits are reached",
            );
            return;
        }
        let nth = endpoint.state.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = ejection_time(p, nth, fastrand::u64(..));
        endpoint.state.reset_streaks();
        endpoint.state.eject(millis(now + duration));
        let counter = match detector {
            Detector::Consecutive5xx => 0,
            Detector::ConsecutiveGatewayFailure => 1,
            Detector::SuccessRate => 2,
        };
        endpoint.state.metrics.ejections[counter].inc();
        self.events.publish(EventKind::EndpointEjected {
            upstream: self.name.to_string(),
            region: endpoint.region.to_string(),
            endpoint: endpoint.address.to_string(),
            detector: detector.as_str(),
            seconds: duration.as_secs_f64(),
        });
        tracing::warn!(
            upstream = %self.name,
            region = %endpoint.region,
            endpoint = %endpoint.address,
            detector = detector.as_str(),
            ejection = nth,
            seconds = duration.as_secs_f64(),
            "endpoint ejected",
        );
    }

    /// Closes one idle pooled connection of the upstream's endpoints, if
    /// any: idle connections left on endpoints that no longer get traffic
    /// (after a failover) must not hold the connection limit.
    pub fn close_an_idle_connection(&self) -> bool {
        self.endpoints.iter().any(|e| e.state.pool.close_idle())
    }

    /// The period of the outlier statistics, when detection is on.
    fn outlier_interval(&self) -> Option<Duration> {
        let p = &self.outlier.as_ref()?.params;
        Some(p.success_rate.map_or(p.base_ejection_time, |s| s.interval))
    }

    /// One outlier interval: success-rate outliers are ejected, and the
    /// ejection count of every endpoint not ejected decays by one.
    fn outlier_tick(&self, now: Instant) {
        let Some(outlier) = &self.outlier else { return };
        let volumes: Vec<_> = self.endpoints.iter().map(|e| e.state.take_volume()).collect();
        if let Some(sr) = &outlier.params.success_rate {
            for i in success_rate_outliers(sr, &volumes) {
                self.consider_ejection(i, Detector::SuccessRate, now);
            }
        }
        let now_ms = millis(now);
        for e in &self.endpoints {
            if !e.state.is_ejected(now_ms) {
                let _ = e
                    .state
                    .ejections
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            }
        }
    }
}

/// Which levels take traffic and which are in panic: what is worth a log
/// line when it changes (a ramp changes the shares every step).
fn shape(loads: &Loads) -> Vec<(bool, bool)> {
    loads
        .shares
        .iter()
        .zip(&loads.panic)
        .map(|(&s, &p)| (s > 0, p))
        .collect()
}

/// `priority 0: 93.3%, priority 1: 6.7% (panic)`
fn describe(priorities: &[u32], loads: &Loads) -> String {
    if !loads.any() {
        return "none: no endpoint is healthy".to_string();
    }
    let parts: Vec<String> = priorities
        .iter()
        .zip(&loads.shares)
        .zip(&loads.panic)
        .map(|((p, &s), &panic)| {
            let share = f64::from(s) / 100.0;
            let flag = if panic { " (panic)" } else { "" };
            format!("priority {p}: {share:.1}%{flag}")
        })
        .collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    //! The task on tokio's paused clock: time moves only when every task
    //! waits, straight to the next timer, so the dwell, the ramp's steps
    //! and an ejection's end are asserted at exact instants.

    use std::sync::Arc;

    use levee_core::failover::ALL;

    use super::*;
    use crate::events::Events;
    use crate::metrics::Metrics;
    use crate::snapshot::Snapshot;

    const MS: Duration = Duration::from_millis(1);

    /// Upstream `app`: region `primary` (priority 0, two endpoints) and
    /// region `secondary` (priority 1, one), with `failover` keys.
    fn upstream(failover: &str) -> (Arc<Upstream>, Arc<Events>) {
        let text = format!(
            "[listener.main]\naddress = \"127.0.0.1:0\"\n\n[[route]]\nname = \"all\"\nupstream = \"app\"\n\n\
             [upstream.app.region.primary]\npriority = 0\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n\
             [upstream.app.region.secondary]\npriority = 1\nendpoints = [\"127.0.0.1:3\"]\n\
             [upstream.app.failover]\n{failover}\n"
        );
        let config = levee_config::parse(&text).expect("valid config");
        let events = Arc::new(Events::new());
        let snapshot = Snapshot::build(
            Arc::new(config),
            None,
            &Metrics::new(),
            Default::default(),
            None,
            &events,
        );
        (snapshot.upstreams[0].clone(), events)
    }

    /// Starts the watch task; cancel the token to stop it.
    fn watch(u: &Arc<Upstream>) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(Arc::downgrade(u), stop.clone()));
        (stop, task)
    }

    /// Lets the woken task run, without moving the clock.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn shares(u: &Upstream) -> Vec<u32> {
        u.loads.load().shares.clone()
    }

    fn set_region(u: &Upstream, region: &str, healthy: bool) {
        for e in u.endpoints.iter().filter(|e| e.region.as_str() == region) {
            e.state.set_healthy(healthy);
        }
    }

    /// The kinds of the events published so far.
    fn event_names(events: &Events) -> Vec<&'static str> {
        events.subscribe(0).0.iter().map(|e| e.kind.name()).collect()
    }

    /// The primary's share sampled half way between the task's 100 ms
    /// steps, `steps` times from `from`.
    async fn primary_share_by_step(u: &Upstream, from: Instant, steps: u64) -> Vec<u32> {
        let mut seen = Vec::new();
        for step in 0..steps {
            tokio::time::sleep_until(from + RAMP_STEP * step as u32 + 50 * MS).await;
            seen.push(shares(u)[0]);
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn failover_is_at_once_and_failback_waits_the_dwell_then_ramps_every_step() {
        let (u, events) = upstream("failback_after = \"2s\"\nramp = \"1s\"");
        let (stop, task) = watch(&u);
        settle().await;
        assert_eq!(shares(&u), [ALL, 0]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(shares(&u), [ALL, 0], "nothing moves with time alone");

        set_region(&u, "primary", false);
        settle().await;
        assert_eq!(shares(&u), [0, ALL], "failover without any time passing");
        assert_eq!(event_names(&events), ["loads_changed", "failover_started"]);

        tokio::time::sleep(Duration::from_secs(10)).await;
        set_region(&u, "primary", true);
        let back = Instant::now();
        settle().await;
        // Nothing for the 2 s dwell, then a tenth of the ramp every 100 ms.
        let seen = primary_share_by_step(&u, back, 35).await;
        let expected: Vec<u32> = (0..35u32).map(|s| s.saturating_sub(20).min(10) * 1000).collect();
        assert_eq!(seen, expected);
        assert!(!u.failover.lock().expect("lock").is_recovering());
        assert_eq!(
            event_names(&events),
            [
                "loads_changed",
                "failover_started",
                "loads_changed",
                "loads_changed",
                "failover_ended"
            ],
            "the ramp's steps are not events: only where traffic goes is"
        );
        stop.cancel();
        task.await.expect("the task ends");
    }

    #[tokio::test(start_paused = true)]
    async fn a_relapse_mid_ramp_fails_over_at_once_and_the_dwell_starts_over() {
        let (u, _events) = upstream("failback_after = \"2s\"\nramp = \"1s\"");
        let (stop, task) = watch(&u);
        set_region(&u, "primary", false);
        settle().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        set_region(&u, "primary", true);
        let back = Instant::now();
        tokio::time::sleep_until(back + 2550 * MS).await;
        assert_eq!(shares(&u), [5000, 5000], "half way through the ramp");

        set_region(&u, "primary", false);
        settle().await;
        assert_eq!(shares(&u), [0, ALL], "down again: traffic leaves at once");
        tokio::time::sleep(Duration::from_millis(450)).await;
        set_region(&u, "primary", true);
        let again = Instant::now();
        let seen = primary_share_by_step(&u, again, 32).await;
        let expected: Vec<u32> = (0..32u32).map(|s| s.saturating_sub(20).min(10) * 1000).collect();
        assert_eq!(seen, expected, "a whole new dwell, then the whole ramp");
        stop.cancel();
        task.await.expect("the task ends");
    }

    #[tokio::test(start_paused = true)]
    async fn half_a_region_back_ramps_to_its_share_and_no_further() {
        let (u, _events) = upstream("failback_after = \"1s\"\nramp = \"500ms\"");
        let (stop, task) = watch(&u);
        set_region(&u, "primary", false);
        settle().await;
        assert_eq!(shares(&u), [0, ALL]);
        // One of two back: 1/2 × 1.4 = 70% for the primary, after the wait.
        u.endpoints[0].state.set_healthy(true);
        let back = Instant::now();
        tokio::time::sleep_until(back + 950 * MS).await;
        assert_eq!(shares(&u), [0, ALL]);
        tokio::time::sleep_until(back + 1250 * MS).await;
        assert_eq!(shares(&u), [2800, 7200], "two fifths of the ramp");
        tokio::time::sleep_until(back + 1550 * MS).await;
        assert_eq!(shares(&u), [7000, 3000]);
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(shares(&u), [7000, 3000]);
        stop.cancel();
        task.await.expect("the task ends");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejection_ends_on_time_with_nothing_else_to_wake_the_task() {
        // Times are `millis` of tokio's clock: set its origin before ours.
        millis(Instant::now());
        let (u, events) = upstream("failback_after = \"0s\"\nramp = \"0s\"");
        let (stop, task) = watch(&u);
        settle().await;
        let start = Instant::now();
        for e in &u.endpoints[..2] {
            e.state.eject(millis(start + Duration::from_secs(3)));
        }
        settle().await;
        assert_eq!(shares(&u), [0, ALL]);
        tokio::time::sleep_until(start + 2999 * MS).await;
        assert_eq!(shares(&u), [0, ALL], "still ejected 1 ms before the end");
        tokio::time::sleep_until(start + 3001 * MS).await;
        assert_eq!(shares(&u), [ALL, 0], "back at the end, without a wake-up call");
        let returned = event_names(&events)
            .into_iter()
            .filter(|n| *n == "endpoint_returned")
            .count();
        assert_eq!(returned, 2);
        stop.cancel();
        task.await.expect("the task ends");
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_ends_when_its_upstream_is_retired() {
        let (u, _events) = upstream("");
        let (_stop, task) = watch(&u);
        settle().await;
        u.retired.store(true, Ordering::Release);
        u.changed.notify_one();
        settle().await;
        assert!(task.is_finished());
    }
}
