//! Alerting on the real gateway: each kind of rule fires on a real fault
//! and resolves when it ends, as a recording webhook receiver sees it; a
//! receiver that never answers leaves the proxy's latency alone; and the
//! time from a region failure to the alert at the receiver, measured.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use levee_testkit::{Backend, Behaviour, Blackhole, Client, Received, Receiver, RedisServer};
use serde_json::Value;
use tokio::time::Instant;

use crate::support::*;

/// Fast active checks: an endpoint is out after two failed probes 100 ms
/// apart, back after two passed ones.
const CHECKS: &str = "[upstream.app.health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\njitter_percent = 0\n";

/// Rules evaluated every 100 ms, notified at once to a webhook.
fn alerting(receiver: &Receiver, rules: &str) -> String {
    format!(
        "\n[alerting]\nevaluation_interval = \"100ms\"\n\n\
         [alerting.notifier.hook]\nkind = \"webhook\"\nurl = \"{}\"\ngroup_wait = \"0s\"\ngroup_interval = \"0s\"\n\n{rules}",
        receiver.url("/hook")
    )
}

fn rule(name: &str, kind: &str, keys: &str) -> String {
    format!("[[alert]]\nname = \"{name}\"\nkind = \"{kind}\"\n{keys}\n")
}

/// The alert of `rule` in `status` that a notification carries, if any.
fn alert_in(r: &Received, rule: &str, status: &str) -> Option<Value> {
    let body: Value = serde_json::from_slice(&r.body).ok()?;
    body["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["rule"] == rule && a["status"] == status)
        .cloned()
}

/// Waits for the first notification with an alert of `rule` in `status`;
/// returns the alert and when it arrived.
async fn notified(receiver: &Receiver, rule: &str, status: &str) -> (Value, std::time::Instant) {
    let r = receiver
        .wait_until(SETTLE, &format!("{rule} {status} at the receiver"), |r| {
            alert_in(r, rule, status).is_some()
        })
        .await;
    (alert_in(&r, rule, status).expect("matched"), r.at)
}

async fn json(admin: SocketAddr, path: &str) -> Value {
    let reply = Client::http1(admin).get(path).await.expect("admin answers");
    serde_json::from_slice(&reply.body).expect("JSON")
}

async fn receiver() -> Receiver {
    Receiver::start().await.expect("receiver starts")
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::new(Bytes::new())).expect("request")
}

#[tokio::test]
async fn endpoint_down_fires_when_an_endpoint_dies_and_resolves_when_it_returns() {
    let receiver = receiver().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let h = Harness::start(&config(
        &[("local", 0, &[a.addr(), b.addr()])],
        CHECKS,
        &alerting(
            &receiver,
            &rule("down", "endpoint_down", "severity = \"critical\""),
        ),
    ))
    .await;
    a.kill().await;
    let (alert, _) = notified(&receiver, "down", "firing").await;
    assert_eq!(alert["labels"]["endpoint"], a.addr().to_string());
    assert_eq!(alert["labels"]["region"], "local");
    assert_eq!(alert["labels"]["upstream"], "app");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["value"], 1.0);
    // The API and the event stream show it too.
    let active = json(h.admin, "/api/v1/alerts").await;
    assert_eq!(active[0]["rule"], "down", "{active}");
    assert_eq!(active[0]["state"], "firing");
    assert_eq!(active[0]["labels"]["endpoint"], a.addr().to_string());
    h.eventually_metric("levee_alerts_firing{rule=\"down\",severity=\"critical\"}", 1.0)
        .await;

    a.restart().await.expect("a restarts");
    let (alert, _) = notified(&receiver, "down", "resolved").await;
    assert_eq!(alert["labels"]["endpoint"], a.addr().to_string());
    let events = json(h.admin, "/api/v1/events/recent").await;
    let states: Vec<&str> = events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "alert" && e["rule"] == "down")
        .filter_map(|e| e["state"].as_str())
        .collect();
    assert_eq!(states, ["firing", "resolved"], "{events}");
    assert!(
        json(h.admin, "/api/v1/alerts")
            .await
            .as_array()
            .expect("list")
            .is_empty()
    );
    let notifiers = json(h.admin, "/api/v1/notifiers").await;
    assert_eq!(notifiers[0]["name"], "hook");
    assert!(notifiers[0]["sent"].as_u64() >= Some(2), "{notifiers}");
}

