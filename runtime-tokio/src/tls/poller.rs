//! TLS between a shard and its sockets: [`TlsPoller`] wraps the shard's
//! poller, so the link and core's `Connection` read and write plaintext
//! whether or not the socket speaks TLS. A plain socket passes straight
//! through; a TLS socket's ciphertext goes through its rustls
//! `ServerConnection`.
//!
//! Reads: the socket's bytes land in the shard's shared read buffer, are
//! copied into rustls and decrypted, and the plaintext is handed back in
//! the same buffer. Writes: plaintext goes into rustls only once the TLS
//! bytes of earlier writes have left (so core keeps what the socket
//! refuses and its write timeout still sees a stalled client); whatever a
//! full socket leaves in rustls is flushed on the next pump, with
//! writability asked for meanwhile ([`Poller::holds_output`]).

use std::io::{self, Read, Write};
use std::task::{Context, Poll};

use rustls::ServerConnection;

use crate::poller::Poller;

/// What an upgrade task hands its shard: the socket, and its TLS session
/// when the listener speaks TLS.
pub(crate) struct Upgraded<S> {
    pub stream: S,
    pub tls: Option<Box<TlsSession>>,
}

/// One connection's TLS state after the handshake.
pub(crate) struct TlsSession {
    conn: ServerConnection,
    /// A close_notify waits in `conn`: shut the socket down once it left.
    shutdown_after_flush: bool,
}

impl TlsSession {
    pub fn new(conn: ServerConnection) -> Self {
        TlsSession {
            conn,
            shutdown_after_flush: false,
        }
    }

    /// Copies ciphertext into rustls and decrypts what forms whole records.
    fn feed(&mut self, mut ciphertext: &[u8]) -> io::Result<()> {
        while !ciphertext.is_empty() {
            self.conn.read_tls(&mut ciphertext)?;
            self.conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        Ok(())
    }
}

/// A shard's socket: the poller's own, plus TLS when the listener has it.
pub(crate) struct TlsSocket<K> {
    socket: K,
    tls: Option<Box<TlsSession>>,
}

/// Wraps a shard's poller with TLS for the sockets that have it.
pub(crate) struct TlsPoller<P> {
    inner: P,
    /// Tokens whose TLS session already holds plaintext when adopted: the
    /// socket itself may never be reported readable for it.
    buffered: Vec<usize>,
}

impl<P> TlsPoller<P> {
    pub fn new(inner: P) -> Self {
        TlsPoller {
            inner,
            buffered: Vec::new(),
        }
    }
}

/// The inner poller's socket as an `io::Write` for rustls' `write_tls`.
struct SocketWriter<'a, P: Poller> {
    poller: &'a mut P,
    socket: &'a mut P::Socket,
}

impl<P: Poller> Write for SocketWriter<'_, P> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.poller.write(self.socket, buf)? {
            Some(n) => Ok(n),
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the TLS bytes rustls holds until none is left (`true`) or the
/// socket is full (`false`); then sends a FIN if a close_notify asked for it.
fn flush_tls<P: Poller>(
    poller: &mut P,
    socket: &mut P::Socket,
    tls: &mut TlsSession,
) -> io::Result<bool> {
    while tls.conn.wants_write() {
        let mut out = SocketWriter {
            poller: &mut *poller,
            socket: &mut *socket,
        };
        match tls.conn.write_tls(&mut out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    if tls.shutdown_after_flush {
        tls.shutdown_after_flush = false;
        poller.shutdown(socket);
    }
    Ok(true)
}

impl<P: Poller> Poller for TlsPoller<P> {
    type Stream = Upgraded<P::Stream>;
    type Socket = TlsSocket<P::Socket>;

    fn adopt(&mut self, stream: Self::Stream, token: usize) -> io::Result<Self::Socket> {
        let socket = self.inner.adopt(stream.stream, token)?;
        let mut tls = stream.tls;
        if let Some(session) = tls.as_deref_mut() {
            let state = session
                .conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if state.plaintext_bytes_to_read() > 0 {
                self.buffered.push(token);
            }
        }
        Ok(TlsSocket { socket, tls })
    }

    fn read(&mut self, socket: &mut Self::Socket, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Some(tls) = socket.tls.as_deref_mut() else {
            return self.inner.read(&mut socket.socket, buf);
        };
        loop {
            // Plaintext already decrypted comes first; Ok(0) is the
            // client's close_notify.
            match tls.conn.reader().read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            let n = match self.inner.read(&mut socket.socket, buf)? {
                None => return Ok(None),
                // A TCP close without close_notify ends the connection
                // as it would a plain one.
                Some(0) => return Ok(Some(0)),
                Some(n) => n,
            };
            if let Err(e) = tls.feed(&buf[..n]) {
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
        let n = tls.conn.writer().write(buf)?;
        if n == 0 {
            return Ok(None);
        }
        flush_tls(&mut self.inner, &mut socket.socket, tls)?;
        Ok(Some(n))
    }

    fn flush(&mut self, socket: &mut Self::Socket) -> io::Result<()> {
        match socket.tls.as_deref_mut() {
            Some(tls) => flush_tls(&mut self.inner, &mut socket.socket, tls).map(drop),
            None => self.inner.flush(&mut socket.socket),
        }
    }

    fn holds_output(&self, socket: &Self::Socket) -> bool {
        match socket.tls.as_deref() {
            Some(tls) => tls.conn.wants_write() || tls.shutdown_after_flush,
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
        tls.conn.send_close_notify();
        tls.shutdown_after_flush = true;
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
