//! The strict front door, over raw bytes: wherever a message could be read
//! in more than one way, levee refuses it rather than pick a reading.
//!
//! Every refusal is checked by three witnesses: what the client saw (the
//! status, levee's `Proxy-Status`, the connection closed), what the origin's
//! ledger received (nothing of the refused request, and never the valid
//! request pipelined behind it in the same write), and levee's own counter.

use levee_testkit::{Arrival, Backend, RawConn, RawResponse, sha256_hex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// A valid request sent in the same write as each refused one. What follows
/// a malformed request cannot be trusted to be a request, so it must never
/// run.
const AFTER: &[u8] = b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n";

/// How far a refused request may legitimately have got towards the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    /// Refused on its head: no byte of it may reach the origin.
    Nothing,
    /// Refused in its body, after a valid head that levee may already have
    /// forwarded: the origin may see a beginning, never a complete request.
    Partial,
}

/// A config with one backend and these `[server]` keys (may be empty).
fn gateway_config(backend: &Backend, server: &str) -> String {
    let extra = if server.is_empty() {
        String::new()
    } else {
        format!("\n[server]\n{server}\n")
    };
    config(&[("local", 0, &[backend.addr()])], "", &extra)
}

fn series(error: &str) -> String {
    format!("levee_http_generated_responses_total{{cause=\"{error}\"}}")
}

/// Checks the shape of a response levee generated (shared with `errors`): status, `Proxy-Status`
/// naming levee and the error type, plain-text body starting with the status.
pub(crate) fn assert_generated(case: &str, res: &RawResponse, status: u16, error: &str) {
    assert_eq!(
        res.status,
        status,
        "{case}: status (response: {res:?}, body {:?})",
        res.text()
    );
    let proxy_status = res
        .header("proxy-status")
        .unwrap_or_else(|| panic!("{case}: no proxy-status in {res:?}"));
    let params: Vec<&str> = proxy_status.split(';').map(str::trim).collect();
    assert_eq!(params[0], "levee", "{case}: proxy-status {proxy_status:?}");
    assert!(
        params.contains(&format!("error={error}").as_str()),
        "{case}: proxy-status {proxy_status:?} should name error={error}"
    );
    assert!(
        params.iter().any(|p| p.starts_with("details=\"")),
        "{case}: proxy-status {proxy_status:?} has no details"
    );
    assert_eq!(
        res.header("content-type"),
        Some("text/plain; charset=utf-8"),
        "{case}: content-type"
    );
    assert!(
        res.text().starts_with(&status.to_string()),
        "{case}: body {:?} should start with {status}",
        res.text()
    );
    assert!(res.complete, "{case}: levee's own response arrived incomplete");
}

/// Sends `request` with [`AFTER`] pipelined behind it in one write, to a
/// fresh levee in front of a fresh backend, and checks the refusal end to
/// end: the response, the close, the origin's ledger and the counter.
async fn refuses(case: &str, request: &[u8], status: u16, reach: Reach) {
    refuses_with(case, "", request, status, "http_request_error", reach).await;
}

async fn refuses_with(case: &str, server: &str, request: &[u8], status: u16, error: &str, reach: Reach) {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&gateway_config(&backend, server)).await;

    let mut conn = RawConn::connect(h.addr).await.expect("connect");
    let mut bytes = request.to_vec();
    bytes.extend_from_slice(AFTER);
    conn.send(&bytes).await.expect("send");
    let res = conn
        .read_response(SETTLE)
        .await
        .unwrap_or_else(|e| panic!("{case}: no response: {e:#}"));
    assert_generated(case, &res, status, error);
    assert_eq!(
        res.header("connection"),
        Some("close"),
        "{case}: a refusal announces the close"
    );
    assert!(
        conn.closed_within(SETTLE).await,
        "{case}: connection still open after the refusal, or more bytes followed: {:?}",
        String::from_utf8_lossy(conn.buffered())
    );

    assert_nothing_ran(case, &h, &backend, reach).await;
    assert_eq!(
        h.metric(&series(error)).await,
        1.0,
        "{case}: generated-response counter for {error}"
    );
}

