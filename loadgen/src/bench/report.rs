//! The session's results: `<date>.json` (every record) and `<date>.md`
//! (machine, Targets table with one column per surge binary, step tables,
//! capacity math, the runs).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

use super::execute::{Outcome, RunRecord};
use super::machine::{Commit, Machine};
use super::runs::{self, Row};
use crate::fanout::StepReport;
use crate::{ChurnReport, ConnectReport, FanoutReport};

const GIB: f64 = (1u64 << 30) as f64;
/// The VM size of the capacity target, and what is kept for the OS,
/// surge's base RSS and traffic buffers.
const VM_BYTES: f64 = 8.0 * GIB;
const VM_RESERVE: f64 = GIB;
/// surge's own per-connection estimate for its derived maximum.
const SURGE_ESTIMATE_BYTES: f64 = 16.0 * 1024.0;

#[derive(Debug, Clone, Serialize)]
pub struct Binary {
    pub label: String,
    pub path: String,
}

/// Everything a session measured: the JSON file as written.
#[derive(Debug, Clone, Serialize)]
pub struct Document {
    pub date: String,
    pub quick: bool,
    pub only: Vec<String>,
    pub commit: Commit,
    pub suite_seconds: u64,
    pub machine: Machine,
    pub binaries: Vec<Binary>,
    pub runs: Vec<RunRecord>,
}

/// `YYYY-MM-DD` (UTC) from `date`, which every system running surge has.
pub fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "undated".into())
}

/// `<date>[-quick][-partial][-compare]`: a smoke or partial session never
/// overwrites the full one.
pub fn file_stem(doc: &Document) -> String {
    let mut stem = doc.date.clone();
    if doc.quick {
        stem += "-quick";
    }
    if !doc.only.is_empty() {
        stem += "-partial";
    }
    if doc.binaries.len() > 1 {
        stem += "-compare";
    }
    stem
}

/// Writes `<base>.json` and `<base>.md`.
pub fn write(doc: &Document, base: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if let Some(dir) = base.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = base.with_extension("json");
    let md = base.with_extension("md");
    std::fs::write(&json, serde_json::to_string_pretty(doc)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    let text = markdown(doc);
    std::fs::write(&md, &text).with_context(|| format!("writing {}", md.display()))?;
    println!("{text}");
    Ok(vec![md, json])
}

/// The loadgen's own summary of an outcome, for the console.
pub fn summary(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Connect(r) => crate::report::connect_summary(r),
        Outcome::Fanout(r) => crate::report::fanout_summary(r),
        Outcome::Churn(r) => crate::report::churn_summary(r),
    }
}

fn int(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn ok(cond: bool) -> String {
    if cond { "met" } else { "NOT met" }.into()
}

fn bound(flag: bool) -> &'static str {
    if flag { " (loadgen-bound)" } else { "" }
}

fn fails(map: &std::collections::BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{k} {}", int(*v as f64)))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("–".into(), f)
}

/// One row of the Targets table for one binary.
struct Line {
    run: String,
    target: String,
    measured: String,
    verdict: String,
}

fn line(run: String, target: &str, measured: String, verdict: String) -> Line {
    Line {
        run,
        target: target.into(),
        measured,
        verdict,
    }
}

fn connect(r: &RunRecord) -> Option<&ConnectReport> {
    match &r.result {
        Some(Outcome::Connect(c)) => Some(c),
        Some(Outcome::Churn(c)) => Some(&c.connect),
        _ => None,
    }
}

fn fanout(r: &RunRecord) -> Option<&FanoutReport> {
    match &r.result {
        Some(Outcome::Fanout(f)) => Some(f),
        _ => None,
    }
}

fn churn(r: &RunRecord) -> Option<&ChurnReport> {
    match &r.result {
        Some(Outcome::Churn(c)) => Some(c),
        _ => None,
    }
}

fn metric(r: &RunRecord, name: &str) -> f64 {
    r.metrics.get(name).copied().unwrap_or(0.0)
}

