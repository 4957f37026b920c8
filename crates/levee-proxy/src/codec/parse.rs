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

use std::borrow::Cow;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Uri, Version};
use levee_core::outcome::{ErrorKind, Rejection};

use super::raw::{Known, MAX_RAW_FIELDS, RawField, RawHead, bit};

/// The limits a head is read under (`[server]` in the config).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadLimits {
    pub max_uri: usize,
    pub max_head: usize,
    pub max_headers: usize,
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes: only a response can be framed so.
    UntilClose,
}

/// A parsed, validated request head.
#[derive(Debug)]
pub(crate) struct Head {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub fields: RequestFields,
    pub framing: Framing,
    /// The client allows the connection to stay open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a go-ahead to send the body.
    pub expect_continue: bool,
    /// A protocol upgrade (e.g. WebSocket) was asked for.
    pub upgrade: bool,
}

/// A request's fields as levee keeps them.
#[derive(Debug)]
pub(crate) enum RequestFields {
    /// As received: forwarded to an HTTP/1.1 upstream by copying lines.
    Raw(RawRequest),
    /// A map: for heads with more fields than a raw head tracks, and for
    /// HTTP/2 clients.
    Map(HeaderMap),
}

/// A request head as received, with what reading it already decided.
#[derive(Debug)]
pub(crate) struct RawRequest {
    pub head: RawHead,
    /// The fields [`RawRequest::is_dropped`] leaves out, as a mask (bit `i`
    /// is field `i`, for heads of up to 64 fields).
    pub skip: u64,
    /// The authority of an absolute-form target, the request's Host.
    pub host: Option<HeaderValue>,
    /// The `Upgrade` fields are no upgrade (or one to h2c).
    pub drop_upgrade: bool,
}

impl RawRequest {
    fn new(head: RawHead, host: Option<HeaderValue>, drop_upgrade: bool) -> RawRequest {
        let mut raw = RawRequest {
            head,
            skip: 0,
            host,
            drop_upgrade,
        };
        raw.skip = raw
            .head
            .fields
            .iter()
            .enumerate()
            .filter(|(_, f)| raw.is_dropped(f))
            .fold(0, |skip, (i, _)| skip | bit(i));
        raw
    }

    /// Whether a field is not forwarded, whatever the hop-by-hop rules say:
    /// `Expect`, which levee answers itself; an `Upgrade` that is no upgrade
    /// with its `HTTP2-Settings`; `Host` when an absolute target replaces it.
    fn is_dropped(&self, f: &RawField) -> bool {
        match f.known {
            Known::Expect => true,
            Known::Upgrade | Known::Http2Settings => self.drop_upgrade,
            Known::Host => self.host.is_some(),
            _ => false,
        }
    }

    /// The fields that are forwarded, with their index.
    pub fn kept(&self) -> impl Iterator<Item = (usize, &RawField)> {
        self.head
            .fields
            .iter()
            .enumerate()
            .filter(|(i, _)| self.skip & bit(*i) == 0)
    }

    /// The kept value of a field levee recognises, as a shared slice.
    pub fn value_of(&self, known: Known) -> Option<HeaderValue> {
        let (_, f) = self.kept().find(|(_, f)| f.known == known)?;
        HeaderValue::from_maybe_shared(self.head.bytes.slice(f.value.0 as usize..f.value.1 as usize)).ok()
    }

    /// The request's host: the absolute target's authority, or the Host field.
    pub fn host(&self) -> Option<HeaderValue> {
        self.host.clone().or_else(|| self.value_of(Known::Host))
    }

    /// The kept fields as a map, with room for `extra` more.
    pub fn into_map(self, extra: usize) -> HeaderMap {
        self.to_map(extra)
    }

