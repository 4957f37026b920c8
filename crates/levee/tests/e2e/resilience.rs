//! The mechanisms behind failover, one at a time: retries and what may be
//! retried, request bodies sent twice, `Retry-After`, hedging, the retry
//! budget, the circuit breakers, latency-aware balancing.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use levee_testkit::{Backend, Behaviour, Ledger, sha256_hex};
use tokio::time::Instant;

use crate::support::*;

async fn pair(a: Behaviour, b: Behaviour) -> (Backend, Backend, Ledger) {
    let ledger = Ledger::new();
    let one = Backend::builder("a")
        .ledger(ledger.clone())
        .behaviour(a)
        .start()
        .await
        .expect("a");
    let two = Backend::builder("b")
        .ledger(ledger.clone())
        .behaviour(b)
        .start()
        .await
        .expect("b");
    (one, two, ledger)
}

fn one_region(backends: &[&Backend], extra: &str) -> String {
    let addrs: Vec<_> = backends.iter().map(|b| b.addr()).collect();
    config(&[("main", 0, &addrs)], "", extra)
}

fn request(method: &str, path: &str, id: &str, body: &[u8]) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("x-request-id", id)
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("request")
}

#[tokio::test]
async fn an_idempotent_request_is_sent_again_with_its_whole_body() {
    // `a` resets every connection after reading the head: a PUT caught there
    // is sent again to `b`, body and all, from what levee kept of it.
    let (a, b, ledger) = pair(Behaviour::Reset, Behaviour::Normal).await;
    let h = Harness::start(&one_region(&[&a, &b], "")).await;
    let body = levee_testkit::pattern_bytes(20_000);
    for i in 0..6 {
        let id = format!("put-{i}");
        let res = h
            .client()
            .send(request("PUT", "/doc", &id, &body))
            .await
            .expect("reply");
        assert_eq!(res.status, 200, "{id}: {}", res.text());
        assert_eq!(res.header("x-backend"), Some("b"));
        let served: Vec<_> = ledger
            .find_request_id(&id)
            .into_iter()
            .filter(|a| a.backend == "b")
            .collect();
        assert_eq!(served.len(), 1, "{id}");
        assert!(served[0].complete);
        assert_eq!(
            served[0].body_sha256,
            sha256_hex(&body),
            "{id}: the body arrived whole"
        );
    }
    let retries = h
        .metric("levee_upstream_retries_total{upstream=\"app\",reason=\"reset\"}")
        .await;
    assert!(retries >= 1.0, "at least one PUT met the resetting endpoint");
}

#[tokio::test]
async fn a_post_is_sent_again_only_when_it_never_left() {
    // A dead endpoint (connection refused): a POST that met it went nowhere
    // and is sent to the other.
    let (a, b, ledger) = pair(Behaviour::Normal, Behaviour::Normal).await;
    let h = Harness::start(&one_region(&[&a, &b], "")).await;
    a.kill().await;
    for i in 0..6 {
        let id = format!("post-refused-{i}");
        let res = h
            .client()
            .send(request("POST", "/orders", &id, b"x"))
            .await
            .expect("reply");
        assert_eq!(res.status, 200, "{id}: {}", res.text());
        assert_eq!(ledger.find_request_id(&id).len(), 1, "{id}");
    }
    let refused_tries = h
        .metric("levee_upstream_retries_total{upstream=\"app\",reason=\"connect_failure\"}")
        .await;
    assert!(refused_tries >= 1.0, "some POSTs met the dead endpoint first");
    // An endpoint that resets after reading the head may have run it: 502.
    a.restart().await.expect("restart");
    a.set_behaviour(Behaviour::Reset);
    let mut refused = 0;
    for i in 0..10 {
        let id = format!("post-reset-{i}");
        let res = h
            .client()
            .send(request("POST", "/orders", &id, b"x"))
            .await
            .expect("reply");
        let arrivals = ledger.find_request_id(&id);
        match res.status {
            200 => assert_eq!(arrivals.len(), 1, "{id}: {arrivals:#?}"),
            502 => {
                refused += 1;
                assert!(
                    res.header("proxy-status")
                        .is_some_and(|p| p.contains("connection_terminated"))
                );
                assert!(
                    arrivals.iter().all(|a| a.backend == "a"),
                    "{id} was not sent again"
                );
            }
            other => panic!("{id}: {other}"),
        }
    }
    assert!(refused > 0, "some POSTs met the resetting endpoint");
}

