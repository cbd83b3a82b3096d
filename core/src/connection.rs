//! One upgraded connection, whole: the session, the frame decoder, the
//! closing handshake, the resume cursor, the bytes on their way out and
//! the inbound budget, as one state machine with time passed in.
//!
//! The driver (the runtime's shard, or the simulator through it) owns the
//! socket and only moves bytes:
//!
//! - inputs: [`Connection::handle_bytes`] (what the socket read),
//!   [`Connection::handle_eof`], [`Connection::deliver`] (a published
//!   message that matched), [`Connection::handle_fetched`] (a resume's
//!   broker read), [`Connection::on_written`] (how much the socket took),
//!   [`Connection::handle_timeout`];
//! - outputs: [`Connection::poll_event`] (change the subscription index,
//!   start a fetch, shut down writing, drop the socket),
//!   [`Connection::poll_transmit`] (bytes to write), and
//!   [`Connection::poll_timeout`] (when to call back).
//!
//! Order of what goes out: bytes already handed to the socket and refused
//! finish first (a frame cannot be cut); then notices (throttle updates,
//! errors, pongs) and the Close frame, which never wait behind queued
//! data; then data, at most [`WRITE_CHUNK`] bytes at a time, so a notice
//! waits behind one chunk at most.
//!
//! How a connection ends: a server close writes its Close (after the queue
//! when the reason [flushes it](CloseReason::flushes_queue), at once and
//! without the queue when the client is too slow) and waits for the
//! client's Close; a client close is echoed; a protocol error is answered
//! with its code. Then writing is shut down and the connection lingers,
//! reading and discarding, until the client closes too or the linger bound
//! passes, so the client receives the Close rather than a reset.

use std::sync::Arc;
use std::time::Duration;

use crate::admission::ConnId;
use crate::auth::Grant;
use crate::deflate::Deflate;
use crate::frame::{
    CloseAction, CloseState, DecodeLimits, Event, FrameDecoder, FrameError, OpCode,
    binary_frame_into, close_frame_into, compressed_frame_into, ping_frame_into, pong_frame_into,
    text_frame_into,
};
use crate::protocol::{CloseReason, OutFrame, Published};
use crate::session::{Action, Delivery, Recovery, Session, SessionConfig, SessionStats};
use crate::subjects::Pattern;
use crate::{Instant, UnixTime};

/// Data framed for one write at most: a notice queued meanwhile waits
/// behind this much, and no more.
pub const WRITE_CHUNK: usize = 32 * 1024;

/// How long a server close waits for the client's Close once its own is
/// written.
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How long a closed connection keeps reading (and discarding) what the
/// client still sends after writing is shut down, and how much: closing a
/// socket with unread bytes makes the kernel answer with a reset, which
/// can destroy the Close frame before the client reads it.
/// The bytes bound is large enough for a client still sending a message
/// far over the size limit (it gets 1009 from the header alone).
pub const LINGER: Duration = Duration::from_secs(2);
pub const LINGER_BYTES: usize = 8 << 20;

/// A Close that must jump a stuck queue (too-slow client) gets this long to
/// be written before the connection is dropped.
pub const URGENT_CLOSE_WRITE: Duration = Duration::from_secs(2);

/// What a resume read from the broker.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// The oldest stream sequence the broker still retains (on any
    /// subject), `None` when it retains nothing.
    pub first_retained: Option<u64>,
    /// Messages on the requested patterns with sseq > `since`, in order.
    pub messages: Vec<Arc<Published>>,
    /// The stream sequence up to which the fetch is complete.
    pub last_sseq: u64,
    /// The identity of the stream read.
    pub epoch: String,
}

/// How a connection ended: one value per way, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The client started the closing handshake (its code).
    ClientClosed { code: u16 },
    /// The server closed it.
    ServerClosed(CloseReason),
    /// The client broke the framing protocol (the code it was closed with).
    ProtocolError { code: u16 },
    /// The socket reached end of stream without a closing handshake.
    TransportClosed,
    /// The socket stayed full for the write timeout: the client stopped
    /// reading.
    WriteTimeout,
    /// The socket failed (reported by the driver).
    Io,
}

