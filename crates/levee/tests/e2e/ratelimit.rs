//! Rate limits: 429 with `Retry-After` and the `RateLimit` fields, keys,
//! accuracy under a flood, and fleet-wide limits shared through a real
//! Redis that is killed mid-test.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use levee_testkit::{Backend, Client, RawConn, RawResponse, RedisServer};
use tokio::time::Instant;

use crate::strict::assert_generated;
use crate::support::*;

/// Listener "main", one route "all" naming `route_rules`, the `rules`
/// tables, and `extra` TOML.
fn gateway(listener_rules: &str, route_rules: &str, rules: &str, backend: SocketAddr) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[listener.main]\naddress = \"127.0.0.1:0\"\nrate_limits = [{listener_rules}]\n\n\
         [[route]]\nname = \"all\"\nupstream = \"app\"\nrate_limits = [{route_rules}]\n[route.match]\npath_prefix = \"/app\"\n\n\
         [upstream.app.region.local]\nendpoints = [\"{backend}\"]\n\n{rules}\n"
    )
}

async fn get(from: &str, addr: SocketAddr, path: &str, extra: &str) -> RawResponse {
    let mut conn = RawConn::connect_from(from.parse().expect("ip"), addr)
        .await
        .expect("connect");
    conn.send(format!("GET {path} HTTP/1.1\r\nHost: a\r\n{extra}\r\n").as_bytes())
        .await
        .expect("send");
    conn.read_response(SETTLE).await.expect("a response")
}

#[tokio::test]
async fn over_the_limit_is_429_with_retry_after_and_ratelimit_fields() {
    let backend = Backend::start("b1").await;
    let rules = "[rate_limit.per_client]\nrate = 2\nper = \"1s\"\nburst = 3\n";
    let h = Harness::start(&gateway("", "\"per_client\"", rules, backend.addr())).await;
    for i in 0..3 {
        let res = get("127.0.0.10", h.addr, "/app", "").await;
        assert_eq!(res.status, 200, "request {i} is within the burst");
    }
    let res = get("127.0.0.10", h.addr, "/app", "").await;
    assert_generated("over the limit", &res, 429, "http_request_denied");
    assert_eq!(res.header("retry-after"), Some("1"));
    assert_eq!(res.header("ratelimit-policy"), Some("\"per_client\";q=2;w=1"));
    let ratelimit = res.header("ratelimit").expect("RateLimit field");
    assert!(ratelimit.starts_with("\"per_client\";r=0;t="), "{ratelimit}");
    // Another client has its own bucket.
    assert_eq!(get("127.0.0.11", h.addr, "/app", "").await.status, 200);
    // Nothing refused reached the backend.
    assert_eq!(backend.ledger().len(), 4);
    assert_eq!(
        h.metric("levee_rate_limit_decisions_total{rule=\"per_client\",decision=\"limited\"}")
            .await,
        1.0
    );
    assert_eq!(
        h.metric("levee_rate_limit_decisions_total{rule=\"per_client\",decision=\"allowed\"}")
            .await,
        4.0
    );
}

#[tokio::test]
async fn a_header_key_limits_each_value_and_skips_requests_without_it() {
    let backend = Backend::start("b1").await;
    let rules = "[rate_limit.per_key]\nrate = 1\nper = \"1m\"\nkey = [\"header:x-api-key\"]\n";
    let h = Harness::start(&gateway("", "\"per_key\"", rules, backend.addr())).await;
    assert_eq!(
        get("127.0.0.10", h.addr, "/app", "X-Api-Key: a\r\n").await.status,
        200
    );
    assert_eq!(
        get("127.0.0.10", h.addr, "/app", "X-Api-Key: a\r\n").await.status,
        429
    );
    // Same client, another key.
    assert_eq!(
        get("127.0.0.10", h.addr, "/app", "X-Api-Key: b\r\n").await.status,
        200
    );
    // No key: the rule does not apply.
    for _ in 0..3 {
        assert_eq!(get("127.0.0.10", h.addr, "/app", "").await.status, 200);
    }
}

