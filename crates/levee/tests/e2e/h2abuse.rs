//! HTTP/2 abuse, over raw frames: rapid reset, CONTINUATION flood, HPACK
//! bomb, ping/settings/empty frame floods.
//!
//! Each attack is written frame by frame with [`H2Conn`], so no client
//! library smooths it over, and checked by three witnesses: the client sees
//! GOAWAY `ENHANCE_YOUR_CALM` and then the connection's end; the origin's
//! ledger shows at most a bounded number of requests (none for the header
//! attacks) and nothing left in flight; and levee counts the connection in
//! `levee_http2_abuse_total` under the attack's reason.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use levee_testkit::h2wire::{End, Frame, GoAway, H2Conn, code, flag, hpack, kind, setting};
use levee_testkit::{Backend, Behaviour, Client, eventually, eventually_async};

use crate::support::*;

/// Every reason `levee_http2_abuse_total` has.
const REASONS: [&str; 9] = [
    "rapid_reset",
    "ping_flood",
    "settings_flood",
    "empty_frames",
    "continuation_flood",
    "header_list_too_large",
    "small_data_frames",
    "stream_errors",
    "other",
];

/// One route to `backend` (with `upstream` keys) and these `[server]` keys.
fn gateway(backend: SocketAddr, server: &str, upstream: &str) -> String {
    config(
        &[("local", 0, &[backend])],
        upstream,
        &format!("\n[server]\n{server}\n"),
    )
}

fn series(reason: &str) -> String {
    format!("levee_http2_abuse_total{{listener=\"main\",reason=\"{reason}\"}}")
}

/// A complete GET on `stream`.
fn get(stream: u32, path: &str) -> Frame {
    Frame::headers(
        stream,
        flag::END_HEADERS | flag::END_STREAM,
        hpack::request("GET", path, "localhost"),
    )
}

/// Checks that the connection ended in GOAWAY `ENHANCE_YOUR_CALM` with one
/// of `debug` as its debug data (levee's reason, or h2's name for the same
/// limit), then closed.
async fn assert_calmed(conn: &mut H2Conn, end: End, debug: &[&str]) -> GoAway {
    let End::GoAway(goaway) = end else {
        panic!("expected GOAWAY, got {end:?}; frames: {:?}", last_frames(conn));
    };
    assert_eq!(goaway.error, code::ENHANCE_YOUR_CALM, "{goaway:?}");
    assert!(
        debug.contains(&goaway.debug_text().as_str()),
        "{goaway:?}, expected one of {debug:?}"
    );
    assert!(
        conn.closed_within(SETTLE).await,
        "the connection closes after the GOAWAY"
    );
    goaway
}

fn last_frames(conn: &H2Conn) -> &[Frame] {
    let n = conn.received.len();
    &conn.received[n.saturating_sub(5)..]
}

fn count(conn: &H2Conn, kind: u8, flags: u8) -> usize {
    conn.received
        .iter()
        .filter(|f| f.kind == kind && f.has(flags))
        .count()
}

/// Waits for the abuse counter of `reason` to reach 1 (it is counted when
/// the connection has ended) and checks every other reason stayed at 0.
async fn assert_counted(h: &Harness, reason: &str) {
    let wanted = series(reason);
    eventually_async(SETTLE, &format!("{wanted} = 1"), || async {
        h.metric(&wanted).await == 1.0
    })
    .await;
    let text = h.metrics().await;
    for other in REASONS.iter().filter(|r| **r != reason) {
        let line = format!("{} 0", series(other));
        assert!(text.contains(&line), "missing {line:?}");
    }
}

#[tokio::test]
async fn a_ping_flood_ends_in_goaway() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&gateway(b.addr(), "", "")).await;
    let mut c = H2Conn::connect(h.addr).await.expect("connect");
    let ping = Frame::ping(*b"flooding").encode();
    let (end, _) = c.flood(&ping, 100_000, SETTLE).await;
    let goaway = assert_calmed(&mut c, end, &["ping_flood"]).await;
    assert_eq!(goaway.last_stream, 0);
    // The default budget: 100 PINGs in 10 s, each answered, then no more.
    let pongs = count(&c, kind::PING, flag::ACK);
    assert!(pongs <= 100, "{pongs} PINGs answered");
    assert_counted(&h, "ping_flood").await;
}

