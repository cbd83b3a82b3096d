//! The NATS JetStream bridge: the gateway's [`Broker`] when `SURGE_NATS_URL`
//! is set.
//!
//! NATS is how surge scales past one machine: several surge instances, one
//! NATS cluster, every instance delivering every message to its own
//! clients. The bridge is three I/O paths over one connection:
//!
//! - [`stream`]: the stream is ensured at start, before the gateway
//!   listens, so a mismatched stream stops the start with every difference
//!   named;
//! - [`consume`]: one ephemeral ordered consumer per instance feeds the
//!   [`Hub`] in stream order, with rate limiting and the guard's pause as
//!   backpressure (messages wait in the stream), and picks up after an
//!   outage at the sequence after the last one it dispatched;
//! - [`fetch`]: `resume` reads the retained messages after a client's last
//!   `sseq` straight from the stream.
//!
//! Connection loss is NATS' business: the client reconnects with backoff
//! forever, client WebSockets stay open, `/health` turns degraded while
//! [`NatsBroker::connected`] is false, and each loss counts in
//! `surge_broker_disconnects_total`.

mod consume;
mod fetch;
pub mod stream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::{Client, ConnectOptions, Event, HeaderMap, ServerAddr};
use bytes::Bytes;
use surge_core::config::Config;
use surge_core::protocol::Priority;
use surge_core::subjects::{Pattern, Subject};
use surge_runtime::broker::BoxFuture;
use surge_runtime::metrics::Metrics;
use surge_runtime::{Broker, BrokerError, Clock, Fetched, Hub, Position};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use stream::{Difference, Ensured, StreamSpec};

/// The header that carries a message's priority (`low|medium|high|critical`;
/// missing or unknown means medium).
pub const PRIORITY_HEADER: &str = "Surge-Priority";

/// How long a JetStream API call or a publish acknowledgement may take.
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the stream's last sequence is read, for the lag
/// (`surge_broker_stream_last_sseq`): one small JetStream API request.
const STREAM_POLL_EVERY: Duration = Duration::from_secs(1);

/// Why the bridge could not start. Each case names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("SURGE_NATS_URL: {url:?} is not a NATS server address: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("SURGE_NATS_CREDS: cannot use the credentials file {path}: {reason}")]
    Credentials { path: String, reason: String },
    #[error(
        "cannot connect to NATS at {servers}: {reason} (is nats-server running there, and are SURGE_NATS_TOKEN / SURGE_NATS_USER / SURGE_NATS_CREDS / SURGE_NATS_TLS_CA right?)"
    )]
    Connect { servers: String, reason: String },
    #[error(
        "cannot read JetStream stream {stream}: {reason} (is JetStream enabled on the server, e.g. nats-server -js?)"
    )]
    ReadStream { stream: String, reason: String },
    #[error("cannot create JetStream stream {stream}: {reason}")]
    CreateStream { stream: String, reason: String },
    #[error("cannot update JetStream stream {stream}: {reason}")]
    UpdateStream { stream: String, reason: String },
    #[error(
        "JetStream stream {stream} exists with a different configuration:\n{}\nsurge does not rewrite a shared stream silently: set SURGE_JS_UPDATE_STREAM=true to update it, or change the settings to match it",
        list(differences)
    )]
    StreamMismatch {
        stream: String,
        differences: Vec<Difference>,
    },
    #[error(
        "JetStream stream {stream} cannot be used as it is, and JetStream cannot change it in place:\n{}\ndelete the stream (nats stream rm {stream}) or choose another SURGE_JS_STREAM",
        list(differences)
    )]
    StreamImmutable {
        stream: String,
        differences: Vec<Difference>,
    },
}

