//! The gateway over real loopback sockets with real WebSocket clients.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use surge_core::protocol::Priority;
use surge_runtime::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

mod common;

use common::{
    WAIT, client, connect, metric, next_json, publish, publish_with, raw, send, start, subscribe,
    upgrade,
};

#[tokio::test]
async fn subscribers_receive_matching_messages_in_order_with_seq() {
    let gw = start(|_| {}).await;
    let mut exact = client(gw.local_addr()).await;
    let mut wild = client(gw.local_addr()).await;
    subscribe(&mut exact, &["odin.token.BTC.trade"]).await;
    subscribe(&mut wild, &["odin.token.*.trade", "odin.global.>"]).await;
    let subjects = [
        "odin.token.BTC.trade",
        "odin.token.ETH.trade",
        "odin.global.trending",
        "odin.token.BTC.liquidity",
    ];
    for i in 0..40u64 {
        publish(&gw, subjects[(i % 4) as usize], json!({"i": i})).await;
    }
    for (ws, expected) in [(&mut exact, 10u64), (&mut wild, 30u64)] {
        let mut last_sseq = 0;
        for seq in 1..=expected {
            let m = next_json(ws).await;
            assert_eq!(m["type"], "message");
            assert_eq!(m["seq"], seq, "seq numbers each delivered message");
            let sseq = m["sseq"].as_u64().expect("sseq");
            assert!(sseq > last_sseq, "stream order");
            last_sseq = sseq;
            assert_ne!(m["subject"], "odin.token.BTC.liquidity");
        }
    }
    // Unsubscribed channels stop.
    send(
        &mut wild,
        json!({"type":"unsubscribe","channels":["odin.token.*.trade"]}),
    )
    .await;
    assert_eq!(next_json(&mut wild).await["type"], "unsubscribed");
    publish(&gw, "odin.token.BTC.trade", json!(1)).await;
    publish(&gw, "odin.global.trending", json!(2)).await;
    let m = next_json(&mut wild).await;
    assert_eq!(m["subject"], "odin.global.trending");
    assert_eq!(m["seq"], 31);
    gw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn replay_serves_retained_frames_and_reports_the_gap() {
    let gw = start(|c| c.session.replay_window = 5).await;
    let mut ws = client(gw.local_addr()).await;
    subscribe(&mut ws, &["a.b"]).await;
    for i in 0..10 {
        publish(&gw, "a.b", json!(i)).await;
    }
    for _ in 0..10 {
        next_json(&mut ws).await;
    }
    send(
        &mut ws,
        json!({"type":"replay","from_seq":3,"to_seq":10,"id":"r1"}),
    )
    .await;
    let gap = next_json(&mut ws).await;
    assert_eq!(
        gap,
        json!({"type":"replay_gap","id":"r1","from_seq":3,"to_seq":10,"oldest_seq":6})
    );
    for seq in 6..=10 {
        let m = next_json(&mut ws).await;
        assert_eq!(
            (m["seq"].as_u64(), m["replayed"].as_bool()),
            (Some(seq), Some(true))
        );
        assert_eq!(m["data"], seq - 1);
    }
    assert_eq!(next_json(&mut ws).await["type"], "replay_done");
    gw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn resume_recovers_missed_messages_then_continues_live() {
    let gw = start(|_| {}).await;
    for i in 1..=10 {
        publish(&gw, if i % 2 == 0 { "x.even" } else { "x.odd" }, json!(i)).await;
    }
    let mut ws = client(gw.local_addr()).await;
    send(
        &mut ws,
        json!({"type":"resume","channels":["x.even"],"since_sseq":4}),
    )
    .await;
    for (seq, sseq) in [(1, 6), (2, 8), (3, 10)] {
        let m = next_json(&mut ws).await;
        assert_eq!(m["recovered"], true);
        assert_eq!(
            (m["seq"].as_u64(), m["sseq"].as_u64()),
            (Some(seq), Some(sseq))
        );
    }
    let resumed = next_json(&mut ws).await;
    let epoch = gw
        .broker()
        .epoch()
        .expect("the embedded broker has an epoch");
    assert_eq!(
        resumed,
        json!({"type":"resumed","channels":["x.even"],"last_sseq":10,"epoch":epoch})
    );
    assert_eq!(metric(&gw, "surge_resumes_total"), 1.0);
    assert_eq!(metric(&gw, "surge_messages_recovered_total"), 3.0);
    assert_eq!(metric(&gw, "surge_resume_gaps_total"), 0.0);
    publish(&gw, "x.even", json!(11)).await;
    let live = next_json(&mut ws).await;
    assert_eq!(
        (live["seq"].as_u64(), live["sseq"].as_u64()),
        (Some(4), Some(11))
    );
    assert!(live.get("recovered").is_none());
    gw.shutdown(Duration::from_secs(2)).await;
}

/// The embedded broker starts its sequences over at every start. A client
/// that resumes on the restarted gateway with a position from before (and
/// the epoch it was given then) is told that its position is void, instead
/// of being `resumed` as if nothing was missed.
#[tokio::test]
async fn resume_after_a_restart_reports_the_changed_epoch() {
    let first = start(|_| {}).await;
    let mut ws = connect(first.local_addr()).await;
    let welcome = next_json(&mut ws).await;
    let old_epoch = welcome["epoch"]
        .as_str()
        .expect("welcome has an epoch")
        .to_owned();
    assert_eq!(Some(old_epoch.clone()), first.broker().epoch());
    subscribe(&mut ws, &["x.a"]).await;
    let mut last = 0;
    for i in 1..=8 {
        last = publish(&first, "x.a", json!(i)).await;
        assert_eq!(next_json(&mut ws).await["sseq"], last);
    }
    drop(ws);
    first.shutdown(Duration::from_secs(2)).await;

    let second = start(|_| {}).await;
    let new_epoch = second.broker().epoch().expect("epoch");
    assert_ne!(new_epoch, old_epoch, "a restart must change the epoch");
    for i in 1..=3 {
        publish(&second, "x.a", json!(i)).await;
    }
    let mut ws = connect(second.local_addr()).await;
    assert_eq!(next_json(&mut ws).await["epoch"], new_epoch.as_str());
    send(
        &mut ws,
        json!({"type":"resume","id":1,"channels":["x.a"],"since_sseq":last,"epoch":old_epoch}),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type":"resume_gap","id":1,"epoch_changed":true,"oldest_sseq":1})
    );
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type":"resumed","id":1,"channels":["x.a"],"last_sseq":3,"epoch":new_epoch})
    );
    // Subscribed: live traffic follows.
    publish(&second, "x.a", json!(4)).await;
    let live = next_json(&mut ws).await;
    assert_eq!(
        (live["seq"].as_u64(), live["sseq"].as_u64()),
        (Some(1), Some(4))
    );
    assert_eq!(metric(&second, "surge_resume_gaps_total"), 1.0);
    second.shutdown(Duration::from_secs(2)).await;
}

/// Events only a session sees (error frames, rate-limit refusals, replays)
/// reach their counters, with the values the client observed.
#[tokio::test]
async fn session_events_move_their_counters() {
    let gw = start(|c| {
        c.session.client_rate_per_sec = 1;
        c.session.client_burst = 20;
    })
    .await;
    let mut ws = client(gw.local_addr()).await;
    subscribe(&mut ws, &["t.x"]).await;
    for i in 0..3 {
        publish(&gw, "t.x", json!(i)).await;
        assert_eq!(next_json(&mut ws).await["type"], "message");
    }
    send(&mut ws, json!({"type":"replay","from_seq":1,"to_seq":3})).await;
    for _ in 0..3 {
        assert_eq!(next_json(&mut ws).await["replayed"], true);
    }
    assert_eq!(next_json(&mut ws).await["type"], "replay_done");
    assert_eq!(metric(&gw, "surge_messages_replayed_total"), 3.0);

    let (mut errors, mut rate_limited) = (0u32, 0u32);
    for i in 0..11 {
        send(&mut ws, json!({"type":"dance","id":i})).await;
    }
    // The bucket (burst 20, 1/s) runs dry during these.
    for _ in 0..20 {
        send(&mut ws, json!({"type":"ping"})).await;
    }
    for _ in 0..31 {
        let f = next_json(&mut ws).await;
        if f["type"] == "error" {
            errors += 1;
            rate_limited += u32::from(f["code"] == "rate_limited");
        }
    }
    assert!(rate_limited > 0, "the limit never bit");
    // subscribe, replay, 11 unknown types, 20 pings.
    assert_eq!(metric(&gw, "surge_client_requests_total"), 33.0);
    assert!(errors >= 11 + rate_limited);
    assert_eq!(metric(&gw, "surge_client_errors_total"), f64::from(errors));
    assert_eq!(
        metric(&gw, "surge_client_rate_limited_total"),
        f64::from(rate_limited)
    );
    gw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn every_handshake_rejection_is_a_plain_http_answer() {
    let gw = start(|c| c.handshake.allowed_origins = vec!["https://app.example".into()]).await;
    let addr = gw.local_addr();
    let ok = "Sec-WebSocket-Version: 13\r\nOrigin: https://app.example\r\n";
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "400"),
        (b"POST /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), "405"),
        (
            upgrade(
                "/ws",
                "Sec-WebSocket-Version: 8\r\nOrigin: https://app.example\r\n",
            ),
            "426",
        ),
        (upgrade("/nope", ok), "404"),
        (
            upgrade(
                "/ws",
                "Sec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n",
            ),
            "403",
        ),
        (
            format!("GET /ws HTTP/1.1\r\nX-Big: {}\r\n", "a".repeat(9000)).into_bytes(),
            "431",
        ),
        (upgrade("/ws", ok), "101"),
    ];
    for (request, status) in cases {
        let answer = raw(addr, &request).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "expected {status}, got {answer:?}"
        );
        match status {
            "405" => assert!(answer.contains("Allow: GET")),
            "426" => assert!(answer.contains("Sec-WebSocket-Version: 13")),
            _ => {}
        }
    }
    gw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn full_gateway_answers_503_at_once_and_the_slot_comes_back() {
    let gw = start(|c| c.max_connections = 2).await;
    let addr = gw.local_addr();
    let mut first = client(addr).await;
    let _second = client(addr).await;
    let started = std::time::Instant::now();
    let answer = raw(addr, &upgrade("/ws", "Sec-WebSocket-Version: 13\r\n")).await;
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
    assert!(answer.contains("Retry-After: 5"), "{answer:?}");
    assert!(took < Duration::from_millis(100), "503 took {took:?}");
    assert_eq!(
        metric(&gw, "surge_admission_rejections_total{reason=\"full\"}"),
        1.0
    );
    assert_eq!(
        metric(&gw, "surge_shard_connections{shard=\"0\"}")
            + metric(&gw, "surge_shard_connections{shard=\"1\"}"),
        2.0
    );
    assert_eq!(metric(&gw, "surge_connections"), 2.0);
    first.close(None).await.expect("close");
    // The closed connection's slot is free again.
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.slots_used() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot never released"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _third = client(addr).await;
    assert_eq!(gw.health().connections.current, 2);
    gw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn slowloris_loses_its_slot_at_the_deadline() {
    let gw = start(|c| {
        c.max_connections = 1;
        c.handshake.timeout = Duration::from_millis(300);
    })
    .await;
    let addr = gw.local_addr();
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        gw.slots_used(),
        1,
        "the half-sent handshake holds the only slot"
    );
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, slow.read_to_end(&mut out)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408 "));
    assert_eq!(gw.slots_used(), 0);
    let _ws = client(addr).await;
    gw.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn two_thousand_concurrent_connects_all_succeed() {
    let gw = start(|c| {
        c.max_connections = 2_500;
        c.backlog = 4096;
    })
    .await;
    let addr = gw.local_addr();
    let tasks: Vec<_> = (0..2_000)
        .map(|_| {
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(10), client(addr)).await
            })
        })
        .collect();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("task").expect("connected in time"));
    }
    assert_eq!(gw.health().connections.current, 2_000);
    drop(clients);
    gw.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_closes_clients_with_1001() {
    let gw = Arc::new(start(|_| {}).await);
    let mut ws = client(gw.local_addr()).await;
    assert!(gw.readiness().is_ok());
    let stopping = Arc::clone(&gw);
    let stop = tokio::spawn(async move { stopping.shutdown(Duration::from_secs(2)).await });
    let frame = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("close in time");
    match frame {
        Some(Ok(Message::Close(Some(close)))) => assert_eq!(u16::from(close.code), 1001),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    // The client answers the Close, sees the server's end of stream and
    // closes its socket (the server lingers until then, up to 2 s).
    while let Ok(Some(_)) = tokio::time::timeout(WAIT, ws.next()).await {}
    drop(ws);
    stop.await.expect("shutdown");
    assert!(gw.is_draining() && gw.readiness().is_err());
    assert_eq!(gw.slots_used(), 0);
    assert_eq!(metric(&gw, "surge_disconnects_total{code=\"1001\"}"), 1.0);
}

#[tokio::test]
async fn bad_requests_get_error_frames() {
    let gw = start(|_| {}).await;
    let mut ws = client(gw.local_addr()).await;
    ws.send(Message::Text("{nope".into())).await.expect("send");
    assert_eq!(next_json(&mut ws).await["code"], "invalid_json");
    send(
        &mut ws,
        json!({"type":"subscribe","channels":["a..b"],"id":4}),
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_u64()),
        (Some("invalid_subject"), Some(4))
    );
    send(&mut ws, json!({"type":"ping"})).await;
    assert_eq!(next_json(&mut ws).await, json!({"type":"pong"}));
    gw.shutdown(Duration::from_secs(2)).await;
}