    fn to_map(&self, extra: usize) -> HeaderMap {
        let mut map = self.head.to_header_map_where(extra, |f| !self.is_dropped(f));
        if let Some(host) = &self.host {
            map.insert(header::HOST, host.clone());
        }
        map
    }
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
pub(crate) fn parse_head(buf: &mut BytesMut, limits: HeadLimits) -> Result<Option<Head>, Rejection> {
    let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut heap;
    let parsed: &mut [httparse::Header<'_>] = if limits.max_headers <= STACK_HEADERS {
        &mut stack[..limits.max_headers]
    } else {
        heap = vec![httparse::EMPTY_HEADER; limits.max_headers];
        &mut heap
    };
    let mut req = httparse::Request::new(parsed);
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
    // The target first, as the early refusal of a partial head does, so
    // that the status does not depend on how the bytes arrived.
    let path = req.path.unwrap_or_default();
    if path.len() > limits.max_uri {
        return Err(reject(ErrorKind::UriTooLong, "request target too long"));
    }
    if len > limits.max_head {
        return Err(reject(ErrorKind::HeaderTooLarge, "header section too large"));
    }
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
        .map_err(|_| reject(ErrorKind::BadRequest, "invalid method"))?;
    let path_at = (path.as_ptr() as usize - base, path.len());
    let fields = raw_fields(&buf[..len], base, req.headers.iter()).ok_or(BARE_LF)?;
    let head = RawHead {
        bytes: buf.split_to(len).freeze(),
        fields,
    };
    let uri = Uri::from_maybe_shared(head.bytes.slice(path_at.0..path_at.0 + path_at.1))
        .map_err(|_| reject(ErrorKind::BadRequest, "invalid request target"))?;
    interpret(method, uri, version, head).map(Some)
}

/// The field lines of a head whose every line must end in CRLF. httparse
/// accepts a bare LF, and a line can only end where httparse saw one: after
/// the start line, after each field's value (and its trailing spaces), and
/// as the empty line that closes the head. `None` when one does not.
fn raw_fields<'h>(
    head: &[u8],
    base: usize,
    parsed: impl ExactSizeIterator<Item = &'h httparse::Header<'h>>,
) -> Option<Vec<RawField>> {
    let crlf_at = |lf: usize| lf >= 1 && head[lf - 1] == b'\r';
    // httparse skips empty lines before the start line (RFC 9112 §2.2):
    // each must be a CRLF too. (Checked pair by pair rather than with a
    // search for bare LFs: there are none in practice, and the search cost
    // 1% of a proxied request's instructions.)
    let leading = head.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    if head[..leading].chunks(2).any(|pair| pair != b"\r\n") {
        return None;
    }
    let start_lf = leading + memchr::memchr(b'\n', &head[leading..])?;
    if !crlf_at(start_lf) {
        return None;
    }
    let mut fields = Vec::with_capacity(parsed.len());
    let mut end_of_fields = start_lf + 1;
    for h in parsed {
        let name_at = h.name.as_ptr() as usize - base;
        let value_at = h.value.as_ptr() as usize - base;
        let value_end = value_at + h.value.len();
        // What follows a value is trailing whitespace (rare), then the line
        // end: no search needed.
        let mut lf = value_end;
        while matches!(head.get(lf), Some(b' ' | b'\t' | b'\r')) {
            lf += 1;
        }
        if head.get(lf) != Some(&b'\n') || !crlf_at(lf) {
            return None;
        }
        fields.push(RawField {
            name: (name_at as u32, (name_at + h.name.len()) as u32),
            value: (value_at as u32, value_end as u32),
            line: (name_at as u32, (lf + 1) as u32),
            known: Known::of(h.name.as_bytes()),
        });
        end_of_fields = lf + 1;
    }
    (head.get(end_of_fields..) == Some(b"\r\n")).then_some(fields)
}

