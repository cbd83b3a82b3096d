//! The publisher host and the gateway's ingest port.
//!
//! With the embedded broker inside the gateway, "the broker is down" is
//! modelled as the publisher being cut off or crashed: the publisher host
//! sends each message over its own TCP connection to an ingest port served
//! next to the gateway, which publishes it through the gateway's broker
//! (`Gateway::broker().publish`) and answers with its stream sequence.
//!
//! turmoil does not retransmit, so a partition leaves a permanent hole in
//! that connection: the publisher waits at most a second for each answer,
//! then reconnects and sends the same message again. The ingest port
//! de-duplicates by message id, as JetStream does with `Nats-Msg-Id`, so a
//! message whose answer was lost is published exactly once. The
//! publisher's outbox survives a crash of its host (a durable queue).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use surge_core::protocol::Priority;
use surge_core::subjects::Subject;
use surge_runtime::{BrokerError, Gateway};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::world::hosts::{GATEWAY, INGEST_PORT, PUBLISHER, sleep_until_sim};
use crate::world::state::RunState;

/// How long the ingest port waits before retrying a publish the gateway
/// refused with a full ingest queue (the admin API's Retry-After is 1 s;
/// the simulated publisher is a program that retries sooner).
const INGEST_RETRY: Duration = Duration::from_millis(10);

/// The subjects messages rotate over (the layout of the Go system surge replaces).
pub const SUBJECTS: [&str; 4] = [
    "odin.token.BTC.trade",
    "odin.token.ETH.trade",
    "odin.token.SOL.book",
    "odin.global.news",
];

/// What the publisher sends, and when.
#[derive(Debug, Clone)]
pub struct Plan {
    pub messages: u32,
    /// Messages per second.
    pub rate: f64,
    /// Every n-th message is critical (0: none).
    pub critical_every: u32,
    pub start_at: Duration,
    /// Bytes of padding per message (so queues fill at realistic rates).
    pub padding: usize,
}

impl Plan {
    /// The publishing plan of a scenario's parameters: it starts one second
    /// after the last client's deadline, so every client is subscribed
    /// (or has failed) before the first message.
    pub fn after_arrivals(
        p: &crate::params::Params,
        arrivals: &[Duration],
        padding: usize,
    ) -> Self {
        let last = arrivals.last().copied().unwrap_or_default();
        Plan {
            messages: p.messages,
            rate: p.publish_rate,
            critical_every: p.critical_every,
            start_at: last + p.timeout.0 + Duration::from_secs(1),
            padding,
        }
    }

    pub fn subject(&self, i: u32) -> &'static str {
        SUBJECTS[i as usize % SUBJECTS.len()]
    }

    pub fn priority(&self, i: u32) -> Priority {
        if self.critical_every > 0 && i % self.critical_every == self.critical_every - 1 {
            Priority::Critical
        } else if i.is_multiple_of(2) {
            Priority::Low
        } else {
            Priority::Medium
        }
    }

    /// When message `i` is due.
    pub fn due(&self, i: u32) -> Duration {
        let rate = if self.rate > 0.0 { self.rate } else { 1.0 };
        self.start_at + Duration::from_secs_f64(f64::from(i) / rate)
    }
}

/// The publisher's durable state: what is sent and acknowledged.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Index of the next message to publish.
    pub next: Cell<u32>,
    /// Stream sequence and priority of each acknowledged message, by index.
    pub acked: RefCell<Vec<(u64, Priority)>>,
    pub reconnects: Cell<u32>,
    /// Whether the publisher ever connected (a restart then reconnects).
    pub connected_once: Cell<bool>,
    /// Set once every message is acknowledged.
    pub done_at: Cell<Option<Duration>>,
}

impl Outbox {
    /// Stream sequences of critical messages.
    pub fn critical_sseqs(&self) -> Vec<u64> {
        self.acked
            .borrow()
            .iter()
            .filter(|(_, p)| *p == Priority::Critical)
            .map(|(s, _)| *s)
            .collect()
    }

    pub fn sseqs(&self) -> Vec<u64> {
        self.acked.borrow().iter().map(|(s, _)| *s).collect()
    }
}

