//! The server side of the RFC 6455 §4 opening handshake, as a sans-IO state
//! machine.
//!
//! One [`Handshake`] exists per accepted TCP connection. The driver hands it
//! whatever bytes arrived, split however the network split them, and gets
//! back either [`Progress::NeedMore`] or a final [`Outcome`]: the exact
//! `101 Switching Protocols` response to write (plus any bytes that arrived
//! after the request head, which belong to the WebSocket stream), or a
//! complete plain HTTP rejection to write before closing. Nothing here reads
//! a clock: the timeout runs from the `now` given to [`Handshake::new`], and
//! the driver asks [`Handshake::poll_timeout`] when to call
//! [`Handshake::handle_timeout`].
//!
//! Why it is shaped this way: the seeds failed under connection surges
//! because slow or broken handshakes held resources until a client gave up.
//! Here every bad request is answered as soon as it is recognisably bad,
//! memory per pending handshake is bounded by `max_head_bytes`, and the same
//! code runs in production and in the simulator.
//!
//! # Order of checks
//!
//! Bytes that `httparse` rejects are answered with 400 as soon as they are
//! seen, complete head or not (too many header fields is a 431), so a
//! garbage request never waits for more input. A head that is still
//! incomplete once more than `max_head_bytes` have arrived is a 431. Once the
//! head is complete and parsed, the checks run in this order and the first
//! failure decides the answer:
//!
//! 1. method is `GET` (405 with `Allow: GET`);
//! 2. HTTP version is 1.1 (400);
//! 3. path, query string ignored, equals [`HandshakeConfig::path`] (404);
//! 4. one `Host`, `Upgrade` lists `websocket`, `Connection` lists `upgrade`,
//!    one `Sec-WebSocket-Key` that is 16 bytes in base64 (400);
//! 5. one `Sec-WebSocket-Version: 13` (426 with `Sec-WebSocket-Version: 13`);
//! 6. `Origin` in the allowlist, when one is configured and the request
//!    has an `Origin` (403): browsers always send one, native and backend
//!    clients usually don't, and the allowlist exists to stop other sites'
//!    pages. Origins match by scheme, host and effective port;
//! 7. a token, when tokens are configured (401): with JWT, one that
//!    verifies at the time the request arrived (or none, when anonymous
//!    channels exist), answered with `WWW-Authenticate: Bearer
//!    error="invalid_token"`; otherwise one of the static tokens. The token
//!    is `?token=`, else `?auth=`, else `Authorization: Bearer`.
//!
//! Because `httparse` is the single authority on where the head ends and on
//! what is malformed, the outcome does not depend on how the bytes were
//! split. The buffer is re-parsed on each feed; that work is bounded by
//! `max_head_bytes` per feed, the same order as the read that delivered it.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest as _, Sha1};

use crate::admission::Refusal;
use crate::auth::{Grant, JwtAuth, TokenError};
use crate::deflate::Deflate;
use crate::{Instant, UnixAnchor, UnixTime};

/// The GUID RFC 6455 §1.3 appends to the client key before hashing.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Header fields a request head may carry; more is answered with 431.
/// Browsers send about 15; 64 leaves room for proxies without letting a
/// client make us index an unbounded list.
pub const MAX_HEADERS: usize = 64;

/// What the handshake accepts. Shared by every connection of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// The WebSocket path, e.g. `/ws`; the query string is ignored when matching.
    pub path: String,
    /// Largest request head accepted, in bytes (431 beyond it).
    pub max_head_bytes: usize,
    /// Time from accept within which the request head must be complete (408 after it).
    pub timeout: Duration,
    /// Allowed origins (`scheme://host[:port]`), matched by scheme, host
    /// and effective port; empty accepts any Origin.
    pub allowed_origins: Vec<String>,
    /// Subprotocols the server speaks; the first one the client offers that is
    /// in this list is echoed in `Sec-WebSocket-Protocol`.
    pub subprotocols: Vec<String>,
    /// Accepted auth tokens; empty means no authentication. Otherwise a token
    /// from `?token=` or `Authorization: Bearer` must be in this list (401).
    pub auth_tokens: Vec<String>,
    /// A path answered as a readiness probe (`GET /healthz`) instead of
    /// upgraded, for balancers that can only probe the public port.
    pub probe_path: Option<String>,
    /// JWT authentication: a token from `?token=`, `?auth=` or
    /// `Authorization: Bearer` must verify (401 otherwise), unless none is
    /// sent and anonymous channels exist. When set, `auth_tokens` is not
    /// consulted (the configuration refuses both at once).
    pub jwt: Option<Arc<JwtAuth>>,
    /// Accept a permessage-deflate offer (see [`crate::deflate`]).
    pub compression: bool,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig {
            path: "/ws".to_owned(),
            // Browsers send well under 2 KiB; 8 KiB fits large cookies and
            // bounds what a slow client can make us hold.
            max_head_bytes: 8192,
            // The seeds lost clients with 5 s handshake timeouts under load and
            // none with 10 s.
            timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            subprotocols: Vec::new(),
            auth_tokens: Vec::new(),
            probe_path: None,
            jwt: None,
            compression: true,
        }
    }
}

/// What one call to [`Handshake::feed`] produced.
// Returned by value and consumed at once, never stored, so the size gap
// between `NeedMore` and `Done` costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The request head is not complete yet; feed more bytes.
    NeedMore,
    /// The handshake is decided. Returned once.
    Done(Outcome),
    /// Bytes were fed after the outcome was already returned; they were ignored.
    Finished,
}

/// How a handshake ended.
// Like `Progress`: returned once and consumed at once, never stored.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Write `response`, then speak WebSocket (starting with `leftover`).
    Accept(Accepted),
    /// Write `response`, then close.
    Reject(Rejection),
    /// The head was not complete in time: write the 408 `response` (or just
    /// close), and free the connection's slot.
    TimedOut(Rejection),
    /// A readiness probe on the probe path: free the slot, write
    /// [`probe_response`] for the gateway's readiness, and close.
    Probe,
}

