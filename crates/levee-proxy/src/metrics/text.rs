//! The Prometheus text format (0.0.4), from the OpenMetrics text that
//! prometheus-client writes.
//!
//! The two differ where it matters to older parsers such as `promtool check
//! metrics`: an OpenMetrics counter family is named without its `_total`
//! suffix in `# HELP` and `# TYPE`, which the Prometheus parser reads as a
//! family with no samples followed by an untyped one with no help. Here
//! counter families are named as their samples are, `# UNIT` lines (which
//! the Prometheus format lacks) and the `# EOF` marker are left out, and
//! `unknown` becomes `untyped`. Samples are the same in both formats.

use std::fmt::Write as _;

pub(crate) fn from_openmetrics(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // `# HELP` comes before `# TYPE`, which decides the family's name.
    let mut help: Option<(&str, &str)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').or(Some((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (family, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "gauge" | "histogram" | "summary" => (name.to_string(), kind),
                _ => (name.to_string(), "untyped"),
            };
            if let Some((help_name, help_text)) = help.take()
                && help_name == name
            {
                let _ = writeln!(out, "# HELP {family} {}", help_text.replace("\\\"", "\""));
            }
            let _ = writeln!(out, "# TYPE {family} {kind}");
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `^levee_[a-z0-9]+_[a-z0-9_]+$`
    fn well_named(name: &str) -> bool {
        let lower = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        name.strip_prefix("levee_")
            .and_then(|rest| rest.split_once('_'))
            .is_some_and(|(subsystem, what)| {
                !subsystem.is_empty()
                    && subsystem.chars().all(lower)
                    && !what.is_empty()
                    && what.chars().all(|c| lower(c) || c == '_')
            })
    }

    #[test]
    fn every_family_is_well_named_and_has_help() {
        // A family shows once it has a series: give most of them one. The
        // end-to-end test checks every family after real traffic.
        let m = crate::metrics::Metrics::new();
        m.route("r", "u", None).record(200, 0.01);
        let _upstream = m.upstream("u", &[0, 1], &["r"]);
        let _rule = m.rate_limit("rule");
        let _slow = m.slow_clients("main");
        let _abuse = m.h2_abuse("main");
        let labels = crate::metrics::EndpointLabels {
            upstream: "u".into(),
            region: "r".into(),
            endpoint: "127.0.0.1:1".into(),
        };
        let _endpoint = m.endpoint(&labels);
        let text = m.encode_prometheus();
        let mut helped = std::collections::HashSet::new();
        let mut families = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                assert!(!help.trim().is_empty(), "{name} has no help");
                assert!(!help.contains('\\'), "{name}: help needs no escaping");
                helped.insert(name.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
                families += 1;
                assert!(well_named(name), "{name} is not levee_<subsystem>_<what>");
                assert!(helped.contains(name), "{name} has no HELP before its TYPE");
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind),
                    "{name}: {kind}"
                );
                assert_eq!(kind == "counter", name.ends_with("_total"), "{name}: {kind}");
            }
        }
        assert!(families > 25, "{families} families:\n{text}");
        assert!(!well_named("levee_http") && !well_named("process_cpu_seconds_total"));
    }

    #[test]
    fn families_are_named_as_their_samples() {
        let om = "# HELP levee_http_requests Requests.\n\
                  # TYPE levee_http_requests counter\n\
                  levee_http_requests_total{route=\"a\"} 3\n\
                  # HELP levee_http_request_duration_seconds Time.\n\
                  # TYPE levee_http_request_duration_seconds histogram\n\
                  # UNIT levee_http_request_duration_seconds seconds\n\
                  levee_http_request_duration_seconds_bucket{le=\"+Inf\"} 1\n\
                  # HELP levee_up Up.\n\
                  # TYPE levee_up gauge\n\
                  levee_up 1\n\
                  # TYPE levee_other unknown\n\
                  levee_other 2\n\
                  # EOF\n";
        assert_eq!(
            from_openmetrics(om),
            "# HELP levee_http_requests_total Requests.\n\
             # TYPE levee_http_requests_total counter\n\
             levee_http_requests_total{route=\"a\"} 3\n\
             # HELP levee_http_request_duration_seconds Time.\n\
             # TYPE levee_http_request_duration_seconds histogram\n\
             levee_http_request_duration_seconds_bucket{le=\"+Inf\"} 1\n\
             # HELP levee_up Up.\n\
             # TYPE levee_up gauge\n\
             levee_up 1\n\
             # TYPE levee_other untyped\n\
             levee_other 2\n"
        );
    }
}
