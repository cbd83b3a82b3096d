//! `broker_outage`: every client subscribes to the whole stream, then the
//! publisher is cut off from the gateway (`--outage partition`) or its
//! host crashes and restarts (`--outage crash`) for `fault_for`, starting
//! `fault_at` after publishing began.
//!
//! Clients stay connected throughout (the outage is between publisher and
//! gateway). A share of them also disconnects during the outage and comes
//! back two seconds after it ends with `resume` since the last stream
//! sequence it saw, missing the catch-up burst live. At the end every
//! client must hold every published message exactly once — live or
//! recovered — with `seq` going up by one on each connection.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use crate::params::{OutageMode, Params};
use crate::publisher::{Outbox, Plan, install_publisher};
use crate::scenario::name::Scenario;
use crate::scenario::report::Report;
use crate::scenarios::{common_flags, finish, poisson_arrivals, read_welcome};
use crate::subscriber::{self, SessionEnd, Start, SubscriberLog};
use crate::world::hosts::{GATEWAY, PUBLISHER, sleep_until_sim};
use crate::world::state::RunState;
use crate::world::{
    ClientTask, Driver, GatewaySlot, GatewaySpec, build_sim, install_clients, install_gateway,
    open_websocket,
};

/// Whether a client left and resumed, what it saw, how its sessions ended.
type ClientRecord = (bool, SubscriberLog, Vec<SessionEnd>);

/// Whether client `i` leaves during the outage and resumes (from the seed).
fn resumes(seed: u64, i: u64, fraction: f64) -> bool {
    let x = crate::client::splitmix64(seed.rotate_left(17) ^ i.wrapping_mul(0x9FB2_1C65_1E98_DF25));
    (x as f64 / u64::MAX as f64) < fraction
}

