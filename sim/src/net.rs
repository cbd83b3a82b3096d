//! The simulated network seen by the gateway: surge's `Transport` trait over
//! turmoil, plus the part of a Linux kernel turmoil does not have — the
//! listen backlog and SYN retransmission.
//!
//! # Which model, and why
//!
//! turmoil 0.7 completes a connection only when the application calls
//! `accept()`, has no accept queue, retransmits nothing, and panics when its
//! pending-SYN deque reaches `tcp_capacity`. The newer `turmoil-net` crate
//! models a backlog, but not the two-stage behaviour measured below, and
//! would mean a second network stack under the same gateway. So the kernel
//! is modelled here, on top of turmoil 0.7: a *kernel task* accepts from
//! turmoil at once (so turmoil's deque never fills) and decides each
//! connection's fate the way Linux does, measured against the real kernel
//! (`surge-sim calibrate`, sim/CALIBRATION.md):
//!
//! 1. **Accept queue.** Completed connections wait for `accept()` in a
//!    queue of `min(backlog, somaxconn) + 1` (Linux's `sk_acceptq_is_full`
//!    is `len > backlog`). The gateway's accept loop takes one per service
//!    time ([`AcceptPath`]): a busy acceptor is modelled by a slow one.
//! 2. **SYN check.** A SYN that finds the accept queue full is dropped
//!    (`tcp_conn_request`), and the client retransmits it 1 s later, then
//!    after 2, 4, 8 … s ([`SimTransport::connect`]) until its own deadline.
//! 3. **Batches and half-open connections.** SYNs that arrive together
//!    (one softirq run; here: the same simulated instant) are all answered
//!    before any of their final ACKs is processed, so they all pass the SYN
//!    check. Their ACKs then fill the queue; an ACK that finds it full is
//!    dropped and the connection stays *half-open* in the SYN queue. The
//!    client believes it is connected and sends its request; every
//!    retransmission of that request (a tail-loss probe after 200 ms, then
//!    RTO doubling) is another ACK, which gets the connection into the queue
//!    once there is room. Half-open connections expire after 63 s
//!    (`tcp_synack_retries` = 5).
//! 4. **Timer wheel.** Retransmissions fire from Linux's timer wheel
//!    (HZ = 250; a level's granularity is 8× the previous one's), which
//!    rounds expiries up to a slot boundary. That is what makes a burst's
//!    retransmissions arrive together, one second later, as one batch —
//!    and what a plain drop-on-overflow queue gets wrong (64 % failures
//!    against the kernel's 44 % at B = 32 in an earlier measurement).
//!
//! The SYN-ACK is a one-byte marker the kernel task writes before anything
//! else; the client side of this transport consumes it, so neither the
//! gateway nor tungstenite ever sees it. A dropped SYN is a closed stream
//! without the marker: the client learns nothing from it and simply
//! retransmits when its timer fires, as a real client would.
//!
//! Where turmoil itself refuses a connection (nothing bound, or the SYN was
//! lost on a faulty link), `connect` reports `ConnectionRefused` and the
//! client's own reconnect policy takes over.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use futures_util::FutureExt;
use surge_runtime::{Listener, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

/// The byte the simulated kernel sends for SYN-ACK.
const SYN_ACK: u8 = 0x5A;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Simulated time since the start of the run (the same on every host).
pub fn sim_now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// The kernel parameters of the model (Linux defaults, as measured on the
/// calibration host).
#[derive(Debug, Clone, PartialEq)]
pub struct KernelParams {
    /// `net.core.somaxconn`: caps any requested backlog.
    pub somaxconn: u32,
    /// Timer interrupt frequency; sets the timer wheel's granularity.
    pub hz: u32,
    /// `tcp_syn_retries`: SYN retransmissions before connect fails.
    pub syn_retries: u32,
    /// Initial SYN retransmission timeout (doubles each time).
    pub syn_rto: Duration,
    /// First retransmission of the request on a half-open connection
    /// (tail-loss probe), then doubling.
    pub data_rto: Duration,
    /// A half-open connection is forgotten after this long.
    pub half_open_lifetime: Duration,
    /// Bytes the gateway may send that the client has not read yet (its
    /// receive window plus the socket buffers): a slow reader makes the
    /// gateway's writes wait, as TCP does. turmoil's own flow control
    /// counts segments of any size, so it is modelled here.
    pub receive_window: usize,
    /// The connections' windows, shared by both ends.
    pub flows: FlowRegistry,
    /// Model batches and half-open connections (stage 3 above). Off, the
    /// model is a single drop-on-overflow queue: only for calibration, to
    /// show what the second stage buys.
    pub two_stage: bool,
    /// Seeds each host's timer-wheel phase: hosts' jiffy counters are not
    /// aligned, so their slot boundaries fall at different instants.
    pub wheel_seed: u64,
}

impl Default for KernelParams {
    fn default() -> Self {
        KernelParams {
            somaxconn: 4096,
            hz: 250,
            syn_retries: 6,
            syn_rto: Duration::from_secs(1),
            data_rto: Duration::from_millis(200),
            half_open_lifetime: Duration::from_secs(63),
            receive_window: 64 * 1024,
            flows: FlowRegistry::default(),
            two_stage: true,
            wheel_seed: 0,
        }
    }
}

impl KernelParams {
    /// When a timer armed at `now` for `delay` fires on Linux's timer
    /// wheel: level n holds delays under 64·8ⁿ jiffies with a granularity
    /// of 8ⁿ jiffies, and every level above 0 rounds up to its next slot.
    pub fn wheel_expiry(&self, now: Duration, delay: Duration) -> Duration {
        let jiffy_ns = 1_000_000_000u128 / u128::from(self.hz.max(1));
        let now_j = now.as_nanos() / jiffy_ns;
        let delta_j = delay.as_nanos().div_ceil(jiffy_ns).max(1);
        let mut granularity = 1u128;
        let mut range = 64u128;
        while delta_j >= range && granularity < 8u128.pow(8) {
            granularity *= 8;
            range *= 8;
        }
        let expires = now_j + delta_j;
        let fire_j = if granularity == 1 {
            expires
        } else {
            (expires / granularity + 1) * granularity
        };
        let ns = fire_j * jiffy_ns;
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)).max(now + delay)
    }

    /// [`KernelParams::wheel_expiry`] on the host at `host`, whose jiffy
    /// counter is offset by a phase derived from the seed and its address.
    pub fn wheel_expiry_on(
        &self,
        host: Option<IpAddr>,
        now: Duration,
        delay: Duration,
    ) -> Duration {
        let Some(ip) = host else {
            return self.wheel_expiry(now, delay);
        };
        let bits = match ip {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6) as u64,
        };
        let jiffy_ns = 1_000_000_000u64 / u64::from(self.hz.max(1));
        let phase = Duration::from_nanos(
            crate::client::splitmix64(self.wheel_seed ^ bits) % 4096 * jiffy_ns,
        );
        self.wheel_expiry(now + phase, delay).saturating_sub(phase)
    }
}

