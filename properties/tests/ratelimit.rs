//! Properties of the token bucket under random traffic.
//!
//! The bound is checked exactly, in nano-tokens: a bucket never grants more
//! than `burst + rate × elapsed`, however requests and time steps fall, even
//! when the driver hands in instants out of order. And `ready_at` is honest:
//! the instant it names is the first at which the request succeeds.

use std::time::Duration;

use proptest::prelude::*;
use surge_core::Instant;
use surge_core::ratelimit::TokenBucket;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// (rate, burst as configured, steps of (time step in ns, tokens asked)).
/// Steps go back in time when `backwards` is set.
fn traffic(backwards: bool) -> impl Strategy<Value = (u32, u32, Vec<(i64, u32)>)> {
    let rate = prop_oneof![1u32..=10, 1u32..=1_000, 1u32..=1_000_000];
    (rate, 0u32..=50).prop_flat_map(move |(rate, burst)| {
        let earliest: i64 = if backwards { -1_000_000_000 } else { 0 };
        let step = (earliest..=2_000_000_000i64, 0..=burst.max(1) + 2);
        (Just(rate), Just(burst), prop::collection::vec(step, 1..100))
    })
}

/// Runs `steps` against a fresh bucket, checking both properties at every
/// step.
fn run(rate: u32, burst: u32, steps: &[(i64, u32)]) -> Result<(), TestCaseError> {
    let start = Instant::from_millis(1_000_000);
    let mut bucket = TokenBucket::new(rate, burst, start);
    let effective_burst = u128::from(burst.max(1));
    prop_assert_eq!(u128::from(bucket.burst()), effective_burst);

    let mut now = start;
    let mut latest = start;
    let mut granted: u128 = 0;
    for &(step, n) in steps {
        now = Instant::from_nanos(now.as_nanos().saturating_add_signed(step));
        latest = latest.max(now);

        let before = bucket.clone();
        let ready = bucket.ready_at(n, now);
        let acquired = bucket.try_acquire(n, now);
        match ready {
            None => {
                prop_assert!(
                    u128::from(n) > effective_burst,
                    "None only beyond the burst"
                );
                prop_assert!(!acquired);
            }
            Some(at) => {
                prop_assert!(at >= now);
                prop_assert_eq!(
                    acquired,
                    at == now,
                    "ready_at({}) = {:?} at {:?}",
                    n,
                    at,
                    now
                );
            }
        }
        // Where the request had to wait, check the named instant on the
        // bucket as it was: it succeeds there, and not a nanosecond sooner.
        if let (Some(at), false) = (ready, acquired) {
            let mut at_ready = before.clone();
            prop_assert!(at_ready.try_acquire(n, at), "ready_at said {:?}", at);
            let just_before = Instant::from_nanos(at.as_nanos() - 1);
            let mut too_early = before;
            prop_assert!(
                !too_early.try_acquire(n, just_before),
                "{:?} was enough",
                just_before
            );
        }
        if acquired {
            granted += u128::from(n);
        }

        let elapsed = (latest - start).as_nanos();
        prop_assert!(
            granted * NANOS_PER_SEC <= effective_burst * NANOS_PER_SEC + u128::from(rate) * elapsed,
            "granted {} with rate {} burst {} over {} ns",
            granted,
            rate,
            effective_burst,
            elapsed
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(surge_properties::config("ratelimit", 256))]

    #[test]
    fn never_exceeds_burst_plus_rate_and_ready_at_holds((rate, burst, steps) in traffic(false)) {
        run(rate, burst, &steps)?;
    }

    #[test]
    fn time_going_backwards_mints_nothing((rate, burst, steps) in traffic(true)) {
        run(rate, burst, &steps)?;
    }

    #[test]
    fn unlimited_grants_everything(steps in prop::collection::vec((0u64..2_000_000_000, any::<u32>()), 1..50)) {
        let mut bucket = TokenBucket::new(0, 5, Instant::ZERO);
        let mut now = Instant::ZERO;
        for (step, n) in steps {
            now += Duration::from_nanos(step);
            prop_assert_eq!(bucket.ready_at(n, now), Some(now));
            prop_assert!(bucket.try_acquire(n, now));
        }
    }
}
