//! `slow_consumers`: every client subscribes to the whole stream; a share
//! of them reads slowly while the publisher sends at a steady rate, one
//! message in `critical_every` critical.
//!
//! The gateway's own session code decides: a slow client's queue fills,
//! its throttle level rises and it gets `throttle_update`; fast clients
//! are never throttled and receive every message; critical messages are
//! never dropped for anyone; no connection's queue exceeds its hard byte
//! bound (checked at the gateway every 100 ms).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use crate::params::Params;
use crate::publisher::{Outbox, Plan, install_publisher};
use crate::scenario::name::Scenario;
use crate::scenario::report::Report;
use crate::scenarios::{common_flags, finish, poisson_arrivals, read_welcome};
use crate::subscriber::{self, Start, SubscriberLog};
use crate::world::hosts::sleep_until_sim;
use crate::world::state::RunState;
use crate::world::{
    ClientTask, Driver, GatewaySlot, GatewaySpec, build_sim, install_clients, install_gateway,
    open_websocket,
};

/// Whether client `i` is one of the slow readers (from the seed).
pub fn is_slow(seed: u64, i: u64, fraction: f64) -> bool {
    let x = crate::client::splitmix64(seed ^ i.wrapping_mul(0xA24B_AED4_963E_E407));
    (x as f64 / u64::MAX as f64) < fraction
}

