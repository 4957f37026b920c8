//! `[alerting]`, its notifiers and the `[[alert]]` rules.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use levee_core::id::UpstreamName;
use levee_core::retry::Backoff;

use super::scalar::{count, duration_or_zero, name_of, timeout};
use crate::duration::parse_duration;
use crate::error::Errors;
use crate::model::*;
use crate::raw::{RawAlertRule, RawAlerting, RawNotifier};

/// What the rules may refer to.
pub(super) struct Known<'a> {
    pub upstreams: &'a HashSet<&'a str>,
    pub rate_limits: &'a HashSet<&'a str>,
    pub redis: bool,
}

/// Labels levee sets itself, which a rule's `labels` may not replace.
const RESERVED_LABELS: [&str; 7] = [
    "alertname",
    "severity",
    "rule",
    "upstream",
    "region",
    "endpoint",
    "rate_limit",
];

/// Headers levee writes itself on every notification.
const OWN_HEADERS: [&str; 5] = [
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
];

pub(super) fn alerting(
    e: &mut Errors,
    raw: Option<RawAlerting>,
    raw_notifiers: Vec<(String, RawNotifier)>,
    broken_notifiers: &[String],
    raw_rules: Vec<(usize, RawAlertRule)>,
    admin: Option<SocketAddr>,
    known: &Known<'_>,
) -> Alerting {
    let raw = raw.unwrap_or_default();
    let evaluation_interval = timeout(
        e,
        "alerting.evaluation_interval",
        raw.evaluation_interval,
        Duration::from_secs(1),
    );
    let external_url = match raw.external_url {
        Some(url) => {
            if http_url(&url).is_err() {
                e.push(
                    "alerting.external_url",
                    format!("{url:?} is not an http or https URL, like \"https://levee.example.com\""),
                );
            }
            url.trim_end_matches('/').to_string()
        }
        None => format!(
            "http://{}",
            admin.map_or_else(|| "127.0.0.1:9901".to_string(), |a| a.to_string())
        ),
    };
    let notifier_names: Vec<String> = raw_notifiers.iter().map(|(n, _)| n.clone()).collect();
    let notifiers: Vec<Notifier> = raw_notifiers
        .into_iter()
        .filter_map(|(name, n)| notifier(e, &name, n))
        .collect();
    let known_notifiers: HashSet<&str> = notifier_names
        .iter()
        .chain(broken_notifiers)
        .map(String::as_str)
        .collect();
    let written = !raw_rules.is_empty();
    let mut names = HashSet::new();
    let mut rules: Vec<AlertRule> = raw_rules
        .into_iter()
        .filter_map(|(i, r)| {
            let path = format!("alert[{i}]");
            if !names.insert(r.name.clone()) {
                e.push(
                    format!("{path}.name"),
                    format!("duplicate alert rule name {:?}", r.name),
                );
            }
            rule(e, &path, r, known, &known_notifiers, &notifier_names)
        })
        .collect();
    if !written && raw.default_rules.unwrap_or(true) {
        rules = default_rules(known.redis, &notifier_names);
    }
    Alerting {
        evaluation_interval,
        external_url,
        rules,
        notifiers,
    }
}

