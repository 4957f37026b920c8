//! Upstream failures leave no request unanswered: every request ends in
//! an upstream response or in levee's own response with the right
//! status and `Proxy-Status`, echoing the client's request id, within
//! its deadline; a broken upstream message never reaches the client as
//! a clean one, and an upstream connection that sent bad framing is
//! never reused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use levee_testkit::{Backend, Behaviour, RawConn, RawResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::strict::assert_generated;
use crate::support::*;

/// `GET path` on a fresh connection with `X-Request-Id: id`.
async fn get(h: &Harness, path: &str, id: &str) -> RawResponse {
    let mut conn = RawConn::connect(h.addr).await.expect("connect");
    conn.send(format!("GET {path} HTTP/1.1\r\nHost: a\r\nX-Request-Id: {id}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    conn.read_response(SETTLE)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: no response within the deadline: {e:#}"))
}

/// A levee-generated error: its shape, and the client's request id echoed.
fn assert_error(case: &str, res: &RawResponse, status: u16, error: &str, id: &str) {
    assert_generated(case, res, status, error);
    assert_eq!(res.header("x-request-id"), Some(id), "{case}: request id echoed");
}

async fn backend_with(behaviour: Behaviour) -> Backend {
    Backend::builder("b1")
        .behaviour(behaviour)
        .start()
        .await
        .expect("bind a loopback port")
}

#[tokio::test]
async fn refused_connection_is_502_connection_refused() {
    let backend = Backend::start("b1").await;
    let addr = backend.addr();
    // Once kill returns, the port refuses connections.
    backend.kill().await;
    let h = Harness::start(&simple(&[addr])).await;
    let res = get(&h, "/", "refused-1").await;
    assert_error("refused", &res, 502, "connection_refused", "refused-1");
    assert!(backend.ledger().is_empty());
    assert_eq!(
        h.metric("levee_http_generated_responses_total{cause=\"connection_refused\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn unanswered_connect_is_504_connection_timeout() {
    // A listener that never accepts, with its accept queue filled: the
    // kernel drops further SYNs, so a connect neither succeeds nor fails.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    let full = loop {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) if fillers.len() < 16 => fillers.push(s),
            Ok(_) => break false,
            Err(_) => break true,
        }
    };
    assert!(
        full,
        "could not fill the accept queue of a listener with backlog 0"
    );

    let h = Harness::start(&config(
        &[("local", 0, &[addr])],
        "connect_timeout = \"200ms\"",
        "",
    ))
    .await;
    let res = get(&h, "/", "connect-timeout-1").await;
    assert_error(
        "connect timeout",
        &res,
        504,
        "connection_timeout",
        "connect-timeout-1",
    );
    drop(listener);
}

#[tokio::test]
async fn hung_upstream_is_504_response_timeout() {
    let backend = backend_with(Behaviour::Hang).await;
    // One try only: a retry would deliver the request a second time.
    let h = Harness::start(&config(
        &[("local", 0, &[backend.addr()])],
        "response_header_timeout = \"300ms\"",
        "[route.retry]\nattempts = 1\n",
    ))
    .await;
    // The deadline is get's SETTLE, far beyond the 300 ms timeout.
    let res = get(&h, "/hang", "hang-1").await;
    assert_error("hang", &res, 504, "http_response_timeout", "hang-1");
    // The request was delivered: a timeout is not "not processed".
    assert!(backend.ledger().wait_for_len(1, SETTLE).await);
    assert_eq!(backend.ledger().find_request_id("hang-1").len(), 1);
}

#[tokio::test]
async fn reset_before_response_is_502_connection_terminated() {
    let backend = backend_with(Behaviour::Reset).await;
    let h = Harness::start(&simple(&[backend.addr()])).await;
    let res = get(&h, "/reset", "reset-1").await;
    assert_error("reset", &res, 502, "connection_terminated", "reset-1");
}

#[tokio::test]
async fn no_matching_route_is_404_destination_not_found() {
    let backend = Backend::start("b1").await;
    let h = Harness::start(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[listener.main]\naddress = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"only\"\nupstream = \"app\"\n\n[route.match]\nhosts = [\"only.example\"]\n\n\
         [upstream.app]\n[upstream.app.region.local]\npriority = 0\nendpoints = [\"{}\"]\n",
        backend.addr()
    ))
    .await;
    let res = get(&h, "/", "no-route-1").await;
    assert_error("no route", &res, 404, "destination_not_found", "no-route-1");
    assert!(backend.ledger().is_empty());

    // The route does match its host, so the 404 above was the routing.
    let mut conn = RawConn::connect(h.addr).await.expect("connect");
    conn.send(b"GET /routed HTTP/1.1\r\nHost: only.example\r\n\r\n")
        .await
        .expect("send");
    let res = conn.read_response(SETTLE).await.expect("response");
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(backend.ledger().count_path("/routed"), 1);
}

