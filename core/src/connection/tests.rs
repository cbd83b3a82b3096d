use super::*;
use crate::admission::ShardId;
use crate::protocol::Priority;
use crate::subjects::Subject;

fn ms(v: u64) -> Instant {
    Instant::from_millis(v)
}

fn id() -> ConnId {
    ConnId {
        shard: ShardId(0),
        serial: 1,
    }
}

fn config(f: impl FnOnce(&mut SessionConfig)) -> Arc<SessionConfig> {
    let mut c = SessionConfig::default();
    f(&mut c);
    Arc::new(c)
}

fn conn(config: Arc<SessionConfig>) -> Connection {
    Connection::new(
        id(),
        config,
        ms(0),
        Some("e1"),
        b"HTTP/1.1 101\r\n\r\n".to_vec(),
    )
}

/// A masked client frame.
fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    crate::frame::masked_frame(b0, payload, [1, 2, 3, 4])
}

fn text(s: &str) -> Vec<u8> {
    client_frame(0x81, s.as_bytes())
}

/// Server frames in `bytes`: (first byte: FIN, RSV bits, opcode; payload).
fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        let b0 = bytes[0];
        let (len, head) = match bytes[1] & 0x7F {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 => (
                usize::try_from(u64::from_be_bytes(bytes[2..10].try_into().expect("8")))
                    .expect("len"),
                10,
            ),
            n => (usize::from(n), 2),
        };
        out.push((b0, bytes[head..head + len].to_vec()));
        bytes = &bytes[head + len..];
    }
    out
}

/// Applies events like a driver that subscribes and never fetches;
/// returns the ones that are not index changes.
fn events(c: &mut Connection, now: Instant) -> Vec<ConnEvent> {
    let mut other = Vec::new();
    while let Some(e) = c.poll_event(now) {
        match e {
            ConnEvent::Subscribe(_) | ConnEvent::Unsubscribe(_) => {}
            e => other.push(e),
        }
    }
    other
}

/// Writes everything the connection has (a socket that takes it all);
/// returns the frames after the first transmit's 101 is skipped, as
/// (opcode, payload).
pub(super) fn drain(c: &mut Connection, now: Instant) -> Vec<(u8, Vec<u8>)> {
    drain_raw(c, now)
        .into_iter()
        .map(|(b0, payload)| (b0 & 0x0F, payload))
        .collect()
}

/// [`drain`], each frame with its whole first byte (the RSV1 of a
/// compressed message included).
pub(super) fn drain_raw(c: &mut Connection, now: Instant) -> Vec<(u8, Vec<u8>)> {
    let mut scratch = Vec::new();
    let mut all = Vec::new();
    while let Some(bytes) = c.poll_transmit(&mut scratch, now) {
        let bytes = bytes.to_vec();
        c.on_written(bytes.len(), &scratch, now);
        all.extend_from_slice(&bytes);
    }
    let start = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |p| p + 4);
    server_frames(&all[start.min(all.len())..])
}

fn json(frame: &(u8, Vec<u8>)) -> serde_json::Value {
    assert_eq!(frame.0, 1, "a text frame");
    serde_json::from_slice(&frame.1).expect("JSON")
}

fn published(subject: &str, sseq: u64) -> Arc<Published> {
    Published::new(
        Subject::parse(subject).expect("subject"),
        sseq,
        Priority::Medium,
        format!("{{\"n\":{sseq}}}").as_bytes(),
    )
}

#[test]
fn an_idle_connection_stays_small() {
    let size = std::mem::size_of::<Connection>();
    assert!(size <= 328, "Connection is {size} bytes (budget 328)");
}

