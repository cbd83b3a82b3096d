//! The Targets table: each run's row(s) for one binary, computed as its
//! [`Row`] kind says, and the capacity math from the idle runs.

use std::fmt::Write as _;

use super::fmt::{bound, fails, int, ok, opt};
use crate::bench::execute::{Outcome, RunRecord};
use crate::bench::runs::{self, Row};
use crate::fanout::StepReport;
use crate::record::AttemptCounts;
use crate::{ChurnReport, ConnectReport, FanoutReport};

pub const GIB: f64 = (1u64 << 30) as f64;
/// The VM size of the capacity target, and what is kept for the OS,
/// surge's base RSS and traffic buffers.
pub const VM_BYTES: f64 = 8.0 * GIB;
pub const VM_RESERVE: f64 = GIB;
/// surge's own per-connection estimate for its derived maximum.
pub const SURGE_ESTIMATE_BYTES: f64 = 16.0 * 1024.0;

/// One row of the Targets table for one binary.
pub struct Line {
    pub run: String,
    pub target: String,
    pub measured: String,
    pub verdict: String,
}

pub fn line(run: String, target: &str, measured: String, verdict: String) -> Line {
    Line {
        run,
        target: target.into(),
        measured,
        verdict,
    }
}

/// "succeeded / attempted (percent); failures: …" of a connect run.
fn success(k: &AttemptCounts) -> String {
    format!(
        "{} / {} ({:.2} %); failures: {}",
        int(k.succeeded as f64),
        int(k.attempted as f64),
        100.0 * k.succeeded as f64 / k.attempted.max(1) as f64,
        fails(&k.failures)
    )
}

fn all_succeeded(k: &AttemptCounts) -> bool {
    k.attempted > 0 && k.succeeded == k.attempted
}

pub fn connect(r: &RunRecord) -> Option<&ConnectReport> {
    match &r.result {
        Some(Outcome::Connect(c)) => Some(c),
        Some(Outcome::Churn(c)) => Some(&c.connect),
        _ => None,
    }
}

pub fn fanout(r: &RunRecord) -> Option<&FanoutReport> {
    match &r.result {
        Some(Outcome::Fanout(f)) => Some(f),
        _ => None,
    }
}

pub fn churn(r: &RunRecord) -> Option<&ChurnReport> {
    match &r.result {
        Some(Outcome::Churn(c)) => Some(c),
        _ => None,
    }
}

pub fn metric(r: &RunRecord, name: &str) -> f64 {
    r.metrics.get(name).copied().unwrap_or(0.0)
}

