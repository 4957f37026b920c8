//! `report.html`: one self-contained page, no scripts and nothing
//! fetched: the verdict, the timeline and the schedule.

use std::fmt::Write;

use crate::scenario::model::{RowState, Run, Scenario, Target, Verdict, human};

use super::svg::{marks, timeline};
use super::xml::xml_escape;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1000px}\
h1{font-size:1.4em}table{border-collapse:collapse;margin:1em 0}\
td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}\
.pass{color:#176b1b;font-weight:bold}.fail{color:#b00020;font-weight:bold}.na{color:#777}\
svg text{font:11px system-ui,sans-serif;fill:#333}svg .title{font-weight:bold;font-size:12px}\
svg .ytick{text-anchor:end}svg .xtick{text-anchor:middle}svg .unit{text-anchor:middle}\
svg .frame{fill:none;stroke:#999}svg .grid{stroke:#eee}svg .axis{stroke:#999}\
svg .step{stroke:#b00020;stroke-dasharray:4 3}svg .stepnum{fill:#b00020;text-anchor:middle;font-weight:bold}\
svg .band{fill:#b00020;fill-opacity:0.07}";

/// The page.
pub fn page(s: &Scenario, run: &Run, v: &Verdict) -> String {
    let name = xml_escape(&s.name);
    let outcome = if v.passed() {
        r#"<span class="pass">every SLO holds</span>"#
    } else {
        r#"<span class="fail">an SLO failed</span>"#
    };
    let target = match &s.target {
        Target::Demo => "the demo topology".to_string(),
        Target::Running { url, .. } => xml_escape(url),
    };
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>levee chaos: {name}</title><style>{STYLE}</style></head><body>\n\
<h1>levee chaos: {name}</h1>\n<p>{outcome}. Seed {}, {} of load at {} requests/s against {target}; the run took {}. \
Flood requests are left out of the SLOs and the charts.</p>\n",
        s.seed,
        human(s.duration),
        s.load.rate,
        human(run.wall),
    );
    out.push_str(
        "<h2>SLOs</h2>\n<table><tr><th>SLO</th><th>measured</th><th>limit</th><th>verdict</th></tr>\n",
    );
    for r in &v.rows {
        let (class, text) = match &r.state {
            RowState::Pass => ("pass", "PASS".to_string()),
            RowState::Fail => ("fail", "FAIL".to_string()),
            RowState::NotEvaluated(why) => ("na", format!("n/a ({why})")),
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{}</td></tr>",
            xml_escape(r.name),
            xml_escape(&r.measured),
            xml_escape(&r.limit),
            xml_escape(&text)
        );
    }
    out.push_str("</table>\n<h2>Timeline</h2>\n");
    out.push_str(&timeline(s, run));
    out.push_str("\n<h2>Schedule as run</h2>\n<table><tr><th>#</th><th>at</th><th>step</th></tr>\n");
    for (n, (at, label)) in marks(s, run).iter().enumerate() {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            n + 1,
            human(*at),
            xml_escape(label)
        );
    }
    out.push_str("</table>\n</body></html>\n");
    out
}
