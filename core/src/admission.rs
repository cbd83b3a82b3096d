//! Who gets in: the resource guard, shard selection and slot accounting.
//!
//! The seed system lost 56.8 % of a surge because it checked a shard for a
//! free slot, awaited, and only then took the slot: two connections saw the
//! same free slot. Here [`Admission::admit`] checks the guard, selects the
//! least-loaded shard and reserves the slot in one call on `&mut self`; no
//! other admission can interleave, so the race cannot be written.
//!
//! A slot is *reserved* before the 101 is written, becomes *live* when the
//! upgrade completes and is released exactly once: [`Reservation`] and
//! [`LiveSlot`] are neither `Clone` nor `Copy`, and every way out of a state
//! ([`Admission::complete`], [`Admission::abort`], [`Admission::close`])
//! consumes the token. A driver that could drop a token without handing it
//! back wraps it in a guard that returns it on `Drop`.

mod limits;
#[cfg(test)]
mod limits_tests;
mod refusal;

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

pub use limits::ClientLimitConfig;
use limits::ClientLimits;
pub use refusal::Refusal;

use crate::Instant;

/// A shard's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A connection's identity, unique for the life of the process: the shard
/// it lives on and a serial number assigned at admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId {
    pub shard: ShardId,
    pub serial: u64,
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.shard.0, self.serial)
    }
}

/// One shard's slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotTable {
    capacity: u32,
    reserved: u32,
    live: u32,
}

impl SlotTable {
    pub fn new(capacity: u32) -> Self {
        SlotTable {
            capacity,
            reserved: 0,
            live: 0,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Slots held by handshakes in progress.
    pub fn reserved(&self) -> u32 {
        self.reserved
    }

    /// Slots held by upgraded connections.
    pub fn live(&self) -> u32 {
        self.live
    }

    pub fn used(&self) -> u32 {
        self.reserved + self.live
    }

    pub fn available(&self) -> u32 {
        self.capacity - self.used()
    }

    /// Used share of capacity, 0.0 to 1.0 (1.0 for a zero-capacity shard).
    pub fn utilization(&self) -> f64 {
        if self.capacity == 0 {
            1.0
        } else {
            f64::from(self.used()) / f64::from(self.capacity)
        }
    }

    /// Whether `self` is less loaded than `other`: lower used/capacity,
    /// compared exactly by cross-multiplying.
    fn less_loaded_than(&self, other: &SlotTable) -> bool {
        u64::from(self.used()) * u64::from(other.capacity)
            < u64::from(other.used()) * u64::from(self.capacity)
    }
}

/// Picks the shard for a new connection: the least loaded one with room,
/// ties going to the lowest index, so the choice is deterministic.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardSelector;

impl ShardSelector {
    pub fn select(&self, shards: &[SlotTable]) -> Option<ShardId> {
        let mut best: Option<usize> = None;
        for (i, table) in shards.iter().enumerate() {
            if table.available() == 0 {
                continue;
            }
            match best {
                Some(b) if !table.less_loaded_than(&shards[b]) => {}
                _ => best = Some(i),
            }
        }
        best.map(|i| ShardId(i as u32))
    }
}

/// A slot held by a handshake in progress.
#[must_use = "a reservation must be completed or aborted, or its slot leaks"]
#[derive(Debug, PartialEq, Eq)]
pub struct Reservation {
    id: ConnId,
}

impl Reservation {
    pub fn id(&self) -> ConnId {
        self.id
    }
}

/// A slot held by an upgraded connection.
#[must_use = "a live slot must be closed, or it leaks"]
#[derive(Debug, PartialEq, Eq)]
pub struct LiveSlot {
    id: ConnId,
}

impl LiveSlot {
    pub fn id(&self) -> ConnId {
        self.id
    }
}

/// Why a handshake ended without an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AbortCause {
    /// The request was rejected (4xx).
    Rejected,
    /// The handshake deadline passed.
    TimedOut,
    /// The peer went away or the socket failed.
    Io,
    /// The server is shutting down.
    Shutdown,
}

/// Why the gateway is not ready for new connections (`/readyz` 503).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum NotReady {
    /// A new connection would be refused (full, overloaded, draining).
    #[error("{0}")]
    Refusing(Refusal),
    /// The broker is disconnected and readiness is configured to need it.
    #[error("the broker is disconnected")]
    BrokerDisconnected,
}

