//! Every scenario at a size that runs in seconds, with fixed seeds: what
//! each one must show under the seed profile and under surge's, and that a
//! run replays byte for byte.

use std::time::Duration;

use surge_sim::{BalancerMode, Dur, OutageMode, Params, Profile, Report, Scenario};

fn params(scenario: Scenario, profile: Profile, seed: u64) -> Params {
    Params::defaults(scenario, profile, seed)
}

fn us(n: u64) -> Dur {
    Dur(Duration::from_micros(n))
}

fn run(scenario: Scenario, p: &Params) -> Report {
    let report = scenario.run(p);
    eprintln!(
        "{} {} seed {}: {:.2} s wall",
        scenario,
        p.profile,
        p.seed,
        report.wall.as_secs_f64()
    );
    report
}

fn assert_passed(report: &Report) {
    assert!(report.passed(), "{}", report.render());
}

fn figure(report: &Report, name: &str) -> f64 {
    report
        .get(name)
        .unwrap_or_else(|| panic!("no figure {name} in\n{}", report.render()))
}

/// A small backlog burst whose accept path saturates after ~425
/// connections under the seed profile.
fn small_burst(profile: Profile, seed: u64) -> Params {
    let mut p = params(Scenario::BacklogBurst, profile, seed);
    p.clients = 1500;
    p.rate = 100.0;
    if profile == Profile::Seed {
        p.service_per_conn = us(20);
    }
    p
}

#[test]
fn backlog_burst_fails_the_seed_and_not_surge() {
    for seed in [1, 2] {
        let seeded = run(Scenario::BacklogBurst, &small_burst(Profile::Seed, seed));
        assert_passed(&seeded);
        assert!(
            figure(&seeded, "failed_percent") >= 5.0,
            "{}",
            seeded.render()
        );
        let surge = run(Scenario::BacklogBurst, &small_burst(Profile::Surge, seed));
        assert_passed(&surge);
        assert!(
            figure(&surge, "failed_percent") <= 0.1,
            "{}",
            surge.render()
        );
    }
}

#[test]
fn backlog_burst_report_has_the_promised_lines() {
    let report = run(Scenario::BacklogBurst, &small_burst(Profile::Seed, 3));
    let text = report.render();
    for needle in [
        "attempted: 1500",
        "succeeded: ",
        "failed by kind: ",
        "timeline (by second of arrival",
        "invariants: ok",
        "trace: ",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("failed: ") && l.ends_with(" %")),
        "{text}"
    );
}

#[test]
fn same_seed_same_output_and_trace() {
    let cases = [
        (Scenario::BacklogBurst, small_burst(Profile::Seed, 11)),
        (Scenario::SlotRace, {
            let mut p = params(Scenario::SlotRace, Profile::Seed, 11);
            p.clients = 400;
            p.capacity = 300;
            p
        }),
        (Scenario::CapacityCeiling, {
            let mut p = params(Scenario::CapacityCeiling, Profile::Surge, 11);
            p.clients = 300;
            p.capacity = 200;
            p
        }),
        (Scenario::BrokerOutage, {
            let mut p = params(Scenario::BrokerOutage, Profile::Surge, 11);
            p.clients = 20;
            p.messages = 200;
            p
        }),
    ];
    for (scenario, p) in cases {
        let a = run(scenario, &p);
        let b = run(scenario, &p);
        assert_eq!(a.render(), b.render(), "{scenario} did not replay");
        assert_eq!(a.trace_hash, b.trace_hash);
        // A different seed is a different run.
        let mut q = p.clone();
        q.seed += 1;
        assert_ne!(run(scenario, &q).trace_hash, a.trace_hash, "{scenario}");
    }
}

#[test]
fn slot_race_over_admits_with_check_then_acquire_only() {
    for seed in [1, 2] {
        let mut p = params(Scenario::SlotRace, Profile::Seed, seed);
        p.clients = 600;
        p.capacity = 450;
        let seeded = run(Scenario::SlotRace, &p);
        assert!(
            figure(&seeded, "over_admitted") > 0.0,
            "{}",
            seeded.render()
        );
        assert!(!seeded.passed(), "the race must be reported as a violation");
        assert!(seeded.render().contains("replay slot_race --seed"));

        let mut p = params(Scenario::SlotRace, Profile::Surge, seed);
        p.clients = 600;
        p.capacity = 450;
        let surge = run(Scenario::SlotRace, &p);
        assert_passed(&surge);
        assert_eq!(figure(&surge, "over_admitted"), 0.0);
        assert_eq!(figure(&surge, "leaked"), 0.0);
        assert_eq!(figure(&surge, "succeeded"), 450.0);
        assert_eq!(figure(&surge, "rejected_503"), 150.0);
    }
}

