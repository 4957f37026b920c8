//! Chaos scenarios (`levee chaos run SCENARIO.toml`): the pure core.
//!
//! - `model.rs`: the types, from the file to the verdict.
//! - `parse.rs`: the file, every problem with its path in one pass.
//! - `plan.rs`: the schedule of faults and the open-loop load plan.
//! - `series.rs`: percentiles and the per-second series.
//! - `verdict.rs`: the SLOs held against a run; the verdict table.
//! - `progress.rs`: the runner's line a second.
//! - `report.rs`: `report.json`, `junit.xml`, `report.html` (the only I/O).
//!
//! The runner in the `levee` crate starts the target, sends the load,
//! applies the faults and fills a `Run`; all the deciding happens here,
//! with time passed in.

mod model;
mod parse;
mod plan;
mod progress;
mod report;
mod series;
mod verdict;

#[cfg(test)]
mod tests;

pub use model::*;
pub use parse::{DEFAULT_TIMEOUT, MAX_RATE, SLOS, parse};
pub use plan::{Plan, as_run, label, plan, schedule};
pub use progress::progress_line;
pub use report::{html_page, junit, report_json, write_report};
pub use series::{Second, per_second, percentile};
pub use verdict::{NEEDS_LEDGERS, duplicated, evaluate, lost};