/// Thresholds of the resource guard (as in the Go system surge replaces: reject at 75 % CPU, pause
/// the broker at 80 %).
#[derive(Debug, Clone, PartialEq)]
pub struct GuardConfig {
    pub cpu_reject_percent: f64,
    pub cpu_pause_percent: f64,
    /// `None` = no memory threshold.
    pub memory_reject_bytes: Option<u64>,
    pub memory_pause_bytes: Option<u64>,
    /// CPU is judged on its mean over this window, so that the burst of
    /// handshakes a surge brings does not, by itself, turn the surge away.
    pub cpu_window: Duration,
    /// The `Retry-After` given with every refusal.
    pub retry_after: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            cpu_reject_percent: 75.0,
            cpu_pause_percent: 80.0,
            memory_reject_bytes: None,
            memory_pause_bytes: None,
            cpu_window: Duration::from_secs(5),
            retry_after: Duration::from_secs(5),
        }
    }
}

/// A measurement of the process, taken by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ResourceSample {
    /// CPU used by the process, in percent of the whole machine (0–100).
    pub cpu_percent: f64,
    /// Resident memory.
    pub memory_bytes: u64,
}

/// Decides, from recent samples, whether new connections are refused and
/// whether broker consumption pauses.
#[derive(Debug, Clone)]
pub struct ResourceGuard {
    config: GuardConfig,
    cpu: VecDeque<(Instant, f64)>,
    /// When sampling began: CPU is judged only once a whole window of
    /// samples exists, so the CPU a process spends starting up (or the
    /// first burst it serves) is not mistaken for sustained load.
    first_sample: Option<Instant>,
    memory_bytes: u64,
}

impl ResourceGuard {
    pub fn new(config: GuardConfig) -> Self {
        ResourceGuard {
            config,
            cpu: VecDeque::new(),
            first_sample: None,
            memory_bytes: 0,
        }
    }

    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    pub fn observe(&mut self, sample: ResourceSample, now: Instant) {
        self.first_sample.get_or_insert(now);
        self.cpu.push_back((now, sample.cpu_percent));
        while let Some(&(at, _)) = self.cpu.front() {
            if now.saturating_duration_since(at) > self.config.cpu_window && self.cpu.len() > 1 {
                self.cpu.pop_front();
            } else {
                break;
            }
        }
        self.memory_bytes = sample.memory_bytes;
    }

    /// Mean CPU over the window (0 before any sample).
    pub fn cpu_percent(&self) -> f64 {
        if self.cpu.is_empty() {
            return 0.0;
        }
        self.cpu.iter().map(|&(_, c)| c).sum::<f64>() / self.cpu.len() as f64
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    /// Whether a whole CPU window of samples exists yet.
    fn cpu_judged(&self) -> bool {
        match (self.first_sample, self.cpu.back()) {
            (Some(first), Some(&(latest, _))) => {
                latest.saturating_duration_since(first) >= self.config.cpu_window
            }
            _ => false,
        }
    }

    /// `Err` when new connections must be refused.
    pub fn check(&self) -> Result<(), Refusal> {
        let cpu = self.cpu_percent();
        if self.cpu_judged() && cpu >= self.config.cpu_reject_percent {
            return Err(Refusal::Cpu {
                percent: cpu,
                threshold: self.config.cpu_reject_percent,
            });
        }
        if let Some(threshold) = self.config.memory_reject_bytes
            && self.memory_bytes >= threshold
        {
            return Err(Refusal::Memory {
                bytes: self.memory_bytes,
                threshold,
            });
        }
        Ok(())
    }

    /// Whether broker consumption should pause (messages stay in the
    /// stream meanwhile).
    pub fn pause_broker(&self) -> bool {
        (self.cpu_judged() && self.cpu_percent() >= self.config.cpu_pause_percent)
            || self
                .config
                .memory_pause_bytes
                .is_some_and(|t| self.memory_bytes >= t)
    }
}

/// Counts of slot transitions, for metrics and invariant checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotCounters {
    pub reserved: u64,
    pub completed: u64,
    pub aborted: u64,
    pub closed: u64,
}

