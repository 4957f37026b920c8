//! The file's shape, as serde sees it. Every struct denies unknown keys.
//! Values stay close to the text (durations as strings, integers as `i64`)
//! so that validation can explain what is wrong with them.
//!
//! Each top-level section (and each listener, route and upstream) is
//! deserialized on its own, so one bad upstream does not hide the errors of
//! the next.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{ConfigError, ConfigErrors, Errors};

#[derive(Debug, Default)]
pub struct RawConfig {
    pub runtime: RawRuntime,
    pub admin: RawAdmin,
    pub server: RawServer,
    pub listener: Vec<(String, RawListener)>,
    pub route: Vec<RawRoute>,
    pub upstream: Vec<(String, RawUpstream)>,
    pub rate_limit: Vec<(String, RawRateLimit)>,
    pub redis: Option<RawRedis>,
    pub alerting: Option<RawAlerting>,
    /// `[[alert]]` rules that parsed, with their index in the file (for
    /// error paths: a broken rule before them must not shift them).
    pub alert: Vec<(usize, RawAlertRule)>,
    pub access_log: Option<RawAccessLog>,
    /// Named items whose shape was wrong: declared, so references to them
    /// are not reported again as references to nothing.
    pub broken_listeners: Vec<String>,
    pub broken_upstreams: Vec<String>,
    pub broken_rate_limits: Vec<String>,
    pub broken_notifiers: Vec<String>,
    /// `[alerting.notifier.<name>]` tables that parsed.
    pub notifier: Vec<(String, RawNotifier)>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub workers: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub header_timeout: Option<String>,
    pub keepalive_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub tunnel_idle_timeout: Option<String>,
    pub drain_timeout: Option<String>,
    pub max_uri_bytes: Option<i64>,
    pub max_header_bytes: Option<i64>,
    pub max_header_count: Option<i64>,
    pub max_body_bytes: Option<i64>,
    pub max_connections: Option<i64>,
    pub max_connections_per_ip: Option<i64>,
    pub max_requests_per_connection: Option<i64>,
    pub body_min_rate: Option<i64>,
    pub h2_max_concurrent_streams: Option<i64>,
    pub h2_max_reset_streams: Option<i64>,
    pub h2_max_control_frames: Option<i64>,
    pub h2_max_empty_frames: Option<i64>,
    pub trusted_proxies: Option<Vec<String>>,
    pub client_ip_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: String,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub proxy_protocol: Option<bool>,
    pub rate_limits: Option<Vec<String>>,
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    pub alpn: Option<Vec<String>>,
    pub min_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub upstream: String,
    #[serde(default)]
    pub listeners: Vec<String>,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    pub request_timeout: Option<String>,
    pub retry: Option<RawRetry>,
    pub fault: Option<RawFault>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub rate_limits: Option<Vec<String>>,
    pub priority: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFault {
    pub delay: Option<String>,
    pub delay_percent: Option<f64>,
    pub abort_status: Option<i64>,
    pub abort_percent: Option<f64>,
    pub abort_grpc_status: Option<i64>,
    pub response_rate: Option<i64>,
    pub response_rate_percent: Option<f64>,
    pub headers: Option<bool>,
    pub headers_from: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub rate: Option<i64>,
    pub per: Option<String>,
    pub burst: Option<i64>,
    pub key: Option<Vec<String>>,
    pub backend: Option<String>,
    pub max_keys: Option<i64>,
    pub instances: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub address: Option<String>,
    pub password: Option<String>,
    pub timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub key_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerting {
    pub evaluation_interval: Option<String>,
    pub external_url: Option<String>,
    pub default_rules: Option<bool>,
    /// `[alerting.notifier.<name>]`, read entry by entry into
    /// [`RawConfig::notifier`].
    pub notifier: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotifier {
    pub kind: Option<String>,
    pub url: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub timeout: Option<String>,
    pub group_by: Option<Vec<String>>,
    pub group_wait: Option<String>,
    pub group_interval: Option<String>,
    pub repeat_interval: Option<String>,
    pub resend_interval: Option<String>,
    pub send_resolved: Option<bool>,
    pub queue: Option<i64>,
    pub max_retries: Option<i64>,
    pub backoff_base: Option<String>,
    pub backoff_max: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlertRule {
    pub name: String,
    pub kind: String,
    /// A number, or a duration string for `latency_p99`: read per kind.
    pub threshold: Option<toml::Value>,
    pub window: Option<String>,
    #[serde(rename = "for")]
    pub hold: Option<String>,
    pub severity: Option<String>,
    pub upstream: Option<String>,
    pub rate_limit: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub summary: Option<String>,
    pub description: Option<String>,
    pub runbook_url: Option<String>,
    pub notifiers: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    pub format: Option<String>,
    pub fields: Option<Vec<String>>,
    pub buffer: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<i64>,
    pub retry_on: Option<Vec<String>>,
    pub per_try_timeout: Option<String>,
    pub backoff_base: Option<String>,
    pub backoff_max: Option<String>,
    pub retry_after_max: Option<String>,
    pub max_body_bytes: Option<i64>,
    pub idempotent: Option<bool>,
    pub hedge_after: Option<String>,
    pub leave_region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub hosts: Vec<String>,
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub balance: Option<String>,
    pub hash_on: Option<String>,
    pub protocol: Option<String>,
    pub connect_timeout: Option<String>,
    pub response_header_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_idle_per_endpoint: Option<i64>,
    pub health: Option<RawHealth>,
    pub failover: Option<RawFailover>,
    pub outlier: Option<RawOutlier>,
    pub limits: Option<RawLimits>,
    pub retry_budget: Option<RawRetryBudget>,
    pub adaptive_concurrency: Option<RawAdaptive>,
    pub tls: Option<RawUpstreamTls>,
    #[serde(default)]
    pub region: BTreeMap<String, RawRegion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub sni: Option<String>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdaptive {
    pub initial_limit: Option<i64>,
    pub min_limit: Option<i64>,
    pub max_limit: Option<i64>,
    pub tolerance: Option<f64>,
    pub smoothing: Option<f64>,
    pub window: Option<String>,
    pub min_samples: Option<i64>,
    pub rebase_after: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailover {
    pub mode: Option<String>,
    pub overprovisioning: Option<f64>,
    pub panic_threshold_percent: Option<i64>,
    pub failback_after: Option<String>,
    pub ramp: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_5xx: Option<i64>,
    pub consecutive_gateway_failure: Option<i64>,
    pub base_ejection_time: Option<String>,
    pub max_ejection_time: Option<String>,
    pub ejection_jitter: Option<String>,
    pub max_ejection_percent: Option<i64>,
    pub min_available_per_region: Option<i64>,
    pub uneject_on_check_success: Option<bool>,
    pub success_rate_min_hosts: Option<i64>,
    pub success_rate_request_volume: Option<i64>,
    pub success_rate_stdev_factor: Option<f64>,
    pub success_rate_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<i64>,
    pub max_pending: Option<i64>,
    pub max_requests: Option<i64>,
    pub max_retries: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetryBudget {
    pub percent: Option<i64>,
    pub min_per_second: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub expect: Option<Vec<String>>,
    pub interval: Option<String>,
    pub unhealthy_interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<i64>,
    pub fall: Option<i64>,
    pub jitter_percent: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegion {
    pub priority: Option<i64>,
    /// Strings (`"10.0.0.1:80"`) or tables (`{ address = ..., weight = 2 }`);
    /// kept as values so each entry's error names its own index.
    #[serde(default)]
    pub endpoints: Vec<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpointTable {
    pub address: String,
    pub weight: Option<i64>,
}

/// Parses TOML text into the raw shape. A syntax error ends there; shape
/// errors are collected per section and returned beside what did parse,
/// so that validation can still report the problems of everything else.
pub fn parse(text: &str) -> Result<(RawConfig, Errors), ConfigErrors> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            location(text, e.span()),
            e.message().trim_end().to_string(),
        )])
    })?;
    let mut errors = Errors::default();
    let mut raw = RawConfig::default();
    for (key, value) in table {
        match key.as_str() {
            "runtime" => {
                if let Some(v) = section(&mut errors, "runtime", value) {
                    raw.runtime = v;
                }
            }
            "admin" => {
                if let Some(v) = section(&mut errors, "admin", value) {
                    raw.admin = v;
                }
            }
            "server" => {
                if let Some(v) = section(&mut errors, "server", value) {
                    raw.server = v;
                }
            }
            "listener" => {
                (raw.listener, raw.broken_listeners) = named(&mut errors, "listener", value);
            }
            "upstream" => {
                (raw.upstream, raw.broken_upstreams) = named(&mut errors, "upstream", value);
            }
            "rate_limit" => {
                (raw.rate_limit, raw.broken_rate_limits) = named(&mut errors, "rate_limit", value);
            }
            "redis" => {
                raw.redis = section(&mut errors, "redis", value);
            }
            "alerting" => {
                let mut alerting: Option<RawAlerting> = section(&mut errors, "alerting", value);
                if let Some(notifiers) = alerting.as_mut().and_then(|a| a.notifier.take()) {
                    (raw.notifier, raw.broken_notifiers) =
                        named(&mut errors, "alerting.notifier", notifiers);
                }
                raw.alerting = alerting;
            }
            "alert" => match value {
                toml::Value::Array(items) => {
                    for (i, item) in items.into_iter().enumerate() {
                        if let Some(r) = section(&mut errors, &format!("alert[{i}]"), item) {
                            raw.alert.push((i, r));
                        }
                    }
                }
                _ => errors.push(
                    "alert",
                    "must be an array of tables: write each alert rule as [[alert]]",
                ),
            },
            "access_log" => {
                raw.access_log = section(&mut errors, "access_log", value);
            }
            "route" => match value {
                toml::Value::Array(items) => {
                    for (i, item) in items.into_iter().enumerate() {
                        if let Some(r) = section(&mut errors, &format!("route[{i}]"), item) {
                            raw.route.push(r);
                        }
                    }
                }
                _ => errors.push(
                    "route",
                    "must be an array of tables: write each route as [[route]]",
                ),
            },
            other => errors.push(
                self::key(other),
                "unknown section; expected one of runtime, admin, server, listener, route, upstream, rate_limit, redis, access_log, alerting, alert",
            ),
        }
    }
    Ok((raw, errors))
}

/// Deserializes one section, recording an error with the full path.
fn section<T: DeserializeOwned>(errors: &mut Errors, path: &str, value: toml::Value) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let full = if inner == "." || inner.is_empty() {
                path.to_string()
            } else if inner.starts_with('[') {
                format!("{path}{inner}")
            } else {
                format!("{path}.{inner}")
            };
            errors.push(full, serde_message(&e.into_inner()));
            None
        }
    }
}