/// Refuses an incomplete head early when it can no longer become valid, so
/// a client cannot make levee buffer up to the limit before hearing "no".
fn check_partial(buf: &[u8], limits: HeadLimits) -> Result<(), Rejection> {
    if has_bare_lf(buf) {
        return Err(BARE_LF);
    }
    // The request line is "METHOD SP target SP HTTP/1.1". Once the target
    // read so far is over the limit, no later byte can make the request
    // acceptable, so it is refused now. Only then: a guess from the line's
    // length would refuse a long method with a short target when the line
    // arrives in pieces, and accept it when it arrives whole.
    let start = buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    let rest = &buf[start..];
    let line = &rest[..memchr::memchr(b'\n', rest).unwrap_or(rest.len())];
    if let Some(sp) = memchr::memchr(b' ', line) {
        let target = &line[sp + 1..];
        let target = &target[..memchr::memchr(b' ', target).unwrap_or(target.len())];
        if target.len() > limits.max_uri {
            return Err(reject(ErrorKind::UriTooLong, "request target too long"));
        }
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
fn interpret(method: Method, mut uri: Uri, version: Version, head: RawHead) -> Result<Head, Rejection> {
    // One pass for the few fields that shape the request.
    let (mut cl, mut te, mut hosts) = (0u8, 0u8, 0u8);
    let mut connection = false;
    let mut upgrade_field = false;
    let mut expect = None;
    for (i, f) in head.fields.iter().enumerate() {
        match f.known {
            Known::ContentLength => cl = cl.saturating_add(1),
            Known::TransferEncoding => te = te.saturating_add(1),
            Known::Host => hosts = hosts.saturating_add(1),
            Known::Connection => connection = true,
            Known::Upgrade => upgrade_field = true,
            // levee answers the expectation itself (see the h1 connection).
            Known::Expect => expect = expect.or(Some(i)),
            _ => {}
        }
    }
    let first = |k: Known| {
        head.fields
            .iter()
            .find(|f| f.known == k)
            .map_or(&b""[..], |f| head.value(f))
    };

    let framing = match (te, cl) {
        (0, 0) => Framing::Empty,
        (_, c) if c > 0 && te > 0 => {
            return Err(reject(
                ErrorKind::BadRequest,
                "both content-length and transfer-encoding",
            ));
        }
        (1, 0) if version == Version::HTTP_10 => {
            return Err(reject(
                ErrorKind::BadRequest,
                "transfer-encoding in an HTTP/1.0 request",
            ));
        }
        (1, 0) => transfer_coding(first(Known::TransferEncoding))?,
        (_, 0) => return Err(reject(ErrorKind::BadRequest, "repeated transfer-encoding")),
        (0, 1) => match parse_content_length(first(Known::ContentLength)) {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => return Err(reject(ErrorKind::BadRequest, "invalid content-length")),
        },
        _ => return Err(reject(ErrorKind::BadRequest, "repeated content-length")),
    };

    // Request target forms (RFC 9112 §3.2).
    if method == Method::CONNECT {
        return Err(reject(ErrorKind::MethodNotAllowed, "CONNECT is not proxied"));
    }
    let mut host_override = None;
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
        let invalid = reject(ErrorKind::BadRequest, "invalid authority in request target");
        let authority = uri
            .authority()
            .filter(|a| !a.as_str().contains('@'))
            .ok_or(invalid)?;
        host_override = Some(HeaderValue::from_str(authority.as_str()).map_err(|_| invalid)?);
        // `http://h` and `http://h?q` have an empty path, which is `/`.
        let target = match (uri.path(), uri.query()) {
            (path, None) => Cow::Borrowed(path),
            (path, Some(query)) => Cow::Owned(format!("{path}?{query}")),
        };
        uri = Uri::try_from(&*target).map_err(|_| reject(ErrorKind::BadRequest, "invalid request target"))?;
    } else if !uri.path().starts_with('/') {
        return Err(reject(ErrorKind::BadRequest, "invalid request target"));
    } else {
        match hosts {
            0 if version == Version::HTTP_11 => return Err(reject(ErrorKind::BadRequest, "missing host")),
            0 => {}
            1 if !is_authority(first(Known::Host)) => {
                return Err(reject(ErrorKind::BadRequest, "invalid host"));
            }
            1 => {}
            _ => return Err(reject(ErrorKind::BadRequest, "repeated host")),
        }
    }

    // Connection options: `close` wins over `keep-alive` whatever the order.
    let (mut close, mut keep, mut upgrade_token) = (false, false, false);
    if connection {
        for f in head.fields.iter().filter(|f| f.known == Known::Connection) {
            for token in head.value(f).split(|&b| b == b',').map(trim_ows) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep |= token.eq_ignore_ascii_case(b"keep-alive");
                upgrade_token |= token.eq_ignore_ascii_case(b"upgrade");
            }
        }
    }
    let keep_alive = !close && (version == Version::HTTP_11 || keep);

    // Upgrades: HTTP/1.1 only, and never to h2c (RFC 9113 §3.1 removed it;
    // forwarding it would let a client speak h2 to an unsuspecting origin).
    let mut upgrade = false;
    let mut drop_upgrade = false;
    if upgrade_field {
        // In any of the fields: the upgrade is forwarded with all of them.
        let h2c = head
            .fields
            .iter()
            .filter(|f| f.known == Known::Upgrade)
            .flat_map(|f| head.value(f).split(|&b| b == b','))
            .map(trim_ows)
            .any(|t| t.eq_ignore_ascii_case(b"h2c"));
        drop_upgrade = h2c || !upgrade_token || version != Version::HTTP_11;
        upgrade = !drop_upgrade;
    }

    let expect_continue = match expect {
        None => false,
        Some(i) if head.value(&head.fields[i]).eq_ignore_ascii_case(b"100-continue") => true,
        Some(_) => return Err(reject(ErrorKind::BadRequest, "unsupported expectation")),
    };

    let raw = RawRequest::new(head, host_override, drop_upgrade);
    // A skip mask tracks up to 64 fields; a larger head becomes a map.
    let fields = if raw.head.fields.len() <= MAX_RAW_FIELDS {
        RequestFields::Raw(raw)
    } else {
        RequestFields::Map(raw.into_map(8))
    };
    Ok(Head {
        method,
        uri,
        version,
        fields,
        framing,
        keep_alive,
        expect_continue: expect_continue && framing != Framing::Empty && version == Version::HTTP_11,
        upgrade,
    })
}

