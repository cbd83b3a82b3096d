//! `surge-load connect`: open N connections at a rate, hold them, close them.
//!
//! Attempts are launched on a schedule (attempt *i* at `i / rate` seconds,
//! or all at once), each under one handshake timeout, from source addresses
//! 127.0.0.1 … 127.0.0.K. When every attempt has an outcome, the open
//! connections are held for `hold`, then closed. Past one process's file
//! limit the attempts are split over worker processes (this binary re-run
//! with the hidden `worker` subcommand): they share the run's start time,
//! report "resolved" on stdout, hold until the parent says stop on stdin
//! (so the server's memory is sampled with *all* connections open), then
//! print their records as one JSON line.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::attempt::{self, Failure};
use crate::dial::SourcePool;
use crate::http;
use crate::limits::{self, FdLimit};
use crate::record::{
    self, AttemptCounts, ConnRecord, FailKind, Outcome, ServerSample, TimelineRow,
};
use crate::server::{self, Health};
use crate::target::{Target, TargetError, parse_ws_url};
use crate::tls::TlsOptions;

/// Ephemeral ports per source address on this kind of host (32768–60999).
pub const PORTS_PER_SOURCE: u64 = 28_000;

/// Time a worker gets to start before the run's common start.
const WORKER_START_DELAY: Duration = Duration::from_millis(700);

/// What `connect` (and `churn`) are asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectConfig {
    /// `ws://` URL on loopback.
    pub url: String,
    pub connections: u64,
    /// Connection attempts per second; 0 = all at once.
    pub rate: f64,
    pub handshake_timeout: Duration,
    /// Channels to subscribe to after `welcome` (none = no subscribe).
    pub subscribe: Vec<String>,
    pub hold: Duration,
    /// Source addresses 127.0.0.1 … 127.0.0.K.
    pub sources: u32,
    /// Worker processes; 0 = as many as the file limit requires.
    pub workers: u32,
    /// Admin base URL to sample `/health` from.
    pub admin: Option<String>,
    /// Runtime threads per worker process.
    pub threads: usize,
    /// How wss:// servers are trusted.
    pub tls: TlsOptions,
    /// Offer permessage-deflate in every upgrade (see [`Target::deflate`]).
    #[serde(default)]
    pub deflate: bool,
}

impl ConnectConfig {
    /// Defaults for tests and callers that set only what they care about.
    pub fn new(url: impl Into<String>, connections: u64) -> ConnectConfig {
        ConnectConfig {
            url: url.into(),
            connections,
            rate: 0.0,
            handshake_timeout: Duration::from_secs(10),
            subscribe: Vec::new(),
            hold: Duration::ZERO,
            sources: 4,
            workers: 0,
            admin: None,
            threads: limits::cpu_count(),
            tls: TlsOptions::default(),
            deflate: false,
        }
    }

    /// Where the attempts go, with the deflate offer this run makes.
    pub fn target(&self) -> Result<Target, TargetError> {
        Ok(Target {
            deflate: self.deflate,
            ..parse_ws_url(&self.url)?
        })
    }
}

/// What an open connection does once upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AfterOpen {
    /// Stay open (reading frames) until the run's hold ends.
    Hold,
    /// Wait for `welcome`, then close at once (churn).
    CloseAtOnce,
}

/// The gateway's `/health` around the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerSide {
    pub before: Option<Health>,
    /// Sampled at the end of the hold, with every connection still open.
    pub at_hold: Option<Health>,
    /// Sampled a second after the connections were closed.
    pub after: Option<Health>,
    /// (RSS at hold − RSS before) / connections open at hold.
    pub rss_per_connection_bytes: Option<f64>,
    /// Once a second during the run (also on the timeline).
    pub samples: Vec<ServerSample>,
}

