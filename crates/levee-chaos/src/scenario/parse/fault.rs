//! `[[fault]]`: when, what, on what, for how long. Each action says which
//! targets and settings it takes, and which target kinds it needs.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::scenario::model::{Action, DEMO_ENDPOINTS, DEMO_REGIONS, Fault, Selector, Target, human};

use super::fields::{Errors, Fields, MAX_RATE, key};

/// The actions, as the file names them.
pub const ACTIONS: &[&str] = &[
    "fail", "hang", "latency", "errors", "reset", "restore", "drain", "reload", "flood", "toxic",
];

/// The toxics, each with the attributes it takes (Toxiproxy's).
pub const TOXICS: &[(&str, &[&str])] = &[
    ("latency", &["latency", "jitter"]),
    ("bandwidth", &["rate"]),
    ("slow_close", &["delay"]),
    ("timeout", &["timeout"]),
    ("reset_peer", &["timeout"]),
    ("slicer", &["average_size", "size_variation", "delay"]),
    ("limit_data", &["bytes"]),
];

const KEYS: &[&str] = &[
    "at",
    "action",
    "region",
    "endpoint",
    "for",
    "delay",
    "status",
    "ratio",
    "rate",
    "toxic",
    "stream",
    "toxicity",
    "attributes",
];

/// Settings and the one action each belongs to.
const SETTINGS: &[(&str, &str)] = &[
    ("delay", "latency"),
    ("status", "errors"),
    ("ratio", "errors"),
    ("rate", "flood"),
    ("toxic", "toxic"),
    ("stream", "toxic"),
    ("toxicity", "toxic"),
    ("attributes", "toxic"),
];

