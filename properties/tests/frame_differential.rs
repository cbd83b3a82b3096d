//! Differential property: surge-core's `FrameDecoder` and tungstenite's
//! server-side reader agree on client byte streams, valid and invalid
//! (masked and unmasked frames, fragmented messages with control frames in
//! between, reserved bits and opcodes, oversized and non-minimally encoded
//! lengths, close frames with every kind of code and reason, truncated
//! streams and trailing garbage).
//!
//! Both are fed the same stream one frame at a time (the frames found by a
//! splitter that only reads lengths; tungstenite reads a server-role
//! `WebSocket` over an in-memory pipe that reports `WouldBlock` when it is
//! drained). After every frame they must have produced the same messages
//! (text, binary, ping, pong, close with its code and reason) and, once
//! one fails, both must fail with the same close code: tungstenite's error
//! mapped as RFC 6455 §7.4.1 says (1009 for a message over the limit, 1007
//! for invalid UTF-8, 1002 for every other protocol error) against
//! `FrameError::close_code`. A Close with a code tungstenite does not allow
//! is reported by tungstenite as a Close with 1002 "Protocol violation":
//! that counts as a 1002 failure.
//!
//! Where they legitimately differ (each has a test of its own below):
//!
//! - **Order of checks.** core checks a header in byte order (reserved
//!   bits, opcode, fragmentation, mask bit, control length, length) and
//!   fails at the first fault; tungstenite checks the frame's length
//!   against its frame limit before anything else. A frame with a
//!   protocol fault *and* a length over the limit is 1002 for core and
//!   1009 for tungstenite.
//! - **Close frame with two faults.** A code no peer may send and a reason
//!   that is not UTF-8: core checks the code first (1002), tungstenite the
//!   reason (1007).
//! - **Control frame length written in 16 or 64 bits.** A control frame
//!   whose 7-bit length is 126 or 127 is refused by core (1002: a control
//!   frame's length must fit the 7-bit field, RFC 6455 §5.2 and §5.5)
//!   even when the extended length is 125 or less; tungstenite accepts it.
//! - **Close code 1014** (Bad Gateway, in the IANA registry) is a code a
//!   peer may send for core; tungstenite 0.30 does not know it and answers
//!   1002.
//! - **Early failure on a partial frame.** core fails as soon as a faulty
//!   header arrives; tungstenite reads the whole frame first (except for
//!   its frame-length limit). A stream that ends inside such a frame has
//!   failed for core and is still pending for tungstenite.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use proptest::prelude::*;
use proptest::sample::Index;
use surge_core::frame::{DecodeLimits, Event, FrameDecoder};
use tungstenite::error::{Error as WsError, ProtocolError};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Message, Role, WebSocket, WebSocketConfig};

// ---- What both sides produce ----

/// A message either side decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

/// What one side did with one frame's bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Step {
    messages: Vec<Msg>,
    /// The close code of the failure, if it failed.
    error: Option<u16>,
}

impl Step {
    fn closed(&self) -> bool {
        matches!(self.messages.last(), Some(Msg::Close(..)))
    }
}

/// core's decoder, fed frame by frame.
struct Core {
    decoder: FrameDecoder,
}

impl Core {
    fn new(limit: usize) -> Self {
        Core {
            decoder: FrameDecoder::new(DecodeLimits {
                max_message_bytes: limit,
                keep_binary: true,
                compressed: false,
            }),
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) -> Step {
        let mut step = Step::default();
        loop {
            match self.decoder.feed(&mut bytes) {
                Ok(Some(event)) => step.messages.push(match event {
                    Event::Text(t) => Msg::Text(t),
                    Event::Binary { payload, len } => {
                        let payload = payload.expect("keep_binary keeps payloads");
                        assert_eq!(payload.len(), len);
                        Msg::Binary(payload)
                    }
                    Event::Ping(p) => Msg::Ping(p),
                    Event::Pong(p) => Msg::Pong(p),
                    Event::Close { code, reason } => Msg::Close(code, reason),
                }),
                Ok(None) => return step,
                Err(e) => {
                    step.error = Some(e.close_code());
                    return step;
                }
            }
        }
    }
}

/// The client's bytes in, the server's replies (pongs, the close echo) out.
#[derive(Default)]
struct Pipe {
    input: Vec<u8>,
    read: usize,
    output: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.input[self.read..];
        if rest.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.read += n;
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// tungstenite's server side over a pipe, fed frame by frame.
struct Tungstenite {
    ws: WebSocket<Pipe>,
}

impl Tungstenite {
    fn new(limit: usize) -> Self {
        // Its frame limit applies to control frames too, core's limit only
        // to messages: control frames (at most 125 bytes) must pass it.
        let config = WebSocketConfig::default()
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit.max(125)));
        Tungstenite {
            ws: WebSocket::from_raw_socket(Pipe::default(), Role::Server, Some(config)),
        }
    }

