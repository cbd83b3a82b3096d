//! `surge-load fanout`: N subscribers, published messages, and what arrives.
//!
//! Messages are published through the gateway's admin `POST /publish`, each
//! carrying its send time (unix nanoseconds), the run id and the step in its
//! `data`, so every subscriber can measure end-to-end latency and attribute
//! the delivery. Each subscriber checks the gateway's guarantees as it reads:
//! `seq` must be 1, 2, 3, … and `sseq` must increase; a small bitmap of the
//! last [`WINDOW`] stream sequences tells a late (reordered) frame from a
//! duplicate. Loss is expected deliveries (publishes accepted × subscribers)
//! minus unique deliveries. The receiving side runs on all runtime threads
//! (`--threads`); the loadgen's own CPU is measured per step and a step that
//! had the loadgen near its cores' limit is labelled loadgen-bound.
//!
//! Publishes follow a fixed schedule over `publishers` keep-alive connections
//! with one request in flight each: a gateway busy delivering answers slowly,
//! and one request at a time capped the rate at one over its answer time. A
//! step whose publishes still fell more than 10 % short of the target is
//! publisher-bound and ends the ramp. Each step also reports how late its
//! publish requests were written against their due times and how long their
//! answers took, so a report shows whether `/publish` kept the schedule.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::attempt;
use crate::dial::SourcePool;
use crate::http::{self, AdminClient};
use crate::limits;
use crate::record::{LatencySummary, ServerSample};
use crate::server;
use crate::target::parse_ws_url;

/// Stream sequences remembered below the highest one seen, per subscriber.
pub const WINDOW: u64 = 1024;
const WINDOW_WORDS: usize = (WINDOW / 64) as usize;

/// Most ramp steps accepted.
pub const MAX_STEPS: usize = 200;

/// Publisher connections by default: a few requests in flight keep the send
/// schedule while the gateway, busy delivering, answers each one slowly.
pub const DEFAULT_PUBLISHERS: usize = 4;

/// A step whose publishes went out below this share of the target rate is
/// publisher-bound: it measured the loadgen, not the gateway.
pub const PUBLISHER_BOUND_SHARE: f64 = 0.9;

fn default_publishers() -> usize {
    DEFAULT_PUBLISHERS
}

/// What `fanout` is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FanoutConfig {
    pub url: String,
    /// Admin base URL (`POST /publish`, `GET /health`).
    pub admin: String,
    pub subscribers: u64,
    /// Every subscriber subscribes to all of them; publishes go round-robin.
    pub subjects: Vec<String>,
    /// Publish rate (messages/s) of each step; one entry without a ramp.
    pub rates: Vec<f64>,
    /// Size of each message's `data` JSON in bytes (padded).
    pub size: usize,
    /// Length of each step.
    pub duration: Duration,
    /// `low`, `medium`, `high` or `critical`.
    pub priority: String,
    pub sources: u32,
    /// Subscriber connections per second during setup; 0 = all at once.
    pub connect_rate: f64,
    pub handshake_timeout: Duration,
    /// Longest wait after a step for its deliveries to arrive.
    pub drain: Duration,
    /// Stop the ramp after a step whose p99 exceeds this.
    pub max_p99: Option<Duration>,
    /// Stop the ramp after a step that lost messages.
    pub stop_on_loss: bool,
    /// Runtime threads receiving (used to judge the loadgen's CPU share).
    pub threads: usize,
    /// Keep-alive admin connections publishing concurrently on one shared
    /// send schedule (at least 1).
    #[serde(default = "default_publishers")]
    pub publishers: usize,
    /// The gateway's `SURGE_ADMIN_TOKEN`, sent with every publish as
    /// `Authorization: Bearer`; never written to a report.
    #[serde(default, skip_serializing)]
    pub admin_token: Option<String>,
}

impl FanoutConfig {
    pub fn new(url: impl Into<String>, admin: impl Into<String>, subscribers: u64) -> FanoutConfig {
        FanoutConfig {
            url: url.into(),
            admin: admin.into(),
            subscribers,
            subjects: vec!["odin.token.BTC.trade".into()],
            rates: vec![10.0],
            size: 100,
            duration: Duration::from_secs(5),
            priority: "high".into(),
            sources: 4,
            connect_rate: 0.0,
            handshake_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(3),
            max_p99: None,
            stop_on_loss: false,
            threads: limits::cpu_count(),
            publishers: DEFAULT_PUBLISHERS,
            admin_token: None,
        }
    }
}

