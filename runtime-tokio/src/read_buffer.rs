//! The read buffer the tasks that own a connection before its shard share,
//! one per thread: bytes are handed on (to core's handshake, to a TLS
//! session) before the read returns, so a waiting connection carries no
//! read buffer of its own. Below the upgrade path and TLS, which both use it.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, ReadBuf};

thread_local! {
    /// The read buffer every connection on this thread shares: bytes are
    /// handed to core (handshake or frame decoder) before the read returns,
    /// so a waiting connection carries no read buffer of its own.
    static READ_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; 16 * 1024].into_boxed_slice());
}

/// Reads what the socket has into the thread's shared buffer and passes the
/// bytes to `consume` within the same poll. `Ok(None)` is end of stream.
pub(crate) async fn read_into<S, T>(
    stream: &mut S,
    mut consume: impl FnMut(&[u8]) -> T,
) -> std::io::Result<Option<T>>
where
    S: AsyncRead + Unpin,
{
    std::future::poll_fn(|cx| {
        READ_BUFFER.with(|cell| {
            let mut buffer = cell.borrow_mut();
            let mut read = ReadBuf::new(&mut buffer[..]);
            match Pin::new(&mut *stream).poll_read(cx, &mut read) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(Ok(None)),
                Poll::Ready(Ok(())) => Poll::Ready(Ok(Some(consume(read.filled())))),
            }
        })
    })
    .await
}
