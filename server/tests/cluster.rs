//! Several gateways on a NATS cluster behind HAProxy, all real processes
//! on loopback, started from `deploy/cluster/`: a 3-node JetStream
//! cluster holding the stream at 3 replicas, three `surge` gateways and
//! HAProxy probing each gateway's readiness.
//!
//! Clients connect through HAProxy and, when they lose their gateway,
//! reconnect through it and `resume` from the last stream sequence they
//! processed. Every test ends with each client having received every
//! message of the stream exactly once and in order, checked against the
//! stream's own last sequence.

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/http.rs"]
mod http;
#[path = "common/nats_server.rs"]
mod nats_server;
#[path = "common/ports.rs"]
mod ports;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use cluster::{Gateway, Haproxy, NatsCluster};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const STREAM: &str = "ODIN_TOKENS";
const SUBJECT: &str = "odin.token.BTC.trade";

/// One cluster test at a time: each runs seven processes.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The JetStream context of an independent publisher, once the cluster
/// has elected its metadata leader (streams can be created from then on).
async fn jetstream_ready(nats: &NatsCluster) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(
            nats.urls()
                .split(',')
                .map(|u| u.parse().expect("a NATS URL"))
                .collect::<Vec<async_nats::ServerAddr>>(),
        )
        .await
        .expect("the producer connects");
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(20);
    // A "stream not found" is JetStream answering; no responders or a
    // timeout is a cluster without a metadata leader yet.
    let answering = |r: &Result<_, jetstream::context::GetStreamError>| match r {
        Ok(_) => true,
        Err(e) => matches!(
            e.kind(),
            jetstream::context::GetStreamErrorKind::JetStream(_)
        ),
    };
    loop {
        let probe = js.get_stream(STREAM).await;
        if answering(&probe) {
            break;
        }
        let e = probe.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "JetStream never became ready ({e}):\n{}",
            nats.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    js
}

/// Three gateways on the cluster, the stream at three replicas.
fn gateways(nats: &NatsCluster, extra: &[&[(&str, &str)]; 3]) -> [Gateway; 3] {
    let urls = nats.urls();
    let start = |extra: &[(&str, &str)]| {
        let mut env = vec![
            ("SURGE_NATS_URL", urls.as_str()),
            ("SURGE_JS_REPLICAS", "3"),
            ("SURGE_MAX_CONNECTIONS", "1000"),
        ];
        env.extend_from_slice(extra);
        Gateway::start(&env)
    };
    [start(extra[0]), start(extra[1]), start(extra[2])]
}

/// Until HAProxy's probes have seen every gateway ready (`rise 2` at
/// 250 ms).
async fn balancer_settled() {
    tokio::time::sleep(Duration::from_millis(1200)).await;
}

/// What one client experienced.
#[derive(Debug, Default)]
struct Outcome {
    /// Stream sequences of the messages received, in arrival order.
    sseqs: Vec<u64>,
    /// Upgrades that succeeded.
    connections: u32,
    /// How each connection ended (`None`: without a Close frame).
    closes: Vec<Option<u16>>,
    /// 503s met while reconnecting.
    refusals: u32,
    /// `resume_gap` frames (none may come while the stream retains all).
    gaps: Vec<Value>,
}

