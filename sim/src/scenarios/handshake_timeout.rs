//! `handshake_timeout`: the same arrivals, once with the client deadline T
//! and once with 2·T, against an upgrade path that slows as connections
//! pile up (the Go system surge replaces: handshakes starved by two goroutines per connection
//! spawned in bursts).
//!
//! Each upgrade's answer waits for a shared upgrade worker whose work per
//! handshake grows with the connections held. Under the seed profile the
//! worker falls behind near the end of a 7,000-client ramp: the last
//! clients wait between 5 and 10 seconds for their 101, so a 5 s deadline
//! fails a few percent and a 10 s deadline none (the Go system surge replaces: 97.1 % vs
//! 100 %). surge's upgrade is a fixed, small amount of work.
//!
//! Only the upgrade path is under test, so in both profiles the accept
//! path is fast (50 µs, not the seed's slowing one): the seed's backlog of
//! 128 never fills. The gateway's own handshake timeout is raised above
//! the longest client deadline, so only the client's deadline can fail;
//! the report prints the raised value, the one the run used.

use std::rc::Rc;
use std::time::Duration;

use crate::params::{Dur, Params};
use crate::scenario::name::Scenario;
use crate::scenario::report::Report;
use crate::scenarios::{common_flags, connect_and_hold, finish, summarize};
use crate::world::GatewaySpec;
use crate::world::state::RunState;

pub fn run(p: &Params) -> Report {
    let short = p.timeout.0;
    let long = short * 2;
    let mut p = p.clone();
    // The gateway's own handshake deadline must not be what fails.
    p.handshake_timeout = Dur(p.handshake_timeout.0.max(long * 2));
    let p = &p;
    let mut report = Report::new(Scenario::HandshakeTimeout, p);
    common_flags(&mut report, p);
    report.flag("upgrade-time", p.upgrade_time);
    report.flag("upgrade-per-conn", p.upgrade_per_conn);
    let run = Rc::new(RunState::default());
    let mut rates = Vec::new();
    let mut last = None;
    for timeout in [short, long] {
        let spec = GatewaySpec::from_params(p);
        let surge = connect_and_hold(p, Rc::clone(&run), spec, timeout, Duration::from_secs(1));
        let mut part = Report::new(Scenario::HandshakeTimeout, p);
        summarize(&mut part, &surge.attempts, false);
        let ok = part.get("succeeded").unwrap_or(0.0);
        let attempted = part.get("attempted").unwrap_or(0.0).max(1.0);
        let rate = 100.0 * ok / attempted;
        report.line(format!(
            "with a {}s client deadline:",
            timeout.as_secs_f64()
        ));
        for line in part.lines {
            report.line(format!("  {line}"));
        }
        report.line(format!("  success: {rate:.1} %"));
        rates.push(rate);
        last = Some(surge);
    }
    report.figure("success_short", rates[0]);
    report.figure("success_long", rates[1]);
    report.line(format!(
        "success by client deadline: {}s {:.1} % | {}s {:.1} %",
        short.as_secs_f64(),
        rates[0],
        long.as_secs_f64(),
        rates[1]
    ));
    if let Some(surge) = last {
        finish(&mut report, &surge.driver, surge.result);
    }
    report
}