impl Outcome {
    /// The HTTP status this outcome answers with.
    pub fn status(&self) -> u16 {
        match self {
            Outcome::Accept(_) => 101,
            Outcome::Reject(r) | Outcome::TimedOut(r) => r.status,
            Outcome::Probe => 200,
        }
    }

    /// The bytes to write to the client.
    pub fn response(&self) -> &[u8] {
        match self {
            Outcome::Accept(a) => &a.response,
            Outcome::Reject(r) | Outcome::TimedOut(r) => &r.response,
            Outcome::Probe => b"",
        }
    }
}

/// A valid upgrade request and the answer to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The complete `101 Switching Protocols` response.
    pub response: Vec<u8>,
    /// Bytes that arrived after the request head: the start of the WebSocket stream.
    pub leftover: Vec<u8>,
    /// What the client asked for.
    pub request: UpgradeRequest,
    /// What the connection may read, when JWT authentication is on: its
    /// verified token's, or anonymous.
    pub grant: Option<Grant>,
}

impl Accepted {
    /// permessage-deflate, when it was negotiated (for
    /// [`crate::connection::Connection::set_deflate`]).
    pub fn deflate(&self) -> Option<Deflate> {
        self.request.deflate.as_ref().map(|(d, _)| *d)
    }
}

/// The parts of an accepted upgrade request the gateway needs later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The request path without the query string.
    pub path: String,
    /// The query string, without the `?`.
    pub query: Option<String>,
    /// The `Origin` header, if sent.
    pub origin: Option<String>,
    /// The subprotocol chosen and echoed to the client.
    pub subprotocol: Option<String>,
    /// The token the client presented (query `token` wins over `Authorization: Bearer`).
    pub token: Option<String>,
    /// The client's `Sec-WebSocket-Key`.
    pub key: String,
    /// The `User-Agent` header, if sent.
    pub user_agent: Option<String>,
    /// permessage-deflate as negotiated, with the response header's value.
    pub deflate: Option<(Deflate, String)>,
}

/// A refused handshake: the reason and the full HTTP response to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why, for logs and the `reason` metric label.
    pub reason: RejectReason,
    /// The HTTP status of `response`.
    pub status: u16,
    /// The complete HTTP/1.1 response, body included; close after writing it.
    pub response: Vec<u8>,
}

/// Why a handshake was refused. The message is the body of the response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// The request is not a well-formed WebSocket upgrade; the text says what is wrong.
    #[error("bad WebSocket upgrade request: {0}")]
    Malformed(String),
    #[error("only GET can open a WebSocket")]
    MethodNotAllowed,
    #[error("unsupported WebSocket version: send Sec-WebSocket-Version: 13")]
    UnsupportedVersion,
    #[error("request head too large or too many header fields")]
    HeadTooLarge,
    #[error("no WebSocket endpoint at this path")]
    NotFound,
    #[error("this Origin is not allowed to connect")]
    OriginForbidden,
    #[error(
        "a valid token is required: use the `token` query parameter or `Authorization: Bearer`"
    )]
    Unauthorized,
    /// JWT authentication is on and the token is missing or refused.
    #[error("{0}")]
    InvalidToken(TokenError),
    #[error("the server is at capacity: retry in {retry_after_secs} seconds")]
    Overloaded { retry_after_secs: u32 },
    /// This client is over one of its own limits (per address or user).
    #[error("{limit}: retry in {retry_after_secs} seconds")]
    ClientLimit {
        limit: String,
        retry_after_secs: u32,
    },
    #[error("the request head did not arrive within the handshake timeout")]
    TimedOut,
}

impl RejectReason {
    /// The HTTP status answering this reason.
    pub fn status(&self) -> u16 {
        match self {
            RejectReason::Malformed(_) => 400,
            RejectReason::MethodNotAllowed => 405,
            RejectReason::UnsupportedVersion => 426,
            RejectReason::HeadTooLarge => 431,
            RejectReason::NotFound => 404,
            RejectReason::OriginForbidden => 403,
            RejectReason::Unauthorized | RejectReason::InvalidToken(_) => 401,
            RejectReason::Overloaded { .. } => 503,
            RejectReason::ClientLimit { .. } => 429,
            RejectReason::TimedOut => 408,
        }
    }

    /// Every value [`Self::metric_label`] returns (see
    /// `Refusal::METRIC_LABELS` for why they are listed).
    pub const METRIC_LABELS: [&'static str; 11] = [
        "malformed",
        "method",
        "version",
        "head_too_large",
        "not_found",
        "origin",
        "unauthorized",
        "invalid_token",
        "overloaded",
        "client_limit",
        "timeout",
    ];

    /// The value of the `reason` label on rejection metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            RejectReason::Malformed(_) => "malformed",
            RejectReason::MethodNotAllowed => "method",
            RejectReason::UnsupportedVersion => "version",
            RejectReason::HeadTooLarge => "head_too_large",
            RejectReason::NotFound => "not_found",
            RejectReason::OriginForbidden => "origin",
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::InvalidToken(_) => "invalid_token",
            RejectReason::Overloaded { .. } => "overloaded",
            RejectReason::ClientLimit { .. } => "client_limit",
            RejectReason::TimedOut => "timeout",
        }
    }

    fn status_text(&self) -> &'static str {
        match self {
            RejectReason::Malformed(_) => "Bad Request",
            RejectReason::MethodNotAllowed => "Method Not Allowed",
            RejectReason::UnsupportedVersion => "Upgrade Required",
            RejectReason::HeadTooLarge => "Request Header Fields Too Large",
            RejectReason::NotFound => "Not Found",
            RejectReason::OriginForbidden => "Forbidden",
            RejectReason::Unauthorized | RejectReason::InvalidToken(_) => "Unauthorized",
            RejectReason::Overloaded { .. } => "Service Unavailable",
            RejectReason::ClientLimit { .. } => "Too Many Requests",
            RejectReason::TimedOut => "Request Timeout",
        }
    }

    /// Headers the status needs besides the common ones (RFC 9110, RFC 6455 §4.4).
    fn extra_headers(&self) -> Vec<(&'static str, String)> {
        match self {
            RejectReason::MethodNotAllowed => vec![("Allow", "GET".to_owned())],
            RejectReason::UnsupportedVersion => vec![
                ("Upgrade", "websocket".to_owned()),
                ("Sec-WebSocket-Version", "13".to_owned()),
            ],
            RejectReason::Unauthorized => vec![("WWW-Authenticate", "Bearer".to_owned())],
            // RFC 6750 §3; the description is one of TokenError's fixed
            // texts, never anything the token contained.
            RejectReason::InvalidToken(error) => vec![(
                "WWW-Authenticate",
                format!("Bearer error=\"invalid_token\", error_description=\"{error}\""),
            )],
            RejectReason::Overloaded { retry_after_secs }
            | RejectReason::ClientLimit {
                retry_after_secs, ..
            } => {
                vec![("Retry-After", retry_after_secs.to_string())]
            }
            _ => Vec::new(),
        }
    }
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 §4.2.2): base64 of the
/// SHA-1 of the key followed by the protocol GUID.
pub fn accept_key(client_key: &str) -> String {
    let mut hasher = Sha1::new();
    hasher.update(client_key.as_bytes());
    hasher.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(hasher.finalize())
}

