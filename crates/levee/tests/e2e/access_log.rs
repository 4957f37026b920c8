//! The access log: what its lines say about proxied and levee-generated
//! responses, in each format; that a reload switches it; that shutdown
//! writes every line; and that a log nobody can write to costs requests
//! nothing (its lines are dropped and counted instead).

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use levee_testkit::{Backend, RawConn, RawResponse};
use serde_json::Value;

use crate::support::*;

/// Every field there is, in the order the lines must have them.
const ALL_FIELDS: &str = "[\"time\", \"client_ip\", \"listener\", \"method\", \"path\", \"query\", \"uri\", \"host\", \
     \"protocol\", \"status\", \"bytes_sent\", \"duration_ms\", \"route\", \"upstream\", \"region\", \"endpoint\", \
     \"attempts\", \"proxy_status\", \"retry_stop\", \"fault\", \"request_id\", \"user_agent\", \"referer\"]";

/// Route "app" (`/bytes/`) to `app`, route "down" (`/down/`) to an upstream
/// whose endpoint refuses connections, route "limited" (`/limited/`, one
/// request an hour) to `app`; nothing else matches.
fn config(app: &Backend, down: std::net::SocketAddr, access_log: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[listener.main]\naddress = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"app\"\nupstream = \"app\"\n[route.match]\npath_prefix = \"/bytes/\"\n\n\
         [[route]]\nname = \"down\"\nupstream = \"down\"\n[route.match]\npath_prefix = \"/down/\"\n\n\
         [[route]]\nname = \"limited\"\nupstream = \"app\"\nrate_limits = [\"hourly\"]\n[route.match]\npath_prefix = \"/limited/\"\n\n\
         [rate_limit.hourly]\nrate = 1\nper = \"1h\"\n\n\
         [upstream.app.region.local]\nendpoints = [\"{}\"]\n\n\
         [upstream.down.region.far]\nendpoints = [\"{down}\"]\n\n\
         [access_log]\n{access_log}\n",
        app.addr()
    )
}

/// An address that refuses connections.
async fn refusing() -> std::net::SocketAddr {
    let dead = Backend::start("dead").await;
    let addr = dead.addr();
    dead.kill().await;
    addr
}

/// Sends `head` (request line and fields, without the final blank line) on
/// a fresh connection.
async fn send(h: &Harness, head: &str) -> RawResponse {
    let mut conn = RawConn::connect(h.addr).await.expect("connect");
    conn.send(format!("{head}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    conn.read_response(SETTLE)
        .await
        .unwrap_or_else(|e| panic!("{head:?}: no response within the deadline: {e:#}"))
}

/// The file's lines, once it has `n` of them.
async fn lines(path: &Path, n: usize) -> Vec<String> {
    let what = format!("{n} lines in {}", path.display());
    levee_testkit::eventually(SETTLE, &what, || {
        std::fs::read_to_string(path).is_ok_and(|t| t.lines().count() >= n)
    })
    .await;
    let text = std::fs::read_to_string(path).expect("read the log");
    assert!(text.ends_with('\n'), "the last line is whole: {text:?}");
    text.lines().map(str::to_string).collect()
}

/// The keys of a JSON line in the order written (serde_json sorts them).
fn keys_in_order(line: &str, keys: &[String]) -> Vec<String> {
    let mut found: Vec<(usize, String)> = keys
        .iter()
        .map(|k| (line.find(&format!("\"{k}\":")).unwrap_or(usize::MAX), k.clone()))
        .collect();
    found.sort();
    found.into_iter().map(|(_, k)| k).collect()
}

fn by_request_id(lines: &[String]) -> HashMap<String, serde_json::Map<String, Value>> {
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            let Value::Object(o) = v else {
                panic!("not an object: {l}")
            };
            let id = o["request_id"].as_str().unwrap_or("-").to_string();
            (id, o)
        })
        .collect()
}

/// `2024-05-01T12:00:00.123Z`
fn assert_rfc3339_millis(time: &Value) {
    let t = time
        .as_str()
        .unwrap_or_else(|| panic!("time is a string: {time}"));
    let b = t.as_bytes();
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22];
    assert!(
        b.len() == 24
            && digits.iter().all(|&i| b[i].is_ascii_digit())
            && &t[4..5] == "-"
            && &t[10..11] == "T"
            && &t[19..20] == "."
            && t.ends_with('Z'),
        "time {t:?}"
    );
}

