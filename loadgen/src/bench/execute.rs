//! One run against one surge binary: start the gateway, drive it with the
//! run's loadgen mode in this process, take the server-side figures, stop it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::proc::{self, CpuSample, HeldMemory, Snapshot};
use super::runs::{Count, Mode, RunDef};
use super::surge_process::{self, CpuSampler, Surge, SurgeSpec};
use crate::http;
use crate::{ChurnReport, ConnectReport, FanoutReport, churn, connect, fanout, limits, server};

/// What the loadgen mode reported.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    Connect(Box<ConnectReport>),
    Fanout(Box<FanoutReport>),
    Churn(Box<ChurnReport>),
}

/// Where the run's processes ran, when pinned.
#[derive(Debug, Clone, Serialize)]
pub struct Pinning {
    pub surge_cpu: usize,
    pub loadgen_cpus: Vec<usize>,
    /// `Cpus_allowed_list` of every surge thread once it answered /health:
    /// the proof the pin held.
    pub surge_threads_allowed: Vec<String>,
}

/// Everything recorded about one run on one binary.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub name: String,
    /// The label of the surge binary (`--surge` / `--compare LABEL=PATH`).
    pub surge: String,
    pub surge_binary: String,
    pub command: String,
    pub surge_args: Vec<String>,
    pub surge_env: BTreeMap<String, String>,
    pub pinning: Option<Pinning>,
    pub n: u64,
    pub surge_derived_max: Option<u64>,
    /// "0" after a clean SIGTERM; otherwise what happened.
    pub surge_exit: String,
    /// Why the loadgen part did not produce a result, if it did not.
    pub loadgen_error: Option<String>,
    pub result: Option<Outcome>,
    pub metrics: BTreeMap<String, f64>,
    pub admission_rejections_by_reason: BTreeMap<String, f64>,
    /// Surge's CPU from just before the loadgen started until SIGTERM.
    pub surge_cpu_s: Option<f64>,
    /// Both cores, surge and loadgen together, over the same span
    /// (connect runs: until the hold snapshot).
    pub machine_cpu_busy_percent: Option<f64>,
    pub surge_cpu_us_per_delivery: Option<f64>,
    /// Connect runs: memory and kernel cost of the held connections.
    pub server_side: Option<HeldMemory>,
    /// Fan-out runs: surge's CPU over each step, % of one core.
    pub step_surge_cpu_percent: Vec<Option<f64>>,
    /// Pinned fan-out runs: surge's core busy over each step, every
    /// process counted (above surge's own share: others used its core).
    pub step_core_busy_percent: Vec<Option<f64>>,
    pub seconds: f64,
}

/// The session's settings every run shares.
pub struct Session<'a> {
    pub quick: bool,
    pub work: &'a Path,
    /// (certificate, key) for the TLS runs.
    pub tls: Option<&'a (PathBuf, PathBuf)>,
}

const METRICS: [&str; 7] = [
    "surge_admission_rejections_total",
    "surge_fd_exhaustion_answers",
    "surge_accept_errors_total",
    "surge_messages_delivered_total",
    "surge_messages_dropped_total",
    "surge_throttle_changes_total",
    "surge_slow_client_disconnects_total",
];

/// Runs `def` against `binary`; failures are recorded, not returned, so one
/// broken run does not lose the others.
pub fn execute(
    def: &RunDef,
    label: &str,
    binary: &Path,
    dir: &Path,
    session: &Session,
) -> RunRecord {
    let started = Instant::now();
    let quick = session.quick;
    let spec_args: Vec<String> = def
        .surge
        .args
        .pick(quick)
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut record = RunRecord {
        name: def.name.into(),
        surge: label.into(),
        surge_binary: binary.display().to_string(),
        command: String::new(),
        surge_args: spec_args.clone(),
        surge_env: def
            .surge
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        pinning: None,
        n: 0,
        surge_derived_max: None,
        surge_exit: "not started".into(),
        loadgen_error: None,
        result: None,
        metrics: BTreeMap::new(),
        admission_rejections_by_reason: BTreeMap::new(),
        surge_cpu_s: None,
        machine_cpu_busy_percent: None,
        surge_cpu_us_per_delivery: None,
        server_side: None,
        step_surge_cpu_percent: Vec::new(),
        step_core_busy_percent: Vec::new(),
        seconds: 0.0,
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        record.loadgen_error = Some(format!("creating {}: {e}", dir.display()));
        return record;
    }
    let mut spec = SurgeSpec {
        args: spec_args,
        env: record
            .surge_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        cpu: None,
    };
    // Pinned runs: surge on the first allowed CPU, this process on the rest.
    let saved = surge_process::current_cpus().ok();
    let mut threads = limits::cpu_count();
    if def.surge.pinned {
        match saved.as_deref() {
            Some([first, rest @ ..])
                if !rest.is_empty() && surge_process::pin_current_thread(rest).is_ok() =>
            {
                spec.cpu = Some(*first);
                threads = rest.len();
                record.pinning = Some(Pinning {
                    surge_cpu: *first,
                    loadgen_cpus: rest.to_vec(),
                    surge_threads_allowed: Vec::new(),
                });
            }
            // One CPU: runs unpinned; the report says so.
            _ => {}
        }
    }
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("building the tokio runtime")
        .map(|rt| {
            rt.block_on(drive(
                def,
                binary,
                dir,
                session,
                &spec,
                threads,
                &mut record,
            ))
        });
    if let (true, Some(cpus)) = (def.surge.pinned, saved) {
        let _ = surge_process::pin_current_thread(&cpus);
    }
    match outcome {
        Ok(Some(surge)) => record.surge_exit = surge.stop(),
        Ok(None) => {}
        Err(e) => record.loadgen_error = Some(format!("{e:#}")),
    }
    let _ = std::fs::write(dir.join("surge.rc"), format!("{}\n", record.surge_exit));
    record.seconds = started.elapsed().as_secs_f64();
    record
}