pub fn run(p: &Params) -> Report {
    let mut report = Report::new(Scenario::SlowConsumers, p);
    common_flags(&mut report, p);
    report.flag("slow-fraction", p.slow_fraction);
    report.flag("slow-read", p.slow_read);
    report.flag("messages", p.messages);
    report.flag("publish-rate", p.publish_rate);
    report.flag("critical-every", p.critical_every);
    let run = Rc::new(RunState::default());
    let arrivals = Rc::new(poisson_arrivals(p.seed, p.clients, p.rate));
    let plan = Plan::after_arrivals(p, &arrivals, 1000);
    let publish_end = plan.due(p.messages);
    // Slow readers need time to drain what is queued for them.
    let linger = Duration::from_secs(10);
    let limit = publish_end + linger + Duration::from_secs(120);
    let mut sim = build_sim(p, limit, p.clients as usize + 64);
    let slot = GatewaySlot::default();
    let mut spec = GatewaySpec::from_params(p);
    spec.ingest = true;
    install_gateway(&mut sim, spec.clone(), slot.clone(), Rc::clone(&run), None);
    let outbox = Rc::new(Outbox::default());
    install_publisher(&mut sim, plan.clone(), Rc::clone(&outbox), Rc::clone(&run));
    let logs: Rc<RefCell<BTreeMap<u64, SubscriberLog>>> = Rc::default();
    let opened: Rc<RefCell<u64>> = Rc::default();
    let kernel = spec.kernel.clone();
    let timeout = p.timeout.0;
    let (seed, fraction, slow_read, total) = (p.seed, p.slow_fraction, p.slow_read.0, p.messages);
    let task = {
        let run = Rc::clone(&run);
        let logs = Rc::clone(&logs);
        let outbox = Rc::clone(&outbox);
        let opened = Rc::clone(&opened);
        Rc::new(move |i: u64| -> ClientTask {
            let run = Rc::clone(&run);
            let logs = Rc::clone(&logs);
            let outbox = Rc::clone(&outbox);
            let opened = Rc::clone(&opened);
            let kernel = kernel.clone();
            let start = arrivals[i as usize];
            let slow = is_slow(seed, i, fraction);
            Box::pin(async move {
                sleep_until_sim(start).await;
                let Ok((mut ws, _)) = open_websocket(&kernel, i, timeout).await else {
                    run.event(&format!("client {i} could not connect"));
                    return;
                };
                *opened.borrow_mut() += 1;
                let conn_id = read_welcome(&mut ws, Duration::from_secs(5)).await;
                if let Some(id) = &conn_id {
                    run.conn_opened(id, i);
                }
                let log = RefCell::new(SubscriberLog::default());
                let stop = |l: &SubscriberLog| {
                    l.received.len() as u32 >= total
                        || outbox
                            .done_at
                            .get()
                            .is_some_and(|d| crate::net::sim_now() > d + linger)
                };
                let end = subscriber::session(
                    &mut ws,
                    i,
                    &Start::Subscribe(vec!["odin.>".into()]),
                    slow.then_some(slow_read),
                    &log,
                    &run,
                    &stop,
                )
                .await;
                drop(ws);
                if let Some(id) = &conn_id {
                    run.conn_closed(id);
                }
                run.event(&format!("client {i} ended {end:?}"));
                logs.borrow_mut().insert(i, log.into_inner());
            })
        }) as Rc<dyn Fn(u64) -> ClientTask>
    };
    install_clients(&mut sim, p.hosts, p.clients, task);
    let mut driver = Driver::new(sim, Rc::clone(&run), slot, spec);
    let mut result = driver.run_clients(|_, _| {});
    if result.is_ok() {
        match driver.drain(Duration::from_secs(10)) {
            Ok(0) => {}
            Ok(n) => run.violation(format!("{n} slots still held after every client left")),
            Err(e) => result = Err(e),
        }
    }
    let logs = logs.borrow();
    let published = outbox.sseqs();
    let criticals = outbox.critical_sseqs();
    report.line(format!(
        "published: {} messages ({} critical), publisher reconnects: {}",
        published.len(),
        criticals.len(),
        outbox.reconnects.get()
    ));
    let (mut fast, mut fast_complete, mut fast_throttled) = (0u64, 0u64, 0u64);
    let (mut slow, mut slow_throttled, mut slow_policy_closed) = (0u64, 0u64, 0u64);
    let mut slow_levels = [0u64; 4];
    let mut slow_share = Vec::new();
    for (&i, log) in logs.iter() {
        let slow_client = is_slow(p.seed, i, p.slow_fraction);
        let missing_critical = criticals
            .iter()
            .filter(|&&c| c < log.last_sseq() && !log.received.contains_key(&c))
            .count();
        if missing_critical > 0 {
            run.violation(format!(
                "client {i}: {missing_critical} critical message(s) dropped"
            ));
        }
        if slow_client {
            slow += 1;
            slow_levels[usize::from(log.max_level.min(3))] += 1;
            if log.max_level > 0 {
                slow_throttled += 1;
            }
            if log.close_codes.contains(&1008) {
                slow_policy_closed += 1;
            }
            slow_share.push(100.0 * log.received.len() as f64 / published.len().max(1) as f64);
        } else {
            fast += 1;
            let complete = published.iter().all(|s| log.received.contains_key(s));
            if complete {
                fast_complete += 1;
            } else {
                run.violation(format!(
                    "fast client {i} received {} of {} messages",
                    log.received.len(),
                    published.len()
                ));
            }
            if log.max_level > 0 {
                fast_throttled += 1;
                run.violation(format!(
                    "fast client {i} was throttled to level {}",
                    log.max_level
                ));
            }
        }
    }
    slow_share.sort_by(f64::total_cmp);
    let median = slow_share.get(slow_share.len() / 2).copied().unwrap_or(0.0);
    report.line(format!("connected: {} of {}", opened.borrow(), p.clients));
    report.line(format!(
        "fast clients: {fast}, received everything: {fast_complete}, throttled: {fast_throttled}"
    ));
    report.line(format!(
        "slow clients: {slow}, throttled: {slow_throttled} (highest level none/light/medium/heavy: {}/{}/{}/{}), received (median): {median:.1} %, closed for being too slow: {slow_policy_closed}",
        slow_levels[0], slow_levels[1], slow_levels[2], slow_levels[3]
    ));
    report.line(format!(
        "queues: peak {} bytes on one connection, bound {}",
        driver.peak_queued,
        driver.spec.config.session.hard_queue_bytes()
    ));
    report.figure("fast", fast as f64);
    report.figure("fast_complete", fast_complete as f64);
    report.figure("fast_throttled", fast_throttled as f64);
    report.figure("slow", slow as f64);
    report.figure("slow_throttled", slow_throttled as f64);
    report.figure("published", published.len() as f64);
    finish(&mut report, &driver, result);
    report
}