/// Whether the request is a `GET` of the configured probe path (query
/// string ignored).
fn is_probe(config: &HandshakeConfig, request: &httparse::Request<'_, '_>) -> bool {
    let Some(probe) = config.probe_path.as_deref() else {
        return false;
    };
    let target = request.path.unwrap_or_default();
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    request.method == Some("GET") && path == probe
}

/// The answer to a readiness probe: `200 ready` or `503 not ready`, plain
/// text, and the connection closes.
pub fn probe_response(ready: bool) -> Vec<u8> {
    let (status, body) = if ready {
        ("200 OK", "ready\n")
    } else {
        ("503 Service Unavailable", "not ready\n")
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The 503 the acceptor writes at once when admission finds no free slot,
/// so a client at capacity is told when to come back instead of timing out.
pub fn overloaded_response(retry_after_secs: u32) -> Rejection {
    rejection(RejectReason::Overloaded { retry_after_secs })
}

/// The answer to an admission refusal: 429 when only this client is over
/// its limit, else 503; both with `Retry-After` (`configured` unless the
/// refusal knows its own wait).
pub fn refusal_response(refusal: &Refusal, configured: Duration) -> Rejection {
    let retry_after_secs = refusal.retry_after_secs(configured);
    if refusal.is_per_client() {
        rejection(RejectReason::ClientLimit {
            limit: refusal.to_string(),
            retry_after_secs,
        })
    } else {
        overloaded_response(retry_after_secs)
    }
}

/// The complete HTTP/1.1 response refusing a handshake for `reason`.
pub fn rejection(reason: RejectReason) -> Rejection {
    let status = reason.status();
    let body = format!("{reason}\n");
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason.status_text(),
        body.len()
    );
    for (name, value) in reason.extra_headers() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(&body);
    Rejection {
        reason,
        status,
        response: head.into_bytes(),
    }
}

/// The `101 Switching Protocols` response for a key, an optional chosen
/// subprotocol and the accepted extension.
fn switching_protocols(key: &str, subprotocol: Option<&str>, extensions: Option<&str>) -> Vec<u8> {
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        accept_key(key)
    );
    if let Some(protocol) = subprotocol {
        response.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    if let Some(extensions) = extensions {
        response.push_str(&format!("Sec-WebSocket-Extensions: {extensions}\r\n"));
    }
    response.push_str("\r\n");
    response.into_bytes()
}

/// The opening handshake of one accepted connection.
#[derive(Debug)]
pub struct Handshake {
    config: Arc<HandshakeConfig>,
    deadline: Instant,
    /// The wall clock at the accept: a token is checked against the time
    /// its request arrived.
    wall: UnixAnchor,
    /// The request head received so far; never longer than `max_head_bytes`.
    buf: Vec<u8>,
    finished: bool,
}

impl Handshake {
    /// A handshake for a connection accepted at `now`, when the wall clock
    /// showed `unix`; the timeout runs from here.
    pub fn new(config: Arc<HandshakeConfig>, now: Instant, unix: UnixTime) -> Self {
        let deadline = now + config.timeout;
        Handshake {
            config,
            deadline,
            wall: UnixAnchor::new(now, unix),
            buf: Vec::new(),
            finished: false,
        }
    }

    /// Takes the next bytes read from the connection.
    ///
    /// Returns [`Progress::Done`] exactly once; later calls return
    /// [`Progress::Finished`] and ignore their bytes. A feed at or after the
    /// deadline ends the handshake with [`Outcome::TimedOut`] without looking
    /// at the bytes, so a late driver cannot stretch the timeout.
    pub fn feed(&mut self, bytes: &[u8], now: Instant) -> Progress {
        if self.finished {
            return Progress::Finished;
        }
        if now >= self.deadline {
            return Progress::Done(self.finish_timed_out());
        }
        if bytes.is_empty() {
            return Progress::NeedMore;
        }

        // Hold at most max_head_bytes: whatever goes past it is either
        // leftover after a complete head or proof the head is too large.
        let max = self.config.max_head_bytes;
        let take = bytes.len().min(max.saturating_sub(self.buf.len()));
        self.reserve_bounded(take);
        self.buf.extend_from_slice(&bytes[..take]);
        let over_limit = take < bytes.len();

        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let outcome = match request.parse(&self.buf) {
            Err(error) => Outcome::Reject(rejection(parse_error_reason(error))),
            Ok(httparse::Status::Partial) if over_limit => {
                Outcome::Reject(rejection(RejectReason::HeadTooLarge))
            }
            Ok(httparse::Status::Partial) => return Progress::NeedMore,
            Ok(httparse::Status::Complete(_)) if is_probe(&self.config, &request) => Outcome::Probe,
            Ok(httparse::Status::Complete(head_len)) => {
                match check_request(&self.config, &request, self.wall.unix_at(now)) {
                    Err(reason) => Outcome::Reject(rejection(reason)),
                    Ok((upgrade, grant)) => {
                        let mut leftover =
                            Vec::with_capacity(self.buf.len() - head_len + bytes.len() - take);
                        leftover.extend_from_slice(&self.buf[head_len..]);
                        leftover.extend_from_slice(&bytes[take..]);
                        Outcome::Accept(Accepted {
                            response: switching_protocols(
                                &upgrade.key,
                                upgrade.subprotocol.as_deref(),
                                upgrade.deflate.as_ref().map(|(_, h)| h.as_str()),
                            ),
                            leftover,
                            request: upgrade,
                            grant,
                        })
                    }
                }
            }
        };
        self.finish();
        Progress::Done(outcome)
    }

    /// Ends the handshake with a 408 once the deadline has passed and no
    /// outcome was returned yet; `None` otherwise.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Outcome> {
        if self.finished || now < self.deadline {
            return None;
        }
        Some(self.finish_timed_out())
    }

    /// When the driver must call [`Handshake::handle_timeout`]; `None` once decided.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.finished).then_some(self.deadline)
    }

    /// Bytes of request head held, for memory accounting.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn finish_timed_out(&mut self) -> Outcome {
        self.finish();
        Outcome::TimedOut(rejection(RejectReason::TimedOut))
    }

    fn finish(&mut self) {
        self.finished = true;
        self.buf = Vec::new();
    }

    /// Grows the buffer for `additional` bytes without its capacity passing
    /// max_head_bytes (a plain `extend` could double it past the limit).
    fn reserve_bounded(&mut self, additional: usize) {
        let needed = self.buf.len() + additional;
        if needed <= self.buf.capacity() {
            return;
        }
        let target = (self.buf.capacity() * 2)
            .max(256)
            .min(self.config.max_head_bytes)
            .max(needed);
        self.buf.reserve_exact(target - self.buf.len());
    }
}

