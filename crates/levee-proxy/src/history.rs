//! A short in-memory history of every upstream: one point per second for
//! the last ten minutes — requests, server errors, latency, shed requests,
//! retries refused by the budget, and the share of traffic each priority
//! level took — and of every rate limit rule's refusals. The dashboard
//! draws its charts from it and alert rules read their windows from it.
//!
//! The request path only adds to atomic counters ([`Recorder`]); a task of
//! the gateway reads them once a second and keeps the difference. Seconds
//! keep only their non-empty latency buckets, so an idle upstream costs
//! nothing and a busy one a few dozen bytes per second.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use levee_core::stats::Window;
use levee_core::sync::lock;
use serde::Serialize;

use crate::snapshot::Snapshot;

/// Seconds of history kept.
pub const SECONDS: usize = 600;

/// One second of one upstream.
struct Second {
    time_ms: u64,
    requests: u32,
    errors: u32,
    /// Non-empty latency buckets: (bucket, count).
    latency: Box<[(u8, u32)]>,
    shed: u32,
    budget_exhausted: u32,
    /// Per priority level, most preferred first (0 to 1).
    shares: Box<[f32]>,
}

#[derive(Default)]
struct Track {
    /// The cumulative readings of the last sample.
    last: Window,
    last_shed: u64,
    last_budget: u64,
    seconds: VecDeque<Second>,
}

#[derive(Default)]
struct RuleTrack {
    last_limited: u64,
    /// Requests refused per second, newest last.
    seconds: VecDeque<u32>,
}

/// What an upstream did over a window.
#[derive(Debug, Default)]
pub struct Totals {
    pub window: Window,
    pub shed: u64,
    pub budget_exhausted: u64,
    /// Seconds the window really covers (less than asked early on).
    pub seconds: usize,
}

/// What a window of an upstream's history comes to: a point of the
/// history (one second), or an upstream's `stats` in the admin API.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub requests_per_second: f64,
    /// `null` without requests.
    pub error_ratio: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Stats {
    /// Of `window`, which covers `seconds` seconds.
    pub fn of(window: &Window, seconds: f64) -> Stats {
        Stats {
            requests_per_second: window.requests as f64 / seconds,
            error_ratio: window.error_ratio(),
            p50_ms: window.quantile(0.5).map(|q| q * 1e3),
            p99_ms: window.quantile(0.99).map(|q| q * 1e3),
        }
    }
}

/// One point of `GET /api/v1/history`.
#[derive(Debug, Serialize)]
pub struct Point {
    pub time_ms: u64,
    #[serde(flatten)]
    pub stats: Stats,
    pub shares: Vec<f64>,
}

/// Locked once a second by the sampler and on reads by the admin API and
/// alert evaluation; never by the request path, and never across an await.
#[derive(Default)]
pub struct History {
    upstreams: Mutex<HashMap<String, Track>>,
    rules: Mutex<HashMap<String, RuleTrack>>,
}

fn saturate(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl History {
    /// Takes one second's sample of every upstream and rule of `snap`, at
    /// `time_ms` (Unix milliseconds). Upstreams and rules that left the
    /// config are forgotten.
    pub(crate) fn sample(&self, snap: &Snapshot, time_ms: u64) {
        let mut upstreams = lock(&self.upstreams);
        upstreams.retain(|name, _| snap.upstreams.iter().any(|u| u.name().as_str() == name));
        for u in &snap.upstreams {
            let track = upstreams.entry(u.name().to_string()).or_default();
            let now = u.recorder().read();
            let delta = now.since(&track.last);
            let (shed, budget) = u.refused_totals();
            let loads = u.loads();
            let second = Second {
                time_ms,
                requests: saturate(delta.requests),
                errors: saturate(delta.errors),
                latency: delta
                    .latency
                    .iter()
                    .enumerate()
                    .filter(|&(_, &n)| n > 0)
                    .map(|(i, &n)| (i as u8, saturate(n)))
                    .collect(),
                shed: saturate(shed.saturating_sub(track.last_shed)),
                budget_exhausted: saturate(budget.saturating_sub(track.last_budget)),
                shares: loads
                    .shares
                    .iter()
                    .map(|&s| s as f32 / levee_core::failover::ALL as f32)
                    .collect(),
            };
            track.last = now;
            track.last_shed = shed;
            track.last_budget = budget;
            if track.seconds.len() == SECONDS {
                track.seconds.pop_front();
            }
            track.seconds.push_back(second);
        }
        drop(upstreams);
        let mut rules = lock(&self.rules);
        rules.retain(|name, _| snap.rate_limits.iter().any(|r| r.config.name == *name));
        for rule in &snap.rate_limits {
            let track = rules.entry(rule.config.name.clone()).or_default();
            let limited = rule.limited();
            if track.seconds.len() == SECONDS {
                track.seconds.pop_front();
            }
            track
                .seconds
                .push_back(saturate(limited.saturating_sub(track.last_limited)));
            track.last_limited = limited;
        }
    }

    /// What `upstream` did over its last `seconds` seconds.
    pub fn totals(&self, upstream: &str, seconds: usize) -> Totals {
        let upstreams = lock(&self.upstreams);
        let mut totals = Totals::default();
        let Some(track) = upstreams.get(upstream) else {
            return totals;
        };
        for s in track.seconds.iter().rev().take(seconds) {
            totals.window.requests += u64::from(s.requests);
            totals.window.errors += u64::from(s.errors);
            for &(i, n) in s.latency.iter() {
                totals.window.latency[usize::from(i)] += u64::from(n);
            }
            totals.shed += u64::from(s.shed);
            totals.budget_exhausted += u64::from(s.budget_exhausted);
            totals.seconds += 1;
        }
        totals
    }

    /// Requests `rule` refused over its last `seconds` seconds, and the
    /// seconds that covers.
    pub fn limited(&self, rule: &str, seconds: usize) -> (u64, usize) {
        let rules = lock(&self.rules);
        rules.get(rule).map_or((0, 0), |t| {
            let recent = t.seconds.iter().rev().take(seconds);
            (recent.clone().map(|&n| u64::from(n)).sum(), recent.len())
        })
    }

    /// One point per second of `upstream`, oldest first.
    pub fn points(&self, upstream: &str) -> Vec<Point> {
        let upstreams = lock(&self.upstreams);
        let Some(track) = upstreams.get(upstream) else {
            return Vec::new();
        };
        track
            .seconds
            .iter()
            .map(|s| {
                let mut w = Window {
                    requests: u64::from(s.requests),
                    errors: u64::from(s.errors),
                    ..Window::default()
                };
                for &(i, n) in s.latency.iter() {
                    w.latency[usize::from(i)] = u64::from(n);
                }
                Point {
                    time_ms: s.time_ms,
                    stats: Stats::of(&w, 1.0),
                    shares: s.shares.iter().map(|&x| f64::from(x)).collect(),
                }
            })
            .collect()
    }
}
