//! `multi_gateway`: `gateways` copies of the gateway's own code, each on
//! its own host, behind a simulated L4 balancer ([`crate::balancer`]),
//! all reading one shared stream ([`crate::stream`]).
//!
//! Clients arrive as a Poisson process, connect through the balancer and
//! `resume` from stream sequence 0 (nothing yet: publishing starts once
//! every client had its chance to connect), then read. A publisher
//! appends `messages` to the stream at `publish_rate`. While it does, the
//! seed decides which gateways suffer:
//!
//! 1. one crashes at `fault_at` (its tasks aborted, its sockets dropped)
//!    and comes back `fault_for` later;
//! 2. another is cut off from the stream for `fault_for`, starting half
//!    way through the crash;
//! 3. after both, `restarts` gateways restart in turn: readiness false,
//!    the balancer's checks notice, every client is closed with 1001, the
//!    process starts again, and the next one goes once the balancer sees
//!    it up.
//!
//! A client whose connection ends reconnects through the balancer with
//! reconnect_storm's backoff (full jitter, doubling from `backoff` up to
//! `backoff_cap`) and resumes with its channels, the last `sseq` it saw
//! and the epoch. A resume refused with `broker_unavailable` is retried
//! the same way.
//!
//! Checked: every gateway's slot accounting at every check, and no slot
//! held on any gateway once the clients have left; `seq` goes up by one on
//! every connection; every client ends with every published message
//! exactly once; every refused connection got an HTTP answer (a
//! connection cut without one is allowed only while a gateway it may have
//! been spliced to was crashing or restarting).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use surge_core::protocol::Priority;
use surge_core::subjects::Subject;
use surge_runtime::Broker;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::balancer::{Backends, Checks};
use crate::client::{FailureKind, UpgradeFailure};
use crate::net::SimStream;
use crate::params::{BalancerMode, Params};
use crate::publisher::SUBJECTS;
use crate::scenario::name::Scenario;
use crate::scenario::report::{Report, percentiles};
use crate::scenarios::{common_flags, poisson_arrivals, rng};
use crate::stream::{SharedStream, StreamBroker};
use crate::subscriber::{self, SessionEnd, Start, SubscriberLog};
use crate::world::hosts::{WS_PORT, sleep_until_sim};
use crate::world::state::RunState;
use crate::world::{
    BrokerFactory, ClientTask, DrainControl, GatewaySlot, GatewaySpec, check_gateway,
    install_clients, install_gateway_host, open_websocket_at, sim_builder,
};

/// The balancer's health checks: every 500 ms, two failures take a
/// backend out, two successes put it back.
const CHECKS: Checks = Checks {
    inter: Duration::from_millis(500),
    fall: 2,
    rise: 2,
};

/// Clients per balancer host (see `run`).
const CLIENTS_PER_BALANCER: usize = 40_000;

/// A balancer's host name.
pub fn balancer_name(k: usize) -> String {
    format!("lb{k}")
}

/// A gateway's host name.
pub fn gateway_name(i: usize) -> String {
    format!("gw{i}")
}

/// What one client went through.
#[derive(Debug, Default)]
struct Journey {
    log: SubscriberLog,
    /// Connections opened (the first one and every reconnect).
    opened: u32,
    /// HTTP refusals (503 from a full gateway or from the balancer).
    refused_http: u32,
    /// Attempts cut without an HTTP answer while a gateway was failing.
    cut_by_fault: u32,
    /// Resumes refused because the gateway could not reach the stream.
    resume_refused: u32,
    /// Connections the gateway closed with 1001 (a restart's drain).
    going_away: u32,
    finished: bool,
}

/// The fault schedule, drawn from the seed.
#[derive(Debug, Clone)]
struct Faults {
    crash: usize,
    crash_at: Duration,
    back_at: Duration,
    partition: usize,
    cut_at: Duration,
    healed_at: Duration,
    /// Gateways to restart, in order, and when the first one starts.
    rolling: Vec<usize>,
    rolling_at: Duration,
}