/// A client whose socket stops taking bytes: the server's writes block,
/// its queue fills and drops (counted), and once the client reads again it
/// gets what was kept, in order. That last part only works if the shard
/// asks the poller for writability while bytes wait.
#[tokio::test]
async fn a_client_that_stops_reading_gets_the_rest_when_it_reads_again() {
    let gw = start(|c| c.session.outbound_queue_bytes = 32 * 1024).await;
    let mut ws = slow_client(gw.local_addr()).await;
    subscribe(&mut ws, &["t.x"]).await;

    // 16 MB: more than the kernel buffers the server's socket can fill.
    let payload = "x".repeat(4000);
    for i in 0..4000 {
        publish(&gw, "t.x", json!({ "i": i, "pad": payload })).await;
    }
    let last = publish_with(&gw, "t.x", json!({ "last": true }), Priority::Critical).await;
    let dropped = |gw: &Gateway| {
        gw.metrics_text()
            .lines()
            .find(|l| l.starts_with("surge_messages_dropped_total") && l.contains("queue_full"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };

    // Let the shard finish fanning out: from here on nothing but the
    // socket becoming writable can move the bytes that wait.
    let activity = |gw: &Gateway| -> f64 {
        gw.metrics_text()
            .lines()
            .filter(|l| l.starts_with("surge_messages_"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let mut seen = activity(&gw);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = activity(&gw);
        if now == seen {
            break;
        }
        seen = now;
    }

    // The client reads again. What the server could not write while the
    // socket was full must now arrive: the messages it kept, then either
    // the last (critical) one or, if the throttle gave up on the client
    // first, the 1008 close queued behind them.
    let (mut seqs, mut sseqs) = (Vec::new(), Vec::new());
    let (mut notices, mut told_dropped, mut prev_sseq) = (0.0, 0u64, 0u64);
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the rest arrives once the client reads")
            .expect("stream open")
            .expect("frame ok");
        let m: Value = match frame {
            Message::Text(t) => serde_json::from_str(t.as_str()).expect("JSON"),
            Message::Close(Some(close)) => {
                assert_eq!(u16::from(close.code), 1008, "{close:?}");
                // No later message can carry `dropped`: the reason says
                // what was lost after the last one delivered.
                let reason = close.reason.as_str();
                let lost: u64 = reason
                    .split("; ")
                    .nth(1)
                    .and_then(|r| r.split(' ').next()?.parse().ok())
                    .unwrap_or_else(|| panic!("no count in {reason:?}"));
                assert!(
                    reason.ends_with(&format!("after seq {}", seqs.last().copied().unwrap_or(0))),
                    "{reason}"
                );
                told_dropped += lost;
                break;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        };
        if m["type"] == "throttle_update" {
            notices += 1.0;
        }
        if m["type"] != "message" {
            continue;
        }
        seqs.push(m["seq"].as_u64().expect("seq"));
        let sseq = m["sseq"].as_u64().expect("sseq");
        sseqs.push(sseq);
        // Every publish was on t.x: the messages skipped before this one
        // are exactly the stream sequences between the two deliveries, and
        // the client is told how many.
        let dropped = m["dropped"].as_u64().unwrap_or(0);
        assert_eq!(dropped, sseq - prev_sseq - 1, "dropped on {m}");
        told_dropped += dropped;
        prev_sseq = sseq;
        if sseq == last {
            break;
        }
    }
    assert!(!seqs.is_empty(), "nothing arrived");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seq has a gap");
    assert!(sseqs.windows(2).all(|w| w[1] > w[0]), "sseq went back");
    // Every message was delivered or dropped before the last one arrived.
    assert!(
        dropped(&gw) > 0.0,
        "the queue never filled: the socket never blocked"
    );
    assert!(seqs.len() < 4001, "everything arrived: nothing was dropped");
    assert!(told_dropped > 0, "the client was never told of its losses");
    // The counters agree with what the client was told.
    // (throttled, queue_full, and the queue discarded at a too-slow close)
    let counted: f64 = gw
        .metrics_text()
        .lines()
        .filter(|l| l.starts_with("surge_messages_dropped_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(counted >= told_dropped as f64, "{counted} < {told_dropped}");
    assert!(notices > 0.0, "no throttle_update arrived");
    assert!(metric(&gw, "surge_throttle_changes_total") >= notices);
    gw.shutdown(Duration::from_secs(2)).await;
}

/// Reads everything the server sends until it closes the connection.
async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn a_client_close_is_echoed_and_a_framing_error_closes_with_its_code() {
    let gw = start(|_| {}).await;
    let mut ws = client(gw.local_addr()).await;
    ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 4000.into(),
        reason: "bye".into(),
    }))
    .await
    .expect("close");
    let echoed = loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("expected the close echoed, got {other:?}"),
        }
    };
    assert_eq!(echoed, Some(4000));

    // An unmasked client frame breaks RFC 6455 §5.1: close 1002.
    let mut s = TcpStream::connect(gw.local_addr()).await.expect("connect");
    s.write_all(&upgrade("/ws", "Sec-WebSocket-Version: 13\r\n"))
        .await
        .expect("write");
    s.write_all(&[0x81, 0x02, b'h', b'i']).await.expect("write");
    let bytes = read_to_end(&mut s).await;
    let close = bytes
        .windows(4)
        .rposition(|w| w[0] == 0x88 && w[2..4] == 1002u16.to_be_bytes())
        .is_some();
    assert!(close, "no close frame with 1002 in {bytes:?}");
    gw.shutdown(Duration::from_secs(2)).await;
}

/// Writes `bytes` to `s`; whether all of it went (a reset from the peer
/// stops it).
async fn send_all(s: &mut tokio::net::tcp::OwnedWriteHalf, bytes: &[u8]) -> bool {
    for chunk in bytes.chunks(64 * 1024) {
        if s.write_all(chunk).await.is_err() {
            return false;
        }
    }
    true
}

/// Reads until end of stream or a reset; returns what arrived and
/// whether the stream ended with a reset.
async fn read_until_end(s: &mut tokio::net::tcp::OwnedReadHalf) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(0)) => return (out, false),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => return (out, true),
            Err(_) => panic!("no end within the deadline"),
        }
    }
}

