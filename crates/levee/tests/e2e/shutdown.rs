//! Shutdown drains: in-flight exchanges finish, new connections are
//! refused, idle connections close at once, and there is a deadline.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use levee_testkit::{Backend, Behaviour, Client, Reply, eventually, eventually_async};

use crate::support::*;

/// Makes the origin answer after 1.5 s and sends it `GET /slow`; returns
/// once the request is in flight at the origin.
async fn slow_request(c: Client, b: &Backend) -> tokio::task::JoinHandle<anyhow::Result<Reply>> {
    b.set_behaviour(Behaviour::Delay(Duration::from_millis(1500)));
    let slow = tokio::spawn(async move { c.get("/slow").await });
    eventually(SETTLE, "the slow request reached the origin", || {
        b.requests_in_flight() == 1
    })
    .await;
    slow
}

#[tokio::test]
async fn a_slow_request_in_flight_completes() {
    let b = Backend::start("b").await;
    let h = Harness::start(&simple(&[b.addr()])).await;
    let slow = slow_request(h.client(), &b).await;
    let addr = h.addr;
    let Harness { app, .. } = h;
    let drained = tokio::spawn(app.shutdown());
    eventually_async(SETTLE, "new connections are refused", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    let reply = slow
        .await
        .expect("join")
        .expect("the slow request got its response");
    assert_eq!(reply.status, 200);
    assert!(drained.await.expect("join"), "drained within the deadline");
}

#[tokio::test]
async fn idle_keep_alive_connections_close_at_once() {
    let b = Backend::start("b").await;
    let h = Harness::start(&simple(&[b.addr()])).await;
    let mut conn = levee_testkit::RawConn::connect(h.addr).await.expect("connect");
    conn.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("send");
    assert_eq!(conn.read_response(SETTLE).await.expect("response").status, 200);
    let Harness { app, .. } = h;
    let drained = tokio::spawn(app.shutdown());
    // The keep-alive timeout is 60 s; the connection closes long before.
    assert!(conn.closed_within(SETTLE).await);
    assert!(drained.await.expect("join"));
}

#[tokio::test]
async fn the_drain_has_a_deadline() {
    let b = Backend::start("b").await;
    b.set_behaviour(Behaviour::Hang);
    let toml = simple(&[b.addr()]) + "[server]\ndrain_timeout = \"300ms\"\n";
    let h = Harness::start(&toml).await;
    let stuck = tokio::spawn({
        let c = h.client().with_timeout(SETTLE);
        async move { c.get("/stuck").await }
    });
    eventually(SETTLE, "the request reached the origin", || {
        b.requests_in_flight() == 1
    })
    .await;
    let Harness { app, .. } = h;
    assert!(
        !app.shutdown().await,
        "a request still in flight at the deadline is reported"
    );
    stuck.abort();
}

/// The real binary, killed by PID if a test fails before it exits.
struct Levee {
    child: Spawned,
    addr: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Levee {
    async fn start(upstream: SocketAddr) -> Levee {
        let (port, admin_port) = (free_port(), free_port());
        let toml = simple(&[upstream])
            .replace(
                "[admin]\nlisten = \"127.0.0.1:0\"",
                &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\""),
            )
            .replace(
                "[listener.main]\naddress = \"127.0.0.1:0\"",
                &format!("[listener.main]\naddress = \"127.0.0.1:{port}\""),
            );
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("levee.toml");
        std::fs::write(&path, toml).expect("write");
        let child = Command::new(env!("CARGO_BIN_EXE_levee"))
            .args(["run", "--no-watch", "-c"])
            .arg(&path)
            .env("LEVEE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn");
        let levee = Levee {
            child: Spawned::new(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            _dir: dir,
            path,
        };
        let admin = levee.admin;
        eventually_async(SETTLE, "levee is ready", || async move {
            Client::http1(admin)
                .get("/readyz")
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await;
        levee
    }

    fn signal(&self, name: &str) {
        self.child.signal(name);
    }

    /// Waits for the process to exit; returns its exit code.
    async fn exit_code(&mut self) -> Option<i32> {
        self.child.exit_code(Duration::from_secs(40)).await
    }
}

#[tokio::test]
async fn sigterm_drains_then_exits_zero() {
    let b = Backend::start("b").await;
    let mut levee = Levee::start(b.addr()).await;
    let slow = slow_request(Client::http1(levee.addr), &b).await;
    levee.signal("TERM");
    let admin = levee.admin;
    eventually_async(SETTLE, "readiness turns off while draining", || async move {
        Client::http1(admin)
            .get("/readyz")
            .await
            .is_ok_and(|r| r.status == 503)
    })
    .await;
    let reply = slow.await.expect("join").expect("the slow request completed");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "b GET /slow\n");
    assert_eq!(levee.exit_code().await, Some(0));
}

#[tokio::test]
async fn sighup_reloads_the_file() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let mut levee = Levee::start(a.addr()).await;
    let c = Client::http1(levee.addr);
    assert_eq!(c.get("/").await.expect("reply").header("x-backend"), Some("a"));
    let text = std::fs::read_to_string(&levee.path).expect("read");
    std::fs::write(
        &levee.path,
        text.replace(&a.addr().to_string(), &b.addr().to_string()),
    )
    .expect("write");
    levee.signal("HUP");
    eventually_async(SETTLE, "traffic moves to b", || {
        let c = c.clone();
        async move { c.get("/").await.is_ok_and(|r| r.header("x-backend") == Some("b")) }
    })
    .await;
    levee.signal("TERM");
    assert_eq!(levee.exit_code().await, Some(0));
}

#[tokio::test]
async fn a_reload_while_draining_does_not_reopen_listeners() {
    let b = Backend::start("b").await;
    let h = Harness::start_file(&simple(&[b.addr()]), false).await;
    let slow = slow_request(h.client(), &b).await;
    let (addr, admin) = (h.addr, h.admin);
    let Harness { app, dir, .. } = h;
    let drained = tokio::spawn(app.shutdown());
    eventually_async(SETTLE, "new connections are refused", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    let res = api_reload(admin).await.expect("admin answers while draining");
    assert_ne!(res.status, 200, "{}", res.text());
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener stayed closed"
    );
    assert_eq!(slow.await.expect("join").expect("reply").status, 200);
    assert!(drained.await.expect("join"));
    drop(dir);
}
