//! One upgraded connection as its shard drives it: core's `Session`, core's
//! frame decoder and close handshake, and the bytes on their way out. No
//! task and no future: the shard calls in when the socket is ready, when a
//! published message arrives or when the connection's deadline passes, and
//! each call does what it can without blocking.

use std::sync::Arc;
use std::time::Duration;

use surge_core::Instant;
use surge_core::admission::LiveSlot;
use surge_core::frame::{
    CloseAction, CloseState, DecodeLimits, Event, FrameDecoder, FrameError, close_frame_into,
    ping_frame_into, pong_frame_into, text_frame_into,
};
use surge_core::protocol::{CloseCode, OutFrame, Published};
use surge_core::session::{Action, Recovery, Session, resume_gap};
use surge_core::subjects::SubscriptionIndex;
use tokio::sync::mpsc;

use crate::broker::{BrokerError, Fetched};
use crate::gateway::Context;
use crate::poller::Poller;

use super::Inbox;

/// How long a server-initiated close waits for the client's Close once
/// its own Close frame is written. (Writing what is queued before it is
/// bounded by the write timeout, as every write is.)
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Reads per readiness report before other connections get their turn.
const READS_PER_TURN: usize = 4;

/// Why a connection ended.
#[derive(Debug)]
pub(super) enum End {
    ClientClosed,
    ClosedByServer(CloseCode),
    /// The client broke the framing protocol; closed with this code.
    Protocol(u16),
    Io(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::ClientClosed => write!(f, "client closed"),
            End::ClosedByServer(code) => write!(f, "closed by the server with {}", code.code()),
            End::Protocol(code) => write!(f, "protocol error, closed with {code}"),
            End::Io(e) => write!(f, "i/o: {e}"),
        }
    }
}

/// Why a closing connection is closing (kept small: every link has one).
#[derive(Debug, Clone, Copy)]
enum Ending {
    Client,
    Server(CloseCode),
    Protocol(u16),
}

impl Ending {
    fn end(ending: Option<Ending>) -> End {
        match ending {
            None | Some(Ending::Client) => End::ClientClosed,
            Some(Ending::Server(code)) => End::ClosedByServer(code),
            Some(Ending::Protocol(code)) => End::Protocol(code),
        }
    }
}

/// What the shard does with the connection after a call.
pub(super) enum Flow {
    Keep,
    /// Keep, and call `on_ready` again soon: it stopped reading to give
    /// other connections a turn.
    Again,
    Remove(End),
}

/// A resume in progress: the broker fetch is out, or its messages are
/// being queued as the client drains them.
pub(super) enum Resume {
    Fetching {
        since: u64,
    },
    Feeding {
        messages: Vec<Arc<Published>>,
        next: usize,
        last_sseq: u64,
    },
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
    /// Where queued frames are framed before a write, shared by the shard.
    pub scratch: &'a mut Vec<u8>,
}

/// Bytes on their way to the socket: `bytes[written..]` is still to go.
#[derive(Default)]
struct Outgoing {
    bytes: Vec<u8>,
    written: usize,
    /// Since when the socket has refused more (the client is not reading).
    blocked_since: Option<Instant>,
}

pub(super) struct Link<K> {
    pub socket: K,
    pub session: Session,
    /// Only while a frame or message is partly read; an idle connection
    /// holds no decoder (`FrameDecoder::is_idle`).
    decoder: Option<Box<FrameDecoder>>,
    /// Bytes on their way out, only while there are some.
    out: Option<Box<Outgoing>>,
    pub slot: LiveSlot,
    close: CloseState,
    /// The server's Close frame is in `out`: nothing may follow it, and the
    /// wait for the client's Close starts once it is written.
    close_queued: bool,
    /// Why the connection is closing, once it is.
    ending: Option<Ending>,
    resume: Option<Box<Resume>>,
    /// The deadline the shard's timer queue holds for this connection.
    pub timer_at: Option<Instant>,
    /// Listed among the shard's connections to pump after a fan-out batch.
    pub dirty: bool,
    /// The poller was asked to report writability (bytes are waiting).
    write_armed: bool,
}

impl<K> Link<K> {
    pub fn new(socket: K, session: Session, first_bytes: Vec<u8>, slot: LiveSlot) -> Self {
        Link {
            socket,
            session,
            decoder: None,
            out: Some(Box::new(Outgoing {
                bytes: first_bytes,
                written: 0,
                blocked_since: None,
            })),
            slot,
            close: CloseState::new(),
            close_queued: false,
            ending: None,
            resume: None,
            timer_at: None,
            dirty: false,
            write_armed: false,
        }
    }