#[tokio::test]
async fn a_listener_limit_applies_before_routing() {
    let backend = Backend::start("b1").await;
    let rules = "[rate_limit.door]\nrate = 2\nper = \"1m\"\n";
    let h = Harness::start(&gateway("\"door\"", "", rules, backend.addr())).await;
    // Requests that match no route count too: a flood of 404s is a flood.
    assert_eq!(get("127.0.0.10", h.addr, "/nowhere", "").await.status, 404);
    assert_eq!(get("127.0.0.10", h.addr, "/app", "").await.status, 200);
    let res = get("127.0.0.10", h.addr, "/nowhere", "").await;
    assert_generated("listener limit", &res, 429, "http_request_denied");
    assert_eq!(backend.ledger().len(), 1);
}

/// Sends `count` requests at `rate` per second, open loop, with header
/// `x-client: name`; returns (statuses, the time from first to last send).
async fn paced(client: &Client, name: &'static str, rate: u32, count: u32) -> (Vec<u16>, Duration) {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut first = None;
    let mut last = start;
    for i in 0..count {
        tokio::time::sleep_until(start + period * i).await;
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        let client = client.clone();
        tasks.spawn(async move {
            let req = http::Request::get("/app")
                .header("x-client", name)
                .body(Full::new(Bytes::new()))
                .expect("request");
            client.send(req).await.map(|r| r.status).unwrap_or(0)
        });
    }
    let mut statuses = Vec::new();
    while let Some(s) = tasks.join_next().await {
        statuses.push(s.expect("task"));
    }
    (statuses, last - first.unwrap_or(start))
}

#[tokio::test]
async fn a_flooding_client_gets_its_limit_and_a_polite_one_never_sees_429() {
    let backend = Backend::start("b1").await;
    let rules = "[rate_limit.per_client]\nrate = 50\nper = \"1s\"\nburst = 5\nkey = [\"header:x-client\"]\n";
    let h = Harness::start(&gateway("", "\"per_client\"", rules, backend.addr())).await;
    let client = h.client().with_timeout(SETTLE);
    // 5x the limit for 4 s, and 80% of it, side by side.
    let ((flood, flood_span), (polite, _)) = tokio::join!(
        paced(&client, "flood", 250, 1000),
        paced(&client, "polite", 40, 160),
    );
    assert!(
        flood.iter().chain(&polite).all(|s| *s == 200 || *s == 429),
        "only 200s and 429s"
    );
    let admitted = flood.iter().filter(|s| **s == 200).count() as f64;
    // What GCRA admits over the span the requests were actually sent in.
    let expected = 5.0 + 50.0 * flood_span.as_secs_f64();
    println!("flood: {admitted} admitted of 1000 over {flood_span:?}, limit gives {expected:.0}");
    assert!(
        (admitted - expected).abs() <= expected * 0.10,
        "admitted {admitted}, expected {expected:.0} ± 10%"
    );
    assert_eq!(
        polite.iter().filter(|s| **s == 429).count(),
        0,
        "the polite client was limited"
    );
}

/// A config for one of two instances sharing a Redis rule.
fn fleet_member(redis: SocketAddr, backend: SocketAddr) -> String {
    let rules = format!(
        "[redis]\naddress = \"{redis}\"\ntimeout = \"50ms\"\n\n\
         [rate_limit.shared]\nrate = 20\nper = \"1s\"\nburst = 20\nbackend = \"redis\"\ninstances = 2\nkey = [\"header:x-client\"]\n"
    );
    gateway("", "\"shared\"", &rules, backend)
}

/// Sends `n` requests as fast as it can, alternating between instances;
/// returns the 200s per instance and how long it took.
async fn burst(instances: &[&Harness], n: usize) -> (Vec<usize>, Duration) {
    let start = Instant::now();
    let mut ok = vec![0; instances.len()];
    for i in 0..n {
        let which = i % instances.len();
        let res = get("127.0.0.10", instances[which].addr, "/app", "X-Client: c\r\n").await;
        assert!(res.status == 200 || res.status == 429, "status {}", res.status);
        if res.status == 200 {
            ok[which] += 1;
        }
    }
    (ok, start.elapsed())
}

