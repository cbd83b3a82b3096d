//! A scenario's parameters: the profile's defaults (`seed`: the gateway as
//! the seed system ran; `surge`: surge's defaults) with any flag given on
//! the command line on top. Every value is printed in the report and in the
//! replay command, so a run can be repeated exactly even if defaults change.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::scenario::name::Scenario;

/// Which gateway set-up a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Profile {
    /// The seed system: listen backlog 128, an accept and upgrade path
    /// that slows as connections pile up, 5 s timeouts, no admission cap.
    Seed,
    /// surge's defaults.
    Surge,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Seed => "seed",
            Profile::Surge => "surge",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "seed" => Ok(Profile::Seed),
            "surge" => Ok(Profile::Surge),
            other => Err(format!("unknown profile {other:?}: use seed or surge")),
        }
    }
}

/// How the publisher's outage happens in `broker_outage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutageMode {
    /// The publisher host is cut off from the gateway, then healed.
    Partition,
    /// The publisher host crashes and restarts.
    Crash,
}

impl OutageMode {
    pub fn as_str(self) -> &'static str {
        match self {
            OutageMode::Partition => "partition",
            OutageMode::Crash => "crash",
        }
    }
}

impl FromStr for OutageMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "partition" => Ok(OutageMode::Partition),
            "crash" => Ok(OutageMode::Crash),
            other => Err(format!(
                "unknown outage mode {other:?}: use partition or crash"
            )),
        }
    }
}

/// How multi_gateway's balancer carries a client's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalancerMode {
    /// The balancer accepts it and splices it to the backend (HAProxy in
    /// TCP mode).
    Splice,
    /// The balancer picks the backend; the client connects to it directly.
    Route,
}

impl BalancerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BalancerMode::Splice => "splice",
            BalancerMode::Route => "route",
        }
    }
}

impl FromStr for BalancerMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "splice" => Ok(BalancerMode::Splice),
            "route" => Ok(BalancerMode::Route),
            other => Err(format!(
                "unknown balancer mode {other:?}: use splice or route"
            )),
        }
    }
}

/// A duration written as `250ms`, `5s`, `40us`, `900ns` or `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration like 250ms, 5s or 40us"))?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" | "" => 1.0,
            "m" => 60.0,
            _ => return Err(format!("{s:?}: unit must be ns, us, ms, s or m")),
        };
        if !value.is_finite() || value < 0.0 {
            return Err(format!("{s:?} must be a non-negative duration"));
        }
        Ok(Dur(Duration::from_secs_f64(value * scale)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        if ns == 0 {
            write!(f, "0ms")
        } else if ns.is_multiple_of(1_000_000_000) {
            write!(f, "{}s", ns / 1_000_000_000)
        } else if ns.is_multiple_of(1_000_000) {
            write!(f, "{}ms", ns / 1_000_000)
        } else if ns.is_multiple_of(1_000) {
            write!(f, "{}us", ns / 1_000)
        } else {
            write!(f, "{ns}ns")
        }
    }
}

/// Every parameter any scenario reads. A scenario ignores what it does not
/// use; the report prints only what it used.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub profile: Profile,
    pub seed: u64,
    /// Simulated clients.
    pub clients: u32,
    /// New connections per second (Poisson arrivals, from the seed).
    pub rate: f64,
    /// Requested listen backlog (the kernel caps it at somaxconn 4096).
    pub backlog: u32,
    /// Accept path: fixed time per accepted connection.
    pub service_time: Dur,
    /// Accept path: extra time per connection already held.
    pub service_per_conn: Dur,
    /// The client's deadline for connect + upgrade.
    pub timeout: Dur,
    /// The gateway's handshake timeout.
    pub handshake_timeout: Dur,
    /// Upgrade path: fixed work per handshake on a shared worker.
    pub upgrade_time: Dur,
    /// Upgrade path: extra work per connection held.
    pub upgrade_per_conn: Dur,
    /// Gateway capacity (max live connections over all shards).
    pub capacity: u32,
    pub shards: u32,
    /// Client hosts the clients are spread over.
    pub hosts: u32,
    /// One-way link latency (minimum) and its jitter (added maximum).
    pub latency: Dur,
    pub jitter: Dur,
    /// Probability that a message on a link is lost.
    pub loss: f64,
    /// slow_consumers: share of clients that read slowly.
    pub slow_fraction: f64,
    /// slow_consumers: a slow client's pause between two reads.
    pub slow_read: Dur,
    /// Messages the publisher sends, and how many per second.
    pub messages: u32,
    pub publish_rate: f64,
    /// Every n-th message is critical (0: none).
    pub critical_every: u32,
    /// broker_outage / reconnect_storm: when the fault starts and how long
    /// it lasts.
    pub fault_at: Dur,
    pub fault_for: Dur,
    pub outage: OutageMode,
    /// broker_outage: share of clients that disconnect during the outage
    /// and come back with `resume`.
    pub resume_fraction: f64,
    /// reconnect_storm: backoff base and cap, and the bound within which
    /// every client must be back.
    pub backoff: Dur,
    pub backoff_cap: Dur,
    pub recover_within: Dur,
    /// multi_gateway: gateways behind the balancer, and how many of them
    /// the rolling restart goes through.
    pub gateways: u32,
    pub restarts: u32,
    /// multi_gateway: simulated time per step (turmoil's tick; links
    /// deliver at tick boundaries).
    pub tick: Dur,
    /// multi_gateway: whether the balancer splices or routes.
    pub balancer: BalancerMode,
}

