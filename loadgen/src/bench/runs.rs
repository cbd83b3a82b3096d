//! The runs of the benchmark, as data: what surge runs with, which loadgen
//! mode drives it at which sizes, and which target row the report computes.
//! Adding a run is adding an entry to [`RUNS`].

use std::time::Duration;

/// A size for the standard runs and one for `--quick`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizes<T> {
    pub normal: T,
    pub quick: T,
}

impl<T: Copy> Sizes<T> {
    pub const fn both(v: T) -> Sizes<T> {
        Sizes {
            normal: v,
            quick: v,
        }
    }

    pub fn pick(&self, quick: bool) -> T {
        if quick { self.quick } else { self.normal }
    }
}

/// How many connections (or subscribers, or cycles) a run uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Count {
    Fixed(Sizes<u64>),
    /// Surge's derived maximum (`/health` `connections.max`); `--quick`
    /// uses the fixed size instead.
    DerivedMax {
        quick: u64,
    },
}

/// Publishes per second `start, start + step, … ≤ max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ramp {
    pub start: f64,
    pub step: f64,
    pub max: f64,
}

impl Ramp {
    pub const fn once(rate: f64) -> Ramp {
        Ramp {
            start: rate,
            step: rate,
            max: rate,
        }
    }

    pub fn rates(&self) -> Vec<f64> {
        let steps = ((self.max - self.start) / self.step).floor() as usize + 1;
        (0..steps)
            .map(|i| self.start + self.step * i as f64)
            .collect()
    }

    pub fn describe(&self) -> String {
        if self.start == self.max {
            format!("--rate {}", self.start)
        } else {
            format!("--ramp {}:{}:{}", self.start, self.step, self.max)
        }
    }
}

/// Which loadgen mode drives the run, with its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// `connect`: open the connections at `rate` (0: all at once), hold
    /// 10 s. Once `/health` shows them all (or surge's maximum, whichever is
    /// less; or the count stops moving), surge's memory and CPU are sampled.
    Hold {
        rate: f64,
        subscribe: Option<&'static str>,
        /// Loadgen processes; 0 = as many as the file limit requires.
        workers: u32,
        /// Offer permessage-deflate in every upgrade (`connect --deflate`).
        deflate: bool,
    },
    /// `fanout`: subscribers on one subject, 100-byte publishes through
    /// the admin `/publish`, one step per rate.
    Fanout {
        connect_rate: f64,
        rates: Sizes<Ramp>,
        step: Sizes<Duration>,
        /// Stop the ramp after a step whose p99 exceeds this.
        max_p99: Option<Duration>,
        stop_on_loss: bool,
        /// Keep-alive `/publish` connections sharing the send schedule.
        publishers: usize,
    },
    /// `churn`: connect → welcome → close cycles at `rate`.
    Churn { rate: f64 },
}

/// The figure(s) a run adds to the Targets table, and its target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Row {
    /// 100 % success and handshake p99 ≤ `p99_ms`.
    Burst { p99_ms: f64 },
    /// 100 % success at surge's derived maximum.
    BurstMax,
    /// Holds its maximum; every other client 503 + Retry-After.
    OverLimit,
    /// RSS per idle connection ≤ `max_bytes`; `None`: for planning only.
    IdleMemory {
        max_bytes: Option<f64>,
        tls: bool,
        subscribed: bool,
        /// The plain run at the same count, for the TLS difference.
        baseline: Option<&'static str>,
    },
    /// Best lossless deliveries/s with p99 within bound.
    Ramp { min_per_s: f64, p99_ms: f64 },
    /// p99 of one broadcast's deliveries, nothing lost.
    Broadcast { p99_ms: f64 },
    /// `/health` back to its start count.
    Churn,
    /// Handshakes per surge CPU-second.
    Handshakes,
    /// p99 ≤ `p99_ms` in every step where surge's core is below `busy_percent`.
    Ingest { p99_ms: f64, busy_percent: f64 },
    /// Not in the Targets table.
    None,
}

/// The gateway's settings for a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Surge {
    /// `surge serve` flags.
    pub args: Sizes<&'static [&'static str]>,
    pub env: &'static [(&'static str, &'static str)],
    /// A `wss://` listener with a self-signed certificate.
    pub tls: bool,
    /// Surge on CPU 0, the loadgen (one thread) on CPU 1.
    pub pinned: bool,
}

const DEFAULTS: Surge = Surge {
    args: Sizes::both(&[]),
    env: &[],
    tls: false,
    pinned: false,
};

const TLS: Surge = Surge {
    tls: true,
    ..DEFAULTS
};

