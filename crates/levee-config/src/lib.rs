//! levee's configuration: one TOML file, read in two steps.
//!
//! First the file is deserialized into the raw shape ([`raw`]), where every
//! table rejects keys it does not know — a typo in failover settings must be
//! an error, not a silent default. Then the raw shape is turned into the
//! validated [`Config`] ([`validate`]), whose types cannot hold a bad value.
//! Both steps collect every problem they find with its path
//! (`upstream.app.region.primary.endpoints[1]: ...`) instead of stopping at
//! the first, so `levee check` shows a user everything to fix at once.

mod duration;
mod error;
mod model;
mod raw;
mod validate;

#[cfg(test)]
mod tests;

pub use duration::parse_duration;
pub use error::{ConfigError, ConfigErrors};
pub use model::*;

use std::path::Path;

/// Parses and validates a config from TOML text.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let (raw, shape_errors) = raw::parse(text)?;
    let mut config = validate::validate(raw, shape_errors)?;
    // The text parsed once already; it cannot fail now.
    let mut document: toml::Table = toml::from_str(text).unwrap_or_default();
    redact(&mut document);
    config.document = std::sync::Arc::new(document);
    Ok(config)
}

/// A route's faults from anything serde reads (the admin API's JSON), held
/// to the rules of `[route.fault]`: every problem named by its path under
/// `fault`. Fault headers are honoured from `headers_from`, or else from
/// `trusted` (the config's `server.trusted_proxies`).
pub fn route_fault<'de, D: serde::Deserializer<'de>>(
    input: D,
    trusted: &CidrSet,
) -> Result<RouteFault, ConfigErrors> {
    use serde::Deserialize;
    let raw = raw::RawFault::deserialize(input)
        .map_err(|e| ConfigErrors(vec![ConfigError::new("fault", e.to_string())]))?;
    let mut e = error::Errors::default();
    let fault = validate::route_fault(&mut e, "fault", raw, trusted);
    e.into_result(fault)
}

/// What replaces a secret in [`Config::document`].
pub const REDACTED: &str = "<redacted>";

/// Replaces the values that are credentials: the Redis password, the admin
/// token, and every notifier's URL (a Slack webhook URL is its own
/// credential) and headers.
fn redact(document: &mut toml::Table) {
    fn hide(table: Option<&mut toml::Value>, key: &str) {
        if let Some(toml::Value::Table(t)) = table
            && let Some(v) = t.get_mut(key)
        {
            *v = match v {
                toml::Value::Table(inner) => toml::Value::Table(
                    inner
                        .keys()
                        .map(|k| (k.clone(), toml::Value::String(REDACTED.into())))
                        .collect(),
                ),
                _ => toml::Value::String(REDACTED.into()),
            };
        }
    }
    hide(document.get_mut("redis"), "password");
    hide(document.get_mut("admin"), "token");
    if let Some(toml::Value::Table(alerting)) = document.get_mut("alerting")
        && let Some(toml::Value::Table(notifiers)) = alerting.get_mut("notifier")
    {
        for (_, notifier) in notifiers.iter_mut() {
            hide(Some(&mut *notifier), "url");
            hide(Some(notifier), "headers");
        }
    }
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            path.display().to_string(),
            format!("cannot read the file: {e}"),
        )])
    })?;
    parse(&text)
}
