//! The scenario registry: [`Scenario::run`] dispatches to the module in
//! [`crate::scenarios`] that runs it.
//!
//! What the scenarios themselves use sits below them and below this
//! registry, in [`name`] (which scenario: names, descriptions, parsing)
//! and [`report`] (the outcome of a run and how it prints), so a scenario
//! never imports the module that calls it.

pub mod name;
pub mod report;

use crate::params::Params;
use crate::scenario::name::Scenario;
use crate::scenario::report::Report;
use crate::scenarios::{
    backlog_burst, broker_outage, capacity_ceiling, handshake_timeout, multi_gateway,
    reconnect_storm, slot_race, slow_consumers,
};

impl Scenario {
    /// Runs the scenario.
    pub fn run(self, p: &Params) -> Report {
        let started = std::time::Instant::now();
        let mut report = match self {
            Scenario::BacklogBurst => backlog_burst::run(p),
            Scenario::SlotRace => slot_race::run(p),
            Scenario::HandshakeTimeout => handshake_timeout::run(p),
            Scenario::CapacityCeiling => capacity_ceiling::run(p),
            Scenario::SlowConsumers => slow_consumers::run(p),
            Scenario::BrokerOutage => broker_outage::run(p),
            Scenario::ReconnectStorm => reconnect_storm::run(p),
            Scenario::MultiGateway => multi_gateway::run(p),
        };
        report.wall = started.elapsed();
        report
    }
}
