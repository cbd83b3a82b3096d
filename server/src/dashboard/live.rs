//! One dashboard frame per second, shared by every viewer.
//!
//! A single task scrapes the gateway's metrics once a second, turns the
//! scrape into a [`Frame`] (core's `Snapshotter`), serialises it once and
//! sends the same bytes to every viewer through a broadcast channel, so N
//! viewers cost one scrape and one serialisation per second, plus N
//! writes. While nobody watches the task only ticks: no scrape, and the
//! next frame is a first one (rates unknown). The last frames are kept in
//! a ring so a new viewer's charts start with the last minutes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use surge_core::dashboard::{Exposition, Frame, Snapshotter, Status};
use surge_runtime::Gateway;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// How often a frame is computed and sent.
pub const TICK: Duration = Duration::from_secs(1);
/// Frames kept for new viewers: five minutes.
pub const HISTORY: usize = 300;

/// The frames, as JSON, and who receives them.
#[derive(Debug)]
pub struct Live {
    /// Frames as JSON text, shared by every receiver.
    frames: broadcast::Sender<Arc<str>>,
    /// The last [`HISTORY`] frames; also the lock that orders a new
    /// viewer's subscription against a frame being sent.
    history: Mutex<VecDeque<Arc<str>>>,
}

impl Live {
    fn new() -> Self {
        // A slow viewer that falls 8 frames behind skips to the newest.
        let (frames, _) = broadcast::channel(8);
        Live {
            frames,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
        }
    }

    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self::new()
    }

    /// Starts the task that computes a frame every [`TICK`] while someone
    /// watches.
    pub fn start(gateway: Arc<Gateway>) -> (Arc<Live>, JoinHandle<()>) {
        let live = Arc::new(Live::new());
        let task = tokio::spawn(Arc::clone(&live).run(gateway));
        (live, task)
    }

    /// The frames kept so far (oldest first) and a receiver of every frame
    /// after them: none missed, none twice.
    pub fn subscribe(&self) -> (Vec<Arc<str>>, broadcast::Receiver<Arc<str>>) {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let receiver = self.frames.subscribe();
        (history.iter().cloned().collect(), receiver)
    }

    /// Viewers connected now.
    pub fn viewers(&self) -> usize {
        self.frames.receiver_count()
    }

    async fn run(self: Arc<Self>, gateway: Arc<Gateway>) {
        let mut snapshots = Snapshotter::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut watched = false;
        loop {
            tick.tick().await;
            let viewers = self.viewers();
            if viewers == 0 {
                if watched {
                    snapshots.reset();
                    watched = false;
                }
                continue;
            }
            watched = true;
            let Some(frame) = frame(&gateway, &mut snapshots, viewers) else {
                continue;
            };
            let json: Arc<str> = match serde_json::to_string(&frame) {
                Ok(json) => json.into(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot serialise a dashboard frame");
                    continue;
                }
            };
            let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(Arc::clone(&json));
            // No receiver left since the count above: nothing to do.
            let _ = self.frames.send(json);
        }
    }
}

/// The next frame from a scrape of `gateway` now.
fn frame(gateway: &Gateway, snapshots: &mut Snapshotter, viewers: usize) -> Option<Frame> {
    let metrics = match Exposition::parse(&gateway.metrics_text()) {
        Ok(metrics) => metrics,
        Err(e) => {
            // The encoder and the parser disagree: a bug, said once a tick.
            tracing::warn!(error = %e, "cannot read the metrics text for the dashboard");
            return None;
        }
    };
    let health = gateway.health();
    let status = Status {
        not_ready: gateway.readiness().err().map(|reason| reason.to_string()),
        problems: health.problems,
        broker_kind: health.broker.kind.to_owned(),
        uptime_s: health.uptime_s,
        version: health.version.to_owned(),
        viewers: viewers as u64,
    };
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Some(snapshots.next(gateway.clock().now(), at_ms, metrics, status))
}
