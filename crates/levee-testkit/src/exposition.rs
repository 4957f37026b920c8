//! Reading a value out of a Prometheus text exposition.

/// The value of the series whose line starts with `series` (the metric
/// name with its labels exactly as written, e.g.
/// `levee_upstream_priority_panic{upstream="app",priority="0"}`), or 0 when
/// no line has it, as a counter that has not been touched yet reads.
pub fn metric_value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::metric_value;

    #[test]
    fn exact_series_or_zero() {
        let text = "# TYPE a counter\na_total{x=\"1\"} 3\na_total{x=\"12\"} 5\nb 2.5\n";
        assert_eq!(metric_value(text, "a_total{x=\"1\"}"), 3.0);
        assert_eq!(metric_value(text, "a_total{x=\"12\"}"), 5.0);
        assert_eq!(metric_value(text, "b"), 2.5);
        assert_eq!(metric_value(text, "c"), 0.0);
    }
}
