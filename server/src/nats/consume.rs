//! Live consumption: the stream, in order, into the gateway's hub.
//!
//! # Why an ephemeral ordered consumer per instance
//!
//! Every surge instance must deliver every message to its own clients, and
//! instances come and go with autoscaling and deploys. A shared durable
//! consumer would split the messages between instances (each would see
//! only part of the stream), and a durable per instance would outlive the
//! instance and pile up on the server. So each instance reads the whole
//! stream through its own ephemeral consumer: no acknowledgements (nothing
//! is removed by reading; retention is the stream's limits), in-memory
//! consumer state, one replica, removed by the server when the instance
//! stops pulling. It is *ordered*: the bridge checks that consumer
//! sequences arrive without a gap and, on a gap, an error, missed
//! heartbeats or a NATS reconnect, throws the consumer away and creates a
//! new one that starts at the stream sequence after the last one
//! dispatched. Handing that to the client library's own ordered consumer
//! would also work, but it restarts from the *first* retained message when
//! it has yielded nothing yet, and the bridge must know exactly where it
//! stands anyway: it never dispatches a stream sequence at or below the
//! last one it dispatched, so a recreated consumer can neither lose nor
//! repeat a message that JetStream retained.
//!
//! # Backpressure, not loss
//!
//! The consumer is pull-based: the bridge asks for a bounded batch at a
//! time and asks for more only as it takes messages. Whatever slows it
//! down (the `SURGE_BROKER_RATE` token bucket, the resource guard's pause,
//! `Hub::dispatch` waiting on busy shards) leaves the rest in the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{self, Stream as Messages};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use futures_util::StreamExt;
use surge_core::protocol::Published;
use surge_core::ratelimit::TokenBucket;
use surge_core::subjects::Subject;
use surge_runtime::{Clock, Hub};
use tokio::sync::watch;

use super::{Link, priority_of, stream};

/// Messages asked for in one pull: enough to keep the pipe full at tens of
/// thousands of messages per second, few enough that a paused bridge holds
/// little in memory.
const BATCH: usize = 256;
/// How long one pull request stays open on the server.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// The server proves an idle consumer is alive this often; two missed in a
/// row make the bridge recreate the consumer.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// The server removes a consumer nobody pulls from after this long (an
/// instance that died, or one replaced by a recreate).
const INACTIVE_THRESHOLD: Duration = Duration::from_secs(30);

/// Why draining a consumer stopped.
enum Stop {
    /// The gateway is gone; stop consuming.
    Gateway,
    /// Start a new consumer after the last dispatched sequence.
    Recreate(String),
}

/// The live consumer's loop and its position in the stream.
pub(super) struct LiveConsumer {
    pub link: Link,
    pub hub: Hub,
    pub clock: Clock,
    /// `SURGE_BROKER_RATE`: messages per second, 0 = unlimited.
    pub rate: u32,
    pub paused: watch::Receiver<bool>,
    /// The last stream sequence handed to the hub.
    pub last_dispatched: u64,
    /// The epoch of the stream `last_dispatched` counts in.
    pub epoch: Option<String>,
    /// The same, for [`super::NatsBroker::last_dispatched`].
    pub shared_last: Arc<AtomicU64>,
}

/// Delay after the `failures`-th failed attempt to create a consumer.
fn retry_delay(failures: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.pow(failures.saturating_sub(1).min(5)))
        .min(Duration::from_secs(2))
}