/// The Targets rows of run `r` (one binary); `by` finds a sibling run of
/// the same binary (the TLS baseline).
pub fn lines<'a>(
    def: &runs::RunDef,
    r: &'a RunRecord,
    by: &dyn Fn(&str) -> Option<&'a RunRecord>,
) -> Vec<Line> {
    let n = int(r.n as f64);
    let missing = |what: &str| {
        let why = r
            .loadgen_error
            .clone()
            .unwrap_or_else(|| format!("surge exit {}", r.surge_exit));
        vec![line(
            format!("{} ({what})", def.name),
            "–",
            format!("no result: {why}"),
            "–".into(),
        )]
    };
    match def.row {
        Row::None => Vec::new(),
        Row::Burst { p99_ms } => {
            let Some(c) = connect(r) else {
                return missing("burst");
            };
            let k = &c.counts;
            let h = &k.handshake;
            let lb = c.loadgen_bound;
            vec![
                line(
                    format!("burst {n} at once"),
                    "100 % success",
                    success(k),
                    ok(all_succeeded(k)) + bound(lb),
                ),
                line(
                    format!("burst {n}: handshake p99"),
                    &format!("≤ {p99_ms:.0} ms"),
                    format!(
                        "p99 {:.0} ms (p50 {:.0}, p90 {:.0}, max {:.0}); loadgen CPU {:.0} % while connecting; \
                         surge's own part, accept → 101 written (surge_handshake_duration_seconds): p99 ≤ {} ms, max ≤ {} ms",
                        h.p99_ms,
                        h.p50_ms,
                        h.p90_ms,
                        h.max_ms,
                        c.loadgen_cpu_percent.unwrap_or(0.0),
                        opt(
                            r.metrics.get("server_handshake_p99_le_ms").copied(),
                            |v| format!("{v}")
                        ),
                        opt(
                            r.metrics.get("server_handshake_max_le_ms").copied(),
                            |v| format!("{v}")
                        ),
                    ),
                    ok(k.succeeded > 0 && h.p99_ms <= p99_ms) + bound(lb),
                ),
            ]
        }
        Row::BurstMax => {
            let Some(c) = connect(r) else {
                return missing("burst");
            };
            let k = &c.counts;
            vec![line(
                format!("burst {n} at once (surge's derived max)"),
                "100 % success",
                format!("{}; handshake p99 {:.0} ms", success(k), k.handshake.p99_ms),
                ok(all_succeeded(k)) + bound(c.loadgen_bound),
            )]
        }
        Row::OverLimit => {
            let Some(c) = connect(r) else {
                return missing("over the limit");
            };
            let k = &c.counts;
            let max = r.surge_derived_max.unwrap_or(0);
            let rejected = k.failures.get("http_503").copied().unwrap_or(0);
            let mut bad = k.failures.clone();
            bad.remove("http_503");
            let timeouts = bad.get("timeout").copied().unwrap_or(0);
            let resets = bad.get("reset").copied().unwrap_or(0);
            let last_503 = c
                .timeline
                .iter()
                .filter(|t| t.failed.get("http_503").is_some_and(|&v| v > 0))
                .map(|t| t.second)
                .max();
            let mut when = last_503.map_or("no 503".into(), |s| {
                format!("all 503s answered within second {s} of the run")
            });
            let rl = &k.rejection_latency;
            if rl.count > 0 {
                let _ = write!(
                    when,
                    "; rejection time to answer p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    rl.p50_ms, rl.p99_ms, rl.max_ms
                );
            }
            let cpu = r
                .server_side
                .as_ref()
                .and_then(|s| s.cpu_percent_one_core_while_held);
            vec![line(
                format!("over the limit: {n} at once vs max {}", int(max as f64)),
                "holds its max; every other client 503 + Retry-After at once; 0 timeouts, 0 resets",
                format!(
                    "held {}; 503 {} ({} with Retry-After); other failures: {}; admission_rejections_total {}, \
                     fd_exhaustion_answers {}; {when}; surge CPU while full {} of a core",
                    int(k.succeeded as f64),
                    int(rejected as f64),
                    int(k.with_retry_after as f64),
                    fails(&bad),
                    int(metric(r, "surge_admission_rejections_total")),
                    int(metric(r, "surge_fd_exhaustion_answers")),
                    opt(cpu, |v| format!("{v:.0} %")),
                ),
                ok(k.succeeded == max
                    && timeouts == 0
                    && resets == 0
                    && bad.is_empty()
                    && k.with_retry_after == rejected)
                    + bound(c.loadgen_bound),
            )]
        }
        Row::IdleMemory {
            max_bytes,
            tls,
            subscribed,
            baseline,
        } => {
            let s = r.server_side.clone().unwrap_or_default();
            let open = int(s.open_at_sample.unwrap_or(0) as f64);
            // (accepted, succeeded) when the clients offered permessage-deflate.
            let deflate = connect(r)
                .filter(|c| c.deflate_offered)
                .map(|c| (c.counts.deflate, c.counts.succeeded));
            let (run, target) = match (tls, subscribed) {
                (false, false) if deflate.is_some() => (
                    format!(
                        "idle memory at {open} connections with permessage-deflate negotiated (fresh surge)"
                    ),
                    format!("≤ {} KiB / connection", max_bytes.unwrap_or(0.0) / 1024.0),
                ),
                (true, _) => (
                    format!("idle TLS memory at {open} wss:// connections (fresh surge)"),
                    format!("≤ {} KiB / connection", max_bytes.unwrap_or(0.0) / 1024.0),
                ),
                (false, true) => (
                    format!("idle memory at {open} connections subscribed to one channel each"),
                    "– (not a target: for planning)".into(),
                ),
                (false, false) => (
                    format!("idle memory at {open} connections (fresh surge)"),
                    format!("≤ {} KiB / connection", max_bytes.unwrap_or(0.0) / 1024.0),
                ),
            };
            let Some(per) = s.rss_per_conn_bytes else {
                return vec![line(run, &target, "–".into(), "–".into())];
            };
            let mut measured = format!(
                "{:.2} KiB (VmRSS {:.1} → {:.1} MiB; anon {} KiB",
                per / 1024.0,
                s.vm_rss_before.unwrap_or(0) as f64 / (1 << 20) as f64,
                s.vm_rss_hold.unwrap_or(0) as f64 / (1 << 20) as f64,
                opt(s.anon_per_conn_bytes, |v| format!("{:.2}", v / 1024.0)),
            );
            let loadgen = connect(r)
                .and_then(|c| c.server.as_ref())
                .and_then(|s| s.rss_per_connection_bytes);
            if !tls && !subscribed {
                let _ = write!(
                    measured,
                    "; loadgen's /health figure {} KiB",
                    opt(loadgen, |v| format!("{:.2}", v / 1024.0))
                );
            }
            let plain = baseline
                .and_then(by)
                .and_then(|b| b.server_side.as_ref())
                .and_then(|s| s.rss_per_conn_bytes);
            if let Some(base) = plain {
                let _ = write!(
                    measured,
                    "; without TLS at the same count {:.2} KiB, TLS adds {:.2} KiB",
                    base / 1024.0,
                    (per - base) / 1024.0
                );
            }
            if let Some((accepted, succeeded)) = deflate {
                let _ = write!(
                    measured,
                    "; permessage-deflate accepted on {} of {}",
                    int(accepted as f64),
                    int(succeeded as f64)
                );
            }
            measured.push(')');
            // A deflate run measures negotiated connections or nothing.
            let negotiated = deflate.is_none_or(|(a, s)| a > 0 && a == s);
            let verdict = max_bytes.map_or("–".into(), |m| ok(per <= m && negotiated));
            vec![line(run, &target, measured, verdict)]
        }
        Row::Ramp { min_per_s, p99_ms } => {
            let Some(f) = fanout(r) else {
                return missing("fan-out");
            };
            vec![ramp_line(r, f, min_per_s, p99_ms)]
        }
        Row::Broadcast { p99_ms } => {
            let Some(f) = fanout(r) else {
                return missing("broadcast");
            };
            let Some(st) = f.steps.first() else {
                return missing("broadcast");
            };
            let l = &st.latency;
            vec![line(
                format!("one broadcast to {n} subscribers"),
                &format!("p99 ≤ {p99_ms:.0} ms"),
                format!(
                    "p99 {:.0} ms (p50 {:.0}, max {:.0}) over {} broadcasts at {:.0}/s; lost {}",
                    l.p99_ms, l.p50_ms, l.max_ms, st.published, st.target_rate, f.lost
                ),
                ok(l.p99_ms <= p99_ms && f.lost == 0) + bound(st.loadgen_bound),
            )]
        }
        Row::Churn => {
            let Some(c) = churn(r) else {
                return missing("churn");
            };
            let k = &c.connect.counts;
            vec![line(
                format!("churn {n} connect/close cycles"),
                "0 leaked slots",
                format!(
                    "leaked {} (/health {} → {}, settled in {} ms); {}/{} cycles ok; failures: {}",
                    c.leaked,
                    c.connections_before,
                    c.connections_after,
                    c.settled_in_ms.map_or("–".into(), |v| v.to_string()),
                    int(k.succeeded as f64),
                    int(k.attempted as f64),
                    fails(&k.failures)
                ),
                ok(c.leaked == 0),
            )]
        }
        Row::Handshakes => {
            let Some(c) = churn(r) else {
                return missing("TLS handshakes");
            };
            let done = c.connect.counts.succeeded as f64;
            let measured = match r.surge_cpu_s.filter(|&s| s > 0.0 && done > 0.0) {
                Some(cpu) => format!(
                    "{} per CPU-second of surge ({} cycles in {cpu:.1} CPU-s, TLS and WebSocket handshake, welcome, close)",
                    int(done / cpu),
                    int(done)
                ),
                None => "–".into(),
            };
            vec![line(
                format!("TLS handshakes: {n} wss:// connect → welcome → close cycles"),
                "– (measured: handshakes per surge CPU-second)",
                measured,
                "–".into(),
            )]
        }
        Row::Ingest {
            p99_ms,
            busy_percent,
        } => {
            let Some(f) = fanout(r) else {
                return missing("ingest");
            };
            vec![ingest_line(r, f, p99_ms, busy_percent)]
        }
    }
}