fn parse_error_reason(error: httparse::Error) -> RejectReason {
    let what = match error {
        httparse::Error::TooManyHeaders => return RejectReason::HeadTooLarge,
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status | httparse::Error::Token => "invalid request line",
        httparse::Error::Version => "HTTP/1.1 is required",
    };
    RejectReason::Malformed(what.to_owned())
}

/// Runs the checks on a complete head in the documented order; a token is
/// checked against the wall-clock time `unix`.
fn check_request(
    config: &HandshakeConfig,
    request: &httparse::Request<'_, '_>,
    unix: UnixTime,
) -> Result<(UpgradeRequest, Option<Grant>), RejectReason> {
    let malformed = |what: &str| RejectReason::Malformed(what.to_owned());
    let headers = &*request.headers;

    if request.method != Some("GET") {
        return Err(RejectReason::MethodNotAllowed);
    }
    if request.version != Some(1) {
        return Err(malformed("HTTP/1.1 is required"));
    }

    let target = request.path.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if path != config.path {
        return Err(RejectReason::NotFound);
    }

    match header_values(headers, "Host").count() {
        0 => return Err(malformed("missing Host header")),
        1 => {}
        _ => return Err(malformed("more than one Host header")),
    }
    if !header_values(headers, "Upgrade").any(|v| has_token(v, "websocket")) {
        return Err(malformed("missing `Upgrade: websocket` header"));
    }
    if !header_values(headers, "Connection").any(|v| has_token(v, "upgrade")) {
        return Err(malformed("the Connection header must include `upgrade`"));
    }
    let key = single_header(headers, "Sec-WebSocket-Key")
        .map_err(|count| match count {
            0 => malformed("missing Sec-WebSocket-Key header"),
            _ => malformed("more than one Sec-WebSocket-Key header"),
        })?
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .filter(|k| BASE64.decode(k).is_ok_and(|raw| raw.len() == 16))
        .ok_or_else(|| malformed("Sec-WebSocket-Key must be 16 bytes in base64"))?;

    let version_ok = matches!(
        single_header(headers, "Sec-WebSocket-Version"),
        Ok(Some(v)) if v.trim_ascii() == b"13"
    );
    if !version_ok {
        return Err(RejectReason::UnsupportedVersion);
    }

    let origin = header_values(headers, "Origin")
        .next()
        .map(|v| String::from_utf8_lossy(v).trim().to_owned());
    if !config.allowed_origins.is_empty() {
        // With an allowlist: no Origin is a client that is not a browser
        // page (allowed); one Origin must be on the list; several are
        // ambiguous (refused).
        let allowed = match single_header(headers, "Origin") {
            Ok(None) => true,
            Ok(Some(v)) => std::str::from_utf8(v)
                .is_ok_and(|v| config.allowed_origins.iter().any(|a| same_origin(a, v))),
            Err(_) => false,
        };
        if !allowed {
            return Err(RejectReason::OriginForbidden);
        }
    }

    let token = query
        .and_then(query_token)
        .or_else(|| bearer_token(headers));
    let grant = match &config.jwt {
        Some(jwt) => Some(
            jwt.admit(token.as_deref(), unix)
                .map_err(RejectReason::InvalidToken)?,
        ),
        None if !config.auth_tokens.is_empty()
            && !token
                .as_deref()
                .is_some_and(|t| token_allowed(t, &config.auth_tokens)) =>
        {
            return Err(RejectReason::Unauthorized);
        }
        None => None,
    };

    let subprotocol = header_values(headers, "Sec-WebSocket-Protocol")
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|offered| config.subprotocols.iter().any(|s| s == offered))
        .map(str::to_owned);

    let user_agent = header_values(headers, "User-Agent")
        .next()
        .map(|v| String::from_utf8_lossy(v).into_owned());

    let deflate = if config.compression {
        crate::deflate::negotiate(
            header_values(headers, "Sec-WebSocket-Extensions")
                .filter_map(|v| std::str::from_utf8(v).ok()),
        )
    } else {
        None
    };

    let upgrade = UpgradeRequest {
        path: path.to_owned(),
        query: query.map(str::to_owned),
        origin,
        subprotocol,
        token,
        key: key.to_owned(),
        user_agent,
        deflate,
    };
    Ok((upgrade, grant))
}

