//! What permessage-deflate costs a running surge: server CPU per delivery
//! at N subscribers with compression on and off, bytes per delivery as the
//! subscribers receive them, and idle RSS per connection with the
//! extension negotiated.
//!
//! For each setting of `SURGE_COMPRESSION` it starts the release `surge`
//! (defaults otherwise, loopback ports, an empty working directory),
//! connects N subscribers that offer permessage-deflate and subscribe to
//! `odin.>`, then runs `surge feed` (the synthetic market stream) through
//! the admin listener for a fixed time. Subscribers read and discard bytes
//! without decoding, so their own cost stays small. Figures are printed,
//! never asserted.
//!
//!     cargo build --release -p surge-server --bin surge --example compression_cpu
//!     target/release/examples/compression_cpu [SUBSCRIBERS] [RATE] [SECONDS]
//!
//! Defaults: 10000 subscribers, 10 feed messages/s, 20 s per setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use http_body_util::{BodyExt, Empty};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Connections opened at once while subscribing.
const CONNECT_BATCH: usize = 500;

struct Figures {
    negotiated: u64,
    idle_kib_per_connection: f64,
    deliveries: f64,
    cpu_seconds: f64,
    bytes_received: u64,
    seconds: f64,
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let subscribers: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let rate: u32 = args.next().map_or(Ok(10), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(20), |a| a.parse())?;
    raise_nofile();
    let surge = surge_binary()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "{subscribers} subscribers offering permessage-deflate, `surge feed --rate {rate}` for {seconds} s per setting; surge {}",
        surge.display()
    );
    let mut results = Vec::new();
    for compression in [false, true] {
        let figures = runtime.block_on(measure(&surge, compression, subscribers, rate, seconds))?;
        let per = |x: f64| x / figures.deliveries.max(1.0);
        println!(
            "SURGE_COMPRESSION={compression:<5}: negotiated on {} of {subscribers}; idle {:.2} KiB/connection; {:.0} deliveries ({:.0}/s); surge CPU {:.2} s = {:.2} us per delivery; {:.1} bytes per delivery received",
            figures.negotiated,
            figures.idle_kib_per_connection,
            figures.deliveries,
            figures.deliveries / figures.seconds,
            figures.cpu_seconds,
            per(figures.cpu_seconds) * 1e6,
            per(figures.bytes_received as f64),
        );
        results.push(figures);
    }
    let cpu = |f: &Figures| f.cpu_seconds / f.deliveries.max(1.0);
    let bytes = |f: &Figures| f.bytes_received as f64 / f.deliveries.max(1.0);
    println!(
        "compression on / off: CPU per delivery {:.2}x (goal <= 1.2x), bytes per delivery {:.0} %",
        cpu(&results[1]) / cpu(&results[0]),
        100.0 * bytes(&results[1]) / bytes(&results[0]),
    );
    Ok(())
}

async fn measure(
    surge: &PathBuf,
    compression: bool,
    subscribers: usize,
    rate: u32,
    seconds: u64,
) -> anyhow::Result<Figures> {
    let ws = free_addr()?;
    let admin = free_addr()?;
    let dir = std::env::temp_dir().join(format!("surge-compression-cpu-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut server = Command::new(surge)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SURGE_LISTEN", ws.to_string())
        .env("SURGE_ADMIN_LISTEN", admin.to_string())
        .env("SURGE_COMPRESSION", compression.to_string())
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = server.id();
    wait_health(admin).await?;
    let rss_before = rss_bytes(pid)?;

    let received = Arc::new(AtomicU64::new(0));
    let negotiated = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(subscribers);
    for batch in (0..subscribers).collect::<Vec<_>>().chunks(CONNECT_BATCH) {
        let opened = futures_util::future::join_all(batch.iter().map(|_| subscribe(ws))).await;
        for stream in opened {
            let (stream, deflate) = stream?;
            negotiated.fetch_add(u64::from(deflate), Ordering::Relaxed);
            let received = Arc::clone(&received);
            readers.push(tokio::spawn(drain(stream, received)));
        }
    }
    wait_connections(admin, subscribers).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_bytes(pid)?.saturating_sub(rss_before);

    let delivered_before = metric(admin, "surge_messages_delivered_total").await?;
    let cpu_before = cpu_seconds(pid)?;
    let bytes_before = received.load(Ordering::Relaxed);
    let started = Instant::now();
    let feed = Command::new(surge)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["feed", "--rate", &rate.to_string()])
        .args(["--duration", &format!("{seconds}s")])
        .args(["--admin", &format!("http://{admin}")])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()?;
    anyhow::ensure!(feed.success(), "surge feed failed: {feed}");
    // What was published is delivered before the window closes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let figures = Figures {
        negotiated: negotiated.load(Ordering::Relaxed),
        idle_kib_per_connection: idle as f64 / 1024.0 / subscribers as f64,
        deliveries: metric(admin, "surge_messages_delivered_total").await? - delivered_before,
        cpu_seconds: cpu_seconds(pid)? - cpu_before,
        bytes_received: received.load(Ordering::Relaxed) - bytes_before,
        seconds: elapsed,
    };
    stop(&mut server);
    for reader in readers {
        reader.abort();
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(figures)
}

/// Upgrades offering permessage-deflate and subscribes; returns the raw
/// socket (frames are counted, not decoded) and whether the server took
/// the extension.
async fn subscribe(addr: SocketAddr) -> anyhow::Result<(TcpStream, bool)> {
    let stream = TcpStream::connect(addr).await?;
    let mut request = format!("ws://{addr}/ws").into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Extensions",
        HeaderValue::from_static("permessage-deflate; client_max_window_bits"),
    );
    let (mut ws, response) = tokio_tungstenite::client_async(request, stream).await?;
    let deflate = response
        .headers()
        .get("sec-websocket-extensions")
        .is_some_and(|v| v.to_str().unwrap_or("").contains("permessage-deflate"));
    ws.send(Message::text(
        r#"{"type":"subscribe","channels":["odin.>"]}"#,
    ))
    .await?;
    Ok((ws.into_inner(), deflate))
}

async fn drain(mut stream: TcpStream, received: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n @ 1..) = stream.read(&mut buf).await {
        received.fetch_add(n as u64, Ordering::Relaxed);
    }
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

async fn metric(admin: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let text = get(admin, "/metrics").await?;
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{name} not in /metrics"))
}

async fn wait_health(admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if get(admin, "/livez").await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("surge did not answer on {admin} within 15 s")
}

async fn wait_connections(admin: SocketAddr, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if metric(admin, "surge_connections").await? as usize >= n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("fewer than {n} connections after 60 s")
}

fn surge_binary() -> anyhow::Result<PathBuf> {
    // target/release/examples/compression_cpu -> target/release/surge
    let exe = std::env::current_exe()?;
    let surge = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|release| release.join("surge"))
        .ok_or_else(|| anyhow::anyhow!("cannot place {}", exe.display()))?;
    anyhow::ensure!(
        surge.is_file(),
        "{} is missing: cargo build --release -p surge-server --bin surge",
        surge.display()
    );
    Ok(surge)
}

fn free_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn stat_fields(pid: u32) -> anyhow::Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields start after its ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let f = stat_fields(pid)?;
    // utime and stime are fields 14 and 15 of stat; 11 and 12 after ')'.
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))?;
    Ok(kib * 1024)
}

fn stop(server: &mut Child) {
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let _ = server.wait();
}

/// Each subscriber is a descriptor here too.
fn raise_nofile() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
