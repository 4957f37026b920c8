use std::time::Duration;

use super::EXAMPLE;
use super::verdict::good_run;
use crate::scenario::*;

/// Checks that `xml` is well-formed as far as a report needs: every tag
/// closed in order, attributes quoted, only the five escapes; returns the
/// elements in document order as (name, attributes text).
fn elements(xml: &str) -> Vec<(String, String)> {
    let body = xml
        .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
        .expect("declaration");
    let mut open: Vec<String> = Vec::new();
    let mut found = Vec::new();
    let mut rest = body;
    while let Some(lt) = rest.find('<') {
        check_text(&rest[..lt]);
        let gt = rest[lt..].find('>').expect("tag closed") + lt;
        let tag = &rest[lt + 1..gt];
        rest = &rest[gt + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop().as_deref(), Some(name), "mismatched </{name}>");
            continue;
        }
        let empty = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        let (name, attrs) = tag.split_once(' ').unwrap_or((tag, ""));
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric()),
            "bad name {name:?}"
        );
        // name="value" pairs, values without a raw quote or <.
        let mut a = attrs.trim();
        while !a.is_empty() {
            let (key, after) = a.split_once("=\"").expect("attribute");
            assert!(
                key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "bad attribute {key:?}"
            );
            let end = after.find('"').expect("attribute closed");
            check_text(&after[..end]);
            a = after[end + 1..].trim_start();
        }
        found.push((name.to_string(), attrs.to_string()));
        if !empty {
            open.push(name.to_string());
        }
    }
    check_text(rest);
    assert!(open.is_empty(), "unclosed {open:?}");
    found
}

fn check_text(t: &str) {
    assert!(!t.contains('<') && !t.contains('>'), "raw markup in {t:?}");
    let mut s = t;
    while let Some(i) = s.find('&') {
        s = &s[i..];
        assert!(
            ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                .iter()
                .any(|e| s.starts_with(e)),
            "bad entity in {t:?}"
        );
        s = &s[1..];
    }
}

fn scenario() -> Scenario {
    let mut s = parse(EXAMPLE).unwrap();
    s.name = "a <\"quoted\"> & 'odd' name".into();
    s
}

#[test]
fn junit_has_a_testcase_per_slo_and_failures_with_the_measure() {
    let s = scenario();
    let mut run = good_run();
    run.outcomes[300].status = Some(503);
    run.processed = None;
    let v = evaluate(&s, &run);
    let xml = junit(&s, &run, &v);
    let e = elements(&xml);
    let names: Vec<&str> = e.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..2], ["testsuites", "testsuite"]);
    assert!(e[1].1.starts_with(
        "name=\"levee chaos: a &lt;&quot;quoted&quot;&gt; &amp; &apos;odd&apos; name\" tests=\"6\" failures=\"1\" errors=\"0\" skipped=\"2\""
    ), "{}", e[1].1);
    let cases: Vec<&str> = e
        .iter()
        .filter(|(n, _)| n == "testcase")
        .map(|(_, a)| a.split('"').nth(1).unwrap())
        .collect();
    assert_eq!(cases, SLOS.to_vec());
    assert_eq!(names.iter().filter(|n| **n == "failure").count(), 1);
    assert_eq!(names.iter().filter(|n| **n == "skipped").count(), 2);
    assert!(
        xml.contains("<failure message=\"measured 99.75% (399 of 400), limit &gt;= 99.9%\""),
        "{xml}"
    );
}

#[test]
fn report_json_has_the_rows_the_schedule_and_the_series() {
    let dir = std::env::temp_dir().join(format!("levee-scenario-report-{}", std::process::id()));
    let s = scenario();
    let run = good_run();
    let v = evaluate(&s, &run);
    write_report(&dir, &s, &run, &v).unwrap();
    let text = std::fs::read_to_string(dir.join("report.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(j["scenario"], s.name.as_str());
    assert_eq!(j["seed"], 7);
    assert_eq!(j["passed"], true);
    let rows = j["slo"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[0]["name"], "success_ratio");
    assert_eq!(rows[0]["verdict"], "pass");
    assert_eq!(rows[0]["measured"], "100% (400 of 400)");
    assert_eq!(j["schedule"][0]["label"], "fail region primary");
    assert_eq!(j["schedule"][0]["at_ms"], 5000.0);
    let series = j["series"].as_array().unwrap();
    assert_eq!(series.len(), 40);
    assert_eq!(series[0]["requests"], 10);
    assert_eq!(series[0]["errors"], 0);
    assert_eq!(series[0]["p99_ms"], 20.0);
    assert_eq!(series[0]["share"]["primary"], 1.0);
    assert_eq!(series[10]["share"]["secondary"], 1.0);
    // The other two files are there, and junit.xml is the one checked above.
    elements(&std::fs::read_to_string(dir.join("junit.xml")).unwrap());
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("<svg"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn report_html_is_one_page_with_the_timeline_and_every_step() {
    let mut s = scenario();
    s.faults.push(Fault {
        at: Duration::from_secs(25),
        action: Action::Flood { rate: 500 },
        target: Selector::All,
        lasts: Some(Duration::from_secs(5)),
    });
    let mut run = good_run();
    run.steps
        .push((Duration::from_millis(25_010), "flood 500/s".into()));
    run.steps
        .push((Duration::from_millis(30_020), "end flood 500/s".into()));
    let v = evaluate(&s, &run);
    let html = crate::scenario::report::html_page(&s, &run, &v);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_eq!(html.matches("<svg").count(), 1);
    for step in schedule(&s) {
        assert!(html.contains(&step.label), "no {:?}", step.label);
    }
    for text in [
        "requests/s",
        "ms",
        "% of requests",
        "p99",
        "errors (not 2xx)",
        "primary",
        "secondary",
        "40s",
        "PASS",
    ] {
        assert!(html.contains(text), "no {text:?}");
    }
    // Self-contained: nothing fetched, no script.
    for banned in ["<script", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(banned), "{banned}");
    }
    assert!(html.contains("a &lt;&quot;quoted&quot;&gt; &amp; &apos;odd&apos; name"));
    // The SVG part is well-formed XML too.
    let start = html.find("<svg").unwrap();
    let end = html.find("</svg>").unwrap() + "</svg>".len();
    let svg = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}",
        &html[start..end]
    );
    let e = elements(&svg);
    assert!(
        e.iter().filter(|(n, _)| n == "polygon").count() == 2,
        "a stacked area per region"
    );
    assert_eq!(
        e.iter()
            .filter(|(n, a)| n == "rect" && a.contains("class=\"band\""))
            .count(),
        2
    );
}
