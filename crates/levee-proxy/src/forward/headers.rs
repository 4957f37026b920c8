//! Header rewriting between client and upstream (RFC 9110 §7.6).
//!
//! Hop-by-hop fields are removed in both directions, including those a
//! message names in `Connection`. levee's own fields (`Forwarded`,
//! `X-Forwarded-*`, `Via`, `X-Request-Id`) are added after that removal, so
//! a client that lists them in `Connection` cannot strip them.

use bytes::{BufMut, Bytes, BytesMut};

use levee_config::EndpointAddress;

use crate::codec::parse::RawRequest;
use crate::codec::raw::Known;
use crate::conn::ClientAddr;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

// Names levee reads or writes on every request, built at compile time:
// a `&str` key is parsed and validated on every lookup.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Fields that are always hop-by-hop (`Connection` first).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    HTTP2_SETTINGS,
];
/// The index of `Upgrade` in [`HOP_BY_HOP`].
const UPGRADE: usize = 3;

/// Fields a `Connection` option may never remove: the message would lose
/// its meaning (`Host`), levee its control over framing, or the request the
/// id that follows it through every log.
fn protected(name: &HeaderName) -> bool {
    name == header::HOST || name == header::CONTENT_LENGTH || name == X_REQUEST_ID
}

/// Removes hop-by-hop fields. With `keep_upgrade`, the `Upgrade` fields stay
/// (all of them, as on the raw path); returns whether any did, for the
/// caller to add the `Connection: upgrade` that names them.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) -> bool {
    // One pass over the names (cheap comparisons for standard names) finds
    // which are present; most messages carry none or only `Connection`.
    let mut present = [false; 7];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return false;
    }
    let kept = keep_upgrade && present[UPGRADE];
    if present[0] {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .filter(|n| !protected(n) && !HOP_BY_HOP.contains(n))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present[i] && !(kept && i == UPGRADE) {
            headers.remove(name);
        }
    }
    kept
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
    pub client: &'a ClientAddr,
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
    headers.reserve(6);
    let prior = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(HeaderValue::as_bytes);
    if let Some(v) = x_forwarded_for(prior, hop.client) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(hop.proto));
    match hop.host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    let mut fwd = BytesMut::with_capacity(96);
    forwarded(&mut fwd, hop);
    if let Ok(v) = HeaderValue::from_maybe_shared(fwd.freeze()) {
        headers.append(header::FORWARDED, v);
    }
    headers.append(header::VIA, via(hop.received));
}

/// `X-Forwarded-For`: one field, the prior list (from every prior field
/// line) then this client, so readers that look at one line see all.
fn x_forwarded_for<'a>(prior: impl Iterator<Item = &'a [u8]>, client: &ClientAddr) -> Option<HeaderValue> {
    let mut list: Option<BytesMut> = None;
    for v in prior {
        let v = v.trim_ascii();
        if !v.is_empty() {
            let list = list.get_or_insert_with(|| BytesMut::with_capacity(64));
            list.put_slice(v);
            list.put_slice(b", ");
        }
    }
    match list {
        None => Some(client.text.clone()),
        Some(mut list) => {
            list.put_slice(client.text.as_bytes());
            HeaderValue::from_maybe_shared(list.freeze()).ok()
        }
    }
}

/// Writes the `Forwarded` element for this hop (RFC 7239): a host with a
/// port (or anything not a token) must be quoted.
fn forwarded(fwd: &mut BytesMut, hop: &Hop<'_>) {
    let host = hop.host.map_or(&b""[..], |h| h.as_bytes());
    fwd.put_slice(&hop.client.forwarded_for);
    fwd.put_slice(b";proto=");
    fwd.put_slice(hop.proto.as_bytes());
    if !host.is_empty() {
        if host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            fwd.put_slice(b";host=");
            fwd.put_slice(host);
        } else if !host.iter().any(|&b| b == b'"' || b == b'\\') {
            fwd.put_slice(b";host=\"");
            fwd.put_slice(host);
            fwd.put_slice(b"\"");
        }
    }
}