/// All shards' slot tables, the selector and the guard, as one unit so
/// that admission is a single atomic step.
#[derive(Debug, Clone)]
pub struct Admission {
    shards: Vec<SlotTable>,
    selector: ShardSelector,
    guard: ResourceGuard,
    next_serial: u64,
    shutting_down: bool,
    counters: SlotCounters,
    clients: ClientLimits,
}

impl Admission {
    /// Splits `max_connections` over `shards` shards as evenly as possible.
    pub fn new(max_connections: u32, shards: u32, guard: GuardConfig) -> Self {
        let shards = shards.max(1);
        let tables = (0..shards)
            .map(|i| {
                let extra = u32::from(i < max_connections % shards);
                SlotTable::new(max_connections / shards + extra)
            })
            .collect();
        Self::with_tables(tables, guard)
    }

    /// Shards with explicit capacities.
    pub fn with_tables(shards: Vec<SlotTable>, guard: GuardConfig) -> Self {
        Admission {
            shards,
            selector: ShardSelector,
            guard: ResourceGuard::new(guard),
            next_serial: 1,
            shutting_down: false,
            counters: SlotCounters::default(),
            clients: ClientLimits::default(),
        }
    }

    /// Turns on per-client limits (all off by default).
    pub fn with_client_limits(mut self, config: ClientLimitConfig) -> Self {
        self.clients = ClientLimits::new(config);
        self
    }

    pub fn client_limits(&self) -> ClientLimitConfig {
        self.clients.config()
    }

    /// Guard check, per-client limits, shard selection and reservation for
    /// a connection from `peer`, all at once.
    pub fn admit(&mut self, peer: IpAddr, now: Instant) -> Result<Reservation, Refusal> {
        if self.shutting_down {
            return Err(Refusal::ShuttingDown);
        }
        self.guard.check()?;
        let shard = self.selector.select(&self.shards).ok_or(Refusal::Full {
            capacity: self.capacity(),
        })?;
        self.clients.check_new(peer, now)?;
        self.shards[shard.0 as usize].reserved += 1;
        self.counters.reserved += 1;
        let serial = self.next_serial;
        self.next_serial += 1;
        self.clients.reserved(serial, peer, now);
        Ok(Reservation {
            id: ConnId { shard, serial },
        })
    }

    /// The handshake authenticated as `user`: the per-user limit is checked
    /// and counted in one step. On `Err` the caller refuses the handshake
    /// (429) and aborts the reservation.
    pub fn bind_user(&mut self, reservation: &Reservation, user: &str) -> Result<(), Refusal> {
        self.clients.bind_user(reservation.id.serial, user)
    }

    /// Connections counted for a source address (0 while no per-client
    /// limit is on).
    pub fn connections_from(&self, peer: IpAddr) -> u32 {
        self.clients.connections_from(peer)
    }

    /// Handshakes in progress counted for a source address (0 while no
    /// per-client limit is on).
    pub fn handshaking_from(&self, peer: IpAddr) -> u32 {
        self.clients.handshaking_from(peer)
    }

    /// Connections counted for a user (0 while the per-user limit is off).
    pub fn connections_of(&self, user: &str) -> u32 {
        self.clients.connections_of(user)
    }

    /// Source addresses the per-client limits currently remember.
    pub fn tracked_addresses(&self) -> usize {
        self.clients.tracked_addresses()
    }

    /// The upgrade completed: the reserved slot becomes live.
    pub fn complete(&mut self, reservation: Reservation) -> LiveSlot {
        let table = &mut self.shards[reservation.id.shard.0 as usize];
        table.reserved -= 1;
        table.live += 1;
        self.counters.completed += 1;
        self.clients.upgraded(reservation.id.serial);
        LiveSlot { id: reservation.id }
    }

    /// The handshake ended without an upgrade: the slot is free again.
    pub fn abort(&mut self, reservation: Reservation, _cause: AbortCause) {
        self.shards[reservation.id.shard.0 as usize].reserved -= 1;
        self.counters.aborted += 1;
        self.clients.released(reservation.id.serial);
    }

    /// An upgraded connection ended: its slot is free again.
    pub fn close(&mut self, slot: LiveSlot) {
        self.shards[slot.id.shard.0 as usize].live -= 1;
        self.counters.closed += 1;
        self.clients.released(slot.id.serial);
    }

    /// Feeds the guard a new measurement.
    pub fn observe(&mut self, sample: ResourceSample, now: Instant) {
        self.guard.observe(sample, now);
        self.clients.prune(now);
    }

