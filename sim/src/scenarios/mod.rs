//! One module per scenario, and what connection-surge scenarios share:
//! seeded arrivals, clients that connect and hold, and the summary of who
//! got in and why the others did not.

pub mod backlog_burst;
pub mod broker_outage;
pub mod capacity_ceiling;
pub mod handshake_timeout;
pub mod multi_gateway;
pub mod reconnect_storm;
pub mod slot_race;
pub mod slow_consumers;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{FailureKind, UpgradeFailure};
use crate::net::{KernelParams, SimStream};
use crate::params::Params;
use crate::scenario::report::{Report, percentiles};
use crate::world::hosts::sleep_until_sim;
use crate::world::state::RunState;
use crate::world::{
    ClientTask, Driver, GatewaySlot, GatewaySpec, build_sim, install_clients, install_gateway,
    open_websocket,
};

/// A random generator for one purpose of one run: the seed and a purpose
/// label give independent, reproducible streams.
pub fn rng(seed: u64, purpose: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(crate::client::splitmix64(
        seed ^ purpose.wrapping_mul(0x9E37_79B9),
    ))
}

/// Start times of `n` clients arriving as a Poisson process of `rate` per
/// second, from the run's seed.
pub fn poisson_arrivals(seed: u64, n: u32, rate: f64) -> Vec<Duration> {
    let mut r = rng(seed, 1);
    let rate = if rate > 0.0 { rate } else { 1.0 };
    let mut t = 0.0f64;
    (0..n)
        .map(|_| {
            let u: f64 = r.random::<f64>();
            t += -(1.0 - u).ln() / rate;
            Duration::from_secs_f64(t)
        })
        .collect()
}

/// What one client of a surge experienced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub started: Duration,
    /// Time to an open WebSocket, or why there was none.
    pub result: Result<Duration, FailureKind>,
    /// When the answer (or the deadline) came.
    pub ended: Duration,
    pub retry_after: Option<u32>,
}

/// Attempts indexed by client.
pub type Attempts = Rc<RefCell<Vec<Option<Attempt>>>>;

pub fn attempts(n: u32) -> Attempts {
    Rc::new(RefCell::new(vec![None; n as usize]))
}

/// Client `i`'s attempt: waits until `start` (simulated time), opens a
/// WebSocket within `timeout` and records how it went in `outcomes[i]`.
pub async fn attempt_at(
    kernel: &KernelParams,
    i: u64,
    start: Duration,
    timeout: Duration,
    outcomes: &Attempts,
) -> Result<(WebSocketStream<SimStream>, Duration), UpgradeFailure> {
    sleep_until_sim(start).await;
    let result = open_websocket(kernel, i, timeout).await;
    let (outcome, retry_after) = match &result {
        Ok((_, took)) => (Ok(*took), None),
        Err(f) => (Err(f.kind), f.retry_after),
    };
    outcomes.borrow_mut()[i as usize] = Some(Attempt {
        started: start,
        result: outcome,
        ended: crate::net::sim_now(),
        retry_after,
    });
    result
}

/// Reads the welcome frame and returns its `conn_id`.
pub async fn read_welcome(ws: &mut WebSocketStream<SimStream>, within: Duration) -> Option<String> {
    let frame = tokio::time::timeout(within, ws.next()).await.ok()??.ok()?;
    let Message::Text(text) = frame else {
        return None;
    };
    let v: serde_json::Value = serde_json::from_str(text.as_str()).ok()?;
    if v["type"] != "welcome" {
        return None;
    }
    v["conn_id"].as_str().map(str::to_owned)
}

/// Keeps a connection open (answering pings) until simulated time `until`,
/// then closes it and tells the run.
pub async fn hold_then_close(
    mut ws: WebSocketStream<SimStream>,
    conn_id: Option<String>,
    until: Duration,
    run: &RunState,
) {
    loop {
        let now = crate::net::sim_now();
        if now >= until {
            break;
        }
        match tokio::time::timeout(until - now, ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(_))) => {}
            Ok(_) => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    let _ = ws.flush().await;
    drop(ws);
    if let Some(id) = conn_id {
        run.conn_closed(&id);
    }
}

