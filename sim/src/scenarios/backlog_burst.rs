//! `backlog_burst`: N clients arrive at R per second against a listen
//! backlog B, an accept loop busy S per connection (growing with the
//! connections held under the seed profile) and a client deadline T.
//!
//! Under the seed profile the accept loop falls behind once it holds a few
//! thousand connections, the 129-entry accept queue overflows, SYNs are
//! dropped and retransmitted 1 s, 3 s, 7 s later, and the clients whose
//! deadline passes first fail — the Go system surge replaces lost 18.5 % of 12,000 at 100/s.
//! Under surge's profile the same arrivals meet a 4096 backlog and an
//! acceptor that only admits and spawns, and nobody waits.

use std::rc::Rc;
use std::time::Duration;

use crate::params::Params;
use crate::scenario::name::Scenario;
use crate::scenario::report::Report;
use crate::scenarios::{common_flags, connect_and_hold, finish, summarize};
use crate::world::GatewaySpec;
use crate::world::state::RunState;

pub fn run(p: &Params) -> Report {
    let mut report = Report::new(Scenario::BacklogBurst, p);
    common_flags(&mut report, p);
    let run = Rc::new(RunState::default());
    // Checked once per simulated second: each check walks every
    // connection, which at 12,000 clients would otherwise cost more than
    // the simulation itself.
    let surge = connect_and_hold(
        p,
        Rc::clone(&run),
        GatewaySpec::from_params(p),
        p.timeout.0,
        Duration::from_secs(1),
    );
    summarize(&mut report, &surge.attempts, true);
    finish(&mut report, &surge.driver, surge.result);
    report
}
