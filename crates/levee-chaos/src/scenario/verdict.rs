//! `evaluate`: the SLOs of `[slo]` held against what the runner saw, one
//! row each; and the verdict as a text table.

use std::collections::HashMap;
use std::time::Duration;

use crate::scenario::model::{
    Action, Outcome, Row, RowState, Run, Scenario, Selector, Verdict, human, is_idempotent,
};
use crate::scenario::plan::{as_run, schedule};
use crate::scenario::series::{latencies, percentile};

/// Why lost and duplicated cannot be told against a running gateway.
pub const NEEDS_LEDGERS: &str = "needs the demo target's ledgers";

/// One row per SLO set in the file, in `[slo]`'s order, and always rows
/// for lost and duplicated when the backends' ledgers are known. Flood
/// requests count for none of them.
pub fn evaluate(s: &Scenario, run: &Run) -> Verdict {
    let load: Vec<&Outcome> = run.outcomes.iter().filter(|o| !o.flood).collect();
    let mut rows = Vec::new();
    if let Some(limit) = s.slo.success_ratio {
        rows.push(ratio("success_ratio", &load, limit, "no requests"));
    }
    if let Some(limit) = s.slo.success_ratio_idempotent {
        let idempotent: Vec<&Outcome> = load
            .iter()
            .copied()
            .filter(|o| is_idempotent(&o.method))
            .collect();
        rows.push(ratio(
            "success_ratio_idempotent",
            &idempotent,
            limit,
            "no idempotent requests",
        ));
    }
    if let Some(limit) = s.slo.p99 {
        rows.push(p99(&load, limit));
    }
    let processed = run.processed.as_ref();
    if s.slo.max_duplicated.is_some() || processed.is_some() {
        let count = processed.map(|p| duplicated(&load, p));
        rows.push(counted("max_duplicated", count, s.slo.max_duplicated));
    }
    if s.slo.max_lost.is_some() || processed.is_some() {
        let count = processed.map(|p| lost(&load, p));
        rows.push(counted("max_lost", count, s.slo.max_lost));
    }
    if let Some(limit) = s.slo.failover_within {
        rows.push(failover(s, run, &load, limit));
    }
    Verdict { rows }
}

fn row(name: &'static str, measured: String, limit: String, state: RowState) -> Row {
    Row {
        name,
        measured,
        limit,
        state,
    }
}

fn pass(ok: bool) -> RowState {
    if ok { RowState::Pass } else { RowState::Fail }
}

/// A share as a percentage with up to three decimals: `99.95%`.
pub fn percent(v: f64) -> String {
    let s = format!("{:.3}", v * 100.0);
    format!("{}%", s.trim_end_matches('0').trim_end_matches('.'))
}

fn ratio(name: &'static str, outcomes: &[&Outcome], limit: f64, empty: &str) -> Row {
    let limit_text = format!(">= {}", percent(limit));
    if outcomes.is_empty() {
        return row(name, "-".into(), limit_text, RowState::NotEvaluated(empty.into()));
    }
    let ok = outcomes.iter().filter(|o| o.succeeded()).count();
    let measured = ok as f64 / outcomes.len() as f64;
    let text = format!("{} ({ok} of {})", percent(measured), outcomes.len());
    row(name, text, limit_text, pass(measured >= limit))
}

fn p99(outcomes: &[&Outcome], limit: Duration) -> Row {
    let limit_text = format!("<= {}", human(limit));
    match percentile(&latencies(outcomes.iter().copied()), 0.99) {
        None => row(
            "p99",
            "-".into(),
            limit_text,
            RowState::NotEvaluated("no requests".into()),
        ),
        Some(p) => row("p99", human(p), limit_text, pass(p <= limit)),
    }
}

/// Non-idempotent requests a backend processed more than once.
pub fn duplicated(outcomes: &[&Outcome], processed: &HashMap<String, Vec<String>>) -> Vec<String> {
    outcomes
        .iter()
        .filter(|o| !is_idempotent(&o.method))
        .filter(|o| processed.get(&o.id).is_some_and(|b| b.len() > 1))
        .map(|o| o.id.clone())
        .collect()
}

/// Requests a backend processed whose client got no 2xx.
pub fn lost(outcomes: &[&Outcome], processed: &HashMap<String, Vec<String>>) -> Vec<String> {
    outcomes
        .iter()
        .filter(|o| !o.succeeded())
        .filter(|o| processed.get(&o.id).is_some_and(|b| !b.is_empty()))
        .map(|o| o.id.clone())
        .collect()
}

