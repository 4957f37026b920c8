//! The report's timeline as one inline SVG: requests and errors per
//! second, p50 and p99 latency, each region's share of the traffic, and
//! every step of the schedule as a numbered vertical line (a shaded band
//! while a fault with `for` lasts).

use std::fmt::Write;
use std::time::Duration;

use crate::scenario::model::{Run, Scenario, human};
use crate::scenario::plan::{as_run, schedule};
use crate::scenario::series::{Second, per_second};

use super::xml::xml_escape;

const WIDTH: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const PANEL: f64 = 150.0;
const GAP: f64 = 50.0;

/// Colours for the regions, in name order.
const REGION_COLOURS: [&str; 6] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"];

/// The steps to mark: (time, label) as run, else as planned.
pub fn marks(s: &Scenario, run: &Run) -> Vec<(Duration, String)> {
    if run.steps.is_empty() {
        schedule(s).into_iter().map(|st| (st.at, st.label)).collect()
    } else {
        run.steps.clone()
    }
}

/// The time axis: seconds from 0 to `span`.
struct Axis {
    span: f64,
}

impl Axis {
    fn x(&self, seconds: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * (seconds / self.span).clamp(0.0, 1.0)
    }
}

/// A round number at or above `v`: 1, 2 or 5 times a power of ten.
fn nice(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|n| *n >= v)
        .unwrap_or(10.0 * p)
}

/// The top of a y axis: a round number with a little room above `max`,
/// whose quarters (the grid lines) are round too.
fn headroom(max: f64) -> f64 {
    let v = max.max(1.0) * 1.1;
    let p = 10f64.powf(v.log10().floor());
    [1.0, 1.2, 1.6, 2.0, 2.4, 3.2, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|n| *n >= v)
        .unwrap_or(10.0 * p)
}

fn label_num(v: f64) -> String {
    crate::scenario::model::trim_float(v)
}

/// One line of a panel: name, colour, a value per second (`None` breaks it).
struct Line<'a> {
    name: &'a str,
    colour: &'a str,
    values: Vec<Option<f64>>,
}

/// A panel at `top`: frame, title, y axis from 0 to `max` in `unit`, the
/// time axis, and a legend on the right.
fn frame(
    out: &mut String,
    axis: &Axis,
    top: f64,
    title: &str,
    unit: &str,
    max: f64,
    legend: &[(&str, &str)],
) {
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let _ = write!(
        out,
        r##"<text x="{x0}" y="{:.1}" class="title">{}</text>"##,
        top - 8.0,
        xml_escape(title)
    );
    let _ = write!(
        out,
        r##"<rect x="{x0}" y="{top}" width="{:.1}" height="{PANEL}" class="frame"/>"##,
        x1 - x0
    );
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = top + PANEL - PANEL * f64::from(i) / 4.0;
        let _ = write!(
            out,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="ytick">{}</text>"##,
            x0 - 6.0,
            y + 4.0,
            label_num(v)
        );
    }
    let _ = write!(
        out,
        r##"<text transform="translate(16 {:.1}) rotate(-90)" class="unit">{}</text>"##,
        top + PANEL / 2.0,
        xml_escape(unit)
    );
    let step = nice(axis.span / 10.0);
    let mut t = 0.0;
    while t <= axis.span + 1e-9 {
        let x = axis.x(t);
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" class="axis"/><text x="{x:.1}" y="{:.1}" class="xtick">{}s</text>"##,
            top + PANEL,
            top + PANEL + 4.0,
            top + PANEL + 16.0,
            label_num(t)
        );
        t += step;
    }
    for (i, (name, colour)) in legend.iter().enumerate() {
        let y = top + 12.0 + 18.0 * i as f64;
        let _ = write!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="12" height="12" fill="{colour}"/><text x="{:.1}" y="{:.1}" class="legend">{}</text>"##,
            x1 + 12.0,
            y - 10.0,
            x1 + 30.0,
            y,
            xml_escape(name)
        );
    }
}