#[tokio::test]
async fn a_settings_flood_ends_in_goaway() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&gateway(b.addr(), "h2_max_control_frames = 20", "")).await;
    let mut c = H2Conn::connect(h.addr).await.expect("connect");
    let settings = Frame::settings(&[(setting::INITIAL_WINDOW_SIZE, 65_535)]).encode();
    let (end, _) = c.flood(&settings, 100_000, SETTLE).await;
    assert_calmed(&mut c, end, &["settings_flood"]).await;
    let acks = count(&c, kind::SETTINGS, flag::ACK);
    assert!(acks <= 20, "{acks} SETTINGS acknowledged");
    assert_counted(&h, "settings_flood").await;
}

#[tokio::test]
async fn an_empty_data_frame_flood_ends_in_goaway() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&gateway(b.addr(), "", "")).await;
    let mut c = H2Conn::connect(h.addr).await.expect("connect");
    // A POST whose body never comes: only empty DATA frames.
    let post = Frame::headers(
        1,
        flag::END_HEADERS,
        hpack::request("POST", "/upload", "localhost"),
    );
    c.send(&[post]).await.expect("send");
    let empty = Frame::data(1, 0, Vec::new()).encode();
    let (end, _) = c.flood(&empty, 100_000, SETTLE).await;
    let goaway = assert_calmed(&mut c, end, &["empty_frames"]).await;
    assert_eq!(goaway.last_stream, 1, "the POST may have been forwarded");
    assert_counted(&h, "empty_frames").await;
    eventually(SETTLE, "the upload is abandoned upstream", || {
        b.requests_in_flight() == 0
    })
    .await;
    assert!(
        b.ledger().arrivals().iter().all(|a| !a.complete),
        "{:#?}",
        b.ledger().arrivals()
    );
}

#[tokio::test]
async fn a_rapid_reset_burst_ends_in_goaway_and_reaches_the_origin_boundedly() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&gateway(b.addr(), "", "")).await;
    let mut c = H2Conn::connect(h.addr).await.expect("connect");
    // CVE-2023-44487: open a stream and cancel it at once, over and over.
    let mut burst = Vec::new();
    for i in 0..2000 {
        let stream = 2 * i + 1;
        burst.extend(get(stream, &format!("/burst/{i}")).encode());
        burst.extend(Frame::rst_stream(stream, code::CANCEL).encode());
    }
    let (end, _) = c.flood(&burst, 1, SETTLE).await;
    // h2 ends it when streams it has not handed over yet are reset (its
    // accept queue); levee when more than 200 are reset in 10 s.
    let goaway = assert_calmed(&mut c, end, &["too_many_resets", "rapid_reset"]).await;
    assert!(goaway.last_stream <= 2 * 200 + 1, "{goaway:?}");
    assert_counted(&h, "rapid_reset").await;
    // Nothing was answered, a bounded few reached the origin, and nothing
    // of them is still running there.
    eventually(SETTLE, "no request in flight at the origin", || {
        b.requests_in_flight() == 0
    })
    .await;
    let reached = b.ledger().len();
    assert!(reached <= 201, "{reached} requests reached the origin");
}

