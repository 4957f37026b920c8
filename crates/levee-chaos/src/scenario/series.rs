//! Numbers over outcomes that the verdict, the reports and the progress
//! line share: percentiles and the per-second series.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::scenario::model::Outcome;

/// The nearest-rank percentile `q` (0 to 1) of sorted values; `None` when
/// there are none.
pub fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The sorted latencies of the outcomes.
pub fn latencies<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> Vec<Duration> {
    let mut v: Vec<Duration> = outcomes.map(|o| o.latency).collect();
    v.sort_unstable();
    v
}

/// One second of the run, by intended send time. Flood requests are
/// counted apart and left out of everything else.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Second {
    /// Seconds from the start of the load.
    pub second: u64,
    pub requests: u64,
    /// Requests not answered 2xx.
    pub errors: u64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    /// Requests answered by each region (any status).
    pub regions: BTreeMap<String, u64>,
    pub flood: u64,
}

impl Second {
    /// The share of this second's requests each region answered.
    pub fn shares(&self) -> BTreeMap<String, f64> {
        self.regions
            .iter()
            .map(|(r, n)| (r.clone(), *n as f64 / self.requests.max(1) as f64))
            .collect()
    }
}

/// The run second by second, from 0 to the last second with a request or
/// `duration`, whichever is later.
pub fn per_second(outcomes: &[Outcome], duration: Duration) -> Vec<Second> {
    let last = outcomes.iter().map(|o| o.at.as_secs()).max().unwrap_or(0);
    let end = (duration.as_secs_f64().ceil() as u64).saturating_sub(1);
    let seconds = last.max(end).saturating_add(1);
    let mut out: Vec<Second> = (0..seconds)
        .map(|second| Second {
            second,
            ..Second::default()
        })
        .collect();
    let mut latency: Vec<Vec<Duration>> = vec![Vec::new(); out.len()];
    for o in outcomes {
        let i = o.at.as_secs() as usize;
        let s = &mut out[i];
        if o.flood {
            s.flood += 1;
            continue;
        }
        s.requests += 1;
        if !o.succeeded() {
            s.errors += 1;
        }
        if let Some(r) = &o.region {
            *s.regions.entry(r.clone()).or_default() += 1;
        }
        latency[i].push(o.latency);
    }
    for (s, mut l) in out.iter_mut().zip(latency) {
        l.sort_unstable();
        s.p50 = percentile(&l, 0.5);
        s.p99 = percentile(&l, 0.99);
    }
    out
}
