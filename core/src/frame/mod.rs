//! RFC 6455 §5 framing for the server side of a WebSocket, sans-IO.
//!
//! Why it exists: a general-purpose WebSocket library gives every
//! connection its own read buffer up front and copies every outgoing
//! message into its own write buffer. At surge's scale that is most of the
//! memory of an idle connection and one syscall per delivered frame. Here
//! the driver owns every buffer:
//!
//! - reading: the driver reads into a small buffer it shares between
//!   connections and lends the bytes to [`FrameDecoder::feed`], which keeps
//!   only what must survive between reads (a partial header of at most 14
//!   bytes, and the payload of a message still being received). An idle
//!   decoder is a few dozen bytes and owns no heap memory;
//! - writing: [`encode_header`] and the `*_frame_into` helpers append
//!   complete unmasked frames to a buffer the driver chooses, so many queued
//!   frames go out in one write, and a message made of a per-connection
//!   head and a shared tail is framed without concatenating it first;
//! - closing: [`CloseState`] holds the closing-handshake rules; the driver
//!   passes the time in and does the writing.
//!
//! Any way the network splits the input (inside a header, inside the mask,
//! inside a payload) gives the same events and the same error.

mod close;
mod decode;
mod encode;

pub use close::{CloseAction, CloseState};
pub use decode::{DecodeLimits, Event, FrameDecoder, FrameError};
pub use encode::{
    MAX_HEADER_LEN, MAX_REASON_LEN, binary_frame_into, close_frame_into, compressed_frame_into,
    encode_header, header_len, masked_frame, ping_frame_into, pong_frame_into, text_frame_into,
};

/// A frame's opcode (RFC 6455 §5.2); the other values are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    /// The opcode for the low four bits of a frame's first byte, `None` for
    /// the reserved values.
    pub fn from_bits(bits: u8) -> Option<OpCode> {
        match bits {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// The four bits this opcode puts on the wire.
    pub fn bits(self) -> u8 {
        self as u8
    }

    /// Close, Ping and Pong: at most 125 bytes, never fragmented, and
    /// allowed in the middle of a fragmented message.
    pub fn is_control(self) -> bool {
        self.bits() & 0x8 != 0
    }
}

#[cfg(test)]
mod tests;
