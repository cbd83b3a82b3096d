//! Metrics that only move on rare paths, driven down those paths and read
//! back by value: the live seam of a resume, the resource guard's pause,
//! failing accepts.

mod common;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use surge_core::admission::ResourceSample;
use surge_core::protocol::{Priority, Published};
use surge_core::subjects::{Pattern, Subject};
use surge_runtime::broker::BoxFuture;
use surge_runtime::tcp::TcpTransport;
use surge_runtime::{Broker, BrokerError, Fetched, Gateway, Hub, Listener, Transport};
use tokio::sync::{Semaphore, mpsc};

use common::{WAIT, client, metric, next_json, raw, send, start, start_with, subscribe, upgrade};

/// A broker whose two paths to a session the test steers, as a real
/// broker's timing can arrange them: a message can be stored without being
/// delivered live yet (a NATS consumer behind the stream), and a resume's
/// read waits until the test lets it go.
struct SteeredBroker {
    hub: Hub,
    log: Mutex<Vec<Arc<Published>>>,
    /// Each resume read takes one permit before it reads the log.
    reads: Semaphore,
    /// Told when a resume read starts, that is once the resuming session
    /// has subscribed.
    read_started: mpsc::UnboundedSender<()>,
}

const STEERED_EPOCH: &str = "steered-1";

impl SteeredBroker {
    /// Stores a message in the stream without delivering it live.
    fn store(&self, subject: &str, data: Value) -> Arc<Published> {
        let mut log = self.log.lock().expect("log");
        let message = Published::new(
            Subject::parse(subject).expect("subject"),
            log.len() as u64 + 1,
            Priority::Medium,
            data.to_string().as_bytes(),
        );
        log.push(Arc::clone(&message));
        message
    }

    /// Delivers a stored message live, late.
    async fn deliver(&self, message: &Arc<Published>) {
        assert!(self.hub.dispatch(Arc::clone(message)).await);
    }
}

impl Broker for SteeredBroker {
    fn kind(&self) -> &'static str {
        "steered"
    }

    fn connected(&self) -> bool {
        true
    }

    fn epoch(&self) -> Option<String> {
        Some(STEERED_EPOCH.to_owned())
    }

    fn publish(
        &self,
        subject: Subject,
        data: Bytes,
        _priority: Priority,
    ) -> BoxFuture<'_, Result<u64, BrokerError>> {
        Box::pin(async move {
            let data: Value = serde_json::from_slice(&data).expect("JSON");
            let message = self.store(subject.as_str(), data);
            self.deliver(&message).await;
            Ok(message.sseq)
        })
    }

    fn fetch(
        &self,
        patterns: Vec<Pattern>,
        since_sseq: u64,
    ) -> BoxFuture<'_, Result<Fetched, BrokerError>> {
        Box::pin(async move {
            let _ = self.read_started.send(());
            self.reads.acquire().await.expect("open").forget();
            let log = self.log.lock().expect("log");
            Ok(Fetched {
                first_retained: log.first().map(|m| m.sseq),
                messages: log
                    .iter()
                    .filter(|m| {
                        m.sseq > since_sseq && patterns.iter().any(|p| p.matches(&m.subject))
                    })
                    .cloned()
                    .collect(),
                last_sseq: log.len() as u64,
                epoch: STEERED_EPOCH.to_owned(),
            })
        })
    }
}

/// A one-shard gateway over TCP with a [`SteeredBroker`], and the receiver
/// of its read-started notices.
async fn steered() -> (Gateway, Arc<SteeredBroker>, mpsc::UnboundedReceiver<()>) {
    let (read_started, started) = mpsc::unbounded_channel();
    let mut made = None;
    let gw = start_with(
        &common::tcp(),
        |c| c.shards = 1,
        |hub, _clock| {
            let broker = Arc::new(SteeredBroker {
                hub,
                log: Mutex::new(Vec::new()),
                reads: Semaphore::new(0),
                read_started,
            });
            made = Some(Arc::clone(&broker));
            broker as Arc<dyn Broker>
        },
    )
    .await;
    (gw, made.expect("the gateway built its broker"), started)
}

/// `(seq, sseq, recovered)` of a `message` frame.
fn numbers(m: &Value) -> (u64, u64, bool) {
    assert_eq!(m["type"], "message", "{m}");
    (
        m["seq"].as_u64().expect("seq"),
        m["sseq"].as_u64().expect("sseq"),
        m["recovered"] == true,
    )
}

