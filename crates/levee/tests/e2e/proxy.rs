//! Forwarding: what the upstream receives, what the client gets back,
//! routing, balancing and the protocols on both sides.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use levee_testkit::{Backend, Client, RawConn, sha256_hex};

use crate::support::*;

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::new(Bytes::new())).expect("request")
}

#[tokio::test]
async fn forwards_a_request_and_its_response() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&simple(&[b.addr()])).await;
    let reply = h.client().get("/hello?x=1").await.expect("reply");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "b1 GET /hello?x=1\n");
    assert_eq!(reply.header("x-backend"), Some("b1"));
    assert_eq!(reply.header("via"), Some("1.1 levee"));
    let arrivals = b.ledger().arrivals();
    assert_eq!(arrivals.len(), 1);
    assert_eq!(arrivals[0].path, "/hello?x=1");
    assert_eq!(arrivals[0].method, "GET");
}

#[tokio::test]
async fn request_ids_are_generated_or_passed_on() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&simple(&[b.addr()])).await;
    let reply = h.client().get("/").await.expect("reply");
    let generated = reply.header("x-request-id").expect("an id").to_string();
    assert_eq!(generated.len(), 32);
    assert_eq!(
        b.ledger().find_request_id(&generated).len(),
        1,
        "the upstream saw the same id"
    );

    let req = Request::get("/")
        .header("x-request-id", "from-client")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let reply = h.client().send(req).await.expect("reply");
    assert_eq!(reply.header("x-request-id"), Some("from-client"));
    assert_eq!(b.ledger().find_request_id("from-client").len(), 1);
}

#[tokio::test]
async fn forwarding_headers_are_added_and_hop_by_hop_removed() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&simple(&[b.addr()])).await;
    let req = Request::get("/")
        .header("host", "app.example:8080")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("connection", "x-hop, keep-alive")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("x-end-to-end", "kept")
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(h.client().send(req).await.expect("reply").status, 200);
    let a = &b.ledger().arrivals()[0];
    assert_eq!(a.header("host"), Some("app.example:8080"));
    assert_eq!(a.header("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(
        a.header("x-forwarded-proto"),
        Some("http"),
        "the client cannot claim https"
    );
    assert_eq!(a.header("x-forwarded-host"), Some("app.example:8080"));
    assert_eq!(
        a.header("forwarded"),
        Some("for=127.0.0.1;proto=http;host=\"app.example:8080\"")
    );
    assert_eq!(a.header("via"), Some("1.1 levee"));
    assert_eq!(a.header("x-end-to-end"), Some("kept"));
    for gone in ["x-hop", "keep-alive", "proxy-connection", "te", "connection"] {
        assert_eq!(a.header(gone), None, "{gone} was forwarded");
    }
}

#[tokio::test]
async fn hop_by_hop_fields_of_the_response_are_removed() {
    let raw = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-internal, close\r\nX-Internal: 1\r\nKeep-Alive: timeout=1\r\nX-Public: 2\r\n\r\nok";
    let b = Backend::start("b1").await;
    b.set_behaviour(levee_testkit::Behaviour::Raw(Bytes::from(raw)));
    let h = Harness::start(&simple(&[b.addr()])).await;
    let reply = h.client().get("/").await.expect("reply");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "ok");
    assert_eq!(reply.header("x-public"), Some("2"));
    assert_eq!(reply.header("x-internal"), None);
    assert_eq!(reply.header("keep-alive"), None);
}

