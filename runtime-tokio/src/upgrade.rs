//! A connection from accept to upgrade, in a task of its own: the TLS
//! handshake when the listener has TLS, then the WebSocket handshake
//! through core's state machine, both under one deadline; a rejection
//! written and closed, or the upgraded socket handed to its shard (which
//! drives it from then on; see `shard`). The slot reserved at accept is
//! released exactly once, by [`SlotGuard`]'s `Drop` if no path released it
//! explicitly.

use std::sync::Arc;

use surge_core::admission::AbortCause;
use surge_core::handshake::{Accepted, Handshake, Outcome, Progress, probe_response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::context::Context;
use crate::linger::answer_and_linger;
use crate::read_buffer::read_into;
use crate::shard::{Handoff, Inbox};
use crate::slot::{SlotGuard, SlotState};
use crate::tls::{TlsConfig, TlsStream, Upgraded, accept};

/// Runs one accepted connection's handshakes (TLS when the listener has
/// it, then WebSocket) and hands the upgraded socket to its shard.
pub(crate) async fn run<S>(
    mut stream: S,
    mut slot: SlotGuard,
    ctx: Arc<Context>,
    shard: mpsc::UnboundedSender<Inbox<Upgraded<S>>>,
    accepted: surge_core::Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let SlotState::Reserved(r) = &slot.state else {
        return;
    };
    let id = r.id();
    let span = tracing::info_span!("conn", id = %id, shard = id.shard.0);
    async move {
        let (stream, upgraded) = match ctx.tls.clone() {
            None => {
                let Some(upgraded) = upgrade(&mut stream, &mut slot, &ctx, accepted).await else {
                    return;
                };
                let stream = Upgraded { stream, tls: None };
                (stream, upgraded)
            }
            Some(tls) => {
                let Some(mut secured) =
                    tls_handshake(stream, &tls, &mut slot, &ctx, accepted).await
                else {
                    return;
                };
                let Some(upgraded) = upgrade(&mut secured, &mut slot, &ctx, accepted).await else {
                    return;
                };
                let (stream, session) = secured.into_parts();
                let tls = Some(Box::new(session));
                (Upgraded { stream, tls }, upgraded)
            }
        };
        let deflate = upgraded.deflate();
        let handoff = Handoff {
            deflate,
            stream,
            slot,
            response: upgraded.response,
            leftover: upgraded.leftover,
            grant: upgraded.grant,
            accepted,
        };
        if shard.send(Inbox::Adopt(handoff)).is_err() {
            tracing::debug!("shard gone: connection dropped");
        }
    }
    .instrument(span)
    .await
}

/// The TLS handshake, within the handshake deadline counted from the
/// accept (the WebSocket handshake then gets what is left of it). A client
/// that sends nothing, half a ClientHello or no acceptable one is closed
/// and its slot released.
async fn tls_handshake<S>(
    stream: S,
    tls: &TlsConfig,
    slot: &mut SlotGuard,
    ctx: &Context,
    accepted: surge_core::Instant,
) -> Option<TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let deadline = ctx.clock.to_tokio(accepted + ctx.handshake_config.timeout);
    let mut shutdown = ctx.shutdown.clone();
    let outcome = tokio::select! {
        biased;
        _ = shutdown.changed() => None,
        done = tokio::time::timeout_at(deadline, accept(stream, Arc::clone(tls.server_config()))) => Some(done),
    };
    let (cause, label) = match outcome {
        Some(Ok(Ok(secured))) => return Some(secured),
        Some(Ok(Err(e))) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            (AbortCause::Rejected, "tls_failed")
        }
        Some(Err(_elapsed)) => (AbortCause::TimedOut, "tls_timeout"),
        None => (AbortCause::Io, "io"),
    };
    slot.abort(cause);
    ctx.metrics.handshake(label).inc();
    None
}

/// Runs the handshake. On success returns the accepted upgrade: its 101
/// response (written by the shard together with the welcome frame, one
/// syscall instead of two), the bytes that followed the request head and
/// the token's grant; on a rejection writes it and returns `None`. The slot
/// is aborted here on failure; on success it is completed by the shard
/// that takes the connection.
async fn upgrade<S>(
    stream: &mut S,
    slot: &mut SlotGuard,
    ctx: &Context,
    accepted: surge_core::Instant,
) -> Option<Accepted>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // The deadline counts from the accept, so time spent waiting for this
    // task to be scheduled is part of it.
    let Some(outcome) = handshake(stream, ctx, accepted).await else {
        slot.abort(AbortCause::Io);
        ctx.metrics.handshake("io").inc();
        return None;
    };
    let accepted = match outcome {
        Outcome::Accept(accepted) => accepted,
        Outcome::Probe => {
            slot.abort(AbortCause::Rejected);
            ctx.metrics.handshake("probe").inc();
            let response = probe_response(ctx.readiness().is_ok());
            answer_and_linger(stream, &response).await;
            return None;
        }
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
            answer_and_linger(stream, &rejection.response).await;
            return None;
        }
    };
    if let Some(user) = accepted.grant.as_ref().and_then(|g| g.sub.as_deref())
        && let Err((refusal, rejection)) = slot.bind_user(user)
    {
        ctx.metrics.refused(&refusal);
        tracing::debug!(reason = %refusal, "handshake refused: per-user limit");
        answer_and_linger(stream, &rejection.response).await;
        return None;
    }
    ctx.metrics.handshake("accepted").inc();
    Some(accepted)
}

/// Reads the request head through core's handshake until an outcome, or
/// `None` if the peer went away first.
async fn handshake<S: AsyncRead + Unpin>(
    stream: &mut S,
    ctx: &Context,
    started: surge_core::Instant,
) -> Option<Outcome> {
    let mut hs = Handshake::new(
        Arc::clone(&ctx.handshake_config),
        started,
        ctx.clock.unix_at(started),
    );
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