/// `start:step:max` → the rates start, start+step, …, ≤ max.
pub fn parse_ramp(text: &str) -> anyhow::Result<Vec<f64>> {
    let parts: Vec<&str> = text.split(':').collect();
    let [start, step, max] = parts[..] else {
        bail!("--ramp `{text}`: expected start:step:max, e.g. 100:100:1000");
    };
    let num = |s: &str, what: &str| -> anyhow::Result<f64> {
        let v: f64 = s
            .trim()
            .parse()
            .with_context(|| format!("--ramp `{text}`: {what} `{s}` is not a number"))?;
        if !(v.is_finite() && v > 0.0) {
            bail!("--ramp `{text}`: {what} must be greater than 0");
        }
        Ok(v)
    };
    let (start, step, max) = (num(start, "start")?, num(step, "step")?, num(max, "max")?);
    if max < start {
        bail!("--ramp `{text}`: max is below start");
    }
    let steps = ((max - start) / step).floor() as usize + 1;
    if steps > MAX_STEPS {
        bail!("--ramp `{text}`: {steps} steps; at most {MAX_STEPS}, use a larger step");
    }
    Ok((0..steps).map(|i| start + step * i as f64).collect())
}

/// What one frame did to a subscriber's view of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A stream sequence above every one seen before.
    New,
    /// Below the highest seen, not seen before: arrived out of order.
    Late,
    /// Seen before.
    Duplicate,
    /// Too far below the highest to tell late from duplicate.
    TooOld,
}

/// Which numbers of an increasing sequence were seen: the highest one and a
/// bitmap of the [`WINDOW`] below it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqWindow {
    max: u64,
    window: [u64; WINDOW_WORDS],
    /// Distinct numbers seen (New + Late + TooOld).
    pub distinct: u64,
    /// Numbers that arrived below the highest seen (Late + TooOld).
    pub out_of_order: u64,
    pub duplicates: u64,
}

impl SeqWindow {
    /// Places `v` relative to the numbers seen before.
    pub fn observe(&mut self, v: u64) -> Delivery {
        let d = self.classify(v);
        match d {
            Delivery::New => self.distinct += 1,
            Delivery::Late | Delivery::TooOld => {
                self.distinct += 1;
                self.out_of_order += 1;
            }
            Delivery::Duplicate => self.duplicates += 1,
        }
        d
    }

    /// The highest number seen (0 if none).
    pub fn max(&self) -> u64 {
        self.max
    }

    fn classify(&mut self, v: u64) -> Delivery {
        if v > self.max {
            self.shift(v - self.max);
            self.max = v;
            self.window[0] |= 1;
            return Delivery::New;
        }
        let back = self.max - v;
        if back >= WINDOW {
            return Delivery::TooOld;
        }
        let (word, bit) = ((back / 64) as usize, back % 64);
        if self.window[word] & (1 << bit) != 0 {
            Delivery::Duplicate
        } else {
            self.window[word] |= 1 << bit;
            Delivery::Late
        }
    }

    /// Moves every remembered number `by` places further from the top.
    fn shift(&mut self, by: u64) {
        if by >= WINDOW {
            self.window = [0; WINDOW_WORDS];
            return;
        }
        let words = (by / 64) as usize;
        let bits = (by % 64) as u32;
        for i in (0..WINDOW_WORDS).rev() {
            let mut v = if i >= words {
                self.window[i - words] << bits
            } else {
                0
            };
            if bits > 0 && i > words {
                v |= self.window[i - words - 1] >> (64 - bits);
            }
            self.window[i] = v;
        }
    }
}

/// One subscriber's checks of `seq` (must be 1, 2, 3, …) and `sseq` (must
/// increase).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryTracker {
    pub seq: SeqWindow,
    pub sseq: SeqWindow,
}

impl DeliveryTracker {
    /// Checks a live frame's `seq` (replayed frames repeat old numbers and
    /// are not passed here).
    pub fn on_seq(&mut self, seq: u64) {
        self.seq.observe(seq);
    }

    /// Places a frame's `sseq` relative to those seen.
    pub fn on_sseq(&mut self, sseq: u64) -> Delivery {
        self.sseq.observe(sseq)
    }

    /// `seq` numbers below the highest that never arrived.
    pub fn seq_missing(&self) -> u64 {
        self.seq.max().saturating_sub(self.seq.distinct)
    }
}

