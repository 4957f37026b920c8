//! RFC 3339 timestamps (`2026-11-30T00:44:27.123Z`), as Alertmanager and
//! webhook receivers read them, from milliseconds since the Unix epoch.

/// `0001-01-01T00:00:00Z`: Alertmanager's "no end" in webhook payloads.
pub const ZERO: &str = "0001-01-01T00:00:00Z";

pub use levee_core::calendar::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_764_460_800_123), "2025-11-30T00:00:00.123Z");
        assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(1_709_251_199_000), "2024-02-29T23:59:59.000Z");
    }
}
