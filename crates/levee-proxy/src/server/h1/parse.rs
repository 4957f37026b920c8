//! The strict reading of an HTTP/1.1 request head.
//!
//! levee sits in front of other HTTP software, and any message two parsers
//! could read differently is a request-smuggling hole. So where RFC 9110 and
//! 9112 allow a lenient reading, this parser refuses: bare LF line endings,
//! several or malformed `Content-Length`s, `Content-Length` together with
//! `Transfer-Encoding`, any transfer coding other than exactly `chunked`,
//! `Transfer-Encoding` on HTTP/1.0, a missing or repeated `Host`. Tokenising
//! is httparse's (which already refuses whitespace before the colon,
//! obs-fold, bare CR and control bytes in values); the policy is here.
//!
//! Header values are not copied: the head is frozen into one `Bytes` and
//! each value is a slice of it.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri, Version};
use levee_core::outcome::{ErrorKind, Rejection};

/// The limits a head is read under (`[server]` in the config).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadLimits {
    pub max_uri: usize,
    pub max_head: usize,
    pub max_headers: usize,
}

/// How the request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
}

/// A parsed, validated request head.
#[derive(Debug)]
pub(crate) struct Head {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The client allows the connection to stay open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a go-ahead to send the body.
    pub expect_continue: bool,
    /// A protocol upgrade (e.g. WebSocket) was asked for.
    pub upgrade: bool,
}

const fn reject(kind: ErrorKind, detail: &'static str) -> Rejection {
    Rejection::new(kind, detail)
}

const BAD_HEAD: Rejection = reject(ErrorKind::BadRequest, "malformed request head");
const BARE_LF: Rejection = reject(ErrorKind::BadRequest, "line ending without CR");

/// Up to this many header fields are parsed into a stack array; a larger
/// configured limit uses the heap.
const STACK_HEADERS: usize = 128;