#[tokio::test]
async fn routes_match_in_order_and_unmatched_is_404() {
    let api = Backend::start("api").await;
    let web = Backend::start("web").await;
    let toml = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[listener.main]
address = "127.0.0.1:0"

[[route]]
name = "api-writes"
upstream = "api"
[route.match]
hosts = ["api.example.com", "*.api.example.com"]
methods = ["POST", "PUT"]

[[route]]
name = "api"
upstream = "api"
[route.match]
hosts = ["api.example.com"]
path_prefix = "/v1/"

[[route]]
name = "canary"
upstream = "api"
[route.match]
headers = {{ "x-canary" = "1" }}

[[route]]
name = "web"
upstream = "web"
[route.match]
hosts = ["www.example.com"]

[upstream.api.region.r]
endpoints = ["{}"]
[upstream.web.region.r]
endpoints = ["{}"]
"#,
        api.addr(),
        web.addr()
    );
    let h = Harness::start(&toml).await;
    let c = h.client();
    let send = |method: &str, host: &str, path: &str, canary: bool| {
        let mut b = Request::builder().method(method).uri(path).header("host", host);
        if canary {
            b = b.header("x-canary", "1");
        }
        c.send(b.body(Full::new(Bytes::new())).expect("request"))
    };
    let who = |r: &levee_testkit::Reply| r.header("x-backend").map(str::to_string);
    assert_eq!(
        who(&send("POST", "eu.api.example.com", "/x", false).await.expect("r")),
        Some("api".into())
    );
    assert_eq!(
        who(&send("GET", "API.Example.com:443", "/v1/users", false)
            .await
            .expect("r")),
        Some("api".into())
    );
    assert_eq!(
        who(&send("GET", "www.example.com", "/", false).await.expect("r")),
        Some("web".into())
    );
    assert_eq!(
        who(&send("GET", "other.example", "/", true).await.expect("r")),
        Some("api".into())
    );
    let miss = send("GET", "api.example.com", "/v2/", false).await.expect("r");
    assert_eq!(miss.status, 404);
    assert!(
        miss.header("proxy-status")
            .expect("proxy-status")
            .contains("error=destination_not_found")
    );
    assert_eq!(
        h.metric("levee_http_requests_total{route=\"\",upstream=\"\",status_class=\"4xx\"}")
            .await,
        1.0
    );
    assert_eq!(
        h.metric("levee_http_requests_total{route=\"api\",upstream=\"api\",status_class=\"2xx\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn round_robin_spreads_by_weight() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[listener.main]\naddress = \"127.0.0.1:0\"\n[[route]]\nname = \"all\"\nupstream = \"app\"\n[upstream.app.region.r]\nendpoints = [\"{}\", {{ address = \"{}\", weight = 3 }}]\n",
        a.addr(),
        b.addr()
    );
    let h = Harness::start(&toml).await;
    let c = h.client();
    for _ in 0..40 {
        assert_eq!(c.get("/").await.expect("reply").status, 200);
    }
    assert_eq!(a.ledger().len(), 10);
    assert_eq!(b.ledger().len(), 30);
}

#[tokio::test]
async fn priority_zero_takes_all_traffic() {
    let p = Backend::start("p").await;
    let s = Backend::start("s").await;
    let h = Harness::start(&config(
        &[("primary", 0, &[p.addr()]), ("secondary", 1, &[s.addr()])],
        "",
        "",
    ))
    .await;
    for _ in 0..10 {
        h.client().get("/").await.expect("reply");
    }
    assert_eq!(p.ledger().len(), 10);
    assert_eq!(s.ledger().len(), 0);
}

#[tokio::test]
async fn consistent_hashing_keeps_a_key_on_one_endpoint() {
    for policy in ["ring_hash", "maglev"] {
        let backends = [
            Backend::start("a").await,
            Backend::start("b").await,
            Backend::start("c").await,
        ];
        let addrs: Vec<_> = backends.iter().map(Backend::addr).collect();
        let keys = format!("balance = \"{policy}\"\nhash_on = \"header:x-user\"");
        let h = Harness::start(&config(&[("r", 0, &addrs)], &keys, "")).await;
        let c = h.client();
        let mut owner: HashMap<String, String> = HashMap::new();
        for round in 0..3 {
            for user in 0..30 {
                let req = Request::get("/")
                    .header("x-user", format!("user-{user}"))
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let reply = c.send(req).await.expect("reply");
                let backend = reply.header("x-backend").expect("backend").to_string();
                let first = owner
                    .entry(format!("user-{user}"))
                    .or_insert_with(|| backend.clone());
                assert_eq!(*first, backend, "{policy}: user-{user} moved in round {round}");
            }
        }
        let used: std::collections::HashSet<_> = owner.values().collect();
        assert!(
            used.len() >= 2,
            "{policy}: 30 keys all on one endpoint: {owner:?}"
        );
    }
}

#[tokio::test]
async fn least_request_avoids_a_busy_endpoint() {
    let slow = Backend::start("slow").await;
    let fast = Backend::start("fast").await;
    slow.set_behaviour(levee_testkit::Behaviour::Delay(Duration::from_millis(300)));
    let h = Harness::start(&config(
        &[("r", 0, &[slow.addr(), fast.addr()])],
        "balance = \"least_request\"",
        "",
    ))
    .await;
    let report = levee_testkit::load(&h.client(), 200, 8, SETTLE * 3, |_| get("/")).await;
    assert_eq!(report.ok_2xx, 200, "{:?}", report.errors);
    // The slow endpoint holds requests in flight, so the fast one wins most draws.
    assert!(
        fast.ledger().len() > 3 * slow.ledger().len(),
        "fast {} slow {}",
        fast.ledger().len(),
        slow.ledger().len()
    );
}

