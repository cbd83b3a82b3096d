//! TLS on the public listener, with rustls.
//!
//! rustls is sans-IO like core, so it fits the shard-owned sockets. Its
//! unbuffered API leaves the buffers to surge, so an idle session holds
//! only rustls' keys and state (`session`). The handshake runs in the
//! connection's upgrade task (`stream`, under the same deadline as the
//! HTTP handshake, counted from the accept), and the shard then drives the
//! plain socket and the session through [`TlsPoller`], which turns
//! ciphertext into the plaintext core's `Connection` reads and writes.
//!
//! Certificates come from a [`CertStore`] the server fills from PEM files
//! and replaces on SIGHUP: new handshakes use the new certificate, and
//! connections already open keep the keys they negotiated.

mod certs;
mod poller;
mod refusal;
mod session;
mod stream;

pub use certs::{CertStore, PemError, TlsConfig, certified_key};
#[cfg(test)]
pub(crate) use poller::TlsSocket;
pub(crate) use poller::{TlsPoller, Upgraded};
pub use refusal::{REFUSAL_DEADLINE, REFUSAL_HANDSHAKES};
pub(crate) use refusal::{RefusalHandshakes, answer as answer_refusal};
pub(crate) use stream::{TlsStream, accept};