impl Params {
    /// Defaults that depend on the number of clients, for the parameters
    /// not given on the command line (`given` says which were). So far
    /// only multi_gateway has any: past 20,000 clients the arrivals are
    /// compressed into five seconds, the step is 5 ms, the balancer routes
    /// instead of splicing and 20 messages are published, which keeps a
    /// run of 100,000 clients within a minute of wall time.
    pub fn scale(&mut self, scenario: Scenario, given: &dyn Fn(&str) -> bool) {
        if scenario != Scenario::MultiGateway {
            return;
        }
        if !given("rate") {
            self.rate = self.rate.max(f64::from(self.clients) / 5.0);
        }
        if self.clients > 20_000 {
            if !given("tick") {
                self.tick = Dur(Duration::from_millis(5));
            }
            if !given("balancer") {
                self.balancer = BalancerMode::Route;
            }
            if !given("messages") {
                self.messages = 20;
            }
            if !given("publish-rate") {
                self.publish_rate = 2.0;
            }
            if !given("hosts") {
                self.hosts = 20;
            }
        }
    }

    /// The defaults of `scenario` under `profile`.
    pub fn defaults(scenario: Scenario, profile: Profile, seed: u64) -> Params {
        use Scenario as S;
        let seed_profile = profile == Profile::Seed;
        let ms = |n: u64| Dur(Duration::from_millis(n));
        let us = |n: u64| Dur(Duration::from_micros(n));
        let s = |n: u64| Dur(Duration::from_secs(n));
        let mut p = Params {
            profile,
            seed,
            clients: 1000,
            rate: 100.0,
            // The seed ran with the kernel default of ~128; surge asks for
            // 4096 (capped by somaxconn).
            backlog: if seed_profile { 128 } else { 4096 },
            // The seed's accept loop slowed as connections piled up (two
            // goroutines each, 97.5 % CPU); surge's acceptor only admits
            // and spawns.
            service_time: if seed_profile { us(1500) } else { us(50) },
            service_per_conn: if seed_profile {
                Dur(Duration::from_nanos(1600))
            } else {
                us(0)
            },
            timeout: s(5),
            handshake_timeout: if seed_profile { s(5) } else { s(10) },
            upgrade_time: us(0),
            upgrade_per_conn: us(0),
            capacity: 20_000,
            shards: if seed_profile { 3 } else { 2 },
            hosts: 20,
            latency: ms(1),
            jitter: ms(4),
            loss: 0.0,
            slow_fraction: 0.2,
            slow_read: ms(25),
            messages: 600,
            publish_rate: 100.0,
            critical_every: 10,
            fault_at: s(5),
            fault_for: s(5),
            outage: OutageMode::Partition,
            resume_fraction: 0.25,
            backoff: ms(250),
            backoff_cap: s(8),
            recover_within: s(30),
            gateways: 4,
            restarts: 2,
            tick: ms(1),
            balancer: BalancerMode::Splice,
        };
        match scenario {
            S::BacklogBurst => {
                p.clients = 2000;
                p.rate = 100.0;
                // turmoil's links are a full mesh stepped every tick, so
                // the cost per tick grows with the cube of the hosts: 10
                // keep 12,000 clients under 5 s of wall time.
                p.hosts = 10;
            }
            S::SlotRace => {
                p.clients = 900;
                p.rate = 2000.0;
                p.capacity = 600;
                p.shards = 3;
                p.latency = ms(20);
                p.jitter = ms(30);
                p.hosts = 10;
                if seed_profile {
                    // The seed's proxy hop between checking a shard and
                    // taking its slot: dial the shard, forward the upgrade.
                    p.upgrade_time = ms(50);
                }
            }
            S::HandshakeTimeout => {
                p.clients = 7000;
                p.rate = 100.0;
                p.timeout = s(5);
                // Accept is not the bottleneck here, the upgrade is: a fast
                // accept path keeps the profile's backlog (128 for the seed)
                // from ever filling, so it is left as the profile has it.
                p.service_time = us(50);
                p.service_per_conn = us(0);
                p.hosts = 10;
                if seed_profile {
                    // Saturates near the end of a 7,000-client ramp, so
                    // the last clients wait between 5 and 10 s.
                    p.upgrade_time = us(2000);
                    p.upgrade_per_conn = Dur(Duration::from_nanos(1850));
                } else {
                    p.upgrade_time = us(100);
                }
            }
            S::CapacityCeiling => {
                p.clients = 1500;
                p.rate = 200.0;
                p.capacity = 1000;
                p.timeout = s(5);
                p.service_per_conn = us(0);
                p.service_time = if seed_profile { us(500) } else { us(50) };
            }
            S::SlowConsumers => {
                p.clients = 100;
                p.rate = 200.0;
                p.hosts = 5;
                p.messages = 1500;
                p.publish_rate = 100.0;
                p.service_per_conn = us(0);
            }
            S::BrokerOutage => {
                p.clients = 100;
                p.rate = 200.0;
                p.hosts = 5;
                p.messages = 800;
                p.publish_rate = 50.0;
                p.fault_at = s(4);
                p.fault_for = s(6);
                p.service_per_conn = us(0);
            }
            S::MultiGateway => {
                p.clients = 2000;
                p.rate = 1000.0;
                p.hosts = 10;
                p.messages = 60;
                p.publish_rate = 4.0;
                p.fault_at = s(2);
                p.fault_for = s(3);
                p.service_per_conn = us(0);
            }
            S::ReconnectStorm => {
                p.clients = 2000;
                p.rate = 1000.0;
                p.fault_at = s(5);
                p.fault_for = s(2);
                p.recover_within = s(30);
            }
        }
        p
    }
}
