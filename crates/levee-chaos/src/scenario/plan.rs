//! The schedule (`schedule`: the faults in time order, each `for` adding
//! its restore) and the open-loop load (`plan`: `rate` requests a second,
//! evenly spaced, methods drawn from the scenario's seed).

use std::time::Duration;

use crate::scenario::model::{Action, Planned, Run, Scenario, Selector, Step};

/// The steps in time order. Steps at the same instant keep file order,
/// except that a restore comes before a fault: a fault that ends at 10s
/// is over before one that starts at 10s begins.
pub fn schedule(s: &Scenario) -> Vec<Step> {
    // (at, 0 = restore / 1 = fault, fault index)
    let mut keys: Vec<(Duration, u8, usize)> = Vec::new();
    for (i, f) in s.faults.iter().enumerate() {
        keys.push((f.at, 1, i));
        if let Some(l) = f.lasts {
            keys.push((f.at + l, 0, i));
        }
    }
    keys.sort();
    let position = |fault: usize| keys.iter().position(|k| k.1 == 1 && k.2 == fault);
    keys.iter()
        .map(|&(at, kind, i)| {
            let f = &s.faults[i];
            if kind == 1 {
                Step {
                    at,
                    action: f.action.clone(),
                    target: f.target.clone(),
                    label: label(&f.action, &f.target),
                    restores: None,
                }
            } else {
                Step {
                    at,
                    action: Action::Restore,
                    target: f.target.clone(),
                    label: restore_label(&f.action, &f.target),
                    restores: position(i),
                }
            }
        })
        .collect()
}

/// When each step ran: the time the runner recorded for it (matched by
/// label, the n-th step of a label to its n-th record), else when it was
/// planned.
pub fn as_run(steps: &[Step], run: &Run) -> Vec<Duration> {
    steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let nth = steps[..i].iter().filter(|s| s.label == step.label).count();
            run.steps
                .iter()
                .filter(|(_, l)| *l == step.label)
                .nth(nth)
                .map_or(step.at, |(at, _)| *at)
        })
        .collect()
}

/// `fail region primary`, `latency 300ms endpoint primary-2`, `reload`.
pub fn label(action: &Action, target: &Selector) -> String {
    match target {
        Selector::All => action.to_string(),
        t => format!("{action} {t}"),
    }
}

/// The label of the restore that `for` adds: `restore region primary`,
/// or, for a fault without a target, `end flood 500/s`.
fn restore_label(action: &Action, target: &Selector) -> String {
    match target {
        Selector::All => format!("end {action}"),
        t => format!("restore {t}"),
    }
}

/// The open-loop load: request `i` is due at `i / rate` seconds, for
/// every instant before `duration`; its method is drawn from the weights
/// with a `fastrand::Rng` seeded with the scenario's seed.
pub fn plan(s: &Scenario) -> Plan {
    let rate = u128::from(s.load.rate.max(1));
    let total = s.duration.as_nanos() * rate;
    // Requests at 0, 1/rate, ... strictly before the end.
    let count = total.div_ceil(1_000_000_000) as u64;
    Plan {
        next: 0,
        count,
        rate,
        methods: s.load.methods.clone(),
        rng: fastrand::Rng::with_seed(s.seed),
    }
}

/// The planned requests, in send order (an iterator: a long run is
/// never held in memory whole).
#[derive(Clone, Debug)]
pub struct Plan {
    next: u64,
    count: u64,
    rate: u128,
    methods: Vec<(http::Method, f64)>,
    rng: fastrand::Rng,
}

impl Plan {
    fn method(&mut self) -> http::Method {
        let draw = self.rng.f64();
        let mut sum = 0.0;
        for (m, w) in &self.methods {
            sum += w;
            if draw < sum {
                return m.clone();
            }
        }
        // Rounding left the draw past the last share.
        self.methods.last().map_or(http::Method::GET, |(m, _)| m.clone())
    }
}

impl Iterator for Plan {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        if self.next >= self.count {
            return None;
        }
        let index = self.next;
        self.next += 1;
        let nanos = u128::from(index) * 1_000_000_000 / self.rate;
        Some(Planned {
            index,
            at: Duration::from_nanos(nanos as u64),
            method: self.method(),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.count - self.next).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Plan {}
