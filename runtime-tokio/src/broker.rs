//! What the gateway needs from a message broker, and the hub that carries
//! published messages to the shards.
//!
//! A broker assigns each message its stream sequence (`sseq`), hands live
//! messages to the [`Hub`] in stream order, and can read back what it
//! retains for `resume`. The embedded broker lives in the `embedded` module;
//! the NATS JetStream bridge lives in the server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use surge_core::protocol::{Priority, Published};
use surge_core::subjects::{Pattern, Subject};
use tokio::sync::mpsc;

/// A boxed future, so `Broker` can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Retained messages read back for a `resume` (decided on in core).
pub use surge_core::connection::Fetched;

/// Why a broker operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("broker refused: {0}")]
    Refused(String),
    /// The shards have not taken the messages accepted before this one;
    /// the message was not accepted (no sequence taken), retry shortly.
    #[error("ingest queue full: {0}")]
    Full(String),
}

/// A message broker as the gateway sees it.
pub trait Broker: Send + Sync + 'static {
    /// `"embedded"` or `"nats"`.
    fn kind(&self) -> &'static str;

    /// Whether the broker is reachable now.
    fn connected(&self) -> bool;

    /// The identity of the stream that sequences count in: a new one
    /// whenever sequences may start over (an embedded broker's restart, a
    /// JetStream stream deleted and created again). `None` until known.
    fn epoch(&self) -> Option<String>;

    /// Publishes a message; resolves to its stream sequence.
    fn publish(
        &self,
        subject: Subject,
        data: Bytes,
        priority: Priority,
    ) -> BoxFuture<'_, Result<u64, BrokerError>>;

    /// Retained messages on `patterns` with sseq > `since_sseq`.
    fn fetch(
        &self,
        patterns: Vec<Pattern>,
        since_sseq: u64,
    ) -> BoxFuture<'_, Result<Fetched, BrokerError>>;

    /// Stops or resumes consumption (resource guard); messages stay in
    /// the stream meanwhile. Brokers that push synchronously ignore it.
    fn set_paused(&self, _paused: bool) {}

    /// Where live consumption stands in the stream, for the lag shown by
    /// the dashboard and `surge_broker_*_sseq`. Unknown by default.
    fn position(&self) -> Position {
        Position::default()
    }
}

/// Where live consumption stands: the last stream sequence handed to the
/// hub, and the stream's own last sequence as last read. The difference is
/// what the stream holds that this gateway has not received yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub last_received: Option<u64>,
    pub stream_last: Option<u64>,
}

/// Carries each live message to every shard, in the order received.
///
/// Two ways in. A broker that keeps messages itself (JetStream) calls
/// [`Hub::dispatch`], which waits while a shard's queue is full: the
/// backpressure reaches the broker, which keeps the message. The embedded
/// broker acknowledges a publish only once the message is on every shard's
/// queue, and must not wait on fan-out to do so: it takes a [`Room`] first
/// ([`Hub::try_reserve`]), which fails at once when a queue is full, so
/// `/publish` answers either "accepted" or "full, retry" without waiting.
#[derive(Debug, Clone)]
pub struct Hub {
    shards: Arc<Vec<mpsc::Sender<Arc<Published>>>>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// A place reserved for one message on every running shard's queue.
pub struct Room<'a> {
    permits: Vec<mpsc::Permit<'a, Arc<Published>>>,
    metrics: &'a crate::metrics::Metrics,
}

impl Room<'_> {
    /// Puts `message` on every reserved queue; cannot fail or wait.
    pub fn send(self, message: Arc<Published>) {
        self.metrics.published.inc();
        for permit in self.permits {
            permit.send(Arc::clone(&message));
        }
    }
}

/// Why [`Hub::try_reserve`] found no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    /// Each shard queue's capacity, in messages.
    pub capacity: usize,
}

impl Hub {
    pub(crate) fn new(
        shards: Vec<mpsc::Sender<Arc<Published>>>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Hub {
            shards: Arc::new(shards),
            metrics,
        }
    }

    /// The gateway's metrics, for a broker that reports its own events
    /// (the NATS bridge counts lost connections).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Hands `message` to every shard, waiting while a shard's queue is
    /// full. Returns false once the gateway has stopped.
    pub async fn dispatch(&self, message: Arc<Published>) -> bool {
        self.metrics.published.inc();
        let mut delivered = false;
        for shard in self.shards.iter() {
            delivered |= shard.send(Arc::clone(&message)).await.is_ok();
        }
        delivered
    }

    /// Reserves room for one message on every shard's queue, or says at
    /// once that some queue is full. Shards that have stopped are skipped.
    pub fn try_reserve(&self) -> Result<Room<'_>, QueueFull> {
        let mut permits = Vec::with_capacity(self.shards.len());
        for shard in self.shards.iter() {
            match shard.try_reserve() {
                Ok(permit) => permits.push(permit),
                Err(mpsc::error::TrySendError::Full(())) => {
                    self.metrics.ingest_refusals.inc();
                    return Err(QueueFull {
                        capacity: shard.max_capacity(),
                    });
                }
                Err(mpsc::error::TrySendError::Closed(())) => {}
            }
        }
        Ok(Room {
            permits,
            metrics: &self.metrics,
        })
    }

    /// Messages waiting in the fullest shard queue.
    pub fn queued(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.max_capacity() - s.capacity())
            .max()
            .unwrap_or(0)
    }
}
