//! Which scenario: the eight the simulator knows, their names on the
//! command line and what each one shows. Below the parameters (whose
//! defaults depend on the scenario) and the report (which names its
//! scenario); running one is the registry's job (`Scenario::run`, in the
//! parent module).

use std::fmt;
use std::str::FromStr;

/// Every scenario the simulator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    BacklogBurst,
    SlotRace,
    HandshakeTimeout,
    CapacityCeiling,
    SlowConsumers,
    BrokerOutage,
    ReconnectStorm,
    MultiGateway,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::BacklogBurst,
        Scenario::SlotRace,
        Scenario::HandshakeTimeout,
        Scenario::CapacityCeiling,
        Scenario::SlowConsumers,
        Scenario::BrokerOutage,
        Scenario::ReconnectStorm,
        Scenario::MultiGateway,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::BacklogBurst => "backlog_burst",
            Scenario::SlotRace => "slot_race",
            Scenario::HandshakeTimeout => "handshake_timeout",
            Scenario::CapacityCeiling => "capacity_ceiling",
            Scenario::SlowConsumers => "slow_consumers",
            Scenario::BrokerOutage => "broker_outage",
            Scenario::ReconnectStorm => "reconnect_storm",
            Scenario::MultiGateway => "multi_gateway",
        }
    }

    /// What a run of this scenario shows.
    pub fn proves(self) -> &'static str {
        match self {
            Scenario::BacklogBurst => {
                "a connection surge against a listen backlog: the seed's 128 and slow accept path lose a double-digit share (the Go system surge replaces: 18.5 %), surge's backlog and acceptor lose none"
            }
            Scenario::SlotRace => {
                "check-then-acquire across an await over-admits (as in the Go system surge replaces); surge's atomic admission never exceeds a shard's capacity and leaks no slot"
            }
            Scenario::HandshakeTimeout => {
                "a slow upgrade path fails clients with a 5 s timeout but not with 10 s (the Go system surge replaces: 97.1 % vs 100 %); surge's upgrade stays fast (accept is kept fast in both profiles, so only the upgrade is measured; the gateway's own handshake timeout is raised above both client deadlines)"
            }
            Scenario::CapacityCeiling => {
                "past capacity every client gets a prompt 503 with Retry-After, never a timeout (the seed timed out at its memory ceiling)"
            }
            Scenario::SlowConsumers => {
                "slow readers are throttled alone: fast clients get everything, critical messages reach everyone, queues stay bounded"
            }
            Scenario::BrokerOutage => {
                "the publisher is cut off or crashes and returns: clients stay connected and, with resume, see every message exactly once"
            }
            Scenario::ReconnectStorm => {
                "the gateway restarts: clients reconnect with jittered backoff, all are back within the bound, no slot leaks"
            }
            Scenario::MultiGateway => {
                "several gateways behind a balancer on one shared stream: one crashes, one is cut off from the stream, some restart in turn; every client moves and resumes with every message exactly once, every refusal is an HTTP answer, no slot leaks"
            }
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.name() == s || sc.name().replace('_', "-") == s)
            .ok_or_else(|| {
                let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
                format!("unknown scenario {s:?}; known: {}", names.join(", "))
            })
    }
}