/// Delivery statistics of one step, summed over a shard of subscribers.
#[derive(Default)]
struct StepAgg {
    unique: u64,
    duplicates: u64,
    reordered: u64,
    last_delivery_ns: u64,
    latency: Option<Histogram<u64>>,
}

/// Subscribers share these in [`SHARDS`] parts, so threads rarely contend.
const SHARDS: usize = 16;

struct Shared {
    run: u64,
    shards: Vec<Mutex<Vec<StepAgg>>>,
}

impl Shared {
    fn new(run: u64, steps: usize) -> Shared {
        Shared {
            run,
            shards: (0..SHARDS)
                .map(|_| Mutex::new((0..steps).map(|_| StepAgg::default()).collect()))
                .collect(),
        }
    }

    fn unique(&self, step: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| lock(s).get(step).map_or(0, |a| a.unique))
            .sum()
    }

    /// Sums one step over all shards.
    fn step(&self, step: usize) -> (u64, u64, u64, u64, Histogram<u64>) {
        let mut h = fanout_histogram();
        let (mut unique, mut dups, mut reordered, mut last) = (0, 0, 0, 0);
        for s in &self.shards {
            let shard = lock(s);
            if let Some(a) = shard.get(step) {
                unique += a.unique;
                dups += a.duplicates;
                reordered += a.reordered;
                last = last.max(a.last_delivery_ns);
                if let Some(l) = &a.latency {
                    let _ = h.add(l);
                }
            }
        }
        (unique, dups, reordered, last, h)
    }
}

/// A poisoned lock only means another receiver panicked; its counts are
/// still the best we have.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Latencies in µs with 2 significant digits (1 %): one per step and shard.
fn fanout_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2)
        .unwrap_or_else(|_| Histogram::new(2).unwrap_or_else(|_| unreachable!("valid precision")))
}

pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A `message` frame, borrowed from the text.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    seq: Option<u64>,
    sseq: Option<u64>,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    replayed: bool,
}

/// The fields of our own payload (the padding is not read).
#[derive(Deserialize)]
struct Payload {
    t: u64,
    r: u64,
    s: usize,
}

/// One subscriber's totals at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberTotals {
    pub unique: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// `seq` numbers the server assigned that never arrived.
    pub seq_missing: u64,
    /// `seq` numbers that arrived below the highest (or twice).
    pub seq_out_of_order: u64,
    pub foreign: u64,
    pub throttle_updates: u64,
    pub errors: u64,
    pub dropped: bool,
}

/// Handles one text frame for a subscriber.
fn on_frame(
    text: &str,
    tracker: &mut DeliveryTracker,
    totals: &mut SubscriberTotals,
    shared: &Shared,
    shard: usize,
) {
    let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else {
        totals.errors += 1;
        return;
    };
    match frame.kind {
        "message" => {}
        "throttle_update" => {
            totals.throttle_updates += 1;
            return;
        }
        "error" => {
            totals.errors += 1;
            return;
        }
        _ => return,
    }
    if !frame.replayed
        && let Some(seq) = frame.seq
    {
        tracker.on_seq(seq);
    }
    let delivery = frame.sseq.map(|s| tracker.on_sseq(s));
    let ours = frame
        .data
        .and_then(|d| serde_json::from_str::<Payload>(d.get()).ok())
        .filter(|p| p.r == shared.run);
    let Some(payload) = ours else {
        totals.foreign += 1;
        return;
    };
    let now = unix_nanos();
    let mut steps = lock(&shared.shards[shard]);
    let Some(agg) = steps.get_mut(payload.s) else {
        return;
    };
    match delivery.unwrap_or(Delivery::New) {
        Delivery::Duplicate => {
            agg.duplicates += 1;
            totals.duplicates += 1;
            return;
        }
        Delivery::Late | Delivery::TooOld => {
            agg.reordered += 1;
            totals.reordered += 1;
        }
        Delivery::New => {}
    }
    agg.unique += 1;
    totals.unique += 1;
    agg.last_delivery_ns = agg.last_delivery_ns.max(now);
    let us = (now.saturating_sub(payload.t) / 1000).max(1);
    agg.latency
        .get_or_insert_with(fanout_histogram)
        .saturating_record(us);
}

