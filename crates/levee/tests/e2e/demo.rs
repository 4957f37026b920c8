//! `levee demo`: the reference topology with its own backends, and the
//! controls that fail them for real. Uses the fixed demo ports.

use levee::demo::Demo;
use levee_testkit::Client;

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
    // primary-2 now refuses connections: its turn in the rotation fails.
    let statuses: Vec<u16> = futures_free_collect(&gateway, 6).await;
    assert!(statuses.contains(&502), "{statuses:?}");
    let r = gateway.get("/").await.expect("reply");
    if r.status == 502 {
        assert!(
            r.header("proxy-status")
                .expect("proxy-status")
                .contains("connection_refused")
        );
    }
    post("/demo/backends/primary-2/restore").await.expect("restore");
    assert_eq!(futures_free_collect(&gateway, 6).await, vec![200; 6]);

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
    post("/demo/regions/primary/restore").await.expect("restore");
    let list = admin.get("/demo").await.expect("list").text();
    assert!(!list.contains("\"up\":false"), "{list}");
    assert!(demo.shutdown().await);
}

async fn futures_free_collect(c: &Client, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(c.get("/").await.expect("reply").status);
    }
    out
}
