//! Time as a value. The driver owns the clock; core only compares instants
//! it is given, so a simulated run and a real one take identical decisions.
//!
//! Two clocks: [`Instant`], monotonic, for every deadline; and
//! [`UnixTime`], the wall clock, only for what is written in it by others
//! (a JWT's `exp` and `nbf`). A [`UnixAnchor`] (the wall-clock time the
//! driver read at one instant) maps one to the other, so a connection's
//! token deadlines become ordinary instants.

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

/// Wall-clock time: milliseconds since the Unix epoch, as the driver read
/// it. Core never reads it from the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixTime(u64);

impl UnixTime {
    /// `millis` milliseconds after the Unix epoch.
    pub const fn from_millis(millis: u64) -> Self {
        UnixTime(millis)
    }

    /// `secs` seconds after the Unix epoch (a JWT NumericDate), saturating.
    pub const fn from_secs(secs: u64) -> Self {
        UnixTime(secs.saturating_mul(1_000))
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `d` later, saturating.
    pub fn saturating_add(self, d: Duration) -> UnixTime {
        UnixTime(self.0.saturating_add(millis_of(d)))
    }

    /// `d` earlier, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> UnixTime {
        UnixTime(self.0.saturating_sub(millis_of(d)))
    }

    /// Time from `earlier` to `self`, zero when `earlier` is later.
    pub fn saturating_duration_since(self, earlier: UnixTime) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The wall-clock time the driver read at one instant. It maps later
/// instants to wall-clock time and wall-clock times to instants without
/// reading a clock, as if the wall clock ran at the monotonic clock's
/// pace from the reading on (a connection takes one reading when it is
/// authorised).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixAnchor {
    at: Instant,
    unix: UnixTime,
}

impl UnixAnchor {
    /// `unix` is the wall-clock time at `at`.
    pub const fn new(at: Instant, unix: UnixTime) -> Self {
        UnixAnchor { at, unix }
    }

    /// The wall-clock time at `now`.
    pub fn unix_at(&self, now: Instant) -> UnixTime {
        if now >= self.at {
            self.unix.saturating_add(now - self.at)
        } else {
            self.unix.saturating_sub(self.at - now)
        }
    }

    /// The instant at which the wall clock shows `unix` (the driver's
    /// epoch when that is before it).
    pub fn instant_at(&self, unix: UnixTime) -> Instant {
        if unix >= self.unix {
            self.at + unix.saturating_duration_since(self.unix)
        } else {
            let back = u64::try_from(self.unix.saturating_duration_since(unix).as_nanos())
                .unwrap_or(u64::MAX);
            Instant::from_nanos(self.at.as_nanos().saturating_sub(back))
        }
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

    #[test]
    fn an_anchor_maps_instants_and_unix_times_both_ways() {
        let anchor = UnixAnchor::new(
            Instant::from_millis(5_000),
            UnixTime::from_secs(1_700_000_000),
        );
        assert_eq!(
            anchor.unix_at(Instant::from_millis(6_500)),
            UnixTime::from_millis(1_700_000_001_500)
        );
        assert_eq!(
            anchor.unix_at(Instant::from_millis(4_000)),
            UnixTime::from_millis(1_699_999_999_000)
        );
        assert_eq!(
            anchor.instant_at(UnixTime::from_secs(1_700_000_030)),
            Instant::from_millis(35_000)
        );
        assert_eq!(
            anchor.instant_at(UnixTime::from_secs(1_699_999_998)),
            Instant::from_millis(3_000)
        );
        // Long before the driver's epoch: the epoch.
        assert_eq!(anchor.instant_at(UnixTime::from_secs(1)), Instant::ZERO);
        assert_eq!(UnixTime::from_secs(u64::MAX).as_millis(), u64::MAX);
    }
}
