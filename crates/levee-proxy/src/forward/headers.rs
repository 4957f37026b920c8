//! Header rewriting between client and upstream (RFC 9110 §7.6).
//!
//! Hop-by-hop fields are removed in both directions, including those a
//! message names in `Connection`. levee's own fields (`Forwarded`,
//! `X-Forwarded-*`, `Via`, `X-Request-Id`) are added after that removal, so
//! a client that lists them in `Connection` cannot strip them.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Fields that are always hop-by-hop.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Fields a `Connection` option may never remove: the message would lose
/// its meaning (`Host`) or levee its control over framing.
fn protected(name: &HeaderName) -> bool {
    name == header::HOST || name == header::CONTENT_LENGTH
}

/// Removes hop-by-hop fields. Returns the `Upgrade` value when `keep_upgrade`
/// is set, for the caller to put back on the upgrade it forwards.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) -> Option<HeaderValue> {
    // Taken first: `Connection: upgrade` names the field it keeps.
    let upgrade = if keep_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .filter(|n| !protected(n))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("http2-settings");
    upgrade
}

/// Whether the client's `TE` asks for trailers (gRPC over HTTP/2 needs it).
pub(crate) fn wants_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    })
}

/// What levee knows about the hop it received a request on.
pub(crate) struct Hop<'a> {
    pub client: IpAddr,
    /// "http" (or "https" once TLS terminates here).
    pub proto: &'static str,
    /// The host the client asked for, if any.
    pub host: Option<&'a HeaderValue>,
    /// `Via` protocol version as received: "1.0", "1.1" or "2".
    pub received: &'static str,
}

/// Appends `X-Forwarded-For` and `Forwarded`, sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` to what levee saw, and appends `Via`.
pub(crate) fn add_forwarding(headers: &mut HeaderMap, hop: &Hop<'_>) {
    let mut ip = String::with_capacity(48);
    let _ = write!(ip, "{}", hop.client);

    // X-Forwarded-For: one field, the prior list (from every prior field
    // line) then this client, so readers that look at one line see all.
    let xff = HeaderName::from_static("x-forwarded-for");
    let mut list = String::new();
    for v in headers.get_all(&xff) {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                list.push_str(s);
                list.push_str(", ");
            }
        }
    }
    list.push_str(&ip);
    if let Ok(v) = HeaderValue::from_str(&list) {
        headers.insert(xff, v);
    }

    headers.insert("x-forwarded-proto", HeaderValue::from_static(hop.proto));
    match hop.host {
        Some(host) => {
            headers.insert("x-forwarded-host", host.clone());
        }
        None => {
            headers.remove("x-forwarded-host");
        }
    }

    // Forwarded (RFC 7239): IPv6 and host:port must be quoted.
    let mut fwd = String::with_capacity(64);
    match hop.client {
        IpAddr::V4(_) => {
            let _ = write!(fwd, "for={ip}");
        }
        IpAddr::V6(_) => {
            let _ = write!(fwd, "for=\"[{ip}]\"");
        }
    }
    let _ = write!(fwd, ";proto={}", hop.proto);
    if let Some(host) = hop.host.and_then(|h| h.to_str().ok()) {
        if host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
        {
            let _ = write!(fwd, ";host={host}");
        } else if !host.contains(['"', '\\']) {
            let _ = write!(fwd, ";host=\"{host}\"");
        }
    }
    if let Ok(v) = HeaderValue::from_str(&fwd) {
        headers.append(header::FORWARDED, v);
    }

    headers.append(header::VIA, via(hop.received));
}

/// `Via: <version> levee`.
pub(crate) fn via(version: &'static str) -> HeaderValue {
    match version {
        "1.0" => HeaderValue::from_static("1.0 levee"),
        "2" => HeaderValue::from_static("2 levee"),
        _ => HeaderValue::from_static("1.1 levee"),
    }
}

/// The request's `X-Request-Id`, generated when absent or unusable.
pub(crate) fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    let name = HeaderName::from_static("x-request-id");
    if let Some(v) = headers.get(&name)
        && !v.is_empty()
        && v.len() <= 200
    {
        return v.clone();
    }
    let id = new_request_id();
    headers.insert(name, id.clone());
    id
}

/// 128 random bits as 32 hex digits.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = fastrand::u128(..);
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((bits >> (i * 4)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn removes_hop_by_hop_and_connection_options() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret, host, x-forwarded-for"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("host", "a"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-kept", "yes"),
        ]);
        assert_eq!(strip_hop_by_hop(&mut h, false), None);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["host", "x-kept"]);
    }

    #[test]
    fn keeps_the_upgrade_value_when_asked() {
        let mut h = map(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        assert_eq!(
            strip_hop_by_hop(&mut h, true),
            Some(HeaderValue::from_static("websocket"))
        );
        assert!(h.is_empty());
    }

    #[test]
    fn forwarding_fields_cannot_be_stripped_or_spoofed() {
        let mut h = map(&[
            ("connection", "x-forwarded-for, forwarded, via, x-forwarded-proto"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=10.0.0.1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let host = HeaderValue::from_static("app.example:8080");
        add_forwarding(
            &mut h,
            &Hop {
                client: "192.0.2.7".parse().expect("ip"),
                proto: "http",
                host: Some(&host),
                received: "1.1",
            },
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example:8080");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;proto=http;host=\"app.example:8080\""
        );
        assert_eq!(h["via"], "1.1 levee");
    }

    #[test]
    fn forwarded_lists_are_appended() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
            ("forwarded", "for=10.0.0.1"),
            ("via", "1.1 edge"),
        ]);
        add_forwarding(
            &mut h,
            &Hop {
                client: "::1".parse().expect("ip"),
                proto: "http",
                host: None,
                received: "2",
            },
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 10.0.0.3, ::1");
        let fwd: Vec<_> = h.get_all("forwarded").iter().collect();
        assert_eq!(fwd, vec!["for=10.0.0.1", "for=\"[::1]\";proto=http"]);
        let via: Vec<_> = h.get_all("via").iter().collect();
        assert_eq!(via, vec!["1.1 edge", "2 levee"]);
        assert!(h.get("x-forwarded-host").is_none());
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h);
        assert_eq!(id.len(), 32);
        assert_eq!(h["x-request-id"], id);
        assert_ne!(ensure_request_id(&mut HeaderMap::new()), id);
        let mut given = map(&[("x-request-id", "client-chosen")]);
        assert_eq!(ensure_request_id(&mut given), "client-chosen");
    }

    #[test]
    fn te_trailers() {
        assert!(wants_trailers(&map(&[("te", "gzip, trailers")])));
        assert!(!wants_trailers(&map(&[("te", "gzip")])));
    }
}
