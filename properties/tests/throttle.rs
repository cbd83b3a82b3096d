//! The adaptive throttle under random pressure.

use std::time::Duration;

use proptest::prelude::*;
use surge_core::Instant;
use surge_core::protocol::Priority;
use surge_core::throttle::{Throttle, ThrottleChange, ThrottleConfig, ThrottleLevel};

#[derive(Debug, Clone)]
enum Event {
    Message(usize),
    QueueFull,
    Enqueued,
    Advance(u64),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0usize..4).prop_map(Event::Message),
        Just(Event::QueueFull),
        Just(Event::Enqueued),
        (0u64..40_000).prop_map(Event::Advance),
    ]
}

proptest! {
    #![proptest_config(surge_properties::config("throttle", 512))]

    #[test]
    fn critical_never_dropped_and_one_step_at_a_time(
        k in 1u32..6,
        window_s in 1u64..60,
        events in prop::collection::vec(event(), 1..300),
    ) {
        let config = ThrottleConfig { full_events_to_escalate: k, recovery_window: Duration::from_secs(window_s) };
        let mut t = Throttle::new(Instant::ZERO);
        let mut now = Instant::ZERO;
        for e in events {
            let before = t.level();
            let change = match e {
                Event::Message(p) => {
                    let priority = Priority::ALL[p];
                    let sent = t.admits(priority);
                    if priority == Priority::Critical {
                        prop_assert!(sent, "critical dropped at {:?}", t.level());
                    }
                    None
                }
                Event::QueueFull => t.on_queue_full(&config, now),
                Event::Enqueued => { t.on_enqueued(); None }
                Event::Advance(ms) => {
                    now += Duration::from_millis(ms);
                    t.handle_timeout(&config, now)
                }
            };
            let after = t.level();
            let step = (after as i32 - before as i32).abs();
            prop_assert!(step <= 1, "moved {step} levels in one event");
            match change {
                Some(ThrottleChange::Raised(l)) => prop_assert!(l == after && after > before),
                Some(ThrottleChange::Lowered(l)) => prop_assert!(l == after && after < before),
                Some(ThrottleChange::Disconnect) => prop_assert_eq!(before, ThrottleLevel::Heavy),
                None => prop_assert_eq!(before, after),
            }
        }
        // A quiet window at a time always brings it back to none.
        for _ in 0..ThrottleLevel::ALL.len() {
            if let Some(due) = t.poll_timeout(&config) {
                prop_assert!(due <= now + config.recovery_window);
                now = now.max(due);
                let level = t.level();
                prop_assert!(matches!(t.handle_timeout(&config, now), Some(ThrottleChange::Lowered(l)) if l < level));
            }
        }
        prop_assert_eq!(t.level(), ThrottleLevel::None);
        prop_assert_eq!(t.poll_timeout(&config), None);
    }

    #[test]
    fn kept_share_is_monotone(level in 0usize..4, p in 0usize..3) {
        let level = ThrottleLevel::ALL[level];
        let (lower, higher) = (Priority::ALL[p], Priority::ALL[p + 1]);
        prop_assert!(level.kept_quarters(lower) <= level.kept_quarters(higher));
        if let Some(next) = ThrottleLevel::ALL.get(level as usize + 1) {
            prop_assert!(next.kept_quarters(lower) <= level.kept_quarters(lower));
        }
    }
}
