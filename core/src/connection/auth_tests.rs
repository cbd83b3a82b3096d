//! Tokens on an open connection: forbidden `subscribe` and `resume`,
//! `token_expiring` before `exp`, the 4001 close at `exp` (plus leeway),
//! and `refresh` (accepted, narrowing, refused).

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

use super::*;
use crate::UnixTime;
use crate::admission::ShardId;
use crate::auth::{Grant, JwtAuth, JwtSettings, VerificationKeys};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
/// The wall clock at the connection's `ms(0)`.
const UNIX0: u64 = 1_800_000_000;

fn ms(v: u64) -> Instant {
    Instant::from_millis(v)
}

fn unix_at(v: u64) -> UnixTime {
    UnixTime::from_millis(UNIX0 * 1000 + v)
}

fn pattern(s: &str) -> Pattern {
    Pattern::parse(s).expect("pattern")
}

fn token(sub: &str, exp_in_secs: u64, channels: &[&str]) -> String {
    let claims = json!({"sub": sub, "exp": UNIX0 + exp_in_secs, "channels": channels});
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET).expect("key"),
    )
    .expect("signs")
}

fn auth(f: impl FnOnce(&mut JwtSettings)) -> Arc<JwtAuth> {
    let mut settings = JwtSettings {
        anonymous_channels: vec![pattern("odin.global.>")],
        ..JwtSettings::default()
    };
    f(&mut settings);
    Arc::new(JwtAuth::new(
        VerificationKeys::secret(SECRET).expect("secret"),
        settings,
    ))
}

fn config(auth: &Arc<JwtAuth>) -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        auth: Some(Arc::clone(auth)),
        // Requests in these tests are not rate limited, and heartbeats
        // stay out of the way of the token's deadlines.
        client_rate_per_sec: 0,
        ping_interval: Duration::from_secs(3_600),
        idle_timeout: Duration::from_secs(7_200),
        ..SessionConfig::default()
    })
}

fn conn(config: Arc<SessionConfig>) -> Connection {
    let id = ConnId {
        shard: ShardId(0),
        serial: 1,
    };
    Connection::new(id, config, ms(0), Some("e1"), Vec::new())
}

/// A connection authorised at `ms(0)` with `token` (as the handshake would).
fn authorised(auth: &Arc<JwtAuth>, token: &str) -> Connection {
    let grant = auth.verify(token, unix_at(0)).expect("valid token");
    let mut c = conn(config(auth));
    c.authorize(grant, ms(0), unix_at(0));
    c
}

fn send(c: &mut Connection, text: &str, now: Instant) {
    c.handle_bytes(
        &crate::frame::masked_frame(0x81, text.as_bytes(), [9, 8, 7, 6]),
        now,
    );
}

/// Index changes the connection asks for, and whether it ended.
fn events(c: &mut Connection, now: Instant) -> Vec<ConnEvent> {
    std::iter::from_fn(|| c.poll_event(now)).collect()
}

/// What went out: JSON messages, and a Close as `{"close": code, "reason": …}`.
fn drain(c: &mut Connection, now: Instant) -> Vec<Value> {
    super::tests::drain(c, now)
        .into_iter()
        .filter_map(|(opcode, payload)| match opcode {
            1 => Some(serde_json::from_slice(&payload).expect("JSON")),
            8 => Some(json!({
                "close": u16::from_be_bytes([payload[0], payload[1]]),
                "reason": String::from_utf8_lossy(&payload[2..]),
            })),
            _ => None,
        })
        .collect()
}

fn types(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| {
            f["type"]
                .as_str()
                .map_or_else(|| format!("close {}", f["close"]), str::to_owned)
        })
        .collect()
}

/// Sends `subscribe` for `channels` and applies the index changes.
fn subscribe(c: &mut Connection, channels: &[&str], now: Instant) -> Vec<Value> {
    send(
        c,
        &json!({"type": "subscribe", "channels": channels}).to_string(),
        now,
    );
    events(c, now);
    drain(c, now)
}

