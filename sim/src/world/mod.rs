//! The simulated world of one run: turmoil hosts for the gateway and the
//! clients; the driver loop that steps simulated time, injects faults at
//! exact instants and checks the invariants as it goes.
//!
//! Below it, [`hosts`] holds the host names, ports and simulated-time
//! helpers code inside a host needs, and [`state`] what the run records
//! (the trace, violations, client connections); the publisher and the
//! subscribers use those two without looking up at this module.
//!
//! Everything here is single-threaded (turmoil runs every host on the
//! calling thread), so run-wide state is shared with `Rc<RefCell<_>>`.

pub mod hosts;
pub mod state;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use surge_runtime::embedded::{EmbeddedBroker, Retention};
use surge_runtime::{Broker, Clock, Gateway, GatewayConfig, Hub};
use tokio_tungstenite::WebSocketStream;

use crate::client::{self, FailureKind, UpgradeFailure};
use crate::net::{AcceptPath, KernelParams, NetShared, SimStream, SimTransport, UpgradePath};
use crate::params::Params;
use crate::world::hosts::{GATEWAY, WS_PORT, gateway_addr};
use crate::world::state::{ClientConn, RunState};

/// How the gateway host is set up; `install_gateway` runs it again on
/// every restart.
#[derive(Clone)]
pub struct GatewaySpec {
    pub config: GatewayConfig,
    pub kernel: KernelParams,
    pub accept: AcceptPath,
    pub upgrade: Option<UpgradePath>,
    pub retention: Retention,
    /// Serve the publisher's ingest port next to the gateway.
    pub ingest: bool,
}

impl GatewaySpec {
    /// The gateway of `params`: the real runtime configuration with the
    /// scenario's limits.
    pub fn from_params(p: &Params) -> GatewaySpec {
        let listen: SocketAddr = ([0, 0, 0, 0], WS_PORT).into();
        let mut config = GatewayConfig::for_tests(listen, p.capacity, p.shards);
        config.backlog = p.backlog;
        config.handshake.timeout = p.handshake_timeout.0;
        GatewaySpec {
            config,
            kernel: KernelParams {
                wheel_seed: p.seed,
                ..KernelParams::default()
            },
            accept: AcceptPath {
                base: p.service_time.0,
                per_connection: p.service_per_conn.0,
                stall_at: None,
            },
            upgrade: if p.upgrade_time.0.is_zero() && p.upgrade_per_conn.0.is_zero() {
                None
            } else {
                Some(UpgradePath {
                    base: p.upgrade_time.0,
                    per_connection: p.upgrade_per_conn.0,
                })
            },
            retention: Retention {
                max_age: Duration::from_secs(30),
                max_messages: 100_000,
                max_bytes: 50 << 20,
            },
            ingest: false,
        }
    }

    /// Per-shard capacities, split as `Admission::new` splits them.
    pub fn shard_capacities(&self) -> Vec<u32> {
        let shards = self.config.shards.max(1);
        let max = self.config.max_connections;
        (0..shards)
            .map(|i| max / shards + u32::from(i < max % shards))
            .collect()
    }
}

/// The running gateway, as the driver sees it between steps.
#[derive(Clone)]
pub struct Running {
    pub gateway: Arc<Gateway>,
    pub net: Arc<NetShared>,
    /// 1 for the first start, +1 per restart.
    pub generation: u32,
}

/// Where the gateway host publishes its running gateway.
#[derive(Clone, Default)]
pub struct GatewaySlot {
    running: Rc<RefCell<Option<Running>>>,
    starts: Rc<Cell<u32>>,
}

impl GatewaySlot {
    pub fn get(&self) -> Option<Running> {
        self.running.borrow().clone()
    }

    pub fn clear(&self) {
        self.running.borrow_mut().take();
    }
}

type Setup = Rc<dyn Fn(Arc<Gateway>)>;