pub fn run(p: &Params) -> Report {
    let mut report = Report::new(Scenario::BrokerOutage, p);
    common_flags(&mut report, p);
    report.flag("messages", p.messages);
    report.flag("publish-rate", p.publish_rate);
    report.flag("critical-every", p.critical_every);
    report.flag("outage", p.outage.as_str());
    report.flag("fault-at", p.fault_at);
    report.flag("fault-for", p.fault_for);
    report.flag("resume-fraction", p.resume_fraction);
    let run = Rc::new(RunState::default());
    let arrivals = Rc::new(poisson_arrivals(p.seed, p.clients, p.rate));
    let plan = Plan::after_arrivals(p, &arrivals, 100);
    let outage_start = plan.start_at + p.fault_at.0;
    let outage_end = outage_start + p.fault_for.0;
    let leave_at = outage_start + p.fault_for.0 / 2;
    let back_at = outage_end + Duration::from_secs(2);
    let linger = Duration::from_secs(5);
    let limit = plan.due(p.messages) + p.fault_for.0 + linger + Duration::from_secs(120);
    let mut sim = build_sim(p, limit, p.clients as usize + 64);
    let slot = GatewaySlot::default();
    let mut spec = GatewaySpec::from_params(p);
    spec.ingest = true;
    install_gateway(&mut sim, spec.clone(), slot.clone(), Rc::clone(&run), None);
    let outbox = Rc::new(Outbox::default());
    install_publisher(&mut sim, plan.clone(), Rc::clone(&outbox), Rc::clone(&run));
    let logs: Rc<RefCell<BTreeMap<u64, ClientRecord>>> = Rc::default();
    let kernel = spec.kernel.clone();
    let timeout = p.timeout.0;
    let (seed, fraction, total) = (p.seed, p.resume_fraction, p.messages);
    let task = {
        let run = Rc::clone(&run);
        let logs = Rc::clone(&logs);
        let outbox = Rc::clone(&outbox);
        Rc::new(move |i: u64| -> ClientTask {
            let run = Rc::clone(&run);
            let logs = Rc::clone(&logs);
            let outbox = Rc::clone(&outbox);
            let kernel = kernel.clone();
            let start = arrivals[i as usize];
            let leaves = resumes(seed, i, fraction);
            Box::pin(async move {
                sleep_until_sim(start).await;
                let log = RefCell::new(SubscriberLog::default());
                let mut ends = Vec::new();
                let everything = |l: &SubscriberLog| {
                    l.received.len() as u32 >= total
                        || outbox
                            .done_at
                            .get()
                            .is_some_and(|d| crate::net::sim_now() > d + linger)
                };
                let channels = vec!["odin.>".to_string()];
                let mut next = Start::Subscribe(channels.clone());
                for round in 0..2 {
                    if round == 1 {
                        if !leaves {
                            break;
                        }
                        sleep_until_sim(back_at).await;
                        next = Start::Resume {
                            channels: channels.clone(),
                            since_sseq: log.borrow().last_sseq(),
                            epoch: None,
                        };
                    }
                    let Ok((mut ws, _)) = open_websocket(&kernel, i, timeout).await else {
                        run.violation(format!("client {i} could not connect (round {round})"));
                        break;
                    };
                    let conn_id = read_welcome(&mut ws, Duration::from_secs(5)).await;
                    if let Some(id) = &conn_id {
                        run.conn_opened(id, i);
                    }
                    let leave = |l: &SubscriberLog| {
                        // A resumed session is complete once `resumed` came.
                        let settled = round == 0 || l.resumed > 0;
                        (everything(l) && settled)
                            || (leaves && round == 0 && crate::net::sim_now() >= leave_at)
                            || outbox
                                .done_at
                                .get()
                                .is_some_and(|d| crate::net::sim_now() > d + linger)
                    };
                    let end =
                        subscriber::session(&mut ws, i, &next, None, &log, &run, &leave).await;
                    drop(ws);
                    if let Some(id) = &conn_id {
                        run.conn_closed(id);
                    }
                    ends.push(end);
                    if end != SessionEnd::Stopped {
                        run.violation(format!("client {i}: connection lost ({end:?})"));
                        break;
                    }
                }
                logs.borrow_mut()
                    .insert(i, (leaves, log.into_inner(), ends));
            })
        }) as Rc<dyn Fn(u64) -> ClientTask>
    };
    install_clients(&mut sim, p.hosts, p.clients, task);
    let mut driver = Driver::new(sim, Rc::clone(&run), slot, spec);
    let mode = p.outage;
    let (mut started, mut ended) = (false, false);
    let mut result = driver.run_clients(|sim, now| {
        if !started && now >= outage_start {
            started = true;
            match mode {
                OutageMode::Partition => sim.partition(PUBLISHER, GATEWAY),
                OutageMode::Crash => sim.crash(PUBLISHER),
            }
        }
        if !ended && now >= outage_end {
            ended = true;
            match mode {
                OutageMode::Partition => sim.repair(PUBLISHER, GATEWAY),
                OutageMode::Crash => sim.bounce(PUBLISHER),
            }
        }
    });
    if result.is_ok() {
        match driver.drain(Duration::from_secs(10)) {
            Ok(0) => {}
            Ok(n) => run.violation(format!("{n} slots still held after every client left")),
            Err(e) => result = Err(e),
        }
    }
    let published = outbox.sseqs();
    let logs = logs.borrow();
    let (mut stayed, mut stayed_complete, mut resumed, mut resumed_complete) = (0, 0, 0, 0);
    let mut recovered = 0u64;
    for (&i, (leaves, log, _ends)) in logs.iter() {
        let missing = published
            .iter()
            .filter(|s| !log.received.contains_key(s))
            .count();
        let complete = missing == 0 && log.duplicates == 0;
        if *leaves {
            resumed += 1;
            recovered += u64::from(log.recovered);
            if log.resumed == 0 {
                run.violation(format!("client {i}: resume never completed"));
            }
            if complete {
                resumed_complete += 1;
            }
        } else {
            stayed += 1;
            if complete {
                stayed_complete += 1;
            }
        }
        if missing > 0 {
            run.violation(format!(
                "client {i}: {missing} of {} messages never arrived",
                published.len()
            ));
        }
    }
    report.line(format!(
        "published: {} of {} messages, publisher reconnects: {}",
        published.len(),
        p.messages,
        outbox.reconnects.get()
    ));
    report.line(format!(
        "outage: {} from {:.1}s to {:.1}s",
        p.outage.as_str(),
        outage_start.as_secs_f64(),
        outage_end.as_secs_f64()
    ));
    report.line(format!(
        "stayed connected: {stayed}, every message exactly once: {stayed_complete}"
    ));
    report.line(format!(
        "left and resumed: {resumed}, every message exactly once: {resumed_complete}, recovered through resume: {recovered}"
    ));
    report.figure("published", published.len() as f64);
    report.figure("stayed", f64::from(stayed));
    report.figure("stayed_complete", f64::from(stayed_complete));
    report.figure("resumed", f64::from(resumed));
    report.figure("resumed_complete", f64::from(resumed_complete));
    report.figure("recovered", recovered as f64);
    finish(&mut report, &driver, result);
    report
}
