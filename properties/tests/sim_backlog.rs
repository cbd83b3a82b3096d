//! Simulated surges with generated parameters: whatever the clients, their
//! rate, the backlog, the links' latency, jitter and loss, and the
//! gateway profile, the real gateway keeps every invariant the simulator
//! checks while it runs (slot tables agree with the connections per shard
//! and never exceed capacity, no slot outlives its connection, no queue
//! passes its bound) and ends with no slot held. Every client is accounted
//! for, and with capacity to spare a failure is only ever a timeout
//! caused by the network or the backlog, never an HTTP error.
//!
//! A failing case prints the report with its replay command.

use std::time::Duration;

use proptest::prelude::*;
use surge_sim::{Dur, Params, Profile, Scenario};

fn profile() -> impl Strategy<Value = Profile> {
    prop_oneof![Just(Profile::Seed), Just(Profile::Surge)]
}

fn loss() -> impl Strategy<Value = f64> {
    prop_oneof![3 => Just(0.0), 1 => 0.0..0.002f64]
}

proptest! {
    #![proptest_config(surge_properties::config("sim_backlog", 256))]

    #[test]
    fn backlog_burst_keeps_every_invariant(
        seed in any::<u64>(),
        profile in profile(),
        clients in 10u32..160,
        rate in 20.0..3000.0f64,
        backlog in 1u32..300,
        service_us in 0u64..20_000,
        latency_ms in 0u64..30,
        jitter_ms in 0u64..30,
        loss in loss(),
        timeout_s in 1u64..6,
    ) {
        let mut p = Params::defaults(Scenario::BacklogBurst, profile, seed);
        p.clients = clients;
        p.rate = rate;
        p.backlog = backlog;
        p.service_time = Dur(Duration::from_micros(service_us));
        p.latency = Dur(Duration::from_millis(latency_ms));
        p.jitter = Dur(Duration::from_millis(jitter_ms));
        p.loss = loss;
        p.timeout = Dur(Duration::from_secs(timeout_s));
        p.hosts = 3;
        let report = Scenario::BacklogBurst.run(&p);
        prop_assert!(report.passed(), "{}", report.render());
        prop_assert_eq!(report.get("attempted"), Some(f64::from(clients)));
        let failed = report.get("attempted").unwrap_or(0.0) - report.get("succeeded").unwrap_or(0.0);
        // Capacity is far above the clients: nobody is refused.
        prop_assert_eq!(report.get("rejected_503"), Some(0.0), "{}", report.render());
        if loss == 0.0 && profile == Profile::Surge && backlog >= clients && service_us < 1000 {
            prop_assert_eq!(failed, 0.0, "{}", report.render());
        }
    }

    #[test]
    fn capacity_ceiling_refuses_with_answers_only(
        seed in any::<u64>(),
        clients in 10u32..160,
        capacity in 1u32..120,
        rate in 20.0..3000.0f64,
        latency_ms in 0u64..30,
        jitter_ms in 0u64..30,
    ) {
        let mut p = Params::defaults(Scenario::CapacityCeiling, Profile::Surge, seed);
        p.clients = clients;
        p.capacity = capacity;
        p.rate = rate;
        p.latency = Dur(Duration::from_millis(latency_ms));
        p.jitter = Dur(Duration::from_millis(jitter_ms));
        p.hosts = 3;
        let report = Scenario::CapacityCeiling.run(&p);
        prop_assert!(report.passed(), "{}", report.render());
        let admitted = f64::from(clients.min(capacity));
        prop_assert_eq!(report.get("succeeded"), Some(admitted), "{}", report.render());
        prop_assert_eq!(
            report.get("rejected_503"),
            Some(f64::from(clients.saturating_sub(capacity))),
            "{}",
            report.render()
        );
    }
}
