//! Injected faults: `[route.fault]`'s delay, abort (HTTP and gRPC) and
//! response rate; the fault headers, honoured only from the addresses
//! trusted for them; faults switched at run time through the admin API;
//! and every injected fault counted, logged and told apart from a real
//! failure.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use levee_testkit::{Backend, Client, Reply};
use serde_json::Value;
use tokio::time::Instant;

use crate::support::*;

fn with_fault(backend: &Backend, fault: &str) -> String {
    config(
        &[("local", 0, &[backend.addr()])],
        "",
        &format!("[route.fault]\n{fault}"),
    )
}

async fn get_with(h: &Harness, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::get(path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::new())).expect("request");
    h.client().send(req).await.expect("reply")
}

async fn admin(h: &Harness, method: &str, path: &str, body: &str) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let reply = Client::http1(h.admin).send(req).await.expect("reply");
    let value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    (reply.status, value)
}

#[tokio::test]
async fn an_injected_abort_is_never_forwarded_and_never_mistaken_for_a_real_one() {
    let app = Backend::start("app").await;
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("access.log");
    let fault = format!(
        "abort_status = 503\nabort_percent = 50\n\n[access_log]\nenabled = true\npath = {:?}\nfields = [\"path\", \"status\", \"proxy_status\", \"fault\"]\n",
        log.display().to_string()
    );
    let h = Harness::start(&with_fault(&app, &fault)).await;
    let (mut aborted, mut passed) = (0, 0);
    for i in 0..60 {
        let res = get_with(&h, &format!("/a/{i}"), &[]).await;
        match res.status {
            503 => {
                aborted += 1;
                let status = res.header("proxy-status").unwrap_or_default();
                assert!(status.contains("error=fault_injected"), "{status}");
            }
            200 => passed += 1,
            other => panic!("{other}: {}", res.text()),
        }
    }
    assert!(aborted > 5 && passed > 5, "half aborted: {aborted} of 60");
    assert_eq!(
        app.ledger().len(),
        passed,
        "no aborted request reached the backend"
    );
    let counted = h
        .metric("levee_route_faults_injected_total{route=\"all\",kind=\"abort\"}")
        .await;
    assert_eq!(counted, f64::from(aborted));
    // The injected 503s are levee's, under their own cause, not an outage's.
    let generated = h
        .metric("levee_http_generated_responses_total{cause=\"fault_injected\"}")
        .await;
    assert_eq!(generated, f64::from(aborted));
    // And each is marked in the access log.
    let lines = levee_testkit::eventually_async(SETTLE, "60 access log lines", || async {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() == 60)
    });
    lines.await;
    let text = std::fs::read_to_string(&log).expect("log");
    let marked = text.lines().filter(|l| l.contains("\"fault\":\"abort\"")).count();
    assert_eq!(marked, aborted as usize, "{text}");
    assert!(
        text.lines()
            .filter(|l| l.contains("\"status\":200"))
            .all(|l| l.contains("\"fault\":null"))
    );
}

#[tokio::test]
async fn a_grpc_request_is_aborted_with_a_grpc_status() {
    let app = Backend::start("app").await;
    let h = Harness::start(&with_fault(&app, "abort_status = 503\nabort_grpc_status = 14\n")).await;
    let res = get_with(&h, "/pkg.Service/Call", &[("content-type", "application/grpc")]).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("grpc-status"), Some("14"));
    assert_eq!(res.header("content-type"), Some("application/grpc"));
    assert!(res.body.is_empty());
    let plain = get_with(&h, "/page", &[]).await;
    assert_eq!(plain.status, 503, "not gRPC: the HTTP status");
    assert_eq!(app.ledger().len(), 0);
}

#[tokio::test]
async fn a_delay_holds_the_request_before_it_is_forwarded() {
    let app = Backend::start("app").await;
    let h = Harness::start(&with_fault(&app, "delay = \"400ms\"\n")).await;
    let started = Instant::now();
    let res = get_with(&h, "/slow", &[]).await;
    assert_eq!(res.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    let counted = h
        .metric("levee_route_faults_injected_total{route=\"all\",kind=\"delay\"}")
        .await;
    assert_eq!(counted, 1.0);
}

#[tokio::test]
async fn a_response_rate_paces_the_body_and_keeps_it_whole() {
    let app = Backend::start("app").await;
    let h = Harness::start(&with_fault(&app, "response_rate = 40000\n")).await;
    let started = Instant::now();
    let res = get_with(&h, "/bytes/100000", &[]).await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.body.as_ref(),
        levee_testkit::pattern_bytes(100_000).as_slice()
    );
    // 100 kB at 40 kB/s: two and a half seconds, less the first piece.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn fault_headers_count_only_from_the_addresses_trusted_for_them() {
    let app = Backend::start("app").await;
    let trusted = with_fault(&app, "headers = true\nheaders_from = [\"127.0.0.1/32\"]\n");
    let h = Harness::start(&trusted).await;
    let res = get_with(&h, "/h", &[("x-levee-fault-abort", "418")]).await;
    assert_eq!(res.status, 418);
    assert!(
        res.header("proxy-status")
            .is_some_and(|s| s.contains("fault_injected"))
    );
    let res = get_with(&h, "/h", &[("x-levee-fault-abort", "200")]).await;
    assert_eq!(res.status, 200, "only 400 to 599 aborts");
    let elsewhere = with_fault(&app, "headers = true\nheaders_from = [\"10.0.0.0/8\"]\n");
    let h = Harness::start(&elsewhere).await;
    let res = get_with(&h, "/h", &[("x-levee-fault-abort", "503")]).await;
    assert_eq!(
        res.status, 200,
        "from an address not trusted for them, headers ask nothing"
    );
}

#[tokio::test]
async fn faults_are_switched_at_run_time_through_the_admin_api() {
    let app = Backend::start("app").await;
    let h = Harness::start_file(&config(&[("local", 0, &[app.addr()])], "", ""), false).await;
    // Off by default: a fault header asks nothing of a route without faults.
    let res = get_with(&h, "/x", &[("x-levee-fault-abort", "503")]).await;
    assert_eq!(res.status, 200);
    let (status, value) = admin(&h, "GET", "/api/v1/routes/all/fault", "").await;
    assert_eq!((status, &value["source"]), (200, &Value::Null));

    let (status, value) = admin(&h, "PUT", "/api/v1/routes/all/fault", r#"{"abort_status": 502}"#).await;
    assert_eq!(status, 200, "{value}");
    assert_eq!(value["source"], "api");
    assert_eq!(value["fault"]["abort_status"], 502);
    assert_eq!(get_with(&h, "/x", &[]).await.status, 502);
    // A reload keeps what the API set.
    let reloaded = api_reload(h.admin).await.expect("reload");
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    assert_eq!(get_with(&h, "/x", &[]).await.status, 502);

    let (status, value) = admin(
        &h,
        "PUT",
        "/api/v1/routes/all/fault",
        r#"{"abort_status": 99, "delay": "x"}"#,
    )
    .await;
    assert_eq!(status, 400);
    let error = value["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("fault.abort_status") && error.contains("fault.delay"),
        "{error}"
    );
    let (status, _) = admin(&h, "PUT", "/api/v1/routes/none/fault", r#"{"abort_status": 503}"#).await;
    assert_eq!(status, 404);

    let (status, value) = admin(&h, "DELETE", "/api/v1/routes/all/fault", "").await;
    assert_eq!((status, &value["fault"]), (200, &Value::Null));
    assert_eq!(get_with(&h, "/x", &[]).await.status, 200);
}
