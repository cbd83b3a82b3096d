//! Swarm soak: every seed draws its scenario, the scenario's parameters
//! and its fault schedule, so one long run explores combinations no fixed
//! soak tries (loss and latency on the links, partitions, crashes, slow
//! readers, broker outages, restarts, several gateways).
//!
//! A seed's run is the ordinary deterministic single-threaded run of the
//! scenario it drew, with every parameter printed in its report: the
//! replay command of a failing seed reproduces it on its own. Seeds are
//! spread over threads (a turmoil simulation is not `Send`, so each
//! thread builds and runs its own, one at a time); the swarm stops at the
//! first broken invariant. By default the command runs each seed in a
//! child process of its own, because a run is reproducible from a fresh
//! process: two runs in one process can differ in a few timings (tokio's
//! task ids are process-wide, and a crashed host's tasks are dropped in
//! an order that depends on them), and a failure found mid-swarm must
//! replay exactly.
//!
//! Draws stay within what each scenario promises: surge's profile only
//! (the seed profile's scenarios fail by design), loss only where a lost
//! segment is survivable (backlog_burst and handshake_timeout, whose drain
//! waits out the idle timeout; turmoil never retransmits, so elsewhere a lost
//! segment is a stuck connection, not a finding), sizes that keep a seed
//! under a second or two of CPU.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::params::{BalancerMode, Dur, OutageMode, Params, Profile};
use crate::scenario::name::Scenario;
use crate::scenario::report::Report;
use crate::scenarios::rng;

/// The scenario and parameters seed `seed` stands for.
pub fn draw(seed: u64) -> (Scenario, Params) {
    let mut r = rng(seed, 0x5_3A8D);
    let scenario = Scenario::ALL[r.random_range(0..Scenario::ALL.len())];
    let mut p = Params::defaults(scenario, Profile::Surge, seed);
    let ms = |n: u64| Dur(Duration::from_millis(n));
    p.latency = ms(r.random_range(0..=5));
    p.jitter = ms(r.random_range(0..=10));
    p.hosts = r.random_range(2..=8);
    match scenario {
        Scenario::BacklogBurst | Scenario::HandshakeTimeout | Scenario::CapacityCeiling => {
            p.clients = r.random_range(100..=400);
            p.rate = f64::from(r.random_range(100..=3000u32));
            if scenario == Scenario::CapacityCeiling {
                p.capacity = r.random_range(50..=p.clients);
            }
            // capacity_ceiling promises an HTTP answer to everyone, which
            // a lost segment without retransmission cannot keep.
            if scenario != Scenario::CapacityCeiling && r.random_bool(0.3) {
                p.loss = f64::from(r.random_range(1..=10u32)) / 1000.0;
            }
        }
        Scenario::SlotRace => {
            p.clients = r.random_range(100..=600);
            p.capacity = r.random_range(50..=p.clients);
            p.shards = r.random_range(1..=4);
            p.rate = f64::from(r.random_range(500..=3000u32));
        }
        Scenario::SlowConsumers => {
            p.clients = r.random_range(20..=80);
            p.slow_fraction = f64::from(r.random_range(0..=50u32)) / 100.0;
            p.slow_read = ms(r.random_range(5..=50));
            p.messages = r.random_range(100..=400);
            p.publish_rate = f64::from(r.random_range(50..=200u32));
        }
        Scenario::BrokerOutage => {
            p.clients = r.random_range(20..=100);
            p.messages = r.random_range(100..=400);
            p.publish_rate = f64::from(r.random_range(20..=100u32));
            p.outage = if r.random_bool(0.5) {
                OutageMode::Partition
            } else {
                OutageMode::Crash
            };
            // The outage falls inside the publishing (the scenario's
            // leavers come back two seconds after it and stop five
            // seconds after the last message).
            let publishing = (f64::from(p.messages) / p.publish_rate * 1000.0) as u64;
            p.fault_at = ms(r.random_range(publishing / 10..=publishing * 4 / 10));
            p.fault_for =
                ms(r.random_range(300.max(publishing / 10)..=300.max(publishing * 4 / 10)));
            p.resume_fraction = f64::from(r.random_range(0..=50u32)) / 100.0;
        }
        Scenario::ReconnectStorm => {
            p.clients = r.random_range(100..=400);
            p.rate = f64::from(r.random_range(200..=2000u32));
            p.fault_at = ms(r.random_range(1000..=4000));
            p.fault_for = ms(r.random_range(200..=3000));
            p.backoff = ms(r.random_range(50..=500));
            // Everyone holds on until the bound has passed: a tighter
            // bound (still above the backoff cap) is a shorter run.
            p.backoff_cap = ms(r.random_range(1000..=4000));
            p.recover_within = ms(r.random_range(6000..=12_000));
        }
        Scenario::MultiGateway => {
            p.gateways = r.random_range(2..=6);
            p.restarts = r.random_range(0..=p.gateways.min(3));
            p.clients = r.random_range(50..=200);
            p.rate = f64::from(r.random_range(200..=2000u32));
            p.messages = r.random_range(10..=40);
            p.publish_rate = f64::from(r.random_range(2..=8u32));
            p.fault_at = ms(r.random_range(500..=3000));
            p.fault_for = ms(r.random_range(500..=4000));
            p.backoff = ms(r.random_range(50..=500));
            p.balancer = if r.random_bool(0.5) {
                BalancerMode::Splice
            } else {
                BalancerMode::Route
            };
        }
    }
    (scenario, p)
}

