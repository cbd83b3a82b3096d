//! How a shard learns which of its sockets can make progress.
//!
//! An upgraded connection has no task of its own: its shard owns the socket
//! and drives it when the poller reports it ready, so an idle connection
//! costs its state and nothing else (no future, no task header, no waker
//! registration of its own with tokio on the epoll path).
//!
//! Readiness is edge-like: after a report the shard reads and writes until
//! the poller says the socket would block, and the next report comes only
//! when something changed. Spurious reports are allowed.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::sync::lock;

/// The sockets of one shard and their readiness.
pub trait Poller: Send + 'static {
    /// What the acceptor hands over after the handshake.
    type Stream: Send + 'static;
    /// What the shard keeps per connection.
    type Socket: Send + 'static;

    /// Takes over a socket; readiness is reported under `token`, including
    /// bytes that arrived before.
    fn adopt(&mut self, stream: Self::Stream, token: usize) -> io::Result<Self::Socket>;

    /// Reads into `buf`: `Ok(Some(0))` is end of stream, `Ok(None)` means
    /// nothing now (readiness will be reported).
    fn read(&mut self, socket: &mut Self::Socket, buf: &mut [u8]) -> io::Result<Option<usize>>;

    /// Writes from `buf`; `Ok(None)` means the socket is full for now.
    fn write(&mut self, socket: &mut Self::Socket, buf: &[u8]) -> io::Result<Option<usize>>;

    /// Whether to report the socket when it can take more bytes. The
    /// shard asks only while bytes wait, so that a socket whose writes
    /// all succeed is not reported after every ACK. A poller that learns of
    /// writability another way may ignore it.
    fn want_writable(
        &mut self,
        socket: &mut Self::Socket,
        token: usize,
        on: bool,
    ) -> io::Result<()> {
        let _ = (socket, token, on);
        Ok(())
    }

    /// Writes what the poller itself holds for the socket (a TLS layer's
    /// records that a full socket refused); called before every pump.
    fn flush(&mut self, socket: &mut Self::Socket) -> io::Result<()> {
        let _ = socket;
        Ok(())
    }

    /// Whether the poller holds bytes for the socket that wait for it to
    /// become writable (see [`Poller::flush`]).
    fn holds_output(&self, socket: &Self::Socket) -> bool {
        let _ = socket;
        false
    }

    /// Sends FIN (best effort); reading stays possible.
    fn shutdown(&mut self, socket: &mut Self::Socket);

    /// Appends the tokens that may have progressed; `Pending` (with `cx`
    /// registered) when there are none.
    fn poll_ready(&mut self, cx: &mut Context<'_>, ready: &mut Vec<usize>) -> Poll<io::Result<()>>;
}

/// A poller for any async stream: each socket gets a waker that records its
/// token. Used by the simulator (turmoil's streams) and by tests; the TCP
/// transport uses its own epoll instance instead (see `tcp`).
pub struct WakerPoller<S> {
    ready: Arc<ReadyList>,
    _stream: std::marker::PhantomData<fn() -> S>,
}

#[derive(Default)]
struct ReadyList {
    inner: Mutex<ReadyInner>,
}

#[derive(Default)]
struct ReadyInner {
    tokens: Vec<usize>,
    shard: Option<Waker>,
}

struct TokenWaker {
    token: usize,
    list: Arc<ReadyList>,
}

impl Wake for TokenWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let shard = {
            let mut inner = lock(&self.list.inner);
            inner.tokens.push(self.token);
            inner.shard.take()
        };
        if let Some(w) = shard {
            w.wake();
        }
    }
}

impl<S> WakerPoller<S> {
    pub fn new() -> Self {
        WakerPoller {
            ready: Arc::default(),
            _stream: std::marker::PhantomData,
        }
    }
}

impl<S> Default for WakerPoller<S> {
    fn default() -> Self {
        Self::new()
    }
}

/// A stream and the waker that reports it under its token.
pub struct Woken<S> {
    stream: S,
    waker: Waker,
}

impl<S> Poller for WakerPoller<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = S;
    type Socket = Woken<S>;

    fn adopt(&mut self, stream: S, token: usize) -> io::Result<Woken<S>> {
        let waker = Waker::from(Arc::new(TokenWaker {
            token,
            list: Arc::clone(&self.ready),
        }));
        // Reported once at once: until a read finds the stream empty, its
        // waker is registered nowhere.
        waker.wake_by_ref();
        Ok(Woken { stream, waker })
    }

    fn read(&mut self, socket: &mut Woken<S>, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let mut cx = Context::from_waker(&socket.waker);
        let mut read = ReadBuf::new(buf);
        match Pin::new(&mut socket.stream).poll_read(&mut cx, &mut read) {
            Poll::Pending => Ok(None),
            Poll::Ready(Ok(())) => Ok(Some(read.filled().len())),
            Poll::Ready(Err(e)) => Err(e),
        }
    }

    fn write(&mut self, socket: &mut Woken<S>, buf: &[u8]) -> io::Result<Option<usize>> {
        let mut cx = Context::from_waker(&socket.waker);
        let stream = Pin::new(&mut socket.stream);
        match stream.poll_write(&mut cx, buf) {
            Poll::Pending => Ok(None),
            Poll::Ready(Ok(n)) => {
                // Streams that buffer (turmoil's) need a flush to send.
                let _ = Pin::new(&mut socket.stream).poll_flush(&mut cx);
                Ok(Some(n))
            }
            Poll::Ready(Err(e)) => Err(e),
        }
    }

    fn shutdown(&mut self, socket: &mut Woken<S>) {
        let mut cx = Context::from_waker(&socket.waker);
        let _ = Pin::new(&mut socket.stream).poll_shutdown(&mut cx);
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>, ready: &mut Vec<usize>) -> Poll<io::Result<()>> {
        let mut inner = lock(&self.ready.inner);
        if inner.tokens.is_empty() {
            inner.shard = Some(cx.waker().clone());
            return Poll::Pending;
        }
        ready.append(&mut inner.tokens);
        Poll::Ready(Ok(()))
    }
}