/// The result of a `connect` or `churn` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectReport {
    pub run: String,
    pub url: String,
    pub connections: u64,
    pub rate: f64,
    pub handshake_timeout_ms: u64,
    pub hold_ms: u64,
    pub sources: u32,
    pub workers: u32,
    /// Every upgrade offered permessage-deflate (`counts.deflate` says how
    /// many the server accepted).
    #[serde(default)]
    pub deflate_offered: bool,
    #[serde(flatten)]
    pub counts: AttemptCounts,
    /// Connections open when the hold ended.
    pub open_at_hold: u64,
    /// The loadgen's CPU (all its processes) from the start until every
    /// attempt had an outcome, as a share of the cores it may use.
    pub loadgen_cpu_percent: Option<f64>,
    /// `loadgen_cpu_percent` ≥ [`limits::LOADGEN_BOUND_PERCENT`]: handshake
    /// figures may be limited by the loadgen, not the server.
    pub loadgen_bound: bool,
    /// A few distinct error texts of `other` and local failures.
    pub other_examples: Vec<String>,
    /// What the operator should know (limits raised, warnings).
    pub notes: Vec<String>,
    pub fd_limit: Option<FdLimit>,
    pub server: Option<ServerSide>,
    pub elapsed_ms: u64,
    pub timeline: Vec<TimelineRow>,
}

/// Runs `connect`: hold every connection for `cfg.hold`.
pub async fn run(cfg: &ConnectConfig) -> anyhow::Result<ConnectReport> {
    run_with(cfg, AfterOpen::Hold, "connect").await
}

/// Runs N attempts with the given behaviour after open; `run` names the
/// report (`connect`, `churn`).
pub async fn run_with(
    cfg: &ConnectConfig,
    after: AfterOpen,
    run_name: &str,
) -> anyhow::Result<ConnectReport> {
    let target = cfg.target()?;
    if cfg.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if !(cfg.rate >= 0.0 && cfg.rate.is_finite()) {
        bail!("--rate must be 0 (all at once) or a positive number of connections per second");
    }
    let mut notes = Vec::new();
    let fd = match limits::raise_nofile() {
        Ok(fd) => {
            notes.push(fd.describe());
            Some(fd)
        }
        Err(e) => {
            notes.push(format!("could not read or raise RLIMIT_NOFILE: {e}"));
            None
        }
    };
    let budget = fd.map_or(1000, |f| f.connection_budget());
    let workers = match (cfg.workers, after) {
        (0, AfterOpen::Hold) => cfg.connections.div_ceil(budget).max(1) as u32,
        (0, AfterOpen::CloseAtOnce) => 1,
        (w, _) => w,
    };
    let per_process = cfg.connections.div_ceil(u64::from(workers));
    if after == AfterOpen::Hold && per_process > budget {
        notes.push(format!(
            "warning: {per_process} connections per process exceed what one process can hold (~{budget}); \
             expect local_fd_limit failures, raise --workers"
        ));
    }
    if after == AfterOpen::Hold
        && cfg.connections > u64::from(cfg.sources.max(1)) * PORTS_PER_SOURCE
    {
        notes.push(format!(
            "warning: {} connections over {} source address(es) exceed ~{PORTS_PER_SOURCE} ports each; raise --sources",
            cfg.connections, cfg.sources
        ));
    }
    if workers > 1 {
        notes.push(format!(
            "spread over {workers} worker processes of ~{per_process} connections each"
        ));
    }

    let mut admin = match &cfg.admin {
        Some(a) => Some(http::client(a, Duration::from_secs(5))?),
        None => None,
    };
    let mut side = ServerSide::default();
    if let Some(client) = admin.as_mut() {
        match server::health(client).await {
            Ok(h) => side.before = Some(h),
            Err(e) => notes.push(format!("could not read /health before the run: {e:#}")),
        }
    }

    let start_unix = unix_ms() + WORKER_START_DELAY.as_millis() as u64;
    let start = instant_of_unix_ms(start_unix);
    let (stop_sampler, sampler_rx) = watch::channel(false);
    let sampler = match &cfg.admin {
        Some(a) => Some(server::spawn_sampler(
            a,
            start,
            sampler_rx,
            max_run_time(cfg, workers) + Duration::from_secs(30),
        )?),
        None => None,
    };

    let mut group = if workers <= 1 {
        Group::Local(launch(
            cfg,
            &target,
            Share {
                first_index: 0,
                count: cfg.connections,
                rate: cfg.rate,
            },
            start,
            after,
        ))
    } else {
        Group::Workers(spawn_workers(cfg, workers, start_unix, after).await?)
    };
    let cpu_before = limits::process_cpu_time();
    let resolve_deadline =
        Instant::now() + max_resolve_time(cfg) + WORKER_START_DELAY + Duration::from_secs(10);
    if !group.all_resolved(resolve_deadline).await {
        notes.push(
            "warning: some attempts had no outcome by the deadline; they are cut short".into(),
        );
    }
    let resolve_wall = Instant::now().saturating_duration_since(start);
    let own_cpu = match (cpu_before, limits::process_cpu_time()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    if after == AfterOpen::Hold {
        tokio::time::sleep(cfg.hold).await;
    }
    let open_at_hold_ms = start.elapsed().as_millis() as u64;
    if let Some(client) = admin.as_mut() {
        side.at_hold = server::health(client).await.ok();
    }
    let (records, examples, worker_cpu) = group.finish(&mut notes).await?;
    let cores = cfg.threads.max(1).min(limits::cpu_count());
    let loadgen_cpu_percent = if workers > 1 { worker_cpu } else { own_cpu }
        .map(|cpu| limits::cpu_percent(cpu, resolve_wall.max(Duration::from_millis(1)), cores));
    let loadgen_bound = loadgen_cpu_percent.is_some_and(|p| p >= limits::LOADGEN_BOUND_PERCENT);
    if let Some(p) = loadgen_cpu_percent.filter(|_| loadgen_bound) {
        notes.push(format!(
            "loadgen CPU {p:.0} % of its {cores} core(s) while connecting: handshake figures may be loadgen-bound"
        ));
    }
    let elapsed_ms = start.elapsed().as_millis() as u64;
    if let Some(client) = admin.as_mut() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        side.after = server::health(client).await.ok();
    }
    let _ = stop_sampler.send(true);
    if let Some(s) = sampler {
        side.samples = s.await.unwrap_or_default();
    }

    let counts = record::count(&records);
    let open_at_hold = records
        .iter()
        .filter(|r| {
            matches!(r.outcome, Outcome::Ok { .. }) && r.end.is_none_or(|e| e >= open_at_hold_ms)
        })
        .count() as u64;
    if after == AfterOpen::Hold
        && let (Some(b), Some(h)) = (
            side.before.and_then(|h| h.memory_bytes),
            side.at_hold.and_then(|h| h.memory_bytes),
        )
        && open_at_hold > 0
    {
        side.rss_per_connection_bytes = Some((h as f64 - b as f64) / open_at_hold as f64);
    }
    let timeline = record::timeline(&records, &side.samples);
    Ok(ConnectReport {
        run: run_name.to_string(),
        url: cfg.url.clone(),
        connections: cfg.connections,
        rate: cfg.rate,
        handshake_timeout_ms: cfg.handshake_timeout.as_millis() as u64,
        hold_ms: cfg.hold.as_millis() as u64,
        sources: cfg.sources,
        workers,
        deflate_offered: cfg.deflate,
        counts,
        open_at_hold,
        loadgen_cpu_percent,
        loadgen_bound,
        other_examples: examples,
        notes,
        fd_limit: fd,
        server: cfg.admin.as_ref().map(|_| side),
        elapsed_ms,
        timeline,
    })
}