#[tokio::test]
async fn region_degraded_fires_below_its_healthy_share() {
    let receiver = receiver().await;
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let _h = Harness::start(&config(
        &[("local", 0, &[a.addr(), b.addr()])],
        CHECKS,
        &alerting(
            &receiver,
            &rule("degraded", "region_degraded", "threshold = 0.75"),
        ),
    ))
    .await;
    a.kill().await;
    let (alert, _) = notified(&receiver, "degraded", "firing").await;
    assert_eq!(alert["labels"]["region"], "local");
    assert_eq!(alert["value"], 0.5);
    assert_eq!(
        alert["annotations"]["summary"],
        "region local of app: 50% of its endpoints healthy"
    );
    a.restart().await.expect("a restarts");
    notified(&receiver, "degraded", "resolved").await;
}

/// The reference topology's health checks (examples/two-regions.toml) and
/// the default evaluation interval (1 s), so the time measured is the one
/// an operator of that config gets.
#[tokio::test]
async fn failover_active_reaches_the_receiver_soon_after_a_region_fails() {
    let receiver = receiver().await;
    let p1 = Backend::start("p1").await;
    let p2 = Backend::start("p2").await;
    let s1 = Backend::start("s1").await;
    let checks = "[upstream.app.health]\npath = \"/healthz\"\ninterval = \"1s\"\ntimeout = \"500ms\"\nrise = 2\nfall = 2\n\
                  [upstream.app.failover]\nfailback_after = \"0s\"\nramp = \"0s\"\n";
    let alerting = format!(
        "\n[alerting.notifier.hook]\nkind = \"webhook\"\nurl = \"{}\"\ngroup_wait = \"0s\"\ngroup_interval = \"0s\"\n\n{}",
        receiver.url("/hook"),
        // Above half: the whole region, not the spill-over of its first
        // endpoint to fail.
        rule(
            "app-failover",
            "failover_active",
            "severity = \"critical\"\nthreshold = 0.5"
        )
    );
    let h = Harness::start(&config(
        &[
            ("primary", 0, &[p1.addr(), p2.addr()]),
            ("secondary", 1, &[s1.addr()]),
        ],
        checks,
        &alerting,
    ))
    .await;
    // Every endpoint healthy and checked before the failure.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let failed_at = std::time::Instant::now();
    p1.kill().await;
    p2.kill().await;
    let (alert, arrived) = notified(&receiver, "app-failover", "firing").await;
    let took = arrived.duration_since(failed_at);
    println!(
        "region failure -> failover alert at the receiver: {} ms \
         (health checks every 1 s, fall 2; evaluation every 1 s; group_wait 0s)",
        took.as_millis()
    );
    assert_eq!(alert["labels"]["upstream"], "app");
    assert_eq!(alert["value"], 1.0);
    assert_eq!(
        alert["annotations"]["summary"],
        "app: 100% of requests failed over from the preferred region"
    );
    // Health checks need up to fall × interval + timeout, evaluation one
    // interval: well under 10 s on any machine.
    assert!(took < Duration::from_secs(10), "{took:?}");
    let answer = h.client().get("/").await.expect("reply");
    assert_eq!(answer.header("x-backend"), Some("s1"));

    p1.restart().await.expect("p1 restarts");
    p2.restart().await.expect("p2 restarts");
    notified(&receiver, "app-failover", "resolved").await;
}