#[test]
fn the_101_and_welcome_go_out_first_then_requests_are_answered() {
    let mut c = conn(config(|_| {}));
    c.handle_bytes(&text(r#"{"type":"subscribe","channels":["a.b"]}"#), ms(1));
    let ev = c.poll_event(ms(1));
    assert!(
        matches!(ev, Some(ConnEvent::Subscribe(ref p)) if p.len() == 1),
        "{ev:?}"
    );
    let frames = drain(&mut c, ms(1));
    assert_eq!(json(&frames[0])["type"], "welcome");
    assert_eq!(json(&frames[0])["epoch"], "e1");
    assert_eq!(json(&frames[1])["type"], "subscribed");
    assert!(matches!(
        c.deliver(&published("a.b", 1), ms(2)),
        Delivery::Queued(1)
    ));
    let frames = drain(&mut c, ms(2));
    assert_eq!(json(&frames[0])["seq"], 1);
    assert!(!c.wants_write());
}

#[test]
fn a_ping_is_answered_with_a_pong_carrying_its_payload() {
    let mut c = conn(config(|_| {}));
    drain(&mut c, ms(0));
    c.handle_bytes(&client_frame(0x89, b"hi"), ms(1));
    assert_eq!(drain(&mut c, ms(1)), vec![(0xA, b"hi".to_vec())]);
}

#[test]
fn a_client_close_is_echoed_then_writing_shuts_down_and_the_connection_lingers() {
    let mut c = conn(config(|_| {}));
    drain(&mut c, ms(0));
    let mut close = 4000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    c.handle_bytes(&client_frame(0x88, &close), ms(1));
    let frames = drain(&mut c, ms(1));
    assert_eq!(frames, vec![(0x8, 4000u16.to_be_bytes().to_vec())]);
    assert_eq!(events(&mut c, ms(1)), vec![ConnEvent::ShutdownWrite]);
    assert_eq!(c.poll_timeout(), Some(ms(1) + LINGER));
    // Whatever the client still sends is read and discarded.
    c.handle_bytes(&text("late"), ms(2));
    assert!(!c.is_ended());
    c.handle_eof(ms(3));
    assert_eq!(
        events(&mut c, ms(3)),
        vec![ConnEvent::Ended(EndReason::ClientClosed { code: 4000 })]
    );
    assert_eq!(c.poll_event(ms(3)), None, "reported once");
}

#[test]
fn a_linger_ends_at_its_deadline_or_past_its_byte_bound() {
    let mut c = conn(config(|_| {}));
    drain(&mut c, ms(0));
    c.handle_bytes(&client_frame(0x88, &1000u16.to_be_bytes()), ms(1));
    drain(&mut c, ms(1));
    events(&mut c, ms(1));
    c.handle_timeout(ms(1) + LINGER);
    assert_eq!(
        events(&mut c, ms(2000)),
        vec![ConnEvent::Ended(EndReason::ClientClosed { code: 1000 })]
    );

    let mut c = conn(config(|_| {}));
    drain(&mut c, ms(0));
    c.handle_bytes(&client_frame(0x88, &1000u16.to_be_bytes()), ms(1));
    drain(&mut c, ms(1));
    events(&mut c, ms(1));
    c.handle_bytes(&vec![0u8; LINGER_BYTES + 1], ms(2));
    assert!(c.is_ended());
}

#[test]
fn a_protocol_error_closes_with_its_code_and_nothing_after_it() {
    let mut c = conn(config(|_| {}));
    drain(&mut c, ms(0));
    c.deliver(&published("a.b", 1), ms(0));
    // Unmasked frame: 1002.
    c.handle_bytes(&[0x81, 0x01, b'x'], ms(1));
    let frames = drain(&mut c, ms(1));
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].0, 0x8);
    assert_eq!(&frames[0].1[..2], &1002u16.to_be_bytes());
    assert_eq!(events(&mut c, ms(1)), vec![ConnEvent::ShutdownWrite]);
    c.handle_eof(ms(2));
    assert_eq!(
        events(&mut c, ms(2)),
        vec![ConnEvent::Ended(EndReason::ProtocolError { code: 1002 })]
    );
}