/// An origin as RFC 6454 compares them: scheme and host lower-cased, the
/// port made explicit. `None` for anything that is not `scheme://host[:port]`
/// (one trailing `/` tolerated), e.g. the opaque origin `null`.
pub fn parse_origin(origin: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = origin.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let (host, port) = match authority.strip_prefix('[') {
        // [v6]:port
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (format!("[{host}]"), after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.to_owned(), None),
        },
    };
    if host.is_empty() || host == "[]" {
        return None;
    }
    let port = match port {
        Some(p) => p.parse::<u16>().ok()?,
        None => match scheme.as_str() {
            "http" | "ws" => 80,
            "https" | "wss" => 443,
            _ => return None,
        },
    };
    Some((scheme, host.to_ascii_lowercase(), port))
}

/// Whether `presented` is the origin `allowed` names.
fn same_origin(allowed: &str, presented: &str) -> bool {
    match (parse_origin(allowed), parse_origin(presented)) {
        (Some(a), Some(p)) => a == p,
        _ => false,
    }
}

/// Values of every header called `name` (case-insensitive), in request order.
fn header_values<'h>(
    headers: &'h [httparse::Header<'_>],
    name: &'h str,
) -> impl Iterator<Item = &'h [u8]> + 'h {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// The value of a header that may appear at most once; `Err(count)` when it
/// appears more than once.
fn single_header<'h>(
    headers: &'h [httparse::Header<'_>],
    name: &'h str,
) -> Result<Option<&'h [u8]>, usize> {
    let mut values = header_values(headers, name);
    let first = values.next();
    match values.count() {
        0 => Ok(first),
        more => Err(more + 1),
    }
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The percent-decoded `token` query parameter, or else `auth` (what the
/// system surge replaces sent), if present and non-empty.
fn query_token(query: &str) -> Option<String> {
    let param = |name: &str| {
        let raw = query
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))?;
        let token = percent_decode(raw);
        (!token.is_empty()).then_some(token)
    };
    param("token").or_else(|| param("auth"))
}

/// The token of an `Authorization: Bearer <token>` header, if any.
fn bearer_token(headers: &[httparse::Header<'_>]) -> Option<String> {
    header_values(headers, "Authorization").find_map(|value| {
        let value = std::str::from_utf8(value).ok()?.trim();
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
    })
}

/// Decodes `%XX` escapes; a value that is not valid escaped UTF-8 is kept as sent.
fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| raw.to_owned())
}