/// The rules in force when the file writes none: the gateway's own
/// troubles, each a `warning` but failover (`critical`), at once (no `for`).
fn default_rules(redis: bool, notifiers: &[String]) -> Vec<AlertRule> {
    let rule = |name: &str, kind: AlertKind, threshold: f64, severity: Severity| AlertRule {
        name: name.to_string(),
        condition: Condition {
            kind,
            threshold,
            hold: Duration::ZERO,
        },
        window: Duration::from_secs(60),
        severity,
        upstream: None,
        rate_limit: None,
        labels: BTreeMap::new(),
        // Checked by a test: default summaries use their kind's labels.
        summary: Template(default_summary(kind).to_string()),
        description: None,
        runbook_url: None,
        notifiers: notifiers.to_vec(),
    };
    let mut rules = vec![
        rule("endpoint-down", AlertKind::EndpointDown, 0.0, Severity::Warning),
        rule(
            "region-degraded",
            AlertKind::RegionDegraded,
            0.5,
            Severity::Warning,
        ),
        rule(
            "failover-active",
            AlertKind::FailoverActive,
            0.0,
            Severity::Critical,
        ),
        rule("error-ratio", AlertKind::ErrorRatio, 0.05, Severity::Warning),
        rule("latency-p99", AlertKind::LatencyP99, 1.0, Severity::Warning),
        rule(
            "retry-budget-exhausted",
            AlertKind::RetryBudgetExhausted,
            0.0,
            Severity::Warning,
        ),
    ];
    if redis {
        rules.push(rule(
            "redis-degraded",
            AlertKind::RedisDegraded,
            0.0,
            Severity::Warning,
        ));
    }
    rules.push(rule(
        "reload-failed",
        AlertKind::ReloadFailed,
        0.0,
        Severity::Warning,
    ));
    rules
}

fn rule(
    e: &mut Errors,
    path: &str,
    raw: RawAlertRule,
    known: &Known<'_>,
    known_notifiers: &HashSet<&str>,
    all_notifiers: &[String],
) -> Option<AlertRule> {
    let name = name_of(e, &format!("{path}.name"), &raw.name);
    let kind = AlertKind::parse(&raw.kind);
    if kind.is_none() {
        let all: Vec<&str> = AlertKind::ALL.iter().map(|k| k.as_str()).collect();
        e.push(
            format!("{path}.kind"),
            format!("{:?} is not one of {}", raw.kind, all.join(", ")),
        );
    }
    let severity = match raw.severity.as_deref() {
        None => Severity::Warning,
        Some(s) => Severity::parse(s).unwrap_or_else(|| {
            e.push(
                format!("{path}.severity"),
                format!("must be \"critical\", \"warning\" or \"info\", got {s:?}"),
            );
            Severity::Warning
        }),
    };
    let hold = duration_or_zero(e, &format!("{path}.for"), raw.hold, Duration::ZERO);
    let labels = labels(e, path, raw.labels.unwrap_or_default());
    let runbook_url = raw.runbook_url.filter(|url| {
        let ok = http_url(url).is_ok();
        if !ok {
            e.push(
                format!("{path}.runbook_url"),
                format!("{url:?} is not an http or https URL"),
            );
        }
        ok
    });
    let notifiers = rule_notifiers(e, path, raw.notifiers, known_notifiers, all_notifiers);
    // Everything below depends on the kind.
    let kind = kind?;
    let threshold = threshold(e, path, kind, raw.threshold);
    let window = rule_window(e, path, kind, raw.window);
    let upstream = raw.upstream.filter(|u| {
        if !kind.labels().contains(&"upstream") {
            e.push(
                format!("{path}.upstream"),
                format!(
                    "has no effect on {} rules, which are not about an upstream",
                    kind.as_str()
                ),
            );
            return false;
        }
        if !known.upstreams.contains(u.as_str()) {
            e.push(
                format!("{path}.upstream"),
                format!("no upstream named {u:?} (declare it as [upstream.{u}])"),
            );
            return false;
        }
        true
    });
    let rate_limit = raw.rate_limit.filter(|r| {
        if kind != AlertKind::RateLimited {
            e.push(
                format!("{path}.rate_limit"),
                "applies to kind = \"rate_limited\" only",
            );
            return false;
        }
        if !known.rate_limits.contains(r.as_str()) {
            e.push(
                format!("{path}.rate_limit"),
                format!("no rate limit named {r:?} (declare it as [rate_limit.{r}])"),
            );
            return false;
        }
        true
    });
    if kind == AlertKind::RedisDegraded && !known.redis {
        e.push(
            format!("{path}.kind"),
            "\"redis_degraded\" needs a [redis] section: without one there is no Redis to watch",
        );
    }
    let placeholder = |n: &str| COMMON_PLACEHOLDERS.contains(&n) || kind.labels().contains(&n);
    let mut template = |key: &str, text: &str| match Template::parse(text, placeholder) {
        Ok(t) => Some(t),
        Err(why) => {
            let mut all: Vec<&str> = COMMON_PLACEHOLDERS.to_vec();
            all.extend(kind.labels());
            e.push(
                format!("{path}.{key}"),
                format!("{why}; {} rules have {{{}}}", kind.as_str(), all.join("}, {")),
            );
            None
        }
    };
    let summary = match raw.summary {
        Some(s) => template("summary", &s),
        None => template("summary", default_summary(kind)),
    };
    let description = raw.description.and_then(|d| template("description", &d));
    Some(AlertRule {
        name: name?,
        condition: Condition {
            kind,
            threshold: threshold?,
            hold,
        },
        window,
        severity,
        upstream: upstream.map(|u| UpstreamName::new(&u)),
        rate_limit,
        labels,
        summary: summary?,
        description,
        runbook_url,
        notifiers,
    })
}

