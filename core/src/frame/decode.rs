//! The client → server half: a decoder that turns masked client frames into
//! whole messages and control events, holding as little as it can between
//! reads.

use std::mem;

use super::OpCode;

/// The longest client frame header: 2 fixed bytes, an 8-byte extended
/// length and the 4-byte mask.
const MAX_CLIENT_HEADER: usize = 14;

/// Control frames carry at most this many payload bytes (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u8 = 125;

/// Limits on what one client may make the decoder hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest message (the sum of its fragments' payloads) accepted. A frame
    /// whose header would take its message past this fails with
    /// [`FrameError::MessageTooBig`] before any of its payload is buffered.
    pub max_message_bytes: usize,
    /// Keep binary payloads ([`Event::Binary`] carries them). surge's
    /// protocol is JSON text, so the gateway skips them unbuffered; an echo
    /// endpoint (the Autobahn harness) keeps them.
    pub keep_binary: bool,
    /// permessage-deflate was negotiated: RSV1 on a message's first frame
    /// marks it compressed, and it is inflated (within
    /// `max_message_bytes`) before it is an event. Without it RSV1 is a
    /// protocol error like the other reserved bits.
    pub compressed: bool,
}

impl DecodeLimits {
    /// Text messages up to `max_message_bytes`; binary payloads skipped.
    pub fn text(max_message_bytes: usize) -> Self {
        DecodeLimits {
            max_message_bytes,
            keep_binary: false,
            compressed: false,
        }
    }
}

/// What a client sent, one complete unit at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete text message, reassembled from its fragments and checked
    /// to be UTF-8.
    Text(String),
    /// A complete binary message. Unless [`DecodeLimits::keep_binary`] is
    /// set the payload is skipped, never buffered (`payload` is `None`);
    /// only its length is kept.
    Binary {
        len: usize,
        payload: Option<Vec<u8>>,
    },
    /// A ping; the driver answers with [`super::pong_frame_into`] and the
    /// same payload.
    Ping(Vec<u8>),
    /// A pong (an answer to the server's ping, or an unsolicited heartbeat).
    Pong(Vec<u8>),
    /// The client's Close frame. `code` is `None` when the frame had no
    /// payload. The decoder ignores every byte after it.
    Close { code: Option<u16>, reason: String },
}

/// A client frame that breaks RFC 6455. Each case names what the client
/// did; [`FrameError::close_code`] is the code the server closes with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("client frame is not masked; RFC 6455 §5.1 requires clients to mask every frame")]
    Unmasked,
    #[error("reserved bits {bits:#05b} are set but no extension was negotiated")]
    ReservedBits { bits: u8 },
    #[error("opcode {opcode:#x} is reserved")]
    UnknownOpcode { opcode: u8 },
    #[error("{opcode:?} frame longer than 125 bytes; control frames hold at most 125")]
    ControlFrameTooLong { opcode: OpCode },
    #[error("{opcode:?} frame without FIN; control frames cannot be fragmented")]
    FragmentedControlFrame { opcode: OpCode },
    #[error("continuation frame without a fragmented message in progress")]
    UnexpectedContinuation,
    #[error("{opcode:?} frame starts a new message before the fragmented one in progress ended")]
    MessageInterrupted { opcode: OpCode },
    #[error("64-bit payload length has its most significant bit set")]
    LengthHighBitSet,
    #[error("message of {len} bytes (or more) exceeds the limit of {limit} bytes")]
    MessageTooBig { len: u64, limit: usize },
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    #[error("close frame payload is 1 byte; it must be empty or start with a 2-byte code")]
    CloseCodeTruncated,
    #[error("close code {code} may not be sent by a peer")]
    InvalidCloseCode { code: u16 },
    #[error("close reason is not valid UTF-8")]
    InvalidCloseReason,
    #[error("compressed message is not valid deflate data")]
    BadCompression,
}

impl FrameError {
    /// The close code the server sends before closing the connection
    /// (RFC 6455 §7.4.1): 1009 for a message over the limit, 1007 for
    /// invalid UTF-8, 1002 for every other protocol error.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::MessageTooBig { .. } => 1009,
            FrameError::InvalidUtf8
            | FrameError::InvalidCloseReason
            | FrameError::BadCompression => 1007,
            FrameError::Unmasked
            | FrameError::ReservedBits { .. }
            | FrameError::UnknownOpcode { .. }
            | FrameError::ControlFrameTooLong { .. }
            | FrameError::FragmentedControlFrame { .. }
            | FrameError::UnexpectedContinuation
            | FrameError::MessageInterrupted { .. }
            | FrameError::LengthHighBitSet
            | FrameError::CloseCodeTruncated
            | FrameError::InvalidCloseCode { .. } => 1002,
        }
    }
}