/// The asynchronous part; returns the still-running gateway to be stopped.
async fn drive(
    def: &RunDef,
    binary: &Path,
    dir: &Path,
    session: &Session<'_>,
    spec: &SurgeSpec,
    threads: usize,
    record: &mut RunRecord,
) -> Option<Surge> {
    let tls = if def.surge.tls { session.tls } else { None };
    let surge = match Surge::start(binary, dir, spec, tls).await {
        Ok(s) => s,
        Err(e) => {
            record.surge_exit = format!("did not start: {e:#}");
            return None;
        }
    };
    let max = surge
        .health_at_start
        .pointer("/connections/max")
        .and_then(|m| m.as_u64());
    record.surge_derived_max = max;
    if let Some(p) = record.pinning.as_mut() {
        p.surge_threads_allowed = proc::threads_allowed_cpus(surge.pid);
    }
    record.n = match def.count {
        Count::Fixed(s) => s.pick(session.quick),
        Count::DerivedMax { quick } if session.quick => quick,
        Count::DerivedMax { .. } => max.unwrap_or(0),
    };
    record.command = def.command(record.n, session.quick);
    println!(
        "surge pid {} on {} (admin {}) {}\n$ surge-load {}",
        surge.pid,
        surge.url,
        surge.admin,
        spec.args.join(" "),
        record.command
    );
    let sampler = CpuSampler::start(surge.pid, spec.cpu);
    let before = Snapshot::take(surge.pid, None);
    let _ = before.save(&dir.join("before"));
    let mut until = None;
    let result = match def.mode {
        Mode::Hold {
            rate,
            subscribe,
            workers,
            deflate,
        } => {
            let mut cfg = connect::ConnectConfig::new(surge.url.clone(), record.n);
            cfg.rate = rate;
            cfg.hold = Duration::from_secs(10);
            cfg.subscribe = subscribe.map(|s| vec![s.to_string()]).unwrap_or_default();
            cfg.workers = workers;
            cfg.admin = Some(surge.admin.clone());
            cfg.threads = threads;
            cfg.tls.insecure = def.surge.tls;
            cfg.deflate = deflate;
            let target = record.n.min(max.unwrap_or(u64::MAX));
            let (result, hold) = hold_and_sample(&surge, &cfg, target, def.limit, dir).await;
            if let Some((hold, hold3)) = hold {
                record.server_side = Some(proc::held_memory(&before, &hold, &hold3));
                until = Some(hold);
            }
            result.map(|r| Outcome::Connect(Box::new(r)))
        }
        Mode::Fanout {
            connect_rate,
            rates,
            step,
            max_p99,
            stop_on_loss,
            publishers,
        } => {
            let mut cfg =
                fanout::FanoutConfig::new(surge.url.clone(), surge.admin.clone(), record.n);
            cfg.rates = rates.pick(session.quick).rates();
            cfg.duration = step.pick(session.quick);
            cfg.connect_rate = connect_rate;
            cfg.max_p99 = max_p99;
            cfg.stop_on_loss = stop_on_loss;
            cfg.publishers = publishers;
            cfg.threads = threads;
            bounded(def.limit, fanout::run(&cfg))
                .await
                .map(|r| Outcome::Fanout(Box::new(r)))
        }
        Mode::Churn { rate } => {
            let cfg = churn::ChurnConfig {
                url: surge.url.clone(),
                admin: surge.admin.clone(),
                cycles: record.n,
                rate,
                handshake_timeout: Duration::from_secs(10),
                sources: 8,
                settle: Duration::from_secs(10),
                threads,
            };
            bounded(def.limit, churn::run(&cfg))
                .await
                .map(|r| Outcome::Churn(Box::new(r)))
        }
    };
    let after = Snapshot::take(surge.pid, None);
    let _ = after.save(&dir.join("after"));
    record.machine_cpu_busy_percent =
        proc::machine_busy_percent(&before, until.as_ref().unwrap_or(&after));
    server_figures(&surge, dir, record).await;
    let end = Snapshot::take(surge.pid, None);
    record.surge_cpu_s = proc::cpu_seconds(&before, &end);
    let samples = sampler.finish();
    match result {
        Ok(outcome) => {
            if let Outcome::Fanout(f) = &outcome {
                record.step_surge_cpu_percent = step_cpu(f, &samples, proc::busy_percent);
                if spec.cpu.is_some() {
                    record.step_core_busy_percent = step_cpu(f, &samples, proc::core_busy_percent);
                }
            }
            let delivered = match &outcome {
                Outcome::Fanout(f) => f.delivered,
                _ => 0,
            };
            if let (Some(cpu), true) = (record.surge_cpu_s, delivered > 0) {
                record.surge_cpu_us_per_delivery = Some(cpu * 1e6 / delivered as f64);
            }
            let _ = std::fs::write(
                dir.join("result.json"),
                serde_json::to_string_pretty(&outcome).unwrap_or_default(),
            );
            record.result = Some(outcome);
        }
        Err(e) => {
            println!("loadgen: {e:#}");
            record.loadgen_error = Some(format!("{e:#}"));
        }
    }
    Some(surge)
}