/// The summary lines every surge scenario prints: attempted, succeeded,
/// failed by kind, `failed: X.X %`, connect times and a per-second
/// timeline. Adds the matching figures.
pub fn summarize(report: &mut Report, attempts: &[Option<Attempt>], timeline: bool) {
    let attempted = attempts.len();
    let mut ok = 0usize;
    let mut kinds: BTreeMap<FailureKind, usize> = BTreeMap::new();
    let mut times = Vec::new();
    let mut rejection_times = Vec::new();
    let mut per_second: BTreeMap<u64, (usize, usize, usize)> = BTreeMap::new();
    for a in attempts.iter().flatten() {
        let slot = per_second.entry(a.started.as_secs()).or_default();
        slot.0 += 1;
        match a.result {
            Ok(took) => {
                ok += 1;
                slot.1 += 1;
                times.push(took);
            }
            Err(kind) => {
                slot.2 += 1;
                *kinds.entry(kind).or_default() += 1;
                if kind == FailureKind::Overloaded {
                    rejection_times.push(a.ended.saturating_sub(a.started));
                }
            }
        }
    }
    // Clients that never reported (should not happen) count as failures.
    let unreported = attempts.iter().filter(|a| a.is_none()).count();
    let failed = attempted - ok;
    let pct = if attempted == 0 {
        0.0
    } else {
        100.0 * failed as f64 / attempted as f64
    };
    report.line(format!("attempted: {attempted}"));
    report.line(format!("succeeded: {ok}"));
    let mut by_kind: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}={n}")).collect();
    if unreported > 0 {
        by_kind.push(format!("unreported={unreported}"));
    }
    report.line(format!(
        "failed by kind: {}",
        if by_kind.is_empty() {
            "none".to_string()
        } else {
            by_kind.join(" ")
        }
    ));
    report.line(format!("failed: {pct:.1} %"));
    report.line(format!("time to open: {}", percentiles(times)));
    if !rejection_times.is_empty() {
        report.line(format!("time to 503: {}", percentiles(rejection_times)));
    }
    let timeouts: usize = kinds
        .iter()
        .filter(|(k, _)| k.is_timeout())
        .map(|(_, n)| n)
        .sum();
    report.figure("attempted", attempted as f64);
    report.figure("succeeded", ok as f64);
    report.figure("failed_percent", pct);
    report.figure("timeouts", timeouts as f64);
    report.figure(
        "rejected_503",
        kinds.get(&FailureKind::Overloaded).copied().unwrap_or(0) as f64,
    );
    if timeline {
        report.line("timeline (by second of arrival: started ok failed):");
        for (sec, (started, ok, failed)) in per_second {
            report.line(format!("  {sec:>5}s {started:>6} {ok:>6} {failed:>6}"));
        }
    }
}

/// Finishes a report from the driver: kernel counters, checks, trace.
pub fn finish(report: &mut Report, driver: &Driver<'_>, result: Result<(), String>) {
    if let Err(e) = result {
        report.error = Some(e);
    }
    // Both lines are measured on surge's gateway; a run without one (the
    // seed's fixture in slot_race) reports its own figures instead.
    if let Some(running) = driver.slot.get() {
        let s = running.net.stats();
        report.line(format!(
            "kernel: syns={} syns_dropped={} acks_dropped={} half_open_recovered={} half_open_expired={} accepted={} accept_queue_peak={}",
            s.syns,
            s.syns_dropped,
            s.acks_dropped,
            s.half_open_recovered,
            s.half_open_expired,
            s.accepted,
            s.accept_queue_peak
        ));
        report.line(format!(
            "gateway: peak slots in use {}, peak live {}",
            driver.peak_used, driver.peak_live
        ));
    }
    report.checks = driver.checks;
    report.simulated = driver.now();
    report.violations = driver.run.violations.borrow().clone();
    let trace = driver.run.trace.borrow();
    report.trace_hash = trace.hash();
    report.trace_events = trace.events();
}

