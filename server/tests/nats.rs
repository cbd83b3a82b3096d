//! The NATS JetStream bridge end to end: a real `nats-server -js` per test,
//! the real `surge` binary, real WebSocket clients, and async-nats as an
//! independent producer.

#[path = "common/http.rs"]
mod http;
#[path = "common/nats_server.rs"]
mod nats_server;
#[path = "common/ports.rs"]
mod ports;
#[path = "common/surge.rs"]
mod surge;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use futures_util::{SinkExt, StreamExt};
use nats_server::{NatsServer, free_port, temp_dir};
use serde_json::{Value, json};
use surge::{Surge, embedded_command, http, surge_command};
use tokio_tungstenite::tungstenite::Message;

/// Runs surge against NATS until it exits (it is expected to fail).
fn surge_exits(nats: &NatsServer, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = temp_dir("surge-fail");
    let mut child = surge_command(nats, env, &dir)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("surge starts");
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("surge did not exit within 15 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client of the gateway.
struct Client {
    ws: Ws,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client::welcomed(addr).await.0
    }

    /// Connects; the client and its `welcome` frame.
    async fn welcomed(addr: SocketAddr) -> (Client, Value) {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("upgrade");
        let mut client = Client { ws };
        let welcome = client.next(Duration::from_secs(5)).await;
        assert_eq!(
            welcome.as_ref().map(|w| &w["type"]),
            Some(&json!("welcome"))
        );
        (client, welcome.unwrap_or_default())
    }

    async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("send");
    }

    /// The next JSON frame, `None` on timeout. Panics if the server closes.
    async fn next(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match frame {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(t.as_str()).expect("JSON frame"));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("the gateway closed or sent something else: {other:?}"),
            }
        }
    }

    async fn subscribe(&mut self, channels: &[&str]) {
        self.send(json!({"type":"subscribe","channels":channels}))
            .await;
        let answer = self.next(Duration::from_secs(5)).await;
        assert_eq!(
            answer.as_ref().map(|a| &a["type"]),
            Some(&json!("subscribed")),
            "{answer:?}"
        );
    }

    /// `message` frames until `n` have arrived; panics after `within`.
    async fn messages(&mut self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(m) if m["type"] == "message" => out.push(m),
                Some(other) => panic!("unexpected frame {other}"),
                None => panic!(
                    "only {} of {n} messages within {within:?}; last: {:?}",
                    out.len(),
                    out.last()
                ),
            }
        }
        out
    }

    /// Nothing more arrives for `quiet`.
    async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(extra) = self.next(quiet).await {
            panic!("unexpected extra frame {extra}");
        }
    }

    async fn ping(&mut self) {
        self.send(json!({"type":"ping"})).await;
        let answer = self.next(Duration::from_secs(5)).await;
        assert_eq!(answer.map(|a| a["type"].clone()), Some(json!("pong")));
    }
}

/// An independent publisher.
struct Producer {
    js: jetstream::Context,
}

impl Producer {
    async fn connect(nats: &NatsServer) -> Producer {
        let client = async_nats::ConnectOptions::new()
            .reconnect_delay_callback(|_| Duration::from_millis(100))
            .connect(nats.url())
            .await
            .expect("producer connects");
        let mut js = jetstream::new(client);
        js.set_timeout(Duration::from_secs(2));
        Producer { js }
    }

    /// Publishes and waits for the ack; the stream sequence.
    async fn try_publish(&self, subject: &str, data: Value, priority: Option<&str>) -> Option<u64> {
        let mut headers = HeaderMap::new();
        if let Some(p) = priority {
            headers.insert("Surge-Priority", p);
        }
        let ack = self
            .js
            .publish_with_headers(subject.to_owned(), headers, data.to_string().into())
            .await
            .ok()?;
        ack.await.ok().map(|a| a.sequence)
    }

    async fn publish(&self, subject: &str, data: Value) -> u64 {
        self.try_publish(subject, data, None)
            .await
            .unwrap_or_else(|| panic!("publish to {subject} failed"))
    }

    async fn stream(&self, name: &str) -> stream::Info {
        let mut s = self.js.get_stream(name).await.expect("the stream exists");
        s.info().await.expect("stream info").clone()
    }
}