/// Tries to read one head from the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, and on success removes the
/// head's bytes from `buf`. Refusals carry the status to answer with.
pub(crate) fn parse_head(
    buf: &mut BytesMut,
    limits: HeadLimits,
    offsets: &mut Vec<[usize; 4]>,
) -> Result<Option<Head>, Rejection> {
    let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut heap;
    let fields: &mut [httparse::Header<'_>] = if limits.max_headers <= STACK_HEADERS {
        &mut stack[..limits.max_headers]
    } else {
        heap = vec![httparse::EMPTY_HEADER; limits.max_headers];
        &mut heap
    };
    let mut req = httparse::Request::new(fields);
    let base = buf.as_ptr() as usize;
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            check_partial(buf, limits)?;
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(reject(ErrorKind::HeaderTooLarge, "too many header fields"));
        }
        Err(httparse::Error::Version) => {
            return Err(reject(
                ErrorKind::VersionNotSupported,
                "only HTTP/1.0 and HTTP/1.1 are served here",
            ));
        }
        Err(_) => {
            // httparse reports bare-LF heads as complete, so an error here is
            // a real syntax error; but a bare LF before it is the clearer cause.
            return Err(if has_bare_lf(buf) { BARE_LF } else { BAD_HEAD });
        }
    };
    if len > limits.max_head {
        return Err(reject(ErrorKind::HeaderTooLarge, "header section too large"));
    }
    if has_bare_lf(&buf[..len]) {
        return Err(BARE_LF);
    }
    let path = req.path.unwrap_or_default();
    if path.len() > limits.max_uri {
        return Err(reject(ErrorKind::UriTooLong, "request target too long"));
    }
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| reject(ErrorKind::BadRequest, "invalid method"))?;
    let path_at = [path.as_ptr() as usize - base, path.len()];
    offsets.clear();
    for h in req.headers.iter() {
        offsets.push([
            h.name.as_ptr() as usize - base,
            h.name.len(),
            h.value.as_ptr() as usize - base,
            h.value.len(),
        ]);
    }

    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path_at[0]..path_at[0] + path_at[1]))
        .map_err(|_| reject(ErrorKind::BadRequest, "invalid request target"))?;
    let mut headers = HeaderMap::with_capacity(offsets.len());
    for &[n, nl, v, vl] in offsets.iter() {
        let name = HeaderName::from_bytes(&head[n..n + nl])
            .map_err(|_| reject(ErrorKind::BadRequest, "invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
            .map_err(|_| reject(ErrorKind::BadRequest, "invalid header value"))?;
        headers.append(name, value);
    }
    interpret(method, uri, version, headers, &head)
}

/// Refuses an incomplete head early when it can no longer become valid, so
/// a client cannot make levee buffer up to the limit before hearing "no".
fn check_partial(buf: &[u8], limits: HeadLimits) -> Result<(), Rejection> {
    if has_bare_lf(buf) {
        return Err(BARE_LF);
    }
    // The request line is "METHOD SP target SP HTTP/1.1"; a line still open
    // past the URI limit plus room for the rest is too long.
    if memchr::memchr(b'\n', buf).is_none() && buf.len() > limits.max_uri + 32 {
        return Err(reject(ErrorKind::UriTooLong, "request target too long"));
    }
    if buf.len() >= limits.max_head {
        return Err(reject(ErrorKind::HeaderTooLarge, "header section too large"));
    }
    Ok(())
}

/// A LF not preceded by CR anywhere in `bytes`.
fn has_bare_lf(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', bytes).any(|i| i == 0 || bytes[i - 1] != b'\r')
}

/// The semantic checks: framing, Host, connection options.
fn interpret(
    method: Method,
    mut uri: Uri,
    version: Version,
    mut headers: HeaderMap,
    _raw: &Bytes,
) -> Result<Option<Head>, Rejection> {
    let framing = framing(&headers, version)?;

    // Request target forms (RFC 9112 §3.2).
    if method == Method::CONNECT {
        return Err(reject(ErrorKind::MethodNotAllowed, "CONNECT is not proxied"));
    }
    if uri.path() == "*" && uri.scheme().is_none() {
        if method != Method::OPTIONS {
            return Err(reject(
                ErrorKind::BadRequest,
                "asterisk target is only for OPTIONS",
            ));
        }
    } else if uri.scheme().is_some() {
        // Absolute form: the target's authority replaces Host (RFC 9112 §3.2.2).
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(reject(
                ErrorKind::BadRequest,
                "unsupported scheme in request target",
            ));
        }
        let authority = uri
            .authority()
            .filter(|a| !a.as_str().contains('@'))
            .ok_or(reject(
                ErrorKind::BadRequest,
                "invalid authority in request target",
            ))?;
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| reject(ErrorKind::BadRequest, "invalid authority in request target"))?;
        headers.insert(header::HOST, host);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        uri = Uri::try_from(if path.is_empty() { "/" } else { path })
            .map_err(|_| reject(ErrorKind::BadRequest, "invalid request target"))?;
    } else if !uri.path().starts_with('/') {
        return Err(reject(ErrorKind::BadRequest, "invalid request target"));
    }

    check_host(&headers, version)?;

    let mut keep_alive = version == Version::HTTP_11;
    let mut upgrade_token = false;
    for value in headers.get_all(header::CONNECTION) {
        for token in list_tokens(value) {
            if token.eq_ignore_ascii_case(b"close") {
                keep_alive = false;
            } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                upgrade_token = true;
            }
        }
    }
    // `close` wins over `keep-alive` whatever their order.
    if headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| list_tokens(v).any(|t| t.eq_ignore_ascii_case(b"close")))
    {
        keep_alive = false;
    }

    // Upgrades: HTTP/1.1 only, and never to h2c (RFC 9113 §3.1 removed it;
    // forwarding it would let a client speak h2 to an unsuspecting origin).
    let mut upgrade = false;
    if let Some(up) = headers.get(header::UPGRADE) {
        let h2c = list_tokens(up).any(|t| t.eq_ignore_ascii_case(b"h2c"));
        if h2c || !upgrade_token || version != Version::HTTP_11 {
            headers.remove(header::UPGRADE);
            headers.remove("http2-settings");
        } else {
            upgrade = true;
        }
    }

    let expect_continue = match headers.get(header::EXPECT) {
        None => false,
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"100-continue") => true,
        Some(_) => return Err(reject(ErrorKind::BadRequest, "unsupported expectation")),
    };
    // levee answers the expectation itself (see the h1 connection).
    headers.remove(header::EXPECT);

    Ok(Some(Head {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue: expect_continue && framing != Framing::Empty && version == Version::HTTP_11,
        upgrade,
    }))
}

/// Body framing per RFC 9112 §6, the strict way.
fn framing(headers: &HeaderMap, version: Version) -> Result<Framing, Rejection> {
    let mut te_values = headers.get_all(header::TRANSFER_ENCODING).iter();
    let mut cl_values = headers.get_all(header::CONTENT_LENGTH).iter();
    match (te_values.next(), cl_values.next()) {
        (Some(_), Some(_)) => Err(reject(
            ErrorKind::BadRequest,
            "both content-length and transfer-encoding",
        )),
        (Some(te), None) => {
            if version == Version::HTTP_10 {
                return Err(reject(
                    ErrorKind::BadRequest,
                    "transfer-encoding in an HTTP/1.0 request",
                ));
            }
            if te_values.next().is_some() {
                return Err(reject(ErrorKind::BadRequest, "repeated transfer-encoding"));
            }
            transfer_coding(te.as_bytes())
        }
        (None, Some(cl)) => {
            if cl_values.next().is_some() {
                return Err(reject(ErrorKind::BadRequest, "repeated content-length"));
            }
            match parse_content_length(cl.as_bytes()) {
                Some(0) => Ok(Framing::Empty),
                Some(n) => Ok(Framing::Length(n)),
                None => Err(reject(ErrorKind::BadRequest, "invalid content-length")),
            }
        }
        (None, None) => Ok(Framing::Empty),
    }
}

