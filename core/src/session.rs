//! One WebSocket connection's state after the upgrade, and every decision
//! about it: which requests are valid, what each gets back, which published
//! message is sent, with which `seq`, and what happens when the client is
//! too slow, too chatty or silent.
//!
//! The driver feeds it client frames ([`Session::handle_text`]), published
//! messages ([`Session::deliver`]) and time ([`Session::handle_timeout`]);
//! it takes frames to write from [`Session::pop_frame`] and actions from
//! [`Session::poll_action`]. The outbound queue lives here, bounded in
//! bytes, so the throttle sees exactly what the socket is not draining.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::admission::ConnId;
use crate::auth::{Grant, JwtAuth};
use crate::protocol::{
    CloseReason, ErrorCode, MessageMark, OutFrame, Priority, Published, RequestKind, ServerMessage,
    UnsubscribeReason, WelcomeLimits, parse_request,
};
use crate::ratelimit::TokenBucket;
use crate::replay::ReplayRing;
use crate::subjects::{Pattern, SubjectError};
use crate::throttle::{Throttle, ThrottleChange, ThrottleConfig, ThrottleLevel};
use crate::{Instant, UnixAnchor, UnixTime};

/// Per-connection limits (from `config`).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    pub max_subscriptions: u32,
    pub replay_window: u32,
    pub replay_max_bytes: usize,
    /// Soft bound of the outbound queue: ordinary messages that do not fit
    /// are dropped and feed the throttle.
    pub outbound_queue_bytes: usize,
    pub max_message_bytes: usize,
    pub client_rate_per_sec: u32,
    pub client_burst: u32,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub throttle: ThrottleConfig,
    /// Live messages held while a `resume` catches up; past it the client
    /// is asked to reconnect (1013) and resume again, so nothing is lost.
    pub resume_buffer_messages: usize,
    /// A connection whose socket refuses bytes this long is dropped.
    pub write_timeout: Duration,
    /// Inbound frames (data, continuation and control alike) per second
    /// before the client is closed with 1008; 0 = no limit.
    pub inbound_frames_per_sec: u32,
    /// Inbound bytes per second before the client is closed; 0 = no limit.
    pub inbound_bytes_per_sec: u32,
    /// Echo every client message back (text as text, binary as binary)
    /// instead of speaking surge's protocol, with no `welcome`: for the
    /// Autobahn|Testsuite harness, never the gateway.
    pub echo: bool,
    /// Tokens: what a connection may read, `refresh`, expiry. `None`: no
    /// authentication, every channel is readable.
    pub auth: Option<Arc<JwtAuth>>,
    /// On a connection that negotiated permessage-deflate, messages of at
    /// least this many bytes go out compressed; smaller ones gain too
    /// little to be worth the client's inflate.
    pub compression_min_bytes: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_subscriptions: 100,
            replay_window: 100,
            replay_max_bytes: 256 * 1024,
            outbound_queue_bytes: 256 * 1024,
            max_message_bytes: 16 * 1024,
            client_rate_per_sec: 20,
            client_burst: 40,
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
            throttle: ThrottleConfig::default(),
            resume_buffer_messages: 10_000,
            write_timeout: Duration::from_secs(60),
            // Twenty requests a second plus heartbeats fit ten times over;
            // a client flooding empty frames is cut off within a second.
            inbound_frames_per_sec: 200,
            inbound_bytes_per_sec: 1 << 20,
            echo: false,
            auth: None,
            compression_min_bytes: 64,
        }
    }
}

impl SessionConfig {
    /// Hard bound of the queue: critical messages may use the room between
    /// the soft bound and this; past it the client is disconnected rather
    /// than a critical message dropped.
    pub fn hard_queue_bytes(&self) -> usize {
        self.outbound_queue_bytes
            .saturating_mul(2)
            .saturating_add(self.replay_max_bytes)
    }

