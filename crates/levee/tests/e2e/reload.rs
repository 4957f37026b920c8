//! Reloading: validated before the swap, atomic, nothing dropped.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use levee::app::ConfigSource;
use levee_admin::{ReloadOutcome, ReloadSource};
use levee_testkit::{Backend, Behaviour, Client, eventually_async};

use crate::support::*;

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::new(Bytes::new())).expect("request")
}

async fn backend_of(c: &Client) -> String {
    c.get("/")
        .await
        .expect("reply")
        .header("x-backend")
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn api_reload_switches_to_the_new_config() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let h = Harness::start_file(&simple(&[a.addr()]), false).await;
    assert_eq!(backend_of(&h.client()).await, "a");

    std::fs::write(h.config_path(), simple(&[b.addr()])).expect("write");
    let res = api_reload(h.admin).await.expect("reply");
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(res.text().contains("\"status\":\"applied\""), "{}", res.text());
    assert_eq!(backend_of(&h.client()).await, "b");
    assert_eq!(
        h.metric("levee_config_reloads_total{result=\"success\"}").await,
        1.0
    );
}

#[tokio::test]
async fn a_bad_config_changes_nothing_and_reports_every_error() {
    let a = Backend::start("a").await;
    let h = Harness::start_file(&simple(&[a.addr()]), false).await;
    let bad = simple(&[a.addr()]).replace("priority = 0", "priority = -3\nweigth = 2");
    std::fs::write(h.config_path(), &bad).expect("write");
    let res = api_reload(h.admin).await.expect("reply");
    assert_eq!(res.status, 422);
    let text = res.text();
    assert!(text.contains("\"status\":\"rejected\""), "{text}");
    assert!(
        text.contains("upstream.app.region.local.weigth: unknown field"),
        "{text}"
    );

    let bad = simple(&[a.addr()]).replace("priority = 0", "priority = -3");
    std::fs::write(h.config_path(), &bad).expect("write");
    match h.app.reload(ReloadSource::Api).await {
        ReloadOutcome::Rejected { errors } => {
            assert_eq!(
                errors,
                vec!["upstream.app.region.local.priority: must be between 0 and 1000, got -3"]
            );
        }
        other => panic!("accepted: {other:?}"),
    }
    // The running config keeps serving.
    assert_eq!(backend_of(&h.client()).await, "a");
    assert_eq!(
        h.metric("levee_config_reloads_total{result=\"failure\"}").await,
        2.0
    );
    assert_eq!(
        h.metric("levee_config_reloads_total{result=\"success\"}").await,
        0.0
    );
}

#[tokio::test]
async fn a_listener_that_cannot_bind_rejects_the_reload() {
    let a = Backend::start("a").await;
    let h = Harness::start_file(&simple(&[a.addr()]), false).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let next = simple(&[a.addr()]) + &format!("[listener.extra]\naddress = \"127.0.0.1:{port}\"\n");
    std::fs::write(h.config_path(), next).expect("write");
    match h.app.reload(ReloadSource::Api).await {
        ReloadOutcome::Rejected { errors } => assert!(
            errors[0].starts_with("listener.extra: cannot listen on"),
            "{errors:?}"
        ),
        other => panic!("accepted: {other:?}"),
    }
    assert_eq!(backend_of(&h.client()).await, "a");
}

