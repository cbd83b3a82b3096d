//! `surge plan`: how many gateways a target needs, from measured costs.
//!
//! Two resources decide it: memory per connection and CPU per delivery.
//! Both figures are measurements of this code (see the constants); the
//! plan says which one binds and keeps one node spare, so losing a node
//! (a crash, a rolling restart) leaves enough room for its clients to
//! resume on the others.

use clap::{Arg, ArgMatches, Command};

use crate::host::{BYTES_PER_CONNECTION_ESTIMATE, FD_RESERVE, format_bytes};

/// Surge's CPU per delivered message, in nanoseconds: 6.5 µs, measured by
/// `bench/run` (bench/results/2026-11-22.md, 2,000 subscribers, 100-byte
/// messages, surge CPU seconds over deliveries, connecting and subscribing
/// included). The 10,000-subscriber run measured 3.9 µs; the plan uses the
/// higher figure.
const NANOS_PER_DELIVERY: u64 = 6_500;

/// Share of a node's cores the plan fills: below the resource guard's
/// default refusal threshold (75 %), so a planned fleet does not refuse
/// clients at its nominal load.
const CPU_BUDGET_PERCENT: u64 = 60;

/// Share of a node's memory for connections, as surge derives its own
/// maximum.
const MEMORY_BUDGET_PERCENT: u64 = 80;

/// What `surge plan` is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub connections: u64,
    pub publishes_per_sec: u64,
    /// Connections that receive each published message, on average.
    pub fanout: u64,
    pub node_memory_bytes: u64,
    pub node_cores: u64,
    pub node_open_files: u64,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub deliveries_per_sec: u64,
    pub connections_per_node: u64,
    pub deliveries_per_node: u64,
    pub nodes_for_connections: u64,
    pub nodes_for_deliveries: u64,
    /// Nodes to run: what the larger need asks, plus one spare, at least 2.
    pub nodes: u64,
    /// Messages per second the broker sends out: every gateway consumes
    /// the whole stream.
    pub broker_egress_per_sec: u64,
}

pub fn plan(t: &Target) -> Plan {
    let deliveries_per_sec = t.publishes_per_sec.saturating_mul(t.fanout);
    let by_memory = u128::from(t.node_memory_bytes) * u128::from(MEMORY_BUDGET_PERCENT)
        / 100
        / u128::from(BYTES_PER_CONNECTION_ESTIMATE);
    let by_files = t.node_open_files.saturating_sub(FD_RESERVE);
    let connections_per_node = u64::try_from(by_memory).unwrap_or(u64::MAX).min(by_files);
    let deliveries_per_node = t.node_cores * CPU_BUDGET_PERCENT * 10_000_000 / NANOS_PER_DELIVERY;
    let need = |total: u64, per_node: u64| total.div_ceil(per_node.max(1));
    let nodes_for_connections = need(t.connections, connections_per_node);
    let nodes_for_deliveries = need(deliveries_per_sec, deliveries_per_node);
    let nodes = (nodes_for_connections.max(nodes_for_deliveries) + 1).max(2);
    Plan {
        deliveries_per_sec,
        connections_per_node,
        deliveries_per_node,
        nodes_for_connections,
        nodes_for_deliveries,
        nodes,
        broker_egress_per_sec: t.publishes_per_sec.saturating_mul(nodes),
    }
}

