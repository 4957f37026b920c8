//! An upstream response head kept as received.
//!
//! When an HTTP/1.1 response goes to an HTTP/1.1 client, nothing needs its
//! fields as a `HeaderMap`: levee drops a few hop-by-hop lines, adds `Via`,
//! and re-frames the body. So the head is kept as the bytes that arrived,
//! with the span of each field line, and the client's head is written by
//! copying the kept lines. Building and dropping a map (a hash insertion and
//! a reference-counted slice per field, two allocations per map) costs more
//! than the rest of the response's handling together. For an HTTP/2 client
//! the map is built from the spans ([`RawHead::to_header_map`]).

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The fields levee acts on, recognised without building a `HeaderName`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Known {
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    Te,
    Upgrade,
    Http2Settings,
    RequestId,
    Host,
    Expect,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    Other,
}

impl Known {
    pub fn of(name: &[u8]) -> Known {
        let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
        // Length and first letter rule out most names before any compare.
        let first = name.first().map_or(0, u8::to_ascii_lowercase);
        match (name.len(), first) {
            (2, b't') if is(b"te") => Known::Te,
            (4, b'h') if is(b"host") => Known::Host,
            (6, b'e') if is(b"expect") => Known::Expect,
            (7, b'u') if is(b"upgrade") => Known::Upgrade,
            (10, b'c') if is(b"connection") => Known::Connection,
            (10, b'k') if is(b"keep-alive") => Known::KeepAlive,
            (12, b'x') if is(b"x-request-id") => Known::RequestId,
            (14, b'c') if is(b"content-length") => Known::ContentLength,
            (14, b'h') if is(b"http2-settings") => Known::Http2Settings,
            (15, b'x') if is(b"x-forwarded-for") => Known::XForwardedFor,
            (16, b'p') if is(b"proxy-connection") => Known::ProxyConnection,
            (16, b'x') if is(b"x-forwarded-host") => Known::XForwardedHost,
            (17, b't') if is(b"transfer-encoding") => Known::TransferEncoding,
            (17, b'x') if is(b"x-forwarded-proto") => Known::XForwardedProto,
            _ => Known::Other,
        }
    }

    /// Always hop-by-hop (RFC 9110 §7.6.1), so never forwarded as received.
    /// `Transfer-Encoding` is among them: the writer frames the body itself.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Known::Connection
                | Known::KeepAlive
                | Known::ProxyConnection
                | Known::Te
                | Known::Upgrade
                | Known::Http2Settings
                | Known::TransferEncoding
        )
    }
}

/// One field line of a raw head: byte offsets into [`RawHead::bytes`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawField {
    pub name: (u32, u32),
    pub value: (u32, u32),
    /// The whole line, CRLF included.
    pub line: (u32, u32),
    pub known: Known,
}

/// A head as received, and where its fields are.
#[derive(Clone, Debug)]
pub(crate) struct RawHead {
    pub bytes: Bytes,
    pub fields: Vec<RawField>,
}

impl RawHead {
    pub fn name(&self, f: &RawField) -> &[u8] {
        &self.bytes[f.name.0 as usize..f.name.1 as usize]
    }

    pub fn value(&self, f: &RawField) -> &[u8] {
        &self.bytes[f.value.0 as usize..f.value.1 as usize]
    }

    /// The fields as a map (values are slices of the head, not copies),
    /// with room for `extra` more.
    pub fn to_header_map(&self, extra: usize) -> HeaderMap {
        self.to_header_map_where(extra, |_| true)
    }

    /// Like [`RawHead::to_header_map`], with only the fields `keep` accepts.
    /// The parser already checked every name and value (httparse's token
    /// and value rules are `http`'s), so none is refused.
    pub fn to_header_map_where(&self, extra: usize, keep: impl Fn(&RawField) -> bool) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.fields.len() + extra);
        for f in &self.fields {
            if !keep(f) {
                continue;
            }
            let name = HeaderName::from_bytes(self.name(f));
            let value =
                HeaderValue::from_maybe_shared(self.bytes.slice(f.value.0 as usize..f.value.1 as usize));
            if let (Ok(name), Ok(value)) = (name, value) {
                map.append(name, value);
            }
        }
        map
    }
}

