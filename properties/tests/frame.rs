//! Properties of `surge_core::frame`: whatever a client sends, split however
//! the network splits it, decodes to exactly what was sent (or to the same
//! error, never a panic), and every frame the server writes parses back to
//! the payload it was given.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use proptest::sample::Index;
use surge_core::frame::{
    DecodeLimits, Event, FrameDecoder, FrameError, MAX_HEADER_LEN, MAX_REASON_LEN, OpCode,
    close_frame_into, encode_header, header_len, ping_frame_into, pong_frame_into, text_frame_into,
};
use surge_properties::split_at_fractions;

// ---- Counting allocations (for the one-allocation-per-message claim) ----

/// Counts heap allocations made by the current thread, so tests running in
/// parallel do not see each other's.
struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_allocation() {
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

// ---- A client, as a browser would frame messages ----

/// How a frame's length is written: the shortest way, or (as some clients
/// do) in a longer form than needed.
#[derive(Debug, Clone, Copy)]
enum LengthForm {
    Minimal,
    Sixteen,
    SixtyFour,
}

/// One frame on the wire, and what it tells the decoder.
#[derive(Debug, Clone)]
struct WireFrame {
    fin: bool,
    opcode: OpCode,
    payload: Vec<u8>,
    mask: [u8; 4],
    form: LengthForm,
    /// The event the decoder emits once this frame is complete.
    completes: Option<Event>,
}

impl WireFrame {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push((u8::from(self.fin) << 7) | self.opcode.bits());
        let len = self.payload.len();
        let form = match self.form {
            LengthForm::Sixteen if len > 0xFFFF => LengthForm::SixtyFour,
            LengthForm::Minimal if len > 0xFFFF => LengthForm::SixtyFour,
            LengthForm::Minimal if len > 125 => LengthForm::Sixteen,
            // Control frames must use the 7-bit length.
            _ if self.opcode.is_control() => LengthForm::Minimal,
            form => form,
        };
        match form {
            LengthForm::Minimal => out.push(0x80 | len as u8),
            LengthForm::Sixteen => {
                out.push(0x80 | 126);
                out.extend((len as u16).to_be_bytes());
            }
            LengthForm::SixtyFour => {
                out.push(0x80 | 127);
                out.extend((len as u64).to_be_bytes());
            }
        }
        out.extend(self.mask);
        out.extend(
            self.payload
                .iter()
                .zip(self.mask.iter().cycle())
                .map(|(b, m)| b ^ m),
        );
    }
}

#[derive(Debug, Clone)]
enum Payload {
    Text(String),
    Binary(usize),
}

