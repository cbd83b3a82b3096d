//! What a client refused at accept gets on a TLS listener.
//!
//! Admission refuses before any TLS, at accept. A plain 503 would be
//! garbage to a TLS client, and a 503 it can read needs a TLS handshake
//! first, which costs CPU exactly when the gateway is full or overloaded.
//! So a bounded number of refused clients ([`REFUSAL_HANDSHAKES`] at a
//! time) get the handshake, under [`REFUSAL_DEADLINE`], and then the same
//! 503 + `Retry-After` as on a plain listener: curl, load balancers and
//! native clients see a clear answer. Past that bound the TCP connection
//! is closed at once, without TLS (counted in
//! `surge_tls_refusals_unanswered_total`); a few refusal handshakes in
//! flight are enough to answer the clients that retry politely, while a
//! flood cannot make the gateway spend its CPU on handshakes it refuses.
//! A browser sees neither: its WebSocket reports close 1006 either way.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::certs::TlsConfig;
use crate::linger::answer_and_linger;

/// Refused clients whose TLS handshake and 503 may be in flight at once.
pub const REFUSAL_HANDSHAKES: usize = 64;

/// Time a refused client has to complete its TLS handshake.
pub const REFUSAL_DEADLINE: Duration = Duration::from_secs(3);

/// Counts the refusal handshakes in flight against [`REFUSAL_HANDSHAKES`].
#[derive(Debug, Default)]
pub(crate) struct RefusalHandshakes {
    in_flight: Arc<AtomicUsize>,
}

/// One refusal handshake's place; given back when dropped.
pub(crate) struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RefusalHandshakes {
    /// A place for one more refusal handshake, if fewer than
    /// [`REFUSAL_HANDSHAKES`] are in flight.
    pub fn try_acquire(&self) -> Option<Permit> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < REFUSAL_HANDSHAKES).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(Arc::clone(&self.in_flight)))
    }
}

/// Completes the TLS handshake under [`REFUSAL_DEADLINE`], then writes
/// `response` (the 503) and closes as every refusal does.
pub(crate) async fn answer<S>(stream: S, tls: TlsConfig, response: Arc<[u8]>, permit: Permit)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = super::stream::accept(stream, Arc::clone(tls.server_config()));
    let accepted = tokio::time::timeout(REFUSAL_DEADLINE, handshake).await;
    if let Ok(Ok(mut stream)) = accepted {
        answer_and_linger(&mut stream, &response).await;
    }
    drop(permit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_stop_at_the_bound_and_come_back_when_dropped() {
        let refusals = RefusalHandshakes::default();
        let held: Vec<Permit> = (0..REFUSAL_HANDSHAKES)
            .map(|_| refusals.try_acquire().expect("a permit under the bound"))
            .collect();
        assert!(refusals.try_acquire().is_none());
        drop(held);
        assert!(refusals.try_acquire().is_some());
    }
}
