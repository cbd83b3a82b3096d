//! The `surge` binary as an operator runs it: real process, real ports,
//! real WebSocket client, real signals.

#[path = "common/http.rs"]
mod http;
#[path = "common/ports.rs"]
mod ports;
#[path = "common/server.rs"]
mod server;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use server::{SURGE, Server, free_port};

/// A minimal HTTP/1.1 exchange: (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(http::request(addr, method, path, body).as_bytes())
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    http::parse(&out)
}

/// The JSON of the next WebSocket frame, which must be a text frame.
fn next(frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Value {
    match frame {
        Some(Ok(Message::Text(t))) => serde_json::from_str(t.as_str()).expect("JSON"),
        other => panic!("unexpected {other:?}"),
    }
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(SURGE)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .output()
        .expect("runs")
}

/// The JWT secret of the binary tests (32 bytes or more).
const JWT_SECRET: &str = "binary-test-jwt-secret-0123456789abcdef";

/// A token minted by `surge token` with `secret`.
fn jwt_minted(secret: &str, args: &[&str]) -> String {
    let out = run(
        &[&["token"], args].concat(),
        &[("SURGE_JWT_SECRET", secret)],
    );
    assert!(
        out.status.success(),
        "surge token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("text");
    assert_eq!(token.lines().count(), 1, "one line: {token}");
    token.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_a_bad_token_gets_401_a_minted_one_upgrades_and_reads_only_its_channels() {
    let server = Server::start_with_env(&[], &[("SURGE_JWT_SECRET", JWT_SECRET)]);
    let other_secret = jwt_minted(
        "another-secret-as-long-as-the-first-one",
        &["--sub", "alice", "--channels", "odin.token.>"],
    );
    for (what, query) in [
        ("no token", String::new()),
        ("not a JWT", "?token=not-a-jwt".to_owned()),
        (
            "signed with another secret",
            format!("?token={other_secret}"),
        ),
    ] {
        let url = format!("ws://{}/ws{query}", server.ws);
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401, "{what}");
                let challenge = response
                    .headers()
                    .get("WWW-Authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                assert!(
                    challenge.starts_with("Bearer error=\"invalid_token\""),
                    "{what}: {challenge:?}"
                );
            }
            Ok(_) => panic!("{what}: upgraded"),
            Err(e) => panic!("{what}: {e}"),
        }
    }

    let token = jwt_minted(
        JWT_SECRET,
        &[
            "--sub",
            "alice",
            "--channels",
            "odin.token.BTC.*",
            "--ttl",
            "1h",
        ],
    );
    let (mut ws, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?token={token}", server.ws))
            .await
            .expect("upgrade");
    assert_eq!(response.status(), 101);
    assert_eq!(jwt_next(&mut ws).await["type"], "welcome");
    for (channels, answer) in [
        (json!(["odin.token.ETH.trade"]), "error"),
        (json!(["odin.token.>"]), "error"),
        (json!(["odin.token.BTC.trade"]), "subscribed"),
    ] {
        let request = json!({"type": "subscribe", "channels": channels});
        ws.send(Message::Text(request.to_string().into()))
            .await
            .expect("send");
        let reply = jwt_next(&mut ws).await;
        assert_eq!(reply["type"], answer, "{channels}: {reply}");
        if answer == "error" {
            assert_eq!(reply["code"], "forbidden", "{reply}");
        }
    }
    let admin = server.admin;
    tokio::task::spawn_blocking(move || {
        for subject in ["odin.token.ETH.trade", "odin.token.BTC.trade"] {
            let body = json!({"subject": subject, "data": 1}).to_string();
            assert_eq!(http(admin, "POST", "/publish", &body).0, 202);
        }
    })
    .await
    .expect("published");
    let message = jwt_next(&mut ws).await;
    assert_eq!(message["subject"], "odin.token.BTC.trade", "{message}");
}

/// The next text frame of a WebSocket client, as JSON.
async fn jwt_next(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(t.as_str()).expect("JSON"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn jwt_token_needs_the_secret_and_names_what_it_mints() {
    let out = run(&["token", "--sub", "alice"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SURGE_JWT_SECRET"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &["token", "--channels", "odin..x", "--sub", "alice"],
        &[("SURGE_JWT_SECRET", JWT_SECRET)],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "an invalid channel is a usage error"
    );
    // The claims, read back without the signature: sub, exp from --ttl,
    // channels, and the configured issuer and audience.
    let token = jwt_minted(
        JWT_SECRET,
        &[
            "--sub",
            "alice",
            "--channels",
            "odin.token.>,odin.global.>",
            "--ttl",
            "90s",
        ],
    );
    let payload = token.split('.').nth(1).expect("three parts");
    use base64::Engine as _;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url"),
    )
    .expect("JSON");
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["channels"], json!(["odin.token.>", "odin.global.>"]));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let exp = claims["exp"].as_u64().expect("exp");
    assert!((now + 85..=now + 95).contains(&exp), "exp {exp}, now {now}");
    let out = run(
        &["token", "--sub", "bob"],
        &[
            ("SURGE_JWT_SECRET", JWT_SECRET),
            ("SURGE_JWT_ISSUER", "https://id.example"),
            ("SURGE_JWT_AUDIENCE", "surge"),
        ],
    );
    let token = String::from_utf8(out.stdout).expect("text");
    let payload = token.trim().split('.').nth(1).expect("three parts");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url"),
    )
    .expect("JSON");
    assert_eq!(claims["iss"], "https://id.example");
    assert_eq!(claims["aud"], "surge");
    assert!(claims.get("channels").is_none(), "{claims}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_a_public_key_file_verifies_es256_and_never_an_hs_token_keyed_with_it() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/tests/fixtures/jwt");
    let public = format!("{fixtures}/es256_public.pem");
    let private = std::fs::read(format!("{fixtures}/es256_private.pem")).expect("fixture");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs()
        + 600;
    let claims = json!({"sub": "alice", "exp": exp, "channels": ["odin.token.>"]});
    let es256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(&private).expect("key"),
    )
    .expect("signs");
    // HMAC keyed with the public key file's bytes: the confusion attack.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&std::fs::read(&public).expect("fixture"))
            .expect("key"),
    )
    .expect("signs");

    let server = Server::start_with_env(&[], &[("SURGE_JWT_PUBLIC_KEY_FILE", public.as_str())]);
    let (mut ws, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?token={es256}", server.ws))
            .await
            .expect("upgrade");
    assert_eq!(response.status(), 101);
    assert_eq!(jwt_next(&mut ws).await["type"], "welcome");
    match tokio_tungstenite::connect_async(format!("ws://{}/ws?token={forged}", server.ws)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("the forged HS256 token was not refused: {other:?}"),
    }

    // A key file that holds no public key stops the start, naming it.
    let out = run(
        &["config"],
        &[("SURGE_JWT_PUBLIC_KEY_FILE", "/nonexistent/jwt.pem")],
    );
    assert_eq!(out.status.code(), Some(0), "config does not read key files");
    let (code, stderr) = run_until_exit(
        &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        &[(
            "SURGE_JWT_PUBLIC_KEY_FILE",
            &format!("{fixtures}/es256_private.pem"),
        )],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("SURGE_JWT_PUBLIC_KEY_FILE=") && stderr.contains("not a PEM public key"),
        "{stderr}"
    );
}

