//! A retry and the region it goes to: a failed try's retry leaves a region
//! that looks like it is going down, waiting tries are redirected when
//! their endpoint turns out to be gone, a failed try brings its region's
//! checks forward, and a failure that stands says why.

use std::net::SocketAddr;
use std::time::Duration;

use levee_testkit::{Backend, Behaviour, Ledger};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

/// Backends named `name-0`, `name-1`, ... on one ledger.
async fn backends(name: &str, n: usize, ledger: &Ledger) -> Vec<Backend> {
    let mut all = Vec::new();
    for i in 0..n {
        let backend = Backend::builder(&format!("{name}-{i}"))
            .ledger(ledger.clone())
            .start()
            .await
            .expect("backend");
        all.push(backend);
    }
    all
}

fn addrs(backends: &[Backend]) -> Vec<SocketAddr> {
    backends.iter().map(Backend::addr).collect()
}

/// Primary (priority 0) and secondary (priority 1), round robin, no
/// checks and no outlier detection: only the retry decides where a request
/// goes after a failed try. The retry budget is ample, so that it never
/// decides instead.
fn two_regions(primary: &[SocketAddr], secondary: &[SocketAddr], extra: &str) -> String {
    let extra = format!("[upstream.app.retry_budget]\nmin_per_second = 1000\n{extra}");
    config(
        &[("primary", 0, primary), ("secondary", 1, secondary)],
        "",
        &extra,
    )
}

async fn get_all(h: &Harness, n: usize, prefix: &str) -> Vec<String> {
    let client = h.client();
    let mut served_by = Vec::new();
    for i in 0..n {
        let res = client.get(&format!("/{prefix}/{i}")).await.expect("reply");
        assert_eq!(res.status, 200, "{prefix} {i}: {}", res.text());
        served_by.push(res.header("x-backend").unwrap_or("?").to_string());
    }
    served_by
}

#[tokio::test]
async fn a_retry_after_a_refused_connection_leaves_the_region() {
    let ledger = Ledger::new();
    let primary = backends("p", 3, &ledger).await;
    let secondary = backends("s", 1, &ledger).await;
    primary[0].kill().await;
    let h = Harness::start(&two_regions(&addrs(&primary), &addrs(&secondary), "")).await;
    let served_by = get_all(&h, 30, "a").await;
    let retries = h
        .metric("levee_upstream_retries_total{upstream=\"app\",reason=\"connect_failure\"}")
        .await;
    assert!(
        retries >= 5.0,
        "round robin sent some first tries to the dead endpoint"
    );
    // Every request whose first try met the dead endpoint was answered by
    // the other region, none by the dead one's neighbours.
    let by_secondary = served_by.iter().filter(|b| *b == "s-0").count();
    assert_eq!(by_secondary as f64, retries, "{served_by:?}");
}

#[tokio::test]
async fn with_leave_region_never_a_retry_follows_the_shares() {
    let ledger = Ledger::new();
    let primary = backends("p", 3, &ledger).await;
    let secondary = backends("s", 1, &ledger).await;
    primary[0].kill().await;
    let extra = "[route.retry]\nleave_region = \"never\"\n";
    let h = Harness::start(&two_regions(&addrs(&primary), &addrs(&secondary), extra)).await;
    let served_by = get_all(&h, 30, "n").await;
    let retries = h
        .metric("levee_upstream_retries_total{upstream=\"app\",reason=\"connect_failure\"}")
        .await;
    assert!(retries >= 5.0);
    // Two of three primary endpoints left, with 1.4 overprovisioning: the
    // primary keeps 93% of the retries' share.
    let by_primary = served_by.iter().filter(|b| b.starts_with("p-")).count();
    assert!(
        by_primary as f64 > 30.0 - retries,
        "some retries stayed in the primary region: {served_by:?}"
    );
}

#[tokio::test]
async fn an_answered_503_leaves_the_region_only_when_the_region_is_failing() {
    let ledger = Ledger::new();
    let primary = backends("p", 2, &ledger).await;
    let secondary = backends("s", 1, &ledger).await;
    primary[0].set_behaviour(Behaviour::Status(503));
    // With one of two endpoints out, the primary still takes all traffic
    // (1/2 × 2): a retry that stays in it is the policy's doing, not the
    // shares'.
    let extra = "[upstream.app.failover]\noverprovisioning = 2.0\n";
    let h = Harness::start(&two_regions(&addrs(&primary), &addrs(&secondary), extra)).await;
    // One endpoint answers 503, its neighbour serves: retries stay.
    let served_by = get_all(&h, 10, "one").await;
    assert!(served_by.iter().all(|b| b == "p-1"), "{served_by:?}");
    assert_eq!(ledger.arrivals().iter().filter(|a| a.backend == "s-0").count(), 0);
    // Both answer 503: once each has, the region is failing, and retries
    // leave it.
    primary[1].set_behaviour(Behaviour::Status(503));
    let client = h.client();
    for i in 0..2 {
        let _ = client.get(&format!("/warm/{i}")).await.expect("reply");
    }
    let served_by = get_all(&h, 10, "both").await;
    assert!(served_by.iter().all(|b| b == "s-0"), "{served_by:?}");
}

