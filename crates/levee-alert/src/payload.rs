//! What each kind of notifier is sent: the body of one POST for one group.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use levee_config::{NotifierKind, Severity};
use levee_core::alert::group::Batch;
use levee_core::hash::Fnv1a;
use serde_json::{Value, json};

use crate::alert::Alert;
use crate::time::{ZERO, rfc3339};

/// Slack shows at most this many alerts of one notification; the text
/// says how many more there are.
const SLACK_MAX_ATTACHMENTS: usize = 20;

/// Where and when a notification is rendered.
pub struct Context<'a> {
    pub receiver: &'a str,
    pub external_url: &'a str,
    pub now_ms: u64,
    /// For Alertmanager: how often firing alerts are posted again.
    pub resend_interval: Duration,
}

/// The body of one notification for a notifier of `kind`.
pub fn render(kind: NotifierKind, batch: &Batch<Arc<Alert>>, cx: &Context<'_>) -> Bytes {
    let value = match kind {
        NotifierKind::Webhook => webhook(batch, cx),
        NotifierKind::Slack => slack(batch, cx),
        NotifierKind::Alertmanager => alertmanager(batch, cx),
    };
    // Serialising a Value into a Vec cannot fail.
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

fn generator_url(cx: &Context<'_>) -> String {
    format!("{}/#alerts", cx.external_url)
}

fn status(firing: bool) -> &'static str {
    if firing { "firing" } else { "resolved" }
}

/// levee's generic JSON: Alertmanager's webhook format (version 4), so
/// receivers written for it understand it, with levee's `rule`, `kind`,
/// `severity` and `value` beside each alert.
fn webhook(batch: &Batch<Arc<Alert>>, cx: &Context<'_>) -> Value {
    let alerts: Vec<Value> = batch
        .alerts
        .iter()
        .map(|(firing, a)| {
            json!({
                "status": status(*firing),
                "rule": a.rule,
                "kind": a.kind.as_str(),
                "severity": a.severity.as_str(),
                "value": finite(a.value),
                "labels": a.all_labels(),
                "annotations": a.annotations,
                "startsAt": rfc3339(start_ms(a)),
                "endsAt": match (firing, a.resolved_ms) {
                    (false, Some(ms)) => rfc3339(ms),
                    _ => ZERO.to_string(),
                },
                "generatorURL": generator_url(cx),
                "fingerprint": fingerprint(&a.all_labels()),
            })
        })
        .collect();
    let all: Vec<BTreeMap<String, String>> = batch.alerts.iter().map(|(_, a)| a.all_labels()).collect();
    let annotations: Vec<BTreeMap<String, String>> =
        batch.alerts.iter().map(|(_, a)| a.annotations.clone()).collect();
    json!({
        "version": "4",
        "receiver": cx.receiver,
        "status": status(batch.firing() > 0),
        "groupKey": group_key(&batch.group),
        "groupLabels": batch.group,
        "commonLabels": common(&all),
        "commonAnnotations": common(&annotations),
        "externalURL": cx.external_url,
        "truncatedAlerts": 0,
        "alerts": alerts,
    })
}