impl Faults {
    fn draw(p: &Params, gateways: usize, start: Duration) -> Faults {
        let mut r = rng(p.seed, 77);
        let crash = r.random_range(0..gateways);
        let partition = if gateways > 1 {
            (crash + 1 + r.random_range(0..gateways - 1)) % gateways
        } else {
            crash
        };
        let mut order: Vec<usize> = (0..gateways).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, r.random_range(0..=i));
        }
        order.truncate(p.restarts.min(gateways as u32) as usize);
        let crash_at = start + p.fault_at.0;
        let back_at = crash_at + p.fault_for.0;
        let cut_at = crash_at + p.fault_for.0 / 2;
        let healed_at = cut_at + p.fault_for.0;
        Faults {
            crash,
            crash_at,
            back_at,
            partition,
            cut_at,
            healed_at,
            rolling: order,
            rolling_at: healed_at + Duration::from_secs(1),
        }
    }
}

/// Intervals during which a gateway was crashing or restarting: an
/// attempt cut without an answer then may have been spliced to it.
#[derive(Debug, Default)]
struct FaultWindows(RefCell<Vec<(Duration, Option<Duration>)>>);

impl FaultWindows {
    fn open(&self, at: Duration) -> usize {
        let mut w = self.0.borrow_mut();
        w.push((at, None));
        w.len() - 1
    }

    fn close(&self, i: usize, at: Duration) {
        if let Some(w) = self.0.borrow_mut().get_mut(i) {
            w.1 = Some(at);
        }
    }

    /// Whether `[from, to]` overlaps a window (with a second of slack for
    /// the balancer's checks to notice the end of one).
    fn overlaps(&self, from: Duration, to: Duration) -> bool {
        self.0.borrow().iter().any(|(start, end)| {
            let end = end.map_or(Duration::MAX, |e| e + Duration::from_secs(1));
            from <= end && to >= *start
        })
    }
}

