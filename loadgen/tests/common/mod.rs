//! Tiny in-test servers that behave like (parts of) the gateway, so the
//! loadgen's runs and classifications are tested without the real server.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// What the hub does to published messages, to test loss/reorder detection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Perturb {
    None,
    /// Drop the 3rd publish (after numbering it) and swap the 5th and 6th.
    DropThirdSwapFifthSixth,
}

/// Subscribers and their per-connection `seq` counters.
pub struct Hub {
    subs: Mutex<BTreeMap<u64, (u64, mpsc::UnboundedSender<String>)>>,
    stash: Mutex<Vec<(u64, String)>>,
    sseq: AtomicU64,
    next_id: AtomicU64,
    /// Live WebSocket connections (what /health reports).
    pub current: AtomicU64,
    perturb: Perturb,
}

impl Hub {
    pub fn new(perturb: Perturb) -> Arc<Hub> {
        Arc::new(Hub {
            subs: Mutex::new(BTreeMap::new()),
            stash: Mutex::new(Vec::new()),
            sseq: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            current: AtomicU64::new(0),
            perturb,
        })
    }

    /// Numbers and delivers one publish; returns its sseq.
    pub fn publish(&self, subject: &str, data: &str) -> u64 {
        let sseq = self.sseq.fetch_add(1, Ordering::SeqCst) + 1;
        let mut subs = self.subs.lock().unwrap();
        let mut frames = Vec::new();
        for (id, (seq, tx)) in subs.iter_mut() {
            *seq += 1;
            let frame = format!(
                r#"{{"type":"message","seq":{},"subject":"{subject}","sseq":{sseq},"data":{data}}}"#,
                *seq
            );
            frames.push((*id, tx.clone(), frame));
        }
        drop(subs);
        let perturb = self.perturb == Perturb::DropThirdSwapFifthSixth;
        match sseq {
            3 if perturb => {}
            5 if perturb => {
                let mut stash = self.stash.lock().unwrap();
                stash.extend(frames.into_iter().map(|(id, _, f)| (id, f)));
            }
            6 if perturb => {
                let held = std::mem::take(&mut *self.stash.lock().unwrap());
                for (id, tx, f) in frames {
                    let _ = tx.send(f);
                    for (hid, hf) in &held {
                        if *hid == id {
                            let _ = tx.send(hf.clone());
                        }
                    }
                }
            }
            _ => {
                for (_, tx, f) in frames {
                    let _ = tx.send(f);
                }
            }
        }
        sseq
    }
}

fn small() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// A WebSocket server: welcome, answers `subscribe`, forwards hub messages.
pub async fn ws_server(hub: Arc<Hub>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let hub = hub.clone();
            tokio::spawn(async move {
                let Ok(ws) =
                    tokio_tungstenite::accept_async_with_config(stream, Some(small())).await
                else {
                    return;
                };
                hub.current.fetch_add(1, Ordering::SeqCst);
                serve_ws(ws, &hub).await;
                hub.current.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    addr
}

async fn serve_ws(mut ws: tokio_tungstenite::WebSocketStream<TcpStream>, hub: &Arc<Hub>) {
    let id = hub.next_id.fetch_add(1, Ordering::SeqCst);
    let welcome = format!(r#"{{"type":"welcome","conn_id":"c{id}","shard":0,"limits":{{}}}}"#);
    if ws.send(Message::text(welcome)).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(text) = out else { break };
                if ws.send(Message::text(text)).await.is_err() { break; }
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    if v["type"] == "subscribe" {
                        hub.subs.lock().unwrap().insert(id, (0, tx.clone()));
                        let ans = serde_json::json!({"type": "subscribed", "channels": v["channels"]});
                        if ws.send(Message::text(ans.to_string())).await.is_err() { break; }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    }
    hub.subs.lock().unwrap().remove(&id);
}

/// Answers every request with 503 + Retry-After and closes.
pub async fn reject_503_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16384 {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// A minimal admin listener: `POST /publish` into the hub, `GET /health`.
pub async fn admin_server(hub: Arc<Hub>) -> SocketAddr {
    slow_admin_server(hub, std::time::Duration::ZERO).await
}

/// Like [`admin_server`], but every `POST /publish` is answered only after
/// `delay`, like a gateway busy delivering: one connection then carries at
/// most `1 / delay` publishes per second.
pub async fn slow_admin_server(hub: Arc<Hub>, delay: std::time::Duration) -> SocketAddr {
    spawn_admin(hub, delay, None).await
}

/// Like [`admin_server`], but `POST /publish` needs
/// `Authorization: Bearer <token>` (401 otherwise), as surge's does with
/// `SURGE_ADMIN_TOKEN`.
pub async fn token_admin_server(hub: Arc<Hub>, token: &str) -> SocketAddr {
    spawn_admin(
        hub,
        std::time::Duration::ZERO,
        Some(format!("Bearer {token}")),
    )
    .await
}

async fn spawn_admin(
    hub: Arc<Hub>,
    delay: std::time::Duration,
    authorization: Option<String>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let authorization = Arc::new(authorization);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let hub = hub.clone();
            tokio::spawn(serve_admin(stream, hub, delay, authorization.clone()));
        }
    });
    addr
}

async fn serve_admin(
    mut stream: TcpStream,
    hub: Arc<Hub>,
    delay: std::time::Duration,
    authorization: Arc<Option<String>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // Parse one request from the buffer, reading more as needed.
        let (head_len, method, path, content_length, authorized) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .unwrap_or(0);
                let authorized = authorization.as_deref().is_none_or(|expected| {
                    req.headers.iter().any(|h| {
                        h.name.eq_ignore_ascii_case("authorization")
                            && h.value == expected.as_bytes()
                    })
                });
                break (
                    n,
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                    len,
                    authorized,
                );
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_len + content_length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf[head_len..head_len + content_length].to_vec();
        buf.drain(..head_len + content_length);
        let (status, answer) = match (method.as_str(), path.as_str()) {
            ("POST", "/publish") if !authorized => (
                "401 Unauthorized",
                r#"{"code":"unauthorized","message":"needs Authorization: Bearer"}"#.to_string(),
            ),
            ("POST", "/publish") => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let subject = v["subject"].as_str().unwrap_or("").to_string();
                let sseq = hub.publish(&subject, &v["data"].to_string());
                ("202 Accepted", format!(r#"{{"sseq":{sseq}}}"#))
            }
            ("GET", "/health") => (
                "200 OK",
                format!(
                    r#"{{"status":"ok","connections":{{"current":{},"max":100000}},"memory_bytes":1048576,"cpu_percent":1.0}}"#,
                    hub.current.load(Ordering::SeqCst)
                ),
            ),
            _ => ("404 Not Found", "{}".to_string()),
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if stream.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}
