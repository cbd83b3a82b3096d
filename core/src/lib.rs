//! surge-core: every decision the gateway makes, and no I/O.
//!
//! The crate never reads a clock, opens a socket or spawns a thread. Each
//! input carries the current time as an [`Instant`] supplied by the driver,
//! and each state machine hands back what the driver must do, either as a
//! return value or through `poll_*` methods, with `poll_timeout()` telling
//! the driver when to call `handle_timeout(now)` next. The tokio runtime and
//! the simulator drive this same code, which is what makes a simulated run
//! a faithful picture of the real gateway.

pub mod admission;
pub mod auth;
pub mod config;
pub mod connection;
pub mod dashboard;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod protocol;
pub mod ratelimit;
pub mod replay;
pub mod session;
pub mod subjects;
pub mod throttle;
mod time;

pub use time::{Instant, UnixAnchor, UnixTime};
