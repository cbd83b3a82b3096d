//! Time as a value. The driver owns the clock; core only compares instants
//! it is given, so a simulated run and a real one take identical decisions.

use std::num::NonZeroU64;
use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

/// A point in time, in nanoseconds since an epoch the driver chooses
/// (process start in production, the simulation's start in `sim`).
///
/// Stored as nanoseconds + 1 in a `NonZeroU64`, so `Option<Instant>` is 8
/// bytes: every idle connection holds several. The last representable
/// instant is `u64::MAX - 1` ns (584 years); later ones saturate to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(NonZeroU64);

impl Default for Instant {
    fn default() -> Self {
        Instant::ZERO
    }
}

impl Instant {
    /// The driver's epoch.
    pub const ZERO: Instant = Instant(NonZeroU64::MIN);

    /// An instant `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        let stored = if nanos >= u64::MAX - 1 {
            u64::MAX
        } else {
            nanos + 1
        };
        match NonZeroU64::new(stored) {
            Some(v) => Instant(v),
            None => Instant::ZERO,
        }
    }

    /// An instant `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Instant::from_nanos(millis.saturating_mul(1_000_000))
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0.get() - 1
    }

    /// Time elapsed since `earlier`, zero when `earlier` is in the future
    /// (a driver may hand in instants out of order across threads).
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.as_nanos().saturating_sub(earlier.as_nanos()))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        let nanos = u64::try_from(rhs.as_nanos()).unwrap_or(u64::MAX);
        Instant::from_nanos(self.as_nanos().saturating_add(nanos))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, rhs: Duration) {
        *self = *self + rhs;
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_panicking() {
        let t = Instant::from_millis(5);
        assert_eq!(t + Duration::from_millis(5), Instant::from_millis(10));
        assert_eq!(Instant::ZERO - t, Duration::ZERO);
        assert_eq!(t - Instant::ZERO, Duration::from_millis(5));
        assert_eq!(t + Duration::MAX, Instant::from_nanos(u64::MAX));
        assert_eq!(Instant::from_nanos(7).as_nanos(), 7);
        assert_eq!(Instant::ZERO.as_nanos(), 0);
        assert!(Instant::from_nanos(u64::MAX) > Instant::from_nanos(u64::MAX - 2));
        assert_eq!(std::mem::size_of::<Option<Instant>>(), 8);
    }
}