#[tokio::test]
async fn instances_share_a_redis_limit_and_fall_back_to_their_share_when_it_dies() {
    let mut redis = RedisServer::start().await.expect("redis-server starts");
    let backend = Backend::start("b1").await;
    let a = Harness::start(&fleet_member(redis.addr(), backend.addr())).await;
    let b = Harness::start(&fleet_member(redis.addr(), backend.addr())).await;
    for h in [&a, &b] {
        h.eventually_metric("levee_rate_limit_redis_up", 1.0).await;
    }

    // Shared: 40 requests over both instances get the one budget of 20
    // (plus what refills while they are sent), not 20 each.
    let (ok, took) = burst(&[&a, &b], 40).await;
    let total = ok.iter().sum::<usize>() as f64;
    let most = 20.0 + 20.0 * took.as_secs_f64() + 1.0;
    println!("shared: {ok:?} admitted in {took:?} (most {most:.1})");
    assert!(
        total >= 20.0 && total <= most,
        "admitted {total}, expected 20..={most:.1}"
    );
    assert!(ok.iter().all(|n| *n > 0), "both instances admitted some: {ok:?}");

    // Redis dies: every request is still answered at once, and each
    // instance enforces its own share (10 + refill).
    redis.kill();
    let before = Instant::now();
    let (ok, took) = burst(&[&a], 30).await;
    let most = 10.0 + 10.0 * took.as_secs_f64() + 1.0;
    println!("redis down: {ok:?} admitted by one instance in {took:?} (most {most:.1})");
    assert!(
        ok[0] >= 10 && ok[0] as f64 <= most,
        "admitted {}, expected 10..={most:.1}",
        ok[0]
    );
    assert!(
        before.elapsed() < SETTLE,
        "30 requests took {:?}: requests waited on a dead Redis",
        before.elapsed()
    );
    assert_eq!(a.metric("levee_rate_limit_redis_up").await, 0.0);
    assert!(
        a.metric("levee_rate_limit_redis_fallbacks_total{rule=\"shared\"}")
            .await
            >= 30.0
    );

    // Redis returns: the instances reconnect by themselves.
    redis.restart().await.expect("redis-server restarts");
    for h in [&a, &b] {
        h.eventually_metric("levee_rate_limit_redis_up", 1.0).await;
    }
    let fallbacks = a
        .metric("levee_rate_limit_redis_fallbacks_total{rule=\"shared\"}")
        .await;
    let res = get("127.0.0.10", a.addr, "/app", "X-Client: fresh\r\n").await;
    assert_eq!(res.status, 200);
    assert_eq!(
        a.metric("levee_rate_limit_redis_fallbacks_total{rule=\"shared\"}")
            .await,
        fallbacks,
        "decided by Redis again"
    );
    // Each change was an event, which is what wakes the Redis alert rule.
    let changes: Vec<bool> = a
        .events("redis")
        .await
        .iter()
        .map(|e| e["up"].as_bool().expect("up"))
        .collect();
    assert_eq!(changes, [true, false, true]);
    assert_eq!(a.events("redis").await[0]["address"], redis.addr().to_string());
}