fn ramp_line(r: &RunRecord, f: &FanoutReport, min_per_s: f64, p99_ms: f64) -> Line {
    let best_step = f
        .best_lossless_deliveries_per_s
        .and_then(|b| f.steps.iter().find(|s| s.deliveries_per_s == b));
    let best = match best_step {
        None => "none".to_string(),
        Some(s) => format!(
            "{} deliveries/s (p99 {:.0} ms, publish target {:.0}/s, achieved {:.1}/s)",
            int(s.deliveries_per_s),
            s.latency.p99_ms,
            s.target_rate,
            s.achieved_publish_rate
        ),
    };
    let behind: Vec<&StepReport> = f.steps.iter().filter(|s| s.publisher_bound).collect();
    let mut extra = String::new();
    if let Some(first) = behind.first() {
        let top = f
            .steps
            .iter()
            .map(|s| s.achieved_publish_rate)
            .fold(0.0, f64::max);
        let _ = write!(
            extra,
            "; from {:.0}/s on the publisher fell behind its target (best achieved {top:.1}/s): \
             the ramp is capped by the loadgen's /publish connections, not by loss or p99",
            first.target_rate
        );
    }
    if let Some(busy) = r.machine_cpu_busy_percent {
        let _ = write!(extra, "; machine CPU busy {busy:.0} % over the run");
    }
    let lb = f.steps.iter().any(|s| s.loadgen_bound);
    let verdict = match f.best_lossless_deliveries_per_s {
        None => "NOT met".into(),
        Some(b) => ok(b >= min_per_s),
    } + bound(lb)
        + if behind.is_empty() {
            ""
        } else {
            " (publisher-bound)"
        };
    line(
        format!("fan-out {} subscribers, 100 B, ramp", int(r.n as f64)),
        &format!(
            "≥ {} deliveries/s, nothing lost, p99 < {} ms",
            int(min_per_s),
            int(p99_ms)
        ),
        format!(
            "{best}; stopped: {}{extra}; subscribed {}/{}",
            f.stopped_because.as_deref().unwrap_or("ramp finished"),
            int(f.subscribed as f64),
            int(f.subscribers as f64)
        ),
        verdict,
    )
}

