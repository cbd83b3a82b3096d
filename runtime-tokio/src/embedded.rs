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
///
/// A publish is acknowledged once its message is in the log and on every
/// shard's queue, and never waits for the shards to make room: with a
/// queue full the publish is refused at once ([`BrokerError::Full`]) and
/// takes no sequence, so `/publish` answers in microseconds whatever the
/// fan-out is doing, and what it acknowledged is delivered.
#[derive(Debug)]
pub struct EmbeddedBroker {
    /// The log; its lock also orders publishes, so sequence order and the
    /// order messages reach the shards agree.
    log: Mutex<Log>,
    retention: Retention,
    hub: Hub,
    clock: Clock,
    /// Sequences start at 1 in every process: this names the run.
    epoch: String,
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
            epoch,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        // A panic while holding this lock cannot leave the log torn (every
        // update is a push or pop), so a poisoned lock is still usable.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_now(
        &self,
        subject: Subject,
        data: Bytes,
        priority: Priority,
    ) -> Result<u64, BrokerError> {
        let mut log = self.lock();
        // Room first: a refused publish must not take a sequence.
        let room = self.hub.try_reserve().map_err(|full| {
            BrokerError::Full(format!(
                "the shards have not yet taken the {} messages queued before this one (SURGE_INGEST_QUEUE); nothing was published, retry shortly",
                full.capacity
            ))
        })?;
        let now = self.clock.now();
        log.last_sseq += 1;
        let message = Published::new(subject, log.last_sseq, priority, &data);
        log.bytes += message.tail_len() as u64;
        log.entries.push_back((now, Arc::clone(&message)));
        log.prune(now, &self.retention);
        let sseq = message.sseq;
        room.send(message);
        Ok(sseq)
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
        let published = self.publish_now(subject, data, priority);
        Box::pin(async move { published })
    }

    fn fetch(
        &self,
        patterns: Vec<Pattern>,
        since_sseq: u64,
    ) -> BoxFuture<'_, Result<Fetched, BrokerError>> {
        Box::pin(async move { Ok(self.fetch_now(&patterns, since_sseq)) })
    }

    fn position(&self) -> Position {
        // Every sequenced message is on the shards' queues at once.
        let last = self.lock().last_sseq;
        Position {
            last_received: Some(last),
            stream_last: Some(last),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn broker(
        shards: usize,
        queue: usize,
    ) -> (EmbeddedBroker, Vec<mpsc::Receiver<Arc<Published>>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..shards).map(|_| mpsc::channel(queue)).unzip();
        let hub = Hub::new(senders, Arc::new(crate::metrics::Metrics::new()));
        let retention = Retention {
            max_age: Duration::from_secs(60),
            max_messages: 1000,
            max_bytes: 1 << 20,
        };
        let broker = EmbeddedBroker::new(hub, retention, Clock::start(), "e-test".into());
        (broker, receivers)
    }

    async fn publish(broker: &EmbeddedBroker, text: &str) -> Result<u64, BrokerError> {
        let subject = Subject::parse("odin.token.BTC.trade").unwrap();
        // Bounded: a publish must answer at once, whatever the shards do.
        tokio::time::timeout(
            Duration::from_secs(1),
            broker.publish(subject, Bytes::from(text.to_owned()), Priority::Medium),
        )
        .await
        .expect("publish answered without waiting for the shards")
    }

    #[tokio::test]
    async fn a_full_shard_queue_refuses_at_once_and_takes_no_sequence() {
        let (broker, mut shards) = broker(2, 2);
        assert_eq!(publish(&broker, "1").await, Ok(1));
        assert_eq!(publish(&broker, "2").await, Ok(2));
        // Neither shard has taken anything: both queues are full.
        let refused = publish(&broker, "3").await;
        assert!(
            matches!(&refused, Err(BrokerError::Full(why)) if why.contains("SURGE_INGEST_QUEUE")),
            "{refused:?}"
        );
        assert_eq!(broker.hub.metrics().ingest_refusals.get(), 1);
        assert_eq!(broker.hub.queued(), 2);
        // One shard takes a message; the other is still full.
        assert_eq!(shards[0].recv().await.unwrap().sseq, 1);
        assert!(matches!(
            publish(&broker, "3").await,
            Err(BrokerError::Full(_))
        ));
        assert_eq!(broker.hub.metrics().ingest_refusals.get(), 2);
        // Both have room: accepted with the next sequence, nothing skipped.
        assert_eq!(shards[1].recv().await.unwrap().sseq, 1);
        assert_eq!(publish(&broker, "3").await, Ok(3));
        for shard in &mut shards {
            let got: Vec<u64> = [shard.recv().await, shard.recv().await]
                .into_iter()
                .map(|m| m.unwrap().sseq)
                .collect();
            assert!(got == [2, 3], "{got:?}");
        }
        // The log holds exactly what was acknowledged.
        let subject = Pattern::parse("odin.>").unwrap();
        let fetched = broker.fetch_now(&[subject], 0);
        let sseqs: Vec<u64> = fetched.messages.iter().map(|m| m.sseq).collect();
        assert_eq!(sseqs, [1, 2, 3]);
        assert_eq!(broker.position().last_received, Some(3));
    }

    #[tokio::test]
    async fn a_stopped_shard_does_not_block_publishing() {
        let (broker, mut shards) = broker(2, 1);
        drop(shards.pop());
        for n in 1..=3 {
            assert_eq!(publish(&broker, "x").await, Ok(n));
            assert_eq!(shards[0].recv().await.unwrap().sseq, n);
        }
    }
}