#[tokio::test]
async fn error_ratio_fires_on_a_backend_answering_500() {
    let receiver = receiver().await;
    let a = Backend::builder("a")
        .behaviour(Behaviour::Status(500))
        .start()
        .await
        .expect("a");
    let h = Harness::start(&config(
        &[("local", 0, &[a.addr()])],
        "[route.retry]\nattempts = 1\n",
        &alerting(
            &receiver,
            &rule("errors", "error_ratio", "threshold = 0.5\nwindow = \"2s\""),
        ),
    ))
    .await;
    let report = levee_testkit::load(&h.client(), 20, 2, SETTLE, |i| get(&format!("/e/{i}"))).await;
    assert_eq!(report.statuses.get(&500), Some(&20), "{report:?}");
    let (alert, _) = notified(&receiver, "errors", "firing").await;
    assert_eq!(alert["labels"]["upstream"], "app");
    assert_eq!(
        alert["annotations"]["summary"],
        "app: 100% of responses are errors"
    );
    // The errors age out of the 2 s window.
    a.set_behaviour(Behaviour::Normal);
    notified(&receiver, "errors", "resolved").await;
}

#[tokio::test]
async fn latency_p99_fires_on_a_slow_backend() {
    let receiver = receiver().await;
    let a = Backend::builder("a")
        .behaviour(Behaviour::Delay(Duration::from_millis(300)))
        .start()
        .await
        .expect("a");
    let h = Harness::start(&config(
        &[("local", 0, &[a.addr()])],
        "",
        &alerting(
            &receiver,
            &rule("slow", "latency_p99", "threshold = \"100ms\"\nwindow = \"2s\""),
        ),
    ))
    .await;
    let report = levee_testkit::load(&h.client(), 6, 2, SETTLE, |i| get(&format!("/s/{i}"))).await;
    assert_eq!(report.statuses.get(&200), Some(&6), "{report:?}");
    let (alert, _) = notified(&receiver, "slow", "firing").await;
    let p99 = alert["value"].as_f64().expect("value");
    // The history's histogram is within 19% of the exact value.
    assert!((0.24..0.4).contains(&p99), "p99 {p99}");
    a.set_behaviour(Behaviour::Normal);
    notified(&receiver, "slow", "resolved").await;
}

#[tokio::test]
async fn shedding_fires_while_adaptive_concurrency_sheds() {
    let receiver = receiver().await;
    let a = Backend::builder("a")
        .behaviour(Behaviour::Delay(Duration::from_millis(500)))
        .start()
        .await
        .expect("a");
    let h = Harness::start(&config(
        &[("local", 0, &[a.addr()])],
        "[route.retry]\nattempts = 1\n\
         [upstream.app.adaptive_concurrency]\ninitial_limit = 2\nmin_limit = 1\nmax_limit = 2\n",
        &alerting(&receiver, &rule("shedding", "shedding", "window = \"2s\"")),
    ))
    .await;
    let report = levee_testkit::load(&h.client(), 20, 10, SETTLE, |i| get(&format!("/x/{i}"))).await;
    let shed = report.statuses.get(&503).copied().unwrap_or(0);
    assert!(shed > 0, "{report:?}");
    let (alert, _) = notified(&receiver, "shedding", "firing").await;
    assert_eq!(alert["labels"]["upstream"], "app");
    assert!(alert["value"].as_f64() > Some(0.0), "{alert}");
    notified(&receiver, "shedding", "resolved").await;
}

#[tokio::test]
async fn rate_limited_fires_while_a_rule_refuses_requests() {
    let receiver = receiver().await;
    let a = Backend::start("a").await;
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[listener.main]\naddress = \"127.0.0.1:0\"\nrate_limits = [\"tight\"]\n\n\
         [rate_limit.tight]\nrate = 1\nburst = 1\n\n\
         [[route]]\nname = \"all\"\nupstream = \"app\"\n\n\
         [upstream.app.region.local]\nendpoints = [\"{}\"]\n{}",
        a.addr(),
        alerting(
            &receiver,
            &rule(
                "limited",
                "rate_limited",
                "rate_limit = \"tight\"\nthreshold = 1\nwindow = \"2s\"",
            )
        )
    );
    let h = Harness::start(&toml).await;
    let report = levee_testkit::load(&h.client(), 20, 1, SETTLE, |i| get(&format!("/r/{i}"))).await;
    assert!(
        report.statuses.get(&429).copied().unwrap_or(0) >= 15,
        "{report:?}"
    );
    let (alert, _) = notified(&receiver, "limited", "firing").await;
    assert_eq!(alert["labels"]["rate_limit"], "tight");
    assert!(alert["value"].as_f64() > Some(1.0), "{alert}");
    notified(&receiver, "limited", "resolved").await;
}