    /// `frame` is the whole frame the bytes belong to, to read the code a
    /// Close really carried.
    fn feed(&mut self, bytes: &[u8], frame: &RawFrame) -> Step {
        self.ws.get_mut().input.extend_from_slice(bytes);
        let mut step = Step::default();
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => step.messages.push(Msg::Text(t.as_str().to_owned())),
                Ok(Message::Binary(b)) => step.messages.push(Msg::Binary(b.to_vec())),
                Ok(Message::Ping(p)) => step.messages.push(Msg::Ping(p.to_vec())),
                Ok(Message::Pong(p)) => step.messages.push(Msg::Pong(p.to_vec())),
                Ok(Message::Close(close)) => {
                    let sent = frame.close_code();
                    if sent.is_some_and(|code| !CloseCode::from(code).is_allowed()) {
                        // tungstenite replaced a code it does not allow by
                        // 1002 "Protocol violation": a protocol failure.
                        step.error = Some(1002);
                        return step;
                    }
                    step.messages.push(match close {
                        Some(c) => {
                            Msg::Close(Some(u16::from(c.code)), c.reason.as_str().to_owned())
                        }
                        None => Msg::Close(None, String::new()),
                    });
                    return step;
                }
                Ok(Message::Frame(_)) => unreachable!("read never returns raw frames"),
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return step,
                Err(e) => {
                    step.error = Some(close_code_of(&e));
                    return step;
                }
            }
        }
    }
}

/// RFC 6455 §7.4.1: 1009 for a message too big to process, 1007 for data
/// inconsistent with the message type (UTF-8), 1002 for a protocol error.
fn close_code_of(error: &WsError) -> u16 {
    match error {
        WsError::Capacity(_) => 1009,
        WsError::Utf8(_) => 1007,
        WsError::Protocol(
            ProtocolError::ResetWithoutClosingHandshake
            | ProtocolError::SendAfterClosing
            | ProtocolError::HandshakeIncomplete,
        ) => panic!("not a framing error: {error}"),
        WsError::Protocol(_) => 1002,
        other => panic!("unexpected tungstenite error: {other}"),
    }
}

// ---- Frames as the splitter sees them ----

/// One frame found in the stream by its lengths alone, valid or not.
#[derive(Debug, Clone)]
struct RawFrame {
    bytes: Vec<u8>,
    /// The stream ends inside this frame.
    partial: bool,
}

impl RawFrame {
    fn b0(&self) -> u8 {
        self.bytes[0]
    }

    fn fin(&self) -> bool {
        self.b0() & 0x80 != 0
    }

    fn opcode(&self) -> u8 {
        self.b0() & 0x0F
    }

    fn is_control(&self) -> bool {
        self.opcode() & 0x8 != 0
    }

    fn masked(&self) -> Option<bool> {
        self.bytes.get(1).map(|b| b & 0x80 != 0)
    }

    fn len7(&self) -> Option<u8> {
        self.bytes.get(1).map(|b| b & 0x7F)
    }

    /// The declared payload length, once its bytes are there.
    fn len(&self) -> Option<u64> {
        match self.len7()? {
            126 => Some(u64::from(u16::from_be_bytes(
                self.bytes.get(2..4)?.try_into().ok()?,
            ))),
            127 => Some(u64::from_be_bytes(self.bytes.get(2..10)?.try_into().ok()?)),
            n => Some(u64::from(n)),
        }
    }

