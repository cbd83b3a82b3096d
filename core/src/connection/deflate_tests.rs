//! permessage-deflate on a connection: message frames compressed with the
//! shared tail compressed once, small ones left plain, a client's
//! compressed messages inflated and bounded, RSV1 refused where nothing
//! was negotiated.

use std::io::Read;

use super::*;
use crate::admission::ShardId;
use crate::deflate::Deflate;
use crate::protocol::{MessageMark, Priority};
use crate::subjects::Subject;

fn ms(v: u64) -> Instant {
    Instant::from_millis(v)
}

fn conn(serial: u64, deflate: Option<Deflate>) -> Connection {
    let id = ConnId {
        shard: ShardId(0),
        serial,
    };
    let mut c = Connection::new(
        id,
        Arc::new(SessionConfig::default()),
        ms(0),
        Some("e1"),
        b"HTTP/1.1 101\r\n\r\n".to_vec(),
    );
    c.set_deflate(deflate);
    c
}

/// Server frames: (first byte, payload), after the 101.
fn frames(c: &mut Connection, now: Instant) -> Vec<(u8, Vec<u8>)> {
    super::tests::drain_raw(c, now)
}

/// What a browser does with a compressed payload: put the sync tail back
/// and inflate (with flate2's reader, independent of surge's code).
fn browser_inflate(payload: &[u8]) -> String {
    let mut stream = payload.to_vec();
    stream.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::new();
    let _ = flate2::read::DeflateDecoder::new(&stream[..]).read_to_end(&mut out);
    String::from_utf8(out).expect("UTF-8")
}

fn subscribe(c: &mut Connection) {
    c.handle_bytes(
        &crate::frame::masked_frame(
            0x81,
            br#"{"type":"subscribe","channels":["a.>"]}"#,
            [1, 2, 3, 4],
        ),
        ms(1),
    );
    while c.poll_event(ms(1)).is_some() {}
}

#[test]
fn a_message_is_compressed_with_its_tail_shared_across_connections() {
    let data = br#"{"bids":[["64123.50","0.015"],["64123.00","0.020"]],"asks":[["64124.00","0.015"],["64124.50","0.020"]]}"#;
    let m = Published::new(
        Subject::parse("a.b").expect("subject"),
        7,
        Priority::Medium,
        data,
    );
    let mut payloads = Vec::new();
    for (serial, extra) in [(1u64, 0u64), (2, 3)] {
        let mut c = conn(serial, Some(Deflate::full()));
        subscribe(&mut c);
        frames(&mut c, ms(1));
        // Different `seq` on each connection: the second got three first.
        for _ in 0..extra {
            c.deliver(&m, ms(2));
        }
        frames(&mut c, ms(2));
        c.deliver(&m, ms(3));
        let out = frames(&mut c, ms(3));
        assert_eq!(out.len(), 1);
        let (b0, payload) = &out[0];
        assert_eq!(*b0, 0xC1, "FIN, RSV1, text");
        let plain = OutFrame::message(extra + 1, MessageMark::Live, 0, &m).to_bytes();
        assert_eq!(browser_inflate(payload), String::from_utf8_lossy(&plain));
        assert!(
            payload.len() < plain.len(),
            "{} vs {}",
            payload.len(),
            plain.len()
        );
        payloads.push(payload.clone());
    }
    // After each connection's stored head, the same compressed bytes.
    let tail = m.deflated_tail(Deflate::full());
    for p in &payloads {
        assert!(p.ends_with(&tail), "the shared tail ends every payload");
    }
    assert_ne!(payloads[0], payloads[1], "the heads differ (seq 1 and 4)");
}

#[test]
fn small_frames_and_connections_without_the_extension_stay_plain() {
    let m = Published::new(
        Subject::parse("a.b").expect("subject"),
        1,
        Priority::Medium,
        b"1",
    );
    let mut c = conn(1, Some(Deflate::full()));
    subscribe(&mut c);
    let welcome_and_subscribed = frames(&mut c, ms(1));
    // Control frames (welcome, subscribed) are never compressed.
    assert!(welcome_and_subscribed.iter().all(|(b0, _)| *b0 == 0x81));
    c.deliver(&m, ms(2));
    let out = frames(&mut c, ms(2));
    assert_eq!(out[0].0, 0x81, "under compression_min_bytes: plain");
    let big = Published::new(
        Subject::parse("a.b").expect("subject"),
        2,
        Priority::Medium,
        &[b'7'; 200],
    );
    let mut plain = conn(2, None);
    subscribe(&mut plain);
    frames(&mut plain, ms(1));
    plain.deliver(&big, ms(2));
    assert_eq!(
        frames(&mut plain, ms(2))[0].0,
        0x81,
        "not negotiated: plain"
    );
}

#[test]
fn a_clients_compressed_message_is_inflated_and_a_bomb_closes_1009() {
    let mut c = conn(1, Some(Deflate::full()));
    frames(&mut c, ms(0));
    let request = br#"{"type":"subscribe","channels":["a.b","a.c"]}"#;
    let compressed = crate::deflate::compress(request, Deflate::full());
    c.handle_bytes(
        &crate::frame::masked_frame(0xC1, &compressed, [9, 8, 7, 6]),
        ms(1),
    );
    while c.poll_event(ms(1)).is_some() {}
    let out = frames(&mut c, ms(1));
    let reply: serde_json::Value = serde_json::from_slice(&out[0].1).expect("JSON");
    assert_eq!(reply["type"], "subscribed", "{reply}");

    let bomb = crate::deflate::compress(&vec![b' '; 1 << 20], Deflate::full());
    c.handle_bytes(
        &crate::frame::masked_frame(0xC1, &bomb, [9, 8, 7, 6]),
        ms(2),
    );
    let out = frames(&mut c, ms(2));
    let (b0, close) = out.last().expect("a close");
    assert_eq!(*b0 & 0x0F, 0x8);
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1009);
}

#[test]
fn rsv1_without_the_extension_is_a_protocol_error() {
    let mut c = conn(1, None);
    frames(&mut c, ms(0));
    let compressed = crate::deflate::compress(br#"{"type":"ping"}"#, Deflate::full());
    c.handle_bytes(
        &crate::frame::masked_frame(0xC1, &compressed, [9, 8, 7, 6]),
        ms(1),
    );
    let out = frames(&mut c, ms(1));
    let (_, close) = out.last().expect("a close");
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1002);
}