/// A client that sends a 4 MiB message (the limit is 16 KiB) is closed
/// with 1009 from the frame header alone, while it is still sending. The
/// server lingers, reading and discarding, so the client receives the
/// Close frame instead of a reset that would destroy it.
#[tokio::test]
async fn a_client_still_sending_an_oversized_message_receives_the_1009_close() {
    let gw = start(|_| {}).await;
    let stream = TcpStream::connect(gw.local_addr()).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(&upgrade("/ws", "Sec-WebSocket-Version: 13\r\n"))
        .await
        .expect("write");
    let len = 4usize << 20;
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(len as u64).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.resize(frame.len() + len, b'x');
    // Like a client that writes a whole message before it reads: the
    // server keeps reading (and discarding) instead of resetting it.
    assert!(
        send_all(&mut wr, &frame).await,
        "the server reset the client mid-send"
    );
    let (bytes, reset) = read_until_end(&mut rd).await;
    // 101, welcome, then a Close frame with 1009.
    let close = [0x88u8];
    let at = bytes
        .windows(1)
        .rposition(|w| w == close)
        .unwrap_or_else(|| {
            panic!(
                "no Close frame (reset: {reset}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
    assert_eq!(&bytes[at + 2..at + 4], &1009u16.to_be_bytes(), "close code");
    assert!(!reset, "the connection ended with a reset");
    gw.shutdown(Duration::from_secs(2)).await;
}

/// A rejected handshake (404 here) from a client that keeps sending: the
/// answer arrives whole, then a clean end of stream, never a reset.
#[tokio::test]
async fn a_rejection_reaches_a_client_that_keeps_sending() {
    let gw = start(|_| {}).await;
    let stream = TcpStream::connect(gw.local_addr()).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let mut request = upgrade("/elsewhere", "Sec-WebSocket-Version: 13\r\n");
    request.resize(request.len() + (4 << 20), b'z');
    assert!(
        send_all(&mut wr, &request).await,
        "the server reset the client mid-send"
    );
    let (bytes, reset) = read_until_end(&mut rd).await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.starts_with("HTTP/1.1 404 "),
        "{text:?} (reset: {reset})"
    );
    assert!(!reset, "the answer was followed by a reset");
    gw.shutdown(Duration::from_secs(2)).await;
}

/// One client opens a fragmented message and floods empty continuations
/// (then another floods empty pings) on a one-shard gateway: it is closed
/// by the inbound budget (1008), and another client on the same shard
/// keeps receiving its messages without delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_closed_and_cannot_delay_its_shard() {
    let gw = Arc::new(start(|c| c.shards = 1).await);
    let addr = gw.local_addr();
    let mut victim = client(addr).await;
    subscribe(&mut victim, &["t.x"]).await;
    for (opening, filler) in [(vec![0x01u8], 0x00u8), (vec![], 0x89)] {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut rd, mut wr) = stream.into_split();
        wr.write_all(&upgrade("/ws", "Sec-WebSocket-Version: 13\r\n"))
            .await
            .expect("write");
        // An empty masked frame: opcode byte, mask bit, the mask.
        let empty = |b0: u8| [b0, 0x80, 9, 9, 9, 9];
        let mut burst = Vec::new();
        if let [first] = opening[..] {
            burst.extend_from_slice(&empty(first));
        }
        for _ in 0..20_000 {
            burst.extend_from_slice(&empty(filler | if filler == 0 { 0 } else { 0x80 }));
        }
        let flooder = tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while tokio::time::Instant::now() < deadline {
                if wr.write_all(&burst).await.is_err() {
                    break;
                }
            }
        });
        // Meanwhile the victim's messages arrive promptly.
        let mut worst = Duration::ZERO;
        for i in 0..20 {
            let sent = std::time::Instant::now();
            publish(&gw, "t.x", json!(i)).await;
            let m = next_json(&mut victim).await;
            assert_eq!(m["data"], i);
            worst = worst.max(sent.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            worst < Duration::from_millis(250),
            "victim waited {worst:?}"
        );
        let (bytes, _) = read_until_end(&mut rd).await;
        flooder.abort();
        let at = bytes
            .windows(1)
            .rposition(|w| w == [0x88])
            .expect("the flooder got a Close frame");
        assert_eq!(&bytes[at + 2..at + 4], &1008u16.to_be_bytes());
    }
    // The second flooder's connection ends once its linger is over.
    let deadline = tokio::time::Instant::now() + WAIT;
    let ended = "surge_connections_ended_total{reason=\"inbound_budget\"}";
    while metric(&gw, ended) < 2.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "flooders not both ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A reader that stops reading: it is throttled and finally closed for