#[test]
fn slot_race_reports_the_peak_it_measured() {
    for profile in [Profile::Seed, Profile::Surge] {
        let mut p = params(Scenario::SlotRace, profile, 1);
        p.clients = 600;
        p.capacity = 450;
        let report = run(Scenario::SlotRace, &p);
        let text = report.render();
        // Every client that got in held its connection to the end, so the
        // peak is the number admitted (over capacity for the seed's race).
        let succeeded = figure(&report, "succeeded");
        assert_eq!(figure(&report, "peak_slots"), succeeded, "{text}");
        assert!(!text.contains("peak slots in use 0"), "{text}");
        let peak_lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("peak slots in use"))
            .collect();
        assert_eq!(peak_lines.len(), 1, "{text}");
        assert!(
            peak_lines[0].contains(&format!("peak slots in use {succeeded}")),
            "{text}"
        );
    }
}

#[test]
fn handshake_timeout_depends_on_the_client_deadline_under_the_seed_profile() {
    let mut p = params(Scenario::HandshakeTimeout, Profile::Seed, 1);
    p.clients = 2000;
    p.upgrade_per_conn = us(9);
    let seeded = run(Scenario::HandshakeTimeout, &p);
    assert_passed(&seeded);
    let short = figure(&seeded, "success_short");
    let long = figure(&seeded, "success_long");
    assert!(short < 100.0 && long == 100.0, "{}", seeded.render());

    let mut p = params(Scenario::HandshakeTimeout, Profile::Surge, 1);
    p.clients = 2000;
    let surge = run(Scenario::HandshakeTimeout, &p);
    assert_passed(&surge);
    assert_eq!(figure(&surge, "success_short"), 100.0);
}

/// The value a report prints (and its replay command passes) for `--name`.
fn printed<'a>(report: &'a Report, name: &str) -> &'a str {
    report
        .flags
        .iter()
        .find(|(flag, _)| *flag == name)
        .map(|(_, value)| value.as_str())
        .unwrap_or_else(|| panic!("no --{name} in\n{}", report.render()))
}

#[test]
fn handshake_timeout_prints_the_parameters_it_runs_with() {
    for (profile, backlog) in [(Profile::Seed, "128"), (Profile::Surge, "4096")] {
        let mut p = params(Scenario::HandshakeTimeout, profile, 1);
        // Every scenario's seed profile has the seed system's backlog.
        assert_eq!(
            p.backlog,
            params(Scenario::BacklogBurst, profile, 1).backlog
        );
        p.clients = 200;
        let report = run(Scenario::HandshakeTimeout, &p);
        assert_passed(&report);
        assert_eq!(printed(&report, "backlog"), backlog, "{}", report.render());
        // The gateway's own deadline is raised above twice the longest
        // client deadline (2 x 5 s) so that only the client's can fail:
        // the report says so instead of the profile's 5 s or 10 s.
        assert_eq!(
            printed(&report, "handshake-timeout"),
            "20s",
            "{}",
            report.render()
        );
    }
}

#[test]
fn capacity_ceiling_answers_every_excess_client_with_503() {
    let mut p = params(Scenario::CapacityCeiling, Profile::Surge, 5);
    p.clients = 400;
    p.capacity = 250;
    let surge = run(Scenario::CapacityCeiling, &p);
    assert_passed(&surge);
    assert_eq!(figure(&surge, "rejected_503"), 150.0);
    assert_eq!(figure(&surge, "timeouts"), 0.0);

    let mut p = params(Scenario::CapacityCeiling, Profile::Seed, 5);
    p.clients = 400;
    p.capacity = 250;
    let seeded = run(Scenario::CapacityCeiling, &p);
    assert!(figure(&seeded, "timeouts") > 0.0, "{}", seeded.render());
    assert_eq!(figure(&seeded, "rejected_503"), 0.0);
    assert!(!seeded.passed());
}

#[test]
fn slow_consumers_are_throttled_alone() {
    let mut p = params(Scenario::SlowConsumers, Profile::Surge, 3);
    p.clients = 30;
    p.messages = 900;
    let report = run(Scenario::SlowConsumers, &p);
    assert_passed(&report);
    assert!(figure(&report, "slow") > 0.0, "{}", report.render());
    assert_eq!(figure(&report, "slow_throttled"), figure(&report, "slow"));
    assert_eq!(figure(&report, "fast_complete"), figure(&report, "fast"));
    assert_eq!(figure(&report, "fast_throttled"), 0.0);
}

