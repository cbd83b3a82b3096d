//! Bytes on the wire per delivery of `surge feed` traffic, plain and with
//! permessage-deflate as surge sends it (the head stored, the tail
//! compressed once per publish, no context between messages), next to
//! what a per-connection compressor keeping its context would send (the
//! design surge does not use: its 32 KiB window and deflate state per
//! connection are what multiply memory on servers that compress per
//! connection). Deterministic: the same feed seed gives the same figures.
//!
//!     cargo run --release -p surge-server --example wire_bytes

use std::time::Instant;

use flate2::{Compress, Compression, FlushCompress};
use surge_core::deflate::{self, Deflate};
use surge_core::frame::header_len;
use surge_core::protocol::{MessageMark, OutFrame, Priority, Published};
use surge_core::subjects::Subject;

fn main() {
    let symbols: Vec<String> = surge_server::feed::DEFAULT_SYMBOLS
        .split(',')
        .map(str::to_owned)
        .collect();
    let messages = surge_server::feed::sample(&symbols, surge_server::feed::DEFAULT_RATE, 600, 7);
    let min_bytes = 64;
    let (mut plain, mut surge, mut takeover) = (0usize, 0usize, 0usize);
    let mut compress_ns = 0u128;
    let mut context = Compress::new_with_window_bits(Compression::default(), false, 15);
    for (seq, (subject, payload)) in messages.iter().enumerate() {
        let published = Published::new(
            Subject::parse(subject).expect("subject"),
            seq as u64 + 1,
            Priority::Medium,
            payload,
        );
        let frame = OutFrame::message(seq as u64 + 1, MessageMark::Live, 0, &published);
        let text = frame.to_bytes();
        plain += header_len(text.len()) + text.len();

        let started = Instant::now();
        let tail = published.deflated_tail(Deflate::full());
        compress_ns += started.elapsed().as_nanos();
        let OutFrame::Message { head, .. } = &frame else {
            unreachable!("a message frame")
        };
        let compressed = if text.len() >= min_bytes {
            let mut stored = Vec::new();
            deflate::stored_blocks_into(&mut stored, head);
            stored.len() + tail.len()
        } else {
            text.len()
        };
        surge += header_len(compressed) + compressed;

        let mut out = Vec::with_capacity(text.len() + 64);
        context
            .compress_vec(&text, &mut out, FlushCompress::Sync)
            .expect("deflate");
        let with_context = out.len() - 4;
        takeover += header_len(with_context) + with_context;
    }
    let n = messages.len();
    let per = |total: usize| total as f64 / n as f64;
    println!("surge feed traffic: {n} messages (10 minutes at the default rate, seed 7)");
    println!(
        "plain:                                {:.1} bytes per delivery",
        per(plain)
    );
    println!(
        "permessage-deflate as surge sends it: {:.1} bytes per delivery ({:.0} % of plain); the tail compressed once per publish in {:.1} us",
        per(surge),
        100.0 * surge as f64 / plain as f64,
        compress_ns as f64 / n as f64 / 1000.0
    );
    println!(
        "per-connection context (not used):    {:.1} bytes per delivery ({:.0} % of plain), at a 32 KiB window and deflate state on every connection",
        per(takeover),
        100.0 * takeover as f64 / plain as f64
    );
}
