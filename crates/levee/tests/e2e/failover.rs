//! Surviving failures under load: a killed endpoint, a hanging one, a dark
//! region, a total outage, a flapping endpoint. Load is open loop (requests
//! go out on schedule whatever happened to the ones before, as real clients
//! do), and every run checks "nothing lost": idempotent requests all
//! succeed, non-idempotent ones are never executed twice (the origins'
//! shared ledger), every failure is levee's answer with `Proxy-Status`.
//!
//! Timing claims are checked with generous bounds so a busy machine cannot
//! fail them; the figures measured are printed (`--nocapture`) for the
//! record.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use levee_testkit::{Backend, Behaviour, Ledger, Timeline, open_loop};
use tokio::time::Instant;

use crate::support::*;

/// Fast active checks: an endpoint is out after two failed probes 100 ms
/// apart, back after two passed ones.
const CHECKS: &str = "[upstream.app.health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\njitter_percent = 0\n";

async fn backends(names: &[&str], ledger: &Ledger) -> Vec<Backend> {
    let mut out = Vec::new();
    for name in names {
        out.push(
            Backend::builder(name)
                .ledger(ledger.clone())
                .start()
                .await
                .expect("backend starts"),
        );
    }
    out
}

fn addrs(backends: &[Backend]) -> Vec<std::net::SocketAddr> {
    backends.iter().map(Backend::addr).collect()
}

/// Every fifth request a POST with a unique id, the rest GETs.
fn mixed(i: usize) -> Request<Full<Bytes>> {
    if i % 5 == 4 {
        Request::post(format!("/orders/{i}"))
            .header("x-request-id", format!("post-{i}"))
            .body(Full::new(Bytes::from_static(b"order")))
            .expect("request")
    } else {
        Request::get(format!("/items/{i}"))
            .header("x-request-id", format!("get-{i}"))
            .body(Full::new(Bytes::new()))
            .expect("request")
    }
}

