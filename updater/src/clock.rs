//! The clock policy: when the box's wall clock may be used to judge metadata expiry.
//!
//! TUF's freeze protection compares metadata expiry with the wall clock, and edge boxes have
//! unreliable clocks (no battery-backed RTC, no NTP on an isolated line). This module owns the
//! two rules the updater applies before every check:
//!
//! - A clock earlier than [`RELEASE_FLOOR_MS`] (the release date of this build, e.g. a box that
//!   booted at 1970) is implausible: the check is refused with a loud error instead of silently
//!   accepting metadata that expired long ago.
//! - A clock that stepped back (earlier than the latest reading of a successful check) is
//!   reported loudly, but the check goes on against the current clock, and the recorded reading
//!   follows the clock down. A clock that was once in the future therefore never locks the box
//!   out until that future date (the TUF library's own datastore would); rollback stays
//!   impossible because the anti-rollback floor does not depend on the clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 2026-11-01T00:00:00Z: no clock reading before this build's release is plausible.
pub const RELEASE_FLOOR_MS: u64 = 1_793_491_200_000;

/// A step back smaller than this is ordinary clock adjustment, not worth reporting.
pub const STEP_BACK_TOLERANCE: Duration = Duration::from_secs(300);

/// The clock reading judged before a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockReading {
    /// Now, in Unix milliseconds.
    pub now_ms: u64,
    /// Set when the clock is earlier than the latest successful check by more than the
    /// tolerance: how far back, in milliseconds.
    pub stepped_back_ms: Option<u64>,
}

/// The clock cannot be used to judge expiry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the system clock reads {now}, before this release ({floor}); metadata expiry cannot be \
     judged against it, so no update is checked until the clock is set (NTP or RTC)"
)]
pub struct ImplausibleClock {
    /// The clock reading, RFC 3339.
    pub now: String,
    /// The release floor, RFC 3339.
    pub floor: String,
}

/// Milliseconds since the Unix epoch now (0 for a clock before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 text of a Unix millisecond time.
pub fn rfc3339(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{ms} ms after 1970"))
}

/// Applies the policy to a clock reading, given the latest reading of a successful check.
pub fn judge(now_ms: u64, latest_ms: u64) -> Result<ClockReading, ImplausibleClock> {
    if now_ms < RELEASE_FLOOR_MS {
        return Err(ImplausibleClock {
            now: rfc3339(now_ms),
            floor: rfc3339(RELEASE_FLOOR_MS),
        });
    }
    let tolerance = STEP_BACK_TOLERANCE.as_millis() as u64;
    let stepped_back_ms =
        (latest_ms > now_ms.saturating_add(tolerance)).then(|| latest_ms - now_ms);
    Ok(ClockReading {
        now_ms,
        stepped_back_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_at_1970_is_refused() {
        let err = judge(5_000, 0).expect_err("1970");
        assert!(err.now.starts_with("1970-01-01"), "{err}");
    }

    #[test]
    fn a_step_back_is_reported_but_allowed() {
        let now = RELEASE_FLOOR_MS + 86_400_000;
        assert_eq!(judge(now, now - 1000).expect("ok").stepped_back_ms, None);
        let future = now + 10 * 365 * 86_400_000;
        let reading = judge(now, future).expect("allowed");
        assert_eq!(reading.stepped_back_ms, Some(future - now));
    }
}
