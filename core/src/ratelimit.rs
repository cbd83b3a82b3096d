//! Token buckets: the one rate limiter behind inbound client messages,
//! broker consumption and broadcast.
//!
//! Arithmetic is exact integers so that a bucket driven for hours grants
//! precisely `burst + rate × elapsed` and a simulated run takes the same
//! decisions on every machine. The level is kept in nano-tokens (10⁻⁹ of a
//! token): a refill of `rate` tokens per second adds exactly `rate`
//! nano-tokens per elapsed nanosecond, so nothing is ever rounded away.

use std::time::Duration;

use crate::Instant;

/// Nano-tokens per token. `u32::MAX` tokens of burst is about 4.3 × 10¹⁸
/// nano-tokens, which fits a `u64`.
const NANO: u64 = 1_000_000_000;

/// A token bucket refilled continuously at `rate_per_sec`, holding at most
/// `burst` tokens.
///
/// A rate of 0 means unlimited: every request succeeds and the bucket
/// reports `burst() == u32::MAX`. A limited bucket holds at least one token
/// (`burst` 0 is raised to 1), otherwise nothing could ever be acquired.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_sec: u32,
    burst: u32,
    /// Nano-tokens available as of `last`.
    level: u64,
    /// The latest instant seen. Never moves back, so an instant from the
    /// past neither mints tokens nor makes later refills count time twice.
    last: Instant,
}

