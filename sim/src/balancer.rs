//! A simulated L4 load balancer, modelled on what HAProxy does in TCP mode
//! in front of several gateways:
//!
//! - it accepts each client's TCP connection (through the same kernel
//!   model as the gateway's listener) and splices it, byte for byte, to a
//!   backend it dials itself;
//! - the backend is the one with the fewest spliced connections among
//!   those whose health check passes (`balance leastconn`), ties going
//!   round-robin;
//! - the health check is an HTTP probe of each backend's readiness
//!   (`GET /healthz` on its public port, which surge answers 200 or 503):
//!   every `inter`, `fall` failures in a row take a backend out, `rise`
//!   successes put it back;
//! - a backend that refuses the dial is marked down and the next one is
//!   tried (`retries` with `option redispatch`); with none left the
//!   balancer answers `503 Service Unavailable` itself, as HAProxy does,
//!   so a client always gets an HTTP answer.
//!
//! Everything the balancer decides is recorded in [`Backends`], which the
//! driver reads between steps.
//!
//! In routing mode ([`Backends::lease`]) the balancer makes the same
//! choice with the same checks, but the client then connects to the chosen
//! gateway itself, as with direct server return: the bytes skip the
//! balancer's host, which halves the simulated traffic of a large run.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use surge_runtime::{Listener, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::{AcceptPath, KernelParams, SimTransport};
use crate::world::hosts::WS_PORT;

/// HAProxy's answer when no server is available.
const NO_SERVER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Health-check timing (HAProxy's `inter`, `fall`, `rise`).
#[derive(Debug, Clone, Copy)]
pub struct Checks {
    pub inter: Duration,
    pub fall: u32,
    pub rise: u32,
}

impl Checks {
    /// How long a backend that turns unready may still be sent clients.
    pub fn notice(&self) -> Duration {
        self.inter.saturating_mul(self.fall)
    }
}

/// One backend as the balancer sees it.
#[derive(Debug, Clone, Default)]
pub struct Backend {
    pub name: String,
    pub up: bool,
    /// Consecutive probe results against the current state.
    streak: u32,
    /// Connections spliced to it now, and in all.
    pub active: u32,
    pub total: u64,
    /// Dials it refused or that timed out.
    pub failed_dials: u64,
}

/// The balancer's view of every backend, shared with the driver.
#[derive(Debug, Default)]
pub struct Backends {
    pub backends: RefCell<Vec<Backend>>,
    next: RefCell<usize>,
    /// Clients answered 503 because no backend was up.
    pub no_server: RefCell<u64>,
    /// Set at the end of a run: the health checks stop (a probe holds a
    /// gateway slot for a moment, which would look like a leak).
    stopped: Cell<bool>,
}

impl Backends {
    /// Backends named `names`, all up (HAProxy starts servers up).
    pub fn new(names: &[String]) -> Rc<Backends> {
        Rc::new(Backends {
            backends: RefCell::new(
                names
                    .iter()
                    .map(|n| Backend {
                        name: n.clone(),
                        up: true,
                        ..Backend::default()
                    })
                    .collect(),
            ),
            ..Backends::default()
        })
    }

    /// Least connections among the backends that are up and not in
    /// `tried`, ties round-robin.
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let backends = self.backends.borrow();
        let n = backends.len();
        let start = *self.next.borrow();
        let chosen = (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| backends[*i].up && !tried.contains(i))
            .min_by_key(|i| backends[*i].active)?;
        *self.next.borrow_mut() = (chosen + 1) % n.max(1);
        Some(chosen)
    }

    /// Stops the health checks.
    pub fn stop(&self) {
        self.stopped.set(true);
    }

    /// Whether backend `i` passes its health checks now.
    pub fn is_up(&self, i: usize) -> bool {
        self.backends.borrow().get(i).is_some_and(|b| b.up)
    }

    fn probed(&self, i: usize, ok: bool, checks: &Checks) {
        let mut backends = self.backends.borrow_mut();
        let b = &mut backends[i];
        if ok == b.up {
            b.streak = 0;
            return;
        }
        b.streak += 1;
        let needed = if b.up { checks.fall } else { checks.rise };
        if b.streak >= needed {
            b.up = ok;
            b.streak = 0;
        }
    }

    /// Picks a backend for a client that will connect to it directly
    /// (the balancer's routing mode) and counts the connection on it.
    pub fn lease(&self, tried: &[usize]) -> Option<usize> {
        let i = self.pick(tried)?;
        let mut b = self.backends.borrow_mut();
        b[i].active += 1;
        b[i].total += 1;
        Some(i)
    }

    /// A leased connection ended.
    pub fn release(&self, i: usize) {
        let mut b = self.backends.borrow_mut();
        b[i].active = b[i].active.saturating_sub(1);
    }

    /// The backend refused a dial: out until its checks pass again.
    pub fn dial_failed(&self, i: usize) {
        let mut backends = self.backends.borrow_mut();
        backends[i].failed_dials += 1;
        backends[i].up = false;
        backends[i].streak = 0;
    }
}