/// The Targets rows of run `r` (one binary); `by` finds a sibling run of
/// the same binary (the TLS baseline).
fn lines<'a>(
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
                    format!(
                        "{} / {} ({:.2} %); failures: {}",
                        int(k.succeeded as f64),
                        int(k.attempted as f64),
                        100.0 * k.succeeded as f64 / k.attempted.max(1) as f64,
                        fails(&k.failures)
                    ),
                    ok(k.attempted > 0 && k.succeeded == k.attempted) + bound(lb),
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
                format!(
                    "{} / {} ({:.2} %); failures: {}; handshake p99 {:.0} ms",
                    int(k.succeeded as f64),
                    int(k.attempted as f64),
                    100.0 * k.succeeded as f64 / k.attempted.max(1) as f64,
                    fails(&k.failures),
                    k.handshake.p99_ms
                ),
                ok(k.attempted > 0 && k.succeeded == k.attempted) + bound(c.loadgen_bound),
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
            let (run, target) = match (tls, subscribed) {
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
            measured.push(')');
            let verdict = max_bytes.map_or("–".into(), |m| ok(per <= m));
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

/// Target: p99 within bound in every step where surge's core was below
/// `busy_limit`; the ramp itself goes on until loss or a publisher that
/// cannot keep the rate.
fn ingest_line(r: &RunRecord, f: &FanoutReport, p99_ms: f64, busy_limit: f64) -> Line {
    let busy = |i: usize| r.step_surge_cpu_percent.get(i).copied().flatten();
    let under: Vec<(usize, &StepReport)> = f
        .steps
        .iter()
        .enumerate()
        .filter(|(i, _)| busy(*i).is_some_and(|b| b < busy_limit))
        .collect();
    let good = |s: &StepReport| s.lost == 0 && s.latency.p99_ms <= p99_ms;
    let describe = |(i, s): (usize, &StepReport)| {
        format!(
            "{} deliveries/s (p99 {:.0} ms, surge core {} busy, lost {})",
            int(s.deliveries_per_s),
            s.latency.p99_ms,
            opt(busy(i), |b| format!("{b:.0} %")),
            int(s.lost as f64)
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
            "p99 ≤ {} ms while surge's core is below {busy_limit:.0} % busy",
            int(p99_ms)
        ),
        measured,
        verdict,
    )
}

/// Capacity math from the idle run of one binary.
#[derive(Debug, Clone)]
struct Capacity<'a> {
    from: &'a RunRecord,
    user: f64,
    kernel: f64,
    conns: f64,
    conns_all_slab: Option<f64>,
}

fn capacity(r: &RunRecord) -> Option<Capacity<'_>> {
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