impl EndReason {
    /// The label of `surge_connections_ended_total{reason}`.
    pub fn metric_label(self) -> &'static str {
        match self {
            EndReason::ClientClosed { .. } => "client_closed",
            EndReason::ServerClosed(reason) => reason.metric_label(),
            EndReason::ProtocolError { .. } => "protocol_error",
            EndReason::TransportClosed => "transport_closed",
            EndReason::WriteTimeout => "write_timeout",
            EndReason::Io => "io_error",
        }
    }

    /// Ended because the client could not keep up.
    pub fn is_too_slow(self) -> bool {
        matches!(self, EndReason::WriteTimeout)
            || matches!(self, EndReason::ServerClosed(r) if r.is_too_slow())
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::ClientClosed { code } => write!(f, "client closed ({code})"),
            EndReason::ServerClosed(reason) => {
                write!(
                    f,
                    "closed by the server ({}, {})",
                    reason.metric_label(),
                    reason.code().code()
                )
            }
            EndReason::ProtocolError { code } => write!(f, "protocol error, closed with {code}"),
            EndReason::TransportClosed => write!(f, "connection dropped without a close"),
            EndReason::WriteTimeout => write!(f, "write timed out: the client is not reading"),
            EndReason::Io => write!(f, "socket error"),
        }
    }
}

/// What the driver must do besides writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEvent {
    /// Add these patterns for this connection to the subscription index
    /// before the next transmit (the client's `subscribed` is queued).
    Subscribe(Vec<Pattern>),
    /// Remove these patterns from the index.
    Unsubscribe(Vec<Pattern>),
    /// Add `subscribe` to the index, then read every retained message on
    /// `patterns` with sseq > `since_sseq` and hand the result to
    /// [`Connection::handle_fetched`].
    Fetch {
        subscribe: Vec<Pattern>,
        patterns: Vec<Pattern>,
        since_sseq: u64,
    },
    /// Everything is written: shut down the socket's writing half and keep
    /// reading (the connection lingers until [`ConnEvent::Ended`]).
    ShutdownWrite,
    /// Drop the socket and remove the connection (its patterns too).
    Ended(EndReason),
}

/// A resume in progress.
#[derive(Debug)]
enum Resume {
    /// The broker read is out.
    Fetching,
    /// Its messages are being queued as the client drains them.
    Feeding {
        messages: Vec<Arc<Published>>,
        next: usize,
        last_sseq: u64,
    },
}

/// Bytes the socket refused: `bytes[written..]` is still to go.
#[derive(Debug)]
struct Pending {
    bytes: Vec<u8>,
    written: usize,
    /// Since when the socket has refused bytes (`None`: not tried yet).
    blocked_since: Option<Instant>,
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// A Close is on its way out, or awaited from the client
    /// ([`CloseState`] says which).
    Closing,
    /// Writing is shut down; reading and discarding until the deadline.
    Lingering,
    /// The socket is to be dropped.
    Ended,
}

/// A Close the server still has to frame.
#[derive(Debug)]
struct QueuedClose {
    code: u16,
    message: String,
    /// Frames queued before it go first (graceful close).
    after_data: bool,
}

/// Frames and bytes the client sent in the current one-second window
/// (and, while lingering, the bytes discarded).
#[derive(Debug, Clone, Copy)]
struct InboundWindow {
    /// Whole seconds since the clock's epoch (136 years fit).
    second: u32,
    frames: u32,
    bytes: u32,
}

fn second_of(now: Instant) -> u32 {
    u32::try_from(now.as_nanos() / 1_000_000_000).unwrap_or(u32::MAX)
}

/// One upgraded connection (see the module docs).
#[derive(Debug)]
pub struct Connection {
    session: Session,
    /// Only while a frame or message is partly read.
    decoder: Option<Box<FrameDecoder>>,
    /// Only while the socket refuses bytes.
    pending: Option<Box<Pending>>,
    close: CloseState,
    phase: Phase,
    /// Only between a close's decision and the framing of its Close.
    queued_close: Option<Box<QueuedClose>>,
    /// Why it is ending, once it is.
    end: Option<EndReason>,
    /// While closing: when an urgent Close must have been written by;
    /// while lingering: when the linger ends.
    deadline: Option<Instant>,
    resume: Option<Box<Resume>>,
    inbound: InboundWindow,
    /// The highest `seq` framed for the socket so far.
    last_framed_seq: u64,
    /// The last transmit came from the driver's scratch buffer.
    from_scratch: bool,
    /// The server's Close is framed; once written, the wait for the
    /// client's starts.
    close_frame_framed: bool,
    shutdown_write_due: bool,
    end_reported: bool,
    /// permessage-deflate, when the upgrade negotiated it.
    deflate: Option<Deflate>,
}

