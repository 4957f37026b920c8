//! Slow clients: slowloris (a head that never ends), slow POST (a body that
//! crawls) and slow read (a client that does not take its response) each
//! end in 408 or a close, and legitimate clients keep being served.

use std::net::SocketAddr;
use std::time::Duration;

use levee_testkit::{Backend, RawConn};
use tokio::time::Instant;

use crate::support::*;

fn gateway(server: &str, backend: SocketAddr) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[server]\n{server}\n\n[listener.main]\naddress = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"all\"\nupstream = \"app\"\n\n[upstream.app.region.local]\nendpoints = [\"{backend}\"]\n"
    )
}

/// Raises this process's open-file limit (soft, up to the hard limit) with
/// `prlimit` from util-linux: the test holds both ends of its connections.
fn raise_fd_limit(wanted: u64) {
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={wanted}:")])
        .status();
}

#[tokio::test]
async fn a_thousand_slowloris_connections_do_not_stop_a_legitimate_client() {
    raise_fd_limit(8192);
    let backend = Backend::start("b1").await;
    let h = Harness::start(&gateway("header_timeout = \"3s\"", backend.addr())).await;

    // 1000 connections, from ten addresses (each under the per-address
    // cap), each sending a head that never ends, a byte at a time.
    let mut attackers = Vec::new();
    for i in 0..1000 {
        let from = format!("127.0.0.{}", 100 + i % 10).parse().expect("ip");
        let mut c = RawConn::connect_from(from, h.addr).await.expect("connect");
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n").await.expect("send");
        attackers.push(c);
    }
    let start = Instant::now();
    let trickle = async {
        // One more byte on each connection every 500 ms, for 2 s: the
        // header deadline does not care, it counts from the accept.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for c in attackers.iter_mut() {
                let _ = c.send(b"X").await;
            }
        }
    };
    // Meanwhile a legitimate client sends 10 requests a second.
    let legit = async {
        let client = h.client().with_timeout(SETTLE);
        let mut ok = 0;
        for _ in 0..25 {
            if client.get("/").await.is_ok_and(|r| r.status == 200) {
                ok += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ok
    };
    let ((), ok) = tokio::join!(trickle, legit);
    assert_eq!(ok, 25, "the legitimate client was not served every time");
    assert_eq!(
        backend.ledger().len(),
        25,
        "no slowloris request reached the backend"
    );

    // Every attacker is answered 408 (or closed) once its head deadline
    // passes, and counted.
    let mut answered = 0;
    for c in attackers.iter_mut() {
        let bytes = c.read_to_end_within(SETTLE).await;
        if bytes.starts_with(b"HTTP/1.1 408") {
            answered += 1;
        }
    }
    let took = start.elapsed();
    println!("slowloris: 1000 held, legitimate 25/25, {answered} answered 408, all closed after {took:?}");
    assert_eq!(answered, 1000);
    assert_eq!(
        h.metric("levee_listener_slow_clients_total{listener=\"main\",phase=\"head\"}")
            .await,
        1000.0
    );
}

#[tokio::test]
async fn a_crawling_body_gets_408_and_a_steady_one_passes() {
    let backend = Backend::start("b1").await;
    // A second of grace, then at least 500 bytes a second.
    let h = Harness::start(&gateway(
        "header_timeout = \"1s\"\nbody_min_rate = 500",
        backend.addr(),
    ))
    .await;

    let upload = |rate_per_100ms: usize| async move {
        let mut c = RawConn::connect(h.addr).await.expect("connect");
        c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 3000\r\n\r\n")
            .await
            .expect("send");
        let mut sent = 0;
        let start = Instant::now();
        while sent < 3000 && start.elapsed() < Duration::from_secs(8) {
            let n = rate_per_100ms.min(3000 - sent);
            if c.send(&vec![b'x'; n]).await.is_err() {
                break;
            }
            sent += n;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let res = c.read_response(SETTLE).await.expect("a response");
        (res, start.elapsed())
    };
    // 100 bytes a second: behind 500/s once the grace is over.
    let (res, took) = upload(10).await;
    assert_eq!(res.status, 408, "{:?}", res.text());
    assert!(
        res.header("proxy-status")
            .is_some_and(|p| p.contains("request body too slow")),
        "{:?}",
        res.header("proxy-status")
    );
    assert!(took < Duration::from_secs(6), "cut off after {took:?}");
    // 1000 bytes a second: in time, though slower than the idle timeout
    // alone would ever notice.
    let (res, _) = upload(100).await;
    assert_eq!(res.status, 200);
    assert_eq!(
        h.metric("levee_listener_slow_clients_total{listener=\"main\",phase=\"body\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_client_that_never_reads_its_response_is_dropped() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&gateway("body_timeout = \"1s\"", backend.addr())).await;
    let mut c = RawConn::connect(h.addr).await.expect("connect");
    // 64 MiB, never read: the socket buffers fill and levee's writes stall.
    c.send(b"GET /bytes/67108864 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("send");
    h.eventually_metric(
        "levee_listener_slow_clients_total{listener=\"main\",phase=\"send\"}",
        1.0,
    )
    .await;
    // The connection is gone: reading now ends (after what was buffered)
    // without the whole body.
    let got = c.read_to_end_within(SETTLE).await;
    assert!(got.len() < 64 * 1024 * 1024, "the whole body arrived");
}

#[tokio::test]
async fn a_connection_idle_past_its_buffer_release_serves_a_large_head_after() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&gateway("", backend.addr())).await;
    let mut c = RawConn::connect(h.addr).await.expect("connect");
    c.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("send");
    assert_eq!(c.read_response(SETTLE).await.expect("first").status, 200);
    // Idle for longer than levee keeps a read buffer for (1 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A head of 20 KB, and a pipelined second request behind it.
    let big = "x".repeat(20_000);
    c.send(
        format!("GET /2 HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\nGET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("send");
    assert_eq!(c.read_response(SETTLE).await.expect("second").status, 200);
    assert_eq!(c.read_response(SETTLE).await.expect("third").status, 200);
    let seen = backend.ledger().arrivals();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].header("x-big").map(str::len), Some(20_000));
}
