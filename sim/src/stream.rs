//! A shared stream for several gateways: the part of NATS JetStream the
//! gateways rely on, modelled in the simulation's memory.
//!
//! One [`SharedStream`] stands for the cluster's stream: it numbers every
//! published message with the next stream sequence, retains them all for
//! the run, and has one epoch for its whole life (a gateway restart does
//! not change it, as a JetStream stream's does not). Each gateway process
//! sees it through a [`StreamBroker`] (surge's `Broker` trait) and feeds
//! its hub from its own consumer task ([`consume`]), as the NATS bridge
//! does with its ordered consumer: it dispatches every sequence after the
//! last one it dispatched, in order, never one at or below it, and after
//! its link to the stream comes back it picks up where it stopped.
//!
//! The link between a gateway and the stream is a switch the driver
//! flips ([`SharedStream::set_link`]), not a TCP connection: a partitioned
//! gateway's broker reports itself disconnected, refuses `fetch` and
//! `publish` with `Unavailable`, and its consumer takes nothing until the
//! link is back. [`SharedStream::set_available`] takes the whole stream
//! away (a broker outage for everyone).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use surge_core::protocol::{Priority, Published};
use surge_core::subjects::{Pattern, Subject};
use surge_runtime::broker::BoxFuture;
use surge_runtime::{Broker, BrokerError, Fetched, Hub};

/// How often a consumer looks for new messages (a pull's round trip).
pub const POLL: Duration = Duration::from_millis(5);
/// Messages a consumer takes in one pull.
const BATCH: usize = 256;

#[derive(Debug)]
struct Log {
    /// Every message, in sequence order (sequence = index + 1).
    messages: Vec<Arc<Published>>,
    /// Per gateway: whether its link to the stream is up.
    links: Vec<bool>,
    available: bool,
}

/// The stream every gateway of a run shares.
#[derive(Debug)]
pub struct SharedStream {
    log: Mutex<Log>,
    epoch: String,
}

fn lock(m: &Mutex<Log>) -> MutexGuard<'_, Log> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SharedStream {
    /// A stream for `gateways` gateways, every link up.
    pub fn new(gateways: usize, epoch: String) -> Arc<SharedStream> {
        Arc::new(SharedStream {
            log: Mutex::new(Log {
                messages: Vec::new(),
                links: vec![true; gateways],
                available: true,
            }),
            epoch,
        })
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Appends a message (a publisher publishing straight to the stream);
    /// `None` while the stream is unavailable.
    pub fn append(&self, subject: Subject, data: &[u8], priority: Priority) -> Option<u64> {
        let mut log = lock(&self.log);
        if !log.available {
            return None;
        }
        let sseq = log.messages.len() as u64 + 1;
        log.messages
            .push(Published::new(subject, sseq, priority, data));
        Some(sseq)
    }

    /// The last stream sequence.
    pub fn last_sseq(&self) -> u64 {
        lock(&self.log).messages.len() as u64
    }

    /// Cuts or restores gateway `gateway`'s link to the stream.
    pub fn set_link(&self, gateway: usize, up: bool) {
        if let Some(l) = lock(&self.log).links.get_mut(gateway) {
            *l = up;
        }
    }

    /// Takes the whole stream away, or brings it back.
    pub fn set_available(&self, available: bool) {
        lock(&self.log).available = available;
    }

    /// Whether gateway `gateway` reaches the stream now.
    pub fn reachable(&self, gateway: usize) -> bool {
        let log = lock(&self.log);
        log.available && log.links.get(gateway).copied().unwrap_or(false)
    }

    /// Up to `max` messages after `after`, if gateway `gateway` reaches
    /// the stream.
    fn pull(&self, gateway: usize, after: u64, max: usize) -> Option<Vec<Arc<Published>>> {
        let log = lock(&self.log);
        if !(log.available && log.links.get(gateway).copied().unwrap_or(false)) {
            return None;
        }
        let from = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(log.messages.len());
        let to = from.saturating_add(max).min(log.messages.len());
        Some(log.messages[from..to].to_vec())
    }
}

/// One gateway process's view of the shared stream.
#[derive(Debug)]
pub struct StreamBroker {
    stream: Arc<SharedStream>,
    gateway: usize,
}

impl StreamBroker {
    pub fn new(stream: Arc<SharedStream>, gateway: usize) -> StreamBroker {
        StreamBroker { stream, gateway }
    }
}

impl Broker for StreamBroker {
    fn kind(&self) -> &'static str {
        "stream"
    }

    fn connected(&self) -> bool {
        self.stream.reachable(self.gateway)
    }

    fn epoch(&self) -> Option<String> {
        Some(self.stream.epoch.clone())
    }

    fn publish(
        &self,
        subject: Subject,
        data: Bytes,
        priority: Priority,
    ) -> BoxFuture<'_, Result<u64, BrokerError>> {
        let result = if self.connected() {
            self.stream
                .append(subject, &data, priority)
                .ok_or_else(|| BrokerError::Unavailable("stream unavailable".into()))
        } else {
            Err(BrokerError::Unavailable("cut off from the stream".into()))
        };
        Box::pin(async move { result })
    }

    fn fetch(
        &self,
        patterns: Vec<Pattern>,
        since_sseq: u64,
    ) -> BoxFuture<'_, Result<Fetched, BrokerError>> {
        let result = match self.stream.pull(self.gateway, since_sseq, usize::MAX) {
            None => Err(BrokerError::Unavailable("cut off from the stream".into())),
            Some(after) => {
                let log = lock(&self.stream.log);
                Ok(Fetched {
                    first_retained: log.messages.first().map(|m| m.sseq),
                    messages: after
                        .into_iter()
                        .filter(|m| patterns.iter().any(|p| p.matches(&m.subject)))
                        .collect(),
                    last_sseq: log.messages.len() as u64,
                    epoch: self.stream.epoch.clone(),
                })
            }
        };
        Box::pin(async move { result })
    }
}

/// A gateway's live consumer: from the stream's end at its start, every
/// message in order into `hub`, pulling every [`POLL`]; stops when the
/// gateway has stopped.
pub async fn consume(stream: Arc<SharedStream>, gateway: usize, hub: Hub) {
    let mut last = stream.last_sseq();
    loop {
        tokio::time::sleep(POLL).await;
        let Some(batch) = stream.pull(gateway, last, BATCH) else {
            continue;
        };
        for message in batch {
            let sseq = message.sseq;
            if sseq <= last {
                continue;
            }
            if !hub.dispatch(message).await {
                return;
            }
            last = sseq;
        }
    }
}