/// Builds a gateway's broker at each (re)start: the hub to feed, the
/// gateway's clock and the start's generation (1 for the first start).
pub type BrokerFactory = Rc<dyn Fn(Hub, Clock, u32) -> Arc<dyn Broker>>;

/// A rolling restart's request to one gateway host, and its answer.
#[derive(Debug, Default)]
pub struct DrainControl {
    /// Set by the driver: drain now (readiness false, wait `delay`, close
    /// every connection with 1001, wait up to `drain` for them).
    pub requested: Cell<bool>,
    /// Set by the host once its gateway has shut down.
    pub stopped: Cell<bool>,
    pub delay: Cell<Duration>,
    pub drain: Cell<Duration>,
}

/// Registers the gateway host. `on_start` runs inside the host after every
/// (re)start, for scenario-specific services next to the gateway.
pub fn install_gateway(
    sim: &mut turmoil::Sim<'_>,
    spec: GatewaySpec,
    slot: GatewaySlot,
    run: Rc<RunState>,
    on_start: Option<Setup>,
) {
    let retention = spec.retention;
    let broker: BrokerFactory = Rc::new(move |hub, clock, generation| {
        // Deterministic, and new at every start like a real restart's.
        let epoch = format!("sim-{generation}");
        Arc::new(EmbeddedBroker::new(hub, retention, clock, epoch)) as Arc<dyn Broker>
    });
    install_gateway_host(sim, GATEWAY, spec, slot, run, broker, on_start, None);
}

/// Registers a gateway host named `name` whose broker `broker` builds;
/// with `control`, the host drains and stops when the driver asks.
#[allow(clippy::too_many_arguments)]
pub fn install_gateway_host(
    sim: &mut turmoil::Sim<'_>,
    name: &str,
    spec: GatewaySpec,
    slot: GatewaySlot,
    run: Rc<RunState>,
    broker: BrokerFactory,
    on_start: Option<Setup>,
    control: Option<Rc<DrainControl>>,
) {
    let host = name.to_owned();
    sim.host(name, move || {
        let spec = spec.clone();
        let slot = slot.clone();
        let run = Rc::clone(&run);
        let on_start = on_start.clone();
        let broker = Rc::clone(&broker);
        let control = control.clone();
        let host = host.clone();
        async move {
            let transport = SimTransport::new(
                spec.kernel.clone(),
                spec.accept.clone(),
                spec.upgrade.clone(),
            );
            let net = transport.shared();
            let generation = slot.starts.get() + 1;
            let gateway = Gateway::start(&transport, spec.config.clone(), move |hub, clock| {
                broker(hub, clock, generation)
            })
            .await?;
            let gateway = Arc::new(gateway);
            slot.starts.set(generation);
            if host == GATEWAY {
                run.event(&format!("gateway start generation={generation}"));
            } else {
                run.event(&format!("gateway {host} start generation={generation}"));
            }
            *slot.running.borrow_mut() = Some(Running {
                gateway: Arc::clone(&gateway),
                net,
                generation,
            });
            if spec.ingest {
                tokio::task::spawn_local(crate::publisher::serve_ingest(Arc::clone(&gateway)));
            }
            if let Some(f) = on_start {
                f(Arc::clone(&gateway));
            }
            if let Some(control) = control {
                control.stopped.set(false);
                while !control.requested.get() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                run.event(&format!("gateway {host} drains"));
                gateway.begin_drain();
                tokio::time::sleep(control.delay.get()).await;
                gateway.shutdown(control.drain.get()).await;
                slot.clear();
                control.stopped.set(true);
                run.event(&format!("gateway {host} stopped"));
            }
            std::future::pending::<()>().await;
            Ok(())
        }
    });
}

/// A boxed client task.
pub type ClientTask = Pin<Box<dyn Future<Output = ()>>>;

