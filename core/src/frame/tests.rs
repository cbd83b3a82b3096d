use std::time::Duration;

use super::decode::unmask;
use super::*;
use crate::Instant;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn limits(max_message_bytes: usize) -> DecodeLimits {
    DecodeLimits::text(max_message_bytes)
}

/// A client frame: first byte `b0` (FIN, RSV, opcode), masked payload with
/// the shortest length encoding.
fn client_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    masked_frame(b0, payload, mask)
}

/// Feeds `bytes` in one piece and drains: the events, then the error if any.
fn decode(decoder: &mut FrameDecoder, bytes: &[u8]) -> (Vec<Event>, Option<FrameError>) {
    let mut input = bytes;
    let mut events = Vec::new();
    loop {
        match decoder.feed(&mut input) {
            Ok(Some(event)) => events.push(event),
            Ok(None) => {
                assert!(input.is_empty(), "Ok(None) must consume all input");
                return (events, None);
            }
            Err(error) => return (events, Some(error)),
        }
    }
}

fn decode_fresh(bytes: &[u8]) -> (Vec<Event>, Option<FrameError>) {
    decode(&mut FrameDecoder::new(limits(1 << 20)), bytes)
}

fn error_of(bytes: &[u8]) -> FrameError {
    match decode_fresh(bytes) {
        (_, Some(error)) => error,
        (events, None) => panic!("expected an error, got {events:?}"),
    }
}

fn text(s: &str) -> Event {
    Event::Text(s.to_owned())
}

// RFC 6455 §5.7 examples.