/// Whether `presented` is one of `allowed`, comparing every candidate in full
/// so the time taken does not reveal how much of a token was right.
fn token_allowed(presented: &str, allowed: &[String]) -> bool {
    allowed.iter().fold(false, |found, candidate| {
        found | constant_time_eq(presented.as_bytes(), candidate.as_bytes())
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod jwt_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const T0: Instant = Instant::from_millis(1_000);

    pub(super) fn request_with(path: &str, extra: &[&str]) -> Vec<u8> {
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {RFC_KEY}\r\nSec-WebSocket-Version: 13\r\n"
        );
        for line in extra {
            req.push_str(line);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        req.into_bytes()
    }

    fn valid_request() -> Vec<u8> {
        request_with("/ws", &[])
    }

    fn run(config: HandshakeConfig, bytes: &[u8]) -> Outcome {
        let mut hs = Handshake::new(Arc::new(config), T0, UnixTime::default());
        match hs.feed(bytes, T0) {
            Progress::Done(outcome) => outcome,
            other => panic!("expected an outcome, got {other:?}"),
        }
    }

    fn accepted(outcome: Outcome) -> Accepted {
        match outcome {
            Outcome::Accept(a) => a,
            other => panic!("expected accept, got {other:?}"),
        }
    }

    fn rejected(outcome: Outcome) -> Rejection {
        match outcome {
            Outcome::Reject(r) => r,
            other => panic!("expected reject, got {other:?}"),
        }
    }

    /// Shows CRLFs explicitly so snapshots pin them down.
    fn visible(response: &[u8]) -> String {
        String::from_utf8_lossy(response).replace("\r\n", "\\r\\n\n")
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key(RFC_KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn valid_request_gets_exact_101() {
        let a = accepted(run(HandshakeConfig::default(), &valid_request()));
        assert_eq!(
            a.response,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        assert!(a.leftover.is_empty());
        assert_eq!(a.request.path, "/ws");
        assert_eq!(a.request.key, RFC_KEY);
        assert_eq!(a.request.query, None);
        assert_eq!(a.request.subprotocol, None);
        insta::assert_snapshot!("accept_rfc_key", visible(&a.response));
    }

    #[test]
    fn byte_by_byte_feeding_gives_the_same_outcome() {
        let mut request = valid_request();
        request.extend_from_slice(b"\x81\x05hello");
        let whole = run(HandshakeConfig::default(), &request);
        let mut hs = Handshake::new(
            Arc::new(HandshakeConfig::default()),
            T0,
            UnixTime::default(),
        );
        let mut outcome = None;
        for (i, byte) in request.iter().enumerate() {
            match hs.feed(std::slice::from_ref(byte), T0) {
                Progress::NeedMore => assert_eq!(hs.buffered(), i + 1),
                Progress::Done(o) => {
                    outcome = Some(o);
                    break;
                }
                Progress::Finished => panic!("finished before done"),
            }
        }
        // The head completes on its last byte, so the frame is fed afterwards.
        assert_eq!(hs.feed(b"x", T0), Progress::Finished);
        let split = accepted(outcome.expect("an outcome"));
        let whole = accepted(whole);
        assert_eq!(split.response, whole.response);
        assert!(split.leftover.is_empty());
        assert_eq!(whole.leftover, b"\x81\x05hello");
        assert_eq!(hs.buffered(), 0);
    }

    #[test]
    fn leftover_bytes_after_the_head_are_kept() {
        let mut request = valid_request();
        let frame = b"\x81\x85\x01\x02\x03\x04ig`hn";
        request.extend_from_slice(frame);
        let a = accepted(run(HandshakeConfig::default(), &request));
        assert_eq!(a.leftover, frame);

        // The head completes in a second feed that also carries a frame.
        let head = valid_request();
        let mut hs = Handshake::new(
            Arc::new(HandshakeConfig::default()),
            T0,
            UnixTime::default(),
        );
        assert_eq!(hs.feed(&head[..10], T0), Progress::NeedMore);
        let mut rest = head[10..].to_vec();
        rest.extend_from_slice(frame);
        match hs.feed(&rest, T0) {
            Progress::Done(Outcome::Accept(a)) => assert_eq!(a.leftover, frame),
            other => panic!("expected accept, got {other:?}"),
        }
    }

    #[test]
    fn connection_token_lists_are_understood() {
        let req = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nSEC-WEBSOCKET-VERSION: 13\r\n\r\n";
        accepted(run(HandshakeConfig::default(), req));

        let req = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let r = rejected(run(HandshakeConfig::default(), req));
        assert_eq!(r.status, 400);
        assert_eq!(
            r.reason,
            RejectReason::Malformed("the Connection header must include `upgrade`".into())
        );
    }

    fn status_of(bytes: &[u8]) -> u16 {
        run(HandshakeConfig::default(), bytes).status()
    }

    #[test]
    fn each_rejection_has_its_status() {
        let valid = String::from_utf8(valid_request()).unwrap();
        let without = |line: &str| valid.replace(line, "").into_bytes();
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("post", valid.replacen("GET", "POST", 1).into_bytes(), 405),
            (
                "http/1.0",
                valid.replacen("HTTP/1.1", "HTTP/1.0", 1).into_bytes(),
                400,
            ),
            (
                "http/2",
                valid.replacen("HTTP/1.1", "HTTP/2.0", 1).into_bytes(),
                400,
            ),
            ("garbage", b"\x16\x03\x01\x02\x00\x01\x00".to_vec(), 400),
            ("other path", request_with("/other", &[]), 404),
            ("path prefix", request_with("/ws/x", &[]), 404),
            ("no host", without("Host: example.com\r\n"), 400),
            ("no upgrade", without("Upgrade: websocket\r\n"), 400),
            ("no connection", without("Connection: Upgrade\r\n"), 400),
            (
                "no key",
                without(&format!("Sec-WebSocket-Key: {RFC_KEY}\r\n")),
                400,
            ),
            (
                "short key",
                valid.replace(RFC_KEY, "c2hvcnQ=").into_bytes(),
                400,
            ),
            (
                "non-base64 key",
                valid
                    .replace(RFC_KEY, "not base64 at all!!!!!==")
                    .into_bytes(),
                400,
            ),
            (
                "two keys",
                request_with("/ws", &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="]),
                400,
            ),
            ("no version", without("Sec-WebSocket-Version: 13\r\n"), 426),
            (
                "version 8",
                valid.replace("Version: 13", "Version: 8").into_bytes(),
                426,
            ),
        ];
        for (name, bytes, status) in cases {
            assert_eq!(status_of(&bytes), status, "{name}");
        }
        let r = rejected(run(
            HandshakeConfig::default(),
            &valid.replacen("GET", "POST", 1).into_bytes(),
        ));
        assert!(String::from_utf8_lossy(&r.response).contains("\r\nAllow: GET\r\n"));
    }

    #[test]
    fn query_string_is_ignored_when_matching_the_path() {
        let a = accepted(run(
            HandshakeConfig::default(),
            &request_with("/ws?a=1&b=2", &[]),
        ));
        assert_eq!(a.request.path, "/ws");
        assert_eq!(a.request.query.as_deref(), Some("a=1&b=2"));
    }

    #[test]
    fn malformed_bytes_are_rejected_without_waiting() {
        let mut hs = Handshake::new(
            Arc::new(HandshakeConfig::default()),
            T0,
            UnixTime::default(),
        );
        assert_eq!(hs.feed(b"GET /ws HTTP/1.1\r\nHo", T0), Progress::NeedMore);
        match hs.feed(b"st\x01: x", T0) {
            Progress::Done(Outcome::Reject(r)) => assert_eq!(r.status, 400),
            other => panic!("expected 400, got {other:?}"),
        }
    }

    #[test]
    fn timeout_runs_from_accept() {
        let config = Arc::new(HandshakeConfig::default());
        let mut hs = Handshake::new(config, T0, UnixTime::default());
        let deadline = T0 + Duration::from_secs(10);
        assert_eq!(hs.poll_timeout(), Some(deadline));
        assert_eq!(hs.feed(b"GET /ws HT", T0), Progress::NeedMore);
        assert_eq!(hs.handle_timeout(Instant::from_millis(1_000 + 9_999)), None);
        assert_eq!(hs.poll_timeout(), Some(deadline));
        match hs.handle_timeout(deadline) {
            Some(Outcome::TimedOut(r)) => {
                assert_eq!(r.status, 408);
                assert_eq!(r.reason, RejectReason::TimedOut);
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert_eq!(hs.poll_timeout(), None);
        assert_eq!(hs.handle_timeout(deadline), None);
        assert_eq!(hs.feed(b"TP/1.1\r\n", deadline), Progress::Finished);
        assert_eq!(hs.buffered(), 0);
    }

    #[test]
    fn a_feed_after_the_deadline_times_out() {
        let mut hs = Handshake::new(
            Arc::new(HandshakeConfig::default()),
            T0,
            UnixTime::default(),
        );
        let late = T0 + Duration::from_secs(11);
        match hs.feed(&valid_request(), late) {
            Progress::Done(o) => assert_eq!(o.status(), 408),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn no_timeout_after_an_outcome() {
        let mut hs = Handshake::new(
            Arc::new(HandshakeConfig::default()),
            T0,
            UnixTime::default(),
        );
        assert!(matches!(hs.feed(&valid_request(), T0), Progress::Done(_)));
        assert_eq!(hs.poll_timeout(), None);
        assert_eq!(hs.handle_timeout(T0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn the_probe_path_is_answered_only_when_configured() {
        let probe = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(run(HandshakeConfig::default(), probe).status(), 404);
        let config = HandshakeConfig {
            probe_path: Some("/healthz".into()),
            ..HandshakeConfig::default()
        };
        assert_eq!(run(config.clone(), probe), Outcome::Probe);
        assert_eq!(
            run(
                config.clone(),
                b"GET /healthz?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
            ),
            Outcome::Probe
        );
        assert_eq!(
            run(config.clone(), b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status(),
            405
        );
        // The WebSocket path still upgrades.
        accepted(run(config, &valid_request()));
        let ready = String::from_utf8(probe_response(true)).expect("text");
        assert!(ready.starts_with("HTTP/1.1 200 OK\r\n") && ready.ends_with("\r\n\r\nready\n"));
        let not = String::from_utf8(probe_response(false)).expect("text");
        assert!(not.starts_with("HTTP/1.1 503 ") && not.ends_with("not ready\n"));
    }

    #[test]
    fn origin_allowlist() {
        let config = HandshakeConfig {
            allowed_origins: vec!["https://app.example.com".into()],
            ..HandshakeConfig::default()
        };
        let a = accepted(run(
            config.clone(),
            &request_with("/ws", &["Origin: HTTPS://App.Example.com"]),
        ));
        assert_eq!(a.request.origin.as_deref(), Some("HTTPS://App.Example.com"));
        for extra in [
            vec!["Origin: https://evil.example.com"],
            vec!["Origin: https://app.example.com.evil.com"],
            vec![
                "Origin: https://app.example.com",
                "Origin: https://evil.example.com",
            ],
        ] {
            let r = rejected(run(config.clone(), &request_with("/ws", &extra)));
            assert_eq!(r.status, 403, "{extra:?}");
        }
        // Scheme and host case-insensitively, the default port made explicit.
        for origin in [
            "https://app.example.com:443",
            "https://APP.example.COM",
            "https://app.example.com/",
        ] {
            let a = accepted(run(
                config.clone(),
                &request_with("/ws", &[&format!("Origin: {origin}")]),
            ));
            assert_eq!(a.request.origin.as_deref(), Some(origin));
        }
        for origin in [
            "https://app.example.com:8443",
            "http://app.example.com",
            "http://app.example.com:443",
            "null",
        ] {
            assert_eq!(
                run(
                    config.clone(),
                    &request_with("/ws", &[&format!("Origin: {origin}")])
                )
                .status(),
                403,
                "{origin}"
            );
        }
        // A client that is not a browser page sends no Origin: allowed.
        accepted(run(config.clone(), &request_with("/ws", &[])));
        // Without an allowlist any Origin is fine.
        accepted(run(
            HandshakeConfig::default(),
            &request_with("/ws", &["Origin: https://anywhere.example"]),
        ));
    }

    #[test]
    fn permessage_deflate_is_accepted_once_and_only_when_on() {
        let offer = "Sec-WebSocket-Extensions: x-webkit-deflate-frame, permessage-deflate; client_max_window_bits";
        let a = accepted(run(
            HandshakeConfig::default(),
            &request_with("/ws", &[offer]),
        ));
        assert_eq!(a.deflate(), Some(Deflate::full()));
        let response = String::from_utf8_lossy(&a.response).into_owned();
        assert!(
            response.contains("\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"),
            "{response}"
        );
        let off = HandshakeConfig {
            compression: false,
            ..HandshakeConfig::default()
        };
        let a = accepted(run(off, &request_with("/ws", &[offer])));
        assert_eq!(a.deflate(), None);
        assert!(!String::from_utf8_lossy(&a.response).contains("Extensions"));
        let a = accepted(run(HandshakeConfig::default(), &valid_request()));
        assert_eq!(a.deflate(), None, "no offer, no extension");
    }

    #[test]
    fn subprotocol_selection() {
        let config = HandshakeConfig {
            subprotocols: vec!["surge.v2".into(), "surge.v1".into()],
            ..HandshakeConfig::default()
        };
        // The client's preference order wins among those we support.
        let a = accepted(run(
            config.clone(),
            &request_with(
                "/ws",
                &[
                    "Sec-WebSocket-Protocol: chat, surge.v1",
                    "Sec-WebSocket-Protocol: surge.v2",
                ],
            ),
        ));
        assert_eq!(a.request.subprotocol.as_deref(), Some("surge.v1"));
        assert!(
            String::from_utf8_lossy(&a.response)
                .contains("\r\nSec-WebSocket-Protocol: surge.v1\r\n")
        );

        let a = accepted(run(
            config.clone(),
            &request_with("/ws", &["Sec-WebSocket-Protocol: chat"]),
        ));
        assert_eq!(a.request.subprotocol, None);
        assert!(!String::from_utf8_lossy(&a.response).contains("Sec-WebSocket-Protocol"));

        let a = accepted(run(config, &valid_request()));
        assert_eq!(a.request.subprotocol, None);
    }

    #[test]
    fn tokens_from_query_and_bearer_header() {
        let config = HandshakeConfig {
            auth_tokens: vec!["s3cret/1".into(), "other".into()],
            ..HandshakeConfig::default()
        };
        let a = accepted(run(
            config.clone(),
            &request_with("/ws?x=1&token=s3cret%2F1", &[]),
        ));
        assert_eq!(a.request.token.as_deref(), Some("s3cret/1"));

        let a = accepted(run(
            config.clone(),
            &request_with("/ws", &["Authorization: bearer other"]),
        ));
        assert_eq!(a.request.token.as_deref(), Some("other"));

        for (path, extra) in [
            ("/ws", vec![]),
            ("/ws?token=wrong", vec![]),
            ("/ws?token=", vec![]),
            ("/ws", vec!["Authorization: Bearer wrong"]),
            ("/ws", vec!["Authorization: Basic b3RoZXI="]),
        ] {
            let r = rejected(run(config.clone(), &request_with(path, &extra)));
            assert_eq!(r.status, 401, "{path} {extra:?}");
            assert!(String::from_utf8_lossy(&r.response).contains("WWW-Authenticate: Bearer"));
        }

        // Without configured tokens a presented token is recorded, not checked.
        let a = accepted(run(
            HandshakeConfig::default(),
            &request_with("/ws?token=abc", &[]),
        ));
        assert_eq!(a.request.token.as_deref(), Some("abc"));
    }

    #[test]
    fn checks_run_in_the_documented_order() {
        // Everything wrong at once: the method decides.
        let config = HandshakeConfig {
            allowed_origins: vec!["https://a".into()],
            auth_tokens: vec!["t".into()],
            ..HandshakeConfig::default()
        };
        let all_wrong = b"POST /nope HTTP/1.0\r\nSec-WebSocket-Version: 8\r\n\r\n";
        assert_eq!(run(config.clone(), all_wrong).status(), 405);
        let steps: [(&[u8], u16); 5] = [
            (
                b"GET /nope HTTP/1.0\r\nSec-WebSocket-Version: 8\r\n\r\n",
                400,
            ),
            (
                b"GET /nope HTTP/1.1\r\nSec-WebSocket-Version: 8\r\n\r\n",
                404,
            ),
            (b"GET /ws HTTP/1.1\r\nSec-WebSocket-Version: 8\r\n\r\n", 400),
            (
                &request_with("/ws", &["Origin: https://b"]).replace_version("8"),
                426,
            ),
            (&request_with("/ws", &["Origin: https://b"]), 403),
        ];
        for (bytes, status) in steps {
            assert_eq!(
                run(config.clone(), bytes).status(),
                status,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(
            run(config.clone(), &request_with("/ws", &["Origin: https://a"])).status(),
            401
        );
        assert_eq!(
            run(config, &request_with("/ws?token=t", &["Origin: https://a"])).status(),
            101
        );
    }

    trait ReplaceVersion {
        fn replace_version(&self, version: &str) -> Vec<u8>;
    }
    impl ReplaceVersion for Vec<u8> {
        fn replace_version(&self, version: &str) -> Vec<u8> {
            String::from_utf8_lossy(self)
                .replace(
                    "Sec-WebSocket-Version: 13",
                    &format!("Sec-WebSocket-Version: {version}"),
                )
                .into_bytes()
        }
    }

    #[test]
    fn huge_head_is_431() {
        let config = HandshakeConfig::default();
        let filler = format!("X-Filler: {}", "a".repeat(9000));
        let r = rejected(run(config.clone(), &request_with("/ws", &[&filler])));
        assert_eq!(r.status, 431);

        // Dribbled: rejected as soon as the limit is passed, never holding more.
        let mut hs = Handshake::new(Arc::new(config), T0, UnixTime::default());
        let bytes = request_with("/ws", &[&filler]);
        let mut fed = 0;
        for chunk in bytes.chunks(100) {
            fed += chunk.len();
            match hs.feed(chunk, T0) {
                Progress::NeedMore => {
                    assert!(fed <= 8192);
                    assert!(hs.buffered() <= 8192);
                }
                Progress::Done(o) => {
                    assert_eq!(o.status(), 431);
                    assert!(fed > 8192);
                    return;
                }
                Progress::Finished => panic!("finished before done"),
            }
        }
        panic!("never rejected");
    }

    #[test]
    fn head_of_exactly_the_limit_is_accepted() {
        let base = valid_request().len();
        let filler_len = 8192 - base - "X-F: \r\n".len();
        let filler = format!("X-F: {}", "a".repeat(filler_len));
        let mut bytes = request_with("/ws", &[&filler]);
        assert_eq!(bytes.len(), 8192);
        bytes.extend_from_slice(b"after");
        let a = accepted(run(HandshakeConfig::default(), &bytes));
        assert_eq!(a.leftover, b"after");

        let mut bigger = request_with("/ws", &[&format!("{filler}a")]);
        bigger.extend_from_slice(b"after");
        assert_eq!(run(HandshakeConfig::default(), &bigger).status(), 431);
    }

    #[test]
    fn too_many_headers_is_431() {
        let extra: Vec<String> = (0..MAX_HEADERS).map(|i| format!("X-H{i}: v")).collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        assert_eq!(status_of(&request_with("/ws", &extra)), 431);
    }

    #[test]
    fn refusals_answer_429_per_client_and_503_for_the_gateway() {
        let five = Duration::from_secs(5);
        let r = refusal_response(&Refusal::PerIp { limit: 3 }, five);
        let text = String::from_utf8_lossy(&r.response);
        assert!(
            text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nRetry-After: 5\r\n"), "{text}");
        assert!(
            text.contains("too many connections from this address (limit 3)"),
            "{text}"
        );
        let rate = Refusal::HandshakeRate {
            limit: 10,
            retry_after_secs: 1,
        };
        let text = String::from_utf8_lossy(&refusal_response(&rate, five).response).into_owned();
        assert!(
            text.contains("\r\nRetry-After: 1\r\n"),
            "the bucket's own wait: {text}"
        );
        let full = refusal_response(&Refusal::Full { capacity: 9 }, five);
        assert_eq!(full.status, 503);
    }

    #[test]
    fn overloaded_response_carries_retry_after() {
        let r = overloaded_response(7);
        assert_eq!(r.status, 503);
        assert_eq!(r.reason.metric_label(), "overloaded");
        assert!(String::from_utf8_lossy(&r.response).contains("\r\nRetry-After: 7\r\n"));
    }

    fn all_reasons() -> Vec<(&'static str, RejectReason)> {
        vec![
            (
                "malformed",
                RejectReason::Malformed("missing Sec-WebSocket-Key header".into()),
            ),
            ("method", RejectReason::MethodNotAllowed),
            ("version", RejectReason::UnsupportedVersion),
            ("head_too_large", RejectReason::HeadTooLarge),
            ("not_found", RejectReason::NotFound),
            ("origin", RejectReason::OriginForbidden),
            ("unauthorized", RejectReason::Unauthorized),
            (
                "invalid_token",
                RejectReason::InvalidToken(crate::auth::TokenError::Expired),
            ),
            (
                "overloaded",
                RejectReason::Overloaded {
                    retry_after_secs: 5,
                },
            ),
            ("timeout", RejectReason::TimedOut),
        ]
    }

    #[test]
    fn rejection_responses_are_complete_http() {
        for (label, reason) in all_reasons() {
            assert_eq!(reason.metric_label(), label);
            let r = rejection(reason.clone());
            assert_eq!(r.status, reason.status());
            let text = String::from_utf8(r.response.clone()).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with(&format!("HTTP/1.1 {} ", r.status)));
            assert!(head.contains("\r\nContent-Type: text/plain; charset=utf-8"));
            assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
            assert!(head.contains("\r\nConnection: close"));
            assert_eq!(body, format!("{reason}\n"));
            assert_eq!(body.lines().count(), 1);
            insta::assert_snapshot!(format!("reject_{label}"), visible(&r.response));
        }
    }
}
