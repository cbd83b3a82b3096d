//! The embedded broker: in-process publish/subscribe with a bounded
//! retained log, so surge works with nothing else installed and `resume`
//! works without NATS.
//!
//! Retention follows the same three limits as the JetStream stream (max
//! age, max messages, max bytes), and sequences start at 1 and only grow,
//! exactly as a stream's do, so clients cannot tell the brokers apart.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use surge_core::Instant;
use surge_core::protocol::{Priority, Published};
use surge_core::subjects::{Pattern, Subject};

use crate::broker::{BoxFuture, Broker, BrokerError, Fetched, Hub, Position};
use crate::clock::Clock;

/// Retention limits of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Duration,
    pub max_messages: u64,
    pub max_bytes: u64,
}

#[derive(Debug)]
struct Log {
    entries: VecDeque<(Instant, Arc<Published>)>,
    bytes: u64,
    last_sseq: u64,
}

impl Log {
    fn prune(&mut self, now: Instant, retention: &Retention) {
        while let Some((at, message)) = self.entries.front() {
            let too_old = now.saturating_duration_since(*at) > retention.max_age;
            let too_many = self.entries.len() as u64 > retention.max_messages;
            let too_big = self.bytes > retention.max_bytes;
            if !(too_old || too_many || too_big) {
                break;
            }
            self.bytes -= message.tail_len() as u64;
            self.entries.pop_front();
        }
    }
}

/// The in-process broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    log: Mutex<Log>,
    retention: Retention,
    hub: Hub,
    clock: Clock,
    /// Serialises publish so sequence order and dispatch order agree.
    order: tokio::sync::Mutex<()>,
    /// Sequences start at 1 in every process: this names the run.
    epoch: String,
    /// The last sequence the hub has taken (it waits on full shards).
    dispatched: std::sync::atomic::AtomicU64,
}

/// An epoch for a broker starting now: the wall-clock start in
/// milliseconds and 32 random bits, so two starts in the same millisecond
/// still differ.
pub fn fresh_epoch() -> String {
    use std::hash::{BuildHasher, Hasher};
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // RandomState is seeded from the OS for each process.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(millis);
    hasher.write_u32(std::process::id());
    format!("e-{millis:x}-{:08x}", hasher.finish() as u32)
}

impl EmbeddedBroker {
    /// A broker whose stream is named `epoch` (see [`fresh_epoch`]; the
    /// simulator passes one derived from its seed).
    pub fn new(hub: Hub, retention: Retention, clock: Clock, epoch: String) -> Self {
        EmbeddedBroker {
            log: Mutex::new(Log {
                entries: VecDeque::new(),
                bytes: 0,
                last_sseq: 0,
            }),
            retention,
            hub,
            clock,
            order: tokio::sync::Mutex::new(()),
            epoch,
            dispatched: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        // A panic while holding this lock cannot leave the log torn (every
        // update is a push or pop), so a poisoned lock is still usable.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn publish_in_order(&self, subject: Subject, data: Bytes, priority: Priority) -> u64 {
        let _order = self.order.lock().await;
        let message = {
            let mut log = self.lock();
            let now = self.clock.now();
            log.last_sseq += 1;
            let message = Published::new(subject, log.last_sseq, priority, &data);
            log.bytes += message.tail_len() as u64;
            log.entries.push_back((now, Arc::clone(&message)));
            log.prune(now, &self.retention);
            message
        };
        let sseq = message.sseq;
        self.hub.dispatch(message).await;
        self.dispatched
            .store(sseq, std::sync::atomic::Ordering::Relaxed);
        sseq
    }

    fn fetch_now(&self, patterns: &[Pattern], since: u64) -> Fetched {
        let mut log = self.lock();
        log.prune(self.clock.now(), &self.retention);
        let messages = log
            .entries
            .iter()
            .map(|(_, m)| m)
            .filter(|m| m.sseq > since && patterns.iter().any(|p| p.matches(&m.subject)))
            .cloned()
            .collect();
        Fetched {
            first_retained: log.entries.front().map(|(_, m)| m.sseq),
            messages,
            last_sseq: log.last_sseq,
            epoch: self.epoch.clone(),
        }
    }
}

impl Broker for EmbeddedBroker {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn connected(&self) -> bool {
        true
    }

    fn epoch(&self) -> Option<String> {
        Some(self.epoch.clone())
    }

    fn publish(
        &self,
        subject: Subject,
        data: Bytes,
        priority: Priority,
    ) -> BoxFuture<'_, Result<u64, BrokerError>> {
        Box::pin(async move { Ok(self.publish_in_order(subject, data, priority).await) })
    }

    fn fetch(
        &self,
        patterns: Vec<Pattern>,
        since_sseq: u64,
    ) -> BoxFuture<'_, Result<Fetched, BrokerError>> {
        Box::pin(async move { Ok(self.fetch_now(&patterns, since_sseq)) })
    }

    fn position(&self) -> Position {
        Position {
            last_received: Some(self.dispatched.load(std::sync::atomic::Ordering::Relaxed)),
            stream_last: Some(self.lock().last_sseq),
        }
    }
}
