//! The test suite's clock. Every test reads "now" from [`now`], and every
//! process the tests start gets the same clock through `CLOCK_OFFSET_SECONDS`
//! ([`suite_offset`]). `TEST_CLOCK_AT` (RFC 3339) places the whole run at that
//! instant (the suite then runs forward from it): `scripts/test-dates` runs the
//! time-sensitive tests at a rate change, a month end, a leap day and one
//! second before New Year, so no test may depend on today's date.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};

/// Seconds between the suite's clock and the system clock, fixed at the first
/// reading: 0, or what places the run at `TEST_CLOCK_AT`.
static SUITE_OFFSET: LazyLock<i64> = LazyLock::new(|| match std::env::var("TEST_CLOCK_AT") {
    Ok(at) if !at.is_empty() => {
        let at = DateTime::parse_from_rfc3339(&at)
            .unwrap_or_else(|e| panic!("TEST_CLOCK_AT={at:?} is not an RFC 3339 instant: {e}"));
        (at.with_timezone(&Utc) - Utc::now()).num_seconds()
    }
    _ => 0,
});

/// The suite's offset from the system clock, in whole seconds (what the
/// tests pass as `CLOCK_OFFSET_SECONDS`).
pub fn suite_offset() -> i64 {
    *SUITE_OFFSET
}

/// "Now" on the suite's clock: the instant the service processes read.
pub fn now() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::seconds(suite_offset())
}

/// `CLOCK_OFFSET_SECONDS` that makes a process's clock read `at` now.
pub fn offset_to(at: DateTime<Utc>) -> String {
    (at - Utc::now()).num_seconds().to_string()
}