#[tokio::test]
async fn retry_budget_exhausted_fires_when_retries_are_refused() {
    let receiver = receiver().await;
    let a = Backend::builder("a")
        .behaviour(Behaviour::Status(503))
        .start()
        .await
        .expect("a");
    let h = Harness::start(&config(
        &[("local", 0, &[a.addr()])],
        "[route.retry]\nattempts = 5\nbackoff_base = \"1ms\"\nbackoff_max = \"1ms\"\n\
         [upstream.app.retry_budget]\npercent = 0\nmin_per_second = 2\n",
        &alerting(
            &receiver,
            &rule("budget", "retry_budget_exhausted", "window = \"2s\""),
        ),
    ))
    .await;
    let report = levee_testkit::load(&h.client(), 30, 5, SETTLE, |i| get(&format!("/b/{i}"))).await;
    assert_eq!(report.statuses.get(&503), Some(&30), "{report:?}");
    let (alert, _) = notified(&receiver, "budget", "firing").await;
    assert_eq!(alert["labels"]["upstream"], "app");
    assert!(alert["value"].as_f64() > Some(0.0), "{alert}");
    notified(&receiver, "budget", "resolved").await;
}

#[tokio::test]
async fn redis_degraded_fires_while_redis_is_down() {
    let receiver = receiver().await;
    let mut redis = RedisServer::start().await.expect("redis-server starts");
    let a = Backend::start("a").await;
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[listener.main]\naddress = \"127.0.0.1:0\"\nrate_limits = [\"shared\"]\n\n\
         [redis]\naddress = \"{}\"\ntimeout = \"50ms\"\n\n\
         [rate_limit.shared]\nrate = 1000\nbackend = \"redis\"\n\n\
         [[route]]\nname = \"all\"\nupstream = \"app\"\n\n\
         [upstream.app.region.local]\nendpoints = [\"{}\"]\n{}",
        redis.addr(),
        a.addr(),
        alerting(&receiver, &rule("redis", "redis_degraded", ""))
    );
    let h = Harness::start(&toml).await;
    h.eventually_metric("levee_rate_limit_redis_up", 1.0).await;
    redis.kill();
    // Requests go on (decided locally) and show levee that Redis is gone.
    for i in 0..3 {
        let reply = h.client().get(&format!("/x/{i}")).await.expect("reply");
        assert_eq!(reply.status, 200);
    }
    let (alert, _) = notified(&receiver, "redis", "firing").await;
    assert_eq!(
        alert["annotations"]["summary"],
        "Redis is unreachable: rate limits decide locally"
    );
    redis.restart().await.expect("redis-server restarts");
    notified(&receiver, "redis", "resolved").await;
}

#[tokio::test]
async fn reload_failed_fires_on_a_refused_reload_until_one_succeeds() {
    let receiver = receiver().await;
    let a = Backend::start("a").await;
    let good = config(
        &[("local", 0, &[a.addr()])],
        "",
        &alerting(&receiver, &rule("reload", "reload_failed", "")),
    );
    let h = Harness::start_file(&good, false).await;
    std::fs::write(
        h.config_path(),
        format!("{good}\n[upstream.app]\nbalance = \"sideways\"\n"),
    )
    .expect("write");
    let reply = api_reload(h.admin).await.expect("reload answers");
    assert_eq!(reply.status, 422);
    let (alert, _) = notified(&receiver, "reload", "firing").await;
    assert_eq!(alert["labels"]["alertname"], "reload");
    std::fs::write(h.config_path(), &good).expect("write");
    let reply = api_reload(h.admin).await.expect("reload answers");
    assert_eq!(reply.status, 200);
    notified(&receiver, "reload", "resolved").await;
}

