//! A shard: a partition of the upgraded connections, with its subscription
//! index, its sockets and one task that drives them all.
//!
//! A connection has no task of its own once upgraded. The shard's task
//! owns every socket through a [`Poller`], wakes on readiness, on published
//! messages from the hub, on handoffs from the handshake tasks and on the
//! earliest connection deadline, and calls the connection's state machine
//! ([`link::Link`]) for each. Published messages are written straight from
//! the fan-out: no wake-up of another task per subscriber, and messages
//! that arrive together leave in one write per connection.
//!
//! Shards share nothing but the admission table and the hub's channels, so
//! the same code runs on a multi-threaded runtime and single-threaded
//! inside a simulated host.

mod inbox;
mod link;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use slab::Slab;
use surge_core::Instant;
use surge_core::connection::{Connection, EndReason};
use surge_core::protocol::{CloseReason, Published};
use surge_core::session::Delivery;
use surge_core::subjects::SubscriptionIndex;
use tokio::sync::mpsc;

use crate::context::Context;
use crate::poller::Poller;
use crate::sync::lock;

pub(crate) use inbox::{Handoff, Inbox};
use link::{Flow, Link, Parts};

/// Published messages taken from the hub per round of the shard's task.
/// Queuing a message on a session is cheap next to the write it causes, and
/// connections still waiting for their write (`dirty`) collect every
/// message queued meanwhile into that one write: the busier the shard, the
/// more frames each write carries.
const FAN_OUT_BATCH: usize = 16;

/// Connection operations per round: between rounds the hub is read again,
/// so messages published while a fan-out is being written join the writes
/// still to come instead of waiting for a whole pass.
const OPS_PER_ROUND: usize = 128;

/// Connection operations (a read-and-write turn, a write after fan-out, a
/// deadline) per poll of the shard's task, about 10 ms of socket calls;
/// then the task yields so that the acceptor, handshakes and the admin
/// listener on the same worker thread are not starved by a long fan-out.
/// What is left stays queued in `ready` / `dirty` for the next poll.
const OPS_PER_POLL: usize = 1024;

/// Per-shard read buffer: bytes are handed to core before the next read,
/// so no connection carries a read buffer of its own.
const READ_BUFFER: usize = 16 * 1024;

/// One upgraded connection as the gateway reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionState {
    pub id: surge_core::admission::ConnId,
    pub queued_bytes: usize,
    pub throttle_level: u8,
    /// The session decided to close and the task is finishing.
    pub closed: bool,
}

/// What the gateway sees of a shard, whatever its socket type.
pub(crate) trait ShardView: Send + Sync {
    /// Appends every registered connection, in serial order.
    fn connections(&self, out: &mut Vec<ConnectionState>);
    /// Adds the connections' throttle levels and queued bytes.
    fn tally(&self, levels: &mut [u64; 4], queue_bytes: &mut u64);
    /// Asks the shard to close every connection with 1001.
    fn shutdown(&self);
    /// Connections with events or fan-out frames not handled yet.
    fn backlog(&self) -> usize;
}

pub(crate) struct ShardCell<P: Poller> {
    state: Mutex<ShardState<P>>,
}

impl<P: Poller> ShardCell<P> {
    /// Where handshake tasks hand this shard its connections.
    pub fn inbox(&self) -> mpsc::UnboundedSender<Inbox<P::Stream>> {
        lock(&self.state).inbox.clone()
    }
}

impl<P: Poller> ShardView for ShardCell<P> {
    fn connections(&self, out: &mut Vec<ConnectionState>) {
        let state = lock(&self.state);
        let start = out.len();
        out.extend(state.links.iter().map(|(_, link)| ConnectionState {
            id: link.conn.id(),
            queued_bytes: link.conn.session().queued_bytes(),
            throttle_level: link.conn.session().throttle_level().as_u8(),
            closed: link.conn.session().is_closed(),
        }));
        out[start..].sort_by_key(|c| c.id.serial);
    }

    fn tally(&self, levels: &mut [u64; 4], queue_bytes: &mut u64) {
        let state = lock(&self.state);
        for (_, link) in state.links.iter() {
            levels[link.conn.session().throttle_level() as usize] += 1;
            *queue_bytes += link.conn.session().queued_bytes() as u64;
        }
    }

    fn shutdown(&self) {
        let _ = lock(&self.state).inbox.send(Inbox::Shutdown);
    }

    fn backlog(&self) -> usize {
        let state = lock(&self.state);
        state.ready.len() + state.dirty.len()
    }
}