/// One shard on one pinned core: what one core of surge ingests.
const ONE_CORE: Surge = Surge {
    env: &[("SURGE_SHARDS", "1")],
    pinned: true,
    ..DEFAULTS
};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunDef {
    pub name: &'static str,
    pub about: &'static str,
    pub surge: Surge,
    pub count: Count,
    pub mode: Mode,
    pub row: Row,
    /// The loadgen part of the run is cut off after this.
    pub limit: Duration,
}

const fn fixed(normal: u64, quick: u64) -> Count {
    Count::Fixed(Sizes { normal, quick })
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const fn ramp(start: f64, step: f64, max: f64) -> Ramp {
    Ramp { start, step, max }
}

const STEP: Sizes<Duration> = Sizes {
    normal: secs(5),
    quick: secs(2),
};

/// The loadgen's default: enough for the fan-out ramps' rates.
const PUBLISHERS: usize = crate::fanout::DEFAULT_PUBLISHERS;

/// The ingest runs publish up to 75/s against a gateway confined to one
/// core, where each `/publish` answer takes longer: more connections keep
/// the schedule.
const INGEST_PUBLISHERS: usize = 16;

const INGEST_STEP: Sizes<Duration> = Sizes {
    normal: secs(8),
    quick: secs(2),
};

const BURST: Mode = Mode::Hold {
    rate: 0.0,
    subscribe: None,
    workers: 0,
    deflate: false,
};

const IDLE: Mode = Mode::Hold {
    rate: 5000.0,
    subscribe: None,
    workers: 0,
    deflate: false,
};

/// As [`IDLE`], every client offering permessage-deflate.
const IDLE_DEFLATE: Mode = Mode::Hold {
    rate: 5000.0,
    subscribe: None,
    workers: 0,
    deflate: true,
};

/// RSS per idle plain connection ≤ 0.5 KiB.
const IDLE_ROW: Row = Row::IdleMemory {
    max_bytes: Some(512.0),
    tls: false,
    subscribed: false,
    baseline: None,
};

const IDLE_5K: Mode = Mode::Hold {
    rate: 2000.0,
    subscribe: None,
    workers: 0,
    deflate: false,
};

pub const RUNS: &[RunDef] = &[
    RunDef {
        name: "burst-10k",
        about: "10,000 connects at once, hold 10 s",
        surge: DEFAULTS,
        count: fixed(10_000, 2_000),
        mode: BURST,
        row: Row::Burst { p99_ms: 400.0 },
        limit: secs(120),
    },
    RunDef {
        name: "burst-max",
        about: "surge's derived maximum of connects at once",
        surge: DEFAULTS,
        count: Count::DerivedMax { quick: 4_000 },
        mode: BURST,
        row: Row::BurstMax,
        limit: secs(150),
    },
    RunDef {
        name: "over-limit",
        about: "30,000 connects at once from 3 loadgen processes against surge's maximum",
        surge: Surge {
            args: Sizes {
                normal: &[],
                quick: &["--max-connections", "1000"],
            },
            ..DEFAULTS
        },
        count: fixed(30_000, 3_000),
        mode: Mode::Hold {
            rate: 0.0,
            subscribe: None,
            workers: 3,
            deflate: false,
        },
        row: Row::OverLimit,
        limit: secs(180),
    },
    RunDef {
        name: "idle-10k",
        about: "10,000 idle connections at 5,000/s",
        surge: DEFAULTS,
        count: fixed(10_000, 2_000),
        mode: IDLE,
        row: IDLE_ROW,
        limit: secs(120),
    },
    RunDef {
        name: "idle-max",
        about: "surge's derived maximum of idle connections at 5,000/s",
        surge: DEFAULTS,
        count: Count::DerivedMax { quick: 4_000 },
        mode: IDLE,
        row: IDLE_ROW,
        limit: secs(150),
    },
    RunDef {
        name: "idle-10k-deflate",
        about: "10,000 idle connections at 5,000/s, each offering permessage-deflate as browsers do",
        surge: DEFAULTS,
        count: fixed(10_000, 2_000),
        mode: IDLE_DEFLATE,
        row: IDLE_ROW,
        limit: secs(120),
    },
    RunDef {
        name: "idle-10k-subscribed",
        about: "10,000 idle connections, each subscribed to one channel (for planning)",
        surge: DEFAULTS,
        count: fixed(10_000, 2_000),
        mode: Mode::Hold {
            rate: 5000.0,
            subscribe: Some("odin.token.BTC.trade"),
            workers: 0,
            deflate: false,
        },
        row: Row::IdleMemory {
            max_bytes: None,
            tls: false,
            subscribed: true,
            baseline: None,
        },
        limit: secs(120),
    },
    RunDef {
        name: "fanout-10k-ramp",
        about: "10,000 subscribers, 100 B, 40 k … 600 k deliveries/s; stop on loss or p99 > 1 s",
        surge: DEFAULTS,
        count: fixed(10_000, 2_000),
        mode: Mode::Fanout {
            connect_rate: 5000.0,
            rates: Sizes {
                normal: ramp(4.0, 4.0, 60.0),
                quick: ramp(10.0, 10.0, 20.0),
            },
            step: STEP,
            max_p99: Some(secs(1)),
            stop_on_loss: true,
            publishers: PUBLISHERS,
        },
        row: Row::Ramp {
            min_per_s: 120_000.0,
            p99_ms: 1000.0,
        },
        limit: secs(420),
    },
    RunDef {
        name: "fanout-10k-broadcast",
        about: "10,000 subscribers, 2 broadcasts/s that do not overlap",
        surge: DEFAULTS,
        count: fixed(10_000, 2_000),
        mode: Mode::Fanout {
            connect_rate: 5000.0,
            rates: Sizes::both(Ramp::once(2.0)),
            step: Sizes {
                normal: secs(10),
                quick: secs(3),
            },
            max_p99: None,
            stop_on_loss: false,
            publishers: PUBLISHERS,
        },
        row: Row::Broadcast { p99_ms: 100.0 },
        limit: secs(120),
    },
    RunDef {
        name: "fanout-2k-ramp",
        about: "2,000 subscribers, 100 B, 40 k … 600 k deliveries/s; stop on loss or p99 > 100 ms",
        surge: DEFAULTS,
        count: fixed(2_000, 1_000),
        mode: Mode::Fanout {
            connect_rate: 5000.0,
            rates: Sizes {
                normal: ramp(20.0, 20.0, 300.0),
                quick: ramp(20.0, 20.0, 40.0),
            },
            step: STEP,
            max_p99: Some(Duration::from_millis(100)),
            stop_on_loss: true,
            publishers: PUBLISHERS,
        },
        row: Row::Ramp {
            min_per_s: 120_000.0,
            p99_ms: 100.0,
        },
        limit: secs(300),
    },
    RunDef {
        name: "churn",
        about: "100,000 connect → welcome → close cycles at 2,500/s",
        surge: DEFAULTS,
        count: fixed(100_000, 5_000),
        mode: Mode::Churn { rate: 2500.0 },
        row: Row::Churn,
        limit: secs(160),
    },
    RunDef {
        name: "idle-5k",
        about: "5,000 idle connections at 2,000/s: the plain baseline of idle-5k-tls",
        surge: DEFAULTS,
        count: fixed(5_000, 2_000),
        mode: IDLE_5K,
        row: Row::None,
        limit: secs(120),
    },
    RunDef {
        name: "idle-5k-tls",
        about: "5,000 idle wss:// connections at 2,000/s",
        surge: TLS,
        count: fixed(5_000, 2_000),
        mode: IDLE_5K,
        row: Row::IdleMemory {
            max_bytes: Some(4096.0),
            tls: true,
            subscribed: false,
            baseline: Some("idle-5k"),
        },
        limit: secs(120),
    },
    RunDef {
        name: "churn-tls",
        about: "5,000 wss:// connect → welcome → close cycles at 1,000/s",
        surge: TLS,
        count: fixed(5_000, 2_000),
        mode: Mode::Churn { rate: 1000.0 },
        row: Row::Handshakes,
        limit: secs(125),
    },
    RunDef {
        name: "ingest-2k",
        about: "one shard pinned to CPU 0, loadgen on CPU 1: 2,000 subscribers, 100 B, 10 k … 150 k deliveries/s in 8 s steps",
        surge: ONE_CORE,
        count: fixed(2_000, 2_000),
        mode: Mode::Fanout {
            connect_rate: 5000.0,
            rates: Sizes {
                normal: ramp(5.0, 5.0, 75.0),
                quick: ramp(5.0, 10.0, 35.0),
            },
            step: INGEST_STEP,
            max_p99: None,
            stop_on_loss: true,
            publishers: INGEST_PUBLISHERS,
        },
        row: Row::Ingest {
            p99_ms: 100.0,
            busy_percent: 90.0,
        },
        limit: secs(300),
    },
    RunDef {
        name: "ingest-10k",
        about: "one shard pinned to CPU 0, loadgen on CPU 1: 10,000 subscribers, 100 B, 20 k … 200 k deliveries/s in 8 s steps",
        surge: ONE_CORE,
        count: fixed(10_000, 2_000),
        mode: Mode::Fanout {
            connect_rate: 5000.0,
            rates: Sizes {
                normal: ramp(2.0, 2.0, 20.0),
                quick: ramp(10.0, 20.0, 70.0),
            },
            step: INGEST_STEP,
            max_p99: None,
            stop_on_loss: true,
            publishers: INGEST_PUBLISHERS,
        },
        row: Row::Ingest {
            p99_ms: 1000.0,
            busy_percent: 90.0,
        },
        limit: secs(300),
    },
];

pub fn find(name: &str) -> Option<&'static RunDef> {
    RUNS.iter().find(|r| r.name == name)
}

