//! What a toxic is: its type and attributes as Toxiproxy's API names them,
//! the stream it acts on, and its toxicity. Pure data, no I/O.
//!
//! Attributes keep Toxiproxy's JSON types (signed integers, milliseconds
//! unless named otherwise) so that any body Toxiproxy accepts is accepted
//! here; the policies in `stage.rs` read negative values as zero.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which way a toxic acts: `upstream` is client → server, `downstream`
/// server → client (Toxiproxy's words).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Upstream,
    Downstream,
}

impl Stream {
    /// Toxiproxy compares without case.
    pub fn parse(s: &str) -> Option<Stream> {
        match s.to_ascii_lowercase().as_str() {
            "upstream" => Some(Stream::Upstream),
            "downstream" => Some(Stream::Downstream),
            _ => None,
        }
    }
}

/// `latency` ± `jitter` milliseconds on every chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    pub latency: i64,
    pub jitter: i64,
}

/// At most `rate` KB (1000 bytes) a second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Bandwidth {
    pub rate: i64,
}

/// The end of the stream is passed on `delay` milliseconds late.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SlowClose {
    pub delay: i64,
}

/// Data is dropped; the connection closes after `timeout` milliseconds
/// without data, never when it is 0. Also `reset_peer`'s shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timeout {
    pub timeout: i64,
}

/// Chunks cut to about `average_size` ± `size_variation` bytes, `delay`
/// microseconds apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Slicer {
    pub average_size: i64,
    pub size_variation: i64,
    pub delay: i64,
}

/// `bytes` pass, then the connection closes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitData {
    pub bytes: i64,
}

/// A toxic's type with its attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Passes everything; Toxiproxy registers it, so clients may add it.
    Noop,
    Latency(Latency),
    Bandwidth(Bandwidth),
    SlowClose(SlowClose),
    Timeout(Timeout),
    ResetPeer(Timeout),
    Slicer(Slicer),
    LimitData(LimitData),
}

impl Kind {
    /// The types, as the API names them.
    pub const TYPES: [&'static str; 8] = [
        "noop",
        "latency",
        "bandwidth",
        "slow_close",
        "timeout",
        "reset_peer",
        "slicer",
        "limit_data",
    ];

    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::Noop => "noop",
            Kind::Latency(_) => "latency",
            Kind::Bandwidth(_) => "bandwidth",
            Kind::SlowClose(_) => "slow_close",
            Kind::Timeout(_) => "timeout",
            Kind::ResetPeer(_) => "reset_peer",
            Kind::Slicer(_) => "slicer",
            Kind::LimitData(_) => "limit_data",
        }
    }

    /// A type's attributes read from JSON, missing ones zero. `Ok(None)`
    /// for a type that does not exist; `Err` for attributes of the wrong
    /// shape (a string for a number, a fraction for an integer).
    pub fn parse(type_name: &str, attributes: &Value) -> Result<Option<Kind>, serde_json::Error> {
        // `null` or no attributes at all means every attribute zero, as in
        // Toxiproxy.
        let attributes = match attributes {
            Value::Null => Value::Object(serde_json::Map::new()),
            Value::Object(_) => attributes.clone(),
            // serde would read an array as the fields in order; Toxiproxy
            // refuses anything but an object.
            _ => {
                let e = "attributes: expected an object of the toxic's attributes";
                return Err(serde::de::Error::custom(e));
            }
        };
        Ok(Some(match type_name {
            "noop" => Kind::Noop,
            "latency" => Kind::Latency(serde_json::from_value(attributes)?),
            "bandwidth" => Kind::Bandwidth(serde_json::from_value(attributes)?),
            "slow_close" => Kind::SlowClose(serde_json::from_value(attributes)?),
            "timeout" => Kind::Timeout(serde_json::from_value(attributes)?),
            "reset_peer" => Kind::ResetPeer(serde_json::from_value(attributes)?),
            "slicer" => Kind::Slicer(serde_json::from_value(attributes)?),
            "limit_data" => Kind::LimitData(serde_json::from_value(attributes)?),
            _ => return Ok(None),
        }))
    }

    /// The attributes as a JSON object.
    pub fn attributes(&self) -> Value {
        // Plain structs of integers always serialise.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// These attributes with the fields present in `patch` replaced, as a
    /// Toxiproxy update does (it decodes the patch over the old values).
    pub fn patched(&self, patch: &Value) -> Result<Kind, serde_json::Error> {
        let mut merged = self.attributes();
        if let (Value::Object(old), Value::Object(new)) = (&mut merged, patch) {
            for (k, v) in new {
                old.insert(k.clone(), v.clone());
            }
        } else if !patch.is_null() {
            // Not an object: let serde say why.
            merged = patch.clone();
        }
        let kind = Kind::parse(self.type_name(), &merged)?;
        Ok(kind.unwrap_or(*self))
    }
}

/// One toxic on one proxy. A new `id` for each toxic created, a new
/// `revision` each time it is updated, so that open connections tell a
/// changed toxic (new toxicity draw) from one they already run.
#[derive(Clone, Debug, PartialEq)]
pub struct Toxic {
    pub id: u64,
    pub revision: u64,
    pub name: String,
    pub kind: Kind,
    pub stream: Stream,
    /// The stream as the client wrote it; Toxiproxy shows it back as given.
    pub stream_label: String,
    pub toxicity: f32,
}

