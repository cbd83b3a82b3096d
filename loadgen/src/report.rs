//! Turning results into what people and machines read.
//!
//! Every run prints a human summary (counts by failure kind, handshake
//! percentiles, a per-second timeline like the seed team's failure tables)
//! and then one line `RESULT <json>` for scripts. `--report DIR` also writes
//! `result.json` and `chart.svg` (connections open, failures and p99 latency
//! over time; for fan-out, deliveries/s, p99 and loss per step).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

use crate::churn::ChurnReport;
use crate::connect::ConnectReport;
use crate::fanout::FanoutReport;
use crate::record::{ServerSample, TimelineRow};

/// Prefix of the machine-readable last line.
pub const RESULT_PREFIX: &str = "RESULT ";

/// Most timeline rows printed (the JSON always has all of them).
const MAX_PRINTED_ROWS: usize = 300;

/// `RESULT {json}`.
pub fn result_line<T: Serialize>(report: &T) -> anyhow::Result<String> {
    Ok(format!("{RESULT_PREFIX}{}", serde_json::to_string(report)?))
}

/// Writes `result.json` and `chart.svg` into `dir` (created if missing).
pub fn write_dir<T: Serialize>(dir: &Path, report: &T, svg: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(dir.join("result.json"), json + "\n")
        .with_context(|| format!("writing {}/result.json", dir.display()))?;
    std::fs::write(dir.join("chart.svg"), svg)
        .with_context(|| format!("writing {}/chart.svg", dir.display()))?;
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// The human summary of a `connect` or `churn` run.
pub fn connect_summary(r: &ConnectReport) -> String {
    let mut s = String::new();
    let rate = if r.rate > 0.0 {
        format!("{}/s", r.rate)
    } else {
        "all at once".into()
    };
    let _ = writeln!(
        s,
        "surge-load {}  {}  n={}  rate={rate}  handshake-timeout={}ms  hold={}ms  sources={}  workers={}",
        r.run, r.url, r.connections, r.handshake_timeout_ms, r.hold_ms, r.sources, r.workers
    );
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    let c = &r.counts;
    let pct = if c.attempted > 0 {
        100.0 * c.succeeded as f64 / c.attempted as f64
    } else {
        0.0
    };
    let _ = writeln!(
        s,
        "attempted {}  succeeded {} ({pct:.2} %)  failed {}",
        c.attempted, c.succeeded, c.failed
    );
    if r.deflate_offered {
        let _ = writeln!(
            s,
            "permessage-deflate: offered on every upgrade, accepted on {} of {} succeeded",
            c.deflate, c.succeeded
        );
    }
    if c.failures.is_empty() {
        let _ = writeln!(s, "failures by kind: none");
    } else {
        let kinds: Vec<String> = c.failures.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            s,
            "failures by kind: {}  (Retry-After on {} rejections)",
            kinds.join(", "),
            c.with_retry_after
        );
    }
    for e in &r.other_examples {
        let _ = writeln!(s, "  e.g. {e}");
    }
    let _ = writeln!(s, "handshake latency ms: {}", c.handshake.describe());
    if c.rejection_latency.count > 0 {
        let _ = writeln!(
            s,
            "rejection latency ms (HTTP answer instead of 101): {}",
            c.rejection_latency.describe()
        );
    }
    if let Some(p) = r.loadgen_cpu_percent {
        let _ = writeln!(
            s,
            "loadgen CPU while connecting: {p:.0} % of its cores{}",
            if r.loadgen_bound {
                " (LOADGEN-BOUND)"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(
        s,
        "open when the hold ended: {}  dropped by the peer: {}  elapsed {:.1} s",
        r.open_at_hold,
        c.dropped,
        r.elapsed_ms as f64 / 1000.0
    );
    if let Some(side) = &r.server {
        let conns = |h: Option<crate::server::Health>| opt(h.and_then(|h| h.connections));
        let rss = |h: Option<crate::server::Health>| {
            h.and_then(|h| h.memory_bytes)
                .map_or("-".into(), |b| format!("{:.1} MiB", mib(b)))
        };
        let _ = writeln!(
            s,
            "server connections: {} before → {} at hold → {} after",
            conns(side.before),
            conns(side.at_hold),
            conns(side.after)
        );
        let _ = writeln!(
            s,
            "server RSS: {} before → {} at hold → {} after{}",
            rss(side.before),
            rss(side.at_hold),
            rss(side.after),
            side.rss_per_connection_bytes
                .map_or(String::new(), |b| format!(
                    "  ({:.2} KiB per open connection)",
                    b / 1024.0
                ))
        );
    }
    let _ = writeln!(
        s,
        "timeline (attempts by start second; outcomes by the second they were known):"
    );
    s.push_str(&timeline_table(&r.timeline));
    s
}

/// The churn summary: connect summary plus the leak check.
pub fn churn_summary(r: &ChurnReport) -> String {
    let mut s = connect_summary(&r.connect);
    let _ = writeln!(
        s,
        "slots: /health connections.current {} before → {} after: leaked {}{}",
        r.connections_before,
        r.connections_after,
        r.leaked,
        r.settled_in_ms
            .map_or(" (did not settle)".into(), |ms| format!(
                " (settled in {ms} ms)"
            ))
    );
    s
}

/// The per-second table.
pub fn timeline_table(rows: &[TimelineRow]) -> String {
    let mut s = String::new();
    let server = rows.iter().any(|r| r.server.is_some());
    let _ = write!(
        s,
        "{:>5} {:>9} {:>9} {:>9}  {:<28} {:>9} {:>8}",
        "sec", "attempts", "ok", "open", "failed by kind", "p99 ms", "dropped"
    );
    if server {
        let _ = write!(s, " {:>10} {:>9} {:>7}", "srv conns", "srv MiB", "srv CPU");
    }
    s.push('\n');
    for r in rows.iter().take(MAX_PRINTED_ROWS) {
        let failed = if r.failed.is_empty() {
            "-".to_string()
        } else {
            r.failed
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = write!(
            s,
            "{:>5} {:>9} {:>9} {:>9}  {:<28} {:>9} {:>8}",
            r.second,
            r.attempts,
            r.ok,
            r.open,
            failed,
            r.p99_ms.map_or("-".into(), |p| format!("{p:.1}")),
            r.dropped
        );
        if server {
            let sample = r.server.unwrap_or_default();
            let _ = write!(
                s,
                " {:>10} {:>9} {:>7}",
                opt(sample.connections),
                sample
                    .memory_bytes
                    .map_or("-".into(), |b| format!("{:.1}", mib(b))),
                sample
                    .cpu_percent
                    .map_or("-".into(), |c| format!("{c:.0}%"))
            );
        }
        s.push('\n');
    }
    if rows.len() > MAX_PRINTED_ROWS {
        let _ = writeln!(
            s,
            "… {} more seconds in the JSON",
            rows.len() - MAX_PRINTED_ROWS
        );
    }
    s
}

/// The human summary of a `fanout` run.
pub fn fanout_summary(r: &FanoutReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "surge-load fanout  {}  subscribers {} ({} subscribed)  subjects {}  size {} B  priority {}  threads {}",
        r.url,
        r.subscribers,
        r.subscribed,
        r.subjects.join(","),
        r.size,
        r.priority,
        r.threads
    );
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    if !r.setup_failures.is_empty() {
        let _ = writeln!(s, "subscriber setup failures: {:?}", r.setup_failures);
    }
    let _ = writeln!(
        s,
        "{:>4} {:>9} {:>9} {:>11} {:>11} {:>8} {:>6} {:>6} {:>12} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "step",
        "rate/s",
        "pub ok",
        "expected",
        "delivered",
        "lost",
        "dup",
        "reord",
        "deliv/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "LG cpu",
        "bound"
    );
    for st in &r.steps {
        let _ = writeln!(
            s,
            "{:>4} {:>9.0} {:>9} {:>11} {:>11} {:>8} {:>6} {:>6} {:>12.0} {:>9.1} {:>9.1} {:>9.1} {:>8.0}% {:>7}",
            st.step,
            st.target_rate,
            st.published,
            st.expected_deliveries,
            st.delivered,
            st.lost,
            st.duplicates,
            st.reordered,
            st.deliveries_per_s,
            st.latency.p50_ms,
            st.latency.p99_ms,
            st.latency.max_ms,
            st.loadgen_cpu_percent,
            match (st.loadgen_bound, st.publisher_bound) {
                (true, _) => "LOADGEN",
                (false, true) => "PUBLISH",
                (false, false) => "-",
            }
        );
        let _ = writeln!(
            s,
            "      publishes behind schedule p99 {:.1} ms, max {:.1} ms; answered in p99 {:.1} ms, max {:.1} ms",
            st.publish_behind_p99_ms,
            st.publish_behind_max_ms,
            st.publish_answer_p99_ms,
            st.publish_answer_max_ms
        );
        if !st.publish_errors.is_empty() {
            let _ = writeln!(s, "      publish errors: {:?}", st.publish_errors);
        }
    }
    let _ = writeln!(
        s,
        "total: published {}  expected {}  delivered {}  lost {}  duplicates {}  reordered {}  seq missing {}  seq out of order {}  throttle notices {}  dropped subscribers {}",
        r.published,
        r.expected_deliveries,
        r.delivered,
        r.lost,
        r.duplicates,
        r.reordered,
        r.seq_missing,
        r.seq_out_of_order,
        r.throttle_updates,
        r.dropped_subscribers
    );
    if let Some(why) = &r.stopped_because {
        let _ = writeln!(s, "ramp stopped: {why}");
    }
    let _ = writeln!(
        s,
        "best deliveries/s with nothing lost: {}",
        r.best_lossless_deliveries_per_s
            .map_or("none".into(), |v| format!("{v:.0}"))
    );
    s
}

type Series = (String, RGBColor, Vec<(f64, f64)>);

/// One panel: a title, series, the x axis name.
struct Panel {
    title: String,
    x_desc: &'static str,
    series: Vec<Series>,
}

fn render(panels: &[Panel], width: u32) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let height = 260 * panels.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let areas = root.split_evenly((panels.len().max(1), 1));
        for (panel, area) in panels.iter().zip(areas.iter()) {
            let points = panel.series.iter().flat_map(|s| s.2.iter());
            let x_max = points.clone().map(|p| p.0).fold(1.0f64, f64::max);
            let x_min = points.clone().map(|p| p.0).fold(x_max, f64::min).min(0.0);
            let y_max = points.map(|p| p.1).fold(0.0f64, f64::max).max(1.0) * 1.1;
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(32)
                .y_label_area_size(70)
                .build_cartesian_2d(x_min..x_max, 0.0..y_max)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            chart
                .configure_mesh()
                .x_desc(panel.x_desc)
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for (name, color, pts) in &panel.series {
                let color = *color;
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(svg)
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(220, 50, 47),
    RGBColor(38, 139, 210),
    RGBColor(133, 153, 0),
    RGBColor(211, 54, 130),
    RGBColor(181, 137, 0),
    RGBColor(42, 161, 152),
];

/// Connections open, failures and p99 handshake latency per second (and the
/// server's RSS/CPU when sampled).
pub fn connect_chart(rows: &[TimelineRow], samples: &[ServerSample]) -> anyhow::Result<String> {
    let x = |r: &TimelineRow| r.second as f64;
    let mut open: Vec<Series> = vec![(
        "open (client)".into(),
        PALETTE[1],
        rows.iter().map(|r| (x(r), r.open as f64)).collect(),
    )];
    let srv_conns: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| s.connections.map(|c| (s.at as f64 / 1000.0, c as f64)))
        .collect();
    if !srv_conns.is_empty() {
        open.push(("server connections.current".into(), PALETTE[2], srv_conns));
    }
    let mut kinds: Vec<String> = rows
        .iter()
        .flat_map(|r| r.failed.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    kinds.truncate(PALETTE.len() - 1);
    let mut failures: Vec<Series> = vec![(
        "failed (all kinds)".into(),
        PALETTE[0],
        rows.iter()
            .map(|r| (x(r), r.failed_total() as f64))
            .collect(),
    )];
    for (i, k) in kinds.iter().enumerate() {
        failures.push((
            k.clone(),
            PALETTE[i + 1],
            rows.iter()
                .map(|r| (x(r), r.failed.get(k).copied().unwrap_or(0) as f64))
                .collect(),
        ));
    }
    let p99: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| r.p99_ms.map(|p| (x(r), p)))
        .collect();
    let mut panels = vec![
        Panel {
            title: "connections open".into(),
            x_desc: "second",
            series: open,
        },
        Panel {
            title: "failures per second".into(),
            x_desc: "second",
            series: failures,
        },
        Panel {
            title: "p99 handshake latency (ms) of the connections made in each second".into(),
            x_desc: "second",
            series: vec![("p99 ms".into(), PALETTE[3], p99)],
        },
    ];
    let rss: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| s.memory_bytes.map(|m| (s.at as f64 / 1000.0, mib(m))))
        .collect();
    if !rss.is_empty() {
        let cpu: Vec<(f64, f64)> = samples
            .iter()
            .filter_map(|s| s.cpu_percent.map(|c| (s.at as f64 / 1000.0, c)))
            .collect();
        panels.push(Panel {
            title: "server RSS (MiB) and CPU (%)".into(),
            x_desc: "second",
            series: vec![
                ("RSS MiB".into(), PALETTE[4], rss),
                ("CPU %".into(), PALETTE[5], cpu),
            ],
        });
    }
    render(&panels, 1000)
}

/// Deliveries/s, p99 latency and loss per publish rate.
pub fn fanout_chart(r: &FanoutReport) -> anyhow::Result<String> {
    let x = |s: &crate::fanout::StepReport| s.target_rate;
    let panels = [
        Panel {
            title: "deliveries per second".into(),
            x_desc: "publish rate (messages/s)",
            series: vec![(
                "deliveries/s".into(),
                PALETTE[1],
                r.steps.iter().map(|s| (x(s), s.deliveries_per_s)).collect(),
            )],
        },
        Panel {
            title: "end-to-end latency (ms)".into(),
            x_desc: "publish rate (messages/s)",
            series: vec![
                (
                    "p50".into(),
                    PALETTE[2],
                    r.steps.iter().map(|s| (x(s), s.latency.p50_ms)).collect(),
                ),
                (
                    "p99".into(),
                    PALETTE[3],
                    r.steps.iter().map(|s| (x(s), s.latency.p99_ms)).collect(),
                ),
            ],
        },
        Panel {
            title: "lost deliveries and loadgen CPU (%)".into(),
            x_desc: "publish rate (messages/s)",
            series: vec![
                (
                    "lost".into(),
                    PALETTE[0],
                    r.steps.iter().map(|s| (x(s), s.lost as f64)).collect(),
                ),
                (
                    "loadgen CPU %".into(),
                    PALETTE[4],
                    r.steps
                        .iter()
                        .map(|s| (x(s), s.loadgen_cpu_percent))
                        .collect(),
                ),
            ],
        },
    ];
    render(&panels, 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ConnRecord, Outcome, timeline};

    #[test]
    fn chart_is_svg() {
        let records = vec![
            ConnRecord {
                start: 0,
                done: 10,
                outcome: Outcome::Ok { us: 900 },
                end: Some(2500),
                dropped: false,
                deflate: false,
            },
            ConnRecord {
                start: 0,
                done: 1200,
                outcome: Outcome::Failed {
                    kind: "timeout".into(),
                    retry_after: false,
                    us: None,
                },
                end: None,
                dropped: false,
                deflate: false,
            },
        ];
        let rows = timeline(&records, &[]);
        let svg = connect_chart(&rows, &[]).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("failures per second"));
        let table = timeline_table(&rows);
        assert!(table.contains("timeout 1"));
    }
}