    fn welcome_limits(&self) -> WelcomeLimits {
        WelcomeLimits {
            max_subscriptions: self.max_subscriptions,
            replay_window: self.replay_window,
            max_message_bytes: u32::try_from(self.max_message_bytes).unwrap_or(u32::MAX),
            client_rate_per_sec: self.client_rate_per_sec,
            client_burst: self.client_burst,
            ping_interval_ms: millis(self.ping_interval),
            idle_timeout_ms: millis(self.idle_timeout),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Something the driver must do besides writing queued frames. Actions are
/// returned in the order they arose; apply each before writing frames
/// queued after it.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Add these patterns for this connection to the shard's subscription
    /// index, then call [`Session::confirm`] with `reply`: the client is
    /// told only once every later publish will reach it.
    Subscribe {
        patterns: Vec<Pattern>,
        reply: ServerMessage,
    },
    /// Remove these patterns from the index, then [`Session::confirm`].
    Unsubscribe {
        patterns: Vec<Pattern>,
        reply: ServerMessage,
    },
    /// Add `subscribe` to the index, then fetch from the broker every
    /// retained message on `patterns` with stream sequence > `since_sseq`
    /// and hand them in order to [`Session::recover`]; finish with
    /// [`Session::resume_complete`] (or [`Session::resume_failed`]).
    Resume {
        subscribe: Vec<Pattern>,
        patterns: Vec<Pattern>,
        since_sseq: u64,
    },
    /// Send a WebSocket ping.
    Ping,
    /// Send a close frame for `reason` with the text `message`, then drop
    /// the connection; the session accepts nothing more. For a client
    /// closed for being too slow, `lost` is what it lost since its last
    /// delivered message (the driver adds what it discards from the queue).
    Close {
        reason: CloseReason,
        message: String,
        lost: Option<u32>,
    },
}

/// What [`Session::deliver`] did with a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued with this `seq`.
    Queued(u64),
    /// Skipped by the throttle's sampling at the current level.
    Throttled,
    /// The queue was full; the message is not sent (it stays in the broker).
    QueueFull,
    /// Held until a `resume` in progress completes.
    Held,
    /// Already delivered by a `resume` catch-up.
    Duplicate,
    /// The session is closing.
    Closed,
    /// Not sent: the client is too slow even for this, and the session is
    /// closing because of it (1008). Counts as a drop.
    DroppedClosing,
}

/// Counters of what happened to this connection's traffic since the
/// driver last took them ([`Session::take_stats`]). 16 bits each
/// (saturating): every connection carries them, the driver takes them
/// after every call, and the gateway's metrics keep the totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub delivered: u16,
    pub throttled: u16,
    pub queue_full: u16,
    pub duplicates: u16,
    pub recovered: u16,
    pub replayed: u16,
    pub requests: u16,
    pub request_errors: u16,
    pub rate_limited: u16,
    /// Throttle level changes (each one sent as a `throttle_update`).
    pub throttle_changes: u16,
    /// Resumes that found part of their range gone (or another epoch).
    pub resume_gaps: u16,
    /// Queued messages dropped unsent because the client was closed for
    /// being too slow.
    pub discarded: u16,
}

/// A connection's patterns: a vector sized to fit, not a tree. A B-tree
/// set allocates a node for eleven entries (about 280 bytes) for the first
/// pattern; most connections hold one to a few, and at most
/// `max_subscriptions`, so a scan is as fast as a search.
#[derive(Debug, Default)]
struct PatternSet(Vec<Pattern>);

impl PatternSet {
    fn contains(&self, pattern: &Pattern) -> bool {
        self.0.contains(pattern)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn iter(&self) -> std::slice::Iter<'_, Pattern> {
        self.0.iter()
    }

    /// Adds the patterns not yet present.
    fn extend<'a>(&mut self, patterns: impl IntoIterator<Item = &'a Pattern>) {
        for p in patterns {
            if !self.contains(p) {
                self.0.push(p.clone());
            }
        }
        self.0.shrink_to_fit();
    }

    /// Removes `pattern`; whether it was there.
    fn remove(&mut self, pattern: &Pattern) -> bool {
        let Some(at) = self.0.iter().position(|p| p == pattern) else {
            return false;
        };
        self.0.swap_remove(at);
        self.0.shrink_to_fit();
        true
    }
}

/// A FIFO that holds no storage at all while empty (once released): an
/// idle connection's queues cost one pointer each.
#[derive(Debug)]
#[allow(clippy::box_collection)] // on purpose: 8 bytes per idle session, not 32
struct LazyQueue<T>(Option<Box<VecDeque<T>>>);

impl<T> LazyQueue<T> {
    const fn new() -> Self {
        LazyQueue(None)
    }

    fn push_back(&mut self, value: T) {
        self.0.get_or_insert_with(Box::default).push_back(value);
    }

    fn pop_front(&mut self) -> Option<T> {
        self.0.as_mut()?.pop_front()
    }

    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|q| q.is_empty())
    }

    fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }
}

/// A `recover` that must wait: the queue has no room until the driver
/// writes some of it. Retry the same message after writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backpressure;

/// A `resume` between its request and its completion.
#[derive(Debug)]
struct CatchUp {
    id: Option<Value>,
    channels: Vec<String>,
    patterns: Vec<Pattern>,
    since_sseq: u64,
    /// The epoch the client's `since_sseq` counts in, if it sent one.
    client_epoch: Option<String>,
    /// The stream's epoch, once the fetch has come back.
    stream_epoch: Option<String>,
    held: VecDeque<Arc<Published>>,
}

/// What to do with the messages a resume's fetch returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Hand them, in order, to [`Session::recover`], then call
    /// [`Session::resume_complete`].
    Feed,
    /// The client's position counts in another stream (epoch changed):
    /// recover nothing and call [`Session::resume_complete`] at once.
    Skip,
}

/// After a `resume` completes, live messages on its patterns up to this
/// stream sequence were already recovered: a broker consumer that lags
/// behind the catch-up fetch may still deliver them live.
#[derive(Debug)]
struct RecoveredFloor {
    patterns: Vec<Pattern>,
    sseq: u64,
}

/// What few sessions hold, behind one pointer so that an idle session
/// pays 8 bytes for all of it: the floor after a resume, and what the
/// connection's token allows.
#[derive(Debug, Default)]
struct Rare {
    floor: Option<RecoveredFloor>,
    access: Option<Access>,
}

