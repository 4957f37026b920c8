//! Each toxic's effect on real connections through the proxy, in front of
//! an echo server. Bounds are generous (a busy machine only makes things
//! slower): a delay is checked as "at least", an upper bound only far
//! above it.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

async fn setup() -> (Server, levee_testkit::Echo, std::net::SocketAddr) {
    let s = server().await;
    let echo = levee_testkit::Echo::start().await.unwrap();
    let addr = proxy(s.api, "p", echo.addr()).await;
    (s, echo, addr)
}

#[tokio::test]
async fn latency_delays_the_round_trip() {
    let (s, _echo, addr) = setup().await;
    let mut c = connect(addr).await;
    round_trip(&mut c, b"warm").await;
    add_toxic(
        s.api,
        "p",
        json!({"type": "latency", "attributes": {"latency": 300}}),
    )
    .await;
    let mut c = connect(addr).await;
    let took = round_trip(&mut c, b"ping").await;
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_toxic_acts_on_a_connection_already_open_and_stops_when_removed() {
    let (s, _echo, addr) = setup().await;
    let mut c = connect(addr).await;
    assert!(round_trip(&mut c, b"before").await < Duration::from_millis(500));
    add_toxic(
        s.api,
        "p",
        json!({"type": "latency", "stream": "upstream", "attributes": {"latency": 500}}),
    )
    .await;
    let took = round_trip(&mut c, b"during").await;
    assert!(
        took >= Duration::from_millis(500),
        "the open connection is slowed: {took:?}"
    );
    remove_toxic(s.api, "p", "latency_upstream").await;
    assert!(round_trip(&mut c, b"after").await < Duration::from_millis(500));
}

#[tokio::test]
async fn bandwidth_limits_the_rate() {
    let (s, _echo, addr) = setup().await;
    add_toxic(
        s.api,
        "p",
        json!({"type": "bandwidth", "attributes": {"rate": 100}}),
    )
    .await;
    let c = connect(addr).await;
    let (mut r, mut w) = c.into_split();
    let payload = levee_testkit::pattern_bytes(200_000);
    let start = Instant::now();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w
    });
    let mut got = vec![0; payload.len()];
    tokio::time::timeout(DEADLINE, r.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    let took = start.elapsed();
    let _w = writer.await.unwrap();
    assert_eq!(got, payload);
    // 200 KB at 100 KB/s is 2 s.
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "{took:?}"
    );
}