/// Registers `hosts` client hosts and spreads `clients` over them (client
/// `i` on host `i % hosts`); each runs `task(i)` on its host.
pub fn install_clients(
    sim: &mut turmoil::Sim<'_>,
    hosts: u32,
    clients: u32,
    task: Rc<dyn Fn(u64) -> ClientTask>,
) {
    let hosts = hosts.max(1).min(clients.max(1));
    for h in 0..hosts {
        let task = Rc::clone(&task);
        let name = format!("client{h}");
        sim.client(name.clone(), async move {
            let ip = turmoil::lookup(name.as_str());
            let mut handles = Vec::new();
            let mut i = u64::from(h);
            while i < u64::from(clients) {
                handles.push(tokio::task::spawn_local(
                    crate::net::HOST_ADDR.scope(ip, task(i)),
                ));
                i += u64::from(hosts);
            }
            for handle in handles {
                let _ = handle.await;
            }
            Ok(())
        });
    }
}

/// Connects with SYN retransmission and upgrades, all within `timeout`.
/// Returns the stream and the time it took.
pub async fn open_websocket(
    kernel: &KernelParams,
    index: u64,
    timeout: Duration,
) -> Result<(WebSocketStream<SimStream>, Duration), UpgradeFailure> {
    open_websocket_at(kernel, gateway_addr(), GATEWAY, index, timeout).await
}

/// [`open_websocket`] to `addr`, naming `authority` in the request.
pub async fn open_websocket_at(
    kernel: &KernelParams,
    addr: SocketAddr,
    authority: &str,
    index: u64,
    timeout: Duration,
) -> Result<(WebSocketStream<SimStream>, Duration), UpgradeFailure> {
    let started = crate::net::sim_now();
    let mut connected = false;
    let attempt = tokio::time::timeout(timeout, async {
        let stream = crate::net::connect(kernel, addr).await.map_err(|e| {
            UpgradeFailure::of(match e.kind() {
                std::io::ErrorKind::ConnectionRefused => FailureKind::Refused,
                std::io::ErrorKind::TimedOut => FailureKind::ConnectTimeout,
                _ => FailureKind::Reset,
            })
        })?;
        connected = true;
        client::upgrade(stream, index, authority).await
    })
    .await;
    let took = crate::net::sim_now().saturating_sub(started);
    match attempt {
        Ok(Ok(ws)) => Ok((ws, took)),
        Ok(Err(failure)) => Err(failure),
        Err(_) if connected => Err(UpgradeFailure::of(FailureKind::HandshakeTimeout)),
        Err(_) => Err(UpgradeFailure::of(FailureKind::ConnectTimeout)),
    }
}

/// Builds the turmoil simulation for a run: seeded, with a pinned epoch
/// and the links' latency, jitter and loss.
pub fn build_sim<'a>(p: &Params, duration: Duration, tcp_capacity: usize) -> turmoil::Sim<'a> {
    build_sim_with_tick(p, duration, tcp_capacity, Duration::from_millis(1))
}

/// [`build_sim`] with a finer tick: network delivery happens at tick
/// boundaries, so calibration against loopback (where a burst's SYNs are
/// microseconds apart) needs sub-millisecond ticks.
pub fn build_sim_with_tick<'a>(
    p: &Params,
    duration: Duration,
    tcp_capacity: usize,
    tick: Duration,
) -> turmoil::Sim<'a> {
    sim_builder(p, duration, tcp_capacity, tick).build()
}

