//! Per-client limits with real clients from distinct loopback addresses
//! (127.0.0.1 and 127.0.0.2): connections per address and per user,
//! handshakes in progress per address, new connections per second per
//! address. Each refusal is a 429 with `Retry-After`, counted by reason,
//! and leaves other clients unaffected.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;
use surge_core::auth::{JwtAuth, JwtSettings, VerificationKeys};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Error;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection to `addr` from the loopback address `from`.
async fn tcp_from(from: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind source");
    socket.connect(addr).await.expect("connect")
}

/// Upgrades from `from`; `Ok` with the welcomed client, or `Err` with the
/// refusal as text: status line, headers and body.
async fn ws_from(from: IpAddr, addr: SocketAddr, query: &str) -> Result<Client, String> {
    let stream = tcp_from(from, addr).await;
    let url = format!("ws://{addr}/ws{query}");
    match tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await {
        Ok((mut ws, _)) => {
            assert_eq!(next_json(&mut ws).await["type"], "welcome");
            Ok(ws)
        }
        Err(Error::Http(response)) => {
            let mut text = format!(
                "HTTP/1.1 {} {}\r\n",
                response.status().as_u16(),
                response.status().canonical_reason().unwrap_or("")
            );
            for (name, value) in response.headers() {
                let name = http_case(name.as_str());
                text.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or("")));
            }
            text.push_str("\r\n");
            text.push_str(&String::from_utf8_lossy(
                response.body().as_deref().unwrap_or_default(),
            ));
            Err(text)
        }
        Err(e) => panic!("neither an upgrade nor an HTTP refusal: {e}"),
    }
}

/// `retry-after` as the server wrote it, `Retry-After`.
fn http_case(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |c| {
                c.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn assert_429(head: &str, retry_after: u32) {
    assert!(
        head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nRetry-After: {retry_after}\r\n")),
        "{head}"
    );
}

fn rejections(gw: &surge_runtime::Gateway, reason: &str) -> f64 {
    metric(
        gw,
        &format!("surge_admission_rejections_total{{reason=\"{reason}\"}}"),
    )
}

#[tokio::test]
async fn connections_per_address_are_capped_with_429() {
    let gw = start(|c| c.client_limits.connections_per_ip = 2).await;
    let addr = gw.local_addr();
    let first = ws_from(loopback(1), addr, "").await.expect("first");
    let _second = ws_from(loopback(1), addr, "").await.expect("second");
    let head = ws_from(loopback(1), addr, "").await.expect_err("third");
    assert_429(&head, 5);
    assert_eq!(rejections(&gw, "per_ip"), 1.0);
    // Another address has its own count.
    let _other = ws_from(loopback(2), addr, "").await.expect("other address");
    // A closed connection frees its place (once the shard has seen the close).
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match ws_from(loopback(1), addr, "").await {
            Ok(_) => break,
            Err(head) if tokio::time::Instant::now() < deadline => {
                assert!(head.starts_with("HTTP/1.1 429 "), "{head}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(head) => panic!("the place never came free: {head}"),
        }
    }
    assert_eq!(gw.health().connections.current, 3);
}

#[tokio::test]
async fn half_sent_requests_cannot_hold_more_than_their_share() {
    let gw = start(|c| {
        c.client_limits.handshakes_per_ip = 3;
        c.handshake.timeout = Duration::from_secs(30);
    })
    .await;
    let addr = gw.local_addr();
    // Three sockets that send half a request head and stop.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut s = tcp_from(loopback(1), addr).await;
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        stalled.push(s);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.health().connections.handshaking < 3 {
        assert!(tokio::time::Instant::now() < deadline, "never counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let head = ws_from(loopback(1), addr, "").await.expect_err("fourth");
    assert_429(&head, 5);
    assert_eq!(rejections(&gw, "handshakes_per_ip"), 1.0);
    // An honest client elsewhere is not held up by them.
    let _honest = ws_from(loopback(2), addr, "").await.expect("other address");
    assert_eq!(gw.health().connections.handshaking, 3);
    // Once one of them gives up, its address may start another.
    drop(stalled.pop());
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.health().connections.handshaking > 2 {
        assert!(tokio::time::Instant::now() < deadline, "never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ws_from(loopback(1), addr, "")
        .await
        .expect("a place came free");
}

#[tokio::test]
async fn new_connections_per_second_per_address_are_rate_limited() {
    let gw = start(|c| c.client_limits.handshake_rate_per_ip = 4).await;
    let addr = gw.local_addr();
    for i in 0..4 {
        ws_from(loopback(1), addr, "")
            .await
            .unwrap_or_else(|head| panic!("connection {i} within the burst: {head}"));
    }
    let head = ws_from(loopback(1), addr, "")
        .await
        .expect_err("over the rate");
    // 4 per second: the next token is at most a quarter second away, sent
    // as the whole second it rounds up to.
    assert_429(&head, 1);
    assert_eq!(rejections(&gw, "handshake_rate_per_ip"), 1.0);
    ws_from(loopback(2), addr, "")
        .await
        .expect("another address has its own rate");
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws_from(loopback(1), addr, "")
        .await
        .expect("a token came back");
}

fn token(sub: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 3600;
    encode(
        &Header::default(),
        &json!({"sub": sub, "exp": exp, "channels": ["odin.>"]}),
        &EncodingKey::from_secret(SECRET).expect("key"),
    )
    .expect("signs")
}

#[tokio::test]
async fn connections_per_user_are_capped_after_the_token_is_verified() {
    let auth = JwtAuth::new(
        VerificationKeys::secret(SECRET).expect("secret"),
        JwtSettings::default(),
    );
    let gw = start(|c| {
        c.set_jwt(Arc::new(auth));
        c.client_limits.connections_per_user = 1;
    })
    .await;
    let addr = gw.local_addr();
    let alice = format!("?token={}", token("alice"));
    let first = ws_from(loopback(1), addr, &alice).await.expect("alice");
    // From another address too: the limit is the user's.
    let head = ws_from(loopback(2), addr, &alice)
        .await
        .expect_err("alice twice");
    assert_429(&head, 5);
    assert!(
        head.contains("too many connections for this user (limit 1)"),
        "{head}"
    );
    assert_eq!(rejections(&gw, "per_user"), 1.0);
    assert_eq!(
        gw.health().connections.handshaking,
        0,
        "the refused handshake's slot is free"
    );
    let _bob = ws_from(loopback(1), addr, &format!("?token={}", token("bob")))
        .await
        .expect("bob");
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    while ws_from(loopback(2), addr, &alice).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice's place never came free"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
