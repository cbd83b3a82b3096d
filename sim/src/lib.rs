//! surge-sim: surge's own gateway code over a simulated network, driven
//! from one seed, so a connection surge that broke the seed system can be
//! reproduced in seconds and replayed forever.
//!
//! - [`net`]: surge's `Transport` over turmoil, with a model of the Linux
//!   listen backlog and SYN retransmission calibrated against the kernel.
//! - [`world`]: hosts, the step loop and invariant checks; below it
//!   [`world::hosts`] (host names, ports, simulated time) and
//!   [`world::state`] (the trace hash, violations, client connections).
//! - [`scenarios`]: the eight scenarios, one module each, over
//!   [`scenario::name`] (which scenario) and [`scenario::report`] (a run's
//!   report); [`scenario`] is the registry that dispatches to them.
//! - [`publisher`] and [`subscriber`]: the publisher host and the
//!   subscribing clients of the message-flow scenarios.
//! - [`stream`] and [`balancer`]: the shared stream and the L4 balancer
//!   of `multi_gateway`.
//! - [`swarm`]: the swarm soak, each seed drawing its scenario.
//! - [`calibrate`]: the model against real loopback sockets.
//! - [`fixture`]: the seed's check-then-acquire admission, kept only to
//!   show the race it causes.

pub mod balancer;
pub mod calibrate;
pub mod client;
pub mod fixture;
pub mod net;
pub mod params;
pub mod publisher;
pub mod real;
pub mod scenario;
pub mod scenarios;
pub mod stream;
pub mod subscriber;
pub mod swarm;
pub mod world;

pub use params::{BalancerMode, Dur, OutageMode, Params, Profile};
pub use scenario::name::Scenario;
pub use scenario::report::Report;
