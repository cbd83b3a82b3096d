//! What happened to each connection attempt, and the summaries built from it.
//!
//! Attempts are recorded as plain values ([`ConnRecord`]) with times in
//! milliseconds since the run's common start, so records from several worker
//! processes merge by concatenation. Summaries (counts by kind, latency
//! percentiles, the per-second timeline) are pure functions of the records,
//! unit-tested without sockets or clocks.

use std::collections::BTreeMap;
use std::fmt;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Why an attempt failed. The label ([`FailKind::label`]) is what reports show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailKind {
    /// No 101 (or no subscribe answer) within the handshake timeout.
    Timeout,
    /// The port answered with RST to the SYN.
    Refused,
    /// The connection was reset (RST) or aborted during the handshake.
    Reset,
    /// The peer closed the connection without answering the upgrade.
    Closed,
    /// The upgrade was answered with this HTTP status instead of 101.
    Http(u16),
    /// This process ran out of file descriptors (EMFILE/ENFILE): a loadgen
    /// limit, not the server's.
    LocalFdLimit,
    /// No source port left (EADDRNOTAVAIL/EADDRINUSE): add `--sources`.
    LocalNoPort,
    /// The server sent `error` (or closed) in answer to `subscribe`.
    SubscribeRejected,
    /// The connection was upgraded but no welcome frame arrived in time.
    NoWelcome,
    /// Anything else; details go to the report's examples.
    Other,
}

impl FailKind {
    pub fn label(&self) -> String {
        match self {
            FailKind::Timeout => "timeout".into(),
            FailKind::Refused => "refused".into(),
            FailKind::Reset => "reset".into(),
            FailKind::Closed => "closed".into(),
            FailKind::Http(status) => format!("http_{status}"),
            FailKind::LocalFdLimit => "local_fd_limit".into(),
            FailKind::LocalNoPort => "local_no_port".into(),
            FailKind::SubscribeRejected => "subscribe_rejected".into(),
            FailKind::NoWelcome => "no_welcome".into(),
            FailKind::Other => "other".into(),
        }
    }
}

impl fmt::Display for FailKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum Outcome {
    /// Upgraded; handshake latency from TCP connect start to 101 received.
    Ok { us: u64 },
    /// Failed; `kind` is a [`FailKind::label`].
    Failed {
        kind: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        retry_after: bool,
        /// For HTTP rejections (`http_<status>`): µs from TCP connect start
        /// to the rejecting answer, so "rejected at once" is measured.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        us: Option<u64>,
    },
}

/// One connection attempt. Times are milliseconds since the run's start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnRecord {
    /// When the TCP connect started.
    pub start: u64,
    /// When the outcome was known (101, or the failure).
    pub done: u64,
    pub outcome: Outcome,
    /// When an open connection ended (we closed it, or it was dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<u64>,
    /// It ended because the server or network closed it before we did.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dropped: bool,
    /// The upgrade accepted a permessage-deflate offer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deflate: bool,
}

/// A latency distribution in microseconds, 3 significant digits, up to 1 h.
pub fn latency_histogram() -> Histogram<u64> {
    // Bounds are constants that hdrhistogram accepts; a failure here would
    // be a programming error caught by the unit tests.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
    })
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }

    /// `p50 1.2  p90 …` for the human summary.
    pub fn describe(&self) -> String {
        if self.count == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}  (mean {:.1}, {} samples)",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms, self.mean_ms, self.count
        )
    }
}

/// Counts over all attempts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttemptCounts {
    pub attempted: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Failures by kind label.
    pub failures: BTreeMap<String, u64>,
    /// Rejections that carried a `Retry-After` header.
    pub with_retry_after: u64,
    /// Open connections the server or network closed before we did.
    pub dropped: u64,
    /// Upgrades that accepted a permessage-deflate offer.
    #[serde(default)]
    pub deflate: u64,
    pub handshake: LatencySummary,
    /// Time to answer of HTTP rejections (TCP connect start → status line).
    #[serde(default)]
    pub rejection_latency: LatencySummary,
}

/// Counts and handshake percentiles of `records`.
pub fn count(records: &[ConnRecord]) -> AttemptCounts {
    let mut c = AttemptCounts::default();
    let mut h = latency_histogram();
    let mut rejected = latency_histogram();
    for r in records {
        c.attempted += 1;
        match &r.outcome {
            Outcome::Ok { us } => {
                c.succeeded += 1;
                h.saturating_record(*us);
            }
            Outcome::Failed {
                kind,
                retry_after,
                us,
            } => {
                c.failed += 1;
                if let Some(us) = us {
                    rejected.saturating_record(*us);
                }
                *c.failures.entry(kind.clone()).or_default() += 1;
                c.with_retry_after += u64::from(*retry_after);
            }
        }
        c.dropped += u64::from(r.dropped);
        c.deflate += u64::from(r.deflate);
    }
    c.handshake = LatencySummary::of(&h);
    c.rejection_latency = LatencySummary::of(&rejected);
    c
}

/// What the gateway's `/health` said at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerSample {
    /// Milliseconds since the run's start.
    pub at: u64,
    pub connections: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub cpu_percent: Option<f64>,
}