/// Sends `raw` as the answer to one request, then checks the client got
/// 502 `http_protocol_error` and the next request used a new connection.
/// (The testkit's `Raw` closes after writing, so that connection could not
/// be reused anyway; the [`KeepAliveOrigin`] tests below are the ones that
/// prove levee drops a connection its peer would have kept.)
async fn malformed_response_is_502(case: &str, raw: &'static [u8]) {
    let backend = backend_with(Behaviour::Raw(Bytes::from_static(raw))).await;
    let h = Harness::start(&simple(&[backend.addr()])).await;
    let id = format!("{case}-1");
    let res = get(&h, "/malformed", &id).await;
    assert_error(case, &res, 502, "http_protocol_error", &id);

    let before = backend.connections_accepted();
    backend.set_behaviour(Behaviour::Normal);
    let next = get(&h, "/next", "next-1").await;
    assert_eq!(next.status, 200, "{case}: {next:?}");
    assert_eq!(
        backend.connections_accepted(),
        before + 1,
        "{case}: the request after a malformed response must use a new connection"
    );
}

/// One test per malformed response, named after it.
macro_rules! malformed_response {
    ($($(#[$attr:meta])* $name:ident: $raw:expr;)+) => {$(
        $(#[$attr])*
        #[tokio::test]
        async fn $name() {
            malformed_response_is_502(stringify!($name), $raw).await;
        }
    )+};
}

malformed_response! {
    response_conflicting_content_lengths:
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello";
    response_conflicting_content_lengths_in_one_field:
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello";
    response_invalid_content_length:
        b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\nhello";
    response_content_length_with_sign:
        b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello";
    response_garbage_status_line:
        b"HTTP/1.1 OK 200\r\nContent-Length: 5\r\n\r\nhello";
    response_not_http:
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n";
    response_transfer_encoding_in_http10:
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";

    response_content_length_and_transfer_encoding:
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";

    response_duplicate_equal_content_lengths:
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello";

    response_bad_first_chunk_size:
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
}

#[tokio::test]
async fn bad_chunked_framing_never_reaches_the_client_as_a_clean_message() {
    // Bad framing after good data: the head and first chunk may already be
    // relayed, so the client must see a broken message (or levee's 502).
    let backend = backend_with(Behaviour::Raw(Bytes::from_static(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n",
    )))
    .await;
    let h = Harness::start(&simple(&[backend.addr()])).await;
    let mut conn = RawConn::connect(h.addr).await.expect("connect");
    conn.send(b"GET /chunks HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("send");
    match conn.read_response(SETTLE).await {
        Ok(res) if res.status == 200 => {
            assert!(
                !res.complete,
                "a broken upstream body reached the client whole: {res:?}"
            );
            assert!(conn.closed_within(SETTLE).await);
        }
        Ok(res) => assert_generated("bad chunk", &res, 502, "http_protocol_error"),
        Err(e) => panic!("no response head at all: {e:#}"),
    }

    let before = backend.connections_accepted();
    backend.set_behaviour(Behaviour::Normal);
    assert_eq!(get(&h, "/next", "next-1").await.status, 200);
    assert_eq!(backend.connections_accepted(), before + 1);
}

#[tokio::test]
async fn reset_mid_body_reaches_the_client_as_a_broken_message() {
    // The backend promises 100000 bytes, sends 10, then resets.
    let backend = backend_with(Behaviour::CloseMidBody).await;
    let h = Harness::start(&simple(&[backend.addr()])).await;
    let mut conn = RawConn::connect(h.addr).await.expect("connect");
    conn.send(b"GET /mid HTTP/1.1\r\nHost: a\r\nX-Request-Id: mid-1\r\n\r\n")
        .await
        .expect("send");
    let res = conn
        .read_response(SETTLE)
        .await
        .unwrap_or_else(|e| panic!("no response head: {e:#}"));
    assert_eq!(res.status, 200, "{res:?}");
    assert!(!res.complete, "a body cut short upstream ended cleanly: {res:?}");
    assert!(res.body.len() < 100_000, "{} bytes", res.body.len());
    assert!(
        conn.closed_within(SETTLE).await,
        "the connection stays usable after a broken body"
    );
}

/// A minimal origin that keeps every connection open and answers the first
/// request it receives with `first`, later ones with a valid `200`: unlike
/// the testkit backend's `Raw`, it would happily serve another request on
/// the connection that carried a malformed response.
struct KeepAliveOrigin {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Owns the accept loop, which owns the connection tasks.
    task: JoinHandle<()>,
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

impl KeepAliveOrigin {
    async fn start(first: &'static [u8]) -> KeepAliveOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                connections.spawn(Self::serve(stream, first, served.clone()));
            }
        });
        KeepAliveOrigin { addr, accepted, task }
    }

    async fn serve(mut stream: TcpStream, first: &'static [u8], served: Arc<AtomicUsize>) {
        let mut buf = Vec::new();
        let mut scratch = [0u8; 4096];
        loop {
            // Requests here have no body: a head ends at the empty line.
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..end + 4);
                let reply = if served.fetch_add(1, Ordering::SeqCst) == 0 {
                    first
                } else {
                    OK
                };
                if stream.write_all(reply).await.is_err() {
                    return;
                }
            }
            match stream.read(&mut scratch).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&scratch[..n]),
                _ => return,
            }
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for KeepAliveOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Two requests through levee to a [`KeepAliveOrigin`] whose first answer is
/// `first`: checks the status the client saw for each, and how many
/// upstream connections the two took.
async fn connections_for_two_requests(case: &str, first: &'static [u8], status: u16, connections: usize) {
    let origin = KeepAliveOrigin::start(first).await;
    let h = Harness::start(&simple(&[origin.addr])).await;
    let res = get(&h, "/first", "first-1").await;
    assert_eq!(res.status, status, "{case}: {res:?}");
    if status == 502 {
        assert_error(case, &res, 502, "http_protocol_error", "first-1");
    }
    let res = get(&h, "/second", "second-1").await;
    assert_eq!(res.status, 200, "{case}: {res:?}");
    assert_eq!(res.text(), "ok", "{case}");
    assert_eq!(
        origin.accepted(),
        connections,
        "{case}: upstream connections opened"
    );
}

