//! One connection, from accept to close, in one task: the handshake through
//! core's state machine, then the WebSocket session driven by core's
//! `Session`, framed by core's `frame` codec. The task owns no buffer while
//! the connection is idle: the decoder allocates only for a message in
//! progress and the write buffer only while there is something to send. The slot reserved at accept is released exactly once, by
//! [`SlotGuard`]'s `Drop` if no path released it explicitly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::cell::RefCell;
use std::pin::Pin;
use std::task::Poll;
use surge_core::admission::{AbortCause, Admission, LiveSlot, Reservation};
use surge_core::frame::{
    DecodeLimits, Event, FrameDecoder, FrameError, close_frame_into, ping_frame_into,
    pong_frame_into, text_frame_into,
};
use surge_core::handshake::{Handshake, Outcome, Progress};
use surge_core::protocol::{CloseCode, OutFrame};
use surge_core::session::{Action, Session, resume_gap};
use surge_core::subjects::Pattern;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tracing::Instrument;

use crate::gateway::Context;
use crate::shard::{ConnShared, Shard, lock};

/// Holds a slot and gives it back exactly once.
pub(crate) struct SlotGuard {
    admission: Arc<Mutex<Admission>>,
    state: SlotState,
}

enum SlotState {
    Reserved(Reservation),
    Live(LiveSlot),
    Released,
}

impl SlotGuard {
    pub fn new(admission: Arc<Mutex<Admission>>, reservation: Reservation) -> Self {
        SlotGuard {
            admission,
            state: SlotState::Reserved(reservation),
        }
    }

    fn complete(&mut self) {
        if let SlotState::Reserved(r) = std::mem::replace(&mut self.state, SlotState::Released) {
            self.state = SlotState::Live(lock(&self.admission).complete(r));
        }
    }

    fn abort(&mut self, cause: AbortCause) {
        if let SlotState::Reserved(r) = std::mem::replace(&mut self.state, SlotState::Released) {
            lock(&self.admission).abort(r, cause);
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.state, SlotState::Released) {
            SlotState::Reserved(r) => lock(&self.admission).abort(r, AbortCause::Io),
            SlotState::Live(s) => lock(&self.admission).close(s),
            SlotState::Released => {}
        }
    }
}