/// Registers the publisher host (a host, not a client, so that it can be
/// crashed and restarted; its outbox lives outside it).
pub fn install_publisher(
    sim: &mut turmoil::Sim<'_>,
    plan: Plan,
    outbox: Rc<Outbox>,
    run: Rc<RunState>,
) {
    sim.host(PUBLISHER, move || {
        let plan = plan.clone();
        let outbox = Rc::clone(&outbox);
        let run = Rc::clone(&run);
        async move {
            publish_all(&plan, &outbox, &run).await;
            std::future::pending::<()>().await;
            Ok(())
        }
    });
}

async fn publish_all(plan: &Plan, outbox: &Outbox, run: &RunState) {
    let padding = "x".repeat(plan.padding);
    while outbox.next.get() < plan.messages {
        sleep_until_sim(plan.due(outbox.next.get())).await;
        let addr = (GATEWAY, INGEST_PORT);
        let stream = match tokio::time::timeout(
            Duration::from_secs(1),
            turmoil::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => s,
            _ => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if outbox.connected_once.replace(true) {
            outbox.reconnects.set(outbox.reconnects.get() + 1);
            run.event("publisher reconnected");
        }
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        while outbox.next.get() < plan.messages {
            let i = outbox.next.get();
            sleep_until_sim(plan.due(i)).await;
            let priority = plan.priority(i);
            let line = serde_json::json!({
                "id": i,
                "subject": plan.subject(i),
                "priority": priority.as_str(),
                "data": { "i": i, "pad": padding },
            });
            if write
                .write_all(format!("{line}\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
            let answer = tokio::time::timeout(Duration::from_secs(1), lines.next_line()).await;
            let sseq = match answer {
                Ok(Ok(Some(text))) => serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .filter(|v| v["id"] == i)
                    .and_then(|v| v["sseq"].as_u64()),
                _ => None,
            };
            let Some(sseq) = sseq else {
                // No answer: the connection is broken; reconnect and send
                // the same message again (the ingest de-duplicates).
                break;
            };
            outbox.acked.borrow_mut().push((sseq, priority));
            outbox.next.set(i + 1);
        }
    }
    if outbox.done_at.get().is_none() {
        outbox.done_at.set(Some(crate::net::sim_now()));
        run.event("publisher done");
    }
}

/// The ingest port next to the gateway: one JSON line per message in, its
/// stream sequence out, de-duplicated by message id.
pub async fn serve_ingest(gateway: Arc<Gateway>) {
    let Ok(listener) = turmoil::net::TcpListener::bind(("0.0.0.0", INGEST_PORT)).await else {
        return;
    };
    let published: Rc<RefCell<BTreeMap<u64, u64>>> = Rc::default();
    while let Ok((stream, _)) = listener.accept().await {
        let gateway = Arc::clone(&gateway);
        let published = Rc::clone(&published);
        tokio::task::spawn_local(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    break;
                };
                let Some(id) = v["id"].as_u64() else { break };
                let known = published.borrow().get(&id).copied();
                let sseq = match known {
                    Some(sseq) => sseq,
                    None => {
                        let Ok(subject) = Subject::parse(v["subject"].as_str().unwrap_or(""))
                        else {
                            break;
                        };
                        let priority = Priority::parse(v["priority"].as_str().unwrap_or(""))
                            .unwrap_or_default();
                        let data = Bytes::from(v["data"].to_string());
                        // A full ingest queue refuses at once (the embedded
                        // broker never waits on fan-out); the ingest port
                        // retries as a publisher honouring Retry-After would.
                        let sseq = loop {
                            match gateway
                                .broker()
                                .publish(subject.clone(), data.clone(), priority)
                                .await
                            {
                                Ok(sseq) => break Some(sseq),
                                Err(BrokerError::Full(_)) => {
                                    tokio::time::sleep(INGEST_RETRY).await;
                                }
                                Err(_) => break None,
                            }
                        };
                        let Some(sseq) = sseq else { break };
                        published.borrow_mut().insert(id, sseq);
                        sseq
                    }
                };
                let answer = format!("{{\"id\":{id},\"sseq\":{sseq}}}\n");
                if write.write_all(answer.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}
