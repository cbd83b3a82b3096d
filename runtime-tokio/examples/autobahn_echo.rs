//! An echo WebSocket endpoint for the Autobahn|Testsuite fuzzing client
//! (`scripts/autobahn`). Not part of the `surge` binary.
//!
//! It is built only from surge-core's public pieces, driven the way the
//! gateway's shard drives them (`runtime-tokio/src/shard/link.rs`): core's
//! `Handshake` over the first bytes, `FrameDecoder` over every read,
//! `CloseState` for the closing handshake, the `*_frame_into` encoders for
//! what goes back. Text and binary messages are echoed, pings answered
//! with a pong carrying the same payload, a client's Close echoed with its
//! code, and a protocol error closed with the error's code. Once
//! `core::connection::Connection` exists this becomes a driver of it.
//!
//! Unlike the gateway it keeps binary payloads (`keep_binary`) and takes
//! messages of up to 16 MiB, Autobahn's largest (cases 9.1.6 and 9.2.6).
//!
//! Usage: `autobahn_echo [ADDR]` (default `127.0.0.1:0`). It prints
//! `listening on ws://ADDR/` once bound, and runs until killed.

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use surge_core::Instant;
use surge_core::frame::{
    CloseAction, CloseState, DecodeLimits, Event, FrameDecoder, FrameError, MAX_HEADER_LEN, OpCode,
    close_frame_into, encode_header, pong_frame_into, text_frame_into,
};
use surge_core::handshake::{Handshake, HandshakeConfig, Outcome, Progress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Autobahn's largest messages (cases 9.1.6, 9.2.6) are exactly 16 MiB.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// How long a connection that ends is kept open to read and discard what
/// the client still sends, so that our last bytes (the Close frame) are not
/// destroyed by a reset for unread data.
const LINGER: Duration = Duration::from_secs(2);

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on ws://{}/", listener.local_addr()?);
    let config = Arc::new(HandshakeConfig {
        path: "/".to_owned(),
        ..HandshakeConfig::default()
    });
    let epoch = StdInstant::now();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let config = Arc::clone(&config);
        tokio::spawn(async move {
            if let Err(e) = serve(stream, config, epoch).await {
                eprintln!("connection ended: {e}");
            }
        });
    }
}

/// Core's clock: nanoseconds since the endpoint started.
fn now(epoch: StdInstant) -> Instant {
    Instant::from_nanos(u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

async fn serve(
    mut stream: TcpStream,
    config: Arc<HandshakeConfig>,
    epoch: StdInstant,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut handshake = Handshake::new(config, now(epoch));
    let accepted = loop {
        let left = handshake
            .poll_timeout()
            .map_or(Duration::ZERO, |deadline| deadline - now(epoch));
        let n = match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(read) => read?,
            Err(_) => match handshake.handle_timeout(now(epoch)) {
                Some(outcome) => return finish(stream, outcome.response()).await,
                None => continue,
            },
        };
        if n == 0 {
            return Ok(());
        }
        match handshake.feed(&buf[..n], now(epoch)) {
            Progress::NeedMore => {}
            Progress::Done(Outcome::Accept(accepted)) => break accepted,
            Progress::Done(outcome) => return finish(stream, outcome.response()).await,
            Progress::Finished => unreachable!("fed after the outcome"),
        }
    };
    stream.write_all(&accepted.response).await?;

    let mut decoder = FrameDecoder::new(DecodeLimits {
        max_message_bytes: MAX_MESSAGE_BYTES,
        keep_binary: true,
    });
    let mut close = CloseState::new();
    let mut out = Vec::new();
    // The bytes that followed the request head come first.
    let mut error = decode(&mut decoder, &accepted.leftover, &mut close, &mut out);
    loop {
        // A protocol error: echoes of what came before it go first, then a
        // Close with the error's code, then TCP closes.
        if let Some(e) = error.take()
            && close.fail()
        {
            close_frame_into(&mut out, e.close_code(), &e.to_string());
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if close.is_done() {
            return linger(stream, &mut buf).await;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            close.on_transport_closed();
            return Ok(());
        }
        error = decode(&mut decoder, &buf[..n], &mut close, &mut out);
    }
}

/// Decodes `input`, appending the answers to `out`; returns the protocol
/// error that stopped decoding, if any.
fn decode(
    decoder: &mut FrameDecoder,
    mut input: &[u8],
    close: &mut CloseState,
    out: &mut Vec<u8>,
) -> Option<FrameError> {
    loop {
        let event = match decoder.feed(&mut input) {
            Ok(Some(event)) => event,
            Ok(None) => return None,
            Err(e) => return Some(e),
        };
        // After a Close nothing more is sent (the decoder ignores the
        // client's bytes after its Close anyway).
        let open = close.is_open();
        match event {
            Event::Text(text) if open => text_frame_into(out, &[text.as_bytes()]),
            // keep_binary is set, so the payload is always there.
            Event::Binary {
                payload: Some(payload),
                ..
            } if open => {
                let mut header = [0; MAX_HEADER_LEN];
                let n = encode_header(OpCode::Binary, true, payload.len(), &mut header);
                out.extend_from_slice(&header[..n]);
                out.extend_from_slice(&payload);
            }
            Event::Ping(payload) if open => pong_frame_into(out, &payload),
            Event::Close { code, .. } => match close.on_peer_close(code) {
                CloseAction::ReplyThenCloseTcp { code } => close_frame_into(out, code, ""),
                CloseAction::CloseTcp | CloseAction::None => {}
            },
            Event::Text(_) | Event::Binary { .. } | Event::Ping(_) | Event::Pong(_) => {}
        }
    }
}

/// Writes a handshake answer (a rejection or a 408) and ends the connection.
async fn finish(mut stream: TcpStream, response: &[u8]) -> std::io::Result<()> {
    stream.write_all(response).await?;
    let mut buf = vec![0u8; 4096];
    linger(stream, &mut buf).await
}

/// Ends a connection whose last bytes are written: shuts down writing (the
/// client reads EOF after them), then reads and discards until the client
/// closes or [`LINGER`] passes, so unread client bytes never make the
/// kernel answer with a reset that destroys what we sent.
async fn linger(mut stream: TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    stream.shutdown().await?;
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = stream.read(buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    Ok(())
}