#[tokio::test]
async fn http2_clients_are_served() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&simple(&[b.addr()])).await;
    let c = Client::http2(h.addr);
    let report = levee_testkit::load(&c, 50, 10, SETTLE, |i| get(&format!("/h2/{i}"))).await;
    assert_eq!(report.ok_2xx, 50, "{:?}", report.errors);
    let a = &b.ledger().arrivals()[0];
    assert_eq!(a.version, "HTTP/1.1", "upstream is HTTP/1.1");
    assert_eq!(a.header("via"), Some("2 levee"));
    assert_eq!(a.header("host"), Some("localhost"), "the :authority became Host");
}

#[tokio::test]
async fn http2_upstreams_are_used_when_configured() {
    let b = Backend::start_h2("h2").await;
    let h = Harness::start(&config(&[("r", 0, &[b.addr()])], "protocol = \"http2\"", "")).await;
    let report = levee_testkit::load(&h.client(), 30, 6, SETTLE, |i| get(&format!("/x/{i}"))).await;
    assert_eq!(report.ok_2xx, 30, "{:?}", report.errors);
    assert_eq!(b.ledger().len(), 30);
    assert!(b.ledger().arrivals().iter().all(|a| a.version == "HTTP/2.0"));
    // One multiplexed connection serves them all.
    assert_eq!(b.connections_accepted(), 1);
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&simple(&[b.addr()])).await;
    let c = h.client();
    for _ in 0..20 {
        assert_eq!(c.get("/").await.expect("reply").status, 200);
    }
    assert_eq!(b.connections_accepted(), 1);
}

#[tokio::test]
async fn bodies_go_both_ways() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&simple(&[b.addr()])).await;
    let body = levee_testkit::pattern_bytes(3 * 1024 * 1024 + 17);
    let req = Request::post("/upload")
        .body(Full::new(Bytes::from(body.clone())))
        .expect("request");
    let reply = h.client().send(req).await.expect("reply");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-body-sha256"), Some(sha256_hex(&body).as_str()));
    let echoed = h
        .client()
        .send(
            Request::post("/echo")
                .body(Full::new(Bytes::from(body.clone())))
                .expect("request"),
        )
        .await
        .expect("reply");
    assert_eq!(echoed.body.len(), body.len());
    assert!(echoed.body == body, "echo differs");
    let down = h.client().get("/bytes/5000000?chunked=1").await.expect("reply");
    assert_eq!(down.body.len(), 5_000_000);
    assert_eq!(sha256_hex(&down.body), levee_testkit::pattern_sha256(5_000_000));
}

#[tokio::test]
async fn chunked_uploads_keep_their_trailers() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&simple(&[b.addr()])).await;
    let mut conn = RawConn::connect(h.addr).await.expect("connect");
    conn.send(b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 42\r\nX-Undeclared: 1\r\nContent-Length: 5\r\n\r\n")
        .await
        .expect("send");
    let res = conn.read_response(SETTLE).await.expect("response");
    assert_eq!(res.status, 200);
    let a = &b.ledger().arrivals()[0];
    assert!(a.complete);
    assert_eq!(a.body_sha256, sha256_hex(b"hello world"));
    assert_eq!(
        a.trailers
            .iter()
            .find(|(k, _)| k == "x-sum")
            .map(|(_, v)| v.as_str()),
        Some("42")
    );
    assert_eq!(
        a.trailers
            .iter()
            .find(|(k, _)| k == "x-undeclared")
            .map(|(_, v)| v.as_str()),
        Some("1")
    );
    // Fields that frame or route a message are never taken from trailers.
    assert!(a.trailers.iter().all(|(k, _)| k != "content-length"));
}

#[tokio::test]
async fn head_responses_have_no_body() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&simple(&[b.addr()])).await;
    let mut conn = RawConn::connect(h.addr).await.expect("connect");
    conn.send(b"HEAD /bytes/1000 HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("send");
    let head = conn.read_response_to_head(SETTLE).await.expect("head");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1000"));
    let next = conn.read_response(SETTLE).await.expect("next");
    assert_eq!(next.status, 200, "the body-less HEAD kept the connection in step");
    assert_eq!(next.text(), "b1 GET /next\n");
}