/// Decodes one connection's client → server byte stream.
///
/// The driver lends it whatever bytes it read and drains events:
///
/// ```
/// # use surge_core::frame::{DecodeLimits, Event, FrameDecoder, FrameError};
/// # fn handle(_: Event) {}
/// # fn on_read(decoder: &mut FrameDecoder, buf: &[u8]) -> Result<(), FrameError> {
/// let mut input = buf;
/// while let Some(event) = decoder.feed(&mut input)? {
///     handle(event);
/// }
/// // `input` is empty here: every byte is consumed or kept by the decoder.
/// # Ok(())
/// # }
/// ```
///
/// Between reads it holds a partial header (at most 14 bytes, inline) and
/// the payload of a text message still arriving; nothing is allocated for
/// an idle connection. Once an error is returned the decoder returns that
/// same error for every later call (the connection is to be closed with
/// [`FrameError::close_code`]). After [`Event::Close`] it consumes and
/// ignores everything (RFC 6455 §5.5.1: nothing may follow a Close).
#[derive(Debug)]
pub struct FrameDecoder {
    limits: DecodeLimits,
    stage: Stage,
    message: Message,
    /// Frame headers completed so far (every frame: data, continuation and
    /// control), for the driver's inbound budget.
    frames: u32,
    /// The message in progress was sent compressed (RSV1 on its first frame).
    compressed: bool,
}

/// Where the decoder is inside the current frame.
#[derive(Debug)]
enum Stage {
    /// Between frames, or inside a header whose first `filled` bytes are in
    /// `buf`.
    Header {
        buf: [u8; MAX_CLIENT_HEADER],
        filled: u8,
    },
    /// Inside a data frame's payload.
    Data {
        mask: [u8; 4],
        remaining: usize,
        /// Payload bytes already unmasked, mod 4: where the mask resumes.
        phase: u8,
        fin: bool,
        /// Check UTF-8 as bytes arrive. Off for a message sent in one frame:
        /// the final check finds the same error at the same point of the
        /// stream, and a second pass over the common case is avoided.
        check_utf8: bool,
    },
    /// Inside a control frame's payload (at most 125 bytes, collected still
    /// masked and unmasked once complete).
    Control {
        opcode: OpCode,
        mask: [u8; 4],
        len: u8,
        payload: Vec<u8>,
    },
    /// A Close frame was decoded; everything after it is ignored.
    Closed,
    /// A protocol error was returned; it is returned again.
    Failed(FrameError),
}

impl Stage {
    fn header() -> Stage {
        Stage::Header {
            buf: [0; MAX_CLIENT_HEADER],
            filled: 0,
        }
    }
}

/// The data message being reassembled from its fragments.
#[derive(Debug, Default)]
enum Message {
    #[default]
    None,
    Text {
        payload: Vec<u8>,
        /// Length of the prefix of `payload` known to be valid UTF-8 (used
        /// only by fragmented messages).
        valid_up_to: usize,
    },
    Binary {
        /// Sum of the lengths announced by the fragments' headers so far.
        len: usize,
        /// The payload, when binary payloads are kept.
        payload: Option<Vec<u8>>,
    },
}

impl Message {
    fn in_progress(&self) -> bool {
        !matches!(self, Message::None)
    }

    fn len(&self) -> usize {
        match self {
            Message::None => 0,
            Message::Text { payload, .. } => payload.len(),
            Message::Binary { len, .. } => *len,
        }
    }
}

/// A complete, valid client frame header.
struct Header {
    fin: bool,
    /// RSV1 on a message's first frame, with permessage-deflate negotiated.
    compressed: bool,
    opcode: OpCode,
    len: usize,
    mask: [u8; 4],
}

enum HeaderParse {
    /// The header is this many bytes long in total; not all have arrived.
    NeedBytes(usize),
    Complete(Header),
}

impl FrameDecoder {
    pub fn new(limits: DecodeLimits) -> Self {
        FrameDecoder {
            limits,
            stage: Stage::header(),
            message: Message::None,
            frames: 0,
            compressed: false,
        }
    }

    /// How many frame headers this decoder has completed (data,
    /// continuation and control frames alike).
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Consumes bytes from the front of `input` until one event is
    /// complete and returns it, leaving the rest of `input` for the next
    /// call. `Ok(None)` means `input` was used up (it is then empty) without
    /// completing an event: read more. On error, how much of `input` was
    /// consumed is unspecified; the connection is over.
    pub fn feed(&mut self, input: &mut &[u8]) -> Result<Option<Event>, FrameError> {
        let result = self.step(input);
        if let Err(error) = &result {
            // Release the partial message now: the driver may take a while
            // to write the Close and drop us.
            self.message = Message::None;
            self.stage = Stage::Failed(error.clone());
        }
        result
    }

