//! `levee chaos proxy`: the binary serves Toxiproxy's API, proxies through
//! its toxics, and ends cleanly (exit 0, its ports closed) on SIGTERM and
//! on SIGINT. The API and the toxics themselves are tested in
//! `crates/levee-chaos/tests/proxy`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use levee_testkit::{Client, Echo, eventually_async};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Spawned, free_port};

const DEADLINE: Duration = Duration::from_secs(15);

/// The running command, killed by its PID if a test ends early.
struct Chaos {
    child: Spawned,
    api: SocketAddr,
}

impl Chaos {
    async fn start() -> Chaos {
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_levee"))
            .args(["chaos", "proxy", "--seed", "1", "--api"])
            .arg(api.to_string())
            .env("LEVEE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn");
        let chaos = Chaos {
            child: Spawned::new(child),
            api,
        };
        eventually_async(DEADLINE, "the chaos API answers", || async move {
            Client::http1(api)
                .get("/version")
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await;
        chaos
    }

    async fn post(&self, path: &str, body: String) -> levee_testkit::Reply {
        let req = http::Request::post(path)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        Client::http1(self.api).send(req).await.expect("the API answers")
    }

    fn signal(&self, name: &str) {
        self.child.signal(name);
    }

    async fn exit_code(&mut self) -> Option<i32> {
        self.child.exit_code(DEADLINE).await
    }
}

async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Duration {
    let start = Instant::now();
    s.write_all(msg).await.expect("write");
    let mut got = vec![0; msg.len()];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(got, msg);
    start.elapsed()
}

#[tokio::test]
async fn chaos_proxy_serves_toxiproxys_api_and_stops_on_a_signal() {
    let echo = Echo::start().await.expect("echo");
    for signal in ["TERM", "INT"] {
        let mut chaos = Chaos::start().await;
        let body = format!(
            r#"{{"name":"echo","listen":"127.0.0.1:0","upstream":"{}"}}"#,
            echo.addr()
        );
        let made = chaos.post("/proxies", body).await;
        assert_eq!(made.status, 201, "{}", made.text());
        let made: serde_json::Value = serde_json::from_slice(&made.body).expect("json");
        let listen: SocketAddr = made["listen"].as_str().expect("listen").parse().expect("address");
        let mut c = TcpStream::connect(listen).await.expect("connect");
        c.set_nodelay(true).expect("nodelay");
        round_trip(&mut c, b"plain").await;
        let toxic = r#"{"type":"latency","attributes":{"latency":200}}"#.to_string();
        assert_eq!(chaos.post("/proxies/echo/toxics", toxic).await.status, 200);
        let took = round_trip(&mut c, b"slowed").await;
        assert!(took >= Duration::from_millis(200), "{took:?}");

        chaos.signal(signal);
        assert_eq!(chaos.exit_code().await, Some(0), "SIG{signal} ends it cleanly");
        assert!(TcpStream::connect(listen).await.is_err(), "its proxy is closed");
        assert!(TcpStream::connect(chaos.api).await.is_err(), "its API is closed");
    }
}