#[tokio::test]
async fn http10_clients_get_close_delimited_or_keep_alive() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&simple(&[b.addr()])).await;
    let mut conn = RawConn::connect(h.addr).await.expect("connect");
    conn.send(b"GET /bytes/100?chunked=1 HTTP/1.0\r\n\r\n")
        .await
        .expect("send");
    let res = conn.read_response(SETTLE).await.expect("response");
    assert_eq!(res.status, 200);
    assert_eq!(res.body.len(), 100);
    assert!(
        res.header("transfer-encoding").is_none(),
        "no chunked to HTTP/1.0"
    );
    assert!(conn.closed_within(SETTLE).await);
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&simple(&[b.addr()])).await;
    let mut conn = RawConn::connect(h.addr).await.expect("connect");
    conn.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .expect("send");
    let res = conn.read_response_to_head(SETTLE).await.expect("101");
    assert_eq!(res.status, 101);
    assert_eq!(res.header("upgrade"), Some("websocket"));
    conn.send(b"ping through the tunnel").await.expect("send");
    conn.shutdown_write().await.expect("half close");
    let echoed = conn.read_to_end_within(SETTLE).await;
    let mut all = conn_buffered_prefix(&res);
    all.extend_from_slice(&echoed);
    assert_eq!(String::from_utf8_lossy(&all), "ping through the tunnel");
    let a = &b.ledger().arrivals()[0];
    assert_eq!(a.header("upgrade"), Some("websocket"));
    assert_eq!(
        a.header("connection").map(str::to_ascii_lowercase),
        Some("upgrade".into())
    );
}

/// Bytes read past a 101 head belong to the tunnel.
fn conn_buffered_prefix(res: &levee_testkit::RawResponse) -> Vec<u8> {
    res.body.clone()
}

#[tokio::test]
async fn idle_http2_connections_are_closed() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&(simple(&[b.addr()]) + "[server]\nkeepalive_timeout = \"300ms\"\n")).await;
    let stream = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let req = Request::get("http://localhost/")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let res = sender.send_request(req).await.expect("response");
    assert_eq!(res.status(), 200);
    drop(res);
    // Idle, the connection is closed by levee (GOAWAY), well within the deadline.
    tokio::time::timeout(SETTLE, conn)
        .await
        .expect("closed while idle")
        .expect("join")
        .expect("clean close");
}

#[tokio::test]
async fn http2_bodies_over_the_limit_are_refused() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&(simple(&[b.addr()]) + "[server]\nmax_body_bytes = 1000\n")).await;
    let c = Client::http2(h.addr);
    let big = Request::post("/upload")
        .body(Full::new(Bytes::from(vec![b'x'; 5000])))
        .expect("request");
    let res = c.send(big).await.expect("response");
    assert_eq!(res.status, 413);
    assert!(
        res.header("proxy-status")
            .expect("proxy-status")
            .contains("http_request_error")
    );
    let small = Request::post("/upload")
        .body(Full::new(Bytes::from(vec![b'x'; 500])))
        .expect("request");
    assert_eq!(c.send(small).await.expect("response").status, 200);
    assert_eq!(b.ledger().len(), 1, "the refused body never reached the origin");
}

/// A request body of unknown length: one chunk, then the end.
struct Unsized(Option<Bytes>);

impl http_body::Body for Unsized {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
    }
}

#[tokio::test]
async fn http2_bodies_over_the_limit_are_never_retried_on_a_fresh_connection() {
    // A body found too large before any byte left on a pooled connection
    // must end the request, not send it again (without its body) elsewhere.
    let b = Backend::start("b1").await;
    let h = Harness::start(&(simple(&[b.addr()]) + "[server]\nmax_body_bytes = 1000\n")).await;
    let stream = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake::<_, Unsized>(hyper_util::rt::TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    for round in 0..5 {
        // Leaves an idle connection in levee's pool.
        let warm = Request::get("http://localhost/warm")
            .body(Unsized(None))
            .expect("request");
        let res = sender.send_request(warm).await.expect("response");
        assert_eq!(res.status(), 200);
        let _ = http_body_util::BodyExt::collect(res.into_body()).await;

        let big = Request::post("http://localhost/upload")
            .body(Unsized(Some(Bytes::from(vec![b'x'; 5000]))))
            .expect("request");
        let res = sender.send_request(big).await.expect("response");
        assert_eq!(res.status(), 413, "round {round}");
    }
    let uploads: Vec<_> = b
        .ledger()
        .arrivals()
        .into_iter()
        .filter(|a| a.path == "/upload")
        .collect();
    assert!(uploads.iter().all(|a| !a.complete), "{uploads:#?}");
}

#[tokio::test]
async fn bodyless_responses_leave_the_upstream_connection_pooled() {
    let b = Backend::start("b1").await;
    let h = Harness::start(&simple(&[b.addr()])).await;
    let c = h.client();
    let head = Request::head("/head")
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(c.send(head).await.expect("reply").status, 200);
    for status in [204, 304] {
        let req = Request::get("/status")
            .header("x-testkit-status", status)
            .body(Full::new(Bytes::new()))
            .expect("request");
        assert_eq!(c.send(req).await.expect("reply").status, status);
    }
    assert_eq!(c.get("/last").await.expect("reply").status, 200);
    assert_eq!(b.ledger().len(), 4);
    assert_eq!(
        b.connections_accepted(),
        1,
        "one upstream connection served all four"
    );
}