/// being too slow; when it reads again it finds the throttle notices and
/// the 1008 Close (which did not wait behind the queued data), and its
/// slot is free once it has read them.
#[tokio::test]
async fn a_slow_reader_learns_it_is_throttled_and_why_it_is_closed() {
    let gw = start(|c| {
        c.session.outbound_queue_bytes = 16 * 1024;
        c.session.throttle.full_events_to_escalate = 2;
    })
    .await;
    let mut ws = slow_client(gw.local_addr()).await;
    subscribe(&mut ws, &["t.x"]).await;
    let payload = "y".repeat(2000);
    let mut published = 0;
    while !gw.connections().iter().all(|c| c.closed) && published < 20_000 {
        publish(&gw, "t.x", json!({ "pad": payload })).await;
        published += 1;
    }
    assert!(gw.connections().iter().all(|c| c.closed), "never closed");
    let (mut notices, mut close) = (0, None);
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(WAIT, ws.next()).await {
        match frame {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                notices += u32::from(v["type"] == "throttle_update");
            }
            Message::Close(c) => close = c,
            _ => {}
        }
    }
    assert!(notices > 0, "no throttle_update reached the client");
    let close = close.expect("a Close frame reached the client");
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("too slow"), "{}", close.reason);
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.slots_used() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "slot still held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metric(&gw, "surge_slow_client_disconnects_total"), 1.0);
    gw.shutdown(Duration::from_secs(2)).await;
}

