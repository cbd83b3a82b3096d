//! The wire contract between browsers and surge (`PROTOCOL.md`, "Messages").
//!
//! Client requests are parsed here into typed values; anything that is not a
//! valid request becomes a [`RequestError`] that the session answers with an
//! `error` frame: a client never gets silence. Server frames are serde types
//! too, except `message` frames, which are encoded in two halves so that a
//! published payload is encoded once and shared by every subscriber (see
//! [`Published`]).

use std::fmt;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::deflate::Deflate;
use crate::subjects::Subject;

/// A request a client sent, with the `id` it wants echoed.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRequest {
    pub id: Option<Value>,
    pub kind: RequestKind,
}

/// What a client asked for. Channels stay strings here: validating them is
/// the session's job, because each invalid channel gets its own error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    Subscribe {
        channels: Vec<String>,
    },
    Unsubscribe {
        channels: Vec<String>,
    },
    Replay {
        from_seq: u64,
        to_seq: u64,
    },
    Ping,
    Resume {
        channels: Vec<String>,
        since_sseq: u64,
        /// The stream identity the client's `since_sseq` counts in, when
        /// it knows one (from `welcome` or `resumed`).
        epoch: Option<String>,
    },
    /// A new token for this connection, before its current one expires.
    Refresh {
        token: String,
    },
}

/// The typed body of a request, as serde sees it. `ping` has the alias
/// `heartbeat` because the seed system's clients send that.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum WireRequest {
    Subscribe {
        #[allow(dead_code)]
        id: Option<Value>,
        channels: Vec<String>,
    },
    Unsubscribe {
        #[allow(dead_code)]
        id: Option<Value>,
        channels: Vec<String>,
    },
    Replay {
        #[allow(dead_code)]
        id: Option<Value>,
        from_seq: u64,
        to_seq: u64,
    },
    #[serde(alias = "heartbeat")]
    Ping {
        #[allow(dead_code)]
        id: Option<Value>,
    },
    Resume {
        #[allow(dead_code)]
        id: Option<Value>,
        channels: Vec<String>,
        since_sseq: u64,
        #[serde(default)]
        epoch: Option<String>,
    },
    Refresh {
        #[allow(dead_code)]
        id: Option<Value>,
        token: String,
    },
}

const REQUEST_TYPES: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "replay",
    "ping",
    "heartbeat",
    "resume",
    "refresh",
];

/// Why a client frame could not be turned into a request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestError {
    /// The `id` of the request, when one could be read.
    pub id: Option<Value>,
    pub code: ErrorCode,
    pub message: String,
}

/// Parses one text frame from a client.
pub fn parse_request(text: &str) -> Result<ClientRequest, RequestError> {
    let value: Value = serde_json::from_str(text).map_err(|e| RequestError {
        id: None,
        code: ErrorCode::InvalidJson,
        message: format!("the frame is not valid JSON: {e}"),
    })?;
    let id = value.get("id").cloned();
    let fail = |code, message: String| RequestError {
        id: id.clone(),
        code,
        message,
    };
    let Some(obj) = value.as_object() else {
        return Err(fail(
            ErrorCode::InvalidMessage,
            "a request must be a JSON object with a \"type\" field".into(),
        ));
    };
    let Some(kind) = obj.get("type") else {
        return Err(fail(
            ErrorCode::InvalidMessage,
            "the request has no \"type\" field".into(),
        ));
    };
    let Some(kind) = kind.as_str() else {
        return Err(fail(
            ErrorCode::InvalidMessage,
            "\"type\" must be a string".into(),
        ));
    };
    if !REQUEST_TYPES.contains(&kind) {
        return Err(fail(
            ErrorCode::UnknownType,
            format!(
                "unknown request type {kind:?}; expected one of: {}",
                REQUEST_TYPES.join(", ")
            ),
        ));
    }
    let wire: WireRequest = serde_json::from_value(value.clone()).map_err(|e| {
        fail(
            ErrorCode::InvalidMessage,
            format!("invalid {kind} request: {e}"),
        )
    })?;
    let kind = match wire {
        WireRequest::Subscribe { channels, .. } => RequestKind::Subscribe { channels },
        WireRequest::Unsubscribe { channels, .. } => RequestKind::Unsubscribe { channels },
        WireRequest::Replay {
            from_seq, to_seq, ..
        } => RequestKind::Replay { from_seq, to_seq },
        WireRequest::Ping { .. } => RequestKind::Ping,
        WireRequest::Resume {
            channels,
            since_sseq,
            epoch,
            ..
        } => RequestKind::Resume {
            channels,
            since_sseq,
            epoch,
        },
        WireRequest::Refresh { token, .. } => RequestKind::Refresh { token },
    };
    Ok(ClientRequest { id, kind })
}

