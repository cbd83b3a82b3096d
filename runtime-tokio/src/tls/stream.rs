//! A [`TlsSession`] over an async socket, for the tasks that own a
//! connection before a shard does: the upgrade task (the TLS handshake,
//! then the WebSocket handshake and any rejection over it) and the refusal
//! of an over-capacity client. The shard drives the same session without
//! a task (see `poller`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::session::TlsSession;
use crate::read_buffer::read_into;

/// Ciphertext read per socket read once the handshake is done.
const READ_CHUNK: usize = 4096;

pub(crate) struct TlsStream<S> {
    io: S,
    tls: TlsSession,
    /// close_notify was queued by a shutdown.
    closing: bool,
}

/// Runs the TLS handshake on `io`. The caller bounds it in time.
pub(crate) async fn accept<S>(io: S, config: Arc<ServerConfig>) -> io::Result<TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = TlsStream {
        io,
        tls: TlsSession::new(config)?,
        closing: false,
    };
    while stream.tls.is_handshaking() {
        stream.send_all().await?;
        // The thread's shared buffer: a waiting handshake holds none.
        let tls = &mut stream.tls;
        match read_into(&mut stream.io, |ciphertext| tls.receive(ciphertext)).await? {
            None => return Err(io::ErrorKind::UnexpectedEof.into()),
            Some(Ok(())) => {}
            Some(Err(e)) => {
                // rustls queued an alert saying why; best effort.
                let _ = stream.send_all().await;
                return Err(e);
            }
        }
    }
    // The last flight (TLS 1.3 session tickets) goes out now.
    stream.send_all().await?;
    Ok(stream)
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    async fn send_all(&mut self) -> io::Result<()> {
        while !self.tls.outgoing().is_empty() {
            let n = self.io.write(self.tls.outgoing()).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.tls.sent(n);
        }
        Ok(())
    }

    /// Writes what the session holds for the socket; ready when all left.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.tls.outgoing().is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, self.tls.outgoing()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tls.sent(n);
        }
        Poll::Ready(Ok(()))
    }

    /// The socket and the session, for the shard.
    pub fn into_parts(self) -> (S, TlsSession) {
        (self.io, self.tls)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(n) = this.tls.read_plaintext(buf.initialize_unfilled()) {
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            // Alerts or key updates rustls answered; a full socket must not
            // stop the reading.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // A TCP close without close_notify: end of stream all the same.
                return Poll::Ready(Ok(()));
            }
            this.tls.receive(read.filled())?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        let mut records = Vec::new();
        if !this.tls.encrypt(buf, &mut records)? {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        }
        this.tls.keep_unsent(&records);
        // Sent now if the socket takes it; the rest on the next call.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            this.tls.close_notify();
        }
        ready!(this.poll_send(cx))?;
        this.tls.take_shutdown();
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
