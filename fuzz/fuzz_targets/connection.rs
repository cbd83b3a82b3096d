//! `surge_core::connection::Connection` driven by a sequence of operations
//! decoded from the input: client bytes (raw, or canned frames and
//! requests, whole or cut in two), deliveries of published messages on
//! subscribed subjects, timeouts at increasing times, writes the socket
//! takes in full, in part or not at all, resume fetch results, end of
//! stream, socket errors and server closes.
//!
//! Invariants, checked after every operation and on every byte written:
//! no panic; the write stream is the 101 response followed by well-formed
//! server frames (unmasked, FIN, no reserved bits, known opcodes, control
//! payloads of at most 125 bytes, text frames that are JSON objects with a
//! `type`, `welcome` before any other); the `seq` of `message` frames strictly
//! increases (replayed frames excepted: they repeat a `seq` already
//! given); at most one Close frame, with a code a peer may send, and no
//! byte after it; `session().queued_bytes()` within
//! `config.hard_queue_bytes()` plus a small slack (plus what `replay`
//! requests queued, unless `SURGE_FUZZ_STRICT=1`); `ShutdownWrite` at most
//! once and nothing written after it; once `ConnEvent::Ended` is returned
//! nothing more is written, `poll_event` returns `None` and no timer is
//! asked for; after `handle_timeout(now)` the next timer is later than
//! `now` (a timer that does not move would spin the shard).

#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use surge_core::Instant;
use surge_core::admission::{ConnId, ShardId};
use surge_core::connection::{ConnEvent, Connection, Fetched};
use surge_core::protocol::{CloseReason, Priority, Published};
use surge_core::session::{Delivery, SessionConfig};
use surge_core::subjects::{Pattern, Subject};
use surge_fuzz::{Bytes, client_frame, take_server_frames, trace};

const RESPONSE_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
/// Server frames that jump queued data.
const SUBJECTS: [&str; 4] = ["a.b", "a.c", "x.y", "a.b.c"];
/// Largest payload a delivery carries (see `Driver::deliver`).
const MAX_PAYLOAD: usize = 255 * 8;
/// The longest `message` frame a delivery makes (a payload that is not
/// UTF-8 travels in base64).
const MAX_FRAME: usize = MAX_PAYLOAD * 4 / 3 + 200;
/// What the queue may hold past its hard bound: a message admitted into an
/// empty queue whatever its size, and request replies.
const QUEUE_SLACK: usize = 2 * MAX_FRAME + 1024;

fn config(bytes: &mut Bytes) -> SessionConfig {
    let a = bytes.u8();
    let b = bytes.u8();
    let pick = |bits: u8, choices: &[usize]| choices[usize::from(bits) % choices.len()];
    let mut c = SessionConfig {
        outbound_queue_bytes: pick(a & 3, &[256 * 1024, 300, 2000, 16 * 1024]),
        replay_max_bytes: pick((a >> 2) & 3, &[256 * 1024, 1000, 8000, 64 * 1024]),
        max_message_bytes: pick((a >> 4) & 1, &[16 * 1024, 256]),
        write_timeout: Duration::from_secs(if (a >> 5) & 1 == 0 { 60 } else { 5 }),
        echo: a >> 6 == 3,
        inbound_frames_per_sec: [200, 0, 10, 200][usize::from(b & 3)],
        inbound_bytes_per_sec: [1 << 20, 0, 1000, 1 << 20][usize::from((b >> 2) & 3)],
        ..SessionConfig::default()
    };
    if b & 0x10 != 0 {
        c.throttle.full_events_to_escalate = 1;
        c.throttle.recovery_window = Duration::from_secs(2);
    }
    if b & 0x20 != 0 {
        c.client_rate_per_sec = 2;
        c.client_burst = 4;
    }
    if b & 0x40 != 0 {
        c.max_subscriptions = 2;
        c.replay_window = 5;
    }
    if b & 0x80 != 0 {
        c.resume_buffer_messages = 3;
    }
    c
}