    fn header_len(&self) -> Option<usize> {
        let extended = match self.len7()? {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        Some(2 + extended + if self.masked()? { 4 } else { 0 })
    }

    /// The payload, unmasked (complete frames only).
    fn payload(&self) -> Option<Vec<u8>> {
        let header = self.header_len()?;
        let mut payload = self.bytes.get(header..)?.to_vec();
        if self.masked()? {
            let mask = &self.bytes[header - 4..header];
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        Some(payload)
    }

    /// The code of a complete Close frame that has one.
    fn close_code(&self) -> Option<u16> {
        if self.opcode() != 0x8 || self.partial {
            return None;
        }
        match self.payload()?.as_slice() {
            [hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
            _ => None,
        }
    }

    /// A fault core finds in the header before it looks at the length
    /// (given whether a fragmented message is in progress).
    fn header_fault(&self, in_progress: bool) -> bool {
        let rsv = self.b0() & 0x70 != 0;
        let bad_opcode = matches!(self.opcode(), 3..=7 | 11..=15);
        let bad_fragment = match self.opcode() {
            0 => !in_progress,
            1 | 2 => in_progress,
            _ => self.is_control() && !self.fin(),
        };
        let unmasked = self.masked() == Some(false);
        let control_len = self.is_control() && self.len7().is_some_and(|n| n > 125);
        let high_bit = self.len().is_some_and(|n| n >> 63 != 0);
        rsv || bad_opcode || bad_fragment || unmasked || control_len || high_bit
    }
}

/// Cuts a stream into frames by their declared lengths; the last may be
/// partial.
fn split_frames(mut bytes: &[u8]) -> Vec<RawFrame> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let probe = RawFrame {
            bytes: bytes.to_vec(),
            partial: true,
        };
        let total = probe
            .header_len()
            .zip(probe.len())
            .and_then(|(h, n)| usize::try_from(n).ok()?.checked_add(h));
        match total {
            Some(total) if total <= bytes.len() => {
                frames.push(RawFrame {
                    bytes: bytes[..total].to_vec(),
                    partial: false,
                });
                bytes = &bytes[total..];
            }
            _ => {
                frames.push(probe);
                break;
            }
        }
    }
    frames
}

// ---- Comparing ----

/// A documented way the two may differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Divergence {
    /// A protocol fault and a length over the limit: 1002 against 1009.
    FaultAndLength,
    /// A Close with a code no peer may send and a reason that is not UTF-8.
    CloseCodeAndReason,
    /// A control frame whose length is written in 16 or 64 bits.
    ControlExtendedLength,
    /// Close code 1014.
    Close1014,
    /// core failed on the header of a frame that has not fully arrived.
    EarlyFailure,
}

/// Feeds `stream` to both; returns the documented divergence met, if any,
/// or an error describing where they disagree.
fn compare(stream: &[u8], limit: usize) -> Result<Option<Divergence>, String> {
    let mut core = Core::new(limit);
    let mut ws = Tungstenite::new(limit);
    let mut in_progress = false;
    for (i, frame) in split_frames(stream).iter().enumerate() {
        let c = core.feed(&frame.bytes);
        let t = ws.feed(&frame.bytes, frame);
        let why = || {
            format!(
                "frame {i} {:02x?} (limit {limit}, fragmented message in progress: {in_progress}):\n  core:        {c:?}\n  tungstenite: {t:?}",
                &frame.bytes[..frame.bytes.len().min(24)]
            )
        };
        if c == t {
            if c.error.is_some() || c.closed() {
                return Ok(None);
            }
            if !frame.partial && !frame.is_control() {
                in_progress = !frame.fin();
            }
            continue;
        }
        let early = frame.partial && c.error.is_some() && t == Step::default();
        let divergence = if early {
            Some(Divergence::EarlyFailure)
        } else {
            classify(frame, in_progress, limit, &c, &t)
        };
        return divergence.map(Some).ok_or_else(why);
    }
    Ok(None)
}