    /// From now on every admission is refused.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Whether a new connection would be admitted now: what `admit`
    /// checks, without reserving anything.
    pub fn would_admit(&self) -> Result<(), Refusal> {
        if self.shutting_down {
            return Err(Refusal::ShuttingDown);
        }
        self.guard.check()?;
        match self.selector.select(&self.shards) {
            Some(_) => Ok(()),
            None => Err(Refusal::Full {
                capacity: self.capacity(),
            }),
        }
    }

    /// Readiness for a load balancer: ready while new connections would be
    /// admitted and, when `requires_broker`, while the broker is connected.
    pub fn readiness(&self, broker_connected: bool, requires_broker: bool) -> Result<(), NotReady> {
        self.would_admit().map_err(NotReady::Refusing)?;
        if requires_broker && !broker_connected {
            return Err(NotReady::BrokerDisconnected);
        }
        Ok(())
    }

    pub fn guard(&self) -> &ResourceGuard {
        &self.guard
    }

    pub fn pause_broker(&self) -> bool {
        self.guard.pause_broker()
    }

    pub fn retry_after(&self) -> Duration {
        self.guard.config.retry_after
    }

    pub fn shards(&self) -> &[SlotTable] {
        &self.shards
    }

    pub fn capacity(&self) -> u64 {
        self.shards.iter().map(|s| u64::from(s.capacity)).sum()
    }

    /// Reserved plus live slots over all shards.
    pub fn used(&self) -> u64 {
        self.shards.iter().map(|s| u64::from(s.used())).sum()
    }

    /// Slots reserved by connections still in their handshake (accepted,
    /// not yet upgraded or refused): they hold capacity like live ones.
    pub fn handshaking(&self) -> u64 {
        self.shards.iter().map(|s| u64::from(s.reserved())).sum()
    }

    pub fn live(&self) -> u64 {
        self.shards.iter().map(|s| u64::from(s.live)).sum()
    }

    pub fn counters(&self) -> SlotCounters {
        self.counters
    }

    /// Spread between the most and least utilised shards, in percentage
    /// points (what the seed's `/health` called imbalance).
    pub fn imbalance_percent(&self) -> f64 {
        let utils = self.shards.iter().map(SlotTable::utilization);
        let (lo, hi) = utils.fold((f64::MAX, f64::MIN), |(lo, hi), u| (lo.min(u), hi.max(u)));
        if self.shards.is_empty() {
            0.0
        } else {
            (hi - lo) * 100.0
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn admission(max: u32, shards: u32) -> Admission {
        Admission::new(max, shards, GuardConfig::default())
    }

    #[test]
    fn readiness_follows_admission_draining_and_the_broker_rule() {
        let mut a = admission(2, 1);
        assert_eq!(a.readiness(false, false), Ok(()));
        assert_eq!(a.readiness(false, true), Err(NotReady::BrokerDisconnected));
        assert_eq!(a.readiness(true, true), Ok(()));
        let r1 = a.admit(PEER, Instant::ZERO).expect("room");
        let _r2 = a.admit(PEER, Instant::ZERO).expect("room");
        assert!(matches!(
            a.readiness(true, false),
            Err(NotReady::Refusing(Refusal::Full { capacity: 2 }))
        ));
        a.abort(r1, AbortCause::Io);
        assert_eq!(a.readiness(true, false), Ok(()));
        a.begin_shutdown();
        assert_eq!(
            a.readiness(true, false),
            Err(NotReady::Refusing(Refusal::ShuttingDown))
        );
        assert!(a.is_shutting_down());
    }

    #[test]
    fn capacity_is_split_evenly() {
        let a = admission(10, 3);
        let caps: Vec<u32> = a.shards().iter().map(SlotTable::capacity).collect();
        assert_eq!(caps, [4, 3, 3]);
        assert_eq!(a.capacity(), 10);
    }

    #[test]
    fn fills_least_loaded_first_then_refuses() {
        let mut a = admission(6, 3);
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(a.admit(PEER, Instant::ZERO).expect("room"));
        }
        let shards: Vec<u32> = held.iter().map(|r| r.id().shard.0).collect();
        assert_eq!(shards, [0, 1, 2, 0, 1, 2]);
        assert_eq!(
            a.admit(PEER, Instant::ZERO),
            Err(Refusal::Full { capacity: 6 })
        );
        // Freeing one slot on shard 1 makes it the only choice.
        let r = held.remove(1);
        a.abort(r, AbortCause::TimedOut);
        assert_eq!(
            a.admit(PEER, Instant::ZERO).expect("room again").id().shard,
            ShardId(1)
        );
    }

    #[test]
    fn slots_move_reserved_live_free() {
        let mut a = admission(2, 1);
        let r = a.admit(PEER, Instant::ZERO).expect("room");
        assert_eq!((a.shards()[0].reserved(), a.shards()[0].live()), (1, 0));
        let live = a.complete(r);
        assert_eq!((a.shards()[0].reserved(), a.shards()[0].live()), (0, 1));
        a.close(live);
        assert_eq!(a.used(), 0);
        assert_eq!(
            a.counters(),
            SlotCounters {
                reserved: 1,
                completed: 1,
                aborted: 0,
                closed: 1
            }
        );
    }

    #[test]
    fn serials_are_unique() {
        let mut a = admission(100, 4);
        let mut ids: Vec<ConnId> = (0..100)
            .map(|_| a.admit(PEER, Instant::ZERO).expect("room").id())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 100);
    }