/// A client with a 4 KiB receive buffer, so the server's socket to it
/// fills quickly when it stops reading; its welcome is read.
async fn slow_client(addr: std::net::SocketAddr) -> common::Client {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket.connect(&addr.into()).expect("connect");
    socket.set_nonblocking(true).expect("nonblocking");
    let stream = MaybeTlsStream::Plain(TcpStream::from_std(socket.into()).expect("stream"));
    let (mut ws, response) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .expect("upgrade");
    assert_eq!(response.status(), 101);
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    ws
}

/// Connections still in their handshake hold slots: they are shown in
/// `/health` and `surge_handshakes_in_progress`, count towards being full,
/// and release their slots when they go away.
#[tokio::test]
async fn pending_handshakes_are_shown_and_hold_their_slots() {
    let gw = start(|c| {
        c.max_connections = 5;
        c.shards = 1;
    })
    .await;
    let mut half = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(gw.local_addr()).await.expect("connect");
        s.write_all(b"GET /ws HTTP/1.1\r\nHo").await.expect("write");
        half.push(s);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.health().connections.handshaking < 5 {
        assert!(tokio::time::Instant::now() < deadline, "not all counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let health = gw.health();
    assert_eq!(
        (health.connections.current, health.connections.handshaking),
        (0, 5)
    );
    assert_eq!(metric(&gw, "surge_handshakes_in_progress"), 5.0);
    assert!(gw.readiness().is_err(), "full with handshakes alone");
    let answer = raw(
        gw.local_addr(),
        &upgrade("/ws", "Sec-WebSocket-Version: 13\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    drop(half);
    while gw.health().connections.handshaking > 0 {
        assert!(tokio::time::Instant::now() < deadline, "slots not released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metric(&gw, "surge_handshakes_in_progress"), 0.0);
    gw.shutdown(Duration::from_secs(2)).await;
}