/// What a connection may read and until when, while tokens are on.
#[derive(Debug)]
struct Access {
    grant: Grant,
    /// Maps the token's `exp` to this session's instants and back.
    anchor: UnixAnchor,
    /// `token_expiring` went out for the current token.
    warned: bool,
}

/// One connection.
#[derive(Debug)]
pub struct Session {
    id: ConnId,
    config: Arc<SessionConfig>,
    subscriptions: PatternSet,
    next_seq: u64,
    ring: ReplayRing,
    throttle: Throttle,
    inbound: TokenBucket,
    denied_in_a_row: u32,
    queue: LazyQueue<OutFrame>,
    queued_bytes: usize,
    /// Frames that go out ahead of queued data: throttle notices, errors,
    /// pongs, pings. Small and few (bounded by the inbound budget).
    notices: LazyQueue<OutFrame>,
    actions: LazyQueue<Action>,
    last_heard: Instant,
    last_ping: Option<Instant>,
    /// Boxed: rare, and an idle session should stay small.
    catch_up: Option<Box<CatchUp>>,
    /// The floor after a resume, and the token's grant (while tokens are
    /// on and the connection was authorised).
    rare: Option<Box<Rare>>,
    closed: bool,
    /// Live messages skipped (throttled or queue full) since the last
    /// delivered one; the next live `message` carries it as `dropped`.
    dropped: u32,
    stats: SessionStats,
}

