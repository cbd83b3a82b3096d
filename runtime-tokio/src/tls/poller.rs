//! TLS between a shard and its sockets: [`TlsPoller`] wraps the shard's
//! poller, so the link and core's `Connection` read and write plaintext
//! whether or not the socket speaks TLS. A plain socket passes straight
//! through; a TLS socket's bytes go through its [`TlsSession`].
//!
//! Reads: the socket's bytes land in the shard's shared read buffer, go to
//! the session, and the plaintext comes back in the same buffer. Writes:
//! plaintext is encrypted into the poller's scratch buffer and written; the
//! session keeps only what a full socket refused, and takes no new
//! plaintext until that has left (so core keeps what the socket refuses
//! and its write timeout still sees a stalled client); writability is
//! asked for meanwhile ([`Poller::holds_output`]).

use std::io;
use std::task::{Context, Poll};

use super::session::TlsSession;
use crate::poller::Poller;

/// What an upgrade task hands its shard: the socket, and its TLS session
/// when the listener speaks TLS.
pub(crate) struct Upgraded<S> {
    pub stream: S,
    pub tls: Option<Box<TlsSession>>,
}

/// A shard's socket: the poller's own, plus TLS when the listener has it.
pub(crate) struct TlsSocket<K> {
    socket: K,
    tls: Option<Box<TlsSession>>,
}

/// Wraps a shard's poller with TLS for the sockets that have it.
pub(crate) struct TlsPoller<P> {
    inner: P,
    /// Tokens whose session already holds plaintext when adopted: the
    /// socket itself may never be reported readable for it.
    buffered: Vec<usize>,
    /// Where records are encrypted before they are written.
    scratch: Vec<u8>,
}

impl<P> TlsPoller<P> {
    pub fn new(inner: P) -> Self {
        TlsPoller {
            inner,
            buffered: Vec::new(),
            scratch: Vec::new(),
        }
    }
}

/// Writes what the session holds until none is left (`true`) or the
/// socket is full (`false`); then sends a FIN if a close_notify asked for it.
fn flush_tls<P: Poller>(
    poller: &mut P,
    socket: &mut P::Socket,
    tls: &mut TlsSession,
) -> io::Result<bool> {
    while !tls.outgoing().is_empty() {
        match poller.write(socket, tls.outgoing())? {
            Some(0) => return Err(io::ErrorKind::WriteZero.into()),
            Some(n) => tls.sent(n),
            None => return Ok(false),
        }
    }
    if tls.take_shutdown() {
        poller.shutdown(socket);
    }
    Ok(true)
}

/// Writes `bytes` until the socket is full; returns how many went.
fn write_some<P: Poller>(
    poller: &mut P,
    socket: &mut P::Socket,
    bytes: &[u8],
) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match poller.write(socket, &bytes[written..])? {
            Some(0) => return Err(io::ErrorKind::WriteZero.into()),
            Some(n) => written += n,
            None => break,
        }
    }
    Ok(written)
}

impl<P: Poller> Poller for TlsPoller<P> {
    type Stream = Upgraded<P::Stream>;
    type Socket = TlsSocket<P::Socket>;

    fn adopt(&mut self, stream: Self::Stream, token: usize) -> io::Result<Self::Socket> {
        let socket = self.inner.adopt(stream.stream, token)?;
        if stream.tls.as_deref().is_some_and(TlsSession::has_plaintext) {
            self.buffered.push(token);
        }
        Ok(TlsSocket {
            socket,
            tls: stream.tls,
        })
    }

    fn read(&mut self, socket: &mut Self::Socket, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(tls) = socket.tls.as_deref_mut() else {
            return self.inner.read(&mut socket.socket, buf);
        };
        loop {
            // Plaintext already decrypted comes first; Some(0) is the
            // client's close_notify.
            if let Some(n) = tls.read_plaintext(buf) {
                return Ok(Some(n));
            }
            let n = match self.inner.read(&mut socket.socket, buf)? {
                None => return Ok(None),
                // A TCP close without close_notify ends the connection
                // as it would a plain one.
                Some(0) => return Ok(Some(0)),
                Some(n) => n,
            };
            if let Err(e) = tls.receive(&buf[..n]) {
                // rustls queued an alert saying why; best effort.
                let _ = flush_tls(&mut self.inner, &mut socket.socket, tls);
                return Err(e);
            }
        }
    }

    fn write(&mut self, socket: &mut Self::Socket, buf: &[u8]) -> io::Result<Option<usize>> {
        let Some(tls) = socket.tls.as_deref_mut() else {
            return self.inner.write(&mut socket.socket, buf);
        };
        // Earlier TLS bytes first: while they wait, the plaintext stays
        // with core, which counts it as refused.
        if !flush_tls(&mut self.inner, &mut socket.socket, tls)? {
            return Ok(None);
        }
        self.scratch.clear();
        if !tls.encrypt(buf, &mut self.scratch)? {
            return Ok(None);
        }
        let sent = write_some(&mut self.inner, &mut socket.socket, &self.scratch)?;
        tls.keep_unsent(&self.scratch[sent..]);
        Ok(Some(buf.len()))
    }

    fn flush(&mut self, socket: &mut Self::Socket) -> io::Result<()> {
        match socket.tls.as_deref_mut() {
            Some(tls) => flush_tls(&mut self.inner, &mut socket.socket, tls).map(drop),
            None => self.inner.flush(&mut socket.socket),
        }
    }

    fn holds_output(&self, socket: &Self::Socket) -> bool {
        match socket.tls.as_deref() {
            Some(tls) => !tls.outgoing().is_empty() || tls.shutdown_pending(),
            None => self.inner.holds_output(&socket.socket),
        }
    }

    fn want_writable(
        &mut self,
        socket: &mut Self::Socket,
        token: usize,
        on: bool,
    ) -> io::Result<()> {
        self.inner.want_writable(&mut socket.socket, token, on)
    }

    fn shutdown(&mut self, socket: &mut Self::Socket) {
        let Some(tls) = socket.tls.as_deref_mut() else {
            return self.inner.shutdown(&mut socket.socket);
        };
        // close_notify, then the FIN once it has left.
        tls.close_notify();
        if !tls.shutdown_pending() {
            // No session to close (it never finished): FIN at once.
            return self.inner.shutdown(&mut socket.socket);
        }
        let _ = flush_tls(&mut self.inner, &mut socket.socket, tls);
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>, ready: &mut Vec<usize>) -> Poll<io::Result<()>> {
        if !self.buffered.is_empty() {
            ready.append(&mut self.buffered);
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx, ready)
    }
}
