//! Access log lines: JSON, or the Common and Combined Log Formats.
//!
//! Runs on the writer thread only; nothing here is on the request path.

use std::fmt::Write as _;
use std::time::SystemTime;

use levee_config::{LogField, LogFormat};
use levee_core::calendar::Civil;
use levee_core::fault::Kind as FaultKind;

use super::entry::{Entry, RequestLine};

/// How entries become lines.
pub(crate) struct Format {
    pub format: LogFormat,
    /// For [`LogFormat::Json`]: the keys, in order.
    pub fields: Vec<LogField>,
}

impl Format {
    /// Appends `entry` as one line, newline included. (Writing into a
    /// `String` cannot fail: the `fmt::Result`s below are always `Ok`.)
    pub fn line(&self, entry: &Entry, out: &mut String) {
        match self.format {
            LogFormat::Json => self.json(entry, out),
            LogFormat::Common => common(entry, out),
            LogFormat::Combined => {
                common(entry, out);
                out.push(' ');
                clf_quoted(out, entry.referer.as_ref().map(|v| v.as_bytes()));
                out.push(' ');
                clf_quoted(out, entry.user_agent.as_ref().map(|v| v.as_bytes()));
            }
        }
        out.push('\n');
    }

    fn json(&self, e: &Entry, out: &mut String) {
        out.push('{');
        for (i, field) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(field.as_str());
            out.push_str("\":");
            json_value(*field, e, out);
        }
        out.push('}');
    }
}

fn json_value(field: LogField, e: &Entry, out: &mut String) {
    let request = e.request.as_ref();
    match field {
        LogField::Time => {
            out.push('"');
            rfc3339(e.started(), out);
            out.push('"');
        }
        LogField::ClientIp => json_str(out, Some(e.client.to_string().as_bytes())),
        LogField::Listener => json_str(out, e.listener.as_ref().map(|l| l.as_str().as_bytes())),
        LogField::Method => json_str(out, request.map(|r| r.method.as_str().as_bytes())),
        LogField::Path => json_str(out, request.map(|r| r.uri.path().as_bytes())),
        LogField::Query => json_str(out, request.and_then(|r| r.uri.query()).map(str::as_bytes)),
        LogField::Uri => json_str(out, request.map(|r| target(r).as_bytes())),
        LogField::Host => json_str(out, e.host.as_ref().map(|v| v.as_bytes())),
        LogField::Protocol => json_str(out, request.map(|r| protocol(r.version).as_bytes())),
        LogField::Status => {
            let _ = write!(out, "{}", e.status);
        }
        LogField::BytesSent => {
            let _ = write!(out, "{}", e.bytes);
        }
        LogField::DurationMs => {
            let _ = write!(out, "{:.3}", e.duration.as_secs_f64() * 1000.0);
        }
        LogField::Route => json_str(out, e.route().map(|r| r.name.as_bytes())),
        LogField::Upstream => json_str(out, e.upstream().map(|u| u.name().as_str().as_bytes())),
        LogField::Region => json_str(out, e.endpoint().map(|p| p.region.as_str().as_bytes())),
        LogField::Endpoint => json_str(
            out,
            e.endpoint()
                .map(|p| p.address.to_string().into_bytes())
                .as_deref(),
        ),
        LogField::Attempts => {
            let _ = write!(out, "{}", e.attempts);
        }
        LogField::Fault => {
            let kinds: Vec<&str> = (FaultKind::ALL.iter())
                .filter(|&&k| e.faults & (1 << k as u8) != 0)
                .map(|k| k.as_str())
                .collect();
            json_str(
                out,
                (!kinds.is_empty())
                    .then(|| kinds.join(",").into_bytes())
                    .as_deref(),
            );
        }
        LogField::RetryStop => json_str(out, e.retry_stop.map(|s| s.as_str().as_bytes())),
        LogField::ProxyStatus => json_str(out, e.proxy_status.map(|k| k.proxy_status().as_bytes())),
        LogField::RequestId => json_str(out, e.request_id.as_ref().map(|v| v.as_bytes())),
        LogField::UserAgent => json_str(out, e.user_agent.as_ref().map(|v| v.as_bytes())),
        LogField::Referer => json_str(out, e.referer.as_ref().map(|v| v.as_bytes())),
    }
}

