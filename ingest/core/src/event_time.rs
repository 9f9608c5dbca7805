//! The range of event times the edge accepts. A time from outside (a provider's signed body or header,
//! a client's command) outside it is refused with 422 naming the field: every store downstream can
//! hold every accepted time. PostgreSQL `timestamptz` starts at 4713 BC, and ClickHouse `DateTime`
//! holds unsigned 32-bit seconds (1970-01-01 to 2106-02-07), so the range is 1970 to 2100, inside both.
use chrono::{DateTime, Utc};

/// Earliest accepted event time, inclusive: 1970-01-01T00:00:00Z, in unix seconds.
pub const EVENT_TIME_MIN_UNIX_S: i64 = 0;
/// End of the accepted range, exclusive: 2100-01-01T00:00:00Z, in unix seconds.
pub const EVENT_TIME_END_UNIX_S: i64 = 4_102_444_800;
/// The range in words, for error messages.
pub const EVENT_TIME_RANGE: &str = "1970-01-01T00:00:00Z (inclusive) to 2100-01-01T00:00:00Z (exclusive)";

/// Whether `t` is inside the accepted range.
pub fn in_range(t: DateTime<Utc>) -> bool {
    unix_s_in_range(t.timestamp())
}

/// Whether unix seconds `s` are inside the accepted range.
pub fn unix_s_in_range(s: i64) -> bool {
    (EVENT_TIME_MIN_UNIX_S..EVENT_TIME_END_UNIX_S).contains(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_is_1970_inclusive_to_2100_exclusive() {
        let at = |text: &str| DateTime::parse_from_rfc3339(text).expect("time").with_timezone(&Utc);
        assert_eq!(at("2100-01-01T00:00:00Z").timestamp(), EVENT_TIME_END_UNIX_S);
        for (text, ok) in [
            ("1969-12-31T23:59:59Z", false),
            ("1970-01-01T00:00:00Z", true),
            ("2026-12-01T12:00:00Z", true),
            ("2099-12-31T23:59:59Z", true),
            ("2100-01-01T00:00:00Z", false),
            ("2200-01-01T00:00:00Z", false),
        ] {
            assert_eq!(in_range(at(text)), ok, "{text}");
        }
        assert!(!unix_s_in_range(-300_000_000_000));
        assert!(!unix_s_in_range(i64::MAX));
        // Everything accepted fits ClickHouse's DateTime (u32 seconds).
        assert!(u32::try_from(EVENT_TIME_END_UNIX_S - 1).is_ok());
    }
}