/// The notifiers a rule goes to: those it names (each known, none twice),
/// or all of them.
fn rule_notifiers(
    e: &mut Errors,
    path: &str,
    notifiers: Option<Vec<String>>,
    known_notifiers: &HashSet<&str>,
    all_notifiers: &[String],
) -> Vec<String> {
    match notifiers {
        None => all_notifiers.to_vec(),
        Some(list) => {
            let mut seen = HashSet::new();
            for (i, n) in list.iter().enumerate() {
                if !known_notifiers.contains(n.as_str()) {
                    e.push(
                        format!("{path}.notifiers[{i}]"),
                        format!("no notifier named {n:?} (declare it as [alerting.notifier.{n}])"),
                    );
                } else if !seen.insert(n) {
                    e.push(format!("{path}.notifiers[{i}]"), format!("{n:?} is listed twice"));
                }
            }
            list
        }
    }
}

/// The window a rule reads, for the kinds that read one.
fn rule_window(e: &mut Errors, path: &str, kind: AlertKind, window: Option<String>) -> Duration {
    if kind.uses_window() {
        let w = timeout(e, &format!("{path}.window"), window, Duration::from_secs(60));
        if w > Duration::from_secs(3600) {
            e.push(format!("{path}.window"), "must be at most 1h");
        }
        w
    } else {
        if window.is_some() {
            e.push(
                format!("{path}.window"),
                format!(
                    "has no effect on {} rules, which read the present state",
                    kind.as_str()
                ),
            );
        }
        Duration::from_secs(60)
    }
}

/// A rule's threshold, read as its kind means it.
fn threshold(e: &mut Errors, path: &str, kind: AlertKind, raw: Option<toml::Value>) -> Option<f64> {
    let key = format!("{path}.threshold");
    if kind.is_boolean() {
        if raw.is_some() {
            e.push(
                key,
                format!(
                    "{} rules have no threshold: they fire while the condition holds",
                    kind.as_str()
                ),
            );
        }
        return Some(0.0);
    }
    if kind == AlertKind::LatencyP99 {
        let Some(raw) = raw else {
            return Some(1.0);
        };
        let seconds = match raw {
            toml::Value::String(text) => parse_duration(&text).map(|d| d.as_secs_f64()),
            _ => Err("must be a duration, like \"500ms\" (the p99 latency above which it fires)".to_string()),
        };
        return match seconds {
            Ok(s) if s > 0.0 => Some(s),
            Ok(_) => {
                e.push(key, "must be greater than 0");
                None
            }
            Err(why) => {
                e.push(key, why);
                None
            }
        };
    }
    let (default, min, max, what) = match kind {
        AlertKind::RegionDegraded => (
            0.5,
            0.0,
            1.0,
            "a share of healthy endpoints, above 0 and at most 1",
        ),
        AlertKind::FailoverActive => (0.0, 0.0, 1.0, "a share of requests, at least 0 and below 1"),
        AlertKind::ErrorRatio => (0.05, 0.0, 1.0, "a share of responses, at least 0 and below 1"),
        AlertKind::RetryBudgetExhausted => (0.0, 0.0, f64::MAX, "a number of retries refused, at least 0"),
        _ => (0.0, 0.0, f64::MAX, "a number of requests a second, at least 0"),
    };
    let Some(raw) = raw else {
        return Some(default);
    };
    let value = match raw {
        toml::Value::Float(f) => f,
        toml::Value::Integer(i) => i as f64,
        _ => {
            e.push(key, format!("must be {what}"));
            return None;
        }
    };
    let ok = match kind {
        // Fires below: 0 would never fire.
        AlertKind::RegionDegraded => value > min && value <= max,
        // Fires above: 1 would never fire.
        AlertKind::FailoverActive | AlertKind::ErrorRatio => value >= min && value < max,
        _ => value >= min && value.is_finite(),
    };
    if !ok {
        e.push(key, format!("must be {what}, got {value}"));
        return None;
    }
    Some(value)
}