#[test]
fn broker_outage_loses_and_duplicates_nothing() {
    for outage in [OutageMode::Partition, OutageMode::Crash] {
        let mut p = params(Scenario::BrokerOutage, Profile::Surge, 4);
        p.clients = 40;
        p.messages = 400;
        p.outage = outage;
        let report = run(Scenario::BrokerOutage, &p);
        assert_passed(&report);
        assert_eq!(figure(&report, "published"), 400.0);
        assert_eq!(
            figure(&report, "stayed_complete"),
            figure(&report, "stayed")
        );
        assert!(figure(&report, "resumed") > 0.0, "{}", report.render());
        assert_eq!(
            figure(&report, "resumed_complete"),
            figure(&report, "resumed")
        );
        assert!(figure(&report, "recovered") > 0.0);
    }
}

#[test]
fn reconnect_storm_brings_everyone_back() {
    for profile in [Profile::Surge, Profile::Seed] {
        let mut p = params(Scenario::ReconnectStorm, profile, 6);
        p.clients = 500;
        let report = run(Scenario::ReconnectStorm, &p);
        assert_passed(&report);
        assert_eq!(figure(&report, "not_back"), 0.0);
        assert_eq!(figure(&report, "back"), 500.0);
    }
}

/// A small multi_gateway run: `gateways` gateways, every fault.
fn small_multi(seed: u64, balancer: BalancerMode) -> Params {
    let mut p = params(Scenario::MultiGateway, Profile::Surge, seed);
    p.clients = 150;
    p.gateways = 4;
    p.restarts = 2;
    p.messages = 30;
    p.publish_rate = 2.0;
    p.balancer = balancer;
    p
}

#[test]
fn multi_gateway_moves_every_client_without_loss_or_duplicate() {
    for (seed, balancer) in [(3, BalancerMode::Splice), (4, BalancerMode::Route)] {
        let p = small_multi(seed, balancer);
        let report = run(Scenario::MultiGateway, &p);
        assert_passed(&report);
        assert_eq!(figure(&report, "published"), 30.0);
        assert_eq!(figure(&report, "lost"), 0.0);
        assert_eq!(figure(&report, "duplicated"), 0.0);
        assert_eq!(figure(&report, "leaked"), 0.0);
        assert_eq!(figure(&report, "restarts"), 2.0, "{}", report.render());
        // The crash and the rolling restart moved clients.
        assert!(figure(&report, "reconnects") > 0.0, "{}", report.render());
        // Everyone got every message, live or recovered.
        assert_eq!(figure(&report, "received"), 150.0 * 30.0);
    }
}

/// A replay is a new process: `surge-sim run` twice with the same seed
/// prints the same report and trace hash, another seed another trace.
/// (Two runs inside one process do not yet agree for this scenario:
/// something carried from one run to the next changes a few timings.)
#[test]
fn multi_gateway_replays_byte_for_byte() {
    let sim = env!("CARGO_BIN_EXE_surge-sim");
    let out = |seed: &str| {
        let o = std::process::Command::new(sim)
            .args([
                "run",
                "multi_gateway",
                "--seed",
                seed,
                "--clients",
                "120",
                "--gateways",
                "3",
            ])
            .output()
            .expect("surge-sim runs");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let a = out("12");
    assert_eq!(a, out("12"), "multi_gateway did not replay");
    let trace = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("trace: "))
            .map(str::to_owned)
            .expect("a trace line")
    };
    assert_ne!(trace(&out("13")), trace(&a));
}

#[test]
fn swarm_draws_are_a_function_of_the_seed() {
    for seed in 1..50 {
        let (s1, p1) = surge_sim::swarm::draw(seed);
        let (s2, p2) = surge_sim::swarm::draw(seed);
        assert_eq!(s1, s2);
        assert_eq!(p1, p2);
        assert_eq!(p1.seed, seed);
        assert_eq!(p1.profile, Profile::Surge);
    }
    // Every scenario comes up within a few hundred seeds.
    let drawn: std::collections::BTreeSet<Scenario> =
        (1..300).map(|s| surge_sim::swarm::draw(s).0).collect();
    assert_eq!(drawn.len(), Scenario::ALL.len());
}