pub fn run(p: &Params) -> Report {
    let mut report = Report::new(Scenario::MultiGateway, p);
    common_flags(&mut report, p);
    report.flag("gateways", p.gateways);
    report.flag("restarts", p.restarts);
    report.flag("tick", p.tick);
    report.flag("balancer", p.balancer.as_str());
    report.flag("messages", p.messages);
    report.flag("publish-rate", p.publish_rate);
    report.flag("critical-every", p.critical_every);
    report.flag("fault-at", p.fault_at);
    report.flag("fault-for", p.fault_for);
    report.flag("backoff", p.backoff);
    report.flag("backoff-cap", p.backoff_cap);
    report.flag("recover-within", p.recover_within);
    let gateways = p.gateways.max(1) as usize;
    let run = Rc::new(RunState::default());
    let arrivals = Rc::new(poisson_arrivals(p.seed, p.clients, p.rate));
    let last_arrival = arrivals.last().copied().unwrap_or_default();
    let publish_at = last_arrival + p.timeout.0 + Duration::from_secs(1);
    let rate = if p.publish_rate > 0.0 {
        p.publish_rate
    } else {
        1.0
    };
    let due = move |i: u32| publish_at + Duration::from_secs_f64(f64::from(i) / rate);
    let faults = Faults::draw(p, gateways, publish_at);
    // Clients give up this long after the last publish (and the last
    // fault): every one must have everything by then.
    let faults_end = faults.rolling_at
        + (CHECKS.notice() + Duration::from_secs(4)).saturating_mul(faults.rolling.len() as u32);
    let deadline = due(p.messages).max(faults_end) + p.recover_within.0;
    // turmoil gives each host its own ephemeral ports (Linux: per
    // destination), so one balancer host holds at most ~64,000 spliced
    // connections: large runs get several balancers, as DNS round-robin
    // over a few HAProxy instances would.
    let balancers = (p.clients as usize).div_ceil(CLIENTS_PER_BALANCER).max(1);
    let mut sim = sim_builder(
        p,
        deadline + Duration::from_secs(120),
        p.clients as usize * 2 + 64 * gateways,
        p.tick.0,
    )
    .ephemeral_ports(1024..=65535)
    .build();

    // The shared stream and the gateways.
    let stream = SharedStream::new(gateways, format!("stream-{}", p.seed));
    let mut spec = GatewaySpec::from_params(p);
    spec.config.handshake.probe_path = Some("/healthz".into());
    spec.config.ready_requires_broker = true;
    let slots: Vec<GatewaySlot> = (0..gateways).map(|_| GatewaySlot::default()).collect();
    let controls: Vec<Rc<DrainControl>> = (0..gateways)
        .map(|_| {
            let c = DrainControl::default();
            // A balancer stops sending clients after fall × inter.
            c.delay.set(CHECKS.notice() + CHECKS.inter);
            c.drain.set(Duration::from_secs(2));
            Rc::new(c)
        })
        .collect();
    for (g, slot) in slots.iter().enumerate() {
        let stream = Arc::clone(&stream);
        let broker: BrokerFactory = Rc::new(move |hub, _clock, _generation| {
            tokio::spawn(crate::stream::consume(Arc::clone(&stream), g, hub));
            Arc::new(StreamBroker::new(Arc::clone(&stream), g)) as Arc<dyn Broker>
        });
        install_gateway_host(
            &mut sim,
            &gateway_name(g),
            spec.clone(),
            slot.clone(),
            Rc::clone(&run),
            broker,
            None,
            Some(Rc::clone(&controls[g])),
        );
    }

    // The balancers, each with its own health checks (as independent
    // HAProxy instances have).
    let names: Vec<String> = (0..gateways).map(gateway_name).collect();
    let lbs: Vec<Rc<Backends>> = (0..balancers).map(|_| Backends::new(&names)).collect();
    for (k, backends) in lbs.iter().enumerate() {
        let backends = Rc::clone(backends);
        let kernel = spec.kernel.clone();
        sim.host(balancer_name(k), move || {
            let backends = Rc::clone(&backends);
            let kernel = kernel.clone();
            async move {
                crate::balancer::serve(kernel, backends, CHECKS).await?;
                Ok(())
            }
        });
    }

    // The clients.
    let windows = Rc::new(FaultWindows::default());
    let total = Rc::new(Cell::new(u64::from(p.messages)));
    let journeys: Rc<RefCell<Vec<Journey>>> = Rc::new(RefCell::new(
        (0..p.clients).map(|_| Journey::default()).collect(),
    ));
    let kernel = spec.kernel.clone();
    let (timeout, base, cap, seed) = (p.timeout.0, p.backoff.0, p.backoff_cap.0, p.seed);
    let mode = p.balancer;
    let task = {
        let lbs = lbs.clone();
        let run = Rc::clone(&run);
        let journeys = Rc::clone(&journeys);
        let windows = Rc::clone(&windows);
        let total = Rc::clone(&total);
        Rc::new(move |i: u64| -> ClientTask {
            let lb = Rc::clone(&lbs[i as usize % lbs.len()]);
            let run = Rc::clone(&run);
            let journeys = Rc::clone(&journeys);
            let windows = Rc::clone(&windows);
            let total = Rc::clone(&total);
            let kernel = kernel.clone();
            let start = arrivals[i as usize];
            Box::pin(async move {
                sleep_until_sim(start).await;
                let lb_name = balancer_name(i as usize % balancers);
                let lb_addr = SocketAddr::new(turmoil::lookup(lb_name.as_str()), WS_PORT);
                let channels = vec!["odin.>".to_string()];
                let log = RefCell::new(SubscriberLog::default());
                let mut jitter = rng(seed, 2_000_000 + i);
                let mut attempt = 0u32;
                let done = |l: &SubscriberLog| l.received.len() as u64 >= total.get();
                let mut j = Journey::default();
                loop {
                    let tried_at = crate::net::sim_now();
                    if tried_at >= deadline {
                        break;
                    }
                    let opened = match mode {
                        BalancerMode::Splice => {
                            open_websocket_at(&kernel, lb_addr, &lb_name, i, timeout)
                                .await
                                .map(|(ws, _)| (ws, None))
                        }
                        BalancerMode::Route => routed(&kernel, &lb, i, timeout).await,
                    };
                    match opened {
                        Ok((mut ws, lease)) => {
                            j.opened += 1;
                            let epoch = read_welcome_epoch(&mut ws).await;
                            let start = Start::Resume {
                                channels: channels.clone(),
                                since_sseq: log.borrow().last_sseq(),
                                epoch: log.borrow().epoch.clone().or(epoch),
                            };
                            let errors_before = log.borrow().errors.len();
                            // Everyone stays until the last fault is over, so
                            // every fault finds clients to move.
                            let stop = |l: &SubscriberLog| {
                                (done(l) && l.resumed > 0 && crate::net::sim_now() >= faults_end)
                                    || l.errors.len() > errors_before
                                    || crate::net::sim_now() >= deadline
                            };
                            let end = subscriber::session_polling(
                                &mut ws,
                                i,
                                &start,
                                None,
                                &log,
                                &run,
                                &stop,
                                Duration::from_secs(1),
                            )
                            .await;
                            drop(ws);
                            if let Some(g) = lease {
                                lb.release(g);
                            }
                            run.event(&format!(
                                "client {i} session {} ended {end:?} at sseq {}",
                                j.opened,
                                log.borrow().last_sseq()
                            ));
                            if end == SessionEnd::Stopped {
                                let l = log.borrow();
                                if l.errors.len() > errors_before {
                                    j.resume_refused += 1;
                                } else {
                                    break;
                                }
                            } else {
                                attempt = 0;
                                if end == SessionEnd::ClosedByServer(Some(1001)) {
                                    j.going_away += 1;
                                }
                            }
                        }
                        Err(f) => {
                            run.event(&format!("client {i} refused {} {:?}", f.kind, f.status));
                            if f.status.is_some() {
                                j.refused_http += 1;
                            } else if windows.overlaps(tried_at, crate::net::sim_now()) {
                                j.cut_by_fault += 1;
                            } else {
                                run.violation(format!(
                                    "client {i}: connection attempt at {:.3}s ended without an HTTP answer ({})",
                                    tried_at.as_secs_f64(),
                                    f.kind
                                ));
                                if f.kind == FailureKind::Refused {
                                    break;
                                }
                            }
                        }
                    }
                    let delay =
                        crate::client::reconnect_delay(base, cap, attempt, jitter.random::<f64>());
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
                j.finished = true;
                j.log = log.into_inner();
                journeys.borrow_mut()[i as usize] = j;
            })
        }) as Rc<dyn Fn(u64) -> ClientTask>
    };
    install_clients(&mut sim, p.hosts, p.clients, task);

    // The driver: publish, inject the faults, check every gateway.
    let check_every = if p.clients > 10_000 {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(100)
    };
    let mut checks = 0u64;
    let mut next_check = Duration::ZERO;
    let mut next_message = 0u32;
    let mut published = 0u32;
    let mut peak_used = vec![0u64; gateways];
    let mut state = FaultState::default();
    let check_all = |now: Duration, checks: &mut u64, peak_used: &mut [u64]| {
        *checks += 1;
        for (g, slot) in slots.iter().enumerate() {
            let Some(running) = slot.get() else {
                continue;
            };
            let seen = check_gateway(&running, &spec, None, now);
            peak_used[g] = peak_used[g].max(seen.used);
            for problem in seen.problems {
                run.violation(format!("{}: {problem}", gateway_name(g)));
            }
        }
    };
    let mut result: Result<(), String> = Ok(());
    loop {
        let now = sim.elapsed();
        run.clock.set(now);
        while next_message < p.messages && now >= due(next_message) {
            let subject = SUBJECTS[next_message as usize % SUBJECTS.len()];
            let priority =
                if p.critical_every > 0 && (next_message + 1).is_multiple_of(p.critical_every) {
                    Priority::Critical
                } else {
                    Priority::Medium
                };
            let Ok(subject) = Subject::parse(subject) else {
                break;
            };
            let data = format!("{{\"n\":{next_message}}}");
            if stream.append(subject, data.as_bytes(), priority).is_none() {
                break;
            }
            next_message += 1;
            published += 1;
        }
        state.apply(
            &mut sim, now, &faults, &stream, &slots, &controls, &lbs, &windows, &run,
        );
        if now >= next_check {
            next_check = now + check_every;
            check_all(now, &mut checks, &mut peak_used);
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                result = Err(e.to_string());
                break;
            }
        }
    }
    total.set(u64::from(published));
    // Once the clients are gone: stop the balancer's probes, then every
    // gateway must let go of every slot.
    for lb in &lbs {
        lb.stop();
    }
    let mut leaked = 0u64;
    if result.is_ok() {
        let until = sim.elapsed() + Duration::from_secs(10);
        loop {
            let now = sim.elapsed();
            run.clock.set(now);
            leaked = slots
                .iter()
                .filter_map(GatewaySlot::get)
                .map(|r| r.gateway.slots_used())
                .sum();
            if leaked == 0 || now >= until {
                check_all(now, &mut checks, &mut peak_used);
                break;
            }
            if let Err(e) = sim.step() {
                result = Err(e.to_string());
                break;
            }
        }
        if leaked > 0 {
            for (g, slot) in slots.iter().enumerate() {
                if let Some(r) = slot.get()
                    && r.gateway.slots_used() > 0
                {
                    run.violation(format!(
                        "{}: {} slots still held after every client left",
                        gateway_name(g),
                        r.gateway.slots_used()
                    ));
                }
            }
        }
    }

    // What the clients ended with.
    let journeys = journeys.borrow();
    let expected = u64::from(published);
    let (mut received, mut lost, mut duplicated, mut reconnects) = (0u64, 0u64, 0u64, 0u64);
    let (mut refused_http, mut cut, mut resume_refused, mut going_away) = (0u64, 0u64, 0u64, 0u64);
    let mut seq_errors = 0u64;
    let mut incomplete = 0u64;
    let mut recovered = 0u64;
    for (i, j) in journeys.iter().enumerate() {
        if !j.finished {
            run.violation(format!("client {i} never finished"));
            continue;
        }
        let have = (1..=expected)
            .filter(|s| j.log.received.contains_key(s))
            .count() as u64;
        received += j.log.frames;
        recovered += u64::from(j.log.recovered);
        duplicated += u64::from(j.log.duplicates);
        seq_errors += u64::from(j.log.seq_errors);
        reconnects += u64::from(j.opened.saturating_sub(1));
        refused_http += u64::from(j.refused_http);
        cut += u64::from(j.cut_by_fault);
        resume_refused += u64::from(j.resume_refused);
        going_away += u64::from(j.going_away);
        if have < expected {
            lost += expected - have;
            incomplete += 1;
            if incomplete <= 5 {
                run.violation(format!(
                    "client {i}: {} of {expected} messages never arrived",
                    expected - have
                ));
            }
        }
    }
    if incomplete > 5 {
        run.violation(format!(
            "… {incomplete} clients in all are missing messages"
        ));
    }
    let per_gateway: Vec<String> = (0..gateways)
        .map(|g| {
            let total: u64 = lbs.iter().map(|lb| lb.backends.borrow()[g].total).sum();
            format!("{}={total}", gateway_name(g))
        })
        .collect();
    let no_server: u64 = lbs.iter().map(|lb| *lb.no_server.borrow()).sum();
    report.line(format!(
        "gateways: {gateways} behind the balancer, one shared stream (epoch {})",
        stream.epoch()
    ));
    report.line(format!(
        "faults: {} crashed at {:.1}s, back at {:.1}s; {} cut off from the stream {:.1}s to {:.1}s; rolling restart of {} from {:.1}s",
        gateway_name(faults.crash),
        faults.crash_at.as_secs_f64(),
        faults.back_at.as_secs_f64(),
        gateway_name(faults.partition),
        faults.cut_at.as_secs_f64(),
        faults.healed_at.as_secs_f64(),
        faults
            .rolling
            .iter()
            .map(|g| gateway_name(*g))
            .collect::<Vec<_>>()
            .join(","),
        faults.rolling_at.as_secs_f64(),
    ));
    report.line(format!(
        "restarts done: {}, restart durations: {}",
        state.restarted.len(),
        percentiles(state.restarted.clone())
    ));
    report.line(format!(
        "messages: published {published}, received {received} (recovered through resume {recovered}), lost {lost}, duplicated {duplicated}, seq errors {seq_errors}"
    ));
    report.line(format!(
        "clients: {}, reconnects {reconnects}, closed with 1001 {going_away}, refused with an HTTP answer {refused_http}, cut by a crash or restart {cut}, resumes refused (stream unreachable) {resume_refused}",
        p.clients
    ));
    report.line(format!(
        "balancers: {balancers}, connections per gateway {}, answered 503 with no gateway up {no_server}",
        per_gateway.join(" "),
    ));
    report.line(format!(
        "gateways: peak slots in use {}, leaked at end {leaked}",
        peak_used
            .iter()
            .enumerate()
            .map(|(g, n)| format!("{}={n}", gateway_name(g)))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    report.figure("published", published as f64);
    report.figure("received", received as f64);
    report.figure("lost", lost as f64);
    report.figure("duplicated", duplicated as f64);
    report.figure("reconnects", reconnects as f64);
    report.figure("leaked", leaked as f64);
    report.figure("restarts", state.restarted.len() as f64);
    if let Err(e) = result {
        report.error = Some(e);
    }
    report.checks = checks;
    report.simulated = sim.elapsed();
    report.violations = run.violations.borrow().clone();
    let trace = run.trace.borrow();
    report.trace_hash = trace.hash();
    report.trace_events = trace.events();
    report
}

/// Opens a WebSocket to the gateway the balancer routes to, trying the
/// next one when a gateway refuses the connection (the balancer's
/// redispatch); with no gateway up, the balancer's 503.
async fn routed(
    kernel: &crate::net::KernelParams,
    lb: &Backends,
    i: u64,
    timeout: Duration,
) -> Result<(WebSocketStream<SimStream>, Option<usize>), UpgradeFailure> {
    let mut tried = Vec::new();
    loop {
        let Some(g) = lb.lease(&tried) else {
            *lb.no_server.borrow_mut() += 1;
            return Err(UpgradeFailure {
                kind: FailureKind::Overloaded,
                status: Some(503),
                retry_after: Some(1),
            });
        };
        tried.push(g);
        let name = gateway_name(g);
        let addr = SocketAddr::new(turmoil::lookup(name.as_str()), WS_PORT);
        match open_websocket_at(kernel, addr, &name, i, timeout).await {
            Ok((ws, _)) => return Ok((ws, Some(g))),
            Err(f) => {
                lb.release(g);
                if f.status.is_none() && f.kind == FailureKind::Refused {
                    lb.dial_failed(g);
                    continue;
                }
                return Err(f);
            }
        }
    }
}

/// Reads the welcome frame and returns the stream epoch it names.
async fn read_welcome_epoch(ws: &mut WebSocketStream<SimStream>) -> Option<String> {
    let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .ok()??
        .ok()?;
    let Message::Text(text) = frame else {
        return None;
    };
    let v: serde_json::Value = serde_json::from_str(text.as_str()).ok()?;
    v["epoch"].as_str().map(str::to_owned)
}

/// Where the fault schedule stands.
#[derive(Debug, Default)]
struct FaultState {
    crashed: bool,
    back: bool,
    cut: bool,
    healed: bool,
    crash_window: usize,
    /// The rolling restart: index of the gateway in turn, when it was
    /// asked to drain and its fault window, and when the next may start.
    rolling_next: usize,
    draining: Option<(usize, Duration, usize)>,
    rolling_wait_until: Duration,
    /// From drain request to back up at the balancer, per restart.
    restarted: Vec<Duration>,
    bounced: Option<(usize, Duration, usize)>,
}

impl FaultState {
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        now: Duration,
        f: &Faults,
        stream: &SharedStream,
        slots: &[GatewaySlot],
        controls: &[Rc<DrainControl>],
        lbs: &[Rc<Backends>],
        windows: &FaultWindows,
        run: &RunState,
    ) {
        if !self.crashed && now >= f.crash_at {
            self.crashed = true;
            run.event(&format!("crash {}", gateway_name(f.crash)));
            self.crash_window = windows.open(now);
            sim.crash(gateway_name(f.crash));
            slots[f.crash].clear();
        }
        if self.crashed && !self.back && now >= f.back_at {
            self.back = true;
            run.event(&format!("restart {}", gateway_name(f.crash)));
            windows.close(self.crash_window, now);
            sim.bounce(gateway_name(f.crash));
        }
        if !self.cut && now >= f.cut_at {
            self.cut = true;
            run.event(&format!("cut {} off the stream", gateway_name(f.partition)));
            stream.set_link(f.partition, false);
        }
        if self.cut && !self.healed && now >= f.healed_at {
            self.healed = true;
            run.event(&format!("heal {}", gateway_name(f.partition)));
            stream.set_link(f.partition, true);
        }
        if now < f.rolling_at || now < self.rolling_wait_until {
            return;
        }
        if let Some((g, asked, window)) = self.draining {
            if controls[g].stopped.get() {
                self.draining = None;
                run.event(&format!("restart {}", gateway_name(g)));
                controls[g].requested.set(false);
                sim.bounce(gateway_name(g));
                self.bounced = Some((g, asked, window));
            }
            return;
        }
        if let Some((g, asked, window)) = self.bounced {
            // The next restart waits until the balancer sees this one up.
            if lbs.iter().all(|lb| lb.is_up(g)) && slots[g].get().is_some() {
                self.bounced = None;
                windows.close(window, now);
                self.restarted.push(now.saturating_sub(asked));
                self.rolling_wait_until = now + CHECKS.inter;
            }
            return;
        }
        if let Some(&g) = f.rolling.get(self.rolling_next) {
            self.rolling_next += 1;
            run.event(&format!("drain {}", gateway_name(g)));
            let window = windows.open(now);
            controls[g].requested.set(true);
            self.draining = Some((g, now, window));
        }
    }
}
