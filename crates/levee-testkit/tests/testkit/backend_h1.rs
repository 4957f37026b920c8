use std::time::{Duration, Instant};

use bytes::Bytes;
use levee_testkit::{Backend, Behaviour, Client, RawConn, pattern_bytes, pattern_sha256, sha256_hex};

use crate::WAIT;

fn post(path: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\n{extra}content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

#[tokio::test]
async fn ledger_records_method_path_id_and_body_hash() {
    let backend = Backend::start("alpha").await;
    let mut conn = RawConn::connect(backend.addr()).await.unwrap();
    conn.send(&post(
        "/upload?x=1",
        "X-Request-Id: r-1\r\nX-Extra: a\r\n",
        b"hello",
    ))
    .await
    .unwrap();
    let res = conn.read_response(WAIT).await.unwrap();

    assert_eq!(res.status, 200);
    assert!(res.complete);
    assert_eq!(res.text(), "alpha POST /upload?x=1\n");
    assert_eq!(res.header("x-backend"), Some("alpha"));
    assert_eq!(res.header("x-request-id"), Some("r-1"));
    assert_eq!(res.header("x-body-len"), Some("5"));
    assert_eq!(res.header("x-body-sha256"), Some(sha256_hex(b"hello").as_str()));
    assert_eq!(res.header("content-type"), Some("text/plain"));

    // The response was written after the arrival was recorded.
    let found = backend.ledger().find_request_id("r-1");
    assert_eq!(found.len(), 1);
    let a = &found[0];
    assert_eq!(a.backend, "alpha");
    assert_eq!(a.method, "POST");
    assert_eq!(a.path, "/upload?x=1");
    assert_eq!(a.version, "HTTP/1.1");
    assert_eq!(a.body_len, 5);
    assert_eq!(a.body_sha256, sha256_hex(b"hello"));
    assert!(a.complete);
    assert_eq!(a.header("X-EXTRA"), Some("a"));
    let names: Vec<&str> = a.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["host", "x-request-id", "x-extra", "content-length"]);
    assert_eq!(backend.ledger().count_path("/upload"), 1);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let backend = Backend::start("p").await;
    let mut conn = RawConn::connect(backend.addr()).await.unwrap();
    let mut pipeline = Vec::new();
    for i in 0..3 {
        pipeline.extend(post(&format!("/r{i}"), "", format!("body{i}").as_bytes()));
    }
    pipeline.extend_from_slice(b"GET /last HTTP/1.1\r\nHost: x\r\n\r\n");
    conn.send(&pipeline).await.unwrap();
    for i in 0..3 {
        let res = conn.read_response(WAIT).await.unwrap();
        assert_eq!(res.text(), format!("p POST /r{i}\n"));
        assert_eq!(
            res.header("x-body-sha256"),
            Some(sha256_hex(format!("body{i}").as_bytes()).as_str())
        );
    }
    assert_eq!(conn.read_response(WAIT).await.unwrap().text(), "p GET /last\n");
    assert_eq!(backend.connections_accepted(), 1);
    let paths: Vec<String> = backend.ledger().arrivals().into_iter().map(|a| a.path).collect();
    assert_eq!(paths, ["/r0", "/r1", "/r2", "/last"]);
}

#[tokio::test]
async fn client_keeps_one_connection_alive() {
    let backend = Backend::start("k").await;
    let client = Client::http1(backend.addr());
    for _ in 0..5 {
        let reply = client.get("/").await.unwrap();
        assert_eq!(reply.status, 200);
    }
    assert_eq!(backend.connections_accepted(), 1);
    assert_eq!(backend.ledger().arrivals()[0].header("host"), Some("localhost"));
}

#[tokio::test]
async fn connection_close_and_http10_end_the_connection() {
    let backend = Backend::start("c").await;

    let mut conn = RawConn::connect(backend.addr()).await.unwrap();
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let res = conn.read_response(WAIT).await.unwrap();
    assert_eq!(res.header("connection"), Some("close"));
    assert!(conn.closed_within(WAIT).await);

    let mut conn = RawConn::connect(backend.addr()).await.unwrap();
    conn.send(b"GET /old HTTP/1.0\r\n\r\n").await.unwrap();
    let res = conn.read_response(WAIT).await.unwrap();
    assert_eq!(res.text(), "c GET /old\n");
    assert!(conn.closed_within(WAIT).await);
    assert_eq!(backend.ledger().arrivals()[1].version, "HTTP/1.0");

    // HTTP/1.0 keep-alive is honoured when asked for.
    let mut conn = RawConn::connect(backend.addr()).await.unwrap();
    conn.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let res = conn.read_response(WAIT).await.unwrap();
    assert_eq!(res.header("connection"), Some("keep-alive"));
    assert_eq!(conn.read_response(WAIT).await.unwrap().text(), "c GET /b\n");
    assert!(conn.closed_within(WAIT).await);
}

