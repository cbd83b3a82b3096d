//! The session's replay ring and `seq` numbering against a model.

use std::sync::Arc;

use proptest::prelude::*;
use surge_core::Instant;
use surge_core::admission::{ConnId, ShardId};
use surge_core::protocol::{Priority, Published};
use surge_core::replay::ReplayRing;
use surge_core::session::{Delivery, Session, SessionConfig};
use surge_core::subjects::Subject;

fn message(sseq: u64, priority: Priority, size: usize) -> Arc<Published> {
    let subject = Subject::parse("odin.token.BTC.trade").expect("valid");
    Published::new(subject, sseq, priority, "x".repeat(size).as_bytes())
}

#[derive(Debug, Clone)]
enum RingOp {
    Push(usize),
    Slice(u64, u64),
}

proptest! {
    #![proptest_config(surge_properties::config("replay", 256))]

    #[test]
    fn ring_serves_exactly_the_retained_part(
        max_messages in 0usize..20,
        max_bytes in 1usize..400,
        ops in prop::collection::vec(prop_oneof![
            3 => (1usize..60).prop_map(RingOp::Push),
            1 => (0u64..60, 0u64..60).prop_map(|(a, b)| RingOp::Slice(a, b)),
        ], 1..120),
    ) {
        let mut ring = ReplayRing::new(max_messages, max_bytes);
        // The model: every message ever pushed, with its frame size.
        let mut history: Vec<(u64, usize)> = Vec::new();
        for op in ops {
            match op {
                RingOp::Push(len) => {
                    let seq = history.len() as u64 + 1;
                    ring.push(seq, message(seq * 3, Priority::Low, 1), len);
                    history.push((seq, len));
                }
                RingOp::Slice(from, to) => {
                    // Retained: the longest suffix within both bounds.
                    let mut kept = 0;
                    let mut bytes = 0;
                    for &(_, len) in history.iter().rev() {
                        if kept + 1 > max_messages || bytes + len > max_bytes { break; }
                        kept += 1;
                        bytes += len;
                    }
                    let last = history.len() as u64;
                    let oldest = last + 1 - kept as u64;
                    prop_assert_eq!(ring.len(), kept);
                    prop_assert_eq!(ring.bytes(), bytes);
                    let result = ring.slice(from, to);
                    if from == 0 || from > to || from > last {
                        prop_assert!(result.is_err());
                        continue;
                    }
                    let slice = result.expect("servable");
                    let to = to.min(last);
                    let want: Vec<u64> = (from.max(oldest)..=to).collect();
                    let got: Vec<u64> = slice.messages.iter().map(|(s, _)| *s).collect();
                    prop_assert_eq!(&got, &want);
                    for (seq, m) in &slice.messages {
                        prop_assert_eq!(m.sseq, seq * 3, "the message sent with that seq");
                    }
                    prop_assert_eq!(slice.gap_oldest, (from < oldest).then_some(oldest));
                }
            }
        }
    }

    /// Whatever the queue, throttle and priorities do, the `seq` of the
    /// message frames a client receives go 1, 2, 3, … with no silent gap,
    /// and every frame it receives is valid JSON.
    #[test]
    fn session_seq_strictly_increases_without_gaps(
        queue_bytes in 4_096usize..20_000,
        steps in prop::collection::vec((0u8..4, 0usize..300, 0u8..4, 0u64..2_000), 1..400),
    ) {
        let config = SessionConfig { outbound_queue_bytes: queue_bytes, ..SessionConfig::default() };
        let hard_bound = config.hard_queue_bytes();
        let id = ConnId { shard: ShardId(0), serial: 1 };
        let mut session = Session::new(id, Arc::new(config), Instant::ZERO, None);
        let mut now = Instant::ZERO;
        let mut expected_seq = 1;
        let mut queued_seqs = Vec::new();
        for (sseq, (prio, size, drain, advance_ms)) in (1u64..).zip(steps) {
            now += std::time::Duration::from_millis(advance_ms);
            session.on_heard(now);
            let priority = Priority::ALL[prio as usize];
            match session.deliver(&message(sseq, priority, size), now) {
                Delivery::Queued(seq) => {
                    prop_assert_eq!(seq, expected_seq);
                    expected_seq += 1;
                    queued_seqs.push(seq);
                }
                Delivery::Closed | Delivery::DroppedClosing => break,
                Delivery::Throttled | Delivery::QueueFull => {
                    prop_assert!(priority != Priority::Critical, "a critical message was dropped");
                }
                other => prop_assert!(false, "unexpected {other:?}"),
            }
            // Control frames (throttle notices) may sit on top of the hard bound.
            let bound = hard_bound + 1_000;
            prop_assert!(session.queued_bytes() <= bound, "queue {} over {}", session.queued_bytes(), bound);
            session.handle_timeout(now);
            for _ in 0..drain {
                let Some(frame) = session.pop_frame() else { break };
                let v: serde_json::Value = serde_json::from_slice(&frame.to_bytes()).expect("JSON");
                if v["type"] == "message" {
                    let seq = v["seq"].as_u64().expect("seq");
                    prop_assert_eq!(Some(seq), queued_seqs.first().copied());
                    queued_seqs.remove(0);
                }
            }
        }
    }
}