impl Connection {
    /// A connection that just upgraded; `first_bytes` (the 101 response)
    /// and the `welcome` frame go out in its first transmit.
    pub fn new(
        id: ConnId,
        config: Arc<SessionConfig>,
        now: Instant,
        epoch: Option<&str>,
        first_bytes: Vec<u8>,
    ) -> Self {
        let session = Session::new(id, config, now, epoch);
        Connection {
            session,
            decoder: None,
            pending: (!first_bytes.is_empty()).then(|| {
                Box::new(Pending {
                    bytes: first_bytes,
                    written: 0,
                    blocked_since: None,
                })
            }),
            close: CloseState::new(),
            phase: Phase::Open,
            queued_close: None,
            end: None,
            deadline: None,
            resume: None,
            inbound: InboundWindow {
                second: second_of(now),
                frames: 0,
                bytes: 0,
            },
            last_framed_seq: 0,
            from_scratch: false,
            close_frame_framed: false,
            shutdown_write_due: false,
            end_reported: false,
            deflate: None,
        }
    }

    /// Turns on permessage-deflate as the upgrade negotiated it: messages
    /// of at least `compression_min_bytes` go out compressed and the
    /// client's compressed messages are inflated. Before any bytes move.
    pub fn set_deflate(&mut self, deflate: Option<Deflate>) {
        self.deflate = deflate;
    }

    pub fn id(&self) -> ConnId {
        self.session.id()
    }