#[test]
fn a_subscribe_no_single_claim_pattern_covers_is_forbidden_and_subscribes_nothing() {
    let auth = auth(|_| {});
    let mut c = authorised(&auth, &token("alice", 600, &["odin.token.BTC.*"]));
    assert_eq!(types(&drain(&mut c, ms(1))), ["welcome"]);

    send(
        &mut c,
        r#"{"type":"subscribe","id":7,"channels":["odin.token.BTC.trade","odin.token.ETH.trade"]}"#,
        ms(1),
    );
    assert_eq!(events(&mut c, ms(1)), []);
    let frames = drain(&mut c, ms(1));
    assert_eq!(types(&frames), ["error"]);
    assert_eq!(frames[0]["code"], "forbidden");
    assert_eq!(frames[0]["id"], 7);
    let message = frames[0]["message"].as_str().expect("text");
    assert!(message.contains("odin.token.ETH.trade"), "{message}");
    assert!(!message.contains("odin.token.BTC.trade"), "{message}");
    assert_eq!(c.session().subscriptions().count(), 0);

    // Covered by the token, or anonymous: subscribed.
    send(
        &mut c,
        r#"{"type":"subscribe","channels":["odin.token.BTC.trade","odin.global.news"]}"#,
        ms(2),
    );
    assert_eq!(
        events(&mut c, ms(2)),
        [ConnEvent::Subscribe(vec![
            pattern("odin.token.BTC.trade"),
            pattern("odin.global.news")
        ])]
    );
    assert_eq!(types(&drain(&mut c, ms(2))), ["subscribed"]);
    // A wider pattern than the claim is forbidden, even a wildcard over it.
    let frames = subscribe(&mut c, &["odin.token.*.trade"], ms(3));
    assert_eq!(frames[0]["code"], "forbidden");
}

#[test]
fn a_forbidden_resume_fetches_nothing() {
    let auth = auth(|_| {});
    let mut c = authorised(&auth, &token("alice", 600, &["odin.token.BTC.*"]));
    drain(&mut c, ms(1));
    send(
        &mut c,
        r#"{"type":"resume","id":"r","channels":["odin.token.>"],"since_sseq":5}"#,
        ms(1),
    );
    assert_eq!(events(&mut c, ms(1)), []);
    let frames = drain(&mut c, ms(1));
    assert_eq!(types(&frames), ["error"]);
    assert_eq!(frames[0]["code"], "forbidden");
    assert_eq!(frames[0]["id"], "r");
    assert_eq!(c.session().subscriptions().count(), 0);

    send(
        &mut c,
        r#"{"type":"resume","channels":["odin.token.BTC.trade"],"since_sseq":5}"#,
        ms(2),
    );
    assert!(matches!(
        events(&mut c, ms(2)).as_slice(),
        [ConnEvent::Fetch { since_sseq: 5, .. }]
    ));
}

#[test]
fn an_anonymous_connection_reads_only_the_anonymous_channels() {
    let auth = auth(|_| {});
    let mut c = conn(config(&auth));
    c.authorize(Grant::anonymous(), ms(0), unix_at(0));
    drain(&mut c, ms(1));
    assert_eq!(
        subscribe(&mut c, &["odin.token.BTC.trade"], ms(1))[0]["code"],
        "forbidden"
    );
    assert_eq!(
        types(&subscribe(&mut c, &["odin.global.>"], ms(2))),
        ["subscribed"]
    );
    // No token, no expiry.
    assert_eq!(c.poll_timeout(), c.session().poll_timeout());
    // One that was never authorised while tokens are on is no better off.
    let mut never = conn(config(&auth));
    drain(&mut never, ms(1));
    assert_eq!(
        subscribe(&mut never, &["odin.token.BTC.trade"], ms(1))[0]["code"],
        "forbidden"
    );
    // Without tokens configured, everything is readable.
    let mut open = conn(Arc::new(SessionConfig::default()));
    drain(&mut open, ms(1));
    assert_eq!(types(&subscribe(&mut open, &[">"], ms(1))), ["subscribed"]);
}

#[test]
fn token_expiring_comes_the_notice_before_exp_then_4001_at_exp() {
    let auth = auth(|s| s.refresh_notice = Duration::from_secs(30));
    let mut c = authorised(&auth, &token("alice", 60, &["odin.token.>"]));
    assert_eq!(types(&drain(&mut c, ms(1))), ["welcome"]);
    assert_eq!(c.poll_timeout(), Some(ms(30_000)));
    c.handle_timeout(ms(29_999));
    assert_eq!(drain(&mut c, ms(29_999)), Vec::<Value>::new());
    c.handle_timeout(ms(30_000));
    let frames = drain(&mut c, ms(30_000));
    assert_eq!(
        frames,
        [json!({"type": "token_expiring", "expires_in_ms": 30_000})]
    );
    // Sent once; the next deadline is the expiry.
    assert_eq!(c.poll_timeout(), Some(ms(60_000)));
    c.handle_timeout(ms(59_999));
    assert!(!types(&drain(&mut c, ms(59_999))).contains(&"close 4001".to_owned()));
    c.handle_timeout(ms(60_000));
    let frames = drain(&mut c, ms(60_000));
    assert_eq!(frames, [json!({"close": 4001, "reason": "token expired"})]);
}