tokio::task_local! {
    /// The address of the simulated host a client task runs on (its timer
    /// wheel's phase depends on it).
    pub static HOST_ADDR: IpAddr;
}

fn host_addr() -> Option<IpAddr> {
    HOST_ADDR.try_with(|ip| *ip).ok()
}

/// Unread bytes in flight from the gateway to one client.
#[derive(Debug)]
pub struct FlowWindow {
    capacity: usize,
    state: Mutex<FlowState>,
}

#[derive(Debug, Default)]
struct FlowState {
    in_flight: usize,
    writer: Option<Waker>,
}

impl FlowWindow {
    fn new(capacity: usize) -> Self {
        FlowWindow {
            capacity: capacity.max(1),
            state: Mutex::new(FlowState::default()),
        }
    }

    /// How many of `want` bytes may be sent now; registers the writer to
    /// be woken when the window opens if none.
    fn reserve(&self, want: usize, cx: &mut Context<'_>) -> usize {
        let mut st = lock(&self.state);
        let room = self.capacity.saturating_sub(st.in_flight);
        if room == 0 {
            st.writer = Some(cx.waker().clone());
        }
        room.min(want)
    }

    fn sent(&self, n: usize) {
        lock(&self.state).in_flight += n;
    }

    fn read(&self, n: usize) {
        let waker = {
            let mut st = lock(&self.state);
            st.in_flight = st.in_flight.saturating_sub(n);
            st.writer.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Where the gateway's end of a connection leaves its window for the
/// client's end to pick up (keyed by client and server address).
#[derive(Debug, Clone, Default)]
pub struct FlowRegistry(Arc<Mutex<FlowMap>>);

/// (client address, server address) → the window both ends share.
type FlowMap = BTreeMap<(SocketAddr, SocketAddr), Weak<FlowWindow>>;

impl PartialEq for FlowRegistry {
    /// The registry is plumbing, not a parameter: any two are alike.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl FlowRegistry {
    fn offer(&self, client: SocketAddr, server: SocketAddr, window: &Arc<FlowWindow>) {
        let mut map = lock(&self.0);
        map.retain(|_, w| w.strong_count() > 0);
        map.insert((client, server), Arc::downgrade(window));
    }

    fn take(&self, client: SocketAddr, server: SocketAddr) -> Option<Arc<FlowWindow>> {
        lock(&self.0).remove(&(client, server))?.upgrade()
    }
}

/// How long the gateway's accept loop is busy per accepted connection, as
/// a function of the connections the process holds.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptPath {
    /// Fixed cost per accept.
    pub base: Duration,
    /// Added per connection held (a process that slows as it fills up,
    /// like the seed's two goroutines per connection).
    pub per_connection: Duration,
    /// When the process holds this many connections, accept stalls until
    /// one closes (the seed's memory ceiling: no answer, only timeouts).
    pub stall_at: Option<u64>,
}

impl AcceptPath {
    pub fn fixed(service: Duration) -> Self {
        AcceptPath {
            base: service,
            per_connection: Duration::ZERO,
            stall_at: None,
        }
    }

    pub fn service_time(&self, held: u64) -> Duration {
        self.base
            + self
                .per_connection
                .saturating_mul(u32::try_from(held).unwrap_or(u32::MAX))
    }
}

/// A shared upgrade worker: each connection's first write (its 101 or its
/// rejection) waits for this much work, one connection after another —
/// the seed's handshakes starved by goroutines spawned in bursts.
#[derive(Debug, Clone, PartialEq)]
pub struct UpgradePath {
    pub base: Duration,
    pub per_connection: Duration,
}

impl UpgradePath {
    pub fn work(&self, held: u64) -> Duration {
        self.base
            + self
                .per_connection
                .saturating_mul(u32::try_from(held).unwrap_or(u32::MAX))
    }
}

/// What the simulated kernel counted (for reports and invariants).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// SYNs that reached the listener (first attempts and retransmissions).
    pub syns: u64,
    /// SYNs dropped because the accept queue was full.
    pub syns_dropped: u64,
    /// Final ACKs dropped because the accept queue was full (connection
    /// left half-open).
    pub acks_dropped: u64,
    /// Half-open connections that later made it into the accept queue.
    pub half_open_recovered: u64,
    /// Half-open connections given up after their lifetime.
    pub half_open_expired: u64,
    /// Connections handed to the gateway by `accept()`.
    pub accepted: u64,
    /// Most connections ever waiting in the accept queue.
    pub accept_queue_peak: u64,
}

/// The transport's shared state: counters and the connections the
/// gateway process holds.
#[derive(Debug, Default)]
pub struct NetShared {
    stats: Mutex<NetStats>,
    held: AtomicU64,
    upgrade_free_at: Mutex<Option<Instant>>,
}

impl NetShared {
    pub fn stats(&self) -> NetStats {
        lock(&self.stats).clone()
    }