#[tokio::test]
async fn chunked_upload_is_decoded_and_hashed_with_trailers() {
    let backend = Backend::start("chunky").await;
    let mut conn = RawConn::connect(backend.addr()).await.unwrap();
    conn.send(
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Sum: abc\r\n\r\n",
    )
    .await
    .unwrap();
    let res = conn.read_response(WAIT).await.unwrap();
    let expected = b"hello 0123456789";
    assert_eq!(res.header("x-body-len"), Some("16"));
    assert_eq!(res.header("x-body-sha256"), Some(sha256_hex(expected).as_str()));
    let a = &backend.ledger().arrivals()[0];
    assert!(a.complete);
    assert_eq!(a.body_sha256, sha256_hex(expected));
    assert_eq!(a.trailers, [("x-sum".to_owned(), "abc".to_owned())]);
}

#[tokio::test]
async fn bytes_endpoint_streams_the_pattern() {
    let backend = Backend::start("b").await;
    let client = Client::http1(backend.addr());
    let reply = client.get("/bytes/200001").await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-length"), Some("200001"));
    assert_eq!(reply.body.as_ref(), pattern_bytes(200_001).as_slice());

    let mut conn = RawConn::connect(backend.addr()).await.unwrap();
    conn.send(b"GET /bytes/70000?chunked=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let res = conn.read_response(WAIT).await.unwrap();
    assert_eq!(res.header("transfer-encoding"), Some("chunked"));
    assert!(res.complete);
    assert_eq!(sha256_hex(&res.body), pattern_sha256(70_000));

    conn.send(b"HEAD /bytes/10 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let res = conn.read_response_to_head(WAIT).await.unwrap();
    assert_eq!(res.header("content-length"), Some("10"));
    assert!(res.body.is_empty());
    // No body followed the HEAD answer: the next response parses cleanly.
    conn.send(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(conn.read_response(WAIT).await.unwrap().text(), "b GET /next\n");
}

#[tokio::test]
async fn echo_streams_the_body_back_and_healthz_answers() {
    let backend = Backend::start("e").await;
    let client = Client::http1(backend.addr());
    let body: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i % 251) as u8).collect();
    let req = http::Request::post("/echo")
        .header("x-request-id", "echo-1")
        .body(http_body_util::Full::new(Bytes::from(body.clone())))
        .unwrap();
    let reply = client.send(req).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.as_ref(), body.as_slice());
    let a = &backend.ledger().find_request_id("echo-1")[0];
    assert!(a.complete);
    assert_eq!(a.body_sha256, sha256_hex(&body));

    let reply = client.get("/healthz").await.unwrap();
    assert_eq!((reply.status, reply.text().as_str()), (200, "ok\n"));
    assert_eq!(backend.ledger().count_path("/healthz"), 1);
}

#[tokio::test]
async fn websocket_upgrade_echoes_bytes_both_ways() {
    let backend = Backend::start("ws").await;
    let mut conn = RawConn::connect(backend.addr()).await.unwrap();
    conn.send(b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nearly")
        .await
        .unwrap();
    let res = conn.read_response(WAIT).await.unwrap();
    assert_eq!(res.status, 101);
    assert_eq!(res.header("upgrade"), Some("websocket"));
    conn.send(b" and late").await.unwrap();
    conn.shutdown_write().await.unwrap();
    assert_eq!(conn.read_to_end_within(WAIT).await, b"early and late");
    assert_eq!(backend.ledger().count_path("/chat"), 1);
}

#[tokio::test]
async fn kill_refuses_connections_and_restart_serves_again_with_the_same_ledger() {
    let backend = Backend::start("phoenix").await;
    let addr = backend.addr();
    let client = Client::http1(addr);
    assert_eq!(client.get("/one").await.unwrap().status, 200);

    backend.kill().await;
    assert!(!backend.is_running());
    let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(client.get("/during").await.is_err());

    backend.restart().await.unwrap();
    assert_eq!(backend.addr(), addr);
    let reply = client.get("/two").await.unwrap();
    assert_eq!(reply.header("x-backend"), Some("phoenix"));
    let paths: Vec<String> = backend.ledger().arrivals().into_iter().map(|a| a.path).collect();
    assert_eq!(paths, ["/one", "/two"]);
}

#[tokio::test]
async fn reset_sends_no_response() {
    let backend = Backend::start("r").await;
    backend.set_behaviour(Behaviour::Reset);
    let mut conn = RawConn::connect(backend.addr()).await.unwrap();
    conn.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(conn.closed_within(WAIT).await);
    let a = &backend.ledger().arrivals()[0];
    assert!(a.complete, "a bodiless request was fully received");

    // The header form does the same for one request.
    backend.set_behaviour(Behaviour::Normal);
    let mut conn = RawConn::connect(backend.addr()).await.unwrap();
    conn.send(&post("/y", "x-testkit-action: reset\r\n", b"data"))
        .await
        .unwrap();
    assert!(conn.closed_within(WAIT).await);
    assert!(backend.ledger().wait_for_len(2, WAIT).await);
}

// Multi-threaded, as the gateway's own tests run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_holds_the_request_until_kill_releases_it() {
    let backend = Backend::start("h").await;
    let mut conn = RawConn::connect(backend.addr()).await.unwrap();
    conn.send(b"GET /slow HTTP/1.1\r\nHost: x\r\nx-testkit-action: hang\r\n\r\n")
        .await
        .unwrap();
    assert!(backend.ledger().wait_for_len(1, WAIT).await);
    assert_eq!(backend.requests_in_flight(), 1);
    assert!(!conn.closed_within(Duration::from_millis(100)).await);

    backend.kill().await;
    assert!(conn.closed_within(WAIT).await);
    assert_eq!(backend.requests_in_flight(), 0);
}

