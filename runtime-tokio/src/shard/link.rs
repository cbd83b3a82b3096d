//! One upgraded connection as its shard drives it: the socket, its token
//! in the shard's poller, and core's [`Connection`], which decides
//! everything else. No task and no future: the shard calls in when the
//! socket is ready, when a published message arrives, when a resume's
//! fetch returns or when the connection's deadline passes; each call moves
//! what bytes it can and applies what the connection asks for.

use std::sync::Arc;

use surge_core::Instant;
use surge_core::admission::LiveSlot;
use surge_core::connection::{ConnEvent, Connection, EndReason};
use surge_core::subjects::SubscriptionIndex;
use tokio::sync::mpsc;

use crate::broker::{BrokerError, Fetched};
use crate::context::Context;
use crate::poller::Poller;

use super::inbox::Inbox;

/// Reads per readiness report before other connections get their turn:
/// one connection delays the others on its shard by at most this many
/// reads (and the inbound budget closes a client that floods them).
const READS_PER_TURN: usize = 4;

/// What the shard does with the connection after a call.
pub(super) enum Flow {
    Keep,
    /// Keep, and call `on_ready` again soon: it stopped reading to give
    /// other connections a turn.
    Again,
    Remove(EndReason),
}

/// The shard's parts a connection needs while it is driven.
pub(super) struct Parts<'a, P: Poller> {
    /// The connection's token in its shard.
    pub token: usize,
    pub poller: &'a mut P,
    pub index: &'a mut SubscriptionIndex<usize>,
    pub ctx: &'a Arc<Context>,
    pub inbox: &'a mpsc::UnboundedSender<Inbox<P::Stream>>,
    pub read_buf: &'a mut [u8],
    /// Where frames are framed before a write, shared by the shard.
    pub scratch: &'a mut Vec<u8>,
}

pub(super) struct Link<K> {
    pub socket: K,
    pub conn: Connection,
    pub slot: LiveSlot,
    /// The deadline the shard's timer queue holds for this connection.
    pub timer_at: Option<Instant>,
    /// Listed among the shard's connections to pump after a fan-out batch.
    pub dirty: bool,
    /// The poller was asked to report writability (bytes are waiting).
    write_armed: bool,
}

impl<K> Link<K> {
    pub fn new(socket: K, conn: Connection, slot: LiveSlot) -> Self {
        Link {
            socket,
            conn,
            slot,
            timer_at: None,
            dirty: false,
            write_armed: false,
        }
    }

    /// The socket may be readable or writable.
    pub fn on_ready<P: Poller<Socket = K>>(
        &mut self,
        parts: &mut Parts<'_, P>,
        now: Instant,
    ) -> Flow {
        let mut again = false;
        for reads in 0.. {
            if self.conn.is_ended() {
                break;
            }
            if reads == READS_PER_TURN {
                again = true;
                break;
            }
            match parts.poller.read(&mut self.socket, parts.read_buf) {
                Ok(None) => break,
                Ok(Some(0)) => {
                    self.conn.handle_eof(now);
                    break;
                }
                Ok(Some(n)) => self.conn.handle_bytes(&parts.read_buf[..n], now),
                Err(e) => {
                    tracing::debug!(error = %e, "read failed");
                    self.conn.handle_io_error();
                    break;
                }
            }
        }
        match self.pump(parts, now) {
            Flow::Keep if again => Flow::Again,
            flow => flow,
        }
    }

    /// Bytes that followed the request head in the handshake's last read.
    pub fn on_leftover(&mut self, leftover: &[u8], now: Instant) {
        self.conn.handle_bytes(leftover, now);
    }

    /// The connection's deadline passed.
    pub fn on_timer<P: Poller<Socket = K>>(
        &mut self,
        parts: &mut Parts<'_, P>,
        now: Instant,
    ) -> Flow {
        self.conn.handle_timeout(now);
        self.pump(parts, now)
    }

    /// A resume's fetch came back.
    pub fn on_fetched<P: Poller<Socket = K>>(
        &mut self,
        result: Result<Fetched, BrokerError>,
        parts: &mut Parts<'_, P>,
        now: Instant,
    ) -> Flow {
        self.conn
            .handle_fetched(result.map_err(|e| e.to_string()), now);
        self.pump(parts, now)
    }

