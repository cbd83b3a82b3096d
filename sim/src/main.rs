//! `surge-sim`: run, replay and soak the scenarios, and calibrate the
//! network model against the real kernel.

use std::process::ExitCode;

/// mimalloc instead of glibc's allocator: a large simulation allocates and
/// frees millions of small buffers (segments, frames, timers), and glibc's
/// free-chunk consolidation took a fifth of a 30,000-client run's time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use surge_sim::calibrate::{self, CalibrationSpec};
use surge_sim::swarm::SeedRun;
use surge_sim::{BalancerMode, Dur, OutageMode, Params, Profile, Scenario};

#[derive(Parser)]
#[command(
    name = "surge-sim",
    about = "Deterministic simulation of the surge gateway over a turmoil network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario with one seed.
    Run(RunArgs),
    /// Replay a run: the same scenario, parameters and seed give the same
    /// output and trace hash.
    Replay(RunArgs),
    /// Explore seeds until an invariant breaks; print its replay command.
    Soak(SoakArgs),
    /// The backlog model against real loopback sockets, side by side.
    Calibrate(CalibrateArgs),
    /// The scenarios and what each proves.
    List,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// backlog_burst, slot_race, handshake_timeout, capacity_ceiling,
    /// slow_consumers, broker_outage, reconnect_storm or multi_gateway.
    scenario: Scenario,
    #[command(flatten)]
    params: ParamArgs,
}

#[derive(Args, Clone)]
struct SoakArgs {
    /// The scenario to soak (see `surge-sim list`); not with --swarm.
    #[arg(long, required_unless_present = "swarm", conflicts_with = "swarm")]
    scenario: Option<Scenario>,
    /// Each seed draws its scenario, parameters and faults; runs on every core; stops at the first broken invariant.
    #[arg(long)]
    swarm: bool,
    /// Swarm threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Swarm: run every seed in this process instead of a child process each (faster to start, but a run inside a long-lived process may not replay exactly).
    #[arg(long)]
    in_process: bool,
    /// How many seeds to try.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed (the others follow it).
    #[arg(long, default_value_t = 1)]
    first: u64,
    #[command(flatten)]
    params: ParamArgs,
}

