//! Every metric an alert rule (deploy/prometheus/alerts.yml) or a Grafana
//! panel (deploy/grafana/surge.json) uses is exported by a running surge,
//! and moves when the traffic that should move it happens.
//!
//! The names are read out of the two files, so a renamed metric, or a rule
//! on a metric surge never exports, fails here. Then a real surge against a
//! real nats-server is driven through what the rules watch: connections
//! held and half-open, a burst refused as full, publishes fanned out to a
//! reader and to a client that stops reading (throttled, its messages
//! dropped, finally closed as too slow), a replay, a resume and a resume
//! across a wrong epoch, and a NATS restart. `/metrics` is scraped all
//! along; each name must appear, and reach a value above 0 in some scrape
//! unless it is one of the few listed in `MAY_STAY_ZERO` with the reason
//! this traffic cannot move it.

#[path = "common/http.rs"]
mod http;
#[path = "common/nats_server.rs"]
mod nats_server;
#[path = "common/ports.rs"]
mod ports;
#[path = "common/surge.rs"]
mod surge;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use nats_server::NatsServer;
use serde_json::{Value, json};
use surge::{SURGE, Surge, http};
use surge_core::dashboard::Exposition;
use tokio_tungstenite::tungstenite::Message;

/// Metrics a rule or panel may use that this traffic cannot move, and why.
const MAY_STAY_ZERO: &[(&str, &str)] = &[
    (
        "surge_broker_paused",
        "needs CPU or memory above the pause threshold",
    ),
    (
        "surge_shard_backlog_connections",
        "needs a shard that cannot keep up with its sockets (CPU-bound)",
    ),
    (
        "surge_ingest_queue_messages",
        "a gauge read between fan-out rounds: shards that keep up leave it at 0",
    ),
    (
        "surge_ingest_refusals_total",
        "needs a shard SURGE_INGEST_QUEUE messages behind its publishers",
    ),
    (
        "surge_cpu_percent",
        "whole percent of the machine: a light test may round to 0",
    ),
];

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The `surge_*` names in a PromQL expression.
fn names_in(expr: &str, into: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("surge_") {
        let start = i + at;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
        };
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(expr.len(), |n| start + n);
        if boundary {
            into.insert(expr[start..end].to_owned());
        }
        i = end;
    }
}

/// Every `expr` of every rule of every group.
fn alert_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(format!("{REPO}/deploy/prometheus/alerts.yml"))
        .expect("deploy/prometheus/alerts.yml");
    let rules: Value = serde_norway::from_str(&text).expect("alerts.yml is YAML");
    let mut names = BTreeSet::new();
    let groups = rules["groups"].as_array().expect("groups");
    for rule in groups
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
    {
        let expr = rule["expr"].as_str().expect("every rule has an expr");
        names_in(expr, &mut names);
    }
    names
}

/// Every `expr` of every panel target, and the template queries.
fn grafana_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(format!("{REPO}/deploy/grafana/surge.json"))
        .expect("deploy/grafana/surge.json");
    let dashboard: Value = serde_json::from_str(&text).expect("surge.json is JSON");
    let mut names = BTreeSet::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = panels.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            names_in(target["expr"].as_str().expect("a target expr"), &mut names);
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            names_in(query, &mut names);
        }
    }
    names
}

/// The largest value each sample name reached over the scrapes.
#[derive(Default)]
struct Seen(BTreeMap<String, f64>);