/// Which documented divergence explains `core` against `tung` on a frame
/// (complete, or partial with its length there), if one does.
fn classify(
    frame: &RawFrame,
    in_progress: bool,
    limit: usize,
    core: &Step,
    tung: &Step,
) -> Option<Divergence> {
    let len = frame.len()?;
    if core.error == Some(1002)
        && tung.error == Some(1009)
        && frame.header_fault(in_progress)
        && len > limit.max(125) as u64
    {
        return Some(Divergence::FaultAndLength);
    }
    if frame.partial {
        return None;
    }
    let plain_header = !frame.header_fault(in_progress);
    if frame.opcode() == 0x8 && plain_header {
        let payload = frame.payload()?;
        let code = frame.close_code();
        let core_refuses = |code: u16| !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
        if code.is_some_and(core_refuses)
            && std::str::from_utf8(&payload[2..]).is_err()
            && core.error == Some(1002)
            && tung.error == Some(1007)
        {
            return Some(Divergence::CloseCodeAndReason);
        }
        if code == Some(1014)
            && matches!(core.messages.as_slice(), [Msg::Close(Some(1014), _)])
            && tung.error == Some(1002)
        {
            return Some(Divergence::Close1014);
        }
    }
    let only_fault_is_length_form = frame.is_control()
        && frame.len7().is_some_and(|n| n >= 126)
        && len <= 125
        && frame.b0() & 0x70 == 0
        && matches!(frame.opcode(), 8..=10)
        && frame.fin()
        && frame.masked() == Some(true);
    if only_fault_is_length_form && core.error == Some(1002) && tung.error != Some(1002) {
        return Some(Divergence::ControlExtendedLength);
    }
    None
}

// ---- Generating client streams ----

#[derive(Debug, Clone, Copy)]
enum Form {
    Minimal,
    Sixteen,
    SixtyFour,
}

/// A frame to put on the wire, faults and all.
#[derive(Debug, Clone)]
struct WireFrame {
    b0: u8,
    masked: bool,
    mask: [u8; 4],
    form: Form,
    payload: Vec<u8>,
    /// A declared length other than the payload's (the stream then ends
    /// inside this frame, or it claims more than any limit).
    declared: Option<u64>,
}

impl WireFrame {
    fn new(b0: u8, mask: [u8; 4], payload: Vec<u8>) -> Self {
        WireFrame {
            b0,
            masked: true,
            mask,
            form: Form::Minimal,
            payload,
            declared: None,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let len = self.declared.unwrap_or(self.payload.len() as u64);
        let mask_bit = if self.masked { 0x80 } else { 0 };
        out.push(self.b0);
        match self.form {
            Form::Minimal if len < 126 => out.push(mask_bit | len as u8),
            Form::Minimal | Form::Sixteen if len <= 0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        if self.masked {
            out.extend_from_slice(&self.mask);
            out.extend(
                self.payload
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ self.mask[i % 4]),
            );
        } else {
            out.extend_from_slice(&self.payload);
        }
    }
}

/// A fault put into one frame.
#[derive(Debug, Clone)]
enum Fault {
    None,
    Unmask,
    ReservedBits(u8),
    Opcode(u8),
    ToggleFin,
    Form(Form),
    /// Claim this length (over any limit, or with the high bit set).
    Declare(u64),
}

fn fault_strategy() -> impl Strategy<Value = Fault> {
    prop_oneof![
        80 => Just(Fault::None),
        1 => Just(Fault::Unmask),
        1 => (1u8..8).prop_map(Fault::ReservedBits),
        1 => (0u8..16).prop_map(Fault::Opcode),
        1 => Just(Fault::ToggleFin),
        1 => Just(Fault::Form(Form::Sixteen)),
        1 => Just(Fault::Form(Form::SixtyFour)),
        1 => prop_oneof![Just(1u64 << 63), Just(u64::MAX), 300u64..100_000].prop_map(Fault::Declare),
    ]
}

fn apply(frame: &mut WireFrame, fault: &Fault) {
    match *fault {
        Fault::None => {}
        Fault::Unmask => frame.masked = false,
        Fault::ReservedBits(bits) => frame.b0 |= bits << 4,
        Fault::Opcode(op) => frame.b0 = (frame.b0 & 0xF0) | op,
        Fault::ToggleFin => frame.b0 ^= 0x80,
        Fault::Form(form) => frame.form = form,
        Fault::Declare(len) => frame.declared = Some(len),
    }
}

/// Text, sometimes not UTF-8, sometimes large.
fn text_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<char>(), 0..30).prop_map(|c| String::from_iter(c).into_bytes()),
        2 => (prop::collection::vec(any::<char>(), 1..10), any::<Index>(), prop_oneof![Just(0xFFu8), Just(0xC0), Just(0x80), Just(0xED)])
            .prop_map(|(chars, at, bad)| {
                let mut bytes = String::from_iter(chars).into_bytes();
                let at = at.index(bytes.len() + 1);
                bytes.insert(at, bad);
                bytes
            }),
        1 => (0usize..400).prop_map(|n| "é".repeat(n).into_bytes()),
    ]
}