#[derive(Args, Clone)]
struct CalibrateArgs {
    /// Clients in each burst.
    #[arg(long, default_value_t = 200)]
    clients: u32,
    /// Accept service time.
    #[arg(long, default_value = "5ms")]
    service_time: Dur,
    /// Client deadline for connect + upgrade.
    #[arg(long, default_value = "2s")]
    timeout: Dur,
    /// Runs per backlog (real runs vary; the mean is compared).
    #[arg(long, default_value_t = 3)]
    repeats: u32,
    /// Backlogs to measure.
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32,64,128,256")]
    backlogs: Vec<u32>,
    /// Only the simulated curve (no real sockets).
    #[arg(long)]
    sim_only: bool,
    /// Also show the single drop-on-overflow queue's curve.
    #[arg(long)]
    single_stage: bool,
    /// Seed of the first simulated run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Every scenario parameter; unset ones take the profile's default. Each
/// scenario reads only some of them and prints those it used.
#[derive(Args, Clone)]
struct ParamArgs {
    /// Seed of the run: arrivals, latencies and losses follow from it (soak uses --first instead).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// seed (the seed system's set-up) or surge (surge's defaults).
    #[arg(long, default_value = "surge")]
    profile: Profile,
    /// Simulated clients that connect.
    #[arg(long)]
    clients: Option<u32>,
    /// New connections per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Listen backlog the gateway requests (the kernel caps it at somaxconn 4096).
    #[arg(long)]
    backlog: Option<u32>,
    /// Accept path: time per accepted connection.
    #[arg(long)]
    service_time: Option<Dur>,
    /// Accept path: extra time per connection held.
    #[arg(long)]
    service_per_conn: Option<Dur>,
    /// Client deadline for connect + upgrade.
    #[arg(long)]
    timeout: Option<Dur>,
    /// The gateway's deadline for a client to finish its upgrade request.
    #[arg(long)]
    handshake_timeout: Option<Dur>,
    /// Upgrade path: work per handshake on a shared worker.
    #[arg(long)]
    upgrade_time: Option<Dur>,
    /// Upgrade path: extra work per handshake for each connection held.
    #[arg(long)]
    upgrade_per_conn: Option<Dur>,
    /// Max live connections over all shards.
    #[arg(long)]
    capacity: Option<u32>,
    /// Gateway shards the capacity is split over.
    #[arg(long)]
    shards: Option<u32>,
    /// Client hosts.
    #[arg(long)]
    hosts: Option<u32>,
    /// One-way link latency.
    #[arg(long)]
    latency: Option<Dur>,
    /// Extra latency, at most.
    #[arg(long)]
    jitter: Option<Dur>,
    /// Message loss probability per link.
    #[arg(long)]
    loss: Option<f64>,
    /// slow_consumers: share of clients that read slowly (0 to 1).
    #[arg(long)]
    slow_fraction: Option<f64>,
    /// slow_consumers: a slow client's pause between two reads.
    #[arg(long)]
    slow_read: Option<Dur>,
    /// slow_consumers, broker_outage: messages the publisher sends.
    #[arg(long)]
    messages: Option<u32>,
    /// slow_consumers, broker_outage: messages the publisher sends per second.
    #[arg(long)]
    publish_rate: Option<f64>,
    /// slow_consumers, broker_outage: every n-th message is critical (0: none).
    #[arg(long)]
    critical_every: Option<u32>,
    /// broker_outage, reconnect_storm: when the fault starts.
    #[arg(long)]
    fault_at: Option<Dur>,
    /// broker_outage, reconnect_storm: how long the fault lasts.
    #[arg(long)]
    fault_for: Option<Dur>,
    /// broker_outage: partition or crash.
    #[arg(long)]
    outage: Option<OutageMode>,
    /// broker_outage: share of clients that leave during the outage and come back with resume.
    #[arg(long)]
    resume_fraction: Option<f64>,
    /// reconnect_storm: the clients' first reconnect backoff (doubled, jittered).
    #[arg(long)]
    backoff: Option<Dur>,
    /// reconnect_storm: the longest reconnect backoff.
    #[arg(long)]
    backoff_cap: Option<Dur>,
    /// reconnect_storm: every client must be back within this.
    #[arg(long)]
    recover_within: Option<Dur>,
    /// multi_gateway: gateways behind the balancer.
    #[arg(long)]
    gateways: Option<u32>,
    /// multi_gateway: gateways the rolling restart goes through, in turn.
    #[arg(long)]
    restarts: Option<u32>,
    /// multi_gateway: simulated time per step (links deliver at step boundaries).
    #[arg(long)]
    tick: Option<Dur>,
    /// multi_gateway: splice (the balancer carries the bytes) or route (it picks, the client connects directly).
    #[arg(long)]
    balancer: Option<BalancerMode>,
}

impl ParamArgs {
    fn resolve(&self, scenario: Scenario, seed: u64) -> Params {
        let mut p = Params::defaults(scenario, self.profile, seed);
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { p.$field = v; } )* };
        }
        set!(
            clients,
            rate,
            backlog,
            service_time,
            service_per_conn,
            timeout,
            handshake_timeout,
            upgrade_time,
            upgrade_per_conn,
            capacity,
            shards,
            hosts,
            latency,
            jitter,
            loss,
            slow_fraction,
            slow_read,
            messages,
            publish_rate,
            critical_every,
            fault_at,
            fault_for,
            outage,
            resume_fraction,
            backoff,
            backoff_cap,
            recover_within,
            gateways,
            restarts,
            tick,
            balancer
        );
        let given = |name: &str| match name {
            "rate" => self.rate.is_some(),
            "tick" => self.tick.is_some(),
            "balancer" => self.balancer.is_some(),
            "messages" => self.messages.is_some(),
            "publish-rate" => self.publish_rate.is_some(),
            "hosts" => self.hosts.is_some(),
            _ => false,
        };
        p.scale(scenario, &given);
        p
    }
}