impl LiveConsumer {
    pub async fn run(mut self) {
        // A tenth of a second of burst: smooth, and exact over time.
        let burst = (self.rate / 10).max(1);
        let mut bucket = TokenBucket::new(self.rate, burst, self.clock.now());
        let mut connects = self.link.events.connects.subscribe();
        let mut previous: Option<String> = None;
        let mut failures = 0u32;
        loop {
            connects.borrow_and_update();
            if let Some(old) = previous.take() {
                self.delete_later(old);
            }
            let (name, messages) = match self.open().await {
                Ok(opened) => opened,
                Err(reason) => {
                    failures += 1;
                    let delay = retry_delay(failures);
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(%reason, failures, "cannot create the NATS consumer; retrying");
                    }
                    // A reconnect is the moment to try again at once.
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = connects.changed() => {}
                    }
                    continue;
                }
            };
            failures = 0;
            tracing::info!(consumer = %name, start = self.last_dispatched + 1, "consuming the NATS stream");
            previous = Some(name);
            match self.drain(messages, &mut bucket, &mut connects).await {
                Stop::Gateway => {
                    if let Some(old) = previous.take() {
                        self.delete_later(old);
                    }
                    return;
                }
                Stop::Recreate(reason) => {
                    tracing::info!(%reason, resume_at = self.last_dispatched + 1, "recreating the NATS consumer");
                }
            }
        }
    }

    /// Creates a consumer that starts right after the last dispatched
    /// sequence, and its message stream.
    async fn open(&mut self) -> Result<(String, Messages), String> {
        let stream = stream::current(&self.link.js, &self.link.spec).await?;
        let epoch = self.link.note_stream(&stream);
        let last = stream.cached_info().state.last_sequence;
        let previous = self.epoch.replace(epoch.clone());
        if previous.as_ref().is_some_and(|e| *e != epoch) {
            // Deleted and created again: its sequences count from 1 once
            // more, whether or not they have passed the old position yet,
            // and everything in it is new to the clients.
            tracing::warn!(
                stream = %self.link.spec.name,
                last_dispatched = self.last_dispatched,
                new_epoch = %epoch,
                "the stream was created again: consuming the new one from its first message"
            );
            self.advance(0);
        } else if last < self.last_dispatched {
            // Sequences only grow, so the stream was deleted or reset.
            tracing::error!(
                stream = %self.link.spec.name,
                last_sequence = last,
                last_dispatched = self.last_dispatched,
                "the stream's sequences went back: it was reset; continuing from its current end"
            );
            self.advance(last);
        }
        let consumer = stream
            .create_consumer(pull::Config {
                description: Some("surge live fan-out (ephemeral, ordered)".into()),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: self.last_dispatched + 1,
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: INACTIVE_THRESHOLD,
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating the consumer: {e}"))?;
        let name = consumer.cached_info().name.clone();
        let messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .expires(PULL_EXPIRES)
            .heartbeat(HEARTBEAT)
            .messages()
            .await
            .map_err(|e| format!("pulling from the consumer: {e}"))?;
        Ok((name, messages))
    }

    /// Removes a replaced consumer without waiting for it; the server
    /// removes it after [`INACTIVE_THRESHOLD`] anyway.
    fn delete_later(&self, name: String) {
        let js = self.link.js.clone();
        let stream = self.link.spec.name.clone();
        tokio::spawn(async move {
            let delete = js.delete_consumer_from_stream(&name, &stream);
            let _ = tokio::time::timeout(Duration::from_secs(5), delete).await;
        });
    }

    fn advance(&mut self, sseq: u64) {
        self.last_dispatched = sseq;
        self.shared_last.store(sseq, Ordering::Relaxed);
    }

    /// Waits for a token of the broker rate limit.
    async fn take_token(&self, bucket: &mut TokenBucket) {
        loop {
            let now = self.clock.now();
            if bucket.try_acquire(1, now) {
                return;
            }
            // The bucket holds at least one token, so `ready_at(1)` exists.
            let at = bucket
                .ready_at(1, now)
                .unwrap_or(now + Duration::from_millis(1));
            tokio::time::sleep_until(self.clock.to_tokio(at)).await;
        }
    }

    /// Dispatches messages in order until something calls for a new
    /// consumer or the gateway stops.
    async fn drain(
        &mut self,
        mut messages: Messages,
        bucket: &mut TokenBucket,
        connects: &mut watch::Receiver<u64>,
    ) -> Stop {
        let mut expected_consumer_seq = 1u64;
        loop {
            // Paused by the resource guard: take nothing; the stream keeps it.
            while *self.paused.borrow_and_update() {
                if self.paused.changed().await.is_err() {
                    return Stop::Gateway;
                }
            }
            let next = tokio::select! {
                biased;
                changed = connects.changed() => {
                    if changed.is_err() {
                        return Stop::Gateway;
                    }
                    return Stop::Recreate("NATS reconnected".into());
                }
                changed = self.paused.changed() => {
                    if changed.is_err() {
                        return Stop::Gateway;
                    }
                    continue;
                }
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(e)) => return Stop::Recreate(format!("consumer error: {e}")),
                None => return Stop::Recreate("the consumer's message stream ended".into()),
            };
            let (sseq, consumer_seq) = match message.info() {
                Ok(info) => (info.stream_sequence, info.consumer_sequence),
                Err(e) => {
                    return Stop::Recreate(format!("a message without JetStream metadata: {e}"));
                }
            };
            if consumer_seq != expected_consumer_seq {
                return Stop::Recreate(format!(
                    "consumer sequence {consumer_seq} where {expected_consumer_seq} was due: messages were missed"
                ));
            }
            expected_consumer_seq += 1;
            if sseq <= self.last_dispatched {
                continue;
            }
            if sseq > self.last_dispatched + 1 {
                tracing::warn!(
                    from = self.last_dispatched + 1,
                    to = sseq - 1,
                    "stream messages left the stream (retention limits) before they were consumed"
                );
            }
            let subject = match Subject::parse(message.subject.as_str()) {
                Ok(subject) => subject,
                Err(e) => {
                    // No client can subscribe to it, so it reaches nobody.
                    tracing::warn!(subject = %message.subject, sseq, error = %e, "skipping a message whose subject surge cannot route");
                    self.advance(sseq);
                    continue;
                }
            };
            let published = Published::new(
                subject,
                sseq,
                priority_of(message.headers.as_ref()),
                &message.payload,
            );
            self.take_token(bucket).await;
            if !self.hub.dispatch(published).await {
                return Stop::Gateway;
            }
            self.advance(sseq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_creation_retries_back_off_to_two_seconds() {
        let delays: Vec<u128> = (1..=7).map(|f| retry_delay(f).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(2));
    }
}