/// A client that subscribes through the balancer, processes messages in
/// order, and after losing its connection reconnects through the balancer
/// and resumes from the last sequence it processed, until it has reached
/// `until` (set by the test once publishing is over) or `deadline`.
async fn resuming_client(lb: SocketAddr, until: Arc<AtomicU64>, deadline: Instant) -> Outcome {
    let mut out = Outcome::default();
    let mut last: u64 = 0;
    let mut epoch: Option<String> = None;
    let reached = |last: u64| {
        let until = until.load(Ordering::SeqCst);
        until != 0 && last >= until
    };
    while !reached(last) && Instant::now() < deadline {
        let url = format!("ws://{lb}/ws");
        let mut ws = match tokio::time::timeout(
            Duration::from_secs(3),
            tokio_tungstenite::connect_async(url),
        )
        .await
        {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(WsError::Http(response))) => {
                assert_eq!(response.status(), 503, "an unexpected refusal");
                out.refusals += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Ok(Err(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => panic!("an upgrade through the balancer hung for 3 s"),
        };
        out.connections += 1;
        let request = if out.connections == 1 {
            json!({"type": "subscribe", "channels": ["odin.token.>"]})
        } else {
            json!({"type": "resume", "channels": ["odin.token.>"], "since_sseq": last, "epoch": epoch})
        };
        let mut seq = 0u64;
        let mut sent = false;
        let close = loop {
            let frame = match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                Err(_) if reached(last) || Instant::now() >= deadline => break Some(1000),
                Err(_) => continue,
                Ok(frame) => frame,
            };
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let v: Value = serde_json::from_str(text.as_str()).expect("JSON");
                    match v["type"].as_str().unwrap_or_default() {
                        "welcome" => {
                            if let Some(e) = v["epoch"].as_str() {
                                epoch = Some(e.to_owned());
                            }
                            if !sent {
                                ws.send(Message::Text(request.to_string().into()))
                                    .await
                                    .expect("send");
                                sent = true;
                            }
                        }
                        "message" => {
                            let s = v["seq"].as_u64().expect("seq");
                            assert!(s > seq, "seq went back on one connection: {s} after {seq}");
                            seq = s;
                            let sseq = v["sseq"].as_u64().expect("sseq");
                            out.sseqs.push(sseq);
                            last = last.max(sseq);
                        }
                        "resume_gap" => out.gaps.push(v),
                        "error" if v["code"] == "broker_unavailable" => {
                            // The gateway has lost its broker for now: ask again.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            let again = json!({"type": "resume", "channels": ["odin.token.>"], "since_sseq": last, "epoch": epoch});
                            ws.send(Message::Text(again.to_string().into()))
                                .await
                                .expect("send");
                        }
                        "error" => panic!("an error frame: {v}"),
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break None,
            }
        };
        out.closes.push(close);
        if reached(last) {
            let _ = ws.close(None).await;
            // The close above is the client's own, not the gateway's.
            out.closes.pop();
        }
    }
    out
}

/// Publishes every `every` until `stop`; counts the acknowledged ones in
/// `acked` as they come.
async fn publish_until(
    js: jetstream::Context,
    stop: Arc<AtomicBool>,
    every: Duration,
    acked: Arc<AtomicU64>,
) -> u64 {
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let publish = async {
            let ack = js
                .publish(SUBJECT, json!({"i": i}).to_string().into())
                .await
                .ok()?;
            ack.await.ok()
        };
        if publish.await.is_some() {
            acked.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(every).await;
    }
    acked.load(Ordering::SeqCst)
}

async fn last_sequence(js: &jetstream::Context) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(mut stream) = js.get_stream(STREAM).await
            && let Ok(info) = stream.info().await
        {
            return info.state.last_sequence;
        }
        assert!(Instant::now() < deadline, "the stream never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clients resuming through the balancer and a publisher feeding the
/// stream: what every failure test runs while it breaks something.
struct Traffic {
    until: Arc<AtomicU64>,
    clients: Vec<tokio::task::JoinHandle<Outcome>>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    publisher: tokio::task::JoinHandle<u64>,
}

impl Traffic {
    /// `clients` clients (given `within` to reach the end), then, once they
    /// have subscribed, a publish every 5 ms.
    async fn start(
        lb: SocketAddr,
        js: &jetstream::Context,
        clients: usize,
        within: Duration,
    ) -> Traffic {
        let until = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + within;
        let clients = (0..clients)
            .map(|_| tokio::spawn(resuming_client(lb, Arc::clone(&until), deadline)))
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let publisher = tokio::spawn(publish_until(
            js.clone(),
            Arc::clone(&stop),
            Duration::from_millis(5),
            Arc::clone(&acked),
        ));
        Traffic {
            until,
            clients,
            stop,
            acked,
            publisher,
        }
    }

    /// Publishes acknowledged so far.
    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Stops publishing, lets every client read up to the stream's last
    /// sequence, and returns what each experienced, that sequence and the
    /// acknowledged count.
    async fn finish(self, js: &jetstream::Context) -> (Vec<Outcome>, u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let acked = self.publisher.await.expect("publisher");
        let last = last_sequence(js).await;
        self.until.store(last, Ordering::SeqCst);
        let mut outcomes = Vec::new();
        for c in self.clients {
            outcomes.push(c.await.expect("client"));
        }
        (outcomes, last, acked)
    }
}

/// Asserts every client got each of `1..=last` once, in order, and prints
/// the figures.
fn assert_exactly_once(name: &str, outcomes: &[Outcome], last: u64, acked: u64) {
    assert!(
        acked > 50 && last >= acked,
        "{name}: acked {acked}, stream last {last}"
    );
    let expected: Vec<u64> = (1..=last).collect();
    for (i, o) in outcomes.iter().enumerate() {
        let mut sorted = o.sseqs.clone();
        sorted.dedup();
        let duplicated = o.sseqs.len() - sorted.len();
        let lost = expected.len().saturating_sub(sorted.len());
        eprintln!(
            "{name}: client {i}: published {last} (acked {acked}), received {}, lost {lost}, duplicated {duplicated}, connections {}, closes {:?}, refusals {}",
            o.sseqs.len(),
            o.connections,
            o.closes,
            o.refusals
        );
        assert!(o.gaps.is_empty(), "{name}: client {i}: gaps {:?}", o.gaps);
        assert_eq!(
            o.sseqs, expected,
            "{name}: client {i}: every message once, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_loses_nothing_and_keeps_clients_connected() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut nats = NatsCluster::start();
    let js = jetstream_ready(&nats).await;
    let gws = gateways(&nats, &[&[], &[], &[]]);
    let lb = Haproxy::start([gws[0].ws, gws[1].ws, gws[2].ws]);
    balancer_settled().await;

    let traffic = Traffic::start(lb.addr, &js, 6, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let leader = {
        let mut stream = js.get_stream(STREAM).await.expect("stream");
        let info = stream.info().await.expect("info");
        let cluster = info.cluster.clone().expect("a clustered stream");
        assert_eq!(info.config.num_replicas, 3, "the stream is at 3 replicas");
        cluster.leader.expect("the stream has a leader")
    };
    let killed = nats.index_of(&leader);
    nats.kill(killed);
    let before = traffic.acked();
    eprintln!("killed the stream leader {leader} after {before} acknowledged publishes");
    // Publishing goes on through the election and after it.
    let killed_at = Instant::now();
    while traffic.acked() < before + 100 {
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "publishing never resumed: {} acknowledged, {before} before the kill",
            traffic.acked()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "100 publishes acknowledged {:?} after the kill",
        killed_at.elapsed()
    );
    let (outcomes, last, acked) = traffic.finish(&js).await;
    assert_exactly_once("leader killed", &outcomes, last, acked);
    for (i, o) in outcomes.iter().enumerate() {
        assert_eq!(
            (o.connections, o.closes.len()),
            (1, 0),
            "client {i} stayed on its first connection"
        );
    }
    nats.restart(killed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_s_clients_resume_on_the_others_through_haproxy() {
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = NatsCluster::start();
    let js = jetstream_ready(&nats).await;
    let mut gws = gateways(&nats, &[&[], &[], &[]]);
    let lb = Haproxy::start([gws[0].ws, gws[1].ws, gws[2].ws]);
    balancer_settled().await;

    let traffic = Traffic::start(lb.addr, &js, 9, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gws[0].kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (outcomes, last, acked) = traffic.finish(&js).await;
    assert_exactly_once("gateway killed", &outcomes, last, acked);
    // leastconn spread nine clients over three gateways: the killed one's
    // clients moved, and only they did.
    let moved = outcomes.iter().filter(|o| o.connections > 1).count();
    assert!(
        (1..=4).contains(&moved),
        "{moved} clients reconnected: {outcomes:?}"
    );
    for o in outcomes.iter().filter(|o| o.connections > 1) {
        assert_eq!(o.closes, [None], "a crash is a lost connection: {o:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_moves_clients_with_1001_and_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = NatsCluster::start();
    let js = jetstream_ready(&nats).await;
    let delay: &[(&str, &str)] = &[("SURGE_SHUTDOWN_DELAY", "1s")];
    let mut gws = gateways(&nats, &[delay, delay, delay]);
    let lb = Haproxy::start([gws[0].ws, gws[1].ws, gws[2].ws]);
    balancer_settled().await;

    let traffic = Traffic::start(lb.addr, &js, 6, Duration::from_secs(90)).await;
    for gw in gws.iter_mut() {
        tokio::time::sleep(Duration::from_millis(700)).await;
        gw.terminate();
        // Readiness drops first, while its clients are still connected.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let probe = get(gw.ws, "/healthz").await.0;
        assert_eq!(probe, 503, "readiness during the shutdown delay");
        let status = tokio::task::block_in_place(|| gw.wait_exit(Duration::from_secs(20)));
        assert!(status.success(), "SIGTERM exits 0: {status}");
        gw.restart();
        balancer_settled().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (outcomes, last, acked) = traffic.finish(&js).await;
    assert_exactly_once("rolling restart", &outcomes, last, acked);
    let moved: usize = outcomes.iter().map(|o| o.closes.len()).sum();
    assert!(moved >= 6, "every client moved at least once: {outcomes:?}");
    for o in &outcomes {
        assert!(
            o.closes.iter().all(|c| *c == Some(1001)),
            "a drain closes with 1001: {o:?}"
        );
    }
    eprintln!(
        "{}",
        lb.log()
            .lines()
            .filter(|l| l.contains("DOWN") || l.contains("UP"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// `GET /healthz` on a gateway's public port: the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_gateway_is_skipped_and_nobody_times_out() {
    let _one = ONE_AT_A_TIME.lock().await;
    let nats = NatsCluster::start();
    let _js = jetstream_ready(&nats).await;
    let small: &[(&str, &str)] = &[("SURGE_MAX_CONNECTIONS", "5")];
    let gws = gateways(&nats, &[small, &[], &[]]);
    let lb = Haproxy::start([gws[0].ws, gws[1].ws, gws[2].ws]);
    balancer_settled().await;

    let mut held = Vec::new();
    let mut refusals = 0;
    for i in 0..60 {
        let started = Instant::now();
        loop {
            let attempt = tokio::time::timeout(
                Duration::from_secs(3),
                tokio_tungstenite::connect_async(format!("ws://{}/ws", lb.addr)),
            )
            .await
            .unwrap_or_else(|_| panic!("client {i}: an upgrade hung for 3 s"));
            match attempt {
                Ok((ws, _)) => {
                    held.push(ws);
                    break;
                }
                Err(WsError::Http(r)) if r.status() == 503 => refusals += 1,
                Err(e) => panic!("client {i}: {e}"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "client {i} kept being refused"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut live = Vec::new();
    for gw in &gws {
        let (status, body) = get(gw.admin, "/health").await;
        let health: Value = serde_json::from_str(&body).expect("health");
        live.push(health["connections"]["current"].as_u64().expect("current"));
        let _ = status;
    }
    eprintln!("full gateway: live per gateway {live:?}, 503s met {refusals}");
    assert_eq!(live.iter().sum::<u64>(), 60, "{live:?}");
    assert!(
        live[0] <= 5,
        "the small gateway holds at most its maximum: {live:?}"
    );
    assert!(
        live[1] > 20 && live[2] > 20,
        "the others took the rest: {live:?}"
    );
}

/// `GET path` on `addr` (an admin listener, or a public one's `/healthz`):
/// status and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(http::request(addr, "GET", path, "").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("answer")
        .expect("read");
    http::parse(&out)
}
