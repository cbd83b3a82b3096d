//! An echo WebSocket endpoint for the Autobahn|Testsuite fuzzing client
//! (`scripts/autobahn`). Not part of the `surge` binary.
//!
//! After core's `Handshake`, every connection is a
//! `surge_core::connection::Connection` in echo mode (text and binary
//! messages echoed, no `welcome`, no inbound budget, messages up to
//! 16 MiB, Autobahn's largest in cases 9.1.6 and 9.2.6), driven by the
//! small loop in [`drive`]: framing, pongs, the closing handshake, the
//! order of what goes out and the lingering close are all core's.
//!
//! Usage: `autobahn_echo [ADDR]` (default `127.0.0.1:0`). It prints
//! `listening on ws://ADDR/` once bound, and runs until killed.

use std::io::{self, ErrorKind};
use std::sync::Arc;
use std::time::Duration;

use surge_core::admission::{ConnId, ShardId};
use surge_core::connection::{ConnEvent, Connection, EndReason};
use surge_core::handshake::{Handshake, HandshakeConfig, Outcome, Progress};
use surge_core::session::SessionConfig;
use surge_runtime::Clock;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on ws://{}/", listener.local_addr()?);
    let handshake = Arc::new(HandshakeConfig {
        path: "/".to_owned(),
        ..HandshakeConfig::default()
    });
    let session = Arc::new(SessionConfig {
        echo: true,
        inbound_frames_per_sec: 0,
        inbound_bytes_per_sec: 0,
        max_message_bytes: 16 << 20,
        ..SessionConfig::default()
    });
    let clock = Clock::start();
    for serial in 1.. {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let id = ConnId {
            shard: ShardId(0),
            serial,
        };
        let (handshake, session) = (Arc::clone(&handshake), Arc::clone(&session));
        tokio::spawn(async move {
            match serve(stream, id, handshake, session, clock).await {
                Ok(Some(end)) => eprintln!("{id}: {end}"),
                Ok(None) => {}
                Err(e) => eprintln!("{id}: {e}"),
            }
        });
    }
    Ok(())
}

/// Runs core's handshake, then the connection; returns how the
/// connection ended (`None` when the handshake did not upgrade).
async fn serve(
    mut stream: TcpStream,
    id: ConnId,
    handshake: Arc<HandshakeConfig>,
    session: Arc<SessionConfig>,
    clock: Clock,
) -> io::Result<Option<EndReason>> {
    let mut buf = vec![0u8; 64 * 1024];
    let accepted = clock.now();
    let mut handshake = Handshake::new(handshake, accepted, clock.unix_at(accepted));
    let outcome = loop {
        let deadline = handshake
            .poll_timeout()
            .map_or_else(tokio::time::Instant::now, |t| clock.to_tokio(t));
        let progress = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(read) => match read? {
                0 => return Ok(None),
                n => handshake.feed(&buf[..n], clock.now()),
            },
            Err(_) => match handshake.handle_timeout(clock.now()) {
                Some(outcome) => Progress::Done(outcome),
                None => continue,
            },
        };
        if let Progress::Done(outcome) = progress {
            break outcome;
        }
    };
    let accepted = match outcome {
        Outcome::Accept(accepted) => accepted,
        rejected => {
            // A 4xx or 408: write it, shut down writing, and read until
            // the client closes (for a second at most), so that it reads
            // the answer rather than a reset.
            stream.write_all(rejected.response()).await?;
            stream.shutdown().await?;
            let drain = async { while let Ok(1..) = stream.read(&mut buf).await {} };
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
            return Ok(None);
        }
    };
    let deflate = accepted.deflate();
    let mut conn = Connection::new(id, session, clock.now(), None, accepted.response);
    conn.set_deflate(deflate);
    // The bytes that followed the request head come first.
    conn.handle_bytes(&accepted.leftover, clock.now());
    Ok(Some(drive(stream, conn, &mut buf, clock).await))
}

/// Moves bytes and time between the socket and `conn` until it ends.
async fn drive(
    mut stream: TcpStream,
    mut conn: Connection,
    buf: &mut [u8],
    clock: Clock,
) -> EndReason {
    let mut scratch = Vec::new();
    loop {
        let now = clock.now();
        while let Some(event) = conn.poll_event(now) {
            match event {
                ConnEvent::ShutdownWrite => {
                    if stream.shutdown().await.is_err() {
                        conn.handle_io_error();
                    }
                }
                ConnEvent::Ended(reason) => return reason,
                ConnEvent::Subscribe(_) | ConnEvent::Unsubscribe(_) | ConnEvent::Fetch { .. } => {
                    unreachable!("echo mode speaks no surge protocol")
                }
            }
        }
        // Write until there is nothing to write or the socket is full.
        let mut wrote = false;
        while let Some(bytes) = conn.poll_transmit(&mut scratch, now) {
            match stream.try_write(bytes) {
                Ok(n) => conn.on_written(n, &scratch, now),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    conn.on_written(0, &scratch, now);
                    break;
                }
                Err(_) => conn.handle_io_error(),
            }
            wrote = true;
        }
        if wrote {
            // A write can lead to an event (the Close written: shut down).
            continue;
        }
        // Wait for bytes to read, room to write or the next deadline.
        let interest = if conn.wants_write() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let timeout = conn.poll_timeout().map(|t| clock.to_tokio(t));
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ready = stream.ready(interest) => match ready {
                Ok(ready) if ready.is_readable() => match stream.try_read(buf) {
                    Ok(0) => conn.handle_eof(clock.now()),
                    Ok(n) => conn.handle_bytes(&buf[..n], clock.now()),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => conn.handle_io_error(),
                },
                Ok(_) => {} // writable: the loop's top writes
                Err(_) => conn.handle_io_error(),
            },
            () = sleep => conn.handle_timeout(clock.now()),
        }
    }
}