/// A toxic as the API shows it, in Toxiproxy's field order.
#[derive(Clone, Debug, Serialize)]
pub struct ToxicJson {
    pub attributes: Kind,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub stream: String,
    pub toxicity: f32,
}

impl Toxic {
    pub fn to_json(&self) -> ToxicJson {
        ToxicJson {
            attributes: self.kind,
            name: self.name.clone(),
            kind: self.kind.type_name(),
            stream: self.stream_label.clone(),
            toxicity: self.toxicity,
        }
    }
}

/// A kind serialises as its attributes, fields in Toxiproxy's order.
impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Kind::Noop => serde_json::Map::new().serialize(s),
            Kind::Latency(a) => a.serialize(s),
            Kind::Bandwidth(a) => a.serialize(s),
            Kind::SlowClose(a) => a.serialize(s),
            Kind::Timeout(a) | Kind::ResetPeer(a) => a.serialize(s),
            Kind::Slicer(a) => a.serialize(s),
            Kind::LimitData(a) => a.serialize(s),
        }
    }
}

/// A proxy's toxics, split by stream, in the order they were added: what
/// each open connection follows.
#[derive(Clone, Debug, Default)]
pub struct ToxicSet {
    pub upstream: Vec<Arc<Toxic>>,
    pub downstream: Vec<Arc<Toxic>>,
}

impl ToxicSet {
    pub fn of(toxics: &[Arc<Toxic>]) -> ToxicSet {
        let pick = |s: Stream| toxics.iter().filter(|t| t.stream == s).cloned().collect();
        ToxicSet {
            upstream: pick(Stream::Upstream),
            downstream: pick(Stream::Downstream),
        }
    }

    pub fn side(&self, stream: Stream) -> &[Arc<Toxic>] {
        match stream {
            Stream::Upstream => &self.upstream,
            Stream::Downstream => &self.downstream,
        }
    }
}

/// The longest wait any attribute can ask for. Larger values are read as
/// this, so that no deadline overflows a clock: about 31 years.
pub const FOREVER: Duration = Duration::from_secs(1_000_000_000);

/// An attribute in milliseconds as a duration: negatives are zero, huge
/// values [`FOREVER`].
pub fn millis(v: i64) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0)).min(FOREVER)
}

/// An attribute in microseconds as a duration, likewise.
pub fn micros(v: i64) -> Duration {
    Duration::from_micros(u64::try_from(v).unwrap_or(0)).min(FOREVER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn attributes_default_to_zero_and_keep_toxiproxys_shape() {
        let k = Kind::parse("latency", &json!({"latency": 300})).unwrap().unwrap();
        assert_eq!(
            k,
            Kind::Latency(Latency {
                latency: 300,
                jitter: 0
            })
        );
        assert_eq!(k.attributes(), json!({"latency": 300, "jitter": 0}));
        let s = Kind::parse("slicer", &Value::Null).unwrap().unwrap();
        assert_eq!(
            s.attributes(),
            json!({"average_size": 0, "size_variation": 0, "delay": 0})
        );
        assert_eq!(Kind::parse("noop", &json!({"x": 1})).unwrap(), Some(Kind::Noop));
        assert_eq!(Kind::parse("nope", &json!({})).unwrap(), None);
        for t in Kind::TYPES {
            let k = Kind::parse(t, &Value::Null).unwrap().unwrap();
            assert_eq!(k.type_name(), t);
        }
    }

    #[test]
    fn wrong_attribute_types_are_errors_not_panics() {
        assert!(Kind::parse("latency", &json!({"latency": "300"})).is_err());
        assert!(Kind::parse("latency", &json!({"latency": 1.5})).is_err());
        assert!(Kind::parse("latency", &json!([1])).is_err());
        assert!(Kind::parse("bandwidth", &json!({"rate": 1e30})).is_err());
    }

    #[test]
    fn a_patch_replaces_only_the_fields_it_names() {
        let k = Kind::Latency(Latency {
            latency: 300,
            jitter: 20,
        });
        let p = k.patched(&json!({"jitter": 5})).unwrap();
        assert_eq!(
            p,
            Kind::Latency(Latency {
                latency: 300,
                jitter: 5
            })
        );
        assert_eq!(k.patched(&Value::Null).unwrap(), k);
        assert!(k.patched(&json!({"latency": "x"})).is_err());
        assert!(k.patched(&json!(7)).is_err());
    }

    #[test]
    fn streams_parse_without_case() {
        assert_eq!(Stream::parse("UpStream"), Some(Stream::Upstream));
        assert_eq!(Stream::parse("downstream"), Some(Stream::Downstream));
        assert_eq!(Stream::parse("sideways"), None);
    }

    #[test]
    fn durations_never_overflow() {
        assert_eq!(millis(-5), Duration::ZERO);
        assert_eq!(millis(i64::MAX), FOREVER);
        assert_eq!(micros(1500), Duration::from_micros(1500));
    }
}
