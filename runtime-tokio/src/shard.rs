//! A shard: a partition of connections with its own subscription index
//! and fan-out task. Shards share nothing but the admission table and the
//! hub's channels, so the same code runs on a multi-threaded runtime and
//! single-threaded inside a simulated host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use surge_core::protocol::Published;
use surge_core::session::{Delivery, Session};
use surge_core::subjects::{Pattern, SubscriptionIndex};
use tokio::sync::{Notify, mpsc};

use crate::clock::Clock;
use crate::metrics::Metrics;

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (every critical section here is a single core call).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the shard and a connection's task share.
#[derive(Debug)]
pub(crate) struct ConnShared {
    pub session: Mutex<Session>,
    /// Wakes the connection task when frames or actions are queued.
    pub notify: Notify,
}

#[derive(Debug)]
pub(crate) struct Shard {
    index: Mutex<SubscriptionIndex<u64>>,
    conns: Mutex<HashMap<u64, Arc<ConnShared>>>,
}

impl Shard {
    pub fn new() -> Self {
        Shard {
            index: Mutex::new(SubscriptionIndex::new()),
            conns: Mutex::new(HashMap::new()),
        }
    }

    pub fn register(&self, serial: u64, conn: Arc<ConnShared>) {
        lock(&self.conns).insert(serial, conn);
    }

    /// Removes a connection and every pattern it held.
    pub fn unregister(&self, serial: u64, patterns: &[Pattern]) {
        lock(&self.conns).remove(&serial);
        let mut index = lock(&self.index);
        for p in patterns {
            index.remove(p, serial);
        }
    }

    pub fn subscribe(&self, serial: u64, patterns: &[Pattern]) {
        let mut index = lock(&self.index);
        for p in patterns {
            index.insert(p, serial);
        }
    }

    pub fn unsubscribe(&self, serial: u64, patterns: &[Pattern]) {
        let mut index = lock(&self.index);
        for p in patterns {
            index.remove(p, serial);
        }
    }

    /// Every registered connection (for scrapes and shutdown).
    pub fn connections(&self) -> Vec<Arc<ConnShared>> {
        let conns = lock(&self.conns);
        let mut serials: Vec<&u64> = conns.keys().collect();
        serials.sort();
        serials
            .iter()
            .filter_map(|s| conns.get(s).cloned())
            .collect()
    }

    /// Delivers one published message to this shard's subscribers.
    fn fan_out(
        &self,
        message: &Arc<Published>,
        clock: &Clock,
        keys: &mut Vec<u64>,
        tally: &mut Tally,
    ) {
        lock(&self.index).matches_into(&message.subject, keys);
        if keys.is_empty() {
            return;
        }
        let now = clock.now();
        let conns = lock(&self.conns);
        for key in keys.iter() {
            let Some(conn) = conns.get(key) else { continue };
            let delivery = lock(&conn.session).deliver(message, now);
            match delivery {
                Delivery::Queued(_) => {
                    tally.delivered += 1;
                    conn.notify.notify_one();
                }
                Delivery::Throttled => tally.throttled += 1,
                Delivery::QueueFull => {
                    tally.queue_full += 1;
                    // A throttle notice may have been queued.
                    conn.notify.notify_one();
                }
                Delivery::Duplicate => tally.duplicates += 1,
                Delivery::Closed => conn.notify.notify_one(),
                Delivery::Held => {}
            }
        }
    }
}

/// Counts of one fan-out pass, added to the metrics once per message
/// instead of once per subscriber.
#[derive(Debug, Default)]
struct Tally {
    delivered: u64,
    throttled: u64,
    queue_full: u64,
    duplicates: u64,
}

/// The shard's fan-out task: runs until the hub is gone.
pub(crate) async fn run_fan_out(
    shard: Arc<Shard>,
    mut rx: mpsc::Receiver<Arc<Published>>,
    clock: Clock,
    metrics: Arc<Metrics>,
) {
    let mut keys = Vec::new();
    let throttled = metrics.dropped("throttled");
    let queue_full = metrics.dropped("queue_full");
    while let Some(message) = rx.recv().await {
        let mut tally = Tally::default();
        shard.fan_out(&message, &clock, &mut keys, &mut tally);
        metrics.delivered.inc_by(tally.delivered);
        throttled.inc_by(tally.throttled);
        queue_full.inc_by(tally.queue_full);
        metrics.deduplicated.inc_by(tally.duplicates);
    }
}