/// Exactly `chunked` is accepted. A clean list of other codings is valid
/// HTTP that levee does not implement (501); anything else is malformed.
fn transfer_coding(value: &[u8]) -> Result<Framing, Rejection> {
    let mut codings = 0;
    let mut chunked = 0;
    let mut last_chunked = false;
    for element in value.split(|&b| b == b',') {
        let token = trim_ows(element);
        if token.is_empty() || !token.iter().all(|&b| is_tchar(b)) {
            return Err(reject(ErrorKind::BadRequest, "malformed transfer-encoding"));
        }
        codings += 1;
        last_chunked = token.eq_ignore_ascii_case(b"chunked");
        chunked += usize::from(last_chunked);
    }
    match chunked {
        1 if codings == 1 => Ok(Framing::Chunked),
        0 => Err(reject(ErrorKind::NotImplemented, "unsupported transfer coding")),
        1 if last_chunked => Err(reject(ErrorKind::NotImplemented, "unsupported transfer coding")),
        _ => Err(reject(ErrorKind::BadRequest, "malformed transfer-encoding")),
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

/// `host [ ":" port ]` per RFC 3986 §3.2, without user information: a
/// bracketed IP literal, or a reg-name / IPv4 address.
pub(crate) fn is_authority(b: &[u8]) -> bool {
    let (host, port) = if b.first() == Some(&b'[') {
        match memchr::memchr(b']', b) {
            Some(i) => b.split_at(i + 1),
            None => return false,
        }
    } else {
        match b.iter().rposition(|&c| c == b':') {
            Some(i) => b.split_at(i),
            None => (b, &b[b.len()..]),
        }
    };
    let port_ok =
        port.is_empty() || port.len() <= 6 && port[0] == b':' && port[1..].iter().all(u8::is_ascii_digit);
    let host_ok = match host {
        [b'[', inner @ .., b']'] => {
            !inner.is_empty()
                && inner
                    .iter()
                    .all(|&c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
        }
        _ => !host.is_empty() && host.iter().all(|&c| REG_NAME[c as usize]),
    };
    port_ok && host_ok
}

/// The bytes of a reg-name or IPv4 address: unreserved, sub-delims and `%`
/// (RFC 3986 §3.2.2), as a table because every request's Host is checked.
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
            );
        c += 1;
    }
    t
};

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

/// An upstream response head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub status: http::StatusCode,
    pub version: Version,
    pub raw: RawHead,
    /// The upstream allows the connection to be used again.
    pub keep_alive: bool,
    pub body: BodyLength,
}

/// Response heads larger than this are refused; no sane origin sends one.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_FIELDS: usize = 128;