/// Upper bound for every attempt to have an outcome.
fn max_resolve_time(cfg: &ConnectConfig) -> Duration {
    let launch = if cfg.rate > 0.0 {
        Duration::from_secs_f64(cfg.connections as f64 / cfg.rate)
    } else {
        Duration::ZERO
    };
    // Open, then welcome/subscribe: each stage has the handshake timeout.
    launch + cfg.handshake_timeout * 2 + attempt::CLOSE_TIMEOUT
}

fn max_run_time(cfg: &ConnectConfig, _workers: u32) -> Duration {
    max_resolve_time(cfg) + cfg.hold + attempt::CLOSE_TIMEOUT * 2 + Duration::from_secs(15)
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The monotonic instant at which the wall clock reads `unix_ms`.
fn instant_of_unix_ms(at: u64) -> Instant {
    let now = unix_ms();
    let base = Instant::now();
    if at >= now {
        base + Duration::from_millis(at - now)
    } else {
        base.checked_sub(Duration::from_millis(now - at))
            .unwrap_or(base)
    }
}

/// A contiguous slice of the attempts, for one process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Share {
    /// Global index of the first attempt (picks the source address).
    pub first_index: u64,
    pub count: u64,
    pub rate: f64,
}

/// An attempt's record and, for failures worth explaining, the error text.
type AttemptResult = (ConnRecord, Option<String>);