fn list(differences: &[Difference]) -> String {
    differences
        .iter()
        .map(|d| format!("  - {d}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Connection events, shared with the NATS client's event callback.
#[derive(Debug)]
struct LinkEvents {
    /// Set once the gateway exists; disconnects before that are only logged.
    metrics: OnceLock<Arc<Metrics>>,
    /// Bumped on every (re)connect, so consumption can recreate its
    /// consumer at once instead of waiting for missed heartbeats.
    connects: watch::Sender<u64>,
}

impl LinkEvents {
    fn on(&self, event: Event) {
        match event {
            Event::Connected => {
                tracing::info!("NATS connected");
                self.connects.send_modify(|n| *n += 1);
            }
            Event::Disconnected => {
                tracing::warn!("NATS connection lost; reconnecting with backoff");
                if let Some(metrics) = self.metrics.get() {
                    metrics.broker_disconnects.inc();
                }
            }
            Event::SlowConsumer(sid) => {
                // The live consumer notices the consumer-sequence gap this
                // leaves and recreates itself from the last dispatched sseq.
                tracing::warn!(sid, "NATS client dropped messages of a slow subscription");
            }
            error @ Event::ServerError(_) => tracing::warn!(event = %error, "NATS server error"),
            // Every failed reconnect attempt raises one; the lost connection
            // was already reported above.
            error @ Event::ClientError(_) => tracing::debug!(event = %error, "NATS client error"),
            other => tracing::info!(event = %other, "NATS event"),
        }
    }
}

/// One connection to NATS with JetStream and the stream surge reads.
#[derive(Debug, Clone)]
pub struct Link {
    client: Client,
    js: Context,
    spec: StreamSpec,
    /// The stream's subjects as patterns (they are validated NATS subjects).
    subjects: Vec<Pattern>,
    events: Arc<LinkEvents>,
    /// The stream's identity, from its creation time, as last read.
    epoch: Arc<std::sync::Mutex<Option<String>>>,
}

/// A stream's epoch: its name and creation time, so a stream deleted and
/// created again (sequences restarting at 1) is told apart from the old one.
fn stream_epoch(info: &async_nats::jetstream::stream::Info) -> String {
    format!(
        "js-{}-{:x}",
        info.config.name,
        info.created.unix_timestamp_nanos()
    )
}

/// Delay before reconnect attempt `attempts` (1-based): immediately, then
/// doubling from 100 ms up to 2 s, so a restarted server is found quickly
/// and a dead one is not hammered.
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exponent = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(5);
    (Duration::from_millis(100) * 2u32.pow(exponent)).min(Duration::from_secs(2))
}

impl Link {
    /// Connects with the configured credentials and TLS, and ensures the
    /// stream (see [`stream::ensure`]).
    pub async fn open(config: &Config) -> Result<(Link, Ensured), NatsError> {
        let url = config.nats_url.clone().unwrap_or_default();
        let servers = config
            .nats_servers()
            .into_iter()
            .map(|s| {
                s.parse::<ServerAddr>().map_err(|e| NatsError::BadUrl {
                    url: s.to_owned(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (connects, _) = watch::channel(0);
        let events = Arc::new(LinkEvents {
            metrics: OnceLock::new(),
            connects,
        });
        let callback_events = Arc::clone(&events);
        let mut options = ConnectOptions::new()
            .name(format!("surge {}", env!("CARGO_PKG_VERSION")))
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .connection_timeout(API_TIMEOUT)
            .event_callback(move |event| {
                let events = Arc::clone(&callback_events);
                async move { events.on(event) }
            });
        if let Some(token) = &config.nats_token {
            options = options.token(token.expose().to_owned());
        }
        if let (Some(user), Some(password)) = (&config.nats_user, &config.nats_password) {
            options = options.user_and_password(user.clone(), password.expose().to_owned());
        }
        if let Some(path) = &config.nats_creds {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| NatsError::Credentials {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
        }
        if let Some(ca) = &config.nats_tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = options
            .connect(servers)
            .await
            .map_err(|e| NatsError::Connect {
                servers: url,
                reason: e.to_string(),
            })?;
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(API_TIMEOUT);
        let spec = StreamSpec::from_config(config);
        let (stream, ensured) = stream::ensure(&js, &spec, config.js_update_stream).await?;
        let epoch = Arc::new(std::sync::Mutex::new(Some(stream_epoch(
            stream.cached_info(),
        ))));
        let subjects = spec
            .subjects
            .iter()
            .filter_map(|s| Pattern::parse(s).ok())
            .collect();
        Ok((
            Link {
                client,
                js,
                spec,
                subjects,
                events,
                epoch,
            },
            ensured,
        ))
    }

    /// Records the epoch of the stream as just read.
    fn note_stream(&self, stream: &async_nats::jetstream::stream::Stream) -> String {
        let epoch = stream_epoch(stream.cached_info());
        let mut current = self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_deref() != Some(epoch.as_str()) {
            if let Some(old) = current.as_deref() {
                tracing::warn!(stream = %self.spec.name, old, new = %epoch, "the stream was created again: clients' positions in the old one are void");
            }
            *current = Some(epoch.clone());
        }
        epoch
    }

    /// The epoch of the stream as last read.
    pub fn epoch(&self) -> Option<String> {
        self.epoch.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the client holds a live connection to a server now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.spec.name
    }

    /// The stream's last sequence now.
    pub async fn last_sequence(&self) -> Result<u64, BrokerError> {
        let stream = self
            .js
            .get_stream(&self.spec.name)
            .await
            .map_err(|e| unavailable("reading the stream", e))?;
        Ok(stream.cached_info().state.last_sequence)
    }

    /// Publishes to JetStream with the priority header and waits for the
    /// stream's acknowledgement; resolves to the message's stream sequence.
    pub async fn publish(
        &self,
        subject: &Subject,
        data: Bytes,
        priority: Priority,
    ) -> Result<u64, BrokerError> {
        // While disconnected the client would buffer the publish and the
        // caller would wait for a timeout; answer at once instead.
        if !self.connected() {
            return Err(BrokerError::Unavailable("NATS is disconnected".into()));
        }
        let mut headers = HeaderMap::new();
        headers.insert(PRIORITY_HEADER, priority.as_str());
        let sent = self
            .js
            .publish_with_headers(subject.as_str().to_owned(), headers, data)
            .await;
        let ack = match sent {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                Err(BrokerError::Refused(format!(
                    "no JetStream stream takes subject {subject}; stream {} takes {} (SURGE_JS_SUBJECTS)",
                    self.spec.name,
                    self.spec.subjects.join(",")
                )))
            }
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                Err(BrokerError::Refused(e.to_string()))
            }
            Err(e) => Err(unavailable("publishing", e)),
        }
    }
}

fn unavailable(doing: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("NATS: {doing}: {e}"))
}

/// The priority a message carries in its [`PRIORITY_HEADER`].
fn priority_of(headers: Option<&HeaderMap>) -> Priority {
    headers
        .and_then(|h| h.get(PRIORITY_HEADER))
        .and_then(|v| Priority::parse(v.as_str()))
        .unwrap_or_default()
}

/// The bridge between connecting (before the gateway starts, so a bad
/// stream fails the start) and consuming (once the gateway's hub exists).
#[derive(Debug)]
pub struct NatsBridge {
    /// `None` when NATS could not be reached at start: the gateway starts
    /// anyway and the bridge keeps connecting in the background.
    ready: Option<(Link, u64)>,
    config: Config,
}

/// Delay before background connection attempt `attempt` (1-based) when
/// NATS was unreachable at start: 100 ms doubling to 5 s.
fn connect_retry_delay(attempt: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.pow(attempt.saturating_sub(1).min(6)))
        .min(Duration::from_secs(5))
}

impl NatsBridge {
    /// Connects and ensures the stream. NATS not answering is not an
    /// error (the gateway starts, not ready, and connects with backoff);
    /// a configuration NATS refuses (credentials, a mismatched stream) is.
    pub async fn prepare(config: &Config) -> Result<NatsBridge, NatsError> {
        match Self::connect(config).await {
            Ok(ready) => Ok(NatsBridge {
                ready: Some(ready),
                config: config.clone(),
            }),
            Err(e @ NatsError::Connect { .. }) => {
                tracing::warn!(error = %e, "NATS is not reachable; starting without it and connecting in the background");
                Ok(NatsBridge {
                    ready: None,
                    config: config.clone(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// One attempt: the link and the stream sequence live consumption
    /// starts after (the stream's end now: older messages are for
    /// `resume`, not for live clients).
    async fn connect(config: &Config) -> Result<(Link, u64), NatsError> {
        let (link, ensured) = Link::open(config).await?;
        let stream =
            link.js
                .get_stream(&link.spec.name)
                .await
                .map_err(|e| NatsError::ReadStream {
                    stream: link.spec.name.clone(),
                    reason: e.to_string(),
                })?;
        let start_after = stream.cached_info().state.last_sequence;
        tracing::info!(stream = %link.spec.name, ?ensured, start_after, epoch = ?link.epoch(), "NATS JetStream ready");
        Ok((link, start_after))
    }

    /// Starts consuming into `hub` (once connected) and returns the
    /// gateway's broker.
    pub fn attach(self, hub: Hub, clock: Clock) -> Arc<NatsBroker> {
        let shared = Arc::new(OnceLock::new());
        let (paused_tx, paused_rx) = watch::channel(false);
        let last_dispatched = Arc::new(AtomicU64::new(0));
        let task = {
            let shared = Arc::clone(&shared);
            let last_dispatched = Arc::clone(&last_dispatched);
            let NatsBridge { ready, config } = self;
            tokio::spawn(async move {
                let (link, start_after) = match ready {
                    Some(ready) => ready,
                    None => Self::connect_with_backoff(&config).await,
                };
                let _ = link.events.metrics.set(Arc::clone(hub.metrics()));
                last_dispatched.store(start_after, Ordering::Relaxed);
                let _ = shared.set(link.clone());
                let consumer = consume::LiveConsumer {
                    epoch: link.epoch(),
                    link,
                    hub,
                    clock,
                    rate: config.broker_rate,
                    paused: paused_rx,
                    last_dispatched: start_after,
                    shared_last: last_dispatched,
                };
                consumer.run().await;
            })
        };
        let stream_last = Arc::new(AtomicU64::new(0));
        let poller = tokio::spawn(poll_stream_last(
            Arc::clone(&shared),
            Arc::clone(&stream_last),
        ));
        Arc::new(NatsBroker {
            link: shared,
            paused: paused_tx,
            last_dispatched,
            stream_last,
            task,
            poller,
        })
    }

    /// Tries until NATS answers and the stream is usable, logging each
    /// failed attempt.
    async fn connect_with_backoff(config: &Config) -> (Link, u64) {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match Self::connect(config).await {
                Ok(ready) => {
                    tracing::info!(attempt, "NATS reached");
                    return ready;
                }
                Err(e) => {
                    let delay = connect_retry_delay(attempt);
                    tracing::warn!(attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "NATS connection attempt failed");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// Reads the stream's last sequence every [`STREAM_POLL_EVERY`] while
/// connected, into `into` (0 until first read). A failed read keeps the
/// last value: the broker panel shows the link as down meanwhile.
async fn poll_stream_last(link: Arc<OnceLock<Link>>, into: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval(STREAM_POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(link) = link.get().filter(|l| l.connected()) else {
            continue;
        };
        match tokio::time::timeout(STREAM_POLL_EVERY, link.last_sequence()).await {
            Ok(Ok(last)) => into.store(last, Ordering::Relaxed),
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot read the stream's last sequence"),
            Err(_) => tracing::debug!("reading the stream's last sequence timed out"),
        }
    }
}

/// The gateway's broker when NATS is configured.
#[derive(Debug)]
pub struct NatsBroker {
    /// Set once NATS has been reached and the stream ensured.
    link: Arc<OnceLock<Link>>,
    paused: watch::Sender<bool>,
    last_dispatched: Arc<AtomicU64>,
    /// The stream's last sequence as last polled (0: not read yet).
    stream_last: Arc<AtomicU64>,
    task: JoinHandle<()>,
    poller: JoinHandle<()>,
}

impl NatsBroker {
    /// The last stream sequence handed to the hub.
    pub fn last_dispatched(&self) -> u64 {
        self.last_dispatched.load(Ordering::Relaxed)
    }

    fn link(&self) -> Result<&Link, BrokerError> {
        self.link.get().ok_or_else(|| {
            BrokerError::Unavailable("NATS has not been reached since the start".into())
        })
    }
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        self.task.abort();
        self.poller.abort();
    }
}

impl Broker for NatsBroker {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn connected(&self) -> bool {
        self.link.get().is_some_and(Link::connected)
    }

    fn epoch(&self) -> Option<String> {
        self.link.get().and_then(Link::epoch)
    }

    fn publish(
        &self,
        subject: Subject,
        data: Bytes,
        priority: Priority,
    ) -> BoxFuture<'_, Result<u64, BrokerError>> {
        Box::pin(async move { self.link()?.publish(&subject, data, priority).await })
    }

    fn fetch(
        &self,
        patterns: Vec<Pattern>,
        since_sseq: u64,
    ) -> BoxFuture<'_, Result<Fetched, BrokerError>> {
        Box::pin(async move { fetch::fetch(self.link()?, patterns, since_sseq).await })
    }

    fn position(&self) -> Position {
        let stream_last = self.stream_last.load(Ordering::Relaxed);
        Position {
            last_received: self.link.get().map(|_| self.last_dispatched()),
            stream_last: (stream_last > 0).then_some(stream_last),
        }
    }

    fn set_paused(&self, paused: bool) {
        let changed = self
            .paused
            .send_if_modified(|p| std::mem::replace(p, paused) != paused);
        if changed {
            tracing::info!(
                paused,
                "NATS consumption {}",
                if paused {
                    "paused by the resource guard"
                } else {
                    "resumed"
                }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_comes_from_the_header_and_defaults_to_medium() {
        assert_eq!(priority_of(None), Priority::Medium);
        let mut h = HeaderMap::new();
        assert_eq!(priority_of(Some(&h)), Priority::Medium);
        h.insert(PRIORITY_HEADER, "Critical");
        assert_eq!(priority_of(Some(&h)), Priority::Critical);
        let mut h = HeaderMap::new();
        h.insert(PRIORITY_HEADER, "urgent");
        assert_eq!(priority_of(Some(&h)), Priority::Medium);
    }

    #[test]
    fn start_without_nats_retries_from_100_ms_to_5_s() {
        let delays: Vec<u64> = (1..=9)
            .map(|a| connect_retry_delay(a).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            vec![100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
        );
    }

    #[test]
    fn reconnects_back_off_from_immediately_to_two_seconds() {
        let delays: Vec<u64> = (1..=8)
            .map(|a| reconnect_delay(a).as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![0, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(reconnect_delay(usize::MAX), Duration::from_secs(2));
    }

    #[test]
    fn a_mismatch_error_lists_every_difference_and_the_way_out() {
        let e = NatsError::StreamMismatch {
            stream: "ODIN".into(),
            differences: vec![Difference {
                field: "max_msgs",
                setting: "SURGE_JS_MAX_MSGS",
                existing: "10".into(),
                configured: "100000".into(),
                updatable: true,
            }],
        };
        let text = e.to_string();
        assert!(
            text.contains("  - max_msgs: the stream has 10, SURGE_JS_MAX_MSGS asks for 100000"),
            "{text}"
        );
        assert!(text.contains("SURGE_JS_UPDATE_STREAM=true"), "{text}");
    }
}
