//! `levee demo`: the reference topology with its own backends, and the
//! controls that fail them for real. Uses the fixed demo ports.

use levee::demo::Demo;
use levee_testkit::{Client, eventually_async};

use crate::support::SETTLE;

#[tokio::test]
async fn the_demo_serves_and_its_backends_fail_for_real() {
    let demo = Demo::start()
        .await
        .expect("demo starts (are ports 8080, 9901, 9101-9103, 9201-9202 free?)");
    let gateway = Client::http1(demo.app.listener_addr("public").expect("listener"));
    let admin = Client::http1(demo.app.admin_addr());
    assert!(
        demo.banner()
            .contains("curl -s -X POST http://127.0.0.1:9901/demo/regions/primary/fail")
    );

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let r = gateway.get("/").await.expect("reply");
        assert_eq!(r.status, 200);
        assert!(r.text().contains("\"region\":\"primary\""), "{}", r.text());
        seen.insert(r.header("x-backend").expect("backend").to_string());
    }
    assert_eq!(
        seen.len(),
        3,
        "round robin over the three primary backends: {seen:?}"
    );

    let post = |path: &str| {
        let req = http::Request::post(path)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("req");
        admin.send(req)
    };
    let r = post("/demo/backends/primary-2/fail").await.expect("fail");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("\"primary-2\":false"), "{}", r.text());
    // Health checks (every second, two failures) take primary-2 out of
    // rotation: the others keep answering, without errors.
    eventually_async(SETTLE, "primary-2 out of rotation", || {
        let g = gateway.clone();
        async move { regions_seen(&g, 6).await.iter().all(|r| r == "200 primary") }
    })
    .await;
    post("/demo/backends/primary-2/restore").await.expect("restore");

    assert_eq!(
        post("/demo/regions/nowhere/fail").await.expect("reply").status,
        404
    );
    let r = post("/demo/regions/primary/fail").await.expect("fail");
    assert!(
        r.text().contains("\"primary-1\":false") && r.text().contains("\"secondary-1\":true"),
        "{}",
        r.text()
    );
    let share = "levee_upstream_priority_share{upstream=\"app\",priority=\"0\"}";
    eventually_async(SETTLE, "primary takes no traffic", || {
        let a = admin.clone();
        async move { metric(&a, share).await == 0.0 }
    })
    .await;
    assert!(
        regions_seen(&gateway, 20)
            .await
            .iter()
            .all(|r| r == "200 secondary"),
        "traffic moved to secondary"
    );
    post("/demo/regions/primary/restore").await.expect("restore");
    // Damped failback: primary must stay healthy for 5 s before traffic
    // ramps back over 10 s. Right after the restore, it stays on secondary.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        regions_seen(&gateway, 20)
            .await
            .iter()
            .all(|r| r == "200 secondary"),
        "traffic waits before returning"
    );
    eventually_async(SETTLE * 4, "traffic is back on primary after the ramp", || {
        let a = admin.clone();
        async move { metric(&a, share).await == 1.0 }
    })
    .await;
    assert!(
        regions_seen(&gateway, 10)
            .await
            .iter()
            .all(|r| r == "200 primary")
    );
    let list = admin.get("/demo").await.expect("list").text();
    assert!(!list.contains("\"up\":false"), "{list}");
    assert!(demo.shutdown().await);
}

/// "<status> <region>" of `n` requests.
async fn regions_seen(c: &Client, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let r = c.get("/").await.expect("reply");
        let region = ["primary", "secondary"]
            .into_iter()
            .find(|reg| r.text().contains(&format!("\"region\":\"{reg}\"")))
            .unwrap_or("-");
        out.push(format!("{} {region}", r.status));
    }
    out
}

/// One metric series from the admin listener (0 when absent).
async fn metric(admin: &Client, series: &str) -> f64 {
    let text = admin.get("/metrics").await.expect("metrics").text();
    levee_testkit::metric_value(&text, series)
}

/// The reference topology loses the primary region without an error spike:
/// its first failed requests eject the dark endpoints and their retries go
/// to secondary. (With the outlier defaults, which keep one endpoint per
/// region, about 15% of these requests failed: every try that met a dark
/// endpoint until two checks had failed.)
#[tokio::test]
async fn the_reference_topology_loses_a_region_with_almost_no_error() {
    use levee::demo::{Options, Ports};
    let demo = Demo::start_with(Options {
        ports: Ports::Ephemeral,
        traffic: None,
        front: None,
    })
    .await
    .expect("demo starts");
    let gateway = Client::http1(demo.app.listener_addr("public").expect("listener"));
    let admin = Client::http1(demo.app.admin_addr());
    let rate = 100;
    let load = tokio::spawn({
        let gateway = gateway.clone();
        async move {
            levee_testkit::open_loop(&gateway, rate, std::time::Duration::from_secs(6), 400, |i| {
                http::Request::get(format!("/items/{i}"))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .expect("request")
            })
            .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let fail = http::Request::post("/demo/regions/primary/fail")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("req");
    assert_eq!(admin.send(fail).await.expect("fail").status, 200);
    let timeline = load.await.expect("load");
    let failed = timeline.failures().len();
    let total = timeline.samples.len();
    eprintln!("primary region failed under {rate} req/s: {failed} of {total} requests failed");
    assert!(total >= 500, "the load ran: {total}");
    assert!(
        failed * 100 <= total * 2,
        "{failed} of {total} failed: {:#?}",
        timeline.failures()
    );
    demo.shutdown().await;
}
