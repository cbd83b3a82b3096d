//! One WebSocket connection attempt, and the classification of its failure.
//!
//! The seed team could not tell a full accept queue from a slow server from
//! a client timeout. Here an attempt runs TCP connect + upgrade under one
//! handshake timeout and maps whatever went wrong to a [`FailKind`]: a
//! rejected upgrade becomes `http_<status>` (with `Retry-After` noted), a
//! RST on connect `refused`, a RST later `reset`, a silent peer `timeout`,
//! and the loadgen's own limits (EMFILE, no source port) get kinds of their
//! own so they are never blamed on the server.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::dial::dial;
use crate::record::FailKind;
use crate::target::Target;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Read buffer per client connection. tungstenite ≥ 0.25 allocates 128 KiB
/// up front by default, which would make 10,000 idle clients cost 1.3 GB
/// of loadgen memory; 4 KiB holds any control frame and a typical message.
pub const READ_BUFFER: usize = 4 * 1024;

/// How long a clean close may take before the socket is just dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The WebSocket settings every client connection uses.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Clients write rarely (subscribe, close): send at once.
        .write_buffer_size(0)
        .max_message_size(Some(16 << 20))
}

/// A failed attempt: its kind, whether a rejection carried `Retry-After`,
/// and the error text (kept for `other` examples).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailKind,
    pub retry_after: bool,
    pub detail: String,
}

impl Failure {
    fn new(kind: FailKind, detail: impl Into<String>) -> Failure {
        Failure {
            kind,
            retry_after: false,
            detail: detail.into(),
        }
    }
}

/// Maps an I/O error of connect or handshake to a failure kind.
pub fn classify_io(e: &io::Error) -> FailKind {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => return FailKind::LocalFdLimit,
        Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => return FailKind::LocalNoPort,
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => FailKind::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => FailKind::Reset,
        io::ErrorKind::TimedOut => FailKind::Timeout,
        io::ErrorKind::UnexpectedEof => FailKind::Closed,
        _ => FailKind::Other,
    }
}

/// Maps a tungstenite handshake error to a failure.
pub fn classify_ws(e: &WsError) -> Failure {
    match e {
        WsError::Http(resp) => Failure {
            kind: FailKind::Http(resp.status().as_u16()),
            retry_after: resp.headers().contains_key("retry-after"),
            detail: format!("HTTP {}", resp.status()),
        },
        WsError::Io(io) => Failure::new(classify_io(io), io.to_string()),
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(ProtocolError::HandshakeIncomplete) => {
            Failure::new(FailKind::Closed, e.to_string())
        }
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Failure::new(FailKind::Reset, e.to_string())
        }
        other => Failure::new(FailKind::Other, other.to_string()),
    }
}

/// The offer Chromium sends.
const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// An upgraded connection.
pub struct Opened {
    pub ws: Ws,
    /// From TCP connect start to the 101.
    pub latency: Duration,
    /// The 101 accepted the permessage-deflate offer.
    pub deflate: bool,
}

/// Opens one connection from `source`: TCP connect and upgrade within
/// `timeout`.
pub async fn open(target: &Target, source: Ipv4Addr, timeout: Duration) -> Result<Opened, Failure> {
    let started = Instant::now();
    let addr: SocketAddrV4 = target.addr;
    let mut request = target
        .ws_url()
        .into_client_request()
        .map_err(|e| Failure::new(FailKind::Other, e.to_string()))?;
    if target.deflate {
        request.headers_mut().insert(
            "sec-websocket-extensions",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static(DEFLATE_OFFER),
        );
    }
    let work = async {
        let stream = dial(source, addr)
            .await
            .map_err(|e| Failure::new(classify_io(&e), e.to_string()))?;
        let (ws, response) = match (target.tls, crate::tls::client()) {
            (false, _) => {
                tokio_tungstenite::client_async_with_config(
                    request,
                    MaybeTlsStream::Plain(stream),
                    Some(ws_config()),
                )
                .await
            }
            (true, Some(tls)) => {
                tokio_tungstenite::client_async_tls_with_config(
                    request,
                    stream,
                    Some(ws_config()),
                    Some(Connector::Rustls(tls)),
                )
                .await
            }
            (true, None) => {
                return Err(Failure::new(
                    FailKind::Other,
                    "a wss:// URL needs --ca FILE or --insecure".to_owned(),
                ));
            }
        }
        .map_err(|e| classify_ws(&e))?;
        let deflate = response
            .headers()
            .get_all("sec-websocket-extensions")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.trim_start().starts_with("permessage-deflate"));
        Ok::<_, Failure>((ws, deflate))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok((ws, deflate))) => Ok(Opened {
            ws,
            latency: started.elapsed(),
            deflate,
        }),
        Ok(Err(f)) => Err(f),
        Err(_) => Err(Failure::new(
            FailKind::Timeout,
            format!("no 101 within {timeout:?}"),
        )),
    }
}

/// Waits for the first text frame (the `welcome`).
pub async fn await_welcome(ws: &mut Ws, timeout: Duration) -> Result<(), Failure> {
    let wait = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(_))) => return Ok(()),
                Some(Ok(Message::Close(_))) | None => {
                    return Err(Failure::new(FailKind::Closed, "closed before welcome"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(classify_ws(&e)),
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or_else(|_| Err(Failure::new(FailKind::NoWelcome, "no welcome frame")))
}

/// After `welcome`, subscribes to `channels` and waits for `subscribed`.
/// Frames other than the answer (messages already flowing) are skipped.
pub async fn subscribe(ws: &mut Ws, channels: &[String], timeout: Duration) -> Result<(), Failure> {
    let work = async {
        await_welcome(ws, timeout).await?;
        let request = serde_json::json!({"type": "subscribe", "channels": channels});
        ws.send(Message::text(request.to_string()))
            .await
            .map_err(|e| classify_ws(&e))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let v: serde_json::Value = serde_json::from_str(text.as_str())
                        .map_err(|e| Failure::new(FailKind::Other, e.to_string()))?;
                    match v.get("type").and_then(|t| t.as_str()) {
                        Some("subscribed") => return Ok(()),
                        Some("error") => {
                            return Err(Failure::new(FailKind::SubscribeRejected, text.as_str()));
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    return Err(Failure::new(
                        FailKind::SubscribeRejected,
                        "closed after subscribe",
                    ));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(classify_ws(&e)),
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(Failure::new(FailKind::Timeout, "no `subscribed` in time")))
}

/// Closes with 1000 and waits (bounded) for the server's close answer.
pub async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if ws.close(None).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_kinds() {
        let e = |k| io::Error::new(k, "x");
        assert_eq!(
            classify_io(&e(io::ErrorKind::ConnectionRefused)),
            FailKind::Refused
        );
        assert_eq!(
            classify_io(&e(io::ErrorKind::ConnectionReset)),
            FailKind::Reset
        );
        assert_eq!(
            classify_io(&e(io::ErrorKind::UnexpectedEof)),
            FailKind::Closed
        );
        assert_eq!(
            classify_io(&io::Error::from_raw_os_error(libc::EMFILE)),
            FailKind::LocalFdLimit
        );
        assert_eq!(
            classify_io(&io::Error::from_raw_os_error(libc::EADDRNOTAVAIL)),
            FailKind::LocalNoPort
        );
        assert_eq!(classify_io(&e(io::ErrorKind::Other)), FailKind::Other);
    }

    #[test]
    fn incomplete_handshake_is_closed() {
        let f = classify_ws(&WsError::Protocol(ProtocolError::HandshakeIncomplete));
        assert_eq!(f.kind, FailKind::Closed);
    }
}