fn close_payload() -> impl Strategy<Value = Vec<u8>> {
    let code = prop_oneof![
        2 => Just(1014u16),
        6 => prop::sample::select(vec![
            0u16, 999, 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011,
            1012, 1013, 1015, 1016, 2999, 3000, 3999, 4000, 4999, 5000, 65535,
        ]),
        2 => any::<u16>(),
    ];
    let reason = prop_oneof![
        4 => prop::collection::vec(any::<char>(), 0..20).prop_map(|c| String::from_iter(c).into_bytes()),
        1 => Just(vec![0xFF, b'x']),
        1 => Just(vec![0xE2, 0x82]),
    ];
    prop_oneof![
        1 => Just(Vec::new()),
        1 => any::<u8>().prop_map(|b| vec![b]),
        8 => (code, reason).prop_map(|(code, reason)| {
            let mut p = code.to_be_bytes().to_vec();
            p.extend(reason);
            p.truncate(125);
            p
        }),
    ]
}

/// A data message in fragments, with control frames between them.
#[derive(Debug, Clone)]
struct DataMessage {
    binary: bool,
    payload: Vec<u8>,
    cuts: Vec<Index>,
    pings: Vec<(Index, bool, Vec<u8>)>,
}

#[derive(Debug, Clone)]
enum Unit {
    Message(DataMessage),
    Control {
        opcode: u8,
        payload: Vec<u8>,
    },
    Close(Vec<u8>),
    Raw {
        b0: u8,
        masked: bool,
        payload: Vec<u8>,
    },
}

fn unit_strategy() -> impl Strategy<Value = Unit> {
    let message = (
        any::<bool>(),
        text_payload(),
        prop::collection::vec(any::<Index>(), 0..4),
        prop::collection::vec(
            (
                any::<Index>(),
                any::<bool>(),
                prop::collection::vec(any::<u8>(), 0..8),
            ),
            0..2,
        ),
    )
        .prop_map(|(binary, payload, cuts, pings)| {
            Unit::Message(DataMessage {
                binary,
                payload,
                cuts,
                pings,
            })
        });
    prop_oneof![
        6 => message,
        2 => (prop::sample::select(vec![0x9u8, 0xA]), prop_oneof![
                4 => prop::collection::vec(any::<u8>(), 0..20),
                1 => prop::collection::vec(any::<u8>(), 120..130),
            ]).prop_map(|(opcode, payload)| Unit::Control { opcode, payload }),
        1 => close_payload().prop_map(Unit::Close),
        1 => (any::<u8>(), any::<bool>(), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(b0, masked, payload)| Unit::Raw { b0, masked, payload }),
    ]
}

