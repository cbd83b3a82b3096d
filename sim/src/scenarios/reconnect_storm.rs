//! `reconnect_storm`: N clients are connected when the gateway host
//! crashes at `fault_at`; it restarts `fault_for` later (turmoil crash,
//! then bounce: a fresh process, slot tables and all). Every client
//! reconnects with jittered exponential backoff (full jitter: a delay drawn
//! between 0 and a ceiling doubling from `backoff` up to `backoff_cap`;
//! see `client::reconnect_delay`).
//!
//! Checked: every client is back within `recover_within` of the restart;
//! the restarted gateway's slot accounting holds at every check; no slot
//! is left once the clients leave.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use rand::Rng;

use crate::params::Params;
use crate::scenario::name::Scenario;
use crate::scenario::report::{Report, percentiles};
use crate::scenarios::{common_flags, finish, poisson_arrivals, read_welcome, rng};
use crate::world::hosts::{GATEWAY, sleep_until_sim};
use crate::world::state::RunState;
use crate::world::{
    ClientTask, Driver, GatewaySlot, GatewaySpec, build_sim, install_clients, install_gateway,
    open_websocket,
};

/// What one client went through.
#[derive(Debug, Clone, Copy, Default)]
struct Journey {
    /// Connected to the gateway before it crashed.
    before_crash: bool,
    /// When it was first connected to the restarted gateway.
    back_at: Option<Duration>,
    attempts: u32,
}

pub fn run(p: &Params) -> Report {
    let mut report = Report::new(Scenario::ReconnectStorm, p);
    common_flags(&mut report, p);
    report.flag("fault-at", p.fault_at);
    report.flag("fault-for", p.fault_for);
    report.flag("backoff", p.backoff);
    report.flag("backoff-cap", p.backoff_cap);
    report.flag("recover-within", p.recover_within);
    let run = Rc::new(RunState::default());
    let arrivals = Rc::new(poisson_arrivals(p.seed, p.clients, p.rate));
    let crash_at = p
        .fault_at
        .0
        .max(arrivals.last().copied().unwrap_or_default() + p.timeout.0);
    let restart_at = crash_at + p.fault_for.0;
    let deadline = restart_at + p.recover_within.0;
    // Everyone holds on until the recovery bound has passed.
    let release_at = deadline + Duration::from_secs(1);
    let mut sim = build_sim(
        p,
        release_at + Duration::from_secs(120),
        p.clients as usize + 64,
    );
    let slot = GatewaySlot::default();
    let spec = GatewaySpec::from_params(p);
    install_gateway(&mut sim, spec.clone(), slot.clone(), Rc::clone(&run), None);
    let journeys: Rc<RefCell<Vec<Journey>>> =
        Rc::new(RefCell::new(vec![Journey::default(); p.clients as usize]));
    let kernel = spec.kernel.clone();
    let (timeout, base, cap, seed) = (p.timeout.0, p.backoff.0, p.backoff_cap.0, p.seed);
    let task = {
        let run = Rc::clone(&run);
        let journeys = Rc::clone(&journeys);
        Rc::new(move |i: u64| -> ClientTask {
            let run = Rc::clone(&run);
            let journeys = Rc::clone(&journeys);
            let kernel = kernel.clone();
            let start = arrivals[i as usize];
            Box::pin(async move {
                sleep_until_sim(start).await;
                let mut jitter = rng(seed, 1_000_000 + i);
                let mut attempt = 0u32;
                loop {
                    let now = crate::net::sim_now();
                    if now >= release_at {
                        break;
                    }
                    journeys.borrow_mut()[i as usize].attempts += 1;
                    match open_websocket(&kernel, i, timeout).await {
                        Ok((mut ws, _)) => {
                            attempt = 0;
                            let conn_id = read_welcome(&mut ws, Duration::from_secs(5)).await;
                            let at = crate::net::sim_now();
                            if let Some(id) = &conn_id {
                                run.conn_opened(id, i);
                            }
                            {
                                let mut j = journeys.borrow_mut();
                                let j = &mut j[i as usize];
                                if at < crash_at {
                                    j.before_crash = true;
                                } else if j.back_at.is_none() && at >= restart_at {
                                    j.back_at = Some(at);
                                    run.event(&format!("client {i} back"));
                                }
                            }
                            // Hold until released or the connection drops.
                            crate::scenarios::hold_then_close(ws, conn_id, release_at, &run).await;
                            if crate::net::sim_now() >= release_at {
                                break;
                            }
                            run.event(&format!("client {i} lost its connection"));
                        }
                        Err(f) => {
                            run.event(&format!("client {i} attempt failed {}", f.kind));
                        }
                    }
                    let delay =
                        crate::client::reconnect_delay(base, cap, attempt, jitter.random::<f64>());
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
            })
        }) as Rc<dyn Fn(u64) -> ClientTask>
    };
    install_clients(&mut sim, p.hosts, p.clients, task);
    let mut driver = Driver::new(sim, Rc::clone(&run), slot.clone(), spec);
    let (mut crashed, mut restarted) = (false, false);
    let crash_slot = slot.clone();
    let crash_run = Rc::clone(&run);
    let mut result = driver.run_clients(|sim, now| {
        if !crashed && now >= crash_at {
            crashed = true;
            crash_run.event("gateway crash");
            sim.crash(GATEWAY);
            // The crashed process's tables are gone with it.
            crash_slot.clear();
        }
        if !restarted && now >= restart_at {
            restarted = true;
            crash_run.event("gateway restart");
            sim.bounce(GATEWAY);
        }
    });
    if result.is_ok() {
        match driver.drain(Duration::from_secs(10)) {
            Ok(0) => {}
            Ok(n) => run.violation(format!("{n} slots still held after every client left")),
            Err(e) => result = Err(e),
        }
    }
    let journeys = journeys.borrow();
    let connected = journeys.iter().filter(|j| j.before_crash).count();
    let mut back_times = Vec::new();
    let mut not_back = 0u64;
    for (i, j) in journeys.iter().enumerate() {
        match j.back_at {
            Some(at) => back_times.push(at.saturating_sub(restart_at)),
            None => {
                not_back += 1;
                if not_back <= 5 {
                    run.violation(format!(
                        "client {i} was not back within {}s of the restart",
                        p.recover_within.0.as_secs_f64()
                    ));
                }
            }
        }
    }
    if not_back > 5 {
        run.violation(format!("… {not_back} clients in all were not back in time"));
    }
    let late = back_times
        .iter()
        .filter(|t| **t > p.recover_within.0)
        .count();
    if late > 0 {
        run.violation(format!("{late} clients came back after the bound"));
    }
    let attempts: u64 = journeys.iter().map(|j| u64::from(j.attempts)).sum();
    report.line(format!(
        "connected before the crash: {connected} of {}",
        p.clients
    ));
    report.line(format!(
        "gateway: crashed at {:.3}s, restarted at {:.3}s",
        crash_at.as_secs_f64(),
        restart_at.as_secs_f64()
    ));
    report.line(format!(
        "back after the restart: {} (not back: {not_back}), time to be back: {}",
        back_times.len(),
        percentiles(back_times.clone())
    ));
    report.line(format!("connection attempts in all: {attempts}"));
    let worst = back_times.iter().max().copied().unwrap_or_default();
    report.figure("connected", connected as f64);
    report.figure("back", back_times.len() as f64);
    report.figure("not_back", not_back as f64);
    report.figure("worst_back_s", worst.as_secs_f64());
    finish(&mut report, &driver, result);
    report
}