    /// Between frames with nothing of a message held: a fresh decoder
    /// would continue exactly the same, so a driver may drop this one and
    /// make a new one for the next bytes (an idle connection then keeps no
    /// decoder at all).
    pub fn is_idle(&self) -> bool {
        matches!(self.stage, Stage::Header { filled: 0, .. })
            && matches!(self.message, Message::None)
    }

    /// Heap bytes this decoder holds (a partial message or control payload);
    /// zero for an idle connection. For memory metrics.
    pub fn buffered_bytes(&self) -> usize {
        let message = match &self.message {
            Message::Text { payload, .. } => payload.capacity(),
            Message::None | Message::Binary { .. } => 0,
        };
        let control = match &self.stage {
            Stage::Control { payload, .. } => payload.capacity(),
            _ => 0,
        };
        message + control
    }

    fn step(&mut self, input: &mut &[u8]) -> Result<Option<Event>, FrameError> {
        loop {
            match &mut self.stage {
                Stage::Failed(error) => return Err(error.clone()),
                Stage::Closed => {
                    *input = &[];
                    return Ok(None);
                }
                Stage::Header { buf, filled } => {
                    let header = loop {
                        let have = usize::from(*filled);
                        match parse_header(&buf[..have], &self.message, self.limits)? {
                            HeaderParse::Complete(header) => break header,
                            HeaderParse::NeedBytes(need) => {
                                if input.is_empty() {
                                    return Ok(None);
                                }
                                let take = (need - have).min(input.len());
                                let (head, rest) = input.split_at(take);
                                buf[have..have + take].copy_from_slice(head);
                                *input = rest;
                                // `have + take` ≤ MAX_CLIENT_HEADER, fits a u8.
                                *filled = (have + take) as u8;
                            }
                        }
                    };
                    self.frames = self.frames.saturating_add(1);
                    if let Some(event) = self.begin_frame(header)? {
                        return Ok(Some(event));
                    }
                }
                Stage::Data {
                    mask,
                    remaining,
                    phase,
                    fin,
                    check_utf8,
                } => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let take = (*remaining).min(input.len());
                    let (chunk, rest) = input.split_at(take);
                    *input = rest;
                    if let Message::Text {
                        payload,
                        valid_up_to,
                    } = &mut self.message
                    {
                        let start = payload.len();
                        payload.extend_from_slice(chunk);
                        unmask(&mut payload[start..], *mask, usize::from(*phase));
                        if *check_utf8 {
                            check_utf8_prefix(payload, valid_up_to)?;
                        }
                    } else if let Message::Binary {
                        payload: Some(payload),
                        ..
                    } = &mut self.message
                    {
                        let start = payload.len();
                        payload.extend_from_slice(chunk);
                        unmask(&mut payload[start..], *mask, usize::from(*phase));
                    }
                    // A binary payload is skipped: its length was counted
                    // when the header arrived.
                    *remaining -= take;
                    *phase = ((usize::from(*phase) + take) % 4) as u8;
                    if *remaining == 0 {
                        let fin = *fin;
                        self.stage = Stage::header();
                        if fin {
                            return self.finish_message().map(Some);
                        }
                    }
                }
                Stage::Control {
                    opcode,
                    mask,
                    len,
                    payload,
                } => {
                    let missing = usize::from(*len) - payload.len();
                    let take = missing.min(input.len());
                    let (chunk, rest) = input.split_at(take);
                    *input = rest;
                    payload.extend_from_slice(chunk);
                    if take < missing {
                        return Ok(None);
                    }
                    let (opcode, mask, mut payload) = (*opcode, *mask, mem::take(payload));
                    unmask(&mut payload, mask, 0);
                    self.stage = Stage::header();
                    return self.control_event(opcode, payload).map(Some);
                }
            }
        }
    }

    /// Moves past a complete header; returns the event when the frame has
    /// no payload and completes one.
    fn begin_frame(&mut self, header: Header) -> Result<Option<Event>, FrameError> {
        let Header {
            fin,
            compressed,
            opcode,
            len,
            mask,
        } = header;
        if opcode.is_control() {
            if len == 0 {
                self.stage = Stage::header();
                return self.control_event(opcode, Vec::new()).map(Some);
            }
            self.stage = Stage::Control {
                opcode,
                mask,
                // parse_header rejected control frames over 125 bytes.
                len: len.min(usize::from(MAX_CONTROL_PAYLOAD)) as u8,
                payload: Vec::with_capacity(len),
            };
            return Ok(None);
        }
        let first = opcode != OpCode::Continuation;
        if first {
            self.compressed = compressed;
        }
        match (&mut self.message, opcode) {
            (_, OpCode::Text) => {
                // The only allocation of an unfragmented message: exactly
                // its length, known from the header.
                self.message = Message::Text {
                    payload: Vec::with_capacity(len),
                    valid_up_to: 0,
                };
            }
            (_, OpCode::Binary) => {
                self.message = Message::Binary {
                    len,
                    payload: self.limits.keep_binary.then(|| Vec::with_capacity(len)),
                }
            }
            (Message::Text { payload, .. }, _) => {
                grow_within(payload, len, self.limits.max_message_bytes);
            }
            (
                Message::Binary {
                    len: total,
                    payload,
                },
                _,
            ) => {
                *total += len;
                if let Some(payload) = payload {
                    grow_within(payload, len, self.limits.max_message_bytes);
                }
            }
            // parse_header rejected a continuation without a message.
            (Message::None, _) => return Err(FrameError::UnexpectedContinuation),
        }
        if len == 0 {
            self.stage = Stage::header();
            return if fin {
                self.finish_message().map(Some)
            } else {
                Ok(None)
            };
        }
        self.stage = Stage::Data {
            mask,
            remaining: len,
            phase: 0,
            fin,
            // A compressed message is checked once inflated.
            check_utf8: !(self.compressed || first && fin),
        };
        Ok(None)
    }

    fn finish_message(&mut self) -> Result<Event, FrameError> {
        let compressed = mem::take(&mut self.compressed);
        let limit = self.limits.max_message_bytes;
        let inflated = |payload: Vec<u8>| {
            if !compressed {
                return Ok(payload);
            }
            crate::deflate::inflate(&payload, limit).map_err(|e| match e {
                crate::deflate::InflateError::TooBig { limit } => FrameError::MessageTooBig {
                    len: limit as u64 + 1,
                    limit,
                },
                crate::deflate::InflateError::Corrupt => FrameError::BadCompression,
            })
        };
        match mem::take(&mut self.message) {
            Message::Text { payload, .. } => String::from_utf8(inflated(payload)?)
                .map(Event::Text)
                .map_err(|_| FrameError::InvalidUtf8),
            Message::Binary {
                payload: Some(payload),
                ..
            } if compressed => {
                let payload = inflated(payload)?;
                Ok(Event::Binary {
                    len: payload.len(),
                    payload: Some(payload),
                })
            }
            Message::Binary { len, payload } => Ok(Event::Binary { len, payload }),
            // Only called when a data frame with FIN completes a message.
            Message::None => Err(FrameError::UnexpectedContinuation),
        }
    }

    fn control_event(&mut self, opcode: OpCode, payload: Vec<u8>) -> Result<Event, FrameError> {
        match opcode {
            OpCode::Ping => Ok(Event::Ping(payload)),
            OpCode::Pong => Ok(Event::Pong(payload)),
            _ => {
                let event = parse_close(payload)?;
                self.stage = Stage::Closed;
                self.message = Message::None;
                Ok(event)
            }
        }
    }
}