/// Writes a rejection and closes, without letting a client that does not
/// read hold the task for long.
async fn answer_and_close<S: AsyncWrite + Unpin>(stream: &mut S, response: &[u8]) {
    let write = async {
        stream.write_all(response).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Runs one accepted connection to its end.
pub(crate) async fn run<S>(mut stream: S, mut slot: SlotGuard, ctx: Arc<Context>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let SlotState::Reserved(r) = &slot.state else {
        return;
    };
    let id = r.id();
    let span = tracing::info_span!("conn", id = %id, shard = id.shard.0);
    async move {
        // Boxed so that nothing of the handshake stays in the task's state
        // once the connection is upgraded: only the leftover bytes do.
        let Some((response, leftover)) = Box::pin(upgrade(&mut stream, &mut slot, &ctx)).await
        else {
            return;
        };
        let shard = Arc::clone(&ctx.shards[id.shard.0 as usize]);
        let shared = Arc::new(ConnShared {
            session: Mutex::new(Session::new(
                id,
                Arc::clone(&ctx.session_config),
                ctx.clock.now(),
            )),
            notify: Notify::new(),
        });
        shard.register(id.serial, Arc::clone(&shared));
        ctx.metrics.connections.inc();
        let end = SessionDriver {
            stream,
            decoder: FrameDecoder::new(DecodeLimits {
                max_message_bytes: ctx.session_config.max_message_bytes,
            }),
            // The 101 goes out in the same write as the welcome frame.
            out: response,
            shared: &shared,
            shard: &shard,
            ctx: &ctx,
            serial: id.serial,
        }
        .run(leftover)
        .await;
        let patterns: Vec<Pattern> = lock(&shared.session).subscriptions().cloned().collect();
        shard.unregister(id.serial, &patterns);
        ctx.metrics.connections.dec();
        tracing::debug!(end = %end.describe(), "connection ended");
        drop(slot);
    }
    .instrument(span)
    .await
}

/// Runs the handshake. On success returns the 101 response (written by
/// the session together with its welcome frame, one syscall instead of
/// two) and the bytes that followed the request head; on a rejection
/// writes it and returns `None`. The slot is completed or aborted here.
async fn upgrade<S>(
    stream: &mut S,
    slot: &mut SlotGuard,
    ctx: &Context,
) -> Option<(Vec<u8>, Vec<u8>)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let started = ctx.clock.now();
    let Some(outcome) = handshake(stream, ctx, started).await else {
        slot.abort(AbortCause::Io);
        ctx.metrics.handshake("io").inc();
        return None;
    };
    let accepted = match outcome {
        Outcome::Accept(accepted) => accepted,
        Outcome::Reject(rejection) | Outcome::TimedOut(rejection) => {
            let cause = if matches!(rejection.status, 408) {
                AbortCause::TimedOut
            } else {
                AbortCause::Rejected
            };
            // The slot is free before the answer is even written.
            slot.abort(cause);
            ctx.metrics.handshake_rejected(&rejection.reason);
            tracing::debug!(status = rejection.status, reason = %rejection.reason, "handshake rejected");
            answer_and_close(stream, &rejection.response).await;
            return None;
        }
    };
    slot.complete();
    ctx.metrics.handshake("accepted").inc();
    let elapsed = ctx.clock.now().saturating_duration_since(started);
    ctx.metrics.handshake_seconds.observe(elapsed.as_secs_f64());
    Some((accepted.response, accepted.leftover))
}

/// Reads the request head through core's handshake until an outcome, or
/// `None` if the peer went away first.
async fn handshake<S: AsyncRead + Unpin>(
    stream: &mut S,
    ctx: &Context,
    started: surge_core::Instant,
) -> Option<Outcome> {
    let mut hs = Handshake::new(Arc::clone(&ctx.handshake_config), started);
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let deadline = hs.poll_timeout()?;
        tokio::select! {
            biased;
            _ = shutdown.changed() => return None,
            read = read_into(stream, |bytes| hs.feed(bytes, ctx.clock.now())) => match read {
                Ok(Some(Progress::NeedMore)) => {}
                Ok(Some(Progress::Done(outcome))) => return Some(outcome),
                Ok(Some(Progress::Finished) | None) | Err(_) => return None,
            },
            _ = tokio::time::sleep_until(ctx.clock.to_tokio(deadline)) => {
                if let Some(outcome) = hs.handle_timeout(ctx.clock.now()) {
                    return Some(outcome);
                }
            }
        }
    }
}

thread_local! {
    /// The read buffer every connection on this thread shares: bytes are
    /// handed to core (handshake or frame decoder) before the read returns,
    /// so a waiting connection carries no read buffer of its own.
    static READ_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; 16 * 1024].into_boxed_slice());
}

/// Reads what the socket has into the thread's shared buffer and passes the
/// bytes to `consume` within the same poll. `Ok(None)` is end of stream.
async fn read_into<S, T>(
    stream: &mut S,
    mut consume: impl FnMut(&[u8]) -> T,
) -> std::io::Result<Option<T>>
where
    S: AsyncRead + Unpin,
{
    std::future::poll_fn(|cx| {
        READ_BUFFER.with(|cell| {
            let mut buffer = cell.borrow_mut();
            let mut read = ReadBuf::new(&mut buffer[..]);
            match Pin::new(&mut *stream).poll_read(cx, &mut read) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(Ok(None)),
                Poll::Ready(Ok(())) => Poll::Ready(Ok(Some(consume(read.filled())))),
            }
        })
    })
    .await
}

/// Every event in `input`, and the protocol error that stopped decoding, if any.
fn decode_all(decoder: &mut FrameDecoder, mut input: &[u8]) -> (Vec<Event>, Option<FrameError>) {
    let mut events = Vec::new();
    loop {
        match decoder.feed(&mut input) {
            Ok(Some(event)) => events.push(event),
            Ok(None) => return (events, None),
            Err(e) => return (events, Some(e)),
        }
    }
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    ClientClosed,
    ClosedByServer(CloseCode),
    /// The client broke the framing protocol; closed with this code.
    Protocol(u16),
    Io(String),
}