/// Checks the origin's ledger after a refusal: the pipelined request never
/// ran, and the refused one reached no further than `reach` allows.
async fn assert_nothing_ran(case: &str, h: &Harness, backend: &Backend, reach: Reach) {
    // A request on a fresh connection, answered after the refusal: whatever
    // levee forwarded before it has had its turn to reach the ledger.
    let sentinel = h.client().get("/sentinel").await.expect("sentinel request");
    assert_eq!(
        sentinel.status, 200,
        "{case}: levee still serves after the refusal"
    );
    let arrivals: Vec<Arrival> = backend
        .ledger()
        .arrivals()
        .into_iter()
        .filter(|a| a.path != "/sentinel")
        .collect();
    assert!(
        arrivals.iter().all(|a| !a.path.starts_with("/after")),
        "{case}: the request pipelined behind the refused one ran: {arrivals:#?}"
    );
    match reach {
        Reach::Nothing => assert!(
            arrivals.is_empty(),
            "{case}: the refused request reached the origin: {arrivals:#?}"
        ),
        Reach::Partial => assert!(
            arrivals.iter().all(|a| !a.complete),
            "{case}: the origin received the refused request complete: {arrivals:#?}"
        ),
    }
}

/// One test per case, named after it, so a failure says which.
macro_rules! refused {
    ($($(#[$attr:meta])* $name:ident: $status:literal, $reach:ident, $request:expr;)+) => {$(
        $(#[$attr])*
        #[tokio::test]
        async fn $name() {
            refuses(stringify!($name), &$request[..], $status, Reach::$reach).await;
        }
    )+};
}

fn long_uri() -> Vec<u8> {
    format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(9000)).into_bytes()
}

/// Host plus 100 more fields: 101 against the default limit of 100.
fn too_many_fields() -> Vec<u8> {
    let mut r = String::from("GET /many HTTP/1.1\r\nHost: a\r\n");
    for i in 0..100 {
        r.push_str(&format!("X-Field-{i}: {i}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// 50 fields of 1400 bytes: over 64 KiB in all, each field small.
fn oversized_header_section() -> Vec<u8> {
    let mut r = String::from("GET /big HTTP/1.1\r\nHost: a\r\n");
    for i in 0..50 {
        r.push_str(&format!("X-Pad-{i}: {}\r\n", "p".repeat(1400)));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

fn oversized_single_field() -> Vec<u8> {
    format!(
        "GET /big HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(70_000)
    )
    .into_bytes()
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut r = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    r.extend_from_slice(body);
    r
}

fn oversized_chunk_extension() -> Vec<u8> {
    chunked(format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(2000)).as_bytes())
}

refused! {
    // Request framing: Content-Length and Transfer-Encoding.
    content_length_then_transfer_encoding: 400, Nothing,
        b"POST /cl-te HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    transfer_encoding_then_content_length: 400, Nothing,
        b"POST /te-cl HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n";
    duplicate_content_length_equal: 400, Nothing,
        b"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello";
    duplicate_content_length_different: 400, Nothing,
        b"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
    content_length_list_in_one_field: 400, Nothing,
        b"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello";
    content_length_plus_sign: 400, Nothing,
        b"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello";
    content_length_negative: 400, Nothing,
        b"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\nhello";
    content_length_inner_space: 400, Nothing,
        b"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 1 0\r\n\r\nhellohello";
    content_length_hex: 400, Nothing,
        b"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello";
    content_length_trailing_comma: 400, Nothing,
        b"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\nhello";
    content_length_overflow: 400, Nothing,
        b"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\nhello";
    content_length_empty: 400, Nothing,
        b"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\nhello";
    transfer_encoding_chunked_twice_in_a_list: 400, Nothing,
        b"POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n";
    transfer_encoding_chunked_in_two_fields: 400, Nothing,
        b"POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    transfer_encoding_leading_comma: 400, Nothing,
        b"POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n0\r\n\r\n";
    transfer_encoding_quoted: 400, Nothing,
        b"POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n";
    transfer_encoding_with_parameter: 400, Nothing,
        b"POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n";
    transfer_encoding_vertical_tab: 400, Nothing,
        b"POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n";
    transfer_encoding_empty: 400, Nothing,
        b"POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n0\r\n\r\n";
    transfer_encoding_chunked_not_last: 400, Nothing,
        b"POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n";
    transfer_encoding_gzip: 501, Nothing,
        b"POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n";
    transfer_encoding_gzip_then_chunked: 501, Nothing,
        b"POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
    transfer_encoding_in_http10: 400, Nothing,
        b"POST /te HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    // Request framing: the chunked body (the head is valid, so it may
    // already be on its way to the origin when the body is refused).
    chunk_size_not_hex: 400, Partial, chunked(b"zz\r\nhello\r\n0\r\n\r\n");
    chunk_size_with_trailing_space: 400, Partial, chunked(b"5 \r\nhello\r\n0\r\n\r\n");
    chunk_size_with_0x_prefix: 400, Partial, chunked(b"0x5\r\nhello\r\n0\r\n\r\n");
    chunk_size_overflows_u64: 400, Partial, chunked(b"10000000000000000\r\nhello\r\n0\r\n\r\n");
    chunk_size_line_bare_lf: 400, Partial, chunked(b"5\nhello\r\n0\r\n\r\n");
    chunk_data_bare_lf: 400, Partial, chunked(b"5\r\nhello\n0\r\n\r\n");
    last_chunk_bare_lf: 400, Partial, chunked(b"5\r\nhello\r\n0\n\r\n");
    runaway_chunk_data: 400, Partial, chunked(b"5\r\nhelloXXXXX\r\n0\r\n\r\n");
    short_chunk_data: 400, Partial, chunked(b"7\r\nhello\r\n0\r\n\r\n");
    oversized_chunk_extension_is_refused: 400, Partial, oversized_chunk_extension();

    // Header syntax.
    whitespace_before_colon: 400, Nothing,
        b"GET /ws HTTP/1.1\r\nHost: a\r\nX-Foo : bar\r\n\r\n";
    whitespace_before_colon_on_transfer_encoding: 400, Nothing,
        b"POST /ws HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n";
    obs_fold: 400, Nothing,
        b"GET /fold HTTP/1.1\r\nHost: a\r\nX-Foo: one\r\n two\r\n\r\n";
    obs_fold_with_tab: 400, Nothing,
        b"GET /fold HTTP/1.1\r\nHost: a\r\nX-Foo: one\r\n\ttwo\r\n\r\n";
    line_without_colon: 400, Nothing,
        b"GET /nocolon HTTP/1.1\r\nHost: a\r\nX-Foo bar\r\n\r\n";
    empty_header_name: 400, Nothing,
        b"GET /noname HTTP/1.1\r\nHost: a\r\n: bar\r\n\r\n";
    invalid_header_name: 400, Nothing,
        b"GET /badname HTTP/1.1\r\nHost: a\r\nX(Foo): bar\r\n\r\n";
    bare_cr_in_value: 400, Nothing,
        b"GET /cr HTTP/1.1\r\nHost: a\r\nX-Foo: a\rb\r\n\r\n";
    nul_in_value: 400, Nothing,
        b"GET /nul HTTP/1.1\r\nHost: a\r\nX-Foo: a\x00b\r\n\r\n";
    bare_lf_in_value: 400, Nothing,
        b"GET /lf HTTP/1.1\r\nHost: a\r\nX-Foo: a\nb\r\n\r\n";
    bare_lf_line_endings: 400, Nothing,
        b"GET /lf HTTP/1.1\nHost: a\n\n";
    bare_lf_after_request_line: 400, Nothing,
        b"GET /lf HTTP/1.1\nHost: a\r\n\r\n";
    missing_host: 400, Nothing,
        b"GET /nohost HTTP/1.1\r\n\r\n";
    duplicate_host_different: 400, Nothing,
        b"GET /twohosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
    duplicate_host_equal: 400, Nothing,
        b"GET /twohosts HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n";

    // Sizes.
    uri_over_8_kib: 414, Nothing, long_uri();
    more_than_100_fields: 431, Nothing, too_many_fields();
    header_section_over_64_kib: 431, Nothing, oversized_header_section();
    single_field_over_64_kib: 431, Nothing, oversized_single_field();

    // The protocol version.
    unsupported_http_version: 505, Nothing, b"GET /v HTTP/3.0\r\nHost: a\r\n\r\n";
}

#[tokio::test]
async fn content_length_over_max_body_bytes() {
    refuses_with(
        "content_length_over_max_body_bytes",
        "max_body_bytes = 16",
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 17\r\n\r\n0123456789abcdefg",
        413,
        "http_request_error",
        Reach::Nothing,
    )
    .await;
}

#[tokio::test]
async fn chunked_body_over_max_body_bytes() {
    refuses_with(
        "chunked_body_over_max_body_bytes",
        "max_body_bytes = 16",
        &chunked(b"20\r\n0123456789abcdef0123456789abcdef\r\n0\r\n\r\n"),
        413,
        "http_request_error",
        Reach::Partial,
    )
    .await;
}

#[tokio::test]
async fn connect_is_denied() {
    refuses_with(
        "connect_is_denied",
        "",
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        405,
        "http_request_denied",
        Reach::Nothing,
    )
    .await;
}

/// Sends raw bytes on a fresh connection and reads `n` responses.
async fn exchange(h: &Harness, bytes: &[u8], n: usize) -> (RawConn, Vec<RawResponse>) {
    let mut conn = RawConn::connect(h.addr).await.expect("connect");
    conn.send(bytes).await.expect("send");
    let mut responses = Vec::new();
    for i in 0..n {
        let res = conn
            .read_response(SETTLE)
            .await
            .unwrap_or_else(|e| panic!("response {i}: {e:#}"));
        responses.push(res);
    }
    (conn, responses)
}

fn only_arrival(backend: &Backend, path: &str) -> Arrival {
    let found: Vec<Arrival> = backend
        .ledger()
        .arrivals()
        .into_iter()
        .filter(|a| a.path == path)
        .collect();
    assert_eq!(found.len(), 1, "arrivals for {path}: {found:#?}");
    found.into_iter().next().expect("one arrival")
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&simple(&[backend.addr()])).await;
    let (_conn, responses) = exchange(
        &h,
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
          GET /three HTTP/1.1\r\nHost: a\r\n\r\n",
        3,
    )
    .await;
    let bodies: Vec<String> = responses.iter().map(RawResponse::text).collect();
    assert_eq!(bodies, ["b1 GET /one\n", "b1 POST /two\n", "b1 GET /three\n"]);
    assert!(
        responses.iter().all(|r| r.status == 200 && r.complete),
        "{responses:#?}"
    );

    let arrivals = backend.ledger().arrivals();
    let paths: Vec<&str> = arrivals.iter().map(|a| a.path.as_str()).collect();
    assert_eq!(paths, ["/one", "/two", "/three"]);
    let two = &arrivals[1];
    assert!(two.complete);
    assert_eq!(two.body_len, 5);
    assert_eq!(two.body_sha256, sha256_hex(b"hello"));
}

#[tokio::test]
async fn connection_listed_fields_are_dropped_but_never_levees_own() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&simple(&[backend.addr()])).await;
    let (_conn, responses) = exchange(
        &h,
        b"GET /hop HTTP/1.1\r\nHost: a\r\n\
          Connection: x-secret, x-forwarded-for, forwarded, via, x-forwarded-proto, x-forwarded-host\r\n\
          X-Secret: s3cr3t\r\nX-Kept: yes\r\n\r\n",
        1,
    )
    .await;
    assert_eq!(responses[0].status, 200, "{:?}", responses[0]);

    let arrival = only_arrival(&backend, "/hop");
    assert_eq!(arrival.header("x-secret"), None, "{arrival:#?}");
    assert_eq!(arrival.header("x-kept"), Some("yes"), "{arrival:#?}");
    assert!(
        arrival
            .header_all("connection")
            .iter()
            .all(|v| !v.to_ascii_lowercase().contains("x-secret")),
        "{arrival:#?}"
    );
    assert_eq!(
        arrival.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "{arrival:#?}"
    );
    assert_eq!(arrival.header("x-forwarded-proto"), Some("http"), "{arrival:#?}");
    assert_eq!(arrival.header("x-forwarded-host"), Some("a"), "{arrival:#?}");
    assert!(
        arrival
            .header_all("forwarded")
            .iter()
            .any(|v| v.contains("for=127.0.0.1")),
        "{arrival:#?}"
    );
    assert!(
        arrival.header_all("via").iter().any(|v| v.contains("levee")),
        "{arrival:#?}"
    );
}

#[tokio::test]
async fn upgrade_to_h2c_is_not_forwarded() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&simple(&[backend.addr()])).await;
    let mut request = b"GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
        .to_vec();
    request.extend_from_slice(AFTER);
    // Answered as plain HTTP/1.1, and the connection stays HTTP/1.1.
    let (_conn, responses) = exchange(&h, &request, 2).await;
    assert_eq!(responses[0].status, 200, "{:?}", responses[0]);
    assert_eq!(responses[0].text(), "b1 GET /h2c\n");
    assert_eq!(responses[1].text(), "b1 GET /after\n");

    let arrival = only_arrival(&backend, "/h2c");
    assert_eq!(arrival.header("upgrade"), None, "{arrival:#?}");
    assert_eq!(arrival.header("http2-settings"), None, "{arrival:#?}");
    assert!(
        arrival
            .header_all("connection")
            .iter()
            .all(|v| !v.to_ascii_lowercase().contains("upgrade")),
        "{arrival:#?}"
    );
}

#[tokio::test]
async fn expect_100_continue_gets_the_go_ahead_then_the_body_arrives_whole() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&simple(&[backend.addr()])).await;
    let mut conn = RawConn::connect(h.addr).await.expect("connect");
    conn.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .expect("send head");
    let interim = conn.read_response(SETTLE).await.expect("100 continue");
    assert_eq!(interim.status, 100, "{interim:?}");
    conn.send(b"hello").await.expect("send body");
    let res = conn.read_response(SETTLE).await.expect("final response");
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.text(), "b1 POST /upload\n");
    assert!(res.complete);

    let arrival = only_arrival(&backend, "/upload");
    assert!(arrival.complete, "{arrival:#?}");
    assert_eq!(arrival.body_len, 5);
    assert_eq!(arrival.body_sha256, sha256_hex(b"hello"));
}