fn labels(e: &mut Errors, path: &str, raw: BTreeMap<String, String>) -> BTreeMap<String, String> {
    raw.into_iter()
        .filter(|(name, _)| {
            let p = format!("{path}.labels.{name}");
            if !is_label_name(name) {
                e.push(
                    p,
                    "is not a label name: letters, digits and '_', not starting with a digit or \"__\"",
                );
                return false;
            }
            if RESERVED_LABELS.contains(&name.as_str()) {
                e.push(p, "is set by levee itself");
                return false;
            }
            true
        })
        .collect()
}

/// Prometheus's label names, without the `__` prefix it reserves.
fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    first_ok && !name.starts_with("__") && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A notifier's own request headers; their values may be secrets, so no
/// error repeats them.
fn notifier_headers(
    e: &mut Errors,
    path: &str,
    headers: BTreeMap<String, String>,
) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .into_iter()
        .filter_map(|(n, v)| {
            let p = format!("{path}.headers.{n}");
            let Ok(name) = HeaderName::from_bytes(n.as_bytes()) else {
                e.push(p, "is not a valid header name");
                return None;
            };
            if OWN_HEADERS.contains(&name.as_str()) {
                e.push(p, "is set by levee itself");
                return None;
            }
            // Values are secrets too: not repeated.
            let Ok(mut value) = HeaderValue::from_str(&v) else {
                e.push(p, "is not a valid header value");
                return None;
            };
            value.set_sensitive(true);
            Some((name, value))
        })
        .collect()
}