/// One second of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelineRow {
    pub second: u64,
    /// Attempts started in this second.
    pub attempts: u64,
    /// Attempts that succeeded in this second.
    pub ok: u64,
    /// Attempts that failed in this second, by kind.
    pub failed: BTreeMap<String, u64>,
    /// p99 handshake latency of the attempts that succeeded in this second.
    pub p99_ms: Option<f64>,
    /// Connections open at the end of this second.
    pub open: u64,
    /// Open connections dropped by the peer in this second.
    pub dropped: u64,
    /// The last server sample taken in this second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerSample>,
}

impl TimelineRow {
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

/// The per-second timeline: attempts by start second, outcomes by the
/// second they became known, open connections at each second's end.
pub fn timeline(records: &[ConnRecord], samples: &[ServerSample]) -> Vec<TimelineRow> {
    let last_ms = records
        .iter()
        .map(|r| r.end.unwrap_or(r.done).max(r.done))
        .chain(samples.iter().map(|s| s.at))
        .max();
    let Some(last_ms) = last_ms else {
        return Vec::new();
    };
    let seconds = (last_ms / 1000 + 1) as usize;
    let mut rows: Vec<TimelineRow> = (0..seconds as u64)
        .map(|second| TimelineRow {
            second,
            ..TimelineRow::default()
        })
        .collect();
    let mut hists: Vec<Option<Histogram<u64>>> = vec![None; seconds];
    // Opened/closed per second, turned into an open gauge by a running sum.
    let mut delta = vec![0i64; seconds + 1];
    for r in records {
        let done = (r.done / 1000) as usize;
        rows[(r.start / 1000) as usize].attempts += 1;
        match &r.outcome {
            Outcome::Ok { us } => {
                rows[done].ok += 1;
                hists[done]
                    .get_or_insert_with(latency_histogram)
                    .saturating_record(*us);
                delta[done] += 1;
                if let Some(end) = r.end {
                    let end = (end / 1000) as usize;
                    // Counted open at the end of a second only if still open then.
                    delta[end] -= 1;
                    if r.dropped {
                        rows[end].dropped += 1;
                    }
                }
            }
            Outcome::Failed { kind, .. } => {
                *rows[done].failed.entry(kind.clone()).or_default() += 1;
            }
        }
    }
    let mut open = 0i64;
    for (i, row) in rows.iter_mut().enumerate() {
        open += delta[i];
        row.open = open.max(0) as u64;
        row.p99_ms = hists[i]
            .as_ref()
            .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0);
    }
    for s in samples {
        rows[(s.at / 1000) as usize].server = Some(*s);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(start: u64, done: u64, us: u64, end: Option<u64>, dropped: bool) -> ConnRecord {
        ConnRecord {
            start,
            done,
            outcome: Outcome::Ok { us },
            end,
            dropped,
            deflate: false,
        }
    }

    fn failed(start: u64, done: u64, kind: FailKind, retry_after: bool) -> ConnRecord {
        ConnRecord {
            start,
            done,
            outcome: Outcome::Failed {
                kind: kind.label(),
                retry_after,
                us: None,
            },
            end: None,
            dropped: false,
            deflate: false,
        }
    }

    #[test]
    fn labels() {
        assert_eq!(FailKind::Http(503).label(), "http_503");
        assert_eq!(FailKind::Timeout.to_string(), "timeout");
    }

    #[test]
    fn counts_by_kind() {
        let mut records = vec![
            ok(0, 5, 5_000, Some(3000), false),
            ok(0, 7, 7_000, Some(1500), true),
            failed(0, 10, FailKind::Http(503), true),
            failed(0, 10_000, FailKind::Timeout, false),
        ];
        records[1].deflate = true;
        let c = count(&records);
        assert_eq!(c.deflate, 1);
        assert_eq!((c.attempted, c.succeeded, c.failed), (4, 2, 2));
        assert_eq!(c.failures["http_503"], 1);
        assert_eq!(c.failures["timeout"], 1);
        assert_eq!(c.with_retry_after, 1);
        assert_eq!(c.dropped, 1);
        assert_eq!(c.handshake.count, 2);
        assert!((c.handshake.max_ms - 7.0).abs() < 0.01);
    }

    #[test]
    fn timeline_buckets_by_second() {
        let records = vec![
            ok(0, 5, 5_000, Some(3000), false),
            ok(900, 1100, 200_000, Some(1500), true),
            failed(100, 2100, FailKind::Timeout, false),
        ];
        let samples = [ServerSample {
            at: 1200,
            connections: Some(2),
            memory_bytes: Some(1 << 20),
            cpu_percent: Some(3.0),
        }];
        let rows = timeline(&records, &samples);
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].attempts, 3);
        assert_eq!((rows[0].ok, rows[0].open), (1, 1));
        assert_eq!((rows[1].ok, rows[1].open, rows[1].dropped), (1, 1, 1));
        assert!((rows[1].p99_ms.unwrap() - 200.0).abs() < 1.0);
        assert_eq!(rows[1].server.unwrap().connections, Some(2));
        assert_eq!(rows[2].failed["timeout"], 1);
        assert_eq!(rows[3].open, 0);
        assert_eq!(rows[2].p99_ms, None);
    }

    #[test]
    fn records_round_trip_as_json() {
        let r = failed(1, 2, FailKind::Http(503), true);
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<ConnRecord>(&text).unwrap(), r);
        let r = ok(1, 2, 3, None, false);
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"start":1,"done":2,"outcome":{"r":"ok","us":3}}"#);
    }
}