#[tokio::test]
async fn head_response_has_no_body() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&simple(&[backend.addr()])).await;
    let mut conn = RawConn::connect(h.addr).await.expect("connect");
    let mut request = b"HEAD /bytes/100 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
    request.extend_from_slice(AFTER);
    conn.send(&request).await.expect("send");
    let head = conn.read_response_to_head(SETTLE).await.expect("HEAD response");
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-length"), Some("100"), "{head:?}");
    // Had levee sent a body after the head, it would be read here in place
    // of the next response.
    let after = conn.read_response(SETTLE).await.expect("response after HEAD");
    assert_eq!(after.status, 200, "{after:?}");
    assert_eq!(after.text(), "b1 GET /after\n");
}

#[tokio::test]
async fn requests_at_the_limits_are_served() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&simple(&[backend.addr()])).await;
    // A request target of exactly 8 KiB and exactly 100 fields.
    let path = format!("/{}", "u".repeat(8 * 1024 - 1));
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n");
    for i in 0..99 {
        request.push_str(&format!("X-Field-{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    let (_conn, responses) = exchange(&h, request.as_bytes(), 1).await;
    assert_eq!(responses[0].status, 200, "{:?}", responses[0]);
    assert_eq!(backend.ledger().count_path(&path), 1);
}

#[tokio::test]
async fn slow_request_head_gets_408_or_a_close() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&gateway_config(&backend, "header_timeout = \"1s\"")).await;
    let mut slow = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n")
        .await
        .expect("send a partial head");
    // Read until levee closes (a reset is a close too), within the deadline.
    let mut received = Vec::new();
    let read = tokio::time::timeout(SETTLE, slow.read_to_end(&mut received))
        .await
        .expect("levee ends a head that does not finish within header_timeout");
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    if !received.is_empty() {
        let text = String::from_utf8_lossy(&received);
        assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
        assert!(
            text.to_ascii_lowercase()
                .contains("proxy-status: levee; error=http_request_error"),
            "{text:?}"
        );
    }
    // Legitimate clients are still served, and nothing of the slow one ran.
    let res = h.client().get("/fine").await.expect("request");
    assert_eq!(res.status, 200);
    assert_eq!(backend.ledger().count_path("/slow"), 0);
}

