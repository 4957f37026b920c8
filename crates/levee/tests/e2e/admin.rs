//! The admin API: what it reports, what it changes, who may use it, its
//! event stream, and that its OpenAPI document describes it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use levee_testkit::{Backend, Behaviour, Client, eventually_async};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const CHECKS: &str = "[upstream.app.health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n[route.retry]\nattempts = 1\n";

async fn json(admin: SocketAddr, path: &str) -> Value {
    let r = Client::http1(admin).get(path).await.expect("reply");
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", r.text()))
}

async fn call(admin: SocketAddr, method: &str, path: &str, body: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let r = Client::http1(admin).send(req).await.expect("reply");
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

fn endpoint(upstream: &Value, address: SocketAddr) -> &Value {
    upstream["endpoints"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["address"] == address.to_string()))
        .unwrap_or_else(|| panic!("no endpoint {address} in {upstream}"))
}

async fn who_answers(c: &Client, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let r = c.get("/").await.expect("reply");
        seen.push(r.header("x-backend").unwrap_or("-").to_string());
    }
    seen
}

#[tokio::test]
async fn upstreams_show_regions_endpoints_and_their_state() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let s = Backend::start("s").await;
    let toml = config(
        &[
            ("primary", 0, &[a.addr(), b.addr()]),
            ("secondary", 1, &[s.addr()]),
        ],
        "",
        &format!("{CHECKS}[upstream.app.failover]\nfailback_after = \"0s\"\nramp = \"0s\"\n"),
    );
    let h = Harness::start(&toml).await;
    let c = h.client();
    for _ in 0..20 {
        assert_eq!(c.get("/").await.expect("reply").status, 200);
    }
    let ups = json(h.admin, "/api/v1/upstreams").await;
    let app = &ups[0];
    assert_eq!(app["name"], "app");
    assert_eq!(app["policy"], "round_robin");
    assert_eq!(app["failover_active"], false);
    assert_eq!(app["regions"][0]["name"], "primary");
    assert_eq!(app["regions"][0]["share"], 1.0);
    assert_eq!(app["regions"][1]["share"], 0.0);
    let ea = endpoint(app, a.addr());
    assert_eq!(ea["region"], "primary");
    assert_eq!(ea["state"], "healthy");
    assert_eq!(ea["weight"], 1);
    assert!(ea["latency_ms"].as_f64().is_some_and(|l| l > 0.0), "{ea}");
    eventually_async(SETTLE, "a check result is shown", || async {
        let ups = json(h.admin, "/api/v1/upstreams/app").await;
        endpoint(&ups, a.addr())["last_check"]["result"] == "ok"
    })
    .await;

    // The whole primary region fails its checks: traffic and the API move.
    a.set_behaviour(Behaviour::Status(503));
    b.set_behaviour(Behaviour::Status(503));
    eventually_async(SETTLE, "the API shows the failover", || async {
        let app = json(h.admin, "/api/v1/upstreams/app").await;
        app["failover_active"] == true
            && endpoint(&app, a.addr())["state"] == "unhealthy"
            && endpoint(&app, a.addr())["last_check"]["result"] == "failed"
            && app["regions"][1]["share"] == 1.0
            && app["regions"][0]["available"] == 0
    })
    .await;
    assert_eq!(
        h.metric("levee_upstream_failover_active{upstream=\"app\"}").await,
        1.0
    );
    assert_eq!(
        h.metric("levee_upstream_region_healthy_ratio{upstream=\"app\",region=\"primary\"}")
            .await,
        0.0
    );
    let events = json(h.admin, "/api/v1/events/recent").await;
    let kinds: Vec<&str> = events
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["kind"].as_str()).collect())
        .unwrap_or_default();
    assert!(kinds.contains(&"endpoint_health"), "{kinds:?}");
    assert!(kinds.contains(&"failover_started"), "{kinds:?}");

    a.set_behaviour(Behaviour::Normal);
    b.set_behaviour(Behaviour::Normal);
    eventually_async(SETTLE, "failover ends", || async {
        json(h.admin, "/api/v1/upstreams/app").await["failover_active"] == false
    })
    .await;
    let events = json(h.admin, "/api/v1/events/recent?limit=3").await;
    assert!(events.as_array().is_some_and(|e| e.len() <= 3));

    // Stats and history count the requests (sampled once a second).
    let counted = || async {
        let history = json(h.admin, "/api/v1/history").await;
        assert_eq!(history["upstreams"][0]["name"], "app");
        let points = history["upstreams"][0]["points"].clone();
        points
            .as_array()
            .map(|p| {
                p.iter()
                    .filter_map(|p| p["requests_per_second"].as_f64())
                    .sum::<f64>()
            })
            .unwrap_or(0.0)
    };
    eventually_async(SETTLE, "the history counts the 20 requests", || async {
        counted().await >= 20.0
    })
    .await;
    let app = json(h.admin, "/api/v1/upstreams/app").await;
    assert!(
        app["stats"]["p99_ms"].as_f64().is_some_and(|p| p > 0.0),
        "{}",
        app["stats"]
    );
}

