//! `[alerting]`, `[alerting.notifier.<name>]` and `[[alert]]`: which alert
//! rules run and where their notifications go.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
pub use levee_core::alert::group::{GroupBy, Policy as GroupPolicy};
pub use levee_core::alert::{Condition, Fact, Kind as AlertKind, Severity};
use levee_core::id::UpstreamName;
use levee_core::retry::Backoff;

/// `[alerting]` with its notifiers, and the rules in force.
#[derive(Clone, Debug, PartialEq)]
pub struct Alerting {
    /// How often every rule is evaluated.
    pub evaluation_interval: Duration,
    /// Where levee's own pages are reached from a receiver, without a
    /// trailing `/` (the base of `generatorURL`).
    pub external_url: String,
    /// The `[[alert]]` rules, or the default set when the file has none
    /// and `default_rules` is on.
    pub rules: Vec<AlertRule>,
    pub notifiers: Vec<Notifier>,
}

/// `[[alert]]`: one rule.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRule {
    /// Unique among the rules; the `alertname` label.
    pub name: String,
    /// The kind, threshold and `for`.
    pub condition: Condition,
    /// The history a windowed kind reads ([`AlertKind::uses_window`]).
    pub window: Duration,
    pub severity: Severity,
    /// Only facts of this upstream.
    pub upstream: Option<UpstreamName>,
    /// Only facts of this rate limit rule (`rate_limited`).
    pub rate_limit: Option<String>,
    /// Extra labels every alert of the rule carries.
    pub labels: BTreeMap<String, String>,
    pub summary: Template,
    pub description: Option<Template>,
    pub runbook_url: Option<String>,
    /// The notifiers told about it, by name (every notifier unless the
    /// rule names some).
    pub notifiers: Vec<String>,
}

impl AlertRule {
    /// Whether the rule watches this fact (its `upstream` and `rate_limit`
    /// filters).
    pub fn selects(&self, fact: &Fact) -> bool {
        let upstream_ok = self
            .upstream
            .as_ref()
            .is_none_or(|u| fact.label("upstream") == Some(u.as_str()));
        let rate_limit_ok = self
            .rate_limit
            .as_ref()
            .is_none_or(|r| fact.label("rate_limit") == Some(r.as_str()));
        upstream_ok && rate_limit_ok
    }
}

/// `[alerting.notifier.<name>]`: a receiver of notifications.
#[derive(Clone, PartialEq)]
pub struct Notifier {
    pub name: String,
    pub kind: NotifierKind,
    /// A secret: a Slack incoming-webhook URL is the credential itself, and
    /// other receivers often carry a token in theirs. Never printed
    /// (`Debug` redacts it) and redacted by `GET /api/v1/config`.
    pub url: Uri,
    /// Sent with every notification. Secrets too (an `Authorization`
    /// header): redacted like `url`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Deadline of one delivery attempt, from connect to the end of the
    /// answer.
    pub timeout: Duration,
    /// When the notifier speaks. For `alertmanager`, no grouping (one
    /// group, no waits) and `repeat_interval` is its `resend_interval`.
    pub grouping: GroupPolicy,
    /// Notifications waiting for delivery at most; beyond, new ones are
    /// dropped and counted.
    pub queue: usize,
    /// Attempts after the first, on a connection failure, a timeout, a 5xx
    /// or a 429.
    pub max_retries: u32,
    pub backoff: Backoff,
}

/// Never prints the URL or the header values.
impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Notifier")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &"<redacted>")
            .field("headers", &headers)
            .field("timeout", &self.timeout)
            .field("grouping", &self.grouping)
            .field("queue", &self.queue)
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .finish()
    }
}

/// The payload format a notifier speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifierKind {
    /// Generic JSON, close to Alertmanager's webhook format.
    Webhook,
    /// A Slack incoming webhook.
    Slack,
    /// Alertmanager's API: `POST <url>/api/v2/alerts`.
    Alertmanager,
}

impl NotifierKind {
    pub const ALL: [NotifierKind; 3] = [
        NotifierKind::Webhook,
        NotifierKind::Slack,
        NotifierKind::Alertmanager,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifierKind::Webhook => "webhook",
            NotifierKind::Slack => "slack",
            NotifierKind::Alertmanager => "alertmanager",
        }
    }

    pub fn parse(s: &str) -> Option<NotifierKind> {
        NotifierKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A `summary` or `description`: text with `{name}` placeholders, each a
/// label of the rule's kind, `rule`, `value` or `threshold`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(pub(crate) String);

/// Placeholders every rule may use, besides its kind's labels.
pub const COMMON_PLACEHOLDERS: [&str; 3] = ["rule", "value", "threshold"];

impl Template {
    /// Checks that every `{...}` names a placeholder `known` accepts.
    /// Returns the first unknown one.
    pub fn parse(text: &str, known: impl Fn(&str) -> bool) -> Result<Template, String> {
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err("has a '{' without its '}'".to_string());
            };
            let name = &after[..close];
            if !known(name) {
                return Err(format!("{{{name}}} is not a placeholder here"));
            }
            rest = &after[close + 1..];
        }
        Ok(Template(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text with each placeholder replaced by `value(name)`.
    pub fn render(&self, value: impl Fn(&str) -> String) -> String {
        let mut out = String::with_capacity(self.0.len() + 32);
        let mut rest = self.0.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match after.find('}') {
                Some(close) => {
                    out.push_str(&value(&after[..close]));
                    rest = &after[close + 1..];
                }
                None => {
                    rest = &rest[open..];
                    break;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// The summary of a rule that does not write one.
pub fn default_summary(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::EndpointDown => "endpoint {endpoint} of {upstream} (region {region}) is down",
        AlertKind::RegionDegraded => "region {region} of {upstream}: {value} of its endpoints healthy",
        AlertKind::FailoverActive => "{upstream}: {value} of requests failed over from the preferred region",
        AlertKind::ErrorRatio => "{upstream}: {value} of responses are errors",
        AlertKind::LatencyP99 => "{upstream}: p99 latency is {value}",
        AlertKind::Shedding => "{upstream}: shedding {value} requests",
        AlertKind::RateLimited => "rate limit {rate_limit} refuses {value} requests",
        AlertKind::RetryBudgetExhausted => "{upstream}: retry budget spent, {value} retries refused recently",
        AlertKind::RedisDegraded => "Redis is unreachable: rate limits decide locally",
        AlertKind::ReloadFailed => "the last config reload failed: the previous config keeps serving",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_their_placeholders() {
        let t = Template::parse("{upstream} is at {value}!", |n| n == "upstream" || n == "value").unwrap();
        let out = t.render(|n| match n {
            "upstream" => "app".to_string(),
            _ => "12%".to_string(),
        });
        assert_eq!(out, "app is at 12%!");
        assert!(Template::parse("{endpoit}", |n| n == "endpoint").is_err());
        assert!(Template::parse("a { b", |_| true).is_err());
    }

    #[test]
    fn default_summaries_use_their_kinds_labels() {
        for kind in AlertKind::ALL {
            let known = |n: &str| COMMON_PLACEHOLDERS.contains(&n) || kind.labels().contains(&n);
            assert!(Template::parse(default_summary(kind), known).is_ok(), "{kind:?}");
        }
    }
}