#[tokio::test]
async fn a_reset_stream_cancels_its_upstream_request_at_once() {
    // An h2 origin notices a cancelled stream (an HTTP/1 one only a closed
    // connection), so its in-flight count shows levee letting go.
    let b = Backend::builder("b1")
        .http2()
        .behaviour(Behaviour::Hang)
        .start()
        .await
        .expect("backend");
    let h = Harness::start(&gateway(
        b.addr(),
        "h2_max_reset_streams = 3",
        "protocol = \"http2\"",
    ))
    .await;
    let mut c = H2Conn::connect(h.addr).await.expect("connect");
    for (i, stream) in [1u32, 3, 5].into_iter().enumerate() {
        c.send(&[get(stream, "/hang")]).await.expect("send");
        assert!(
            b.ledger().wait_for_len(i + 1, SETTLE).await,
            "stream {stream} forwarded"
        );
        eventually(SETTLE, "the request is in flight at the origin", || {
            b.requests_in_flight() == 1
        })
        .await;
        c.send(&[Frame::rst_stream(stream, code::CANCEL)])
            .await
            .expect("send");
        eventually(SETTLE, "the upstream request is cancelled", || {
            b.requests_in_flight() == 0
        })
        .await;
    }
    // Within budget, the connection still serves.
    b.set_behaviour(Behaviour::Normal);
    c.send(&[get(7, "/after")]).await.expect("send");
    let answer = c
        .until(SETTLE, |f| f.kind == kind::HEADERS && f.stream == 7)
        .await
        .expect("answered");
    assert_eq!(hpack::status(&answer.payload), Some(200));

    // The fourth reset of a forwarded stream within 10 s is one too many.
    b.set_behaviour(Behaviour::Hang);
    c.send(&[get(9, "/hang")]).await.expect("send");
    assert!(b.ledger().wait_for_len(5, SETTLE).await, "stream 9 forwarded");
    c.send(&[Frame::rst_stream(9, code::CANCEL)]).await.expect("send");
    let end = c.until_end(SETTLE).await;
    let goaway = assert_calmed(&mut c, end, &["rapid_reset"]).await;
    assert_eq!(goaway.last_stream, 9);
    assert_counted(&h, "rapid_reset").await;
    eventually(SETTLE, "nothing left in flight", || b.requests_in_flight() == 0).await;
    assert_eq!(b.ledger().len(), 5);
}

#[tokio::test]
async fn a_continuation_flood_ends_in_goaway_and_nothing_is_forwarded() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&gateway(b.addr(), "", "")).await;
    let mut c = H2Conn::connect(h.addr).await.expect("connect");
    // A header block that never ends (no END_HEADERS), each piece a field.
    let start = Frame::headers(1, 0, hpack::request("GET", "/continued", "localhost"));
    c.send(&[start]).await.expect("send");
    let mut field = Vec::new();
    hpack::literal(&mut field, b"x-more", &[b'c'; 100]);
    let piece = Frame::continuation(1, 0, field).encode();
    let (end, _) = c.flood(&piece, 100_000, SETTLE).await;
    assert_calmed(&mut c, end, &["too_many_continuations"]).await;
    assert_counted(&h, "continuation_flood").await;
    assert!(b.ledger().is_empty(), "{:#?}", b.ledger().arrivals());
}

/// A request whose header block inserts one 4000-byte field into the HPACK
/// dynamic table and then references it `refs` times (one byte each).
fn hpack_bomb(stream: u32, refs: usize) -> Frame {
    let mut block = hpack::request("GET", "/bomb", "localhost");
    hpack::literal_indexed(&mut block, b"x-bomb", &[b'a'; 4000]);
    for _ in 0..refs {
        hpack::indexed(&mut block, hpack::FIRST_DYNAMIC);
    }
    Frame::headers(stream, flag::END_HEADERS | flag::END_STREAM, block)
}

#[tokio::test]
async fn an_hpack_bomb_ends_in_goaway_and_nothing_is_forwarded() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&gateway(b.addr(), "", "")).await;
    let mut c = H2Conn::connect(h.addr).await.expect("connect");
    // 6 KB on the wire that would decode to 8 MB; levee allows 64 KiB.
    c.send(&[hpack_bomb(1, 2000)]).await.expect("send");
    let end = c.until_end(SETTLE).await;
    assert_calmed(&mut c, end, &["header_list_way_too_large"]).await;
    assert_counted(&h, "header_list_too_large").await;
    assert!(b.ledger().is_empty(), "{:#?}", b.ledger().arrivals());
}