#[tokio::test]
async fn drain_and_weight_change_traffic_and_outlast_a_reload() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let toml = config(&[("local", 0, &[a.addr(), b.addr()])], "", "");
    let h = Harness::start_file(&toml, false).await;
    let c = h.client();
    let path = |what: &str| format!("/api/v1/upstreams/app/endpoints/{}/{what}", a.addr());

    let (status, e) = call(h.admin, "POST", &path("drain"), "", None).await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["state"], "drained");
    assert!(who_answers(&c, 8).await.iter().all(|w| w == "b"));
    // A reload keeps the drain.
    assert_eq!(api_reload(h.admin).await.expect("reload").status, 200);
    assert!(who_answers(&c, 8).await.iter().all(|w| w == "b"));
    let (status, e) = call(h.admin, "POST", &path("undrain"), "", None).await;
    assert_eq!((status, e["state"].as_str()), (200, Some("healthy")));
    assert!(who_answers(&c, 8).await.contains(&"a".to_string()));

    // Weight 3 against 1: smooth round robin sends exactly 6 of 8 to a.
    let (status, e) = call(h.admin, "PUT", &path("weight"), r#"{"weight": 3}"#, None).await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(
        (e["weight"].as_u64(), e["configured_weight"].as_u64()),
        (Some(3), Some(1))
    );
    let seen = who_answers(&c, 8).await;
    assert_eq!(seen.iter().filter(|w| *w == "a").count(), 6, "{seen:?}");
    assert_eq!(api_reload(h.admin).await.expect("reload").status, 200);
    let seen = who_answers(&c, 8).await;
    assert_eq!(
        seen.iter().filter(|w| *w == "a").count(),
        6,
        "after a reload: {seen:?}"
    );
    let (status, e) = call(h.admin, "PUT", &path("weight"), r#"{"weight": null}"#, None).await;
    assert_eq!((status, e["weight"].as_u64()), (200, Some(1)));
    let seen = who_answers(&c, 8).await;
    assert_eq!(seen.iter().filter(|w| *w == "a").count(), 4, "{seen:?}");

    let kinds: Vec<String> = json(h.admin, "/api/v1/events/recent")
        .await
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|e| e["kind"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for kind in ["endpoint_drained", "weight_changed", "reload"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
}

/// A drain is capacity an operator took away, not a sign that the checks
/// are wrong: drains plus one failure do not put a level in panic (which
/// would send requests to the failed endpoint); and when failures do, the
/// drained endpoints still get nothing.
#[tokio::test]
async fn a_drain_neither_causes_panic_nor_is_overridden_by_it() {
    let first = Backend::start("first").await;
    let second = Backend::start("second").await;
    let drained = [Backend::start("drained").await, Backend::start("drained").await];
    let survivor = Backend::start("survivor").await;
    let (first_addr, second_addr) = (first.addr(), second.addr());
    let all = [
        first_addr,
        second_addr,
        drained[0].addr(),
        drained[1].addr(),
        survivor.addr(),
    ];
    let h = Harness::start(&config(&[("local", 0, &all)], CHECKS, "")).await;
    for d in &drained {
        let drain = format!("/api/v1/upstreams/app/endpoints/{}/drain", d.addr());
        assert_eq!(call(h.admin, "POST", &drain, "", None).await.0, 200);
    }
    let healthy = |a: SocketAddr| {
        format!("levee_upstream_endpoint_healthy{{upstream=\"app\",region=\"local\",endpoint=\"{a}\"}}")
    };
    let panic = "levee_upstream_priority_panic{upstream=\"app\",priority=\"0\"}";

    // One failed, two drained: 2 of 5 available for the shares (40%), but
    // 2 of the 3 not drained for the panic threshold: no panic. One try
    // per request (CHECKS), so a request sent to the failed one fails.
    drop(first);
    h.eventually_metric(&healthy(first_addr), 0.0).await;
    let answers = who_answers(&h.client(), 50).await;
    assert!(
        answers.iter().all(|w| w == "second" || w == "survivor"),
        "{answers:?}"
    );
    assert_eq!(h.metric(panic).await, 0.0);

    // A second failure: one of the three not drained is up, under the
    // threshold, so the level is in panic and its traffic spreads over the
    // failed endpoints too, but never over the drained ones.
    drop(second);
    h.eventually_metric(&healthy(second_addr), 0.0).await;
    h.eventually_metric(panic, 1.0).await;
    let answers = who_answers(&h.client(), 60).await;
    assert!(answers.iter().any(|w| w == "survivor"), "{answers:?}");
    assert!(
        answers.iter().any(|w| w == "-"),
        "panic spreads over the failed ones: {answers:?}"
    );
    assert!(!answers.iter().any(|w| w == "drained"), "{answers:?}");
}

#[tokio::test]
async fn bad_changes_get_clear_json_errors() {
    let a = Backend::start("a").await;
    let h = Harness::start(&simple(&[a.addr()])).await;
    let ep = format!("/api/v1/upstreams/app/endpoints/{}", a.addr());
    let cases = [
        (
            "POST",
            "/api/v1/upstreams/nope/endpoints/127.0.0.1:1/drain".to_string(),
            "",
            404,
            "no upstream nope",
        ),
        (
            "POST",
            "/api/v1/upstreams/app/endpoints/127.0.0.1:1/drain".to_string(),
            "",
            404,
            "no endpoint",
        ),
        (
            "PUT",
            format!("{ep}/weight"),
            r#"{"weight": 0}"#,
            400,
            "from 1 to 1000",
        ),
        (
            "PUT",
            format!("{ep}/weight"),
            r#"{"weight": 1001}"#,
            400,
            "from 1 to 1000",
        ),
        (
            "PUT",
            format!("{ep}/weight"),
            r#"{"wait": 2}"#,
            400,
            "the body must be",
        ),
        ("PUT", format!("{ep}/weight"), "not json", 400, "the body must be"),
        // `{}` would otherwise reset the weight: the field is required.
        ("PUT", format!("{ep}/weight"), "{}", 400, "missing field `weight`"),
        // Parameters that do not parse are JSON errors too, not axum's text.
        ("GET", "/api/v1/upstreams/%FF".to_string(), "", 400, "UTF-8"),
        (
            "POST",
            format!("{ep}/drain?region=a&region=b"),
            "",
            400,
            "duplicate field",
        ),
        (
            "POST",
            format!("{ep}/drain?region=elsewhere"),
            "",
            404,
            "no endpoint",
        ),
        (
            "GET",
            "/api/v1/events/recent?limit=-1".to_string(),
            "",
            400,
            "limit",
        ),
        (
            "GET",
            "/api/v1/upstreams/nope".to_string(),
            "",
            404,
            "no upstream nope",
        ),
        ("GET", "/api/v1/nothing".to_string(), "", 404, "no such resource"),
    ];
    for (method, path, body, status, needle) in cases {
        let (got, v) = call(h.admin, method, &path, body, None).await;
        assert_eq!(got, status, "{method} {path}: {v}");
        let message = v["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{method} {path}: {message:?} lacks {needle:?}"
        );
    }
    // Nothing changed.
    let app = json(h.admin, "/api/v1/upstreams/app").await;
    assert_eq!(endpoint(&app, a.addr())["weight"], 1);

    // Not JSON at all: 415.
    let req = http::Request::put(format!("{ep}/weight"))
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"{\"weight\": 2}")))
        .expect("request");
    let r = Client::http1(h.admin).send(req).await.expect("reply");
    assert_eq!(r.status, 415, "{}", r.text());
    // A whole number written as a float is a whole number (as in JSON Schema).
    let (status, v) = call(
        h.admin,
        "PUT",
        &format!("{ep}/weight"),
        r#"{"weight": 3.0}"#,
        None,
    )
    .await;
    assert_eq!((status, &v["weight"]), (200, &Value::from(3)), "{v}");
    let (status, _) = call(
        h.admin,
        "PUT",
        &format!("{ep}/weight"),
        r#"{"weight": 2.5}"#,
        None,
    )
    .await;
    assert_eq!(status, 400);
    // Any limit is a limit: beyond the ring, the ring.
    let (status, v) = call(
        h.admin,
        "GET",
        "/api/v1/events/recent?limit=18446744073709551616",
        "",
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v.is_array());
}

