//! The network seen by the gateway: listen, accept, connect.
//!
//! The gateway is generic over this trait so the simulator can run the very
//! same acceptor, handshake and connection code over turmoil's network
//! (`sim` provides that implementation behind the `turmoil` feature of this
//! crate). The production implementation is `TcpTransport`, in the `tcp` module.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::io::{AsyncRead, AsyncWrite};

/// A way to listen for and open byte-stream connections.
pub trait Transport: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    type Listener: Listener<Stream = Self::Stream>;
    /// How a shard watches the upgraded connections it owns.
    type Poller: crate::poller::Poller<Stream = Self::Stream>;

    /// Binds a listener with the given accept-queue length.
    fn bind(
        &self,
        addr: SocketAddr,
        backlog: u32,
    ) -> impl Future<Output = io::Result<Self::Listener>> + Send;

    /// A fresh poller for one shard.
    fn poller(&self) -> io::Result<Self::Poller>;

    /// Opens a connection (used by tests and the simulator's clients).
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// A bound listener.
pub trait Listener: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection. Errors are per-connection and never stop the
    /// accept loop; the listener recovers from running out of descriptors
    /// itself (see `tcp`).
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;

    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Socket options requested and what the kernel did with each.
    fn report(&self) -> Vec<SocketOptionReport> {
        Vec::new()
    }

    /// A running count of clients the listener itself answered with 503
    /// because the process had no file descriptor left, if it does that.
    fn fd_exhaustion_answers(&self) -> Option<Arc<AtomicU64>> {
        None
    }
}

/// One socket option and whether the kernel accepted it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SocketOptionReport {
    pub option: String,
    pub value: String,
    /// `None` when applied, else the kernel's refusal.
    pub error: Option<String>,
}
