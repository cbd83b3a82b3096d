//! What the gateway's integration tests share: a gateway over loopback,
//! WebSocket clients of it, raw HTTP exchanges and its metrics' values.

// Each test file uses its own part of these.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use surge_core::protocol::Priority;
use surge_core::subjects::Subject;
use surge_runtime::embedded::{EmbeddedBroker, Retention, fresh_epoch};
use surge_runtime::tcp::{SocketTuning, TcpTransport};
use surge_runtime::{Broker, Clock, Gateway, GatewayConfig, Hub, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const WAIT: Duration = Duration::from_secs(5);

/// Real TCP with the default socket tuning and a 5 s `Retry-After`.
pub fn tcp() -> TcpTransport {
    TcpTransport::new(SocketTuning::preset(Default::default()), 5)
}

/// An embedded broker with a fresh epoch that retains 1,000 messages.
pub fn embedded(hub: Hub, clock: Clock) -> Arc<dyn Broker> {
    let retention = Retention {
        max_age: Duration::from_secs(30),
        max_messages: 1000,
        max_bytes: 1 << 20,
    };
    Arc::new(EmbeddedBroker::new(hub, retention, clock, fresh_epoch()))
}

/// A gateway on a free loopback port with the embedded broker.
pub async fn start(configure: impl FnOnce(&mut GatewayConfig)) -> Gateway {
    start_with(&tcp(), configure, embedded).await
}

/// A gateway on a free loopback port over `transport`, with the broker
/// `make_broker` builds.
pub async fn start_with<T: Transport>(
    transport: &T,
    configure: impl FnOnce(&mut GatewayConfig),
    make_broker: impl FnOnce(Hub, Clock) -> Arc<dyn Broker>,
) -> Gateway {
    let mut config = GatewayConfig::for_tests("127.0.0.1:0".parse().expect("addr"), 100, 2);
    configure(&mut config);
    Gateway::start(transport, config, make_broker)
        .await
        .expect("gateway starts")
}

pub async fn connect(addr: SocketAddr) -> Client {
    let (ws, response) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("upgrade");
    assert_eq!(response.status(), 101);
    ws
}

/// Connects and reads the welcome frame.
pub async fn client(addr: SocketAddr) -> Client {
    let mut ws = connect(addr).await;
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    ws
}

pub async fn next_json(ws: &mut Client) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame within the deadline")
            .expect("stream open")
            .expect("frame ok");
        match frame {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

pub async fn send(ws: &mut Client, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

pub async fn subscribe(ws: &mut Client, channels: &[&str]) {
    send(ws, json!({"type":"subscribe","channels":channels})).await;
    let reply = next_json(ws).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
}

/// Publishes as a program honouring `503 ingest_full` would: a full
/// ingest queue refuses at once, and the publish is retried shortly.
pub async fn publish(gw: &Gateway, subject: &str, data: Value) -> u64 {
    publish_with(gw, subject, data, Priority::Medium).await
}

/// [`publish`] at `priority`.
pub async fn publish_with(gw: &Gateway, subject: &str, data: Value, priority: Priority) -> u64 {
    loop {
        match gw
            .broker()
            .publish(
                Subject::parse(subject).expect("subject"),
                Bytes::from(data.to_string()),
                priority,
            )
            .await
        {
            Ok(sseq) => return sseq,
            Err(surge_runtime::BrokerError::Full(_)) => {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            Err(e) => panic!("publish: {e}"),
        }
    }
}

/// The value of the metric line that starts with `name` (labels included
/// in `name` when the metric has them).
pub fn metric(gw: &Gateway, name: &str) -> f64 {
    gw.metrics_text()
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Sends raw bytes and returns what the server wrote up to the end of its
/// response head (a 101 leaves the connection open) or its close.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    response_head(&mut s).await
}

/// What the server writes on `s` up to the end of its response head or its
/// close, whichever comes first (at most [`WAIT`]).
pub async fn response_head(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read_head = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if out.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(WAIT, read_head).await;
    String::from_utf8_lossy(&out).into_owned()
}

pub fn upgrade(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
    .into_bytes()
}
