//! The real-kernel half of calibration: the same gateway over real
//! loopback sockets (`surge_runtime::tcp::TcpTransport`, socket2
//! `listen(B)`), with its accept path slowed to a fixed service time, hit by
//! a burst of clients. Traffic goes to 127.0.0.1 only, and every run is
//! bounded in clients and time.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use surge_runtime::embedded::{EmbeddedBroker, Retention};
use surge_runtime::tcp::{SocketTuning, TcpTransport};
use surge_runtime::transport::SocketOptionReport;
use surge_runtime::{Broker, Gateway, GatewayConfig, Listener, Transport};
use tokio::time::Instant;

use crate::client::{self, FailureKind};

/// A transport whose listener spends `service` per accepted connection,
/// as a busy accept loop does: the next `accept()` cannot return before
/// the previous one plus `service`.
#[derive(Debug, Clone)]
pub struct SlowAccept<T> {
    pub inner: T,
    pub service: Duration,
}

pub struct SlowListener<L> {
    inner: L,
    service: Duration,
    busy_until: Option<Instant>,
}

impl<T: Transport> Transport for SlowAccept<T> {
    type Stream = T::Stream;
    type Listener = SlowListener<T::Listener>;
    type Poller = T::Poller;

    fn poller(&self) -> io::Result<Self::Poller> {
        self.inner.poller()
    }

    async fn bind(&self, addr: SocketAddr, backlog: u32) -> io::Result<Self::Listener> {
        Ok(SlowListener {
            inner: self.inner.bind(addr, backlog).await?,
            service: self.service,
            busy_until: None,
        })
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Stream> {
        self.inner.connect(addr).await
    }
}

impl<L: Listener> Listener for SlowListener<L> {
    type Stream = L::Stream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        if let Some(at) = self.busy_until {
            tokio::time::sleep_until(at).await;
        }
        let accepted = self.inner.accept().await;
        self.busy_until = Some(Instant::now() + self.service);
        accepted
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn report(&self) -> Vec<SocketOptionReport> {
        self.inner.report()
    }
}

/// One burst against the real kernel.
#[derive(Debug, Clone, Copy)]
pub struct BurstSpec {
    pub clients: u32,
    pub backlog: u32,
    pub service: Duration,
    pub timeout: Duration,
}

/// Counts of a burst: successes and failures by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BurstResult {
    pub attempted: u32,
    pub succeeded: u32,
    pub failed: Vec<(FailureKind, u32)>,
}

impl BurstResult {
    pub fn failed_total(&self) -> u32 {
        self.failed.iter().map(|(_, n)| n).sum()
    }

    pub fn failure_percent(&self) -> f64 {
        if self.attempted == 0 {
            return 0.0;
        }
        100.0 * f64::from(self.failed_total()) / f64::from(self.attempted)
    }
}

/// Runs one burst over real loopback sockets. Needs a multi-threaded tokio
/// runtime (clients and gateway share it, as a load test on one host does).
pub async fn burst(spec: BurstSpec) -> io::Result<BurstResult> {
    let mut tuning = SocketTuning::preset(surge_core::config::SocketPreset::Default);
    // A plain listen(B): the model describes the kernel's accept queue, and
    // TCP_DEFER_ACCEPT (surge's default preset) only makes the kernel more
    // forgiving (fewer failures at small B, measured), so it is off here.
    tuning.defer_accept = None;
    tuning.user_timeout = None;
    let transport = SlowAccept {
        inner: TcpTransport::new(tuning, 5),
        service: spec.service,
    };
    let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut config = GatewayConfig::for_tests(addr, spec.clients + 16, 2);
    config.backlog = spec.backlog;
    config.handshake.timeout = spec.timeout + Duration::from_secs(5);
    let gateway = Gateway::start(&transport, config, |hub, clock| {
        Arc::new(EmbeddedBroker::new(
            hub,
            retention(),
            clock,
            "calibrate".into(),
        )) as Arc<dyn Broker>
    })
    .await?;
    let target = gateway.local_addr();
    let authority = target.to_string();
    let mut tasks = Vec::new();
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    for i in 0..spec.clients {
        let authority = authority.clone();
        let mut release = release_rx.clone();
        let timeout = spec.timeout;
        tasks.push(tokio::spawn(async move {
            let mut connected = false;
            let attempt = tokio::time::timeout(timeout, async {
                let stream =
                    tokio::net::TcpStream::connect(target)
                        .await
                        .map_err(|e| match e.kind() {
                            io::ErrorKind::ConnectionRefused => FailureKind::Refused,
                            _ => FailureKind::Reset,
                        })?;
                connected = true;
                client::upgrade(stream, u64::from(i), &authority)
                    .await
                    .map_err(|f| f.kind)
            })
            .await;
            match attempt {
                Ok(Ok(ws)) => {
                    // Hold the connection (and its slot) until every client
                    // has finished, as the simulated clients do.
                    let _ = release.wait_for(|r| *r).await;
                    drop(ws);
                    Ok(())
                }
                Ok(Err(kind)) => Err(kind),
                Err(_) if connected => Err(FailureKind::HandshakeTimeout),
                Err(_) => Err(FailureKind::ConnectTimeout),
            }
        }));
    }
    // Every client ends by its own deadline; release the winners after it.
    tokio::time::sleep(spec.timeout + Duration::from_millis(500)).await;
    let _ = release_tx.send(true);
    let mut result = BurstResult {
        attempted: spec.clients,
        ..BurstResult::default()
    };
    let mut counts = std::collections::BTreeMap::new();
    for task in tasks {
        match task.await {
            Ok(Ok(())) => result.succeeded += 1,
            Ok(Err(kind)) => *counts.entry(kind).or_insert(0u32) += 1,
            Err(_) => *counts.entry(FailureKind::Reset).or_insert(0u32) += 1,
        }
    }
    result.failed = counts.into_iter().collect();
    gateway.shutdown(Duration::from_secs(2)).await;
    Ok(result)
}

fn retention() -> Retention {
    Retention {
        max_age: Duration::from_secs(30),
        max_messages: 10_000,
        max_bytes: 8 << 20,
    }
}