/// Lines through the middle of each second.
fn lines(out: &mut String, axis: &Axis, top: f64, max: f64, lines: &[Line]) {
    for line in lines {
        let mut d = String::new();
        let mut pen_down = false;
        for (i, v) in line.values.iter().enumerate() {
            match v {
                Some(v) => {
                    let x = axis.x(i as f64 + 0.5);
                    let y = top + PANEL - PANEL * (v / max).clamp(0.0, 1.0);
                    let _ = write!(d, "{}{x:.1} {y:.1} ", if pen_down { "L" } else { "M" });
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        if !d.is_empty() {
            let _ = write!(
                out,
                r##"<path d="{}" fill="none" stroke="{}" stroke-width="1.6"><title>{}</title></path>"##,
                d.trim_end(),
                line.colour,
                xml_escape(line.name)
            );
        }
    }
}

/// Each region's share stacked, a step per second; what is left white
/// was answered by no region (failed, or not saying).
fn shares(out: &mut String, axis: &Axis, top: f64, seconds: &[Second], regions: &[String]) {
    let mut below = vec![0.0; seconds.len()];
    for (r, region) in regions.iter().enumerate() {
        let above: Vec<f64> = seconds
            .iter()
            .zip(&below)
            .map(|(s, b)| b + s.shares().get(region).copied().unwrap_or(0.0))
            .collect();
        let y = |v: f64| top + PANEL - PANEL * v.clamp(0.0, 1.0);
        let mut points = String::new();
        for (i, v) in above.iter().enumerate() {
            let _ = write!(
                points,
                "{:.1},{:.1} {:.1},{:.1} ",
                axis.x(i as f64),
                y(*v),
                axis.x(i as f64 + 1.0),
                y(*v)
            );
        }
        for (i, v) in below.iter().enumerate().rev() {
            let _ = write!(
                points,
                "{:.1},{:.1} {:.1},{:.1} ",
                axis.x(i as f64 + 1.0),
                y(*v),
                axis.x(i as f64),
                y(*v)
            );
        }
        let colour = REGION_COLOURS[r % REGION_COLOURS.len()];
        let _ = write!(
            out,
            r##"<polygon points="{}" fill="{colour}" fill-opacity="0.75"><title>region {}</title></polygon>"##,
            points.trim_end(),
            xml_escape(region)
        );
        below = above;
    }
}

/// The whole timeline.
pub fn timeline(s: &Scenario, run: &Run) -> String {
    let seconds = per_second(&run.outcomes, s.duration);
    let marks = marks(s, run);
    let span = (seconds.len() as f64)
        .max(s.duration.as_secs_f64())
        .max(marks.iter().map(|(t, _)| t.as_secs_f64()).fold(0.0, f64::max))
        .max(1.0);
    let axis = Axis { span };
    let mut regions: Vec<String> = seconds.iter().flat_map(|s| s.regions.keys().cloned()).collect();
    regions.sort();
    regions.dedup();
    let height = TOP + 3.0 * (PANEL + GAP) + 20.0 * marks.len() as f64 + 10.0;
    let mut out = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height:.0}" width="{WIDTH}" height="{height:.0}" role="img" aria-label="timeline of the run">"##
    );
    bands(&mut out, s, run, &axis, 3.0 * (PANEL + GAP) - GAP);
    let rate_max = headroom(seconds.iter().map(|s| s.requests as f64).fold(1.0, f64::max));
    frame(
        &mut out,
        &axis,
        TOP,
        "Requests per second (by intended send time)",
        "requests/s",
        rate_max,
        &[("requests", "#1f77b4"), ("errors (not 2xx)", "#d62728")],
    );
    let count = |f: fn(&Second) -> u64| seconds.iter().map(|s| Some(f(s) as f64)).collect();
    lines(
        &mut out,
        &axis,
        TOP,
        rate_max,
        &[
            Line {
                name: "requests/s",
                colour: "#1f77b4",
                values: count(|s| s.requests),
            },
            Line {
                name: "errors/s",
                colour: "#d62728",
                values: count(|s| s.errors),
            },
        ],
    );
    let top = TOP + PANEL + GAP;
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    let lat_max = headroom(seconds.iter().filter_map(|s| ms(s.p99)).fold(1.0, f64::max));
    frame(
        &mut out,
        &axis,
        top,
        "Latency from the intended send time",
        "ms",
        lat_max,
        &[("p50", "#2ca02c"), ("p99", "#9467bd")],
    );
    lines(
        &mut out,
        &axis,
        top,
        lat_max,
        &[
            Line {
                name: "p50",
                colour: "#2ca02c",
                values: seconds.iter().map(|s| ms(s.p50)).collect(),
            },
            Line {
                name: "p99",
                colour: "#9467bd",
                values: seconds.iter().map(|s| ms(s.p99)).collect(),
            },
        ],
    );
    let top = TOP + 2.0 * (PANEL + GAP);
    let legend: Vec<(&str, &str)> = regions
        .iter()
        .enumerate()
        .map(|(i, r)| (r.as_str(), REGION_COLOURS[i % REGION_COLOURS.len()]))
        .collect();
    frame(
        &mut out,
        &axis,
        top,
        "Share of requests answered by each region",
        "% of requests",
        100.0,
        &legend,
    );
    shares(&mut out, &axis, top, &seconds, &regions);
    steps(&mut out, &axis, &marks, 3.0 * (PANEL + GAP) - GAP);
    out.push_str("</svg>");
    out
}

/// Shaded bands while faults with `for` last, from the schedule with the
/// times as run.
fn bands(out: &mut String, s: &Scenario, run: &Run, axis: &Axis, height: f64) {
    let planned = schedule(s);
    let times = as_run(&planned, run);
    for (j, step) in planned.iter().enumerate() {
        let Some(i) = step.restores else { continue };
        let (x0, x1) = (axis.x(times[i].as_secs_f64()), axis.x(times[j].as_secs_f64()));
        let _ = write!(
            out,
            r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{height:.1}" class="band"><title>{} ({} to {})</title></rect>"##,
            (x1 - x0).max(0.0),
            xml_escape(&planned[i].label),
            human(times[i]),
            human(times[j])
        );
    }
}

/// A numbered dashed line per step, and the numbered list under the chart.
fn steps(out: &mut String, axis: &Axis, marks: &[(Duration, String)], height: f64) {
    for (n, (at, label)) in marks.iter().enumerate() {
        let x = axis.x(at.as_secs_f64());
        let text = xml_escape(&format!("{} at {}: {label}", n + 1, human(*at)));
        let _ = write!(
            out,
            r##"<g><title>{text}</title><line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" class="step"/><text x="{x:.1}" y="{:.1}" class="stepnum">{}</text></g>"##,
            TOP - 4.0,
            TOP + height,
            TOP - 24.0 + 10.0 * (n % 2) as f64,
            n + 1
        );
        let y = TOP + 3.0 * (PANEL + GAP) + 20.0 * n as f64;
        let _ = write!(
            out,
            r##"<text x="{LEFT}" y="{y:.1}" class="steplist">{text}</text>"##
        );
    }
}
