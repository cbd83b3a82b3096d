//! The one place the runtime turns tokio's clock into core's `Instant`.
//!
//! tokio's clock (not `std::time`) is used so that under turmoil the
//! simulator's time drives every decision, and a run replays exactly.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use surge_core::{Instant, UnixAnchor, UnixTime};

/// Maps tokio instants to core instants relative to a fixed epoch.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: tokio::time::Instant,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn start() -> Self {
        Clock {
            epoch: tokio::time::Instant::now(),
        }
    }

    /// The current time as core sees it.
    pub fn now(&self) -> Instant {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.epoch);
        Instant::from_nanos(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
    }

    /// The tokio instant for a core instant (for `sleep_until`).
    pub fn to_tokio(&self, at: Instant) -> tokio::time::Instant {
        self.epoch + Duration::from_nanos(at.as_nanos())
    }

    /// The wall clock, for what others wrote in it (a JWT's `exp`): read
    /// from the system each time, so a corrected system clock counts at
    /// once.
    pub fn unix_now(&self) -> UnixTime {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        UnixTime::from_millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    /// The wall-clock time at `at` (an instant of this clock), from one
    /// reading of both clocks.
    pub fn unix_at(&self, at: Instant) -> UnixTime {
        UnixAnchor::new(self.now(), self.unix_now()).unix_at(at)
    }

    /// Time since the epoch.
    pub fn uptime(&self) -> Duration {
        tokio::time::Instant::now().saturating_duration_since(self.epoch)
    }
}