fn run(args: &RunArgs) -> ExitCode {
    let params = args.params.resolve(args.scenario, args.params.seed);
    let report = args.scenario.run(&params);
    print!("{}", report.render());
    eprintln!(
        "wall time: {:.2} s for {:.1} s simulated",
        report.wall.as_secs_f64(),
        report.simulated.as_secs_f64()
    );
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn soak(args: &SoakArgs) -> ExitCode {
    let Some(scenario) = args.scenario else {
        return swarm(args);
    };
    let started = Instant::now();
    for seed in args.first..args.first.saturating_add(args.seeds) {
        let params = args.params.resolve(scenario, seed);
        let report = scenario.run(&params);
        if !report.passed() {
            print!("{}", report.render());
            println!(
                "soak: seed {seed} broke an invariant after {} seeds",
                seed - args.first + 1
            );
            return ExitCode::FAILURE;
        }
        println!(
            "seed {seed}: ok, trace {:016x} ({:.2} s)",
            report.trace_hash,
            report.wall.as_secs_f64()
        );
    }
    println!(
        "soak: {} seeds of {} held every invariant",
        args.seeds, scenario
    );
    eprintln!("wall time: {:.1} s", started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}

fn swarm(args: &SoakArgs) -> ExitCode {
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let progress = |seed: u64, run: &SeedRun| {
        println!(
            "seed {seed}: {} {}, trace {:016x} ({:.2} s)",
            run.scenario,
            if run.passed { "ok" } else { "FAILED" },
            run.trace_hash,
            run.wall.as_secs_f64()
        );
    };
    let exe = std::env::current_exe().ok();
    let child = |seed: u64| -> SeedRun {
        let started = Instant::now();
        let (scenario, _) = surge_sim::swarm::draw(seed);
        let seed_arg = seed.to_string();
        let output = exe.as_ref().and_then(|exe| {
            std::process::Command::new(exe)
                .args(["soak", "--swarm", "--in-process", "--threads", "1"])
                .args(["--first", &seed_arg, "--seeds", "1"])
                .output()
                .ok()
        });
        let Some(output) = output else {
            return SeedRun {
                scenario,
                passed: false,
                trace_hash: 0,
                wall: started.elapsed(),
                text: "could not start a child process".into(),
            };
        };
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let mine = format!("seed {seed}: ");
        let line = text.lines().find(|l| l.starts_with(&mine)).unwrap_or("");
        let trace_hash = line
            .split("trace ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or(0);
        SeedRun {
            scenario,
            passed: output.status.success(),
            trace_hash,
            wall: started.elapsed(),
            text,
        }
    };
    let outcome = if args.in_process {
        surge_sim::swarm::run(
            args.first,
            args.seeds,
            threads,
            &SeedRun::in_process,
            &progress,
        )
    } else {
        surge_sim::swarm::run(args.first, args.seeds, threads, &child, &progress)
    };
    let per: Vec<String> = outcome
        .per_scenario
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{s}={n}"))
        .collect();
    println!("swarm: scenarios drawn: {}", per.join(" "));
    println!(
        "swarm: {} seeds in {:.1} s on {} threads: {:.0} seeds per hour",
        outcome.ran,
        outcome.wall.as_secs_f64(),
        outcome.threads,
        outcome.seeds_per_hour()
    );
    match outcome.failure {
        Some((seed, run)) => {
            print!("{}", run.text);
            println!(
                "swarm: seed {seed} broke an invariant; it alone: cargo run -p surge-sim -- soak --swarm --first {seed} --seeds 1"
            );
            ExitCode::FAILURE
        }
        None => {
            println!("swarm: every seed held every invariant");
            ExitCode::SUCCESS
        }
    }
}

fn calibrate_cmd(args: &CalibrateArgs) -> ExitCode {
    let spec = CalibrationSpec {
        clients: args.clients,
        service: args.service_time.0,
        timeout: args.timeout.0,
        repeats: args.repeats.max(1),
        backlogs: args.backlogs.clone(),
        real: !args.sim_only,
        single_stage: args.single_stage,
        seed: args.seed,
    };
    match calibrate::run(&spec) {
        Ok(table) => {
            print!("{}", table.render(&spec));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("calibration failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Run(args) | Command::Replay(args) => run(args),
        Command::Soak(args) => soak(args),
        Command::Calibrate(args) => calibrate_cmd(args),
        Command::List => {
            for s in Scenario::ALL {
                println!("{:<18} {}", s.name(), s.proves());
            }
            ExitCode::SUCCESS
        }
    }
}