fn sseqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["sseq"].as_u64().expect("sseq"))
        .collect()
}

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_matching_message_with_its_stream_sequence_and_wildcards() {
    let nats = NatsServer::start();
    let surge = Surge::start(&nats, &[]);
    let (status, health) = surge.health().await;
    assert_eq!(
        health["broker"],
        json!({"kind": "nats", "connected": true, "paused": false}),
        "{status} {health}"
    );
    let mut trades = Client::connect(surge.ws).await;
    trades.subscribe(&["odin.token.*.trade"]).await;
    let mut global = Client::connect(surge.ws).await;
    global.subscribe(&["odin.global.>"]).await;
    let mut btc = Client::connect(surge.ws).await;
    btc.subscribe(&["odin.token.BTC.trade"]).await;
    let mut all = Client::connect(surge.ws).await;
    all.subscribe(&["odin.>"]).await;

    let producer = Producer::connect(&nats).await;
    let plan = [
        ("odin.token.BTC.trade", Some("critical")),
        ("odin.token.ETH.trade", None),
        ("odin.token.BTC.liquidity", Some("low")),
        ("odin.global.trending", Some("high")),
        ("odin.token.SOL.trade", None),
        ("odin.global.alerts.halt", None),
        ("odin.token.BTC.trade", Some("medium")),
    ];
    let mut published = Vec::new();
    for (i, (subject, priority)) in plan.iter().enumerate() {
        let data = json!({"i": i, "px": 100 + i});
        let sseq = producer
            .try_publish(subject, data.clone(), *priority)
            .await
            .expect("published");
        published.push((subject.to_string(), sseq, data));
    }
    // And one through the gateway's own /publish, which goes to JetStream.
    let (status, body) = http(
        surge.admin,
        "POST",
        "/publish",
        r#"{"subject":"odin.token.ETH.trade","data":{"via":"admin"},"priority":"high"}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let admin_sseq = published.last().map(|p| p.1 + 1).expect("published");
    assert_eq!(body, format!(r#"{{"sseq":{admin_sseq}}}"#));
    published.push((
        "odin.token.ETH.trade".into(),
        admin_sseq,
        json!({"via": "admin"}),
    ));
    assert_eq!(
        published.iter().map(|p| p.1).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<u64>>(),
        "a fresh stream numbers from 1"
    );

    for (client, pattern) in [
        (&mut trades, "odin.token.*.trade"),
        (&mut global, "odin.global.>"),
        (&mut btc, "odin.token.BTC.trade"),
        (&mut all, "odin.>"),
    ] {
        let pattern = surge_core::subjects::Pattern::parse(pattern).expect("pattern");
        let expected: Vec<Value> = published
            .iter()
            .filter(|(s, _, _)| {
                pattern.matches(&surge_core::subjects::Subject::parse(s).expect("subject"))
            })
            .enumerate()
            .map(|(i, (subject, sseq, data))| {
                json!({"type":"message","seq": i + 1,"subject": subject,"sseq": sseq,"data": data})
            })
            .collect();
        let got = client.messages(expected.len(), WAIT).await;
        assert_eq!(got, expected, "client on {}", pattern.as_str());
        client.expect_silence(Duration::from_millis(300)).await;
    }

    // A subject outside the stream is refused with the reason.
    let (status, body) = http(
        surge.admin,
        "POST",
        "/publish",
        r#"{"subject":"elsewhere.x","data":1}"#,
    )
    .await;
    // The same answer as with the embedded broker.
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("subject_not_in_stream"), "{body}");
    assert!(body.contains("SURGE_JS_SUBJECTS"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_the_stream_with_the_configured_subjects_and_limits_idempotently() {
    let nats = NatsServer::start();
    let env = [
        ("SURGE_JS_STREAM", "MARKET"),
        ("SURGE_JS_SUBJECTS", "mkt.token.>,mkt.global.*"),
        ("SURGE_JS_MAX_AGE", "90s"),
        ("SURGE_JS_MAX_MSGS", "1234"),
        ("SURGE_JS_MAX_BYTES", "2MiB"),
    ];
    let surge = Surge::start(&nats, &env);
    let producer = Producer::connect(&nats).await;
    let info = producer.stream("MARKET").await;
    let c = &info.config;
    assert_eq!(c.subjects, vec!["mkt.token.>", "mkt.global.*"]);
    assert_eq!(c.max_age, Duration::from_secs(90));
    assert_eq!(c.max_messages, 1234);
    assert_eq!(c.max_bytes, 2 << 20);
    assert_eq!(c.storage, stream::StorageType::File);
    assert_eq!(c.retention, stream::RetentionPolicy::Limits);
    assert_eq!(c.discard, stream::DiscardPolicy::Old);
    assert_eq!(c.num_replicas, 1);
    drop(surge);

    // Starting again finds the same stream and leaves it alone.
    let seq = producer.publish("mkt.global.x", json!(1)).await;
    let surge = Surge::start(&nats, &env);
    let again = producer.stream("MARKET").await;
    assert_eq!(again.created, info.created);
    assert_eq!(again.config, info.config);
    assert_eq!(again.state.last_sequence, seq);
    let (_, health) = surge.health().await;
    assert_eq!(health["broker"]["connected"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_stream_is_refused_naming_each_difference_unless_updates_are_allowed() {
    let nats = NatsServer::start();
    let producer = Producer::connect(&nats).await;
    producer
        .js
        .create_stream(stream::Config {
            name: "ODIN_TOKENS".into(),
            subjects: vec!["odin.token.>".into()],
            max_messages: 10,
            max_age: Duration::from_secs(30),
            max_bytes: 50 << 20,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("stream created");

    let (code, stderr) = surge_exits(&nats, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    for needle in [
        "JetStream stream ODIN_TOKENS exists with a different configuration",
        "subjects: the stream has odin.token.>, SURGE_JS_SUBJECTS asks for odin.token.>,odin.global.>",
        "max_msgs: the stream has 10, SURGE_JS_MAX_MSGS asks for 100000",
        "SURGE_JS_UPDATE_STREAM=true",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("max_age:"), "max_age matches:\n{stderr}");
    let untouched = producer.stream("ODIN_TOKENS").await;
    assert_eq!(untouched.config.subjects, vec!["odin.token.>"]);
    assert_eq!(untouched.config.max_messages, 10);

    let surge = Surge::start(&nats, &[("SURGE_JS_UPDATE_STREAM", "true")]);
    let updated = producer.stream("ODIN_TOKENS").await;
    assert_eq!(
        updated.config.subjects,
        vec!["odin.token.>", "odin.global.>"]
    );
    assert_eq!(updated.config.max_messages, 100_000);
    let (_, health) = surge.health().await;
    assert_eq!(health["broker"]["connected"], true);
    assert!(
        surge.stderr().contains("JetStream stream updated"),
        "{}",
        surge.stderr()
    );
}

/// NATS down at start is not a configuration error: surge starts, serves
/// clients, says the broker is disconnected (and, when readiness requires
/// the broker, that it is not ready), logs each connection attempt, and
/// picks NATS up when it appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_nats_at_start_is_connected_with_backoff() {
    let mut nats = NatsServer::start();
    nats.kill();
    let surge = Surge::start(&nats, &[("SURGE_READY_REQUIRES_BROKER", "true")]);
    let (status, health) = surge.health().await;
    assert_eq!(health["broker"]["connected"], false, "{health}");
    assert_eq!(status, 503, "not ready: {health}");
    assert_eq!(http(surge.admin, "GET", "/livez", "").await.0, 200);
    let (status, body) = http(surge.admin, "GET", "/readyz", "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("broker"), "{body}");
    // Clients are served meanwhile; the stream is not known yet.
    let mut early = Client::connect(surge.ws).await;
    early.ping().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while surge
        .stderr()
        .matches("NATS connection attempt failed")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "no attempts logged:\n{}",
            surge.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    nats.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _) = http(surge.admin, "GET", "/readyz", "").await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never ready:\n{}",
            surge.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut late, welcome) = Client::welcomed(surge.ws).await;
    assert!(
        welcome["epoch"]
            .as_str()
            .is_some_and(|e| e.starts_with("js-ODIN_TOKENS-")),
        "{welcome}"
    );
    late.subscribe(&["odin.token.>"]).await;
    let (status, body) = http(
        surge.admin,
        "POST",
        "/publish",
        r#"{"subject":"odin.token.BTC.trade","data":1}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let got = late.messages(1, Duration::from_secs(5)).await;
    assert_eq!(got[0]["data"], 1);
}

/// Publishes `odin.token.BTC.trade` messages until told to stop, retrying
/// through an outage; returns how many were acknowledged.
async fn publish_until(producer: Arc<Producer>, stop: Arc<Mutex<bool>>, every: Duration) -> u64 {
    let mut acked = 0u64;
    let mut i = 0u64;
    while !*stop.lock().expect("lock") {
        i += 1;
        let sent = producer
            .try_publish("odin.token.BTC.trade", json!({"i": i}), None)
            .await;
        if sent.is_some() {
            acked += 1;
        }
        tokio::time::sleep(every).await;
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_stream_loses_nothing_and_clients_stay_connected() {
    let mut nats = NatsServer::start();
    let surge = Surge::start(&nats, &[]);
    let mut client = Client::connect(surge.ws).await;
    client.subscribe(&["odin.token.>"]).await;
    let producer = Arc::new(Producer::connect(&nats).await);
    let stop = Arc::new(Mutex::new(false));
    let feeder = tokio::spawn(publish_until(
        Arc::clone(&producer),
        Arc::clone(&stop),
        Duration::from_millis(5),
    ));
    // Read concurrently so nothing backs up while NATS is away.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            match client.next(Duration::from_secs(8)).await {
                Some(m) if m["type"] == "message" => got.push(m["sseq"].as_u64().expect("sseq")),
                Some(other) => panic!("unexpected {other}"),
                None => return (client, got),
            }
        }
    });

    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.kill();
    let down = Instant::now();
    // /health turns degraded while NATS is away.
    let mut degraded = None;
    while down.elapsed() < Duration::from_secs(10) {
        let (status, health) = surge.health().await;
        if health["broker"]["connected"] == false {
            degraded = Some((status, health));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, health) = degraded.expect("health reports the broker disconnected");
    // Clients are still served: degraded, but still ready, so a balancer
    // polling every instance does not take them all out at once.
    assert_eq!(status, 200);
    assert_eq!(health["status"], "degraded");
    assert_eq!(http(surge.admin, "GET", "/readyz", "").await.0, 200);
    assert_eq!(health["broker"]["kind"], "nats");
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.restart();
    // Back within a few seconds (reconnect backoff is capped at 2 s).
    let up = Instant::now();
    loop {
        let (_, health) = surge.health().await;
        if health["broker"]["connected"] == true {
            break;
        }
        assert!(
            up.elapsed() < Duration::from_secs(10),
            "never reconnected: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    *stop.lock().expect("lock") = true;
    let acked = feeder.await.expect("feeder");
    let (mut client, got) = reader.await.expect("reader");
    // The same connection is still open and answers.
    client.ping().await;

    let last = producer.stream("ODIN_TOKENS").await.state.last_sequence;
    eprintln!("acked {acked}, stream last {last}, delivered {}", got.len());
    assert!(acked > 100 && last >= acked, "acked {acked}, last {last}");
    assert_eq!(
        got,
        (1..=last).collect::<Vec<u64>>(),
        "every retained message exactly once, in order (acked {acked})"
    );
    let metrics = surge.metrics().await;
    let disconnects: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("surge_broker_disconnects_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no disconnect counter in\n{metrics}"));
    assert!(disconnects >= 1, "{metrics}");
    assert!(metrics.contains("surge_broker_connected 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_delivers_exactly_the_missed_messages_in_order_with_no_duplicate_at_the_seam() {
    let nats = NatsServer::start();
    let surge = Surge::start(&nats, &[]);
    let producer = Arc::new(Producer::connect(&nats).await);
    // Overlapping channels: BTC trades match two of them and must come once.
    let channels = [
        "odin.token.BTC.trade",
        "odin.token.*.trade",
        "odin.global.>",
    ];
    let matches =
        |subject: &str| subject.ends_with(".trade") || subject.starts_with("odin.global.");
    const SUBJECTS: [&str; 5] = [
        "odin.token.BTC.trade",
        "odin.token.ETH.liquidity",
        "odin.token.SOL.trade",
        "odin.global.trending",
        "odin.token.BTC.liquidity",
    ];

    let mut first = Client::connect(surge.ws).await;
    first.subscribe(&channels).await;
    let mut log: Vec<(u64, &str)> = Vec::new();
    for i in 0..20 {
        let subject = SUBJECTS[i % SUBJECTS.len()];
        log.push((producer.publish(subject, json!({"i": i})).await, subject));
    }
    let seen = first
        .messages(log.iter().filter(|(_, s)| matches(s)).count(), WAIT)
        .await;
    let since = *sseqs(&seen).last().expect("seen some");
    drop(first);

    // Missed while disconnected.
    for i in 20..400 {
        let subject = SUBJECTS[i % SUBJECTS.len()];
        log.push((producer.publish(subject, json!({"i": i})).await, subject));
    }
    let missed = log.iter().filter(|(q, s)| *q > since && matches(s)).count();
    // Published without pause from before the resume until after it
    // completed, so messages cross the seam while the catch-up runs.
    let stop = Arc::new(Mutex::new(false));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let mut concurrent = Some({
        let producer = Arc::clone(&producer);
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut log = Vec::new();
            let mut started = Some(started_tx);
            let mut extra = 50;
            for i in 400.. {
                let subject = SUBJECTS[i % SUBJECTS.len()];
                log.push((producer.publish(subject, json!({"i": i})).await, subject));
                if log.len() == 30
                    && let Some(tx) = started.take()
                {
                    let _ = tx.send(());
                }
                if *stop.lock().expect("lock") {
                    extra -= 1;
                    if extra == 0 {
                        break;
                    }
                }
            }
            log
        })
    });
    started_rx.await.expect("the concurrent publisher runs");
    let mut second = Client::connect(surge.ws).await;
    second
        .send(json!({"type":"resume","channels":channels,"since_sseq":since}))
        .await;

    let mut messages = Vec::new();
    let mut resumed = None;
    let mut expected: Option<Vec<u64>> = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while expected.as_ref().is_none_or(|e| messages.len() < e.len()) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match second.next(left).await {
            Some(m) if m["type"] == "message" => messages.push(m),
            Some(m) if m["type"] == "resumed" => {
                resumed = Some((messages.len(), m));
                *stop.lock().expect("lock") = true;
                let mut all = log.clone();
                let publisher = concurrent.take().expect("one `resumed`");
                all.extend(publisher.await.expect("the concurrent publisher"));
                expected = Some(
                    all.iter()
                        .filter(|(sseq, s)| *sseq > since && matches(s))
                        .map(|(sseq, _)| *sseq)
                        .collect(),
                );
            }
            Some(other) => panic!("unexpected {other}"),
            None => panic!(
                "timed out: {} messages, expected {:?}, resumed {resumed:?}",
                messages.len(),
                expected.as_ref().map(Vec::len)
            ),
        }
    }
    second.expect_silence(Duration::from_millis(500)).await;
    let expected = expected.unwrap_or_default();
    assert_eq!(
        sseqs(&messages),
        expected,
        "exactly the missed and then the live messages"
    );
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(seqs, (1..=expected.len() as u64).collect::<Vec<_>>());
    let (at, resumed) = resumed.expect("resumed");
    let last = resumed["last_sseq"].as_u64().expect("last_sseq");
    eprintln!(
        "{missed} missed, {at} recovered, {} live after `resumed`",
        messages.len() - at
    );
    for (i, m) in messages.iter().enumerate() {
        let sseq = m["sseq"].as_u64().unwrap_or(0);
        let recovered = m["recovered"] == true;
        assert_eq!(recovered, sseq <= last, "{m} (resumed at {last})");
        assert_eq!(
            recovered,
            i < at,
            "recovered frames come before `resumed`: {m}"
        );
    }
    // The catch-up covered messages published during it, and live ones followed.
    assert!(
        at > missed,
        "{at} recovered, {missed} missed before the resume"
    );
    assert!(messages.len() > at, "live messages after the seam");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_past_retention_reports_the_gap_then_what_is_left() {
    let nats = NatsServer::start();
    let surge = Surge::start(&nats, &[("SURGE_JS_MAX_MSGS", "10")]);
    let producer = Producer::connect(&nats).await;
    for i in 1..=30 {
        let subject = if i % 2 == 1 {
            "odin.token.BTC.trade"
        } else {
            "odin.token.ETH.trade"
        };
        producer.publish(subject, json!({"i": i})).await;
    }
    let mut client = Client::connect(surge.ws).await;
    // Wider than any one stream subject: read unfiltered and matched by surge.
    client
        .send(json!({"type":"resume","channels":["odin.*.BTC.trade"],"since_sseq":5}))
        .await;
    let gap = client.next(WAIT).await.expect("a frame");
    assert_eq!(gap["type"], "resume_gap", "{gap}");
    assert_eq!(gap["oldest_sseq"], 21);
    let recovered = client.messages(5, WAIT).await;
    assert_eq!(sseqs(&recovered), vec![21, 23, 25, 27, 29]);
    assert!(recovered.iter().all(|m| m["recovered"] == true));
    assert!(
        recovered
            .iter()
            .all(|m| m["subject"] == "odin.token.BTC.trade")
    );
    assert_eq!(recovered[0]["data"], json!({"i": 21}));
    let done = client.next(WAIT).await.expect("resumed");
    assert_eq!(done["type"], "resumed", "{done}");
    assert_eq!(done["last_sseq"], 30);
    client.expect_silence(Duration::from_millis(300)).await;
}

/// The epoch surge derives from a stream's creation time.
fn epoch_of(info: &stream::Info) -> String {
    format!(
        "js-{}-{:x}",
        info.config.name,
        info.created.unix_timestamp_nanos()
    )
}

/// A stream deleted and created again is a new stream: a client resuming
/// with a position in the old one is told its position is void and gets
/// the new epoch, and live delivery carries on with the new stream from
/// its first message. The bridge is paused while the stream is replaced,
/// so the new stream has passed the old one's last sequence before the
/// live consumer looks at it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_and_recreated_stream_is_a_new_epoch_for_resume_and_live_delivery() {
    let nats = NatsServer::start();
    let gateway = gateway_on(&nats, 0).await;
    let producer = Producer::connect(&nats).await;
    let (mut live, welcome) = Client::welcomed(gateway.local_addr()).await;
    let old = producer.stream("ODIN_TOKENS").await;
    let e1 = epoch_of(&old);
    assert_eq!(welcome["epoch"], e1.as_str(), "{welcome}");
    live.subscribe(&["odin.token.>"]).await;
    for i in 1..=5 {
        producer
            .publish("odin.token.BTC.trade", json!({"old": i}))
            .await;
    }
    assert_eq!(sseqs(&live.messages(5, WAIT).await), vec![1, 2, 3, 4, 5]);

    gateway.broker().set_paused(true);
    producer
        .js
        .delete_stream("ODIN_TOKENS")
        .await
        .expect("stream deleted");
    producer
        .js
        .create_stream(old.config.clone())
        .await
        .expect("stream created again");
    let new = producer.stream("ODIN_TOKENS").await;
    let e2 = epoch_of(&new);
    assert_ne!(e2, e1, "{new:?}");
    let mut published = Vec::new();
    for i in 1..=7 {
        published.push(
            producer
                .publish("odin.token.ETH.trade", json!({"new": i}))
                .await,
        );
    }
    assert_eq!(published, (1..=7).collect::<Vec<u64>>());

    let mut resuming = Client::connect(gateway.local_addr()).await;
    resuming
        .send(json!({"type":"resume","id":1,"channels":["odin.token.>"],"since_sseq":5,"epoch":e1}))
        .await;
    assert_eq!(
        resuming.next(WAIT).await,
        Some(json!({"type":"resume_gap","id":1,"epoch_changed":true,"oldest_sseq":1}))
    );
    assert_eq!(
        resuming.next(WAIT).await,
        Some(json!({"type":"resumed","id":1,"channels":["odin.token.>"],"last_sseq":7,"epoch":e2}))
    );
    assert_eq!(gateway.broker().epoch(), Some(e2.clone()));

    gateway.broker().set_paused(false);
    let after = live.messages(7, WAIT).await;
    assert_eq!(
        sseqs(&after),
        published,
        "the new stream's messages, from its first: {after:?}"
    );
    assert_eq!(after[0]["data"], json!({"new": 1}));
    // Both go on with the new stream; the resumed client's position (7)
    // covers what came before.
    let next = producer
        .publish("odin.token.SOL.trade", json!({"new": 8}))
        .await;
    assert_eq!(next, 8);
    assert_eq!(sseqs(&live.messages(1, WAIT).await), vec![8]);
    let first = resuming.messages(1, WAIT).await;
    assert_eq!(
        (first[0]["seq"].as_u64(), first[0]["sseq"].as_u64()),
        (Some(1), Some(8))
    );
    resuming.expect_silence(Duration::from_millis(300)).await;
    gateway.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_nats_each_deliver_every_message() {
    let nats = NatsServer::start();
    let one = Surge::start(&nats, &[]);
    let two = Surge::start(&nats, &[]);
    let mut a = Client::connect(one.ws).await;
    a.subscribe(&["odin.>"]).await;
    let mut b = Client::connect(two.ws).await;
    b.subscribe(&["odin.>"]).await;
    let producer = Producer::connect(&nats).await;
    let mut expected = Vec::new();
    for i in 0..50 {
        let subject = if i % 7 == 0 {
            "odin.global.trending"
        } else {
            "odin.token.ETH.trade"
        };
        expected.push(producer.publish(subject, json!({"i": i})).await);
    }
    for surge in [&one, &two] {
        let (status, body) = http(
            surge.admin,
            "POST",
            "/publish",
            r#"{"subject":"odin.token.SOL.trade","data":{"via":"admin"}}"#,
        )
        .await;
        assert_eq!(status, 202, "{body}");
        expected.push(expected.last().copied().unwrap_or(0) + 1);
    }
    let got_a = a.messages(expected.len(), WAIT).await;
    let got_b = b.messages(expected.len(), WAIT).await;
    assert_eq!(sseqs(&got_a), expected);
    assert_eq!(got_a, got_b, "both instances deliver the same frames");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_publishes_a_market_stream_to_nats() {
    let nats = NatsServer::start();
    let surge = Surge::start(&nats, &[]);
    let mut client = Client::connect(surge.ws).await;
    client
        .subscribe(&["odin.token.*.trade", "odin.global.trending"])
        .await;
    let dir = temp_dir("feed");
    let out = surge_command(&nats, &[], &dir)
        .args([
            "feed",
            "--rate",
            "100",
            "--symbols",
            "BTC,ETH",
            "--duration",
            "5200ms",
        ])
        .output()
        .expect("surge feed runs");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 trending"), "{stdout}");
    let mut trades = 0;
    let mut trending = None;
    while let Some(m) = client.next(Duration::from_secs(2)).await {
        if m["subject"] == "odin.global.trending" {
            trending = Some(m);
            continue;
        }
        trades += 1;
        let data = &m["data"];
        assert!(
            matches!(data["symbol"].as_str(), Some("BTC" | "ETH")),
            "{m}"
        );
        assert!(data["price"].as_f64().unwrap_or(0.0) > 0.0, "{m}");
        assert!(matches!(data["side"].as_str(), Some("buy" | "sell")), "{m}");
    }
    // 520 rate-paced messages, about 80 % trades.
    assert!((330..=500).contains(&trades), "{trades} trades");
    let trending = trending.expect("a trending update after 5 s");
    assert_eq!(trending["data"]["top"].as_array().map(Vec::len), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_posts_to_the_embedded_broker_through_admin_publish() {
    let surge = Surge::start_embedded();
    let mut client = Client::connect(surge.ws).await;
    client.subscribe(&["odin.token.>"]).await;
    let dir = temp_dir("feed-embedded");
    let admin = format!("http://{}", surge.admin);
    let out = embedded_command(&[], &dir)
        .args([
            "feed",
            "--rate",
            "200",
            "--symbols",
            "SOL",
            "--duration",
            "1s",
        ])
        .args(["--admin", &admin])
        .output()
        .expect("surge feed runs");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("(embedded broker)"), "{stdout}");
    let mut got = Vec::new();
    while let Some(m) = client.next(Duration::from_secs(1)).await {
        assert_eq!(m["data"]["symbol"], "SOL", "{m}");
        got.push(m);
    }
    assert!((150..=210).contains(&got.len()), "{} messages", got.len());
    assert_eq!(sseqs(&got), (1..=got.len() as u64).collect::<Vec<_>>());
}

/// The gateway in-process with the NATS broker, so a test can drive the
/// resource guard's pause directly.
async fn gateway_on(nats: &NatsServer, broker_rate: u32) -> surge_runtime::Gateway {
    use surge_runtime::tcp::{SocketTuning, TcpTransport};
    let config = surge_core::config::Config {
        nats_url: Some(nats.url()),
        broker_rate,
        ..Default::default()
    };
    let bridge = surge_server::nats::NatsBridge::prepare(&config)
        .await
        .expect("NATS bridge");
    let transport = TcpTransport::new(SocketTuning::preset(Default::default()), 5);
    let listen = "127.0.0.1:0".parse().expect("addr");
    surge_runtime::Gateway::start(
        &transport,
        surge_runtime::GatewayConfig::for_tests(listen, 100, 2),
        |hub, clock| bridge.attach(hub, clock) as Arc<dyn surge_runtime::Broker>,
    )
    .await
    .expect("gateway starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_or_rate_limited_bridge_leaves_messages_in_the_stream_and_loses_none() {
    let nats = NatsServer::start();
    let gateway = gateway_on(&nats, 0).await;
    let mut client = Client::connect(gateway.local_addr()).await;
    client.subscribe(&["odin.token.>"]).await;
    let producer = Producer::connect(&nats).await;

    gateway.broker().set_paused(true);
    // A message already pulled may still be handed over; after that, nothing.
    producer
        .publish("odin.token.BTC.trade", json!({"i": 0}))
        .await;
    let early = client.next(Duration::from_millis(500)).await;
    for i in 1..=20 {
        producer
            .publish("odin.token.BTC.trade", json!({"i": i}))
            .await;
    }
    client.expect_silence(Duration::from_secs(1)).await;
    assert_eq!(producer.stream("ODIN_TOKENS").await.state.messages, 21);
    gateway.broker().set_paused(false);
    let mut got = early.into_iter().collect::<Vec<_>>();
    got.extend(client.messages(21 - got.len(), WAIT).await);
    assert_eq!(sseqs(&got), (1..=21).collect::<Vec<_>>());
    gateway.shutdown(Duration::from_secs(1)).await;

    // SURGE_BROKER_RATE=20: 40 messages take about two seconds, none lost.
    let gateway = gateway_on(&nats, 20).await;
    let mut client = Client::connect(gateway.local_addr()).await;
    client.subscribe(&["odin.token.>"]).await;
    for i in 0..40 {
        producer
            .publish("odin.token.ETH.trade", json!({"i": i}))
            .await;
    }
    let started = Instant::now();
    let got = client.messages(40, WAIT).await;
    let took = started.elapsed();
    assert_eq!(sseqs(&got), (22..=61).collect::<Vec<_>>());
    assert!(
        took >= Duration::from_millis(1_600) && took < Duration::from_secs(4),
        "40 messages at 20/s took {took:?}"
    );
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// End-to-end latency, publish (JetStream) → WebSocket client, with a real
/// nats-server. Bounded and loopback only; run it on the release binary:
///
/// `cargo test --release -p surge-server --test nats -- --ignored --nocapture latency`
///
/// Knobs: SURGE_LAT_RATE (msg/s, default 200), SURGE_LAT_SECS (default 20),
/// SURGE_LAT_CLIENTS (default 100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run on the release binary, see the doc comment"]
async fn latency_publish_to_client() {
    let knob = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rate = knob("SURGE_LAT_RATE", 200).max(1);
    let secs = knob("SURGE_LAT_SECS", 20).max(1);
    let clients = knob("SURGE_LAT_CLIENTS", 100).max(1) as usize;
    let total = rate * secs;

    let nats = NatsServer::start();
    let surge = Surge::start(&nats, &[]);
    let mut readers = Vec::new();
    for _ in 0..clients {
        let mut client = Client::connect(surge.ws).await;
        client.subscribe(&["odin.token.BTC.trade"]).await;
        readers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(total as usize);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(secs + 30);
            while (latencies.len() as u64) < total {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let Some(m) = client.next(left).await else {
                    break;
                };
                let now = unix_nanos();
                if let Some(t) = m["data"]["t"].as_u64() {
                    latencies.push(now.saturating_sub(t));
                }
            }
            latencies
        }));
    }
    let producer = Producer::connect(&nats).await;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let data = json!({"i": i, "t": unix_nanos(), "px": 64_000.5, "qty": 0.25, "side": "buy"});
        producer.publish("odin.token.BTC.trade", data).await;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let mut all = Vec::new();
    let mut short = 0;
    for reader in readers {
        let latencies = reader.await.expect("reader");
        if (latencies.len() as u64) < total {
            short += 1;
        }
        all.extend(latencies);
    }
    all.sort_unstable();
    let pct = |p: f64| {
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        all[i] as f64 / 1e6
    };
    eprintln!(
        "latency publish→client: {rate} msg/s for {secs} s ({publish_secs:.1} s actual), {clients} clients, \
         {} deliveries ({short} clients short): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        all.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(0.999),
        pct(1.0)
    );
    assert_eq!(short, 0, "every client received every message");
}
