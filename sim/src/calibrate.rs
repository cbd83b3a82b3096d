//! Fidelity: the backlog model against the real kernel.
//!
//! For each backlog B the same burst (N clients at once, an accept loop
//! busy S per connection, a client deadline T) runs twice with the same
//! gateway code: over real loopback sockets (`real`) and over the simulator
//! (`net`). Both failure curves are printed side by side with the largest
//! difference. Real runs vary from run to run (where a burst's
//! retransmissions fall in the kernel's timer wheel), so each point is the
//! mean of several runs, and so is the model's (several seeds).

use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Duration;

use crate::client::FailureKind;
use crate::params::{Dur, Params, Profile};
use crate::real::{BurstResult, BurstSpec};
use crate::scenario::name::Scenario;
use crate::scenarios::{attempt_at, attempts, hold_then_close, read_welcome};
use crate::world::state::RunState;
use crate::world::{
    ClientTask, Driver, GatewaySlot, GatewaySpec, build_sim_with_tick, install_clients,
    install_gateway,
};

/// What to measure.
#[derive(Debug, Clone)]
pub struct CalibrationSpec {
    pub clients: u32,
    pub service: Duration,
    pub timeout: Duration,
    pub repeats: u32,
    pub backlogs: Vec<u32>,
    /// Also measure the real kernel (else only the model).
    pub real: bool,
    /// Also run the single-stage (drop-on-overflow) model.
    pub single_stage: bool,
    pub seed: u64,
}

/// One backlog's failure percentages, run by run.
#[derive(Debug, Clone)]
pub struct Point {
    pub backlog: u32,
    pub real: Vec<f64>,
    pub model: Vec<f64>,
    /// The drop-on-overflow queue alone, for comparison.
    pub single: Vec<f64>,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

impl Point {
    pub fn real_mean(&self) -> Option<f64> {
        mean(&self.real)
    }

    pub fn model_mean(&self) -> Option<f64> {
        mean(&self.model)
    }

