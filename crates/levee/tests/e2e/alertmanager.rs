//! A real Alertmanager (Debian's `prometheus-alertmanager`; `.ci/run`
//! installs it) on loopback: levee runs the reference topology
//! (examples/two-regions.toml, on free ports) with an `alertmanager`
//! notifier; the primary region fails; Alertmanager's own API must show
//! the failover alert with levee's labels, and stop showing it once the
//! region is back. Alertmanager routes to a recording webhook, which must
//! get its firing and resolved notifications.
//!
//! The binary missing is a failure, not a skip: CI installs it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use levee_testkit::{Backend, Client, Receiver};
use serde_json::Value;
use tokio::time::Instant;

use crate::support::*;

const BINARY: &str = "/usr/bin/prometheus-alertmanager";

/// A running Alertmanager, killed by its PID when dropped.
struct Alertmanager {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts Alertmanager with one route to `webhook`, on a free port,
    /// clustering off, and waits until it is ready.
    async fn start(webhook: &str) -> Alertmanager {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: install the Debian package prometheus-alertmanager (.ci/run does)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: recorder\n  group_by: ['alertname']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
                 receivers:\n  - name: recorder\n    webhook_configs:\n      - url: '{webhook}'\n        send_resolved: true\n"
            ),
        )
        .expect("write alertmanager.yml");
        // A free port from the OS, handed over: a clash would fail loudly.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(BINARY)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            // Empty: no clustering, no gossip port.
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {BINARY}: {e}"));
        let am = Alertmanager {
            child,
            addr,
            _dir: dir,
        };
        levee_testkit::eventually_async(SETTLE, "Alertmanager ready", || async {
            Client::http1(addr)
                .get("/-/ready")
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await;
        am
    }

    /// `GET /api/v2/alerts`: the alerts Alertmanager holds as active
    /// (resolved ones, their `endsAt` past, are not listed).
    async fn alerts(&self) -> Vec<Value> {
        let Ok(reply) = Client::http1(self.addr).get("/api/v2/alerts").await else {
            return Vec::new();
        };
        serde_json::from_slice::<Value>(&reply.body)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    async fn alert(&self, name: &str) -> Option<Value> {
        self.alerts()
            .await
            .into_iter()
            .find(|a| a["labels"]["alertname"] == name)
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        // By its PID, never by name.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// examples/two-regions.toml on free ports, with an `alertmanager` notifier.
fn reference_topology(primary: &[SocketAddr], secondary: &[SocketAddr], alertmanager: SocketAddr) -> String {
    let mut text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/two-regions.toml"),
    )
    .expect("examples/two-regions.toml");
    let ports = ["9101", "9102", "9103", "9201", "9202"];
    for (port, addr) in ports.iter().zip(primary.iter().chain(secondary)) {
        text = text.replace(&format!("127.0.0.1:{port}"), &addr.to_string());
    }
    text = text
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("[listener.public]", "[listener.main]");
    text.push_str(&format!(
        "\n[alerting.notifier.alertmanager]\nkind = \"alertmanager\"\nurl = \"http://{alertmanager}\"\nresend_interval = \"5s\"\n"
    ));
    text
}

fn webhook_alerts(body: &[u8], status: &str) -> Vec<Value> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    if v["status"] != status {
        return Vec::new();
    }
    v["alerts"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn alertmanager_receives_the_failover_alert_and_its_resolution() {
    let recorder = Receiver::start().await.expect("receiver");
    let am = Alertmanager::start(&recorder.url("/am")).await;
    let mut primary = Vec::new();
    for name in ["primary-1", "primary-2", "primary-3"] {
        primary.push(Backend::start(name).await);
    }
    let mut secondary = Vec::new();
    for name in ["secondary-1", "secondary-2"] {
        secondary.push(Backend::start(name).await);
    }
    let addrs = |b: &[Backend]| b.iter().map(Backend::addr).collect::<Vec<_>>();
    let toml = reference_topology(&addrs(&primary), &addrs(&secondary), am.addr);
    let h = Harness::start(&toml).await;
    // Settled: every endpoint checked healthy, nothing firing.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(am.alert("app-failover").await.is_none());

    let failed_at = Instant::now();
    for b in &primary {
        b.kill().await;
    }
    let alert = loop {
        if let Some(a) = am.alert("app-failover").await {
            break a;
        }
        assert!(
            failed_at.elapsed() < SETTLE,
            "app-failover not in Alertmanager's API after {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let in_api = failed_at.elapsed();
    println!(
        "region failure -> app-failover in Alertmanager's API: {} ms (checks every 1 s, fall 2; evaluation every 1 s)",
        in_api.as_millis()
    );
    assert_eq!(alert["labels"]["upstream"], "app", "{alert:#}");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["status"]["state"], "active");
    assert!(
        alert["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("app: ") && s.contains("failed over from the primary region")),
        "{alert:#}"
    );
    assert!(
        alert["generatorURL"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://127.0.0.1:") && u.ends_with("/#alerts")),
        "{alert:#}"
    );
    // Each dead endpoint is an alert of its own.
    levee_testkit::eventually_async(SETTLE, "three endpoint-down alerts", || async {
        am.alerts()
            .await
            .iter()
            .filter(|a| a["labels"]["alertname"] == "app-endpoint-down")
            .count()
            == 3
    })
    .await;
    // Alertmanager told its own receiver.
    let firing = recorder
        .wait_until(SETTLE, "Alertmanager's firing notification", |r| {
            webhook_alerts(&r.body, "firing")
                .iter()
                .any(|a| a["labels"]["alertname"] == "app-failover")
        })
        .await;
    println!(
        "region failure -> Alertmanager's own webhook notification: {} ms (its group_wait 1 s)",
        firing.at.duration_since(failed_at.into_std()).as_millis()
    );
    // Traffic is on the secondary region meanwhile.
    let reply = h.client().get("/").await.expect("reply");
    assert!(
        reply
            .header("x-backend")
            .is_some_and(|b| b.starts_with("secondary")),
        "{:?}",
        reply.header("x-backend")
    );

    // Restored: after the failback (5 s) and its ramp (10 s), the alert is
    // resolved; Alertmanager no longer lists it and tells its receiver.
    let restored_at = Instant::now();
    for b in &primary {
        b.restart().await.expect("restart");
    }
    levee_testkit::eventually_async(
        Duration::from_secs(40),
        "app-failover gone from Alertmanager's active alerts",
        || async { am.alert("app-failover").await.is_none() },
    )
    .await;
    println!(
        "region restored -> app-failover resolved in Alertmanager: {} ms (failback_after 5 s, ramp 10 s)",
        restored_at.elapsed().as_millis()
    );
    recorder
        .wait_until(SETTLE, "Alertmanager's resolved notification", |r| {
            webhook_alerts(&r.body, "resolved")
                .iter()
                .any(|a| a["labels"]["alertname"] == "app-failover" && a["status"] == "resolved")
        })
        .await;
    assert!(
        am.alerts()
            .await
            .iter()
            .all(|a| a["labels"]["alertname"] != "app-endpoint-down"),
        "the endpoints' alerts resolved too"
    );
    let notifiers: Value = serde_json::from_slice(
        &Client::http1(h.admin)
            .get("/api/v1/notifiers")
            .await
            .expect("notifiers")
            .body,
    )
    .expect("JSON");
    assert_eq!(notifiers[0]["name"], "alertmanager");
    assert_eq!(notifiers[0]["failed"], 0, "{notifiers}");
    assert!(notifiers[0]["sent"].as_u64() >= Some(2), "{notifiers}");
}