/// Every `[[fault]]`, in file order; those with problems are left out
/// (and reported).
pub(super) fn faults(
    e: &mut Errors,
    value: Option<toml::Value>,
    duration: Option<Duration>,
    target: Option<&Target>,
) -> Vec<Fault> {
    let items = match value {
        None => return Vec::new(),
        Some(toml::Value::Array(items)) => items,
        Some(_) => {
            e.push(
                "fault",
                "must be an array of tables: write each fault as [[fault]]",
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let t = Fields::of(e, &format!("fault[{i}]"), Some(item));
        out.extend(fault(e, t, duration, target));
    }
    out
}

fn fault(
    e: &mut Errors,
    mut t: Fields,
    duration: Option<Duration>,
    target: Option<&Target>,
) -> Option<Fault> {
    let here = t.path().to_string();
    let at_missing = !t.has("at");
    let at = t.duration(e, "at", true);
    if at_missing {
        e.push(
            t.path_of("at"),
            "is required: when the fault starts, such as \"5s\"",
        );
    }
    let name = t.string(e, "action");
    let name = match name.as_deref() {
        None if !t.has("action") => {
            e.push(
                t.path_of("action"),
                format!("is required: one of {}", ACTIONS.join(", ")),
            );
            None
        }
        Some(a) if !ACTIONS.contains(&a) => {
            e.push(
                t.path_of("action"),
                format!("{a:?} is not one of {}", ACTIONS.join(", ")),
            );
            None
        }
        _ => name,
    };
    let selector = selector(e, &mut t);
    let lasts = t.duration(e, "for", false);
    let action = name.as_deref().and_then(|a| action(e, &mut t, a));
    for (setting, owner) in SETTINGS {
        // With no valid action, its settings cannot be judged: left unsaid.
        let stray = t.take(setting).is_some();
        if stray && name.as_deref().is_some_and(|a| a != *owner) {
            e.push(t.path_of(setting), format!("applies only to action {owner}"));
        }
    }
    t.finish(e, KEYS);
    // Each check runs on what did parse, so one pass reports them all.
    let fit = match (name.as_deref(), &selector) {
        (Some(a), Some(sel)) => fits(e, &here, a, sel, lasts.is_some()) & on_target(e, &here, a, sel, target),
        _ => false,
    };
    let timely = at.is_some_and(|at| in_time(e, &here, at, lasts, duration));
    (fit && timely).then_some(Fault {
        at: at?,
        action: action?,
        target: selector?,
        lasts,
    })
}

/// `region` or `endpoint` (or neither: `Selector::All`).
fn selector(e: &mut Errors, t: &mut Fields) -> Option<Selector> {
    let region = t.string(e, "region");
    let endpoint = t.string(e, "endpoint");
    let mut empty = false;
    for (k, v) in [("region", &region), ("endpoint", &endpoint)] {
        if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
            e.push(t.path_of(k), "must not be empty");
            empty = true;
        }
    }
    match (region, endpoint) {
        _ if empty => None,
        (Some(_), Some(_)) => {
            e.push(
                t.path(),
                "names both a region and an endpoint: a fault has one target",
            );
            None
        }
        (Some(r), None) => Some(Selector::Region(r)),
        (None, Some(p)) => Some(Selector::Endpoint(p)),
        (None, None) => Some(Selector::All),
    }
}

/// The action with its settings.
fn action(e: &mut Errors, t: &mut Fields, name: &str) -> Option<Action> {
    Some(match name {
        "fail" => Action::Fail,
        "hang" => Action::Hang,
        "reset" => Action::Reset,
        "restore" => Action::Restore,
        "drain" => Action::Drain,
        "reload" => Action::Reload,
        "latency" => {
            let missing = !t.has("delay");
            let delay = t.duration(e, "delay", false);
            if missing {
                e.push(
                    t.path_of("delay"),
                    "is required by latency: how late answers are, such as \"300ms\"",
                );
            }
            Action::Latency { delay: delay? }
        }
        "errors" => {
            let status = t.integer(e, "status", 100, 599);
            let ratio = t.number(e, "ratio", 0.0, 1.0);
            if ratio == Some(0.0) {
                e.push(
                    t.path_of("ratio"),
                    "must be over 0: a ratio of 0 answers no errors",
                );
                return None;
            }
            Action::Errors {
                status: status.unwrap_or(503) as u16,
                ratio: ratio.unwrap_or(1.0),
            }
        }
        "flood" => {
            let missing = !t.has("rate");
            let rate = t.integer(e, "rate", 1, MAX_RATE);
            if missing {
                e.push(
                    t.path_of("rate"),
                    "is required by flood: requests per second from the one client",
                );
            }
            Action::Flood { rate: rate? as u32 }
        }
        _ => toxic(e, t)?,
    })
}

/// `action = "toxic"`: type, stream, toxicity and the type's attributes.
fn toxic(e: &mut Errors, t: &mut Fields) -> Option<Action> {
    let names: Vec<&str> = TOXICS.iter().map(|(n, _)| *n).collect();
    let missing = !t.has("toxic");
    let toxic = t.string(e, "toxic");
    if missing {
        e.push(
            t.path_of("toxic"),
            format!("is required by action toxic: one of {}", names.join(", ")),
        );
    }
    let known = toxic
        .as_deref()
        .and_then(|x| TOXICS.iter().find(|(n, _)| *n == x));
    if let (Some(x), None) = (&toxic, known) {
        e.push(
            t.path_of("toxic"),
            format!("{x:?} is not one of {}", names.join(", ")),
        );
    }
    let stream = t.string(e, "stream");
    let stream = match stream.as_deref() {
        None => Some("downstream".to_string()),
        Some("downstream" | "upstream") => stream,
        Some(other) => {
            e.push(
                t.path_of("stream"),
                format!("{other:?} is not one of downstream, upstream"),
            );
            None
        }
    };
    let toxicity = t.number(e, "toxicity", 0.0, 1.0);
    let path = t.path_of("attributes");
    let attributes = match (t.take("attributes"), known) {
        (None, _) => Some(BTreeMap::new()),
        (Some(v), Some((_, allowed))) => {
            let table = Fields::of(e, &path, Some(v));
            attributes(e, table, allowed)
        }
        (Some(_), None) => None,
    };
    Some(Action::Toxic {
        toxic: known?.0.to_string(),
        stream: stream?,
        toxicity: toxicity.unwrap_or(1.0) as f32,
        attributes: attributes?,
    })
}

/// A toxic's attributes: whole numbers from 0, only those its type has;
/// those left out are 0, as in Toxiproxy.
fn attributes(e: &mut Errors, t: Fields, allowed: &[&str]) -> Option<BTreeMap<String, i64>> {
    let path = t.path().to_string();
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (name, value) in t.into_entries() {
        let here = format!("{path}.{}", key(&name));
        if !allowed.contains(&name.as_str()) {
            e.push(
                here,
                format!(
                    "is not an attribute of this toxic; it takes {}",
                    allowed.join(", ")
                ),
            );
            ok = false;
            continue;
        }
        match value {
            toml::Value::Integer(n) if n >= 0 => {
                out.insert(name, n);
            }
            other => {
                e.push(
                    here,
                    format!(
                        "must be a whole number from 0, got {}",
                        super::fields::shown(&other)
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// Whether the action takes this kind of target and `for`.
fn fits(e: &mut Errors, here: &str, name: &str, selector: &Selector, lasts: bool) -> bool {
    let why = match (name, selector) {
        ("drain" | "reload", Selector::Region(_)) => {
            Some(format!("{name} takes no target or an endpoint, not a region"))
        }
        ("flood", Selector::Region(_) | Selector::Endpoint(_)) => {
            Some("flood takes no target: it is one more client of the gateway".to_string())
        }
        ("drain" | "reload" | "flood", _) => None,
        (_, Selector::All) => Some(format!(
            "{name} needs a target: region = \"...\" or endpoint = \"...\""
        )),
        _ => None,
    };
    let ok = why.is_none();
    if let Some(why) = why {
        e.push(here, why);
    }
    let instant = matches!(name, "restore" | "reload");
    if lasts && instant {
        e.push(
            format!("{here}.for"),
            format!("{name} happens at once; it has nothing to end"),
        );
        return false;
    }
    ok
}

/// Whether the target can suffer the action, and the names exist.
fn on_target(e: &mut Errors, here: &str, name: &str, selector: &Selector, target: Option<&Target>) -> bool {
    match target {
        None => true,
        Some(Target::Demo) => match selector {
            Selector::Region(r) if !DEMO_REGIONS.contains(&r.as_str()) => {
                e.push(
                    format!("{here}.region"),
                    format!(
                        "{r:?} is not a region of the demo; expected one of {}",
                        DEMO_REGIONS.join(", ")
                    ),
                );
                false
            }
            Selector::Endpoint(p) if !DEMO_ENDPOINTS.iter().any(|(n, _)| n == p) => {
                let names: Vec<&str> = DEMO_ENDPOINTS.iter().map(|(n, _)| *n).collect();
                e.push(
                    format!("{here}.endpoint"),
                    format!(
                        "{p:?} is not a backend of the demo; expected one of {}",
                        names.join(", ")
                    ),
                );
                false
            }
            _ => true,
        },
        Some(Target::Running { admin, .. }) => {
            let why = match (name, selector) {
                ("flood", _) => None,
                ("reload", Selector::Endpoint(_)) => Some(
                    "reload of an endpoint needs target.demo = true: levee restarts only the demo's own backends".to_string(),
                ),
                ("drain" | "reload" | "restore", _) if admin.is_none() => Some(format!(
                    "{name} needs target.admin: it goes through the gateway's admin API"
                )),
                ("drain" | "reload" | "restore", _) => None,
                _ => Some(format!(
                    "{name} needs target.demo = true: levee acts on the demo's own backends, and a running gateway's backends are not levee's to break"
                )),
            };
            let ok = why.is_none();
            if let Some(why) = why {
                e.push(format!("{here}.action"), why);
            }
            ok
        }
    }
}

/// `at`, and `at` + `for`, within the scenario's duration.
fn in_time(
    e: &mut Errors,
    here: &str,
    at: Duration,
    lasts: Option<Duration>,
    duration: Option<Duration>,
) -> bool {
    let Some(duration) = duration else {
        return true;
    };
    if at >= duration {
        e.push(
            format!("{here}.at"),
            format!(
                "{} is not within the scenario's duration ({})",
                human(at),
                human(duration)
            ),
        );
        return false;
    }
    match lasts {
        Some(l) if at + l > duration => {
            e.push(
                format!("{here}.for"),
                format!(
                    "ends at {}, after the scenario's end ({}); leave `for` out to keep the fault to the end",
                    human(at + l),
                    human(duration)
                ),
            );
            false
        }
        _ => true,
    }
}
