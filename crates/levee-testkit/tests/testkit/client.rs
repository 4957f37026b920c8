use std::time::Duration;

use http_body_util::Full;
use levee_testkit::{Backend, Client, eventually, load};

// Multi-threaded, as the gateway's own tests run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_bounds_concurrency_and_counts_statuses() {
    let backend = Backend::start("l").await;
    let client = Client::http1(backend.addr());
    let report = load(&client, 40, 4, Duration::from_secs(20), |i| {
        let status = if i % 10 == 0 { "503" } else { "200" };
        http::Request::get(format!("/n/{i}"))
            .header("x-testkit-status", status)
            .header("x-testkit-delay-ms", "20")
            .body(Full::default())
            .unwrap()
    })
    .await;
    assert_eq!(report.sent, 40);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.ok_2xx, 36);
    assert_eq!(report.statuses.get(&503), Some(&4));
    assert_eq!(backend.ledger().len(), 40);
    assert!(backend.max_requests_in_flight() <= 4);
    assert!(backend.max_requests_in_flight() >= 2);
    eventually(Duration::from_secs(2), "requests drained", || {
        backend.requests_in_flight() == 0
    })
    .await;
}

#[tokio::test]
async fn load_stops_at_its_deadline() {
    let backend = Backend::start("slow").await;
    let client = Client::http1(backend.addr());
    let report = load(&client, 1000, 2, Duration::from_millis(300), |_| {
        http::Request::get("/")
            .header("x-testkit-action", "hang")
            .body(Full::default())
            .unwrap()
    })
    .await;
    assert_eq!(report.sent, 2);
    assert_eq!(report.errors.len(), 2);
    assert!(report.elapsed < Duration::from_secs(2));
}

#[tokio::test]
async fn client_times_out_instead_of_hanging() {
    let backend = Backend::start("t").await;
    let client = Client::http1(backend.addr()).with_timeout(Duration::from_millis(200));
    let req = http::Request::get("/")
        .header("x-testkit-action", "hang")
        .body(Full::default())
        .unwrap();
    let err = client.send(req).await.unwrap_err();
    assert!(format!("{err:#}").contains("no complete response"), "{err:#}");
}