/// One step of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    pub step: usize,
    /// Wall-clock span of the step, publishing and drain (unix ms): lets a
    /// caller line up server-side samples with the step.
    #[serde(default)]
    pub started_unix_ms: u64,
    #[serde(default)]
    pub ended_unix_ms: u64,
    pub target_rate: f64,
    /// Publishes answered 202.
    pub published: u64,
    pub publish_errors: BTreeMap<String, u64>,
    pub achieved_publish_rate: f64,
    pub expected_deliveries: u64,
    /// Unique deliveries of this step's messages.
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Delivered / (step start → last delivery, at least the step length).
    pub deliveries_per_s: f64,
    pub latency: LatencySummary,
    /// Loadgen CPU as a share of the cores it can use (`--threads`, ≤ cores).
    pub loadgen_cpu_percent: f64,
    pub loadgen_bound: bool,
    /// Publishes went out (answered with any HTTP status) more than 10 %
    /// below the target rate: the ramp stops here, later steps could not
    /// measure the gateway.
    #[serde(default)]
    pub publisher_bound: bool,
    /// How late publish requests were written against their fixed schedule
    /// (written − due), over the step's answered publishes: near zero
    /// while `/publish` answers before the next request is due on each
    /// connection, growing once slow answers hold every connection.
    #[serde(default)]
    pub publish_behind_p99_ms: f64,
    #[serde(default)]
    pub publish_behind_max_ms: f64,
    /// Publish request written → its answer read.
    #[serde(default)]
    pub publish_answer_p99_ms: f64,
    #[serde(default)]
    pub publish_answer_max_ms: f64,
}

/// The result of a `fanout` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FanoutReport {
    pub run: String,
    pub url: String,
    pub subscribers: u64,
    /// Subscribers that got `subscribed`.
    pub subscribed: u64,
    pub setup_failures: BTreeMap<String, u64>,
    pub subjects: Vec<String>,
    pub size: usize,
    pub priority: String,
    pub threads: usize,
    pub steps: Vec<StepReport>,
    /// Why the ramp ended before its last rate, if it did.
    pub stopped_because: Option<String>,
    pub published: u64,
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// `seq` numbers assigned by the server but never received.
    pub seq_missing: u64,
    /// `seq` numbers received out of order or twice.
    pub seq_out_of_order: u64,
    pub throttle_updates: u64,
    pub dropped_subscribers: u64,
    /// Highest deliveries/s of a step with nothing lost (and p99 within
    /// `max_p99` when given).
    pub best_lossless_deliveries_per_s: Option<f64>,
    pub notes: Vec<String>,
    pub server_samples: Vec<ServerSample>,
    pub elapsed_ms: u64,
}

