//! permessage-deflate (RFC 7692), compressed once per publish.
//!
//! The server always asks for `server_no_context_takeover` and
//! `client_no_context_takeover`: every message is then a deflate stream of
//! its own, so
//!
//! - a published message's shared part (its tail: subject, `sseq`, data) is
//!   compressed once and the same bytes go to every subscriber that
//!   negotiated the same window, whatever its per-connection `seq`: the
//!   per-connection head goes in front as a stored (uncompressed) deflate
//!   block, which a decoder reads as part of the same stream;
//! - no connection keeps a compressor or decompressor between messages
//!   (one of each per thread is reused), so an idle connection costs what
//!   it cost without compression.
//!
//! The price of no context takeover is a worse ratio on small messages
//! than a per-connection compressor would get; that trade is what keeps
//! memory flat (NATS' per-connection compression is reported to multiply
//! a node's memory many times over).

use std::cell::RefCell;
use std::num::NonZeroU8;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const EXTENSION: &str = "permessage-deflate";

/// The four bytes a sync flush ends with, removed from every message on
/// the wire and put back before inflating (RFC 7692 §7.2.1).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The largest window, and the one used unless a client asks for less.
pub const MAX_WINDOW_BITS: u8 = 15;
/// The smallest window zlib compresses raw deflate with; an offer asking
/// the server for 8 is declined (see [`negotiate`]).
pub const MIN_WINDOW_BITS: u8 = 9;

/// What a connection negotiated: the LZ77 window the server compresses
/// with. One byte, so a connection pays nothing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Deflate {
    window_bits: NonZeroU8,
}

impl Deflate {
    /// The full 32 KiB window.
    pub const fn full() -> Self {
        Deflate {
            window_bits: NonZeroU8::new(MAX_WINDOW_BITS).expect("non-zero"),
        }
    }

    pub fn window_bits(self) -> u8 {
        self.window_bits.get()
    }
}

/// Picks the first acceptable `permessage-deflate` offer among the
/// `Sec-WebSocket-Extensions` header values and returns it with the value
/// of the response header. Offers of other extensions are ignored; an
/// offer with an unknown parameter, a repeated one or a bad value is
/// declined (RFC 7692 §5), as is one asking the server to compress with a
/// 256-byte window, which zlib does not do.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<(Deflate, String)> {
    values
        .into_iter()
        .flat_map(|value| value.split(','))
        .find_map(accept_offer)
}

fn accept_offer(offer: &str) -> Option<(Deflate, String)> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(EXTENSION) {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    let mut server_bits = MAX_WINDOW_BITS;
    for param in parts.filter(|p| !p.is_empty()) {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            // The client may limit its own window, or let us: either way
            // a decompressor with the full window reads what it sends.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            ("server_max_window_bits", Some(v)) => {
                server_bits = window_bits(v)?;
                if server_bits < MIN_WINDOW_BITS {
                    return None;
                }
            }
            _ => return None,
        }
        seen.push(name);
    }
    let mut response =
        format!("{EXTENSION}; server_no_context_takeover; client_no_context_takeover");
    if server_bits < MAX_WINDOW_BITS {
        response.push_str(&format!("; server_max_window_bits={server_bits}"));
    }
    let window_bits = NonZeroU8::new(server_bits)?;
    Some((Deflate { window_bits }, response))
}

/// A window-bits value: 8 to 15, digits only (RFC 7692 §7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || value.len() > 2 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|b| (8..=15).contains(b))
}

thread_local! {
    /// One compressor per thread for the full window (the common case),
    /// reset between messages: creating one allocates its hash tables.
    static COMPRESSOR: RefCell<Compress> =
        RefCell::new(Compress::new_with_window_bits(Compression::default(), false, MAX_WINDOW_BITS));
    static DECOMPRESSOR: RefCell<Decompress> =
        RefCell::new(Decompress::new_with_window_bits(false, MAX_WINDOW_BITS));
}

/// `data` as one raw deflate stream with no context, sync-flushed, with
/// the flush's four trailing bytes removed: the payload of a compressed
/// message, or the part of it after a stored head.
pub fn compress(data: &[u8], deflate: Deflate) -> Vec<u8> {
    let bits = deflate.window_bits();
    if bits == MAX_WINDOW_BITS {
        COMPRESSOR.with(|c| {
            let mut c = c.borrow_mut();
            c.reset();
            run_compress(&mut c, data)
        })
    } else {
        let mut c = Compress::new_with_window_bits(Compression::default(), false, bits);
        run_compress(&mut c, data)
    }
}

fn run_compress(c: &mut Compress, data: &[u8]) -> Vec<u8> {
    // Deflate grows incompressible input by a few bytes per 16 KiB block.
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 16);
    let mut input = data;
    loop {
        let before_in = c.total_in();
        // The input is all there: one sync flush finishes it, as long as
        // the output has room.
        let status = c
            .compress_vec(input, &mut out, FlushCompress::Sync)
            .expect("deflate of in-memory bytes cannot fail");
        let used = usize::try_from(c.total_in() - before_in).unwrap_or(input.len());
        input = &input[used..];
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
        if status == Status::BufError || out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
    }
    if out.ends_with(&SYNC_TAIL) {
        out.truncate(out.len() - SYNC_TAIL.len());
    }
    out
}

/// Appends `data` as stored (uncompressed) deflate blocks, none final: a
/// prefix a decoder reads as the start of the stream that follows.
pub fn stored_blocks_into(out: &mut Vec<u8>, data: &[u8]) {
    for chunk in data.chunks(usize::from(u16::MAX)) {
        // BFINAL 0, BTYPE 00, then padding to the byte boundary: one zero
        // byte at a block start that is byte-aligned.
        out.push(0x00);
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// It inflates past the limit: a decompression bomb, or just too big.
    #[error("the message inflates to more than {limit} bytes")]
    TooBig { limit: usize },
    #[error("the message is not valid deflate data")]
    Corrupt,
}

/// Inflates one message's payload (no context), refusing more than
/// `limit` bytes of output before producing them.
pub fn inflate(payload: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        let mut out = Vec::with_capacity((payload.len() * 4).min(limit + 1).max(64));
        for chunk in [payload, &SYNC_TAIL[..]] {
            let mut input = chunk;
            while !input.is_empty() {
                if out.len() == out.capacity() {
                    if out.len() > limit {
                        return Err(InflateError::TooBig { limit });
                    }
                    out.reserve((out.capacity()).min(limit + 1 - out.len()).max(64));
                }
                let before_in = d.total_in();
                let before_out = out.len();
                let status = d
                    .decompress_vec(input, &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                let used = usize::try_from(d.total_in() - before_in).unwrap_or(input.len());
                input = &input[used..];
                if out.len() > limit {
                    return Err(InflateError::TooBig { limit });
                }
                if status == Status::StreamEnd {
                    // A final block: nothing after it belongs to this message.
                    return Ok(out);
                }
                if used == 0 && out.len() == before_out && out.len() < out.capacity() {
                    break;
                }
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests;