/// A Slack incoming-webhook message: a one-line `text` and one coloured
/// attachment per alert (red critical, amber warning, blue info, green
/// resolved).
fn slack(batch: &Batch<Arc<Alert>>, cx: &Context<'_>) -> Value {
    let firing = batch.firing();
    let resolved = batch.alerts.len() - firing;
    let group: Vec<String> = batch.group.values().filter(|v| !v.is_empty()).cloned().collect();
    let mut text = match (firing, resolved) {
        (0, n) => format!("[RESOLVED:{n}] {}", group.join(" ")),
        (f, 0) => format!("[FIRING:{f}] {}", group.join(" ")),
        (f, n) => format!("[FIRING:{f}, RESOLVED:{n}] {}", group.join(" ")),
    };
    if batch.alerts.len() > SLACK_MAX_ATTACHMENTS {
        text.push_str(&format!(
            " ({} more not shown)",
            batch.alerts.len() - SLACK_MAX_ATTACHMENTS
        ));
    }
    let attachments: Vec<Value> = batch
        .alerts
        .iter()
        .take(SLACK_MAX_ATTACHMENTS)
        .map(|(firing, a)| {
            let color = match (firing, a.severity) {
                (false, _) => "#2eb886",
                (true, Severity::Critical) => "#d93025",
                (true, Severity::Warning) => "#f2a900",
                (true, Severity::Info) => "#439fe0",
            };
            let mut body = a.annotations.get("summary").cloned().unwrap_or_default();
            if let Some(d) = a.annotations.get("description") {
                body.push('\n');
                body.push_str(d);
            }
            if let Some(url) = a.annotations.get("runbook_url") {
                body.push_str(&format!("\n<{url}|Runbook>"));
            }
            let mut fields: Vec<Value> = a
                .labels
                .iter()
                .map(|(k, v)| json!({"title": k, "value": v, "short": true}))
                .collect();
            fields.push(json!({"title": "value", "value": a.kind.format_value(a.value), "short": true}));
            json!({
                "color": color,
                "fallback": format!("[{}] {}: {}", status(*firing).to_uppercase(), a.rule, a.annotations.get("summary").map_or("", String::as_str)),
                "title": format!("[{}] {} ({})", status(*firing).to_uppercase(), a.rule, a.severity.as_str()),
                "title_link": generator_url(cx),
                "text": body,
                "fields": fields,
                "footer": "levee",
                "ts": start_ms(a) / 1000,
            })
        })
        .collect();
    json!({ "text": text, "attachments": attachments })
}

/// Alertmanager's `POST /api/v2/alerts` body: every alert of the batch.
/// A firing alert's `endsAt` is four resend intervals ahead, so that
/// Alertmanager resolves it by itself should levee stop re-posting it (as
/// Prometheus does); a resolved one's is when it resolved.
fn alertmanager(batch: &Batch<Arc<Alert>>, cx: &Context<'_>) -> Value {
    let valid_for = u64::try_from(cx.resend_interval.as_millis().saturating_mul(4)).unwrap_or(u64::MAX);
    let alerts: Vec<Value> = batch
        .alerts
        .iter()
        .map(|(firing, a)| {
            let ends = match (firing, a.resolved_ms) {
                (false, Some(ms)) => ms,
                _ => cx.now_ms.saturating_add(valid_for),
            };
            json!({
                "labels": a.all_labels(),
                "annotations": a.annotations,
                "startsAt": rfc3339(start_ms(a)),
                "endsAt": rfc3339(ends),
                "generatorURL": generator_url(cx),
            })
        })
        .collect();
    Value::Array(alerts)
}

/// When the alert started firing (when it became active, for one never
/// seen firing).
fn start_ms(a: &Alert) -> u64 {
    a.firing_since_ms.unwrap_or(a.active_since_ms)
}

/// JSON has no NaN: a value that is not a number is `null`.
fn finite(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}

