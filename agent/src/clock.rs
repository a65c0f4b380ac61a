//! The real clock for the shells (the core never reads a clock).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::core::Time;

/// Monotonic milliseconds since the agent started, plus wall-clock milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            start: Instant::now(),
        }
    }
}

impl Clock {
    pub fn now(&self) -> Time {
        Time {
            mono_ms: millis(self.start.elapsed().as_millis()),
            wall_ms: wall_ms(),
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