/// Makes room for `more` bytes of a fragmented message: doubling, so many
/// small fragments do not copy the message once each, but never past the
/// message limit (the header check keeps `len + more` within it), so a
/// client's message never holds more than the limit.
fn grow_within(payload: &mut Vec<u8>, more: usize, limit: usize) {
    let needed = payload.len() + more;
    if needed <= payload.capacity() {
        return;
    }
    let target = (payload.capacity() * 2).max(needed).min(limit.max(needed));
    payload.reserve_exact(target - payload.len());
}

/// Checks as much of a client frame header as `bytes` holds, in byte order,
/// so that an error depends only on the stream and not on how it was split.
fn parse_header(
    bytes: &[u8],
    message: &Message,
    limits: DecodeLimits,
) -> Result<HeaderParse, FrameError> {
    let Some(&b0) = bytes.first() else {
        return Ok(HeaderParse::NeedBytes(2));
    };
    let reserved = (b0 >> 4) & 0b111;
    let opcode =
        OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::UnknownOpcode { opcode: b0 & 0x0F });
    // RSV1 marks a compressed message, on its first frame only (RFC 7692 §6).
    let compressed = reserved == 0b100
        && limits.compressed
        && matches!(opcode, Ok(OpCode::Text | OpCode::Binary));
    if reserved != 0 && !compressed {
        return Err(FrameError::ReservedBits { bits: reserved });
    }
    let opcode = opcode?;
    let fin = b0 & 0x80 != 0;
    if opcode.is_control() {
        if !fin {
            return Err(FrameError::FragmentedControlFrame { opcode });
        }
    } else if opcode == OpCode::Continuation {
        if !message.in_progress() {
            return Err(FrameError::UnexpectedContinuation);
        }
    } else if message.in_progress() {
        return Err(FrameError::MessageInterrupted { opcode });
    }

    let Some(&b1) = bytes.get(1) else {
        return Ok(HeaderParse::NeedBytes(2));
    };
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let len7 = b1 & 0x7F;
    if opcode.is_control() && len7 > MAX_CONTROL_PAYLOAD {
        return Err(FrameError::ControlFrameTooLong { opcode });
    }
    // Non-minimal length encodings (126 for a length under 126, 127 for one
    // under 65536) are accepted: clients in the wild send them.
    let extended = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let total = 2 + extended + 4;
    let Some(length_bytes) = bytes.get(2..2 + extended) else {
        return Ok(HeaderParse::NeedBytes(total));
    };
    let len = match *length_bytes {
        [a, b] => u64::from(u16::from_be_bytes([a, b])),
        [a, b, c, d, e, f, g, h] => u64::from_be_bytes([a, b, c, d, e, f, g, h]),
        _ => u64::from(len7),
    };
    if len >> 63 != 0 {
        return Err(FrameError::LengthHighBitSet);
    }
    let message_len = if opcode.is_control() {
        0
    } else {
        (message.len() as u64).saturating_add(len)
    };
    if message_len > limits.max_message_bytes as u64 {
        return Err(FrameError::MessageTooBig {
            len: message_len,
            limit: limits.max_message_bytes,
        });
    }
    let Some(&[m0, m1, m2, m3]) = bytes.get(2 + extended..total) else {
        return Ok(HeaderParse::NeedBytes(total));
    };
    Ok(HeaderParse::Complete(Header {
        fin,
        compressed,
        opcode,
        // A control frame's length is at most 125; a data frame's is
        // within the limit, itself a usize.
        len: usize::try_from(len).unwrap_or(usize::MAX),
        mask: [m0, m1, m2, m3],
    }))
}