struct ShardState<P: Poller> {
    poller: P,
    links: Slab<Link<P::Socket>>,
    index: SubscriptionIndex<usize>,
    /// (deadline, token); an entry is current only while the link's
    /// `timer_at` equals its deadline, so stale entries are skipped.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Tokens reported ready and not yet handled.
    ready: VecDeque<usize>,
    /// Links that got frames from fan-out and have not written them yet.
    dirty: VecDeque<usize>,
    /// Where the poller reports tokens.
    reported: Vec<usize>,
    keys: Vec<usize>,
    read_buf: Box<[u8]>,
    scratch: Vec<u8>,
    ctx: Arc<Context>,
    /// This shard's own inbox: handshake tasks and resume fetches send here.
    inbox: mpsc::UnboundedSender<Inbox<P::Stream>>,
}

/// Starts a shard: returns it (the gateway keeps a weak reference and
/// takes the sender handshake tasks use from [`ShardCell::inbox`]) and the
/// task that owns and drives it.
pub(crate) fn start<P: Poller>(
    poller: P,
    ctx: Arc<Context>,
    hub: mpsc::Receiver<Arc<Published>>,
) -> (Arc<ShardCell<P>>, impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = mpsc::unbounded_channel();
    let cell = Arc::new(ShardCell {
        state: Mutex::new(ShardState {
            poller,
            links: Slab::new(),
            index: SubscriptionIndex::new(),
            timers: BinaryHeap::new(),
            ready: VecDeque::new(),
            dirty: VecDeque::new(),
            reported: Vec::new(),
            keys: Vec::new(),
            read_buf: vec![0u8; READ_BUFFER].into_boxed_slice(),
            scratch: Vec::new(),
            ctx,
            inbox: tx,
        }),
    });
    let task = drive(Arc::clone(&cell), rx, hub);
    (cell, task)
}

/// The shard's task. Runs until the gateway aborts it.
async fn drive<P: Poller>(
    cell: Arc<ShardCell<P>>,
    mut inbox: mpsc::UnboundedReceiver<Inbox<P::Stream>>,
    mut hub: mpsc::Receiver<Arc<Published>>,
) {
    let mut hub_open = true;
    let mut batch: Vec<Arc<Published>> = Vec::with_capacity(FAN_OUT_BATCH);
    let mut sleep: Option<(Instant, Pin<Box<tokio::time::Sleep>>)> = None;
    std::future::poll_fn(|cx| {
        let mut state = lock(&cell.state);
        let state = &mut *state;
        let mut budget = OPS_PER_POLL;
        loop {
            let mut busy = false;
            while let Poll::Ready(Some(message)) = inbox.poll_recv(cx) {
                state.on_inbox(message);
                busy = true;
            }
            if hub_open {
                while batch.len() < FAN_OUT_BATCH {
                    match hub.poll_recv(cx) {
                        Poll::Ready(Some(message)) => batch.push(message),
                        Poll::Ready(None) => {
                            hub_open = false;
                            break;
                        }
                        Poll::Pending => break,
                    }
                }
                if !batch.is_empty() {
                    state.fan_out(&batch);
                    batch.clear();
                    busy = true;
                }
            }
            match state.poller.poll_ready(cx, &mut state.reported) {
                Poll::Ready(Ok(())) => busy = true,
                Poll::Ready(Err(e)) => tracing::warn!(error = %e, "shard poller failed"),
                Poll::Pending => {}
            }
            state.ready.extend(state.reported.drain(..));
            let mut round = budget.min(OPS_PER_ROUND);
            let before = round;
            busy |= state.handle_ready(&mut round);
            busy |= state.flush_dirty(&mut round);
            busy |= state.fire_timers(&mut round);
            budget -= before - round;
            if budget == 0 {
                // More to do: let the worker run other tasks first.
                cx.waker().wake_by_ref();
                break;
            }
            if !busy {
                break;
            }
        }
        if let Some(at) = state.next_deadline() {
            let clock = state.ctx.clock;
            let (armed, timer) = sleep.get_or_insert_with(|| {
                (at, Box::pin(tokio::time::sleep_until(clock.to_tokio(at))))
            });
            if *armed != at {
                *armed = at;
                timer.as_mut().reset(clock.to_tokio(at));
            }
            if timer.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        } else {
            sleep = None;
        }
        Poll::<()>::Pending
    })
    .await
}

impl<P: Poller> ShardState<P> {
    fn on_inbox(&mut self, message: Inbox<P::Stream>) {
        match message {
            Inbox::Adopt(handoff) => self.adopt(handoff),
            Inbox::Fetched {
                token,
                serial,
                result,
            } => {
                let now = self.ctx.clock.now();
                self.with_link(token, Some(serial), |link, parts| {
                    link.on_fetched(result, parts, now)
                });
            }
            Inbox::Shutdown => {
                let tokens: Vec<usize> = self.links.iter().map(|(t, _)| t).collect();
                let now = self.ctx.clock.now();
                for token in tokens {
                    if let Some(link) = self.links.get_mut(token) {
                        link.conn.close(
                            CloseReason::ShuttingDown,
                            "server shutting down".into(),
                            now,
                        );
                    }
                    self.pump_link(token);
                }
            }
        }
    }