fn notifier(e: &mut Errors, name: &str, raw: RawNotifier) -> Option<Notifier> {
    let path = format!("alerting.notifier.{}", crate::raw::key(name));
    let checked_name = name_of(e, &path, name);
    let kind = match raw.kind.as_deref() {
        None => {
            e.push(
                format!("{path}.kind"),
                "is required: \"webhook\", \"slack\" or \"alertmanager\"",
            );
            None
        }
        Some(k) => NotifierKind::parse(k).or_else(|| {
            e.push(
                format!("{path}.kind"),
                format!("must be \"webhook\", \"slack\" or \"alertmanager\", got {k:?}"),
            );
            None
        }),
    };
    // The URL may be a credential (Slack's is): errors never repeat it.
    let url = match raw.url.as_deref() {
        None => {
            e.push(format!("{path}.url"), "is required: where notifications are sent");
            None
        }
        Some(text) => match http_url(text) {
            Ok(uri) => Some(uri),
            Err(why) => {
                e.push(format!("{path}.url"), why);
                None
            }
        },
    };
    let headers = notifier_headers(e, &path, raw.headers.unwrap_or_default());
    let request_timeout = timeout(e, &format!("{path}.timeout"), raw.timeout, Duration::from_secs(5));
    let queue = count(e, &format!("{path}.queue"), raw.queue, 1000, 1, 100_000);
    let max_retries = count(e, &format!("{path}.max_retries"), raw.max_retries, 5, 0, 100);
    let base = timeout(
        e,
        &format!("{path}.backoff_base"),
        raw.backoff_base,
        Duration::from_millis(500),
    );
    let cap = timeout(
        e,
        &format!("{path}.backoff_max"),
        raw.backoff_max,
        Duration::from_secs(30),
    );
    if base > cap {
        e.push(
            format!("{path}.backoff_max"),
            "must not be shorter than backoff_base",
        );
    }
    let grouping = match kind? {
        NotifierKind::Alertmanager => {
            // Alertmanager groups, waits and repeats by its own routes;
            // levee tells it every change at once and re-posts what fires.
            let grouping_keys = [
                ("group_by", raw.group_by.is_some()),
                ("group_wait", raw.group_wait.is_some()),
                ("group_interval", raw.group_interval.is_some()),
                ("repeat_interval", raw.repeat_interval.is_some()),
                ("send_resolved", raw.send_resolved.is_some()),
            ];
            for (key, given) in grouping_keys {
                if given {
                    e.push(
                        format!("{path}.{key}"),
                        "has no effect with kind = \"alertmanager\": Alertmanager groups and repeats notifications itself",
                    );
                }
            }
            GroupPolicy {
                group_by: GroupBy::Labels(Vec::new()),
                group_wait: Duration::ZERO,
                group_interval: Duration::ZERO,
                repeat_interval: timeout(
                    e,
                    &format!("{path}.resend_interval"),
                    raw.resend_interval,
                    Duration::from_secs(60),
                ),
                send_resolved: true,
            }
        }
        _ => {
            if raw.resend_interval.is_some() {
                e.push(
                    format!("{path}.resend_interval"),
                    "applies to kind = \"alertmanager\" only; see repeat_interval",
                );
            }
            GroupPolicy {
                group_by: group_by(e, &path, raw.group_by),
                group_wait: duration_or_zero(
                    e,
                    &format!("{path}.group_wait"),
                    raw.group_wait,
                    Duration::from_secs(5),
                ),
                group_interval: duration_or_zero(
                    e,
                    &format!("{path}.group_interval"),
                    raw.group_interval,
                    Duration::from_secs(60),
                ),
                repeat_interval: timeout(
                    e,
                    &format!("{path}.repeat_interval"),
                    raw.repeat_interval,
                    Duration::from_secs(4 * 3600),
                ),
                send_resolved: raw.send_resolved.unwrap_or(true),
            }
        }
    };
    Some(Notifier {
        name: checked_name?,
        kind: kind?,
        url: url?,
        headers,
        timeout: request_timeout,
        grouping,
        queue: queue?,
        max_retries: max_retries? as u32,
        backoff: Backoff { base, cap },
    })
}

fn group_by(e: &mut Errors, path: &str, raw: Option<Vec<String>>) -> GroupBy {
    let Some(list) = raw else {
        return GroupBy::Labels(vec!["alertname".to_string()]);
    };
    if list.iter().any(|l| l == "...") {
        if list.len() > 1 {
            e.push(format!("{path}.group_by"), "\"...\" (every label) must be alone");
        }
        return GroupBy::All;
    }
    let mut seen = HashSet::new();
    for (i, l) in list.iter().enumerate() {
        if !is_label_name(l) {
            e.push(
                format!("{path}.group_by[{i}]"),
                format!("{l:?} is not a label name"),
            );
        } else if !seen.insert(l) {
            e.push(format!("{path}.group_by[{i}]"), format!("{l:?} is listed twice"));
        }
    }
    GroupBy::Labels(list)
}

/// An absolute `http://` or `https://` URL with a host and no user info.
/// The reason it is refused never repeats the text (it may be a secret).
fn http_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|_| "is not a URL like \"https://hooks.example.com/levee\"".to_string())?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must start with http:// or https://".to_string()),
    }
    let Some(authority) = uri.authority() else {
        return Err("has no host".to_string());
    };
    if authority.as_str().contains('@') {
        return Err("must not carry a user or password: send credentials in headers".to_string());
    }
    if authority.host().is_empty() {
        return Err("has no host".to_string());
    }
    Ok(uri)
}
