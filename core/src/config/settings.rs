//! The table of settings: one entry per setting, declared once, generates
//! the [`Config`] field and its default, the [`SETTINGS`] entry (names,
//! default text and one-line doc, from which the server generates `--help`
//! and `.env.example`), the rule each value must follow, and the code that
//! moves a value between its field and a [`Value`]. Rules between settings
//! are written by hand in the parent module.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::rules::{
    Addr, Bool, Bytes, Choice, Dur, Int, Kind, List, Optional, Percent, Spec, Text, UNBOUNDED,
    Value, mismatch,
};
use super::{LogFormat, LogLevel, Origin, Secret, SocketPreset};

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

/// Declares every setting once. An entry is
///
/// ```text
/// /// Optional rustdoc of the field (`doc` is plain text for users).
/// field: Type {
///     env: "SURGE_FIELD", flag: "--field",
///     // Why the default is what it is.
///     default: <expression of Type>, default_text: "<default as a user writes it>",
///     kind: <Kind>, rule: <Spec>,
///     doc: "What it does and why the default is what it is, in one line.",
/// },
/// ```
///
/// `default_text` is the default as the effective configuration shows it
/// (a test checks they agree): a value the setting accepts, or [`DERIVED`]
/// (the server computes it) or [`UNSET`] when the default is `None` or an
/// empty list. `kind` says how the field is held
/// as a [`Value`] (see [`Kind`]): `Addr`, `Int`, `Bytes`, `Percent`, `Dur`,
/// `Bool`, `Choice` (a `named_enum!`), `Text` (`String`, `Secret`, `PathBuf`),
/// `List` (`Vec` of those), or `Optional<K>` for an `Option` field. `rule` is
/// the per-value [`Spec`]: its parser and range. Entries are listed in the
/// order of the `Config` fields, `--help`, `.env.example` and the effective
/// configuration.
///
/// Generates the `Config` struct (the fields, then `origins`), its
/// `Default`, [`SETTINGS`], `spec` (the rule by environment variable name)
/// and `Config::get`/`Config::set` (a field's value by environment variable
/// name).
macro_rules! settings {
    ($(
        $(#[$attr:meta])*
        $field:ident: $ty:ty {
            env: $env:literal, flag: $flag:literal,
            default: $default:expr, default_text: $default_text:expr,
            kind: $kind:ty, rule: $rule:expr,
            doc: $doc:literal $(,)?
        }
    ),* $(,)?) => {
        /// The gateway's configuration. Field names are the [`Setting::key`]s;
        /// [`SETTINGS`] documents each one.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Config {
            $(
                $(#[$attr])*
                pub $field: $ty,
            )*
            /// Where each setting given explicitly came from, by environment
            /// variable name; a setting missing here has its default.
            pub origins: BTreeMap<&'static str, Origin>,
        }

        impl Default for Config {
            fn default() -> Self {
                Config {
                    $($field: $default,)*
                    origins: BTreeMap::new(),
                }
            }
        }

        /// Every setting, in the order `--help`, `.env.example` and the
        /// effective configuration list them: listeners, connections,
        /// handshake, per-client limits, throttle, resource guard, broker,
        /// process.
        pub const SETTINGS: &[Setting] = &[$(
            Setting {
                key: stringify!($field),
                env: $env,
                flag: $flag,
                default: $default_text,
                doc: $doc,
            },
        )*];

        /// The rule of each setting. A name missing here is an unknown
        /// setting.
        fn spec(env: &str) -> Spec {
            match env {
                $($env => $rule,)*
                _ => Spec::Unknown,
            }
        }

        impl Config {
            /// The value of the setting named `env`.
            pub(super) fn get(&self, env: &str) -> Option<Value> {
                Some(match env {
                    $($env => <$kind as Kind<$ty>>::get(&self.$field),)*
                    _ => return None,
                })
            }

            /// Stores a parsed value in the field of the setting named
            /// `env`. The value already passed the setting's rule, so the
            /// conversions fit.
            pub(super) fn set(&mut self, env: &str, value: Value) -> Result<(), String> {
                match env {
                    $($env => self.$field = <$kind as Kind<$ty>>::set(value)?,)*
                    _ => return Err(mismatch()),
                }
                Ok(())
            }
        }
    };
}

settings! {
    listen: SocketAddr {
        env: "SURGE_LISTEN", flag: "--listen",
        // Public: clients connect straight to the gateway, no proxy hop.
        default: SocketAddr::from(([0, 0, 0, 0], 8080)), default_text: "0.0.0.0:8080",
        kind: Addr, rule: Spec::SocketAddr,
        doc: "Public WebSocket listener (IP:port); all interfaces, so clients connect directly with no proxy hop.",
    },
    admin_listen: SocketAddr {
        env: "SURGE_ADMIN_LISTEN", flag: "--admin-listen",
        // Loopback: only this host's processes reach it, so it needs no token.
        default: SocketAddr::from(([127, 0, 0, 1], 9090)), default_text: "127.0.0.1:9090",
        kind: Addr, rule: Spec::SocketAddr,
        doc: "Admin listener for /livez, /readyz, /health, /metrics, /config and POST /publish; loopback by default; any other address needs SURGE_ADMIN_TOKEN (or SURGE_ADMIN_INSECURE=true).",
    },
    ws_path: String {
        env: "SURGE_WS_PATH", flag: "--ws-path",
        default: "/ws".to_owned(), default_text: "/ws",
        kind: Text, rule: Spec::WsPath,
        doc: "HTTP path of the WebSocket upgrade; requests for any other path get 404.",
    },
    /// Read by the server at start and on SIGHUP.
    tls_cert: Option<PathBuf> {
        env: "SURGE_TLS_CERT", flag: "--tls-cert",
        // Plain ws:// unless the operator has a certificate.
        default: None, default_text: UNSET,
        kind: Optional<Text>, rule: Spec::FilePath,
        doc: "PEM certificate chain (leaf first) of the public listener, which then speaks TLS 1.2 and 1.3 (wss://); needs SURGE_TLS_KEY; re-read on SIGHUP; the admin listener stays plain HTTP.",
    },
    /// Read by the server at start and on SIGHUP.
    tls_key: Option<PathBuf> {
        env: "SURGE_TLS_KEY", flag: "--tls-key",
        default: None, default_text: UNSET,
        kind: Optional<Text>, rule: Spec::FilePath,
        doc: "PEM private key (PKCS#8, PKCS#1 or SEC1) of SURGE_TLS_CERT's certificate; needs SURGE_TLS_CERT; re-read on SIGHUP.",
    },
    /// `None`: the server derives it from memory and the open-file limit.
    max_connections: Option<u32> {
        env: "SURGE_MAX_CONNECTIONS", flag: "--max-connections",
        // Derived by the server from what this host can actually hold.
        default: None, default_text: DERIVED,
        kind: Optional<Int>, rule: derived_int(1, 10_000_000),
        doc: "Live connections across all shards; unset = derived from memory and the open-file limit (printed at start), so a full gateway answers 503 instead of letting clients time out.",
    },
    /// 0 = no limit.
    max_connections_per_ip: u32 {
        env: "SURGE_MAX_CONNECTIONS_PER_IP", flag: "--max-connections-per-ip",
        // Off: behind an L4 load balancer every client has its address.
        default: 0, default_text: "0",
        kind: Int, rule: int(0, 10_000_000),
        doc: "Connections (upgrading or upgraded) per source address, beyond which 429 + Retry-After; 0 = no limit, as it must be behind a load balancer that hides client addresses.",
    },
    /// 0 = no limit.
    max_connections_per_user: u32 {
        env: "SURGE_MAX_CONNECTIONS_PER_USER", flag: "--max-connections-per-user",
        // Off: only meaningful with JWT, and apps differ in tabs per user.
        default: 0, default_text: "0",
        kind: Int, rule: int(0, 10_000_000),
        doc: "Connections per JWT `sub`, beyond which the upgrade gets 429 + Retry-After; 0 = no limit.",
    },
    /// 0 = no limit.
    max_handshakes_per_ip: u32 {
        env: "SURGE_MAX_HANDSHAKES_PER_IP", flag: "--max-handshakes-per-ip",
        // Off: a loopback benchmark opens thousands at once from one address.
        default: 0, default_text: "0",
        kind: Int, rule: int(0, 10_000_000),
        doc: "Handshakes in progress (accepted, request not complete) per source address, beyond which 429; stops one address holding the slots with half-sent requests; 0 = no limit.",
    },
    /// 0 = no limit.
    handshake_rate_per_ip: u32 {
        env: "SURGE_HANDSHAKE_RATE_PER_IP", flag: "--handshake-rate-per-ip",
        // Off: a loopback benchmark connects thousands per second from one address.
        default: 0, default_text: "0",
        kind: Int, rule: int(0, 10_000_000),
        doc: "New connections per second per source address (burst: one second's worth), beyond which 429 with the wait as Retry-After; 0 = no limit.",
    },
    /// `None`: one shard per CPU.
    shards: Option<u32> {
        env: "SURGE_SHARDS", flag: "--shards",
        // One per CPU, derived by the server.
        default: None, default_text: DERIVED,
        kind: Optional<Int>, rule: derived_int(1, 1024),
        doc: "Shards that each accept and serve their own connections; unset = one per CPU, so every core works and none contends for another's connections.",
    },
    ingest_queue: u32 {
        env: "SURGE_INGEST_QUEUE", flag: "--ingest-queue",
        // Four seconds of a 256 msg/s feed per shard: a burst waits here
        // while the shards fan out, a stalled shard is refused, not waited on.
        default: 1024, default_text: "1024",
        kind: Int, rule: int(1, 1_000_000),
        doc: "Messages received and not yet taken by a shard for fan-out, per shard. Full: the embedded broker answers /publish with 503 ingest_full (nothing sequenced, retry), the NATS bridge stops consuming and the messages wait in the stream.",
    },
    backlog: u32 {
        env: "SURGE_BACKLOG", flag: "--backlog",
        // A ~128 backlog dropped 18.5 % of a 100 conn/s surge (the Go system surge replaces).
        default: 4096, default_text: "4096",
        kind: Int, rule: int(1, 65_535),
        doc: "Listen backlog; large so a connection surge waits in the kernel instead of being dropped (a ~128 backlog failed 18.5 % of a surge); the kernel caps it at net.core.somaxconn and the effective value is logged.",
    },
    handshake_timeout: Duration {
        env: "SURGE_HANDSHAKE_TIMEOUT", flag: "--handshake-timeout",
        // 5 s lost 2.9 % of clients under load, 10 s none (the Go system surge replaces).
        default: Duration::from_secs(10), default_text: "10s",
        kind: Dur, rule: duration(Duration::from_millis(100), secs(300)),
        doc: "Time from accept for the upgrade request to arrive complete; a slower client is closed and its slot freed; 10s because 5s lost real clients under load.",
    },
    max_head_bytes: usize {
        env: "SURGE_MAX_HEAD_BYTES", flag: "--max-head-bytes",
        // Fits browsers' headers with large cookies; bounds a pending handshake.
        default: 8 << 10, default_text: "8KiB",
        kind: Bytes, rule: bytes(KIB, 64 * KIB),
        doc: "Largest upgrade request head (431 beyond it); 8KiB fits browsers' headers with large cookies and bounds what a pending handshake can hold.",
    },
    /// Empty: any origin is accepted.
    allowed_origins: Vec<String> {
        env: "SURGE_ALLOWED_ORIGINS", flag: "--allowed-origins",
        // Open by default: non-browser clients send no Origin.
        default: Vec::new(), default_text: UNSET,
        kind: List, rule: Spec::Origins,
        doc: "Comma-separated Origin allowlist (scheme://host[:port]), others get 403; unset = any origin, for non-browser clients and development.",
    },
    /// Empty: no authentication.
    auth_tokens: Vec<Secret> {
        env: "SURGE_AUTH_TOKENS", flag: "--auth-tokens",
        default: Vec::new(), default_text: UNSET,
        kind: List, rule: Spec::Tokens,
        doc: "Comma-separated tokens accepted at the upgrade (?token= or Authorization: Bearer), others get 401; secret; unset = no authentication.",
    },
    /// `None`: no HMAC secret (see [`Config::jwt_enabled`]).
    jwt_secret: Option<Secret> {
        env: "SURGE_JWT_SECRET", flag: "--jwt-secret",
        // Off: tokens need an issuer to have been set up.
        default: None, default_text: UNSET,
        kind: Optional<Text>, rule: Spec::JwtSecret,
        doc: "HMAC secret (at least 32 bytes) that verifies HS256/HS384/HS512 tokens at the upgrade and on refresh; secret; setting it turns JWT authentication on (401 without a valid token).",
    },
    /// Read by the server at start.
    jwt_public_key_file: Option<PathBuf> {
        env: "SURGE_JWT_PUBLIC_KEY_FILE", flag: "--jwt-public-key-file",
        default: None, default_text: UNSET,
        kind: Optional<Text>, rule: Spec::FilePath,
        doc: "PEM public key file (RSA, P-256/P-384 or Ed25519) that verifies RS256/ES256/EdDSA tokens, read at start; turns JWT authentication on; an HS token is never checked against it.",
    },
    /// Read by the server at start.
    jwt_jwks_file: Option<PathBuf> {
        env: "SURGE_JWT_JWKS_FILE", flag: "--jwt-jwks-file",
        default: None, default_text: UNSET,
        kind: Optional<Text>, rule: Spec::FilePath,
        doc: "JWKS file whose public keys verify tokens, chosen by the token's kid, read at start; turns JWT authentication on.",
    },
    jwt_issuer: Option<String> {
        env: "SURGE_JWT_ISSUER", flag: "--jwt-issuer",
        default: None, default_text: UNSET,
        kind: Optional<Text>, rule: Spec::Text,
        doc: "The iss claim every token must carry; unset = not checked.",
    },
    jwt_audience: Option<String> {
        env: "SURGE_JWT_AUDIENCE", flag: "--jwt-audience",
        default: None, default_text: UNSET,
        kind: Optional<Text>, rule: Spec::Text,
        doc: "A value the aud claim of every token must contain; unset = not checked.",
    },
    /// Empty: with JWT on, a connection without a token is refused.
    anonymous_channels: Vec<String> {
        env: "SURGE_ANONYMOUS_CHANNELS", flag: "--anonymous-channels",
        // Nothing is public unless the operator says so.
        default: Vec::new(), default_text: UNSET,
        kind: List, rule: Spec::Channels,
        doc: "Comma-separated channel patterns a connection without a token may read (and every connection may), e.g. odin.global.>; unset = none: with JWT on, a token is required to connect.",
    },
    token_refresh_notice: Duration {
        env: "SURGE_TOKEN_REFRESH_NOTICE", flag: "--token-refresh-notice",
        // Time for a client to fetch a new token over a slow network.
        default: Duration::from_secs(30), default_text: "30s",
        kind: Dur, rule: duration(secs(0), secs(86_400)),
        doc: "How long before a token's exp the server sends token_expiring, so the client can refresh without reconnecting; 30s leaves time to fetch a new token.",
    },
    jwt_leeway: Duration {
        env: "SURGE_JWT_LEEWAY", flag: "--jwt-leeway",
        // Clocks synchronised by NTP agree far better than a second.
        default: Duration::ZERO, default_text: "0s",
        kind: Dur, rule: duration(secs(0), secs(300)),
        doc: "Clock leeway for exp and nbf, and for the 4001 close at exp; 0s assumes the issuer's clock and this host's agree (NTP).",
    },
    max_message_bytes: usize {
        env: "SURGE_MAX_MESSAGE_BYTES", flag: "--max-message-bytes",
        // Client requests are small JSON.
        default: 16 << 10, default_text: "16KiB",
        kind: Bytes, rule: bytes(512, MIB),
        doc: "Largest frame a client may send (close 1009 beyond it); client requests are small JSON, so 16KiB is ample and caps per-read memory.",
    },
    /// Requests per second per client; 0 = unlimited.
    client_rate: u32 {
        env: "SURGE_CLIENT_RATE", flag: "--client-rate",
        // Far above subscribe/ping traffic; stops a flooding client.
        default: 20, default_text: "20",
        kind: Int, rule: int(0, 100_000),
        doc: "Requests per second a client may send (0 = unlimited); 20 is far above subscribe/ping traffic and stops a flooding client.",
    },
    client_burst: u32 {
        env: "SURGE_CLIENT_BURST", flag: "--client-burst",
        // Lets a reconnecting client resubscribe and replay at once.
        default: 40, default_text: "40",
        kind: Int, rule: int(1, 100_000),
        doc: "Requests a client may send at once before the rate applies; 40 lets a reconnecting client resubscribe and replay without waiting.",
    },
    inbound_frames_per_sec: u32 {
        env: "SURGE_INBOUND_FRAMES_PER_SEC", flag: "--inbound-frames-per-sec",
        // Requests at the rate limit plus heartbeats fit ten times over.
        default: 200, default_text: "200",
        kind: Int, rule: int(0, 1_000_000),
        doc: "WebSocket frames a client may send per second, control and continuation frames included (0 = unlimited); past it the client is closed with 1008, so one connection cannot keep its shard busy with empty frames.",
    },
    inbound_bytes_per_sec: u32 {
        env: "SURGE_INBOUND_BYTES_PER_SEC", flag: "--inbound-bytes-per-sec",
        // Twenty maximum-size requests a second, three times over.
        default: 1 << 20, default_text: "1MiB",
        kind: Bytes, rule: bytes(0, 1 << 31),
        doc: "Bytes a client may send per second (0 = unlimited); past it the client is closed with 1008.",
    },
    max_subscriptions: u32 {
        env: "SURGE_MAX_SUBSCRIPTIONS", flag: "--max-subscriptions",
        default: 100, default_text: "100",
        kind: Int, rule: int(1, 10_000),
        doc: "Subscriptions per connection (more get too_many_subscriptions); bounds one client's share of the subscription index.",
    },
    outbound_queue_bytes: usize {
        env: "SURGE_OUTBOUND_QUEUE_BYTES", flag: "--outbound-queue-bytes",
        // Absorbs a burst without unbounded buffering for a slow reader.
        default: 256 << 10, default_text: "256KiB",
        kind: Bytes, rule: bytes(4 * KIB, 64 * MIB),
        doc: "Bytes queued for one connection before the queue counts as full and throttling starts; absorbs bursts without buffering without bound for a slow client.",
    },
    /// Messages kept per connection; 0 disables replay.
    replay_window: u32 {
        env: "SURGE_REPLAY_WINDOW", flag: "--replay-window",
        // The seed's replay buffer size, which covered their gaps.
        default: 100, default_text: "100",
        kind: Int, rule: int(0, 100_000),
        doc: "Messages kept per connection for replay requests (0 disables replay); 100 covers a short gap, and the ring grows only as messages arrive.",
    },
    replay_max_bytes: usize {
        env: "SURGE_REPLAY_MAX_BYTES", flag: "--replay-max-bytes",
        default: 256 << 10, default_text: "256KiB",
        kind: Bytes, rule: bytes(KIB, 64 * MIB),
        doc: "Byte cap of one connection's replay ring, whichever of it and the window is reached first; bounds memory when messages are large.",
    },
    ping_interval: Duration {
        env: "SURGE_PING_INTERVAL", flag: "--ping-interval",
        // Under the 30 s+ idle cut of common proxies and load balancers.
        default: Duration::from_secs(25), default_text: "25s",
        kind: Dur, rule: duration(secs(1), secs(3_600)),
        doc: "Interval of server pings; 25s keeps connections alive through proxies and load balancers that cut idle ones after 30s or more.",
    },
    idle_timeout: Duration {
        env: "SURGE_IDLE_TIMEOUT", flag: "--idle-timeout",
        // More than two ping intervals: one lost pong is not fatal.
        default: Duration::from_secs(60), default_text: "1m",
        kind: Dur, rule: duration(secs(1), secs(86_400)),
        doc: "A connection that sends nothing, not even a pong, for this long is closed; must exceed the ping interval, and 60s allows a missed pong.",
    },
    throttle_full_events: u32 {
        env: "SURGE_THROTTLE_FULL_EVENTS", flag: "--throttle-full-events",
        // The seed's escalation (as in the Go system surge replaces).
        default: 3, default_text: "3",
        kind: Int, rule: int(1, 100),
        doc: "Consecutive full-queue events before a connection's throttle level rises; 3 ignores a single spike but reacts within one burst.",
    },
    throttle_recovery: Duration {
        env: "SURGE_THROTTLE_RECOVERY", flag: "--throttle-recovery",
        // The seed's recovery (as in the Go system surge replaces).
        default: Duration::from_secs(30), default_text: "30s",
        kind: Dur, rule: duration(secs(1), secs(3_600)),
        doc: "Quiet time (no full queue) before a throttled connection's level falls by one; 30s keeps levels from flapping.",
    },
    cpu_reject_percent: f64 {
        env: "SURGE_CPU_REJECT_PERCENT", flag: "--cpu-reject-percent",
        // Reject newcomers at 75 %, pause the feed only at 80 % (as in the Go system surge replaces).
        default: 75.0, default_text: "75",
        kind: Percent, rule: Spec::Percent,
        doc: "CPU use (percent) at which new connections get 503 + Retry-After; 75 leaves headroom to serve the connections already open.",
    },
    cpu_pause_percent: f64 {
        env: "SURGE_CPU_PAUSE_PERCENT", flag: "--cpu-pause-percent",
        // Pause the feed only at 80 %, after rejecting newcomers at 75 % (as in the Go system surge replaces).
        default: 80.0, default_text: "80",
        kind: Percent, rule: Spec::Percent,
        doc: "CPU use (percent) at which broker consumption pauses; must be >= the reject threshold, since turning newcomers away comes before slowing everyone's feed.",
    },
    /// `None`: the server derives it (90 % of the memory limit).
    memory_reject_bytes: Option<u64> {
        env: "SURGE_MEMORY_REJECT_BYTES", flag: "--memory-reject-bytes",
        // Derived by the server from the memory limit.
        default: None, default_text: DERIVED,
        kind: Optional<Bytes>, rule: derived_bytes(MIB, UNBOUNDED),
        doc: "Memory use at which new connections get 503 + Retry-After; unset = 90 % of the memory limit, derived at start.",
    },
    /// `None`: the server derives it from the memory limit.
    memory_pause_bytes: Option<u64> {
        env: "SURGE_MEMORY_PAUSE_BYTES", flag: "--memory-pause-bytes",
        // Derived by the server from the memory limit.
        default: None, default_text: DERIVED,
        kind: Optional<Bytes>, rule: derived_bytes(MIB, UNBOUNDED),
        doc: "Memory use at which broker consumption pauses; must be >= the reject threshold; unset = derived from the memory limit at start.",
    },
    /// Sent as `Retry-After`; always whole seconds.
    retry_after: Duration {
        env: "SURGE_RETRY_AFTER", flag: "--retry-after",
        // Spreads retries without leaving clients waiting long.
        default: Duration::from_secs(5), default_text: "5s",
        kind: Dur, rule: whole_seconds(1, 3_600),
        doc: "Retry-After sent with 503 when full or overloaded (whole seconds); 5s spreads retries out without leaving clients waiting long.",
    },
    compression: bool {
        env: "SURGE_COMPRESSION", flag: "--compression",
        // On: every browser offers it and a publish is compressed once.
        default: true, default_text: "true",
        kind: Bool, rule: Spec::Bool,
        doc: "Accept permessage-deflate offers: a published message is compressed once and the same bytes go to every subscriber that negotiated it; no per-connection compression state.",
    },
    compression_min_bytes: usize {
        env: "SURGE_COMPRESSION_MIN_BYTES", flag: "--compression-min-bytes",
        // Below ~64 bytes deflate without shared context gains next to nothing.
        default: 64, default_text: "64B",
        kind: Bytes, rule: bytes(0, MIB),
        doc: "Messages shorter than this go out uncompressed even on a connection that negotiated permessage-deflate.",
    },
    /// Messages per second consumed from the broker; 0 = unlimited.
    broker_rate: u32 {
        env: "SURGE_BROKER_RATE", flag: "--broker-rate",
        // Unlimited unless an operator needs a cap.
        default: 0, default_text: "0",
        kind: Int, rule: int(0, 10_000_000),
        doc: "Messages per second consumed from the broker (0 = unlimited); a cap protects fan-out when a publisher floods.",
    },
    /// Messages per second fanned out; 0 = unlimited.
    broadcast_rate: u32 {
        env: "SURGE_BROADCAST_RATE", flag: "--broadcast-rate",
        // Unlimited unless an operator needs a cap.
        default: 0, default_text: "0",
        kind: Int, rule: int(0, 10_000_000),
        doc: "Messages per second fanned out to clients (0 = unlimited); a cap bounds the write work one message burst can cause.",
    },
    /// `None`: the embedded broker. Otherwise one or more comma-separated
    /// URLs; see [`Config::nats_servers`].
    nats_url: Option<String> {
        env: "SURGE_NATS_URL", flag: "--nats-url",
        // The embedded broker: one binary runs with no dependencies.
        default: None, default_text: UNSET,
        kind: Optional<Text>, rule: Spec::NatsUrl,
        doc: "NATS server (nats:// or tls://, comma-separated for a cluster); unset = the embedded broker, so one binary runs with no dependencies.",
    },
    nats_token: Option<Secret> {
        env: "SURGE_NATS_TOKEN", flag: "--nats-token",
        default: None, default_text: UNSET,
        kind: Optional<Text>, rule: Spec::Secret,
        doc: "Token for NATS authentication; secret; use a token, a user and password, or a creds file, not several.",
    },
    nats_user: Option<String> {
        env: "SURGE_NATS_USER", flag: "--nats-user",
        default: None, default_text: UNSET,
        kind: Optional<Text>, rule: Spec::Text,
        doc: "User name for NATS authentication; needs SURGE_NATS_PASSWORD.",
    },
    nats_password: Option<Secret> {
        env: "SURGE_NATS_PASSWORD", flag: "--nats-password",
        default: None, default_text: UNSET,
        kind: Optional<Text>, rule: Spec::Secret,
        doc: "Password for NATS authentication; secret; needs SURGE_NATS_USER.",
    },
    /// Existence is checked by the server, which does the I/O.
    nats_creds: Option<PathBuf> {
        env: "SURGE_NATS_CREDS", flag: "--nats-creds",
        default: None, default_text: UNSET,
        kind: Optional<Text>, rule: Spec::FilePath,
        doc: "Path of a NATS .creds file (JWT and NKey seed) for authentication; checked at start.",
    },
    nats_tls_ca: Option<PathBuf> {
        env: "SURGE_NATS_TLS_CA", flag: "--nats-tls-ca",
        default: None, default_text: UNSET,
        kind: Optional<Text>, rule: Spec::FilePath,
        doc: "Path of a PEM CA certificate that signs the NATS server's certificate; unset = the system's roots.",
    },
    js_stream: String {
        env: "SURGE_JS_STREAM", flag: "--js-stream",
        // The seed's stream (as in the Go system surge replaces).
        default: "ODIN_TOKENS".to_owned(), default_text: "ODIN_TOKENS",
        kind: Text, rule: Spec::StreamName,
        doc: "JetStream stream surge consumes, created if missing.",
    },
    js_subjects: Vec<String> {
        env: "SURGE_JS_SUBJECTS", flag: "--js-subjects",
        // The seed's stream's subjects (as in the Go system surge replaces).
        default: vec!["odin.token.>".to_owned(), "odin.global.>".to_owned()], default_text: "odin.token.>,odin.global.>",
        kind: List, rule: Spec::Subjects,
        doc: "Comma-separated subjects the stream captures ('*' matches one token, '>' the rest); per-token and global feeds by default.",
    },
    js_max_age: Duration {
        env: "SURGE_JS_MAX_AGE", flag: "--js-max-age",
        // The seed's stream's retention (as in the Go system surge replaces).
        default: Duration::from_secs(30), default_text: "30s",
        kind: Dur, rule: duration(secs(1), secs(365 * 86_400)),
        doc: "Stream retention by age; 30s covers a client's reconnect and resume while keeping broker disk small.",
    },
    js_max_msgs: u64 {
        env: "SURGE_JS_MAX_MSGS", flag: "--js-max-msgs",
        // The seed's stream's retention (as in the Go system surge replaces).
        default: 100_000, default_text: "100000",
        kind: Int, rule: int(1, UNBOUNDED),
        doc: "Stream retention by message count; 100000 bounds the stream during a publish burst.",
    },
    js_max_bytes: u64 {
        env: "SURGE_JS_MAX_BYTES", flag: "--js-max-bytes",
        // The seed's stream's retention (as in the Go system surge replaces).
        default: 50 << 20, default_text: "50MiB",
        kind: Bytes, rule: bytes(MIB, UNBOUNDED),
        doc: "Stream retention by size (file storage); 50MiB bounds broker disk whatever the message size.",
    },
    js_replicas: u32 {
        env: "SURGE_JS_REPLICAS", flag: "--js-replicas",
        // A single server; a cluster should use 3.
        default: 1, default_text: "1",
        kind: Int, rule: int(1, 5),
        doc: "Stream replicas; 1 for a single NATS server (and the embedded broker), 3 on a cluster to survive a node loss.",
    },
    js_update_stream: bool {
        env: "SURGE_JS_UPDATE_STREAM", flag: "--js-update-stream",
        // Never rewrite a shared stream unless asked to.
        default: false, default_text: "false",
        kind: Bool, rule: Spec::Bool,
        doc: "Rewrite an existing stream whose settings differ from these; off, so a misconfigured gateway cannot change a shared stream's retention.",
    },
    socket_preset: SocketPreset {
        env: "SURGE_SOCKET_PRESET", flag: "--socket-preset",
        default: SocketPreset::Default, default_text: "default",
        kind: Choice, rule: Spec::Choice(SocketPreset::NAMES),
        doc: "Socket tuning (default, low-latency, high-throughput): buffer sizes, TCP_NODELAY, keepalive; default suits mixed traffic.",
    },
    shutdown_drain: Duration {
        env: "SURGE_SHUTDOWN_DRAIN", flag: "--shutdown-drain",
        // Fits inside common orchestrators' grace periods.
        default: Duration::from_secs(10), default_text: "10s",
        kind: Dur, rule: duration(secs(0), secs(600)),
        doc: "On SIGTERM/SIGINT, time for clients to complete the 1001 close before the process exits; 10s fits inside common orchestrator grace periods.",
    },
    shutdown_delay: Duration {
        env: "SURGE_SHUTDOWN_DELAY", flag: "--shutdown-delay",
        // Orchestrators stop routing on their own; a balancer that
        // polls /readyz needs this set to its polling period.
        default: Duration::ZERO, default_text: "0s",
        kind: Dur, rule: duration(secs(0), secs(600)),
        doc: "On SIGTERM/SIGINT, time between /readyz turning 503 and closing clients with 1001, so a load balancer stops sending new clients first; set it to the balancer's check interval times its fall count.",
    },
    ready_requires_broker: bool {
        env: "SURGE_READY_REQUIRES_BROKER", flag: "--ready-requires-broker",
        // A broker blip must not take every instance out at once.
        default: false, default_text: "false",
        kind: Bool, rule: Spec::Bool,
        doc: "Report not ready (/readyz 503) while the broker is disconnected; off, because connected clients are still served and a broker blip would take every instance out at once.",
    },
    public_healthz: bool {
        env: "SURGE_PUBLIC_HEALTHZ", flag: "--public-healthz",
        default: false, default_text: "false",
        kind: Bool, rule: Spec::Bool,
        doc: "Answer GET /healthz on the public listener (200 ready / 503 not ready, then close) for balancers that can only probe the public port; off, so the public port serves only WebSocket.",
    },
    admin_max_body_bytes: usize {
        env: "SURGE_ADMIN_MAX_BODY_BYTES", flag: "--admin-max-body-bytes",
        default: 1 << 20, default_text: "1MiB",
        kind: Bytes, rule: bytes(KIB, 64 * MIB),
        doc: "Largest admin request body (POST /publish); larger ones get 413 body_too_large. 1 MiB is the NATS server's default max payload.",
    },
    /// `None`: `/publish` and `/config` take no credentials (loopback only,
    /// unless `admin_insecure`).
    admin_token: Option<Secret> {
        env: "SURGE_ADMIN_TOKEN", flag: "--admin-token",
        // Unset: on the default loopback listener only this host's processes reach it.
        default: None, default_text: UNSET,
        kind: Optional<Text>, rule: Spec::BearerToken,
        doc: "Token that POST /publish and GET /config require as Authorization: Bearer <token> (others get 401); secret; unset = no token, which only a loopback SURGE_ADMIN_LISTEN allows unless SURGE_ADMIN_INSECURE=true.",
    },
    admin_insecure: bool {
        env: "SURGE_ADMIN_INSECURE", flag: "--admin-insecure",
        // Opening publishing to a network must be a decision, not an accident.
        default: false, default_text: "false",
        kind: Bool, rule: Spec::Bool,
        doc: "Serve a non-loopback SURGE_ADMIN_LISTEN without SURGE_ADMIN_TOKEN; off, so surge refuses to start (exit 2) rather than let anyone on the network publish by accident.",
    },
    /// Publishes per second through `POST /publish`; 0 = unlimited.
    admin_publish_rate: u32 {
        env: "SURGE_ADMIN_PUBLISH_RATE", flag: "--admin-publish-rate",
        // 20 times `surge feed`'s default 50/s and over 3 times bench/run's
        // highest fan-out step (300/s); a runaway script is stopped at it.
        default: 1000, default_text: "1000",
        kind: Int, rule: int(0, 1_000_000),
        doc: "Publishes per second accepted by POST /publish, a second's worth at once (more get 429 rate_limited with Retry-After; 0 = unlimited); 1000 is 20 times surge feed's default rate and above bench/run's highest fan-out step (300/s), so only a runaway publisher meets it; set 0 for load tests that publish faster.",
    },
    log_level: LogLevel {
        env: "SURGE_LOG_LEVEL", flag: "--log-level",
        default: LogLevel::Info, default_text: "info",
        kind: Choice, rule: Spec::Choice(LogLevel::NAMES),
        doc: "Least severe log level written (error, warn, info, debug, trace); info logs start-up and state changes, not per-message events.",
    },
    log_format: LogFormat {
        env: "SURGE_LOG_FORMAT", flag: "--log-format",
        default: LogFormat::Text, default_text: "text",
        kind: Choice, rule: Spec::Choice(LogFormat::NAMES),
        doc: "Log format (text, json); text for terminals, json for log shippers.",
    },
}