#[test]
fn invalid_configuration_exits_non_zero_naming_the_setting() {
    let out = run(&["config"], &[("SURGE_BACKLOG", "lots")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SURGE_BACKLOG=lots (from environment)"),
        "{err}"
    );
    assert!(err.contains("must be an integer from 1 to 65535"), "{err}");

    let out = run(&["--handshake-timeout", "soon"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--handshake-timeout=soon (from command line)")
    );

    let out = run(&["config"], &[("SURGE_BAKLOG", "10")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "SURGE_BAKLOG=10 (from environment): unknown setting; did you mean SURGE_BACKLOG?"
        ),
        "suggests the right name: {err}"
    );
}

/// What Kubernetes injects for a Service named `surge` with ports 8080 and 9090.
const KUBERNETES_VARS: &[(&str, &str)] = &[
    ("SURGE_SERVICE_HOST", "10.96.0.12"),
    ("SURGE_SERVICE_PORT", "8080"),
    ("SURGE_PORT", "tcp://10.96.0.12:8080"),
    ("SURGE_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
    ("SURGE_PORT_8080_TCP_ADDR", "10.96.0.12"),
    ("SURGE_PORT_8080_TCP_PORT", "8080"),
    ("SURGE_PORT_8080_TCP_PROTO", "tcp"),
    ("SURGE_PORT_9090_TCP", "tcp://10.96.0.12:9090"),
];

#[test]
fn kubernetes_service_variables_are_ignored_and_reported_once() {
    let out = run(&["config"], KUBERNETES_VARS);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let reports: Vec<&str> = err.lines().filter(|l| l.contains("ignored")).collect();
    assert_eq!(reports.len(), 1, "one report line: {err}");
    for (name, _) in KUBERNETES_VARS {
        assert!(reports[0].contains(name), "{name} not reported: {err}");
    }
    // The values are not repeated (an orchestrator's variable may hold a secret).
    assert!(!err.contains("10.96.0.12"), "{err}");

    // The gateway serves with them, as in a pod.
    let server = Server::start_with_env(&[], KUBERNETES_VARS);
    let (status, _) = http(server.admin, "GET", "/health", "");
    assert_eq!(status, 200);
}

#[test]
fn max_connections_above_the_file_limit_is_refused_with_the_arithmetic() {
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let out = run(&["--listen", &listen, "--max-connections", "9000000"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("9000000") && err.contains("reserve"), "{err}");
}

/// The options baked into the binary (src/allocator.rs), as jemalloc
/// itself reports them when asked to print its statistics at exit.
#[test]
fn the_allocator_returns_freed_pages_at_once_and_keeps_small_thread_caches() {
    let out = run(&["config"], &[("_RJEM_MALLOC_CONF", "stats_print:true")]);
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    for option in [
        "opt.dirty_decay_ms: 0",
        "opt.muzzy_decay_ms: 0",
        "opt.tcache: true",
        "opt.tcache_nslots_small_max: 8",
    ] {
        assert!(
            stats.contains(option),
            "{option} not in jemalloc's report:\n{stats}"
        );
    }
}

#[test]
fn config_prints_the_effective_configuration_with_origins() {
    let out = run(
        &["config", "--backlog", "512"],
        &[("SURGE_REPLAY_WINDOW", "50")],
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or("")
            .to_string()
    };
    assert!(
        line("SURGE_BACKLOG ").contains("512") && line("SURGE_BACKLOG ").contains("command line")
    );
    assert!(
        line("SURGE_REPLAY_WINDOW ").contains("50")
            && line("SURGE_REPLAY_WINDOW ").contains("environment")
    );
    assert!(line("SURGE_WS_PATH ").contains("default"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_a_subscriber_health_and_metrics_report_it_and_sigterm_closes_1001() {
    let server = Server::start(&[]);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.ws))
        .await
        .expect("upgrade");
    assert_eq!(next(ws.next().await)["type"], "welcome");
    ws.send(Message::Text(
        json!({"type":"subscribe","channels":["odin.token.*.trade"]})
            .to_string()
            .into(),
    ))
    .await
    .expect("send");
    assert_eq!(next(ws.next().await)["type"], "subscribed");

    let admin = server.admin;
    let (status, body) = tokio::task::spawn_blocking(move || {
        http(
            admin,
            "POST",
            "/publish",
            r#"{"subject":"odin.token.BTC.trade","data":{"px":64000},"priority":"critical"}"#,
        )
    })
    .await
    .expect("publish");
    assert_eq!((status, body.as_str()), (202, r#"{"sseq":1}"#));
    let m = next(ws.next().await);
    assert_eq!(
        m,
        json!({"type":"message","seq":1,"subject":"odin.token.BTC.trade","sseq":1,"data":{"px":64000}})
    );

    let (status, body) = tokio::task::spawn_blocking(move || {
        http(admin, "POST", "/publish", r#"{"subject":"a..b","data":1}"#)
    })
    .await
    .expect("bad publish");
    assert_eq!(status, 400, "{body}");

    let (status, body) = tokio::task::spawn_blocking(move || http(admin, "GET", "/health", ""))
        .await
        .expect("health");
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).expect("health JSON");
    assert_eq!(
        health["connections"],
        json!({"current": 1, "max": 1000, "handshaking": 0})
    );
    assert_eq!(health["broker"]["kind"], "embedded");
    insta::assert_json_snapshot!("health", health, {
        ".uptime_s" => "[uptime]",
        ".cpu_percent" => "[cpu]",
        ".memory_bytes" => "[memory]",
        ".socket_options" => "[socket options]",
        ".shards[].connections" => "[n]",
        ".shards[].available" => "[n]",
        ".shards[].utilization" => "[n]",
        ".imbalance_percent" => "[n]",
    });

    let (status, metrics) = tokio::task::spawn_blocking(move || http(admin, "GET", "/metrics", ""))
        .await
        .expect("metrics");
    assert_eq!(status, 200);
    for needle in [
        "surge_connections 1",
        "surge_connections_max 1000",
        "surge_messages_published_total 1",
        "surge_messages_delivered_total 1",
        "surge_handshakes_total{outcome=\"accepted\"} 1",
        "surge_handshake_duration_seconds_count 1",
        "surge_throttled_connections{level=\"none\"} 1",
        "surge_broker_connected 1",
        "surge_slow_client_disconnects_total 0",
        // Idle shard: nothing left to handle.
        "surge_shard_backlog_connections{shard=\"0\"} 0",
    ] {
        assert!(metrics.contains(needle), "missing {needle:?} in\n{metrics}");
    }

    server.signal(libc::SIGTERM);
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    let status = tokio::task::spawn_blocking(move || server.wait(Duration::from_secs(10)))
        .await
        .expect("exit");
    assert_eq!(status.code(), Some(0));
}

/// `surge_messages_published_total` of the gateway at `admin`.
fn published(admin: SocketAddr) -> u64 {
    metric_value(admin, "surge_messages_published_total ")
        .unwrap_or_else(|| panic!("no published counter on {admin}")) as u64
}

#[test]
fn feed_posts_to_the_configured_admin_listener() {
    // A non-default admin port: the feed must find it from the setting alone.
    let server = Server::start(&[]);
    let admin = server.admin.to_string();
    let feed = |args: &[&str], env: &[(&str, &str)]| {
        let out = run(
            &[&["feed", "--rate", "100", "--duration", "1s"], args].concat(),
            env,
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?} {env:?}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("http://{admin}/publish")),
            "{stdout}"
        );
    };

    feed(&["--admin-listen", &admin], &[]);
    let by_flag = published(server.admin);
    assert!(by_flag > 0, "nothing published with --admin-listen");

    feed(&[], &[("SURGE_ADMIN_LISTEN", &admin)]);
    assert!(
        published(server.admin) > by_flag,
        "nothing published with SURGE_ADMIN_LISTEN"
    );
}

/// With no gateway on the admin address, `surge feed` fails at once and
/// says where it looked and why.
#[test]
fn feed_without_a_gateway_says_where_it_looked() {
    let admin = format!("127.0.0.1:{}", free_port());
    let out = run(
        &[
            "feed",
            "--duration",
            "5s",
            "--admin",
            &format!("http://{admin}"),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot reach the gateway's admin listener at {admin}: connect: "
        )),
        "{stderr}"
    );
    assert!(stderr.contains("is `surge serve` running?"), "{stderr}");
}

/// `surge serve` with stdout and stderr piped (as under systemd or a log
/// shipper) and max connections derived, from start to SIGTERM: (stdout, stderr).
fn serve_piped(env: &[(&str, &str)]) -> (String, String) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let listen = format!("127.0.0.1:{}", free_port());
    let child = Command::new(SURGE)
        .args(["--listen", &listen, "--admin-listen", &admin.to_string()])
        .args(["--shards", "2"])
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("surge starts");
    let mut server = Server::ready(child, listen.parse().expect("addr"), admin);
    server.signal(libc::SIGTERM);
    let mut stdout = String::new();
    let mut stderr = String::new();
    // Both pipes close when the process exits; the output is far below a
    // pipe's buffer, so reading one after the other cannot block the child.
    server
        .child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    server
        .child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_eq!(server.wait(Duration::from_secs(10)).code(), Some(0));
    (stdout, stderr)
}

/// Lines of `text` that show the effective configuration (a table row or
/// the JSON of a log event).
fn config_appearances(text: &str) -> usize {
    text.lines()
        .filter(|l| l.contains("SURGE_WS_PATH") || l.contains("ws_path"))
        .count()
}

fn max_connections_explanations(text: &str) -> usize {
    text.lines()
        .filter(|l| l.contains("max connections ") && l.contains("= min(files"))
        .count()
}

#[test]
fn text_logs_to_a_pipe_have_no_colour_and_say_each_thing_once() {
    let (stdout, stderr) = serve_piped(&[]);
    assert!(
        !stderr.contains("\x1b["),
        "ANSI escapes in piped logs:\n{stderr}"
    );
    assert!(!stdout.contains("\x1b["), "{stdout}");
    let both = format!("{stdout}\n{stderr}");
    assert_eq!(config_appearances(&both), 1, "{both}");
    assert_eq!(max_connections_explanations(&both), 1, "{both}");
    // The people-facing lines are on stdout.
    assert_eq!(config_appearances(&stdout), 1, "{stdout}");
    assert_eq!(max_connections_explanations(&stdout), 1, "{stdout}");
    assert_eq!(
        stdout.matches("surge listening on ws://").count(),
        1,
        "{stdout}"
    );
    assert!(!stderr.contains("surge listening on"), "{stderr}");
}

#[test]
fn json_logs_leave_no_text_on_stdout_and_log_the_config_once() {
    let (stdout, stderr) = serve_piped(&[("SURGE_LOG_FORMAT", "json")]);
    let mut events = Vec::new();
    for line in stdout.lines().chain(stderr.lines()) {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\nstdout:\n{stdout}"));
        events.push(event);
    }
    let both = format!("{stdout}\n{stderr}");
    assert!(!both.contains("\x1b["), "{both}");
    assert_eq!(config_appearances(&both), 1, "{both}");
    assert_eq!(max_connections_explanations(&both), 1, "{both}");
    let listening = events
        .iter()
        .filter(|e| {
            e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("surge listening on ws://"))
        })
        .count();
    assert_eq!(listening, 1, "{both}");
}

/// The JSON body of an admin answer, with its `code`.
fn admin_error(answer: (u16, String)) -> (u16, String, String) {
    let (status, body) = answer;
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let code = v["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code: {body}"));
    let message = v["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {body}"));
    (status, code.to_owned(), message.to_owned())
}

