//! The metrics exposition as a whole: valid for `promtool check metrics`,
//! named by the convention, every family with help text and documented in
//! docs/metrics.md; and the Grafana dashboard uses only documented metrics.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use levee_testkit::{Backend, Client};

use crate::support::*;

fn repo_file(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// One metric family of the Prometheus text format.
#[derive(Debug)]
struct Family {
    name: String,
    kind: String,
    help: String,
    samples: usize,
}

/// The families of a Prometheus text exposition, checking its shape on the
/// way: HELP then TYPE for each family, and samples only of the family
/// they follow.
fn families(text: &str) -> Vec<Family> {
    let mut out: Vec<Family> = Vec::new();
    let mut help: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name.to_string(), text.to_string()));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            let (help_name, help_text) = help.take().unwrap_or_else(|| panic!("{name}: TYPE without HELP"));
            assert_eq!(help_name, name, "HELP and TYPE name the same family");
            out.push(Family {
                name: name.to_string(),
                kind: kind.to_string(),
                help: help_text,
                samples: 0,
            });
        } else if line.starts_with('#') || line.is_empty() {
            panic!("unexpected line {line:?}");
        } else {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let family = out
                .last_mut()
                .unwrap_or_else(|| panic!("sample before any TYPE: {line}"));
            let own = match family.kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(&family.name)),
                _ => name == family.name,
            };
            assert!(own, "sample {name} under family {}", family.name);
            family.samples += 1;
        }
    }
    out
}

/// `^levee_[a-z0-9]+_[a-z0-9_]+$`
fn well_named(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("levee_") else {
        return false;
    };
    let Some((subsystem, what)) = rest.split_once('_') else {
        return false;
    };
    let lower_digit = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !subsystem.is_empty()
        && subsystem.chars().all(lower_digit)
        && !what.is_empty()
        && what.chars().all(|c| lower_digit(c) || c == '_')
}

/// The metric names docs/metrics.md documents: every `levee_...` name in
/// backticks at the start of a table row.
fn documented() -> BTreeSet<String> {
    repo_file("docs/metrics.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `levee_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("levee_{name}"))
        .collect()
}

#[tokio::test]
async fn the_exposition_passes_promtool_and_every_family_is_named_helped_and_documented() {
    let alive = Backend::start("alive").await;
    let other = Backend::start("other").await;
    let dead = Backend::start("dead").await;
    let dead_addr = dead.addr();
    dead.kill().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[listener.main]\naddress = \"127.0.0.1:0\"\n\n\
         [[route]]\nname = \"limited\"\nupstream = \"app\"\nrate_limits = [\"hourly\"]\n\
         [route.match]\npath_prefix = \"/limited/\"\n\n\
         [[route]]\nname = \"app\"\nupstream = \"app\"\n[route.match]\npath_prefix = \"/app/\"\n\n\
         [rate_limit.hourly]\nrate = 1\nper = \"1h\"\n\n\
         [upstream.app.health]\npath = \"/healthz\"\ninterval = \"100ms\"\n\
         [upstream.app.outlier]\nconsecutive_5xx = 5\n\
         [upstream.app.region.primary]\npriority = 0\nendpoints = [\"{}\", \"{dead_addr}\"]\n\
         [upstream.app.region.secondary]\npriority = 1\nendpoints = [\"{}\"]\n\n\
         [access_log]\nenabled = true\npath = \"{}\"\n\n\
         [alerting.notifier.hook]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nmax_retries = 0\n",
        alive.addr(),
        other.addr(),
        dir.path().join("access.log").display()
    );
    let h = Harness::start(&toml).await;
    let c = h.client();
    for i in 0..10 {
        assert_eq!(c.get(&format!("/app/{i}")).await.expect("reply").status, 200);
    }
    assert_eq!(c.get("/nothing").await.expect("reply").status, 404);
    assert_eq!(c.get("/limited/1").await.expect("reply").status, 200);
    assert_eq!(c.get("/limited/2").await.expect("reply").status, 429);
    let req = http::Request::get("/app/503")
        .header("x-testkit-status", "503")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    assert_eq!(c.send(req).await.expect("reply").status, 503);
    // The rate limit's key count is published every few seconds.
    let keys = "levee_rate_limit_keys{rule=\"hourly\"}";
    h.eventually_metric(keys, 1.0).await;

    let reply = Client::http1(h.admin).get("/metrics").await.expect("metrics");
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = reply.text();

    let mut promtool = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!("cannot run promtool ({e}): install it (Debian: apt-get install prometheus)"),
    };
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = promtool.wait_with_output().expect("promtool ran");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {:?}\n{said}",
        out.status
    );

    let families = families(&text);
    let docs = documented();
    let mut problems = Vec::new();
    for f in &families {
        if !well_named(&f.name) {
            problems.push(format!("{}: not levee_<subsystem>_<what>", f.name));
        }
        if f.help.trim().is_empty() {
            problems.push(format!("{}: no help text", f.name));
        }
        if f.samples == 0 {
            problems.push(format!("{}: no series after the traffic", f.name));
        }
        if !docs.contains(&f.name) {
            problems.push(format!("{}: not documented in docs/metrics.md", f.name));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    for needle in [
        "levee_http_requests_total",
        "levee_process_resident_memory_bytes",
        "levee_process_cpu_seconds_total",
        "levee_access_log_records_total",
    ] {
        assert!(families.iter().any(|f| f.name == needle), "{needle} is exposed");
    }

    // A scraper that asks for OpenMetrics gets it.
    let req = http::Request::get("/metrics")
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3",
        )
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let reply = Client::http1(h.admin).send(req).await.expect("metrics");
    assert_eq!(
        reply.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let om = reply.text();
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE levee_http_requests counter\n"), "{om}");
}

/// The PromQL expressions of every panel (rows' panels included).
fn exprs(panel: &serde_json::Value, out: &mut Vec<String>) {
    if let Some(targets) = panel["targets"].as_array() {
        out.extend(
            targets
                .iter()
                .filter_map(|t| t["expr"].as_str())
                .map(str::to_string),
        );
    }
    if let Some(children) = panel["panels"].as_array() {
        for child in children {
            exprs(child, out);
        }
    }
}

/// Every `levee_...` metric name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("levee_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.push(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    names
}