#[derive(Debug, Clone)]
enum Control {
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

impl Control {
    fn frame(&self) -> (OpCode, Vec<u8>, Event) {
        match self {
            Control::Ping(p) => (OpCode::Ping, p.clone(), Event::Ping(p.clone())),
            Control::Pong(p) => (OpCode::Pong, p.clone(), Event::Pong(p.clone())),
        }
    }
}

/// One generated client message: a data message cut into fragments with
/// control frames between them, or a lone control frame.
#[derive(Debug, Clone)]
enum ClientMessage {
    Data {
        payload: Payload,
        /// Where to cut the payload into fragments (bytes; a cut may fall
        /// inside a UTF-8 character, and two equal cuts make an empty one).
        cuts: Vec<Index>,
        /// Control frames sent after the fragment picked by the index.
        interleaved: Vec<(Index, Control)>,
    },
    Control(Control),
}

/// A connection's worth of client frames, optionally ending with a Close.
#[derive(Debug, Clone)]
struct ClientStream {
    messages: Vec<ClientMessage>,
    close: Option<(u16, String)>,
    /// Masks and length forms, used in turn by successive frames.
    framing: Vec<([u8; 4], LengthForm)>,
}

impl ClientStream {
    fn frames(&self) -> Vec<WireFrame> {
        let mut framing = self.framing.iter().cycle();
        let mut frames = Vec::new();
        let mut push = |opcode, fin, payload, completes| {
            let &(mask, form) = framing.next().unwrap_or(&([0; 4], LengthForm::Minimal));
            frames.push(WireFrame {
                fin,
                opcode,
                payload,
                mask,
                form,
                completes,
            });
        };
        for message in &self.messages {
            match message {
                ClientMessage::Control(control) => {
                    let (opcode, payload, event) = control.frame();
                    push(opcode, true, payload, Some(event));
                }
                ClientMessage::Data {
                    payload,
                    cuts,
                    interleaved,
                } => {
                    let (opcode, bytes, event) = match payload {
                        Payload::Text(s) => {
                            (OpCode::Text, s.as_bytes().to_vec(), Event::Text(s.clone()))
                        }
                        Payload::Binary(len) => (
                            OpCode::Binary,
                            vec![0xA5; *len],
                            Event::Binary {
                                len: *len,
                                payload: None,
                            },
                        ),
                    };
                    let mut points: Vec<usize> =
                        cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
                    points.sort_unstable();
                    points.push(bytes.len());
                    let fragments = points.len();
                    let mut start = 0;
                    for (i, end) in points.into_iter().enumerate() {
                        let last = i + 1 == fragments;
                        push(
                            if i == 0 { opcode } else { OpCode::Continuation },
                            last,
                            bytes[start..end].to_vec(),
                            last.then(|| event.clone()),
                        );
                        start = end;
                        if !last {
                            for (at, control) in interleaved {
                                if at.index(fragments - 1) == i {
                                    let (opcode, payload, event) = control.frame();
                                    push(opcode, true, payload, Some(event));
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some((code, reason)) = &self.close {
            let payload = [&code.to_be_bytes()[..], reason.as_bytes()].concat();
            let event = Event::Close {
                code: Some(*code),
                reason: reason.clone(),
            };
            push(OpCode::Close, true, payload, Some(event));
        }
        frames
    }
}

fn encode_all(frames: &[WireFrame]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        frame.encode(&mut out);
    }
    out
}

fn text_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..60).prop_map(String::from_iter),
        prop::collection::vec(any::<char>(), 100..400).prop_map(String::from_iter),
        "[a-z{}\":,0-9]{0,300}",
    ]
}

fn control_strategy() -> impl Strategy<Value = Control> {
    let payload = prop::collection::vec(any::<u8>(), 0..=125);
    prop_oneof![
        payload.clone().prop_map(Control::Ping),
        payload.prop_map(Control::Pong),
    ]
}

fn message_strategy() -> impl Strategy<Value = ClientMessage> {
    let payload = prop_oneof![
        4 => text_strategy().prop_map(Payload::Text),
        1 => prop_oneof![0usize..300, 65_530usize..65_540].prop_map(Payload::Binary),
    ];
    let data = (
        payload,
        prop::collection::vec(any::<Index>(), 0..5),
        prop::collection::vec((any::<Index>(), control_strategy()), 0..3),
    )
        .prop_map(|(payload, cuts, interleaved)| ClientMessage::Data {
            payload,
            cuts,
            interleaved,
        });
    prop_oneof![4 => data, 1 => control_strategy().prop_map(ClientMessage::Control)]
}

fn stream_strategy() -> impl Strategy<Value = ClientStream> {
    let form = prop_oneof![
        6 => Just(LengthForm::Minimal),
        1 => Just(LengthForm::Sixteen),
        1 => Just(LengthForm::SixtyFour),
    ];
    let code = prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999];
    let reason = prop::collection::vec(any::<char>(), 0..20)
        .prop_map(String::from_iter)
        .prop_filter("a close reason fits 123 bytes", |r| {
            r.len() <= MAX_REASON_LEN
        });
    (
        prop::collection::vec(message_strategy(), 0..8),
        prop::option::of((code, reason)),
        prop::collection::vec((any::<[u8; 4]>(), form), 1..6),
    )
        .prop_map(|(messages, close, framing)| ClientStream {
            messages,
            close,
            framing,
        })
}

/// Feeds the pieces in order, as a driver would, and collects the events
/// and the error that ended decoding, if any.
fn decode_pieces(limits: DecodeLimits, pieces: &[&[u8]]) -> (Vec<Event>, Option<FrameError>) {
    let mut decoder = FrameDecoder::new(limits);
    let mut events = Vec::new();
    for piece in pieces {
        let mut input = *piece;
        loop {
            match decoder.feed(&mut input) {
                Ok(Some(event)) => events.push(event),
                Ok(None) => {
                    assert!(input.is_empty(), "Ok(None) left {} bytes", input.len());
                    break;
                }
                Err(error) => {
                    assert!(matches!(error.close_code(), 1002 | 1007 | 1009));
                    // A failed decoder stays failed.
                    assert_eq!(decoder.feed(&mut &b"\x81\x80abcd"[..]), Err(error.clone()));
                    assert_eq!(decoder.buffered_bytes(), 0);
                    return (events, Some(error));
                }
            }
        }
    }
    (events, None)
}

/// What the decoder must produce for `frames` under `limit`: each frame's
/// event in order, until a data frame takes its message past the limit.
fn expected(frames: &[WireFrame], limit: usize) -> (Vec<Event>, Option<FrameError>) {
    let mut events = Vec::new();
    let mut message_len = 0u64;
    for frame in frames {
        if !frame.opcode.is_control() {
            if frame.opcode != OpCode::Continuation {
                message_len = 0;
            }
            message_len += frame.payload.len() as u64;
            if message_len > limit as u64 {
                let error = FrameError::MessageTooBig {
                    len: message_len,
                    limit,
                };
                return (events, Some(error));
            }
        }
        events.extend(frame.completes.clone());
    }
    (events, None)
}

// ---- A server's peer: the test-only client-side decoder ----

/// One unmasked server frame parsed from the front of `bytes`: (first byte,
/// payload, bytes used). Panics on anything a correct server never writes.
fn parse_server_frame(bytes: &[u8]) -> (u8, Vec<u8>, usize) {
    assert!(bytes.len() >= 2, "truncated header");
    assert_eq!(bytes[1] & 0x80, 0, "server frames are never masked");
    let (len, header) = match bytes[1] & 0x7F {
        126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
        127 => {
            let mut be = [0; 8];
            be.copy_from_slice(&bytes[2..10]);
            (u64::from_be_bytes(be) as usize, 10)
        }
        n => (usize::from(n), 2),
    };
    assert_eq!(header, header_len(len), "shortest length encoding");
    let payload = bytes[header..header + len].to_vec();
    (bytes[0], payload, header + len)
}

#[derive(Debug, Clone)]
enum ServerFrame {
    Text(Vec<String>),
    Close(u16, String),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

fn server_frame_strategy() -> impl Strategy<Value = ServerFrame> {
    let part = prop_oneof![
        8 => prop::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter),
        1 => (0usize..70_000).prop_map(|n| "x".repeat(n)),
    ];
    prop_oneof![
        4 => prop::collection::vec(part, 0..4).prop_map(ServerFrame::Text),
        1 => (1000u16..5000, prop::collection::vec(any::<char>(), 0..80).prop_map(String::from_iter))
            .prop_map(|(code, reason)| ServerFrame::Close(code, reason)),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(ServerFrame::Ping),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(ServerFrame::Pong),
    ]
}

proptest! {
    #![proptest_config(surge_properties::config("frame", 512))]

    /// Any stream of client messages, however it is split, decodes to
    /// exactly the messages sent, in order.
    #[test]
    fn client_streams_decode_to_what_was_sent(
        stream in stream_strategy(),
        cuts in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let frames = stream.frames();
        let bytes = encode_all(&frames);
        let limits = DecodeLimits::text(1 << 20);
        let (events, error) = decode_pieces(limits, &split_at_fractions(&bytes, &cuts));
        prop_assert_eq!(error, None);
        prop_assert_eq!(events, expected(&frames, usize::MAX).0);
    }

    /// Under a size limit, a message is refused as soon as the header of the
    /// frame that takes it past the limit arrives, and everything before it
    /// is delivered.
    #[test]
    fn the_size_limit_cuts_the_stream_at_the_first_oversized_message(
        stream in stream_strategy(),
        limit in 0usize..500,
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let frames = stream.frames();
        let bytes = encode_all(&frames);
        let got = decode_pieces(DecodeLimits::text(limit), &split_at_fractions(&bytes, &cuts));
        prop_assert_eq!(got, expected(&frames, limit));
    }

    /// Arbitrary bytes never panic, and the outcome (events, then the error
    /// if any) does not depend on how they were split.
    #[test]
    fn arbitrary_bytes_give_the_same_outcome_however_split(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        limit in 0usize..300,
        cuts in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let limits = DecodeLimits::text(limit);
        let whole = decode_pieces(limits, &[&bytes]);
        prop_assert_eq!(decode_pieces(limits, &split_at_fractions(&bytes, &cuts)), whole);
    }

    /// Valid streams with a few bytes corrupted or cut short reach deep into
    /// the decoder; still no panic and the same outcome whole or split.
    #[test]
    fn corrupted_streams_give_the_same_outcome_however_split(
        stream in stream_strategy(),
        corruptions in prop::collection::vec((any::<Index>(), any::<u8>()), 1..4),
        truncate in any::<Index>(),
        cuts in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let mut bytes = encode_all(&stream.frames());
        if !bytes.is_empty() {
            for (at, value) in &corruptions {
                let i = at.index(bytes.len());
                bytes[i] = *value;
            }
        }
        bytes.truncate(truncate.index(bytes.len() + 1));
        let limits = DecodeLimits::text(4096);
        let whole = decode_pieces(limits, &[&bytes]);
        prop_assert_eq!(decode_pieces(limits, &split_at_fractions(&bytes, &cuts)), whole);
    }

    /// Frames the server coalesces into one buffer parse back, one by one,
    /// to the payloads they were given (text parts concatenated, close
    /// reasons cut at a character boundary, control payloads at 125 bytes).
    #[test]
    fn server_frames_round_trip(frames in prop::collection::vec(server_frame_strategy(), 0..6)) {
        let mut out = Vec::new();
        for frame in &frames {
            match frame {
                ServerFrame::Text(parts) => {
                    let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
                    text_frame_into(&mut out, &parts);
                }
                ServerFrame::Close(code, reason) => close_frame_into(&mut out, *code, reason),
                ServerFrame::Ping(p) => ping_frame_into(&mut out, p),
                ServerFrame::Pong(p) => pong_frame_into(&mut out, p),
            }
        }
        let mut rest = &out[..];
        for frame in &frames {
            let (b0, payload, used) = parse_server_frame(rest);
            rest = &rest[used..];
            match frame {
                ServerFrame::Text(parts) => {
                    prop_assert_eq!(b0, 0x81);
                    prop_assert_eq!(String::from_utf8(payload).ok(), Some(parts.concat()));
                }
                ServerFrame::Close(code, reason) => {
                    prop_assert_eq!(b0, 0x88);
                    prop_assert!(payload.len() >= 2 && payload.len() <= 125);
                    prop_assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), *code);
                    let sent = std::str::from_utf8(&payload[2..]);
                    prop_assert!(sent.is_ok(), "reason cut inside a character");
                    let sent = sent.unwrap_or_default();
                    prop_assert!(reason.starts_with(sent));
                    // Cut only when needed, and no more than to a boundary.
                    prop_assert!(
                        sent.len() == reason.len() || sent.len() > MAX_REASON_LEN - 4
                    );
                }
                ServerFrame::Ping(p) | ServerFrame::Pong(p) => {
                    let opcode = if matches!(frame, ServerFrame::Ping(_)) { 0x89 } else { 0x8A };
                    prop_assert_eq!(b0, opcode);
                    prop_assert_eq!(&payload[..], &p[..p.len().min(125)]);
                }
            }
        }
        prop_assert!(rest.is_empty());
    }