fn frames_of(unit: &Unit, mask: [u8; 4]) -> Vec<WireFrame> {
    match unit {
        Unit::Message(m) => {
            let mut points: Vec<usize> = m
                .cuts
                .iter()
                .map(|c| c.index(m.payload.len() + 1))
                .collect();
            points.sort_unstable();
            points.dedup();
            let mut pieces = Vec::new();
            let mut start = 0;
            for p in points {
                pieces.push(m.payload[start..p].to_vec());
                start = p;
            }
            pieces.push(m.payload[start..].to_vec());
            let last = pieces.len() - 1;
            let mut frames = Vec::new();
            for (i, piece) in pieces.into_iter().enumerate() {
                let opcode = match (i, m.binary) {
                    (0, false) => 0x1,
                    (0, true) => 0x2,
                    _ => 0x0,
                };
                let fin = if i == last { 0x80 } else { 0 };
                frames.push(WireFrame::new(fin | opcode, mask, piece));
                for (at, pong, payload) in &m.pings {
                    if i < last && at.index(last) == i {
                        let op = if *pong { 0x8A } else { 0x89 };
                        frames.push(WireFrame::new(op, mask, payload.clone()));
                    }
                }
            }
            frames
        }
        Unit::Control { opcode, payload } => {
            vec![WireFrame::new(0x80 | opcode, mask, payload.clone())]
        }
        Unit::Close(payload) => vec![WireFrame::new(0x88, mask, payload.clone())],
        Unit::Raw {
            b0,
            masked,
            payload,
        } => {
            let mut f = WireFrame::new(*b0, mask, payload.clone());
            f.masked = *masked;
            vec![f]
        }
    }
}

/// How the stream ends.
#[derive(Debug, Clone)]
enum Tail {
    Whole,
    CutAt(Index),
    Garbage(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Case {
    limit: usize,
    stream: Vec<u8>,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let units = prop::collection::vec(
        (
            unit_strategy(),
            prop::collection::vec(fault_strategy(), 8),
            any::<[u8; 4]>(),
        ),
        0..10,
    );
    let tail = prop_oneof![
        6 => Just(Tail::Whole),
        3 => any::<Index>().prop_map(Tail::CutAt),
        1 => prop::collection::vec(any::<u8>(), 1..24).prop_map(Tail::Garbage),
    ];
    let limit = prop_oneof![3 => 0usize..300, 1 => Just(16 * 1024)];
    (units, tail, limit).prop_map(|(units, tail, limit)| {
        let mut stream = Vec::new();
        for (unit, faults, mask) in units {
            for (frame, fault) in frames_of(&unit, mask).iter_mut().zip(faults.iter().cycle()) {
                apply(frame, fault);
                frame.encode(&mut stream);
            }
        }
        match tail {
            Tail::Whole => {}
            Tail::CutAt(at) => stream.truncate(at.index(stream.len() + 1)),
            Tail::Garbage(bytes) => stream.extend(bytes),
        }
        Case { limit, stream }
    })
}

proptest! {
    #![proptest_config(surge_properties::config("frame_differential", 2048))]

    /// core and tungstenite decode every generated client stream to the
    /// same messages and fail it with the same close code, but for the
    /// documented divergences.
    #[test]
    fn core_and_tungstenite_agree_on_client_streams(case in case_strategy()) {
        if let Err(why) = compare(&case.stream, case.limit) {
            return Err(TestCaseError::fail(why));
        }
    }
}

/// Runs a fixed set of generated cases and checks that the generator
/// reaches every outcome worth comparing: messages of every kind, each
/// close code, and each documented divergence.
#[test]
fn the_generated_streams_reach_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = case_strategy();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..4000 {
        let case = strategy.new_tree(&mut runner).expect("a case").current();
        let outcome = match compare(&case.stream, case.limit) {
            Ok(Some(d)) => format!("divergence {d:?}"),
            Ok(None) => {
                let mut core = Core::new(case.limit);
                let step = core.feed(&case.stream);
                match step.error {
                    Some(code) => format!("error {code}"),
                    None if step.closed() => "close".to_owned(),
                    None => "no error".to_owned(),
                }
            }
            Err(why) => panic!("{why}"),
        };
        *seen.entry(outcome).or_default() += 1;
    }
    for wanted in [
        "error 1002",
        "error 1007",
        "error 1009",
        "close",
        "no error",
        "divergence FaultAndLength",
        "divergence ControlExtendedLength",
        "divergence Close1014",
        "divergence CloseCodeAndReason",
        "divergence EarlyFailure",
    ] {
        assert!(
            seen.contains_key(wanted),
            "never reached {wanted}: {seen:?}"
        );
    }
}

// ---- The documented divergences, one by one ----

fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    WireFrame::new(b0, [1, 2, 3, 4], payload.to_vec()).encode(&mut out);
    out
}

