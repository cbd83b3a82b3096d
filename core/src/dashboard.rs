//! What the live dashboard (`/dashboard`, `surge top`) shows, computed from
//! the gateway's own metrics text.
//!
//! The driver scrapes its metrics once per tick and hands the text here
//! with the time; [`Snapshotter`] turns consecutive scrapes into a
//! [`Frame`]: gauges as they are, counters as per-second rates over the
//! last tick, and handshake latency percentiles over a short window of the
//! histogram's buckets. Every viewer receives the same frame, so the cost
//! is one scrape per tick however many watch. Reading the metrics text
//! rather than the gateway's internals means the dashboard shows what
//! Prometheus would, and a renamed metric fails the dashboard's tests.

pub mod exposition;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

pub use exposition::{Exposition, ParseError, Sample};

use crate::Instant;

/// How many ticks of histogram buckets the latency percentiles span.
pub const LATENCY_WINDOW_TICKS: usize = 10;

/// What the driver knows that the metrics do not say.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// Why `/readyz` would answer 503; `None` when ready.
    pub not_ready: Option<String>,
    /// Why `/health` says degraded (empty when ok).
    pub problems: Vec<String>,
    pub broker_kind: String,
    pub uptime_s: u64,
    pub version: String,
    /// Dashboard viewers connected now.
    pub viewers: u64,
}

/// One refresh of the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// Wall-clock time of the scrape, Unix milliseconds.
    pub at_ms: u64,
    /// Seconds since the previous scrape; `None` on the first frame, whose
    /// rates are then all `None`.
    pub interval_s: Option<f64>,
    pub version: String,
    pub uptime_s: u64,
    pub ready: bool,
    /// Why not ready.
    pub not_ready: Option<String>,
    /// `ok` or `degraded` (as `/health`).
    pub status: String,
    pub problems: Vec<String>,
    pub viewers: u64,
    pub connections: Connections,
    pub shards: Vec<Shard>,
    pub imbalance_percent: f64,
    /// Handshakes answered 101.
    pub admissions: Rate,
    /// Every way a connection is refused, in a fixed order.
    pub refusals: Vec<Refusal>,
    pub handshake: Latency,
    /// Messages received from the broker.
    pub published: Rate,
    /// Message frames queued to clients.
    pub delivered: Rate,
    /// Bytes written to client sockets.
    pub bytes_sent: Rate,
    pub queue_bytes: u64,
    pub throttled: Throttled,
    /// By reason: throttled, queue_full, closed_too_slow.
    pub dropped: Vec<Counted>,
    pub replay: Replay,
    pub broker: Broker,
    pub process: Process,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connections {
    pub current: u64,
    pub max: u64,
    /// Accepted, still in their handshake (they hold slots).
    pub handshaking: u64,
    /// current / max, 0–1.
    pub utilization: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    pub id: u32,
    pub connections: u64,
    pub capacity: u64,
    /// connections / capacity, 0–1.
    pub utilization: f64,
    /// Connections with work the shard has not reached yet.
    pub backlog: u64,
}

/// A counter: its rate over the last tick and its total.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub per_s: Option<f64>,
    pub total: u64,
}

/// One refusal cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    /// The label in its metric (`full`, `per_ip`, `unauthorized`, …).
    pub cause: String,
    /// The HTTP status the client got.
    pub status: u16,
    pub per_s: Option<f64>,
    pub total: u64,
}

/// A counter with a label, e.g. a drop reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counted {
    pub reason: String,
    pub per_s: Option<f64>,
    pub total: u64,
}