/// The builder [`build_sim_with_tick`] uses, for a scenario that needs
/// more of turmoil's settings (such as a wider ephemeral port range).
pub fn sim_builder(
    p: &Params,
    duration: Duration,
    tcp_capacity: usize,
    tick: Duration,
) -> turmoil::Builder {
    let mut b = turmoil::Builder::new();
    b.rng_seed(p.seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .tick_duration(tick)
        .simulation_duration(duration)
        .min_message_latency(p.latency.0)
        .max_message_latency(p.latency.0 + p.jitter.0)
        .fail_rate(p.loss)
        .tcp_capacity(tcp_capacity);
    b
}

/// Steps a simulation, checking invariants every `check_every` of
/// simulated time.
pub struct Driver<'a> {
    pub sim: turmoil::Sim<'a>,
    pub run: Rc<RunState>,
    pub slot: GatewaySlot,
    pub spec: GatewaySpec,
    pub check_every: Duration,
    /// A connection the client closed longer ago than this, still
    /// registered at the gateway, is a leaked slot.
    pub leak_grace: Duration,
    pub checks: u64,
    next_check: Duration,
    last_generation: u32,
    /// Most slots in use seen on any check, and most live connections.
    pub peak_used: u64,
    pub peak_live: u64,
    /// Most bytes queued on one connection at any check.
    pub peak_queued: usize,
}

impl<'a> Driver<'a> {
    pub fn new(
        sim: turmoil::Sim<'a>,
        run: Rc<RunState>,
        slot: GatewaySlot,
        spec: GatewaySpec,
    ) -> Self {
        let leak_grace = spec.config.session.idle_timeout + Duration::from_secs(5);
        Driver {
            sim,
            run,
            slot,
            spec,
            check_every: Duration::from_millis(100),
            leak_grace,
            checks: 0,
            next_check: Duration::ZERO,
            last_generation: 0,
            peak_used: 0,
            peak_live: 0,
            peak_queued: 0,
        }
    }

    pub fn now(&self) -> Duration {
        self.sim.elapsed()
    }

    /// One tick, then the invariant checks when due. Returns whether every
    /// client has finished.
    pub fn step(&mut self) -> Result<bool, String> {
        let done = self.sim.step().map_err(|e| e.to_string())?;
        self.run.clock.set(self.now());
        if self.now() >= self.next_check {
            self.next_check = self.now() + self.check_every;
            self.check();
        }
        Ok(done)
    }

