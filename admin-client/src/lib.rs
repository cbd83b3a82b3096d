//! The HTTP client of the tools that talk to a running gateway's admin
//! listener: `surge feed` posts to `/publish`, surge-load posts to
//! `/publish` and reads `/health`.
//!
//! One keep-alive HTTP/1.1 connection (hyper's `client::conn::http1`) with
//! one request in flight and no pool: a caller that wants several requests
//! in flight opens several clients. The connection is driven inside the
//! request's own future rather than by a spawned task, so the instant a
//! request is handed to hyper is the instant it is written; surge-load
//! measures how far its publishes fall behind their schedule from it.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Largest answer body accepted: admin answers are small, and a runaway one
/// must not grow a load generator's memory.
pub const MAX_ANSWER: usize = 4 << 20;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the server closed the connection before answering")]
    Closed,
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("reading the answer: {0}")]
    Body(String),
    #[error("invalid request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// One answer, and when its request went out and its answer was complete.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    /// When the request was handed to an open connection, which writes it
    /// at once (after any reconnect).
    pub written: Instant,
    /// When the whole answer had been read.
    pub answered: Instant,
}

type Driver = Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// An open connection: hyper's request handle and the future that does
/// the connection's reading and writing.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: Driver,
    /// The driver finished (closed, or failed): it must not be polled again.
    ended: bool,
}

/// A keep-alive client for one admin listener.
pub struct AdminClient {
    /// `host:port` to connect to.
    addr: String,
    /// The `Host` header; `addr` unless set.
    host: String,
    /// Sent as `Authorization: Bearer <token>` with every request.
    bearer: Option<String>,
    timeout: Duration,
    /// Boxed: hyper's connection state is most of a kilobyte, and a client
    /// without one open should stay small.
    conn: Option<Box<Conn>>,
}

impl AdminClient {
    /// A client for `addr` (`host:port`) whose every request, connecting
    /// included, must be answered within `timeout`. Connects on first use.
    pub fn new(addr: impl Into<String>, timeout: Duration) -> AdminClient {
        let addr = addr.into();
        AdminClient {
            host: addr.clone(),
            addr,
            bearer: None,
            timeout,
            conn: None,
        }
    }

    /// The `Host` header, when it is not the address connected to (a URL's
    /// `localhost:9090` connected to as `127.0.0.1:9090`).
    pub fn with_host(mut self, host: impl Into<String>) -> AdminClient {
        self.host = host.into();
        self
    }

    /// Sends `Authorization: Bearer <token>` with every request (the
    /// gateway's `SURGE_ADMIN_TOKEN`); `None` sends none.
    pub fn with_bearer(mut self, token: Option<String>) -> AdminClient {
        self.bearer = token;
        self
    }

    /// The `host:port` connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Result<Answer, AdminError> {
        self.request(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(
        &mut self,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<Answer, AdminError> {
        self.request(Method::POST, path, Some(body.into())).await
    }

    async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Answer, AdminError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.send(&method, path, body)).await {
            Ok(answer) => answer,
            Err(_) => {
                // Mid-request: the connection's state is unknown.
                self.conn = None;
                Err(AdminError::Timeout(timeout))
            }
        }
    }

    /// One exchange; a kept-alive connection that fails before answering
    /// (the server closed it while idle) is replaced once.
    async fn send(
        &mut self,
        method: &Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Answer, AdminError> {
        let mut reused = self.ready_kept_alive().await;
        loop {
            if !reused {
                self.conn = Some(self.connect().await?);
            }
            let request = self.build(method, path, body.clone())?;
            match self.exchange(request).await {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    self.conn = None;
                    if reused && matches!(e, AdminError::Closed | AdminError::Http(_)) {
                        reused = false;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Whether the kept-alive connection is open and idle. Polling it here
    /// reads the end of a connection the server closed since the last
    /// answer, so the request goes to a new one without being sent twice.
    async fn ready_kept_alive(&mut self) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        let ready = drive(&mut conn.driver, &mut conn.ended, conn.sender.ready()).await;
        let open = matches!(ready, Some(Ok(()))) && !conn.ended;
        if !open {
            self.conn = None;
        }
        open
    }

    async fn connect(&self) -> Result<Box<Conn>, AdminError> {
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(AdminError::Connect)?;
        // Small requests, one at a time: do not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let (sender, driver) = http1::handshake(TokioIo::new(stream)).await?;
        Ok(Box::new(Conn {
            sender,
            driver,
            ended: false,
        }))
    }

    fn build(
        &self,
        method: &Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Request<Full<Bytes>>, AdminError> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, &self.host);
        if let Some(token) = &self.bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        Ok(request.body(Full::new(body.unwrap_or_default()))?)
    }

    async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Result<Answer, AdminError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(AdminError::Closed);
        };
        let written = Instant::now();
        let sent = conn.sender.send_request(request);
        let response = drive(&mut conn.driver, &mut conn.ended, sent)
            .await
            .ok_or(AdminError::Closed)??;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER).collect();
        let body = drive(&mut conn.driver, &mut conn.ended, body)
            .await
            .ok_or(AdminError::Closed)?
            .map_err(|e| AdminError::Body(e.to_string()))?
            .to_bytes();
        let answered = Instant::now();
        if conn.ended {
            // Answered, then closed (`Connection: close`).
            self.conn = None;
        }
        Ok(Answer {
            status,
            body,
            written,
            answered,
        })
    }
}

/// Runs `work` while polling the connection, which does the writing and
/// reading `work` waits for. `None` if the connection ended first.
async fn drive<T>(
    driver: &mut Driver,
    ended: &mut bool,
    work: impl Future<Output = T>,
) -> Option<T> {
    let mut work = pin!(work);
    if *ended {
        return work.now_or_never();
    }
    tokio::select! {
        biased;
        out = &mut work => Some(out),
        _ = driver => {
            *ended = true;
            // The last poll may have completed the answer, then closed.
            work.now_or_never()
        }
    }
}