#[tokio::test]
async fn a_failed_try_brings_its_regions_checks_forward() {
    let ledger = Ledger::new();
    let primary = backends("p", 2, &ledger).await;
    let secondary = backends("s", 1, &ledger).await;
    // Checks a minute apart: only a failed try can make them come sooner.
    let checks = "[upstream.app.health]\npath = \"/healthz\"\ninterval = \"60s\"\nfall = 1\nrise = 1\n";
    let h = Harness::start(&config(
        &[
            ("primary", 0, &addrs(&primary)),
            ("secondary", 1, &addrs(&secondary)),
        ],
        "",
        checks,
    ))
    .await;
    for p in &primary {
        p.kill().await;
    }
    let healthy = |b: &Backend| {
        format!(
            "levee_upstream_endpoint_healthy{{upstream=\"app\",region=\"primary\",endpoint=\"{}\"}}",
            b.addr()
        )
    };
    // One request meets the dark region and is saved by the other.
    let res = h.client().get("/dark").await.expect("reply");
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("x-backend"), Some("s-0"));
    // Both primary endpoints are probed at once and taken out, the one
    // the request never tried included.
    for p in &primary {
        h.eventually_metric(&healthy(p), 0.0).await;
    }
}

/// A listener that never accepts, its queue full: connecting to it hangs
/// until the connect timeout, as to a host that dropped off the network.
async fn black_hole() -> (SocketAddr, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    // Fill the accept queue; later handshakes are dropped, not refused.
    let mut fillers = Vec::new();
    for _ in 0..2 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await {
            fillers.push(s);
        }
    }
    std::mem::forget(listener);
    (addr, fillers)
}

#[tokio::test]
async fn a_try_waiting_on_a_connect_that_fails_is_redirected() {
    let ledger = Ledger::new();
    let secondary = backends("s", 1, &ledger).await;
    let (hole, _fillers) = black_hole().await;
    // One try per request, no retries: only a redirect can get the second
    // request an answer.
    let upstream = "connect_timeout = \"3s\"\n";
    let extra = "[route.retry]\nattempts = 1\n";
    let h = Harness::start(&config(
        &[("primary", 0, &[hole]), ("secondary", 1, &addrs(&secondary))],
        upstream,
        extra,
    ))
    .await;
    let client = h.client();
    let first = client.get("/first");
    let second = async {
        // Starts connecting while the first still waits for its connect.
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.get("/second").await
    };
    let (first, second) = tokio::join!(first, second);
    let (first, second) = (first.expect("reply"), second.expect("reply"));
    assert!(first.status >= 500, "the first waited out its connect timeout");
    assert!(
        first
            .header("proxy-status")
            .is_some_and(|p| p.contains("connection_timeout")),
        "{:?}",
        first.header("proxy-status")
    );
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.header("x-backend"), Some("s-0"));
}

#[tokio::test]
async fn a_failure_that_stands_says_why() {
    let ledger = Ledger::new();
    let primary = backends("p", 1, &ledger).await;
    let h = Harness::start(&simple(&addrs(&primary))).await;
    primary[0].set_behaviour(Behaviour::Status(500));
    let res = h.client().get("/500").await.expect("reply");
    assert_eq!(res.status, 500);
    primary[0].set_behaviour(Behaviour::Status(503));
    let res = h.client().get("/503").await.expect("reply");
    assert_eq!(res.status, 503);
    primary[0].kill().await;
    let res = h.client().get("/dead").await.expect("reply");
    assert_eq!(res.status, 502);
    let failed = |reason: &str| {
        format!("levee_upstream_failed_requests_total{{upstream=\"app\",reason=\"{reason}\"}}")
    };
    assert_eq!(
        h.metric(&failed("not_retryable")).await,
        1.0,
        "500 is not in retry_on"
    );
    // Two tries on the one endpoint, each failed.
    assert_eq!(h.metric(&failed("no_untried_endpoint")).await, 2.0);
    assert_eq!(h.metric(&failed("budget")).await, 0.0);
}