/// Attempts running in this process.
pub struct Running {
    resolved: mpsc::UnboundedReceiver<()>,
    resolved_count: u64,
    count: u64,
    stop: watch::Sender<bool>,
    launcher: JoinHandle<Vec<JoinHandle<AttemptResult>>>,
}

/// Starts the attempts of `share` (attempt *i* at `start + i / rate`).
pub fn launch(
    cfg: &ConnectConfig,
    target: &Target,
    share: Share,
    start: Instant,
    after: AfterOpen,
) -> Running {
    let (resolved_tx, resolved) = mpsc::unbounded_channel();
    let (stop, stop_rx) = watch::channel(false);
    let target = Arc::new(target.clone());
    let subscribe = Arc::new(cfg.subscribe.clone());
    let sources = SourcePool::new(cfg.sources);
    let timeout = cfg.handshake_timeout;
    let launcher = tokio::spawn(async move {
        let mut handles = Vec::with_capacity(share.count as usize);
        for i in 0..share.count {
            if share.rate > 0.0 {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / share.rate))
                    .await;
            } else if i == 0 {
                tokio::time::sleep_until(start).await;
            }
            handles.push(tokio::spawn(attempt_task(AttemptSpec {
                target: target.clone(),
                source: sources.pick(share.first_index + i),
                start,
                timeout,
                subscribe: subscribe.clone(),
                after,
                resolved: resolved_tx.clone(),
                stop: stop_rx.clone(),
            })));
        }
        handles
    });
    Running {
        resolved,
        resolved_count: 0,
        count: share.count,
        stop,
        launcher,
    }
}

impl Running {
    /// Waits until every attempt has an outcome, or `deadline`.
    pub async fn all_resolved(&mut self, deadline: Instant) -> bool {
        while self.resolved_count < self.count {
            match tokio::time::timeout_at(deadline, self.resolved.recv()).await {
                Ok(Some(())) => self.resolved_count += 1,
                Ok(None) | Err(_) => return false,
            }
        }
        true
    }

    /// Ends the hold: closes every open connection and collects the records.
    pub async fn finish(self) -> (Vec<ConnRecord>, Vec<String>) {
        let _ = self.stop.send(true);
        let mut records = Vec::new();
        let mut examples = BTreeSet::new();
        let Ok(handles) = self.launcher.await else {
            return (records, Vec::new());
        };
        // Each task closes within CLOSE_TIMEOUT after stop; the bound is a backstop.
        let deadline = Instant::now() + attempt::CLOSE_TIMEOUT * 3;
        for h in handles {
            let abort = h.abort_handle();
            match tokio::time::timeout_at(deadline, h).await {
                Ok(Ok((rec, detail))) => {
                    if let Some(d) = detail
                        && examples.len() < 8
                    {
                        examples.insert(d);
                    }
                    records.push(rec);
                }
                _ => abort.abort(),
            }
        }
        (records, examples.into_iter().collect())
    }
}

struct AttemptSpec {
    target: Arc<Target>,
    source: std::net::Ipv4Addr,
    start: Instant,
    timeout: Duration,
    subscribe: Arc<Vec<String>>,
    after: AfterOpen,
    resolved: mpsc::UnboundedSender<()>,
    stop: watch::Receiver<bool>,
}

fn ms_since(start: Instant) -> u64 {
    Instant::now().saturating_duration_since(start).as_millis() as u64
}