/// Every admin error is JSON with a code; `/publish` takes only subjects
/// of the stream (as NATS would), says what the body must look like, has
/// a named body limit, and carries raw bytes intact (`data_base64`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_errors_are_json_and_publish_checks_what_nats_would() {
    let server = Server::start(&["--admin-max-body-bytes", "2KiB"]);
    let admin = server.admin;
    let post = move |body: String| {
        tokio::task::spawn_blocking(move || http(admin, "POST", "/publish", &body))
    };
    let (status, code, message) = admin_error(
        post(r#"{"subject":"foo.bar","data":1}"#.into())
            .await
            .expect("post"),
    );
    assert_eq!(
        (status, code.as_str()),
        (400, "subject_not_in_stream"),
        "{message}"
    );
    assert!(message.contains("SURGE_JS_SUBJECTS"), "{message}");

    let (status, code, message) = admin_error(post("[1,2]".into()).await.expect("post"));
    assert_eq!((status, code.as_str()), (400, "invalid_body"));
    assert!(
        message.contains(r#"{"subject":"odin.token.BTC.trade","data":<any JSON>"#),
        "{message}"
    );
    let (status, code, _) = admin_error(
        post(r#"{"subject":"odin.token.A.trade","data":1,"data_base64":"AA=="}"#.into())
            .await
            .expect("post"),
    );
    assert_eq!((status, code.as_str()), (400, "invalid_body"));
    let (status, code, _) = admin_error(
        post(r#"{"subject":"odin.token.A.trade","data":1,"priority":"urgent"}"#.into())
            .await
            .expect("post"),
    );
    assert_eq!((status, code.as_str()), (400, "invalid_priority"));

    let big = format!(
        r#"{{"subject":"odin.token.A.trade","data":"{}"}}"#,
        "x".repeat(3000)
    );
    let (status, code, message) = admin_error(post(big).await.expect("post"));
    assert_eq!((status, code.as_str()), (413, "body_too_large"));
    assert!(message.contains("SURGE_ADMIN_MAX_BODY_BYTES"), "{message}");

    let (status, code, _) = admin_error(
        tokio::task::spawn_blocking(move || http(admin, "GET", "/nope", ""))
            .await
            .expect("get"),
    );
    assert_eq!((status, code.as_str()), (404, "not_found"));

    // Raw bytes in, the same bytes out.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.ws))
        .await
        .expect("upgrade");
    assert_eq!(next(ws.next().await)["type"], "welcome");
    ws.send(Message::Text(
        json!({"type":"subscribe","channels":["odin.token.>"]})
            .to_string()
            .into(),
    ))
    .await
    .expect("send");
    assert_eq!(next(ws.next().await)["type"], "subscribed");
    let (status, body) =
        post(r#"{"subject":"odin.token.A.trade","data_base64":"//4AYmluYXJ5"}"#.into())
            .await
            .expect("post");
    assert_eq!(status, 202, "{body}");
    let m = next(ws.next().await);
    assert_eq!(m["encoding"], "base64", "{m}");
    assert_eq!(
        m["data"], "//4AYmluYXJ5",
        "ff fe 00 'binary' arrives intact: {m}"
    );
}

/// Liveness and readiness are separate: a full gateway is alive and not
/// ready; the public port answers a plain probe when asked to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_admission_and_the_public_probe_reports_it() {
    let server = Server::start(&["--max-connections", "2", "--public-healthz", "true"]);
    let admin = server.admin;
    let get =
        move |path: &'static str| tokio::task::spawn_blocking(move || http(admin, "GET", path, ""));
    assert_eq!(get("/livez").await.expect("livez").0, 200);
    let (status, body) = get("/readyz").await.expect("readyz");
    assert_eq!((status, body.as_str()), (200, r#"{"ready":true}"#));
    let ws_addr = server.ws;
    let probe = move || {
        tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(ws_addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("read");
            out
        })
    };
    let answer = probe().await.expect("probe");
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("ready\n"),
        "{answer}"
    );

    // Both slots taken: not ready, still alive.
    let (_one, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.ws))
        .await
        .expect("upgrade");
    let (_two, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.ws))
        .await
        .expect("upgrade");
    let (status, body) = get("/readyz").await.expect("readyz");
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["ready"], false);
    assert!(
        v["reason"].as_str().expect("reason").contains("capacity"),
        "{body}"
    );
    assert_eq!(get("/livez").await.expect("livez").0, 200);
    let answer = probe().await.expect("probe");
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
}