/// The plan as the command prints it.
pub fn report(t: &Target, p: &Plan) -> String {
    let spread = |total: u64| total.div_ceil(p.nodes - 1);
    format!(
        "target: {} connections, {} publishes/s x fan-out {} = {} deliveries/s\n\
         one node ({}, {} cores, {} open files): {} connections (the smaller of {} % of memory at {} each and the open files less {FD_RESERVE}), {} deliveries/s ({} % of its cores at {:.1} us each)\n\
         needed: {} node(s) for the connections, {} for the deliveries\n\
         plan: {} gateways ({} plus one spare); with one down, each of the others holds up to {} connections and sends up to {} deliveries/s\n\
         broker: each gateway consumes the whole stream: {} msgs/s into the stream, {} msgs/s out to the gateways\n\
         figures: {} per connection (server/src/host.rs), {:.1} us of CPU per delivery (bench/results/2026-11-22.md); re-measure on your hardware with bench/run\n",
        t.connections,
        t.publishes_per_sec,
        t.fanout,
        p.deliveries_per_sec,
        format_bytes(t.node_memory_bytes),
        t.node_cores,
        t.node_open_files,
        p.connections_per_node,
        MEMORY_BUDGET_PERCENT,
        format_bytes(BYTES_PER_CONNECTION_ESTIMATE),
        p.deliveries_per_node,
        CPU_BUDGET_PERCENT,
        NANOS_PER_DELIVERY as f64 / 1000.0,
        p.nodes_for_connections,
        p.nodes_for_deliveries,
        p.nodes,
        p.nodes - 1,
        spread(t.connections),
        spread(p.deliveries_per_sec),
        t.publishes_per_sec,
        p.broker_egress_per_sec,
        format_bytes(BYTES_PER_CONNECTION_ESTIMATE),
        NANOS_PER_DELIVERY as f64 / 1000.0,
    )
}

/// `surge plan`.
pub fn command() -> Command {
    let number =
        |name: &'static str, value: &'static str, default: &'static str, help: &'static str| {
            Arg::new(name)
                .long(name)
                .value_name(value)
                .default_value(default)
                .value_parser(clap::value_parser!(u64).range(1..))
                .help(help)
        };
    Command::new("plan")
        .about("How many gateways a target needs, from the measured cost of a connection and of a delivery")
        .arg(number("connections", "N", "1000000", "Connections open at once"))
        .arg(number("publishes", "PER_SEC", "1000", "Messages published per second"))
        .arg(number("fanout", "N", "100", "Connections that receive each message, on average"))
        .arg(number("node-memory-gib", "GIB", "8", "Memory of one gateway node"))
        .arg(number("node-cores", "N", "2", "Cores of one gateway node"))
        .arg(number("node-open-files", "N", "1048576", "Open-file limit of the surge service (LimitNOFILE)"))
}

pub fn target(sub: &ArgMatches) -> Target {
    let get = |name: &str| sub.get_one::<u64>(name).copied().unwrap_or(1);
    Target {
        connections: get("connections"),
        publishes_per_sec: get("publishes"),
        fanout: get("fanout"),
        node_memory_bytes: get("node-memory-gib").saturating_mul(1 << 30),
        node_cores: get("node-cores"),
        node_open_files: get("node-open-files"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(connections: u64, publishes: u64, fanout: u64) -> Target {
        Target {
            connections,
            publishes_per_sec: publishes,
            fanout,
            node_memory_bytes: 8 << 30,
            node_cores: 2,
            node_open_files: 1_048_576,
        }
    }

    #[test]
    fn memory_binds_for_many_quiet_connections() {
        let p = plan(&target(3_000_000, 10, 10));
        // 80 % of 8 GiB at 8 KiB: 838,860 per node; fewer than the files allow.
        assert_eq!(p.connections_per_node, 838_860);
        assert_eq!(p.nodes_for_connections, 4);
        assert_eq!(p.nodes_for_deliveries, 1);
        assert_eq!(p.nodes, 5, "four plus a spare");
        assert_eq!(p.broker_egress_per_sec, 50);
    }

    #[test]
    fn cpu_binds_for_busy_fan_out() {
        let p = plan(&target(100_000, 1_000, 2_000));
        assert_eq!(p.deliveries_per_sec, 2_000_000);
        // 60 % of 2 cores at 6.5 us: 184,615 deliveries/s per node.
        assert_eq!(p.deliveries_per_node, 184_615);
        assert_eq!(p.nodes_for_deliveries, 11);
        assert_eq!(p.nodes, 12);
        let text = report(&target(100_000, 1_000, 2_000), &p);
        assert!(
            text.contains("plan: 12 gateways (11 plus one spare)"),
            "{text}"
        );
    }

    #[test]
    fn the_open_file_limit_caps_a_big_node_and_a_fleet_has_two() {
        let mut t = target(10, 1, 1);
        t.node_memory_bytes = 64 << 30;
        t.node_open_files = 20_000;
        let p = plan(&t);
        assert_eq!(p.connections_per_node, 19_744);
        assert_eq!(p.nodes, 2, "never fewer than two");
    }
}
