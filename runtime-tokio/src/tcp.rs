//! The production transport: real TCP sockets built with socket2.
//!
//! The listen backlog is set explicitly (the seed system ran with ~128 and
//! lost 18.5 % of a surge to accept-queue overflow), and every tuning option
//! of the Go system surge replaces is applied from a preset. An option the kernel refuses is
//! recorded in the listener's report (shown in `/health`) and never fatal.
//!
//! When the process runs out of file descriptors, `accept()` fails with
//! EMFILE and the connection would sit in the kernel queue until the client
//! timed out. The listener keeps one spare descriptor for that moment: it
//! closes the spare, accepts the connection, writes a 503 with
//! `Retry-After`, closes it and takes the spare back, so even past the file
//! limit a client gets an answer instead of a timeout.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use surge_core::config::SocketPreset;

use crate::transport::{Listener, SocketOptionReport, Transport};

/// Socket options applied to the listener and to each accepted socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketTuning {
    pub nodelay: bool,
    /// (idle time, probe interval, probes).
    pub keepalive: Option<(Duration, Duration, u32)>,
    /// TCP_DEFER_ACCEPT: wake `accept()` only once the request arrived.
    pub defer_accept: Option<Duration>,
    /// TCP_USER_TIMEOUT: drop a peer whose data stays unacknowledged.
    pub user_timeout: Option<Duration>,
    /// SO_RCVBUF / SO_SNDBUF; `None` leaves the kernel's autotuning, which
    /// costs far less per idle connection than fixed large buffers.
    pub recv_buffer: Option<usize>,
    pub send_buffer: Option<usize>,
    /// TCP_FASTOPEN queue length.
    pub fastopen: Option<u32>,
    pub quickack: bool,
}

impl SocketTuning {
    /// The presets of the Go system surge replaces, adapted for many mostly idle connections.
    pub fn preset(preset: SocketPreset) -> Self {
        match preset {
            SocketPreset::Default => SocketTuning {
                nodelay: true,
                keepalive: Some((Duration::from_secs(60), Duration::from_secs(10), 6)),
                defer_accept: Some(Duration::from_secs(5)),
                user_timeout: Some(Duration::from_secs(30)),
                recv_buffer: None,
                send_buffer: None,
                fastopen: None,
                quickack: false,
            },
            SocketPreset::LowLatency => SocketTuning {
                nodelay: true,
                keepalive: Some((Duration::from_secs(30), Duration::from_secs(5), 3)),
                defer_accept: Some(Duration::from_secs(1)),
                user_timeout: Some(Duration::from_secs(10)),
                recv_buffer: Some(128 * 1024),
                send_buffer: Some(128 * 1024),
                fastopen: Some(256),
                quickack: true,
            },
            SocketPreset::HighThroughput => SocketTuning {
                nodelay: true,
                keepalive: Some((Duration::from_secs(120), Duration::from_secs(20), 6)),
                defer_accept: Some(Duration::from_secs(5)),
                user_timeout: Some(Duration::from_secs(60)),
                recv_buffer: Some(1024 * 1024),
                send_buffer: Some(1024 * 1024),
                fastopen: None,
                quickack: false,
            },
        }
    }
}

/// Real TCP.
#[derive(Debug, Clone)]
pub struct TcpTransport {
    tuning: SocketTuning,
    /// Written to a client accepted past the file-descriptor limit.
    overload_response: Arc<Vec<u8>>,
}

impl TcpTransport {
    pub fn new(tuning: SocketTuning, retry_after_secs: u32) -> Self {
        let response = surge_core::handshake::overloaded_response(retry_after_secs).response;
        TcpTransport {
            tuning,
            overload_response: Arc::new(response),
        }
    }
}

impl TcpTransport {
    /// For a TLS listener: a client accepted past the file-descriptor
    /// limit is closed without an answer, since a plaintext 503 would only
    /// fail its TLS handshake (and a TLS one needs descriptors it lacks).
    pub fn without_plain_answers(mut self) -> Self {
        self.overload_response = Arc::new(Vec::new());
        self
    }
}

/// `net.core.somaxconn`, which silently caps any backlog.
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn record(report: &mut Vec<SocketOptionReport>, option: &str, value: String, r: io::Result<()>) {
    if let Err(e) = &r {
        tracing::warn!(option, value, error = %e, "socket option refused by the kernel");
    }
    report.push(SocketOptionReport {
        option: option.into(),
        value,
        error: r.err().map(|e| e.to_string()),
    });
}