fn get(i: usize) -> Request<Full<Bytes>> {
    Request::get(format!("/items/{i}"))
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// Failed requests of the run, by method: (GETs, POSTs).
fn failed_by_method(t: &Timeline, rate: u32) -> (usize, usize) {
    let period = 1.0 / f64::from(rate);
    let mut out = (0, 0);
    for s in t.failures() {
        let i = (s.at.as_secs_f64() / period).round() as usize;
        if i % 5 == 4 {
            out.1 += 1;
        } else {
            out.0 += 1;
        }
    }
    out
}

/// No request id executed twice across the backends sharing `ledger`.
fn assert_no_duplicates(ledger: &Ledger) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for a in ledger.arrivals() {
        if let Some(id) = a.request_id.filter(|id| id.starts_with("post-")) {
            *seen.entry(id).or_default() += 1;
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "POSTs that reached an origin twice: {twice:?}");
}

#[tokio::test]
async fn a_killed_endpoint_loses_no_request() {
    let ledger = Ledger::new();
    let primary = backends(&["a", "b", "c"], &ledger).await;
    let extra = format!(
        "{CHECKS}[upstream.app.outlier]\nconsecutive_gateway_failure = 2\nbase_ejection_time = \"30s\"\n\
         max_ejection_percent = 50\n[route.retry]\nattempts = 3\n"
    );
    let h = Harness::start(&config(&[("primary", 0, &addrs(&primary))], "", &extra)).await;
    let client = h.client();
    let rate = 200;
    let load = tokio::spawn({
        let client = client.clone();
        async move { open_loop(&client, rate, Duration::from_secs(6), 400, mixed).await }
    });
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = start.elapsed();
    primary[1].kill().await;
    let ejected = format!(
        "levee_upstream_endpoint_ejected{{upstream=\"app\",region=\"primary\",endpoint=\"{}\"}}",
        primary[1].addr()
    );
    let healthy = ejected.replace("endpoint_ejected", "endpoint_healthy");
    // Out of rotation, by ejection or by the checks, whichever was first.
    let mut out_after = None;
    let limit = Instant::now() + SETTLE;
    while Instant::now() < limit {
        if h.metric(&ejected).await == 1.0 || h.metric(&healthy).await == 0.0 {
            out_after = Some(start.elapsed() - killed_at);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out_after = out_after.expect("the killed endpoint leaves rotation");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    primary[1].restart().await.expect("restart");
    let restarted_at = start.elapsed();
    let timeline = load.await.expect("load");

    let (failed_gets, failed_posts) = failed_by_method(&timeline, rate);
    assert_eq!(failed_gets, 0, "failed GETs: {:#?}", timeline.failures());
    assert_no_duplicates(&ledger);
    let retried = |result: &str| {
        format!("levee_upstream_retried_requests_total{{upstream=\"app\",result=\"{result}\"}}")
    };
    let (saved, lost) = (
        h.metric(&retried("success")).await,
        h.metric(&retried("failure")).await,
    );
    assert!(
        saved > 0.0,
        "some requests met the killed endpoint and were retried"
    );
    // It came back once the checks saw it up again (rise × interval).
    let rejoined = timeline
        .samples
        .iter()
        .find(|s| s.at >= restarted_at && s.backend.as_deref() == Some("b"))
        .map(|s| s.at - restarted_at)
        .expect("b served again after its restart");
    eprintln!(
        "killed endpoint: {} requests, {failed_gets} failed GETs, {failed_posts} failed POSTs, \
         {saved} saved by a retry and {lost} retried in vain, \
         out of rotation {:.0} ms after the kill, serving again {:.0} ms after the restart",
        timeline.samples.len(),
        out_after.as_secs_f64() * 1000.0,
        rejoined.as_secs_f64() * 1000.0
    );
    assert!(out_after < Duration::from_secs(5), "took {out_after:?}");
    assert!(rejoined < Duration::from_secs(5), "took {rejoined:?}");
}

#[tokio::test]
async fn a_hanging_endpoint_is_cut_at_the_per_try_timeout_and_ejected() {
    let ledger = Ledger::new();
    let primary = backends(&["a", "b", "c"], &ledger).await;
    primary[1].set_behaviour(Behaviour::Hang);
    // No active checks: a hanging endpoint still accepts connections and
    // may answer /healthz; passive detection has to find it.
    let extra = "[upstream.app.outlier]\nconsecutive_gateway_failure = 3\nbase_ejection_time = \"30s\"\n\
                 max_ejection_percent = 50\n[upstream.app.limits]\nmax_requests = 40\n\
                 [route.retry]\nattempts = 3\nper_try_timeout = \"300ms\"\n";
    let h = Harness::start(&config(&[("primary", 0, &addrs(&primary))], "", extra)).await;
    let rate = 100;
    let timeline = open_loop(&h.client(), rate, Duration::from_secs(4), 400, mixed).await;

    let (failed_gets, failed_posts) = failed_by_method(&timeline, rate);
    assert_eq!(failed_gets, 0, "failed GETs: {:#?}", timeline.failures());
    // A POST caught on the hanging endpoint may have run there: 504.
    for s in timeline.failures() {
        assert_eq!(s.status, Some(504), "{s:?}");
    }
    assert_no_duplicates(&ledger);
    let ejected = format!(
        "levee_upstream_endpoint_ejected{{upstream=\"app\",region=\"primary\",endpoint=\"{}\"}}",
        primary[1].addr()
    );
    assert_eq!(h.metric(&ejected).await, 1.0, "the hanging endpoint was ejected");
    // Requests that hit it before the ejection ended at the per-try timeout.
    let slowest = timeline
        .samples
        .iter()
        .map(|s| s.latency)
        .max()
        .unwrap_or_default();
    assert!(slowest < Duration::from_secs(5), "slowest request {slowest:?}");
    let held = primary[1].max_requests_in_flight();
    assert!(held <= 40, "the hanging endpoint held {held} requests at once");
    eprintln!(
        "hanging endpoint: {} requests, {failed_gets} failed GETs, {failed_posts} POSTs answered 504, \
         slowest {:.0} ms, at most {held} requests held by it",
        timeline.samples.len(),
        slowest.as_secs_f64() * 1000.0
    );
}

#[tokio::test]
async fn one_of_three_down_spills_its_share_to_the_next_region() {
    let ledger = Ledger::new();
    let primary = backends(&["p1", "p2", "p3"], &ledger).await;
    let secondary = backends(&["s1", "s2"], &ledger).await;
    for (mode, expected) in [("proportional", 0.0667), ("strict", 0.0)] {
        primary[2].restart().await.expect("restart");
        let extra = format!(
            "{CHECKS}[upstream.app.failover]\nmode = \"{mode}\"\nfailback_after = \"0s\"\nramp = \"0s\"\n\
             [route.retry]\nattempts = 1\n"
        );
        let regions = [
            ("primary", 0, &addrs(&primary)[..]),
            ("secondary", 1, &addrs(&secondary)[..]),
        ];
        let h = Harness::start(&config(&regions, "", &extra)).await;
        primary[2].kill().await;
        let healthy = format!(
            "levee_upstream_endpoint_healthy{{upstream=\"app\",region=\"primary\",endpoint=\"{}\"}}",
            primary[2].addr()
        );
        let limit = Instant::now() + SETTLE;
        while h.metric(&healthy).await != 0.0 && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ledger.clear();
        let report = levee_testkit::load(&h.client(), 3000, 32, SETTLE, get).await;
        assert_eq!(report.ok_2xx, 3000, "{report:?}");
        let served: Vec<_> = ledger
            .arrivals()
            .into_iter()
            .filter(|a| a.path.starts_with("/items/"))
            .collect();
        assert_eq!(served.len(), 3000);
        let share = served.iter().filter(|a| a.backend.starts_with('s')).count() as f64 / 3000.0;
        eprintln!(
            "one of three primary endpoints down, {mode}: secondary share {share:.4} (expected {expected:.4})"
        );
        assert!(
            (share - expected).abs() < 0.02,
            "{mode}: secondary took {share:.4}, expected {expected:.4}"
        );
    }
}

/// Over real sockets: the data plane follows the loads through a failover
/// and a damped failback without an error spike. The exact dwell and ramp
/// steps are the watch task's paused-clock tests
/// (`levee-proxy/src/upstream/watch.rs`); the bounds here hold however late
/// the checks see the region back.
#[tokio::test]
async fn a_dark_region_fails_over_and_back_without_an_error_spike() {
    let ledger = Ledger::new();
    let primary = backends(&["p1", "p2", "p3"], &ledger).await;
    let secondary = backends(&["s1", "s2"], &ledger).await;
    let extra = format!(
        "{CHECKS}[upstream.app.outlier]\nconsecutive_gateway_failure = 2\nbase_ejection_time = \"2s\"\n\
         max_ejection_percent = 100\nmin_available_per_region = 0\n\
         [upstream.app.failover]\nfailback_after = \"1s\"\nramp = \"1s\"\n[route.retry]\nattempts = 3\n"
    );
    let regions = [
        ("primary", 0, &addrs(&primary)[..]),
        ("secondary", 1, &addrs(&secondary)[..]),
    ];
    let h = Harness::start(&config(&regions, "", &extra)).await;
    let rate = 200;
    let run = Duration::from_millis(8500);
    let load = tokio::spawn({
        let client = h.client();
        async move { open_loop(&client, rate, run, 400, get).await }
    });
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let dark_at = start.elapsed();
    for b in &primary {
        b.kill().await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let back_at = start.elapsed();
    for b in &primary {
        b.restart().await.expect("restart");
    }
    let timeline = load.await.expect("load");

    let ok = timeline.samples.iter().filter(|s| s.ok()).count();
    let success = ok as f64 / timeline.samples.len() as f64;
    let on_secondary = |s: &str| s.starts_with('s');
    let on_primary = |s: &str| s.starts_with('p');
    // When did the secondary first take everything, and how long did it keep it?
    let step = Duration::from_millis(100);
    let mut all_secondary_from = None;
    let mut t = dark_at;
    while t < back_at {
        if timeline.share(t, t + step, on_secondary) == 1.0 && timeline.window(t, t + step).all(|s| s.ok()) {
            all_secondary_from.get_or_insert(t);
        } else {
            all_secondary_from = None;
        }
        t += step;
    }
    let failover = all_secondary_from
        .map(|t| t - dark_at)
        .expect("the secondary took all the traffic");
    // Failback: the checks need 100 ms or more to see the primary up, then
    // it waits failback_after (1 s): nothing goes back before that.
    let held = timeline.share(back_at, back_at + Duration::from_secs(1), on_secondary);
    // When primary first served again, and when it had everything back.
    let first_back = timeline
        .samples
        .iter()
        .find(|s| s.at >= back_at && s.backend.as_deref().is_some_and(on_primary))
        .map(|s| s.at - back_at)
        .expect("the primary served again");
    let mut all_back = None;
    let mut t = back_at;
    while t + step <= run {
        if timeline.share(t, t + step, on_primary) == 1.0 {
            all_back.get_or_insert(t - back_at);
        } else {
            all_back = None;
        }
        t += step;
    }
    let all_back = all_back.expect("all traffic back on the primary");
    let after = timeline.share(back_at + Duration::from_millis(3500), run, on_primary);
    eprintln!(
        "dark region: {} requests, success {:.4}%, all on secondary {:.0} ms after the failure; \
         after recovery: secondary's share {held:.2} for failback_after; primary served again \
         {:.0} ms after it was back and had all the traffic after {:.0} ms (failback_after 1 s + ramp 1 s)",
        timeline.samples.len(),
        success * 100.0,
        failover.as_secs_f64() * 1000.0,
        first_back.as_secs_f64() * 1000.0,
        all_back.as_secs_f64() * 1000.0,
    );
    assert!(success >= 0.999, "success {success}: {:#?}", timeline.failures());
    assert!(failover < Duration::from_secs(2), "failover took {failover:?}");
    assert_eq!(held, 1.0, "traffic stayed on the secondary during failback_after");
    assert!(first_back >= Duration::from_secs(1), "back after {first_back:?}");
    // A 1 s ramp: both regions share the traffic for a while, rather than
    // all of it moving back at once.
    assert!(
        all_back >= first_back + Duration::from_millis(300),
        "ramped from {first_back:?} to {all_back:?}"
    );
    assert_eq!(after, 1.0, "all traffic back on the primary after the ramp");
}

#[tokio::test]
async fn a_total_outage_answers_fast_within_the_retry_budget_and_recovers() {
    let ledger = Ledger::new();
    let all = backends(&["a", "b"], &ledger).await;
    let extra = format!("{CHECKS}[route.retry]\nattempts = 3\n");
    let h = Harness::start(&config(&[("main", 0, &addrs(&all))], "", &extra)).await;
    let attempts = "levee_upstream_attempts_total{upstream=\"app\"}";
    let rate = 200;
    let load = tokio::spawn({
        let client = h.client();
        async move { open_loop(&client, rate, Duration::from_secs(6), 400, get).await }
    });
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = h.metric(attempts).await;
    let down_at = start.elapsed();
    for b in &all {
        b.kill().await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = h.metric(attempts).await - before;
    let up_at = start.elapsed();
    for b in &all {
        b.restart().await.expect("restart");
    }
    let timeline = load.await.expect("load");

    let outage: Vec<_> = timeline.window(down_at, up_at).collect();
    let amplification = during / outage.len() as f64;
    // Once the checks saw it, every answer is levee's fast 503.
    let settled: Vec<_> = timeline.window(down_at + Duration::from_secs(1), up_at).collect();
    let fast_503 = settled.iter().filter(|s| s.status == Some(503)).count();
    let slowest = settled.iter().map(|s| s.latency).max().unwrap_or_default();
    let recovered = timeline
        .window(up_at + Duration::from_secs(1), Duration::from_secs(6))
        .all(|s| s.status == Some(200));
    eprintln!(
        "total outage: {} requests during it, {:.3} upstream attempts per request, {fast_503}/{} answered 503 \
         once detected (slowest {:.1} ms); recovered: {recovered}",
        outage.len(),
        amplification,
        settled.len(),
        slowest.as_secs_f64() * 1000.0
    );
    assert!(amplification <= 1.2, "{amplification} attempts per request");
    assert_eq!(fast_503, settled.len());
    assert!(slowest < Duration::from_secs(1), "slowest 503 took {slowest:?}");
    assert!(recovered, "traffic flows again once the endpoints are back");
}

#[tokio::test]
async fn a_flapping_endpoint_changes_routing_no_faster_than_the_checks_allow() {
    let ledger = Ledger::new();
    let all = backends(&["a", "b", "c"], &ledger).await;
    // rise = fall = 4 at 200 ms: a state needs 800 ms of agreeing probes.
    let checks = "[upstream.app.health]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\n\
                  rise = 4\nfall = 4\njitter_percent = 0\n";
    let h = Harness::start(&config(&[("main", 0, &addrs(&all))], "", checks)).await;
    let healthy = format!(
        "levee_upstream_endpoint_healthy{{upstream=\"app\",region=\"main\",endpoint=\"{}\"}}",
        all[0].addr()
    );
    let start = Instant::now();
    let mut last = h.metric(&healthy).await;
    let mut changes = Vec::new();
    let mut up = true;
    let mut next_flip = start + Duration::from_millis(500);
    while start.elapsed() < Duration::from_secs(8) {
        if Instant::now() >= next_flip {
            if up {
                all[0].kill().await;
            } else {
                all[0].restart().await.expect("restart");
            }
            up = !up;
            next_flip += Duration::from_millis(500);
        }
        let now = h.metric(&healthy).await;
        if now != last {
            changes.push(start.elapsed());
            last = now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "flapping endpoint (500 ms up, 500 ms down) for 8 s: {} state changes",
        changes.len()
    );
    // Up or down for 500 ms never gives 4 agreeing probes in a row.
    assert!(changes.len() <= 1, "state changed at {changes:?}");
}

#[tokio::test]
async fn a_low_success_rate_is_ejected_by_the_statistics() {
    let ledger = Ledger::new();
    let all = backends(&["a", "b", "c", "d", "e"], &ledger).await;
    all[4].set_behaviour(Behaviour::Status(500));
    // Only the success-rate detector: the streak detectors are off.
    let extra = "[upstream.app.outlier]\nconsecutive_5xx = 0\nconsecutive_gateway_failure = 0\n\
                 max_ejection_percent = 20\nsuccess_rate_min_hosts = 5\nsuccess_rate_request_volume = 20\n\
                 success_rate_interval = \"500ms\"\n[route.retry]\nattempts = 1\n";
    let h = Harness::start(&config(&[("main", 0, &addrs(&all))], "", extra)).await;
    let series = |b: &Backend| {
        format!(
            "levee_upstream_ejections_total{{upstream=\"app\",region=\"main\",endpoint=\"{}\",detector=\"success_rate\"}}",
            b.addr()
        )
    };
    let limit = Instant::now() + SETTLE;
    while h.metric(&series(&all[4])).await < 1.0 && Instant::now() < limit {
        let _ = levee_testkit::load(&h.client(), 100, 10, SETTLE, get).await;
    }
    assert_eq!(
        h.metric(&series(&all[4])).await,
        1.0,
        "the failing endpoint was ejected"
    );
    // Out of rotation now: a burst of requests is all answered well.
    let report = levee_testkit::load(&h.client(), 200, 10, SETTLE, get).await;
    assert_eq!(report.ok_2xx, 200, "{report:?}");
    for b in &all[..4] {
        assert_eq!(h.metric(&series(b)).await, 0.0, "{} was not ejected", b.name());
    }
}