    #[test]
    fn selector_compares_utilization_with_unequal_capacities() {
        let mut big = SlotTable::new(100);
        big.live = 40;
        let mut small = SlotTable::new(10);
        small.live = 3;
        assert_eq!(ShardSelector.select(&[big, small]), Some(ShardId(1)));
        small.live = 5;
        assert_eq!(ShardSelector.select(&[big, small]), Some(ShardId(0)));
        small.live = 4;
        assert_eq!(
            ShardSelector.select(&[big, small]),
            Some(ShardId(0)),
            "tie goes to the lower index"
        );
        assert_eq!(ShardSelector.select(&[SlotTable::new(0)]), None);
    }

    #[test]
    fn guard_judges_cpu_over_its_window() {
        let mut a = admission(10, 1);
        let t = Instant::from_millis;
        let busy = ResourceSample {
            cpu_percent: 100.0,
            memory_bytes: 0,
        };
        // Start-up CPU is not judged before a whole window of samples.
        for i in 0..5 {
            a.observe(busy, t(i * 1000));
            assert!(a.admit(PEER, Instant::ZERO).is_ok(), "judged after {i} s");
            assert!(!a.pause_broker());
        }
        a.observe(busy, t(5000));
        assert!(matches!(
            a.admit(PEER, Instant::ZERO),
            Err(Refusal::Cpu { .. })
        ));
        assert!(a.pause_broker());
        for i in 6..=9 {
            a.observe(ResourceSample::default(), t(i * 1000));
        }
        // Two busy seconds averaged with four idle ones are under 75 %.
        assert!(a.admit(PEER, Instant::ZERO).is_ok());
        assert!(!a.pause_broker());
    }

    #[test]
    fn guard_memory_thresholds() {
        let mut a = Admission::new(
            10,
            1,
            GuardConfig {
                memory_reject_bytes: Some(1000),
                memory_pause_bytes: Some(2000),
                ..GuardConfig::default()
            },
        );
        let sample = |m| ResourceSample {
            cpu_percent: 0.0,
            memory_bytes: m,
        };
        a.observe(sample(1500), Instant::ZERO);
        assert!(matches!(
            a.admit(PEER, Instant::ZERO),
            Err(Refusal::Memory { .. })
        ));
        assert!(!a.pause_broker());
        a.observe(sample(2000), Instant::ZERO);
        assert!(a.pause_broker());
        a.observe(sample(10), Instant::ZERO);
        assert!(a.admit(PEER, Instant::ZERO).is_ok());
    }

    #[test]
    fn shutdown_refuses_everyone() {
        let mut a = admission(10, 2);
        a.begin_shutdown();
        assert_eq!(a.admit(PEER, Instant::ZERO), Err(Refusal::ShuttingDown));
    }

    #[test]
    fn imbalance_is_the_utilization_spread() {
        let mut a = admission(20, 2);
        let _r = a.admit(PEER, Instant::ZERO).expect("room");
        assert!((a.imbalance_percent() - 10.0).abs() < 1e-9);
    }
}