/// One attempt from connect to close. Returns its record and, for failures
/// worth explaining (`other`, local limits), the error text.
async fn attempt_task(mut spec: AttemptSpec) -> AttemptResult {
    let begin = ms_since(spec.start);
    let began = Instant::now();
    let failed = |f: Failure, spec: &AttemptSpec| {
        let _ = spec.resolved.send(());
        let detail = matches!(
            f.kind,
            FailKind::Other | FailKind::LocalFdLimit | FailKind::LocalNoPort
        )
        .then(|| format!("{}: {}", f.kind, f.detail));
        (
            ConnRecord {
                start: begin,
                done: ms_since(spec.start),
                outcome: Outcome::Failed {
                    kind: f.kind.label(),
                    retry_after: f.retry_after,
                    us: matches!(f.kind, FailKind::Http(_))
                        .then(|| began.elapsed().as_micros() as u64),
                },
                end: None,
                dropped: false,
                deflate: false,
            },
            detail,
        )
    };
    let attempt::Opened {
        mut ws,
        latency,
        deflate,
    } = match attempt::open(&spec.target, spec.source, spec.timeout).await {
        Ok(opened) => opened,
        Err(f) => return failed(f, &spec),
    };
    let ready = if !spec.subscribe.is_empty() {
        attempt::subscribe(&mut ws, &spec.subscribe, spec.timeout).await
    } else if spec.after == AfterOpen::CloseAtOnce {
        attempt::await_welcome(&mut ws, spec.timeout).await
    } else {
        Ok(())
    };
    if let Err(f) = ready {
        // Closing is bounded; the slot is released before the record is final.
        attempt::close(ws).await;
        return failed(f, &spec);
    }
    let done = ms_since(spec.start);
    let _ = spec.resolved.send(());
    let mut dropped = false;
    if spec.after == AfterOpen::Hold {
        use futures_util::StreamExt;
        let stop = &mut spec.stop;
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                frame = ws.next() => match frame {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) | None | Some(Err(_)) => {
                        dropped = true;
                        break;
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
    }
    if !dropped {
        attempt::close(ws).await;
    }
    (
        ConnRecord {
            start: begin,
            done,
            outcome: Outcome::Ok {
                us: latency.as_micros() as u64,
            },
            end: Some(ms_since(spec.start)),
            dropped,
            deflate,
        },
        None,
    )
}

type Finished = (Vec<ConnRecord>, Vec<String>, Option<Duration>);

/// The attempts of a run: in this process, or in worker processes.
enum Group {
    Local(Running),
    Workers(Vec<Worker>),
}

impl Group {
    async fn all_resolved(&mut self, deadline: Instant) -> bool {
        match self {
            Group::Local(r) => r.all_resolved(deadline).await,
            Group::Workers(ws) => {
                let mut all = true;
                for w in ws.iter_mut() {
                    all &= w.resolved(deadline).await;
                }
                all
            }
        }
    }

    /// Records, error examples and (for workers) their summed CPU while
    /// connecting.
    async fn finish(self, notes: &mut Vec<String>) -> anyhow::Result<Finished> {
        match self {
            Group::Local(r) => {
                let (records, examples) = r.finish().await;
                Ok((records, examples, None))
            }
            Group::Workers(mut ws) => {
                for w in &mut ws {
                    w.stop().await;
                }
                let mut records = Vec::new();
                let mut examples = BTreeSet::new();
                let mut cpu = Some(Duration::ZERO);
                for (i, w) in ws.into_iter().enumerate() {
                    match w.output().await {
                        Ok(out) => {
                            cpu = cpu
                                .zip(out.resolve_cpu_ms)
                                .map(|(a, b)| a + Duration::from_millis(b));
                            records.extend(out.records);
                            examples.extend(out.examples);
                            for n in out.notes {
                                if !notes.contains(&n) {
                                    notes.push(n);
                                }
                            }
                        }
                        Err(e) => {
                            cpu = None;
                            notes.push(format!("worker {i} gave no result: {e:#}"));
                        }
                    }
                }
                Ok((records, examples.into_iter().take(8).collect(), cpu))
            }
        }
    }
}

/// What the parent hands a worker (as JSON on its command line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub config: ConnectConfig,
    pub share: Share,
    pub start_unix_ms: u64,
    pub after: AfterOpen,
}

/// What a worker prints as its last stdout line (after [`WORKER_RESULT`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerOutput {
    pub records: Vec<ConnRecord>,
    pub examples: Vec<String>,
    pub notes: Vec<String>,
    /// CPU this worker used from its start until every attempt had an outcome.
    pub resolve_cpu_ms: Option<u64>,
}