/// Error codes a client can act on, as they appear in `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not JSON.
    InvalidJson,
    /// JSON, but not a request of a known shape (missing or mistyped field).
    InvalidMessage,
    /// A `type` this server does not know.
    UnknownType,
    /// A channel is not a valid NATS subject pattern.
    InvalidSubject,
    /// The connection's token (or the anonymous channels) does not allow
    /// reading a requested channel.
    Forbidden,
    /// A `refresh` whose token was refused; nothing changed.
    InvalidToken,
    /// The per-connection subscription limit would be exceeded.
    TooManySubscriptions,
    /// `replay` with `from_seq` > `to_seq`, or a range never delivered.
    InvalidRange,
    /// The client sends requests faster than its inbound rate limit.
    RateLimited,
    /// A binary frame: the protocol is JSON text only.
    BinaryNotSupported,
    /// A `resume` while another is still running.
    ResumeInProgress,
    /// The broker could not serve a `resume` right now.
    BrokerUnavailable,
    /// A `replay` whose frames do not fit the connection's outbound queue
    /// now: read what is queued, then ask again.
    QueueFull,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidSubject => "invalid_subject",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::InvalidRange => "invalid_range",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::ResumeInProgress => "resume_in_progress",
            ErrorCode::BrokerUnavailable => "broker_unavailable",
            ErrorCode::QueueFull => "queue_full",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes surge uses (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: normal closure.
    Normal,
    /// 1001: the server is shutting down.
    GoingAway,
    /// 1008: policy: too slow at the heaviest throttle, unauthorized, idle.
    Policy,
    /// 1009: a client frame exceeded the size limit.
    TooBig,
    /// 1011: an internal error.
    Internal,
    /// 1013: overloaded, try again later.
    TryAgainLater,
    /// 4001: the connection's token expired; get a new one before
    /// reconnecting.
    TokenExpired,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::TryAgainLater => 1013,
            CloseCode::TokenExpired => 4001,
        }
    }

    pub fn metric_label(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "going_away",
            CloseCode::Policy => "policy",
            CloseCode::TooBig => "too_big",
            CloseCode::Internal => "internal",
            CloseCode::TryAgainLater => "try_again_later",
            CloseCode::TokenExpired => "token_expired",
        }
    }
}

/// Why the server closes a connection. The close code, the metric label
/// and the first words of the close reason follow from it, so nothing
/// downstream has to read a reason's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// SIGTERM/SIGINT: 1001.
    ShuttingDown,
    /// A client message over the size limit: 1009.
    MessageTooBig,
    /// Kept sending requests past its rate limit: 1008.
    RateLimited,
    /// More frames or bytes per second than the inbound budget allows
    /// (control and continuation frames included): 1008.
    InboundBudget,
    /// Still too slow at the heaviest throttle level: 1008.
    TooSlow,
    /// Too slow to take a critical message even with the extra room: 1008.
    TooSlowForCritical,
    /// Nothing heard from the client for the idle timeout: 1008.
    Idle,
    /// Too many live messages arrived while a resume caught up: 1013.
    ResumeOverflow,
    /// The token expired (plus the leeway) without a valid `refresh`: 4001.
    TokenExpired,
}

impl CloseReason {
    pub fn code(self) -> CloseCode {
        match self {
            CloseReason::ShuttingDown => CloseCode::GoingAway,
            CloseReason::MessageTooBig => CloseCode::TooBig,
            CloseReason::RateLimited
            | CloseReason::InboundBudget
            | CloseReason::TooSlow
            | CloseReason::TooSlowForCritical
            | CloseReason::Idle => CloseCode::Policy,
            CloseReason::ResumeOverflow => CloseCode::TryAgainLater,
            CloseReason::TokenExpired => CloseCode::TokenExpired,
        }
    }