/// Handshake durations (accept to 101 written) over the last
/// `window_s` seconds; `None` percentiles when there was none.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub window_s: f64,
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Connections per throttle level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throttled {
    pub none: u64,
    pub light: u64,
    pub medium: u64,
    pub heavy: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Replay {
    /// Frames re-sent for `replay`.
    pub replayed: Rate,
    /// Frames sent by `resume` catch-up.
    pub recovered: Rate,
    pub resumes: Rate,
    pub resume_gaps: Rate,
    /// Live copies of what a resume had already delivered.
    pub deduplicated: Rate,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Broker {
    pub kind: String,
    pub connected: bool,
    pub paused: bool,
    /// The last stream sequence received from the broker.
    pub last_sseq: Option<u64>,
    /// The stream's last sequence, as last read.
    pub stream_last_sseq: Option<u64>,
    /// `stream_last_sseq - last_sseq`: messages stored but not yet
    /// received.
    pub lag: Option<u64>,
    pub disconnects: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    /// Memory at which new connections get 503, if known.
    pub memory_reject_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

/// The refusal causes, their metric and label, and the status sent.
const REFUSALS: [(&str, &str, &str, u16); 14] = [
    ("full", REJECTIONS, "reason", 503),
    ("cpu", REJECTIONS, "reason", 503),
    ("memory", REJECTIONS, "reason", 503),
    ("shutting_down", REJECTIONS, "reason", 503),
    ("per_ip", REJECTIONS, "reason", 429),
    ("handshakes_per_ip", REJECTIONS, "reason", 429),
    ("handshake_rate_per_ip", REJECTIONS, "reason", 429),
    ("per_user", REJECTIONS, "reason", 429),
    ("unauthorized", HANDSHAKES, "outcome", 401),
    ("invalid_token", HANDSHAKES, "outcome", 401),
    ("origin", HANDSHAKES, "outcome", 403),
    ("timeout", HANDSHAKES, "outcome", 408),
    ("malformed", HANDSHAKES, "outcome", 400),
    ("not_found", HANDSHAKES, "outcome", 404),
];
const REJECTIONS: &str = "surge_admission_rejections_total";
const HANDSHAKES: &str = "surge_handshakes_total";
const DROP_REASONS: [&str; 3] = ["throttled", "queue_full", "closed_too_slow"];
const HANDSHAKE_BUCKETS: &str = "surge_handshake_duration_seconds_bucket";

/// Turns scrapes into frames; keeps the previous scrape and a window of
/// histogram buckets.
#[derive(Debug, Default)]
pub struct Snapshotter {
    previous: Option<(Instant, Exposition)>,
    /// Cumulative handshake buckets `(upper bound, count)` of the last
    /// ticks, oldest first.
    buckets: VecDeque<(Instant, Vec<(f64, f64)>)>,
}

impl Snapshotter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the past: the next frame is a first frame (rates `None`).
    /// For a driver that stops scraping while nobody watches.
    pub fn reset(&mut self) {
        self.previous = None;
        self.buckets.clear();
    }

    /// The frame for `metrics` scraped at `now` (`at_ms` on the wall
    /// clock).
    pub fn next(&mut self, now: Instant, at_ms: u64, metrics: Exposition, status: Status) -> Frame {
        let latency = self.latency(now, &metrics);
        let interval = self
            .previous
            .as_ref()
            .map(|(then, _)| now.saturating_duration_since(*then).as_secs_f64())
            .filter(|dt| *dt > 0.0);
        let previous = self.previous.as_ref().map(|(_, e)| e);
        let rates = Rates {
            now: &metrics,
            previous: previous.filter(|_| interval.is_some()),
            interval,
        };
        let frame = build(&metrics, &rates, interval, at_ms, status, latency);
        self.previous = Some((now, metrics));
        frame
    }

    fn latency(&mut self, now: Instant, metrics: &Exposition) -> Latency {
        let mut buckets: Vec<(f64, f64)> = metrics
            .series(HANDSHAKE_BUCKETS)
            .filter_map(|s| Some((parse_le(s.label("le")?)?, s.value)))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.buckets.push_back((now, buckets.clone()));
        while self.buckets.len() > LATENCY_WINDOW_TICKS + 1 {
            self.buckets.pop_front();
        }
        let (since, oldest) = &self.buckets[0];
        let window: Vec<(f64, f64)> = if self.buckets.len() == 1 {
            buckets
        } else {
            buckets
                .iter()
                .map(|&(le, n)| {
                    let before = oldest
                        .iter()
                        .find(|(l, _)| *l == le)
                        .map_or(0.0, |(_, m)| *m);
                    (le, (n - before).max(0.0))
                })
                .collect()
        };
        let count = window.last().map_or(0.0, |(_, n)| *n);
        let ms = |q| quantile(q, &window).map(|s| round(s * 1000.0, 3));
        Latency {
            window_s: round(now.saturating_duration_since(*since).as_secs_f64(), 3),
            count: count as u64,
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
        }
    }
}

fn parse_le(le: &str) -> Option<f64> {
    match le {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        other => other.parse().ok(),
    }
}

/// The `q` quantile of cumulative `buckets` (upper bound, count), sorted by
/// bound and ending with `+Inf`, interpolated linearly inside the bucket it
/// falls in, as Prometheus' `histogram_quantile` does: the lowest bucket
/// starts at 0, and a quantile in the `+Inf` bucket is the highest finite
/// bound. `None` without observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank && count > lower.1 {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let share = (rank - lower.1) / (count - lower.1);
            return Some(lower.0 + (le - lower.0) * share);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

fn whole(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        x.round() as u64
    } else {
        0
    }
}

struct Rates<'a> {
    now: &'a Exposition,
    previous: Option<&'a Exposition>,
    interval: Option<f64>,
}

