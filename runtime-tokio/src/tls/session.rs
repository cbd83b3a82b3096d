//! One connection's TLS with rustls' unbuffered API: rustls keeps the
//! keys and the protocol state, surge keeps the bytes. Ciphertext waiting
//! for the rest of its record, TLS bytes waiting for the socket and
//! plaintext waiting for its reader each live in a buffer allocated only
//! while it holds something, so an idle session holds none of them (the
//! buffered `ServerConnection` keeps a 4 KiB read buffer for good; see
//! PERFORMANCE.md).

use std::io;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};

pub(crate) struct TlsSession {
    conn: UnbufferedServerConnection,
    /// Ciphertext received and not yet a whole record.
    incoming: Vec<u8>,
    /// TLS bytes the socket has not taken yet.
    outgoing: Vec<u8>,
    /// Decrypted data the reader has not taken yet.
    plaintext: Vec<u8>,
    /// The client sent close_notify: no more data will come.
    peer_closed: bool,
    /// A close_notify is queued: send the FIN once `outgoing` has left.
    shutdown_after_flush: bool,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Frees a drained buffer's memory: idle sessions hold no buffers.
fn release(buffer: &mut Vec<u8>) {
    if buffer.is_empty() && buffer.capacity() > 0 {
        *buffer = Vec::new();
    }
}

/// Appends what `write` produces to `out`, growing it to the size rustls
/// asks for. `write` returns the bytes written or the size it needs.
fn append(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Result<usize, String>>,
) -> io::Result<()> {
    let start = out.len();
    loop {
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(Ok(required)) => out.resize(start + required, 0),
            Err(Err(e)) => {
                out.truncate(start);
                return Err(invalid(e));
            }
        }
    }
}

fn encode_error(e: EncodeError) -> Result<usize, String> {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => Ok(required_size),
        other => Err(other.to_string()),
    }
}

fn encrypt_error(e: EncryptError) -> Result<usize, String> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Ok(required_size)
        }
        other => Err(other.to_string()),
    }
}