/// The live consumer lags behind the stream: a resume recovers messages
/// whose live copies arrive only afterwards. The client gets each once,
/// and the live copies it already had are counted as deduplicated.
#[tokio::test]
async fn live_copies_arriving_after_a_resume_recovered_them_are_dropped_and_counted() {
    let (gw, broker, _started) = steered().await;
    let late: Vec<_> = (1..=3).map(|i| broker.store("x.a", json!(i))).collect();
    broker.store("x.b", json!("other channel"));
    broker.reads.add_permits(1);
    let mut ws = client(gw.local_addr()).await;
    send(
        &mut ws,
        json!({"type":"resume","id":7,"channels":["x.a"],"since_sseq":0,"epoch":STEERED_EPOCH}),
    )
    .await;
    for sseq in 1..=3 {
        assert_eq!(numbers(&next_json(&mut ws).await), (sseq, sseq, true));
    }
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type":"resumed","id":7,"channels":["x.a"],"last_sseq":4,"epoch":STEERED_EPOCH})
    );
    assert_eq!(metric(&gw, "surge_messages_deduplicated_total"), 0.0);
    for message in &late {
        broker.deliver(message).await;
    }
    // Messages reach the shard in stream order: this one arrives after
    // the three late copies were handled.
    assert_eq!(common::publish(&gw, "x.a", json!(5)).await, 5);
    assert_eq!(numbers(&next_json(&mut ws).await), (4, 5, false));
    assert_eq!(metric(&gw, "surge_messages_deduplicated_total"), 3.0);
    assert_eq!(metric(&gw, "surge_messages_recovered_total"), 3.0);
    gw.shutdown(Duration::from_secs(2)).await;
}

/// Messages published while a resume's read is out are held live, and the
/// read then recovers them too: they reach the client once, as recovered,
/// and the held copies are counted as deduplicated.
#[tokio::test]
async fn live_messages_held_during_a_resume_that_recovers_them_are_dropped_and_counted() {
    let (gw, broker, mut started) = steered().await;
    let addr = gw.local_addr();
    let mut watcher = client(addr).await;
    subscribe(&mut watcher, &["x.a"]).await;
    let mut resuming = client(addr).await;
    send(
        &mut resuming,
        json!({"type":"resume","id":1,"channels":["x.a"],"since_sseq":0}),
    )
    .await;
    tokio::time::timeout(WAIT, started.recv())
        .await
        .expect("the resume's read starts")
        .expect("open");
    for i in 1..=2 {
        common::publish(&gw, "x.a", json!(i)).await;
    }
    // One shard queues a message for every subscriber before writing any:
    // once the watcher has both, the resuming session holds both.
    for sseq in 1..=2 {
        assert_eq!(numbers(&next_json(&mut watcher).await), (sseq, sseq, false));
    }
    broker.reads.add_permits(1);
    for sseq in 1..=2 {
        assert_eq!(numbers(&next_json(&mut resuming).await), (sseq, sseq, true));
    }
    assert_eq!(
        next_json(&mut resuming).await,
        json!({"type":"resumed","id":1,"channels":["x.a"],"last_sseq":2,"epoch":STEERED_EPOCH})
    );
    common::publish(&gw, "x.a", json!(3)).await;
    assert_eq!(numbers(&next_json(&mut resuming).await), (3, 3, false));
    assert_eq!(metric(&gw, "surge_messages_deduplicated_total"), 2.0);
    gw.shutdown(Duration::from_secs(2)).await;
}

