//! The gateway's Prometheus metrics. Every limit that can bite has a metric
//! here that shows it biting; every name is prefixed `surge_`.
//!
//! Hot-path counters are plain handles created once at start, so counting
//! is an atomic add with no label lookup. Gauges that summarise many
//! connections (queue bytes, throttle levels) are computed when scraped.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use surge_core::admission::Refusal;
use surge_core::connection::EndReason;
use surge_core::handshake::RejectReason;
use surge_core::protocol::CloseCode;
use surge_core::session::SessionStats;
use surge_core::throttle::ThrottleLevel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Level {
    level: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Code {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reload {
    file: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: String,
}

/// Every metric of the gateway.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    handshakes: Family<Outcome, Counter>,
    rejections: Family<Reason, Counter>,
    pub handshake_seconds: Histogram,
    pub connections: Gauge,
    pub connections_max: Gauge,
    pub handshakes_in_progress: Gauge,
    shard_connections: Family<ShardLabel, Gauge>,
    shard_capacity: Family<ShardLabel, Gauge>,
    shard_backlog: Family<ShardLabel, Gauge>,
    pub shard_imbalance_percent: Gauge<f64, AtomicU64>,
    pub ready: Gauge,
    pub published: Counter,
    pub ingest_queue: Gauge,
    pub ingest_refusals: Counter,
    pub delivered: Counter,
    pub bytes_sent: Counter,
    dropped: Family<Reason, Counter>,
    pub deduplicated: Counter,
    pub recovered: Counter,
    pub replayed: Counter,
    pub queue_bytes: Gauge,
    throttled: Family<Level, Gauge>,
    pub throttle_changes: Counter,
    pub slow_disconnects: Counter,
    disconnects: Family<Code, Counter>,
    ended: Family<Reason, Counter>,
    pub client_requests: Counter,
    pub client_errors: Counter,
    pub rate_limited: Counter,
    pub resumes: Counter,
    pub resume_gaps: Counter,
    pub broker_connected: Gauge,
    pub broker_paused: Gauge,
    pub broker_disconnects: Counter,
    pub broker_last_sseq: Gauge,
    pub broker_stream_last_sseq: Gauge,
    pub cpu_percent: Gauge,
    pub memory_bytes: Gauge,
    pub memory_reject_bytes: Gauge,
    pub open_fds: Gauge,
    pub max_fds: Gauge,
    pub accept_errors: Counter,
    fd_exhaustion_answers: Counter,
    reloads: Family<Reload, Counter>,
    /// The listener's own count, already added to `fd_exhaustion_answers`.
    fd_exhaustion_seen: std::sync::atomic::AtomicU64,
    pub tls_refusals_unanswered: Counter,
    pub tls_certificate_expiry: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("surge");
        let handshakes = Family::<Outcome, Counter>::default();
        r.register(
            "handshakes",
            "WebSocket handshakes by outcome (accepted, or the rejection reason)",
            handshakes.clone(),
        );
        let rejections = Family::<Reason, Counter>::default();
        r.register(
            "admission_rejections",
            "Connections refused at once with Retry-After, by reason: 503 (full, cpu, memory, shutting_down) or 429 (per_ip, per_user, handshakes_per_ip, handshake_rate_per_ip)",
            rejections.clone(),
        );
        // 1 ms .. ~16 s: a handshake slower than that is a timeout anyway.
        let handshake_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15),
        );
        r.register(
            "handshake_duration_seconds",
            "Time from accept to the 101 written to the socket (with the welcome frame)",
            handshake_seconds.clone(),
        );
        let connections = Gauge::default();
        r.register(
            "connections",
            "Live WebSocket connections",
            connections.clone(),
        );
        let connections_max = Gauge::default();
        r.register(
            "connections_max",
            "The connection limit (all shards)",
            connections_max.clone(),
        );
        let handshakes_in_progress = Gauge::default();
        r.register(
            "handshakes_in_progress",
            "Accepted connections still in their handshake (they hold admission slots)",
            handshakes_in_progress.clone(),
        );
        let shard_connections = Family::<ShardLabel, Gauge>::default();
        r.register(
            "shard_connections",
            "Live connections per shard",
            shard_connections.clone(),
        );
        let shard_capacity = Family::<ShardLabel, Gauge>::default();
        r.register(
            "shard_connections_max",
            "Connection slots per shard (the shards' sum is surge_connections_max)",
            shard_capacity.clone(),
        );
        let shard_imbalance_percent = Gauge::<f64, AtomicU64>::default();
        r.register(
            "shard_imbalance_percent",
            "Spread between the most and least utilised shards, percentage points (/health imbalance_percent)",
            shard_imbalance_percent.clone(),
        );
        let ready = Gauge::default();
        r.register(
            "ready",
            "1 while new connections are admitted (/readyz answers 200), else 0",
            ready.clone(),
        );
        let shard_backlog = Family::<ShardLabel, Gauge>::default();
        r.register(
            "shard_backlog_connections",
            "Connections with socket events or fan-out frames their shard has not handled yet (grows when the shard's CPU is the limit)",
            shard_backlog.clone(),
        );
        let published = Counter::default();
        r.register(
            "messages_published",
            "Messages received from the broker",
            published.clone(),
        );
        let ingest_queue = Gauge::default();
        r.register(
            "ingest_queue_messages",
            "Messages received and not yet taken by the slowest shard (its queue holds at most SURGE_INGEST_QUEUE)",
            ingest_queue.clone(),
        );
        let ingest_refusals = Counter::default();
        r.register(
            "ingest_refusals",
            "Publishes the embedded broker refused with 503 ingest_full because a shard's queue was full (with NATS the message waits in the stream instead)",
            ingest_refusals.clone(),
        );
        let delivered = Counter::default();
        r.register(
            "messages_delivered",
            "Message frames queued to clients",
            delivered.clone(),
        );
        let bytes_sent = Counter::default();
        r.register(
            "bytes_sent",
            "Bytes written to upgraded client sockets (frames of every kind)",
            bytes_sent.clone(),
        );
        let dropped = Family::<Reason, Counter>::default();
        r.register(
            "messages_dropped",
            "Messages not sent to a client: throttled (sampling at its level), queue_full, or closed_too_slow (queued, then discarded when the client was closed for being too slow)",
            dropped.clone(),
        );
        let deduplicated = Counter::default();
        r.register(
            "messages_deduplicated",
            "Live copies of messages already recovered by resume",
            deduplicated.clone(),
        );
        let recovered = Counter::default();
        r.register(
            "messages_recovered",
            "Messages delivered by resume catch-up",
            recovered.clone(),
        );
        let replayed = Counter::default();
        r.register(
            "messages_replayed",
            "Message frames re-sent for replay requests",
            replayed.clone(),
        );
        let queue_bytes = Gauge::default();
        r.register(
            "queue_bytes",
            "Bytes waiting in outbound queues (all connections)",
            queue_bytes.clone(),
        );
        let throttled = Family::<Level, Gauge>::default();
        r.register(
            "throttled_connections",
            "Connections per throttle level",
            throttled.clone(),
        );
        let throttle_changes = Counter::default();
        r.register(
            "throttle_changes",
            "Throttle level changes",
            throttle_changes.clone(),
        );
        let slow_disconnects = Counter::default();
        r.register(
            "slow_client_disconnects",
            "Clients closed with 1008 for being too slow at the heaviest throttle",
            slow_disconnects.clone(),
        );
        let disconnects = Family::<Code, Counter>::default();
        r.register(
            "disconnects",
            "Connections closed by the server, by close code",
            disconnects.clone(),
        );
        let ended = Family::<Reason, Counter>::default();
        r.register(
            "connections_ended",
            "Upgraded connections ended, by how (client_closed, protocol_error, write_timeout, too_slow, inbound_budget, shutting_down, ...)",
            ended.clone(),
        );
        let client_requests = Counter::default();
        r.register(
            "client_requests",
            "Requests received from clients",
            client_requests.clone(),
        );
        let client_errors = Counter::default();
        r.register(
            "client_errors",
            "Error frames sent to clients",
            client_errors.clone(),
        );
        let rate_limited = Counter::default();
        r.register(
            "client_rate_limited",
            "Client requests refused by the inbound rate limit",
            rate_limited.clone(),
        );
        let resumes = Counter::default();
        r.register("resumes", "Resume requests served", resumes.clone());
        let resume_gaps = Counter::default();
        r.register(
            "resume_gaps",
            "Resumes that found part of the range expired",
            resume_gaps.clone(),
        );
        let broker_connected = Gauge::default();
        r.register(
            "broker_connected",
            "1 when the broker is reachable",
            broker_connected.clone(),
        );
        let broker_paused = Gauge::default();
        r.register(
            "broker_paused",
            "1 while consumption is paused by the resource guard",
            broker_paused.clone(),
        );
        let broker_disconnects = Counter::default();
        r.register(
            "broker_disconnects",
            "Times the broker connection was lost",
            broker_disconnects.clone(),
        );
        let broker_last_sseq = Gauge::default();
        r.register(
            "broker_last_sseq",
            "The last stream sequence received from the broker and handed to the shards",
            broker_last_sseq.clone(),
        );
        let broker_stream_last_sseq = Gauge::default();
        r.register(
            "broker_stream_last_sseq",
            "The stream's last sequence as last read (NATS: polled every second); minus surge_broker_last_sseq it is the lag",
            broker_stream_last_sseq.clone(),
        );
        let cpu_percent = Gauge::default();
        r.register(
            "cpu_percent",
            "Process CPU, percent of the machine, as the guard sees it",
            cpu_percent.clone(),
        );
        let memory_bytes = Gauge::default();
        r.register(
            "memory_bytes",
            "Process resident memory",
            memory_bytes.clone(),
        );
        let memory_reject_bytes = Gauge::default();
        r.register(
            "memory_reject_bytes",
            "Resident memory at which new connections get 503 (0: no threshold known)",
            memory_reject_bytes.clone(),
        );
        let open_fds = Gauge::default();
        r.register(
            "open_fds",
            "Open file descriptors of the process (sampled every few seconds)",
            open_fds.clone(),
        );
        let max_fds = Gauge::default();
        r.register(
            "max_fds",
            "The process' open-file limit (RLIMIT_NOFILE, soft), from which the connection maximum is derived",
            max_fds.clone(),
        );
        let accept_errors = Counter::default();
        r.register(
            "accept_errors",
            "accept() failures other than descriptor exhaustion",
            accept_errors.clone(),
        );
        let fd_exhaustion_answers = Counter::default();
        r.register(
            "fd_exhaustion_answers",
            "Clients answered 503 with the spare descriptor because the file limit was reached",
            fd_exhaustion_answers.clone(),
        );
        let reloads = Family::<Reload, Counter>::default();
        r.register(
            "reloads",
            "Files re-read on SIGHUP, by file (jwt_keys, tls_cert) and result (ok, error: the old contents stay in use)",
            reloads.clone(),
        );
        let tls_refusals_unanswered = Counter::default();
        r.register(
            "tls_refusals_unanswered",
            "Refused clients of the TLS listener closed without a handshake (too many refusal handshakes in flight)",
            tls_refusals_unanswered.clone(),
        );
        let tls_certificate_expiry = Gauge::default();
        r.register(
            "tls_certificate_expiry_timestamp_seconds",
            "Unix time at which the served certificate expires (0 without TLS)",
            tls_certificate_expiry.clone(),
        );
        // Every known label value exists from the start at 0: Prometheus'
        // increase() and rate() see nothing of a series' first sample, so an
        // alert on refusals would otherwise miss the first burst.
        for reason in Refusal::METRIC_LABELS {
            let _ = rejections.get_or_create(&Reason {
                reason: reason.into(),
            });
        }
        for outcome in RejectReason::METRIC_LABELS.iter().chain(&[
            "accepted",
            "io",
            "probe",
            "tls_timeout",
            "tls_failed",
        ]) {
            let _ = handshakes.get_or_create(&Outcome {
                outcome: (*outcome).into(),
            });
        }
        for reason in ["throttled", "queue_full", "closed_too_slow"] {
            let _ = dropped.get_or_create(&Reason {
                reason: reason.into(),
            });
        }
        Metrics {
            registry: r,
            handshakes,
            rejections,
            handshake_seconds,
            connections,
            connections_max,
            handshakes_in_progress,
            shard_connections,
            shard_capacity,
            shard_backlog,
            shard_imbalance_percent,
            ready,
            published,
            ingest_queue,
            ingest_refusals,
            delivered,
            bytes_sent,
            dropped,
            deduplicated,
            recovered,
            replayed,
            queue_bytes,
            throttled,
            throttle_changes,
            slow_disconnects,
            disconnects,
            ended,
            client_requests,
            client_errors,
            rate_limited,
            resumes,
            resume_gaps,
            broker_connected,
            broker_paused,
            broker_disconnects,
            broker_last_sseq,
            broker_stream_last_sseq,
            cpu_percent,
            memory_bytes,
            memory_reject_bytes,
            open_fds,
            max_fds,
            accept_errors,
            fd_exhaustion_answers,
            reloads,
            fd_exhaustion_seen: std::sync::atomic::AtomicU64::new(0),
            tls_refusals_unanswered,
            tls_certificate_expiry,
        }
    }

    /// Adds what a session counted since its driver last took its
    /// counters: the events only the session sees (error frames,
    /// rate-limit refusals, replays, throttle level changes) and the live
    /// copies of messages a resume delivered, whether the session held them
    /// while the resume ran or they arrived after it.
    pub fn session_counts(&self, counts: &SessionStats) {
        self.client_errors.inc_by(u64::from(counts.request_errors));
        self.deduplicated.inc_by(u64::from(counts.duplicates));
        self.rate_limited.inc_by(u64::from(counts.rate_limited));
        self.replayed.inc_by(u64::from(counts.replayed));
        self.throttle_changes
            .inc_by(u64::from(counts.throttle_changes));
        self.client_requests.inc_by(u64::from(counts.requests));
        self.recovered.inc_by(u64::from(counts.recovered));
        self.resume_gaps.inc_by(u64::from(counts.resume_gaps));
        if counts.discarded > 0 {
            self.dropped("closed_too_slow")
                .inc_by(u64::from(counts.discarded));
        }
    }

    /// Brings `surge_fd_exhaustion_answers_total` up to the listener's own
    /// running count (kept by the listener, which knows no metrics).
    pub fn sync_fd_exhaustion_answers(&self, total: u64) {
        use std::sync::atomic::Ordering;
        let seen = self.fd_exhaustion_seen.fetch_max(total, Ordering::Relaxed);
        if total > seen {
            self.fd_exhaustion_answers.inc_by(total - seen);
        }
    }

    pub fn handshake(&self, outcome: &str) -> Counter {
        self.handshakes
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .clone()
    }

    pub fn handshake_rejected(&self, reason: &RejectReason) {
        self.handshake(reason.metric_label()).inc();
    }

    /// Counts a reload of `file` on SIGHUP.
    pub fn reloaded(&self, file: &str, ok: bool) {
        self.reloads
            .get_or_create(&Reload {
                file: file.into(),
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    pub fn refused(&self, refusal: &Refusal) {
        self.rejections
            .get_or_create(&Reason {
                reason: refusal.metric_label().into(),
            })
            .inc();
    }

    pub fn dropped(&self, reason: &'static str) -> Counter {
        self.dropped
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .clone()
    }

    pub fn disconnect(&self, code: CloseCode) {
        self.disconnects
            .get_or_create(&Code {
                code: code.code().to_string(),
            })
            .inc();
    }

    /// Counts a connection's end by its typed reason (and, for a server
    /// close, its close code; for a client too slow, the slow counter).
    pub fn ended(&self, end: EndReason) {
        self.ended
            .get_or_create(&Reason {
                reason: end.metric_label().into(),
            })
            .inc();
        if let EndReason::ServerClosed(reason) = end {
            self.disconnect(reason.code());
        }
        if end.is_too_slow() {
            self.slow_disconnects.inc();
        }
    }

    pub fn set_shard_backlog(&self, shard: u32, pending: usize) {
        self.shard_backlog
            .get_or_create(&ShardLabel {
                shard: shard.to_string(),
            })
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    pub fn set_shard_connections(&self, shard: u32, live: u32, capacity: u32) {
        let label = ShardLabel {
            shard: shard.to_string(),
        };
        self.shard_connections
            .get_or_create(&label)
            .set(i64::from(live));
        self.shard_capacity
            .get_or_create(&label)
            .set(i64::from(capacity));
    }

    pub fn set_throttled(&self, counts: [u64; 4]) {
        for level in ThrottleLevel::ALL {
            self.throttled
                .get_or_create(&Level {
                    level: level.as_str().into(),
                })
                .set(i64::try_from(counts[level as usize]).unwrap_or(i64::MAX));
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