/// A canned client request or frame, chosen by the input.
fn canned_frame(bytes: &mut Bytes, max_message_bytes: usize) -> Vec<u8> {
    let m = bytes.u8();
    let mask = [m, m ^ 0x55, m ^ 0xAA, m ^ 0xFF];
    let text = |s: &str| client_frame(0x81, mask, s.as_bytes());
    match bytes.u8() % 22 {
        0 => text(r#"{"type":"subscribe","channels":["a.b"]}"#),
        1 => text(r#"{"type":"subscribe","channels":["a.*"],"id":1}"#),
        2 => text(r#"{"type":"subscribe","channels":[">"]}"#),
        3 => text(r#"{"type":"subscribe","channels":["a.b","x.y","a.>"]}"#),
        4 => text(r#"{"type":"unsubscribe","channels":["a.b"]}"#),
        5 => text(r#"{"type":"unsubscribe","channels":["a.*",">","x.y"]}"#),
        6 => {
            let (from, to) = (bytes.u8(), bytes.u8());
            text(&format!(
                r#"{{"type":"replay","from_seq":{from},"to_seq":{to},"id":"r"}}"#
            ))
        }
        7 => text(&format!(r#"{{"type":"ping","id":{}}}"#, bytes.u8())),
        8 => {
            let since = bytes.u8();
            let epoch = match bytes.u8() % 3 {
                0 => String::new(),
                1 => r#","epoch":"e1""#.to_owned(),
                _ => r#","epoch":"e2""#.to_owned(),
            };
            let channels = ["\"a.b\"", "\"a.*\"", "\">\"", "\"x.y\",\"a.b\""][usize::from(m % 4)];
            text(&format!(
                r#"{{"type":"resume","channels":[{channels}],"since_sseq":{since}{epoch}}}"#
            ))
        }
        9 => text("nope"),
        10 => text(r#"{"type":"subscribe","channels":["a..b","x.y"]}"#),
        11 => {
            let len = usize::from(bytes.u8() % 40);
            client_frame(0x82, mask, bytes.take(len))
        }
        12 => {
            let len = usize::from(bytes.u8() % 130);
            client_frame(0x89, mask, bytes.take(len))
        }
        13 => {
            let len = usize::from(bytes.u8() % 8);
            client_frame(0x8A, mask, bytes.take(len))
        }
        14 => {
            let code = match bytes.u8() % 6 {
                0 => 1000,
                1 => 1001,
                2 => 4000,
                3 => 1005,
                4 => bytes.u16(),
                _ => return client_frame(0x88, mask, b""),
            };
            let mut payload = u16::to_be_bytes(code).to_vec();
            payload.extend_from_slice(b"bye");
            client_frame(0x88, mask, &payload)
        }
        // A subscribe in fragments: start, middle, end.
        15 => client_frame(0x01, mask, br#"{"type":"subscr"#),
        16 => client_frame(0x00, mask, br#"ibe","chan"#),
        17 => client_frame(0x80, mask, br#"nels":["x.y"]}"#),
        18 => client_frame(0x00, mask, b""),
        19 => {
            // Around the message limit.
            let len = (max_message_bytes + usize::from(bytes.u8())).saturating_sub(128);
            client_frame(0x81, mask, &vec![b' '; len])
        }
        20 => vec![0x81, 0x02, b'{', b'}'], // unmasked: 1002
        _ => text(r#"{"type":"heartbeat"}"#),
    }
}

struct Driver {
    conn: Connection,
    config: Arc<SessionConfig>,
    now: u64,
    sseq: u64,
    scratch: Vec<u8>,
    /// Bytes the socket took, not yet parsed.
    wire: Vec<u8>,
    /// How much of the 101 response is still to come.
    response_left: usize,
    welcomed: bool,
    last_seq: u64,
    close_seen: bool,
    shutdown: bool,
    ended: bool,
    /// Patterns in the subscription index.
    index: Vec<Pattern>,
    /// A resume's fetch is out (its `since_sseq`).
    fetching: Option<u64>,
    /// Replayed frames queued so far.
    trace: bool,
    reached: Vec<String>,
    max_queued: usize,
}

impl Driver {
    fn now(&self) -> Instant {
        Instant::from_millis(self.now)
    }

    fn events(&mut self) {
        let now = self.now();
        for _ in 0..100_000 {
            let Some(event) = self.conn.poll_event(now) else {
                return;
            };
            assert!(!self.ended, "event after Ended: {event:?}");
            match event {
                ConnEvent::Subscribe(patterns) => self.index.extend(patterns),
                ConnEvent::Unsubscribe(patterns) => self.index.retain(|p| !patterns.contains(p)),
                ConnEvent::Fetch {
                    subscribe,
                    since_sseq,
                    ..
                } => {
                    assert!(self.fetching.is_none(), "a second fetch while one is out");
                    self.index.extend(subscribe);
                    self.fetching = Some(since_sseq);
                }
                ConnEvent::ShutdownWrite => {
                    assert!(!self.shutdown, "ShutdownWrite twice");
                    self.shutdown = true;
                }
                ConnEvent::Ended(reason) => {
                    self.seen(format!("ended:{}", reason.metric_label()));
                    self.ended = true;
                    assert!(self.conn.is_ended());
                }
            }
        }
        panic!("poll_event never returns None");
    }

    /// One write: the socket takes `n` bytes chosen by `how`.
    fn transmit(&mut self, how: u8) -> bool {
        let now = self.now();
        let taken = {
            let Some(out) = self.conn.poll_transmit(&mut self.scratch, now) else {
                return false;
            };
            assert!(!self.ended, "transmit after Ended");
            assert!(!self.shutdown, "transmit after ShutdownWrite");
            assert!(!out.is_empty(), "an empty transmit");
            let n = match how % 4 {
                0 => 0,
                1 => usize::from(how) % (out.len() + 1),
                _ => out.len(),
            };
            out[..n].to_vec()
        };
        self.conn.on_written(taken.len(), &self.scratch, now);
        self.receive(&taken);
        !taken.is_empty()
    }

    /// What the client receives.
    fn receive(&mut self, mut bytes: &[u8]) {
        if self.response_left > 0 {
            let n = self.response_left.min(bytes.len());
            let at = RESPONSE_101.len() - self.response_left;
            assert_eq!(
                &bytes[..n],
                &RESPONSE_101[at..at + n],
                "the 101 response first"
            );
            self.response_left -= n;
            bytes = &bytes[n..];
        }
        if bytes.is_empty() {
            return;
        }
        assert!(
            !self.close_seen,
            "{} bytes written after the Close frame",
            bytes.len()
        );
        self.wire.extend_from_slice(bytes);
        for frame in take_server_frames(&mut self.wire) {
            self.check_frame(frame);
        }
        if self.close_seen {
            assert!(self.wire.is_empty(), "bytes after the Close frame");
        }
    }

    fn check_frame(&mut self, frame: surge_fuzz::ServerFrame) {
        assert!(!self.close_seen, "a frame after the Close frame: {frame:?}");
        assert!(!frame.masked, "a masked server frame");
        assert_eq!(
            frame.first_byte & 0xF0,
            0x80,
            "FIN not set or reserved bits: {frame:?}"
        );
        match frame.opcode() {
            0x1 if self.config.echo => {
                std::str::from_utf8(&frame.payload).expect("echoed text is UTF-8");
            }
            0x1 => {
                let value: Value = serde_json::from_slice(&frame.payload).unwrap_or_else(|e| {
                    panic!(
                        "text frame is not JSON ({e}): {}",
                        String::from_utf8_lossy(&frame.payload)
                    )
                });
                let kind = value["type"].as_str().expect("a type");
                if !self.welcomed {
                    assert_eq!(kind, "welcome", "the first frame");
                }
                assert!(kind != "welcome" || !self.welcomed, "a second welcome");
                self.welcomed |= kind == "welcome";
                self.seen(kind.to_owned());
                if kind == "message" {
                    let seq = value["seq"].as_u64().expect("a seq");
                    if value["replayed"] == Value::Bool(true) {
                        self.seen("replayed".into());
                        assert!(
                            seq < self.conn.session().next_seq(),
                            "replayed seq {seq} never given"
                        );
                    } else {
                        assert!(seq > self.last_seq, "seq {seq} after {}", self.last_seq);
                        self.last_seq = seq;
                    }
                }
            }
            0x2 => assert!(self.config.echo, "a binary frame outside echo mode"),
            0x8 => {
                let p = &frame.payload;
                assert!(p.len() <= 125 && p.len() != 1, "close payload {p:?}");
                if p.len() >= 2 {
                    let code = u16::from_be_bytes([p[0], p[1]]);
                    assert!(
                        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999),
                        "close code {code}"
                    );
                    std::str::from_utf8(&p[2..]).expect("close reason is UTF-8");
                    self.seen(format!("close:{code}"));
                }
                self.close_seen = true;
            }
            0x9 | 0xA => assert!(frame.payload.len() <= 125, "control frame too long"),
            op => panic!("opcode {op:#x}"),
        }
    }

    fn deliver(&mut self, bytes: &mut Bytes) {
        let subject = SUBJECTS[usize::from(bytes.u8() % 4)];
        let subject = Subject::parse(subject).expect("subject");
        if !self.index.iter().any(|p| p.matches(&subject)) {
            return;
        }
        let how = bytes.u8();
        let priority = [
            Priority::Low,
            Priority::Medium,
            Priority::High,
            Priority::Critical,
        ][usize::from(how % 4)];
        let len = usize::from(bytes.u8()) * 8;
        self.sseq += 1;
        let data = if how & 0x80 != 0 {
            vec![0xFF; len]
        } else {
            format!(r#"{{"n":{},"pad":"{}"}}"#, self.sseq, "x".repeat(len)).into_bytes()
        };
        let message = Published::new(subject, self.sseq, priority, &data);
        let next = self.conn.session().next_seq();
        if let Delivery::Queued(seq) = self.conn.deliver(&message, self.now()) {
            assert_eq!(seq, next, "a delivery skipped a seq");
        }
    }

    fn fetched(&mut self, bytes: &mut Bytes) {
        let how = bytes.u8();
        let since = self.fetching.take().unwrap_or(u64::from(how));
        let result = if how.is_multiple_of(5) {
            Err("broker unavailable".to_owned())
        } else {
            let count = u64::from(bytes.u8() % 8);
            let subject = Subject::parse(SUBJECTS[usize::from(how % 2)]).expect("subject");
            let messages: Vec<_> = (1..=count)
                .map(|i| Published::new(subject.clone(), since + i, Priority::Medium, b"{\"r\":1}"))
                .collect();
            let last_sseq = (since + count).max(self.sseq);
            self.sseq = last_sseq;
            Ok(Fetched {
                first_retained: match how % 3 {
                    0 => None,
                    1 => Some(1),
                    _ => Some(since + 2),
                },
                messages,
                last_sseq,
                epoch: if how & 0x80 != 0 { "e2" } else { "e1" }.to_owned(),
            })
        };
        self.conn.handle_fetched(result, self.now());
    }

    /// Notes what this input reached, for `SURGE_FUZZ_TRACE=1`.
    fn seen(&mut self, what: String) {
        if self.trace && !self.reached.contains(&what) {
            self.reached.push(what);
        }
    }

    fn check(&mut self) {
        let queued = self.conn.session().queued_bytes();
        self.max_queued = self.max_queued.max(queued);
        let bound = self.config.hard_queue_bytes() + QUEUE_SLACK;
        assert!(
            queued <= bound,
            "queued_bytes {queued} > hard bound + slack {bound}"
        );
        if self.ended {
            let now = self.now();
            assert!(self.conn.is_ended());
            assert_eq!(self.conn.poll_event(now), None, "an event after Ended");
            assert!(
                self.conn.poll_transmit(&mut self.scratch, now).is_none(),
                "transmit after Ended"
            );
            assert_eq!(self.conn.poll_timeout(), None, "a timer after Ended");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = Bytes::new(data);
    let config = Arc::new(config(&mut bytes));
    let conn = Connection::new(
        ConnId {
            shard: ShardId(0),
            serial: 1,
        },
        Arc::clone(&config),
        Instant::ZERO,
        Some("e1"),
        RESPONSE_101.to_vec(),
    );
    let mut d = Driver {
        conn,
        config,
        now: 0,
        sseq: 0,
        scratch: Vec::new(),
        wire: Vec::new(),
        response_left: RESPONSE_101.len(),
        welcomed: false,
        last_seq: 0,
        close_seen: false,
        shutdown: false,
        ended: false,
        index: Vec::new(),
        fetching: None,
        trace: trace(),
        reached: Vec::new(),
        max_queued: 0,
    };
    while !bytes.is_empty() {
        let now = d.now();
        match bytes.u8() % 12 {
            0 => {
                let len = usize::from(bytes.u8());
                d.conn.handle_bytes(bytes.take(len), now);
            }
            1 => {
                let frame = canned_frame(&mut bytes, d.config.max_message_bytes);
                let cut = usize::from(bytes.u8()).min(frame.len());
                d.conn.handle_bytes(&frame[..cut], now);
                d.conn.handle_bytes(&frame[cut..], now);
            }
            2 => d.deliver(&mut bytes),
            3 => {
                for _ in 0..=bytes.u8() % 32 {
                    d.deliver(&mut bytes);
                }
            }
            4 => {
                let b = bytes.u8();
                match b % 4 {
                    0 => d.now += u64::from(b / 4),
                    1 => d.now += u64::from(b / 4) * 1000,
                    _ => {
                        if let Some(t) = d.conn.poll_timeout() {
                            d.now = d.now.max(t.as_nanos().div_ceil(1_000_000));
                        }
                    }
                }
                let now = d.now();
                d.conn.handle_timeout(now);
                d.events();
                if let Some(next) = d.conn.poll_timeout() {
                    assert!(
                        next > now,
                        "after handle_timeout({now:?}) the next timer is {next:?}"
                    );
                }
            }
            5 => {
                d.transmit(bytes.u8());
            }
            6 => {
                // A socket that takes everything.
                for _ in 0..64 {
                    if !d.transmit(2) {
                        break;
                    }
                }
            }
            7 => d.fetched(&mut bytes),
            8 => d.conn.handle_eof(now),
            9 => {
                let reason = [
                    CloseReason::ShuttingDown,
                    CloseReason::MessageTooBig,
                    CloseReason::RateLimited,
                    CloseReason::InboundBudget,
                    CloseReason::TooSlow,
                    CloseReason::TooSlowForCritical,
                    CloseReason::Idle,
                    CloseReason::ResumeOverflow,
                ][usize::from(bytes.u8() % 8)];
                d.conn.close(reason, "closing".into(), now);
            }
            10 => d.conn.handle_io_error(),
            _ => {
                // A short pause, then the socket takes what it can.
                d.now += u64::from(bytes.u8() % 16);
                d.transmit(3);
            }
        }
        d.events();
        d.check();
    }
    if d.trace {
        // One line per input: what it reached (frame types, close codes,
        // end reasons) and the largest queue, to judge a corpus.
        d.reached.sort();
        let hard = d.config.hard_queue_bytes();
        eprintln!(
            "reached: {} queue_max/hard {}/{hard}",
            d.reached.join(" "),
            d.max_queued
        );
    }
});
