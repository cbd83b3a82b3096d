//! `Connection` driven by generated sequences of everything a driver can
//! do to it (client bytes, good and bad; deliveries; a socket that takes
//! all, part or nothing; time; end of stream; a server close), with its
//! invariants checked after every step:
//!
//! - live and recovered `message` frames on the wire carry strictly
//!   increasing `seq` (replayed ones repeat earlier values and are skipped);
//! - at most one Close frame is ever written, and nothing after it;
//! - the queue stays within its hard bound;
//! - once `Ended` is returned, nothing more is written and no event follows;
//! - with a token (half the cases of the first suite, every case of the
//!   second, whose steps are mostly requests, refreshes of every kind and
//!   time): no `message` of a channel after the `unsubscribed`
//!   that revoked it (until it is subscribed again or a renewal covers it
//!   again), and a 4001 close only
//!   after a `token_expiring` and never before the first token's `exp`.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header, encode};
use proptest::prelude::*;
use surge_core::admission::{ConnId, ShardId};
use surge_core::auth::{JwtAuth, JwtSettings, VerificationKeys};
use surge_core::connection::{ConnEvent, Connection};
use surge_core::frame::masked_frame;
use surge_core::protocol::{CloseReason, Priority, Published};
use surge_core::session::SessionConfig;
use surge_core::subjects::{Pattern, Subject};
use surge_core::{Instant, UnixTime};

/// One thing the driver does.
#[derive(Debug, Clone)]
enum Op {
    /// A client frame: `kind` picks the opcode and payload.
    Client {
        kind: u8,
        text: String,
    },
    /// Raw bytes from the client (may break the framing).
    Garbage(Vec<u8>),
    /// A published message on the subscribed subject.
    Deliver {
        priority: u8,
        size: u16,
    },
    /// The socket takes this share of what is offered (0 = nothing).
    Write {
        percent: u8,
    },
    /// Time passes.
    Advance {
        millis: u16,
    },
    Eof,
    ServerClose,
    /// A `refresh` request; `kind` picks the token (see `refresh_token`).
    Refresh {
        kind: u8,
    },
}

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
/// The wall clock, in seconds, at the connection's start.
const UNIX0: u64 = 1_800_000_000;
/// The first token's lifetime.
const FIRST_TTL_SECS: u64 = 20;

fn token(sub: &str, exp: u64, channels: &[&str]) -> String {
    encode(
        &Header::default(),
        &serde_json::json!({"sub": sub, "exp": exp, "channels": channels}),
        &EncodingKey::from_secret(SECRET).expect("key"),
    )
    .expect("signs")
}

/// A refresh token at wall-clock second `unix`: a renewal, a narrowing one
/// (`a.b` no longer covered), another user's, an expired one, or garbage.
/// A renewal expires at an even second and a narrowing one at an odd
/// second, so the `refreshed` frame on the wire says which took effect.
fn refresh_token(kind: u8, unix: u64) -> String {
    let even = (unix + 30) & !1;
    match kind % 5 {
        0 => token("alice", even, &["a.>"]),
        1 => token("alice", even + 1, &["a.c"]),
        2 => token("mallory", unix + 30, &["a.>"]),
        3 => token("alice", unix.saturating_sub(1), &["a.>"]),
        _ => "not.a.token".to_owned(),
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..8, "[a-z{}\":,\\[\\] ]{0,40}").prop_map(|(kind, text)| Op::Client { kind, text }),
        1 => proptest::collection::vec(any::<u8>(), 0..24).prop_map(Op::Garbage),
        6 => (0u8..4, 0u16..3000).prop_map(|(priority, size)| Op::Deliver { priority, size }),
        5 => write_share().prop_map(|percent| Op::Write { percent }),
        3 => (0u16..5000).prop_map(|millis| Op::Advance { millis }),
        1 => Just(Op::Eof),
        1 => Just(Op::ServerClose),
        2 => (0u8..5).prop_map(|kind| Op::Refresh { kind }),
    ]
}

/// Steps for a connection with a token: well-formed requests, refreshes
/// of every kind and the time that makes tokens expire, without the
/// garbage and closes that would end most runs before a token matters.
fn token_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..3).prop_map(|kind| Op::Client { kind, text: String::new() }),
        6 => (0u8..4, 0u16..300).prop_map(|(priority, size)| Op::Deliver { priority, size }),
        5 => write_share().prop_map(|percent| Op::Write { percent }),
        3 => (0u16..8000).prop_map(|millis| Op::Advance { millis }),
        1 => (0u8..5).prop_map(|kind| Op::Refresh { kind }),
    ]
}

/// How much of the offered bytes a write takes: everything most often (a
/// socket with room), else any share. Shares alone shrink what is left
/// geometrically and would rarely get past the first chunk.
fn write_share() -> impl Strategy<Value = u8> {
    prop_oneof![3 => Just(100u8), 2 => 0u8..=100]
}

fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    masked_frame(b0, payload, [7, 1, 9, 3])
}

fn client_bytes(kind: u8, text: &str) -> Vec<u8> {
    match kind {
        0 => masked(0x81, br#"{"type":"subscribe","channels":["a.b"]}"#),
        1 => masked(0x81, br#"{"type":"replay","from_seq":1,"to_seq":5}"#),
        2 => masked(0x81, br#"{"type":"ping"}"#),
        3 => masked(
            0x89,
            text.as_bytes().get(..text.len().min(125)).unwrap_or(b""),
        ),
        4 => masked(0x88, &1000u16.to_be_bytes()),
        5 => masked(0x82, text.as_bytes()),
        6 => masked(0x8A, b""),
        _ => masked(0x81, text.as_bytes()),
    }
}

/// Server frames parsed from the byte stream as it is written.
#[derive(Default)]
struct Wire {
    buf: Vec<u8>,
    head_done: bool,
    last_seq: u64,
    closes: u32,
    after_close: u32,
    /// The wall clock when the bytes were written, in milliseconds.
    unix_ms: u64,
    expiring_seen: bool,
    /// `a.b` was revoked by a narrowing refresh and not subscribed since.
    revoked: bool,
    /// The latest `refreshed` on the wire was a narrowing one. Notices go
    /// ahead of queued frames, so a renewal's `refreshed` can precede the
    /// `unsubscribed` of an earlier narrowing; the latest one seen says
    /// which grant the connection holds now.
    narrowed: bool,
}

impl Wire {
    fn take(&mut self, bytes: &[u8]) -> Result<(), TestCaseError> {
        self.buf.extend_from_slice(bytes);
        if !self.head_done {
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(());
            };
            self.buf.drain(..end + 4);
            self.head_done = true;
        }
        loop {
            if self.buf.len() < 2 {
                return Ok(());
            }
            let (len, head) = match self.buf[1] & 0x7F {
                126 if self.buf.len() >= 4 => (
                    usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                    4,
                ),
                127 if self.buf.len() >= 10 => (
                    u64::from_be_bytes(self.buf[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                126 | 127 => return Ok(()),
                n => (usize::from(n), 2),
            };
            if self.buf.len() < head + len {
                return Ok(());
            }
            let opcode = self.buf[0] & 0x0F;
            let payload: Vec<u8> = self.buf[head..head + len].to_vec();
            self.buf.drain(..head + len);
            if self.closes > 0 {
                self.after_close += 1;
            }
            match opcode {
                0x8 => {
                    self.closes += 1;
                    if payload.get(..2) == Some(&4001u16.to_be_bytes()[..]) {
                        prop_assert!(self.expiring_seen, "4001 without token_expiring first");
                        prop_assert!(
                            self.unix_ms >= (UNIX0 + FIRST_TTL_SECS) * 1000,
                            "4001 at {} before the first token's exp",
                            self.unix_ms
                        );
                    }
                }
                0x1 => {
                    let v: serde_json::Value = serde_json::from_slice(&payload)
                        .map_err(|e| TestCaseError::fail(format!("frame not JSON: {e}")))?;
                    let names_a_b = |v: &serde_json::Value| {
                        v["channels"]
                            .as_array()
                            .is_some_and(|c| c.iter().any(|c| c == "a.b"))
                    };
                    match v["type"].as_str() {
                        Some("token_expiring") => self.expiring_seen = true,
                        Some("unsubscribed") if v["reason"] == "forbidden" && names_a_b(&v) => {
                            self.revoked = true
                        }
                        Some("subscribed") if names_a_b(&v) => self.revoked = false,
                        Some("refreshed") => {
                            self.narrowed = v["expires_at"]
                                .as_u64()
                                .is_some_and(|ms| (ms / 1000) % 2 == 1)
                        }
                        Some("message") if v["subject"] == "a.b" && v.get("replayed").is_none() => {
                            prop_assert!(
                                !(self.revoked && self.narrowed),
                                "a live message of a revoked channel: {v}"
                            )
                        }
                        _ => {}
                    }
                    if v["type"] == "message" && v.get("replayed").is_none() {
                        let seq = v["seq"].as_u64().unwrap_or(0);
                        prop_assert!(seq > self.last_seq, "seq {seq} after {}", self.last_seq);
                        self.last_seq = seq;
                    }
                }
                _ => {}
            }
        }
    }
}

fn run(ops: &[Op], with_token: bool) -> Result<(), TestCaseError> {
    let auth = with_token.then(|| {
        Arc::new(JwtAuth::new(
            VerificationKeys::secret(SECRET).expect("secret"),
            JwtSettings {
                refresh_notice: Duration::from_secs(5),
                ..JwtSettings::default()
            },
        ))
    });
    let config = Arc::new(SessionConfig {
        outbound_queue_bytes: 8 * 1024,
        auth: auth.clone(),
        ..SessionConfig::default()
    });
    let hard = config.hard_queue_bytes();
    let id = ConnId {
        shard: ShardId(0),
        serial: 1,
    };
    let start = Instant::from_millis(1);
    let mut now = start;
    let unix_ms =
        |now: Instant| UNIX0 * 1000 + now.saturating_duration_since(start).as_millis() as u64;
    let mut c = Connection::new(
        id,
        Arc::clone(&config),
        now,
        Some("e"),
        b"HTTP/1.1 101\r\n\r\n".to_vec(),
    );
    if let Some(auth) = &auth {
        let first = token("alice", UNIX0 + FIRST_TTL_SECS, &["a.>"]);
        let unix = UnixTime::from_millis(unix_ms(now));
        let grant = auth.verify(&first, unix).expect("the first token is valid");
        c.authorize(grant, now, unix);
    }
    let mut wire = Wire::default();
    let mut scratch = Vec::new();
    let mut ended = false;
    let mut sseq = 0;
    let subject = Subject::parse("a.b").expect("subject");
    let mut index: Vec<Pattern> = Vec::new();
    for op in ops {
        match op {
            Op::Client { kind, text } => c.handle_bytes(&client_bytes(*kind, text), now),
            Op::Garbage(bytes) => c.handle_bytes(bytes, now),
            // With a token, deliveries follow the subscription index the
            // events maintain, as the shard's hub does (a revoked channel
            // gets nothing new); without, every message is offered, to
            // exercise the queue whatever the client asked.
            Op::Deliver { .. } if with_token && !index.iter().any(|p| p.matches(&subject)) => {}
            Op::Deliver { priority, size } => {
                sseq += 1;
                let data = format!("\"{}\"", "x".repeat(usize::from(*size)));
                let m = Published::new(
                    subject.clone(),
                    sseq,
                    Priority::ALL[usize::from(*priority)],
                    data.as_bytes(),
                );
                c.deliver(&m, now);
            }
            Op::Write { percent } => {
                if let Some(bytes) = c.poll_transmit(&mut scratch, now) {
                    let n = bytes.len() * usize::from(*percent) / 100;
                    let taken = bytes[..n].to_vec();
                    prop_assert!(!ended, "bytes offered after Ended");
                    wire.unix_ms = unix_ms(now);
                    wire.take(&taken)?;
                    c.on_written(n, &scratch, now);
                }
            }
            // Without a token, time jumps and at most one late timer fires
            // (a stalled driver); with one, every deadline passed fires at
            // its time, as a timer does, so the token's notice comes
            // before its close.
            Op::Advance { millis } if with_token => {
                let until = now + Duration::from_millis(u64::from(*millis));
                while let Some(at) = c.poll_timeout().filter(|&t| t <= until) {
                    now = now.max(at);
                    c.handle_timeout(now);
                    if c.poll_timeout() == Some(at) {
                        break;
                    }
                }
                now = until;
            }
            Op::Advance { millis } => {
                now += Duration::from_millis(u64::from(*millis));
                if c.poll_timeout().is_some_and(|t| t <= now) {
                    c.handle_timeout(now);
                }
            }
            Op::Eof => c.handle_eof(now),
            Op::ServerClose => c.close(CloseReason::ShuttingDown, "bye".into(), now),
            Op::Refresh { kind } => {
                let request = serde_json::json!({
                    "type": "refresh",
                    "token": refresh_token(*kind, unix_ms(now) / 1000),
                });
                c.handle_bytes(&masked(0x81, request.to_string().as_bytes()), now);
            }
        }
        while let Some(event) = c.poll_event(now) {
            prop_assert!(!ended, "an event after Ended: {event:?}");
            match event {
                ConnEvent::Ended(_) => ended = true,
                ConnEvent::Subscribe(patterns)
                | ConnEvent::Fetch {
                    subscribe: patterns,
                    ..
                } => index.extend(patterns),
                ConnEvent::Unsubscribe(patterns) => index.retain(|p| !patterns.contains(p)),
                ConnEvent::ShutdownWrite => {}
            }
        }
        prop_assert!(
            c.session().queued_bytes() <= hard + 4096,
            "queue {} over its bound {hard}",
            c.session().queued_bytes()
        );
        prop_assert!(wire.closes <= 1, "{} Close frames", wire.closes);
        prop_assert_eq!(wire.after_close, 0, "frames after the Close");
    }
    Ok(())
}

proptest! {
    #![proptest_config(surge_properties::config("connection", 512))]

    #[test]
    fn connection_invariants_hold_for_any_driver(
        ops in proptest::collection::vec(op(), 1..120),
        with_token in any::<bool>(),
    ) {
        run(&ops, with_token)?;
    }

    #[test]
    fn token_invariants_hold_across_refreshes_and_expiry(
        ops in proptest::collection::vec(token_op(), 1..120),
    ) {
        run(&ops, true)?;
    }
}
