//! `surge-load churn`: connect/close cycles, then check that no slot leaked.
//!
//! The seed's shard-slot race showed that a connection slot not released on
//! one exit path slowly eats capacity. Each cycle here opens a connection,
//! waits for `welcome` and closes; afterwards the gateway's
//! `/health` `connections.current` must return to its value before the run.
//! It is polled for a short settle time (closes finish asynchronously on the
//! server) and `leaked = after − before` is reported. Other clients of the
//! same gateway during the run would distort the figure.

use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::connect::{self, AfterOpen, ConnectConfig, ConnectReport};
use crate::http;
use crate::server;

/// What `churn` is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChurnConfig {
    pub url: String,
    pub admin: String,
    pub cycles: u64,
    /// Cycles started per second; 0 = all at once.
    pub rate: f64,
    pub handshake_timeout: Duration,
    pub sources: u32,
    /// Longest wait for `/health` to come back to its starting count.
    pub settle: Duration,
    pub threads: usize,
}

/// The result of a churn run: the connect report plus the leak check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChurnReport {
    #[serde(flatten)]
    pub connect: ConnectReport,
    pub connections_before: u64,
    pub connections_after: u64,
    /// after − before once settled (or when the settle time ran out).
    pub leaked: i64,
    pub settled_in_ms: Option<u64>,
}

/// Runs the cycles and the leak check.
pub async fn run(cfg: &ChurnConfig) -> anyhow::Result<ChurnReport> {
    let mut admin = http::client(&cfg.admin, Duration::from_secs(5))?;
    let before = server::health(&mut admin)
        .await
        .context("reading /health before the run")?
        .connections
        .context("/health has no connections.current")?;
    let connect_cfg = ConnectConfig {
        rate: cfg.rate,
        handshake_timeout: cfg.handshake_timeout,
        sources: cfg.sources,
        workers: 1,
        admin: Some(cfg.admin.clone()),
        threads: cfg.threads,
        ..ConnectConfig::new(cfg.url.clone(), cfg.cycles)
    };
    let report = connect::run_with(&connect_cfg, AfterOpen::CloseAtOnce, "churn").await?;
    let settle_start = Instant::now();
    let deadline = settle_start + cfg.settle;
    let mut after = None;
    let mut settled_in_ms = None;
    loop {
        if let Ok(h) = server::health(&mut admin).await
            && let Some(current) = h.connections
        {
            after = Some(current);
            if current == before {
                settled_in_ms = Some(settle_start.elapsed().as_millis() as u64);
                break;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = after.context("could not read /health after the run")?;
    Ok(ChurnReport {
        connect: report,
        connections_before: before,
        connections_after: after,
        leaked: after as i64 - before as i64,
        settled_in_ms,
    })
}