    /// The label of `surge_connections_ended_total{reason}`.
    pub fn metric_label(self) -> &'static str {
        match self {
            CloseReason::ShuttingDown => "shutting_down",
            CloseReason::MessageTooBig => "message_too_big",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::InboundBudget => "inbound_budget",
            CloseReason::TooSlow => "too_slow",
            CloseReason::TooSlowForCritical => "too_slow_for_critical",
            CloseReason::Idle => "idle",
            CloseReason::ResumeOverflow => "resume_overflow",
            CloseReason::TokenExpired => "token_expired",
        }
    }

    /// The client is closed because it does not read fast enough: what is
    /// still queued for it is discarded and the Close goes out at once.
    pub fn is_too_slow(self) -> bool {
        matches!(self, CloseReason::TooSlow | CloseReason::TooSlowForCritical)
    }

    /// Whether frames queued before the Close are still written first (a
    /// graceful close) rather than discarded.
    pub fn flushes_queue(self) -> bool {
        matches!(
            self,
            CloseReason::ShuttingDown | CloseReason::ResumeOverflow
        )
    }
}

/// Limits announced to the client in `welcome`, so it can pace itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WelcomeLimits {
    pub max_subscriptions: u32,
    pub replay_window: u32,
    pub max_message_bytes: u32,
    pub client_rate_per_sec: u32,
    pub client_burst: u32,
    pub ping_interval_ms: u64,
    pub idle_timeout_ms: u64,
}

/// Every server frame except `message` (see [`Published`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Welcome {
        conn_id: String,
        shard: u32,
        /// The identity of the stream `sseq` counts in; `null` while the
        /// broker has not been reached yet.
        epoch: Option<String>,
        limits: WelcomeLimits,
    },
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        id: Option<Value>,
        channels: Vec<String>,
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        id: Option<Value>,
        channels: Vec<String>,
        /// Why the server removed them; absent when the client asked.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        reason: Option<UnsubscribeReason>,
    },
    ReplayGap {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        id: Option<Value>,
        from_seq: u64,
        to_seq: u64,
        oldest_seq: u64,
    },
    ReplayDone {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        id: Option<Value>,
        from_seq: u64,
        to_seq: u64,
        /// `seq` values of the range left out because their channel may no
        /// longer be read (a `refresh` revoked it): not lost, withheld.
        #[serde(skip_serializing_if = "Vec::is_empty", default)]
        withheld: Vec<u64>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        id: Option<Value>,
    },
    ResumeGap {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        id: Option<Value>,
        /// The client's `epoch` is not the stream's: its `since_sseq`
        /// means nothing here, nothing was recovered, and it must refetch
        /// its state.
        #[serde(skip_serializing_if = "is_false", default)]
        epoch_changed: bool,
        oldest_sseq: u64,
    },
    Resumed {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        id: Option<Value>,
        channels: Vec<String>,
        last_sseq: u64,
        epoch: String,
    },
    ThrottleUpdate {
        level: u8,
        rate_percent: u8,
        message: String,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        id: Option<Value>,
        code: ErrorCode,
        message: String,
    },
    /// The token expires in `expires_in_ms`: send `refresh` with a new one.
    TokenExpiring { expires_in_ms: u64 },
    /// The answer to an accepted `refresh`: the new token's `exp`, in
    /// Unix milliseconds.
    Refreshed {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        id: Option<Value>,
        expires_at: u64,
    },
}

/// Why the server unsubscribed channels the client did not ask to drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnsubscribeReason {
    /// A refreshed token no longer covers them.
    Forbidden,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ServerMessage {
    /// The frame's JSON text.
    pub fn encode(&self) -> Bytes {
        // Serialising these types cannot fail: every field is a string,
        // number, or a JSON value that was itself parsed from text.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn error(id: Option<Value>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            id,
            code,
            message: message.into(),
        }
    }
}

impl From<RequestError> for ServerMessage {
    fn from(e: RequestError) -> Self {
        ServerMessage::Error {
            id: e.id,
            code: e.code,
            message: e.message,
        }
    }
}

