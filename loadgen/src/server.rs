//! Watching the gateway through its admin `/health` during a run.
//!
//! Connection counts, RSS and CPU sampled once a second put the server's
//! side next to the client's timeline: a memory ceiling or a CPU-bound accept
//! loop shows up in the same row as the failures it causes.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::http::{self, AdminClient};
use crate::record::ServerSample;

/// The `/health` fields the loadgen reads (PROTOCOL.md, admin listener).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub connections: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub cpu_percent: Option<f64>,
}

impl Health {
    /// Picks the fields out of a `/health` body; missing ones stay `None`.
    pub fn from_json(v: &serde_json::Value) -> Health {
        Health {
            connections: v.pointer("/connections/current").and_then(|c| c.as_u64()),
            memory_bytes: v.get("memory_bytes").and_then(|m| m.as_u64()),
            cpu_percent: v.get("cpu_percent").and_then(|c| c.as_f64()),
        }
    }
}

/// Reads `/health` once (a 503 "degraded" answer carries the same body).
pub async fn health(client: &mut AdminClient) -> anyhow::Result<Health> {
    let (status, body) = http::get_json(client, "/health").await?;
    if status != 200 && status != 503 {
        anyhow::bail!("GET /health answered {status}");
    }
    Ok(Health::from_json(&body))
}

/// Samples `/health` every second until `stop` turns true; samples are
/// timed in milliseconds since `start`. Failed reads are skipped (a gateway
/// under load may answer late); the loop ends by itself after `max_run`.
pub fn spawn_sampler(
    admin: &str,
    start: Instant,
    mut stop: watch::Receiver<bool>,
    max_run: Duration,
) -> anyhow::Result<tokio::task::JoinHandle<Vec<ServerSample>>> {
    let mut client = http::client(admin, Duration::from_millis(900))?;
    Ok(tokio::spawn(async move {
        let mut samples = Vec::new();
        let deadline = Instant::now() + max_run;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while Instant::now() < deadline && !*stop.borrow() {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            if let Ok(h) = health(&mut client).await {
                samples.push(ServerSample {
                    at: start.elapsed().as_millis() as u64,
                    connections: h.connections,
                    memory_bytes: h.memory_bytes,
                    cpu_percent: h.cpu_percent,
                });
            }
        }
        samples
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_fields() {
        let v = serde_json::json!({
            "status": "ok",
            "connections": {"current": 12, "max": 100},
            "memory_bytes": 1048576,
            "cpu_percent": 3.5
        });
        let h = Health::from_json(&v);
        assert_eq!(h.connections, Some(12));
        assert_eq!(h.memory_bytes, Some(1 << 20));
        assert_eq!(h.cpu_percent, Some(3.5));
        assert_eq!(Health::from_json(&serde_json::json!({})), Health::default());
    }
}
