//! `wss://` with the real binary: certificates generated here with rcgen,
//! a real TLS WebSocket client (tokio-tungstenite over rustls, trusting
//! only the generated certificates), real signals.

#[path = "common/http.rs"]
mod http;
#[path = "common/ports.rs"]
mod ports;
#[path = "common/server.rs"]
mod server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use server::{SURGE, Server};

type Wss = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A self-signed certificate for 127.0.0.1 with `serial`, and its key.
struct Cert {
    pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn cert(serial: u8) -> Cert {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("params");
    params.serial_number = Some(rcgen::SerialNumber::from(vec![serial]));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("surge test {serial}"));
    let cert = params.self_signed(&key).expect("cert");
    Cert {
        pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// A fresh directory for one test's files.
fn dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("surge-tls-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// Writes `cert` as `cert.pem` and `key.pem` in `dir`; returns their paths.
fn install(dir: &Path, cert: &Cert) -> (String, String) {
    let c = dir.join("cert.pem");
    let k = dir.join("key.pem");
    std::fs::write(&c, &cert.pem).expect("cert file");
    std::fs::write(&k, &cert.key_pem).expect("key file");
    (c.display().to_string(), k.display().to_string())
}

/// surge with TLS from the files in `dir`, plus `extra` flags.
fn serve_tls(dir: &Path, cert: &Cert, extra: &[&str]) -> Server {
    let (c, k) = install(dir, cert);
    let mut args = vec!["--tls-cert", &c, "--tls-key", &k];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// A rustls client trusting only `trusted`, speaking only `versions`.
fn client_config(
    trusted: &[&Cert],
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in trusted {
        roots.add(c.der.clone()).expect("a usable trust anchor");
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    Arc::new(config)
}

/// A wss:// client of `server` that has read its welcome.
async fn wss(
    server: &Server,
    config: Arc<ClientConfig>,
) -> Result<Wss, tokio_tungstenite::tungstenite::Error> {
    let url = format!("wss://127.0.0.1:{}/ws", server.ws.port());
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        false,
        Some(Connector::Rustls(config)),
    );
    let (mut ws, response) = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .expect("no answer in 10 s")?;
    assert_eq!(response.status(), 101);
    assert_eq!(next(&mut ws).await["type"], "welcome");
    Ok(ws)
}

/// The rustls session under a wss:// client.
fn session(ws: &Wss) -> &rustls::ClientConnection {
    match ws.get_ref() {
        MaybeTlsStream::Rustls(tls) => tls.get_ref().1,
        _ => panic!("not a TLS stream"),
    }
}

async fn next(ws: &mut Wss) -> Value {
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(t.as_str()).expect("JSON"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

async fn subscribe(ws: &mut Wss, channel: &str) {
    let request = json!({"type": "subscribe", "channels": [channel]}).to_string();
    ws.send(Message::text(request)).await.expect("send");
    assert_eq!(next(ws).await["type"], "subscribed");
}

/// An admin request: (status, body).
async fn admin(
    server: &Server,
    method: &'static str,
    path: &'static str,
    body: &str,
) -> (u16, String) {
    let addr = server.admin;
    let body = body.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect admin");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(http::request(addr, method, path, &body).as_bytes())
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        http::parse(&out)
    })
    .await
    .expect("admin request")
}

async fn publish(server: &Server, data: u32) {
    let body = json!({"subject": "odin.token.BTC.trade", "data": data}).to_string();
    assert_eq!(admin(server, "POST", "/publish", &body).await.0, 202);
}

/// The value of the metric line starting with `name` (labels included).
async fn metric(server: &Server, name: &str) -> f64 {
    let (_, text) = admin(server, "GET", "/metrics", "").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// Polls the metric until it reaches `value`; panics after 5 s.
async fn until_metric(server: &Server, name: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = metric(server, name).await;
        if now >= value {
            assert_eq!(now, value, "{name} went past {value}");
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {now}, never {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn health(server: &Server) -> Value {
    let (_, body) = admin(server, "GET", "/health", "").await;
    serde_json::from_str(&body).expect("health JSON")
}

/// Polls `/health` until `check` holds; panics after `within`.
async fn until_health(server: &Server, within: Duration, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let h = health(server).await;
        if check(&h) {
            return h;
        }
        assert!(Instant::now() < deadline, "never reached: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_and_tls13_clients_subscribe_and_receive_a_publish_over_wss() {
    let dir = dir("versions");
    let cert = cert(1);
    let server = serve_tls(&dir, &cert, &[]);
    let versions: [(&'static SupportedProtocolVersion, ProtocolVersion); 2] = [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ];
    let mut clients = Vec::new();
    for (version, expected) in versions {
        let mut ws = wss(&server, client_config(&[&cert], &[version]))
            .await
            .expect("upgrade over TLS");
        assert_eq!(session(&ws).protocol_version(), Some(expected));
        subscribe(&mut ws, "odin.token.BTC.trade").await;
        clients.push(ws);
    }
    publish(&server, 7).await;
    for ws in &mut clients {
        let m = next(ws).await;
        assert_eq!(
            (m["type"].as_str(), m["data"].as_u64()),
            (Some("message"), Some(7))
        );
    }
    assert_eq!(
        metric(&server, "surge_handshakes_total{outcome=\"accepted\"}").await,
        2.0
    );
    // A server close goes out as a Close frame, then close_notify.
    server.signal(libc::SIGTERM);
    for ws in &mut clients {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_ws_client_of_the_tls_listener_fails_cleanly_and_frees_its_slot() {
    let dir = dir("plain");
    let server = serve_tls(&dir, &cert(1), &[]);
    let url = format!("ws://127.0.0.1:{}/ws", server.ws.port());
    let attempt = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("an answer, not a hang");
    assert!(attempt.is_err(), "a plaintext upgrade went through");
    until_metric(
        &server,
        "surge_handshakes_total{outcome=\"tls_failed\"}",
        1.0,
    )
    .await;
    until_health(&server, Duration::from_secs(5), |h| {
        h["connections"]["handshaking"] == 0 && h["connections"]["current"] == 0
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the peer sees on a socket the server is about to close: end of
/// stream or a reset, within `within`, never more bytes.
fn closed_within(mut s: TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close, got {other:?}"),
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_hello_clients_are_closed_at_the_handshake_deadline() {
    let dir = dir("deadline");
    // Low-latency: TCP_DEFER_ACCEPT of 1 s, so even a silent client is
    // accepted soon and its deadline starts.
    let server = serve_tls(
        &dir,
        &cert(1),
        &[
            "--handshake-timeout",
            "1s",
            "--socket-preset",
            "low-latency",
        ],
    );
    let silent = TcpStream::connect(server.ws).expect("connect");
    let mut half = TcpStream::connect(server.ws).expect("connect");
    // A TLS handshake record header announcing 512 bytes, then 5 of them.
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])
        .expect("write");
    // The half hello is accepted at once and holds a slot while it waits.
    let h = until_health(&server, Duration::from_secs(5), |h| {
        h["connections"]["handshaking"] != 0
    })
    .await;
    assert_eq!(h["connections"]["current"], 0);
    let waits = tokio::task::spawn_blocking(move || {
        let half = std::thread::spawn(move || closed_within(half, Duration::from_secs(5)));
        let silent = closed_within(silent, Duration::from_secs(10));
        (half.join().expect("half"), silent)
    })
    .await
    .expect("closed");
    assert!(
        waits.0 < Duration::from_secs(3),
        "half hello closed after {:?}",
        waits.0
    );
    until_metric(
        &server,
        "surge_handshakes_total{outcome=\"tls_timeout\"}",
        2.0,
    )
    .await;
    until_health(&server, Duration::from_secs(5), |h| {
        h["connections"]["handshaking"] == 0
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_new_certificate_keeps_connections_and_survives_a_bad_file() {
    let dir = dir("reload");
    let (first, second) = (cert(1), cert(2));
    let server = serve_tls(&dir, &first, &[]);
    // A fresh client configuration per connection: one shared would resume
    // its TLS session, and a resumed session shows no new certificate.
    let trusts_both = || client_config(&[&first, &second], &[&rustls::version::TLS13]);
    let mut old = wss(&server, trusts_both()).await.expect("first");
    assert_eq!(
        session(&old).peer_certificates().expect("certs")[0],
        first.der
    );
    subscribe(&mut old, "odin.token.BTC.trade").await;

    install(&dir, &second);
    server.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(
        &server,
        "surge_reloads_total{file=\"tls_cert\",result=\"ok\"}",
    )
    .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "no reload counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut new = wss(&server, trusts_both()).await.expect("second");
    assert_eq!(
        session(&new).peer_certificates().expect("certs")[0],
        second.der
    );
    subscribe(&mut new, "odin.token.BTC.trade").await;
    publish(&server, 1).await;
    for ws in [&mut old, &mut new] {
        assert_eq!(next(ws).await["data"], 1);
    }

    // A broken file: the reload fails and the second certificate stays.
    std::fs::write(dir.join("cert.pem"), "not a certificate").expect("write");
    server.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(
        &server,
        "surge_reloads_total{file=\"tls_cert\",result=\"error\"}",
    )
    .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "no failed reload counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = wss(&server, trusts_both()).await.expect("third");
    assert_eq!(
        session(&after).peer_certificates().expect("certs")[0],
        second.der
    );
    publish(&server, 2).await;
    for ws in [&mut old, &mut new] {
        assert_eq!(next(ws).await["data"], 2);
    }
    assert_eq!(
        metric(
            &server,
            "surge_reloads_total{file=\"tls_cert\",result=\"ok\"}"
        )
        .await,
        1.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_capacity_tls_clients_get_a_503_after_the_handshake_until_64_are_in_flight() {
    let dir = dir("capacity");
    let cert = cert(1);
    let server = serve_tls(&dir, &cert, &["--max-connections", "1", "--shards", "1"]);
    let config = client_config(&[&cert], &[&rustls::version::TLS13]);
    let _held = wss(&server, Arc::clone(&config))
        .await
        .expect("the one slot");
    match wss(&server, Arc::clone(&config)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert_eq!(
                response
                    .headers()
                    .get("Retry-After")
                    .and_then(|v| v.to_str().ok()),
                Some("5")
            );
        }
        other => panic!(
            "expected a 503 over TLS, got {:?}",
            other.map(|_| "an upgrade")
        ),
    }
    assert_eq!(
        metric(&server, "surge_admission_rejections_total{reason=\"full\"}").await,
        1.0
    );
    assert_eq!(
        metric(&server, "surge_tls_refusals_unanswered_total").await,
        0.0
    );

    // 64 refused clients stuck in their handshake hold every refusal
    // handshake; the next refused client is closed at once, without TLS.
    let stuck: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut s = TcpStream::connect(server.ws).expect("connect");
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).expect("write");
            s
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&server, "surge_admission_rejections_total{reason=\"full\"}").await < 65.0 {
        assert!(Instant::now() < deadline, "the 64 were not all refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut extra = TcpStream::connect(server.ws).expect("connect");
    extra
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .expect("write");
    let waited = tokio::task::spawn_blocking(move || closed_within(extra, Duration::from_secs(2)))
        .await
        .expect("closed");
    assert!(waited < Duration::from_secs(1), "closed after {waited:?}");
    assert_eq!(
        metric(&server, "surge_tls_refusals_unanswered_total").await,
        1.0
    );
    drop(stuck);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `surge` with `args`, which must stop by itself: (exit code, stderr).
fn exits(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(SURGE)
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env_clear()
        .current_dir(std::env::temp_dir())
        .output()
        .expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unusable_tls_files_stop_the_start_naming_the_file() {
    let dir = dir("files");
    let (good, other) = (cert(1), cert(2));
    let (c, k) = install(&dir, &good);
    let other_key = dir.join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).expect("write");
    let other_key = other_key.display().to_string();
    let missing = dir.join("missing.pem").display().to_string();

    let cases: [(&[&str], &str); 4] = [
        (&["--tls-cert", &c], "needs SURGE_TLS_KEY as well"),
        (
            &["--tls-cert", &missing, "--tls-key", &k],
            "cannot read SURGE_TLS_CERT=",
        ),
        (
            &["--tls-cert", &k, "--tls-key", &k],
            "holds no PEM certificate",
        ),
        (
            &["--tls-cert", &c, "--tls-key", &other_key],
            "does not match the certificate",
        ),
    ];
    for (args, expected) in cases {
        let (code, stderr) = exits(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let (_, stderr) = exits(&["--tls-cert", &c, "--tls-key", &other_key]);
    assert!(
        stderr.contains(&format!("SURGE_TLS_KEY={other_key}")),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `surge doctor`'s line about the TLS certificate, given the two files.
fn doctor_tls_line(cert: &str, key: &str) -> String {
    let out = Command::new(SURGE)
        .args(["doctor", "--tls-cert", cert, "--tls-key", key])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env_clear()
        .current_dir(std::env::temp_dir())
        .output()
        .expect("runs");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("TLS certificate"))
        .collect();
    assert_eq!(lines.len(), 1, "{report}");
    lines[0].to_owned()
}

#[test]
fn doctor_checks_the_certificate_files() {
    let dir = dir("doctor");
    let (good, other) = (cert(1), cert(2));
    let (c, k) = install(&dir, &good);
    let line = doctor_tls_line(&c, &k);
    assert!(
        line.starts_with(
            "OK   TLS certificate CN=surge test 1 (serial 01): key matches; valid until 4096-01-01"
        ),
        "{line}"
    );
    let other_key = dir.join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).expect("write");
    let line = doctor_tls_line(&c, &other_key.display().to_string());
    assert!(
        line.starts_with("FAIL TLS certificate: SURGE_TLS_KEY="),
        "{line}"
    );
    assert!(line.contains("does not match the certificate"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}
