//! A simulated browser that subscribes (or resumes) and reads what the
//! gateway sends, checking on every frame what a client can check: `seq`
//! goes up by exactly one (no silent gap, no reordering), no stream
//! message arrives twice.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::net::SimStream;
use crate::world::state::RunState;

/// Everything one client saw, over all its connections.
#[derive(Debug, Clone, Default)]
pub struct SubscriberLog {
    /// Stream sequence → how many times it arrived.
    pub received: BTreeMap<u64, u32>,
    /// Highest throttle level announced to this client.
    pub max_level: u8,
    pub throttle_updates: u32,
    /// Close codes the gateway sent.
    pub close_codes: Vec<u16>,
    pub connections: u32,
    pub resumed: u32,
    pub resume_gaps: u32,
    pub recovered: u32,
    /// Frames that broke the `seq` rule.
    pub seq_errors: u32,
    pub duplicates: u32,
    /// The stream epoch of the last `resumed`.
    pub epoch: Option<String>,
    /// `error` frames, by code.
    pub errors: Vec<String>,
    /// Every `message` frame that was not a replay (live or recovered).
    pub frames: u64,
}

impl SubscriberLog {
    pub fn last_sseq(&self) -> u64 {
        self.received.keys().next_back().copied().unwrap_or(0)
    }
}

/// How a session with the gateway ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// `stop` said so and the client closed.
    Stopped,
    /// The gateway closed (with this code, if any).
    ClosedByServer(Option<u16>),
    /// The connection broke.
    Broken,
}

/// What to ask for first.
#[derive(Debug, Clone)]
pub enum Start {
    Subscribe(Vec<String>),
    Resume {
        channels: Vec<String>,
        since_sseq: u64,
        /// The epoch `since_sseq` counts in, when the client knows it.
        epoch: Option<String>,
    },
}

/// Subscribes (or resumes), then reads until `stop()` or the end of the
/// connection; sleeps `read_pause` after each frame (a slow reader).
pub async fn session(
    ws: &mut WebSocketStream<SimStream>,
    client: u64,
    start: &Start,
    read_pause: Option<Duration>,
    log: &RefCell<SubscriberLog>,
    run: &RunState,
    stop: &dyn Fn(&SubscriberLog) -> bool,
) -> SessionEnd {
    session_polling(
        ws,
        client,
        start,
        read_pause,
        log,
        run,
        stop,
        Duration::from_millis(100),
    )
    .await
}

/// [`session`], asking `stop` after every frame and at least every `poll`
/// (a longer `poll` wakes an idle client less often: what lets a hundred
/// thousand simulated clients idle cheaply).
#[allow(clippy::too_many_arguments)]
pub async fn session_polling(
    ws: &mut WebSocketStream<SimStream>,
    client: u64,
    start: &Start,
    read_pause: Option<Duration>,
    log: &RefCell<SubscriberLog>,
    run: &RunState,
    stop: &dyn Fn(&SubscriberLog) -> bool,
    poll: Duration,
) -> SessionEnd {
    log.borrow_mut().connections += 1;
    let request = match start {
        Start::Subscribe(channels) => {
            serde_json::json!({"type": "subscribe", "channels": channels})
        }
        Start::Resume {
            channels,
            since_sseq,
            epoch: None,
        } => serde_json::json!({"type": "resume", "channels": channels, "since_sseq": since_sseq}),
        Start::Resume {
            channels,
            since_sseq,
            epoch: Some(epoch),
        } => {
            serde_json::json!({"type": "resume", "channels": channels, "since_sseq": since_sseq, "epoch": epoch})
        }
    };
    if ws
        .send(Message::Text(Utf8Bytes::from(request.to_string())))
        .await
        .is_err()
    {
        return SessionEnd::Broken;
    }
    let mut last_seq = 0u64;
    loop {
        if stop(&log.borrow()) {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
            return SessionEnd::Stopped;
        }
        let frame = match tokio::time::timeout(poll, ws.next()).await {
            Err(_) => continue,
            Ok(None) => return SessionEnd::Broken,
            Ok(Some(Err(_))) => return SessionEnd::Broken,
            Ok(Some(Ok(frame))) => frame,
        };
        match frame {
            Message::Text(text) => {
                on_text(text.as_str(), client, &mut last_seq, log, run);
            }
            Message::Close(frame) => {
                let code = frame.map(|f| u16::from(f.code));
                if let Some(code) = code {
                    log.borrow_mut().close_codes.push(code);
                }
                return SessionEnd::ClosedByServer(code);
            }
            _ => {}
        }
        if let Some(pause) = read_pause {
            tokio::time::sleep(pause).await;
        }
    }
}

fn on_text(
    text: &str,
    client: u64,
    last_seq: &mut u64,
    log: &RefCell<SubscriberLog>,
    run: &RunState,
) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        run.violation(format!("client {client}: a frame that is not JSON"));
        return;
    };
    let mut log = log.borrow_mut();
    match v["type"].as_str() {
        Some("message") => {
            let seq = v["seq"].as_u64().unwrap_or(0);
            let sseq = v["sseq"].as_u64().unwrap_or(0);
            let replayed = v["replayed"].as_bool().unwrap_or(false);
            if v["recovered"].as_bool().unwrap_or(false) {
                log.recovered += 1;
            }
            if !replayed {
                if seq != *last_seq + 1 {
                    log.seq_errors += 1;
                    run.violation(format!(
                        "client {client}: seq {seq} after {last_seq} (a silent gap or reordering)",
                        last_seq = *last_seq
                    ));
                }
                *last_seq = seq;
                log.frames += 1;
                let count = log.received.entry(sseq).or_insert(0);
                *count += 1;
                if *count == 2 {
                    log.duplicates += 1;
                    run.violation(format!(
                        "client {client}: stream message {sseq} arrived twice"
                    ));
                }
            }
        }
        Some("throttle_update") => {
            let level = v["level"].as_u64().unwrap_or(0) as u8;
            log.throttle_updates += 1;
            log.max_level = log.max_level.max(level);
        }
        Some("resumed") => {
            log.resumed += 1;
            if let Some(epoch) = v["epoch"].as_str() {
                log.epoch = Some(epoch.to_owned());
            }
        }
        Some("error") => {
            let code = v["code"].as_str().unwrap_or("").to_owned();
            log.errors.push(code);
        }
        Some("resume_gap") => log.resume_gaps += 1,
        _ => {}
    }
}