/// CPU over the pause threshold pauses the broker only once a whole CPU
/// window of samples exists, and the gauges show what the guard was given.
#[tokio::test]
async fn the_guard_pauses_the_broker_after_a_whole_cpu_window_and_the_gauges_show_it() {
    const WINDOW: Duration = Duration::from_millis(200);
    let gw = start(|c| {
        c.guard.cpu_window = WINDOW;
        c.guard.cpu_reject_percent = 75.0;
        c.guard.cpu_pause_percent = 80.0;
    })
    .await;
    let sample = |cpu_percent, memory_bytes| ResourceSample {
        cpu_percent,
        memory_bytes,
    };
    assert_eq!(metric(&gw, "surge_broker_paused"), 0.0);
    assert_eq!(metric(&gw, "surge_cpu_percent"), 0.0);
    assert_eq!(metric(&gw, "surge_memory_bytes"), 0.0);

    gw.observe(sample(90.4, 123_456_789));
    // One sample is no window yet.
    assert_eq!(metric(&gw, "surge_broker_paused"), 0.0);
    assert_eq!(metric(&gw, "surge_cpu_percent"), 90.0);
    assert_eq!(metric(&gw, "surge_memory_bytes"), 123_456_789.0);
    assert!(!gw.health().broker.paused);

    tokio::time::sleep(WINDOW + Duration::from_millis(50)).await;
    gw.observe(sample(90.4, 234_567_890));
    assert_eq!(metric(&gw, "surge_broker_paused"), 1.0);
    assert_eq!(metric(&gw, "surge_cpu_percent"), 90.0);
    assert_eq!(metric(&gw, "surge_memory_bytes"), 234_567_890.0);
    let health = gw.health();
    assert!(health.broker.paused);
    assert_eq!(health.cpu_percent, 90.4);
    assert_eq!(health.memory_bytes, 234_567_890);
    assert_eq!(health.status, "degraded");
    // Above the reject threshold too: new connections get 503.
    let answer = raw(
        gw.local_addr(),
        &upgrade("/ws", "Sec-WebSocket-Version: 13\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
    assert_eq!(
        metric(&gw, "surge_admission_rejections_total{reason=\"cpu\"}"),
        1.0
    );

    // A window later only the quiet sample counts: consumption resumes.
    tokio::time::sleep(WINDOW + Duration::from_millis(50)).await;
    gw.observe(sample(10.0, 50_000_000));
    assert_eq!(metric(&gw, "surge_broker_paused"), 0.0);
    assert_eq!(metric(&gw, "surge_cpu_percent"), 10.0);
    assert_eq!(metric(&gw, "surge_memory_bytes"), 50_000_000.0);
    assert!(!gw.health().broker.paused);
    gw.shutdown(Duration::from_secs(2)).await;
}

/// TCP whose listener turns the first `failures` accepted connections
/// into accept errors, as `accept()` reports a connection aborted before
/// it was taken.
struct FlakyAccepts {
    tcp: TcpTransport,
    failures: Arc<AtomicU32>,
}

struct FlakyListener {
    inner: <TcpTransport as Transport>::Listener,
    failures: Arc<AtomicU32>,
}

impl Transport for FlakyAccepts {
    type Stream = <TcpTransport as Transport>::Stream;
    type Listener = FlakyListener;
    type Poller = <TcpTransport as Transport>::Poller;

    fn poller(&self) -> io::Result<Self::Poller> {
        self.tcp.poller()
    }

    async fn bind(&self, addr: SocketAddr, backlog: u32) -> io::Result<FlakyListener> {
        Ok(FlakyListener {
            inner: self.tcp.bind(addr, backlog).await?,
            failures: Arc::clone(&self.failures),
        })
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Stream> {
        self.tcp.connect(addr).await
    }
}

impl Listener for FlakyListener {
    type Stream = <TcpTransport as Transport>::Stream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, peer) = self.inner.accept().await?;
        let fail = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            drop(stream);
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        Ok((stream, peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Each failed accept is counted, and the acceptor goes on accepting.
#[tokio::test]
async fn failed_accepts_are_counted_and_accepting_goes_on() {
    let failures = Arc::new(AtomicU32::new(3));
    let transport = FlakyAccepts {
        tcp: common::tcp(),
        failures: Arc::clone(&failures),
    };
    let gw = start_with(&transport, |_| {}, common::embedded).await;
    let addr = gw.local_addr();
    assert_eq!(metric(&gw, "surge_accept_errors_total"), 0.0);
    for _ in 0..3 {
        // Closed without an answer: the connection failed in accept.
        let answer = raw(addr, &upgrade("/ws", "Sec-WebSocket-Version: 13\r\n")).await;
        assert_eq!(answer, "");
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    let mut ws = client(addr).await;
    send(&mut ws, json!({"type":"ping"})).await;
    assert_eq!(next_json(&mut ws).await, json!({"type":"pong"}));
    assert_eq!(metric(&gw, "surge_accept_errors_total"), 3.0);
    assert_eq!(metric(&gw, "surge_connections"), 1.0);
    gw.shutdown(Duration::from_secs(2)).await;
}

/// The gauges and counters the dashboard and the alert rules read: each
/// read back by value before and after the event that moves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_gauges_follow_the_shards_the_broker_the_bytes_sent_and_readiness() {
    let gw = start(|c| c.guard.memory_reject_bytes = Some(1 << 30)).await;
    // Known label values exist at 0 before anything happened.
    assert_eq!(
        metric(&gw, "surge_admission_rejections_total{reason=\"full\"}"),
        0.0
    );
    assert_eq!(
        metric(&gw, "surge_handshakes_total{outcome=\"timeout\"}"),
        0.0
    );
    assert_eq!(
        metric(&gw, "surge_messages_dropped_total{reason=\"throttled\"}"),
        0.0
    );
    assert_eq!(
        metric(&gw, "surge_shard_connections_max{shard=\"0\"}"),
        50.0
    );
    assert_eq!(
        metric(&gw, "surge_memory_reject_bytes"),
        (1u64 << 30) as f64
    );
    assert_eq!(metric(&gw, "surge_ready"), 1.0);
    assert_eq!(metric(&gw, "surge_broker_last_sseq"), 0.0);
    assert_eq!(metric(&gw, "surge_bytes_sent_total"), 0.0);

    let mut ws = client(gw.local_addr()).await;
    subscribe(&mut ws, &["odin.token.>"]).await;
    let sent = metric(&gw, "surge_bytes_sent_total");
    assert!(sent > 0.0, "welcome and subscribed were written");
    assert_eq!(metric(&gw, "surge_shard_imbalance_percent"), 2.0);
    for i in 0..3 {
        common::publish(&gw, "odin.token.BTC.trade", json!({ "i": i })).await;
    }
    for _ in 0..3 {
        assert_eq!(next_json(&mut ws).await["type"], "message");
    }
    assert_eq!(metric(&gw, "surge_broker_last_sseq"), 3.0);
    assert_eq!(metric(&gw, "surge_broker_stream_last_sseq"), 3.0);
    assert!(metric(&gw, "surge_bytes_sent_total") > sent + 3.0 * 20.0);

    gw.begin_drain();
    assert_eq!(metric(&gw, "surge_ready"), 0.0);
    gw.shutdown(Duration::from_secs(2)).await;
}