#[test]
fn shutdown_writes_what_is_queued_then_the_close_then_waits_for_the_client() {
    let mut c = conn(config(|_| {}));
    c.handle_bytes(&text(r#"{"type":"subscribe","channels":["a.b"]}"#), ms(0));
    events(&mut c, ms(0));
    drain(&mut c, ms(0));
    c.deliver(&published("a.b", 1), ms(1));
    c.close(
        CloseReason::ShuttingDown,
        "server shutting down".into(),
        ms(1),
    );
    let frames = drain(&mut c, ms(1));
    assert_eq!(json(&frames[0])["seq"], 1, "queued data goes first");
    assert_eq!(frames[1].0, 0x8);
    assert_eq!(&frames[1].1[..2], &1001u16.to_be_bytes());
    // Waiting for the client's Close, up to CLOSE_WAIT.
    assert_eq!(c.poll_timeout(), Some(ms(1) + CLOSE_WAIT));
    c.handle_timeout(ms(1) + CLOSE_WAIT);
    assert_eq!(events(&mut c, ms(1001)), vec![ConnEvent::ShutdownWrite]);
    c.handle_timeout(ms(1001) + LINGER);
    assert_eq!(
        events(&mut c, ms(3000)),
        vec![ConnEvent::Ended(EndReason::ServerClosed(
            CloseReason::ShuttingDown
        ))]
    );
}

/// A reader too slow even at the heaviest throttle: the Close jumps the
/// queue (no data after the frame in flight), says what was lost, and
/// the connection is freed at the close, not when the kernel gives up.
#[test]
fn a_too_slow_client_gets_its_close_ahead_of_the_queue_with_the_count() {
    let mut c = conn(config(|c| {
        c.outbound_queue_bytes = 300;
        c.throttle.full_events_to_escalate = 1;
    }));
    c.handle_bytes(&text(r#"{"type":"subscribe","channels":["a.b"]}"#), ms(0));
    events(&mut c, ms(0));
    drain(&mut c, ms(0));
    // The socket takes nothing from here on.
    let mut scratch = Vec::new();
    let mut sseq = 0;
    while !c.session().is_closed() && sseq < 10_000 {
        sseq += 1;
        c.deliver(&published("a.b", sseq), ms(sseq));
        if c.poll_transmit(&mut scratch, ms(sseq)).is_some() {
            c.on_written(0, &scratch, ms(sseq));
        }
        while c.poll_event(ms(sseq)).is_some() {}
    }
    assert!(c.session().is_closed(), "never closed");
    // The socket drains what it refused; then the Close comes, nothing else.
    let frames = drain(&mut c, ms(sseq));
    let close = frames.last().expect("frames");
    assert_eq!(close.0, 0x8);
    assert_eq!(&close.1[..2], &1008u16.to_be_bytes());
    let reason = String::from_utf8(close.1[2..].to_vec()).expect("utf-8");
    assert!(reason.contains("messages dropped after seq"), "{reason}");
    let throttle_updates = frames
        .iter()
        .filter(|f| f.0 == 1 && json(f)["type"] == "throttle_update")
        .count();
    assert!(
        throttle_updates > 0,
        "throttle notices must reach the client"
    );
    // The Close went out right behind the refused bytes: far fewer message
    // frames than were queued.
    assert_eq!(c.poll_timeout(), Some(ms(sseq) + CLOSE_WAIT));
}

#[test]
fn notices_jump_queued_data() {
    let mut c = conn(config(|c| c.outbound_queue_bytes = 1 << 20));
    c.handle_bytes(&text(r#"{"type":"subscribe","channels":["a.b"]}"#), ms(0));
    events(&mut c, ms(0));
    drain(&mut c, ms(0));
    for sseq in 1..=2000 {
        c.deliver(&published("a.b", sseq), ms(1));
    }
    // One chunk goes out and is refused entirely.
    let mut scratch = Vec::new();
    let n = c.poll_transmit(&mut scratch, ms(1)).expect("data").len();
    assert!(n <= WRITE_CHUNK + 200, "{n}");
    c.on_written(0, &scratch, ms(1));
    // A request error while data waits: it comes right after the chunk.
    c.handle_bytes(&text("nope"), ms(2));
    let frames = drain(&mut c, ms(2));
    let error_at = frames
        .iter()
        .position(|f| f.0 == 1 && json(f)["type"] == "error")
        .expect("error frame");
    let messages_before = frames[..error_at]
        .iter()
        .filter(|f| json(f)["type"] == "message")
        .count();
    assert!(
        messages_before < 2000 / 2,
        "the error waited behind {messages_before} messages"
    );
}

#[test]
fn a_flood_of_empty_frames_is_closed_by_the_inbound_budget() {
    let mut c = conn(config(|c| c.inbound_frames_per_sec = 100));
    drain(&mut c, ms(0));
    // A fragmented message kept open with empty continuations.
    let mut flood = client_frame(0x01, b"{");
    for _ in 0..500 {
        flood.extend_from_slice(&client_frame(0x00, b""));
    }
    c.handle_bytes(&flood, ms(10));
    let frames = drain(&mut c, ms(10));
    let close = frames.last().expect("a close");
    assert_eq!(close.0, 0x8);
    assert_eq!(&close.1[..2], &1008u16.to_be_bytes());
    assert!(String::from_utf8_lossy(&close.1[2..]).contains("inbound budget"));
    assert_eq!(
        c.end,
        Some(EndReason::ServerClosed(CloseReason::InboundBudget))
    );

    // Empty pings count too.
    let mut c = conn(config(|c| c.inbound_frames_per_sec = 100));
    drain(&mut c, ms(0));
    let pings: Vec<u8> = (0..101).flat_map(|_| client_frame(0x89, b"")).collect();
    c.handle_bytes(&pings, ms(10));
    assert!(c.session().is_closed());
    // Within budget, a new second starts afresh.
    let mut c = conn(config(|c| c.inbound_frames_per_sec = 100));
    for s in 0..5 {
        let pings: Vec<u8> = (0..90).flat_map(|_| client_frame(0x89, b"")).collect();
        c.handle_bytes(&pings, ms(1000 * s));
        assert!(!c.session().is_closed(), "second {s}");
    }
}

#[test]
fn a_socket_that_stays_full_ends_the_connection_at_the_write_timeout() {
    let mut c = conn(config(|c| c.write_timeout = Duration::from_secs(5)));
    let mut scratch = Vec::new();
    assert!(c.poll_transmit(&mut scratch, ms(0)).is_some());
    c.on_written(0, &scratch, ms(0));
    assert!(c.wants_write());
    assert_eq!(c.poll_timeout(), Some(ms(5000)));
    c.handle_timeout(ms(5000));
    assert_eq!(
        events(&mut c, ms(5000)),
        vec![ConnEvent::Ended(EndReason::WriteTimeout)]
    );
    assert!(EndReason::WriteTimeout.is_too_slow());
}

#[test]
fn a_resume_fetches_then_feeds_then_completes() {
    let mut c = conn(config(|_| {}));
    drain(&mut c, ms(0));
    c.handle_bytes(
        &text(r#"{"type":"resume","channels":["a.b"],"since_sseq":1,"epoch":"e1"}"#),
        ms(1),
    );
    let fetch = c.poll_event(ms(1));
    assert!(
        matches!(fetch, Some(ConnEvent::Fetch { since_sseq: 1, .. })),
        "{fetch:?}"
    );
    // Requests wait while the resume runs.
    c.handle_bytes(&text(r#"{"type":"subscribe","channels":["x.y"]}"#), ms(2));
    assert_eq!(c.poll_event(ms(2)), None);
    c.handle_fetched(
        Ok(Fetched {
            first_retained: Some(1),
            messages: vec![published("a.b", 2), published("a.b", 3)],
            last_sseq: 3,
            epoch: "e1".into(),
        }),
        ms(3),
    );
    assert!(matches!(c.poll_event(ms(3)), Some(ConnEvent::Subscribe(_))));
    let frames = drain(&mut c, ms(3));
    let kinds: Vec<String> = frames
        .iter()
        .map(|f| json(f)["type"].as_str().unwrap_or("?").to_owned())
        .collect();
    assert_eq!(kinds, ["message", "message", "resumed", "subscribed"]);
    assert_eq!(json(&frames[2])["epoch"], "e1");
}

#[test]
fn echo_mode_echoes_text_and_binary_and_sends_no_welcome() {
    let mut c = conn(config(|c| {
        c.echo = true;
        c.inbound_frames_per_sec = 0;
    }));
    c.handle_bytes(&text("hello"), ms(1));
    c.handle_bytes(&client_frame(0x82, &[0, 255, 7]), ms(1));
    assert_eq!(
        drain(&mut c, ms(1)),
        vec![(0x1, b"hello".to_vec()), (0x2, vec![0, 255, 7])]
    );
}
