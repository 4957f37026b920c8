//! Reading one TOML table of a scenario file: each key is taken out as it
//! is read, with its type checked, and whatever is left at the end is an
//! unknown key. Every problem is recorded under its path and reading goes
//! on, so one pass finds them all.

use std::time::Duration;

use levee_config::parse_duration;

use crate::scenario::model::{ScenarioError, ScenarioErrors};

/// The default `load.timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most requests per second a scenario may ask for (`load.rate`, a
/// flood's `rate`).
pub const MAX_RATE: i64 = 100_000;

/// The problems found so far.
#[derive(Default)]
pub(crate) struct Errors(Vec<ScenarioError>);

impl Errors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ScenarioError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_errors(self) -> ScenarioErrors {
        ScenarioErrors(self.0)
    }
}

/// A key as a path names it: bare when TOML allows, quoted otherwise.
pub(crate) fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare { k.to_string() } else { format!("{k:?}") }
}

/// How a value is shown in a message: as the file would write it.
pub(crate) fn shown(v: &toml::Value) -> String {
    match v {
        toml::Value::Table(_) => "a table".to_string(),
        toml::Value::Array(_) => "an array".to_string(),
        other => other.to_string(),
    }
}

/// One table being read.
pub(crate) struct Fields {
    path: String,
    entries: toml::Table,
}

impl Fields {
    /// The table at `path`; a value that is not a table is reported and
    /// read as an empty one.
    pub fn of(e: &mut Errors, path: &str, value: Option<toml::Value>) -> Fields {
        let entries = match value {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t,
            Some(other) => {
                e.push(path, format!("must be a table, got {}", shown(&other)));
                toml::Table::new()
            }
        };
        Fields {
            path: path.to_string(),
            entries,
        }
    }

    /// The path of `k` in this table.
    pub fn path_of(&self, k: &str) -> String {
        if self.path.is_empty() {
            key(k)
        } else {
            format!("{}.{}", self.path, key(k))
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn has(&self, k: &str) -> bool {
        self.entries.contains_key(k)
    }

    /// Takes `k` out, whatever its type.
    pub fn take(&mut self, k: &str) -> Option<toml::Value> {
        self.entries.remove(k)
    }

    /// Takes `k` out if it is a string; else reports it.
    pub fn string(&mut self, e: &mut Errors, k: &str) -> Option<String> {
        match self.take(k)? {
            toml::Value::String(s) => Some(s),
            other => {
                e.push(
                    self.path_of(k),
                    format!("must be a string, got {}", shown(&other)),
                );
                None
            }
        }
    }

    pub fn boolean(&mut self, e: &mut Errors, k: &str) -> Option<bool> {
        match self.take(k)? {
            toml::Value::Boolean(b) => Some(b),
            other => {
                e.push(
                    self.path_of(k),
                    format!("must be true or false, got {}", shown(&other)),
                );
                None
            }
        }
    }

    /// An integer from `min` to `max`.
    pub fn integer(&mut self, e: &mut Errors, k: &str, min: i64, max: i64) -> Option<i64> {
        match self.take(k)? {
            toml::Value::Integer(n) if (min..=max).contains(&n) => Some(n),
            toml::Value::Integer(n) => {
                e.push(self.path_of(k), format!("must be from {min} to {max}, got {n}"));
                None
            }
            other => {
                e.push(
                    self.path_of(k),
                    format!("must be a whole number, got {}", shown(&other)),
                );
                None
            }
        }
    }

    /// A number (integer or not) from `min` to `max`.
    pub fn number(&mut self, e: &mut Errors, k: &str, min: f64, max: f64) -> Option<f64> {
        let path = self.path_of(k);
        number(e, &path, self.take(k)?, min, max)
    }

    /// A duration in levee's syntax (`"250ms"`, `"2s"`, `"1.5m"`), over 0
    /// unless `zero` allows it.
    pub fn duration(&mut self, e: &mut Errors, k: &str, zero: bool) -> Option<Duration> {
        let value = self.take(k)?;
        let path = self.path_of(k);
        let toml::Value::String(text) = &value else {
            e.push(
                path,
                format!("must be a duration such as \"250ms\", got {}", shown(&value)),
            );
            return None;
        };
        match parse_duration(text) {
            Ok(d) if d.is_zero() && !zero => {
                e.push(path, "must be longer than 0");
                None
            }
            Ok(d) => Some(d),
            Err(why) if why.starts_with("must be") => {
                e.push(
                    path,
                    format!("must be a duration such as \"250ms\" (units ms, s, m, h), got {text:?}"),
                );
                None
            }
            Err(why) => {
                e.push(path, why);
                None
            }
        }
    }

    /// Reports each key not read, naming the keys this table has.
    pub fn finish(self, e: &mut Errors, expected: &[&str]) {
        for k in self.entries.keys() {
            e.push(
                self.path_of(k),
                format!("unknown key; expected one of {}", expected.join(", ")),
            );
        }
    }

    /// Takes the remaining entries, for tables whose keys are data
    /// (`load.methods`, `attributes`).
    pub fn into_entries(self) -> toml::Table {
        self.entries
    }
}

/// A number from `min` to `max`, at `path`.
pub(crate) fn number(e: &mut Errors, path: &str, value: toml::Value, min: f64, max: f64) -> Option<f64> {
    let n = match value {
        toml::Value::Integer(n) => n as f64,
        toml::Value::Float(f) => f,
        other => {
            e.push(path, format!("must be a number, got {}", shown(&other)));
            return None;
        }
    };
    if n.is_finite() && (min..=max).contains(&n) {
        Some(n)
    } else {
        e.push(path, format!("must be from {min} to {max}, got {n}"));
        None
    }
}