/// A publisher "on schedule": 99 % of its publishes written within this of
/// their due time. A gateway whose `/publish` waits on fan-out holds the
/// publisher's connections and pushes this to tens or hundreds of ms.
const ON_SCHEDULE_MS: f64 = 20.0;

/// Target: p99 within bound, and the publisher on schedule, in every step
/// where surge's core was below `busy_limit`; the ramp itself goes on until loss or a publisher that
/// cannot keep the rate.
fn ingest_line(r: &RunRecord, f: &FanoutReport, p99_ms: f64, busy_limit: f64) -> Line {
    let busy = |i: usize| r.step_surge_cpu_percent.get(i).copied().flatten();
    let under: Vec<(usize, &StepReport)> = f
        .steps
        .iter()
        .enumerate()
        .filter(|(i, _)| busy(*i).is_some_and(|b| b < busy_limit))
        .collect();
    let good = |s: &StepReport| {
        s.lost == 0 && s.latency.p99_ms <= p99_ms && s.publish_behind_p99_ms <= ON_SCHEDULE_MS
    };
    let describe = |(i, s): (usize, &StepReport)| {
        format!(
            "{} deliveries/s (p99 {:.0} ms, surge core {} busy, lost {}, publishes behind schedule p99 {:.0} ms)",
            int(s.deliveries_per_s),
            s.latency.p99_ms,
            opt(busy(i), |b| format!("{b:.0} %")),
            int(s.lost as f64),
            s.publish_behind_p99_ms
        )
    };
    let best = f
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| good(s))
        .max_by(|a, b| a.1.deliveries_per_s.total_cmp(&b.1.deliveries_per_s));
    let mut measured = format!(
        "highest step within the p99 bound, nothing lost: {}",
        best.map_or("none".into(), describe)
    );
    if let Some(first_bad) = under.iter().find(|(_, s)| !good(s)) {
        let _ = write!(
            measured,
            "; over the bound below {busy_limit:.0} % busy: {}",
            describe(*first_bad)
        );
    }
    if let Some(hot) = f
        .steps
        .iter()
        .enumerate()
        .find(|(i, _)| busy(*i).is_some_and(|b| b >= busy_limit))
    {
        let _ = write!(
            measured,
            "; surge's core reached {busy_limit:.0} % at {}",
            describe(hot)
        );
    }
    let _ = write!(
        measured,
        "; stopped: {}",
        f.stopped_because.as_deref().unwrap_or("ramp finished")
    );
    // Others' time on surge's core: the core busy share beyond surge's own.
    let others = (0..f.steps.len())
        .filter_map(|i| Some(r.step_core_busy_percent.get(i).copied().flatten()? - busy(i)?))
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    if let Some(others) = others.filter(|&o| o >= 10.0) {
        let _ = write!(
            measured,
            "; other processes took up to {others:.0} % of surge's core in a step"
        );
    }
    if r.pinning.is_none() {
        measured += "; NOT pinned (fewer than 2 CPUs)";
    }
    let lb = f.steps.iter().any(|s| s.loadgen_bound);
    let verdict = if under.is_empty() {
        "– (no step below the busy limit)".into()
    } else {
        ok(under.iter().all(|(_, s)| good(s)))
    } + bound(lb);
    line(
        format!(
            "ingest on one pinned core: {} subscribers, 100 B",
            int(r.n as f64)
        ),
        &format!(
            "p99 ≤ {} ms and publishes on schedule (p99 ≤ {ON_SCHEDULE_MS:.0} ms late) while surge's core is below {busy_limit:.0} % busy",
            int(p99_ms)
        ),
        measured,
        verdict,
    )
}

