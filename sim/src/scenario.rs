//! The scenarios, their reports and the command that replays a run.
//!
//! A report's standard-output text is a pure function of the scenario, its
//! parameters and the seed; wall-clock figures go to standard error.

use std::fmt;
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

use crate::params::Params;
use crate::world::Violation;

/// Every scenario the simulator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    BacklogBurst,
    SlotRace,
    HandshakeTimeout,
    CapacityCeiling,
    SlowConsumers,
    BrokerOutage,
    ReconnectStorm,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::BacklogBurst,
        Scenario::SlotRace,
        Scenario::HandshakeTimeout,
        Scenario::CapacityCeiling,
        Scenario::SlowConsumers,
        Scenario::BrokerOutage,
        Scenario::ReconnectStorm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::BacklogBurst => "backlog_burst",
            Scenario::SlotRace => "slot_race",
            Scenario::HandshakeTimeout => "handshake_timeout",
            Scenario::CapacityCeiling => "capacity_ceiling",
            Scenario::SlowConsumers => "slow_consumers",
            Scenario::BrokerOutage => "broker_outage",
            Scenario::ReconnectStorm => "reconnect_storm",
        }
    }

    /// What a run of this scenario shows.
    pub fn proves(self) -> &'static str {
        match self {
            Scenario::BacklogBurst => {
                "a connection surge against a listen backlog: the seed's 128 and slow accept path lose a double-digit share (the Go system surge replaces: 18.5 %), surge's backlog and acceptor lose none"
            }
            Scenario::SlotRace => {
                "check-then-acquire across an await over-admits (as in the Go system surge replaces); surge's atomic admission never exceeds a shard's capacity and leaks no slot"
            }
            Scenario::HandshakeTimeout => {
                "a slow upgrade path fails clients with a 5 s timeout but not with 10 s (the Go system surge replaces: 97.1 % vs 100 %); surge's upgrade stays fast (accept is kept fast in both profiles, so only the upgrade is measured; the gateway's own handshake timeout is raised above both client deadlines)"
            }
            Scenario::CapacityCeiling => {
                "past capacity every client gets a prompt 503 with Retry-After, never a timeout (the seed timed out at its memory ceiling)"
            }
            Scenario::SlowConsumers => {
                "slow readers are throttled alone: fast clients get everything, critical messages reach everyone, queues stay bounded"
            }
            Scenario::BrokerOutage => {
                "the publisher is cut off or crashes and returns: clients stay connected and, with resume, see every message exactly once"
            }
            Scenario::ReconnectStorm => {
                "the gateway restarts: clients reconnect with jittered backoff, all are back within the bound, no slot leaks"
            }
        }
    }

    /// Runs the scenario.
    pub fn run(self, p: &Params) -> Report {
        let started = std::time::Instant::now();
        let mut report = match self {
            Scenario::BacklogBurst => crate::scenarios::backlog_burst::run(p),
            Scenario::SlotRace => crate::scenarios::slot_race::run(p),
            Scenario::HandshakeTimeout => crate::scenarios::handshake_timeout::run(p),
            Scenario::CapacityCeiling => crate::scenarios::capacity_ceiling::run(p),
            Scenario::SlowConsumers => crate::scenarios::slow_consumers::run(p),
            Scenario::BrokerOutage => crate::scenarios::broker_outage::run(p),
            Scenario::ReconnectStorm => crate::scenarios::reconnect_storm::run(p),
        };
        report.wall = started.elapsed();
        report
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.name() == s || sc.name().replace('_', "-") == s)
            .ok_or_else(|| {
                let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
                format!("unknown scenario {s:?}; known: {}", names.join(", "))
            })
    }
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: Scenario,
    pub params: Params,
    /// The flags that reproduce `params` (`--name value`), in order.
    pub flags: Vec<(&'static str, String)>,
    /// The scenario's findings, one line each.
    pub lines: Vec<String>,
    /// Headline figures tests and soak runs read (name, value).
    pub figures: Vec<(&'static str, f64)>,
    pub violations: Vec<Violation>,
    pub checks: u64,
    pub trace_hash: u64,
    pub trace_events: u64,
    pub simulated: Duration,
    pub wall: Duration,
    /// The simulation itself failed (e.g. ran past its time limit).
    pub error: Option<String>,
}

impl Report {
    pub fn new(scenario: Scenario, params: &Params) -> Report {
        Report {
            scenario,
            params: params.clone(),
            flags: Vec::new(),
            lines: Vec::new(),
            figures: Vec::new(),
            violations: Vec::new(),
            checks: 0,
            trace_hash: 0,
            trace_events: 0,
            simulated: Duration::ZERO,
            wall: Duration::ZERO,
            error: None,
        }
    }

    pub fn flag(&mut self, name: &'static str, value: impl ToString) {
        self.flags.push((name, value.to_string()));
    }

    pub fn line(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    pub fn figure(&mut self, name: &'static str, value: f64) {
        self.figures.push((name, value));
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    /// Whether every invariant held and the simulation completed.
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.error.is_none()
    }

    /// The one command that replays this run exactly.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "cargo run -p surge-sim -- replay {} --seed {} --profile {}",
            self.scenario, self.params.seed, self.params.profile
        );
        for (name, value) in &self.flags {
            let _ = write!(cmd, " --{name} {value}");
        }
        cmd
    }

    /// The standard-output text: deterministic for a (scenario, params,
    /// seed).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "scenario: {}", self.scenario);
        let _ = writeln!(out, "profile: {}", self.params.profile);
        let _ = writeln!(out, "seed: {}", self.params.seed);
        let params: Vec<String> = self.flags.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let _ = writeln!(out, "params: {}", params.join(" "));
        for line in &self.lines {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(
            out,
            "simulated: {:.3} s, invariant checks: {}",
            self.simulated.as_secs_f64(),
            self.checks
        );
        if let Some(e) = &self.error {
            let _ = writeln!(out, "simulation error: {e}");
        }
        if self.violations.is_empty() {
            let _ = writeln!(out, "invariants: ok");
        } else {
            let _ = writeln!(out, "invariants: {} violated", self.violations.len());
            for v in self.violations.iter().take(20) {
                let _ = writeln!(out, "  at {:.3}s: {}", v.at.as_secs_f64(), v.what);
            }
            if self.violations.len() > 20 {
                let _ = writeln!(out, "  … and {} more", self.violations.len() - 20);
            }
        }
        let _ = writeln!(
            out,
            "trace: {:016x} ({} events)",
            self.trace_hash, self.trace_events
        );
        if !self.passed() {
            let _ = writeln!(
                out,
                "FAILED: scenario {} seed {} — replay with:\n  {}",
                self.scenario,
                self.params.seed,
                self.replay_command()
            );
        }
        out
    }
}

/// Percentiles of a set of durations, for report lines.
pub fn percentiles(mut values: Vec<Duration>) -> String {
    if values.is_empty() {
        return "n/a".into();
    }
    values.sort();
    let at = |q: f64| {
        let i = ((values.len() as f64 - 1.0) * q).round() as usize;
        values[i.min(values.len() - 1)].as_secs_f64() * 1000.0
    };
    format!(
        "p50={:.1}ms p99={:.1}ms max={:.1}ms",
        at(0.5),
        at(0.99),
        at(1.0)
    )
}