/// The first line of a deserialization error: toml appends where in the
/// document it happened, which the path already says.
pub(crate) fn serde_message(e: &toml::de::Error) -> String {
    e.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

/// Deserializes a table of named tables (`[listener.<name>]`) entry by
/// entry; returns those that parsed and the names of those that did not.
fn named<T: DeserializeOwned>(
    errors: &mut Errors,
    path: &str,
    value: toml::Value,
) -> (Vec<(String, T)>, Vec<String>) {
    let toml::Value::Table(entries) = value else {
        errors.push(
            path,
            format!("must be a table of named tables, like [{path}.main]"),
        );
        return (Vec::new(), Vec::new());
    };
    let mut good = Vec::new();
    let mut broken = Vec::new();
    for (name, v) in entries {
        match section(errors, &format!("{path}.{}", key(&name)), v) {
            Some(item) => good.push((name, item)),
            None => broken.push(name),
        }
    }
    (good, broken)
}

/// A key as a path names it: bare when TOML allows, quoted otherwise, so
/// that an empty key or one with a dot still gives a path that says where.
pub(crate) fn key(k: &str) -> std::borrow::Cow<'_, str> {
    let bare = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        std::borrow::Cow::Borrowed(k)
    } else {
        std::borrow::Cow::Owned(format!("{k:?}"))
    }
}

/// `line L, column C` for a byte span of the text.
fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return "the file".to_string();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("line {line}, column {column}")
}