/// Probes one backend's readiness: `GET /healthz`, 200 within a second.
async fn probe(kernel: &KernelParams, addr: SocketAddr) -> bool {
    let attempt = async {
        let mut s = crate::net::connect(kernel, addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: lb\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < 12 {
            let n = s.read(&mut buf[got..]).await.ok()?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Some(buf[..got].starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

/// The balancer host's program: health checks and the splicing listener.
pub async fn serve(
    kernel: KernelParams,
    backends: Rc<Backends>,
    checks: Checks,
) -> std::io::Result<()> {
    let names: Vec<String> = backends
        .backends
        .borrow()
        .iter()
        .map(|b| b.name.clone())
        .collect();
    for (i, name) in names.iter().enumerate() {
        let backends = Rc::clone(&backends);
        let kernel = kernel.clone();
        let name = name.clone();
        tokio::task::spawn_local(async move {
            // Spread the checks over the interval, as HAProxy does.
            let offset = checks.inter.mul_f64(i as f64 / names_len(&backends) as f64);
            tokio::time::sleep(offset).await;
            while !backends.stopped.get() {
                let addr = SocketAddr::new(turmoil::lookup(name.as_str()), WS_PORT);
                let ok = probe(&kernel, addr).await;
                backends.probed(i, ok, &checks);
                tokio::time::sleep(checks.inter).await;
            }
        });
    }
    let transport = SimTransport::new(kernel.clone(), AcceptPath::fixed(Duration::ZERO), None);
    let mut listener = transport
        .bind(([0, 0, 0, 0], WS_PORT).into(), 65_535)
        .await?;
    loop {
        let Ok((mut client, _peer)) = listener.accept().await else {
            continue;
        };
        let backends = Rc::clone(&backends);
        let kernel = kernel.clone();
        tokio::task::spawn_local(async move {
            let mut tried = Vec::new();
            let server = loop {
                let Some(i) = backends.pick(&tried) else {
                    break None;
                };
                tried.push(i);
                let name = backends.backends.borrow()[i].name.clone();
                let addr = SocketAddr::new(turmoil::lookup(name.as_str()), WS_PORT);
                match tokio::time::timeout(
                    Duration::from_secs(1),
                    crate::net::connect(&kernel, addr),
                )
                .await
                {
                    Ok(Ok(s)) => break Some((i, s)),
                    _ => backends.dial_failed(i),
                }
            };
            let Some((i, mut server)) = server else {
                *backends.no_server.borrow_mut() += 1;
                let _ = client.write_all(NO_SERVER).await;
                let _ = client.shutdown().await;
                return;
            };
            {
                let mut b = backends.backends.borrow_mut();
                b[i].active += 1;
                b[i].total += 1;
            }
            let _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, 2048, 2048)
                .await;
            backends.backends.borrow_mut()[i].active -= 1;
        });
    }
}

fn names_len(backends: &Backends) -> usize {
    backends.backends.borrow().len().max(1)
}