/// How much a message matters when a slow client must lose some.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    #[default]
    Medium,
    High,
    /// Never dropped by throttling.
    Critical,
}

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Medium,
        Priority::High,
        Priority::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }

    /// Parses `low|medium|high|critical`, case-insensitively.
    pub fn parse(s: &str) -> Option<Priority> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A message published on the broker, encoded once for all subscribers.
///
/// A `message` frame is `{"type":"message","seq":N` + per-connection flags +
/// the shared tail `,"subject":…,"sseq":…,"data":…}`. Only the head depends
/// on the connection, so fan-out and replay rings hold an `Arc<Published>`
/// and never copy the payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Published {
    pub subject: Subject,
    pub sseq: u64,
    pub priority: Priority,
    tail: Bytes,
    /// The tail compressed for permessage-deflate with the full window,
    /// made by the first subscriber that needs it and shared by all.
    deflated: OnceLock<Bytes>,
}

impl Published {
    /// Encodes a message. A payload that parses as JSON is sent as that
    /// JSON value; UTF-8 text that is not JSON as a JSON string marked
    /// `"encoding":"text"`; anything else base64-encoded and marked
    /// `"encoding":"base64"`, so every byte arrives and a client can always
    /// tell which of the three it got.
    pub fn new(subject: Subject, sseq: u64, priority: Priority, data: &[u8]) -> Arc<Self> {
        let mut tail = BytesMut::with_capacity(data.len() + subject.as_str().len() + 48);
        tail.put_slice(b",\"subject\":");
        // A validated subject has no characters JSON needs to escape except
        // possibly `"` or `\`, so go through serde to stay correct.
        tail.put_slice(&json_string(subject.as_str()));
        tail.put_slice(b",\"sseq\":");
        tail.put_slice(sseq.to_string().as_bytes());
        match PayloadEncoding::of(data) {
            PayloadEncoding::Json => {
                tail.put_slice(b",\"data\":");
                tail.put_slice(data.trim_ascii());
            }
            PayloadEncoding::Text(text) => {
                tail.put_slice(b",\"encoding\":\"text\",\"data\":");
                tail.put_slice(&json_string(text));
            }
            PayloadEncoding::Base64 => {
                tail.put_slice(b",\"encoding\":\"base64\",\"data\":\"");
                tail.put_slice(BASE64.encode(data).as_bytes());
                tail.put_u8(b'"');
            }
        }
        tail.put_u8(b'}');
        Arc::new(Published {
            subject,
            sseq,
            priority,
            tail: tail.freeze(),
            deflated: OnceLock::new(),
        })
    }

    /// The tail as permessage-deflate sends it with `deflate`'s window:
    /// compressed once per message for the full window (what every browser
    /// negotiates), per call for a smaller one.
    pub fn deflated_tail(&self, deflate: Deflate) -> Bytes {
        if deflate == Deflate::full() {
            self.deflated
                .get_or_init(|| crate::deflate::compress(&self.tail, deflate).into())
                .clone()
        } else {
            crate::deflate::compress(&self.tail, deflate).into()
        }
    }

    /// Bytes of the shared part, for memory and queue accounting.
    pub fn tail_len(&self) -> usize {
        self.tail.len()
    }

    /// The shared tail of the frame.
    pub fn tail(&self) -> &Bytes {
        &self.tail
    }
}

fn json_string(s: &str) -> Vec<u8> {
    serde_json::to_vec(s).unwrap_or_else(|_| b"\"\"".to_vec())
}

/// How a payload travels in a `message` frame's `data`.
enum PayloadEncoding<'a> {
    /// Valid JSON: sent as it is.
    Json,
    /// UTF-8 that is not JSON: sent as a JSON string.
    Text(&'a str),
    /// Not UTF-8: sent base64-encoded.
    Base64,
}

impl<'a> PayloadEncoding<'a> {
    fn of(data: &'a [u8]) -> Self {
        if serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok() {
            return PayloadEncoding::Json;
        }
        match std::str::from_utf8(data) {
            Ok(text) => PayloadEncoding::Text(text),
            Err(_) => PayloadEncoding::Base64,
        }
    }
}

/// How a message frame is marked besides its `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageMark {
    /// Delivered live.
    Live,
    /// Sent again in answer to `replay`.
    Replayed,
    /// Delivered from the broker's retention in answer to `resume`.
    Recovered,
}

