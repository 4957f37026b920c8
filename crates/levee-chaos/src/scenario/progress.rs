//! The line the runner prints once a second.

use std::time::Duration;

use crate::scenario::model::{Outcome, human, trim_float};
use crate::scenario::series::{latencies, percentile};

/// `12.0s  198 req/s  errors 0.5%  p99 41ms  fault: fail region primary`:
/// the requests (flood left out) that ended in the last second before
/// `elapsed`, their errors and p99, and the fault in force.
pub fn progress_line(elapsed: Duration, outcomes_so_far: &[Outcome], current_fault: Option<&str>) -> String {
    let from = elapsed.saturating_sub(Duration::from_secs(1));
    let recent: Vec<&Outcome> = outcomes_so_far
        .iter()
        .filter(|o| !o.flood)
        .filter(|o| {
            let end = o.at + o.latency;
            end > from && end <= elapsed
        })
        .collect();
    let errors = recent.iter().filter(|o| !o.succeeded()).count();
    let share = errors as f64 / recent.len().max(1) as f64;
    let p99 = percentile(&latencies(recent.iter().copied()), 0.99).map_or_else(|| "-".to_string(), human);
    let mut line = format!(
        "{:.1}s  {} req/s  errors {}%  p99 {p99}",
        elapsed.as_secs_f64(),
        recent.len(),
        trim_float(share * 100.0),
    );
    if let Some(f) = current_fault {
        line.push_str("  fault: ");
        line.push_str(f);
    }
    line
}