impl TokenBucket {
    /// A bucket that starts full. `rate_per_sec` 0 makes it unlimited;
    /// otherwise `burst` is raised to at least 1.
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        if rate_per_sec == 0 {
            return TokenBucket {
                last: now,
                ..TokenBucket::unlimited()
            };
        }
        let burst = burst.max(1);
        TokenBucket {
            rate_per_sec,
            burst,
            level: u64::from(burst) * NANO,
            last: now,
        }
    }

    /// A bucket that grants everything.
    pub fn unlimited() -> Self {
        TokenBucket {
            rate_per_sec: 0,
            burst: u32::MAX,
            level: 0,
            last: Instant::ZERO,
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.rate_per_sec == 0
    }

    /// Tokens added per second; 0 for an unlimited bucket.
    pub fn rate_per_sec(&self) -> u32 {
        self.rate_per_sec
    }

    /// Most tokens the bucket holds (so the most one request can take);
    /// `u32::MAX` for an unlimited bucket.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    fn capacity(&self) -> u64 {
        u64::from(self.burst) * NANO
    }

    /// The level the bucket would have at `now`, without recording it.
    fn level_at(&self, now: Instant) -> u64 {
        let elapsed = now.as_nanos().saturating_sub(self.last.as_nanos());
        let added = u128::from(elapsed) * u128::from(self.rate_per_sec);
        let room = self.capacity() - self.level;
        // `added.min(room)` fits a u64 because `room` does.
        self.level + u64::try_from(added.min(u128::from(room))).unwrap_or(room)
    }

    fn refill(&mut self, now: Instant) {
        if now > self.last {
            self.level = self.level_at(now);
            self.last = now;
        }
    }

    /// Takes `n` tokens if all of them are available at `now`, else none.
    /// A request for more than `burst()` tokens never succeeds.
    pub fn try_acquire(&mut self, n: u32, now: Instant) -> bool {
        if self.is_unlimited() {
            return true;
        }
        self.refill(now);
        let need = u64::from(n) * NANO;
        if self.level >= need {
            self.level -= need;
            true
        } else {
            false
        }
    }

    /// Whole tokens available at `now`; `u32::MAX` when unlimited.
    pub fn available(&mut self, now: Instant) -> u32 {
        if self.is_unlimited() {
            return u32::MAX;
        }
        self.refill(now);
        // At most `burst` whole tokens, so it fits.
        u32::try_from(self.level / NANO).unwrap_or(self.burst)
    }

    /// The earliest instant, not before `now`, at which `try_acquire(n, _)`
    /// would succeed if nothing else is taken meanwhile; `None` when `n`
    /// exceeds the burst and never can.
    pub fn ready_at(&self, n: u32, now: Instant) -> Option<Instant> {
        if self.is_unlimited() {
            return Some(now);
        }
        if n > self.burst {
            return None;
        }
        let need = u64::from(n) * NANO;
        let level = self.level_at(now);
        if level >= need {
            return Some(now);
        }
        // Not full, so the level at `from` is exactly `level` and grows by
        // `rate` nano-tokens per nanosecond from there; round the wait up
        // so the level has certainly arrived.
        let from = now.max(self.last);
        let wait = (need - level).div_ceil(u64::from(self.rate_per_sec));
        Some(from + Duration::from_nanos(wait))
    }

    /// Changes rate and burst from `now` on, keeping the tokens already
    /// earned (capped at the new burst). A bucket that becomes limited after
    /// being unlimited starts full, as a new one would.
    pub fn reconfigure(&mut self, rate_per_sec: u32, burst: u32, now: Instant) {
        let was_unlimited = self.is_unlimited();
        self.refill(now);
        let earned = self.level;
        *self = TokenBucket::new(rate_per_sec, burst, now.max(self.last));
        if !was_unlimited && !self.is_unlimited() {
            self.level = earned.min(self.capacity());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Instant {
        Instant::from_millis(millis)
    }

    #[test]
    fn starts_full_and_caps_at_burst() {
        let mut bucket = TokenBucket::new(10, 5, ms(0));
        assert_eq!(bucket.available(ms(0)), 5);
        assert_eq!(bucket.rate_per_sec(), 10);
        assert_eq!(bucket.burst(), 5);
        // An hour idle still holds only the burst.
        assert_eq!(bucket.available(ms(3_600_000)), 5);
        assert!(bucket.try_acquire(5, ms(3_600_000)));
        assert!(!bucket.try_acquire(1, ms(3_600_000)));
    }

    #[test]
    fn refills_exactly() {
        let mut bucket = TokenBucket::new(10, 10, ms(0));
        assert!(bucket.try_acquire(10, ms(0)));
        assert_eq!(bucket.available(ms(99)), 0);
        assert_eq!(bucket.available(ms(100)), 1);
        assert!(!bucket.try_acquire(2, ms(150)));
        assert!(bucket.try_acquire(1, ms(150)));
        // 0.5 token left over from 150 ms; another 50 ms completes it.
        assert!(!bucket.try_acquire(1, ms(199)));
        assert!(bucket.try_acquire(1, ms(200)));

        // A rate that does not divide a second: 3/s over a million 1 ms
        // steps earns exactly 3000 tokens, with no drift (the burst is
        // large enough that the cap never discards a fraction).
        let mut bucket = TokenBucket::new(3, 10, ms(0));
        assert!(bucket.try_acquire(10, ms(0)));
        let mut granted = 0u64;
        for t in 1..=1_000_000 {
            if bucket.try_acquire(1, ms(t)) {
                granted += 1;
            }
        }
        assert_eq!(granted, 3_000);
    }

    #[test]
    fn all_or_nothing() {
        let mut bucket = TokenBucket::new(1, 3, ms(0));
        assert!(
            !bucket.try_acquire(4, ms(0)),
            "more than the burst never fits"
        );
        assert_eq!(
            bucket.available(ms(0)),
            3,
            "a refused request takes nothing"
        );
        assert!(bucket.try_acquire(0, ms(0)));
        assert!(bucket.try_acquire(2, ms(0)));
        assert!(!bucket.try_acquire(2, ms(0)));
        assert_eq!(bucket.available(ms(0)), 1);
    }

    #[test]
    fn zero_burst_means_one() {
        let mut bucket = TokenBucket::new(5, 0, ms(0));
        assert_eq!(bucket.burst(), 1);
        assert!(bucket.try_acquire(1, ms(0)));
        assert!(!bucket.try_acquire(1, ms(199)));
        assert!(bucket.try_acquire(1, ms(200)));
    }

    #[test]
    fn unlimited() {
        for mut bucket in [TokenBucket::unlimited(), TokenBucket::new(0, 7, ms(10))] {
            assert!(bucket.is_unlimited());
            assert_eq!(bucket.rate_per_sec(), 0);
            assert_eq!(bucket.burst(), u32::MAX);
            for _ in 0..1000 {
                assert!(bucket.try_acquire(u32::MAX, ms(0)));
            }
            assert_eq!(bucket.available(ms(0)), u32::MAX);
            assert_eq!(bucket.ready_at(u32::MAX, ms(5)), Some(ms(5)));
        }
        assert!(!TokenBucket::new(1, 1, ms(0)).is_unlimited());
    }

    #[test]
    fn ready_at_is_the_earliest_instant() {
        let mut bucket = TokenBucket::new(3, 4, ms(0));
        assert_eq!(bucket.ready_at(4, ms(0)), Some(ms(0)));
        assert_eq!(bucket.ready_at(5, ms(0)), None);
        assert!(bucket.try_acquire(4, ms(0)));
        // One token takes 333_333_333.3 ns: rounded up.
        let ready = bucket.ready_at(1, ms(0)).expect("possible");
        assert_eq!(ready, Instant::from_nanos(333_333_334));
        assert!(
            !bucket
                .clone()
                .try_acquire(1, Instant::from_nanos(333_333_333))
        );
        assert!(bucket.clone().try_acquire(1, ready));
        assert_eq!(
            bucket.ready_at(2, ms(100)),
            Some(Instant::from_nanos(666_666_667))
        );
        assert_eq!(bucket.ready_at(0, ms(100)), Some(ms(100)));
        // Asking does not consume.
        assert_eq!(bucket.available(ms(0)), 0);
    }

    #[test]
    fn time_going_backwards_mints_nothing() {
        let mut bucket = TokenBucket::new(10, 10, ms(1_000));
        assert!(bucket.try_acquire(10, ms(1_000)));
        // An earlier instant neither refills nor panics.
        assert_eq!(bucket.available(ms(0)), 0);
        assert!(!bucket.try_acquire(1, ms(500)));
        // Back at the latest instant, only real elapsed time counts.
        assert_eq!(bucket.available(ms(1_099)), 0);
        assert_eq!(bucket.available(ms(1_100)), 1);
        // ready_at from the past measures from the latest instant seen.
        assert!(bucket.try_acquire(1, ms(1_100)));
        assert_eq!(bucket.ready_at(1, ms(0)), Some(ms(1_200)));
        // Instant::ZERO before a bucket created later is harmless too.
        let mut late = TokenBucket::new(1, 1, ms(5_000));
        assert!(late.try_acquire(1, Instant::ZERO));
        assert!(!late.try_acquire(1, Instant::ZERO));
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let mut bucket = TokenBucket::new(u32::MAX, u32::MAX, Instant::ZERO);
        assert!(bucket.try_acquire(u32::MAX, Instant::ZERO));
        assert_eq!(bucket.available(Instant::from_nanos(u64::MAX)), u32::MAX);
        let bucket = TokenBucket::new(1, u32::MAX, Instant::from_nanos(u64::MAX));
        assert_eq!(
            bucket.ready_at(u32::MAX, Instant::ZERO),
            Some(Instant::ZERO)
        );
    }

    #[test]
    fn reconfigure_keeps_earned_tokens() {
        let mut bucket = TokenBucket::new(10, 10, ms(0));
        assert!(bucket.try_acquire(4, ms(0)));
        bucket.reconfigure(1, 3, ms(0));
        assert_eq!((bucket.rate_per_sec(), bucket.burst()), (1, 3));
        assert_eq!(bucket.available(ms(0)), 3, "capped at the new burst");
        assert!(bucket.try_acquire(3, ms(0)));
        assert_eq!(bucket.available(ms(999)), 0);
        assert_eq!(bucket.available(ms(1_000)), 1);

        bucket.reconfigure(0, 0, ms(1_000));
        assert!(bucket.is_unlimited());
        bucket.reconfigure(2, 2, ms(1_000));
        assert_eq!(bucket.available(ms(1_000)), 2, "limited again: starts full");
    }
}
