//! The lingering close: every path that writes an answer and then ends a
//! connection (a 503 at admission or after descriptor exhaustion, a 4xx or
//! 408 from the handshake) goes through [`answer_and_linger`]. Upgraded
//! connections linger the same way inside core's `Connection`, with the
//! same bounds.
//!
//! Why: closing a socket whose receive queue still holds unread bytes
//! makes the kernel send a reset instead of a FIN, and a reset can destroy
//! the answer in the client's receive buffer before it is read. So the
//! server shuts down writing (the answer is followed by a FIN), then reads
//! and discards what the client still sends until the client closes or a
//! bound in time or bytes passes.

use surge_core::connection::{LINGER, LINGER_BYTES};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The lingering close without waiting, for the answer given with the
/// spare descriptor when the file limit is reached (that descriptor must
/// be free again at once): writes `response` (it fits a fresh socket's
/// buffer), shuts down writing, and discards what has already arrived
/// before the socket is dropped, so a request already received does not
/// turn the close into a reset.
pub(crate) fn answer_at_once(stream: &tokio::net::TcpStream, response: &[u8]) {
    let _ = stream.try_write(response);
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    let mut sink = [0u8; 4096];
    let mut discarded = 0usize;
    while discarded <= LINGER_BYTES {
        match stream.try_read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => discarded += n,
        }
    }
}

/// Writes `response`, shuts down writing, then reads and discards until
/// the client closes, [`LINGER`] has passed (writing included) or
/// [`LINGER_BYTES`] have been discarded. The caller drops the socket after.
pub(crate) async fn answer_and_linger<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    response: &[u8],
) {
    let linger = async {
        stream.write_all(response).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut discarded = 0usize;
        while discarded <= LINGER_BYTES {
            match stream.read(&mut sink).await? {
                0 => break,
                n => discarded += n,
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(LINGER, linger).await;
}