impl Seen {
    async fn scrape(&mut self, surge: &Surge) -> Exposition {
        let exposition = Exposition::parse(&surge.metrics().await).expect("metrics parse");
        for sample in exposition.samples() {
            let max = self.0.entry(sample.name.clone()).or_insert(0.0);
            *max = max.max(sample.value);
        }
        exposition
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("open")
            .expect("frame");
        match frame {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn until_type(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let m = next(ws).await;
        if m["type"] == kind {
            return m;
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

async fn publish(surge: &Surge, data: &str) -> u16 {
    let body = json!({"subject": "odin.token.BTC.trade", "data": {"pad": data}}).to_string();
    http(surge.admin, "POST", "/publish", &body).await.0
}

/// A client that never reads past its welcome, over a socket with a 4 KiB
/// receive buffer: the server's writes to it block quickly.
async fn stalled_client(surge: &Surge) -> Ws {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket.connect(&surge.ws.into()).expect("connect");
    socket.set_nonblocking(true).expect("nonblocking");
    let stream = tokio::net::TcpStream::from_std(socket.into()).expect("tokio stream");
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{}/ws", surge.ws),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .expect("upgrade");
    assert_eq!(next(&mut ws).await["type"], "welcome");
    send(
        &mut ws,
        json!({"type": "subscribe", "channels": ["odin.token.>"]}),
    )
    .await;
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_alert_rules_and_the_grafana_dashboard_is_exported_and_moves() {
    let alerts = alert_metrics();
    let panels = grafana_metrics();
    assert!(alerts.len() >= 10, "alert rules name {alerts:?}");
    assert!(panels.len() >= 20, "Grafana panels name {panels:?}");
    for (name, _) in MAY_STAY_ZERO {
        assert!(
            alerts.contains(*name) || panels.contains(*name),
            "{name} is excused but used nowhere"
        );
    }

    let mut nats = NatsServer::start();
    // Six slots, so a short burst fills them.
    let surge = Surge::spawn(|dir| {
        let mut command = Command::new(SURGE);
        command
            .args(["--max-connections", "6", "--shards", "2"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SURGE_NATS_URL", nats.url())
            .env("SURGE_ADMIN_PUBLISH_RATE", "0")
            .env("SURGE_OUTBOUND_QUEUE_BYTES", "4KiB")
            .env("SURGE_THROTTLE_FULL_EVENTS", "1")
            .env("SURGE_JS_STREAM", "COVERAGE")
            .current_dir(dir);
        command
    });
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen
        .scrape(&surge)
        .await
        .value("surge_broker_connected", &[])
        != Some(1.0)
    {
        assert!(Instant::now() < deadline, "never connected to NATS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A reader, subscribed.
    let (mut reader, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", surge.ws))
        .await
        .expect("upgrade");
    let welcome = next(&mut reader).await;
    let epoch = welcome["epoch"].as_str().expect("epoch").to_owned();
    send(
        &mut reader,
        json!({"type": "subscribe", "channels": ["odin.token.>"]}),
    )
    .await;
    assert_eq!(next(&mut reader).await["type"], "subscribed");

    // The stalled client, then publishes until it is throttled, its
    // messages dropped and it is closed as too slow (at most 3,000).
    let mut stalled = Some(stalled_client(&surge).await);
    let pad = "x".repeat(2000);
    let mut published = 0u32;
    let mut received = 0u32;
    let mut throttled_seen = 0.0f64;
    while published < 3000 {
        assert_eq!(publish(&surge, &pad).await, 202);
        published += 1;
        // Every publish: the throttle levels pass quickly.
        let scrape = seen.scrape(&surge).await;
        throttled_seen = throttled_seen.max(
            scrape
                .series("surge_throttled_connections")
                .filter(|s| s.label("level") != Some("none"))
                .map(|s| s.value)
                .sum(),
        );
        if scrape.value("surge_slow_client_disconnects_total", &[]) >= Some(1.0) {
            break;
        }
        // Keep the reader reading.
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(Duration::from_millis(1), reader.next()).await
        {
            received += 1;
        }
    }
    assert!(received > 0, "the reader received nothing");
    assert!(
        throttled_seen >= 1.0,
        "the stalled client was never seen throttled"
    );
    let scrape = seen.scrape(&surge).await;
    assert!(
        scrape.value("surge_messages_dropped_total", &[("reason", "throttled")]) > Some(0.0),
        "nothing dropped by the throttle"
    );
    drop(stalled.take());

    // Replay, resume from the start, resume across a wrong epoch.
    // (the last message the reader got is still in its replay window)
    assert_eq!(publish(&surge, "last").await, 202);
    let last_seq = loop {
        let m = until_type(&mut reader, "message").await;
        if m["data"]["pad"] == "last" {
            break m["seq"].as_u64().expect("seq");
        }
    };
    send(
        &mut reader,
        json!({"type": "replay", "from_seq": last_seq, "to_seq": last_seq}),
    )
    .await;
    let replayed = until_type(&mut reader, "message").await;
    assert_eq!(replayed["seq"], last_seq);
    until_type(&mut reader, "replay_done").await;
    let (mut resumer, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", surge.ws))
        .await
        .expect("upgrade");
    until_type(&mut resumer, "welcome").await;
    send(&mut resumer, json!({"type": "resume", "channels": ["odin.token.>"], "since_sseq": published.saturating_sub(3), "epoch": epoch})).await;
    until_type(&mut resumer, "resumed").await;
    send(&mut resumer, json!({"type": "resume", "channels": ["odin.global.>"], "since_sseq": 1, "epoch": "not-this-stream"})).await;
    until_type(&mut resumer, "resume_gap").await;

    // A half-open handshake: a request head that never completes (until
    // the 10 s handshake timeout).
    let mut half_open = tokio::net::TcpStream::connect(surge.ws).await.expect("tcp");
    tokio::io::AsyncWriteExt::write_all(&mut half_open, b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a head");

    // A burst against the 6 slots (reader, half-open, resumer held): 503s.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        match tokio_tungstenite::connect_async(format!("ws://{}/ws", surge.ws)).await {
            Ok((ws, _)) => held.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 503 => {
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused >= 1, "nothing refused");
    let scrape = seen.scrape(&surge).await;
    assert!(scrape.value("surge_handshakes_in_progress", &[]) >= Some(1.0));
    assert!(scrape.value("surge_admission_rejections_total", &[("reason", "full")]) >= Some(1.0));
    // Open files are counted every 5 s.
    let deadline = Instant::now() + Duration::from_secs(8);
    while seen.0.get("surge_open_fds").copied().unwrap_or(0.0) == 0.0 {
        assert!(Instant::now() < deadline, "surge_open_fds never set");
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen.scrape(&surge).await;
    }

    // NATS restarts: a disconnect counted, then connected again.
    nats.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let scrape = seen.scrape(&surge).await;
        if scrape.value("surge_broker_disconnects_total", &[]) >= Some(1.0)
            && scrape.value("surge_broker_connected", &[]) == Some(1.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no NATS disconnect and reconnect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut problems = Vec::new();
    for (name, used_by) in alerts
        .iter()
        .map(|n| (n, "an alert rule"))
        .chain(panels.iter().map(|n| (n, "a Grafana panel")))
    {
        match seen.0.get(name) {
            None => problems.push(format!("{name} (used by {used_by}) is not exported")),
            Some(&max) if max <= 0.0 && !MAY_STAY_ZERO.iter().any(|(n, _)| n == name) => {
                problems.push(format!("{name} (used by {used_by}) never rose above 0"));
            }
            Some(_) => {}
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n(seen: {:?})",
        problems.join("\n"),
        seen.0
    );
}

#[test]
fn names_are_read_out_of_promql() {
    let mut names = BTreeSet::new();
    names_in(
        "histogram_quantile(0.99, sum by (le) (rate(surge_handshake_duration_seconds_bucket{instance=~\"$i\"}[5m]))) > 0.5 and not_surge_x and surge_ready",
        &mut names,
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        names,
        vec!["surge_handshake_duration_seconds_bucket", "surge_ready"]
    );
}
