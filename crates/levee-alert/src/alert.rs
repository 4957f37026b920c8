//! An alert as the API, the event stream and the notifiers see it.

use std::collections::BTreeMap;

use levee_config::{AlertKind, AlertRule, Severity};
use levee_core::alert::Instance;
use serde::{Serialize, Serializer};

/// One alert: a rule's condition holding (or having held) for one instance.
/// Serialises as `GET /api/v1/alerts` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    pub rule: String,
    #[serde(serialize_with = "kind_str")]
    pub kind: AlertKind,
    /// `pending`, `firing`, `resolved` (or `inactive`, for a pending alert
    /// that ended, in the event stream only).
    pub state: &'static str,
    #[serde(serialize_with = "severity_str")]
    pub severity: Severity,
    /// The instance's labels (`upstream`, `region`, `endpoint`,
    /// `rate_limit`, as the kind has them) and the rule's own `labels`.
    pub labels: BTreeMap<String, String>,
    /// `summary`, and `description` and `runbook_url` when the rule has them.
    pub annotations: BTreeMap<String, String>,
    pub value: f64,
    /// When the condition started to hold (ms since the Unix epoch).
    pub active_since_ms: u64,
    /// When it started firing; `null` while pending.
    pub firing_since_ms: Option<u64>,
    /// When it resolved.
    #[serde(skip)]
    pub resolved_ms: Option<u64>,
}

impl Alert {
    /// The alert of `rule` for one instance, in `state`.
    pub fn new(
        rule: &AlertRule,
        instance: &Instance,
        state: &'static str,
        resolved_ms: Option<u64>,
    ) -> Alert {
        let kind = rule.condition.kind;
        let mut labels: BTreeMap<String, String> = rule.labels.clone();
        for (name, value) in &instance.labels {
            labels.insert((*name).to_string(), value.clone());
        }
        let placeholder = |name: &str| -> String {
            match name {
                "rule" => rule.name.clone(),
                "value" => kind.format_value(instance.value),
                "threshold" => kind.format_value(rule.condition.threshold),
                label => instance
                    .labels
                    .iter()
                    .find(|(n, _)| *n == label)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default(),
            }
        };
        let mut annotations = BTreeMap::new();
        annotations.insert("summary".to_string(), rule.summary.render(placeholder));
        if let Some(d) = &rule.description {
            annotations.insert("description".to_string(), d.render(placeholder));
        }
        if let Some(url) = &rule.runbook_url {
            annotations.insert("runbook_url".to_string(), url.clone());
        }
        Alert {
            rule: rule.name.clone(),
            kind,
            state,
            severity: rule.severity,
            labels,
            annotations,
            value: instance.value,
            active_since_ms: instance.active_since_ms,
            firing_since_ms: instance.firing_since_ms,
            resolved_ms,
        }
    }

    /// What names the alert among all others: its rule and instance.
    pub fn id(&self) -> String {
        let mut id = self.rule.clone();
        for (k, v) in &self.labels {
            id.push('\u{1f}');
            id.push_str(k);
            id.push('=');
            id.push_str(v);
        }
        id
    }

    /// Every label, as Alertmanager sees them: `alertname` (the rule) and
    /// `severity` beside the alert's own.
    pub fn all_labels(&self) -> BTreeMap<String, String> {
        let mut all = self.labels.clone();
        all.insert("alertname".to_string(), self.rule.clone());
        all.insert("severity".to_string(), self.severity.as_str().to_string());
        all
    }

    pub fn is_firing(&self) -> bool {
        self.state == "firing"
    }

    /// A copy marked resolved at `ms`.
    pub fn resolved_at(&self, ms: u64) -> Alert {
        Alert {
            state: "resolved",
            resolved_ms: Some(ms),
            ..self.clone()
        }
    }
}

fn kind_str<S: Serializer>(kind: &AlertKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind.as_str())
}

fn severity_str<S: Serializer>(severity: &Severity, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(severity.as_str())
}
