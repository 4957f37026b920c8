//! Calendar arithmetic for the timestamps levee writes (access log lines,
//! alert payloads): no time zone, no leap seconds, UTC only.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar: Howard Hinnant's `civil_from_days`, exact for any day count.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// An instant in UTC as calendar date and time of day, to the millisecond.
///
/// Displays as RFC 3339 with milliseconds (`2024-05-01T12:00:00.123Z`), as
/// log processors, Alertmanager and webhook receivers read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

impl Civil {
    /// `t` in UTC. Times before 1970 do not occur in a running gateway;
    /// they count as the epoch.
    pub fn of(t: SystemTime) -> Civil {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Civil::from_unix(since.as_secs(), since.subsec_millis())
    }

    /// `ms` milliseconds after the Unix epoch, in UTC.
    pub fn from_unix_millis(ms: u64) -> Civil {
        Civil::from_unix(ms / 1000, (ms % 1000) as u32)
    }

    fn from_unix(secs: u64, millis: u32) -> Civil {
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let of_day = (secs % 86_400) as u32;
        Civil {
            year,
            month,
            day,
            hour: of_day / 3600,
            minute: of_day / 60 % 60,
            second: of_day % 60,
            millis,
        }
    }
}

impl fmt::Display for Civil {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millis
        )
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC, with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    Civil::from_unix_millis(ms).to_string()
}

/// Milliseconds from the Unix epoch to `t` (0 for a time before it), as
/// events, alerts and the admin API stamp their times.
pub fn unix_millis(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // Leap days, in a century year and in an ordinary one.
        assert_eq!(rfc3339(951_868_799_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(rfc3339(1_709_251_199_000), "2024-02-29T23:59:59.000Z");
        assert_eq!(rfc3339(4_102_444_800_005), "2100-01-01T00:00:00.005Z");
    }

    #[test]
    fn system_times_and_milliseconds_agree() {
        for ms in [0, 999, 1_000, 86_399_999, 951_868_799_999, 4_102_444_800_005] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(Civil::of(t), Civil::from_unix_millis(ms), "{ms}");
        }
        // Sub-millisecond parts are dropped, not rounded.
        let t = UNIX_EPOCH + Duration::from_nanos(1_999_999);
        assert_eq!(Civil::of(t).millis, 1);
        assert_eq!(
            Civil::of(UNIX_EPOCH - Duration::from_secs(1)),
            Civil::from_unix_millis(0)
        );
    }

    #[test]
    fn agrees_with_a_day_by_day_walk() {
        // Walk every day from 1970 to 2100 and compare with a naive calendar.
        let mut days = 0i64;
        for year in 1970..2100i64 {
            let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
            let lengths = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            for (month, len) in lengths.iter().enumerate() {
                for day in 1..=*len {
                    assert_eq!(civil_from_days(days), (year, month as u32 + 1, day));
                    days += 1;
                }
            }
        }
    }
}
