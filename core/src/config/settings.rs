//! The table of settings: names, defaults and one-line docs, plus the rule
//! each value must follow. The server generates `.env.example` and `--help`
//! from [`SETTINGS`], so this table is the one place a setting is described.

use std::time::Duration;

use super::rules::{Spec, UNBOUNDED};
use super::{LogFormat, LogLevel, SocketPreset};

/// One configuration setting as the user sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Name of the `Config` field and of the JSON key, e.g. `backlog`.
    pub key: &'static str,
    /// Environment variable (and `.env` key), e.g. `SURGE_BACKLOG`.
    pub env: &'static str,
    /// Command-line flag, e.g. `--backlog`.
    pub flag: &'static str,
    /// The default as text: either a value the setting accepts, or
    /// [`DERIVED`] (the server computes it at start) or [`UNSET`] (the
    /// feature is off).
    pub default: &'static str,
    /// What it does and why the default is what it is, in one line.
    pub doc: &'static str,
}

/// [`Setting::default`] of a value the server derives at start (from the CPU
/// count, memory or the open-file limit) and prints.
pub const DERIVED: &str = "derived";
/// [`Setting::default`] of a setting that is off unless given a value.
pub const UNSET: &str = "unset";

impl Setting {
    /// The setting whose environment variable is `env`.
    pub fn by_env(env: &str) -> Option<&'static Setting> {
        SETTINGS.iter().find(|s| s.env == env)
    }

    /// The setting whose command-line flag is `flag` (with its `--`).
    pub fn by_flag(flag: &str) -> Option<&'static Setting> {
        SETTINGS.iter().find(|s| s.flag == flag)
    }

    /// The default as a value to write in a `.env` file, or `None` when the
    /// default is [`DERIVED`] or [`UNSET`] (leave the variable out).
    pub fn literal_default(&self) -> Option<&'static str> {
        (self.default != DERIVED && self.default != UNSET).then_some(self.default)
    }

    /// Whether the value is a credential, printed only as `***`.
    pub fn is_secret(&self) -> bool {
        self.spec().is_secret()
    }

    /// The rule a value must follow, e.g. "must be an integer from 1 to 65535".
    pub fn rule(&self) -> String {
        self.spec().rule()
    }

    pub(super) fn spec(&self) -> Spec {
        spec(self.env)
    }
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

