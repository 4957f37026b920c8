//! Starting levee for a test.

use std::net::SocketAddr;
use std::time::Duration;

use levee::{App, ConfigSource};
use levee_testkit::{Client, Reply};

/// A generous deadline for things that settle asynchronously; the tests
/// never rely on timing beyond this upper bound.
pub const SETTLE: Duration = Duration::from_secs(10);

/// A running gateway under test.
pub struct Harness {
    pub app: App,
    /// The "main" listener's address.
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The config file, for tests that reload (kept alive with the harness).
    pub dir: Option<tempfile::TempDir>,
}

impl Harness {
    /// Starts levee with a config given as TOML.
    pub async fn start(toml: &str) -> Harness {
        let config =
            levee_config::parse(toml).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{toml}"));
        let app = App::start(config, ConfigSource::Fixed, None)
            .await
            .expect("levee starts");
        Harness::around(app, None)
    }

    /// Starts levee from a config file, so it can be reloaded.
    pub async fn start_file(toml: &str, watch: bool) -> Harness {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("levee.toml");
        std::fs::write(&path, toml).expect("write config");
        let config = levee_config::load(&path).expect("valid config");
        let app = App::start(config, ConfigSource::File { path, watch }, None)
            .await
            .expect("levee starts");
        Harness::around(app, Some(dir))
    }

    fn around(app: App, dir: Option<tempfile::TempDir>) -> Harness {
        let addr = app.listener_addr("main").expect("listener main");
        let admin = app.admin_addr();
        Harness {
            app,
            addr,
            admin,
            dir,
        }
    }

    pub fn client(&self) -> Client {
        Client::http1(self.addr)
    }

    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir
            .as_ref()
            .expect("started from a file")
            .path()
            .join("levee.toml")
    }

    /// The admin listener's /metrics text.
    pub async fn metrics(&self) -> String {
        Client::http1(self.admin)
            .get("/metrics")
            .await
            .expect("metrics")
            .text()
    }

    /// Waits (up to [`SETTLE`]) until one metric series has this value.
    pub async fn eventually_metric(&self, series: &str, value: f64) {
        let what = format!("{series} to be {value}");
        levee_testkit::eventually_async(
            SETTLE,
            &what,
            || async move { self.metric(series).await == value },
        )
        .await;
    }

    /// The `kind` events in the admin API's recent events, oldest first.
    pub async fn events(&self, kind: &str) -> Vec<serde_json::Value> {
        let r = Client::http1(self.admin)
            .get("/api/v1/events/recent")
            .await
            .expect("recent events");
        let all: Vec<serde_json::Value> = serde_json::from_slice(&r.body).expect("a JSON array");
        all.into_iter().filter(|e| e["kind"] == kind).collect()
    }

    /// The value of one metric series (exact line prefix), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        levee_testkit::metric_value(&text, series)
    }
}

/// A config with listener "main" and admin on ephemeral ports, one route
/// "all" to upstream "app" with the given regions, plus `extra` TOML (more
/// upstream keys go first, since they must precede the region tables).
pub fn config(regions: &[(&str, u32, &[SocketAddr])], upstream_keys: &str, extra: &str) -> String {
    let mut t = String::from(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[listener.main]\naddress = \"127.0.0.1:0\"\n\n[[route]]\nname = \"all\"\nupstream = \"app\"\n\n[upstream.app]\n",
    );
    t.push_str(upstream_keys);
    t.push('\n');
    for (name, priority, endpoints) in regions {
        let list: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
        t.push_str(&format!(
            "[upstream.app.region.{name}]\npriority = {priority}\nendpoints = [{}]\n",
            list.join(", ")
        ));
    }
    t.push_str(extra);
    t
}

/// One region "local" with these endpoints.
pub fn simple(endpoints: &[SocketAddr]) -> String {
    config(&[("local", 0, endpoints)], "", "")
}

/// `POST /api/v1/reload` on an admin listener.
pub async fn api_reload(admin: SocketAddr) -> anyhow::Result<Reply> {
    let req = http::Request::post("/api/v1/reload")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    Client::http1(admin).send(req).await
}

/// A free loopback port (bound and released: for a process that must be
/// told its port before it starts).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A child process of a test: signalled and waited for by its PID, and
/// killed by it if the test ends first.
pub struct Spawned(Option<std::process::Child>);

impl Spawned {
    pub fn new(child: std::process::Child) -> Spawned {
        Spawned(Some(child))
    }

    /// Sends signal `name` (`TERM`, `INT`, `HUP`) with `kill`.
    pub fn signal(&self, name: &str) {
        let pid = self.0.as_ref().expect("running").id().to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits up to `within` for the process to exit: its exit code, or
    /// `None` (then it is killed) when it did not.
    pub async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let mut child = self.0.take().expect("running");
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
