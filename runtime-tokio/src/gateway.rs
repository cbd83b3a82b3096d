//! The gateway assembled from its parts: listener, acceptor, shards, hub
//! and broker. Both the `surge` binary and the simulator build it here, so
//! the simulator runs exactly what production runs.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use serde::Serialize;
use surge_core::admission::{Admission, ClientLimitConfig, GuardConfig, NotReady, ResourceSample};
use surge_core::auth::JwtAuth;
use surge_core::config::Config;
use surge_core::handshake::{HandshakeConfig, overloaded_response, refusal_response};
use surge_core::session::SessionConfig;
use surge_core::throttle::ThrottleConfig;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::broker::{Broker, Hub};
use crate::clock::Clock;
use crate::context::Context;
use crate::metrics::Metrics;
pub use crate::shard::ConnectionState;
use crate::shard::{self, Inbox, ShardView};
use crate::slot::SlotGuard;
use crate::sync::lock;
use crate::tls::{RefusalHandshakes, TlsConfig, TlsPoller, Upgraded, answer_refusal};
use crate::transport::{Listener, SocketOptionReport, Transport};
use crate::upgrade;

/// Everything the gateway needs to know, resolved from `Config` (and from
/// host facts the server derived, such as max connections and shards).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub backlog: u32,
    pub max_connections: u32,
    pub shards: u32,
    pub handshake: HandshakeConfig,
    pub session: SessionConfig,
    pub guard: GuardConfig,
    /// Per-address and per-user limits (all off by default).
    pub client_limits: ClientLimitConfig,
    /// Messages buffered between the hub and each shard's fan-out
    /// (`SURGE_INGEST_QUEUE`).
    pub shard_queue: usize,
    /// A connection whose writes stall this long is closed.
    pub write_timeout: Duration,
    /// Not ready while the broker is disconnected.
    pub ready_requires_broker: bool,
    /// TLS on the public listener (`wss://`); `None` for plain `ws://`.
    pub tls: Option<TlsConfig>,
}

impl GatewayConfig {
    /// Turns JWT authentication on: the handshake verifies tokens and
    /// sessions enforce their channels, expiry and refresh.
    pub fn set_jwt(&mut self, auth: Arc<JwtAuth>) {
        self.handshake.jwt = Some(Arc::clone(&auth));
        self.session.auth = Some(auth);
    }

    /// From the validated configuration plus the derived values.
    pub fn from_config(config: &Config, max_connections: u32, shards: u32) -> Self {
        GatewayConfig {
            listen: config.listen,
            backlog: config.backlog,
            max_connections,
            shards,
            handshake: HandshakeConfig {
                path: config.ws_path.clone(),
                max_head_bytes: config.max_head_bytes,
                timeout: config.handshake_timeout,
                allowed_origins: config.allowed_origins.clone(),
                subprotocols: Vec::new(),
                auth_tokens: config
                    .auth_tokens
                    .iter()
                    .map(|t| t.expose().to_owned())
                    .collect(),
                probe_path: config.public_healthz.then(|| "/healthz".to_owned()),
                // Keys are read by the server: see `set_jwt`.
                jwt: None,
                compression: config.compression,
            },
            session: SessionConfig {
                max_subscriptions: config.max_subscriptions,
                replay_window: config.replay_window,
                replay_max_bytes: config.replay_max_bytes,
                outbound_queue_bytes: config.outbound_queue_bytes,
                max_message_bytes: config.max_message_bytes,
                client_rate_per_sec: config.client_rate,
                client_burst: config.client_burst,
                inbound_frames_per_sec: config.inbound_frames_per_sec,
                inbound_bytes_per_sec: config.inbound_bytes_per_sec,
                compression_min_bytes: config.compression_min_bytes,
                ping_interval: config.ping_interval,
                idle_timeout: config.idle_timeout,
                throttle: ThrottleConfig {
                    full_events_to_escalate: config.throttle_full_events,
                    recovery_window: config.throttle_recovery,
                },
                ..SessionConfig::default()
            },
            guard: GuardConfig {
                cpu_reject_percent: config.cpu_reject_percent,
                cpu_pause_percent: config.cpu_pause_percent,
                memory_reject_bytes: config.memory_reject_bytes,
                memory_pause_bytes: config.memory_pause_bytes,
                retry_after: config.retry_after,
                ..GuardConfig::default()
            },
            client_limits: ClientLimitConfig {
                connections_per_ip: config.max_connections_per_ip,
                connections_per_user: config.max_connections_per_user,
                handshakes_per_ip: config.max_handshakes_per_ip,
                handshake_rate_per_ip: config.handshake_rate_per_ip,
            },
            shard_queue: config.ingest_queue as usize,
            write_timeout: config.idle_timeout,
            ready_requires_broker: config.ready_requires_broker,
            // Certificates are read by the server.
            tls: None,
        }
    }

