use super::*;
use crate::admission::ShardId;
use crate::protocol::CloseReason;
use crate::subjects::Subject;

fn ms(v: u64) -> Instant {
    Instant::from_millis(v)
}

fn id() -> ConnId {
    ConnId {
        shard: ShardId(0),
        serial: 7,
    }
}

fn session(config: SessionConfig) -> Session {
    let mut s = Session::new(id(), Arc::new(config), ms(0), Some("e1"));
    let welcome = frames(&mut s);
    assert_eq!(welcome.len(), 1);
    assert_eq!(welcome[0]["type"], "welcome");
    assert_eq!(welcome[0]["conn_id"], "0-7");
    assert_eq!(welcome[0]["epoch"], "e1");
    s
}

fn published(subject: &str, sseq: u64, priority: Priority) -> Arc<Published> {
    let subject = Subject::parse(subject).expect("valid subject");
    Published::new(
        subject,
        sseq,
        priority,
        format!("{{\"n\":{sseq}}}").as_bytes(),
    )
}

fn frames(s: &mut Session) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(f) = s.pop_frame() {
        out.push(serde_json::from_slice(&f.to_bytes()).expect("frames are JSON"));
    }
    assert_eq!(s.queued_bytes(), 0, "byte count returns to zero");
    out
}

/// Applies actions the way a driver does, returning what is left to do.
fn apply(s: &mut Session) -> Vec<Action> {
    let mut other = Vec::new();
    while let Some(a) = s.poll_action() {
        match a {
            Action::Subscribe { reply, .. } | Action::Unsubscribe { reply, .. } => s.confirm(reply),
            a => other.push(a),
        }
    }
    other
}

fn request(s: &mut Session, text: &str) -> Vec<Value> {
    s.handle_text(text, ms(1));
    apply(s);
    frames(s)
}

#[test]
fn frame_length_arithmetic_matches_the_encoder() {
    let s = session(SessionConfig::default());
    let m = published("a.b", 5, Priority::Medium);
    for mark in [
        MessageMark::Live,
        MessageMark::Replayed,
        MessageMark::Recovered,
    ] {
        assert_eq!(
            s.frame_len(&m, mark),
            OutFrame::message(s.next_seq(), mark, 0, &m).len()
        );
    }
    let mut s = s;
    s.dropped = 123;
    assert_eq!(
        s.frame_len(&m, MessageMark::Live),
        OutFrame::message(s.next_seq(), MessageMark::Live, 123, &m).len()
    );
    assert_eq!(decimal_len(0), 1);
    assert_eq!(decimal_len(9), 1);
    assert_eq!(decimal_len(10), 2);
    assert_eq!(decimal_len(u64::MAX), 20);
}

#[test]
fn subscribe_is_confirmed_only_after_the_index_action() {
    let mut s = session(SessionConfig::default());
    s.handle_text(
        r#"{"type":"subscribe","id":3,"channels":["odin.token.*.trade","odin.global.>","odin.token.*.trade"]}"#,
        ms(1),
    );
    assert!(
        frames(&mut s).is_empty(),
        "no reply before the index is updated"
    );
    let Some(Action::Subscribe { patterns, reply }) = s.poll_action() else {
        panic!("subscribe action expected");
    };
    assert_eq!(patterns.len(), 2, "duplicates collapse");
    s.confirm(reply);
    let out = frames(&mut s);
    assert_eq!(
        out[0],
        serde_json::json!({"type":"subscribed","id":3,"channels":["odin.token.*.trade","odin.global.>"]})
    );
    assert_eq!(s.subscriptions().count(), 2);
}

#[test]
fn invalid_channels_are_named_and_nothing_is_applied() {
    let mut s = session(SessionConfig::default());
    let out = request(
        &mut s,
        r#"{"type":"subscribe","channels":["ok.one","bad..x","a.>.b"]}"#,
    );
    assert_eq!(out[0]["code"], "invalid_subject");
    let message = out[0]["message"].as_str().expect("text");
    assert!(
        message.contains("bad..x") && message.contains("a.>.b"),
        "{message}"
    );
    assert!(message.contains("nothing was subscribed"), "{message}");
    assert!(!message.contains("ok.one"), "{message}");
    assert_eq!(s.subscriptions().count(), 0);
}