    /// |model − real| in percentage points.
    pub fn difference(&self) -> Option<f64> {
        Some((self.model_mean()? - self.real_mean()?).abs())
    }
}

/// Both curves.
#[derive(Debug, Clone)]
pub struct Table {
    pub points: Vec<Point>,
}

impl Table {
    /// The largest |model − real| over all backlogs, and where.
    pub fn largest_difference(&self) -> Option<(u32, f64)> {
        self.points
            .iter()
            .filter_map(|p| Some((p.backlog, p.difference()?)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    pub fn render(&self, spec: &CalibrationSpec) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "calibration: {} clients at once, accept service time {}, client deadline {}, {} run(s) per point",
            spec.clients,
            Dur(spec.service),
            Dur(spec.timeout),
            spec.repeats
        );
        let _ = writeln!(out);
        let single = spec.single_stage;
        let _ = writeln!(
            out,
            "| backlog B | real loopback: failed (mean) | runs | model: failed (mean) | runs | difference |{}",
            if single {
                " drop-on-overflow only |"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "|---|---|---|---|---|---|{}",
            if single { "---|" } else { "" }
        );
        let fmt_runs = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        for p in &self.points {
            let real = p
                .real_mean()
                .map_or("—".to_string(), |m| format!("{m:.1} %"));
            let model = p
                .model_mean()
                .map_or("—".to_string(), |m| format!("{m:.1} %"));
            let diff = p
                .difference()
                .map_or("—".to_string(), |d| format!("{d:.1} pp"));
            let single_cell = match mean(&p.single) {
                Some(m) if single => format!(" {m:.1} % |"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} | {real} | {} | {model} | {} | {diff} |{single_cell}",
                p.backlog,
                fmt_runs(&p.real),
                fmt_runs(&p.model)
            );
        }
        let _ = writeln!(out);
        match self.largest_difference() {
            Some((b, d)) => {
                let _ = writeln!(
                    out,
                    "largest difference: {d:.1} percentage points at B = {b} (goal: within 10)"
                );
            }
            None => {
                let _ = writeln!(out, "largest difference: n/a (model only)");
            }
        }
        out
    }
}

/// Runs the calibration: the model for every backlog, then (unless
/// `real` is off) the real kernel.
pub fn run(spec: &CalibrationSpec) -> Result<Table, String> {
    let mut points: Vec<Point> = spec
        .backlogs
        .iter()
        .map(|&backlog| Point {
            backlog,
            real: Vec::new(),
            model: Vec::new(),
            single: Vec::new(),
        })
        .collect();
    for point in &mut points {
        for r in 0..spec.repeats {
            let result = sim_burst(spec, point.backlog, spec.seed + u64::from(r), true);
            point.model.push(result.failure_percent());
            if spec.single_stage {
                let result = sim_burst(spec, point.backlog, spec.seed + u64::from(r), false);
                point.single.push(result.failure_percent());
            }
        }
    }
    if spec.real {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        for point in &mut points {
            for _ in 0..spec.repeats {
                let burst = BurstSpec {
                    clients: spec.clients,
                    backlog: point.backlog,
                    service: spec.service,
                    timeout: spec.timeout,
                };
                let result = rt
                    .block_on(crate::real::burst(burst))
                    .map_err(|e| format!("real burst with backlog {}: {e}", point.backlog))?;
                point.real.push(result.failure_percent());
            }
        }
    }
    Ok(Table { points })
}

/// The simulated side of one calibration burst.
pub fn sim_burst(spec: &CalibrationSpec, backlog: u32, seed: u64, two_stage: bool) -> BurstResult {
    let mut p = Params::defaults(Scenario::BacklogBurst, Profile::Surge, seed);
    p.clients = spec.clients;
    p.backlog = backlog;
    p.service_time = Dur(spec.service);
    p.service_per_conn = Dur(Duration::ZERO);
    p.timeout = Dur(spec.timeout);
    p.handshake_timeout = Dur(spec.timeout + Duration::from_secs(5));
    p.capacity = spec.clients + 16;
    p.shards = 2;
    // One client host, as the real burst comes from one process (and one
    // timer wheel).
    p.hosts = 1;
    // Loopback: no latency beyond the tick.
    p.latency = Dur(Duration::ZERO);
    p.jitter = Dur(Duration::ZERO);
    let release_at = spec.timeout + Duration::from_millis(500);
    // A burst from one process reaches the kernel over a few milliseconds;
    // 25 µs ticks keep those SYNs apart, as on loopback.
    let tick = Duration::from_millis(1);
    let mut sim = build_sim_with_tick(
        &p,
        release_at + Duration::from_secs(30),
        spec.clients as usize + 64,
        tick,
    );
    let run = Rc::new(RunState::default());
    let slot = GatewaySlot::default();
    let mut gspec = GatewaySpec::from_params(&p);
    gspec.kernel.two_stage = two_stage;
    install_gateway(&mut sim, gspec.clone(), slot.clone(), Rc::clone(&run), None);
    let outcomes = attempts(p.clients);
    let kernel = gspec.kernel.clone();
    let timeout = spec.timeout;
    let spread = burst_spread(spec.clients);
    let task = {
        let run = Rc::clone(&run);
        let outcomes = Rc::clone(&outcomes);
        Rc::new(move |i: u64| -> ClientTask {
            let run = Rc::clone(&run);
            let outcomes = Rc::clone(&outcomes);
            let kernel = kernel.clone();
            let start = spread * u32::try_from(i).unwrap_or(u32::MAX);
            Box::pin(async move {
                if let Ok((mut ws, _)) = attempt_at(&kernel, i, start, timeout, &outcomes).await {
                    let id = read_welcome(&mut ws, Duration::from_secs(1)).await;
                    hold_then_close(ws, id, release_at, &run).await;
                }
            })
        }) as Rc<dyn Fn(u64) -> ClientTask>
    };
    install_clients(&mut sim, p.hosts, p.clients, task);
    let mut driver = Driver::new(sim, run, slot, gspec);
    let _ = driver.run_clients(|_, _| {});
    let outcomes = outcomes.borrow();
    let mut result = BurstResult {
        attempted: spec.clients,
        ..BurstResult::default()
    };
    let mut counts = std::collections::BTreeMap::<FailureKind, u32>::new();
    for a in outcomes.iter() {
        match a.map(|a| a.result) {
            Some(Ok(_)) => result.succeeded += 1,
            Some(Err(kind)) => *counts.entry(kind).or_default() += 1,
            None => *counts.entry(FailureKind::Reset).or_default() += 1,
        }
    }
    result.failed = counts.into_iter().collect();
    result
}

/// How far apart a burst's connects leave one process: measured on the
/// calibration host (200 tokio tasks on two workers issue their connects
/// within about 4 ms).
fn burst_spread(_clients: u32) -> Duration {
    Duration::from_micros(20)
}