/// Runs the fan-out measurement.
pub async fn run(cfg: &FanoutConfig) -> anyhow::Result<FanoutReport> {
    let target = parse_ws_url(&cfg.url)?;
    if cfg.subscribers == 0 {
        bail!("-n (subscribers) must be at least 1");
    }
    if cfg.subjects.is_empty() {
        bail!("--subjects needs at least one subject");
    }
    for s in &cfg.subjects {
        surge_core::subjects::Subject::parse(s)
            .map_err(|e| anyhow::anyhow!("--subjects: `{s}` is not a publishable subject: {e}"))?;
    }
    if cfg.rates.is_empty() || cfg.rates.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
        bail!("--rate must be greater than 0");
    }
    if surge_core::protocol::Priority::parse(&cfg.priority).is_none() {
        bail!(
            "--priority `{}`: expected low, medium, high or critical",
            cfg.priority
        );
    }
    let mut notes = Vec::new();
    let fd = limits::raise_nofile().context("reading RLIMIT_NOFILE")?;
    notes.push(fd.describe());
    if cfg.subscribers > fd.connection_budget() {
        bail!(
            "{} subscribers exceed what this process can hold (~{}); fanout runs in one process",
            cfg.subscribers,
            fd.connection_budget()
        );
    }
    if cfg.publishers == 0 {
        bail!("--publishers must be at least 1");
    }
    let mut publishers = (0..cfg.publishers)
        .map(|_| {
            http::client(&cfg.admin, Duration::from_secs(10))
                .map(|client| client.with_bearer(cfg.admin_token.clone()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = Instant::now();
    let run_id = unix_nanos() ^ (u64::from(std::process::id()) << 32);
    let shared = Arc::new(Shared::new(run_id, cfg.rates.len()));

    // Subscribers: connect, subscribe, then read until stopped.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), attempt::Failure>>();
    let target = Arc::new(target);
    let channels = Arc::new(cfg.subjects.clone());
    let sources = SourcePool::new(cfg.sources);
    let mut handles = Vec::with_capacity(cfg.subscribers as usize);
    let setup_start = Instant::now();
    for i in 0..cfg.subscribers {
        if cfg.connect_rate > 0.0 {
            tokio::time::sleep_until(
                setup_start + Duration::from_secs_f64(i as f64 / cfg.connect_rate),
            )
            .await;
        }
        let (target, channels, shared) = (target.clone(), channels.clone(), shared.clone());
        let (ready, mut stop) = (ready_tx.clone(), stop_rx.clone());
        let timeout = cfg.handshake_timeout;
        let source = sources.pick(i);
        handles.push(tokio::spawn(async move {
            let mut totals = SubscriberTotals::default();
            let mut ws = match attempt::open(&target, source, timeout).await {
                Ok(opened) => opened.ws,
                Err(f) => {
                    let _ = ready.send(Err(f));
                    return None;
                }
            };
            if let Err(f) = attempt::subscribe(&mut ws, &channels, timeout).await {
                let _ = ready.send(Err(f));
                attempt::close(ws).await;
                return None;
            }
            let _ = ready.send(Ok(()));
            let mut tracker = DeliveryTracker::default();
            let shard = (i as usize) % SHARDS;
            loop {
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => break,
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(text))) => {
                            on_frame(text.as_str(), &mut tracker, &mut totals, &shared, shard)
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                            totals.dropped = true;
                            break;
                        }
                        Some(Ok(_)) => {}
                    },
                }
            }
            if !totals.dropped {
                attempt::close(ws).await;
            }
            totals.seq_missing = tracker.seq_missing();
            totals.seq_out_of_order = tracker.seq.out_of_order + tracker.seq.duplicates;
            Some(totals)
        }));
    }
    drop(ready_tx);
    let mut subscribed = 0u64;
    let mut setup_failures = BTreeMap::new();
    let setup_deadline = Instant::now() + cfg.handshake_timeout * 2 + Duration::from_secs(5);
    for _ in 0..cfg.subscribers {
        match tokio::time::timeout_at(setup_deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => subscribed += 1,
            Ok(Some(Err(f))) => *setup_failures.entry(f.kind.label()).or_insert(0u64) += 1,
            Ok(None) | Err(_) => break,
        }
    }
    if subscribed < cfg.subscribers {
        notes.push(format!(
            "{} of {} subscribers failed to set up: {:?}",
            cfg.subscribers - subscribed,
            cfg.subscribers,
            setup_failures
        ));
    }

    let (stop_sampler, sampler_rx) = watch::channel(false);
    let max_run = (cfg.duration + cfg.drain) * cfg.rates.len() as u32 + Duration::from_secs(60);
    let sampler = server::spawn_sampler(&cfg.admin, started, sampler_rx, max_run)?;

    let cores = cfg.threads.clamp(1, limits::cpu_count());
    let mut steps = Vec::new();
    let mut stopped_because = None;
    let mut next_index = 0u64;
    if subscribed > 0 {
        for (step, &rate) in cfg.rates.iter().enumerate() {
            let cpu_before = limits::process_cpu_time();
            let step_start = Instant::now();
            let step_start_ns = unix_nanos();
            let publish = publish_step(&mut publishers, cfg, run_id, step, rate, next_index).await;
            next_index += publish.scheduled;
            let expected = publish.ok * subscribed;
            // Drain: wait for this step's deliveries, bounded.
            let drain_deadline = Instant::now() + cfg.drain;
            while shared.unique(step) < expected && Instant::now() < drain_deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let wall = step_start.elapsed();
            let cpu = match (cpu_before, limits::process_cpu_time()) {
                (Some(a), Some(b)) => limits::cpu_percent(b.saturating_sub(a), wall, cores),
                _ => 0.0,
            };
            let (delivered, duplicates, reordered, last_ns, hist) = shared.step(step);
            let span =
                Duration::from_nanos(last_ns.saturating_sub(step_start_ns)).max(cfg.duration);
            let elapsed_s = publish.elapsed.as_secs_f64().max(1e-9);
            let sent_rate = publish.answered as f64 / elapsed_s;
            let behind = LatencySummary::of(&publish.behind);
            let answer = LatencySummary::of(&publish.answer);
            let report = StepReport {
                step,
                started_unix_ms: step_start_ns / 1_000_000,
                ended_unix_ms: unix_nanos() / 1_000_000,
                target_rate: rate,
                published: publish.ok,
                publish_errors: publish.errors,
                achieved_publish_rate: publish.ok as f64 / elapsed_s,
                expected_deliveries: expected,
                delivered,
                lost: expected.saturating_sub(delivered),
                duplicates,
                reordered,
                deliveries_per_s: delivered as f64 / span.as_secs_f64(),
                latency: LatencySummary::of(&hist),
                loadgen_cpu_percent: cpu,
                loadgen_bound: cpu >= limits::LOADGEN_BOUND_PERCENT,
                publisher_bound: sent_rate < rate * PUBLISHER_BOUND_SHARE,
                publish_behind_p99_ms: behind.p99_ms,
                publish_behind_max_ms: behind.max_ms,
                publish_answer_p99_ms: answer.p99_ms,
                publish_answer_max_ms: answer.max_ms,
            };
            let over_p99 = cfg
                .max_p99
                .is_some_and(|m| report.latency.p99_ms > m.as_secs_f64() * 1000.0);
            let lossy = report.lost > 0;
            let publisher_bound = report.publisher_bound;
            steps.push(report);
            if publisher_bound {
                stopped_because = Some(format!(
                    "step {step} at {rate}/s was publisher-bound: publishes went out at {sent_rate:.1}/s \
                     with {} publisher connection(s); raise --publishers unless the machine is saturated",
                    cfg.publishers
                ));
                break;
            }
            if step + 1 < cfg.rates.len() {
                if cfg.stop_on_loss && lossy {
                    stopped_because = Some(format!("step {step} at {rate}/s lost messages"));
                    break;
                }
                if over_p99 {
                    stopped_because =
                        Some(format!("step {step} at {rate}/s exceeded the p99 bound"));
                    break;
                }
            }
        }
    } else {
        notes.push("no subscriber is subscribed: nothing published".into());
    }

    let _ = stop_tx.send(true);
    let mut totals = Vec::new();
    let end_deadline = Instant::now() + attempt::CLOSE_TIMEOUT * 3;
    for h in handles {
        let abort = h.abort_handle();
        match tokio::time::timeout_at(end_deadline, h).await {
            Ok(Ok(Some(t))) => totals.push(t),
            Ok(_) => {}
            Err(_) => abort.abort(),
        }
    }
    let _ = stop_sampler.send(true);
    let server_samples = sampler.await.unwrap_or_default();

    let sum = |f: fn(&SubscriberTotals) -> u64| totals.iter().map(f).sum::<u64>();
    let published: u64 = steps.iter().map(|s| s.published).sum();
    let expected: u64 = steps.iter().map(|s| s.expected_deliveries).sum();
    let delivered: u64 = steps.iter().map(|s| s.delivered).sum();
    let best = steps
        .iter()
        .filter(|s| {
            s.lost == 0
                && s.published > 0
                && cfg
                    .max_p99
                    .is_none_or(|m| s.latency.p99_ms <= m.as_secs_f64() * 1000.0)
        })
        .map(|s| s.deliveries_per_s)
        .fold(None, |best: Option<f64>, v| {
            Some(best.map_or(v, |b| b.max(v)))
        });
    for s in &steps {
        if s.loadgen_bound {
            notes.push(format!(
                "step {} (rate {}/s): loadgen CPU {:.0} % of its {cores} core(s): figures may be loadgen-bound",
                s.step, s.target_rate, s.loadgen_cpu_percent
            ));
        }
    }
    Ok(FanoutReport {
        run: "fanout".into(),
        url: cfg.url.clone(),
        subscribers: cfg.subscribers,
        subscribed,
        setup_failures,
        subjects: cfg.subjects.clone(),
        size: cfg.size,
        priority: cfg.priority.clone(),
        threads: cfg.threads,
        steps,
        stopped_because,
        published,
        expected_deliveries: expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicates: sum(|t| t.duplicates),
        reordered: sum(|t| t.reordered),
        seq_missing: sum(|t| t.seq_missing),
        seq_out_of_order: sum(|t| t.seq_out_of_order),
        throttle_updates: sum(|t| t.throttle_updates),
        dropped_subscribers: totals.iter().filter(|t| t.dropped).count() as u64,
        best_lossless_deliveries_per_s: best,
        notes,
        server_samples,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

struct StepPublish {
    /// Answered 202 (or 200).
    ok: u64,
    /// Answered with any HTTP status: the publishes that went out.
    answered: u64,
    errors: BTreeMap<String, u64>,
    /// Message indexes used (sent or not), so the next step continues after.
    scheduled: u64,
    elapsed: Duration,
    /// Answered publishes: written − due, in µs.
    behind: Histogram<u64>,
    /// Answered publishes: answer read − written, in µs.
    answer: Histogram<u64>,
}

/// The `data` of message `index`: send time, run, step, padding to `size`.
pub fn payload(run: u64, step: usize, index: u64, size: usize) -> String {
    let head = format!(
        "{{\"t\":{},\"r\":{run},\"s\":{step},\"i\":{index},\"p\":\"",
        unix_nanos()
    );
    let pad = size.saturating_sub(head.len() + 2);
    let mut out = String::with_capacity(head.len() + pad + 2);
    out.push_str(&head);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out
}

/// What one publisher connection did in a step.
struct PublisherTally {
    ok: u64,
    answered: u64,
    errors: BTreeMap<String, u64>,
    behind: Histogram<u64>,
    answer: Histogram<u64>,
}

impl PublisherTally {
    fn new() -> PublisherTally {
        PublisherTally {
            ok: 0,
            answered: 0,
            errors: BTreeMap::new(),
            behind: fanout_histogram(),
            answer: fanout_histogram(),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Publishes at `rate` for the step's duration on a fixed schedule: message
/// `k` is due at `k / rate` after the start. Each publisher connection takes
/// the next unsent message when it is free, so up to `clients.len()`
/// requests are in flight and one slow answer does not delay the schedule.
/// A message is stamped when it is actually written; messages sent late go
/// out as soon as a connection is free, and the achieved rate is reported,
/// with how far behind its due time each request was written.
async fn publish_step(
    clients: &mut [AdminClient],
    cfg: &FanoutConfig,
    run: u64,
    step: usize,
    rate: f64,
    first_index: u64,
) -> StepPublish {
    let start = Instant::now();
    let total = (rate * cfg.duration.as_secs_f64()).round().max(1.0) as u64;
    let subjects: Vec<String> = cfg
        .subjects
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    let priority = serde_json::to_string(&cfg.priority).unwrap_or_default();
    // A step never runs much past its length, even if publishes are slow.
    let hard_end = start + cfg.duration + Duration::from_secs(5);
    let next = AtomicU64::new(0);
    let not_sent = AtomicU64::new(0);
    let workers = clients.iter_mut().map(|client| {
        let (next, not_sent, subjects, priority) = (&next, &not_sent, &subjects, &priority);
        async move {
            let mut tally = PublisherTally::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    break;
                }
                let due = start + Duration::from_secs_f64(k as f64 / rate);
                tokio::time::sleep_until(due).await;
                if Instant::now() > hard_end {
                    // Claim every remaining message so the others stop too.
                    let rest = next.swap(total, Ordering::Relaxed).min(total);
                    not_sent.fetch_add(total - rest + 1, Ordering::Relaxed);
                    break;
                }
                let index = first_index + k;
                let subject = &subjects[(index % subjects.len() as u64) as usize];
                let body = format!(
                    "{{\"subject\":{subject},\"data\":{},\"priority\":{priority}}}",
                    payload(run, step, index, cfg.size)
                );
                match client.post_json("/publish", body).await {
                    Ok(answer) => {
                        tally.answered += 1;
                        let behind = answer.written.saturating_duration_since(due);
                        tally.behind.saturating_record(micros(behind));
                        let took = answer.answered.saturating_duration_since(answer.written);
                        tally.answer.saturating_record(micros(took));
                        if answer.status == 202 || answer.status == 200 {
                            tally.ok += 1;
                        } else {
                            *tally
                                .errors
                                .entry(format!("http_{}", answer.status))
                                .or_insert(0) += 1;
                        }
                    }
                    Err(_) => *tally.errors.entry("transport".to_string()).or_insert(0) += 1,
                }
            }
            tally
        }
    });
    let tallies = futures_util::future::join_all(workers).await;
    let elapsed = start
        .elapsed()
        .max(cfg.duration.min(Duration::from_secs(1)));
    let mut out = StepPublish {
        ok: 0,
        answered: 0,
        errors: BTreeMap::new(),
        scheduled: total,
        elapsed,
        behind: fanout_histogram(),
        answer: fanout_histogram(),
    };
    for t in tallies {
        out.ok += t.ok;
        out.answered += t.answered;
        let _ = out.behind.add(&t.behind);
        let _ = out.answer.add(&t.answer);
        for (kind, n) in t.errors {
            *out.errors.entry(kind).or_insert(0) += n;
        }
    }
    let not_sent = not_sent.into_inner();
    if not_sent > 0 {
        out.errors
            .insert("not_sent_step_overran".to_string(), not_sent);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_steps() {
        assert_eq!(
            parse_ramp("100:100:400").unwrap(),
            vec![100.0, 200.0, 300.0, 400.0]
        );
        assert_eq!(parse_ramp("5:10:20").unwrap(), vec![5.0, 15.0]);
        assert!(parse_ramp("1:2").is_err());
        assert!(parse_ramp("10:0:20").is_err());
        assert!(parse_ramp("10:1:5").is_err());
        assert!(parse_ramp("1:1:100000").is_err());
    }

    #[test]
    fn seq_must_count_up_by_one() {
        let mut t = DeliveryTracker::default();
        for s in [1, 2, 3, 5, 4, 6, 8, 8] {
            t.on_seq(s);
        }
        assert_eq!(t.seq_missing(), 1, "7 never came");
        assert_eq!((t.seq.out_of_order, t.seq.duplicates), (1, 1));
    }

    #[test]
    fn sseq_window_tells_late_from_duplicate() {
        let mut t = DeliveryTracker::default();
        assert_eq!(t.on_sseq(10), Delivery::New);
        assert_eq!(t.on_sseq(12), Delivery::New);
        assert_eq!(t.on_sseq(11), Delivery::Late);
        assert_eq!(t.on_sseq(11), Delivery::Duplicate);
        assert_eq!(t.on_sseq(12), Delivery::Duplicate);
        assert_eq!(t.on_sseq(10), Delivery::Duplicate);
        // Far jumps keep working across word boundaries.
        assert_eq!(t.on_sseq(12 + 100), Delivery::New);
        assert_eq!(t.on_sseq(12), Delivery::Duplicate);
        assert_eq!(t.on_sseq(13), Delivery::Late);
        assert_eq!(t.on_sseq(12 + 100 + WINDOW + 5), Delivery::New);
        assert_eq!(t.on_sseq(112), Delivery::TooOld);
    }

    #[test]
    fn window_shift_matches_a_set() {
        // Compare the bitmap against a plain set over a scrambled sequence.
        let mut t = SeqWindow::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut max = 0u64;
        let mut x = 7u64;
        for _ in 0..5000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let s = 1 + (x >> 33) % 3000;
            let got = t.observe(s);
            let want = if s > max {
                Delivery::New
            } else if max - s >= WINDOW {
                Delivery::TooOld
            } else if seen.contains(&s) {
                Delivery::Duplicate
            } else {
                Delivery::Late
            };
            assert_eq!(got, want, "sseq {s} max {max}");
            if want != Delivery::TooOld {
                seen.insert(s);
            }
            max = max.max(s);
        }
    }

    #[test]
    fn payload_has_the_requested_size() {
        let p = payload(7, 2, 9, 100);
        assert_eq!(p.len(), 100);
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["r"], 7);
        assert_eq!(v["s"], 2);
        // Smaller than the header: no padding, still valid JSON.
        assert!(serde_json::from_str::<serde_json::Value>(&payload(1, 0, 0, 5)).is_ok());
    }

    #[test]
    fn frames_are_attributed_to_steps() {
        let shared = Shared::new(42, 2);
        let mut t = DeliveryTracker::default();
        let mut totals = SubscriberTotals::default();
        let frame = |seq: u64, sseq: u64, run: u64, step: usize| {
            format!(
                r#"{{"type":"message","seq":{seq},"subject":"a.b","sseq":{sseq},"data":{{"t":{},"r":{run},"s":{step},"i":0,"p":""}}}}"#,
                unix_nanos()
            )
        };
        on_frame(&frame(1, 5, 42, 0), &mut t, &mut totals, &shared, 0);
        on_frame(&frame(2, 7, 42, 1), &mut t, &mut totals, &shared, 3);
        on_frame(&frame(3, 6, 42, 1), &mut t, &mut totals, &shared, 3);
        on_frame(&frame(4, 6, 42, 1), &mut t, &mut totals, &shared, 3);
        on_frame(&frame(5, 8, 99, 1), &mut t, &mut totals, &shared, 3);
        on_frame(
            r#"{"type":"throttle_update","level":1,"rate_percent":75,"message":""}"#,
            &mut t,
            &mut totals,
            &shared,
            0,
        );
        assert_eq!(shared.unique(0), 1);
        let (unique, dups, reordered, _, h) = shared.step(1);
        assert_eq!((unique, dups, reordered), (2, 1, 1));
        assert_eq!(h.len(), 2);
        assert_eq!(totals.foreign, 1);
        assert_eq!(totals.throttle_updates, 1);
    }
}