/// One seed's run, as the swarm sees it.
#[derive(Debug, Clone)]
pub struct SeedRun {
    pub scenario: Scenario,
    pub passed: bool,
    pub trace_hash: u64,
    pub wall: Duration,
    /// The report (or, from a child process, its whole output).
    pub text: String,
}

impl SeedRun {
    /// Runs seed `seed` in this process.
    pub fn in_process(seed: u64) -> SeedRun {
        let (scenario, params) = draw(seed);
        let report: Report = scenario.run(&params);
        SeedRun {
            scenario,
            passed: report.passed(),
            trace_hash: report.trace_hash,
            wall: report.wall,
            text: report.render(),
        }
    }
}

/// How a swarm went.
#[derive(Debug)]
pub struct SwarmOutcome {
    /// Seeds run to the end (a failing one included).
    pub ran: u64,
    /// Seeds per scenario, in `Scenario::ALL` order.
    pub per_scenario: Vec<(Scenario, u64)>,
    /// The lowest failing seed and its run, if any.
    pub failure: Option<(u64, SeedRun)>,
    pub wall: Duration,
    pub threads: usize,
}

impl SwarmOutcome {
    pub fn seeds_per_hour(&self) -> f64 {
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 {
            self.ran as f64 * 3600.0 / secs
        } else {
            0.0
        }
    }
}

/// Runs seeds `first..first + seeds` with `exec` on `threads` threads
/// until one breaks an invariant; `progress` is called after every seed
/// (from the thread that ran it).
pub fn run(
    first: u64,
    seeds: u64,
    threads: usize,
    exec: &(dyn Fn(u64) -> SeedRun + Sync),
    progress: &(dyn Fn(u64, &SeedRun) + Sync),
) -> SwarmOutcome {
    let started = Instant::now();
    let next = AtomicU64::new(first);
    let end = first.saturating_add(seeds);
    let stop = AtomicBool::new(false);
    let ran = AtomicU64::new(0);
    let counts: Vec<AtomicU64> = Scenario::ALL.iter().map(|_| AtomicU64::new(0)).collect();
    let failure: Mutex<Option<(u64, SeedRun)>> = Mutex::new(None);
    let threads = threads.max(1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let result = exec(seed);
                    ran.fetch_add(1, Ordering::Relaxed);
                    if let Some(i) = Scenario::ALL.iter().position(|s| *s == result.scenario) {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    }
                    progress(seed, &result);
                    if !result.passed {
                        stop.store(true, Ordering::Relaxed);
                        let mut f = failure.lock().unwrap_or_else(|p| p.into_inner());
                        // The lowest failing seed wins, whichever thread
                        // finished first.
                        if f.as_ref().is_none_or(|(s, _)| *s > seed) {
                            *f = Some((seed, result));
                        }
                    }
                }
            });
        }
    });
    SwarmOutcome {
        ran: ran.load(Ordering::Relaxed),
        per_scenario: Scenario::ALL
            .iter()
            .zip(&counts)
            .map(|(s, c)| (*s, c.load(Ordering::Relaxed)))
            .collect(),
        failure: failure.into_inner().unwrap_or_else(|p| p.into_inner()),
        wall: started.elapsed(),
        threads,
    }
}