    /// Server-side connections currently held by the gateway process.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

/// surge's transport over turmoil, with the kernel model described above.
#[derive(Debug, Clone)]
pub struct SimTransport {
    pub kernel: KernelParams,
    pub accept: AcceptPath,
    pub upgrade: Option<UpgradePath>,
    shared: Arc<NetShared>,
}

impl SimTransport {
    pub fn new(kernel: KernelParams, accept: AcceptPath, upgrade: Option<UpgradePath>) -> Self {
        SimTransport {
            kernel,
            accept,
            upgrade,
            shared: Arc::new(NetShared::default()),
        }
    }

    pub fn shared(&self) -> Arc<NetShared> {
        Arc::clone(&self.shared)
    }
}

/// One direction of a simulated TCP connection, on either side.
pub struct SimStream {
    inner: turmoil::net::TcpStream,
    /// Server side: counts the connection as held by the process.
    _held: Option<HeldToken>,
    gate: Gate,
    /// Server side: writes wait while the client's window is full.
    send_window: Option<Arc<FlowWindow>>,
    /// Client side: reads open the gateway's window again.
    recv_window: Option<Arc<FlowWindow>>,
}

struct HeldToken(Arc<NetShared>);

impl Drop for HeldToken {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Gate {
    Open,
    /// The first write waits for the upgrade worker.
    Pending(Arc<NetShared>, UpgradePath),
    Waiting(Pin<Box<Sleep>>),
}

impl SimStream {
    fn client(inner: turmoil::net::TcpStream, recv_window: Option<Arc<FlowWindow>>) -> Self {
        SimStream {
            inner,
            _held: None,
            gate: Gate::Open,
            send_window: None,
            recv_window,
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_gate(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut self.gate {
                Gate::Open => return Poll::Ready(()),
                Gate::Pending(shared, path) => {
                    let now = Instant::now();
                    let work = path.work(shared.held());
                    let ready_at = {
                        let mut free_at = lock(&shared.upgrade_free_at);
                        let start = free_at.map_or(now, |f| f.max(now));
                        let done = start + work;
                        *free_at = Some(done);
                        done
                    };
                    self.gate = Gate::Waiting(Box::pin(tokio::time::sleep_until(ready_at)));
                }
                Gate::Waiting(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    self.gate = Gate::Open;
                }
            }
        }
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if let Some(w) = &self.recv_window {
            w.read(buf.filled().len() - before);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_gate(cx));
        let Some(window) = self.send_window.clone() else {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        };
        let room = window.reserve(buf.len(), cx);
        if room == 0 && !buf.is_empty() {
            return Poll::Pending;
        }
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[..room]))?;
        window.sent(n);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_gate(cx));
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection the kernel has answered: the stream, the client's
/// address and the window its two ends share.
type Established = (turmoil::net::TcpStream, SocketAddr, Arc<FlowWindow>);

/// Connections that completed the handshake, waiting for `accept()`.
struct AcceptQueue {
    ready: VecDeque<Established>,
    /// Linux's queue holds `backlog + 1`.
    limit: usize,
}

impl AcceptQueue {
    fn is_full(&self) -> bool {
        self.ready.len() >= self.limit
    }
}

struct QueueShared {
    queue: Mutex<AcceptQueue>,
    notify: Notify,
}

/// The gateway's end: pops the accept queue at the accept path's pace.
pub struct SimListener {
    local_addr: SocketAddr,
    queue: Arc<QueueShared>,
    shared: Arc<NetShared>,
    accept: AcceptPath,
    upgrade: Option<UpgradePath>,
    busy_until: Option<Instant>,
    kernel: JoinHandle<()>,
}

impl Drop for SimListener {
    fn drop(&mut self) {
        // The kernel task owns turmoil's listener; stopping it unbinds.
        self.kernel.abort();
    }
}

impl Transport for SimTransport {
    type Stream = SimStream;
    type Listener = SimListener;
    type Poller = surge_runtime::poller::WakerPoller<SimStream>;