    /// Steps until every client has finished; `fault` is called before
    /// each step with the simulated time, to inject faults at exact
    /// instants.
    pub fn run_clients(
        &mut self,
        mut fault: impl FnMut(&mut turmoil::Sim<'a>, Duration),
    ) -> Result<(), String> {
        loop {
            let now = self.now();
            fault(&mut self.sim, now);
            if self.step()? {
                return Ok(());
            }
        }
    }

    /// Slots the running gateway holds (0 when none runs).
    pub fn slots_used(&self) -> u64 {
        self.slot.get().map_or(0, |r| r.gateway.slots_used())
    }

    /// After the clients are done: keeps stepping until the gateway holds
    /// no slot, or `limit` passes. Returns the slots still held.
    pub fn drain(&mut self, limit: Duration) -> Result<u64, String> {
        self.drain_until(limit, |d| d.slots_used())
    }

    /// [`Driver::drain`] with another measure of what is still held.
    pub fn drain_until(
        &mut self,
        limit: Duration,
        held: impl Fn(&Driver<'a>) -> u64,
    ) -> Result<u64, String> {
        let until = self.now() + limit;
        loop {
            let left = held(self);
            if left == 0 || self.now() >= until {
                self.check();
                return Ok(left);
            }
            self.step()?;
        }
    }

    /// The invariants that hold at every instant between two steps.
    pub fn check(&mut self) {
        self.checks += 1;
        let Some(running) = self.slot.get() else {
            return;
        };
        if running.generation != self.last_generation {
            // A restarted gateway numbers connections afresh.
            self.last_generation = running.generation;
            self.run.conns.borrow_mut().clear();
        }
        let now = self.now();
        let seen = {
            let client_conns = self.run.conns.borrow();
            check_gateway(
                &running,
                &self.spec,
                Some((&client_conns, self.leak_grace)),
                now,
            )
        };
        self.peak_queued = self.peak_queued.max(seen.peak_queued);
        self.peak_used = self.peak_used.max(seen.used);
        self.peak_live = self.peak_live.max(seen.live);
        for p in seen.problems {
            self.run.violation(p);
        }
        self.run
            .trace
            .borrow_mut()
            .record(now, &format!("check used={} live={}", seen.used, seen.live));
    }
}

/// What clients reported about their connections, keyed by (shard, serial).
pub type ClientConns = BTreeMap<(u32, u64), ClientConn>;

/// What one check of one gateway found.
#[derive(Debug, Default)]
pub struct GatewayCheck {
    /// Slots in use and live connections over all shards.
    pub used: u64,
    pub live: u64,
    /// Most bytes queued on one connection.
    pub peak_queued: usize,
    /// Broken invariants, one line each.
    pub problems: Vec<String>,
}

/// The invariants of one running gateway at one instant: every shard
/// within its capacity, its slot table agreeing with its registered
/// connections, health and the sockets the process holds; no queue over
/// its bound; and, when the clients' own record is given, no slot
/// outliving a connection its client closed more than `grace` ago.
pub fn check_gateway(
    running: &Running,
    spec: &GatewaySpec,
    clients: Option<(&ClientConns, Duration)>,
    now: Duration,
) -> GatewayCheck {
    let gw = &running.gateway;
    let health = gw.health();
    let caps = spec.shard_capacities();
    let conns = gw.connections();
    let mut registered = vec![0u32; caps.len()];
    let hard = spec.config.session.hard_queue_bytes();
    let mut out = GatewayCheck::default();
    let problems = &mut out.problems;
    for c in &conns {
        if let Some(n) = registered.get_mut(c.id.shard.0 as usize) {
            *n += 1;
        }
        out.peak_queued = out.peak_queued.max(c.queued_bytes);
        if c.queued_bytes > hard {
            problems.push(format!(
                "connection {} queues {} bytes, over its bound of {hard}",
                c.id, c.queued_bytes
            ));
        }
        if let Some((client_conns, grace)) = clients
            && let Some(cc) = client_conns.get(&(c.id.shard.0, c.id.serial))
            && let Some(closed) = cc.closed_at
            && now.saturating_sub(closed) > grace
        {
            problems.push(format!(
                "slot of connection {} (client {}) outlived it: closed by the client at {:.3}s",
                c.id,
                cc.client,
                closed.as_secs_f64()
            ));
        }
    }
    let mut used_total = 0u64;
    let mut live_total = 0u64;
    for (i, shard) in health.shards.iter().enumerate() {
        let cap = caps.get(i).copied().unwrap_or(0);
        let used = cap.saturating_sub(shard.available);
        used_total += u64::from(used);
        live_total += u64::from(shard.connections);
        if shard.connections > used {
            problems.push(format!(
                "shard {i}: {} live connections but only {used} slots in use",
                shard.connections
            ));
        }
        if used > cap {
            problems.push(format!(
                "shard {i}: {used} slots in use over capacity {cap}"
            ));
        }
        if registered.get(i).copied().unwrap_or(0) != shard.connections {
            problems.push(format!(
                "shard {i}: slot table says {} live, {} connections registered",
                shard.connections,
                registered.get(i).copied().unwrap_or(0)
            ));
        }
    }
    if used_total != gw.slots_used() {
        problems.push(format!(
            "per-shard slots add up to {used_total}, the gateway counts {}",
            gw.slots_used()
        ));
    }
    if health.connections.current != live_total {
        problems.push(format!(
            "health reports {} connections, shards {live_total}",
            health.connections.current
        ));
    }
    let held = running.net.held();
    if used_total > held {
        problems.push(format!(
            "{used_total} slots in use but the process holds only {held} sockets: a slot outlived its connection"
        ));
    }
    out.used = used_total;
    out.live = live_total;
    out
}
/// Resolves a host name inside the simulation (for fault injection).
pub fn host_ip(sim: &turmoil::Sim<'_>, name: &str) -> IpAddr {
    sim.lookup(name)
}