/// One frame ready to be written: either a whole control frame, or a
/// message frame in two parts whose tail is shared with other connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutFrame {
    Control(Bytes),
    Message {
        head: Bytes,
        /// Its tail is the frame's shared part.
        published: Arc<Published>,
        seq: u64,
    },
    /// A complete WebSocket frame, already encoded (a ping or a pong).
    Wire(Bytes),
}

impl OutFrame {
    pub fn control(msg: &ServerMessage) -> Self {
        OutFrame::Control(msg.encode())
    }

    /// A message frame. `dropped` counts the live messages this
    /// connection skipped since its previous delivery; it is written only
    /// when non-zero (and callers pass 0 for replayed and recovered frames).
    pub fn message(seq: u64, mark: MessageMark, dropped: u32, published: &Arc<Published>) -> Self {
        let mut head = BytesMut::with_capacity(48);
        head.put_slice(b"{\"type\":\"message\",\"seq\":");
        head.put_slice(seq.to_string().as_bytes());
        match mark {
            MessageMark::Live => {}
            MessageMark::Replayed => head.put_slice(b",\"replayed\":true"),
            MessageMark::Recovered => head.put_slice(b",\"recovered\":true"),
        }
        if dropped > 0 {
            head.put_slice(b",\"dropped\":");
            head.put_slice(dropped.to_string().as_bytes());
        }
        OutFrame::Message {
            head: head.freeze(),
            published: Arc::clone(published),
            seq,
        }
    }