/// Exactly `chunked` is accepted. A clean list of other codings is valid
/// HTTP that levee does not implement (501); anything else is malformed.
fn transfer_coding(value: &[u8]) -> Result<Framing, Rejection> {
    let mut codings = Vec::new();
    for element in value.split(|&b| b == b',') {
        let token = trim_ows(element);
        if token.is_empty() || !token.iter().all(|&b| is_tchar(b)) {
            return Err(reject(ErrorKind::BadRequest, "malformed transfer-encoding"));
        }
        codings.push(token);
    }
    let is_chunked = |t: &[u8]| t.eq_ignore_ascii_case(b"chunked");
    let chunked = codings.iter().filter(|t| is_chunked(t)).count();
    let last_chunked = codings.last().is_some_and(|t| is_chunked(t));
    match chunked {
        1 if codings.len() == 1 => Ok(Framing::Chunked),
        0 => Err(reject(ErrorKind::NotImplemented, "unsupported transfer coding")),
        1 if last_chunked => Err(reject(ErrorKind::NotImplemented, "unsupported transfer coding")),
        _ => Err(reject(ErrorKind::BadRequest, "malformed transfer-encoding")),
    }
}

/// Whether an upstream response's framing is unambiguous: at most one
/// `Content-Length` of plain digits, `Transfer-Encoding` exactly `chunked`,
/// never both. hyper reads the lenient way (the last coding, equal lists);
/// levee refuses to relay what another parser could read differently.
pub(crate) fn response_framing_is_strict(headers: &HeaderMap) -> bool {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    let mut cl = headers.get_all(header::CONTENT_LENGTH).iter();
    match (te.next(), cl.next()) {
        (Some(_), Some(_)) => false,
        (Some(t), None) => te.next().is_none() && transfer_coding(t.as_bytes()) == Ok(Framing::Chunked),
        (None, Some(c)) => cl.next().is_none() && parse_content_length(c.as_bytes()).is_some(),
        (None, None) => true,
    }
}

/// 1*DIGIT with no sign, spaces, commas or overflow.
pub(crate) fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value
        .iter()
        .try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

fn check_host(headers: &HeaderMap, version: Version) -> Result<(), Rejection> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(reject(ErrorKind::BadRequest, "repeated host"));
    }
    match host {
        None if version == Version::HTTP_11 => Err(reject(ErrorKind::BadRequest, "missing host")),
        None => Ok(()),
        Some(h) => {
            let valid = !h.is_empty()
                && http::uri::Authority::try_from(h.as_bytes()).is_ok_and(|a| !a.as_str().contains('@'));
            if valid {
                Ok(())
            } else {
                Err(reject(ErrorKind::BadRequest, "invalid host"))
            }
        }
    }
}

