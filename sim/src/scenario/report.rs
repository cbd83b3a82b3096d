//! The outcome of one run, its standard-output text and the command that
//! replays it, and the helpers scenarios format their lines with.
//!
//! A report's standard-output text is a pure function of the scenario, its
//! parameters and the seed; wall-clock figures go to standard error.

use std::fmt::Write as _;
use std::time::Duration;

use crate::params::Params;
use crate::scenario::name::Scenario;
use crate::world::state::Violation;

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