/// A count against an optional maximum; the first few ids are named.
fn counted(name: &'static str, ids: Option<Vec<String>>, max: Option<u64>) -> Row {
    let limit = max.map_or_else(|| "not set".to_string(), |m| format!("<= {m}"));
    let Some(ids) = ids else {
        return row(
            name,
            "-".into(),
            limit,
            RowState::NotEvaluated(NEEDS_LEDGERS.into()),
        );
    };
    let mut measured = ids.len().to_string();
    if !ids.is_empty() {
        let shown: Vec<&str> = ids.iter().take(3).map(String::as_str).collect();
        let more = if ids.len() > 3 { ", ..." } else { "" };
        measured = format!("{measured} ({}{more})", shown.join(", "));
    }
    let state = match max {
        None => RowState::NotEvaluated("no limit set".into()),
        Some(m) => pass(ids.len() as u64 <= m),
    };
    row(name, measured, limit, state)
}

/// For each step that takes a whole region out, until its restore (or
/// the end): from the step's start to the intended send time of the last
/// request that failed or was answered by that region. The worst counts.
fn failover(s: &Scenario, run: &Run, load: &[&Outcome], limit: Duration) -> Row {
    let limit_text = format!("<= {}", human(limit));
    let na = |why: &str| {
        row(
            "failover_within",
            "-".into(),
            limit_text.clone(),
            RowState::NotEvaluated(why.into()),
        )
    };
    if !load.iter().any(|o| o.region.is_some()) {
        return na("the answers name no region");
    }
    let steps = schedule(s);
    let times = as_run(&steps, run);
    let mut worst: Option<(Duration, &str)> = None;
    for (i, step) in steps.iter().enumerate() {
        let (true, Selector::Region(region)) = (step.action.takes_out(), &step.target) else {
            continue;
        };
        let start = times[i];
        let end = steps
            .iter()
            .enumerate()
            .skip(i + 1)
            .find(|(_, st)| {
                st.restores == Some(i) || (st.action == Action::Restore && st.target == step.target)
            })
            .map_or(Duration::MAX, |(j, _)| times[j]);
        let last = load
            .iter()
            .filter(|o| o.at >= start && o.at < end)
            .filter(|o| !o.succeeded() || o.region.as_deref() == Some(region.as_str()))
            .map(|o| o.at)
            .max();
        let took = last.map_or(Duration::ZERO, |l| l - start);
        if worst.is_none_or(|(w, _)| took > w) {
            worst = Some((took, step.label.as_str()));
        }
    }
    match worst {
        None => na("no fault takes a whole region out"),
        Some((took, label)) => row(
            "failover_within",
            format!("{} ({label})", human(took)),
            limit_text,
            pass(took <= limit),
        ),
    }
}

impl Verdict {
    /// Whether no SLO failed (rows not evaluated do not fail).
    pub fn passed(&self) -> bool {
        self.rows.iter().all(|r| r.state != RowState::Fail)
    }

    /// The rows as an aligned text table: `SLO | measured | limit | verdict`.
    pub fn table(&self) -> String {
        let mut lines = vec![[
            "SLO".to_string(),
            "measured".to_string(),
            "limit".to_string(),
            "verdict".to_string(),
        ]];
        for r in &self.rows {
            lines.push([
                r.name.to_string(),
                r.measured.clone(),
                r.limit.clone(),
                r.state.to_string(),
            ]);
        }
        let mut width = [0usize; 4];
        for l in &lines {
            for (w, cell) in width.iter_mut().zip(l) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for (n, l) in lines.iter().enumerate() {
            let cells: Vec<String> = l
                .iter()
                .zip(width)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            out.push_str(cells.join(" | ").trim_end());
            out.push('\n');
            if n == 0 {
                let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
                out.push_str(&rule.join("-+-"));
                out.push('\n');
            }
        }
        out
    }
}

impl std::fmt::Display for RowState {
    /// `PASS`, `FAIL` or `n/a (why)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RowState::Pass => f.write_str("PASS"),
            RowState::Fail => f.write_str("FAIL"),
            RowState::NotEvaluated(why) => write!(f, "n/a ({why})"),
        }
    }
}