#[tokio::test]
async fn counters_agree_with_the_refusals_clients_saw() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&simple(&[backend.addr()])).await;
    let series = series("http_request_error");
    let before = h.metric(&series).await;
    let refused: [&[u8]; 6] = [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Foo : bar\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
    ];
    let mut seen: u32 = 0;
    for (i, bytes) in refused.iter().enumerate() {
        let (_conn, responses) = exchange(&h, bytes, 1).await;
        let res = &responses[0];
        assert!(matches!(res.status, 400 | 501), "request {i}: {res:?}");
        assert!(
            res.header("proxy-status")
                .is_some_and(|p| p.contains("error=http_request_error")),
            "request {i}: {res:?}"
        );
        seen += 1;
    }
    // Valid requests are not counted as generated responses.
    let ok = h.client().get("/ok").await.expect("valid request");
    assert_eq!(ok.status, 200);
    assert_eq!(h.metric(&series).await - before, f64::from(seen));
}

/// Sends `request` (one head, no body) on a fresh connection and returns
/// the single arrival it caused, the ledger cleared before.
async fn arrival_of(h: &Harness, backend: &Backend, request: &[u8]) -> Arrival {
    backend.ledger().clear();
    let (_conn, responses) = exchange(h, request, 1).await;
    assert_eq!(responses[0].status, 200, "{responses:?}");
    let arrivals = backend.ledger().arrivals();
    assert_eq!(arrivals.len(), 1, "{arrivals:#?}");
    arrivals.into_iter().next().expect("one arrival")
}

