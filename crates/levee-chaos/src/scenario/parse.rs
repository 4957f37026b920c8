//! `parse`: scenario TOML → `Scenario`, every problem with its path in one
//! pass, as `levee check` reports a config (`fault[2].action: "explode" is
//! not one of ...`). `fields.rs` reads tables key by key; `fault.rs` reads
//! the `[[fault]]` entries.

mod fault;
mod fields;

use std::time::Duration;

use crate::scenario::model::{Load, Scenario, ScenarioError, ScenarioErrors, Slo, Target};

pub use fields::{DEFAULT_TIMEOUT, MAX_RATE};
use fields::{Errors, Fields, key, number};

const SECTIONS: &[&str] = &["scenario", "target", "load", "fault", "slo"];

/// Parses and validates a scenario file.
pub fn parse(text: &str) -> Result<Scenario, ScenarioErrors> {
    let mut document: toml::Table = toml::from_str(text).map_err(|e| {
        ScenarioErrors(vec![ScenarioError {
            path: location(text, e.span()),
            message: e.message().trim_end().to_string(),
        }])
    })?;
    let mut e = Errors::default();
    let head = Fields::of(&mut e, "scenario", document.remove("scenario"));
    let (name, seed, duration) = scenario_head(&mut e, head);
    let table = Fields::of(&mut e, "target", document.remove("target"));
    let target = target(&mut e, table);
    let table = Fields::of(&mut e, "load", document.remove("load"));
    let load = load(&mut e, table);
    let faults = fault::faults(&mut e, document.remove("fault"), duration, target.as_ref());
    let table = Fields::of(&mut e, "slo", document.remove("slo"));
    let slo = slo(&mut e, table);
    for k in document.keys() {
        e.push(
            key(k),
            format!("unknown section; expected one of {}", SECTIONS.join(", ")),
        );
    }
    match (name, duration, target, load) {
        (Some(name), Some(duration), Some(target), Some(load)) if e.is_empty() => Ok(Scenario {
            name,
            seed,
            duration,
            target,
            load,
            faults,
            slo,
        }),
        _ => Err(e.into_errors()),
    }
}

/// `[scenario]`: name, seed (default 0), duration.
fn scenario_head(e: &mut Errors, mut t: Fields) -> (Option<String>, u64, Option<Duration>) {
    let name = match t.string(e, "name") {
        Some(n) if n.trim().is_empty() => {
            e.push(t.path_of("name"), "must not be empty");
            None
        }
        Some(n) => Some(n),
        None if !t.has("name") => {
            e.push(
                t.path_of("name"),
                "is required: what the reports call this scenario",
            );
            None
        }
        None => None,
    };
    let seed = t.integer(e, "seed", 0, i64::MAX).unwrap_or(0) as u64;
    let required = !t.has("duration");
    let duration = t.duration(e, "duration", false);
    if required {
        e.push(
            t.path_of("duration"),
            "is required: how long the load runs, such as \"40s\"",
        );
    }
    t.finish(e, &["name", "seed", "duration"]);
    (name, seed, duration)
}

/// `[target]`: `demo = true`, or `url` (and `admin`) of a running gateway.
fn target(e: &mut Errors, mut t: Fields) -> Option<Target> {
    let demo = t.boolean(e, "demo");
    let url = t.string(e, "url");
    let admin = t.string(e, "admin");
    let path = t.path().to_string();
    let url_path = t.path_of("url");
    let admin_path = t.path_of("admin");
    t.finish(e, &["demo", "url", "admin"]);
    match (demo, url) {
        (Some(true), Some(_)) => {
            e.push(url_path, "not with demo = true: the demo runs its own gateway");
            None
        }
        (Some(true), None) => {
            if admin.is_some() {
                e.push(
                    admin_path,
                    "not with demo = true: the demo runs its own admin API",
                );
            }
            Some(Target::Demo)
        }
        (_, Some(url)) => {
            let url = base_url(e, &url_path, url);
            let admin = admin.and_then(|a| base_url(e, &admin_path, a));
            Some(Target::Running { url: url?, admin })
        }
        (_, None) => {
            e.push(
                path,
                "needs demo = true, or url = \"http://127.0.0.1:8080\" for a running gateway",
            );
            None
        }
    }
}