    /// A small configuration for tests and the simulator.
    pub fn for_tests(listen: SocketAddr, max_connections: u32, shards: u32) -> Self {
        Self::from_config(
            &Config {
                listen,
                ..Config::default()
            },
            max_connections,
            shards,
        )
    }
}

/// `/health` as JSON (PROTOCOL.md, "Admin listener").
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub connections: ConnectionsHealth,
    pub shards: Vec<ShardHealth>,
    pub imbalance_percent: f64,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub broker: BrokerHealth,
    pub uptime_s: u64,
    pub version: &'static str,
    /// Why the status is degraded, if it is.
    pub problems: Vec<String>,
    pub socket_options: Vec<SocketOptionReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsHealth {
    pub current: u64,
    pub max: u64,
    /// Accepted connections still in their handshake; they hold slots.
    pub handshaking: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardHealth {
    pub id: u32,
    pub connections: u32,
    pub available: u32,
    pub utilization: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokerHealth {
    pub kind: &'static str,
    pub connected: bool,
    pub paused: bool,
}

/// A running gateway.
pub struct Gateway {
    ctx: Arc<Context>,
    /// Weak: the shard's task owns the shard (and its sockets), so a
    /// shard whose task is gone (aborted, or its host crashed in the
    /// simulator) closes its sockets even while the gateway is kept.
    shards: Vec<Weak<dyn ShardView>>,
    hub: Hub,
    local_addr: SocketAddr,
    socket_report: Vec<SocketOptionReport>,
    fd_exhaustion_answers: Option<Arc<std::sync::atomic::AtomicU64>>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Gateway {
    /// Binds the listener and starts accepting. `make_broker` receives the
    /// hub the broker must feed.
    pub async fn start<T, F>(
        transport: &T,
        config: GatewayConfig,
        make_broker: F,
    ) -> io::Result<Gateway>
    where
        T: Transport,
        F: FnOnce(Hub, Clock) -> Arc<dyn Broker>,
    {
        let clock = Clock::start();
        let metrics = Arc::new(Metrics::new());
        metrics
            .connections_max
            .set(i64::from(config.max_connections));
        if let Some(bytes) = config.guard.memory_reject_bytes {
            metrics
                .memory_reject_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let admission = Arc::new(Mutex::new(
            Admission::new(config.max_connections, config.shards, config.guard.clone())
                .with_client_limits(config.client_limits),
        ));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let ctx = Arc::new(Context {
            clock,
            admission: Arc::clone(&admission),
            handshake_config: Arc::new(config.handshake.clone()),
            session_config: Arc::new(SessionConfig {
                write_timeout: config.write_timeout,
                ..config.session.clone()
            }),
            metrics: Arc::clone(&metrics),
            shutdown: shutdown_rx,
            ready_requires_broker: config.ready_requires_broker,
            tls: config.tls.clone(),
            broker: OnceLock::new(),
        });
        let mut tasks = Vec::new();
        let mut senders = Vec::new();
        let mut shards: Vec<Weak<dyn ShardView>> = Vec::new();
        let mut inboxes = Vec::new();
        for _ in 0..config.shards.max(1) {
            let (tx, rx) = mpsc::channel(config.shard_queue.max(1));
            senders.push(tx);
            let poller = TlsPoller::new(transport.poller()?);
            let (cell, task) = shard::start(poller, Arc::clone(&ctx), rx);
            inboxes.push(cell.inbox());
            let cell: Arc<dyn ShardView> = cell;
            shards.push(Arc::downgrade(&cell));
            tasks.push(tokio::spawn(task));
        }
        let hub = Hub::new(senders, Arc::clone(&metrics));
        let broker = make_broker(hub.clone(), clock);
        let _ = ctx.broker.set(broker);
        let listener = transport.bind(config.listen, config.backlog).await?;
        let local_addr = listener.local_addr()?;
        let socket_report = listener.report();
        let fd_exhaustion_answers = listener.fd_exhaustion_answers();
        tracing::info!(%local_addr, max_connections = config.max_connections, shards = config.shards, "gateway listening");
        let retry_after = config.guard.retry_after;
        // Unconstrained: tokio's cooperative budget would otherwise make the
        // acceptor yield every 128 accepts and queue behind thousands of
        // handshake tasks during a surge; accepting is cheap and must drain
        // the kernel's queue in one go (the seed lost 18.5 % to a full one).
        tasks.push(tokio::spawn(tokio::task::unconstrained(accept_loop(
            listener,
            Arc::clone(&ctx),
            inboxes,
            retry_after,
        ))));
        Ok(Gateway {
            ctx,
            shards,
            hub,
            local_addr,
            socket_report,
            fd_exhaustion_answers,
            shutdown: shutdown_tx,
            tasks: Mutex::new(tasks),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn broker(&self) -> &dyn Broker {
        self.ctx.broker()
    }

    /// The hub, for tests that feed messages directly.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn metrics(&self) -> &Metrics {
        &self.ctx.metrics
    }

    pub fn clock(&self) -> Clock {
        self.ctx.clock
    }

    /// Feeds the resource guard and applies its pause decision.
    pub fn observe(&self, sample: ResourceSample) {
        let paused = {
            let mut admission = lock(&self.ctx.admission);
            admission.observe(sample, self.ctx.clock.now());
            admission.pause_broker()
        };
        self.ctx.broker().set_paused(paused);
        let m = &self.ctx.metrics;
        m.broker_paused.set(i64::from(paused));
        m.cpu_percent.set(sample.cpu_percent.round() as i64);
        m.memory_bytes
            .set(i64::try_from(sample.memory_bytes).unwrap_or(i64::MAX));
    }

    /// Slots in use (reserved + live) over all shards.
    pub fn slots_used(&self) -> u64 {
        lock(&self.ctx.admission).used()
    }

    /// Every registered (upgraded) connection with its session's queue and
    /// throttle state, in shard then serial order: what the simulator's
    /// invariant checks compare with the slot tables and the clients.
    pub fn connections(&self) -> Vec<ConnectionState> {
        let mut out = Vec::new();
        for shard in self.shards.iter().filter_map(Weak::upgrade) {
            shard.connections(&mut out);
        }
        out
    }

    pub fn health(&self) -> Health {
        let admission = lock(&self.ctx.admission);
        let shards: Vec<ShardHealth> = admission
            .shards()
            .iter()
            .enumerate()
            .map(|(i, t)| ShardHealth {
                id: i as u32,
                connections: t.live(),
                available: t.available(),
                utilization: (t.utilization() * 10_000.0).round() / 10_000.0,
            })
            .collect();
        let broker = self.ctx.broker();
        let mut problems = Vec::new();
        if !broker.connected() {
            problems.push(format!("{} broker disconnected", broker.kind()));
        }
        if let Err(refusal) = admission.guard().check() {
            problems.push(format!("refusing new connections: {refusal}"));
        }
        let paused = admission.pause_broker();
        if paused {
            problems.push("broker consumption paused by the resource guard".into());
        }
        Health {
            status: if problems.is_empty() {
                "ok"
            } else {
                "degraded"
            },
            connections: ConnectionsHealth {
                current: admission.live(),
                max: admission.capacity(),
                handshaking: admission.handshaking(),
            },
            shards,
            imbalance_percent: (admission.imbalance_percent() * 100.0).round() / 100.0,
            cpu_percent: (admission.guard().cpu_percent() * 10.0).round() / 10.0,
            memory_bytes: admission.guard().memory_bytes(),
            broker: BrokerHealth {
                kind: broker.kind(),
                connected: broker.connected(),
                paused,
            },
            uptime_s: self.ctx.clock.uptime().as_secs(),
            version: env!("CARGO_PKG_VERSION"),
            problems,
            socket_options: self.socket_report.clone(),
        }
    }

    /// Prometheus text, with the summarising gauges refreshed.
    pub fn metrics_text(&self) -> String {
        self.refresh_gauges();
        self.ctx.metrics.encode()
    }

    /// Sets the gauges that summarise state kept elsewhere (admission's
    /// tables, the shards' connections, the broker) to their values now.
    fn refresh_gauges(&self) {
        let m = &self.ctx.metrics;
        {
            let admission = lock(&self.ctx.admission);
            for (i, t) in admission.shards().iter().enumerate() {
                m.set_shard_connections(i as u32, t.live(), t.capacity());
            }
            m.shard_imbalance_percent.set(admission.imbalance_percent());
            m.handshakes_in_progress
                .set(i64::try_from(admission.handshaking()).unwrap_or(i64::MAX));
        }
        let mut levels = [0u64; 4];
        let mut queue_bytes = 0u64;
        for (i, shard) in self.shards.iter().enumerate() {
            if let Some(shard) = shard.upgrade() {
                shard.tally(&mut levels, &mut queue_bytes);
                m.set_shard_backlog(i as u32, shard.backlog());
            }
        }
        m.set_throttled(levels);
        m.ingest_queue
            .set(i64::try_from(self.hub.queued()).unwrap_or(i64::MAX));
        m.queue_bytes
            .set(i64::try_from(queue_bytes).unwrap_or(i64::MAX));
        let broker = self.ctx.broker();
        m.broker_connected.set(i64::from(broker.connected()));
        let position = broker.position();
        let gauge = |v: Option<u64>| v.map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX));
        m.broker_last_sseq.set(gauge(position.last_received));
        m.broker_stream_last_sseq.set(gauge(position.stream_last));
        m.ready.set(i64::from(self.ctx.readiness().is_ok()));
        if let Some(answers) = &self.fd_exhaustion_answers {
            m.sync_fd_exhaustion_answers(answers.load(std::sync::atomic::Ordering::Relaxed));
        }
    }

    /// Whether new connections would be admitted (`/readyz`).
    pub fn readiness(&self) -> Result<(), NotReady> {
        self.ctx.readiness()
    }

    /// Starts draining: from now on readiness is false and admission
    /// refuses; connected clients are still served until [`Self::shutdown`].
    pub fn begin_drain(&self) {
        lock(&self.ctx.admission).begin_shutdown();
    }

    /// Draining has begun: nothing new will be delivered for long.
    pub fn is_draining(&self) -> bool {
        lock(&self.ctx.admission).is_shutting_down()
    }

    /// Stops accepting, closes every connection with 1001, and waits up to
    /// `drain` for them to finish.
    pub async fn shutdown(&self, drain: Duration) {
        self.begin_drain();
        let _ = self.shutdown.send(true);
        for shard in self.shards.iter().filter_map(Weak::upgrade) {
            shard.shutdown();
        }
        let deadline = tokio::time::Instant::now() + drain;
        while lock(&self.ctx.admission).used() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = lock(&self.ctx.admission).used();
        if left > 0 {
            tracing::warn!(left, "drain timeout: connections still open");
        }
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

/// Accepts connections, admits or refuses each at once, and never waits on
/// a handshake.
async fn accept_loop<L: Listener>(
    mut listener: L,
    ctx: Arc<Context>,
    shards: Vec<mpsc::UnboundedSender<Inbox<Upgraded<L::Stream>>>>,
    retry_after: Duration,
) {
    let secs = u32::try_from(retry_after.as_secs().max(1)).unwrap_or(u32::MAX);
    let overloaded: Arc<[u8]> = overloaded_response(secs).response.into();
    let tls_refusals = RefusalHandshakes::default();
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let (mut stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                ctx.metrics.accept_errors.inc();
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let admitted = lock(&ctx.admission).admit(peer.ip(), ctx.clock.now());
        match admitted {
            Ok(reservation) => {
                let shard = shards[reservation.id().shard.0 as usize].clone();
                let guard = SlotGuard::new(Arc::clone(&ctx.admission), reservation);
                let accepted = ctx.clock.now();
                tokio::spawn(upgrade::run(
                    stream,
                    guard,
                    Arc::clone(&ctx),
                    shard,
                    accepted,
                ));
            }
            Err(refusal) => {
                ctx.metrics.refused(&refusal);
                tracing::debug!(reason = %refusal, status = refusal.status(), "connection refused");
                // The 503 is shared (a full gateway refuses many at once);
                // a per-client 429 says which limit and when to retry.
                let response: Arc<[u8]> = if refusal.is_per_client() {
                    refusal_response(&refusal, retry_after).response.into()
                } else {
                    Arc::clone(&overloaded)
                };
                // On TLS the answer needs a handshake first: a bounded number
                // get one, the rest are closed at once (see `tls::refusal`).
                match &ctx.tls {
                    None => {
                        tokio::spawn(async move {
                            crate::linger::answer_and_linger(&mut stream, &response).await;
                        });
                    }
                    Some(tls) => match tls_refusals.try_acquire() {
                        Some(permit) => {
                            tokio::spawn(answer_refusal(stream, tls.clone(), response, permit));
                        }
                        None => {
                            ctx.metrics.tls_refusals_unanswered.inc();
                            drop(stream);
                        }
                    },
                }
            }
        }
    }
}
