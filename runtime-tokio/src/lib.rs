//! surge-runtime: drives surge-core with real async I/O.
//!
//! Core decides; this crate moves bytes and time. It is generic over a
//! [`transport::Transport`], so the simulator runs this same code over a
//! simulated network, and [`gateway::Gateway`] is the one place the parts
//! are assembled, for the `surge` binary and the simulator alike.

pub mod broker;
pub mod clock;
mod context;
pub mod embedded;
mod epoll;
pub mod gateway;
mod linger;
pub mod metrics;
pub mod poller;
mod read_buffer;
mod shard;
mod slot;
mod sync;
pub mod tcp;
pub mod tls;
pub mod transport;
mod upgrade;

pub use broker::{Broker, BrokerError, Fetched, Hub, Position};
pub use clock::Clock;
pub use gateway::{Gateway, GatewayConfig, Health};
pub use transport::{Listener, Transport};