#[tokio::test]
async fn a_header_list_over_the_limit_is_refused_and_the_connection_goes_on() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&gateway(b.addr(), "", "")).await;
    let mut c = H2Conn::connect(h.addr).await.expect("connect");
    // 80 KB decoded, over max_header_bytes (64 KiB) but not by four times.
    c.send(&[hpack_bomb(1, 20)]).await.expect("send");
    let refused = c
        .until(SETTLE, |f| {
            f.stream == 1 && matches!(f.kind, kind::HEADERS | kind::RST_STREAM)
        })
        .await
        .expect("stream 1 refused");
    if refused.kind == kind::HEADERS {
        assert_eq!(hpack::status(&refused.payload), Some(431), "{refused:?}");
    }
    c.send(&[get(3, "/fine")]).await.expect("send");
    let answer = c
        .until(SETTLE, |f| f.kind == kind::HEADERS && f.stream == 3)
        .await
        .expect("stream 3 answered");
    assert_eq!(hpack::status(&answer.payload), Some(200));
    let paths: Vec<String> = b.ledger().arrivals().into_iter().map(|a| a.path).collect();
    assert_eq!(paths, ["/fine"]);
    assert!(
        !c.received.iter().any(|f| f.kind == kind::GOAWAY),
        "{:?}",
        c.received
    );
}

#[tokio::test]
async fn streams_over_the_concurrency_cap_are_refused() {
    let b = Backend::start("b1").await;
    b.set_behaviour(Behaviour::Hang);
    let h = Harness::start(&gateway(b.addr(), "h2_max_concurrent_streams = 4", "")).await;
    let mut c = H2Conn::connect(h.addr).await.expect("connect");
    let settings = c
        .until(SETTLE, |f| f.kind == kind::SETTINGS && !f.has(flag::ACK))
        .await
        .expect("server SETTINGS");
    assert!(
        settings
            .settings_values()
            .contains(&(setting::MAX_CONCURRENT_STREAMS, 4)),
        "{:?}",
        settings.settings_values()
    );
    let streams = [1u32, 3, 5, 7, 9, 11];
    let frames: Vec<Frame> = streams.iter().map(|&s| get(s, &format!("/s{s}"))).collect();
    c.send(&frames).await.expect("send");
    let mut refused = Vec::new();
    while refused.len() < 2 {
        let rst = c
            .until(SETTLE, |f| f.kind == kind::RST_STREAM)
            .await
            .expect("refusals");
        refused.push((rst.stream, rst.error_code()));
    }
    let want = Some(code::REFUSED_STREAM);
    assert_eq!(refused, [(9, want), (11, want)]);
    assert!(
        b.ledger().wait_for_len(4, SETTLE).await,
        "the first four forwarded"
    );
    // Refusing is not abuse: the connection goes on.
    c.send(&[Frame::ping(*b"stillok?")]).await.expect("send");
    let pong = c
        .until(SETTLE, |f| f.kind == kind::PING && f.has(flag::ACK))
        .await;
    assert_eq!(pong.map(|p| p.payload), Some(b"stillok?".to_vec()));
    assert_eq!(b.ledger().len(), 4);
    assert!(!c.received.iter().any(|f| f.kind == kind::GOAWAY));
}

#[tokio::test]
async fn well_behaved_http2_clients_are_unaffected() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&gateway(b.addr(), "", "")).await;
    // 200 requests multiplexed on one connection.
    let c = Client::http2(h.addr);
    let report = levee_testkit::load(&c, 200, 20, SETTLE, |i| {
        Request::get(format!("/many/{i}"))
            .body(http_body_util::Full::new(Bytes::new()))
            .expect("request")
    })
    .await;
    assert_eq!(report.ok_2xx, 200, "{report:?}");
    assert_eq!(b.ledger().len(), 200);

    // A download by a client that measures the path with PINGs (hyper's
    // adaptive window) and keeps the connection alive with more of them.
    let stream = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .adaptive_window(true)
        .keep_alive_interval(Duration::from_millis(50))
        .keep_alive_while_idle(true)
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let len = 16 << 20;
    for _ in 0..3 {
        let req = Request::get(format!("http://localhost/bytes/{len}"))
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let res = tokio::time::timeout(SETTLE, sender.send_request(req))
            .await
            .expect("in time")
            .expect("response");
        assert_eq!(res.status(), 200);
        let body = tokio::time::timeout(SETTLE, http_body_util::BodyExt::collect(res.into_body()))
            .await
            .expect("in time")
            .expect("body");
        assert_eq!(body.to_bytes().len(), len);
    }
    assert!(!conn.is_finished(), "the connection is still open");
    let text = h.metrics().await;
    for reason in REASONS {
        let line = format!("{} 0", series(reason));
        assert!(text.contains(&line), "missing {line:?}");
    }
}
