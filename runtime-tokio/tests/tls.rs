//! The gateway over TLS, with real sockets: what the TLS layer between a
//! shard and its sockets must get right when the socket is full.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Client, metric, next_json, publish, subscribe};
use serde_json::json;
use surge_runtime::tcp::{SocketTuning, TcpTransport};
use surge_runtime::tls::{TlsConfig, certified_key};
use tokio_tungstenite::{Connector, client_async_tls_with_config};

/// A self-signed certificate for `localhost` as the gateway's TLS, and a
/// client configuration that trusts only it.
fn tls_pair() -> (TlsConfig, Arc<rustls::ClientConfig>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let server = certified_key(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
        .expect("certified key");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    (TlsConfig::new(server), Arc::new(client))
}

/// A wss:// client whose socket takes at most a few KiB before the server
/// must wait: a receive buffer of 4 KiB, set before connecting.
async fn slow_reader(addr: std::net::SocketAddr, tls: Arc<rustls::ClientConfig>) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(addr).await.expect("connect");
    let (mut ws, response) = client_async_tls_with_config(
        "wss://localhost/ws",
        stream,
        None,
        Some(Connector::Rustls(tls)),
    )
    .await
    .expect("upgrade over TLS");
    assert_eq!(response.status(), 101);
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stalls_gets_every_message_intact_once_it_reads_again() {
    let (tls, client_tls) = tls_pair();
    // Small kernel buffers on the server's side too, so that what rustls
    // has encrypted rarely fits the socket at once.
    let tuning = SocketTuning {
        send_buffer: Some(4096),
        ..SocketTuning::preset(Default::default())
    };
    let gw = common::start_with(
        &TcpTransport::new(tuning, 5),
        |c| {
            c.tls = Some(tls);
            // Room for the whole burst: nothing may be throttled away.
            c.session.outbound_queue_bytes = 64 << 20;
        },
        common::embedded,
    )
    .await;
    let mut ws = slow_reader(gw.local_addr(), client_tls).await;
    subscribe(&mut ws, &["odin.token.BTC.trade"]).await;

    // 3 MiB while the client reads nothing: far more than both sockets'
    // buffers, so the server's writes stop with TLS records half sent, the
    // last of them after the queue has emptied into rustls.
    const N: u64 = 200;
    let pad = "x".repeat(16 << 10);
    for i in 1..=N {
        publish(&gw, "odin.token.BTC.trade", json!({"i": i, "pad": pad})).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 1..=N {
        let m = next_json(&mut ws).await;
        assert_eq!(
            (m["seq"].as_u64(), m["data"]["i"].as_u64()),
            (Some(i), Some(i))
        );
    }
    assert_eq!(metric(&gw, "surge_messages_delivered_total"), N as f64);
    assert_eq!(metric(&gw, "surge_connections"), 1.0);
}