#[tokio::test]
async fn a_stalled_redis_costs_a_request_at_most_its_timeout() {
    let redis = RedisServer::start().await.expect("redis-server starts");
    let backend = Backend::start("b1").await;
    let a = Harness::start(&fleet_member(redis.addr(), backend.addr())).await;
    a.eventually_metric("levee_rate_limit_redis_up", 1.0).await;
    redis.pause().expect("SIGSTOP");
    // Connected but silent: each request waits at most redis.timeout
    // (50 ms here), then decides on this instance's share; after a few
    // timeouts in a row levee stops asking for a while.
    let mut slowest = Duration::ZERO;
    let mut statuses = Vec::new();
    let began = Instant::now();
    for _ in 0..20 {
        let start = Instant::now();
        statuses.push(get("127.0.0.10", a.addr, "/app", "X-Client: s\r\n").await.status);
        slowest = slowest.max(start.elapsed());
    }
    let took = began.elapsed();
    // A connection that stopped answering is not trusted for long: it is
    // dropped and the instance counts Redis as down until it answers.
    a.eventually_metric("levee_rate_limit_redis_up", 0.0).await;
    redis.resume().expect("SIGCONT");
    println!("stalled redis: slowest request {slowest:?}, statuses {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429));
    // The local share: a burst of 10, refilling at 10/s.
    let admitted = statuses.iter().filter(|s| **s == 200).count() as f64;
    let most = 10.0 + 10.0 * took.as_secs_f64() + 1.0;
    assert!(
        (10.0..=most).contains(&admitted),
        "admitted {admitted}, expected 10..={most:.1}"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "a request waited {slowest:?} on a stalled Redis"
    );
    assert!(
        a.metric("levee_rate_limit_redis_fallbacks_total{rule=\"shared\"}")
            .await
            >= 20.0
    );
}

#[tokio::test]
async fn a_reload_keeps_the_buckets_of_unchanged_rules() {
    let backend = Backend::start("b1").await;
    let rules = "[rate_limit.slow]\nrate = 1\nper = \"1h\"\n";
    let h = Harness::start_file(&gateway("", "\"slow\"", rules, backend.addr()), false).await;
    assert_eq!(get("127.0.0.10", h.addr, "/app", "").await.status, 200);
    assert_eq!(get("127.0.0.10", h.addr, "/app", "").await.status, 429);
    // Same rule, something else changed: the bucket stays empty.
    let changed = gateway("", "\"slow\"", rules, backend.addr()).replace("\"/app\"", "\"/ap\"");
    std::fs::write(h.config_path(), &changed).expect("write");
    let reply = api_reload(h.admin).await.expect("reload");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(get("127.0.0.10", h.addr, "/app", "").await.status, 429);
    // A changed rule starts afresh.
    let loosened = changed.replace("rate = 1\n", "rate = 2\n");
    std::fs::write(h.config_path(), &loosened).expect("write");
    let reply = api_reload(h.admin).await.expect("reload");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(get("127.0.0.10", h.addr, "/app", "").await.status, 200);
}

/// `GET path` requests one after another on one keep-alive connection
/// from `from`, until `until`; returns (statuses, latencies).
async fn closed_loop(
    from: &'static str,
    addr: SocketAddr,
    path: &'static str,
    until: Instant,
) -> Vec<(u16, Duration)> {
    let connect = || async {
        RawConn::connect_from(from.parse().expect("ip"), addr)
            .await
            .expect("connect")
    };
    let mut conn = connect().await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut out = Vec::new();
    while Instant::now() < until {
        let start = Instant::now();
        conn.send(request.as_bytes()).await.expect("send");
        let res = conn.read_response(SETTLE).await.expect("response");
        out.push((res.status, start.elapsed()));
        // max_requests_per_connection: start a new one, as clients do.
        if res.header("connection") == Some("close") {
            conn = connect().await;
        }
    }
    out
}

/// One request every `period` from `from` on fresh connections, until
/// `until`; returns (statuses, latencies).
async fn steady(from: &str, addr: SocketAddr, period: Duration, until: Instant) -> Vec<(u16, Duration)> {
    let mut out = Vec::new();
    let mut next = Instant::now();
    while next < until {
        tokio::time::sleep_until(next).await;
        let start = Instant::now();
        let res = get(from, addr, "/app/legit", "").await;
        out.push((res.status, start.elapsed()));
        next += period;
    }
    out
}

fn p99(samples: &[(u16, Duration)]) -> Duration {
    let mut l: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    l.sort();
    l.get((l.len() as f64 * 0.99) as usize)
        .or(l.last())
        .copied()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_flood_from_one_client_leaves_another_untouched() {
    let backend = Backend::start("b1").await;
    let rules = "[rate_limit.per_client]\nrate = 100\nper = \"1s\"\nburst = 20\n";
    let h = Harness::start(&gateway("", "\"per_client\"", rules, backend.addr())).await;

    // The legitimate client alone: its baseline.
    let baseline = steady(
        "127.0.0.11",
        h.addr,
        Duration::from_millis(50),
        Instant::now() + Duration::from_secs(2),
    )
    .await;
    // Then the same while 127.0.0.10 floods as fast as 16 connections go.
    let start = Instant::now();
    let until = start + Duration::from_secs(3);
    let mut floods = tokio::task::JoinSet::new();
    for _ in 0..16 {
        floods.spawn(closed_loop("127.0.0.10", h.addr, "/app/flood", until));
    }
    let legit = steady("127.0.0.11", h.addr, Duration::from_millis(50), until).await;
    let mut flood: Vec<(u16, Duration)> = Vec::new();
    while let Some(done) = floods.join_next().await {
        flood.extend(done.expect("flood task"));
    }
    let took = start.elapsed();
    let flood_ok = flood.iter().filter(|s| s.0 == 200).count();
    let limit = 20.0 + 100.0 * took.as_secs_f64();
    println!(
        "flood: {} requests ({:.0}/s), {flood_ok} admitted (limit {limit:.0}); legitimate: {} requests, p99 {:?} \
         (baseline p99 {:?})",
        flood.len(),
        flood.len() as f64 / took.as_secs_f64(),
        legit.len(),
        p99(&legit),
        p99(&baseline),
    );
    assert!(flood.iter().all(|s| s.0 == 200 || s.0 == 429));
    assert!(
        legit.iter().chain(&baseline).all(|s| s.0 == 200),
        "the legitimate client saw an error"
    );
    // The backend never saw more of the flood than the limit lets through.
    let reached = backend.ledger().count_path("/app/flood");
    assert_eq!(reached, flood_ok);
    assert!(
        reached as f64 <= limit + 1.0,
        "{reached} flood requests reached the backend"
    );
    // Not starved. Here levee, the flooder and the test share one process
    // and one runtime, so latency is bench/flood.sh's to measure (each in
    // its own process); this only catches the legitimate client waiting
    // behind the flood.
    assert!(
        p99(&legit) < Duration::from_secs(1),
        "legitimate p99 {:?}",
        p99(&legit)
    );
}

#[tokio::test]
async fn a_flushed_script_is_loaded_again() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let redis = RedisServer::start().await.expect("redis-server starts");
    let backend = Backend::start("b1").await;
    let a = Harness::start(&fleet_member(redis.addr(), backend.addr())).await;
    a.eventually_metric("levee_rate_limit_redis_up", 1.0).await;
    assert_eq!(
        get("127.0.0.10", a.addr, "/app", "X-Client: f\r\n").await.status,
        200
    );
    let fallbacks = "levee_rate_limit_redis_fallbacks_total{rule=\"shared\"}";
    assert_eq!(a.metric(fallbacks).await, 0.0);
    // Someone runs SCRIPT FLUSH: the next call gets NOSCRIPT.
    let mut s = tokio::net::TcpStream::connect(redis.addr())
        .await
        .expect("connect");
    s.write_all(b"SCRIPT FLUSH\r\n").await.expect("write");
    let mut ok = [0u8; 5];
    s.read_exact(&mut ok).await.expect("read");
    assert_eq!(&ok, b"+OK\r\n");
    assert_eq!(
        get("127.0.0.10", a.addr, "/app", "X-Client: f\r\n").await.status,
        200
    );
    assert_eq!(a.metric(fallbacks).await, 1.0, "decided locally once");
    // levee reconnects, loads the script again, and asks Redis as before.
    a.eventually_metric("levee_rate_limit_redis_up", 1.0).await;
    levee_testkit::eventually_async(SETTLE, "decisions through Redis again", || async {
        let before = a.metric(fallbacks).await;
        let res = get("127.0.0.10", a.addr, "/app", "X-Client: g\r\n").await;
        assert_eq!(res.status, 200);
        a.metric(fallbacks).await == before
    })
    .await;
}
