//! `write_report`: `report.json`, `junit.xml` and `report.html` in a
//! directory, the one place the scenario core does I/O. The HTML page and
//! its SVG timeline are in `report/html.rs` and `report/svg.rs`.

mod html;
mod svg;
mod xml;

pub use xml::xml_escape;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::scenario::model::{RowState, Run, Scenario, Target, Verdict};
use crate::scenario::series::per_second;

/// Writes the three reports into `dir`, creating it if need be.
pub fn write_report(dir: &Path, s: &Scenario, run: &Run, v: &Verdict) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(&report_json(s, run, v)).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), json + "\n")?;
    std::fs::write(dir.join("junit.xml"), junit(s, run, v))?;
    std::fs::write(dir.join("report.html"), html_page(s, run, v))?;
    Ok(())
}

/// `report.html` as text.
pub fn html_page(s: &Scenario, run: &Run, v: &Verdict) -> String {
    html::page(s, run, v)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `report.json`: the scenario, every SLO row, the schedule as run and
/// the per-second series.
pub fn report_json(s: &Scenario, run: &Run, v: &Verdict) -> Value {
    let rows: Vec<Value> = v
        .rows
        .iter()
        .map(|r| {
            let (verdict, why) = match &r.state {
                RowState::Pass => ("pass", None),
                RowState::Fail => ("fail", None),
                RowState::NotEvaluated(why) => ("n/a", Some(why.as_str())),
            };
            json!({"name": r.name, "measured": r.measured, "limit": r.limit, "verdict": verdict, "why": why})
        })
        .collect();
    let steps: Vec<Value> = run
        .steps
        .iter()
        .map(|(at, label)| json!({"at_ms": ms(*at), "label": label}))
        .collect();
    let series: Vec<Value> = per_second(&run.outcomes, s.duration)
        .iter()
        .map(|sec| {
            json!({
                "second": sec.second,
                "requests": sec.requests,
                "errors": sec.errors,
                "p50_ms": sec.p50.map(ms),
                "p99_ms": sec.p99.map(ms),
                "share": sec.shares(),
                "flood": sec.flood,
            })
        })
        .collect();
    let load = run.outcomes.iter().filter(|o| !o.flood);
    json!({
        "scenario": s.name,
        "seed": s.seed,
        "duration_ms": ms(s.duration),
        "target": match &s.target {
            Target::Demo => "demo".to_string(),
            Target::Running { url, .. } => url.clone(),
        },
        "passed": v.passed(),
        "slo": rows,
        "schedule": steps,
        "requests": load.clone().count(),
        "errors": load.filter(|o| !o.succeeded()).count(),
        "flood_requests": run.outcomes.iter().filter(|o| o.flood).count(),
        "wall_ms": ms(run.wall),
        "series": series,
    })
}

/// `junit.xml`: one `<testcase>` per SLO in `<testsuite name="levee
/// chaos: <name>">`; a failure carries the measured value, a row not
/// evaluated is skipped with its reason.
pub fn junit(s: &Scenario, run: &Run, v: &Verdict) -> String {
    let failures = v.rows.iter().filter(|r| r.state == RowState::Fail).count();
    let skipped = v
        .rows
        .iter()
        .filter(|r| matches!(r.state, RowState::NotEvaluated(_)))
        .count();
    let suite = xml_escape(&format!("levee chaos: {}", s.name));
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    out.push_str(&format!(
        "  <testsuite name=\"{suite}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{:.3}\">\n",
        v.rows.len(),
        run.wall.as_secs_f64(),
    ));
    for r in &v.rows {
        let name = xml_escape(r.name);
        let head = format!("    <testcase name=\"{name}\" classname=\"{suite}\"");
        let text = xml_escape(&format!("measured {}, limit {}", r.measured, r.limit));
        match &r.state {
            RowState::Pass => out.push_str(&format!("{head}/>\n")),
            RowState::Fail => out.push_str(&format!(
                "{head}>\n      <failure message=\"{text}\" type=\"slo\">{text}</failure>\n    </testcase>\n"
            )),
            RowState::NotEvaluated(why) => out.push_str(&format!(
                "{head}>\n      <skipped message=\"{}\"/>\n    </testcase>\n",
                xml_escape(why)
            )),
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}