    /// What the connection may read and until when: the grant its upgrade
    /// request earned (a verified token, or anonymous). `unix` is the
    /// wall-clock time at `now`; the token's deadlines follow from it.
    pub fn authorize(&mut self, grant: Grant, now: Instant, unix: UnixTime) {
        self.session.authorize(grant, now, unix);
        self.apply_actions(now);
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The session's counters since the last call (see
    /// [`Session::take_stats`]).
    pub fn take_stats(&mut self) -> SessionStats {
        self.session.take_stats()
    }

    /// Whether new data may still be queued (no Close sent or received).
    fn open(&self) -> bool {
        self.phase == Phase::Open && self.close.is_open()
    }

    /// The connection has ended: drop it.
    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Bytes were handed to the socket and not all taken: ask for
    /// writability.
    pub fn wants_write(&self) -> bool {
        self.pending.is_some()
    }

    // ----- inputs -----------------------------------------------------

    /// Bytes the socket read.
    pub fn handle_bytes(&mut self, bytes: &[u8], now: Instant) {
        match self.phase {
            Phase::Ended => return,
            Phase::Lingering => {
                let w = &mut self.inbound;
                w.bytes = w
                    .bytes
                    .saturating_add(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
                if w.bytes as usize > LINGER_BYTES {
                    self.phase = Phase::Ended;
                }
                return;
            }
            Phase::Open | Phase::Closing => {}
        }
        if self.close.is_done() {
            return;
        }
        if self.over_inbound_budget(bytes.len(), now) {
            return;
        }
        let config = self.session.config();
        let limits = DecodeLimits {
            max_message_bytes: config.max_message_bytes,
            keep_binary: config.echo,
            compressed: self.deflate.is_some(),
        };
        let mut decoder = self
            .decoder
            .take()
            .unwrap_or_else(|| Box::new(FrameDecoder::new(limits)));
        let frames_before = decoder.frames();
        let mut input = bytes;
        let mut error = None;
        loop {
            match decoder.feed(&mut input) {
                Ok(Some(event)) => self.on_event(event, now),
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
            if self.close.is_done() {
                break;
            }
        }
        let frames = decoder.frames() - frames_before;
        if !decoder.is_idle() && error.is_none() {
            self.decoder = Some(decoder);
        }
        self.count_frames(frames, now);
        if let Some(e) = error {
            self.on_protocol_error(&e, now);
        }
    }

    /// The socket reached end of stream.
    pub fn handle_eof(&mut self, _now: Instant) {
        if self.phase == Phase::Ended {
            return;
        }
        // A finished closing handshake (always so while lingering) keeps
        // its reason; otherwise the client just went away.
        let reason = self
            .end
            .filter(|_| self.close.is_done())
            .unwrap_or(EndReason::TransportClosed);
        self.close.on_transport_closed();
        self.end = Some(reason);
        self.phase = Phase::Ended;
    }

    /// The socket failed. A connection whose closing handshake was done
    /// keeps the reason it ended for.
    pub fn handle_io_error(&mut self) {
        if self.phase == Phase::Ended {
            return;
        }
        if !self.close.is_done() || self.end.is_none() {
            self.end = Some(EndReason::Io);
        }
        self.phase = Phase::Ended;
    }

    /// A live message that matched one of this connection's patterns.
    pub fn deliver(&mut self, message: &Arc<Published>, now: Instant) -> Delivery {
        if !self.open() {
            return Delivery::Closed;
        }
        self.session.deliver(message, now)
    }

    /// A resume's broker read came back (`Err` with the reason when the
    /// broker could not serve it).
    pub fn handle_fetched(&mut self, result: Result<Fetched, String>, now: Instant) {
        if !matches!(self.resume.as_deref(), Some(Resume::Fetching)) {
            return;
        }
        match result {
            Ok(fetched) => {
                let recovery = self.session.resume_fetched(
                    &fetched.epoch,
                    fetched.first_retained,
                    fetched.last_sseq,
                );
                let messages = match recovery {
                    Recovery::Feed => fetched.messages,
                    Recovery::Skip => Vec::new(),
                };
                self.resume = Some(Box::new(Resume::Feeding {
                    messages,
                    next: 0,
                    last_sseq: fetched.last_sseq,
                }));
                self.feed_resume(now);
            }
            Err(reason) => {
                self.resume = None;
                self.session.resume_failed(&reason, now);
            }
        }
    }

    /// The socket took `n` bytes of the last [`Connection::poll_transmit`]
    /// (`scratch` is the buffer passed to it).
    pub fn on_written(&mut self, n: usize, scratch: &[u8], now: Instant) {
        if self.from_scratch {
            self.from_scratch = false;
            if n < scratch.len() {
                self.pending = Some(Box::new(Pending {
                    bytes: scratch[n..].to_vec(),
                    written: 0,
                    blocked_since: Some(now),
                }));
            }
        } else if let Some(pending) = self.pending.as_deref_mut() {
            pending.written += n;
            if pending.written >= pending.bytes.len() {
                self.pending = None;
            } else {
                pending.blocked_since.get_or_insert(now);
            }
        }
        self.after_write(now);
    }

    /// Deadlines: heartbeats and idle, throttle recovery, the write
    /// timeout, the wait for the client's Close, the linger.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase == Phase::Ended {
            return;
        }
        if self.phase == Phase::Lingering {
            if self.deadline.is_some_and(|t| now >= t) {
                self.phase = Phase::Ended;
            }
            return;
        }
        if self
            .blocked_since()
            .is_some_and(|t| now >= t + self.session.config().write_timeout)
        {
            self.end = Some(EndReason::WriteTimeout);
            self.phase = Phase::Ended;
            return;
        }
        if self.deadline.is_some_and(|t| now >= t) {
            // The Close could not even be written: the client is gone or
            // not reading; free the slot now.
            self.phase = Phase::Ended;
            return;
        }
        if self.close.handle_timeout(now) == CloseAction::CloseTcp {
            self.begin_linger(now);
            return;
        }
        self.session.handle_timeout(now);
        self.apply_actions(now);
    }

    // ----- outputs ----------------------------------------------------

    /// The next thing the driver must do besides writing.
    pub fn poll_event(&mut self, now: Instant) -> Option<ConnEvent> {
        if self.phase == Phase::Ended {
            // Reported once.
            if self.end_reported {
                return None;
            }
            self.end_reported = true;
            return Some(ConnEvent::Ended(
                self.end.unwrap_or(EndReason::TransportClosed),
            ));
        }
        if self.shutdown_write_due {
            self.shutdown_write_due = false;
            return Some(ConnEvent::ShutdownWrite);
        }
        self.apply_actions(now);
        while self.resume.is_none() && self.open() {
            match self.session.poll_action()? {
                Action::Subscribe { patterns, reply } => {
                    self.session.confirm(reply);
                    return Some(ConnEvent::Subscribe(patterns));
                }
                Action::Unsubscribe { patterns, reply } => {
                    self.session.confirm(reply);
                    return Some(ConnEvent::Unsubscribe(patterns));
                }
                Action::Resume {
                    subscribe,
                    patterns,
                    since_sseq,
                } => {
                    self.resume = Some(Box::new(Resume::Fetching));
                    return Some(ConnEvent::Fetch {
                        subscribe,
                        patterns,
                        since_sseq,
                    });
                }
                other => self.apply_action(other, now),
            }
        }
        None
    }

    /// Bytes to write now, from the connection's own pending bytes or
    /// framed into `scratch`; `None` when nothing is to be written. Call
    /// [`Connection::on_written`] with what the socket took.
    pub fn poll_transmit<'a>(
        &'a mut self,
        scratch: &'a mut Vec<u8>,
        now: Instant,
    ) -> Option<&'a [u8]> {
        self.from_scratch = false;
        if matches!(self.phase, Phase::Lingering | Phase::Ended) {
            return None;
        }
        if self.pending.is_some() {
            return self.pending.as_deref().map(|p| &p.bytes[p.written..]);
        }
        self.feed_resume(now);
        scratch.clear();
        self.frame_into(scratch);
        if scratch.is_empty() {
            self.session.release_idle_memory();
            return None;
        }
        self.from_scratch = true;
        Some(&scratch[..])
    }

    /// When to call [`Connection::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Ended => return None,
            Phase::Lingering => return self.deadline,
            Phase::Open | Phase::Closing => {}
        }
        let write_timeout = self.session.config().write_timeout;
        [
            self.session.poll_timeout(),
            self.close.poll_timeout(),
            self.blocked_since().map(|t| t + write_timeout),
            self.deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Closes the connection for `reason` (e.g. shutdown).
    pub fn close(&mut self, reason: CloseReason, message: String, now: Instant) {
        self.session.close(reason, message);
        self.apply_actions(now);
    }

    // ----- internals --------------------------------------------------

    /// Applies the session's leading actions that need no driver (ping,
    /// close), even while a resume holds the others back; stops at one the
    /// driver must see, which `poll_event` returns.
    fn apply_actions(&mut self, now: Instant) {
        while let Some(Action::Close { .. } | Action::Ping) = self.session.peek_action() {
            if let Some(action) = self.session.poll_action() {
                self.apply_action(action, now);
            }
        }
    }

    fn apply_action(&mut self, action: Action, now: Instant) {
        match action {
            Action::Ping => {
                let mut frame = Vec::with_capacity(2);
                ping_frame_into(&mut frame, b"");
                self.session.push_wire(frame.into());
            }
            Action::Close {
                reason,
                message,
                lost,
            } => self.queue_close(reason, message, lost, now),
            Action::Subscribe { .. } | Action::Unsubscribe { .. } | Action::Resume { .. } => {}
        }
    }

    fn queue_close(
        &mut self,
        reason: CloseReason,
        message: String,
        lost: Option<u32>,
        now: Instant,
    ) {
        if self.phase != Phase::Open || !self.close.is_open() {
            return;
        }
        self.phase = Phase::Closing;
        self.end = Some(EndReason::ServerClosed(reason));
        self.resume = None;
        let after_data = reason.flushes_queue();
        let message = match lost {
            Some(lost) => {
                // What is still queued will not be sent either.
                let discarded = self.session.discard_data(self.last_framed_seq);
                format!(
                    "{message}; {} messages dropped after seq {}",
                    lost.saturating_add(discarded),
                    self.last_framed_seq
                )
            }
            None => message,
        };
        if !after_data {
            self.session.discard_data(u64::MAX);
            self.deadline = Some(now + URGENT_CLOSE_WRITE);
        }
        self.queued_close = Some(Box::new(QueuedClose {
            code: reason.code().code(),
            message,
            after_data,
        }));
    }

    /// An echoed message, compressed when the connection negotiated it.
    fn echo_frame_into(&self, out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
        match self.deflate {
            Some(d) if payload.len() >= self.session.config().compression_min_bytes => {
                compressed_frame_into(out, opcode, &[&crate::deflate::compress(payload, d)]);
            }
            _ if opcode == OpCode::Binary => binary_frame_into(out, &[payload]),
            _ => text_frame_into(out, &[payload]),
        }
    }

    fn on_event(&mut self, event: Event, now: Instant) {
        match event {
            Event::Text(text) if self.session.config().echo => {
                self.session.on_heard(now);
                if self.open() {
                    let mut frame = Vec::with_capacity(10 + text.len());
                    self.echo_frame_into(&mut frame, OpCode::Text, text.as_bytes());
                    self.session.push_wire(frame.into());
                }
            }
            Event::Binary {
                payload: Some(payload),
                ..
            } if self.session.config().echo => {
                self.session.on_heard(now);
                if self.open() {
                    let mut frame = Vec::with_capacity(10 + payload.len());
                    self.echo_frame_into(&mut frame, OpCode::Binary, &payload);
                    self.session.push_wire(frame.into());
                }
            }
            Event::Text(text) => {
                if self.open() {
                    self.session.handle_text(&text, now);
                    self.apply_actions(now);
                }
            }
            Event::Binary { .. } => {
                if self.open() {
                    self.session.handle_binary(now);
                }
            }
            Event::Ping(payload) => {
                self.session.on_heard(now);
                if self.open() {
                    let mut frame = Vec::with_capacity(2 + payload.len());
                    pong_frame_into(&mut frame, &payload);
                    self.session.push_wire(frame.into());
                }
            }
            Event::Pong(_) => self.session.on_heard(now),
            Event::Close { code, .. } => {
                match self.close.on_peer_close(code) {
                    CloseAction::ReplyThenCloseTcp { code } => {
                        // Echo the client's code; nothing queued after it
                        // is sent.
                        if self.queued_close.is_none() {
                            self.session.discard_data(u64::MAX);
                            self.queued_close = Some(Box::new(QueuedClose {
                                code,
                                message: String::new(),
                                after_data: false,
                            }));
                        }
                        self.end.get_or_insert(EndReason::ClientClosed { code });
                        self.phase = Phase::Closing;
                    }
                    CloseAction::CloseTcp | CloseAction::None => {
                        // Our Close was answered.
                        self.phase = Phase::Closing;
                    }
                }
                self.after_write(now);
            }
        }
    }

    fn on_protocol_error(&mut self, e: &FrameError, now: Instant) {
        let code = e.close_code();
        let write_close = self.close.fail();
        self.session.discard_data(u64::MAX);
        if write_close && self.queued_close.is_none() {
            self.queued_close = Some(Box::new(QueuedClose {
                code,
                message: e.to_string(),
                after_data: false,
            }));
        }
        self.end.get_or_insert(EndReason::ProtocolError { code });
        self.phase = Phase::Closing;
        self.after_write(now);
    }

    /// Counts `bytes` against this second's budget; closes a client over
    /// it (1008) and reports whether the bytes are to be ignored.
    fn over_inbound_budget(&mut self, bytes: usize, now: Instant) -> bool {
        self.roll_window(now);
        let w = &mut self.inbound;
        w.bytes = w
            .bytes
            .saturating_add(u32::try_from(bytes).unwrap_or(u32::MAX));
        self.check_budget(now)
    }

    fn count_frames(&mut self, frames: u32, now: Instant) {
        self.inbound.frames = self.inbound.frames.saturating_add(frames);
        self.check_budget(now);
    }

    fn roll_window(&mut self, now: Instant) {
        let second = second_of(now);
        if second != self.inbound.second {
            self.inbound = InboundWindow {
                second,
                frames: 0,
                bytes: 0,
            };
        }
    }

    fn check_budget(&mut self, now: Instant) -> bool {
        let config = self.session.config();
        let (max_frames, max_bytes) = (config.inbound_frames_per_sec, config.inbound_bytes_per_sec);
        let over_frames = max_frames > 0 && self.inbound.frames > max_frames;
        let over_bytes = max_bytes > 0 && self.inbound.bytes > max_bytes;
        if !(over_frames || over_bytes) {
            return false;
        }
        if self.open() {
            let what = if over_frames {
                format!("more than {max_frames} frames per second")
            } else {
                format!("more than {max_bytes} bytes per second")
            };
            self.decoder = None;
            self.close(
                CloseReason::InboundBudget,
                format!("inbound budget exceeded: {what}"),
                now,
            );
        }
        true
    }

    /// Frames what is due into `out`: notices and the Close first, then
    /// data up to [`WRITE_CHUNK`]. Nothing follows a Close.
    fn frame_into(&mut self, out: &mut Vec<u8>) {
        if !self.close.is_open() && self.queued_close.is_none() {
            return;
        }
        if self.close_frame_framed {
            return;
        }
        let deflate = self.deflate;
        let min_bytes = self.session.config().compression_min_bytes;
        while let Some(frame) = self.session.pop_notice() {
            frame_one(&frame, out, deflate, min_bytes);
        }
        let data_allowed = match self.queued_close.as_deref() {
            Some(close) => close.after_data,
            None => self.open(),
        };
        if data_allowed {
            while out.len() < WRITE_CHUNK {
                let Some(frame) = self.session.pop_data() else {
                    break;
                };
                if let OutFrame::Message { seq, .. } = &frame {
                    self.last_framed_seq = self.last_framed_seq.max(*seq);
                }
                frame_one(&frame, out, deflate, min_bytes);
            }
        }
        let close_due = self
            .queued_close
            .as_deref()
            .is_some_and(|c| !c.after_data || !self.session.has_data());
        if close_due && let Some(close) = self.queued_close.take() {
            close_frame_into(out, close.code, &close.message);
            self.session.discard_data(u64::MAX);
            self.close_frame_framed = true;
        }
    }

    /// Queues recovered messages while the queue has room, and completes
    /// the resume once all are queued.
    fn feed_resume(&mut self, now: Instant) {
        let Some(Resume::Feeding {
            messages,
            next,
            last_sseq,
        }) = self.resume.as_deref_mut()
        else {
            return;
        };
        while let Some(message) = messages.get(*next) {
            if self.session.recover(message).is_err() {
                return; // queue full: the next transmit makes room
            }
            *next += 1;
        }
        let last = *last_sseq;
        self.resume = None;
        self.session.resume_complete(last, now);
    }

    /// After bytes went out (or none were due): a written server Close
    /// starts the wait for the client's; a finished handshake shuts down
    /// writing and lingers.
    fn after_write(&mut self, now: Instant) {
        if self.pending.is_some() || self.queued_close.is_some() {
            return;
        }
        if self.close_frame_framed {
            self.close_frame_framed = false;
            self.deadline = None;
            if self.close.is_open() {
                // Ours went first: wait for the client's.
                self.close.initiate(now, CLOSE_WAIT);
            }
        }
        if self.close.is_done() && self.phase == Phase::Closing {
            self.begin_linger(now);
        }
    }

    fn begin_linger(&mut self, now: Instant) {
        self.decoder = None;
        self.phase = Phase::Lingering;
        self.deadline = Some(now + LINGER);
        self.inbound.bytes = 0;
        self.shutdown_write_due = true;
    }

    /// Since when the socket has refused bytes.
    fn blocked_since(&self) -> Option<Instant> {
        self.pending.as_deref().and_then(|p| p.blocked_since)
    }
}

/// Appends one queued frame, framed for the wire. With permessage-deflate
/// a message frame of at least `min_bytes` is compressed: its
/// per-connection head as a stored deflate block, then its tail compressed
/// once for every subscriber (see [`crate::deflate`]).
fn frame_one(frame: &OutFrame, out: &mut Vec<u8>, deflate: Option<Deflate>, min_bytes: usize) {
    match frame {
        OutFrame::Control(body) => text_frame_into(out, &[body]),
        OutFrame::Message {
            head, published, ..
        } => match deflate {
            Some(d) if head.len() + published.tail_len() >= min_bytes => {
                let mut stored = Vec::with_capacity(head.len() + 5);
                crate::deflate::stored_blocks_into(&mut stored, head);
                compressed_frame_into(out, OpCode::Text, &[&stored, &published.deflated_tail(d)]);
            }
            _ => text_frame_into(out, &[head, published.tail()]),
        },
        OutFrame::Wire(bytes) => out.extend_from_slice(bytes),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod auth_tests;

#[cfg(test)]
mod deflate_tests;