/// Latencies of `n` sequential GETs.
async fn latencies(client: &Client, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let reply = client.get(&format!("/l/{i}")).await.expect("reply");
        assert_eq!(reply.status, 200);
        out.push(started.elapsed());
    }
    out.sort();
    out
}

/// A gateway whose upstream `app` is healthy, with an upstream `dead` of
/// 20 endpoints nobody listens on: 20 endpoint_down alerts, each its own
/// group, repeated every 100 ms, to `url`.
fn flooding(app: SocketAddr, dead: &[SocketAddr], url: &str) -> String {
    let dead: Vec<String> = dead.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[listener.main]\naddress = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"all\"\nupstream = \"app\"\n\n\
         [upstream.app.region.local]\nendpoints = [\"{app}\"]\n\n\
         [upstream.dead.health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nfall = 1\n\
         [upstream.dead.region.local]\nendpoints = [{}]\n\n\
         [alerting]\nevaluation_interval = \"100ms\"\n\n\
         [alerting.notifier.flood]\nkind = \"webhook\"\nurl = \"{url}\"\ngroup_by = [\"...\"]\ngroup_wait = \"0s\"\n\
         repeat_interval = \"100ms\"\ntimeout = \"5s\"\nmax_retries = 1\nbackoff_base = \"10ms\"\nbackoff_max = \"10ms\"\nqueue = 10\n\n\
         [[alert]]\nname = \"dead-down\"\nkind = \"endpoint_down\"\nupstream = \"dead\"\n",
        dead.join(", ")
    )
}

fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_slow_the_proxy() {
    let app = Backend::start("app").await;
    // Port 9 of 20 loopback addresses: nothing listens, connections are
    // refused (distinct addresses, so no two endpoints are the same).
    let dead: Vec<SocketAddr> = (2..22).map(|i| SocketAddr::from(([127, 0, 0, i], 9))).collect();
    let n = 300;

    // Baseline: the same flood of notifications to a receiver that answers.
    let good = Receiver::start().await.expect("receiver");
    let h = Harness::start(&flooding(app.addr(), &dead, &good.url("/"))).await;
    good.wait_for(20, SETTLE).await;
    let baseline = latencies(&h.client(), n).await;
    drop(h);

    // A receiver that accepts connections and never answers.
    let hole = Blackhole::start().await.expect("blackhole");
    let h = Harness::start(&flooding(app.addr(), &dead, &format!("http://{}/", hole.addr()))).await;
    h.eventually_metric(
        "levee_alerts_firing{rule=\"dead-down\",severity=\"warning\"}",
        20.0,
    )
    .await;
    let flooded = latencies(&h.client(), n).await;
    println!(
        "proxy latency over {n} requests, notifications flooding a receiver that answers: median {:?}, max {:?}; \
         one that never answers: median {:?}, max {:?}",
        median(&baseline),
        baseline[n - 1],
        median(&flooded),
        flooded[n - 1],
    );
    let dropped = h
        .metric("levee_alert_notifications_dropped_total{notifier=\"flood\"}")
        .await;
    println!("notifications dropped meanwhile: {dropped}");
    assert!(dropped > 0.0, "the dead receiver's queue overflowed");
    assert!(hole.connections() >= 1);
    // Robust on a busy machine: a request that waited for the receiver
    // would take the notifier's whole 5 s timeout; half of it is far above
    // any stall of a loaded machine (seen: 4-11 ms).
    assert!(
        flooded[n - 1] < Duration::from_millis(2500),
        "{:?}",
        flooded[n - 1]
    );
    assert!(
        median(&flooded) < median(&baseline) * 5 + Duration::from_millis(5),
        "median {:?} vs {:?}",
        median(&flooded),
        median(&baseline)
    );
}