    fn adopt(&mut self, handoff: Handoff<P::Stream>) {
        let Handoff {
            stream,
            slot,
            response,
            leftover,
            grant,
            deflate,
            accepted,
        } = handoff;
        let ctx = Arc::clone(&self.ctx);
        let entry = self.links.vacant_entry();
        let token = entry.key();
        let socket = match self.poller.adopt(stream, token) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "shard could not take over a socket");
                return; // `slot` is released by its guard
            }
        };
        let Some(live) = slot.into_live() else {
            return;
        };
        let now = ctx.clock.now();
        let epoch = ctx.broker().epoch();
        let mut conn = Connection::new(
            live.id(),
            Arc::clone(&ctx.session_config),
            now,
            epoch.as_deref(),
            response,
        );
        conn.set_deflate(deflate);
        if let Some(grant) = grant {
            conn.authorize(grant, now, ctx.clock.unix_now());
        }
        // The gateway raises the flag before it sends `Shutdown`, so a
        // connection handed over after the sweep is closed here.
        if *ctx.shutdown.borrow() {
            conn.close(
                CloseReason::ShuttingDown,
                "server shutting down".into(),
                now,
            );
        }
        let mut link = Link::new(socket, conn, live);
        if !leftover.is_empty() {
            link.on_leftover(&leftover, now);
            ctx.metrics.session_counts(&link.conn.take_stats());
        }
        entry.insert(link);
        ctx.metrics.connections.inc();
        // The poller reports the socket if bytes are already waiting (the
        // epoll set on adding it, the waker poller always once).
        self.pump_link(token);
        // Accept to the 101 handed to the socket (with the welcome).
        let elapsed = ctx.clock.now().saturating_duration_since(accepted);
        ctx.metrics.handshake_seconds.observe(elapsed.as_secs_f64());
    }

    /// Calls `f` on the link at `token` (if it is still the connection
    /// `serial`), then removes or reschedules it as `f` says.
    fn with_link(
        &mut self,
        token: usize,
        serial: Option<u64>,
        f: impl FnOnce(&mut Link<P::Socket>, &mut Parts<'_, P>) -> Flow,
    ) {
        let Some(link) = self.links.get_mut(token) else {
            return;
        };
        if serial.is_some_and(|s| s != link.conn.id().serial) {
            return;
        }
        let mut parts = Parts {
            token,
            poller: &mut self.poller,
            index: &mut self.index,
            ctx: &self.ctx,
            inbox: &self.inbox,
            read_buf: &mut self.read_buf,
            scratch: &mut self.scratch,
        };
        let flow = f(link, &mut parts);
        // What only the session saw (errors, refusals, replays, throttle
        // changes, including those a fan-out caused since the last call).
        self.ctx.metrics.session_counts(&link.conn.take_stats());
        match flow {
            Flow::Keep => self.schedule(token),
            Flow::Again => {
                self.ready.push_back(token);
                self.schedule(token);
            }
            Flow::Remove(end) => self.remove(token, end),
        }
    }

    /// Lets the link act on what its session queued (no read: the poller
    /// reports readable sockets, and a read that finds nothing is a wasted
    /// syscall per delivery).
    fn pump_link(&mut self, token: usize) {
        let now = self.ctx.clock.now();
        self.with_link(token, None, |link, parts| link.pump(parts, now));
    }

    /// Handles ready sockets while the budget lasts. Returns whether any
    /// was handled.
    fn handle_ready(&mut self, budget: &mut usize) -> bool {
        let now = self.ctx.clock.now();
        let mut any = false;
        while *budget > 0 {
            let Some(token) = self.ready.pop_front() else {
                break;
            };
            *budget -= 1;
            any = true;
            self.with_link(token, None, |link, parts| link.on_ready(parts, now));
        }
        any
    }

    /// Writes what fan-out queued, link by link, while the budget lasts.
    fn flush_dirty(&mut self, budget: &mut usize) -> bool {
        let mut any = false;
        while *budget > 0 {
            let Some(token) = self.dirty.pop_front() else {
                break;
            };
            *budget -= 1;
            any = true;
            if let Some(link) = self.links.get_mut(token) {
                link.dirty = false;
            }
            self.pump_link(token);
        }
        any
    }

    /// Queues one batch of published messages on every matching session
    /// and lists the connections that got something; `flush_dirty` then
    /// writes each once, however many of the batch's messages it got.
    fn fan_out(&mut self, batch: &[Arc<Published>]) {
        let now = self.ctx.clock.now();
        let mut tally = Tally::default();
        let mut keys = std::mem::take(&mut self.keys);
        let write_now_at = self.ctx.session_config.outbound_queue_bytes / 2;
        for message in batch {
            self.index.matches_into(&message.subject, &mut keys);
            for &token in &keys {
                let Some(link) = self.links.get_mut(token) else {
                    continue;
                };
                let wake = match link.conn.deliver(message, now) {
                    Delivery::Queued(_) => {
                        tally.delivered += 1;
                        true
                    }
                    Delivery::Throttled => {
                        tally.throttled += 1;
                        false
                    }
                    Delivery::QueueFull => {
                        tally.queue_full += 1;
                        // A throttle notice may have been queued.
                        true
                    }
                    // Counted by the session with the copies it drops
                    // when a resume completes, and taken with its counts.
                    Delivery::Duplicate => false,
                    Delivery::DroppedClosing => {
                        tally.queue_full += 1;
                        true
                    }
                    Delivery::Closed => true,
                    Delivery::Held => false,
                };
                if !wake {
                    continue;
                }
                if link.conn.session().queued_bytes() > write_now_at {
                    // Half the queue's bound taken by this batch alone (large
                    // messages): write now rather than at the end of the
                    // batch, so that a client that keeps up is never
                    // throttled because of how the server batches.
                    self.pump_link(token);
                } else if !link.dirty {
                    link.dirty = true;
                    self.dirty.push_back(token);
                }
            }
        }
        self.keys = keys;
        let m = &self.ctx.metrics;
        m.delivered.inc_by(tally.delivered);
        m.dropped("throttled").inc_by(tally.throttled);
        m.dropped("queue_full").inc_by(tally.queue_full);
    }

    /// Puts the link's next deadline in the timer queue if it is earlier
    /// than the one already there.
    fn schedule(&mut self, token: usize) {
        let Some(link) = self.links.get_mut(token) else {
            return;
        };
        let Some(at) = link.conn.poll_timeout() else {
            return;
        };
        if link.timer_at.is_none_or(|t| at < t) {
            link.timer_at = Some(at);
            self.timers.push(Reverse((at, token)));
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Runs every deadline that has passed. Returns whether any did.
    fn fire_timers(&mut self, budget: &mut usize) -> bool {
        let now = self.ctx.clock.now();
        let mut fired = false;
        while let Some(&Reverse((at, token))) = self.timers.peek() {
            if at > now || *budget == 0 {
                break;
            }
            self.timers.pop();
            let current = self
                .links
                .get_mut(token)
                .is_some_and(|l| l.timer_at == Some(at));
            if !current {
                continue;
            }
            fired = true;
            *budget -= 1;
            if let Some(link) = self.links.get_mut(token) {
                link.timer_at = None;
            }
            self.with_link(token, None, |link, parts| link.on_timer(parts, now));
        }
        fired
    }

    /// Drops a connection: its patterns, its socket and its slot.
    fn remove(&mut self, token: usize, end: EndReason) {
        let link = self.links.remove(token);
        for p in link.conn.session().subscriptions() {
            self.index.remove(p, token);
        }
        let id = link.conn.id();
        lock(&self.ctx.admission).close(link.slot);
        self.ctx.metrics.connections.dec();
        self.ctx.metrics.ended(end);
        tracing::debug!(conn = %id, end = %end, "connection ended");
        // The socket closes as the link drops.
    }
}

/// Counts of one fan-out batch, added to the metrics once per batch
/// instead of once per subscriber.
#[derive(Debug, Default)]
struct Tally {
    delivered: u64,
    throttled: u64,
    queue_full: u64,
}

#[cfg(test)]
mod tests {
    use crate::tls::TlsSocket;

    /// An idle connection is its `Link` and nothing else in user space
    /// (the target is 0.5 KiB of RSS per idle connection, measured by
    /// `bench/run`); this keeps the state from growing back unnoticed.
    /// The socket is the TLS poller's: a plain connection pays 16 bytes
    /// for the TLS session it does not have (a pointer, and the padding
    /// next to the 4-byte descriptor).
    #[test]
    fn an_idle_connection_state_stays_within_its_budget() {
        let link = std::mem::size_of::<super::Link<TlsSocket<std::net::TcpStream>>>();
        let session = std::mem::size_of::<surge_core::session::Session>();
        assert!(link <= 376, "Link is {link} bytes (budget 376)");
        assert!(session <= 280, "Session is {session} bytes (budget 280)");
    }
}
