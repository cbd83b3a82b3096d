//! What handshake tasks and shards share with the gateway that made them:
//! the clock, admission, the configurations, metrics, the shutdown signal
//! and the broker. Below the gateway, the shards and the upgrade path.

use std::sync::{Arc, Mutex, OnceLock};

use surge_core::admission::{Admission, NotReady};
use surge_core::handshake::HandshakeConfig;
use surge_core::session::SessionConfig;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::sync::lock;
use crate::tls::TlsConfig;

/// What handshake tasks and shards share.
pub(crate) struct Context {
    pub clock: Clock,
    pub admission: Arc<Mutex<Admission>>,
    pub handshake_config: Arc<HandshakeConfig>,
    pub session_config: Arc<SessionConfig>,
    pub metrics: Arc<Metrics>,
    pub shutdown: watch::Receiver<bool>,
    pub ready_requires_broker: bool,
    /// The public listener's TLS, when it has it.
    pub tls: Option<TlsConfig>,
    pub(crate) broker: OnceLock<Arc<dyn Broker>>,
}

impl Context {
    pub fn broker(&self) -> &dyn Broker {
        // Set in `Gateway::start` before the first connection is accepted.
        self.broker.get().map(|b| b.as_ref()).unwrap_or(&NO_BROKER)
    }

    /// Readiness for load balancers (core decides from admission's state).
    pub fn readiness(&self) -> Result<(), NotReady> {
        let connected = self.broker().connected();
        lock(&self.admission).readiness(connected, self.ready_requires_broker)
    }
}

/// Stands in for the broker in the instant between assembly and start.
struct NoBroker;
static NO_BROKER: NoBroker = NoBroker;

impl Broker for NoBroker {
    fn kind(&self) -> &'static str {
        "none"
    }
    fn connected(&self) -> bool {
        false
    }
    fn epoch(&self) -> Option<String> {
        None
    }
    fn publish(
        &self,
        _: surge_core::subjects::Subject,
        _: bytes::Bytes,
        _: surge_core::protocol::Priority,
    ) -> crate::broker::BoxFuture<'_, Result<u64, crate::broker::BrokerError>> {
        Box::pin(async {
            Err(crate::broker::BrokerError::Unavailable(
                "no broker yet".into(),
            ))
        })
    }
    fn fetch(
        &self,
        _: Vec<surge_core::subjects::Pattern>,
        _: u64,
    ) -> crate::broker::BoxFuture<'_, Result<crate::broker::Fetched, crate::broker::BrokerError>>
    {
        Box::pin(async {
            Err(crate::broker::BrokerError::Unavailable(
                "no broker yet".into(),
            ))
        })
    }
}