#[tokio::test]
async fn healthy_upstream_connection_is_reused() {
    // The control for the tests below: a good response leaves a connection
    // that levee reuses, so a second connection there means "not reused".
    connections_for_two_requests("valid", OK, 200, 1).await;
}

#[tokio::test]
async fn connection_that_sent_conflicting_content_lengths_is_not_reused() {
    connections_for_two_requests(
        "conflicting content-lengths",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        502,
        2,
    )
    .await;
}

#[tokio::test]

async fn connection_that_sent_content_length_and_transfer_encoding_is_not_reused() {
    connections_for_two_requests(
        "content-length and transfer-encoding",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        502,
        2,
    )
    .await;
}

#[tokio::test]

async fn upstream_body_failing_before_any_byte_still_gets_a_response() {
    // The head arrives, then the connection closes with none of the 100
    // promised bytes. Nothing has reached the client yet, so it must get
    // levee's 502, or at least the head and a visibly broken body: never
    // a silent close with no response at all.
    let backend = backend_with(Behaviour::Raw(Bytes::from_static(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
    )))
    .await;
    let h = Harness::start(&simple(&[backend.addr()])).await;
    let mut conn = RawConn::connect(h.addr).await.expect("connect");
    conn.send(b"GET /short HTTP/1.1\r\nHost: a\r\nX-Request-Id: short-1\r\n\r\n")
        .await
        .expect("send");
    let res = conn
        .read_response(SETTLE)
        .await
        .unwrap_or_else(|e| panic!("no response at all: {e:#}"));
    if res.status == 200 {
        assert!(!res.complete, "a truncated upstream body ended cleanly: {res:?}");
    } else {
        assert_error("short body", &res, 502, "connection_terminated", "short-1");
    }
}

#[tokio::test]
async fn error_responses_echo_the_request_id_they_were_sent() {
    let backend = backend_with(Behaviour::Reset).await;
    let h = Harness::start(&simple(&[backend.addr()])).await;
    // Several ids, so an id that stuck from an earlier request would show.
    for id in ["echo-a", "echo-b", "0f7c9f0e-6a27-4c43-9a8e-3d0a3f7f1b2c"] {
        let res = get(&h, "/", id).await;
        assert_error(id, &res, 502, "connection_terminated", id);
    }
}