/// A raw head on its way to an HTTP/1.1 client: which lines to leave out,
/// and levee's own fields to add.
#[derive(Debug)]
pub(crate) struct RawOut {
    pub head: RawHead,
    /// Bit `i` set: field `i` is not forwarded.
    pub skip: u64,
    pub via: HeaderValue,
    /// Set when the response carries no `X-Request-Id` of its own.
    pub request_id: Option<HeaderValue>,
}

impl RawOut {
    /// The request id the client sees: the upstream's own, or levee's.
    pub fn request_id(&self) -> Option<HeaderValue> {
        self.request_id.clone().or_else(|| {
            let f = self.head.fields.iter().find(|f| f.known == Known::RequestId)?;
            HeaderValue::from_bytes(self.head.value(f)).ok()
        })
    }
}

/// The mask bit of field `i` (none beyond the mask's width).
pub(crate) fn bit(i: usize) -> u64 {
    if i < 64 { 1 << i } else { 0 }
}

/// Fields a raw head can have and still be forwarded raw (the skip mask's
/// width); a larger head takes the map path.
pub(crate) const MAX_RAW_FIELDS: usize = 64;

impl RawHead {
    /// The hop-by-hop fields of the head, and those its `Connection`
    /// fields name (except `Host`, `Content-Length` and `X-Request-Id`,
    /// which no option may remove), as a skip mask.
    pub fn hop_by_hop_mask(&self) -> u64 {
        let mut skip = 0u64;
        for (i, f) in self.fields.iter().enumerate() {
            if f.known.is_hop_by_hop() {
                skip |= bit(i);
            }
        }
        for c in self.fields.iter().filter(|f| f.known == Known::Connection) {
            for token in self.value(c).split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                // Options that are no field (`close`), fields always hop-by-hop
                // (already in the mask), and the protected ones need no search.
                let plain = Known::of(token);
                if token.is_empty()
                    || plain.is_hop_by_hop()
                    || matches!(plain, Known::Host | Known::ContentLength | Known::RequestId)
                    || token.eq_ignore_ascii_case(b"close")
                {
                    continue;
                }
                for (i, f) in self.fields.iter().enumerate() {
                    if self.name(f).eq_ignore_ascii_case(token) {
                        skip |= bit(i);
                    }
                }
            }
        }
        skip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_in_any_case() {
        assert_eq!(Known::of(b"Content-Length"), Known::ContentLength);
        assert_eq!(Known::of(b"TRANSFER-ENCODING"), Known::TransferEncoding);
        assert_eq!(Known::of(b"x-request-id"), Known::RequestId);
        assert_eq!(Known::of(b"Keep-Alive"), Known::KeepAlive);
        assert_eq!(Known::of(b"content-type"), Known::Other);
        assert_eq!(Known::of(b"tes"), Known::Other);
        assert!(Known::Connection.is_hop_by_hop());
        assert!(!Known::ContentLength.is_hop_by_hop());
    }

    #[test]
    fn hop_by_hop_mask_covers_connection_options() {
        let text = b"HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: x-a, Host, keep-alive\r\nHost: h\r\nKeep-Alive: t=1\r\nX-B: 2\r\n\r\n";
        let mut buf = bytes::BytesMut::from(&text[..]);
        let head = super::super::parse::parse_response_head(&mut buf)
            .expect("ok")
            .expect("complete");
        let raw = head.raw;
        assert_eq!(
            raw.hop_by_hop_mask(),
            0b0_1011,
            "x-a, connection and keep-alive; not host or x-b"
        );
        let map = raw.to_header_map(0);
        assert_eq!(map.len(), 5);
        assert_eq!(map["x-b"], "2");
    }
}
