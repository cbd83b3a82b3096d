//! surge-load: the load generator that measures surge (or any WebSocket
//! gateway speaking its protocol) the way a capacity planner needs.
//!
//! The seed team's tester reported one success count, so a backlog overflow,
//! a client timeout and a memory ceiling all looked the same. Here every
//! attempt is classified (timeout, refused, reset, closed, `http_<status>`,
//! local limits, other), handshake latency goes into an HDR histogram, and a
//! per-second timeline shows *when* things failed.
//!
//! Three runs, each a library function so tests drive them in-process and the
//! `surge-load` binary is a thin CLI over them:
//! - [`connect::run`]: open N connections at a rate, hold, close; spread over
//!   several source addresses and, past one process's file limit, several
//!   worker processes.
//! - [`fanout::run`]: N subscribers, publishes through the admin `/publish`,
//!   end-to-end latency, loss, duplicates and reordering from `seq`/`sseq`.
//! - [`churn::run`]: connect/close cycles; the gateway's `/health` must come
//!   back to where it started.
//!
//! - [`bench`]: the benchmark suite: a table of runs, each against a fresh
//!   `surge`, written up as a Targets report.
//!
//! Traffic only ever goes to loopback ([`target`]).

pub mod attempt;
pub mod bench;
pub mod churn;
pub mod connect;
pub mod dial;
pub mod fanout;
pub mod http;
pub mod limits;
pub mod record;
pub mod report;
pub mod server;
pub mod target;
pub mod tls;

pub use churn::{ChurnConfig, ChurnReport};
pub use connect::{ConnectConfig, ConnectReport};
pub use fanout::{FanoutConfig, FanoutReport};