    /// Length of the frame's text in bytes.
    pub fn len(&self) -> usize {
        match self {
            OutFrame::Control(b) | OutFrame::Wire(b) => b.len(),
            OutFrame::Message {
                head, published, ..
            } => head.len() + published.tail.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame's text as one buffer (copies a message frame's two parts).
    pub fn to_bytes(&self) -> Bytes {
        match self {
            OutFrame::Control(b) | OutFrame::Wire(b) => b.clone(),
            OutFrame::Message {
                head, published, ..
            } => {
                let mut out = BytesMut::with_capacity(head.len() + published.tail.len());
                out.put_slice(head);
                out.put_slice(&published.tail);
                out.freeze()
            }
        }
    }

    /// Appends the frame's text to `out` (for coalescing writes).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            OutFrame::Control(b) | OutFrame::Wire(b) => out.extend_from_slice(b),
            OutFrame::Message {
                head, published, ..
            } => {
                out.extend_from_slice(head);
                out.extend_from_slice(&published.tail);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(s: &str) -> Subject {
        Subject::parse(s).expect("valid subject")
    }

    fn text(frame: &OutFrame) -> String {
        String::from_utf8(frame.to_bytes().to_vec()).expect("utf-8")
    }

    #[test]
    fn parses_every_request_kind() {
        let cases = [
            (
                r#"{"type":"subscribe","channels":["odin.token.BTC.trade"],"id":1}"#,
                RequestKind::Subscribe {
                    channels: vec!["odin.token.BTC.trade".into()],
                },
            ),
            (
                r#"{"type":"unsubscribe","channels":["a.>"]}"#,
                RequestKind::Unsubscribe {
                    channels: vec!["a.>".into()],
                },
            ),
            (
                r#"{"type":"replay","from_seq":40,"to_seq":60}"#,
                RequestKind::Replay {
                    from_seq: 40,
                    to_seq: 60,
                },
            ),
            (r#"{"type":"ping"}"#, RequestKind::Ping),
            (r#"{"type":"heartbeat"}"#, RequestKind::Ping),
            (
                r#"{"type":"resume","channels":["a.b"],"since_sseq":1200}"#,
                RequestKind::Resume {
                    channels: vec!["a.b".into()],
                    since_sseq: 1200,
                    epoch: None,
                },
            ),
            (
                r#"{"type":"resume","channels":["a.b"],"since_sseq":3,"epoch":"e-1"}"#,
                RequestKind::Resume {
                    channels: vec!["a.b".into()],
                    since_sseq: 3,
                    epoch: Some("e-1".into()),
                },
            ),
        ];
        for (input, want) in cases {
            let got = parse_request(input).expect(input);
            assert_eq!(got.kind, want, "{input}");
        }
        let with_id = parse_request(r#"{"type":"ping","id":"abc"}"#).expect("ping");
        assert_eq!(with_id.id, Some(Value::String("abc".into())));
    }

    #[test]
    fn bad_requests_get_a_code_and_keep_the_id() {
        let cases = [
            ("not json", ErrorCode::InvalidJson, None),
            ("[1,2]", ErrorCode::InvalidMessage, None),
            (r#"{"channels":[]}"#, ErrorCode::InvalidMessage, None),
            (r#"{"type":7}"#, ErrorCode::InvalidMessage, None),
            (
                r#"{"type":"dance","id":4}"#,
                ErrorCode::UnknownType,
                Some(Value::from(4)),
            ),
            (
                r#"{"type":"subscribe","id":"x"}"#,
                ErrorCode::InvalidMessage,
                Some(Value::from("x")),
            ),
            (
                r#"{"type":"replay","from_seq":-1,"to_seq":3}"#,
                ErrorCode::InvalidMessage,
                None,
            ),
            (
                r#"{"type":"subscribe","channels":["a"],"extra":true}"#,
                ErrorCode::InvalidMessage,
                None,
            ),
        ];
        for (input, code, id) in cases {
            let err = parse_request(input).expect_err(input);
            assert_eq!(err.code, code, "{input}: {}", err.message);
            assert_eq!(err.id, id, "{input}");
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn message_frames_share_the_encoded_tail() {
        let p = Published::new(
            subject("odin.token.BTC.trade"),
            1234,
            Priority::Medium,
            br#"{"px": 1.5}"#,
        );
        let a = OutFrame::message(17, MessageMark::Live, 0, &p);
        let b = OutFrame::message(3, MessageMark::Replayed, 0, &p);
        assert_eq!(
            text(&a),
            r#"{"type":"message","seq":17,"subject":"odin.token.BTC.trade","sseq":1234,"data":{"px": 1.5}}"#
        );
        assert_eq!(
            text(&b),
            r#"{"type":"message","seq":3,"replayed":true,"subject":"odin.token.BTC.trade","sseq":1234,"data":{"px": 1.5}}"#
        );
        let (OutFrame::Message { published: pa, .. }, OutFrame::Message { published: pb, .. }) =
            (&a, &b)
        else {
            panic!("message frames expected");
        };
        assert!(Arc::ptr_eq(pa, pb), "the tail must not be copied");
        assert_eq!(a.len(), text(&a).len());
    }

    #[test]
    fn non_json_text_becomes_a_string_marked_text() {
        let p = Published::new(subject("a.b"), 1, Priority::Low, b"hello \"world\"");
        let frame = text(&OutFrame::message(1, MessageMark::Recovered, 0, &p));
        let v: Value = serde_json::from_str(&frame).expect("valid JSON");
        assert_eq!(v["data"], Value::from("hello \"world\""));
        assert_eq!(v["encoding"], Value::from("text"));
        assert_eq!(v["recovered"], Value::from(true));
    }

    #[test]
    fn a_json_string_and_the_same_raw_text_are_told_apart() {
        let json = Published::new(subject("a.b"), 1, Priority::Low, br#""hi""#);
        let raw = Published::new(subject("a.b"), 2, Priority::Low, b"hi");
        let json: Value =
            serde_json::from_str(&text(&OutFrame::message(1, MessageMark::Live, 0, &json)))
                .expect("json");
        let raw: Value =
            serde_json::from_str(&text(&OutFrame::message(2, MessageMark::Live, 0, &raw)))
                .expect("json");
        assert_eq!(json["data"], Value::from("hi"));
        assert!(json.get("encoding").is_none(), "{json}");
        assert_eq!(raw["data"], Value::from("hi"));
        assert_eq!(raw["encoding"], Value::from("text"));
    }

    #[test]
    fn binary_payloads_arrive_intact_as_base64() {
        let bytes = b"\xff\xfe\x00binary\x80";
        let p = Published::new(subject("a.b"), 9, Priority::Low, bytes);
        let v: Value = serde_json::from_str(&text(&OutFrame::message(4, MessageMark::Live, 0, &p)))
            .expect("valid JSON");
        assert_eq!(v["encoding"], Value::from("base64"));
        let decoded = BASE64
            .decode(v["data"].as_str().expect("string"))
            .expect("base64");
        assert_eq!(decoded, bytes);
    }

    #[test]
    fn dropped_is_written_only_when_something_was_dropped() {
        let p = Published::new(subject("a.b"), 5, Priority::Low, b"1");
        let after_drops = OutFrame::message(8, MessageMark::Live, 12, &p);
        assert_eq!(
            text(&after_drops),
            r#"{"type":"message","seq":8,"dropped":12,"subject":"a.b","sseq":5,"data":1}"#
        );
        assert_eq!(after_drops.len(), text(&after_drops).len());
        let none = text(&OutFrame::message(9, MessageMark::Live, 0, &p));
        assert!(!none.contains("dropped"), "{none}");
    }

    #[test]
    fn priority_parses_case_insensitively() {
        assert_eq!(Priority::parse("CRITICAL"), Some(Priority::Critical));
        assert_eq!(Priority::parse(" low "), Some(Priority::Low));
        assert_eq!(Priority::parse("urgent"), None);
        assert!(Priority::Low < Priority::Critical);
    }

    #[test]
    fn snapshots_of_every_server_message() {
        let p = Published::new(
            subject("odin.token.BTC.trade"),
            1234,
            Priority::High,
            br#"{"price":64000.5,"qty":0.25}"#,
        );
        let frames = [
            OutFrame::control(&ServerMessage::Welcome {
                conn_id: "0-17".into(),
                shard: 0,
                epoch: Some("e-18f3a2c1d00-7b2e".into()),
                limits: WelcomeLimits {
                    max_subscriptions: 100,
                    replay_window: 100,
                    max_message_bytes: 16384,
                    client_rate_per_sec: 20,
                    client_burst: 40,
                    ping_interval_ms: 25000,
                    idle_timeout_ms: 60000,
                },
            }),
            OutFrame::control(&ServerMessage::Subscribed {
                id: Some(Value::from(1)),
                channels: vec!["odin.token.BTC.trade".into(), "odin.global.>".into()],
            }),
            OutFrame::control(&ServerMessage::Unsubscribed {
                reason: None,
                id: None,
                channels: vec!["odin.global.>".into()],
            }),
            OutFrame::message(17, MessageMark::Live, 0, &p),
            OutFrame::message(17, MessageMark::Replayed, 0, &p),
            OutFrame::message(18, MessageMark::Recovered, 0, &p),
            OutFrame::message(19, MessageMark::Live, 7, &p),
            OutFrame::control(&ServerMessage::ReplayGap {
                id: None,
                from_seq: 40,
                to_seq: 60,
                oldest_seq: 52,
            }),
            OutFrame::control(&ServerMessage::ReplayDone {
                id: None,
                from_seq: 40,
                to_seq: 60,
                withheld: Vec::new(),
            }),
            OutFrame::control(&ServerMessage::ReplayDone {
                id: None,
                from_seq: 40,
                to_seq: 60,
                withheld: vec![41, 45],
            }),
            OutFrame::control(&ServerMessage::Pong {
                id: Some(Value::from("hb-1")),
            }),
            OutFrame::control(&ServerMessage::ResumeGap {
                id: None,
                epoch_changed: false,
                oldest_sseq: 1100,
            }),
            OutFrame::control(&ServerMessage::ResumeGap {
                id: None,
                epoch_changed: true,
                oldest_sseq: 1,
            }),
            OutFrame::control(&ServerMessage::Resumed {
                id: None,
                channels: vec!["odin.token.BTC.trade".into()],
                last_sseq: 1300,
                epoch: "e-18f3a2c1d00-7b2e".into(),
            }),
            OutFrame::control(&ServerMessage::ThrottleUpdate {
                level: 1,
                rate_percent: 75,
                message: "Your connection is slightly slow. Receiving 75% of updates.".into(),
            }),
            OutFrame::control(&ServerMessage::error(
                Some(Value::from(9)),
                ErrorCode::InvalidSubject,
                "channel \"odin..x\" is invalid: subject has an empty token at position 2",
            )),
        ];
        let all: Vec<String> = frames.iter().map(text).collect();
        for line in &all {
            serde_json::from_str::<Value>(line).expect("every frame is JSON");
        }
        insta::assert_snapshot!(all.join("\n"));
    }
}