/// The label pairs every map shares.
fn common(maps: &[BTreeMap<String, String>]) -> BTreeMap<String, String> {
    let Some((first, rest)) = maps.split_first() else {
        return BTreeMap::new();
    };
    first
        .iter()
        .filter(|(k, v)| rest.iter().all(|m| m.get(*k) == Some(v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `{alertname="app-failover"}`, as Alertmanager writes group keys.
fn group_key(group: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = group.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", pairs.join(","))
}

/// A stable id for a label set: FNV-1a 64 over the sorted pairs, in hex,
/// as Alertmanager's fingerprints are.
fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h = Fnv1a::new();
    for (k, v) in labels {
        // 0xff occurs in no UTF-8 text, so it separates unambiguously.
        h.write(k.as_bytes());
        h.write(&[0xff]);
        h.write(v.as_bytes());
        h.write(&[0xff]);
    }
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use levee_config::AlertKind;

    fn alert(rule: &str, endpoint: &str, severity: Severity, resolved: Option<u64>) -> Arc<Alert> {
        Arc::new(Alert {
            rule: rule.to_string(),
            kind: AlertKind::EndpointDown,
            state: if resolved.is_some() { "resolved" } else { "firing" },
            severity,
            labels: BTreeMap::from([
                ("upstream".to_string(), "app".to_string()),
                ("endpoint".to_string(), endpoint.to_string()),
            ]),
            annotations: BTreeMap::from([("summary".to_string(), format!("{endpoint} is down"))]),
            value: 1.0,
            active_since_ms: 1_764_460_800_000,
            firing_since_ms: Some(1_764_460_801_000),
            resolved_ms: resolved,
        })
    }

    fn batch() -> Batch<Arc<Alert>> {
        Batch {
            group: BTreeMap::from([("alertname".to_string(), "down".to_string())]),
            alerts: vec![
                (true, alert("down", "127.0.0.1:1", Severity::Critical, None)),
                (
                    false,
                    alert("down", "127.0.0.1:2", Severity::Critical, Some(1_764_460_860_000)),
                ),
            ],
        }
    }

    fn cx() -> Context<'static> {
        Context {
            receiver: "hook",
            external_url: "http://127.0.0.1:9901",
            now_ms: 1_764_460_900_000,
            resend_interval: Duration::from_secs(60),
        }
    }

    fn parse(kind: NotifierKind) -> Value {
        serde_json::from_slice(&render(kind, &batch(), &cx())).unwrap()
    }

    #[test]
    fn webhook_speaks_alertmanagers_webhook_format() {
        let v = parse(NotifierKind::Webhook);
        assert_eq!(v["version"], "4");
        assert_eq!(v["receiver"], "hook");
        assert_eq!(v["status"], "firing");
        assert_eq!(v["groupKey"], "{alertname=\"down\"}");
        assert_eq!(v["commonLabels"]["upstream"], "app");
        assert!(v["commonLabels"].get("endpoint").is_none());
        let a = &v["alerts"][0];
        assert_eq!(a["status"], "firing");
        assert_eq!(a["rule"], "down");
        assert_eq!(a["kind"], "endpoint_down");
        assert_eq!(a["labels"]["alertname"], "down");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["startsAt"], "2025-11-30T00:00:01.000Z");
        assert_eq!(a["endsAt"], ZERO);
        assert_eq!(a["generatorURL"], "http://127.0.0.1:9901/#alerts");
        assert_eq!(a["fingerprint"].as_str().map(str::len), Some(16));
        let r = &v["alerts"][1];
        assert_eq!(r["status"], "resolved");
        assert_eq!(r["endsAt"], "2025-11-30T00:01:00.000Z");
    }

    #[test]
    fn slack_colours_by_severity_and_resolved_in_green() {
        let v = parse(NotifierKind::Slack);
        assert_eq!(v["text"], "[FIRING:1, RESOLVED:1] down");
        assert_eq!(v["attachments"][0]["color"], "#d93025");
        assert_eq!(v["attachments"][1]["color"], "#2eb886");
        assert_eq!(v["attachments"][0]["title"], "[FIRING] down (critical)");
        let fields = v["attachments"][0]["fields"].as_array().unwrap();
        assert!(
            fields
                .iter()
                .any(|f| f["title"] == "endpoint" && f["value"] == "127.0.0.1:1")
        );
    }

    #[test]
    fn alertmanager_gets_an_array_with_ends_ahead_or_when_resolved() {
        let v = parse(NotifierKind::Alertmanager);
        let list = v.as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["labels"]["alertname"], "down");
        assert_eq!(list[0]["startsAt"], "2025-11-30T00:00:01.000Z");
        // now + 4 × 60 s
        assert_eq!(list[0]["endsAt"], "2025-11-30T00:05:40.000Z");
        assert_eq!(list[1]["endsAt"], "2025-11-30T00:01:00.000Z");
        assert_eq!(list[0]["annotations"]["summary"], "127.0.0.1:1 is down");
    }

    #[test]
    fn fingerprints_are_pinned() {
        // Receivers deduplicate and group by these ids; a change would make
        // every open alert look new after an upgrade.
        assert_eq!(fingerprint(&BTreeMap::new()), "cbf29ce484222325");
        let labels = BTreeMap::from([
            ("alertname".to_string(), "endpoint-down".to_string()),
            ("upstream".to_string(), "app".to_string()),
            ("endpoint".to_string(), "10.0.0.1:80".to_string()),
        ]);
        assert_eq!(fingerprint(&labels), "4d53e03737aed0b3");
    }
}