#[test]
fn less_than_the_notice_left_sends_token_expiring_at_once() {
    let auth = auth(|_| {});
    let mut c = authorised(&auth, &token("alice", 10, &["odin.token.>"]));
    let frames = drain(&mut c, ms(0));
    assert_eq!(types(&frames), ["welcome", "token_expiring"]);
    assert_eq!(frames[1]["expires_in_ms"], 10_000);
}

#[test]
fn the_leeway_delays_the_close() {
    let auth = auth(|s| s.leeway = Duration::from_secs(5));
    let mut c = authorised(&auth, &token("alice", 60, &["odin.token.>"]));
    drain(&mut c, ms(0));
    c.handle_timeout(ms(60_000));
    assert!(
        !types(&drain(&mut c, ms(60_000))).contains(&"close 4001".to_owned()),
        "closed within the leeway"
    );
    c.handle_timeout(ms(65_000));
    let frames = drain(&mut c, ms(65_000));
    assert_eq!(
        frames.last(),
        Some(&json!({"close": 4001, "reason": "token expired"}))
    );
}

#[test]
fn a_refresh_with_the_same_sub_extends_the_connection() {
    let auth = auth(|_| {});
    let mut c = authorised(&auth, &token("alice", 60, &["odin.token.>"]));
    drain(&mut c, ms(0));
    c.handle_timeout(ms(30_000));
    assert_eq!(types(&drain(&mut c, ms(30_000))), ["token_expiring"]);

    let refresh =
        json!({"type": "refresh", "id": 3, "token": token("alice", 3_600, &["odin.token.>"])});
    send(&mut c, &refresh.to_string(), ms(31_000));
    assert_eq!(events(&mut c, ms(31_000)), []);
    let frames = drain(&mut c, ms(31_000));
    assert_eq!(
        frames,
        [json!({"type": "refreshed", "id": 3, "expires_at": (UNIX0 + 3_600) * 1000})]
    );
    // No close at the old exp; a new notice before the new one.
    assert_eq!(c.poll_timeout(), Some(ms(3_570_000)));
    c.handle_timeout(ms(60_000));
    assert!(
        !types(&drain(&mut c, ms(60_000)))
            .iter()
            .any(|t| t.starts_with("close"))
    );
    let notice_at = ms(3_570_000);
    assert_eq!(c.poll_timeout(), Some(notice_at));
    c.handle_timeout(notice_at);
    assert_eq!(types(&drain(&mut c, notice_at)), ["token_expiring"]);
}

#[test]
fn a_narrower_refresh_unsubscribes_what_it_no_longer_covers() {
    let auth = auth(|_| {});
    let mut c = authorised(&auth, &token("alice", 600, &["odin.token.>"]));
    drain(&mut c, ms(0));
    subscribe(
        &mut c,
        &[
            "odin.token.BTC.trade",
            "odin.token.ETH.trade",
            "odin.global.news",
        ],
        ms(1),
    );
    let refresh = json!({"type": "refresh", "token": token("alice", 900, &["odin.token.BTC.*"])});
    send(&mut c, &refresh.to_string(), ms(2));
    assert_eq!(
        events(&mut c, ms(2)),
        [ConnEvent::Unsubscribe(vec![pattern(
            "odin.token.ETH.trade"
        )])]
    );
    let mut frames = drain(&mut c, ms(2));
    frames.sort_by_key(|f| f["type"].as_str().map(str::to_owned));
    assert_eq!(
        frames,
        [
            json!({"type": "refreshed", "expires_at": (UNIX0 + 900) * 1000}),
            json!({"type": "unsubscribed", "channels": ["odin.token.ETH.trade"], "reason": "forbidden"}),
        ]
    );
    let left: Vec<&str> = c.session().subscriptions().map(Pattern::as_str).collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&"odin.token.BTC.trade") && left.contains(&"odin.global.news"));
    // The new grant decides later subscribes too.
    assert_eq!(
        subscribe(&mut c, &["odin.token.ETH.trade"], ms(3))[0]["code"],
        "forbidden"
    );
}