    /// Applies what the connection asks for and writes until the socket
    /// refuses or nothing is left.
    pub fn pump<P: Poller<Socket = K>>(&mut self, parts: &mut Parts<'_, P>, now: Instant) -> Flow {
        if let Err(e) = parts.poller.flush(&mut self.socket) {
            tracing::debug!(error = %e, "flush failed");
            self.conn.handle_io_error();
        }
        loop {
            let mut acted = false;
            while let Some(event) = self.conn.poll_event(now) {
                acted = true;
                if let Some(end) = self.apply(event, parts) {
                    return Flow::Remove(end);
                }
            }
            let wrote = self.transmit(parts, now);
            if !acted && !wrote {
                break;
            }
        }
        let wants = self.conn.wants_write() || parts.poller.holds_output(&self.socket);
        if wants != self.write_armed {
            // Writability only while something waits for it: otherwise
            // every ACK would report the socket.
            self.write_armed = wants;
            let token = parts.token;
            if let Err(e) = parts.poller.want_writable(&mut self.socket, token, wants) {
                tracing::debug!(error = %e, "poller refused the socket");
                return Flow::Remove(EndReason::Io);
            }
        }
        Flow::Keep
    }

    /// Carries out one of the connection's requests; the end reason when
    /// the connection is over.
    fn apply<P: Poller<Socket = K>>(
        &mut self,
        event: ConnEvent,
        parts: &mut Parts<'_, P>,
    ) -> Option<EndReason> {
        match event {
            ConnEvent::Subscribe(patterns) => {
                for p in &patterns {
                    parts.index.insert(p, parts.token);
                }
            }
            ConnEvent::Unsubscribe(patterns) => {
                for p in &patterns {
                    parts.index.remove(p, parts.token);
                }
            }
            ConnEvent::Fetch {
                subscribe,
                patterns,
                since_sseq,
            } => {
                // Subscribe first: live messages from here on are held by
                // the connection, and the fetch covers the rest.
                for p in &subscribe {
                    parts.index.insert(p, parts.token);
                }
                parts.ctx.metrics.resumes.inc();
                let ctx = Arc::clone(parts.ctx);
                let inbox = parts.inbox.clone();
                let (token, serial) = (parts.token, self.conn.id().serial);
                tokio::spawn(async move {
                    let result = ctx.broker().fetch(patterns, since_sseq).await;
                    let _ = inbox.send(Inbox::Fetched {
                        token,
                        serial,
                        result,
                    });
                });
            }
            ConnEvent::ShutdownWrite => parts.poller.shutdown(&mut self.socket),
            ConnEvent::Ended(end) => return Some(end),
        }
        None
    }

    /// Writes what the connection has for the socket until it refuses.
    /// Returns whether any byte went out.
    fn transmit<P: Poller<Socket = K>>(&mut self, parts: &mut Parts<'_, P>, now: Instant) -> bool {
        let mut wrote = false;
        loop {
            let (len, result) = {
                let Some(bytes) = self.conn.poll_transmit(parts.scratch, now) else {
                    return wrote;
                };
                (
                    bytes.len(),
                    write_some(parts.poller, &mut self.socket, bytes),
                )
            };
            match result {
                Ok(n) => {
                    parts.ctx.metrics.bytes_sent.inc_by(n as u64);
                    self.conn.on_written(n, parts.scratch, now);
                    wrote |= n > 0;
                    if n < len {
                        return wrote;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "write failed");
                    self.conn.handle_io_error();
                    return wrote;
                }
            }
        }
    }
}

/// Writes from `bytes` until all is written or the socket is full; returns
/// how many bytes went.
fn write_some<P: Poller>(
    poller: &mut P,
    socket: &mut P::Socket,
    bytes: &[u8],
) -> std::io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match poller.write(socket, &bytes[written..])? {
            Some(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "socket accepted no bytes",
                ));
            }
            Some(n) => written += n,
            None => break,
        }
    }
    Ok(written)
}