/// Tries to read a response head from the start of `buf`; on success its
/// bytes are removed. Anything ambiguous is refused, as for requests. The
/// fields are kept as received ([`RawHead`]); no map is built.
pub(crate) fn parse_response_head(buf: &mut BytesMut) -> Result<Option<ResponseHead>, Rejection> {
    const MALFORMED: Rejection = reject(ErrorKind::UpstreamProtocol, "malformed upstream response");
    const AMBIGUOUS: Rejection = reject(ErrorKind::UpstreamProtocol, "ambiguous upstream response framing");
    let mut parsed = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
    let mut res = httparse::Response::new(&mut parsed);
    let base = buf.as_ptr() as usize;
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_RESPONSE_HEAD || has_bare_lf(buf) {
                return Err(MALFORMED);
            }
            return Ok(None);
        }
        Err(_) => return Err(MALFORMED),
    };
    if len > MAX_RESPONSE_HEAD {
        return Err(MALFORMED);
    }
    let status = res
        .code
        .and_then(|c| http::StatusCode::from_u16(c).ok())
        .ok_or(MALFORMED)?;
    let version = match res.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let fields = raw_fields(&buf[..len], base, res.headers.iter()).ok_or(MALFORMED)?;
    let (mut te, mut cl, mut connection) = (0u8, 0u8, false);
    for f in &fields {
        match f.known {
            Known::TransferEncoding => te = te.saturating_add(1),
            Known::ContentLength => cl = cl.saturating_add(1),
            Known::Connection => connection = true,
            _ => {}
        }
    }
    let raw = RawHead {
        bytes: buf.split_to(len).freeze(),
        fields,
    };
    let value_of = |k: Known| {
        raw.fields
            .iter()
            .find(|f| f.known == k)
            .map_or(&b""[..], |f| raw.value(f))
    };
    let body = match (te, cl) {
        (0, 0) => BodyLength::Unstated,
        (1, 0) if version == Version::HTTP_11 => {
            if transfer_coding(value_of(Known::TransferEncoding)) != Ok(Framing::Chunked) {
                return Err(AMBIGUOUS);
            }
            BodyLength::Chunked
        }
        (0, 1) => BodyLength::Length(parse_content_length(value_of(Known::ContentLength)).ok_or(AMBIGUOUS)?),
        _ => return Err(AMBIGUOUS),
    };
    let (mut close, mut keep) = (false, false);
    if connection {
        for f in raw.fields.iter().filter(|f| f.known == Known::Connection) {
            for token in raw.value(f).split(|&b| b == b',').map(trim_ows) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    Ok(Some(ResponseHead {
        status,
        version,
        raw,
        keep_alive: !close && (version == Version::HTTP_11 || keep),
        body,
    }))
}

/// What a response head says about its body's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyLength {
    Length(u64),
    Chunked,
    /// Neither field: the body runs to the close.
    Unstated,
}