#[test]
fn a_replay_leaves_out_the_channels_a_refresh_revoked() {
    let auth = auth(|_| {});
    let mut c = authorised(&auth, &token("alice", 600, &["odin.token.>"]));
    drain(&mut c, ms(0));
    subscribe(
        &mut c,
        &["odin.token.BTC.trade", "odin.token.ETH.trade"],
        ms(1),
    );
    for (sseq, subject) in [(1, "odin.token.BTC.trade"), (2, "odin.token.ETH.trade")] {
        let subject = crate::subjects::Subject::parse(subject).expect("subject");
        let m = Arc::new(crate::protocol::Published::new(
            subject,
            sseq,
            crate::protocol::Priority::Medium,
            b"1",
        ));
        c.deliver(&m, ms(2));
    }
    assert_eq!(types(&drain(&mut c, ms(2))), ["message", "message"]);
    let narrow = json!({"type": "refresh", "token": token("alice", 900, &["odin.token.BTC.*"])});
    send(&mut c, &narrow.to_string(), ms(3));
    events(&mut c, ms(3));
    drain(&mut c, ms(3));
    send(
        &mut c,
        r#"{"type":"replay","from_seq":1,"to_seq":2}"#,
        ms(4),
    );
    let replayed: Vec<Value> = drain(&mut c, ms(4));
    assert_eq!(types(&replayed), ["message", "replay_done"], "{replayed:?}");
    assert_eq!(replayed[0]["subject"], "odin.token.BTC.trade");
    assert_eq!(replayed[0]["replayed"], true);
    // The left-out seq is named, so a client does not take it for a loss.
    assert_eq!(replayed[1]["withheld"], json!([2]));
    // A renewal that covers the channel again makes it replayable again.
    let renew = json!({"type": "refresh", "token": token("alice", 900, &["odin.token.>"])});
    send(&mut c, &renew.to_string(), ms(5));
    drain(&mut c, ms(5));
    send(
        &mut c,
        r#"{"type":"replay","from_seq":1,"to_seq":2}"#,
        ms(6),
    );
    assert_eq!(
        types(&drain(&mut c, ms(6))),
        ["message", "message", "replay_done"]
    );
}

#[test]
fn a_refused_refresh_changes_nothing() {
    let auth = auth(|_| {});
    let mut c = authorised(&auth, &token("alice", 60, &["odin.token.>"]));
    drain(&mut c, ms(0));
    subscribe(&mut c, &["odin.token.BTC.trade"], ms(1));
    let wider_expired = {
        let claims = json!({"sub": "alice", "exp": UNIX0 - 1, "channels": [">"]});
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET).expect("key"),
        )
        .expect("signs")
    };
    for (bad, why) in [
        (token("mallory", 3_600, &[">"]), "sub"),
        (wider_expired, "expired"),
        ("not.a.jwt".to_owned(), "well-formed"),
        (
            encode(
                &Header::default(),
                &json!({"sub": "alice", "exp": UNIX0 + 3_600}),
                &EncodingKey::from_secret(b"some other secret of thirty-two bytes").expect("key"),
            )
            .expect("signs"),
            "signature",
        ),
    ] {
        send(
            &mut c,
            &json!({"type": "refresh", "id": why, "token": bad}).to_string(),
            ms(2),
        );
        assert_eq!(events(&mut c, ms(2)), [], "{why}");
        let frames = drain(&mut c, ms(2));
        assert_eq!(types(&frames), ["error"], "{why}");
        assert_eq!(frames[0]["code"], "invalid_token", "{why}");
        assert_eq!(frames[0]["id"], why);
        let message = frames[0]["message"].as_str().expect("text");
        assert!(message.contains(why), "{why}: {message}");
    }
    // Still subscribed, still closing at the old exp.
    assert_eq!(c.session().subscriptions().count(), 1);
    c.handle_timeout(ms(60_000));
    let frames = drain(&mut c, ms(60_000));
    assert_eq!(
        frames.last(),
        Some(&json!({"close": 4001, "reason": "token expired"}))
    );
}

#[test]
fn refresh_needs_tokens_and_a_token_to_refresh() {
    let auth = auth(|_| {});
    let mut anonymous = conn(config(&auth));
    anonymous.authorize(Grant::anonymous(), ms(0), unix_at(0));
    drain(&mut anonymous, ms(0));
    let refresh = json!({"type": "refresh", "token": token("alice", 600, &[">"])}).to_string();
    send(&mut anonymous, &refresh, ms(1));
    let frames = drain(&mut anonymous, ms(1));
    assert_eq!(frames[0]["code"], "invalid_token");
    assert!(
        subscribe(&mut anonymous, &["odin.token.BTC.trade"], ms(2))[0]["code"] == "forbidden",
        "an anonymous connection does not become alice by refreshing"
    );

    let mut open = conn(Arc::new(SessionConfig::default()));
    drain(&mut open, ms(0));
    send(&mut open, &refresh, ms(1));
    assert_eq!(drain(&mut open, ms(1))[0]["code"], "invalid_token");
    // A refresh without a token is not a refresh request.
    send(&mut open, r#"{"type":"refresh"}"#, ms(2));
    assert_eq!(drain(&mut open, ms(2))[0]["code"], "invalid_message");
}