/// The comma-separated tokens of a header value, trimmed.
pub(crate) fn list_tokens(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_uri: 8192,
        max_head: 65536,
        max_headers: 100,
    };

    fn parse(bytes: &[u8]) -> Result<Option<Head>, Rejection> {
        parse_with(bytes, LIMITS)
    }

    fn parse_with(bytes: &[u8], limits: HeadLimits) -> Result<Option<Head>, Rejection> {
        let mut buf = BytesMut::from(bytes);
        parse_head(&mut buf, limits, &mut Vec::new())
    }

    fn ok(bytes: &[u8]) -> Head {
        match parse(bytes) {
            Ok(Some(h)) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    fn status(bytes: &[u8]) -> u16 {
        match parse(bytes) {
            Err(r) => r.kind.status(),
            other => panic!("{:?} was accepted: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn plain_get() {
        let h = ok(b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\n\r\n");
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.uri, "/a?b=c");
        assert_eq!(h.version, Version::HTTP_11);
        assert_eq!(h.headers["x-a"], "1");
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive);
        assert!(!h.upgrade);
    }

    #[test]
    fn head_bytes_are_consumed_and_pipelined_bytes_kept() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\n"[..]);
        let h = parse_head(&mut buf, LIMITS, &mut Vec::new())
            .expect("ok")
            .expect("complete");
        assert_eq!(h.uri, "/");
        assert_eq!(&buf[..], b"GET /2 HTTP/1.1\r\n");
        assert!(
            parse_head(&mut buf, LIMITS, &mut Vec::new())
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn partial_head_waits() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n").expect("ok").is_none());
    }

    #[test]
    fn framing_is_read_strictly() {
        let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(5));
        let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        let h = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.framing, Framing::Empty);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let cases: &[(&[u8], u16)] = &[
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 501),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ];
        for (bytes, want) in cases {
            assert_eq!(status(bytes), *want, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn header_syntax_is_strict() {
        let cases: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n: empty-name\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX(A): 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x7fb\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\nX-A: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET noslash HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GE\x01T / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n",
        ];
        for bytes in cases {
            assert_eq!(status(bytes), 400, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn bare_lf_is_refused_before_the_head_completes() {
        assert_eq!(parse(b"GET / HTTP/1.1\nHost").map(|_| ()), Err(BARE_LF));
    }

    #[test]
    fn versions() {
        assert_eq!(status(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505);
        assert_eq!(status(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"), 505);
        let h = ok(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(h.version, Version::HTTP_10);
        assert!(!h.keep_alive);
        let h = ok(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(h.keep_alive);
    }

    #[test]
    fn connection_options() {
        assert!(!ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
        let ws = ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(ws.upgrade);
        // Upgrade without the Connection token is not an upgrade, and is not forwarded.
        let h = ok(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
        assert!(!h.upgrade);
        assert!(h.headers.get("upgrade").is_none());
        let h2c = ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n");
        assert!(!h2c.upgrade);
        assert!(h2c.headers.get("upgrade").is_none());
        assert!(h2c.headers.get("http2-settings").is_none());
    }

    #[test]
    fn expect_continue() {
        let h = ok(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
        assert!(h.expect_continue);
        assert!(h.headers.get("expect").is_none());
        let h = ok(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n");
        assert!(!h.expect_continue, "no body, nothing to wait for");
    }

    #[test]
    fn absolute_form_replaces_host() {
        let h = ok(b"GET http://b.example:8080/x?y HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.uri, "/x?y");
        assert_eq!(h.headers["host"], "b.example:8080");
        assert_eq!(status(b"GET http://u@b/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    }

    #[test]
    fn connect_and_asterisk() {
        assert_eq!(status(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"), 405);
        assert_eq!(ok(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").uri, "*");
    }

    #[test]
    fn size_limits() {
        let small = HeadLimits {
            max_uri: 100,
            max_head: 1024,
            max_headers: 3,
        };
        let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(200));
        assert_eq!(
            parse_with(long_uri.as_bytes(), small)
                .map(|_| ())
                .unwrap_err()
                .kind
                .status(),
            414
        );
        // Refused before the line completes.
        let open_line = format!("GET /{}", "a".repeat(200));
        assert_eq!(
            parse_with(open_line.as_bytes(), small)
                .map(|_| ())
                .unwrap_err()
                .kind
                .status(),
            414
        );
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX-A: {}\r\n\r\n", "a".repeat(2000));
        assert_eq!(
            parse_with(big.as_bytes(), small)
                .map(|_| ())
                .unwrap_err()
                .kind
                .status(),
            431
        );
        let open_head = format!("GET / HTTP/1.1\r\nHost: a\r\nX-A: {}", "a".repeat(2000));
        assert_eq!(
            parse_with(open_head.as_bytes(), small)
                .map(|_| ())
                .unwrap_err()
                .kind
                .status(),
            431
        );
        let many = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(
            parse_with(many, small).map(|_| ()).unwrap_err().kind.status(),
            431
        );
        let three = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        assert!(parse_with(three, small).expect("ok").is_some());
    }

    #[test]
    fn large_header_limits_use_the_heap() {
        let limits = HeadLimits {
            max_uri: 8192,
            max_head: 1 << 20,
            max_headers: 1000,
        };
        let mut req = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
        for i in 0..500 {
            req.push_str(&format!("X-{i}: {i}\r\n"));
        }
        req.push_str("\r\n");
        let h = parse_with(req.as_bytes(), limits).expect("ok").expect("complete");
        assert_eq!(h.headers.len(), 501);
    }

    #[test]
    fn content_length_parser() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"007"), Some(7));
        assert_eq!(parse_content_length(b"18446744073709551615"), None, "20 digits");
        assert_eq!(
            parse_content_length(b"9223372036854775807"),
            Some(i64::MAX as u64)
        );
        assert_eq!(parse_content_length(b" 1"), None);
        assert_eq!(parse_content_length(b""), None);
    }
}
