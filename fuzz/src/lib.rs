//! Helpers shared by the fuzz targets: reading choices out of the fuzzer's
//! bytes, cutting an input into the chunks a network might deliver, and
//! framing and parsing WebSocket frames on both sides.

use std::sync::OnceLock;

/// `SURGE_FUZZ_TRACE=1`: targets that support it print one line per input
/// saying what it reached (run them over a corpus with `-runs=0`).
pub fn trace() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| env_flag("SURGE_FUZZ_TRACE"))
}

fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v == "1")
}

/// Reads choices from the front of the fuzzer's input; past the end every
/// read returns zero, so any input decodes to something.
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Splits an input into (split choices, body): the first byte says how many
/// chunk lengths follow (0-15), each next byte is one chunk's length
/// (0-255, zero-length feeds included); whatever of the body is left after
/// them is the last chunk. Returns the chunks, which concatenate to the body.
pub fn split_input(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut bytes = Bytes::new(data);
    let count = usize::from(bytes.u8() % 16);
    let lens: Vec<usize> = (0..count).map(|_| usize::from(bytes.u8())).collect();
    let body = bytes.rest();
    (chunks(body, &lens), body)
}

/// `body` cut into pieces of `lens` (clamped to what is left), then the rest.
pub fn chunks<'a>(body: &'a [u8], lens: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(lens.len() + 1);
    let mut rest = body;
    for &len in lens {
        let (head, tail) = rest.split_at(len.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out.push(rest);
    out
}

/// A masked client frame, the length written the shortest way.
pub fn client_frame(b0: u8, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(b0);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// One frame the server wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    pub first_byte: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    pub fn opcode(&self) -> u8 {
        self.first_byte & 0x0F
    }
}

/// Takes every complete server frame off the front of `wire`, leaving a
/// partial one in place.
pub fn take_server_frames(wire: &mut Vec<u8>) -> Vec<ServerFrame> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let bytes = &wire[at..];
        if bytes.len() < 2 {
            break;
        }
        let masked = bytes[1] & 0x80 != 0;
        let (len, head) = match bytes[1] & 0x7F {
            126 if bytes.len() >= 4 => (u64::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 if bytes.len() >= 10 => (
                u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes")),
                10,
            ),
            126 | 127 => break,
            n => (u64::from(n), 2),
        };
        let head = head + if masked { 4 } else { 0 };
        let Ok(len) = usize::try_from(len) else { break };
        if bytes.len() < head || bytes.len() - head < len {
            break;
        }
        out.push(ServerFrame {
            first_byte: bytes[0],
            masked,
            payload: bytes[head..head + len].to_vec(),
        });
        at += head + len;
    }
    wire.drain(..at);
    out
}