#[tokio::test]
async fn a_long_retry_after_is_passed_on_and_a_short_one_waited_out() {
    let raw = |after: &str| {
        Behaviour::Raw(Bytes::from(format!(
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: {after}\r\ncontent-length: 4\r\n\r\nbusy"
        )))
    };
    let a = Backend::builder("a")
        .behaviour(raw("5"))
        .start()
        .await
        .expect("a");
    let h = Harness::start(&one_region(&[&a], "[route.retry]\nattempts = 2\n")).await;
    let res = h
        .client()
        .send(request("GET", "/", "long", b""))
        .await
        .expect("reply");
    assert_eq!(res.status, 503);
    assert_eq!(res.text(), "busy", "the upstream's own answer");
    assert_eq!(a.ledger().find_request_id("long").len(), 1, "not retried");

    a.set_behaviour(raw("0"));
    let res = h
        .client()
        .send(request("GET", "/", "short", b""))
        .await
        .expect("reply");
    assert_eq!(res.status, 503);
    assert_eq!(
        a.ledger().find_request_id("short").len(),
        2,
        "retried once after 0 s"
    );
}

#[tokio::test]
async fn a_slow_endpoint_is_hedged() {
    let (slow, fast, _ledger) = pair(Behaviour::Delay(Duration::from_secs(3)), Behaviour::Normal).await;
    let h = Harness::start(&one_region(
        &[&slow, &fast],
        "[route.retry]\nattempts = 2\nhedge_after = \"100ms\"\n",
    ))
    .await;
    for i in 0..6 {
        let started = Instant::now();
        let res = h.client().get(&format!("/h/{i}")).await.expect("reply");
        assert_eq!(res.status, 200);
        assert_eq!(res.header("x-backend"), Some("b"), "the hedge won");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn the_retry_budget_stops_a_retry_storm() {
    let (a, _b, ledger) = pair(Behaviour::Status(503), Behaviour::Normal).await;
    let h = Harness::start(&one_region(
        &[&a],
        "[route.retry]\nattempts = 5\nbackoff_base = \"1ms\"\nbackoff_max = \"1ms\"\n\
         [upstream.app.retry_budget]\npercent = 0\nmin_per_second = 2\n",
    ))
    .await;
    let report = levee_testkit::load(&h.client(), 50, 5, SETTLE, |i| {
        request("GET", &format!("/s/{i}"), &format!("s-{i}"), b"")
    })
    .await;
    assert_eq!(report.statuses.get(&503), Some(&50), "{report:?}");
    // 50 first tries, and the budget's burst of 2 plus 2 a second.
    let arrivals = ledger.len();
    let elapsed = report.elapsed.as_secs_f64();
    assert!(
        arrivals as f64 <= 50.0 + 2.0 + 2.0 * elapsed + 1.0,
        "{arrivals} tries in {elapsed:.2} s"
    );
    let exhausted = h
        .metric("levee_upstream_retry_budget_exhausted_total{upstream=\"app\"}")
        .await;
    assert!(exhausted > 0.0);
}

#[tokio::test]
async fn a_full_breaker_fails_fast_with_503() {
    let (a, _b, _ledger) = pair(Behaviour::Delay(Duration::from_millis(800)), Behaviour::Normal).await;
    let h = Harness::start(&one_region(
        &[&a],
        "[upstream.app.limits]\nmax_requests = 2\n[route.retry]\nattempts = 1\n",
    ))
    .await;
    let started = Instant::now();
    let report = levee_testkit::load(&h.client(), 6, 6, SETTLE, |i| {
        request("GET", &format!("/b/{i}"), &format!("b-{i}"), b"")
    })
    .await;
    assert_eq!(report.statuses.get(&200), Some(&2), "{report:?}");
    assert_eq!(report.statuses.get(&503), Some(&4), "{report:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let overflow = h
        .metric("levee_upstream_overflow_total{upstream=\"app\",limit=\"requests\"}")
        .await;
    assert_eq!(overflow, 4.0);
    // The slots come back with the responses.
    let res = h.client().get("/after").await.expect("reply");
    assert_eq!(res.status, 200);
    assert!(
        report.errors.is_empty(),
        "every request got an answer: {:?}",
        report.errors
    );
}

#[tokio::test]
async fn peak_ewma_keeps_traffic_off_an_endpoint_that_fails_fast() {
    let (failing, good, ledger) =
        pair(Behaviour::Status(500), Behaviour::Delay(Duration::from_millis(5))).await;
    let h = Harness::start(
        &one_region(&[&failing, &good], "[route.retry]\nattempts = 1\n")
            .replace("[upstream.app]\n", "[upstream.app]\nbalance = \"peak_ewma\"\n"),
    )
    .await;
    let report = levee_testkit::load(&h.client(), 400, 4, SETTLE, |i| {
        request("GET", &format!("/e/{i}"), &format!("e-{i}"), b"")
    })
    .await;
    assert_eq!(report.sent, 400);
    let to_failing = ledger.arrivals().iter().filter(|a| a.backend == "a").count();
    eprintln!("peak_ewma: {to_failing} of 400 requests went to the endpoint answering fast 500s");
    assert!(
        to_failing < 40,
        "{to_failing} requests went to the failing endpoint"
    );
}

#[tokio::test]
async fn the_connection_breaker_refuses_what_needs_a_new_connection() {
    let a = Backend::builder("a")
        .behaviour(Behaviour::Delay(Duration::from_millis(800)))
        .start()
        .await
        .expect("a");
    let h = Harness::start(&one_region(
        &[&a],
        "[upstream.app.limits]\nmax_connections = 1\n[route.retry]\nattempts = 1\n",
    ))
    .await;
    let report = levee_testkit::load(&h.client(), 3, 3, SETTLE, |i| {
        request("GET", &format!("/c/{i}"), &format!("c-{i}"), b"")
    })
    .await;
    assert_eq!(report.statuses.get(&200), Some(&1), "{report:?}");
    assert_eq!(report.statuses.get(&503), Some(&2), "{report:?}");
    let overflow = h
        .metric("levee_upstream_overflow_total{upstream=\"app\",limit=\"connections\"}")
        .await;
    assert_eq!(overflow, 2.0);
    // The one connection, pooled again, serves what comes next.
    assert_eq!(h.client().get("/next").await.expect("reply").status, 200);
}

#[tokio::test]
async fn a_retry_that_cannot_happen_passes_the_upstreams_answer_on() {
    // No budget at all: the 503 cannot be retried, so the client gets it as
    // the upstream sent it, not levee's own.
    let a = Backend::builder("a")
        .behaviour(Behaviour::Status(503))
        .start()
        .await
        .expect("a");
    let h = Harness::start(&one_region(
        &[&a],
        "[route.retry]\nattempts = 3\n[upstream.app.retry_budget]\npercent = 0\nmin_per_second = 0\n",
    ))
    .await;
    let res = h.client().get("/x").await.expect("reply");
    assert_eq!(res.status, 503);
    assert_eq!(res.text(), "a GET /x\n");
    assert_eq!(res.header("proxy-status"), None, "the upstream's own answer");
    assert_eq!(a.ledger().len(), 1);
}