/// Extends the known-valid UTF-8 prefix of a fragmented text message over
/// newly arrived bytes. A sequence cut at the end is fine (its next byte
/// has not arrived); a byte that cannot continue any valid text is not.
fn check_utf8_prefix(payload: &[u8], valid_up_to: &mut usize) -> Result<(), FrameError> {
    match std::str::from_utf8(&payload[*valid_up_to..]) {
        Ok(_) => *valid_up_to = payload.len(),
        Err(e) if e.error_len().is_some() => return Err(FrameError::InvalidUtf8),
        Err(e) => *valid_up_to += e.valid_up_to(),
    }
    Ok(())
}

/// XORs `data` with the 4-byte `mask`, starting `phase` bytes into it,
/// eight bytes at a time.
pub(super) fn unmask(data: &mut [u8], mask: [u8; 4], phase: usize) {
    let mask: [u8; 4] = std::array::from_fn(|i| mask[(i + phase) % 4]);
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let (words, tail) = data.as_chunks_mut::<8>();
    for word in words {
        *word = (u64::from_ne_bytes(*word) ^ wide).to_ne_bytes();
    }
    // The tail starts at a multiple of 8, so the mask lines up again at 0.
    for (byte, m) in tail.iter_mut().zip(mask.iter().cycle()) {
        *byte ^= m;
    }
}

/// The payload of a Close frame (RFC 6455 §5.5.1, §7.4).
fn parse_close(payload: Vec<u8>) -> Result<Event, FrameError> {
    let (code, reason) = match payload.as_slice() {
        [] => {
            return Ok(Event::Close {
                code: None,
                reason: String::new(),
            });
        }
        [_] => return Err(FrameError::CloseCodeTruncated),
        [hi, lo, reason @ ..] => (u16::from_be_bytes([*hi, *lo]), reason),
    };
    if !peer_may_send(code) {
        return Err(FrameError::InvalidCloseCode { code });
    }
    let reason = std::str::from_utf8(reason).map_err(|_| FrameError::InvalidCloseReason)?;
    Ok(Event::Close {
        code: Some(code),
        reason: reason.to_owned(),
    })
}

/// Codes a peer may put in a Close frame: the ones RFC 6455 and the IANA
/// registry define for the wire, and the 3000–4999 ranges for libraries and
/// applications. 1004 is reserved; 1005, 1006 and 1015 are only reported
/// locally and must never be sent.
fn peer_may_send(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