/// SIGTERM: readiness drops first (while clients are still connected,
/// for `--shutdown-delay`), `/publish` refuses instead of acknowledging
/// messages nobody will get, then clients are closed with 1001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drops_readiness_first_and_publish_refuses_from_then_on() {
    let server = Server::start(&["--shutdown-delay", "2s"]);
    let admin = server.admin;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.ws))
        .await
        .expect("upgrade");
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
    server.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = tokio::task::spawn_blocking(move || http(admin, "GET", "/readyz", ""))
        .await
        .expect("readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    let (status, code, _) = admin_error(
        tokio::task::spawn_blocking(move || {
            http(
                admin,
                "POST",
                "/publish",
                r#"{"subject":"odin.token.A.trade","data":1}"#,
            )
        })
        .await
        .expect("publish"),
    );
    assert_eq!((status, code.as_str()), (503, "draining"));
    // The client is still connected during the delay, then gets 1001.
    let closed_at = std::time::Instant::now();
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    assert!(
        closed_at.elapsed() >= Duration::from_millis(1200),
        "closed before the delay"
    );
    let status = tokio::task::spawn_blocking(move || server.wait(Duration::from_secs(15)))
        .await
        .expect("exit");
    assert_eq!(status.code(), Some(0));
}

/// The lines of `surge doctor`'s report that mention `needle`.
fn doctor_lines(out: &Output, needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[test]
fn doctor_fails_a_listen_address_already_in_use() {
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = busy.local_addr().expect("addr").to_string();
    let admin = format!("127.0.0.1:{}", free_port());
    let out = run(
        &["doctor", "--listen", &taken, "--admin-listen", &admin],
        &[],
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    let flagged = doctor_lines(&out, &taken);
    assert_eq!(flagged.len(), 1, "{report}");
    assert!(
        flagged[0].starts_with("FAIL") && flagged[0].contains("SURGE_LISTEN"),
        "{report}"
    );
    assert!(flagged[0].contains("in use"), "{report}");
    // The free admin address is checked too, and passes.
    let admin_line = doctor_lines(&out, &admin);
    assert_eq!(admin_line.len(), 1, "{report}");
    assert!(
        admin_line[0].starts_with("OK") && admin_line[0].contains("SURGE_ADMIN_LISTEN"),
        "{report}"
    );
    drop(busy);
}

#[test]
fn doctor_reports_an_unreachable_nats_server() {
    let closed = format!("127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let out = run(
        &["doctor", "--listen", &listen, "--admin-listen", &admin],
        &[("SURGE_NATS_URL", &format!("nats://{closed}"))],
    );
    let report = String::from_utf8_lossy(&out.stdout);
    let flagged = doctor_lines(&out, &closed);
    assert_eq!(flagged.len(), 1, "{report}");
    assert!(
        flagged[0].starts_with("FAIL") && flagged[0].contains("NATS"),
        "{report}"
    );
    assert!(flagged[0].contains("unreachable"), "{report}");
    assert_eq!(out.status.code(), Some(1), "{report}");
}

/// Runs `surge` (serving unless `args` name a subcommand) until it exits;
/// fails if it is still running after 10 s.
fn run_until_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(SURGE)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("surge starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("surge {args:?} was still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An allowlist entry that no `Origin` header can match is refused at
/// start, naming the entry and the form an origin takes. Malformed entries
/// fail the configuration's own syntax check; entries of the right shape
/// that the handshake still cannot compare (a scheme with no default port
/// and no port given, such as a browser extension's) fail the server's.
#[test]
fn an_allowed_origin_that_matches_no_request_stops_the_start() {
    for bad in [
        "app.example.com",
        "https://app.example.com/login",
        "http://localhost:300000",
        "*",
    ] {
        let list = format!("https://good.example, {bad}");
        let out = run(&["config"], &[("SURGE_ALLOWED_ORIGINS", &list)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("SURGE_ALLOWED_ORIGINS="), "{bad}: {err}");
        assert!(err.contains(&format!("\"{bad}\"")), "{bad}: {err}");
        assert!(err.contains("http://localhost:3000"), "{bad}: {err}");
    }
    const EXPECTED: &str = "expected scheme://host[:port] (the port is required for schemes other than http, https, ws and wss), e.g. `https://app.example.com` or `http://localhost:3000`";
    for bad in ["chrome-extension://abcdefghijklmnop", "app://desktop"] {
        let list = format!("https://good.example, {bad}");
        let out = run(&["config"], &[("SURGE_ALLOWED_ORIGINS", &list)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(
            err.contains(&format!(
                "SURGE_ALLOWED_ORIGINS={bad} (from environment): no request's Origin can match it: {EXPECTED}"
            )),
            "{bad}: {err}"
        );
        assert!(err.contains("(1 problem)"), "only the bad entry: {err}");
    }
    // Every such entry is named, and the flag the way it was written.
    let out = run(
        &[
            "config",
            "--allowed-origins",
            "app://a,https://ok.example,app://b",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("(2 problems)"), "{err}");
    for bad in ["app://a", "app://b"] {
        assert!(
            err.contains(&format!(
                "--allowed-origins={bad} (from command line): no request's Origin can match it"
            )),
            "{err}"
        );
    }
    // Serving stops before it listens, with the configuration error's code.
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let (code, err) = run_until_exit(
        &["--listen", &listen, "--admin-listen", &admin],
        &[("SURGE_ALLOWED_ORIGINS", "app://desktop")],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("SURGE_ALLOWED_ORIGINS=app://desktop (from environment)"),
        "{err}"
    );
    // Origins in any spelling the handshake compares pass, a port making
    // any scheme comparable.
    let out = run(
        &["config"],
        &[(
            "SURGE_ALLOWED_ORIGINS",
            "https://APP.example.com:443,http://localhost:3000,http://[::1]:8080,app://desktop:8000",
        )],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An admin token for the tests: visible ASCII, as the setting requires.
const ADMIN_TOKEN: &str = "adm1n-t0ken_for~tests";

/// An admin request to `addr` with `Host` set to it, `Connection: close`,
/// the `headers` given (`"Name: value"`) and `body`.
fn admin_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> String {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    request
}

/// The answer to `request`, sent as is: (status, header lines, body).
fn raw_http(addr: SocketAddr, request: &str) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let (head, _) = out.split_once("\r\n\r\n").expect("a head");
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let (status, body) = http::parse(&out);
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

const A_PUBLISH: &str = r#"{"subject":"odin.token.BTC.trade","data":{"px":1}}"#;

/// With `SURGE_ADMIN_TOKEN` set, `POST /publish` and `GET /config` need
/// `Authorization: Bearer <token>` (401 JSON `unauthorized` with
/// `WWW-Authenticate: Bearer` otherwise); the probes and metrics do not.
#[test]
fn the_admin_token_guards_publish_and_config_and_nothing_else() {
    let server = Server::start_with_env(&[], &[("SURGE_ADMIN_TOKEN", ADMIN_TOKEN)]);
    let admin = server.admin;
    let publish = |auth: Option<&str>| {
        let mut headers = vec!["Content-Type: application/json".to_owned()];
        headers.extend(auth.map(|a| format!("Authorization: {a}")));
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        raw_http(
            admin,
            &admin_request(admin, "POST", "/publish", &headers, A_PUBLISH),
        )
    };
    let wrong = [
        None,
        Some("Bearer wrong".to_owned()),
        Some(format!("Bearer {ADMIN_TOKEN}x")),
        Some(format!("Bearer {}", &ADMIN_TOKEN[1..])),
        Some(format!("Basic {ADMIN_TOKEN}")),
        Some(ADMIN_TOKEN.to_owned()),
        Some("Bearer".to_owned()),
    ];
    for auth in &wrong {
        let (status, headers, body) = publish(auth.as_deref());
        let (status, code, message) = admin_error((status, body));
        assert_eq!((status, code.as_str()), (401, "unauthorized"), "{auth:?}");
        assert_eq!(
            header(&headers, "www-authenticate"),
            Some("Bearer"),
            "{auth:?}"
        );
        assert!(message.contains("SURGE_ADMIN_TOKEN"), "{message}");
        assert!(!message.contains(ADMIN_TOKEN), "{message}");
    }
    assert_eq!(published(admin), 0, "nothing got through");
    for scheme in ["Bearer", "bearer"] {
        let (status, _, body) = publish(Some(&format!("{scheme} {ADMIN_TOKEN}")));
        assert_eq!(status, 202, "{scheme}: {body}");
    }

    let config =
        |headers: &[&str]| raw_http(admin, &admin_request(admin, "GET", "/config", headers, ""));
    let (status, headers, body) = config(&[]);
    let (status, code, _) = admin_error((status, body));
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    assert_eq!(header(&headers, "www-authenticate"), Some("Bearer"));
    let (status, _, body) = config(&["Authorization: Bearer nope"]);
    assert_eq!(status, 401, "{body}");
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let (status, _, body) = config(&[&auth]);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(ADMIN_TOKEN), "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["settings"]["admin_token"], "***", "{body}");

    for path in ["/health", "/metrics", "/livez", "/readyz"] {
        let (status, _, body) = raw_http(admin, &admin_request(admin, "GET", path, &[], ""));
        assert_eq!(status, 200, "{path}: {body}");
    }
}

/// `surge serve` with its admin listener at `admin` (any address; reached
/// over loopback), until the admin port answers `/livez`.
fn serve_admin_at(admin: SocketAddr, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let ws: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let child = Command::new(SURGE)
        .args([
            "--listen",
            &ws.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .args(["--max-connections", "100", "--shards", "1"])
        .args(extra)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("surge starts");
    let reach: SocketAddr = match admin.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], admin.port()))
        }
        _ => admin,
    };
    Server::ready(child, ws, reach)
}

/// An admin listener that anyone on the network may reach needs a token,
/// or the operator's explicit `SURGE_ADMIN_INSECURE=true`: without either,
/// surge refuses to start (exit 2) and says which settings fix it.
#[test]
fn a_non_loopback_admin_listener_needs_a_token_or_an_explicit_opt_in() {
    let admin: SocketAddr = format!("0.0.0.0:{}", free_port()).parse().expect("addr");
    let listen = format!("127.0.0.1:{}", free_port());
    let (code, err) = run_until_exit(
        &["--listen", &listen, "--admin-listen", &admin.to_string()],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("--admin-listen={admin} (from command line)")),
        "{err}"
    );
    assert!(err.contains("SURGE_ADMIN_TOKEN"), "{err}");
    assert!(err.contains("SURGE_ADMIN_INSECURE=true"), "{err}");
    // `surge config` validates the same way, the variable named as written.
    let out = run(&["config"], &[("SURGE_ADMIN_LISTEN", &admin.to_string())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("SURGE_ADMIN_LISTEN={admin} (from environment)"))
            && err.contains("SURGE_ADMIN_TOKEN"),
        "{err}"
    );
    // Loopback addresses other than the default need nothing.
    for loopback in ["127.0.0.2", "[::1]"] {
        let out = run(
            &["config", "--admin-listen", &format!("{loopback}:9090")],
            &[],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{loopback}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // With a token it serves, and the token guards /publish.
    let server = serve_admin_at(admin, &[], &[("SURGE_ADMIN_TOKEN", ADMIN_TOKEN)]);
    let json = ["Content-Type: application/json"];
    let (status, _, body) = raw_http(
        server.admin,
        &admin_request(server.admin, "POST", "/publish", &json, A_PUBLISH),
    );
    assert_eq!(status, 401, "{body}");
    drop(server);
    // With the explicit opt-in it serves without one.
    let server = serve_admin_at(admin, &["--admin-insecure", "true"], &[]);
    let (status, _, body) = raw_http(
        server.admin,
        &admin_request(server.admin, "POST", "/publish", &json, A_PUBLISH),
    );
    assert_eq!(status, 202, "{body}");
}

/// `POST /publish` is for programs, not pages: it takes only
/// `Content-Type: application/json` (a page can send text/plain, form and
/// multipart bodies cross-site without asking), refuses any request with
/// an `Origin` (browsers send one with every POST), and refuses a `Host`
/// other than the listener's own address (DNS rebinding: a page whose
/// name now points at 127.0.0.1 still sends its own name). Other
/// endpoints are not affected.
#[test]
fn publish_takes_only_json_from_programs_addressed_to_the_admin_listener() {
    let server = Server::start(&[]);
    let admin = server.admin;
    let port = admin.port();
    let post = |headers: &[&str]| {
        let (status, _, body) = raw_http(
            admin,
            &admin_request(admin, "POST", "/publish", headers, A_PUBLISH),
        );
        (status, body)
    };
    for content_type in [
        None,
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
        Some("application/json-patch+json"),
    ] {
        let header = content_type.map(|c| format!("Content-Type: {c}"));
        let headers: Vec<&str> = header.iter().map(String::as_str).collect();
        let (status, code, message) = admin_error(post(&headers));
        assert_eq!(
            (status, code.as_str()),
            (415, "unsupported_media_type"),
            "{content_type:?}"
        );
        assert!(message.contains("application/json"), "{message}");
    }
    for content_type in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
    ] {
        let (status, body) = post(&[&format!("Content-Type: {content_type}")]);
        assert_eq!(status, 202, "{content_type}: {body}");
    }

    let json = "Content-Type: application/json";
    for origin in ["https://evil.example", "null", &format!("http://{admin}")] {
        let (status, code, _) = admin_error(post(&[json, &format!("Origin: {origin}")]));
        assert_eq!(
            (status, code.as_str()),
            (403, "forbidden_origin"),
            "{origin}"
        );
    }

    let with_host = |host: &str| {
        let request = admin_request(admin, "POST", "/publish", &[json], A_PUBLISH).replacen(
            &format!("Host: {admin}\r\n"),
            &format!("Host: {host}\r\n"),
            1,
        );
        let (status, _, body) = raw_http(admin, &request);
        (status, body)
    };
    for host in [
        format!("evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("localhost:{}", port.wrapping_add(1)),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        format!("10.0.0.1:{port}"),
    ] {
        let (status, code, message) = admin_error(with_host(&host));
        assert_eq!((status, code.as_str()), (403, "forbidden_host"), "{host}");
        assert!(message.contains(&admin.to_string()), "{message}");
    }
    for host in [
        admin.to_string(),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (status, body) = with_host(&host);
        assert_eq!(status, 202, "{host}: {body}");
    }

    // The probes and metrics answer pages and any Host as before.
    let probe = admin_request(
        admin,
        "GET",
        "/health",
        &["Origin: https://evil.example"],
        "",
    )
    .replacen(&format!("Host: {admin}"), "Host: evil.example", 1);
    assert_eq!(raw_http(admin, &probe).0, 200);
}

/// `SURGE_ADMIN_PUBLISH_RATE` publishes per second (a second's worth at
/// once), then 429 `rate_limited` with `Retry-After`; 1000 by default.
#[test]
fn publish_is_rate_limited_by_surge_admin_publish_rate() {
    let out = run(&["config"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("SURGE_ADMIN_PUBLISH_RATE ") && l.contains(" 1000 ")),
        "{text}"
    );

    let server = Server::start(&["--admin-publish-rate", "5"]);
    let admin = server.admin;
    let json = ["Content-Type: application/json"];
    let started = Instant::now();
    let mut accepted = 0;
    let mut limited = 0;
    for _ in 0..20 {
        let (status, headers, body) = raw_http(
            admin,
            &admin_request(admin, "POST", "/publish", &json, A_PUBLISH),
        );
        match status {
            202 => accepted += 1,
            _ => {
                let (status, code, message) = admin_error((status, body));
                assert_eq!((status, code.as_str()), (429, "rate_limited"));
                assert!(message.contains("SURGE_ADMIN_PUBLISH_RATE"), "{message}");
                let retry: u64 = header(&headers, "retry-after")
                    .and_then(|v| v.parse().ok())
                    .expect("a Retry-After in seconds");
                assert!((1..=2).contains(&retry), "{retry}");
                limited += 1;
            }
        }
    }
    // 5 at once, plus what 5/s added while the 20 requests ran.
    let refilled = (started.elapsed().as_secs_f64() * 5.0).floor() as u32;
    assert!(
        (5..=5 + refilled).contains(&accepted) && limited == 20 - accepted,
        "{accepted} accepted, {limited} limited in {:?}",
        started.elapsed()
    );
    assert_eq!(published(admin), u64::from(accepted));
    std::thread::sleep(Duration::from_millis(1100));
    let (status, _, body) = raw_http(
        admin,
        &admin_request(admin, "POST", "/publish", &json, A_PUBLISH),
    );
    assert_eq!(status, 202, "the bucket refilled: {body}");
}

/// `surge feed` sends the `SURGE_ADMIN_TOKEN` of its configuration, and
/// reaches a wildcard admin listener over loopback with a `Host` the
/// listener accepts.
#[test]
fn feed_sends_the_configured_admin_token() {
    let admin: SocketAddr = format!("0.0.0.0:{}", free_port()).parse().expect("addr");
    let server = serve_admin_at(admin, &[], &[("SURGE_ADMIN_TOKEN", ADMIN_TOKEN)]);
    let feed = |env: &[(&str, &str)]| {
        run(
            &[
                "feed",
                "--rate",
                "50",
                "--duration",
                "500ms",
                "--admin-listen",
                &admin.to_string(),
            ],
            env,
        )
    };
    let out = feed(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("HTTP 401"), "{stderr}");
    assert!(stderr.contains("SURGE_ADMIN_TOKEN"), "{stderr}");
    assert_eq!(published(server.admin), 0);

    let out = feed(&[("SURGE_ADMIN_TOKEN", ADMIN_TOKEN)]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(published(server.admin) > 0);
}

/// Credentials are printed and served only as `***`: the effective
/// configuration `surge config` and `surge serve` print, the JSON log
/// line of `SURGE_LOG_FORMAT=json`, and `GET /config`.
#[test]
fn secrets_are_redacted_in_the_print_the_json_log_line_and_config() {
    const NATS_PASSWORD: &str = "nats-pa55word-for-tests";
    const AUTH_TOKEN: &str = "client-t0ken-for-tests";
    const NATS_TOKEN: &str = "nats-t0ken-for-tests";
    const JWT_SECRET: &str = "jwt-secret-for-tests-0123456789abcdef";
    let secrets = [
        ADMIN_TOKEN,
        NATS_PASSWORD,
        AUTH_TOKEN,
        NATS_TOKEN,
        JWT_SECRET,
    ];
    let leaks = |text: &str| -> Vec<&str> {
        secrets
            .iter()
            .copied()
            .filter(|secret| text.contains(secret))
            .collect()
    };
    // Nothing listens there: surge serves and retries in the background.
    let nats = format!("nats://127.0.0.1:{}", free_port());
    let with_password = [
        ("SURGE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("SURGE_NATS_URL", nats.as_str()),
        ("SURGE_NATS_USER", "odin"),
        ("SURGE_NATS_PASSWORD", NATS_PASSWORD),
        ("SURGE_AUTH_TOKENS", AUTH_TOKEN),
    ];
    let with_token = [
        ("SURGE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("SURGE_NATS_URL", nats.as_str()),
        ("SURGE_NATS_TOKEN", NATS_TOKEN),
        ("SURGE_JWT_SECRET", JWT_SECRET),
    ];
    let printed = |text: &str, setting: &str| {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{setting} ")))
            .unwrap_or_else(|| panic!("no {setting} line in\n{text}"));
        assert!(
            line.split_whitespace().nth(1) == Some("***"),
            "{setting} is not shown as ***: {line}"
        );
    };
    for (env, shown) in [
        (
            &with_password[..],
            &[
                "SURGE_ADMIN_TOKEN",
                "SURGE_NATS_PASSWORD",
                "SURGE_AUTH_TOKENS",
            ][..],
        ),
        (
            &with_token[..],
            &["SURGE_ADMIN_TOKEN", "SURGE_NATS_TOKEN", "SURGE_JWT_SECRET"][..],
        ),
    ] {
        let out = run(&["config"], env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        for setting in shown {
            printed(&stdout, setting);
        }
        assert_eq!(leaks(&stdout), [] as [&str; 0], "{stdout}");
        assert_eq!(leaks(&stderr), [] as [&str; 0], "{stderr}");
    }

    // Serving: the text print, then the JSON log line, and /config.
    for format in ["text", "json"] {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let listen = format!("127.0.0.1:{}", free_port());
        let child = Command::new(SURGE)
            .args(["--listen", &listen, "--admin-listen", &admin.to_string()])
            .args(["--max-connections", "100", "--shards", "1"])
            .env_clear()
            .envs(with_password.iter().copied())
            .env("SURGE_LOG_FORMAT", format)
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("surge starts");
        let mut server = Server::ready(child, listen.parse().expect("addr"), admin);
        let auth = format!("Authorization: Bearer {ADMIN_TOKEN}");
        let (status, _, body) =
            raw_http(admin, &admin_request(admin, "GET", "/config", &[&auth], ""));
        assert_eq!(status, 200, "{body}");
        assert_eq!(leaks(&body), [] as [&str; 0], "{body}");
        let config: Value = serde_json::from_str(&body).expect("JSON");
        for key in ["admin_token", "nats_password", "auth_tokens"] {
            assert_eq!(config["settings"][key], "***", "{key}: {body}");
        }

        server.signal(libc::SIGTERM);
        let mut stdout = String::new();
        let mut stderr = String::new();
        let mut out = server.child.stdout.take().expect("stdout");
        out.read_to_string(&mut stdout).expect("read stdout");
        let mut err = server.child.stderr.take().expect("stderr");
        err.read_to_string(&mut stderr).expect("read stderr");
        assert_eq!(server.wait(Duration::from_secs(10)).code(), Some(0));
        assert_eq!(leaks(&stdout), [] as [&str; 0], "{stdout}");
        assert_eq!(leaks(&stderr), [] as [&str; 0], "{stderr}");
        if format == "text" {
            for setting in [
                "SURGE_ADMIN_TOKEN",
                "SURGE_NATS_PASSWORD",
                "SURGE_AUTH_TOKENS",
            ] {
                printed(&stdout, setting);
            }
        } else {
            let logged: Vec<Value> = stdout
                .lines()
                .chain(stderr.lines())
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|e| e["fields"]["config"].as_str().map(str::to_owned))
                .map(|c| serde_json::from_str(&c).expect("the logged config is JSON"))
                .collect();
            assert_eq!(logged.len(), 1, "one config line:\n{stdout}\n{stderr}");
            for key in ["admin_token", "nats_password", "auth_tokens"] {
                assert_eq!(logged[0]["settings"][key], "***", "{key}: {}", logged[0]);
            }
        }
    }
}

/// A JWKS document holding the P-256 public keys `keys` under their kids.
fn jwks_document(keys: &[(&str, &[u8])]) -> String {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(kid, pem)| {
            let key = jsonwebtoken::DecodingKey::from_ec_pem(pem).expect("pem");
            let jwk = jsonwebtoken::jwk::Jwk::from_decoding_key(
                &key,
                Some(jsonwebtoken::Algorithm::ES256),
            )
            .expect("jwk");
            let mut jwk = serde_json::to_value(jwk).expect("json");
            jwk["kid"] = json!(kid);
            jwk
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

/// An ES256 token for `sub` (an hour, every `odin.` subject) under `kid`.
fn es256_token(sub: &str, kid: &str, private_pem: &[u8]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 3600;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        &json!({"sub": sub, "exp": exp, "channels": ["odin.>"]}),
        &jsonwebtoken::EncodingKey::from_ec_pem(private_pem).expect("key"),
    )
    .expect("signs")
}

/// The value of the metric line starting with `line_start` at `admin`.
fn metric_value(admin: SocketAddr, line_start: &str) -> Option<f64> {
    let (_, metrics) = http(admin, "GET", "/metrics", "");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|n| n.trim().parse().ok())
}

/// Key rotation: SIGHUP re-reads the JWKS file; tokens of the new key are
/// accepted from then on, a connection opened with the old key stays, and
/// a broken file leaves the keys in use unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_sighup_reloads_the_jwks_file_without_dropping_connections() {
    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/tests/fixtures/jwt/");
    let read = |name: &str| std::fs::read(format!("{FIXTURES}{name}")).expect("fixture");
    let (one_public, one_private) = (read("es256_public.pem"), read("es256_private.pem"));
    let (two_public, two_private) = (
        read("other_es256_public.pem"),
        read("other_es256_private.pem"),
    );
    let dir = std::env::temp_dir().join(format!("surge-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, jwks_document(&[("one", &one_public)])).expect("write");
    let server = Server::start_with_env(
        &[],
        &[("SURGE_JWT_JWKS_FILE", jwks.to_str().expect("utf-8"))],
    );
    let url = |token: &str| format!("ws://{}/ws?token={token}", server.ws);
    let status_of = |result: &Result<_, tokio_tungstenite::tungstenite::Error>| match result {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("neither an upgrade nor an HTTP answer: {e}"),
    };

    let (mut old, _) =
        tokio_tungstenite::connect_async(url(&es256_token("alice", "one", &one_private)))
            .await
            .expect("key one upgrades");
    assert_eq!(jwt_next(&mut old).await["type"], "welcome");
    old.send(Message::Text(
        json!({"type": "subscribe", "channels": ["odin.global.trending"]})
            .to_string()
            .into(),
    ))
    .await
    .expect("send");
    assert_eq!(jwt_next(&mut old).await["type"], "subscribed");
    let by_two = es256_token("bob", "two", &two_private);
    assert_eq!(
        status_of(&tokio_tungstenite::connect_async(url(&by_two)).await),
        401
    );

    // Rotate: "two" in, "one" out.
    std::fs::write(&jwks, jwks_document(&[("two", &two_public)])).expect("write");
    server.signal(libc::SIGHUP);
    let admin = server.admin;
    let deadline = Instant::now() + Duration::from_secs(5);
    let reloaded = "surge_reloads_total{file=\"jwt_keys\",result=\"ok\"} ";
    while tokio::task::spawn_blocking(move || metric_value(admin, reloaded))
        .await
        .expect("scrape")
        != Some(1.0)
    {
        assert!(Instant::now() < deadline, "the reload was never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        status_of(&tokio_tungstenite::connect_async(url(&by_two)).await),
        101
    );
    let by_one = es256_token("carol", "one", &one_private);
    assert_eq!(
        status_of(&tokio_tungstenite::connect_async(url(&by_one)).await),
        401
    );

    // A broken file: counted as an error, and "two" still works.
    std::fs::write(&jwks, "{ not json").expect("write");
    server.signal(libc::SIGHUP);
    let failed = "surge_reloads_total{file=\"jwt_keys\",result=\"error\"} ";
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::task::spawn_blocking(move || metric_value(admin, failed))
        .await
        .expect("scrape")
        != Some(1.0)
    {
        assert!(
            Instant::now() < deadline,
            "the failed reload was never counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        status_of(&tokio_tungstenite::connect_async(url(&by_two)).await),
        101
    );

    // The connection opened with the retired key was never dropped.
    tokio::task::spawn_blocking(move || {
        let body = json!({"subject": "odin.global.trending", "data": 7}).to_string();
        assert_eq!(http(admin, "POST", "/publish", &body).0, 202);
    })
    .await
    .expect("published");
    let message = jwt_next(&mut old).await;
    assert_eq!(message["data"], 7, "{message}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// permessage-deflate end to end: a client offering it gets it in the 101
/// and a published message as a compressed frame that inflates to the
/// same JSON; with SURGE_COMPRESSION=false the offer is declined.
#[test]
fn permessage_deflate_is_negotiated_and_messages_arrive_compressed() {
    use std::io::Read as _;
    for enabled in [true, false] {
        let server = Server::start_with_env(
            &[],
            &[("SURGE_COMPRESSION", if enabled { "true" } else { "false" })],
        );
        let mut s = TcpStream::connect(server.ws).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(
            s,
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        )
        .expect("write");
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).expect("101 head");
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert_eq!(
            head.contains("Sec-WebSocket-Extensions: permessage-deflate"),
            enabled,
            "{head}"
        );
        let read_frame = |s: &mut TcpStream| -> (u8, Vec<u8>) {
            let mut h = [0u8; 2];
            s.read_exact(&mut h).expect("frame header");
            let len = match h[1] & 0x7F {
                126 => {
                    let mut l = [0u8; 2];
                    s.read_exact(&mut l).expect("length");
                    usize::from(u16::from_be_bytes(l))
                }
                n => usize::from(n),
            };
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).expect("payload");
            (h[0], payload)
        };
        assert_eq!(read_frame(&mut s).0, 0x81, "welcome, plain");
        let subscribe = br#"{"type":"subscribe","channels":["odin.token.>"]}"#;
        s.write_all(&surge_core::frame::masked_frame(
            0x81,
            subscribe,
            [1, 2, 3, 4],
        ))
        .expect("subscribe");
        assert_eq!(read_frame(&mut s).0, 0x81, "subscribed, plain");
        let data = json!({"symbol": "BTC", "price": 64123.5, "qty": 0.015, "side": "buy", "note": "x".repeat(200)});
        let body = json!({"subject": "odin.token.BTC.trade", "data": data}).to_string();
        assert_eq!(http(server.admin, "POST", "/publish", &body).0, 202);
        let (b0, payload) = read_frame(&mut s);
        let text = if enabled {
            assert_eq!(b0, 0xC1, "FIN, RSV1 (compressed), text");
            let mut stream = payload.clone();
            stream.extend_from_slice(&[0, 0, 0xff, 0xff]);
            let mut out = Vec::new();
            let _ = flate2::read::DeflateDecoder::new(&stream[..]).read_to_end(&mut out);
            assert!(
                payload.len() < out.len() / 2,
                "{} of {}",
                payload.len(),
                out.len()
            );
            out
        } else {
            assert_eq!(b0, 0x81);
            payload
        };
        let message: Value = serde_json::from_slice(&text).expect("JSON");
        assert_eq!(message["type"], "message");
        assert_eq!(message["data"], data);
    }
}

/// `surge top --once` against a running gateway with an admin token: one
/// plain-text frame with the gateway's numbers (a connection held, a
/// refused handshake), and a clear refusal without the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_once_prints_the_running_gateways_numbers_and_needs_the_admin_token() {
    let server = Server::start_with_env(&[], &[("SURGE_ADMIN_TOKEN", "top-test-token")]);
    let (_ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.ws))
        .await
        .expect("upgrade");
    match tokio_tungstenite::connect_async(format!("ws://{}/nowhere", server.ws)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("expected 404, got {other:?}"),
    }
    let admin = format!("http://{}", server.admin);
    let out = run(&["top", "--once", "--admin", &admin], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("SURGE_ADMIN_TOKEN"),
        "{stderr}"
    );

    let out = run(
        &[
            "top",
            "--once",
            "--admin",
            &admin,
            "--admin-token",
            "top-test-token",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "READY",
        "connections 1/1000 (0.1 %)",
        "admitted 0/s (total 1)",
        "#0 ",
        "#1 ",
        "404 not_found 0 (total 1)",
        "broker      embedded connected",
        "dropped/s throttled 0",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in\n{stdout}");
    }
    assert!(!stdout.contains('\x1b'), "plain text: {stdout:?}");
}

/// `surge top` on a terminal (a pseudo-terminal made by util-linux
/// `script`): it draws on the alternate screen, and `q` or Ctrl-C ends it
/// with status 0 and the terminal given back.
#[test]
fn top_on_a_terminal_quits_on_q_and_on_ctrl_c_and_restores_the_screen() {
    let server = Server::start(&[]);
    for key in ["q", "\u{3}"] {
        let command = format!("{SURGE} top --admin http://{}", server.admin);
        let mut child = Command::new("script")
            .args(["-qfec", &command, "/dev/null"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TERM", "xterm")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("util-linux script runs");
        let mut stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut screen = Vec::new();
            let _ = stdout.read_to_end(&mut screen);
            String::from_utf8_lossy(&screen).into_owned()
        });
        // Two frames drawn, then the key.
        std::thread::sleep(Duration::from_millis(2500));
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(key.as_bytes()).expect("key");
        stdin.flush().expect("flush");
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "surge top did not quit on {key:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(stdin);
        let screen = reader.join().expect("reader");
        assert!(status.success(), "{key:?}: {status}\n{screen}");
        assert!(screen.contains("connections 0/1000"), "{screen:?}");
        assert!(
            screen.contains("\x1b[?1049h"),
            "entered the alternate screen"
        );
        assert!(
            screen.trim_end().ends_with("\x1b[?1049l"),
            "left the alternate screen last: {screen:?}"
        );
    }
}

/// Reads server-sent events from `/dashboard/events` over HTTP/1.0 (so
/// the body is not chunked) with `extra` request headers: the status,
/// then the data of the first `frames` `frame` events.
fn dashboard_frames(admin: SocketAddr, extra: &str, frames: usize) -> (u16, Vec<String>) {
    use std::io::BufRead;
    let mut s = TcpStream::connect(admin).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET /dashboard/events HTTP/1.0\r\nHost: {admin}\r\n{extra}\r\n"
    )
    .expect("write");
    let mut lines = std::io::BufReader::new(s).lines();
    let status_line = lines.next().expect("a status line").expect("read");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut data = Vec::new();
    let mut event = String::new();
    for line in lines {
        let line = line.expect("read");
        if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_owned();
        } else if let Some(payload) = line.strip_prefix("data: ")
            && event == "frame"
        {
            data.push(payload.to_owned());
            if data.len() == frames {
                break;
            }
        }
    }
    (status, data)
}

/// The dashboard's stream computes one frame per tick for every viewer:
/// two viewers get the very same bytes, whose numbers are the gateway's
/// (a connection held, two viewers); with an admin token the page takes
/// it once for a session cookie, and the stream needs the cookie or the
/// token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_frames_are_shared_by_viewers_and_protected_by_the_admin_token() {
    let server = Server::start_with_env(&[], &[("SURGE_ADMIN_TOKEN", "dash-token")]);
    let (_ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.ws))
        .await
        .expect("upgrade");
    let admin = server.admin;

    let (status, frames) = dashboard_frames(admin, "", 0);
    assert_eq!(status, 401);
    assert!(frames.is_empty());
    let (status, body) = http(admin, "GET", "/dashboard", "");
    assert_eq!(status, 401, "the token form");
    assert!(body.contains("name=\"token\""), "{body}");
    let (status, body) = http(admin, "GET", "/dashboard?token=wrong", "");
    assert_eq!(status, 401);
    assert!(body.contains("not the admin token"), "{body}");

    // The token in the URL: a redirect and a session cookie, not the token.
    let mut s = TcpStream::connect(admin).expect("connect");
    write!(
        s,
        "GET /dashboard?token=dash-token HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
    assert!(answer.contains("\r\nlocation: /dashboard\r\n"), "{answer}");
    let cookie = answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a cookie");
    assert!(
        cookie.ends_with("; Path=/dashboard; HttpOnly; SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("dash-token"));
    let session = cookie.split(';').next().expect("name=value");

    let viewer = |header: String| std::thread::spawn(move || dashboard_frames(admin, &header, 3));
    let a = viewer(format!("Cookie: {session}\r\n"));
    let b = viewer("Authorization: Bearer dash-token\r\n".to_owned());
    let (a, b) = (a.join().expect("a"), b.join().expect("b"));
    assert_eq!((a.0, b.0), (200, 200));
    // Both joined within a tick or so of each other: their later frames
    // are from ticks both watched.
    let shared: Vec<&String> = a.1.iter().filter(|f| b.1.contains(f)).collect();
    assert!(!shared.is_empty(), "no frame in common:\n{a:?}\n{b:?}");
    let frame: Value = serde_json::from_str(shared[0]).expect("JSON");
    assert_eq!(frame["connections"]["current"], 1);
    assert_eq!(frame["connections"]["max"], 1000);
    assert_eq!(frame["admissions"]["total"], 1);
    assert_eq!(frame["viewers"], 2);
    assert_eq!(frame["broker"]["kind"], "embedded");
    assert_eq!(frame["ready"], true);
    assert_eq!(frame["shards"].as_array().map(Vec::len), Some(2));
}
