//! The real clock for the shells (the core is handed the time).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::core::Time;

/// No wall clock before this (2026-01-01) is believed: a device without RTC boots at 1970 or at
/// its image's build date.
pub const MIN_PLAUSIBLE_WALL_MS: u64 = 1_767_225_600_000;

/// Monotonic milliseconds since the agent started, plus wall-clock milliseconds and whether the
/// wall clock can be trusted.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    /// The last wall time a previous run saved as good.
    saved_wall_ms: Option<u64>,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            start: Instant::now(),
            saved_wall_ms: None,
        }
    }
}

impl Clock {
    /// A clock that trusts the wall time once it is later than `saved_wall_ms`.
    pub fn with_saved_wall(saved_wall_ms: Option<u64>) -> Clock {
        Clock {
            start: Instant::now(),
            saved_wall_ms,
        }
    }

    pub fn now(&self) -> Time {
        let wall = wall_ms();
        let floor = self.saved_wall_ms.unwrap_or(0).max(MIN_PLAUSIBLE_WALL_MS);
        Time {
            mono_ms: millis(self.start.elapsed().as_millis()),
            wall_ms: wall,
            wall_trusted: ntp_synchronised() || wall > floor,
        }
    }

    /// The instant a monotonic deadline of [`Time::mono_ms`] falls on.
    pub fn instant(&self, mono_ms: u64) -> Instant {
        self.start + std::time::Duration::from_millis(mono_ms)
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 before 1970, e.g. no RTC and no NTP yet).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| millis(d.as_millis()))
}

fn millis(ms: u128) -> u64 {
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// Whether the kernel says the clock is NTP-synchronised (`adjtimex` does not report
/// `TIME_ERROR`, the unsynchronised state).
#[allow(unsafe_code)]
fn ntp_synchronised() -> bool {
    // SAFETY: a zeroed `timex` with `modes = 0` is a read-only query; the kernel only writes
    // into the struct we own for the duration of the call.
    let state = unsafe {
        let mut t: libc::timex = std::mem::zeroed();
        libc::adjtimex(&mut t)
    };
    state >= 0 && state != libc::TIME_ERROR
}