/// The flags every surge scenario shares.
pub fn common_flags(report: &mut Report, p: &Params) {
    report.flag("clients", p.clients);
    report.flag("rate", p.rate);
    report.flag("backlog", p.backlog);
    report.flag("service-time", p.service_time);
    report.flag("service-per-conn", p.service_per_conn);
    report.flag("timeout", p.timeout);
    report.flag("handshake-timeout", p.handshake_timeout);
    report.flag("capacity", p.capacity);
    report.flag("shards", p.shards);
    report.flag("hosts", p.hosts);
    report.flag("latency", p.latency);
    report.flag("jitter", p.jitter);
    report.flag("loss", p.loss);
}

/// A surge run: clients arrive as a Poisson process, each opens a
/// WebSocket within `timeout` and holds it until every deadline has
/// passed, then closes; the gateway must end with no slot held.
pub struct Surge<'a> {
    pub attempts: Vec<Option<Attempt>>,
    pub driver: Driver<'a>,
    pub result: Result<(), String>,
}

pub fn connect_and_hold<'a>(
    p: &Params,
    run: Rc<RunState>,
    spec: GatewaySpec,
    timeout: Duration,
    check_every: Duration,
) -> Surge<'a> {
    let arrivals = Rc::new(poisson_arrivals(p.seed, p.clients, p.rate));
    let last = arrivals.last().copied().unwrap_or_default();
    let release_at = last + timeout + Duration::from_secs(1);
    let mut sim = build_sim(
        p,
        release_at + Duration::from_secs(120),
        p.clients as usize + 64,
    );
    let slot = GatewaySlot::default();
    install_gateway(&mut sim, spec.clone(), slot.clone(), Rc::clone(&run), None);
    let outcomes = attempts(p.clients);
    let kernel = spec.kernel.clone();
    let task = {
        let run = Rc::clone(&run);
        let outcomes = Rc::clone(&outcomes);
        Rc::new(move |i: u64| -> ClientTask {
            let run = Rc::clone(&run);
            let outcomes = Rc::clone(&outcomes);
            let kernel = kernel.clone();
            let start = arrivals[i as usize];
            Box::pin(async move {
                match attempt_at(&kernel, i, start, timeout, &outcomes).await {
                    Ok((mut ws, took)) => {
                        run.event(&format!("open {i} {}", took.as_micros()));
                        let conn_id = read_welcome(&mut ws, Duration::from_secs(5)).await;
                        if let Some(id) = &conn_id {
                            run.conn_opened(id, i);
                        }
                        hold_then_close(ws, conn_id, release_at, &run).await;
                    }
                    Err(f) => {
                        run.event(&format!("fail {i} {} {:?}", f.kind, f.retry_after));
                    }
                }
            })
        }) as Rc<dyn Fn(u64) -> ClientTask>
    };
    install_clients(&mut sim, p.hosts, p.clients, task);
    let mut driver = Driver::new(sim, Rc::clone(&run), slot, spec);
    driver.check_every = check_every;
    let mut result = driver.run_clients(|_, _| {});
    if result.is_ok() {
        match driver.drain(drain_limit(p, &driver.spec)) {
            Ok(0) => {}
            Ok(n) => run.violation(format!(
                "{n} slots still held after every client closed: leaked"
            )),
            Err(e) => result = Err(e),
        }
    }
    let attempts = outcomes.borrow().clone();
    Surge {
        attempts,
        driver,
        result,
    }
}

/// How long the gateway may take to notice that every client left: a few
/// seconds, or on lossy links (turmoil never retransmits, so a lost FIN
/// stays lost) until the idle timeout has closed what nobody answers.
pub fn drain_limit(p: &Params, spec: &GatewaySpec) -> Duration {
    if p.loss > 0.0 {
        spec.config.session.idle_timeout
            + spec.config.session.ping_interval
            + Duration::from_secs(10)
    } else {
        Duration::from_secs(10)
    }
}
