use bytes::Bytes;
use http_body_util::Full;
use levee_testkit::{Backend, Behaviour, Client, pattern_sha256, sha256_hex};

#[tokio::test]
async fn h2_serves_records_and_scripts() {
    let backend = Backend::start_h2("two").await;
    let client = Client::http2(backend.addr());

    let req = http::Request::post("/up?q=1")
        .header("x-request-id", "h2-1")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let reply = client.send(req).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "two POST /up?q=1\n");
    assert_eq!(reply.header("x-request-id"), Some("h2-1"));
    assert_eq!(
        reply.header("x-body-sha256"),
        Some(sha256_hex(b"payload").as_str())
    );
    let a = &backend.ledger().find_request_id("h2-1")[0];
    assert_eq!(a.version, "HTTP/2.0");
    assert_eq!(a.header(":authority"), Some("localhost"));
    assert!(a.complete);

    let reply = client.get("/bytes/150000").await.unwrap();
    assert_eq!(reply.header("content-length"), Some("150000"));
    assert_eq!(sha256_hex(&reply.body), pattern_sha256(150_000));

    let req = http::Request::put("/echo")
        .body(Full::new(Bytes::from_static(b"round trip")))
        .unwrap();
    assert_eq!(client.send(req).await.unwrap().body.as_ref(), b"round trip");

    backend.set_behaviour(Behaviour::Status(502));
    assert_eq!(client.get("/").await.unwrap().status, 502);
    backend.set_behaviour(Behaviour::Reset);
    assert!(client.get("/").await.is_err());
    backend.set_behaviour(Behaviour::Normal);
    assert_eq!(client.get("/").await.unwrap().status, 200);
    // Streams multiplex on one connection.
    assert_eq!(backend.connections_accepted(), 1);
}

// Multi-threaded, as the gateway's own tests run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_kill_and_restart() {
    let backend = Backend::start_h2("two").await;
    let client = Client::http2(backend.addr());
    assert_eq!(client.get("/a").await.unwrap().status, 200);
    backend.kill().await;
    assert!(client.get("/b").await.is_err());
    backend.restart().await.unwrap();
    assert_eq!(client.get("/c").await.unwrap().status, 200);
    assert_eq!(backend.ledger().len(), 2);
}