/// `%h %l %u %t "%r" %>s %b`: client, two unknown identities, the time the
/// request arrived, the request line, the status and the body size (`-`
/// for none).
fn common(e: &Entry, out: &mut String) {
    let _ = write!(out, "{} - - [", e.client);
    clf_time(e.started(), out);
    out.push_str("] ");
    match &e.request {
        Some(r) => {
            out.push('"');
            out.push_str(r.method.as_str());
            out.push(' ');
            clf_escaped(out, target(r).as_bytes());
            out.push(' ');
            out.push_str(protocol(r.version));
            out.push('"');
        }
        // Refused before it could be read: Apache and nginx log "-" too.
        None => out.push_str("\"-\""),
    }
    let _ = write!(out, " {} ", e.status);
    if e.bytes == 0 {
        out.push('-');
    } else {
        let _ = write!(out, "{}", e.bytes);
    }
}

/// The request target as a client would have written it in origin form.
fn target(r: &RequestLine) -> &str {
    r.uri
        .path_and_query()
        .map_or_else(|| r.uri.path(), |pq| pq.as_str())
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// A JSON string, or `null`. Bytes that are not UTF-8 (header values may
/// carry obs-text) become U+FFFD.
fn json_str(out: &mut String, value: Option<&[u8]>) {
    let Some(bytes) = value else {
        out.push_str("null");
        return;
    };
    out.push('"');
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `"value"`, or `"-"` when absent, escaped as [`clf_escaped`].
fn clf_quoted(out: &mut String, value: Option<&[u8]>) {
    out.push('"');
    match value {
        Some(v) => clf_escaped(out, v),
        None => out.push('-'),
    }
    out.push('"');
}

/// As nginx escapes its log variables: `"`, `\`, control bytes and bytes
/// outside ASCII as `\xHH`, so that a line cannot be split or forged.
fn clf_escaped(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b as char);
        }
    }
}

/// `2024-05-01T12:00:00.123Z`
fn rfc3339(t: SystemTime, out: &mut String) {
    let _ = write!(out, "{}", Civil::of(t));
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `01/May/2024:12:00:00 +0000`, in UTC.
fn clf_time(t: SystemTime, out: &mut String) {
    let c = Civil::of(t);
    let month = MONTHS[(c.month as usize).saturating_sub(1) % 12];
    let _ = write!(
        out,
        "{:02}/{month}/{:04}:{:02}:{:02}:{:02} +0000",
        c.day, c.year, c.hour, c.minute, c.second
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn times_are_utc_in_both_forms() {
        let mut s = String::new();
        rfc3339(at(0, 0), &mut s);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
        s.clear();
        // 2000-02-29 (a leap day in a century year) 23:59:59.999
        rfc3339(at(951_868_799, 999), &mut s);
        assert_eq!(s, "2000-02-29T23:59:59.999Z");
        s.clear();
        clf_time(at(971_186_136, 0), &mut s);
        assert_eq!(s, "10/Oct/2000:13:55:36 +0000");
        s.clear();
        rfc3339(at(4_102_444_800, 5), &mut s);
        assert_eq!(s, "2100-01-01T00:00:00.005Z");
    }

    #[test]
    fn civil_dates_agree_with_httpdate() {
        // httpdate formats the same instant independently.
        for secs in [
            0u64,
            59,
            86_399,
            86_400,
            951_782_400,
            1_709_164_800,
            1_735_689_599,
            2_000_000_000,
        ] {
            let t = at(secs, 0);
            let http = httpdate::fmt_http_date(t); // "Thu, 01 Jan 1970 00:00:00 GMT"
            let mut clf = String::new();
            clf_time(t, &mut clf); // "01/Jan/1970:00:00:00 +0000"
            let (date, time) = clf.split_once(':').expect("clf time");
            let parts: Vec<&str> = date.split('/').collect();
            let expected = format!("{} {} {} {}", parts[0], parts[1], parts[2], &time[..8]);
            assert_eq!(&http[5..25], expected, "{secs}");
        }
    }

    #[test]
    fn strings_cannot_break_a_line() {
        let mut s = String::new();
        json_str(&mut s, Some(b"a\"b\\c\nd\x01\xff"));
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\u0001\u{fffd}\"");
        s.clear();
        clf_escaped(&mut s, b"Mozilla \"x\"\n\\\xc3\xa9");
        assert_eq!(s, "Mozilla \\x22x\\x22\\x0A\\x5C\\xC3\\xA9");
        s.clear();
        json_str(&mut s, None);
        assert_eq!(s, "null");
    }
}