#[test]
fn rfc_unmasked_hello_is_rejected_from_a_client() {
    let error = error_of(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    assert_eq!(error, FrameError::Unmasked);
    assert_eq!(error.close_code(), 1002);
}

#[test]
fn rfc_masked_hello() {
    let bytes = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(decode_fresh(&bytes), (vec![text("Hello")], None));
    assert_eq!(client_frame(0x81, b"Hello", MASK), bytes);
}

#[test]
fn rfc_masked_hello_split_at_every_byte() {
    let bytes = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let mut decoder = FrameDecoder::new(limits(100));
    let mut events = Vec::new();
    for byte in bytes {
        let (got, error) = decode(&mut decoder, &[byte]);
        assert_eq!(error, None);
        events.extend(got);
    }
    assert_eq!(events, vec![text("Hello")]);
}

#[test]
fn rfc_fragmented_hello() {
    let mut bytes = client_frame(0x01, b"Hel", MASK);
    bytes.extend(client_frame(0x80, b"lo", [1, 2, 3, 4]));
    assert_eq!(decode_fresh(&bytes), (vec![text("Hello")], None));
}

#[test]
fn rfc_ping_and_pong_hello() {
    let ping = [
        0x89, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let pong = [
        0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(
        decode_fresh(&[ping, pong].concat()),
        (
            vec![
                Event::Ping(b"Hello".to_vec()),
                Event::Pong(b"Hello".to_vec())
            ],
            None
        )
    );
}

#[test]
fn rfc_256_byte_and_64_kib_lengths() {
    let binary = client_frame(0x82, &[7; 256], MASK);
    assert_eq!(binary[..4], [0x82, 0xFE, 0x01, 0x00]);
    assert_eq!(
        decode_fresh(&binary),
        (
            vec![Event::Binary {
                len: 256,
                payload: None
            }],
            None
        )
    );

    let binary = client_frame(0x82, &vec![7; 65536], MASK);
    assert_eq!(binary[..10], [0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0]);
    assert_eq!(
        decode_fresh(&binary),
        (
            vec![Event::Binary {
                len: 65536,
                payload: None
            }],
            None
        )
    );

    let long = "é".repeat(32768);
    let (events, error) = decode_fresh(&client_frame(0x81, long.as_bytes(), MASK));
    assert_eq!(error, None);
    assert_eq!(events, vec![Event::Text(long)]);
}

#[test]
fn non_minimal_lengths_are_accepted() {
    let mut short_in_16 = vec![0x81, 0x80 | 126, 0, 5];
    short_in_16.extend(MASK);
    short_in_16.extend(b"Hello".iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    assert_eq!(decode_fresh(&short_in_16), (vec![text("Hello")], None));

    let mut short_in_64 = vec![0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 5];
    short_in_64.extend(MASK);
    short_in_64.extend(b"Hello".iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    assert_eq!(decode_fresh(&short_in_64), (vec![text("Hello")], None));
}

#[test]
fn a_16_kib_text_frame_is_one_exact_allocation() {
    let payload = "x".repeat(16 * 1024);
    let (events, error) = decode_fresh(&client_frame(0x81, payload.as_bytes(), MASK));
    assert_eq!(error, None);
    let [Event::Text(decoded)] = events.as_slice() else {
        panic!("expected one text event, got {events:?}");
    };
    assert_eq!(decoded, &payload);
    assert_eq!(
        decoded.capacity(),
        payload.len(),
        "reserved from the header"
    );
}

// Errors and their close codes.

#[test]
fn every_protocol_error_has_its_close_code() {
    let mut high_bit = vec![0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
    high_bit.extend(MASK);
    let cases: Vec<(&str, Vec<u8>, FrameError, u16)> = vec![
        ("unmasked", vec![0x81, 0x00], FrameError::Unmasked, 1002),
        (
            "rsv1",
            client_frame(0xC1, b"x", MASK),
            FrameError::ReservedBits { bits: 0b100 },
            1002,
        ),
        (
            "rsv3",
            client_frame(0x91, b"x", MASK),
            FrameError::ReservedBits { bits: 0b001 },
            1002,
        ),
        (
            "opcode 3",
            client_frame(0x83, b"", MASK),
            FrameError::UnknownOpcode { opcode: 3 },
            1002,
        ),
        (
            "opcode 0xB",
            client_frame(0x8B, b"", MASK),
            FrameError::UnknownOpcode { opcode: 0xB },
            1002,
        ),
        (
            "ping of 126",
            client_frame(0x89, &[0; 126], MASK),
            FrameError::ControlFrameTooLong {
                opcode: OpCode::Ping,
            },
            1002,
        ),
        (
            "fragmented close",
            client_frame(0x08, &[3, 232], MASK),
            FrameError::FragmentedControlFrame {
                opcode: OpCode::Close,
            },
            1002,
        ),
        (
            "continuation first",
            client_frame(0x80, b"x", MASK),
            FrameError::UnexpectedContinuation,
            1002,
        ),
        (
            "text inside a fragmented text",
            [
                client_frame(0x01, b"a", MASK),
                client_frame(0x81, b"b", MASK),
            ]
            .concat(),
            FrameError::MessageInterrupted {
                opcode: OpCode::Text,
            },
            1002,
        ),
        (
            "binary inside a fragmented binary",
            [
                client_frame(0x02, b"a", MASK),
                client_frame(0x02, b"b", MASK),
            ]
            .concat(),
            FrameError::MessageInterrupted {
                opcode: OpCode::Binary,
            },
            1002,
        ),
        (
            "64-bit high bit",
            high_bit,
            FrameError::LengthHighBitSet,
            1002,
        ),
        (
            "too big",
            client_frame(0x82, &[0; 200], MASK),
            FrameError::MessageTooBig {
                len: 200,
                limit: 100,
            },
            1009,
        ),
        (
            "invalid utf-8",
            client_frame(0x81, b"ok \xff", MASK),
            FrameError::InvalidUtf8,
            1007,
        ),
        (
            "utf-8 cut at the end of the message",
            client_frame(0x81, "é".as_bytes().split_at(1).0, MASK),
            FrameError::InvalidUtf8,
            1007,
        ),
        (
            "surrogate in fragments",
            [
                client_frame(0x01, b"a\xed", MASK),
                client_frame(0x80, b"\xa0\x80", MASK),
            ]
            .concat(),
            FrameError::InvalidUtf8,
            1007,
        ),
        (
            "close of one byte",
            client_frame(0x88, &[3], MASK),
            FrameError::CloseCodeTruncated,
            1002,
        ),
        (
            "close 1005",
            client_frame(0x88, &1005u16.to_be_bytes(), MASK),
            FrameError::InvalidCloseCode { code: 1005 },
            1002,
        ),
        (
            "close 999",
            client_frame(0x88, &999u16.to_be_bytes(), MASK),
            FrameError::InvalidCloseCode { code: 999 },
            1002,
        ),
        (
            "close 1004",
            client_frame(0x88, &1004u16.to_be_bytes(), MASK),
            FrameError::InvalidCloseCode { code: 1004 },
            1002,
        ),
        (
            "close 2999",
            client_frame(0x88, &2999u16.to_be_bytes(), MASK),
            FrameError::InvalidCloseCode { code: 2999 },
            1002,
        ),
        (
            "close 5000",
            client_frame(0x88, &5000u16.to_be_bytes(), MASK),
            FrameError::InvalidCloseCode { code: 5000 },
            1002,
        ),
        (
            "close reason not utf-8",
            client_frame(0x88, &[3, 232, b'a', 0xC0], MASK),
            FrameError::InvalidCloseReason,
            1007,
        ),
    ];
    for (name, bytes, expected, code) in cases {
        let mut decoder = FrameDecoder::new(limits(100));
        let (_, error) = decode(&mut decoder, &bytes);
        assert_eq!(error.as_ref(), Some(&expected), "{name}");
        assert_eq!(expected.close_code(), code, "{name}");
        assert!(!expected.to_string().is_empty());
        // The decoder stays failed, whatever comes next.
        let (events, again) = decode(&mut decoder, &client_frame(0x81, b"fine", MASK));
        assert_eq!((events, again), (vec![], Some(expected)), "{name}");
        assert_eq!(decoder.buffered_bytes(), 0, "{name}");
    }
}

#[test]
fn valid_close_frames() {
    let cases: Vec<(Vec<u8>, Option<u16>, &str)> = vec![
        (vec![], None, ""),
        (1000u16.to_be_bytes().to_vec(), Some(1000), ""),
        (
            [&1001u16.to_be_bytes()[..], "bye ✓".as_bytes()].concat(),
            Some(1001),
            "bye ✓",
        ),
        (1014u16.to_be_bytes().to_vec(), Some(1014), ""),
        (3000u16.to_be_bytes().to_vec(), Some(3000), ""),
        (4999u16.to_be_bytes().to_vec(), Some(4999), ""),
    ];
    for (payload, code, reason) in cases {
        let close = Event::Close {
            code,
            reason: reason.to_owned(),
        };
        assert_eq!(
            decode_fresh(&client_frame(0x88, &payload, MASK)),
            (vec![close], None)
        );
    }
}

#[test]
fn too_big_is_decided_from_the_header_before_the_payload() {
    let frame = client_frame(0x81, &[b'a'; 1000], MASK);
    let mut decoder = FrameDecoder::new(limits(999));
    // Only 81 FE 03 E8: no mask, no payload yet.
    let (events, error) = decode(&mut decoder, &frame[..4]);
    assert_eq!(events, vec![]);
    assert_eq!(
        error,
        Some(FrameError::MessageTooBig {
            len: 1000,
            limit: 999
        })
    );
    assert_eq!(decoder.buffered_bytes(), 0);

    // A fragmented message is judged on its running total.
    let mut decoder = FrameDecoder::new(limits(100));
    let first = client_frame(0x01, &[b'a'; 60], MASK);
    let second = client_frame(0x80, &[b'a'; 41], MASK);
    assert_eq!(decode(&mut decoder, &first), (vec![], None));
    assert_eq!(
        decode(&mut decoder, &second[..2]).1,
        Some(FrameError::MessageTooBig {
            len: 101,
            limit: 100
        })
    );

    // Exactly at the limit is fine.
    let mut decoder = FrameDecoder::new(limits(100));
    let last = client_frame(0x80, &[b'a'; 40], MASK);
    assert_eq!(
        decode(&mut decoder, &[first, last].concat()),
        (vec![Event::Text("a".repeat(100))], None)
    );
}

#[test]
fn control_frames_interleave_with_a_fragmented_message() {
    let bytes = [
        client_frame(0x01, "Hé".as_bytes().split_at(2).0, MASK),
        client_frame(0x89, b"p1", [9, 8, 7, 6]),
        client_frame(0x00, "Hé".as_bytes().split_at(2).1, MASK),
        client_frame(0x8A, b"", MASK),
        client_frame(0x00, b"", MASK),
        client_frame(0x80, b"llo", [0, 0, 0, 0]),
    ]
    .concat();
    let expected = vec![
        Event::Ping(b"p1".to_vec()),
        Event::Pong(vec![]),
        text("Héllo"),
    ];
    assert_eq!(decode_fresh(&bytes), (expected.clone(), None));
    // And the same split at every position.
    for cut in 0..bytes.len() {
        let mut decoder = FrameDecoder::new(limits(100));
        let (mut events, error) = decode(&mut decoder, &bytes[..cut]);
        assert_eq!(error, None);
        let (rest, error) = decode(&mut decoder, &bytes[cut..]);
        assert_eq!(error, None);
        events.extend(rest);
        assert_eq!(events, expected, "cut at {cut}");
    }
}

#[test]
fn invalid_utf8_in_a_fragment_fails_before_the_message_ends() {
    let mut decoder = FrameDecoder::new(limits(100));
    let (events, error) = decode(&mut decoder, &client_frame(0x01, b"ab\xc3\x28", MASK));
    assert_eq!((events, error), (vec![], Some(FrameError::InvalidUtf8)));
}

#[test]
fn feed_stops_after_each_event() {
    let bytes = [
        client_frame(0x81, b"one", MASK),
        client_frame(0x81, b"two", MASK),
    ]
    .concat();
    let mut decoder = FrameDecoder::new(limits(100));
    let mut input = &bytes[..];
    assert_eq!(decoder.feed(&mut input), Ok(Some(text("one"))));
    assert_eq!(input.len(), bytes.len() / 2);
    assert_eq!(decoder.feed(&mut input), Ok(Some(text("two"))));
    assert!(input.is_empty());
    assert_eq!(decoder.feed(&mut input), Ok(None));
}

#[test]
fn everything_after_close_is_ignored() {
    let bytes = [
        client_frame(0x88, &1000u16.to_be_bytes(), MASK),
        client_frame(0x81, b"late", MASK),
        vec![0xFF, 0x00],
    ]
    .concat();
    let mut decoder = FrameDecoder::new(limits(100));
    assert_eq!(
        decode(&mut decoder, &bytes),
        (
            vec![Event::Close {
                code: Some(1000),
                reason: String::new()
            }],
            None
        )
    );
    assert_eq!(decode(&mut decoder, b"more"), (vec![], None));
}

#[test]
fn an_idle_decoder_is_small_and_holds_no_heap() {
    let size = std::mem::size_of::<FrameDecoder>();
    // Only a connection with a message partly read holds one (boxed).
    assert!(size <= 96, "FrameDecoder is {size} bytes");
    let mut decoder = FrameDecoder::new(limits(1 << 16));
    assert_eq!(decoder.buffered_bytes(), 0);
    let frame = client_frame(0x01, &[b'a'; 300], MASK);
    assert_eq!(decode(&mut decoder, &frame[..100]), (vec![], None));
    assert!(decoder.buffered_bytes() >= 300);
    let rest = [&frame[100..], &client_frame(0x80, b"", MASK)[..]].concat();
    assert_eq!(
        decode(&mut decoder, &rest),
        (vec![Event::Text("a".repeat(300))], None)
    );
    assert_eq!(decoder.buffered_bytes(), 0);
}

#[test]
fn unmask_matches_the_bytewise_definition() {
    let mask = [0xA1, 0x02, 0x7F, 0xE4];
    for phase in 0..4 {
        for len in [0, 1, 3, 7, 8, 9, 15, 16, 17, 100] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let expected: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[(i + phase) % 4])
                .collect();
            let mut got = data.clone();
            unmask(&mut got, mask, phase);
            assert_eq!(got, expected, "phase {phase}, len {len}");
        }
    }
}

// Encoder.

#[test]
fn header_lengths_at_the_encoding_boundaries() {
    let cases: [(usize, &[u8]); 5] = [
        (0, &[0x81, 0]),
        (125, &[0x81, 125]),
        (126, &[0x81, 126, 0, 126]),
        (65535, &[0x81, 126, 0xFF, 0xFF]),
        (65536, &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
    ];
    for (len, expected) in cases {
        let mut out = [0; MAX_HEADER_LEN];
        let n = encode_header(OpCode::Text, true, len, &mut out);
        assert_eq!(&out[..n], expected, "len {len}");
        assert_eq!(header_len(len), n);
    }
    let mut out = [0; MAX_HEADER_LEN];
    let n = encode_header(OpCode::Continuation, false, 3, &mut out);
    assert_eq!(&out[..n], &[0x00, 3]);
    let n = encode_header(OpCode::Ping, true, 0, &mut out);
    assert_eq!(&out[..n], &[0x89, 0]);
}

#[test]
fn text_frame_from_parts() {
    let mut out = b"queued".to_vec();
    text_frame_into(&mut out, &[b"{\"seq\":1,", b"\"data\":\"Hello\"}"]);
    assert_eq!(&out[..6], b"queued");
    assert_eq!(&out[6..8], &[0x81, 24]);
    assert_eq!(&out[8..], b"{\"seq\":1,\"data\":\"Hello\"}");

    let mut out = Vec::new();
    text_frame_into(&mut out, &[&[b'a'; 100], &[b'b'; 100]]);
    assert_eq!(&out[..4], &[0x81, 126, 0, 200]);
    assert_eq!(out.len(), 204);
}

#[test]
fn control_frames() {
    let mut out = Vec::new();
    close_frame_into(&mut out, 1001, "shutting down");
    assert_eq!(&out[..4], &[0x88, 15, 0x03, 0xE9]);
    assert_eq!(&out[4..], b"shutting down");

    let mut out = Vec::new();
    close_frame_into(&mut out, 1000, "");
    assert_eq!(out, [0x88, 2, 0x03, 0xE8]);

    // 61 two-byte characters are 122 bytes; one more would cross 123.
    let reason = "é".repeat(70);
    let mut out = Vec::new();
    close_frame_into(&mut out, 1008, &reason);
    assert_eq!(out[1], 2 + 122);
    assert_eq!(&out[4..], "é".repeat(61).as_bytes());

    let mut out = Vec::new();
    ping_frame_into(&mut out, b"hi");
    pong_frame_into(&mut out, &[1; 200]);
    assert_eq!(&out[..4], &[0x89, 2, b'h', b'i']);
    assert_eq!(&out[4..6], &[0x8A, 125]);
    assert_eq!(out.len(), 4 + 2 + 125);
}

#[test]
fn opcodes_round_trip_their_bits() {
    for bits in 0..16 {
        if let Some(opcode) = OpCode::from_bits(bits) {
            assert_eq!(opcode.bits(), bits);
            assert_eq!(opcode.is_control(), bits >= 8);
        }
    }
}

// Closing handshake.

#[test]
fn server_initiated_close_waits_for_the_client_then_closes() {
    let mut state = CloseState::new();
    assert!(state.is_open());
    assert!(state.initiate(Instant::from_millis(10), Duration::from_secs(2)));
    assert!(!state.is_open());
    assert!(!state.initiate(Instant::from_millis(20), Duration::from_secs(2)));
    assert_eq!(state.poll_timeout(), Some(Instant::from_millis(2010)));
    assert_eq!(
        state.handle_timeout(Instant::from_millis(2009)),
        CloseAction::None
    );
    assert_eq!(state.on_peer_close(Some(1000)), CloseAction::CloseTcp);
    assert!(state.is_done());
    assert_eq!(state.poll_timeout(), None);
}

#[test]
fn server_initiated_close_gives_up_at_the_deadline() {
    let mut state = CloseState::new();
    assert!(state.initiate(Instant::from_millis(0), Duration::from_secs(1)));
    assert_eq!(
        state.handle_timeout(Instant::from_millis(1000)),
        CloseAction::CloseTcp
    );
    assert!(state.is_done());
    assert_eq!(state.on_peer_close(Some(1000)), CloseAction::None);
}

#[test]
fn client_initiated_close_is_echoed() {
    let mut state = CloseState::new();
    assert_eq!(
        state.on_peer_close(Some(4001)),
        CloseAction::ReplyThenCloseTcp { code: 4001 }
    );
    assert!(state.is_done());
    assert!(!state.initiate(Instant::ZERO, Duration::from_secs(1)));

    let mut state = CloseState::new();
    assert_eq!(
        state.on_peer_close(None),
        CloseAction::ReplyThenCloseTcp { code: 1000 }
    );
}

#[test]
fn protocol_errors_close_without_waiting() {
    let mut state = CloseState::new();
    assert!(state.fail());
    assert!(state.is_done());
    assert_eq!(state.poll_timeout(), None);

    let mut state = CloseState::new();
    assert!(state.initiate(Instant::ZERO, Duration::from_secs(1)));
    assert!(!state.fail(), "the server's Close was already written");

    let mut state = CloseState::new();
    state.on_transport_closed();
    assert!(state.is_done());
    assert_eq!(state.on_peer_close(Some(1000)), CloseAction::None);
}

#[test]
fn binary_payloads_are_kept_only_when_asked_and_every_frame_is_counted() {
    let frames = [
        client_frame(0x02, b"ab", [1, 2, 3, 4]),
        client_frame(0x89, b"", [1, 2, 3, 4]),
        client_frame(0x00, b"", [5, 6, 7, 8]),
        client_frame(0x80, b"cd", [9, 9, 9, 9]),
    ]
    .concat();
    let keep = DecodeLimits {
        max_message_bytes: 1024,
        keep_binary: true,
        compressed: false,
    };
    let mut decoder = FrameDecoder::new(keep);
    let mut input = &frames[..];
    let mut events = Vec::new();
    while let Some(e) = decoder.feed(&mut input).expect("valid") {
        events.push(e);
    }
    assert_eq!(
        events,
        vec![
            Event::Ping(Vec::new()),
            Event::Binary {
                len: 4,
                payload: Some(b"abcd".to_vec())
            }
        ]
    );
    assert_eq!(decoder.frames(), 4);
    let mut skip = FrameDecoder::new(limits(1024));
    let mut input = &frames[..];
    skip.feed(&mut input).expect("ping");
    assert_eq!(
        skip.feed(&mut input).expect("binary"),
        Some(Event::Binary {
            len: 4,
            payload: None
        })
    );
}

/// A fragmented message never holds more than the message limit, however
/// its fragments are sized (growth doubles, but stops at the limit).
#[test]
fn a_fragmented_message_holds_no_more_than_the_limit() {
    let mut decoder = FrameDecoder::new(limits(1000));
    let first = client_frame(0x01, &[b'a'; 600], MASK);
    let second = client_frame(0x00, &[b'b'; 400], MASK);
    let mut input = &first[..];
    assert_eq!(decoder.feed(&mut input), Ok(None));
    // The header of the second fragment (and a byte of it) is in.
    let mut input = &second[..7];
    assert_eq!(decoder.feed(&mut input), Ok(None));
    assert!(
        decoder.buffered_bytes() <= 1000,
        "holds {} bytes",
        decoder.buffered_bytes()
    );
}