    /// `encode_header` writes what `header_len` promises, for every opcode.
    #[test]
    fn encoded_headers_parse_back(len in prop_oneof![0usize..70_000, any::<usize>()], fin in any::<bool>()) {
        for opcode in [OpCode::Continuation, OpCode::Text, OpCode::Binary, OpCode::Close, OpCode::Ping, OpCode::Pong] {
            let mut header = [0; MAX_HEADER_LEN];
            let n = encode_header(opcode, fin, len, &mut header);
            prop_assert_eq!(n, header_len(len));
            prop_assert_eq!(header[0], (u8::from(fin) << 7) | opcode.bits());
            prop_assert_eq!(header[1] & 0x80, 0);
            let decoded = match header[1] {
                126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
                127 => u64::from_be_bytes(header[2..10].try_into().unwrap_or_default()),
                short => u64::from(short),
            };
            prop_assert_eq!(decoded, len as u64);
        }
    }
}

/// A client frame with the shortest length encoding.
fn masked(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let frame = WireFrame {
        fin: b0 & 0x80 != 0,
        opcode: OpCode::from_bits(b0 & 0x0F).unwrap_or(OpCode::Binary),
        payload: payload.to_vec(),
        mask,
        form: LengthForm::Minimal,
        completes: None,
    };
    encode_all(&[frame])
}

#[test]
fn a_16_kib_text_frame_decoded_in_one_feed_allocates_once() {
    let text = "{\"type\":\"subscribe\"}".repeat(16 * 1024 / 20);
    let frame = masked(0x81, text.as_bytes(), [0x12, 0x34, 0x56, 0x78]);
    let limits = DecodeLimits::text(64 * 1024);

    let before = allocations();
    let mut decoder = FrameDecoder::new(limits);
    let mut input = &frame[..];
    let event = decoder.feed(&mut input);
    let used = allocations() - before;

    assert_eq!(used, 1, "one allocation, for the payload");
    assert!(input.is_empty());
    let Ok(Some(Event::Text(decoded))) = event else {
        panic!("expected a text event, got {event:?}");
    };
    assert_eq!(decoded.capacity(), text.len());
    assert_eq!(decoded, text);
    assert_eq!(decoder.buffered_bytes(), 0);
}

#[test]
fn an_idle_decoder_allocates_nothing() {
    let limits = DecodeLimits::text(1024);
    let frames = [
        masked(0x89, b"", [1, 2, 3, 4]),
        masked(0x8A, b"", [1, 2, 3, 4]),
        masked(0x81, b"", [1, 2, 3, 4]),
        masked(0x82, &[9; 300], [1, 2, 3, 4]),
    ]
    .concat();
    let before = allocations();
    let mut decoder = FrameDecoder::new(limits);
    let mut events = Vec::with_capacity(8);
    let after_setup = allocations();
    // A header cut in the middle, then empty messages and a skipped binary
    // one: nothing of it needs the heap.
    for piece in [&frames[..1], &frames[1..5], &frames[5..]] {
        let mut input = piece;
        while let Ok(Some(event)) = decoder.feed(&mut input) {
            events.push(event);
        }
    }
    assert_eq!(allocations() - after_setup, 0);
    assert_eq!(after_setup - before, 1, "only the test's own event list");
    assert_eq!(
        events,
        vec![
            Event::Ping(vec![]),
            Event::Pong(vec![]),
            Event::Text(String::new()),
            Event::Binary {
                len: 300,
                payload: None
            },
        ]
    );
    assert_eq!(decoder.buffered_bytes(), 0);
    // Only a connection with a message partly read holds one (boxed).
    assert!(std::mem::size_of::<FrameDecoder>() <= 96);
}