#[tokio::test]
async fn json_lines_carry_every_field_for_proxied_and_generated_responses() {
    let app = Backend::start("app").await;
    let down = refusing().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let log = format!(
        "enabled = true\npath = \"{}\"\nfields = {ALL_FIELDS}\n",
        path.display()
    );
    let h = Harness::start(&config(&app, down, &log)).await;

    let ok = send(
        &h,
        "GET /bytes/1234?x=1&y=%22 HTTP/1.1\r\nHost: a.test\r\nX-Request-Id: req-ok\r\n\
         User-Agent: agent/1.0 \"quoted\"\r\nReferer: http://r.test/",
    )
    .await;
    assert_eq!((ok.status, ok.body.len()), (200, 1234));
    let missing = send(
        &h,
        "GET /nothing HTTP/1.1\r\nHost: a.test\r\nX-Request-Id: req-404",
    )
    .await;
    assert_eq!(missing.status, 404);
    let refused = send(
        &h,
        "GET /down/x HTTP/1.1\r\nHost: a.test\r\nX-Request-Id: req-502",
    )
    .await;
    assert_eq!(refused.status, 502);
    let first = send(&h, "GET /limited/1 HTTP/1.0\r\nX-Request-Id: req-limited-1").await;
    assert_eq!(first.status, 200);
    let limited = send(
        &h,
        "GET /limited/2 HTTP/1.1\r\nHost: a.test\r\nX-Request-Id: req-429",
    )
    .await;
    assert_eq!(limited.status, 429);
    // Refused before it could be routed: two Host fields.
    let bad = send(&h, "GET /bytes/1 HTTP/1.1\r\nHost: a.test\r\nHost: b.test").await;
    assert_eq!(bad.status, 400);

    let lines = lines(&path, 6).await;
    assert_eq!(lines.len(), 6, "one line per request: {lines:#?}");
    let wanted: Vec<String> = serde_json::from_str(ALL_FIELDS).expect("field list");
    for raw in &lines {
        assert_eq!(
            keys_in_order(raw, &wanted),
            wanted,
            "every configured field, in order: {raw}"
        );
    }
    let all = by_request_id(&lines);
    for line in all.values() {
        assert_eq!(line.len(), wanted.len(), "no other key: {line:?}");
        assert_rfc3339_millis(&line["time"]);
        assert_eq!(line["client_ip"], "127.0.0.1");
        assert_eq!(line["listener"], "main");
        assert!(line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{line:?}");
    }

    let ok_line = &all["req-ok"];
    let expected = serde_json::json!({
        "method": "GET", "path": "/bytes/1234", "query": "x=1&y=%22", "uri": "/bytes/1234?x=1&y=%22",
        "host": "a.test", "protocol": "HTTP/1.1", "status": 200, "bytes_sent": 1234, "route": "app",
        "upstream": "app", "region": "local", "endpoint": app.addr().to_string(), "attempts": 1,
        "proxy_status": null, "retry_stop": null, "fault": null, "user_agent": "agent/1.0 \"quoted\"", "referer": "http://r.test/",
    });
    for (key, value) in expected.as_object().expect("object") {
        assert_eq!(&ok_line[key], value, "{key} of the proxied request: {ok_line:?}");
    }

    let no_route = &all["req-404"];
    let expected = serde_json::json!({
        "path": "/nothing", "query": null, "status": 404, "bytes_sent": missing.body.len(), "route": null,
        "upstream": null, "region": null, "endpoint": null, "attempts": 0,
        "proxy_status": "destination_not_found", "user_agent": null, "referer": null,
    });
    for (key, value) in expected.as_object().expect("object") {
        assert_eq!(
            &no_route[key], value,
            "{key} of the unrouted request: {no_route:?}"
        );
    }

    let failed = &all["req-502"];
    assert_eq!(failed["status"], 502);
    assert_eq!(failed["proxy_status"], "connection_refused");
    assert_eq!(
        (&failed["route"], &failed["upstream"]),
        (&"down".into(), &"down".into())
    );
    assert_eq!(failed["endpoint"], down.to_string());
    assert_eq!(failed["region"], "far");
    // One endpoint: the retry goes to it again (default attempts = 2).
    assert_eq!(failed["attempts"], 2);
    assert_eq!(
        failed["retry_stop"], "no_untried_endpoint",
        "why no retry saved it"
    );
    assert_eq!(failed["bytes_sent"], refused.body.len());

    let first = &all["req-limited-1"];
    assert_eq!(
        (&first["protocol"], &first["host"]),
        (&"HTTP/1.0".into(), &Value::Null)
    );
    let rate_limited = &all["req-429"];
    assert_eq!(rate_limited["status"], 429);
    assert_eq!(rate_limited["proxy_status"], "http_request_denied");
    assert_eq!(
        (&rate_limited["route"], &rate_limited["upstream"]),
        (&"limited".into(), &"app".into())
    );
    assert_eq!(
        (&rate_limited["attempts"], &rate_limited["endpoint"]),
        (&0.into(), &Value::Null)
    );

    let refused_early = &all["-"];
    let expected = serde_json::json!({
        "method": null, "path": null, "uri": null, "protocol": null, "status": 400, "route": null,
        "request_id": null, "proxy_status": "http_request_error", "bytes_sent": bad.body.len(),
    });
    for (key, value) in expected.as_object().expect("object") {
        assert_eq!(
            &refused_early[key], value,
            "{key} of the malformed request: {refused_early:?}"
        );
    }

    h.eventually_metric("levee_access_log_records_total", 6.0).await;
    assert_eq!(
        h.metric("levee_access_log_dropped_total{reason=\"buffer_full\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn the_default_fields_leave_the_query_and_headers_out() {
    let app = Backend::start("app").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let log = format!("enabled = true\npath = \"{}\"\n", path.display());
    let h = Harness::start(&config(&app, app.addr(), &log)).await;
    let res = send(
        &h,
        "GET /bytes/1?token=secret HTTP/1.1\r\nHost: a\r\nUser-Agent: ua",
    )
    .await;
    assert_eq!(res.status, 200);
    let line = lines(&path, 1).await.remove(0);
    assert!(!line.contains("secret") && !line.contains("\"ua\""), "{line}");
    let v: Value = serde_json::from_str(&line).expect("JSON");
    let keys: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    assert_eq!(
        keys_in_order(&line, &keys),
        [
            "time",
            "client_ip",
            "method",
            "path",
            "protocol",
            "status",
            "bytes_sent",
            "duration_ms",
            "route",
            "upstream",
            "endpoint",
            "attempts",
            "proxy_status",
            "retry_stop",
            "fault",
            "request_id"
        ]
    );
    // levee generated the id; the line has the one the upstream saw.
    let id = v["request_id"].as_str().expect("an id");
    assert_eq!(app.ledger().arrivals()[0].request_id.as_deref(), Some(id));
}

/// `127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET /a HTTP/1.1" 200 2326`,
/// split into (client, time, request line, status, bytes, rest).
fn clf(line: &str) -> (&str, &str, &str, &str, &str, &str) {
    let (client, rest) = line
        .split_once(" - - [")
        .unwrap_or_else(|| panic!("no identity: {line}"));
    let (time, rest) = rest
        .split_once("] \"")
        .unwrap_or_else(|| panic!("no time: {line}"));
    let (request, rest) = rest
        .split_once("\" ")
        .unwrap_or_else(|| panic!("no request: {line}"));
    let mut parts = rest.splitn(3, ' ');
    let status = parts.next().unwrap_or_default();
    let bytes = parts.next().unwrap_or_default();
    (
        client,
        time,
        request,
        status,
        bytes,
        parts.next().unwrap_or_default(),
    )
}

fn assert_clf_time(time: &str) {
    // 10/Oct/2000:13:55:36 +0000
    let b = time.as_bytes();
    assert!(
        b.len() == 26
            && b[2] == b'/'
            && b[6] == b'/'
            && b[11] == b':'
            && time.ends_with(" +0000")
            && [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"
            ]
            .contains(&&time[3..6]),
        "time {time:?}"
    );
}

#[tokio::test]
async fn common_and_combined_lines_follow_the_format_and_a_reload_switches_them() {
    let app = Backend::start("app").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let common = dir.path().join("common.log");
    let combined = dir.path().join("combined.log");
    let down = refusing().await;
    let log = |path: &Path, format: &str| {
        format!(
            "enabled = true\npath = \"{}\"\nformat = \"{format}\"\n",
            path.display()
        )
    };
    let h = Harness::start_file(&config(&app, down, &log(&common, "common")), false).await;

    let ok = send(&h, "GET /bytes/10?q=%22x%22 HTTP/1.1\r\nHost: a").await;
    assert_eq!(ok.status, 200);
    let missing = send(&h, "GET /nothing HTTP/1.0").await;
    assert_eq!(missing.status, 404);
    let lines_common = lines(&common, 2).await;
    let (client, time, request, status, bytes, rest) = clf(&lines_common[0]);
    assert_eq!(
        (client, request, status, bytes, rest),
        ("127.0.0.1", "GET /bytes/10?q=%22x%22 HTTP/1.1", "200", "10", "")
    );
    assert_clf_time(time);
    let (_, _, request, status, bytes, rest) = clf(&lines_common[1]);
    assert_eq!(
        (request, status, bytes, rest),
        (
            "GET /nothing HTTP/1.0",
            "404",
            missing.body.len().to_string().as_str(),
            ""
        )
    );

    std::fs::write(h.config_path(), config(&app, down, &log(&combined, "combined"))).expect("write");
    let reloaded = api_reload(h.admin).await.expect("reload");
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());

    let mut conn = RawConn::connect(h.addr).await.expect("connect");
    conn.send(b"HEAD /bytes/10 HTTP/1.1\r\nHost: a\r\nReferer: http://r/\r\nUser-Agent: ua \"1\"\r\n\r\n")
        .await
        .expect("send");
    let head = conn.read_response_to_head(SETTLE).await.expect("a response head");
    assert_eq!(head.status, 200);
    let bad = send(&h, "GET /bytes/1 HTTP/1.1").await;
    assert_eq!(bad.status, 400, "no Host");
    let lines_combined = lines(&combined, 2).await;
    let (_, time, request, status, bytes, rest) = clf(&lines_combined[0]);
    assert_clf_time(time);
    assert_eq!(
        (request, status, bytes, rest),
        (
            "HEAD /bytes/10 HTTP/1.1",
            "200",
            "-",
            "\"http://r/\" \"ua \\x221\\x22\""
        )
    );
    let (_, _, request, status, _, rest) = clf(&lines_combined[1]);
    assert_eq!((request, status, rest), ("-", "400", "\"-\" \"-\""));
    // The old file got nothing more.
    assert_eq!(std::fs::read_to_string(&common).expect("read").lines().count(), 2);
}

#[tokio::test]
async fn shutdown_writes_every_line_before_it_returns() {
    let app = Backend::start("app").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.log");
    let log = format!(
        "enabled = true\npath = \"{}\"\nformat = \"common\"\n",
        path.display()
    );
    let h = Harness::start(&config(&app, app.addr(), &log)).await;
    let client = h.client();
    for i in 0..50 {
        let res = client.get(&format!("/bytes/{i}")).await.expect("response");
        assert_eq!(res.status, 200);
    }
    assert!(h.app.shutdown().await, "drained");
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(text.lines().count(), 50, "{text}");
}

#[tokio::test]
async fn a_log_nobody_reads_drops_and_counts_lines_instead_of_blocking_requests() {
    const REQUESTS: usize = 40;
    let app = Backend::start("app").await;
    let dir = tempfile::tempdir().expect("temp dir");
    // A FIFO without a reader: opening it for writing blocks until one
    // comes, and writing blocks once the pipe is full.
    let fifo = dir.path().join("access.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo");
    let log = format!(
        "enabled = true\npath = \"{}\"\nformat = \"common\"\nbuffer = 4\n",
        fifo.display()
    );
    let h = Harness::start(&config(&app, app.addr(), &log)).await;

    // Each request must be answered at once; a blocked log would hang them.
    let client = h.client().with_timeout(SETTLE);
    for i in 0..REQUESTS {
        let res = client
            .get(&format!("/bytes/{i}"))
            .await
            .expect("answered while the log is stuck");
        assert_eq!(res.status, 200);
    }
    let dropped = h
        .metric("levee_access_log_dropped_total{reason=\"buffer_full\"}")
        .await as usize;
    // The buffer holds 4; the writer took at most a few before it blocked.
    assert!(dropped >= REQUESTS / 2, "dropped {dropped} of {REQUESTS}");
    assert_eq!(h.metric("levee_access_log_records_total").await, 0.0);

    // A reader comes: what was kept is written, and nothing is unaccounted.
    let kept = REQUESTS - dropped;
    let reader = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&fifo).expect("open the FIFO");
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(file).lines() {
            lines.push(line.expect("a line"));
            if lines.len() == kept {
                break;
            }
        }
        lines
    });
    let lines = tokio::time::timeout(SETTLE, reader)
        .await
        .expect("the kept lines arrive")
        .expect("reader");
    assert_eq!(lines.len(), kept);
    assert!(lines.iter().all(|l| l.contains("\"GET /bytes/")), "{lines:#?}");
    h.eventually_metric("levee_access_log_records_total", kept as f64)
        .await;
}

#[tokio::test]
async fn a_path_that_cannot_be_opened_refuses_the_config() {
    let app = Backend::start("app").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("no-such-dir").join("access.log");
    let text = config(
        &app,
        app.addr(),
        &format!("enabled = true\npath = \"{}\"\n", bad.display()),
    );
    let config = levee_config::parse(&text).expect("valid config");
    let err = levee::App::start(config, levee::ConfigSource::Fixed, None)
        .await
        .err()
        .expect("refused");
    let message = err.to_string();
    assert!(
        message.starts_with("access_log.path: cannot open ") && message.contains("no-such-dir"),
        "{message}"
    );
}
