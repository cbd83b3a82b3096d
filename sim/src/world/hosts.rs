//! Where things are in the simulated network, for code running inside a
//! host: the gateway's and the publisher's host names and ports, and
//! simulated time.
//!
//! Below both `world` (which installs the hosts) and the publisher (which
//! runs on one of them and talks to the gateway's ingest port).

use std::net::SocketAddr;
use std::time::Duration;

/// The gateway's host name and WebSocket port.
pub const GATEWAY: &str = "gateway";
pub const WS_PORT: u16 = 8080;
/// The publisher's host name and the gateway's ingest port.
pub const PUBLISHER: &str = "publisher";
pub const INGEST_PORT: u16 = 9000;

/// The gateway's WebSocket address (call inside a host).
pub fn gateway_addr() -> SocketAddr {
    SocketAddr::new(turmoil::lookup(GATEWAY), WS_PORT)
}

/// Sleeps until simulated time `at` (from the start of the run).
pub async fn sleep_until_sim(at: Duration) {
    let now = crate::net::sim_now();
    if at > now {
        tokio::time::sleep(at - now).await;
    }
}