/// `start`, `value` and CRLF: a field line whose fixed part is one constant.
fn put_line(out: &mut BytesMut, start: &[u8], value: &[u8]) {
    out.put_slice(start);
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// How a request received as raw lines goes to an HTTP/1.1 upstream: the
/// fields to leave out, and the lines levee adds. The same rewriting as
/// [`strip_hop_by_hop`] plus [`add_forwarding`] do on a map.
pub(crate) struct RawPlan {
    pub skip: u64,
    pub extra: Bytes,
}

///
/// `request_id` is levee's id when the client sent none it could use (an
/// unusable one is replaced); `default_host` is the `Host` for a request
/// that has none (HTTP/1.0 allows that; an HTTP/1.1 upstream does not).
pub(crate) fn raw_plan(
    raw: &RawRequest,
    hop: &Hop<'_>,
    request_id: Option<&HeaderValue>,
    upgrade: bool,
    default_host: &EndpointAddress,
) -> RawPlan {
    let head = &raw.head;
    let mut skip = raw.skip | head.hop_by_hop_mask();
    let mut prior = Vec::new();
    let mut has_host = raw.host.is_some();
    for (i, f) in head.fields.iter().enumerate().take(64) {
        let kept = skip & (1 << i) == 0;
        match f.known {
            // An upgrade keeps its Upgrade field (which `Connection:
            // upgrade` names); levee writes its own Connection.
            Known::Upgrade if upgrade && raw.skip & (1 << i) == 0 => skip &= !(1 << i),
            Known::XForwardedFor => {
                if kept {
                    prior.push(head.value(f));
                }
                skip |= 1 << i;
            }
            Known::XForwardedProto | Known::XForwardedHost => skip |= 1 << i,
            Known::RequestId if request_id.is_some() => skip |= 1 << i,
            Known::Host => has_host |= kept,
            _ => {}
        }
    }
    let mut extra = BytesMut::with_capacity(256);
    // Each line's fixed parts are one constant: fewer, larger copies.
    if let Some(host) = &raw.host {
        put_line(&mut extra, b"host: ", host.as_bytes());
    } else if !has_host {
        put_line(&mut extra, b"host: ", default_host.to_string().as_bytes());
    }
    if let Some(v) = x_forwarded_for(prior.into_iter(), hop.client) {
        put_line(&mut extra, b"x-forwarded-for: ", v.as_bytes());
    }
    if let Some(host) = hop.host {
        put_line(&mut extra, b"x-forwarded-host: ", host.as_bytes());
    }
    extra.put_slice(b"forwarded: ");
    forwarded(&mut extra, hop);
    extra.put_slice(b"\r\n");
    if let Some(id) = request_id {
        put_line(&mut extra, b"x-request-id: ", id.as_bytes());
    }
    extra.put_slice(match (hop.proto, hop.received) {
        ("http", "1.0") => b"x-forwarded-proto: http\r\nvia: 1.0 levee\r\n",
        ("http", "2") => b"x-forwarded-proto: http\r\nvia: 2 levee\r\n",
        ("http", _) => b"x-forwarded-proto: http\r\nvia: 1.1 levee\r\n",
        ("https", "1.0") => b"x-forwarded-proto: https\r\nvia: 1.0 levee\r\n",
        ("https", "2") => b"x-forwarded-proto: https\r\nvia: 2 levee\r\n",
        _ => b"x-forwarded-proto: https\r\nvia: 1.1 levee\r\n",
    });
    if upgrade {
        extra.put_slice(b"connection: upgrade\r\n");
    }
    RawPlan {
        skip,
        extra: extra.freeze(),
    }
}

/// `Via: <version> levee`.
pub(crate) fn via(version: &'static str) -> HeaderValue {
    match version {
        "1.0" => HeaderValue::from_static("1.0 levee"),
        "2" => HeaderValue::from_static("2 levee"),
        _ => HeaderValue::from_static("1.1 levee"),
    }
}

/// The request's `X-Request-Id`, generated (and inserted) when absent or
/// unusable.
pub(crate) fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID).filter(|v| usable_request_id(v)) {
        return v.clone();
    }
    let id = new_request_id();
    headers.insert(X_REQUEST_ID, id.clone());
    id
}

/// A client's request id is kept when it is neither empty nor huge.
pub(crate) fn usable_request_id(v: &HeaderValue) -> bool {
    !v.is_empty() && v.len() <= 200
}

/// 128 random bits as 32 hex digits.
pub(crate) fn new_request_id() -> HeaderValue {
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
        assert!(!strip_hop_by_hop(&mut h, false));
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["host", "x-kept"]);
    }

    #[test]
    fn keeps_every_upgrade_field_when_asked() {
        let mut h = map(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("upgrade", "x-other"),
        ]);
        assert!(strip_hop_by_hop(&mut h, true));
        let kept: Vec<_> = h.get_all("upgrade").iter().collect();
        assert_eq!(kept, ["websocket", "x-other"]);
        assert!(h.get("connection").is_none());
        assert!(!strip_hop_by_hop(&mut map(&[("connection", "close")]), true));
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
                client: &ClientAddr::new("192.0.2.7".parse().expect("ip")),
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
                client: &ClientAddr::new("::1".parse().expect("ip")),
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