/// A CPU figure of each fan-out step, from the samples over its span.
fn step_cpu(
    report: &FanoutReport,
    samples: &[CpuSample],
    figure: fn(&[CpuSample], u64, u64) -> Option<f64>,
) -> Vec<Option<f64>> {
    report
        .steps
        .iter()
        .map(|s| figure(samples, s.started_unix_ms, s.ended_unix_ms))
        .collect()
}

async fn bounded<T>(
    limit: Duration,
    run: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, run)
        .await
        .map_err(|_| anyhow::anyhow!("the loadgen did not finish within {limit:?}"))?
}

/// `connect` in the background; once `/health` shows `target` connections
/// (or the count stops moving for 4 s), let it settle 2 s, snapshot
/// (`hold`), then again 3 s later while everything is still held.
async fn hold_and_sample(
    surge: &Surge,
    cfg: &connect::ConnectConfig,
    target: u64,
    limit: Duration,
    dir: &Path,
) -> (anyhow::Result<ConnectReport>, Option<(Snapshot, Snapshot)>) {
    let cfg = cfg.clone();
    let run = tokio::spawn(async move { bounded(limit, connect::run(&cfg)).await });
    let Ok(mut client) = http::client(&surge.admin, Duration::from_secs(2)) else {
        return (joined(run.await), None);
    };
    let current = |h: anyhow::Result<server::Health>| h.ok().and_then(|h| h.connections);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut same_since) = (None, Instant::now());
    while Instant::now() < deadline && !run.is_finished() {
        let now = current(server::health(&mut client).await);
        if now.is_some_and(|n| n >= target) {
            break;
        }
        if now != last || now.unwrap_or(0) == 0 {
            (last, same_since) = (now, Instant::now());
        } else if same_since.elapsed() >= Duration::from_secs(4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if run.is_finished() {
        // Nothing is held any more (every attempt failed, or it timed out).
        return (joined(run.await), None);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hold = Snapshot::take(surge.pid, current(server::health(&mut client).await));
    let _ = hold.save(&dir.join("hold"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hold3 = Snapshot::take(surge.pid, None);
    let _ = hold3.save(&dir.join("hold3s"));
    (joined(run.await), Some((hold, hold3)))
}

fn joined<T>(r: Result<anyhow::Result<T>, tokio::task::JoinError>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!("the loadgen task failed: {e}"))?
}

/// `/metrics` figures at the end of the run (before SIGTERM).
async fn server_figures(surge: &Surge, dir: &Path, record: &mut RunRecord) {
    let Ok(mut client) = http::client(&surge.admin, Duration::from_secs(5)) else {
        return;
    };
    let text = match client.get("/metrics").await {
        Ok(r) if r.status == 200 => String::from_utf8_lossy(&r.body).into_owned(),
        _ => return,
    };
    let _ = std::fs::write(dir.join("metrics.end.txt"), &text);
    for name in METRICS {
        record
            .metrics
            .insert(name.to_string(), proc::metric_sum(&text, name));
    }
    for (q, key) in [(0.5, "p50"), (0.99, "p99"), (1.0, "max")] {
        if let Some(le) = proc::histogram_bound(&text, "surge_handshake_duration_seconds", q) {
            record
                .metrics
                .insert(format!("server_handshake_{key}_le_ms"), le * 1000.0);
        }
    }
    record.admission_rejections_by_reason =
        proc::metric_by_label(&text, "surge_admission_rejections_total");
}