/// An `http://` or `https://` address of a server, without a path.
fn base_url(e: &mut Errors, path: &str, text: String) -> Option<String> {
    let ok = text.parse::<http::Uri>().ok().is_some_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https"))
            && u.authority().is_some()
            && matches!(u.path(), "" | "/")
            && u.query().is_none()
    });
    if ok {
        Some(text.trim_end_matches('/').to_string())
    } else {
        e.push(
            path,
            format!("must be a server's address such as \"http://127.0.0.1:8080\", got {text:?}"),
        );
        None
    }
}

/// `[load]`: rate, methods (default GET), path (default `/`), timeout.
fn load(e: &mut Errors, mut t: Fields) -> Option<Load> {
    let required = !t.has("rate");
    let rate = t.integer(e, "rate", 1, MAX_RATE);
    if required {
        e.push(t.path_of("rate"), "is required: requests per second, such as 200");
    }
    let methods_path = t.path_of("methods");
    let methods = match t.take("methods") {
        None => Some(vec![(http::Method::GET, 1.0)]),
        Some(v) => {
            let table = Fields::of(e, &methods_path, Some(v));
            methods(e, table)
        }
    };
    let path = match t.string(e, "path") {
        None => Some("/".to_string()),
        Some(p) if p.starts_with('/') && p.parse::<http::uri::PathAndQuery>().is_ok() => Some(p),
        Some(p) => {
            e.push(
                t.path_of("path"),
                format!("must be a path such as \"/\" or \"/api?x=1\", got {p:?}"),
            );
            None
        }
    };
    let timeout = t.duration(e, "timeout", false);
    t.finish(e, &["rate", "methods", "path", "timeout"]);
    Some(Load {
        rate: u32::try_from(rate?).ok()?,
        methods: methods?,
        path: path?,
        timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
    })
}

/// `load.methods`: method → weight; the weights are normalised to sum 1.
fn methods(e: &mut Errors, t: Fields) -> Option<Vec<(http::Method, f64)>> {
    let path = t.path().to_string();
    let mut out = Vec::new();
    let mut ok = true;
    for (name, value) in t.into_entries() {
        let here = format!("{path}.{}", key(&name));
        let weight = number(e, &here, value, 0.0, 1e9);
        let method = http::Method::from_bytes(name.as_bytes()).ok();
        match method {
            Some(m) if m == http::Method::CONNECT => {
                e.push(&here, "CONNECT opens a tunnel, not a request the load can send");
                ok = false;
            }
            Some(_) if name != name.to_ascii_uppercase() => {
                e.push(
                    &here,
                    format!("methods are case-sensitive; write {}", name.to_ascii_uppercase()),
                );
                ok = false;
            }
            Some(m) => out.extend(weight.map(|w| (m, w))),
            None => {
                e.push(&here, "is not an HTTP method");
                ok = false;
            }
        }
        ok &= weight.is_some();
    }
    let total: f64 = out.iter().map(|(_, w)| w).sum();
    if ok && total <= 0.0 {
        e.push(
            path,
            "needs at least one method with a weight over 0, such as { GET = 1 }",
        );
        return None;
    }
    out.retain(|(_, w)| *w > 0.0);
    ok.then(|| out.into_iter().map(|(m, w)| (m, w / total)).collect())
}

/// `[slo]`: every objective optional.
fn slo(e: &mut Errors, mut t: Fields) -> Slo {
    let slo = Slo {
        success_ratio: t.number(e, "success_ratio", 0.0, 1.0),
        success_ratio_idempotent: t.number(e, "success_ratio_idempotent", 0.0, 1.0),
        p99: t.duration(e, "p99", false),
        max_duplicated: t.integer(e, "max_duplicated", 0, i64::MAX).map(|n| n as u64),
        max_lost: t.integer(e, "max_lost", 0, i64::MAX).map(|n| n as u64),
        failover_within: t.duration(e, "failover_within", true),
    };
    t.finish(e, SLOS);
    slo
}

/// The keys of `[slo]`, as the verdict's rows name them.
pub const SLOS: &[&str] = &[
    "success_ratio",
    "success_ratio_idempotent",
    "p99",
    "max_duplicated",
    "max_lost",
    "failover_within",
];

/// `line L, column C` for a byte span of the text.
fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("line {line}, column {column}")
}
