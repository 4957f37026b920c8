//! Durations are written as strings with a unit: `"500ms"`, `"2s"`,
//! `"1.5m"`, `"1h"`. A bare number is refused: `timeout = 5` could mean
//! seconds or milliseconds, and guessing wrong is an outage.

use std::time::Duration;

const HINT: &str = "must be a duration with a unit, like \"500ms\", \"2s\", \"1.5m\" or \"1h\"";

/// Parses `<number><unit>` where unit is `ms`, `s`, `m` or `h` and the
/// number may have a fractional part.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| HINT.to_string())?;
    let (number, unit) = text.split_at(split);
    let nanos_per_unit: f64 = match unit {
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        _ => return Err(HINT.to_string()),
    };
    let valid_number = !number.is_empty()
        && !number.starts_with('.')
        && !number.ends_with('.')
        && number.matches('.').count() <= 1;
    if !valid_number {
        return Err(HINT.to_string());
    }
    let value: f64 = number.parse().map_err(|_| HINT.to_string())?;
    let nanos = value * nanos_per_unit;
    // A year is far beyond any timeout levee has; larger is a typo.
    if nanos > 365.0 * 86_400e9 {
        return Err("is longer than a year".to_string());
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0.25s"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn refuses_ambiguity() {
        for bad in [
            "", "5", "s", "5 s", " 5s", "5sec", "-1s", "1.s", ".5s", "1..2s", "1.2.3s", "5S", "1e3ms",
            "9999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
