//! A chaos proxy server in the test's process, a raw HTTP/1.1 client for
//! its API, and socket helpers with deadlines.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Every wait in these tests is bounded by this at most.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The API server, stopped (proxies and all) when dropped.
pub struct Server {
    pub api: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let options = levee_chaos::Options { seed: Some(7) };
    tokio::spawn(levee_chaos::serve(listener, options, stop.clone()));
    Server { api, stop }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// One request on its own connection, read to the end.
pub async fn call(api: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Reply {
    call_as(api, method, path, body, "levee-tests").await
}

pub async fn call_as(api: SocketAddr, method: &str, path: &str, body: Option<&str>, agent: &str) -> Reply {
    let request = async {
        let mut s = TcpStream::connect(api).await.unwrap();
        let body = body.unwrap_or("");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {api}\r\nUser-Agent: {agent}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    };
    let text = tokio::time::timeout(DEADLINE, request)
        .await
        .expect("the API answers in time");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

pub async fn get(api: SocketAddr, path: &str) -> Reply {
    call(api, "GET", path, None).await
}

pub async fn post(api: SocketAddr, path: &str, body: &str) -> Reply {
    call(api, "POST", path, Some(body)).await
}

/// Makes a proxy on a free loopback port in front of `upstream`; returns
/// the address it listens on.
pub async fn proxy(api: SocketAddr, name: &str, upstream: SocketAddr) -> SocketAddr {
    let body = format!(r#"{{"name":"{name}","listen":"127.0.0.1:0","upstream":"{upstream}"}}"#);
    let r = post(api, "/proxies", &body).await;
    assert_eq!(r.status, 201, "{r:?}");
    r.json()["listen"].as_str().unwrap().parse().unwrap()
}

pub async fn add_toxic(api: SocketAddr, proxy: &str, toxic: Value) {
    let r = post(api, &format!("/proxies/{proxy}/toxics"), &toxic.to_string()).await;
    assert_eq!(r.status, 200, "{r:?}");
}

pub async fn remove_toxic(api: SocketAddr, proxy: &str, toxic: &str) {
    let r = call(api, "DELETE", &format!("/proxies/{proxy}/toxics/{toxic}"), None).await;
    assert_eq!(r.status, 204, "{r:?}");
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    let s = tokio::time::timeout(DEADLINE, TcpStream::connect(addr)).await;
    let s = s.expect("connects in time").expect("connects");
    s.set_nodelay(true).unwrap();
    s
}

/// Reads exactly `n` bytes, within the deadline.
pub async fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    let r = tokio::time::timeout(DEADLINE, s.read_exact(&mut buf)).await;
    r.expect("the bytes arrive in time").expect("the bytes arrive");
    buf
}

/// Reads until the end of the stream (or an error), within the deadline:
/// what arrived, and how it ended.
pub async fn read_to_end(s: &mut TcpStream) -> (Vec<u8>, std::io::Result<()>) {
    let mut out = Vec::new();
    let r = tokio::time::timeout(DEADLINE, async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    (out, r.expect("the stream ends in time"))
}

/// A round trip of `msg` through an echo behind the proxy: its time.
pub async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Duration {
    let start = std::time::Instant::now();
    s.write_all(msg).await.unwrap();
    assert_eq!(read_exact(s, msg.len()).await, msg);
    start.elapsed()
}