#[test]
fn the_grafana_dashboard_uses_only_documented_metrics() {
    let text = repo_file("contrib/grafana/levee.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    // Importable with any Prometheus data source: one input, used everywhere.
    let inputs = dashboard["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("template variables");
    for name in ["upstream", "route"] {
        let v = variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"));
        let query = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or_default();
        assert!(query.starts_with("label_values(levee_"), "${name}: {query}");
    }

    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        exprs(panel, &mut all);
        let ds = &panel["datasource"];
        if !ds.is_null() && panel["type"] != "row" {
            assert_eq!(ds["uid"], "${DS_PROMETHEUS}", "panel {:?}", panel["title"]);
        }
    }
    for a in dashboard["annotations"]["list"].as_array().expect("annotations") {
        if let Some(expr) = a["expr"].as_str() {
            all.push(expr.to_string());
        }
    }
    for v in variables {
        if let Some(q) = v["query"]["query"].as_str().or(v["query"].as_str()) {
            all.push(q.to_string());
        }
    }
    assert!(all.len() > 15, "the dashboard has its queries: {}", all.len());
    let docs = documented();
    let mut undocumented = BTreeSet::new();
    for expr in &all {
        for name in metric_names(expr) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| docs.contains(*b));
            if !docs.contains(&name) && base.is_none() {
                undocumented.insert(name);
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "the dashboard queries metrics docs/metrics.md does not document: {undocumented:?}"
    );
}

/// The PromQL of the ```promql blocks of a Markdown file: one query per
/// line, continued on lines that start with a space.
fn promql_blocks(md: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut inside = false;
    for line in md.lines() {
        if line.starts_with("```") {
            inside = line == "```promql";
            continue;
        }
        if !inside || line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        match out.last_mut() {
            Some(last) if line.starts_with(' ') => {
                last.push(' ');
                last.push_str(line.trim());
            }
            _ => out.push(line.to_string()),
        }
    }
    out
}

/// `promtool check rules` on the queries, as recording rules: it parses
/// each one. Grafana's variables are replaced by what they stand for.
fn assert_promql_parses(what: &str, queries: &[String]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("rules.yml");
    let mut yaml = String::from("groups:\n  - name: check\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let q = q
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$upstream", ".*")
            .replace("$route", ".*");
        // A JSON string is a YAML string.
        let quoted = serde_json::to_string(&q).expect("quote");
        yaml.push_str(&format!(
            "      - record: check:query{i}\n        expr: {quoted}\n"
        ));
    }
    std::fs::write(&path, yaml).expect("write rules");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install it (Debian: apt-get install prometheus)")
        });
    assert!(
        out.status.success(),
        "{what}: promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_promql_of_the_docs_and_the_dashboard_parses() {
    let docs = promql_blocks(&repo_file("docs/metrics.md"));
    assert!(docs.len() >= 10, "{docs:#?}");
    assert_promql_parses("docs/metrics.md", &docs);
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("contrib/grafana/levee.json")).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        exprs(panel, &mut queries);
    }
    assert_promql_parses("contrib/grafana/levee.json", &queries);
    // And the check can fail.
    let bad = ["sum by (le) (rate(levee_http_requests_total[5m])".to_string()];
    let caught = std::panic::catch_unwind(|| assert_promql_parses("a broken query", &bad));
    assert!(caught.is_err(), "promtool refuses a broken query");
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            "sum by (le) (rate(levee_http_request_duration_seconds_bucket{route=~\"$route\"}[5m])) / x_levee_no"
        ),
        ["levee_http_request_duration_seconds_bucket"]
    );
    assert!(well_named("levee_http_requests_total"));
    assert!(!well_named("levee_http"));
    assert!(!well_named("levee_Http_requests"));
    assert!(!well_named("process_cpu_seconds_total"));
}
