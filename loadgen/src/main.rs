//! The `surge-load` command line: parses flags, builds the runtime, runs one
//! of the library's runs and prints the human summary followed by one
//! `RESULT <json>` line. See the library docs for what each run does.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use surge_load::connect::{ConnectConfig, WorkerSpec};
use surge_load::tls::TlsOptions;
use surge_load::{churn, connect, fanout, limits, report};

#[derive(Parser)]
#[command(
    name = "surge-load",
    version,
    about = "Load generator for surge (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open N connections at a rate, hold them, close them.
    Connect(ConnectArgs),
    /// Keep N subscribers and measure deliveries, latency and loss.
    Fanout(FanoutArgs),
    /// Connect/close cycles; checks /health comes back to its start count.
    Churn(ChurnArgs),
    /// surge's benchmark suite: every run against a fresh surge, then the
    /// Targets report (markdown + JSON). See bench/README.md.
    Bench(BenchArgs),
    /// Internal: one share of a multi-process `connect`.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        spec: String,
    },
}

fn duration(text: &str) -> Result<Duration, String> {
    surge_core::config::parse_duration(text).map_err(|e| format!("{e} (e.g. 500ms, 10s, 2m)"))
}

fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[derive(Args)]
struct Common {
    /// WebSocket URL of the gateway (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Handshake timeout per attempt (TCP connect start → 101).
    #[arg(long, default_value = "10s", value_parser = duration)]
    handshake_timeout: Duration,
    /// Source addresses 127.0.0.1 … 127.0.0.K (bind before connect).
    #[arg(long, default_value_t = 4)]
    sources: u32,
    /// Runtime threads (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Write result.json and chart.svg here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// For a wss:// URL: PEM file of the certificates to trust.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// For a wss:// URL: trust any certificate (a self-signed gateway on loopback).
    #[arg(long)]
    insecure: bool,
}

impl Common {
    /// Sets up TLS for wss:// URLs; returns what worker processes need.
    fn tls(&self) -> anyhow::Result<TlsOptions> {
        let options = TlsOptions {
            ca: self.ca.clone(),
            insecure: self.insecure,
        };
        surge_load::tls::install(&options)?;
        Ok(options)
    }
}