#[tokio::test]
async fn listeners_are_added_and_removed_by_reload() {
    let a = Backend::start("a").await;
    let h = Harness::start_file(&simple(&[a.addr()]), false).await;
    let next = simple(&[a.addr()]) + "[listener.extra]\naddress = \"127.0.0.1:0\"\n";
    std::fs::write(h.config_path(), &next).expect("write");
    assert!(matches!(
        h.app.reload(ReloadSource::Api).await,
        ReloadOutcome::Applied { .. }
    ));
    let extra = h.app.listener_addr("extra").expect("extra listener");
    assert_eq!(Client::http1(extra).get("/").await.expect("reply").status, 200);
    // The main listener kept its socket (same configured address).
    assert_eq!(h.app.listener_addr("main"), Some(h.addr));

    std::fs::write(h.config_path(), simple(&[a.addr()])).expect("write");
    assert!(matches!(
        h.app.reload(ReloadSource::Api).await,
        ReloadOutcome::Applied { .. }
    ));
    assert_eq!(h.app.listener_addr("extra"), None);
    eventually_async(SETTLE, "removed listener refuses connections", || async {
        tokio::net::TcpStream::connect(extra).await.is_err()
    })
    .await;
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_old_config() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.set_behaviour(Behaviour::Delay(Duration::from_millis(800)));
    let h = Harness::start_file(&simple(&[a.addr()]), false).await;
    let slow = tokio::spawn({
        let c = h.client();
        async move { c.get("/slow").await }
    });
    a.ledger(); // the slow request is on its way to `a`
    levee_testkit::eventually(SETTLE, "slow request reached a", || a.requests_in_flight() == 1).await;
    std::fs::write(h.config_path(), simple(&[b.addr()])).expect("write");
    assert!(matches!(
        h.app.reload(ReloadSource::Api).await,
        ReloadOutcome::Applied { .. }
    ));
    assert_eq!(backend_of(&h.client()).await, "b");
    let slow = slow.await.expect("join").expect("reply");
    assert_eq!(slow.status, 200);
    assert_eq!(slow.header("x-backend"), Some("a"));
}

#[tokio::test]
async fn the_file_watcher_reloads_on_change() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let h = Harness::start_file(&simple(&[a.addr()]), true).await;
    // Replace the file the way editors and config tools do: write then rename.
    let tmp = h.config_path().with_extension("tmp");
    std::fs::write(&tmp, simple(&[b.addr()])).expect("write");
    std::fs::rename(&tmp, h.config_path()).expect("rename");
    let c = h.client();
    eventually_async(SETTLE, "traffic moves to b", || {
        let c = c.clone();
        async move { backend_of(&c).await == "b" }
    })
    .await;
}

#[tokio::test]
async fn twenty_reloads_under_load_lose_nothing() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let config_a = simple(&[a.addr(), b.addr()]);
    let config_b = config(
        &[("local", 0, &[a.addr(), b.addr()])],
        "balance = \"least_request\"",
        "",
    );
    let h = Harness::start_file(&config_a, false).await;
    let client = h.client();
    let load = tokio::spawn(async move {
        levee_testkit::load(&client, 3_000, 16, Duration::from_secs(60), |i| {
            get(&format!("/r/{i}"))
        })
        .await
    });
    for i in 0..20 {
        let next = if i % 2 == 0 { &config_b } else { &config_a };
        std::fs::write(h.config_path(), next).expect("write");
        let outcome = h.app.reload(ReloadSource::Api).await;
        assert!(matches!(outcome, ReloadOutcome::Applied { .. }), "{outcome:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = load.await.expect("load");
    assert_eq!(report.sent, 3_000);
    assert!(
        report.errors.is_empty(),
        "{:?}",
        &report.errors[..report.errors.len().min(5)]
    );
    assert_eq!(report.ok_2xx, 3_000, "{:?}", report.statuses);
    assert_eq!(
        a.ledger().len() + b.ledger().len(),
        3_000,
        "every request reached an origin once"
    );
    assert_eq!(
        h.metric("levee_config_reloads_total{result=\"success\"}").await,
        20.0
    );
}

#[tokio::test]
async fn a_fixed_config_has_nothing_to_reload() {
    let a = Backend::start("a").await;
    let h = Harness::start(&simple(&[a.addr()])).await;
    assert!(matches!(
        h.app.reload(ReloadSource::Api).await,
        ReloadOutcome::Unavailable { .. }
    ));
    let _ = ConfigSource::Fixed;
}

#[tokio::test]
async fn restart_only_settings_are_reported_until_restart() {
    let a = Backend::start("a").await;
    let h = Harness::start_file(&simple(&[a.addr()]), false).await;
    let moved = simple(&[a.addr()]).replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.2:0\"",
    );
    std::fs::write(h.config_path(), &moved).expect("write");
    for _ in 0..2 {
        match h.app.reload(ReloadSource::Api).await {
            ReloadOutcome::Applied { warnings } => {
                assert_eq!(warnings.len(), 1, "{warnings:?}");
                assert!(
                    warnings[0].starts_with("admin.listen: still 127.0.0.1:0 until restart"),
                    "{warnings:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