/// The fields an arrival carried, as a sorted list, without the padding
/// fields and with a generated request id reduced to its shape.
fn field_set(arrival: &Arrival) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = arrival
        .headers
        .iter()
        .filter(|(name, _)| !name.starts_with("x-pad-"))
        .map(|(name, value)| match name.as_str() {
            "x-request-id" if value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()) => {
                (name.clone(), "<generated>".to_string())
            }
            _ => (name.clone(), value.clone()),
        })
        .collect();
    fields.sort();
    fields
}

/// A head with more fields than levee forwards as received lines takes the
/// header-map path; both paths must rewrite a request the same way.
#[tokio::test]
async fn large_and_small_heads_are_rewritten_alike() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&gateway_config(&backend, "max_header_count = 200")).await;
    let padding: String = (0..70).map(|i| format!("X-Pad-{i}: {i}\r\n")).collect();
    let long_id = "i".repeat(300);
    let cases: Vec<(&str, String)> = vec![
        (
            "levee's own fields named in Connection",
            "GET /c HTTP/1.1\r\nHost: a\r\nConnection: x-request-id, x-forwarded-for\r\n\
             X-Request-Id: client-id\r\nX-Forwarded-For: 10.0.0.1\r\n"
                .to_string(),
        ),
        (
            "an empty request id",
            "GET /c HTTP/1.1\r\nHost: a\r\nX-Request-Id: \r\n".to_string(),
        ),
        (
            "an oversized request id",
            format!("GET /c HTTP/1.1\r\nHost: a\r\nX-Request-Id: {long_id}\r\n"),
        ),
        ("HTTP/1.0 without Host", "GET /c HTTP/1.0\r\n".to_string()),
        (
            "absolute form with an empty path",
            "GET http://b.example?q=1 HTTP/1.1\r\nHost: a\r\n".to_string(),
        ),
        (
            "an upgrade to h2c",
            "GET /c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
             HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
                .to_string(),
        ),
    ];
    for (case, head) in cases {
        let small = format!("{head}\r\n");
        let large = format!("{head}{padding}\r\n");
        let raw = arrival_of(&h, &backend, small.as_bytes()).await;
        let map = arrival_of(&h, &backend, large.as_bytes()).await;
        assert_eq!(raw.path, map.path, "{case}");
        assert_eq!(field_set(&raw), field_set(&map), "{case}");
        assert_eq!(raw.header_all("x-request-id").len(), 1, "{case}: {raw:#?}");
        assert!(raw.header("host").is_some(), "{case}: {raw:#?}");
    }
}

#[tokio::test]
async fn requests_without_a_host_get_the_endpoints() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&simple(&[backend.addr()])).await;
    let arrival = arrival_of(&h, &backend, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(arrival.header("host"), Some(backend.addr().to_string().as_str()));
    assert_eq!(arrival.header("x-forwarded-host"), None, "{arrival:#?}");
}

#[tokio::test]
async fn absolute_form_with_an_empty_path_asks_for_the_root() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&simple(&[backend.addr()])).await;
    let arrival = arrival_of(
        &h,
        &backend,
        b"GET http://b.example?q=1 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(arrival.path, "/?q=1");
    assert_eq!(arrival.header("host"), Some("b.example"));
}