    /// The next time `on_timer` has something to do.
    pub fn deadline(&self, write_timeout: Duration) -> Option<Instant> {
        [
            self.session.poll_timeout(),
            self.close.poll_timeout(),
            self.out
                .as_ref()
                .and_then(|o| o.blocked_since)
                .map(|t| t + write_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The socket may be readable or writable.
    pub fn on_ready<P: Poller<Socket = K>>(
        &mut self,
        parts: &mut Parts<'_, P>,
        now: Instant,
    ) -> Flow {
        let mut again = false;
        if !self.close.is_done() {
            let mut reads = 0;
            loop {
                if reads == READS_PER_TURN {
                    again = true;
                    break;
                }
                reads += 1;
                match parts.poller.read(&mut self.socket, parts.read_buf) {
                    Ok(None) => break,
                    Ok(Some(0)) => {
                        self.close.on_transport_closed();
                        return Flow::Remove(Ending::end(self.ending));
                    }
                    Ok(Some(n)) => {
                        let limits = decode_limits(parts.ctx);
                        let (events, error) = self.decode(&parts.read_buf[..n], limits);
                        self.on_events(events, error, parts.ctx, now);
                        if self.close.is_done() {
                            break;
                        }
                    }
                    Err(e) => return Flow::Remove(End::Io(e.to_string())),
                }
            }
        }
        match self.pump(parts, now) {
            Flow::Keep if again => Flow::Again,
            flow => flow,
        }
    }

    /// Bytes that followed the request head in the handshake's last read.
    pub fn on_leftover(&mut self, leftover: &[u8], ctx: &Context, now: Instant) {
        let (events, error) = self.decode(leftover, decode_limits(ctx));
        self.on_events(events, error, ctx, now);
    }

    /// The connection's deadline passed.
    pub fn on_timer<P: Poller<Socket = K>>(
        &mut self,
        parts: &mut Parts<'_, P>,
        now: Instant,
    ) -> Flow {
        let write_timeout = parts.ctx.write_timeout;
        let blocked_since = self.out.as_ref().and_then(|o| o.blocked_since);
        if blocked_since.is_some_and(|t| now >= t + write_timeout) {
            parts.ctx.metrics.slow_disconnects.inc();
            return Flow::Remove(End::Io("write timed out: client not reading".into()));
        }
        // A client that never answers our Close is closed now (the
        // handshake is then done and `pump` closes TCP).
        let _ = self.close.handle_timeout(now);
        self.session.handle_timeout(now);
        self.pump(parts, now)
    }

    /// A resume's fetch came back.
    pub fn on_fetched<P: Poller<Socket = K>>(
        &mut self,
        result: Result<Fetched, BrokerError>,
        parts: &mut Parts<'_, P>,
        now: Instant,
    ) -> Flow {
        let Some(&Resume::Fetching { since }) = self.resume.as_deref() else {
            return Flow::Keep;
        };
        match result {
            Ok(fetched) => {
                let gap = resume_gap(since, fetched.first_retained, fetched.last_sseq).is_some();
                let recovery = self.session.resume_fetched(
                    &fetched.epoch,
                    fetched.first_retained,
                    fetched.last_sseq,
                );
                let messages = match recovery {
                    Recovery::Feed => fetched.messages,
                    Recovery::Skip => Vec::new(),
                };
                if gap || recovery == Recovery::Skip {
                    parts.ctx.metrics.resume_gaps.inc();
                }
                self.resume = Some(Box::new(Resume::Feeding {
                    messages,
                    next: 0,
                    last_sseq: fetched.last_sseq,
                }));
            }
            Err(e) => {
                self.session.resume_failed(&e.to_string(), now);
                self.resume = None;
            }
        }
        self.pump(parts, now)
    }

    /// Hands decoded client messages to the session and the close
    /// handshake.
    fn on_events(
        &mut self,
        events: Vec<Event>,
        error: Option<FrameError>,
        ctx: &Context,
        now: Instant,
    ) {
        for event in events {
            match event {
                Event::Text(text) => {
                    if self.sending() {
                        ctx.metrics.client_requests.inc();
                        self.session.handle_text(&text, now);
                    }
                }
                Event::Binary { .. } => self.session.handle_binary(now),
                Event::Ping(payload) => {
                    self.session.on_heard(now);
                    if self.sending() {
                        pong_frame_into(self.out(), &payload);
                    }
                }
                Event::Pong(_) => self.session.on_heard(now),
                Event::Close { code, .. } => match self.close.on_peer_close(code) {
                    CloseAction::ReplyThenCloseTcp { code } => {
                        // Echo the client's code after whatever was queued
                        // (unless our own Close is already on its way).
                        if !self.close_queued {
                            self.frame_queued();
                            close_frame_into(self.out(), code, "");
                        }
                        self.ending.get_or_insert(Ending::Client);
                    }
                    CloseAction::CloseTcp | CloseAction::None => {}
                },
            }
        }
        if let Some(e) = error {
            tracing::debug!(error = %e, "client broke the framing protocol");
            let code = e.close_code();
            if self.close.fail() && !self.close_queued {
                self.frame_queued();
                close_frame_into(self.out(), code, &e.to_string());
            }
            self.ending.get_or_insert(Ending::Protocol(code));
        }
    }

    /// Decodes `input` with the link's decoder, or a fresh one when it has
    /// none, and keeps the decoder only if a frame is left unfinished.
    fn decode(&mut self, input: &[u8], limits: DecodeLimits) -> (Vec<Event>, Option<FrameError>) {
        if let Some(decoder) = self.decoder.as_deref_mut() {
            let decoded = decode_all(decoder, input);
            if decoder.is_idle() {
                self.decoder = None;
            }
            return decoded;
        }
        let mut decoder = FrameDecoder::new(limits);
        let decoded = decode_all(&mut decoder, input);
        if !decoder.is_idle() {
            self.decoder = Some(Box::new(decoder));
        }
        decoded
    }

    /// Frames may still be added: no Close sent, received or queued.
    fn sending(&self) -> bool {
        self.close.is_open() && !self.close_queued
    }

    /// Moves every frame the session has queued into `out`.
    fn frame_queued(&mut self) {
        if !self.session.has_frames() {
            self.session.release_idle_memory();
            return;
        }
        let out = &mut self.out.get_or_insert_with(Box::default).bytes;
        frames_into(&mut self.session, out);
    }

    /// Writes the session's queued frames, behind whatever `out` holds.
    fn send_queued<P: Poller<Socket = K>>(
        &mut self,
        parts: &mut Parts<'_, P>,
        now: Instant,
    ) -> std::io::Result<()> {
        if !self.sending() || !self.session.has_frames() {
            return Ok(());
        }
        match self.out.as_deref_mut() {
            // Not tried yet (the 101, a pong): the frames join it in the
            // same write.
            Some(out) if out.written == 0 && out.blocked_since.is_none() => {
                frames_into(&mut self.session, &mut out.bytes);
                Ok(())
            }
            // Frames leave the session's queue only when the socket took
            // everything before them, so the queue (and the throttle) sees
            // exactly what the client is not draining.
            Some(out) if out.written < out.bytes.len() => Ok(()),
            _ => {
                // The common case: framed into the shard's scratch buffer
                // and written from there; only what the socket refuses is
                // copied into a buffer of the connection's own.
                self.out = None;
                let scratch = &mut *parts.scratch;
                scratch.clear();
                frames_into(&mut self.session, scratch);
                let written = write_some(parts.poller, &mut self.socket, scratch)?;
                if written < scratch.len() {
                    self.out = Some(Box::new(Outgoing {
                        bytes: scratch[written..].to_vec(),
                        written: 0,
                        blocked_since: Some(now),
                    }));
                }
                Ok(())
            }
        }
    }

    /// Applies the session's actions, feeds a resume, and writes until the
    /// socket refuses; closes TCP once the close handshake is done.
    pub fn pump<P: Poller<Socket = K>>(&mut self, parts: &mut Parts<'_, P>, now: Instant) -> Flow {
        loop {
            self.apply_actions(parts);
            let fed = self.feed_resume(parts.ctx, now);
            if self.drained() {
                self.out = None;
            }
            if let Err(e) = self
                .send_queued(parts, now)
                .and_then(|()| self.flush(parts))
            {
                return Flow::Remove(End::Io(e.to_string()));
            }
            let drained = self.drained();
            if drained {
                // An idle connection holds no write buffer.
                self.out = None;
                if self.close_queued && self.close.is_open() {
                    // Our Close is written: now wait for the client's.
                    self.close.initiate(now, CLOSE_WAIT);
                }
            } else if let Some(out) = self.out.as_deref_mut() {
                out.blocked_since.get_or_insert(now);
            }
            if drained == self.write_armed {
                // Ask for writability only while something waits for it:
                // otherwise every ACK would report the socket.
                self.write_armed = !drained;
                let token = parts.token;
                if let Err(e) =
                    parts
                        .poller
                        .want_writable(&mut self.socket, token, self.write_armed)
                {
                    return Flow::Remove(End::Io(e.to_string()));
                }
            }
            if self.close.is_done() {
                if drained {
                    parts.poller.shutdown(&mut self.socket);
                    return Flow::Remove(Ending::end(self.ending));
                }
                // The last bytes are still going out (bounded by the write
                // timeout); TCP closes once they are written.
                return Flow::Keep;
            }
            let more = self.session.has_frames() && drained && self.sending();
            if !(more || fed && drained) {
                return Flow::Keep;
            }
        }
    }

    /// The write buffer, made when the first byte is queued.
    fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out.get_or_insert_with(Box::default).bytes
    }

    /// Everything queued for the socket has been written.
    fn drained(&self) -> bool {
        self.out.as_ref().is_none_or(|o| o.written == o.bytes.len())
    }

    /// Writes what is pending until done or the socket is full.
    fn flush<P: Poller<Socket = K>>(&mut self, parts: &mut Parts<'_, P>) -> std::io::Result<()> {
        let Some(out) = self.out.as_deref_mut() else {
            return Ok(());
        };
        out.written += write_some(parts.poller, &mut self.socket, &out.bytes[out.written..])?;
        Ok(())
    }

    /// Applies the session's actions in order; stops while a resume is in
    /// progress so that later requests are answered after it.
    fn apply_actions<P: Poller<Socket = K>>(&mut self, parts: &mut Parts<'_, P>) {
        while self.resume.is_none() && self.sending() {
            let Some(action) = self.session.poll_action() else {
                return;
            };
            match action {
                Action::Subscribe { patterns, reply } => {
                    for p in &patterns {
                        parts.index.insert(p, parts.token);
                    }
                    self.session.confirm(reply);
                }
                Action::Unsubscribe { patterns, reply } => {
                    for p in &patterns {
                        parts.index.remove(p, parts.token);
                    }
                    self.session.confirm(reply);
                }
                Action::Resume {
                    subscribe,
                    patterns,
                    since_sseq,
                } => {
                    // Subscribe first: live messages from here on are held
                    // by the session, and the fetch covers the rest.
                    for p in &subscribe {
                        parts.index.insert(p, parts.token);
                    }
                    parts.ctx.metrics.resumes.inc();
                    self.resume = Some(Box::new(Resume::Fetching { since: since_sseq }));
                    let ctx = Arc::clone(parts.ctx);
                    let inbox = parts.inbox.clone();
                    let (token, serial) = (parts.token, self.session.id().serial);
                    tokio::spawn(async move {
                        let result = ctx.broker().fetch(patterns, since_sseq).await;
                        let _ = inbox.send(Inbox::Fetched {
                            token,
                            serial,
                            result,
                        });
                    });
                }
                Action::Ping => ping_frame_into(self.out(), b""),
                Action::Close { code, reason } => {
                    let metrics = &parts.ctx.metrics;
                    metrics.disconnect(code);
                    if code == CloseCode::Policy && reason.contains("too slow") {
                        metrics.slow_disconnects.inc();
                    }
                    // Frames queued before the close (a last notice) go
                    // first, however long the client takes to read them
                    // (bounded by the write timeout).
                    self.frame_queued();
                    close_frame_into(self.out(), code.code(), &reason);
                    self.close_queued = true;
                    self.ending.get_or_insert(Ending::Server(code));
                }
            }
        }
    }

    /// Queues recovered messages while the queue has room. Returns whether
    /// any progress was made.
    fn feed_resume(&mut self, ctx: &Context, now: Instant) -> bool {
        let Some(resume) = self.resume.as_deref_mut() else {
            return false;
        };
        let Resume::Feeding {
            messages,
            next,
            last_sseq,
        } = resume
        else {
            return false;
        };
        let start = *next;
        while let Some(message) = messages.get(*next) {
            if self.session.recover(message).is_err() {
                // Queue full: write what is queued first.
                return *next > start;
            }
            ctx.metrics.recovered.inc();
            *next += 1;
        }
        let last = *last_sseq;
        self.resume = None;
        self.session.resume_complete(last, now);
        true
    }
}

/// Pops every queued frame of `session` and frames it into `out`.
fn frames_into(session: &mut Session, out: &mut Vec<u8>) {
    while let Some(frame) = session.pop_frame() {
        match &frame {
            OutFrame::Control(body) => text_frame_into(out, &[body]),
            OutFrame::Message { head, tail } => text_frame_into(out, &[head, tail]),
        }
    }
    session.release_idle_memory();
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

fn decode_limits(ctx: &Context) -> DecodeLimits {
    DecodeLimits::text(ctx.session_config.max_message_bytes)
}

/// Every event in `input`, and the protocol error that stopped decoding, if any.
fn decode_all(decoder: &mut FrameDecoder, mut input: &[u8]) -> (Vec<Event>, Option<FrameError>) {
    let mut events = Vec::new();
    loop {
        match decoder.feed(&mut input) {
            Ok(Some(event)) => events.push(event),
            Ok(None) => return (events, None),
            Err(e) => return (events, Some(e)),
        }
    }
}
