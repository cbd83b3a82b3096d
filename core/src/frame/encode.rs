//! The server → client half: unmasked frames (RFC 6455 §5.1: a server
//! never masks) written straight into the driver's buffer.
//!
//! Two ways to use it: [`encode_header`] into a stack array, then write the
//! header and the payload slices with one vectored write; or the
//! `*_frame_into` helpers, which append whole frames to a `Vec` that
//! collects everything queued for one write.

use super::OpCode;

/// The longest server frame header: 2 bytes and an 8-byte length.
pub const MAX_HEADER_LEN: usize = 10;

/// The longest close reason: a control frame's 125 bytes minus the code.
pub const MAX_REASON_LEN: usize = 123;

/// Control frames carry at most this many payload bytes (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Length of the header [`encode_header`] writes for a payload of
/// `payload_len` bytes: 2, 4 or 10.
pub fn header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => MAX_HEADER_LEN,
    }
}

/// Writes the header of an unmasked frame into `out` and returns its
/// length (2, 4 or 10 bytes, the shortest encoding of `payload_len`).
pub fn encode_header(opcode: OpCode, fin: bool, payload_len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = (u8::from(fin) << 7) | opcode.bits();
    match header_len(payload_len) {
        2 => {
            out[1] = payload_len as u8;
            2
        }
        4 => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            4
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            MAX_HEADER_LEN
        }
    }
}

/// Appends one unfragmented text frame whose payload is `parts`
/// concatenated, so a per-connection head and a shared tail are framed
/// without first being copied into one message. The caller guarantees the
/// concatenation is UTF-8 (parts may split a character).
pub fn text_frame_into(out: &mut Vec<u8>, parts: &[&[u8]]) {
    frame_into(out, OpCode::Text, parts);
}

/// A masked frame as a client sends it (RFC 6455 §5.3), `b0` being the
/// first byte (FIN, reserved bits, opcode). The server never sends one;
/// tests, fuzzers and load generators build client traffic with it.
pub fn masked_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![b0];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend((n as u64).to_be_bytes());
        }
    }
    out.extend(mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Appends one unfragmented frame with RSV1 set: a compressed message
/// (RFC 7692 §6), its compressed payload being `parts` concatenated.
pub fn compressed_frame_into(out: &mut Vec<u8>, opcode: OpCode, parts: &[&[u8]]) {
    let start = out.len();
    frame_into(out, opcode, parts);
    out[start] |= 0x40;
}

/// Appends one unfragmented binary frame whose payload is `parts`
/// concatenated.
pub fn binary_frame_into(out: &mut Vec<u8>, parts: &[&[u8]]) {
    frame_into(out, OpCode::Binary, parts);
}

/// Appends a Close frame with `code` and `reason`, the reason cut to
/// [`MAX_REASON_LEN`] bytes at a character boundary. `code` must be one a
/// peer may send (not 1005, 1006 or 1015).
pub fn close_frame_into(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    frame_into(
        out,
        OpCode::Close,
        &[&code.to_be_bytes(), &reason.as_bytes()[..end]],
    );
}

/// Appends a Ping frame. A control frame holds at most 125 bytes; any
/// beyond are left out.
pub fn ping_frame_into(out: &mut Vec<u8>, payload: &[u8]) {
    frame_into(out, OpCode::Ping, &[control_payload(payload)]);
}

/// Appends a Pong frame, normally echoing an [`super::Event::Ping`]'s
/// payload (which the decoder guarantees is at most 125 bytes; any beyond
/// are left out).
pub fn pong_frame_into(out: &mut Vec<u8>, payload: &[u8]) {
    frame_into(out, OpCode::Pong, &[control_payload(payload)]);
}

fn control_payload(payload: &[u8]) -> &[u8] {
    &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)]
}

fn frame_into(out: &mut Vec<u8>, opcode: OpCode, parts: &[&[u8]]) {
    let len = parts.iter().map(|part| part.len()).sum();
    let mut header = [0; MAX_HEADER_LEN];
    let header_len = encode_header(opcode, true, len, &mut header);
    out.reserve(header_len + len);
    out.extend_from_slice(&header[..header_len]);
    for part in parts {
        out.extend_from_slice(part);
    }
}