const fn int(min: u64, max: u64) -> Spec {
    Spec::Int {
        min,
        max,
        optional: false,
    }
}
/// An integer the server derives when unset.
const fn derived_int(min: u64, max: u64) -> Spec {
    Spec::Int {
        min,
        max,
        optional: true,
    }
}
const fn bytes(min: u64, max: u64) -> Spec {
    Spec::Bytes {
        min,
        max,
        optional: false,
    }
}
/// A size the server derives when unset.
const fn derived_bytes(min: u64, max: u64) -> Spec {
    Spec::Bytes {
        min,
        max,
        optional: true,
    }
}
const fn duration(min: Duration, max: Duration) -> Spec {
    Spec::Dur {
        min,
        max,
        whole_seconds: false,
    }
}
const fn whole_seconds(min: u64, max: u64) -> Spec {
    Spec::Dur {
        min: secs(min),
        max: secs(max),
        whole_seconds: true,
    }
}
const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The rule of each setting. A name missing here is an unknown setting,
/// which the tests rule out for every entry of [`SETTINGS`].
fn spec(env: &str) -> Spec {
    match env {
        "SURGE_LISTEN" | "SURGE_ADMIN_LISTEN" => Spec::SocketAddr,
        "SURGE_WS_PATH" => Spec::WsPath,
        "SURGE_MAX_CONNECTIONS" => derived_int(1, 10_000_000),
        "SURGE_SHARDS" => derived_int(1, 1024),
        "SURGE_BACKLOG" => int(1, 65_535),
        "SURGE_HANDSHAKE_TIMEOUT" => duration(Duration::from_millis(100), secs(300)),
        "SURGE_MAX_HEAD_BYTES" => bytes(KIB, 64 * KIB),
        "SURGE_ALLOWED_ORIGINS" => Spec::Origins,
        "SURGE_AUTH_TOKENS" => Spec::Tokens,
        "SURGE_MAX_MESSAGE_BYTES" => bytes(512, MIB),
        "SURGE_CLIENT_RATE" => int(0, 100_000),
        "SURGE_CLIENT_BURST" => int(1, 100_000),
        "SURGE_MAX_SUBSCRIPTIONS" => int(1, 10_000),
        "SURGE_OUTBOUND_QUEUE_BYTES" => bytes(4 * KIB, 64 * MIB),
        "SURGE_REPLAY_WINDOW" => int(0, 100_000),
        "SURGE_REPLAY_MAX_BYTES" => bytes(KIB, 64 * MIB),
        "SURGE_PING_INTERVAL" => duration(secs(1), secs(3_600)),
        "SURGE_IDLE_TIMEOUT" => duration(secs(1), secs(86_400)),
        "SURGE_THROTTLE_FULL_EVENTS" => int(1, 100),
        "SURGE_THROTTLE_RECOVERY" => duration(secs(1), secs(3_600)),
        "SURGE_CPU_REJECT_PERCENT" | "SURGE_CPU_PAUSE_PERCENT" => Spec::Percent,
        "SURGE_MEMORY_REJECT_BYTES" | "SURGE_MEMORY_PAUSE_BYTES" => derived_bytes(MIB, UNBOUNDED),
        "SURGE_RETRY_AFTER" => whole_seconds(1, 3_600),
        "SURGE_BROKER_RATE" | "SURGE_BROADCAST_RATE" => int(0, 10_000_000),
        "SURGE_NATS_URL" => Spec::NatsUrl,
        "SURGE_NATS_TOKEN" | "SURGE_NATS_PASSWORD" => Spec::Secret,
        "SURGE_NATS_USER" => Spec::Text,
        "SURGE_NATS_CREDS" | "SURGE_NATS_TLS_CA" => Spec::FilePath,
        "SURGE_JS_STREAM" => Spec::StreamName,
        "SURGE_JS_SUBJECTS" => Spec::Subjects,
        "SURGE_JS_MAX_AGE" => duration(secs(1), secs(365 * 86_400)),
        "SURGE_JS_MAX_MSGS" => int(1, UNBOUNDED),
        "SURGE_JS_MAX_BYTES" => bytes(MIB, UNBOUNDED),
        "SURGE_JS_REPLICAS" => int(1, 5),
        "SURGE_JS_UPDATE_STREAM" => Spec::Bool,
        "SURGE_SOCKET_PRESET" => Spec::Choice(SocketPreset::NAMES),
        "SURGE_SHUTDOWN_DRAIN" => duration(secs(0), secs(600)),
        "SURGE_SHUTDOWN_DELAY" => duration(secs(0), secs(600)),
        "SURGE_READY_REQUIRES_BROKER" => Spec::Bool,
        "SURGE_PUBLIC_HEALTHZ" => Spec::Bool,
        "SURGE_ADMIN_MAX_BODY_BYTES" => bytes(KIB, 64 * MIB),
        "SURGE_LOG_LEVEL" => Spec::Choice(LogLevel::NAMES),
        "SURGE_LOG_FORMAT" => Spec::Choice(LogFormat::NAMES),
        _ => Spec::Unknown,
    }
}