    fn poller(&self) -> io::Result<Self::Poller> {
        Ok(surge_runtime::poller::WakerPoller::new())
    }

    async fn bind(&self, addr: SocketAddr, backlog: u32) -> io::Result<SimListener> {
        let listener = turmoil::net::TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let retransmissions =
            turmoil::net::TcpListener::bind(retransmission_addr(local_addr)).await?;
        let effective = backlog.min(self.kernel.somaxconn);
        let queue = Arc::new(QueueShared {
            queue: Mutex::new(AcceptQueue {
                ready: VecDeque::new(),
                limit: effective as usize + 1,
            }),
            notify: Notify::new(),
        });
        let kernel = tokio::spawn(kernel_task(
            listener,
            retransmissions,
            Arc::clone(&queue),
            Arc::clone(&self.shared),
            self.kernel.clone(),
        ));
        Ok(SimListener {
            local_addr,
            queue,
            shared: Arc::clone(&self.shared),
            accept: self.accept.clone(),
            upgrade: self.upgrade.clone(),
            busy_until: None,
            kernel,
        })
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<SimStream> {
        connect(&self.kernel, addr).await
    }
}

impl Listener for SimListener {
    type Stream = SimStream;

    async fn accept(&mut self) -> io::Result<(SimStream, SocketAddr)> {
        if let Some(at) = self.busy_until {
            tokio::time::sleep_until(at).await;
        }
        if let Some(limit) = self.accept.stall_at {
            // Out of memory in all but name: the process takes nothing
            // new until something closes.
            while self.shared.held() >= limit {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let (stream, peer, window) = loop {
            let next = lock(&self.queue.queue).ready.pop_front();
            match next {
                Some(c) => break c,
                None => self.queue.notify.notified().await,
            }
        };
        let held = self.shared.held.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.shared.stats).accepted += 1;
        self.busy_until = Some(Instant::now() + self.accept.service_time(held));
        let gate = match &self.upgrade {
            Some(path) => Gate::Pending(Arc::clone(&self.shared), path.clone()),
            None => Gate::Open,
        };
        Ok((
            SimStream {
                inner: stream,
                _held: Some(HeldToken(Arc::clone(&self.shared))),
                gate,
                send_window: Some(window),
                recv_window: None,
            },
            peer,
        ))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

/// Connects like a Linux client: SYN, and on silence a retransmission
/// 1 s later, then 2, 4 … s (each fired from the timer wheel), up to
/// `syn_retries`. Callers bound it with their own deadline.
pub async fn connect(k: &KernelParams, addr: SocketAddr) -> io::Result<SimStream> {
    let mut rto = k.syn_rto;
    for attempt in 0..=k.syn_retries {
        let sent = sim_now();
        let retransmit_at = k.wheel_expiry_on(host_addr(), sent, rto);
        let wait = retransmit_at.saturating_sub(sent);
        let answered = tokio::time::timeout(wait, async {
            let target = if attempt == 0 {
                addr
            } else {
                retransmission_addr(addr)
            };
            let mut stream = turmoil::net::TcpStream::connect(target).await?;
            let mut marker = [0u8; 1];
            match stream.read(&mut marker).await {
                Ok(1) if marker[0] == SYN_ACK => {
                    let window = match (stream.local_addr(), stream.peer_addr()) {
                        (Ok(local), Ok(peer)) => k.flows.take(local, peer),
                        _ => None,
                    };
                    Ok(Some(SimStream::client(stream, window)))
                }
                // Closed without SYN-ACK: the SYN was dropped; nothing
                // reaches the client, which waits for its timer.
                _ => Ok(None),
            }
        })
        .await;
        match answered {
            Ok(Ok(Some(stream))) => return Ok(stream),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(None)) => {
                let now = sim_now();
                tokio::time::sleep(retransmit_at.saturating_sub(now)).await;
            }
            Err(_elapsed) => {}
        }
        if attempt < k.syn_retries {
            rto = rto.saturating_mul(2);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "no SYN-ACK from {addr} after {} retransmissions",
            k.syn_retries
        ),
    ))
}

/// A connection whose final ACK was dropped, waiting for the client's next
/// retransmission to find room.
struct HalfOpen {
    conn: Established,
    since: Duration,
    rto: Duration,
}

/// The simulated kernel's side of a listening socket.
async fn kernel_task(
    listener: turmoil::net::TcpListener,
    retransmissions: turmoil::net::TcpListener,
    queue: Arc<QueueShared>,
    shared: Arc<NetShared>,
    k: KernelParams,
) {
    // Keyed by (due time, arrival order): retries fire in time order, and
    // connections due together retry in the order they arrived.
    let mut half_open: BTreeMap<(Duration, u64), HalfOpen> = BTreeMap::new();
    let mut order = 0u64;
    loop {
        let next_due = half_open.keys().next().map(|(due, _)| *due);
        let sleep_for = next_due.map(|due| due.saturating_sub(sim_now()));
        tokio::select! {
            biased;
            first = listener.accept() => {
                let Ok(first) = first else { return };
                // SYNs from connect() calls: on loopback each handshake
                // completes inside its own syscall, so SYN and ACK are one
                // step and a full queue simply drops the SYN.
                let mut batch = vec![first];
                while let Some(Ok(more)) = listener.accept().now_or_never() {
                    batch.push(more);
                }
                let mut stats = lock(&shared.stats);
                let mut q = lock(&queue.queue);
                for (stream, peer) in batch {
                    stats.syns += 1;
                    if q.is_full() {
                        stats.syns_dropped += 1;
                    } else if let Some(conn) = syn_ack(&k, stream, peer) {
                        q.ready.push_back(conn);
                        queue.notify.notify_one();
                    }
                }
                stats.accept_queue_peak = stats.accept_queue_peak.max(q.ready.len() as u64);
            }
            first = retransmissions.accept() => {
                let Ok(first) = first else { return };
                // SYNs fired by the same timer-wheel slot: one softirq run
                // answers every SYN before any of their ACKs is processed.
                let mut batch = vec![first];
                while let Some(Ok(more)) = retransmissions.accept().now_or_never() {
                    batch.push(more);
                }
                let now = sim_now();
                let mut stats = lock(&shared.stats);
                let mut q = lock(&queue.queue);
                if !k.two_stage {
                    for (stream, peer) in batch {
                        stats.syns += 1;
                        if q.is_full() {
                            stats.syns_dropped += 1;
                        } else if let Some(conn) = syn_ack(&k, stream, peer) {
                            q.ready.push_back(conn);
                            queue.notify.notify_one();
                        }
                    }
                    continue;
                }
                let syn_passes = !q.is_full();
                let mut answered = Vec::with_capacity(batch.len());
                for (stream, peer) in batch {
                    stats.syns += 1;
                    if !syn_passes {
                        stats.syns_dropped += 1;
                    } else if let Some(conn) = syn_ack(&k, stream, peer) {
                        answered.push(conn);
                    }
                }
                for conn in answered {
                    if q.is_full() {
                        stats.acks_dropped += 1;
                        order += 1;
                        let due = k.wheel_expiry_on(Some(conn.1.ip()), now, k.data_rto);
                        half_open.insert((due, order), HalfOpen { conn, since: now, rto: k.data_rto });
                    } else {
                        q.ready.push_back(conn);
                        queue.notify.notify_one();
                    }
                }
                stats.accept_queue_peak = stats.accept_queue_peak.max(q.ready.len() as u64);
            }
            _ = sleep_opt(sleep_for) => {
                let now = sim_now();
                let mut stats = lock(&shared.stats);
                let mut q = lock(&queue.queue);
                while let Some(entry) = half_open.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let mut h = entry.remove();
                    if now.saturating_sub(h.since) >= k.half_open_lifetime {
                        stats.half_open_expired += 1;
                        continue;
                    }
                    if q.is_full() {
                        h.rto = h.rto.saturating_mul(2);
                        order += 1;
                        let due = k.wheel_expiry_on(Some(h.conn.1.ip()), now, h.rto);
                        half_open.insert((due, order), h);
                    } else {
                        stats.half_open_recovered += 1;
                        q.ready.push_back(h.conn);
                        queue.notify.notify_one();
                    }
                }
                stats.accept_queue_peak = stats.accept_queue_peak.max(q.ready.len() as u64);
            }
        }
    }
}

/// Answers a SYN: writes the SYN-ACK marker and leaves the connection's
/// window where the client's end will find it.
fn syn_ack(
    k: &KernelParams,
    stream: turmoil::net::TcpStream,
    peer: SocketAddr,
) -> Option<Established> {
    stream.try_write(&[SYN_ACK]).ok()?;
    let window = Arc::new(FlowWindow::new(k.receive_window));
    if let Ok(local) = stream.local_addr() {
        k.flows.offer(peer, local, &window);
    }
    Some((stream, peer, window))
}

/// Where a client sends a *retransmitted* SYN: a side port of the same
/// listener, so the kernel task can tell a batch fired by a timer-wheel
/// slot from connects issued one by one (turmoil's SYN carries nothing
/// else). The gateway never sees the difference.
pub fn retransmission_addr(addr: SocketAddr) -> SocketAddr {
    let port = addr
        .port()
        .checked_add(RETRANSMISSION_PORT_OFFSET)
        .unwrap_or(addr.port());
    SocketAddr::new(addr.ip(), port)
}

/// Offset of the retransmission side port.
pub const RETRANSMISSION_PORT_OFFSET: u16 = 10_000;

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_wheel_rounds_long_timers_to_coarse_slots() {
        let k = KernelParams::default();
        // 1 s at HZ=250 is 250 jiffies: level 1, 8-jiffy (32 ms) slots.
        let a = k.wheel_expiry(Duration::from_millis(1), Duration::from_secs(1));
        let b = k.wheel_expiry(Duration::from_millis(20), Duration::from_secs(1));
        assert_eq!(a, b, "SYNs sent 19 ms apart retransmit together");
        assert!(a >= Duration::from_millis(1001) && a <= Duration::from_millis(1001 + 32));
        // Short timers (level 0) keep jiffy precision.
        let c = k.wheel_expiry(Duration::ZERO, Duration::from_millis(200));
        assert_eq!(c, Duration::from_millis(200));
    }

    #[test]
    fn service_time_grows_with_held_connections() {
        let p = AcceptPath {
            base: Duration::from_millis(1),
            per_connection: Duration::from_micros(1),
            stall_at: None,
        };
        assert_eq!(p.service_time(1000), Duration::from_millis(2));
    }
}