impl TlsSession {
    pub fn new(config: Arc<ServerConfig>) -> io::Result<Self> {
        Ok(TlsSession {
            conn: UnbufferedServerConnection::new(config).map_err(invalid)?,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            plaintext: Vec::new(),
            peer_closed: false,
            shutdown_after_flush: false,
        })
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Takes ciphertext the socket read: handshake records and alerts to
    /// send go to [`Self::outgoing`], decrypted data to the reader.
    pub fn receive(&mut self, ciphertext: &[u8]) -> io::Result<()> {
        self.incoming.extend_from_slice(ciphertext);
        let advanced = self.advance();
        release(&mut self.incoming);
        advanced
    }

    /// Runs rustls over the ciphertext received so far, until it needs more.
    fn advance(&mut self) -> io::Result<()> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    self.incoming.drain(..discard);
                    self.queue_alert();
                    return Err(invalid(e));
                }
            };
            let again = match state {
                ConnectionState::EncodeTlsData(mut record) => {
                    append(&mut self.outgoing, |buf| {
                        record.encode(buf).map_err(encode_error)
                    })?;
                    true
                }
                // Queued in `outgoing`, which the socket writer empties.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    true
                }
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(invalid)?;
                        discard += record.discard;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                    true
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    true
                }
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    false
                }
                // Waiting for the client, or nothing left to read.
                _ => false,
            };
            self.incoming.drain(..discard);
            if !again {
                return Ok(());
            }
        }
    }

    /// After an error rustls has queued the alert that says why; encode it
    /// so the socket writer sends it (best effort).
    fn queue_alert(&mut self) {
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
        if let Ok(ConnectionState::EncodeTlsData(mut record)) = state {
            let _ = append(&mut self.outgoing, |buf| {
                record.encode(buf).map_err(encode_error)
            });
        }
    }

    /// Moves up to `buf.len()` bytes of decrypted data into `buf`; `None`
    /// when there is none, `Some(0)` after the client's close_notify.
    pub fn read_plaintext(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.plaintext.is_empty() {
            return self.peer_closed.then_some(0);
        }
        let n = self.plaintext.len().min(buf.len());
        buf[..n].copy_from_slice(&self.plaintext[..n]);
        self.plaintext.drain(..n);
        release(&mut self.plaintext);
        Some(n)
    }

    pub fn has_plaintext(&self) -> bool {
        !self.plaintext.is_empty()
    }

    /// Encrypts `plaintext` into records appended to `out`. `false` while
    /// the handshake has not finished.
    pub fn encrypt(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> io::Result<bool> {
        self.with_traffic(|w| append(out, |buf| w.encrypt(plaintext, buf).map_err(encrypt_error)))
    }

    /// Queues a close_notify; the socket's FIN follows once it has left.
    pub fn close_notify(&mut self) {
        let mut alert = std::mem::take(&mut self.outgoing);
        let queued = self.with_traffic(|w| {
            append(&mut alert, |buf| {
                w.queue_close_notify(buf).map_err(encrypt_error)
            })
        });
        self.outgoing = alert;
        self.shutdown_after_flush = matches!(queued, Ok(true));
    }

    fn with_traffic(
        &mut self,
        write: impl FnOnce(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
        ) -> io::Result<()>,
    ) -> io::Result<bool> {
        let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
        let wrote = match state.map_err(invalid)? {
            ConnectionState::WriteTraffic(mut traffic) => {
                write(&mut traffic)?;
                true
            }
            _ => false,
        };
        self.incoming.drain(..discard);
        Ok(wrote)
    }

    /// TLS bytes waiting for the socket.
    pub fn outgoing(&self) -> &[u8] {
        &self.outgoing
    }

    /// The socket took `n` bytes of [`Self::outgoing`].
    pub fn sent(&mut self, n: usize) {
        self.outgoing.drain(..n);
        release(&mut self.outgoing);
    }

    /// Keeps TLS bytes the socket did not take, after those already waiting.
    pub fn keep_unsent(&mut self, bytes: &[u8]) {
        self.outgoing.extend_from_slice(bytes);
    }

    /// Whether a FIN is due once `outgoing` is empty (and clears it).
    pub fn take_shutdown(&mut self) -> bool {
        std::mem::take(&mut self.shutdown_after_flush)
    }

    pub fn shutdown_pending(&self) -> bool {
        self.shutdown_after_flush
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use rustls::{ClientConfig, ClientConnection, RootCertStore};

    use super::*;
    use crate::tls::{TlsConfig, certified_key};

    /// A session with a self-signed certificate and a rustls client
    /// trusting it, speaking `version`.
    fn pair(version: &'static rustls::SupportedProtocolVersion) -> (TlsSession, ClientConnection) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let tls = TlsConfig::new(
            certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).expect("key"),
        );
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).expect("root");
        let config = ClientConfig::builder_with_provider(crate::tls::certs::provider())
            .with_protocol_versions(&[version])
            .expect("version")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = ClientConnection::new(Arc::new(config), "localhost".try_into().expect("name"))
            .expect("client");
        let session = TlsSession::new(Arc::clone(tls.server_config())).expect("session");
        (session, client)
    }

    /// Client to server, `step` bytes at a time.
    fn to_server(client: &mut ClientConnection, session: &mut TlsSession, step: usize) {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).expect("client write");
        }
        for piece in wire.chunks(step) {
            session.receive(piece).expect("receive");
        }
    }

    fn to_client(bytes: &[u8], client: &mut ClientConnection) {
        let mut wire = bytes;
        while !wire.is_empty() {
            client.read_tls(&mut wire).expect("client read");
            client.process_new_packets().expect("client process");
        }
    }

    fn handshake(session: &mut TlsSession, client: &mut ClientConnection) {
        while session.is_handshaking() || client.is_handshaking() {
            to_server(client, session, usize::MAX);
            let out = session.outgoing().to_vec();
            session.sent(out.len());
            to_client(&out, client);
        }
    }

    #[test]
    fn a_client_that_is_not_speaking_tls_gets_an_alert() {
        let (mut session, _client) = pair(&rustls::version::TLS13);
        assert!(
            session
                .receive(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
                .is_err()
        );
        // An alert record: content type 21.
        assert_eq!(session.outgoing().first(), Some(&21));
    }

    #[test]
    fn records_in_any_split_decrypt_and_an_idle_session_keeps_no_buffer() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (mut session, mut client) = pair(version);
            handshake(&mut session, &mut client);
            // A subscribe sent in one record, fed one byte at a time.
            let request = br#"{"type":"subscribe","channels":["a.b"]}"#;
            client.writer().write_all(request).expect("plaintext");
            to_server(&mut client, &mut session, 1);
            let mut buf = [0u8; 128];
            let n = session.read_plaintext(&mut buf).expect("plaintext");
            assert_eq!(&buf[..n], request);
            assert_eq!(session.read_plaintext(&mut buf), None);

            let mut records = Vec::new();
            assert!(
                session
                    .encrypt(b"subscribed", &mut records)
                    .expect("encrypt")
            );
            to_client(&records, &mut client);
            let mut answer = [0u8; 16];
            let n = client.reader().read(&mut answer).expect("answer");
            assert_eq!(&answer[..n], b"subscribed");

            // Idle: rustls' keys and state, and no buffer of surge's.
            assert_eq!(session.incoming.capacity(), 0);
            assert_eq!(session.outgoing.capacity(), 0);
            assert_eq!(session.plaintext.capacity(), 0);
            let size = std::mem::size_of::<TlsSession>();
            assert!(size <= 1200, "TlsSession is {size} bytes (budget 1200)");

            // close_notify either way, then end of stream.
            session.close_notify();
            assert!(session.shutdown_pending());
            let alert = session.outgoing().to_vec();
            session.sent(alert.len());
            to_client(&alert, &mut client);
            assert_eq!(client.reader().read(&mut answer).expect("eof"), 0);
            client.send_close_notify();
            to_server(&mut client, &mut session, usize::MAX);
            assert_eq!(session.read_plaintext(&mut buf), Some(0));
        }
    }
}