fn setsockopt_int(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: fd is an open socket owned by the caller; the option value is
    // a plain int whose size is passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

impl Transport for TcpTransport {
    type Stream = tokio::net::TcpStream;
    type Listener = TcpListener;
    type Poller = crate::epoll::EpollPoller;

    fn poller(&self) -> io::Result<Self::Poller> {
        crate::epoll::EpollPoller::new()
    }

    async fn bind(&self, addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        let t = &self.tuning;
        let mut report = Vec::new();
        // Buffer sizes set on the listener are inherited by accepted sockets.
        if let Some(size) = t.recv_buffer {
            record(
                &mut report,
                "SO_RCVBUF",
                size.to_string(),
                socket.set_recv_buffer_size(size),
            );
        }
        if let Some(size) = t.send_buffer {
            record(
                &mut report,
                "SO_SNDBUF",
                size.to_string(),
                socket.set_send_buffer_size(size),
            );
        }
        socket.bind(&addr.into())?;
        // Linux copies these from the listener to every accepted socket, so
        // they cost a few syscalls once instead of per connection, which
        // matters when ten thousand clients arrive at once.
        record(
            &mut report,
            "TCP_NODELAY",
            t.nodelay.to_string(),
            socket.set_tcp_nodelay(t.nodelay),
        );
        if let Some((idle, interval, retries)) = t.keepalive {
            let ka = TcpKeepalive::new()
                .with_time(idle)
                .with_interval(interval)
                .with_retries(retries);
            let r = socket
                .set_keepalive(true)
                .and_then(|()| socket.set_tcp_keepalive(&ka));
            record(
                &mut report,
                "SO_KEEPALIVE",
                format!("{idle:?}/{interval:?}/{retries}"),
                r,
            );
        }
        if let Some(d) = t.user_timeout {
            record(
                &mut report,
                "TCP_USER_TIMEOUT",
                format!("{d:?}"),
                socket.set_tcp_user_timeout(Some(d)),
            );
        }
        let fd = socket.as_raw_fd();
        if let Some(d) = t.defer_accept {
            let r = setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, secs(d));
            record(&mut report, "TCP_DEFER_ACCEPT", format!("{}s", secs(d)), r);
        }
        if let Some(q) = t.fastopen {
            let qlen = i32::try_from(q).unwrap_or(i32::MAX);
            let r = setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_FASTOPEN, qlen);
            record(&mut report, "TCP_FASTOPEN", q.to_string(), r);
        }
        let requested = i32::try_from(backlog).unwrap_or(i32::MAX);
        socket.listen(requested)?;
        let cap = somaxconn();
        let effective = cap.map_or(backlog, |c| backlog.min(c));
        tracing::info!(
            requested = backlog,
            somaxconn = cap,
            effective,
            "listen backlog (the kernel caps it at net.core.somaxconn)"
        );
        record(
            &mut report,
            "listen backlog",
            format!("{backlog} requested, {effective} effective"),
            Ok(()),
        );
        let inner = tokio::net::TcpListener::from_std(socket.into())?;
        Ok(TcpListener {
            inner,
            tuning: self.tuning.clone(),
            report: Mutex::new(report),
            per_stream_reported: std::sync::atomic::AtomicBool::new(false),
            spare: open_spare(),
            overload_response: Arc::clone(&self.overload_response),
            fd_exhaustion_answers: Arc::new(AtomicU64::new(0)),
        })
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        tokio::net::TcpStream::connect(addr).await
    }
}

fn open_spare() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// A bound TCP listener.
#[derive(Debug)]
pub struct TcpListener {
    inner: tokio::net::TcpListener,
    tuning: SocketTuning,
    report: Mutex<Vec<SocketOptionReport>>,
    per_stream_reported: std::sync::atomic::AtomicBool,
    spare: Option<std::fs::File>,
    overload_response: Arc<Vec<u8>>,
    fd_exhaustion_answers: Arc<AtomicU64>,
}

impl TcpListener {
    /// Options that do not carry over from the listener. TCP_QUICKACK is
    /// not sticky in the kernel, so it is set on each accepted socket.
    fn tune_stream(&self, stream: &tokio::net::TcpStream) {
        if !self.tuning.quickack {
            return;
        }
        let first = !self.per_stream_reported.swap(true, Ordering::Relaxed);
        let r = SockRef::from(stream).set_tcp_quickack(true);
        if first && let Ok(mut all) = self.report.lock() {
            record(&mut all, "TCP_QUICKACK", "true".into(), r);
        }
    }

    /// Out of descriptors: answer one waiting client with a 503 using the
    /// spare descriptor, so it is told to retry instead of timing out.
    async fn answer_with_spare(&mut self) {
        self.spare = None;
        if let Ok((stream, _)) = self.inner.accept().await {
            self.fd_exhaustion_answers.fetch_add(1, Ordering::Relaxed);
            // The spare must come back at once, so this answer lingers
            // only over what has already arrived.
            crate::linger::answer_at_once(&stream, &self.overload_response);
        }
        self.spare = open_spare();
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

impl Listener for TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(tokio::net::TcpStream, SocketAddr)> {
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    self.tune_stream(&stream);
                    return Ok((stream, peer));
                }
                Err(e) if is_fd_exhaustion(&e) => {
                    if self.spare.is_some() {
                        self.answer_with_spare().await;
                    } else {
                        // No spare either: wait for descriptors to free up
                        // instead of spinning on the error.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        self.spare = open_spare();
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn report(&self) -> Vec<SocketOptionReport> {
        self.report.lock().map(|r| r.clone()).unwrap_or_default()
    }

    fn fd_exhaustion_answers(&self) -> Option<Arc<AtomicU64>> {
        Some(Arc::clone(&self.fd_exhaustion_answers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_carry_the_listener_options() {
        let tuning = SocketTuning::preset(SocketPreset::Default);
        let transport = TcpTransport::new(tuning.clone(), 5);
        let mut listener = transport
            .bind("127.0.0.1:0".parse().expect("addr"), 64)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // DEFER_ACCEPT holds the connection until data arrives.
        tokio::io::AsyncWriteExt::write_all(&mut client, b"x")
            .await
            .expect("write");
        let (accepted, _) = listener.accept().await.expect("accept");
        let sock = SockRef::from(&accepted);
        let (idle, interval, retries) = tuning.keepalive.expect("keepalive in the preset");
        assert!(sock.tcp_nodelay().expect("nodelay"));
        assert!(sock.keepalive().expect("keepalive"));
        assert_eq!(sock.tcp_keepalive_time().expect("idle"), idle);
        assert_eq!(sock.tcp_keepalive_interval().expect("interval"), interval);
        assert_eq!(sock.tcp_keepalive_retries().expect("retries"), retries);
        assert_eq!(
            sock.tcp_user_timeout().expect("user timeout"),
            tuning.user_timeout
        );
        let report = listener.report();
        assert!(report.iter().all(|r| r.error.is_none()), "{report:?}");
        assert!(report.iter().any(|r| r.option == "TCP_DEFER_ACCEPT"));
    }
}