/// Every setting, in the order `--help`, `.env.example` and the effective
/// configuration list them: listeners, connections, handshake, per-client
/// limits, throttle, resource guard, broker, process.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "listen",
        env: "SURGE_LISTEN",
        flag: "--listen",
        default: "0.0.0.0:8080",
        doc: "Public WebSocket listener (IP:port); all interfaces, so clients connect directly with no proxy hop.",
    },
    Setting {
        key: "admin_listen",
        env: "SURGE_ADMIN_LISTEN",
        flag: "--admin-listen",
        default: "127.0.0.1:9090",
        doc: "Admin listener for /health, /metrics and POST /publish; loopback only, because /publish needs no credentials.",
    },
    Setting {
        key: "ws_path",
        env: "SURGE_WS_PATH",
        flag: "--ws-path",
        default: "/ws",
        doc: "HTTP path of the WebSocket upgrade; requests for any other path get 404.",
    },
    Setting {
        key: "max_connections",
        env: "SURGE_MAX_CONNECTIONS",
        flag: "--max-connections",
        default: DERIVED,
        doc: "Live connections across all shards; unset = derived from memory and the open-file limit (printed at start), so a full gateway answers 503 instead of letting clients time out.",
    },
    Setting {
        key: "shards",
        env: "SURGE_SHARDS",
        flag: "--shards",
        default: DERIVED,
        doc: "Shards that each accept and serve their own connections; unset = one per CPU, so every core works and none contends for another's connections.",
    },
    Setting {
        key: "backlog",
        env: "SURGE_BACKLOG",
        flag: "--backlog",
        default: "4096",
        doc: "Listen backlog; large so a connection surge waits in the kernel instead of being dropped (a ~128 backlog failed 18.5 % of a surge); the kernel caps it at net.core.somaxconn and the effective value is logged.",
    },
    Setting {
        key: "handshake_timeout",
        env: "SURGE_HANDSHAKE_TIMEOUT",
        flag: "--handshake-timeout",
        default: "10s",
        doc: "Time from accept for the upgrade request to arrive complete; a slower client is closed and its slot freed; 10s because 5s lost real clients under load.",
    },
    Setting {
        key: "max_head_bytes",
        env: "SURGE_MAX_HEAD_BYTES",
        flag: "--max-head-bytes",
        default: "8KiB",
        doc: "Largest upgrade request head (431 beyond it); 8KiB fits browsers' headers with large cookies and bounds what a pending handshake can hold.",
    },
    Setting {
        key: "allowed_origins",
        env: "SURGE_ALLOWED_ORIGINS",
        flag: "--allowed-origins",
        default: UNSET,
        doc: "Comma-separated Origin allowlist (scheme://host[:port]), others get 403; unset = any origin, for non-browser clients and development.",
    },
    Setting {
        key: "auth_tokens",
        env: "SURGE_AUTH_TOKENS",
        flag: "--auth-tokens",
        default: UNSET,
        doc: "Comma-separated tokens accepted at the upgrade (?token= or Authorization: Bearer), others get 401; secret; unset = no authentication.",
    },
    Setting {
        key: "max_message_bytes",
        env: "SURGE_MAX_MESSAGE_BYTES",
        flag: "--max-message-bytes",
        default: "16KiB",
        doc: "Largest frame a client may send (close 1009 beyond it); client requests are small JSON, so 16KiB is ample and caps per-read memory.",
    },
    Setting {
        key: "client_rate",
        env: "SURGE_CLIENT_RATE",
        flag: "--client-rate",
        default: "20",
        doc: "Requests per second a client may send (0 = unlimited); 20 is far above subscribe/ping traffic and stops a flooding client.",
    },
    Setting {
        key: "client_burst",
        env: "SURGE_CLIENT_BURST",
        flag: "--client-burst",
        default: "40",
        doc: "Requests a client may send at once before the rate applies; 40 lets a reconnecting client resubscribe and replay without waiting.",
    },
    Setting {
        key: "max_subscriptions",
        env: "SURGE_MAX_SUBSCRIPTIONS",
        flag: "--max-subscriptions",
        default: "100",
        doc: "Subscriptions per connection (more get too_many_subscriptions); bounds one client's share of the subscription index.",
    },
    Setting {
        key: "outbound_queue_bytes",
        env: "SURGE_OUTBOUND_QUEUE_BYTES",
        flag: "--outbound-queue-bytes",
        default: "256KiB",
        doc: "Bytes queued for one connection before the queue counts as full and throttling starts; absorbs bursts without buffering without bound for a slow client.",
    },
    Setting {
        key: "replay_window",
        env: "SURGE_REPLAY_WINDOW",
        flag: "--replay-window",
        default: "100",
        doc: "Messages kept per connection for replay requests (0 disables replay); 100 covers a short gap, and the ring grows only as messages arrive.",
    },
    Setting {
        key: "replay_max_bytes",
        env: "SURGE_REPLAY_MAX_BYTES",
        flag: "--replay-max-bytes",
        default: "256KiB",
        doc: "Byte cap of one connection's replay ring, whichever of it and the window is reached first; bounds memory when messages are large.",
    },
    Setting {
        key: "ping_interval",
        env: "SURGE_PING_INTERVAL",
        flag: "--ping-interval",
        default: "25s",
        doc: "Interval of server pings; 25s keeps connections alive through proxies and load balancers that cut idle ones after 30s or more.",
    },
    Setting {
        key: "idle_timeout",
        env: "SURGE_IDLE_TIMEOUT",
        flag: "--idle-timeout",
        default: "1m",
        doc: "A connection that sends nothing, not even a pong, for this long is closed; must exceed the ping interval, and 60s allows a missed pong.",
    },
    Setting {
        key: "throttle_full_events",
        env: "SURGE_THROTTLE_FULL_EVENTS",
        flag: "--throttle-full-events",
        default: "3",
        doc: "Consecutive full-queue events before a connection's throttle level rises; 3 ignores a single spike but reacts within one burst.",
    },
    Setting {
        key: "throttle_recovery",
        env: "SURGE_THROTTLE_RECOVERY",
        flag: "--throttle-recovery",
        default: "30s",
        doc: "Quiet time (no full queue) before a throttled connection's level falls by one; 30s keeps levels from flapping.",
    },
    Setting {
        key: "cpu_reject_percent",
        env: "SURGE_CPU_REJECT_PERCENT",
        flag: "--cpu-reject-percent",
        default: "75",
        doc: "CPU use (percent) at which new connections get 503 + Retry-After; 75 leaves headroom to serve the connections already open.",
    },
    Setting {
        key: "cpu_pause_percent",
        env: "SURGE_CPU_PAUSE_PERCENT",
        flag: "--cpu-pause-percent",
        default: "80",
        doc: "CPU use (percent) at which broker consumption pauses; must be >= the reject threshold, since turning newcomers away comes before slowing everyone's feed.",
    },
    Setting {
        key: "memory_reject_bytes",
        env: "SURGE_MEMORY_REJECT_BYTES",
        flag: "--memory-reject-bytes",
        default: DERIVED,
        doc: "Memory use at which new connections get 503 + Retry-After; unset = 90 % of the memory limit, derived at start.",
    },
    Setting {
        key: "memory_pause_bytes",
        env: "SURGE_MEMORY_PAUSE_BYTES",
        flag: "--memory-pause-bytes",
        default: DERIVED,
        doc: "Memory use at which broker consumption pauses; must be >= the reject threshold; unset = derived from the memory limit at start.",
    },
    Setting {
        key: "retry_after",
        env: "SURGE_RETRY_AFTER",
        flag: "--retry-after",
        default: "5s",
        doc: "Retry-After sent with 503 when full or overloaded (whole seconds); 5s spreads retries out without leaving clients waiting long.",
    },
    Setting {
        key: "broker_rate",
        env: "SURGE_BROKER_RATE",
        flag: "--broker-rate",
        default: "0",
        doc: "Messages per second consumed from the broker (0 = unlimited); a cap protects fan-out when a publisher floods.",
    },
    Setting {
        key: "broadcast_rate",
        env: "SURGE_BROADCAST_RATE",
        flag: "--broadcast-rate",
        default: "0",
        doc: "Messages per second fanned out to clients (0 = unlimited); a cap bounds the write work one message burst can cause.",
    },
    Setting {
        key: "nats_url",
        env: "SURGE_NATS_URL",
        flag: "--nats-url",
        default: UNSET,
        doc: "NATS server (nats:// or tls://, comma-separated for a cluster); unset = the embedded broker, so one binary runs with no dependencies.",
    },
    Setting {
        key: "nats_token",
        env: "SURGE_NATS_TOKEN",
        flag: "--nats-token",
        default: UNSET,
        doc: "Token for NATS authentication; secret; use a token, a user and password, or a creds file, not several.",
    },
    Setting {
        key: "nats_user",
        env: "SURGE_NATS_USER",
        flag: "--nats-user",
        default: UNSET,
        doc: "User name for NATS authentication; needs SURGE_NATS_PASSWORD.",
    },
    Setting {
        key: "nats_password",
        env: "SURGE_NATS_PASSWORD",
        flag: "--nats-password",
        default: UNSET,
        doc: "Password for NATS authentication; secret; needs SURGE_NATS_USER.",
    },
    Setting {
        key: "nats_creds",
        env: "SURGE_NATS_CREDS",
        flag: "--nats-creds",
        default: UNSET,
        doc: "Path of a NATS .creds file (JWT and NKey seed) for authentication; checked at start.",
    },
    Setting {
        key: "nats_tls_ca",
        env: "SURGE_NATS_TLS_CA",
        flag: "--nats-tls-ca",
        default: UNSET,
        doc: "Path of a PEM CA certificate that signs the NATS server's certificate; unset = the system's roots.",
    },
    Setting {
        key: "js_stream",
        env: "SURGE_JS_STREAM",
        flag: "--js-stream",
        default: "ODIN_TOKENS",
        doc: "JetStream stream surge consumes, created if missing.",
    },
    Setting {
        key: "js_subjects",
        env: "SURGE_JS_SUBJECTS",
        flag: "--js-subjects",
        default: "odin.token.>,odin.global.>",
        doc: "Comma-separated subjects the stream captures ('*' matches one token, '>' the rest); per-token and global feeds by default.",
    },
    Setting {
        key: "js_max_age",
        env: "SURGE_JS_MAX_AGE",
        flag: "--js-max-age",
        default: "30s",
        doc: "Stream retention by age; 30s covers a client's reconnect and resume while keeping broker disk small.",
    },
    Setting {
        key: "js_max_msgs",
        env: "SURGE_JS_MAX_MSGS",
        flag: "--js-max-msgs",
        default: "100000",
        doc: "Stream retention by message count; 100000 bounds the stream during a publish burst.",
    },
    Setting {
        key: "js_max_bytes",
        env: "SURGE_JS_MAX_BYTES",
        flag: "--js-max-bytes",
        default: "50MiB",
        doc: "Stream retention by size (file storage); 50MiB bounds broker disk whatever the message size.",
    },
    Setting {
        key: "js_replicas",
        env: "SURGE_JS_REPLICAS",
        flag: "--js-replicas",
        default: "1",
        doc: "Stream replicas; 1 for a single NATS server (and the embedded broker), 3 on a cluster to survive a node loss.",
    },
    Setting {
        key: "js_update_stream",
        env: "SURGE_JS_UPDATE_STREAM",
        flag: "--js-update-stream",
        default: "false",
        doc: "Rewrite an existing stream whose settings differ from these; off, so a misconfigured gateway cannot change a shared stream's retention.",
    },
    Setting {
        key: "socket_preset",
        env: "SURGE_SOCKET_PRESET",
        flag: "--socket-preset",
        default: "default",
        doc: "Socket tuning (default, low-latency, high-throughput): buffer sizes, TCP_NODELAY, keepalive; default suits mixed traffic.",
    },
    Setting {
        key: "shutdown_drain",
        env: "SURGE_SHUTDOWN_DRAIN",
        flag: "--shutdown-drain",
        default: "10s",
        doc: "On SIGTERM/SIGINT, time for clients to complete the 1001 close before the process exits; 10s fits inside common orchestrator grace periods.",
    },
    Setting {
        key: "shutdown_delay",
        env: "SURGE_SHUTDOWN_DELAY",
        flag: "--shutdown-delay",
        default: "0s",
        doc: "On SIGTERM/SIGINT, time between /readyz turning 503 and closing clients with 1001, so a load balancer stops sending new clients first; set it to the balancer's check interval times its fall count.",
    },
    Setting {
        key: "ready_requires_broker",
        env: "SURGE_READY_REQUIRES_BROKER",
        flag: "--ready-requires-broker",
        default: "false",
        doc: "Report not ready (/readyz 503) while the broker is disconnected; off, because connected clients are still served and a broker blip would take every instance out at once.",
    },
    Setting {
        key: "public_healthz",
        env: "SURGE_PUBLIC_HEALTHZ",
        flag: "--public-healthz",
        default: "false",
        doc: "Answer GET /healthz on the public listener (200 ready / 503 not ready, then close) for balancers that can only probe the public port; off, so the public port serves only WebSocket.",
    },
    Setting {
        key: "admin_max_body_bytes",
        env: "SURGE_ADMIN_MAX_BODY_BYTES",
        flag: "--admin-max-body-bytes",
        default: "1MiB",
        doc: "Largest admin request body (POST /publish); larger ones get 413 body_too_large. 1 MiB is the NATS server's default max payload.",
    },
    Setting {
        key: "log_level",
        env: "SURGE_LOG_LEVEL",
        flag: "--log-level",
        default: "info",
        doc: "Least severe log level written (error, warn, info, debug, trace); info logs start-up and state changes, not per-message events.",
    },
    Setting {
        key: "log_format",
        env: "SURGE_LOG_FORMAT",
        flag: "--log-format",
        default: "text",
        doc: "Log format (text, json); text for terminals, json for log shippers.",
    },
];