impl End {
    fn describe(&self) -> String {
        match self {
            End::ClientClosed => "client closed".into(),
            End::ClosedByServer(code) => format!("closed by the server with {}", code.code()),
            End::Protocol(code) => format!("protocol error, closed with {code}"),
            End::Io(e) => format!("i/o: {e}"),
        }
    }
}

/// How long a server-initiated close waits for the client's Close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

struct SessionDriver<'a, S> {
    stream: S,
    decoder: FrameDecoder,
    /// Frames waiting to be written (pongs, then queued session frames).
    out: Vec<u8>,
    shared: &'a ConnShared,
    shard: &'a Shard,
    ctx: &'a Context,
    serial: u64,
}

impl<S> SessionDriver<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn run(mut self, leftover: Vec<u8>) -> End {
        // Shutdown reaches a running session through `Gateway::shutdown`,
        // which closes it and wakes it; one that registered after that
        // sweep sees the flag here.
        if *self.ctx.shutdown.borrow() {
            lock(&self.shared.session).close(CloseCode::GoingAway, "server shutting down".into());
        }
        if !leftover.is_empty() {
            let decoded = decode_all(&mut self.decoder, &leftover);
            drop(leftover);
            if let Some(end) = self.on_events(decoded).await {
                return end;
            }
        }
        loop {
            if let Some(end) = self.apply_actions().await {
                return end;
            }
            if let Err(e) = self.write_queued().await {
                return End::Io(e);
            }
            let wake = lock(&self.shared.session).poll_timeout();
            let sleep_until = wake.map(|t| self.ctx.clock.to_tokio(t));
            tokio::select! {
                biased;
                _ = self.shared.notify.notified() => {}
                read = read_into(&mut self.stream, |bytes| decode_all(&mut self.decoder, bytes)) => match read {
                    Ok(None) => return End::ClientClosed,
                    Ok(Some(decoded)) => {
                        if let Some(end) = self.on_events(decoded).await {
                            return end;
                        }
                    }
                    Err(e) => return End::Io(e.to_string()),
                },
                _ = sleep_opt(sleep_until) => {
                    lock(&self.shared.session).handle_timeout(self.ctx.clock.now());
                }
            }
        }
    }

    /// Hands decoded client messages to the session; a protocol error or a
    /// client Close ends the connection.
    async fn on_events(
        &mut self,
        (events, error): (Vec<Event>, Option<FrameError>),
    ) -> Option<End> {
        let now = self.ctx.clock.now();
        for event in events {
            match event {
                Event::Text(text) => {
                    self.ctx.metrics.client_requests.inc();
                    lock(&self.shared.session).handle_text(&text, now);
                }
                Event::Binary { .. } => lock(&self.shared.session).handle_binary(now),
                Event::Ping(payload) => {
                    lock(&self.shared.session).on_heard(now);
                    pong_frame_into(&mut self.out, &payload);
                }
                Event::Pong(_) => lock(&self.shared.session).on_heard(now),
                Event::Close { code, .. } => {
                    // Echo the client's code (1000 when it gave none),
                    // after whatever was already queued for it.
                    return Some(Box::pin(self.finish(code.unwrap_or(1000), "")).await);
                }
            }
        }
        if let Some(e) = error {
            tracing::debug!(error = %e, "client broke the framing protocol");
            let code = e.close_code();
            Box::pin(self.finish(code, &e.to_string())).await;
            return Some(End::Protocol(code));
        }
        None
    }

    /// Writes what is queued and a Close frame, then closes the TCP stream.
    async fn finish(&mut self, code: u16, reason: &str) -> End {
        let _ = self.write_queued().await;
        close_frame_into(&mut self.out, code, reason);
        let _ = self.flush_out().await;
        let _ = tokio::time::timeout(CLOSE_WAIT, self.stream.shutdown()).await;
        End::ClientClosed
    }

    /// Applies the session's actions in order. Returns the end of the
    /// session when one of them closes it.
    async fn apply_actions(&mut self) -> Option<End> {
        loop {
            let action = lock(&self.shared.session).poll_action();
            let action = action?;
            match action {
                Action::Subscribe { patterns, reply } => {
                    self.shard.subscribe(self.serial, &patterns);
                    lock(&self.shared.session).confirm(reply);
                }
                Action::Unsubscribe { patterns, reply } => {
                    self.shard.unsubscribe(self.serial, &patterns);
                    lock(&self.shared.session).confirm(reply);
                }
                Action::Resume {
                    subscribe,
                    patterns,
                    since_sseq,
                } => {
                    // Subscribe first: live messages from here on are held
                    // by the session, and the fetch below covers the rest.
                    self.shard.subscribe(self.serial, &subscribe);
                    if let Err(e) = Box::pin(self.resume(patterns, since_sseq)).await {
                        return Some(End::Io(e));
                    }
                }
                Action::Ping => ping_frame_into(&mut self.out, b""),
                Action::Close { code, reason } => {
                    return Some(Box::pin(self.close(code, reason)).await);
                }
            }
        }
    }

    async fn resume(&mut self, patterns: Vec<Pattern>, since: u64) -> Result<(), String> {
        self.ctx.metrics.resumes.inc();
        let fetched = match self.ctx.broker().fetch(patterns, since).await {
            Ok(f) => f,
            Err(e) => {
                lock(&self.shared.session).resume_failed(&e.to_string(), self.ctx.clock.now());
                return Ok(());
            }
        };
        if let Some(oldest) = resume_gap(since, fetched.first_retained, fetched.last_sseq) {
            self.ctx.metrics.resume_gaps.inc();
            lock(&self.shared.session).resume_gap(oldest);
        }
        for message in &fetched.messages {
            loop {
                let pushed = lock(&self.shared.session).recover(message);
                if pushed.is_ok() {
                    self.ctx.metrics.recovered.inc();
                    break;
                }
                // Queue full: write what is queued, then retry.
                self.write_queued().await?;
            }
        }
        lock(&self.shared.session).resume_complete(fetched.last_sseq, self.ctx.clock.now());
        Ok(())
    }

    /// Frames every queued message into one buffer and writes it with one
    /// call: many frames per syscall when the client keeps up.
    async fn write_queued(&mut self) -> Result<(), String> {
        {
            let mut session = lock(&self.shared.session);
            while let Some(frame) = session.pop_frame() {
                match &frame {
                    OutFrame::Control(body) => text_frame_into(&mut self.out, &[body]),
                    OutFrame::Message { head, tail } => {
                        text_frame_into(&mut self.out, &[head, tail]);
                    }
                }
            }
            session.release_idle_memory();
        }
        self.flush_out().await
    }

    /// Writes `out`, bounded by the write timeout.
    async fn flush_out(&mut self) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        let result = match tokio::time::timeout(self.ctx.write_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                self.ctx.metrics.slow_disconnects.inc();
                Err("write timed out: client not reading".into())
            }
        };
        // Released after every write: an allocation costs far less than the
        // syscall it accompanies, and an idle connection then holds no
        // write buffer at all.
        self.out = Vec::new();
        result
    }

    async fn close(&mut self, code: CloseCode, reason: String) -> End {
        self.ctx.metrics.disconnect(code);
        if code == CloseCode::Policy && reason.contains("too slow") {
            self.ctx.metrics.slow_disconnects.inc();
        }
        // Frames queued before the close (a last notice) go first.
        let _ = self.write_queued().await;
        close_frame_into(&mut self.out, code.code(), &reason);
        if self.flush_out().await.is_ok() {
            self.await_client_close().await;
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, self.stream.shutdown()).await;
        End::ClosedByServer(code)
    }

    /// After a server-initiated close, waits briefly for the client's Close
    /// so the TCP close comes from the side the RFC expects.
    async fn await_client_close(&mut self) {
        let wait = async {
            loop {
                let read = read_into(&mut self.stream, |b| decode_all(&mut self.decoder, b)).await;
                match read {
                    Ok(Some((events, error))) => {
                        let closed = events.iter().any(|e| matches!(e, Event::Close { .. }));
                        if closed || error.is_some() {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, wait).await;
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