impl Rates<'_> {
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Rate {
        let total = self.now.value(name, labels).unwrap_or(0.0);
        let per_s = match (self.previous, self.interval) {
            (Some(previous), Some(dt)) => {
                let before = previous.value(name, labels).unwrap_or(0.0);
                Some(round((total - before).max(0.0) / dt, 3))
            }
            _ => None,
        };
        Rate {
            per_s,
            total: whole(total),
        }
    }

    fn plain(&self, name: &str) -> Rate {
        self.counter(name, &[])
    }
}

fn build(
    m: &Exposition,
    rates: &Rates<'_>,
    interval: Option<f64>,
    at_ms: u64,
    status: Status,
    handshake: Latency,
) -> Frame {
    let gauge = |name: &str| m.value(name, &[]).unwrap_or(0.0);
    let known = |name: &str| m.value(name, &[]).filter(|v| *v > 0.0).map(whole);
    let mut shards: Vec<Shard> = m
        .series("surge_shard_connections")
        .filter_map(|s| {
            let id = s.label("shard")?;
            let capacity = whole(
                m.value("surge_shard_connections_max", &[("shard", id)])
                    .unwrap_or(0.0),
            );
            let connections = whole(s.value);
            Some(Shard {
                id: id.parse().ok()?,
                connections,
                capacity,
                utilization: if capacity == 0 {
                    0.0
                } else {
                    round(connections as f64 / capacity as f64, 4)
                },
                backlog: whole(
                    m.value("surge_shard_backlog_connections", &[("shard", id)])
                        .unwrap_or(0.0),
                ),
            })
        })
        .collect();
    shards.sort_by_key(|s| s.id);
    let current = whole(gauge("surge_connections"));
    let max = whole(gauge("surge_connections_max"));
    let level = |l: &str| {
        whole(
            m.value("surge_throttled_connections", &[("level", l)])
                .unwrap_or(0.0),
        )
    };
    let last_sseq = m.value("surge_broker_last_sseq", &[]).map(whole);
    let stream_last_sseq = known("surge_broker_stream_last_sseq");
    Frame {
        at_ms,
        interval_s: interval.map(|dt| round(dt, 3)),
        version: status.version,
        uptime_s: status.uptime_s,
        ready: status.not_ready.is_none(),
        not_ready: status.not_ready,
        status: if status.problems.is_empty() {
            "ok"
        } else {
            "degraded"
        }
        .to_owned(),
        problems: status.problems,
        viewers: status.viewers,
        connections: Connections {
            current,
            max,
            handshaking: whole(gauge("surge_handshakes_in_progress")),
            utilization: if max == 0 {
                0.0
            } else {
                round(current as f64 / max as f64, 4)
            },
        },
        shards,
        imbalance_percent: round(gauge("surge_shard_imbalance_percent"), 2),
        admissions: rates.counter(HANDSHAKES, &[("outcome", "accepted")]),
        refusals: REFUSALS
            .iter()
            .map(|&(cause, metric, label, status)| {
                let rate = rates.counter(metric, &[(label, cause)]);
                Refusal {
                    cause: cause.to_owned(),
                    status,
                    per_s: rate.per_s,
                    total: rate.total,
                }
            })
            .collect(),
        handshake,
        published: rates.plain("surge_messages_published_total"),
        delivered: rates.plain("surge_messages_delivered_total"),
        bytes_sent: rates.plain("surge_bytes_sent_total"),
        queue_bytes: whole(gauge("surge_queue_bytes")),
        throttled: Throttled {
            none: level("none"),
            light: level("light"),
            medium: level("medium"),
            heavy: level("heavy"),
        },
        dropped: DROP_REASONS
            .iter()
            .map(|&reason| {
                let rate = rates.counter("surge_messages_dropped_total", &[("reason", reason)]);
                Counted {
                    reason: reason.to_owned(),
                    per_s: rate.per_s,
                    total: rate.total,
                }
            })
            .collect(),
        replay: Replay {
            replayed: rates.plain("surge_messages_replayed_total"),
            recovered: rates.plain("surge_messages_recovered_total"),
            resumes: rates.plain("surge_resumes_total"),
            resume_gaps: rates.plain("surge_resume_gaps_total"),
            deduplicated: rates.plain("surge_messages_deduplicated_total"),
        },
        broker: Broker {
            kind: status.broker_kind,
            connected: gauge("surge_broker_connected") > 0.0,
            paused: gauge("surge_broker_paused") > 0.0,
            last_sseq,
            stream_last_sseq,
            lag: stream_last_sseq.map(|s| s.saturating_sub(last_sseq.unwrap_or(0))),
            disconnects: whole(gauge("surge_broker_disconnects_total")),
        },
        process: Process {
            cpu_percent: round(gauge("surge_cpu_percent"), 1),
            memory_bytes: whole(gauge("surge_memory_bytes")),
            memory_reject_bytes: known("surge_memory_reject_bytes"),
            open_fds: known("surge_open_fds"),
            max_fds: known("surge_max_fds"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: f64) -> Instant {
        Instant::from_nanos((secs * 1e9) as u64)
    }

    fn status() -> Status {
        Status {
            broker_kind: "embedded".into(),
            version: "0.1.0".into(),
            ..Status::default()
        }
    }

    /// A scrape with `accepted` handshakes, `full` refusals and `delivered`
    /// messages, and `fast`/`slow` handshakes in the 1 ms and 512 ms
    /// buckets.
    fn scrape(accepted: u64, full: u64, delivered: u64, fast: u64, slow: u64) -> Exposition {
        let total = fast + slow;
        let text = format!(
            "surge_connections 30\nsurge_connections_max 100\nsurge_handshakes_in_progress 2\n\
             surge_shard_connections{{shard=\"1\"}} 10\nsurge_shard_connections{{shard=\"0\"}} 20\n\
             surge_shard_connections_max{{shard=\"0\"}} 50\nsurge_shard_connections_max{{shard=\"1\"}} 50\n\
             surge_shard_backlog_connections{{shard=\"0\"}} 3\nsurge_shard_imbalance_percent 20.0\n\
             surge_handshakes_total{{outcome=\"accepted\"}} {accepted}\n\
             surge_handshakes_total{{outcome=\"timeout\"}} 1\n\
             surge_admission_rejections_total{{reason=\"full\"}} {full}\n\
             surge_handshake_duration_seconds_bucket{{le=\"0.001\"}} {fast}\n\
             surge_handshake_duration_seconds_bucket{{le=\"0.512\"}} {total}\n\
             surge_handshake_duration_seconds_bucket{{le=\"+Inf\"}} {total}\n\
             surge_messages_delivered_total {delivered}\n\
             surge_messages_dropped_total{{reason=\"throttled\"}} 4\n\
             surge_throttled_connections{{level=\"medium\"}} 2\n\
             surge_broker_connected 1\nsurge_broker_last_sseq 90\nsurge_broker_stream_last_sseq 100\n\
             surge_cpu_percent 12\nsurge_memory_bytes 1048576\nsurge_max_fds 1024\n# EOF\n"
        );
        Exposition::parse(&text).expect("parses")
    }

    #[test]
    fn the_first_frame_has_totals_and_gauges_but_no_rates() {
        let mut s = Snapshotter::new();
        let f = s.next(at(1.0), 1_000, scrape(5, 2, 100, 5, 0), status());
        assert_eq!(f.interval_s, None);
        assert_eq!(
            f.admissions,
            Rate {
                per_s: None,
                total: 5
            }
        );
        assert_eq!(f.connections.current, 30);
        assert_eq!(f.connections.utilization, 0.3);
        assert_eq!(f.connections.handshaking, 2);
        let ids: Vec<u32> = f.shards.iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![0, 1], "sorted by id");
        assert_eq!(f.shards[0].utilization, 0.4);
        assert_eq!(f.shards[0].backlog, 3);
        assert_eq!(f.imbalance_percent, 20.0);
        let full = f.refusals.iter().find(|r| r.cause == "full").expect("full");
        assert_eq!((full.status, full.per_s, full.total), (503, None, 2));
        let timeout = f.refusals.iter().find(|r| r.cause == "timeout").expect("t");
        assert_eq!((timeout.status, timeout.total), (408, 1));
        assert_eq!(f.throttled.medium, 2);
        assert_eq!(f.dropped[0].total, 4);
        assert_eq!(f.broker.last_sseq, Some(90));
        assert_eq!(f.broker.lag, Some(10));
        assert!(f.broker.connected);
        assert_eq!(f.process.max_fds, Some(1024));
        assert_eq!(f.process.open_fds, None, "not exported: unknown");
        assert!(f.ready);
        assert_eq!(f.status, "ok");
    }

    #[test]
    fn rates_are_the_counter_increase_over_the_interval() {
        let mut s = Snapshotter::new();
        s.next(at(1.0), 1_000, scrape(5, 2, 100, 5, 0), status());
        let f = s.next(at(3.0), 3_000, scrape(15, 8, 1100, 5, 0), status());
        assert_eq!(f.interval_s, Some(2.0));
        assert_eq!(f.admissions.per_s, Some(5.0));
        assert_eq!(f.delivered.per_s, Some(500.0));
        let full = f.refusals.iter().find(|r| r.cause == "full").expect("full");
        assert_eq!((full.per_s, full.total), (Some(3.0), 8));
        let cpu = f.refusals.iter().find(|r| r.cause == "cpu").expect("cpu");
        assert_eq!((cpu.per_s, cpu.total), (Some(0.0), 0), "absent series: 0");
        s.reset();
        let f = s.next(at(4.0), 4_000, scrape(16, 8, 1100, 5, 0), status());
        assert_eq!(f.admissions.per_s, None, "after a reset, a first frame");
    }

    #[test]
    fn latency_percentiles_cover_the_window_only() {
        let mut s = Snapshotter::new();
        // 100 fast handshakes long ago...
        let f = s.next(at(0.0), 0, scrape(0, 0, 0, 100, 0), status());
        assert_eq!(f.handshake.count, 100);
        assert!(f.handshake.p99_ms.expect("p99") <= 1.0);
        // ...then 10 slow ones: the window counts only what came since its
        // oldest tick.
        let f = s.next(at(1.0), 1_000, scrape(0, 0, 0, 100, 10), status());
        assert_eq!(f.handshake.count, 10, "the increase since the oldest tick");
        assert!(f.handshake.p50_ms.expect("p50") > 1.0);
        // Past the window the old buckets no longer count; nothing new: None.
        for i in 2..=(LATENCY_WINDOW_TICKS as u64 + 2) {
            let f = s.next(at(i as f64), i * 1_000, scrape(0, 0, 0, 100, 10), status());
            if i > LATENCY_WINDOW_TICKS as u64 {
                assert_eq!(f.handshake.count, 0);
                assert_eq!(f.handshake.p99_ms, None);
                assert_eq!(f.handshake.window_s, LATENCY_WINDOW_TICKS as f64);
            }
        }
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let b = [(0.1, 10.0), (0.2, 20.0), (f64::INFINITY, 20.0)];
        assert_eq!(quantile(0.5, &b), Some(0.1));
        assert!((quantile(0.75, &b).expect("q") - 0.15).abs() < 1e-9);
        assert_eq!(
            quantile(0.25, &b),
            Some(0.05),
            "the first bucket starts at 0"
        );
        let inf = [(0.1, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(
            quantile(0.99, &inf),
            Some(0.1),
            "+Inf: the last finite bound"
        );
        assert_eq!(quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[]), None);
    }

    #[test]
    fn readiness_and_problems_come_from_the_status() {
        let mut s = Snapshotter::new();
        let f = s.next(
            at(1.0),
            1,
            scrape(0, 0, 0, 0, 0),
            Status {
                not_ready: Some("full".into()),
                problems: vec!["nats broker disconnected".into()],
                ..status()
            },
        );
        assert!(!f.ready);
        assert_eq!(f.not_ready.as_deref(), Some("full"));
        assert_eq!(f.status, "degraded");
    }

    #[test]
    fn a_frame_round_trips_through_json() {
        let mut s = Snapshotter::new();
        s.next(at(1.0), 1_000, scrape(5, 2, 100, 5, 0), status());
        let f = s.next(at(2.0), 2_000, scrape(6, 2, 200, 5, 1), status());
        let json = serde_json::to_string(&f).expect("json");
        let back: Frame = serde_json::from_str(&json).expect("back");
        assert_eq!(back, f);
    }
}