#[derive(Args)]
struct ConnectArgs {
    #[command(flatten)]
    common: Common,
    /// Connections to open.
    #[arg(short = 'n', long)]
    connections: u64,
    /// Connection attempts per second; 0 = all at once.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Channels to subscribe to after welcome (comma-separated).
    #[arg(long)]
    subscribe: Option<String>,
    /// How long to hold the connections once every attempt has an outcome.
    #[arg(long, default_value = "5s", value_parser = duration)]
    hold: Duration,
    /// Worker processes; 0 = as many as the open-file limit requires.
    #[arg(long, default_value_t = 0)]
    workers: u32,
    /// Admin base URL, to sample /health (RSS, CPU, connections).
    #[arg(long)]
    admin: Option<String>,
    /// Offer permessage-deflate in every upgrade, as browsers do, and count
    /// how many the gateway accepts. The clients cannot inflate: a
    /// compressed `message` frame (one of at least the gateway's
    /// SURGE_COMPRESSION_MIN_BYTES) ends its connection, counted as dropped.
    #[arg(long)]
    deflate: bool,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Admin base URL (POST /publish, GET /health).
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    admin: String,
    /// Subscribers.
    #[arg(short = 'n', long)]
    subscribers: u64,
    /// Subjects (comma-separated); every subscriber takes all of them.
    #[arg(long, default_value = "odin.token.BTC.trade")]
    subjects: String,
    /// Publishes per second (one step).
    #[arg(long, conflicts_with = "ramp")]
    rate: Option<f64>,
    /// start:step:max publishes per second, one step per --duration.
    #[arg(long)]
    ramp: Option<String>,
    /// Bytes of each message's data.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Length of each step.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    #[arg(long, default_value = "high")]
    priority: String,
    /// Subscriber connections per second during setup; 0 = all at once.
    #[arg(long, default_value_t = 2000.0)]
    connect_rate: f64,
    /// Longest wait after each step for its deliveries.
    #[arg(long, default_value = "3s", value_parser = duration)]
    drain: Duration,
    /// Stop the ramp after a step with p99 above this.
    #[arg(long, value_parser = duration)]
    max_p99: Option<Duration>,
    /// Stop the ramp after a step that lost messages.
    #[arg(long)]
    stop_on_loss: bool,
    /// Keep-alive admin connections publishing concurrently on one schedule.
    #[arg(long, default_value_t = fanout::DEFAULT_PUBLISHERS)]
    publishers: usize,
    /// The gateway's SURGE_ADMIN_TOKEN, sent as Authorization: Bearer with every publish.
    #[arg(long, env = "SURGE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(Args)]
struct ChurnArgs {
    #[command(flatten)]
    common: Common,
    /// Admin base URL (GET /health).
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    admin: String,
    /// Connect/close cycles.
    #[arg(long)]
    cycles: u64,
    /// Cycles started per second; 0 = all at once.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Longest wait for /health to return to its start count.
    #[arg(long, default_value = "5s", value_parser = duration)]
    settle: Duration,
}

#[derive(Args)]
struct BenchArgs {
    /// The same runs at small sizes: a smoke test, not the targets.
    #[arg(long)]
    quick: bool,
    /// Only these runs (comma-separated; bench/README.md lists them).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Keep the work directory (surge logs, /proc snapshots).
    #[arg(long)]
    keep: bool,
    /// Run on a working tree with uncommitted changes (recorded as "dirty").
    #[arg(long)]
    allow_dirty: bool,
    /// The surge binary to measure.
    #[arg(long, default_value = "target/release/surge")]
    surge: PathBuf,
    /// Also measure this binary, side by side (repeatable): LABEL=PATH.
    #[arg(long, value_parser = surge_load::bench::parse_compare)]
    compare: Vec<(String, PathBuf)>,
    /// Directory for the results files (default: bench/results; with
    /// --quick, surge-bench-quick in the temporary directory).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("building the tokio runtime")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Worker { spec } => {
            let spec: WorkerSpec = serde_json::from_str(&spec).context("worker --spec")?;
            surge_load::tls::install(&spec.config.tls)?;
            runtime(spec.config.threads)?.block_on(connect::run_worker(spec))
        }
        Command::Connect(a) => {
            let tls = a.common.tls()?;
            let threads = a.common.threads.unwrap_or_else(limits::cpu_count);
            let cfg = ConnectConfig {
                url: a.common.url,
                connections: a.connections,
                rate: a.rate,
                handshake_timeout: a.common.handshake_timeout,
                subscribe: a.subscribe.as_deref().map(list).unwrap_or_default(),
                hold: a.hold,
                sources: a.common.sources,
                workers: a.workers,
                admin: a.admin,
                threads,
                tls,
                deflate: a.deflate,
            };
            let r = runtime(threads)?.block_on(connect::run(&cfg))?;
            print!("{}", report::connect_summary(&r));
            if let Some(dir) = &a.common.report {
                let svg = report::connect_chart(&r.timeline, server_samples(&r))?;
                report::write_dir(dir, &r, &svg)?;
            }
            println!("{}", report::result_line(&r)?);
            Ok(())
        }
        Command::Fanout(a) => {
            a.common.tls()?;
            let threads = a.common.threads.unwrap_or_else(limits::cpu_count);
            let rates = match (&a.ramp, a.rate) {
                (Some(r), _) => fanout::parse_ramp(r)?,
                (None, Some(r)) => vec![r],
                (None, None) => anyhow::bail!("give --rate MSGS_PER_S or --ramp start:step:max"),
            };
            let cfg = fanout::FanoutConfig {
                url: a.common.url,
                admin: a.admin,
                subscribers: a.subscribers,
                subjects: list(&a.subjects),
                rates,
                size: a.size,
                duration: a.duration,
                priority: a.priority,
                sources: a.common.sources,
                connect_rate: a.connect_rate,
                handshake_timeout: a.common.handshake_timeout,
                drain: a.drain,
                max_p99: a.max_p99,
                stop_on_loss: a.stop_on_loss,
                threads,
                publishers: a.publishers,
                admin_token: a.admin_token,
            };
            let r = runtime(threads)?.block_on(fanout::run(&cfg))?;
            print!("{}", report::fanout_summary(&r));
            if let Some(dir) = &a.common.report {
                report::write_dir(dir, &r, &report::fanout_chart(&r)?)?;
            }
            println!("{}", report::result_line(&r)?);
            Ok(())
        }
        Command::Bench(a) => {
            let mut binaries = vec![("surge".to_string(), a.surge)];
            binaries.extend(a.compare);
            let opts = surge_load::bench::BenchOptions {
                quick: a.quick,
                only: a.only,
                keep: a.keep,
                allow_dirty: a.allow_dirty,
                binaries,
                out: a.out,
            };
            surge_load::bench::run(&opts).map(|_| ())
        }
        Command::Churn(a) => {
            a.common.tls()?;
            let threads = a.common.threads.unwrap_or_else(limits::cpu_count);
            let cfg = churn::ChurnConfig {
                url: a.common.url,
                admin: a.admin,
                cycles: a.cycles,
                rate: a.rate,
                handshake_timeout: a.common.handshake_timeout,
                sources: a.common.sources,
                settle: a.settle,
                threads,
            };
            let r = runtime(threads)?.block_on(churn::run(&cfg))?;
            print!("{}", report::churn_summary(&r));
            if let Some(dir) = &a.common.report {
                let svg = report::connect_chart(&r.connect.timeline, server_samples(&r.connect))?;
                report::write_dir(dir, &r, &svg)?;
            }
            println!("{}", report::result_line(&r)?);
            Ok(())
        }
    }
}

fn server_samples(r: &connect::ConnectReport) -> &[surge_load::record::ServerSample] {
    r.server.as_ref().map_or(&[], |s| s.samples.as_slice())
}