#[tokio::test]
async fn raw_bytes_are_sent_verbatim_then_closed() {
    let backend = Backend::start("raw").await;
    let raw: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
    backend.set_behaviour(Behaviour::Raw(Bytes::from_static(raw)));
    let mut conn = RawConn::connect(backend.addr()).await.unwrap();
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(conn.read_to_end_within(WAIT).await, raw);
    assert_eq!(backend.ledger().len(), 1);
}

#[tokio::test]
async fn close_mid_body_breaks_the_response() {
    let backend = Backend::start("m").await;
    backend.set_behaviour(Behaviour::CloseMidBody);
    let mut conn = RawConn::connect(backend.addr()).await.unwrap();
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let res = conn.read_response(WAIT).await.unwrap();
    assert_eq!(res.header("content-length"), Some("100000"));
    assert!(!res.complete);
    assert_eq!(res.body, b"0123456789");
}

#[tokio::test]
async fn status_and_delay_follow_behaviour_and_headers() {
    let backend = Backend::start("s").await;
    let client = Client::http1(backend.addr());

    backend.set_behaviour(Behaviour::Status(503));
    assert_eq!(client.get("/").await.unwrap().status, 503);

    // Override headers replace the behaviour entirely.
    let req = http::Request::get("/")
        .header("x-testkit-status", "418")
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(client.send(req).await.unwrap().status, 418);

    backend.set_behaviour(Behaviour::Status(204));
    let reply = client.get("/").await.unwrap();
    assert_eq!(reply.status, 204);
    assert!(reply.body.is_empty());

    backend.set_behaviour(Behaviour::Delay(Duration::from_millis(150)));
    let started = Instant::now();
    assert_eq!(client.get("/").await.unwrap().status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));

    backend.set_behaviour(Behaviour::Normal);
    let req = http::Request::get("/")
        .header("x-testkit-delay-ms", "100")
        .body(http_body_util::Full::default())
        .unwrap();
    let started = Instant::now();
    assert_eq!(client.send(req).await.unwrap().status, 200);
    assert!(started.elapsed() >= Duration::from_millis(100));

    let req = http::Request::get("/")
        .header("x-testkit-action", "explode")
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(client.send(req).await.unwrap().status, 400);
}

#[tokio::test]
async fn garbage_and_cut_uploads_are_recorded_incomplete() {
    let backend = Backend::start("g").await;
    let mut conn = RawConn::connect(backend.addr()).await.unwrap();
    conn.send(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(conn.read_response(WAIT).await.unwrap().status, 400);
    let a = &backend.ledger().arrivals()[0];
    assert_eq!((a.method.as_str(), a.complete), ("", false));

    let mut conn = RawConn::connect(backend.addr()).await.unwrap();
    let req = post("/cut", "", b"0123456789");
    conn.send(&req[..req.len() - 5]).await.unwrap();
    drop(conn);
    assert!(backend.ledger().wait_for_len(2, WAIT).await);
    let a = &backend.ledger().arrivals()[1];
    assert_eq!(a.path, "/cut");
    assert!(!a.complete);
}

#[tokio::test]
async fn expect_continue_gets_an_interim_response() {
    let backend = Backend::start("x").await;
    let mut conn = RawConn::connect(backend.addr()).await.unwrap();
    conn.send(b"PUT /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(conn.read_response(WAIT).await.unwrap().status, 100);
    conn.send(b"abc").await.unwrap();
    let res = conn.read_response(WAIT).await.unwrap();
    assert_eq!(res.header("x-body-sha256"), Some(sha256_hex(b"abc").as_str()));
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let backend = Backend::start("big").await;
    let mut conn = RawConn::connect(backend.addr()).await.unwrap();
    let total: u64 = 16 << 20;
    conn.send(format!("POST /sink HTTP/1.1\r\nHost: x\r\ncontent-length: {total}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Pieces of the /bytes pattern, so the expected hash is cheap to state.
    let piece = pattern_bytes(1 << 20);
    for _ in 0..(total >> 20) {
        conn.send(&piece).await.unwrap();
    }
    let res = conn.read_response(WAIT).await.unwrap();
    let expected = pattern_sha256(total);
    assert_eq!(res.header("x-body-sha256"), Some(expected.as_str()));
    assert_eq!(backend.ledger().arrivals()[0].body_len, total);

    conn.send(format!("GET /bytes/{total} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let res = conn.read_response(WAIT).await.unwrap();
    assert_eq!(sha256_hex(&res.body), expected);
}
