//! The simulated browser's side of the upgrade, generic over the stream so
//! the very same code runs over turmoil and, for calibration, over real
//! loopback sockets.
//!
//! Every client sends a fixed `Sec-WebSocket-Key` derived from its index:
//! tungstenite would otherwise draw one from OS randomness and the bytes on
//! the simulated wire (and so the trace) would differ from run to run.

use std::fmt;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Why a client did not end up with an open WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    /// No SYN was answered before the client's deadline (the accept queue
    /// kept dropping them).
    ConnectTimeout,
    /// Connected, but no answer to the upgrade request before the deadline
    /// (waiting in the accept queue, half-open, or a slow upgrade path).
    HandshakeTimeout,
    /// A fast 503 with `Retry-After`: the gateway was full and said so.
    Overloaded,
    /// Any other HTTP answer than 101 or 503.
    HttpError,
    /// Connection refused: nothing listening.
    Refused,
    /// The connection closed or reset before an answer.
    Reset,
    /// The answer was not a valid upgrade.
    Protocol,
}

impl FailureKind {
    pub const ALL: [FailureKind; 7] = [
        FailureKind::ConnectTimeout,
        FailureKind::HandshakeTimeout,
        FailureKind::Overloaded,
        FailureKind::HttpError,
        FailureKind::Refused,
        FailureKind::Reset,
        FailureKind::Protocol,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FailureKind::ConnectTimeout => "connect_timeout",
            FailureKind::HandshakeTimeout => "handshake_timeout",
            FailureKind::Overloaded => "rejected_503",
            FailureKind::HttpError => "http_error",
            FailureKind::Refused => "refused",
            FailureKind::Reset => "reset",
            FailureKind::Protocol => "protocol",
        }
    }

    /// A timeout, as opposed to an answer the client can act on.
    pub fn is_timeout(self) -> bool {
        matches!(
            self,
            FailureKind::ConnectTimeout | FailureKind::HandshakeTimeout
        )
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// An upgrade that did not give a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeFailure {
    pub kind: FailureKind,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// `Retry-After` in seconds, when the answer carried one.
    pub retry_after: Option<u32>,
}

impl UpgradeFailure {
    /// A failure without an HTTP answer.
    pub fn of(kind: FailureKind) -> Self {
        UpgradeFailure {
            kind,
            status: None,
            retry_after: None,
        }
    }
}

/// The client's `Sec-WebSocket-Key`: 16 bytes derived from its index.
pub fn client_key(index: u64) -> String {
    let a = splitmix64(index.wrapping_mul(2).wrapping_add(1));
    let b = splitmix64(a);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A 64-bit mixing function (SplitMix64's finaliser): turns consecutive
/// integers into well-spread ones, for keys and per-client seeds.
/// The reconnect delay of the simulated clients, and of surge's browser
/// client (clients/js/src/backoff.ts): capped exponential backoff with full
/// jitter, `random(0, min(cap, base x 2^min(attempt, 16)))`, `unit` being
/// the random draw in [0, 1). Full jitter spreads a crowd of reconnects
/// over the whole window instead of bunching them at its upper half.
pub fn reconnect_delay(
    base: std::time::Duration,
    cap: std::time::Duration,
    attempt: u32,
    unit: f64,
) -> std::time::Duration {
    base.saturating_mul(1u32 << attempt.min(16))
        .min(cap)
        .mul_f64(unit.clamp(0.0, 1.0))
}

pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The upgrade request a browser would send, with a fixed key.
pub fn upgrade_request(authority: &str, path: &str, key: &str) -> Request {
    let mut request = Request::new(());
    *request.uri_mut() = format!("ws://{authority}{path}")
        .parse()
        .unwrap_or_else(|_| "ws://gateway/ws".parse().unwrap_or_default());
    let headers = request.headers_mut();
    for (name, value) in [
        ("Host", authority),
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", key),
    ] {
        if let Ok(value) = value.parse() {
            headers.insert(name, value);
        }
    }
    request
}

/// Client buffers: small, as a browser's are, so ten thousand simulated
/// clients fit in memory (tungstenite's default read buffer is 128 KiB).
pub fn client_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Performs the upgrade on an open stream.
pub async fn upgrade<S>(
    stream: S,
    index: u64,
    authority: &str,
) -> Result<WebSocketStream<S>, UpgradeFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = upgrade_request(authority, "/ws", &client_key(index));
    match tokio_tungstenite::client_async_with_config(request, stream, Some(client_ws_config()))
        .await
    {
        Ok((ws, _response)) => Ok(ws),
        Err(e) => Err(classify(e)),
    }
}

fn classify(e: WsError) -> UpgradeFailure {
    match e {
        WsError::Http(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("Retry-After")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            UpgradeFailure {
                kind: if status == 503 {
                    FailureKind::Overloaded
                } else {
                    FailureKind::HttpError
                },
                status: Some(status),
                retry_after,
            }
        }
        WsError::Io(_) | WsError::ConnectionClosed | WsError::AlreadyClosed => UpgradeFailure {
            kind: FailureKind::Reset,
            status: None,
            retry_after: None,
        },
        _ => UpgradeFailure {
            kind: FailureKind::Protocol,
            status: None,
            retry_after: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_per_index_and_distinct() {
        assert_eq!(client_key(7), client_key(7));
        assert_ne!(client_key(7), client_key(8));
        // 16 bytes in base64, as RFC 6455 requires.
        assert_eq!(client_key(0).len(), 24);
    }

    #[test]
    fn request_carries_the_fixed_key() {
        let r = upgrade_request("gw:8080", "/ws", "abc");
        assert_eq!(r.headers()["Sec-WebSocket-Key"], "abc");
        assert_eq!(r.uri().path(), "/ws");
    }
}
