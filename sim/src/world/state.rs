//! What one run records, shared by every host and the driver: the trace
//! whose hash proves a run replays byte for byte, the invariant
//! violations, and the connections clients reported.
//!
//! Everything here is single-threaded (turmoil runs every host on the
//! calling thread), so it is shared with `Rc` and `Cell`/`RefCell`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Duration;

/// A 64-bit FNV-1a hash over the run's events: same run, same hash.
#[derive(Debug, Clone)]
pub struct Trace {
    hash: u64,
    events: u64,
}

impl Default for Trace {
    fn default() -> Self {
        Trace {
            hash: 0xcbf2_9ce4_8422_2325,
            events: 0,
        }
    }
}

impl Trace {
    pub fn record(&mut self, at: Duration, event: &str) {
        let t = u64::try_from(at.as_micros()).unwrap_or(u64::MAX);
        for b in t.to_le_bytes().iter().chain(event.as_bytes()).chain(b"\n") {
            self.hash ^= u64::from(*b);
            self.hash = self.hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.events += 1;
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn events(&self) -> u64 {
        self.events
    }
}

/// An invariant that did not hold, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub at: Duration,
    pub what: String,
}

/// What clients reported about one WebSocket connection, keyed by the
/// `conn_id` of its welcome frame.
#[derive(Debug, Clone, Default)]
pub struct ClientConn {
    pub client: u64,
    pub closed_at: Option<Duration>,
}

/// Run-wide state shared by every host and the driver.
#[derive(Debug, Default)]
pub struct RunState {
    /// Simulated time as the driver last saw it (used outside hosts).
    pub clock: Cell<Duration>,
    pub trace: RefCell<Trace>,
    pub violations: RefCell<Vec<Violation>>,
    /// Keyed by (shard, serial) parsed from the welcome's `conn_id`.
    pub conns: RefCell<BTreeMap<(u32, u64), ClientConn>>,
}

/// `"2-417"` → `(2, 417)`: a welcome's `conn_id` as shard and serial.
pub fn parse_conn_id(conn_id: &str) -> Option<(u32, u64)> {
    let (shard, serial) = conn_id.split_once('-')?;
    Some((shard.parse().ok()?, serial.parse().ok()?))
}

impl RunState {
    /// Simulated time, inside a host or in the driver between steps.
    pub fn now(&self) -> Duration {
        turmoil::sim_elapsed().unwrap_or(self.clock.get())
    }

    pub fn event(&self, event: &str) {
        self.trace.borrow_mut().record(self.now(), event);
    }

    pub fn violation(&self, what: String) {
        let at = self.now();
        self.trace
            .borrow_mut()
            .record(at, &format!("violation {what}"));
        self.violations.borrow_mut().push(Violation { at, what });
    }

    pub fn conn_opened(&self, conn_id: &str, client: u64) {
        if let Some(key) = parse_conn_id(conn_id) {
            self.conns.borrow_mut().insert(
                key,
                ClientConn {
                    client,
                    closed_at: None,
                },
            );
        }
    }

    pub fn conn_closed(&self, conn_id: &str) {
        if let Some(key) = parse_conn_id(conn_id)
            && let Some(c) = self.conns.borrow_mut().get_mut(&key)
        {
            c.closed_at.get_or_insert(self.now());
        }
    }
}
