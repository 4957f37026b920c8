//! Bodies stream: a gigabyte each way passes through levee while its
//! memory stays flat, and uploads and downloads can run at once.

use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use levee_testkit::{Backend, Client, pattern_sha256};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const GIB: u64 = 1 << 30;
const CHUNK: usize = 64 * 1024;

/// `total` bytes of the testkit's pattern, generated chunk by chunk.
struct PatternBody {
    remaining: u64,
    chunk: Bytes,
}

impl PatternBody {
    fn new(total: u64) -> PatternBody {
        // The pattern repeats every 16 bytes, so every 64 KiB chunk is the same.
        PatternBody {
            remaining: total,
            chunk: Bytes::from(levee_testkit::pattern_bytes(CHUNK)),
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(CHUNK as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

async fn connect<B>(addr: std::net::SocketAddr) -> http1::SendRequest<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    sender
}

/// Uploads `total` bytes; returns the origin's hash of what it received.
async fn upload(addr: std::net::SocketAddr, total: u64) -> String {
    let mut sender = connect(addr).await;
    let req = Request::post("/upload")
        .header("host", "localhost")
        .body(PatternBody::new(total))
        .expect("request");
    let res = sender.send_request(req).await.expect("response");
    assert_eq!(res.status(), 200);
    let sha = res.headers()["x-body-sha256"]
        .to_str()
        .expect("ascii")
        .to_string();
    let _ = res.into_body().collect().await;
    sha
}

/// Downloads `/bytes/<total>`, hashing as it streams.
async fn download(addr: std::net::SocketAddr, total: u64) -> (u64, String) {
    let mut sender = connect::<http_body_util::Empty<Bytes>>(addr).await;
    let req = Request::get(format!("/bytes/{total}"))
        .header("host", "localhost")
        .body(http_body_util::Empty::new())
        .expect("request");
    let res = sender.send_request(req).await.expect("response");
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let mut hash = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body frame").into_data() {
            len += data.len() as u64;
            hash.update(&data);
        }
    }
    (len, hex(&hash.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Resident and peak resident memory of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("field")
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A levee process, killed by PID when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_each_way_with_flat_memory() {
    let backend = Backend::start("origin").await;
    let dir = tempfile::tempdir().expect("dir");
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
    let port = probe.local_addr().expect("addr").port();
    drop(probe);
    let toml = simple(&[backend.addr()]).replace(
        "[listener.main]\naddress = \"127.0.0.1:0\"",
        &format!("[listener.main]\naddress = \"127.0.0.1:{port}\""),
    );
    let path = dir.path().join("levee.toml");
    std::fs::write(&path, toml).expect("write");
    let child = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["run", "--no-watch", "-c"])
        .arg(&path)
        .env("LEVEE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("levee starts");
    let levee = Process(child);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    levee_testkit::eventually_async(SETTLE, "levee listens", || async {
        Client::http1(addr).get("/").await.is_ok()
    })
    .await;
    // Warm up the pools and the allocator before the baseline.
    for _ in 0..20 {
        upload(addr, 256 * 1024).await;
        download(addr, 256 * 1024).await;
    }
    let (baseline, _) = memory_kib(levee.0.id());

    let sha = upload(addr, GIB).await;
    assert_eq!(sha, pattern_sha256(GIB), "the upload arrived intact");
    let (len, sha) = download(addr, GIB).await;
    assert_eq!(len, GIB);
    assert_eq!(sha, pattern_sha256(GIB), "the download arrived intact");

    let (_, peak) = memory_kib(levee.0.id());
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "levee memory: baseline RSS {baseline} KiB, peak RSS {peak} KiB, growth {growth} KiB over 1 GiB up + 1 GiB down"
    );
    assert!(
        growth < 8 * 1024,
        "levee's peak memory grew by {growth} KiB while streaming"
    );
}

#[tokio::test]
async fn upload_and_download_at_once_do_not_deadlock() {
    // /echo answers while the upload is still arriving: levee must keep
    // reading the request while it writes the response.
    let backend = Backend::start("origin").await;
    let h = Harness::start(&simple(&[backend.addr()])).await;
    let mut sender = connect(h.addr).await;
    let total = 32 * 1024 * 1024;
    let req = Request::post("/echo")
        .header("host", "localhost")
        .body(PatternBody::new(total))
        .expect("request");
    let res = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
        .await
        .expect("in time")
        .expect("response");
    let mut body = res.into_body();
    let mut hash = Sha256::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            len += data.len() as u64;
            hash.update(&data);
        }
    }
    assert_eq!(len, total);
    assert_eq!(hex(&hash.finalize()), pattern_sha256(total));
}

#[tokio::test]
async fn an_http2_client_that_takes_no_data_is_reset_after_the_body_timeout() {
    let backend = Backend::start("origin").await;
    let h = Harness::start(&(simple(&[backend.addr()]) + "[server]\nbody_timeout = \"1s\"\n")).await;
    let stream = TcpStream::connect(h.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(stream))
        .await
        .expect("handshake");
    // The connection keeps running (and answering PINGs); only the stream stalls.
    tokio::spawn(conn);
    let total = 1_000_000_000u64;
    let req = Request::get(format!("http://localhost/bytes/{total}"))
        .body(http_body_util::Empty::new())
        .expect("request");
    let res = sender.send_request(req).await.expect("response");
    assert_eq!(res.status(), 200);
    // Nothing is read, so the stream's flow-control window never reopens.
    levee_testkit::eventually(SETTLE, "the origin's exchange is released", || {
        backend.requests_in_flight() == 0
    })
    .await;
    let body = tokio::time::timeout(SETTLE, res.into_body().collect())
        .await
        .expect("the stream ends");
    assert!(body.is_err(), "the stream was reset, not completed");
}

#[tokio::test]
async fn request_timeout_cuts_off_a_body_the_client_reads_slowly() {
    // The origin is fast and the client slow: levee mostly waits on the
    // client, and the route's deadline must still end the exchange.
    let backend = Backend::start("origin").await;
    let toml = simple(&[backend.addr()]).replace(
        "upstream = \"app\"\n",
        "upstream = \"app\"\nrequest_timeout = \"1s\"\n",
    );
    let h = Harness::start(&toml).await;
    let total = 2_000_000_000u64;
    let mut stream = TcpStream::connect(h.addr).await.expect("connect");
    stream
        .write_all(format!("GET /bytes/{total} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut received = 0u64;
    let mut scratch = vec![0u8; 16 * 1024];
    let ended = tokio::time::timeout(SETTLE, async {
        loop {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received += n as u64,
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(ended.is_ok(), "the response was cut off at the deadline");
    assert!(received < total, "{received} bytes");
}

#[tokio::test]
async fn a_broken_close_delimited_response_ends_in_a_reset() {
    // An HTTP/1.0 client reads a body of unknown length until the close:
    // a clean close would make a truncated body look whole.
    let backend = Backend::start("origin").await;
    backend.set_behaviour(levee_testkit::Behaviour::Raw(Bytes::from_static(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )));
    let h = Harness::start(&simple(&[backend.addr()])).await;
    let mut stream = TcpStream::connect(h.addr).await.expect("connect");
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("send");
    let mut received = Vec::new();
    let end = tokio::time::timeout(SETTLE, async {
        let mut scratch = [0u8; 4096];
        loop {
            match stream.read(&mut scratch).await {
                Ok(0) => return Ok(()),
                Ok(n) => received.extend_from_slice(&scratch[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the connection ends");
    let error = end.expect_err("a reset, not a clean end");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
}
