//! JWT through the gateway with real WebSocket clients: 401 at the
//! upgrade, forbidden channels, refresh that narrows, and the 4001 close
//! when a token expires unrefreshed.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::StreamExt;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;
use surge_core::auth::{JwtAuth, JwtSettings, VerificationKeys};
use surge_core::subjects::Pattern;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn token(sub: &str, ttl_secs: u64, channels: &[&str]) -> String {
    let claims = json!({"sub": sub, "exp": unix_secs() + ttl_secs, "channels": channels});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET).expect("key"),
    )
    .expect("signs")
}

async fn jwt_gateway(refresh_notice: Duration) -> surge_runtime::Gateway {
    let auth = JwtAuth::new(
        VerificationKeys::secret(SECRET).expect("secret"),
        JwtSettings {
            anonymous_channels: vec![Pattern::parse("odin.global.>").expect("pattern")],
            refresh_notice,
            ..JwtSettings::default()
        },
    );
    start(|c| c.set_jwt(Arc::new(auth))).await
}

async fn connect_with(addr: std::net::SocketAddr, token: &str) -> Client {
    let (mut ws, response) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}"))
            .await
            .expect("upgrade");
    assert_eq!(response.status(), 101);
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    ws
}

#[tokio::test]
async fn a_bad_token_is_refused_before_the_upgrade() {
    let gw = jwt_gateway(Duration::from_secs(30)).await;
    let expired = {
        let claims = json!({"sub": "alice", "exp": unix_secs() - 60});
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET).expect("key"),
        )
        .expect("signs")
    };
    let head = raw(
        gw.local_addr(),
        &upgrade(
            &format!("/ws?token={expired}"),
            "Sec-WebSocket-Version: 13\r\n",
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    assert!(
        head.contains("WWW-Authenticate: Bearer error=\"invalid_token\""),
        "{head}"
    );
    // No token at all: anonymous (the gateway has anonymous channels).
    let mut anonymous = client(gw.local_addr()).await;
    send(
        &mut anonymous,
        json!({"type":"subscribe","channels":["odin.token.BTC.trade"]}),
    )
    .await;
    assert_eq!(next_json(&mut anonymous).await["code"], "forbidden");
    subscribe(&mut anonymous, &["odin.global.news"]).await;
}

#[tokio::test]
async fn channels_outside_the_token_are_forbidden_and_never_delivered() {
    let gw = jwt_gateway(Duration::from_secs(30)).await;
    let mut ws = connect_with(gw.local_addr(), &token("alice", 600, &["odin.token.BTC.*"])).await;
    send(
        &mut ws,
        json!({"type":"subscribe","id":1,"channels":["odin.token.>"]}),
    )
    .await;
    let refused = next_json(&mut ws).await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert_eq!(refused["id"], 1);
    subscribe(&mut ws, &["odin.token.BTC.trade"]).await;
    publish(&gw, "odin.token.ETH.trade", json!({"n": 1})).await;
    publish(&gw, "odin.token.BTC.trade", json!({"n": 2})).await;
    let message = next_json(&mut ws).await;
    assert_eq!(message["subject"], "odin.token.BTC.trade", "{message}");
}

#[tokio::test]
async fn a_refresh_narrows_the_subscriptions_without_reconnecting() {
    let gw = jwt_gateway(Duration::from_secs(30)).await;
    // Less than the notice left: token_expiring right after the welcome.
    let mut ws = connect_with(gw.local_addr(), &token("alice", 20, &["odin.token.>"])).await;
    let notice = next_json(&mut ws).await;
    assert_eq!(notice["type"], "token_expiring", "{notice}");
    assert!(
        notice["expires_in_ms"]
            .as_u64()
            .is_some_and(|ms| ms <= 20_000)
    );
    subscribe(&mut ws, &["odin.token.BTC.trade", "odin.token.ETH.trade"]).await;

    let narrower = token("alice", 3_600, &["odin.token.BTC.*"]);
    send(
        &mut ws,
        json!({"type":"refresh","id":"r1","token":narrower}),
    )
    .await;
    let mut answers = vec![next_json(&mut ws).await, next_json(&mut ws).await];
    answers.sort_by_key(|a| a["type"].as_str().map(str::to_owned));
    assert_eq!(answers[0]["type"], "refreshed", "{answers:?}");
    assert_eq!(answers[0]["id"], "r1");
    assert!(answers[0]["expires_at"].as_u64() > Some(unix_secs() * 1000));
    assert_eq!(
        answers[1],
        json!({"type":"unsubscribed","channels":["odin.token.ETH.trade"],"reason":"forbidden"})
    );
    publish(&gw, "odin.token.ETH.trade", json!({"n": 1})).await;
    publish(&gw, "odin.token.BTC.trade", json!({"n": 2})).await;
    assert_eq!(next_json(&mut ws).await["subject"], "odin.token.BTC.trade");

    // Another user's token is refused and changes nothing.
    send(
        &mut ws,
        json!({"type":"refresh","token":token("bob", 3_600, &[">"])}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["code"], "invalid_token");
}

#[tokio::test]
async fn a_token_that_expires_unrefreshed_closes_the_connection_with_4001() {
    let gw = jwt_gateway(Duration::from_secs(30)).await;
    let mut ws = connect_with(gw.local_addr(), &token("alice", 2, &["odin.token.>"])).await;
    assert_eq!(next_json(&mut ws).await["type"], "token_expiring");
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("closed within 5 s")
    .expect("with a code");
    assert_eq!(close.code, CloseCode::from(4001));
    assert_eq!(close.reason.as_str(), "token expired");
}