/// The body framing of a response to a request (RFC 9112 §6.3).
pub(crate) fn response_framing(head: &ResponseHead, request_was_head: bool) -> Framing {
    let s = head.status.as_u16();
    if request_was_head || (100..200).contains(&s) || s == 204 || s == 304 {
        return Framing::Empty;
    }
    match head.body {
        BodyLength::Length(0) => Framing::Empty,
        BodyLength::Length(n) => Framing::Length(n),
        BodyLength::Chunked => Framing::Chunked,
        BodyLength::Unstated => Framing::UntilClose,
    }
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
        parse_head(&mut buf, limits)
    }

    /// The fields a head forwards, as a map.
    fn headers(h: &Head) -> HeaderMap {
        match &h.fields {
            RequestFields::Raw(r) => r.to_map(0),
            RequestFields::Map(m) => m.clone(),
        }
    }

    fn ok(bytes: &[u8]) -> Head {
        match parse(bytes) {
            Ok(Some(h)) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    fn status(bytes: &[u8]) -> u16 {
        status_with(bytes, LIMITS)
    }

    /// The status a head is refused with; panics when it is not refused.
    fn status_with(bytes: &[u8], limits: HeadLimits) -> u16 {
        match parse_with(bytes, limits) {
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
        assert_eq!(headers(&h)["x-a"], "1");
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive);
        assert!(!h.upgrade);
    }

    #[test]
    fn head_bytes_are_consumed_and_pipelined_bytes_kept() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\n"[..]);
        let h = parse_head(&mut buf, LIMITS).expect("ok").expect("complete");
        assert_eq!(h.uri, "/");
        assert_eq!(&buf[..], b"GET /2 HTTP/1.1\r\n");
        assert!(parse_head(&mut buf, LIMITS).expect("ok").is_none());
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
    fn empty_lines_before_a_head_must_end_in_crlf_like_the_rest() {
        // httparse skips them; a bare LF among them, or ending the request
        // line after them, was accepted once (found by fuzzing).
        assert_eq!(
            parse(b"\r\nGET / HTTP/1.1\nHost: a\r\n\r\n").map(|_| ()),
            Err(BARE_LF)
        );
        assert_eq!(
            parse(b"\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").map(|_| ()),
            Err(BARE_LF)
        );
        assert!(matches!(
            parse(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Some(_))
        ));
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
        assert!(headers(&h).get("upgrade").is_none());
        let h2c = ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n");
        assert!(!h2c.upgrade);
        assert!(headers(&h2c).get("upgrade").is_none());
        assert!(headers(&h2c).get("http2-settings").is_none());
        let hidden = ok(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n\r\n",
        );
        assert!(!hidden.upgrade, "h2c in a second Upgrade field");
        assert!(headers(&hidden).get("upgrade").is_none());
    }

    #[test]
    fn expect_continue() {
        let h = ok(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
        assert!(h.expect_continue);
        assert!(headers(&h).get("expect").is_none());
        let h = ok(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n");
        assert!(!h.expect_continue, "no body, nothing to wait for");
    }

    #[test]
    fn absolute_form_replaces_host() {
        let h = ok(b"GET http://b.example:8080/x?y HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.uri, "/x?y");
        assert_eq!(headers(&h)["host"], "b.example:8080");
        assert_eq!(status(b"GET http://u@b/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        // An empty path is `/`, query or not.
        assert_eq!(ok(b"GET http://b?q=1 HTTP/1.1\r\nHost: a\r\n\r\n").uri, "/?q=1");
        assert_eq!(ok(b"GET http://b HTTP/1.1\r\nHost: a\r\n\r\n").uri, "/");
    }

    #[test]
    fn fields_levee_drops_stay_dropped_in_heads_too_large_for_raw() {
        // More fields than a raw head tracks: the head becomes a map, and
        // what the parser decided about Expect, h2c and Host must survive.
        let mut text = String::from("PUT http://b.example/x HTTP/1.1\r\n");
        for i in 0..MAX_RAW_FIELDS + 5 {
            text.push_str(&format!("X-F{i}: {i}\r\n"));
        }
        text.push_str(
            "Host: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
        );
        let limits = HeadLimits {
            max_headers: 200,
            ..LIMITS
        };
        let h = parse_with(text.as_bytes(), limits)
            .expect("ok")
            .expect("complete");
        assert!(matches!(h.fields, RequestFields::Map(_)));
        assert!(h.expect_continue);
        let map = headers(&h);
        assert_eq!(map.get_all("host").iter().collect::<Vec<_>>(), ["b.example"]);
        for gone in ["expect", "upgrade", "http2-settings"] {
            assert!(map.get(gone).is_none(), "{gone} was kept");
        }
        assert_eq!(map["x-f68"], "68");
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
        assert_eq!(status_with(long_uri.as_bytes(), small), 414);
        // Too long a target and too large a head: 414 whole, as in pieces
        // (where the target is seen first).
        let both = format!(
            "GET /{} HTTP/1.1\r\nHost: a\r\nX-A: {}\r\n\r\n",
            "a".repeat(200),
            "b".repeat(2000)
        );
        assert_eq!(status_with(both.as_bytes(), small), 414);
        assert_eq!(status_with(&both.as_bytes()[..150], small), 414);
        // After empty lines too, which httparse skips.
        let open_line = format!("\r\nGET /{}", "a".repeat(200));
        assert_eq!(status_with(open_line.as_bytes(), small), 414);
        // Refused before the line completes.
        let open_line = format!("GET /{}", "a".repeat(200));
        assert_eq!(status_with(open_line.as_bytes(), small), 414);
        // A long method with a target under the limit is no long target,
        // whether the line arrives whole or in pieces (found by fuzzing).
        let method = "M".repeat(90);
        let long_method = format!("{method} /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(90));
        assert!(matches!(parse_with(long_method.as_bytes(), small), Ok(Some(_))));
        let cut = long_method.find("HTTP").expect("version");
        assert!(matches!(
            parse_head(&mut BytesMut::from(&long_method.as_bytes()[..cut]), small),
            Ok(None)
        ));
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX-A: {}\r\n\r\n", "a".repeat(2000));
        assert_eq!(status_with(big.as_bytes(), small), 431);
        let open_head = format!("GET / HTTP/1.1\r\nHost: a\r\nX-A: {}", "a".repeat(2000));
        assert_eq!(status_with(open_head.as_bytes(), small), 431);
        let many = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(status_with(many, small), 431);
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
        assert_eq!(headers(&h).len(), 501);
    }

    #[test]
    fn authorities() {
        for ok in [
            "a",
            "a.example:8080",
            "127.0.0.1",
            "[::1]:443",
            "[2001:db8::1]",
            "xn--bcher-kva.example",
            "a:",
        ] {
            assert!(is_authority(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "a b",
            "u@a",
            "a/b",
            "a:b:c",
            "[::1",
            "[]",
            "a:12x",
            "a:1234567",
            "a?b",
            "a#b",
        ] {
            assert!(!is_authority(bad.as_bytes()), "{bad}");
        }
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
