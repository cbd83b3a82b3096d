//! The markdown report.

use std::fmt::Write as _;

use super::document::{Document, file_stem};
use super::fmt::{int, opt};
use super::targets::{
    Capacity, GIB, Line, SURGE_ESTIMATE_BYTES, VM_BYTES, capacity, capacity_line, connect, fanout,
    lines,
};
use crate::bench::execute::{Outcome, RunRecord};
use crate::bench::runs::{self, Row};
use crate::fanout::StepReport;

/// How far a step's publishes fell behind their schedule (p99, max ms) and
/// how long `/publish` took to answer (p99 ms).
fn publish_lag(step: &StepReport) -> (f64, f64, f64) {
    (
        step.publish_behind_p99_ms,
        step.publish_behind_max_ms,
        step.publish_answer_p99_ms,
    )
}

/// The session's labels and records, for every section.
struct View<'a> {
    doc: &'a Document,
    labels: Vec<&'a str>,
    compare: bool,
}

impl<'a> View<'a> {
    fn record(&self, name: &str, label: &str) -> Option<&'a RunRecord> {
        self.doc
            .runs
            .iter()
            .find(|r| r.name == name && r.surge == label)
    }
}

pub fn markdown(doc: &Document) -> String {
    let v = View {
        doc,
        labels: doc.binaries.iter().map(|b| b.label.as_str()).collect(),
        compare: doc.binaries.len() > 1,
    };
    let mut o = String::new();
    header(&mut o, &v);
    let caps = targets_table(&mut o, &v);
    step_tables(&mut o, &v);
    capacity_sections(&mut o, &v, &caps);
    runs_table(&mut o, doc);
    o
}

/// Title, commit, binaries, machine.
fn header(o: &mut String, v: &View) {
    let doc = v.doc;
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
    if v.compare {
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
}

/// One measured column per binary; returns each binary's capacity math.
fn targets_table<'a>(o: &mut String, v: &View<'a>) -> Vec<Option<Capacity<'a>>> {
    let _ = writeln!(o, "## Targets\n");
    if v.compare {
        let _ = writeln!(o, "| run | target | {} |", v.labels.join(" | "));
        let _ = writeln!(o, "|---|---|{}", "---|".repeat(v.labels.len()));
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
                    Some(x) if v.compare => format!("{}; **{}**", x.measured, x.verdict),
                    Some(x) => format!("{} | {}", x.measured, x.verdict),
                    None if v.compare => "–".into(),
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
        let per_label: Vec<Vec<Line>> = v
            .labels
            .iter()
            .map(|label| {
                v.record(def.name, label)
                    .map_or_else(Vec::new, |r| lines(def, r, &|name| v.record(name, label)))
            })
            .collect();
        if per_label.iter().all(Vec::is_empty) {
            continue;
        }
        table(per_label);
    }
    let caps: Vec<Option<Capacity>> = v
        .labels
        .iter()
        .map(|label| {
            v.record("idle-max", label)
                .and_then(capacity)
                .or_else(|| v.record("idle-10k", label).and_then(capacity))
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

    caps
}

/// The ramps' steps, the binaries' rows next to each other.
fn step_tables(o: &mut String, v: &View) {
    for def in runs::RUNS {
        let ingest = matches!(def.row, Row::Ingest { .. });
        if !matches!(def.row, Row::Ramp { .. }) && !ingest {
            continue;
        }
        let recs: Vec<&RunRecord> = v
            .labels
            .iter()
            .filter_map(|l| v.record(def.name, l))
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
                 surge CPU is its busy share of that one core over the step (publishing and drain), from `/proc/<pid>/stat`; \
                 core busy is the same core's busy share with every process counted (`/proc/stat`): above surge CPU, other \
                 processes took time on surge's core.\n",
                recs[0]
                    .pinning
                    .as_ref()
                    .map_or("–".into(), |p| p.surge_cpu.to_string())
            );
        }
        let who = if v.compare { "surge | " } else { "" };
        let extra = if ingest {
            " core busy | publish behind p99 ms | publish behind max ms | /publish answer p99 ms |"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "| step | {who}publishes/s | achieved | deliveries/s | lost | p50 ms | p99 ms | max ms | surge CPU | loadgen CPU |{extra}"
        );
        let cols = 10 + usize::from(v.compare) + if ingest { 4 } else { 0 };
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
                let who = if v.compare {
                    format!("{} | ", r.surge)
                } else {
                    String::new()
                };
                let extra = if ingest {
                    let core = r.step_core_busy_percent.get(i).copied().flatten();
                    let (behind_p99, behind_max, answer_p99) = publish_lag(st);
                    format!(
                        " {} | {behind_p99:.1} | {behind_max:.1} | {answer_p99:.1} |",
                        opt(core, |b| format!("{b:.0} %")),
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    o,
                    "| {i} | {who}{:.0} | {:.1} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {:.0} %{}{} |{extra}",
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
}

fn capacity_sections(o: &mut String, v: &View, caps: &[Option<Capacity>]) {
    for (label, cap) in v.labels.iter().zip(caps) {
        let Some(c) = cap else { continue };
        let Some(k) = c.from.server_side.as_ref().and_then(|s| s.kernel.as_ref()) else {
            continue;
        };
        let _ = writeln!(
            o,
            "## Capacity math{}\n",
            if v.compare {
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
            crate::bench::proc::page_size(),
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
}

fn runs_table(o: &mut String, doc: &Document) {
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
}