fn both(stream: &[u8], limit: usize) -> (Step, Step) {
    let frames = split_frames(stream);
    let mut core = Core::new(limit);
    let mut ws = Tungstenite::new(limit);
    let (mut c, mut t) = (Step::default(), Step::default());
    for frame in &frames {
        let (a, b) = (core.feed(&frame.bytes), ws.feed(&frame.bytes, frame));
        c.messages.extend(a.messages);
        t.messages.extend(b.messages);
        c.error = c.error.or(a.error);
        t.error = t.error.or(b.error);
    }
    (c, t)
}

#[test]
fn a_protocol_fault_with_an_oversized_length_is_1002_for_core_and_1009_for_tungstenite() {
    // Unmasked text frame of 300 bytes under a 100-byte limit.
    let mut stream = vec![0x81, 126];
    stream.extend_from_slice(&300u16.to_be_bytes());
    stream.extend(std::iter::repeat_n(b'a', 300));
    let (core, tung) = both(&stream, 100);
    assert_eq!(core.error, Some(1002));
    assert_eq!(tung.error, Some(1009));
    assert_eq!(compare(&stream, 100), Ok(Some(Divergence::FaultAndLength)));
}

#[test]
fn a_close_with_a_bad_code_and_a_bad_reason_is_1002_for_core_and_1007_for_tungstenite() {
    let stream = masked(0x88, &[0x03, 0xEC, 0xFF]); // 1004, then 0xFF
    let (core, tung) = both(&stream, 1000);
    assert_eq!(core.error, Some(1002));
    assert_eq!(tung.error, Some(1007));
    assert_eq!(
        compare(&stream, 1000),
        Ok(Some(Divergence::CloseCodeAndReason))
    );
}

#[test]
fn a_control_frame_with_a_16_bit_length_is_refused_by_core_only() {
    let mut frame = WireFrame::new(0x89, [1, 2, 3, 4], b"hi".to_vec());
    frame.form = Form::Sixteen;
    let mut stream = Vec::new();
    frame.encode(&mut stream);
    let (core, tung) = both(&stream, 1000);
    assert_eq!(core.error, Some(1002));
    assert_eq!(
        tung,
        Step {
            messages: vec![Msg::Ping(b"hi".to_vec())],
            error: None
        }
    );
    assert_eq!(
        compare(&stream, 1000),
        Ok(Some(Divergence::ControlExtendedLength))
    );
}

#[test]
fn close_code_1014_is_accepted_by_core_only() {
    let stream = masked(0x88, &1014u16.to_be_bytes());
    let (core, tung) = both(&stream, 1000);
    assert_eq!(core.messages, vec![Msg::Close(Some(1014), String::new())]);
    assert_eq!(tung.error, Some(1002));
    assert_eq!(compare(&stream, 1000), Ok(Some(Divergence::Close1014)));
}

#[test]
fn core_fails_on_a_faulty_header_before_the_frame_has_arrived() {
    // Reserved bits set; the stream ends after the mask.
    let stream = &masked(0xC1, b"hello")[..6];
    let (core, tung) = both(stream, 1000);
    assert_eq!(core.error, Some(1002));
    assert_eq!(tung, Step::default());
    assert_eq!(compare(stream, 1000), Ok(Some(Divergence::EarlyFailure)));
    // Once the frame is whole, both fail it.
    let (core, tung) = both(&masked(0xC1, b"hello"), 1000);
    assert_eq!((core.error, tung.error), (Some(1002), Some(1002)));
}