#[tokio::test]
async fn slow_close_delays_the_end_only() {
    let (s, _echo, addr) = setup().await;
    add_toxic(
        s.api,
        "p",
        json!({"type": "slow_close", "attributes": {"delay": 500}}),
    )
    .await;
    let mut c = connect(addr).await;
    assert!(round_trip(&mut c, b"quick").await < Duration::from_millis(500));
    let start = Instant::now();
    c.shutdown().await.unwrap();
    let (rest, end) = read_to_end(&mut c).await;
    assert!(rest.is_empty() && end.is_ok(), "{rest:?} {end:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn timeout_zero_drops_data_and_holds_the_connection_until_removed() {
    let (s, _echo, addr) = setup().await;
    add_toxic(
        s.api,
        "p",
        json!({"type": "timeout", "attributes": {"timeout": 0}}),
    )
    .await;
    let mut c = connect(addr).await;
    c.write_all(b"anyone?").await.unwrap();
    let mut buf = [0u8; 16];
    let waited = tokio::time::timeout(Duration::from_millis(1500), c.read(&mut buf)).await;
    assert!(waited.is_err(), "no data and no end within 1.5 s: {waited:?}");
    // Removing it closes what it held, as Toxiproxy's does.
    remove_toxic(s.api, "p", "timeout_downstream").await;
    let (rest, _) = read_to_end(&mut c).await;
    assert!(rest.is_empty(), "what it dropped stays dropped: {rest:?}");
}

#[tokio::test]
async fn timeout_closes_after_its_time() {
    let (s, _echo, addr) = setup().await;
    add_toxic(
        s.api,
        "p",
        json!({"type": "timeout", "attributes": {"timeout": 300}}),
    )
    .await;
    let mut c = connect(addr).await;
    let start = Instant::now();
    c.write_all(b"hello").await.unwrap();
    let (rest, _) = read_to_end(&mut c).await;
    assert!(rest.is_empty(), "{rest:?}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn reset_peer_resets_the_connection() {
    let (s, _echo, addr) = setup().await;
    add_toxic(
        s.api,
        "p",
        json!({"type": "reset_peer", "attributes": {"timeout": 0}}),
    )
    .await;
    let mut c = connect(addr).await;
    c.write_all(b"hello").await.unwrap();
    let (rest, end) = read_to_end(&mut c).await;
    assert!(rest.is_empty(), "{rest:?}");
    let kind = end.expect_err("a reset, not an end").kind();
    assert_eq!(kind, std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn slicer_cuts_the_stream_into_spaced_pieces() {
    let (s, _echo, addr) = setup().await;
    let attrs = json!({"average_size": 10, "size_variation": 0, "delay": 2000});
    add_toxic(s.api, "p", json!({"type": "slicer", "attributes": attrs})).await;
    let mut c = connect(addr).await;
    let msg = levee_testkit::pattern_bytes(1000);
    let start = Instant::now();
    c.write_all(&msg).await.unwrap();
    // 1000 bytes halve to pieces of 7 or 8: 128 pieces, 2 ms apart.
    let mut got = Vec::new();
    let mut reads = 0;
    while got.len() < msg.len() {
        let mut buf = [0u8; 2048];
        let n = tokio::time::timeout(DEADLINE, c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "ended early");
        got.extend_from_slice(&buf[..n]);
        reads += 1;
    }
    assert_eq!(got, msg);
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );
    assert!(reads > 10, "arrived in pieces: {reads} reads");
}

#[tokio::test]
async fn limit_data_passes_exactly_its_bytes_then_closes() {
    let (s, _echo, addr) = setup().await;
    add_toxic(
        s.api,
        "p",
        json!({"type": "limit_data", "attributes": {"bytes": 50}}),
    )
    .await;
    let mut c = connect(addr).await;
    let msg = levee_testkit::pattern_bytes(100);
    c.write_all(&msg[..30]).await.unwrap();
    assert_eq!(read_exact(&mut c, 30).await, msg[..30]);
    c.write_all(&msg[30..]).await.unwrap();
    let (rest, end) = read_to_end(&mut c).await;
    assert!(end.is_ok(), "an end, not a reset: {end:?}");
    assert_eq!(rest, msg[30..50]);
}

#[tokio::test]
async fn an_upstream_toxic_acts_on_what_the_client_sends() {
    let (s, echo, addr) = setup().await;
    add_toxic(
        s.api,
        "p",
        json!({"type": "limit_data", "stream": "upstream", "attributes": {"bytes": 10}}),
    )
    .await;
    let mut c = connect(addr).await;
    c.write_all(&[1u8; 20]).await.unwrap();
    // The upstream side closes after 10 bytes, which closes the whole
    // connection (as in Toxiproxy, the echo's answer may not make it).
    let (got, _) = read_to_end(&mut c).await;
    assert!(
        got.len() <= 10,
        "at most 10 bytes reached the echo: {}",
        got.len()
    );
    assert_eq!(echo.accepted(), 1);
}

#[tokio::test]
async fn toxicity_zero_never_applies() {
    let (s, _echo, addr) = setup().await;
    let toxic = json!({"type": "latency", "toxicity": 0.0, "attributes": {"latency": 2000}});
    add_toxic(s.api, "p", toxic).await;
    let mut c = connect(addr).await;
    assert!(round_trip(&mut c, b"fast").await < Duration::from_secs(1));
}

#[tokio::test]
async fn disabling_a_proxy_cuts_its_open_connections() {
    let (s, _echo, addr) = setup().await;
    let mut c = connect(addr).await;
    round_trip(&mut c, b"hi").await;
    assert_eq!(
        post(s.api, "/proxies/p", r#"{"enabled": false}"#).await.status,
        200
    );
    let (rest, _) = read_to_end(&mut c).await;
    assert!(rest.is_empty());
}

#[tokio::test]
async fn an_unreachable_upstream_closes_the_client() {
    let s = server().await;
    // A port that was free a moment ago: nothing listens there.
    let free = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let addr = proxy(s.api, "p", free).await;
    let mut c = connect(addr).await;
    let (rest, _) = read_to_end(&mut c).await;
    assert!(rest.is_empty());
}
