//! `Connection` driven by generated sequences of everything a driver can
//! do to it (client bytes, good and bad; deliveries; a socket that takes
//! all, part or nothing; time; end of stream; a server close), with its
//! invariants checked after every step:
//!
//! - live and recovered `message` frames on the wire carry strictly
//!   increasing `seq` (replayed ones repeat earlier values and are skipped);
//! - at most one Close frame is ever written, and nothing after it;
//! - the queue stays within its hard bound;
//! - once `Ended` is returned, nothing more is written and no event follows.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use surge_core::Instant;
use surge_core::admission::{ConnId, ShardId};
use surge_core::connection::{ConnEvent, Connection};
use surge_core::frame::masked_frame;
use surge_core::protocol::{CloseReason, Priority, Published};
use surge_core::session::SessionConfig;
use surge_core::subjects::Subject;

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
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..8, "[a-z{}\":,\\[\\] ]{0,40}").prop_map(|(kind, text)| Op::Client { kind, text }),
        1 => proptest::collection::vec(any::<u8>(), 0..24).prop_map(Op::Garbage),
        6 => (0u8..4, 0u16..3000).prop_map(|(priority, size)| Op::Deliver { priority, size }),
        5 => (0u8..=100).prop_map(|percent| Op::Write { percent }),
        3 => (0u16..5000).prop_map(|millis| Op::Advance { millis }),
        1 => Just(Op::Eof),
        1 => Just(Op::ServerClose),
    ]
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
                0x8 => self.closes += 1,
                0x1 => {
                    let v: serde_json::Value = serde_json::from_slice(&payload)
                        .map_err(|e| TestCaseError::fail(format!("frame not JSON: {e}")))?;
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

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let config = Arc::new(SessionConfig {
        outbound_queue_bytes: 8 * 1024,
        ..SessionConfig::default()
    });
    let hard = config.hard_queue_bytes();
    let id = ConnId {
        shard: ShardId(0),
        serial: 1,
    };
    let mut now = Instant::from_millis(1);
    let mut c = Connection::new(
        id,
        Arc::clone(&config),
        now,
        Some("e"),
        b"HTTP/1.1 101\r\n\r\n".to_vec(),
    );
    let mut wire = Wire::default();
    let mut scratch = Vec::new();
    let mut ended = false;
    let mut sseq = 0;
    let subject = Subject::parse("a.b").expect("subject");
    for op in ops {
        match op {
            Op::Client { kind, text } => c.handle_bytes(&client_bytes(*kind, text), now),
            Op::Garbage(bytes) => c.handle_bytes(bytes, now),
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
                    wire.take(&taken)?;
                    c.on_written(n, &scratch, now);
                }
            }
            Op::Advance { millis } => {
                now += Duration::from_millis(u64::from(*millis));
                if c.poll_timeout().is_some_and(|t| t <= now) {
                    c.handle_timeout(now);
                }
            }
            Op::Eof => c.handle_eof(now),
            Op::ServerClose => c.close(CloseReason::ShuttingDown, "bye".into(), now),
        }
        while let Some(event) = c.poll_event(now) {
            prop_assert!(!ended, "an event after Ended: {event:?}");
            if let ConnEvent::Ended(_) = event {
                ended = true;
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
    fn connection_invariants_hold_for_any_driver(ops in proptest::collection::vec(op(), 1..120)) {
        run(&ops)?;
    }
}