/// Worker stdout line: every attempt has an outcome, now holding.
pub const WORKER_RESOLVED: &str = "RESOLVED";
/// Worker stdout line prefix of the final JSON.
pub const WORKER_RESULT: &str = "WORKER ";
/// Parent → worker stdin line ending the hold.
pub const WORKER_STOP: &str = "STOP";

/// The hidden `worker` subcommand: runs one share, talking to the parent
/// over stdin/stdout. Bounded: without a STOP it ends after the hold plus
/// a margin.
pub async fn run_worker(spec: WorkerSpec) -> anyhow::Result<()> {
    let mut notes = Vec::new();
    if let Err(e) = limits::raise_nofile() {
        notes.push(format!("worker could not raise RLIMIT_NOFILE: {e}"));
    }
    let target = spec.config.target()?;
    let cpu_before = limits::process_cpu_time();
    let start = instant_of_unix_ms(spec.start_unix_ms);
    let mut running = launch(&spec.config, &target, spec.share, start, spec.after);
    let deadline = Instant::now()
        + max_resolve_time(&spec.config)
        + WORKER_START_DELAY
        + Duration::from_secs(10);
    running.all_resolved(deadline).await;
    let resolve_cpu_ms = match (cpu_before, limits::process_cpu_time()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a).as_millis() as u64),
        _ => None,
    };
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("{WORKER_RESOLVED}\n").as_bytes())
        .await?;
    stdout.flush().await?;
    // Hold until the parent says stop (or closes our stdin).
    let hold_bound = spec.config.hold + Duration::from_secs(60);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let _ = tokio::time::timeout(hold_bound, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == WORKER_STOP {
                break;
            }
        }
    })
    .await;
    let (records, examples) = running.finish().await;
    let out = WorkerOutput {
        records,
        examples,
        notes,
        resolve_cpu_ms,
    };
    let line = format!("{WORKER_RESULT}{}\n", serde_json::to_string(&out)?);
    stdout.write_all(line.as_bytes()).await?;
    stdout.flush().await?;
    Ok(())
}

/// A worker process seen from the parent.
struct Worker {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    hold: Duration,
}

async fn spawn_workers(
    cfg: &ConnectConfig,
    workers: u32,
    start_unix_ms: u64,
    after: AfterOpen,
) -> anyhow::Result<Vec<Worker>> {
    let exe = std::env::current_exe().context("cannot find this program to start workers")?;
    let mut out = Vec::new();
    let mut first = 0;
    for w in 0..u64::from(workers) {
        // Even split; the first `remainder` workers take one more.
        let count = cfg.connections / u64::from(workers)
            + u64::from(w < cfg.connections % u64::from(workers));
        let spec = WorkerSpec {
            config: ConnectConfig {
                threads: (cfg.threads / workers as usize).max(1),
                ..cfg.clone()
            },
            share: Share {
                first_index: first,
                count,
                rate: cfg.rate / f64::from(workers),
            },
            start_unix_ms,
            after,
        };
        first += count;
        let mut child = tokio::process::Command::new(&exe)
            .arg("worker")
            .arg("--spec")
            .arg(serde_json::to_string(&spec)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting worker {w} ({})", exe.display()))?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let stdin = child.stdin.take();
        out.push(Worker {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            hold: cfg.hold,
        });
    }
    Ok(out)
}

impl Worker {
    async fn resolved(&mut self, deadline: Instant) -> bool {
        loop {
            match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                Ok(Ok(Some(line))) if line.trim() == WORKER_RESOLVED => return true,
                Ok(Ok(Some(_))) => {}
                _ => return false,
            }
        }
    }

    async fn stop(&mut self) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(format!("{WORKER_STOP}\n").as_bytes()).await;
            let _ = stdin.flush().await;
        }
    }

    async fn output(mut self) -> anyhow::Result<WorkerOutput> {
        let bound = self.hold + attempt::CLOSE_TIMEOUT * 4 + Duration::from_secs(60);
        let result = tokio::time::timeout(bound, async {
            while let Some(line) = self.lines.next_line().await? {
                if let Some(json) = line.strip_prefix(WORKER_RESULT) {
                    return Ok(serde_json::from_str::<WorkerOutput>(json)?);
                }
            }
            bail!("worker ended without a result line")
        })
        .await
        .unwrap_or_else(|_| bail!("worker gave no result within {bound:?}"));
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        result
    }
}