fn capacity_line(c: &Capacity) -> Line {
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

/// Where the publisher-lag figures of a step go (p99, max ms behind the
/// send schedule) once the fan-out step report carries them.
// PUBLISH-LAG: fill from the step's publish_behind_p99_ms / publish_behind_max_ms.
fn publish_behind(_step: &StepReport) -> (Option<f64>, Option<f64>) {
    (None, None)
}

fn markdown(doc: &Document) -> String {
    let labels: Vec<&str> = doc.binaries.iter().map(|b| b.label.as_str()).collect();
    let compare = labels.len() > 1;
    let record =
        |name: &str, label: &str| doc.runs.iter().find(|r| r.name == name && r.surge == label);
    let mut o = String::new();
    let m = &doc.machine;
    let _ = writeln!(
        o,
        "# surge benchmark results: {}{}\n",
        file_stem(doc),
        if doc.quick {
            " (QUICK smoke run: small sizes, not the targets)"
        } else {
            ""
        }
    );
    let mut args = String::new();
    if doc.quick {
        args += " --quick";
    }
    if !doc.only.is_empty() {
        args += &format!(" --only {}", doc.only.join(","));
    }
    for b in doc.binaries.iter().skip(1) {
        args += &format!(" --compare {}=…", b.label);
    }
    let _ = writeln!(
        o,
        "`surge-load bench{args}` on commit `{}`{}, {} min {} s. Figures are measured, not asserted; surge and the \
         loadgen share the machine below. Every run is a fresh surge with default settings unless the run says otherwise. \
         Raw figures: the `.json` next to this file.\n",
        doc.commit.commit,
        match (&doc.commit.head, doc.commit.commit.as_str()) {
            (Some(head), "dirty") => format!(" (uncommitted changes on {head})"),
            _ => String::new(),
        },
        doc.suite_seconds / 60,
        doc.suite_seconds % 60
    );
    if compare {
        let _ = writeln!(
            o,
            "Surge binaries, side by side (each run executed once per binary, one after the other):\n"
        );
        for b in &doc.binaries {
            let _ = writeln!(o, "- `{}`: `{}`", b.label, b.path);
        }
        o.push('\n');
    }
    let _ = writeln!(o, "## Machine\n");
    let _ = writeln!(
        o,
        "| nproc | CPU | memory | kernel | `ulimit -Hn` | somaxconn | tcp_max_syn_backlog | ports |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
    let num = |v: Option<u64>| v.map_or("–".into(), |v| v.to_string());
    let _ = writeln!(
        o,
        "| {} | {} | {:.1} GiB | {} | {} | {} | {} | {} |\n",
        m.nproc,
        m.cpu_model.as_deref().unwrap_or("–"),
        m.mem_total_bytes.unwrap_or(0) as f64 / GIB,
        m.kernel,
        num(m.ulimit_hn),
        num(m.somaxconn),
        num(m.tcp_max_syn_backlog),
        m.ip_local_port_range
    );

    // Targets: one measured column per binary.
    let _ = writeln!(o, "## Targets\n");
    if compare {
        let _ = writeln!(o, "| run | target | {} |", labels.join(" | "));
        let _ = writeln!(o, "|---|---|{}", "---|".repeat(labels.len()));
    } else {
        let _ = writeln!(o, "| run | target | measured | |");
        let _ = writeln!(o, "|---|---|---|---|");
    }
    let mut table = |per_label: Vec<Vec<Line>>| {
        let rows = per_label.iter().map(Vec::len).max().unwrap_or(0);
        for i in 0..rows {
            let first = per_label.iter().find_map(|l| l.get(i));
            let Some(first) = first else { continue };
            let cells: Vec<String> = per_label
                .iter()
                .map(|l| match l.get(i) {
                    Some(x) if compare => format!("{}; **{}**", x.measured, x.verdict),
                    Some(x) => format!("{} | {}", x.measured, x.verdict),
                    None if compare => "–".into(),
                    None => "– | –".into(),
                })
                .collect();
            let _ = writeln!(
                o,
                "| {} | {} | {} |",
                first.run,
                first.target,
                cells.join(" | ")
            );
        }
    };
    for def in runs::RUNS {
        let per_label: Vec<Vec<Line>> = labels
            .iter()
            .map(|label| {
                record(def.name, label)
                    .map_or_else(Vec::new, |r| lines(def, r, &|name| record(name, label)))
            })
            .collect();
        if per_label.iter().all(Vec::is_empty) {
            continue;
        }
        table(per_label);
    }
    let caps: Vec<Option<Capacity>> = labels
        .iter()
        .map(|label| {
            record("idle-max", label)
                .and_then(capacity)
                .or_else(|| record("idle-10k", label).and_then(capacity))
        })
        .collect();
    if caps.iter().any(Option::is_some) {
        table(
            caps.iter()
                .map(|c| c.as_ref().map(capacity_line).into_iter().collect())
                .collect(),
        );
    }
    o.push('\n');
    let _ = writeln!(
        o,
        "“loadgen-bound”: the loadgen used ≥ 90 % of its cores during that run or step, so the figure may be the \
         loadgen's limit, not surge's.\n"
    );

    // Step tables of the ramps, the binaries' rows next to each other.
    for def in runs::RUNS {
        let ingest = matches!(def.row, Row::Ingest { .. });
        if !matches!(def.row, Row::Ramp { .. }) && !ingest {
            continue;
        }
        let recs: Vec<&RunRecord> = labels
            .iter()
            .filter_map(|l| record(def.name, l))
            .filter(|r| fanout(r).is_some_and(|f| !f.steps.is_empty()))
            .collect();
        if recs.is_empty() {
            continue;
        }
        let _ = writeln!(o, "## {}: steps\n", def.name);
        if ingest {
            let _ = writeln!(
                o,
                "surge: `SURGE_SHARDS=1`, pinned to CPU {}; the loadgen pinned to the other CPU(s). \
                 surge CPU is its busy share of that one core over the step (publishing and drain), from `/proc/<pid>/stat`.\n",
                recs[0]
                    .pinning
                    .as_ref()
                    .map_or("–".into(), |p| p.surge_cpu.to_string())
            );
        }
        let who = if compare { "surge | " } else { "" };
        let lag = if ingest {
            // PUBLISH-LAG: the publisher's lag behind its schedule, per step.
            " publish behind p99 ms | publish behind max ms |"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "| step | {who}publishes/s | achieved | deliveries/s | lost | p50 ms | p99 ms | max ms | surge CPU | loadgen CPU |{lag}"
        );
        let cols = 10 + usize::from(compare) + if ingest { 2 } else { 0 };
        let _ = writeln!(o, "|{}", "---|".repeat(cols));
        let steps = recs
            .iter()
            .filter_map(|r| fanout(r).map(|f| f.steps.len()))
            .max()
            .unwrap_or(0);
        for i in 0..steps {
            for r in &recs {
                let Some(st) = fanout(r).and_then(|f| f.steps.get(i)) else {
                    continue;
                };
                let l = &st.latency;
                let busy = r.step_surge_cpu_percent.get(i).copied().flatten();
                let who = if compare {
                    format!("{} | ", r.surge)
                } else {
                    String::new()
                };
                let lag = if ingest {
                    let (p99, max) = publish_behind(st);
                    let f = |v: Option<f64>| opt(v, |v| format!("{v:.1}"));
                    format!(" {} | {} |", f(p99), f(max))
                } else {
                    String::new()
                };
                let _ = writeln!(
                    o,
                    "| {i} | {who}{:.0} | {:.1} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {:.0} %{}{} |{lag}",
                    st.target_rate,
                    st.achieved_publish_rate,
                    int(st.deliveries_per_s),
                    int(st.lost as f64),
                    l.p50_ms,
                    l.p99_ms,
                    l.max_ms,
                    opt(busy, |b| format!("{b:.0} %")),
                    st.loadgen_cpu_percent,
                    if st.loadgen_bound { " (bound)" } else { "" },
                    if st.publisher_bound {
                        " (publisher-bound)"
                    } else {
                        ""
                    },
                );
            }
        }
        o.push('\n');
    }

    for (label, cap) in labels.iter().zip(&caps) {
        let Some(c) = cap else { continue };
        let Some(k) = c.from.server_side.as_ref().and_then(|s| s.kernel.as_ref()) else {
            continue;
        };
        let _ = writeln!(
            o,
            "## Capacity math{}\n",
            if compare {
                format!(" ({label})")
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            o,
            "From `{}`, holding {} idle connections. User space: surge's VmRSS after − before, divided by the open \
             connections. Kernel: the growth of the socket slab caches in `/proc/slabinfo` (objects × object size) plus \
             the TCP buffer pages of `/proc/net/sockstat` (`TCP … mem`), divided by 2 × N because both ends of every \
             loopback connection live in this kernel and each end costs the same objects.\n",
            c.from.name,
            int((k.sockets / 2) as f64)
        );
        let _ = writeln!(
            o,
            "| cache | objects added | object size | bytes per socket |"
        );
        let _ = writeln!(o, "|---|---|---|---|");
        for (name, v) in &k.slab {
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {:.0} |",
                int(v.objects_delta as f64),
                v.objsize,
                v.bytes_per_socket
            );
        }
        let _ = writeln!(
            o,
            "| TCP buffer pages (sockstat) | {} pages | {} | {} |\n",
            int(k.tcp_mem_pages_delta.unwrap_or(0) as f64),
            super::proc::page_size(),
            opt(k.tcp_buffer_bytes_per_socket, |v| format!("{v:.0}"))
        );
        let _ = writeln!(
            o,
            "Per connection: {:.0} B user + {:.0} B kernel = {:.0} B. An 8 GiB VM with 1 GiB kept for the OS and \
             surge's base: 7 GiB / {:.0} B = **{} connections**, if the open-file limit is raised to match and clients \
             come from enough addresses. Idle connections only. Counting all slab growth instead (`/proc/meminfo` Slab) \
             gives {}. Note: surge's own derived maximum assumes {:.0} KiB per connection, i.e. {} on 8 GiB, unless \
             `SURGE_MAX_CONNECTIONS` is set.\n",
            c.user,
            c.kernel,
            c.user + c.kernel,
            c.user + c.kernel,
            int(c.conns),
            opt(c.conns_all_slab, int),
            SURGE_ESTIMATE_BYTES / 1024.0,
            int((0.8 * VM_BYTES / SURGE_ESTIMATE_BYTES).floor()),
        );
    }

    let _ = writeln!(o, "## Runs\n");
    let _ = writeln!(
        o,
        "| run | surge | command | surge settings | surge exit | loadgen | surge CPU s | µs surge CPU per delivery | machine CPU busy | loadgen-bound |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
    for r in &doc.runs {
        let mut settings: Vec<String> = r
            .surge_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        settings.extend(r.surge_args.iter().cloned());
        if let Some(p) = &r.pinning {
            settings.push(format!(
                "pinned to CPU {} (its threads allowed: {})",
                p.surge_cpu,
                p.surge_threads_allowed.join("; ")
            ));
        }
        let lb = match &r.result {
            Some(Outcome::Fanout(f)) => {
                let steps: Vec<String> = f
                    .steps
                    .iter()
                    .filter(|s| s.loadgen_bound)
                    .map(|s| s.step.to_string())
                    .collect();
                if steps.is_empty() {
                    "no".into()
                } else {
                    format!("steps {}", steps.join(", "))
                }
            }
            _ => match connect(r) {
                Some(c) if c.loadgen_bound => "yes".into(),
                Some(_) => "no".into(),
                None => "–".into(),
            },
        };
        let _ = writeln!(
            o,
            "| {} | {} | `{}` | {} | {} | {} | {} | {} | {} | {lb} |",
            r.name,
            r.surge,
            r.command,
            if settings.is_empty() {
                "defaults".into()
            } else {
                settings.join(" ")
            },
            r.surge_exit,
            r.loadgen_error
                .as_deref()
                .unwrap_or("ok")
                .replace('|', "/")
                .replace('\n', " "),
            opt(r.surge_cpu_s, |v| format!("{v:.1}")),
            opt(r.surge_cpu_us_per_delivery, |v| format!("{v:.1}")),
            opt(r.machine_cpu_busy_percent, |v| format!("{v:.0} %")),
        );
    }
    let _ = writeln!(
        o,
        "\nsurge CPU s: from just before the loadgen started until SIGTERM (fan-out runs include connecting and \
         subscribing). Machine CPU busy: all cores, surge and loadgen together, over the same span (connect runs: until \
         the hold snapshot)."
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(int(0.0), "0");
        assert_eq!(int(999.4), "999");
        assert_eq!(int(10_000.0), "10,000");
        assert_eq!(int(1_234_567.0), "1,234,567");
        assert_eq!(int(-1_000.0), "-1,000");
    }
}
