//! Where an idle TLS connection's bytes go: a rustls server session with
//! surge's configuration, driven in memory against a rustls client, with
//! every heap allocation of this test binary counted. surge drives the
//! unbuffered API (`UnbufferedServerConnection`); the buffered
//! `ServerConnection` is measured beside it, as the reason why. Run with
//! `--nocapture` to see the breakdown; the budgets keep both from growing
//! unnoticed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConnection};
use surge_runtime::tls::{TlsConfig, certified_key};

/// Bytes live on the heap, all threads.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: forwards to the system allocator, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: the caller's layout contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::SeqCst);
        // SAFETY: as for `dealloc`, with a valid new size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The heap bytes `server` held: what its drop gives back.
fn held<T>(server: T) -> usize {
    let before = LIVE.load(Ordering::SeqCst);
    drop(server);
    (before - LIVE.load(Ordering::SeqCst)) as usize
}

/// Moves every TLS byte one side has for the other.
fn pump(from: &mut impl WriteTls, to: &mut impl ReadTls) {
    let mut wire = Vec::new();
    while from.wants() {
        from.write(&mut wire);
    }
    let mut slice = &wire[..];
    while !slice.is_empty() {
        to.read(&mut slice);
    }
}

trait WriteTls {
    fn wants(&self) -> bool;
    fn write(&mut self, out: &mut Vec<u8>);
}
trait ReadTls {
    fn read(&mut self, input: &mut &[u8]);
}

macro_rules! tls_io {
    ($t:ty) => {
        impl WriteTls for $t {
            fn wants(&self) -> bool {
                self.wants_write()
            }
            fn write(&mut self, out: &mut Vec<u8>) {
                self.write_tls(out).expect("write_tls");
            }
        }
        impl ReadTls for $t {
            fn read(&mut self, input: &mut &[u8]) {
                self.read_tls(input).expect("read_tls");
                self.process_new_packets().expect("process");
            }
        }
    };
}
tls_io!(ServerConnection);
tls_io!(ClientConnection);

/// A server session with surge's configuration and a client speaking
/// `version`, handshaken, and after `exchange` one request and answer.
fn session(
    tls: &TlsConfig,
    roots: &RootCertStore,
    version: &'static rustls::SupportedProtocolVersion,
    exchange: bool,
) -> ServerConnection {
    let config = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[version])
            .expect("version")
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
    );
    let mut client =
        ClientConnection::new(config, "localhost".try_into().expect("name")).expect("client");
    let mut server = ServerConnection::new(Arc::clone(tls.server_config())).expect("server");
    while server.is_handshaking() || client.is_handshaking() {
        pump(&mut client, &mut server);
        pump(&mut server, &mut client);
    }
    if exchange {
        // A subscribe and its answer.
        client
            .writer()
            .write_all(b"{\"type\":\"ping\"}")
            .expect("plaintext");
        pump(&mut client, &mut server);
        let mut buf = [0u8; 64];
        let n = server.reader().read(&mut buf).expect("read");
        assert_eq!(&buf[..n], b"{\"type\":\"ping\"}");
        server
            .writer()
            .write_all(b"{\"type\":\"pong\"}")
            .expect("plaintext");
        pump(&mut server, &mut client);
    }
    server
}

/// The same with rustls' unbuffered API, where the caller owns the
/// buffers, as surge's `TlsSession` drives it.
fn unbuffered_session(
    tls: &TlsConfig,
    roots: &RootCertStore,
    version: &'static rustls::SupportedProtocolVersion,
) -> UnbufferedServerConnection {
    let config = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[version])
            .expect("version")
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
    );
    let mut client =
        ClientConnection::new(config, "localhost".try_into().expect("name")).expect("client");
    let mut server =
        UnbufferedServerConnection::new(Arc::clone(tls.server_config())).expect("server");
    let mut incoming: Vec<u8> = Vec::new();
    let mut outgoing = vec![0u8; 64 << 10];
    let mut out_len = 0;
    let mut pinged = false;
    for _ in 0..100 {
        while client.wants_write() {
            client.write_tls(&mut incoming).expect("client write");
        }
        let UnbufferedStatus { mut discard, state } = server.process_tls_records(&mut incoming);
        let mut finished = false;
        match state.expect("server state") {
            ConnectionState::EncodeTlsData(mut e) => {
                out_len += e.encode(&mut outgoing[out_len..]).expect("encode");
            }
            ConnectionState::TransmitTlsData(t) => {
                let mut wire = &outgoing[..out_len];
                while !wire.is_empty() {
                    client.read_tls(&mut wire).expect("client read");
                    client.process_new_packets().expect("client process");
                }
                out_len = 0;
                t.done();
            }
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(record) = r.next_record() {
                    let record = record.expect("record");
                    assert_eq!(record.payload, b"{\"type\":\"ping\"}");
                    discard += record.discard;
                }
            }
            ConnectionState::WriteTraffic(mut w) if !client.is_handshaking() => {
                if pinged {
                    let n = w
                        .encrypt(b"{\"type\":\"pong\"}", &mut outgoing)
                        .expect("encrypt");
                    let mut wire = &outgoing[..n];
                    while !wire.is_empty() {
                        client.read_tls(&mut wire).expect("client read");
                        client.process_new_packets().expect("client process");
                    }
                    finished = true;
                } else {
                    client
                        .writer()
                        .write_all(b"{\"type\":\"ping\"}")
                        .expect("ping");
                    pinged = true;
                }
            }
            ConnectionState::WriteTraffic(_) | ConnectionState::BlockedHandshake => {}
            _ => panic!("unexpected state"),
        }
        incoming.drain(..discard);
        if finished {
            return server;
        }
    }
    panic!("the unbuffered handshake did not finish");
}

#[test]
fn an_idle_tls_session_holds_a_bounded_number_of_bytes() {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let certified = certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
        .expect("certified key");
    let tls = TlsConfig::new(certified);
    let mut roots = RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let inline = std::mem::size_of::<ServerConnection>();
    for (version, name) in [
        (&rustls::version::TLS13, "TLS 1.3"),
        (&rustls::version::TLS12, "TLS 1.2"),
    ] {
        let fresh = held(ServerConnection::new(Arc::clone(tls.server_config())).expect("server"));
        let handshaken = held(session(&tls, &roots, version, false));
        let idle = held(session(&tls, &roots, version, true));
        println!(
            "{name}: ServerConnection {inline} B inline; heap {fresh} B fresh, {handshaken} B after the handshake, {idle} B idle after one exchange"
        );
        // What a shard keeps per idle TLS connection: the boxed session.
        let total = inline + idle;
        assert!(total < 12 * 1024, "{name}: {total} B per idle session");
        let unbuffered = held(unbuffered_session(&tls, &roots, version));
        println!(
            "{name} unbuffered: UnbufferedServerConnection {} B inline; heap {unbuffered} B idle after one exchange",
            std::mem::size_of::<UnbufferedServerConnection>()
        );
        // What surge keeps: no rustls-owned read buffer.
        let unbuffered_total = std::mem::size_of::<UnbufferedServerConnection>() + unbuffered;
        assert!(
            unbuffered_total < 4 * 1024,
            "{name}: {unbuffered_total} B unbuffered"
        );
    }
}