/// Capacity math from the idle run of one binary.
#[derive(Debug, Clone)]
pub struct Capacity<'a> {
    pub from: &'a RunRecord,
    pub user: f64,
    pub kernel: f64,
    pub conns: f64,
    pub conns_all_slab: Option<f64>,
}

pub fn capacity(r: &RunRecord) -> Option<Capacity<'_>> {
    let s = r.server_side.as_ref()?;
    let k = s.kernel.as_ref()?;
    let user = s.rss_per_conn_bytes?;
    let kernel = k.kernel_bytes_per_socket?;
    let all_slab = k.meminfo_slab_bytes_per_socket.map(|slab| {
        (VM_BYTES - VM_RESERVE)
            / (user + slab + k.tcp_buffer_bytes_per_socket.unwrap_or(0.0).max(0.0))
    });
    Some(Capacity {
        from: r,
        user,
        kernel,
        conns: (VM_BYTES - VM_RESERVE) / (user + kernel),
        conns_all_slab: all_slab,
    })
}

pub fn capacity_line(c: &Capacity) -> Line {
    let k = c.from.server_side.as_ref().and_then(|s| s.kernel.as_ref());
    let slab_text = k
        .map(|k| {
            k.slab
                .iter()
                .filter(|(_, v)| v.bytes_per_socket.abs() >= 1.0)
                .map(|(name, v)| format!("{name} {:.0}", v.bytes_per_socket))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    line(
        "capacity math (8 GiB VM)".into(),
        "≥ 1,000,000 connections",
        format!(
            "{} = (8 − 1) GiB / ({:.0} B user + {:.0} B kernel) per connection; kernel per socket: slab {} B ({slab_text}), \
             TCP buffers {} B. Upper bound with all slab growth (/proc/meminfo Slab): {}",
            int(c.conns),
            c.user,
            c.kernel,
            opt(k.and_then(|k| k.slab_bytes_per_socket), |v| format!(
                "{v:.0}"
            )),
            opt(k.and_then(|k| k.tcp_buffer_bytes_per_socket), |v| format!(
                "{v:.0}"
            )),
            opt(c.conns_all_slab, int),
        ),
        ok(c.conns >= 1_000_000.0),
    )
}
