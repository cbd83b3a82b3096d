//! `capacity_ceiling`: more clients than the gateway can hold.
//!
//! surge refuses every client beyond capacity at accept, with a 503 and
//! `Retry-After`, within milliseconds. The seed system had no such limit:
//! it accepted until its memory ran out (8,849 connections on a 7 GB
//! limit) and then stopped answering, so the excess clients timed out and
//! the server reported 0 rejections. Under the seed profile the gateway
//! has no admission cap and its accept path stalls at the ceiling.
//!
//! Invariant (checked for every client): a client that does not get in
//! gets an HTTP answer — 503 with `Retry-After`, within one second of its
//! connect — never a timeout.

use std::rc::Rc;
use std::time::Duration;

use crate::client::FailureKind;
use crate::params::{Params, Profile};
use crate::scenario::name::Scenario;
use crate::scenario::report::Report;
use crate::scenarios::{common_flags, connect_and_hold, finish, summarize};
use crate::world::GatewaySpec;
use crate::world::state::RunState;

/// How long a refusal may take, connect to answer.
const PROMPT: Duration = Duration::from_secs(1);

pub fn run(p: &Params) -> Report {
    let mut report = Report::new(Scenario::CapacityCeiling, p);
    common_flags(&mut report, p);
    let run = Rc::new(RunState::default());
    let mut spec = GatewaySpec::from_params(p);
    if p.profile == Profile::Seed {
        // No admission limit: the process takes connections until its
        // memory is gone, then takes nothing more.
        spec.config.max_connections = p.capacity.saturating_mul(4).max(p.clients + 16);
        spec.accept.stall_at = Some(u64::from(p.capacity));
    }
    let surge = connect_and_hold(
        p,
        Rc::clone(&run),
        spec,
        p.timeout.0,
        Duration::from_millis(250),
    );
    summarize(&mut report, &surge.attempts, false);
    let mut timeouts = 0u64;
    let mut slow = 0u64;
    let mut without_retry_after = 0u64;
    let mut other = 0u64;
    for a in surge.attempts.iter().flatten() {
        match a.result {
            Ok(_) => {}
            Err(kind) if kind.is_timeout() => timeouts += 1,
            Err(FailureKind::Overloaded) => {
                if a.ended.saturating_sub(a.started) > PROMPT {
                    slow += 1;
                }
                if a.retry_after.is_none() {
                    without_retry_after += 1;
                }
            }
            Err(_) => other += 1,
        }
    }
    report.line(format!(
        "refusals: timeouts={timeouts} slower_than_{}s={slow} without_retry_after={without_retry_after} other={other}",
        PROMPT.as_secs()
    ));
    if timeouts > 0 {
        run.violation(format!(
            "{timeouts} clients timed out instead of getting a 503 with Retry-After"
        ));
    }
    if slow > 0 {
        run.violation(format!("{slow} refusals took longer than {PROMPT:?}"));
    }
    if without_retry_after > 0 {
        run.violation(format!(
            "{without_retry_after} 503 answers had no Retry-After"
        ));
    }
    if other > 0 {
        run.violation(format!("{other} clients failed without an HTTP answer"));
    }
    finish(&mut report, &surge.driver, surge.result);
    report
}
