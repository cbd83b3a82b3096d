//! surge-sim: surge's own gateway code over a simulated network, driven
//! from one seed, so a connection surge that broke the seed system can be
//! reproduced in seconds and replayed forever.
//!
//! - [`net`]: surge's `Transport` over turmoil, with a model of the Linux
//!   listen backlog and SYN retransmission calibrated against the kernel.
//! - [`world`]: hosts, the step loop, invariant checks and the trace hash.
//! - [`scenario`] and [`scenarios`]: the seven scenarios and their reports.
//! - [`calibrate`]: the model against real loopback sockets.
//! - [`fixture`]: the seed's check-then-acquire admission, kept only to
//!   show the race it causes.

pub mod calibrate;
pub mod client;
pub mod fixture;
pub mod net;
pub mod params;
pub mod publisher;
pub mod real;
pub mod scenario;
pub mod scenarios;
pub mod subscriber;
pub mod world;

pub use params::{Dur, OutageMode, Params, Profile};
pub use scenario::{Report, Scenario};