pub fn names() -> Vec<&'static str> {
    RUNS.iter().map(|r| r.name).collect()
}

impl RunDef {
    /// The equivalent `surge-load` command line (without --url/--admin).
    pub fn command(&self, n: u64, quick: bool) -> String {
        let insecure = if self.surge.tls { " --insecure" } else { "" };
        match self.mode {
            Mode::Hold {
                rate,
                subscribe,
                workers,
                deflate,
            } => {
                let mut c = format!(
                    "connect{insecure} -n {n} --rate {rate} --handshake-timeout 10s --hold 10s"
                );
                if deflate {
                    c += " --deflate";
                }
                if workers > 0 {
                    c += &format!(" --workers {workers}");
                }
                if let Some(s) = subscribe {
                    c += &format!(" --subscribe {s}");
                }
                c
            }
            Mode::Fanout {
                connect_rate,
                rates,
                step,
                max_p99,
                stop_on_loss,
                publishers,
            } => {
                let mut c = format!(
                    "fanout{insecure} -n {n} --size 100 --connect-rate {connect_rate} {} --duration {}s",
                    rates.pick(quick).describe(),
                    step.pick(quick).as_secs()
                );
                if let Some(p) = max_p99 {
                    c += &format!(" --max-p99 {}ms", p.as_millis());
                }
                if stop_on_loss {
                    c += " --stop-on-loss";
                }
                if publishers != PUBLISHERS {
                    c += &format!(" --publishers {publishers}");
                }
                if self.surge.pinned {
                    c += " --threads 1";
                }
                c
            }
            Mode::Churn { rate } => {
                format!("churn{insecure} --cycles {n} --rate {rate} --sources 8 --settle 10s")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::MAX_STEPS;

    #[test]
    fn the_run_table_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for run in RUNS {
            assert!(seen.insert(run.name), "{} twice", run.name);
            assert!(!run.about.is_empty());
            match run.count {
                Count::Fixed(s) => assert!(s.quick >= 1 && s.quick <= s.normal, "{}", run.name),
                Count::DerivedMax { quick } => assert!(quick >= 1),
            }
            if let Mode::Fanout {
                rates,
                step,
                publishers,
                ..
            } = run.mode
            {
                assert!(publishers >= 1, "{}", run.name);
                for quick in [false, true] {
                    let r = rates.pick(quick);
                    assert!(
                        r.start > 0.0 && r.step > 0.0 && r.max >= r.start,
                        "{}",
                        run.name
                    );
                    let steps = r.rates().len();
                    assert!((1..=MAX_STEPS).contains(&steps), "{}", run.name);
                    // The loadgen part must fit in its time limit.
                    let need = (step.pick(quick) + secs(3)) * steps as u32;
                    assert!(need < run.limit, "{}: {need:?} of steps", run.name);
                }
            }
            if let Row::IdleMemory {
                baseline: Some(b), ..
            } = run.row
            {
                let pos = |n| RUNS.iter().position(|r| r.name == n);
                assert!(
                    pos(b) < pos(run.name),
                    "{}: baseline {b} must run first",
                    run.name
                );
            }
            if let Row::IdleMemory { tls, .. } = run.row {
                assert_eq!(tls, run.surge.tls, "{}", run.name);
            }
            if let Row::Ingest { .. } = run.row {
                assert!(run.surge.pinned && run.surge.env.contains(&("SURGE_SHARDS", "1")));
            }
            for (k, _) in run.surge.env {
                assert!(k.starts_with("SURGE_"), "{}: {k}", run.name);
            }
        }
    }

    #[test]
    fn ramps_and_commands() {
        assert_eq!(ramp(4.0, 4.0, 12.0).rates(), vec![4.0, 8.0, 12.0]);
        assert_eq!(Ramp::once(2.0).rates(), vec![2.0]);
        let ingest = find("ingest-2k").unwrap();
        let rates = match ingest.mode {
            Mode::Fanout { rates, .. } => rates.normal.rates(),
            _ => unreachable!(),
        };
        // 2,000 subscribers: 10 k … 150 k deliveries/s in steps of 10 k.
        assert_eq!(rates.first().map(|r| r * 2000.0), Some(10_000.0));
        assert_eq!(rates.last().map(|r| r * 2000.0), Some(150_000.0));
        assert_eq!(
            find("churn").unwrap().command(100_000, false),
            "churn --cycles 100000 --rate 2500 --sources 8 --settle 10s"
        );
    }
}