#[tokio::test]
async fn a_token_guards_everything_but_liveness_and_readiness() {
    // With the characters base64 tokens have, which a URL must escape.
    const TOKEN: &str = "s3cret+token/for=tests";
    let a = Backend::start("a").await;
    let toml = simple(&[a.addr()]).replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
    );
    let h = Harness::start(&toml).await;
    for path in [
        "/api/v1/upstreams",
        "/metrics",
        "/api/v1/config",
        "/api/v1/events/recent",
        "/api/v1/nothing",
    ] {
        let r = Client::http1(h.admin).get(path).await.expect("reply");
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"levee\""),
            "{path}"
        );
        let (status, _) = call(h.admin, "GET", path, "", Some("wrong-token-wrong-token")).await;
        assert_eq!(status, 401, "{path} with a wrong token");
    }
    let (status, _) = call(h.admin, "POST", "/api/v1/reload", "", None).await;
    assert_eq!(status, 401);
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            Client::http1(h.admin).get(path).await.expect("reply").status,
            200,
            "{path}"
        );
    }
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let r = Client::http1(h.admin)
        .send(
            http::Request::get("/api/v1/status")
                .header("authorization", format!("bearer {TOKEN}"))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("reply");
    assert_eq!(r.status, 200, "a lowercase scheme");
    let (status, config) = call(h.admin, "GET", "/api/v1/config", "", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(config["admin"]["token"], "<redacted>");
    assert!(!config.to_string().contains(TOKEN));
    // The query form is for the event stream only.
    let r = Client::http1(h.admin)
        .get(&format!("/api/v1/upstreams?access_token={TOKEN}"))
        .await
        .expect("reply");
    assert_eq!(r.status, 401);
    let escaped = TOKEN.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
    let stream = sse(h.admin, &format!("/api/v1/events?access_token={escaped}"), None).await;
    assert!(stream.head.starts_with("HTTP/1.1 200"), "{}", stream.head);
    stream.close().await;
}

/// A raw event-stream reader.
struct Sse {
    socket: tokio::net::TcpStream,
    head: String,
    buffered: String,
}

async fn sse(admin: SocketAddr, path: &str, last_event_id: Option<u64>) -> Sse {
    let mut socket = tokio::net::TcpStream::connect(admin).await.expect("connect");
    let resume = last_event_id.map_or(String::new(), |id| format!("last-event-id: {id}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\n{resume}\r\n");
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut s = Sse {
        socket,
        head: String::new(),
        buffered: String::new(),
    };
    s.read_until("\r\n\r\n").await;
    let end = s.buffered.find("\r\n\r\n").map_or(0, |i| i + 4);
    s.head = s.buffered[..end].to_string();
    s.buffered.drain(..end);
    s
}

impl Sse {
    /// Reads until `needle` has arrived (within a generous deadline).
    async fn read_until(&mut self, needle: &str) {
        let deadline = tokio::time::Instant::now() + SETTLE;
        let mut buf = [0u8; 4096];
        while !self.buffered.contains(needle) {
            let n = tokio::time::timeout_at(deadline, self.socket.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} in the stream: {}", self.buffered))
                .expect("read");
            assert!(n > 0, "the stream ended before {needle:?}: {}", self.buffered);
            self.buffered.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    async fn close(mut self) {
        let _ = self.socket.shutdown().await;
    }
}

#[tokio::test]
async fn the_event_stream_sends_changes_live_and_resumes() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let h = Harness::start(&simple(&[a.addr(), b.addr()])).await;
    let mut stream = sse(h.admin, "/api/v1/events", None).await;
    assert!(stream.head.contains("text/event-stream"), "{}", stream.head);
    let drain = format!("/api/v1/upstreams/app/endpoints/{}/drain", a.addr());
    assert_eq!(call(h.admin, "POST", &drain, "", None).await.0, 200);
    stream.read_until("event: endpoint_drained").await;
    stream.read_until("\n\n").await;
    assert!(
        stream
            .buffered
            .contains(&format!("\"endpoint\":\"{}\"", a.addr())),
        "{}",
        stream.buffered
    );
    let id: u64 = stream
        .buffered
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("an id line");
    stream.close().await;

    // Changes made while no one listens are replayed after Last-Event-ID.
    let undrain = format!("/api/v1/upstreams/app/endpoints/{}/undrain", a.addr());
    assert_eq!(call(h.admin, "POST", &undrain, "", None).await.0, 200);
    let mut resumed = sse(h.admin, "/api/v1/events", Some(id)).await;
    resumed.read_until("\"drained\":false").await;
    assert!(
        !resumed.buffered.contains("\"drained\":true"),
        "{}",
        resumed.buffered
    );
    resumed.close().await;

    // A browser reconnecting after a restart sends an id from the old
    // process, beyond this one's newest: it gets this process's ring.
    let mut restarted = sse(h.admin, "/api/v1/events", Some(id + 1_000_000)).await;
    restarted.read_until("\"drained\":false").await;
    restarted.close().await;
}

#[tokio::test]
async fn shutdown_ends_open_event_streams() {
    let a = Backend::start("a").await;
    let h = Harness::start(&simple(&[a.addr()])).await;
    let mut stream = sse(h.admin, "/api/v1/events", None).await;
    let stopped = tokio::time::timeout(SETTLE, h.app.shutdown()).await;
    assert!(stopped.is_ok(), "shutdown waited on an open event stream");
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(SETTLE, stream.socket.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(_)) | Ok(Err(_))), "the stream was not closed");
}

// ---- The OpenAPI document against the API -------------------------------

/// Checks `value` against a JSON Schema subset (type, properties,
/// required, additionalProperties, items, enum, oneOf, minimum, maximum,
/// $ref): enough for the document's schemas, which use nothing else.
fn validate(root: &Value, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return validate(root, &root["components"]["schemas"][name], value, at, problems);
    }
    if let Some(options) = schema["oneOf"].as_array() {
        let fits = options
            .iter()
            .filter(|o| {
                let mut p = Vec::new();
                validate(root, o, value, at, &mut p);
                p.is_empty()
            })
            .count();
        if fits != 1 {
            problems.push(format!("{at}: fits {fits} of oneOf"));
        }
        return;
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let fits = types.is_empty() || types.contains(&kind) || (kind == "integer" && types.contains(&"number"));
    if !fits {
        problems.push(format!("{at}: {kind}, expected {types:?}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        problems.push(format!("{at}: {value} not in {allowed:?}"));
    }
    if let Some(n) = value.as_f64()
        && (schema["minimum"].as_f64().is_some_and(|m| n < m)
            || schema["maximum"].as_f64().is_some_and(|m| n > m))
    {
        problems.push(format!("{at}: {n} out of range"));
    }
    if let Value::Object(map) = value {
        for key in schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !map.contains_key(key) {
                problems.push(format!("{at}: missing {key}"));
            }
        }
        for (key, v) in map {
            match schema["properties"].get(key) {
                Some(s) => validate(root, s, v, &format!("{at}.{key}"), problems),
                None => match &schema["additionalProperties"] {
                    Value::Bool(false) => problems.push(format!("{at}: undocumented field {key}")),
                    s @ Value::Object(_) => validate(root, s, v, &format!("{at}.{key}"), problems),
                    _ => {}
                },
            }
        }
    }
    if let (Value::Array(items), Some(s)) = (value, schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            validate(root, s, v, &format!("{at}[{i}]"), problems);
        }
    }
}

#[tokio::test]
async fn the_openapi_document_matches_the_api() {
    let a = Backend::start("a").await;
    let s = Backend::start("s").await;
    // A dead endpoint fires the default endpoint_down rule, and a notifier
    // that cannot deliver it has a status to show: every schema is
    // checked against a real value, not an empty list.
    let gone = Backend::start("gone").await;
    let dead = gone.addr();
    gone.kill().await;
    let toml = config(
        &[("primary", 0, &[a.addr(), dead]), ("secondary", 1, &[s.addr()])],
        "",
        &format!(
            "{CHECKS}[alerting.notifier.pager]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\n\
             group_wait = \"0s\"\nmax_retries = 0\n"
        ),
    );
    let h = Harness::start_file(&toml, false).await;
    let c = h.client();
    for _ in 0..10 {
        c.get("/").await.expect("reply");
    }
    eventually_async(SETTLE, "an alert fires and its delivery fails", || async {
        let alerts = json(h.admin, "/api/v1/alerts").await;
        let notifiers = json(h.admin, "/api/v1/notifiers").await;
        alerts.as_array().is_some_and(|a| !a.is_empty()) && notifiers[0]["last_error"].is_string()
    })
    .await;
    let doc = json(h.admin, "/api/v1/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    // Every route the admin listener serves is documented, and nothing else.
    let mut documented: Vec<String> = Vec::new();
    for (path, ops) in paths {
        for method in ops.as_object().expect("operations").keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let mut served = vec![
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /api/v1/status",
        "GET /api/v1/listeners",
        "GET /api/v1/routes",
        "GET /api/v1/routes/{route}/fault",
        "PUT /api/v1/routes/{route}/fault",
        "DELETE /api/v1/routes/{route}/fault",
        "GET /api/v1/upstreams",
        "GET /api/v1/upstreams/{upstream}",
        "POST /api/v1/upstreams/{upstream}/endpoints/{endpoint}/drain",
        "POST /api/v1/upstreams/{upstream}/endpoints/{endpoint}/undrain",
        "PUT /api/v1/upstreams/{upstream}/endpoints/{endpoint}/weight",
        "GET /api/v1/history",
        "GET /api/v1/alerts",
        "GET /api/v1/notifiers",
        "GET /api/v1/events",
        "GET /api/v1/events/recent",
        "GET /api/v1/config",
        "POST /api/v1/reload",
        "GET /api/v1/openapi.json",
    ];
    served.sort();
    assert_eq!(documented, served);

    // A drain first, so that events exist; then every operation is called
    // and each answer checked against the schema of its status.
    let endpoint = a.addr().to_string();
    for (method, template) in served.iter().map(|r| r.split_once(' ').expect("method path")) {
        if template == "/api/v1/events" {
            continue; // a stream: the SSE tests cover it
        }
        let path = template
            .replace("{upstream}", "app")
            .replace("{endpoint}", &endpoint)
            .replace("{route}", "all");
        let body = match (method, template.ends_with("/fault")) {
            ("PUT", true) => r#"{"delay": "1ms", "delay_percent": 0.5}"#,
            ("PUT", false) => r#"{"weight": 2}"#,
            _ => "",
        };
        let (status, value) = {
            let mut req = http::Request::builder().method(method).uri(&path);
            if method == "PUT" {
                req = req.header("content-type", "application/json");
            }
            let req = req.body(Full::new(Bytes::from(body))).expect("request");
            let r = Client::http1(h.admin).send(req).await.expect("reply");
            let v = serde_json::from_slice(&r.body).unwrap_or(Value::String(r.text()));
            (r.status, v)
        };
        let op = &paths[template][method.to_lowercase()];
        let response = &op["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {path}: status {status} undocumented: {value}"
        );
        let schema = response["content"]
            .as_object()
            .and_then(|c| c.values().next())
            .map(|m| m["schema"].clone())
            .unwrap_or(Value::Null);
        let mut problems = Vec::new();
        validate(&doc, &schema, &value, &format!("{method} {path}"), &mut problems);
        assert!(problems.is_empty(), "{problems:#?}\n{value:#}");
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
}