impl Session {
    /// A session for a connection that just upgraded; its `welcome` frame
    /// (with the stream's `epoch`, when the broker knows it) is already
    /// queued.
    pub fn new(id: ConnId, config: Arc<SessionConfig>, now: Instant, epoch: Option<&str>) -> Self {
        let ring = ReplayRing::new(config.replay_window as usize, config.replay_max_bytes);
        let inbound = TokenBucket::new(config.client_rate_per_sec, config.client_burst, now);
        let throttle = Throttle::new(now);
        let welcome = ServerMessage::Welcome {
            conn_id: id.to_string(),
            shard: id.shard.0,
            epoch: epoch.map(str::to_owned),
            limits: config.welcome_limits(),
        };
        let mut session = Session {
            id,
            config,
            subscriptions: PatternSet::default(),
            next_seq: 1,
            ring,
            throttle,
            inbound,
            denied_in_a_row: 0,
            queue: LazyQueue::new(),
            queued_bytes: 0,
            notices: LazyQueue::new(),
            actions: LazyQueue::new(),
            last_heard: now,
            last_ping: None,
            catch_up: None,
            rare: None,
            closed: false,
            dropped: 0,
            stats: SessionStats::default(),
        };
        if !session.config.echo {
            // With the notices, which go first: nothing may precede it,
            // not even the answer to a request that came with the upgrade.
            session.notices.push_back(OutFrame::control(&welcome));
        }
        session
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = &Pattern> {
        self.subscriptions.iter()
    }

    pub fn throttle_level(&self) -> ThrottleLevel {
        self.throttle.level()
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The counters since the last call, which start again from zero.
    pub fn take_stats(&mut self) -> SessionStats {
        std::mem::take(&mut self.stats)
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// The `seq` the next delivered message will take.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn is_resuming(&self) -> bool {
        self.catch_up.is_some()
    }

    /// The next frame to write, oldest first.
    /// The next frame to write: notices first, then data in order.
    pub fn pop_frame(&mut self) -> Option<OutFrame> {
        self.pop_notice().or_else(|| self.pop_data())
    }

    /// The next notice (throttle update, error, pong, ping).
    pub fn pop_notice(&mut self) -> Option<OutFrame> {
        self.notices.pop_front()
    }

    /// The next data frame (messages and request answers), oldest first.
    pub fn pop_data(&mut self) -> Option<OutFrame> {
        let frame = self.queue.pop_front()?;
        self.queued_bytes -= frame.len();
        Some(frame)
    }

    pub fn has_frames(&self) -> bool {
        !self.queue.is_empty() || !self.notices.is_empty()
    }

    /// Data frames are queued (notices aside).
    pub fn has_data(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Drops every queued data frame (a too-slow client is closed without
    /// them); returns how many message frames with a `seq` above
    /// `after_seq` were among them.
    pub fn discard_data(&mut self, after_seq: u64) -> u32 {
        let mut lost = 0u32;
        let mut highest = after_seq;
        while let Some(frame) = self.pop_data() {
            if let OutFrame::Message { seq, .. } = frame
                && seq > highest
            {
                highest = seq;
                lost = lost.saturating_add(1);
            }
        }
        self.stats.discarded = self
            .stats
            .discarded
            .saturating_add(u16::try_from(lost).unwrap_or(u16::MAX));
        lost
    }

    /// Queues an encoded control frame (ping, pong) ahead of data.
    pub fn push_wire(&mut self, frame: bytes::Bytes) {
        self.notices.push_back(OutFrame::Wire(frame));
    }

    /// The configuration this session runs with.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Frees the storage of the frame and action queues when both are
    /// empty, so an idle connection keeps no capacity from its last burst.
    /// Allocating again later costs far less than the write it precedes.
    pub fn release_idle_memory(&mut self) {
        self.queue.release_if_empty();
        self.notices.release_if_empty();
        self.actions.release_if_empty();
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next action, left in place.
    pub fn peek_action(&self) -> Option<&Action> {
        self.actions.0.as_ref()?.front()
    }

    /// Queues the reply of a [`Action::Subscribe`] / [`Action::Unsubscribe`]
    /// once the index reflects it.
    pub fn confirm(&mut self, reply: ServerMessage) {
        self.push_control(&reply);
    }

    /// Any frame (data, ping, pong) arrived from the client.
    pub fn on_heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
        self.last_ping = None;
    }

    /// A text frame from the client.
    pub fn handle_text(&mut self, text: &str, now: Instant) {
        if self.closed {
            return;
        }
        self.on_heard(now);
        if text.len() > self.config.max_message_bytes {
            self.close(
                CloseReason::MessageTooBig,
                format!(
                    "message of {} bytes exceeds the limit of {}",
                    text.len(),
                    self.config.max_message_bytes
                ),
            );
            return;
        }
        self.stats.requests = self.stats.requests.saturating_add(1);
        if !self.inbound.is_unlimited() && !self.inbound.try_acquire(1, now) {
            self.stats.rate_limited = self.stats.rate_limited.saturating_add(1);
            self.denied_in_a_row += 1;
            // A client that keeps pushing past its limit is not answered
            // forever: after a burst's worth of refusals it is closed.
            if self.denied_in_a_row > self.config.client_burst.max(1) {
                self.close(
                    CloseReason::RateLimited,
                    "request rate limit exceeded".into(),
                );
            } else {
                let id = parse_request(text).ok().and_then(|r| r.id);
                self.error(
                    id,
                    ErrorCode::RateLimited,
                    format!(
                        "more than {} requests per second (burst {}); this request was not processed",
                        self.config.client_rate_per_sec, self.config.client_burst
                    ),
                );
            }
            return;
        }
        self.denied_in_a_row = 0;
        match parse_request(text) {
            Ok(request) => self.handle_request(request.id, request.kind, now),
            Err(e) => {
                self.stats.request_errors = self.stats.request_errors.saturating_add(1);
                self.push_control(&e.into());
            }
        }
    }

    /// A binary frame from the client: the protocol is JSON text only.
    pub fn handle_binary(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.on_heard(now);
        self.error(
            None,
            ErrorCode::BinaryNotSupported,
            "binary frames are not supported; send JSON text frames".into(),
        );
    }

    fn handle_request(&mut self, id: Option<Value>, kind: RequestKind, now: Instant) {
        match kind {
            RequestKind::Ping => self.push_control(&ServerMessage::Pong { id }),
            RequestKind::Subscribe { channels } => self.subscribe(id, channels),
            RequestKind::Unsubscribe { channels } => self.unsubscribe(id, channels),
            RequestKind::Replay { from_seq, to_seq } => self.replay(id, from_seq, to_seq),
            RequestKind::Resume {
                channels,
                since_sseq,
                epoch,
            } => self.begin_resume(id, channels, since_sseq, epoch),
            RequestKind::Refresh { token } => self.refresh(id, &token, now),
        }
    }

    /// What the connection may read from now on: the grant of its upgrade
    /// (a verified token, or anonymous). `unix` is the wall-clock time at
    /// `now`. A token with less than the refresh notice left is told so at
    /// once.
    pub fn authorize(&mut self, grant: Grant, now: Instant, unix: UnixTime) {
        self.rare.get_or_insert_with(Box::default).access = Some(Access {
            grant,
            anchor: UnixAnchor::new(now, unix),
            warned: false,
        });
        self.check_token(now);
    }

    fn access(&self) -> Option<&Access> {
        self.rare.as_deref()?.access.as_ref()
    }

    /// Past the floor: no live message can repeat a recovered one.
    fn clear_floor(&mut self) {
        if let Some(rare) = self.rare.as_deref_mut() {
            rare.floor = None;
            if rare.access.is_none() {
                self.rare = None;
            }
        }
    }

    /// Whether the connection may read `pattern`: always without tokens;
    /// with them, when one pattern of its grant or one anonymous pattern
    /// covers it (a connection never authorised is anonymous).
    fn allows(&self, pattern: &Pattern) -> bool {
        let Some(auth) = self.config.auth.as_deref() else {
            return true;
        };
        match self.access() {
            Some(access) => auth.allows(&access.grant, pattern),
            None => auth.allows(&Grant::anonymous(), pattern),
        }
    }

    /// Queues `forbidden` naming every pattern the connection may not read,
    /// and says whether there was one: the request is then applied to none
    /// of its channels.
    fn forbidden(&mut self, id: &Option<Value>, patterns: &[Pattern], what: &str) -> bool {
        let denied: Vec<String> = patterns
            .iter()
            .filter(|p| !self.allows(p))
            .map(|p| format!("{:?}", p.as_str()))
            .collect();
        if denied.is_empty() {
            return false;
        }
        let (noun, verb) = if denied.len() == 1 {
            ("channel", "is")
        } else {
            ("channels", "are")
        };
        self.error(
            id.clone(),
            ErrorCode::Forbidden,
            format!(
                "{noun} {} {verb} not covered by one pattern of the token's channels or the anonymous channels; nothing was {what}",
                denied.join(", ")
            ),
        );
        true
    }

    /// A `refresh`: a valid token for the same `sub` replaces the current
    /// one; subscriptions it no longer covers are removed (reported as
    /// `unsubscribed` with reason `forbidden`). A refused one changes
    /// nothing.
    fn refresh(&mut self, id: Option<Value>, token: &str, now: Instant) {
        let Some(auth) = self.config.auth.clone() else {
            self.error(
                id,
                ErrorCode::InvalidToken,
                "this server does not use tokens; nothing to refresh".into(),
            );
            return;
        };
        let Some(access) = self.access() else {
            self.error(
                id,
                ErrorCode::InvalidToken,
                "this connection has no token to refresh; reconnect with one".into(),
            );
            return;
        };
        let Some(current_sub) = access.grant.sub.clone() else {
            self.error(
                id,
                ErrorCode::InvalidToken,
                "an anonymous connection has no token to refresh; reconnect with one".into(),
            );
            return;
        };
        let anchor = access.anchor;
        let grant = match auth.verify(token, anchor.unix_at(now)) {
            Ok(grant) => grant,
            Err(e) => {
                self.error(
                    id,
                    ErrorCode::InvalidToken,
                    format!("refresh refused: {e}; the current token still applies"),
                );
                return;
            }
        };
        if grant.sub.as_deref() != Some(current_sub.as_str()) {
            self.error(
                id,
                ErrorCode::InvalidToken,
                "refresh refused: the new token's sub is not this connection's; the current token still applies".into(),
            );
            return;
        }
        let expires_at = grant.expires_at.map_or(0, UnixTime::as_millis);
        if let Some(access) = self.rare.as_deref_mut().and_then(|r| r.access.as_mut()) {
            access.grant = grant;
            access.warned = false;
        }
        let removed: Vec<Pattern> = self
            .subscriptions
            .iter()
            .filter(|p| !self.allows(p))
            .cloned()
            .collect();
        for pattern in &removed {
            self.subscriptions.remove(pattern);
        }
        if !removed.is_empty() {
            let channels = removed.iter().map(|p| p.as_str().to_owned()).collect();
            self.actions.push_back(Action::Unsubscribe {
                patterns: removed,
                reply: ServerMessage::Unsubscribed {
                    id: None,
                    channels,
                    reason: Some(UnsubscribeReason::Forbidden),
                },
            });
        }
        self.push_control(&ServerMessage::Refreshed { id, expires_at });
        self.check_token(now);
    }

    /// The token's deadlines: `token_expiring` once the refresh notice is
    /// reached, the 4001 close once `exp` plus the leeway is.
    fn check_token(&mut self, now: Instant) {
        let Some((notice_at, close_at)) = self.token_deadlines() else {
            return;
        };
        if now >= close_at {
            self.close(CloseReason::TokenExpired, "token expired".into());
            return;
        }
        let Some(access) = self.rare.as_deref_mut().and_then(|r| r.access.as_mut()) else {
            return;
        };
        if !access.warned && now >= notice_at {
            access.warned = true;
            let expires_at = access.grant.expires_at.unwrap_or_default();
            let expires_in = expires_at.saturating_duration_since(access.anchor.unix_at(now));
            self.push_control(&ServerMessage::TokenExpiring {
                expires_in_ms: millis(expires_in),
            });
        }
    }

    /// When `token_expiring` is due and when the connection closes, for a
    /// connection with a token.
    fn token_deadlines(&self) -> Option<(Instant, Instant)> {
        let auth = self.config.auth.as_deref()?;
        let access = self.access()?;
        let expires_at = access.grant.expires_at?;
        let settings = auth.settings();
        let notice_at = access
            .anchor
            .instant_at(expires_at.saturating_sub(settings.refresh_notice));
        let close_at = access
            .anchor
            .instant_at(expires_at.saturating_add(settings.leeway));
        Some((notice_at, close_at))
    }

    /// Parses a channel list; on any invalid channel, queues one error
    /// naming each and returns `None`: a request applies whole or not at
    /// all, and the error says so (`what` is "subscribed" or
    /// "unsubscribed").
    fn parse_channels(
        &mut self,
        id: &Option<Value>,
        channels: &[String],
        what: &str,
    ) -> Option<(Vec<String>, Vec<Pattern>)> {
        if channels.is_empty() {
            self.error(
                id.clone(),
                ErrorCode::InvalidMessage,
                "\"channels\" must list at least one channel".into(),
            );
            return None;
        }
        let mut names = Vec::new();
        let mut patterns = Vec::new();
        let mut bad: Vec<(String, SubjectError)> = Vec::new();
        for channel in channels {
            match Pattern::parse(channel) {
                Ok(p) => {
                    if !patterns.contains(&p) {
                        names.push(p.as_str().to_owned());
                        patterns.push(p);
                    }
                }
                Err(e) => bad.push((channel.clone(), e)),
            }
        }
        if !bad.is_empty() {
            let detail: Vec<String> = bad.iter().map(|(c, e)| format!("{c:?}: {e}")).collect();
            let noun = if bad.len() == 1 {
                "channel"
            } else {
                "channels"
            };
            self.error(
                id.clone(),
                ErrorCode::InvalidSubject,
                format!(
                    "invalid {noun} {}; nothing was {what} (a request applies to all its channels or to none)",
                    detail.join("; ")
                ),
            );
            return None;
        }
        Some((names, patterns))
    }

    /// Of `patterns`, those not yet subscribed, if the limit allows them.
    fn new_within_limit(
        &mut self,
        id: &Option<Value>,
        patterns: &[Pattern],
    ) -> Option<Vec<Pattern>> {
        let new: Vec<Pattern> = patterns
            .iter()
            .filter(|p| !self.subscriptions.contains(p))
            .cloned()
            .collect();
        let total = self.subscriptions.len() + new.len();
        if total > self.config.max_subscriptions as usize {
            self.error(
                id.clone(),
                ErrorCode::TooManySubscriptions,
                format!(
                    "this would make {total} subscriptions; the limit per connection is {}",
                    self.config.max_subscriptions
                ),
            );
            return None;
        }
        Some(new)
    }

    fn subscribe(&mut self, id: Option<Value>, channels: Vec<String>) {
        let Some((names, patterns)) = self.parse_channels(&id, &channels, "subscribed") else {
            return;
        };
        if self.forbidden(&id, &patterns, "subscribed") {
            return;
        }
        let Some(new) = self.new_within_limit(&id, &patterns) else {
            return;
        };
        self.subscriptions.extend(&new);
        self.actions.push_back(Action::Subscribe {
            patterns: new,
            reply: ServerMessage::Subscribed {
                id,
                channels: names,
            },
        });
    }

    fn unsubscribe(&mut self, id: Option<Value>, channels: Vec<String>) {
        let Some((names, patterns)) = self.parse_channels(&id, &channels, "unsubscribed") else {
            return;
        };
        let removed: Vec<Pattern> = patterns
            .into_iter()
            .filter(|p| self.subscriptions.remove(p))
            .collect();
        self.actions.push_back(Action::Unsubscribe {
            patterns: removed,
            reply: ServerMessage::Unsubscribed {
                id,
                channels: names,
                reason: None,
            },
        });
    }

    fn replay(&mut self, id: Option<Value>, from_seq: u64, to_seq: u64) {
        let mut slice = match self.ring.slice(from_seq, to_seq) {
            Ok(slice) => slice,
            Err(e) => {
                self.error(id, ErrorCode::InvalidRange, e.to_string());
                return;
            }
        };
        // A channel a refresh revoked is not read again through a replay:
        // its messages are left out (the client was told with
        // `unsubscribed`, reason `forbidden`).
        let mut withheld = Vec::new();
        if self.config.auth.is_some() {
            slice.messages.retain(|(seq, m)| {
                let readable = self.allows(&Pattern::from(m.subject.clone()));
                if !readable {
                    withheld.push(*seq);
                }
                readable
            });
        }
        // Replayed frames are bounded by the replay window's bytes; the
        // queue's hard bound leaves room for one replay, not for a client
        // that repeats them without reading.
        let replay_bytes: usize = slice
            .messages
            .iter()
            .map(|(_, m)| self.frame_len(m, MessageMark::Replayed))
            .sum();
        let hard = self.config.hard_queue_bytes();
        if self.queued_bytes + replay_bytes > hard {
            self.error(
                id,
                ErrorCode::QueueFull,
                format!(
                    "the replay's {replay_bytes} bytes do not fit the outbound queue now ({} bytes queued, bound {hard}); read what is queued, then ask again",
                    self.queued_bytes
                ),
            );
            return;
        }
        if let Some(oldest_seq) = slice.gap_oldest {
            self.push_control(&ServerMessage::ReplayGap {
                id: id.clone(),
                from_seq,
                to_seq,
                oldest_seq,
            });
        }
        for (seq, message) in &slice.messages {
            // Replayed frames are bounded by the ring's byte bound, which
            // the hard queue bound leaves room for.
            self.push_frame(OutFrame::message(*seq, MessageMark::Replayed, 0, message));
            self.stats.replayed = self.stats.replayed.saturating_add(1);
        }
        self.push_control(&ServerMessage::ReplayDone {
            id,
            from_seq,
            to_seq,
            withheld,
        });
    }

    fn begin_resume(
        &mut self,
        id: Option<Value>,
        channels: Vec<String>,
        since: u64,
        client_epoch: Option<String>,
    ) {
        if self.catch_up.is_some() {
            self.error(
                id,
                ErrorCode::ResumeInProgress,
                "a resume is already in progress on this connection".into(),
            );
            return;
        }
        let Some((names, patterns)) = self.parse_channels(&id, &channels, "subscribed") else {
            return;
        };
        if self.forbidden(&id, &patterns, "subscribed or recovered") {
            return;
        }
        let Some(new) = self.new_within_limit(&id, &patterns) else {
            return;
        };
        self.subscriptions.extend(&new);
        self.catch_up = Some(Box::new(CatchUp {
            id,
            channels: names,
            patterns: patterns.clone(),
            since_sseq: since,
            client_epoch,
            stream_epoch: None,
            held: VecDeque::new(),
        }));
        self.actions.push_back(Action::Resume {
            subscribe: new,
            patterns,
            since_sseq: since,
        });
    }

    /// The resume's fetch came back from the stream identified by
    /// `epoch`, which retains sequences from `first_retained` (`None`:
    /// nothing) up to `last_sseq`. Tells the client about a gap or a
    /// changed stream, and says whether the fetched messages are to be
    /// recovered.
    pub fn resume_fetched(
        &mut self,
        epoch: &str,
        first_retained: Option<u64>,
        last_sseq: u64,
    ) -> Recovery {
        let Some(catch_up) = self.catch_up.as_deref_mut() else {
            return Recovery::Skip;
        };
        catch_up.stream_epoch = Some(epoch.to_owned());
        let id = catch_up.id.clone();
        let changed = catch_up.client_epoch.as_deref().is_some_and(|e| e != epoch);
        if changed {
            self.stats.resume_gaps = self.stats.resume_gaps.saturating_add(1);
            let oldest_sseq = first_retained.unwrap_or(last_sseq + 1);
            self.push_control(&ServerMessage::ResumeGap {
                id,
                epoch_changed: true,
                oldest_sseq,
            });
            return Recovery::Skip;
        }
        if let Some(oldest_sseq) = resume_gap(catch_up.since_sseq, first_retained, last_sseq) {
            self.stats.resume_gaps = self.stats.resume_gaps.saturating_add(1);
            self.push_control(&ServerMessage::ResumeGap {
                id,
                epoch_changed: false,
                oldest_sseq,
            });
        }
        Recovery::Feed
    }

    /// One retained message found by the catch-up fetch, in stream order.
    pub fn recover(&mut self, message: &Arc<Published>) -> Result<(), Backpressure> {
        if self.closed || self.catch_up.is_none() {
            return Ok(());
        }
        let frame_len = self.frame_len(message, MessageMark::Recovered);
        if self.queued_bytes + frame_len > self.config.outbound_queue_bytes && self.has_frames() {
            return Err(Backpressure);
        }
        self.stats.recovered = self.stats.recovered.saturating_add(1);
        self.send_message(message, MessageMark::Recovered);
        Ok(())
    }

    /// The catch-up fetch delivered every retained message on the resumed
    /// patterns up to stream sequence `last_sseq`.
    pub fn resume_complete(&mut self, last_sseq: u64, now: Instant) {
        let Some(catch_up) = self.catch_up.take() else {
            return;
        };
        self.push_control(&ServerMessage::Resumed {
            id: catch_up.id,
            channels: catch_up.channels,
            last_sseq,
            epoch: catch_up.stream_epoch.unwrap_or_default(),
        });
        self.rare.get_or_insert_with(Box::default).floor = Some(RecoveredFloor {
            patterns: catch_up.patterns,
            sseq: last_sseq,
        });
        for message in catch_up.held {
            self.deliver(&message, now);
        }
    }

    /// The catch-up fetch failed (broker unavailable): the client is told,
    /// its subscriptions stay, and held live messages are delivered.
    pub fn resume_failed(&mut self, reason: &str, now: Instant) {
        let Some(catch_up) = self.catch_up.take() else {
            return;
        };
        self.error(
            catch_up.id,
            ErrorCode::BrokerUnavailable,
            format!("resume could not read the stream: {reason}; try again later"),
        );
        for message in catch_up.held {
            self.deliver(&message, now);
        }
    }

    /// A live message that matched one of this connection's patterns.
    pub fn deliver(&mut self, message: &Arc<Published>, now: Instant) -> Delivery {
        if self.closed {
            return Delivery::Closed;
        }
        if let Some(floor) = self.rare.as_deref().and_then(|r| r.floor.as_ref()) {
            if message.sseq > floor.sseq {
                // Live messages arrive in stream order: past the floor, no
                // later one can be a duplicate.
                self.clear_floor();
            } else if floor.patterns.iter().any(|p| p.matches(&message.subject)) {
                self.stats.duplicates = self.stats.duplicates.saturating_add(1);
                return Delivery::Duplicate;
            }
        }
        if let Some(catch_up) = &mut self.catch_up {
            if catch_up.held.len() >= self.config.resume_buffer_messages {
                self.close(
                    CloseReason::ResumeOverflow,
                    "too many live messages during resume; reconnect and resume again".into(),
                );
                return Delivery::Closed;
            }
            catch_up.held.push_back(Arc::clone(message));
            return Delivery::Held;
        }
        if !self.throttle.admits(message.priority) {
            self.stats.throttled = self.stats.throttled.saturating_add(1);
            self.dropped = self.dropped.saturating_add(1);
            return Delivery::Throttled;
        }
        let frame_len = self.frame_len(message, MessageMark::Live);
        let after = self.queued_bytes + frame_len;
        let fits = after <= self.config.outbound_queue_bytes || !self.has_frames();
        let critical_fits =
            message.priority == Priority::Critical && after <= self.config.hard_queue_bytes();
        if !fits && !critical_fits {
            self.stats.queue_full = self.stats.queue_full.saturating_add(1);
            self.dropped = self.dropped.saturating_add(1);
            if message.priority == Priority::Critical {
                self.close(
                    CloseReason::TooSlowForCritical,
                    "client too slow to receive critical messages".into(),
                );
                return Delivery::DroppedClosing;
            }
            match self.throttle.on_queue_full(&self.config.throttle, now) {
                Some(ThrottleChange::Raised(level)) => {
                    self.stats.throttle_changes = self.stats.throttle_changes.saturating_add(1);
                    self.push_control(&level.notice());
                }
                Some(ThrottleChange::Disconnect) => {
                    self.close(
                        CloseReason::TooSlow,
                        "client too slow even at the heaviest throttle".into(),
                    );
                    return Delivery::DroppedClosing;
                }
                Some(ThrottleChange::Lowered(_)) | None => {}
            }
            return Delivery::QueueFull;
        }
        if fits {
            self.throttle.on_enqueued();
        }
        Delivery::Queued(self.send_message(message, MessageMark::Live))
    }

    /// When the driver must next call [`Session::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let idle = self.last_heard + self.config.idle_timeout;
        let ping = self.last_ping.unwrap_or(self.last_heard) + self.config.ping_interval;
        let mut next = idle.min(ping);
        if let Some(t) = self.throttle.poll_timeout(&self.config.throttle) {
            next = next.min(t);
        }
        if let Some((notice_at, close_at)) = self.token_deadlines() {
            let warned = self.access().is_some_and(|a| a.warned);
            next = next.min(if warned {
                close_at
            } else {
                notice_at.min(close_at)
            });
        }
        Some(next)
    }

    /// Heartbeats, idle detection, throttle recovery and the token's
    /// deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.check_token(now);
        if self.closed {
            return;
        }
        if now >= self.last_heard + self.config.idle_timeout {
            self.close(
                CloseReason::Idle,
                format!(
                    "nothing heard from the client for {} s",
                    self.config.idle_timeout.as_secs()
                ),
            );
            return;
        }
        let ping_due = self.last_ping.unwrap_or(self.last_heard) + self.config.ping_interval;
        if now >= ping_due {
            self.last_ping = Some(now);
            self.actions.push_back(Action::Ping);
        }
        if let Some(ThrottleChange::Lowered(level)) =
            self.throttle.handle_timeout(&self.config.throttle, now)
        {
            self.stats.throttle_changes = self.stats.throttle_changes.saturating_add(1);
            self.push_control(&level.notice());
        }
    }

    /// Ends the session with a close frame (e.g. shutdown: 1001).
    pub fn close(&mut self, reason: CloseReason, message: String) {
        if self.closed {
            return;
        }
        self.closed = true;
        let lost = reason.is_too_slow().then_some(self.dropped);
        self.actions.push_back(Action::Close {
            reason,
            message,
            lost,
        });
    }

    fn frame_len(&self, message: &Published, mark: MessageMark) -> usize {
        // Exact length of the head written by OutFrame::message.
        let head = match mark {
            MessageMark::Live if self.dropped > 0 => 11 + decimal_len(u64::from(self.dropped)),
            MessageMark::Live => 0,
            MessageMark::Replayed => 16,
            MessageMark::Recovered => 17,
        };
        24 + decimal_len(self.next_seq) + head + message.tail_len()
    }

    fn send_message(&mut self, message: &Arc<Published>, mark: MessageMark) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let dropped = match mark {
            MessageMark::Live => std::mem::take(&mut self.dropped),
            MessageMark::Replayed | MessageMark::Recovered => 0,
        };
        let frame = OutFrame::message(seq, mark, dropped, message);
        self.ring.push(seq, Arc::clone(message), frame.len());
        self.push_frame(frame);
        self.stats.delivered = self.stats.delivered.saturating_add(1);
        seq
    }

    fn error(&mut self, id: Option<Value>, code: ErrorCode, message: String) {
        self.stats.request_errors = self.stats.request_errors.saturating_add(1);
        self.push_control(&ServerMessage::error(id, code, message));
    }

    fn push_control(&mut self, message: &ServerMessage) {
        let frame = OutFrame::control(message);
        match message {
            // What a client must learn even while its data queue is stuck:
            // why it receives less, why a request failed, and heartbeats.
            ServerMessage::ThrottleUpdate { .. }
            | ServerMessage::Error { .. }
            | ServerMessage::Pong { .. }
            | ServerMessage::TokenExpiring { .. }
            | ServerMessage::Refreshed { .. } => self.notices.push_back(frame),
            _ => self.push_frame(frame),
        }
    }

    fn push_frame(&mut self, frame: OutFrame) {
        self.queued_bytes += frame.len();
        self.queue.push_back(frame);
    }
}

/// Whether a `resume` after `since_sseq` misses messages the broker no
/// longer retains: some sequence in `since_sseq + 1 ..= last_sseq` is older
/// than the oldest retained one. Returns that oldest sequence, which the
/// client is told in `resume_gap` (`last_sseq + 1` when nothing is left).
pub fn resume_gap(since_sseq: u64, first_retained: Option<u64>, last_sseq: u64) -> Option<u64> {
    if since_sseq >= last_sseq {
        return None;
    }
    let oldest = first_retained.unwrap_or(last_sseq + 1);
    (oldest > since_sseq + 1).then_some(oldest)
}

fn decimal_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 10 {
        n /= 10;
        len += 1;
    }
    len
}

#[cfg(test)]
mod tests;