#[test]
fn subscription_limit_is_enforced() {
    let mut s = session(SessionConfig {
        max_subscriptions: 2,
        ..SessionConfig::default()
    });
    request(&mut s, r#"{"type":"subscribe","channels":["a","b"]}"#);
    let out = request(&mut s, r#"{"type":"subscribe","channels":["a","c"]}"#);
    assert_eq!(out[0]["code"], "too_many_subscriptions");
    // Re-subscribing to what is held is fine.
    let out = request(&mut s, r#"{"type":"subscribe","channels":["b"]}"#);
    assert_eq!(out[0]["type"], "subscribed");
}

#[test]
fn unsubscribe_reports_and_removes() {
    let mut s = session(SessionConfig::default());
    request(&mut s, r#"{"type":"subscribe","channels":["a.*","b"]}"#);
    s.handle_text(r#"{"type":"unsubscribe","channels":["a.*","zzz"]}"#, ms(2));
    let Some(Action::Unsubscribe { patterns, reply }) = s.poll_action() else {
        panic!("unsubscribe action expected");
    };
    assert_eq!(patterns, vec![Pattern::parse("a.*").expect("valid")]);
    s.confirm(reply);
    assert_eq!(
        frames(&mut s)[0]["channels"],
        serde_json::json!(["a.*", "zzz"])
    );
    assert_eq!(s.subscriptions().count(), 1);
}

#[test]
fn bad_frames_get_errors_never_silence() {
    let mut s = session(SessionConfig::default());
    for (text, code) in [
        ("{", "invalid_json"),
        (r#"{"type":"nope"}"#, "unknown_type"),
        (r#"{"type":"subscribe","channels":[]}"#, "invalid_message"),
        (
            r#"{"type":"replay","from_seq":5,"to_seq":1}"#,
            "invalid_range",
        ),
        (
            r#"{"type":"replay","from_seq":1,"to_seq":1}"#,
            "invalid_range",
        ),
    ] {
        let out = request(&mut s, text);
        assert_eq!(out.len(), 1, "{text}");
        assert_eq!(out[0]["type"], "error", "{text}");
        assert_eq!(out[0]["code"], code, "{text}");
    }
    s.handle_binary(ms(3));
    assert_eq!(frames(&mut s)[0]["code"], "binary_not_supported");
    assert_eq!(
        request(&mut s, r#"{"type":"heartbeat","id":"h"}"#)[0],
        serde_json::json!({"type":"pong","id":"h"})
    );
}

#[test]
fn messages_are_numbered_from_one_and_replayed_with_a_gap() {
    let mut s = session(SessionConfig {
        replay_window: 5,
        ..SessionConfig::default()
    });
    for sseq in 100..110 {
        assert_eq!(
            s.deliver(&published("a.b", sseq, Priority::Medium), ms(1)),
            Delivery::Queued(sseq - 99)
        );
    }
    let live = frames(&mut s);
    let seqs: Vec<u64> = live
        .iter()
        .map(|f| f["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    assert_eq!(live[0]["sseq"], 100);

    let out = request(
        &mut s,
        r#"{"type":"replay","from_seq":4,"to_seq":7,"id":1}"#,
    );
    assert_eq!(
        out[0],
        serde_json::json!({"type":"replay_gap","id":1,"from_seq":4,"to_seq":7,"oldest_seq":6})
    );
    assert_eq!(out[1]["seq"], 6);
    assert_eq!(out[1]["replayed"], true);
    assert_eq!(out[1]["sseq"], 105);
    assert_eq!(out[2]["seq"], 7);
    assert_eq!(out[3]["type"], "replay_done");
    // Replay does not advance seq.
    assert_eq!(s.next_seq(), 11);
}

#[test]
fn slow_client_is_throttled_then_disconnected_and_critical_always_goes() {
    let mut s = session(SessionConfig {
        outbound_queue_bytes: 200,
        ..SessionConfig::default()
    });
    let mut outcomes = Vec::new();
    for sseq in 1..=200 {
        outcomes.push(s.deliver(&published("a.b", sseq, Priority::Medium), ms(sseq)));
        if sseq % 10 == 0 {
            // Critical messages get through whatever the level.
            let c = s.deliver(&published("a.b", 1000 + sseq, Priority::Critical), ms(sseq));
            assert!(
                matches!(c, Delivery::Queued(_) | Delivery::DroppedClosing),
                "critical: {c:?}"
            );
        }
        if s.is_closed() {
            break;
        }
    }
    assert!(outcomes.contains(&Delivery::QueueFull));
    assert!(outcomes.contains(&Delivery::Throttled));
    assert!(s.is_closed());
    let actions = apply(&mut s);
    assert!(matches!(
        actions.last(),
        Some(Action::Close {
            reason: CloseReason::TooSlow | CloseReason::TooSlowForCritical,
            ..
        })
    ));
    let out = frames(&mut s);
    let notices: Vec<u64> = out
        .iter()
        .filter(|f| f["type"] == "throttle_update")
        .map(|f| f["level"].as_u64().expect("level"))
        .collect();
    assert_eq!(notices, [1, 2, 3]);
    assert_eq!(s.stats().throttle_changes, 3);
    // Every message the client did not get is accounted for: the `dropped`
    // on the messages it did get add up to what the session skipped
    // (minus what was skipped after its last delivery).
    let told: u64 = out.iter().filter_map(|f| f["dropped"].as_u64()).sum();
    let skipped = u64::from(s.stats().throttled + s.stats().queue_full);
    assert!(
        told > 0 && told <= skipped,
        "told {told}, skipped {skipped}"
    );
    assert_eq!(told + u64::from(s.dropped), skipped);
}

#[test]
fn the_next_message_after_drops_says_how_many_were_dropped() {
    let mut s = session(SessionConfig {
        outbound_queue_bytes: 100,
        ..SessionConfig::default()
    });
    // The first fits, the others do not (queue full): nothing is written.
    let outcomes: Vec<Delivery> = (1..=5)
        .map(|sseq| s.deliver(&published("a.b", sseq, Priority::Medium), ms(0)))
        .collect();
    assert_eq!(outcomes[0], Delivery::Queued(1));
    assert!(
        outcomes[1..].iter().all(|d| *d == Delivery::QueueFull),
        "{outcomes:?}"
    );
    let first = frames(&mut s);
    let messages: Vec<&Value> = first.iter().filter(|f| f["type"] == "message").collect();
    assert!(messages.iter().all(|f| f.get("dropped").is_none()));
    // The client catches up; the next live message carries the count,
    // whatever the throttle did meanwhile, and the one after it does not.
    let mut next = 6;
    let carried = loop {
        let d = s.deliver(&published("a.b", next, Priority::Medium), ms(next));
        next += 1;
        if let Delivery::Queued(_) = d {
            let f = frames(&mut s);
            let m = f.iter().find(|f| f["type"] == "message").expect("message");
            break m["dropped"].as_u64().expect("dropped present");
        }
        frames(&mut s);
    };
    let skipped = u64::from(s.stats().throttled + s.stats().queue_full);
    assert_eq!(carried, skipped);
    assert!(carried >= 3);
    s.deliver(&published("a.b", next, Priority::Critical), ms(next));
    let f = frames(&mut s);
    assert!(f[0].get("dropped").is_none(), "{}", f[0]);
}

#[test]
fn replayed_and_recovered_frames_never_carry_dropped() {
    let mut s = session(SessionConfig {
        outbound_queue_bytes: 100,
        ..SessionConfig::default()
    });
    for sseq in 1..=4 {
        s.deliver(&published("a.b", sseq, Priority::Medium), ms(0));
    }
    frames(&mut s);
    let out = request(&mut s, r#"{"type":"replay","from_seq":1,"to_seq":2}"#);
    assert!(out.iter().all(|f| f.get("dropped").is_none()), "{out:?}");
    assert!(s.dropped > 0, "still owed to the next live message");
}

#[test]
fn throttle_recovers_and_tells_the_client() {
    let mut s = session(SessionConfig {
        outbound_queue_bytes: 100,
        ..SessionConfig::default()
    });
    for sseq in 1..=4 {
        s.deliver(&published("a.b", sseq, Priority::Medium), ms(0));
    }
    assert_eq!(s.throttle_level(), ThrottleLevel::Light);
    frames(&mut s);
    let due = s.poll_timeout().expect("a timeout");
    assert!(due <= ms(30_000));
    s.on_heard(ms(29_000));
    s.handle_timeout(ms(30_000));
    assert_eq!(s.throttle_level(), ThrottleLevel::None);
    let out = frames(&mut s);
    assert_eq!(out[0]["type"], "throttle_update");
    assert_eq!(out[0]["rate_percent"], 100);
}

#[test]
fn heartbeat_pings_then_closes_an_idle_client() {
    let mut s = session(SessionConfig::default());
    assert_eq!(s.poll_timeout(), Some(ms(25_000)));
    s.handle_timeout(ms(25_000));
    assert_eq!(apply(&mut s), [Action::Ping]);
    assert_eq!(s.poll_timeout(), Some(ms(50_000)));
    s.on_heard(ms(30_000));
    assert_eq!(s.poll_timeout(), Some(ms(55_000)));
    s.handle_timeout(ms(55_000));
    assert_eq!(apply(&mut s), [Action::Ping]);
    s.handle_timeout(ms(80_000));
    assert_eq!(apply(&mut s), [Action::Ping]);
    s.handle_timeout(ms(90_000));
    assert!(matches!(
        apply(&mut s).as_slice(),
        [Action::Close {
            reason: CloseReason::Idle,
            ..
        }]
    ));
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn inbound_rate_limit_answers_then_closes() {
    let mut s = session(SessionConfig {
        client_rate_per_sec: 1,
        client_burst: 2,
        ..SessionConfig::default()
    });
    let ping = r#"{"type":"ping","id":1}"#;
    assert_eq!(request(&mut s, ping)[0]["type"], "pong");
    assert_eq!(request(&mut s, ping)[0]["type"], "pong");
    let limited = request(&mut s, ping);
    assert_eq!(limited[0]["code"], "rate_limited");
    assert_eq!(limited[0]["id"], 1);
    request(&mut s, ping);
    s.handle_text(ping, ms(1));
    assert!(s.is_closed());
    assert!(matches!(
        apply(&mut s).last(),
        Some(Action::Close {
            reason: CloseReason::RateLimited,
            ..
        })
    ));
}

#[test]
fn oversized_frame_closes_with_1009() {
    let mut s = session(SessionConfig {
        max_message_bytes: 600,
        ..SessionConfig::default()
    });
    s.handle_text(&"x".repeat(601), ms(1));
    assert!(matches!(
        apply(&mut s).as_slice(),
        [Action::Close {
            reason: CloseReason::MessageTooBig,
            ..
        }]
    ));
}

#[test]
fn resume_recovers_then_dedupes_the_live_seam() {
    let mut s = session(SessionConfig::default());
    request(&mut s, r#"{"type":"subscribe","channels":["other.x"]}"#);
    s.handle_text(
        r#"{"type":"resume","id":"r","channels":["a.*"],"since_sseq":10}"#,
        ms(1),
    );
    let Some(Action::Resume {
        subscribe,
        patterns,
        since_sseq,
        ..
    }) = s.poll_action()
    else {
        panic!("resume action expected");
    };
    assert_eq!(since_sseq, 10);
    assert_eq!(subscribe, patterns);
    // Live traffic arrives while the fetch runs: 12 is also in the fetch,
    // 13 is on a subject the resume does not cover.
    for (subject, sseq) in [("a.b", 12), ("other.x", 13)] {
        assert_eq!(
            s.deliver(&published(subject, sseq, Priority::Medium), ms(2)),
            Delivery::Held
        );
    }
    assert_eq!(s.resume_fetched("e1", Some(11), 14), Recovery::Feed);
    for (subject, sseq) in [("a.b", 11), ("a.b", 12), ("a.c", 14)] {
        s.recover(&published(subject, sseq, Priority::Medium))
            .expect("room");
    }
    s.resume_complete(14, ms(3));
    // The live consumer lags: its copy of 14 arrives after completion.
    assert_eq!(
        s.deliver(&published("a.c", 14, Priority::Medium), ms(4)),
        Delivery::Duplicate
    );
    assert_eq!(
        s.deliver(&published("a.b", 15, Priority::Medium), ms(4)),
        Delivery::Queued(5)
    );
    // Past the floor nothing is treated as a duplicate any more.
    assert_eq!(s.stats().duplicates, 2);
    let out = frames(&mut s);
    let summary: Vec<String> = out
        .iter()
        .map(|f| match f["type"].as_str() {
            Some("message") => format!(
                "seq {} sseq {}{}",
                f["seq"],
                f["sseq"],
                if f["recovered"] == true {
                    " recovered"
                } else {
                    ""
                }
            ),
            Some(t) => t.to_owned(),
            None => "?".into(),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "seq 1 sseq 11 recovered",
            "seq 2 sseq 12 recovered",
            "seq 3 sseq 14 recovered",
            "resumed",
            "seq 4 sseq 13",
            "seq 5 sseq 15",
        ]
        .map(String::from)
        .to_vec()
    );
    assert_eq!(out[3]["last_sseq"], 14);
    assert_eq!(out[3]["id"], "r");
    assert_eq!(out[3]["epoch"], "e1");
}

#[test]
fn resume_past_expired_messages_reports_the_gap_first() {
    let mut s = session(SessionConfig::default());
    request(
        &mut s,
        r#"{"type":"resume","channels":["a.b"],"since_sseq":10,"epoch":"e1"}"#,
    );
    assert_eq!(s.resume_fetched("e1", Some(15), 16), Recovery::Feed);
    for sseq in [15, 16] {
        s.recover(&published("a.b", sseq, Priority::Medium))
            .expect("room");
    }
    s.resume_complete(16, ms(2));
    let out = frames(&mut s);
    let kinds: Vec<&str> = out
        .iter()
        .map(|f| f["type"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(kinds, ["resume_gap", "message", "message", "resumed"]);
    assert_eq!(out[0]["oldest_sseq"], 15);
    assert!(out[0].get("epoch_changed").is_none(), "{}", out[0]);
}

/// A client resuming with a position from another stream (the embedded
/// broker restarted, or the JetStream stream was recreated) is told its
/// position means nothing here, and recovers nothing.
#[test]
fn resume_with_another_epoch_recovers_nothing_and_says_so() {
    let mut s = session(SessionConfig::default());
    request(
        &mut s,
        r#"{"type":"resume","id":4,"channels":["a.b"],"since_sseq":800,"epoch":"old"}"#,
    );
    assert!(s.is_resuming());
    assert_eq!(s.resume_fetched("new", Some(1), 3), Recovery::Skip);
    s.resume_complete(3, ms(2));
    // Live traffic after the stream position flows normally.
    assert_eq!(
        s.deliver(&published("a.b", 4, Priority::Medium), ms(3)),
        Delivery::Queued(1)
    );
    let out = frames(&mut s);
    assert_eq!(out[0]["type"], "resume_gap");
    assert_eq!(out[0]["epoch_changed"], true);
    assert_eq!(out[0]["oldest_sseq"], 1);
    assert_eq!(out[0]["id"], 4);
    assert_eq!(out[1]["type"], "resumed");
    assert_eq!(out[1]["last_sseq"], 3);
    assert_eq!(out[1]["epoch"], "new");
    assert_eq!(out[2]["sseq"], 4);
    assert_eq!(out.len(), 3);
    assert!(s.subscriptions().any(|p| p.as_str() == "a.b"));
}

#[test]
fn epoch_changed_gap_points_past_an_empty_stream() {
    let mut s = session(SessionConfig::default());
    request(
        &mut s,
        r#"{"type":"resume","channels":["a.b"],"since_sseq":5,"epoch":"old"}"#,
    );
    assert_eq!(s.resume_fetched("new", None, 0), Recovery::Skip);
    let out = frames(&mut s);
    assert_eq!(out[0]["oldest_sseq"], 1);
}

#[test]
fn recover_pushes_back_when_the_queue_is_full() {
    let mut s = session(SessionConfig {
        outbound_queue_bytes: 200,
        ..SessionConfig::default()
    });
    request(
        &mut s,
        r#"{"type":"resume","channels":["a.b"],"since_sseq":0}"#,
    );
    let m = published("a.b", 1, Priority::Low);
    s.recover(&m).expect("first fits");
    s.recover(&published("a.b", 2, Priority::Low))
        .expect("second fits");
    assert_eq!(
        s.recover(&published("a.b", 3, Priority::Low)),
        Err(Backpressure)
    );
    frames(&mut s);
    s.recover(&published("a.b", 3, Priority::Low))
        .expect("room after writing");
    assert_eq!(s.stats().recovered, 3);
}

#[test]
fn a_second_resume_while_one_runs_is_refused() {
    let mut s = session(SessionConfig::default());
    request(
        &mut s,
        r#"{"type":"resume","channels":["a.b"],"since_sseq":0}"#,
    );
    let out = request(
        &mut s,
        r#"{"type":"resume","channels":["a.c"],"since_sseq":0}"#,
    );
    assert_eq!(out[0]["code"], "resume_in_progress");
    s.resume_failed("broker down", ms(5));
    assert_eq!(frames(&mut s)[0]["code"], "broker_unavailable");
    assert!(!s.is_resuming());
}

#[test]
fn resume_buffer_overflow_asks_the_client_to_come_back() {
    let mut s = session(SessionConfig {
        resume_buffer_messages: 2,
        ..SessionConfig::default()
    });
    request(
        &mut s,
        r#"{"type":"resume","channels":["a.b"],"since_sseq":0}"#,
    );
    for sseq in 1..=2 {
        assert_eq!(
            s.deliver(&published("a.b", sseq, Priority::Medium), ms(1)),
            Delivery::Held
        );
    }
    assert_eq!(
        s.deliver(&published("a.b", 3, Priority::Medium), ms(1)),
        Delivery::Closed
    );
    assert!(matches!(
        apply(&mut s).last(),
        Some(Action::Close {
            reason: CloseReason::ResumeOverflow,
            ..
        })
    ));
}

#[test]
fn resume_gap_only_when_something_in_range_expired() {
    assert_eq!(resume_gap(10, Some(11), 20), None, "all retained");
    assert_eq!(resume_gap(10, Some(5), 20), None);
    assert_eq!(resume_gap(10, Some(15), 20), Some(15));
    assert_eq!(
        resume_gap(20, Some(25), 20),
        None,
        "nothing newer than since"
    );
    assert_eq!(resume_gap(10, None, 20), Some(21), "everything expired");
    assert_eq!(resume_gap(0, None, 0), None, "empty stream");
}

#[test]
fn idle_memory_is_released_after_the_queue_drains() {
    let mut s = session(SessionConfig::default());
    s.deliver(&published("a.b", 1, Priority::Medium), ms(1));
    assert!(s.has_frames());
    s.release_idle_memory();
    assert!(s.has_frames(), "frames still queued are kept");
    frames(&mut s);
    s.release_idle_memory();
    assert!(s.queue.0.is_none(), "no queue storage left");
    assert!(s.actions.0.is_none(), "no action storage left");
}

/// A client that repeats `replay` without reading cannot take its queue
/// past the hard bound: the replay that would is refused with
/// `queue_full`.
#[test]
fn repeated_replays_stay_within_the_hard_bound() {
    let mut s = session(SessionConfig {
        outbound_queue_bytes: 4096,
        replay_max_bytes: 8192,
        client_burst: 100,
        ..SessionConfig::default()
    });
    for sseq in 1..=40 {
        s.deliver(&published("a.b", sseq, Priority::Critical), ms(0));
    }
    frames(&mut s);
    let mut refused = 0;
    for _ in 0..30 {
        s.handle_text(r#"{"type":"replay","from_seq":1,"to_seq":40}"#, ms(1));
        assert!(s.queued_bytes() <= s.config.hard_queue_bytes());
        while let Some(frame) = s.pop_notice() {
            let v: Value = serde_json::from_slice(&frame.to_bytes()).expect("JSON");
            refused += u32::from(v["code"] == "queue_full");
        }
    }
    assert!(refused > 0, "no replay was refused");
}

/// The welcome is the first frame even when a request (answered with a
/// notice) is handled before anything was written.
#[test]
fn the_welcome_precedes_an_early_answer() {
    let mut s = Session::new(id(), Arc::new(SessionConfig::default()), ms(0), None);
    s.handle_text(r#"{"type":"ping"}"#, ms(0));
    s.handle_text("nope", ms(0));
    let out = frames(&mut s);
    assert_eq!(out[0]["type"], "welcome");
    assert_eq!(out[1]["type"], "pong");
    assert_eq!(out[2]["type"], "error");
}
