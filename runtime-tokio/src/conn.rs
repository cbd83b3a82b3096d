//! One connection, from accept to close, in one task: the handshake through
//! core's state machine, then the WebSocket session driven by core's
//! `Session`. The slot reserved at accept is released exactly once, by
//! [`SlotGuard`]'s `Drop` if no path released it explicitly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use surge_core::admission::{AbortCause, Admission, LiveSlot, Reservation};
use surge_core::handshake::{Handshake, Outcome, Progress};
use surge_core::protocol::CloseCode;
use surge_core::session::{Action, Session, resume_gap};
use surge_core::subjects::Pattern;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
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
        let started = ctx.clock.now();
        let Some(outcome) = handshake(&mut stream, &ctx, started).await else {
            slot.abort(AbortCause::Io);
            ctx.metrics.handshake("io").inc();
            return;
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
                answer_and_close(&mut stream, &rejection.response).await;
                return;
            }
        };
        if stream.write_all(&accepted.response).await.is_err() {
            slot.abort(AbortCause::Io);
            ctx.metrics.handshake("io").inc();
            return;
        }
        slot.complete();
        ctx.metrics.handshake("accepted").inc();
        let elapsed = ctx.clock.now().saturating_duration_since(started);
        ctx.metrics.handshake_seconds.observe(elapsed.as_secs_f64());
        let ws = if accepted.leftover.is_empty() {
            WebSocketStream::from_raw_socket(stream, Role::Server, Some(ctx.ws_config)).await
        } else {
            WebSocketStream::from_partially_read(stream, accepted.leftover, Role::Server, Some(ctx.ws_config))
                .await
        };
        let shard = Arc::clone(&ctx.shards[id.shard.0 as usize]);
        let shared = Arc::new(ConnShared {
            session: Mutex::new(Session::new(id, Arc::clone(&ctx.session_config), ctx.clock.now())),
            notify: Notify::new(),
        });
        shard.register(id.serial, Arc::clone(&shared));
        ctx.metrics.connections.inc();
        let end = SessionDriver {
            ws,
            shared: &shared,
            shard: &shard,
            ctx: &ctx,
            serial: id.serial,
        }
        .run()
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

/// Reads the request head through core's handshake until an outcome, or
/// `None` if the peer went away first.
async fn handshake<S: AsyncRead + Unpin>(
    stream: &mut S,
    ctx: &Context,
    started: surge_core::Instant,
) -> Option<Outcome> {
    let mut hs = Handshake::new(Arc::clone(&ctx.handshake_config), started);
    let mut buf = vec![0u8; 2048];
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let deadline = hs.poll_timeout()?;
        tokio::select! {
            biased;
            _ = shutdown.changed() => return None,
            read = stream.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => n,
                };
                match hs.feed(&buf[..n], ctx.clock.now()) {
                    Progress::NeedMore => {}
                    Progress::Done(outcome) => return Some(outcome),
                    Progress::Finished => return None,
                }
            }
            _ = tokio::time::sleep_until(ctx.clock.to_tokio(deadline)) => {
                if let Some(outcome) = hs.handle_timeout(ctx.clock.now()) {
                    return Some(outcome);
                }
            }
        }
    }
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    ClientClosed,
    ClosedByServer(CloseCode),
    Io(String),
}

impl End {
    fn describe(&self) -> String {
        match self {
            End::ClientClosed => "client closed".into(),
            End::ClosedByServer(code) => format!("closed by the server with {}", code.code()),
            End::Io(e) => format!("i/o: {e}"),
        }
    }
}

struct SessionDriver<'a, S> {
    ws: WebSocketStream<S>,
    shared: &'a ConnShared,
    shard: &'a Shard,
    ctx: &'a Context,
    serial: u64,
}

impl<S> SessionDriver<'_, S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn run(mut self) -> End {
        let mut shutdown = self.ctx.shutdown.clone();
        if *shutdown.borrow() {
            lock(&self.shared.session).close(CloseCode::GoingAway, "server shutting down".into());
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
                changed = shutdown.changed() => {
                    if changed.is_ok() && *shutdown.borrow() {
                        lock(&self.shared.session).close(CloseCode::GoingAway, "server shutting down".into());
                    }
                }
                _ = self.shared.notify.notified() => {}
                frame = self.ws.next() => {
                    if let Some(end) = self.on_frame(frame).await {
                        return end;
                    }
                }
                _ = sleep_opt(sleep_until) => {
                    lock(&self.shared.session).handle_timeout(self.ctx.clock.now());
                }
            }
        }
    }

    async fn on_frame(&mut self, frame: Option<Result<Message, WsError>>) -> Option<End> {
        let now = self.ctx.clock.now();
        match frame {
            None => Some(End::ClientClosed),
            Some(Ok(Message::Text(text))) => {
                self.ctx.metrics.client_requests.inc();
                lock(&self.shared.session).handle_text(text.as_str(), now);
                None
            }
            Some(Ok(Message::Binary(_))) => {
                lock(&self.shared.session).handle_binary(now);
                None
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                lock(&self.shared.session).on_heard(now);
                // tungstenite queued the pong; send it now.
                let _ = self.ws.flush().await;
                None
            }
            Some(Ok(Message::Close(_))) => Some(End::ClientClosed),
            Some(Err(WsError::Capacity(e))) => {
                lock(&self.shared.session).close(CloseCode::TooBig, e.to_string());
                None
            }
            Some(Err(e)) => Some(End::Io(e.to_string())),
        }
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
                    if let Err(e) = self.resume(patterns, since_sseq).await {
                        return Some(End::Io(e));
                    }
                }
                Action::Ping => {
                    if self.ws.send(Message::Ping(Bytes::new())).await.is_err() {
                        return Some(End::Io("ping failed".into()));
                    }
                }
                Action::Close { code, reason } => {
                    return Some(self.close(code, reason).await);
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

    /// Writes every queued frame and flushes once: one syscall for many
    /// frames when the client keeps up.
    async fn write_queued(&mut self) -> Result<(), String> {
        let frames: Vec<_> = {
            let mut session = lock(&self.shared.session);
            std::iter::from_fn(|| session.pop_frame()).collect()
        };
        if frames.is_empty() {
            return Ok(());
        }
        let write = async {
            for frame in frames {
                let text = Utf8Bytes::try_from(frame.to_bytes())
                    .map_err(|_| "a frame was not UTF-8".to_string())?;
                self.ws
                    .feed(Message::Text(text))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            self.ws.flush().await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(self.ctx.write_timeout, write).await {
            Ok(result) => result,
            Err(_) => {
                self.ctx.metrics.slow_disconnects.inc();
                Err("write timed out: client not reading".into())
            }
        }
    }

    async fn close(&mut self, code: CloseCode, reason: String) -> End {
        self.ctx.metrics.disconnect(code);
        if code == CloseCode::Policy && reason.contains("too slow") {
            self.ctx.metrics.slow_disconnects.inc();
        }
        // Frames queued before the close (a last notice) go first.
        let _ = self.write_queued().await;
        let frame = CloseFrame {
            code: WsCloseCode::from(code.code()),
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(Some(frame))).await;
        End::ClosedByServer(code)
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
