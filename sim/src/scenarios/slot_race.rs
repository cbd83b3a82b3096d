//! `slot_race`: more clients than slots arrive fast over links with tens
//! of milliseconds of latency, so hundreds of upgrades are in flight at
//! once. Under the seed profile the gateway admits through
//! [`CheckThenAcquireFixture`] (check a free slot, await the upgrade, take
//! the slot): concurrent upgrades see the same free slot and the shards
//! over-admit, as in the Go system surge replaces. Under surge's profile the real gateway
//! reserves the slot atomically at accept: every connection beyond
//! capacity gets a 503, no shard ever holds more than its capacity, and
//! no slot is left when the clients are gone.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::fixture::{self, CheckThenAcquireFixture};
use crate::net::SimTransport;
use crate::params::{Params, Profile};
use crate::scenario::name::Scenario;
use crate::scenario::report::Report;
use crate::scenarios::{
    attempt_at, attempts, common_flags, finish, hold_then_close, poisson_arrivals, read_welcome,
    summarize,
};
use crate::world::hosts::{GATEWAY, WS_PORT};
use crate::world::state::RunState;
use crate::world::{
    ClientTask, Driver, GatewaySlot, GatewaySpec, build_sim, install_clients, install_gateway,
};

pub fn run(p: &Params) -> Report {
    let mut report = Report::new(Scenario::SlotRace, p);
    common_flags(&mut report, p);
    let use_fixture = p.profile == Profile::Seed;
    let arrivals = Rc::new(poisson_arrivals(p.seed, p.clients, p.rate));
    let last = arrivals.last().copied().unwrap_or_default();
    let release_at = last + p.timeout.0 + Duration::from_secs(1);
    let mut sim = build_sim(
        p,
        release_at + Duration::from_secs(120),
        p.clients as usize + 64,
    );
    let run = Rc::new(RunState::default());
    let slot = GatewaySlot::default();
    let mut spec = GatewaySpec::from_params(p);
    // The upgrade time is the fixture's proxy hop, not a gateway worker.
    spec.upgrade = None;
    let fixture = Rc::new(RefCell::new(CheckThenAcquireFixture::new(
        p.capacity, p.shards,
    )));
    let proxy_hop = p.upgrade_time.0;
    report.flag("upgrade-time", p.upgrade_time);
    if use_fixture {
        let spec = spec.clone();
        let fixture = Rc::clone(&fixture);
        sim.host(GATEWAY, move || {
            let transport = SimTransport::new(spec.kernel.clone(), spec.accept.clone(), None);
            let fixture = Rc::clone(&fixture);
            let handshake = Arc::new(spec.config.handshake.clone());
            let backlog = spec.config.backlog;
            let hop = proxy_hop;
            async move {
                fixture::serve(
                    transport,
                    ([0, 0, 0, 0], WS_PORT).into(),
                    backlog,
                    fixture,
                    handshake,
                    hop,
                )
                .await?;
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    } else {
        install_gateway(&mut sim, spec.clone(), slot.clone(), Rc::clone(&run), None);
    }
    let outcomes = attempts(p.clients);
    let kernel = spec.kernel.clone();
    let timeout = p.timeout.0;
    let task = {
        let run = Rc::clone(&run);
        let outcomes = Rc::clone(&outcomes);
        let arrivals = Rc::clone(&arrivals);
        Rc::new(move |i: u64| -> ClientTask {
            let run = Rc::clone(&run);
            let outcomes = Rc::clone(&outcomes);
            let kernel = kernel.clone();
            let start = arrivals[i as usize];
            Box::pin(async move {
                match attempt_at(&kernel, i, start, timeout, &outcomes).await {
                    Ok((mut ws, _)) => {
                        run.event(&format!("open {i}"));
                        let conn_id = if use_fixture {
                            None
                        } else {
                            read_welcome(&mut ws, Duration::from_secs(5)).await
                        };
                        if let Some(id) = &conn_id {
                            run.conn_opened(id, i);
                        }
                        hold_then_close(ws, conn_id, release_at, &run).await;
                    }
                    Err(f) => run.event(&format!("fail {i} {}", f.kind)),
                }
            })
        }) as Rc<dyn Fn(u64) -> ClientTask>
    };
    install_clients(&mut sim, p.hosts, p.clients, task);
    let mut driver = Driver::new(sim, Rc::clone(&run), slot.clone(), spec);
    let mut reported_over = 0u32;
    let mut result = {
        let fixture = Rc::clone(&fixture);
        let run = Rc::clone(&run);
        driver.run_clients(move |_, _| {
            // The fixture has no slot table to inspect from outside; its
            // own counters are checked every tick instead.
            let over = fixture.borrow().over_admitted();
            if over > reported_over {
                if reported_over == 0 {
                    run.violation(
                        "check-then-acquire admitted a connection beyond its shard's capacity"
                            .to_string(),
                    );
                }
                reported_over = over;
            }
        })
    };
    let mut leaked = 0u64;
    if result.is_ok() {
        let fixture = Rc::clone(&fixture);
        let held = move |d: &Driver<'_>| {
            if use_fixture {
                u64::from(fixture.borrow().live())
            } else {
                d.slots_used()
            }
        };
        match driver.drain_until(Duration::from_secs(10), held) {
            Ok(n) => leaked = n,
            Err(e) => result = Err(e),
        }
        if leaked > 0 {
            run.violation(format!("{leaked} slots still held after every client left"));
        }
    }
    summarize(&mut report, &outcomes.borrow(), false);
    let succeeded = report.get("succeeded").unwrap_or(0.0) as u64;
    let over = if use_fixture {
        u64::from(fixture.borrow().over_admitted())
    } else {
        // Every client that got in held its connection until the end, so
        // the successes were all live at once.
        succeeded.saturating_sub(u64::from(p.capacity))
    };
    let admission = if use_fixture {
        "check-then-acquire (CheckThenAcquireFixture, the seed's)"
    } else {
        "surge (reserve at accept, atomically)"
    };
    report.line(format!("admission: {admission}"));
    report.line(format!("capacity: {}", p.capacity));
    if use_fixture {
        let per_shard: Vec<String> = fixture
            .borrow()
            .shards()
            .iter()
            .enumerate()
            .map(|(i, s)| format!("shard{i}={}/{}", s.peak, s.capacity))
            .collect();
        report.line(format!("peak per shard: {}", per_shard.join(" ")));
    }
    // The fixture has no slot table for the driver to sample: its own count,
    // taken at every acquire, is the peak.
    let peak = if use_fixture {
        let peak = fixture.borrow().peak_live();
        report.line(format!("fixture: peak slots in use {peak} (all shards)"));
        u64::from(peak)
    } else {
        driver.peak_used
    };
    report.figure("peak_slots", peak as f64);
    report.line(format!("over-admitted: {over}"));
    report.line(format!("leaked slots at end: {leaked}"));
    report.figure("over_admitted", over as f64);
    report.figure("leaked", leaked as f64);
    finish(&mut report, &driver, result);
    report
}
