//! `surge feed`: a synthetic market stream, so a newcomer sees live data
//! and benchmarks have a publisher.
//!
//! It publishes what the seed system's backend published: a trade per
//! symbol (`odin.token.{SYMBOL}.trade`: price, qty, side), order-book
//! liquidity updates (`odin.token.{SYMBOL}.liquidity`), and every 5 s the
//! trending symbols by traded volume (`odin.global.trending`). Prices take
//! a random walk, popular symbols trade more often (Zipf weights), and an
//! occasional large trade is published with high priority, so throttling
//! and priorities have something to bite on.
//!
//! With `SURGE_NATS_URL` set it publishes to JetStream directly (ensuring
//! the stream like `surge serve` does); otherwise it posts to the running
//! gateway's admin `/publish` over one kept-alive HTTP/1.1 connection
//! ([`surge_admin_client`], hyper's client): the
//! one `--admin URL` names, else the configured `SURGE_ADMIN_LISTEN`,
//! with `Authorization: Bearer <SURGE_ADMIN_TOKEN>` when the configuration
//! has that token.
//! Trades and liquidity together follow `--rate`; trending comes on top.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Value, json};
use surge_admin_client::AdminClient;
use surge_core::config::Config;
use surge_core::protocol::Priority;
use surge_core::subjects::Subject;
use surge_runtime::BrokerError;

use crate::admin_url::listener_address;
use crate::nats::{Link, NatsError};

pub const DEFAULT_RATE: u32 = 50;
/// [`DEFAULT_RATE`] as the command line shows it.
pub const DEFAULT_RATE_TEXT: &str = "50";
pub const DEFAULT_SYMBOLS: &str = "BTC,ETH,SOL,BNB,XRP,DOGE,ADA,AVAX";
/// How often the trending list is published.
const TRENDING_EVERY: Duration = Duration::from_secs(5);
/// How many symbols the trending list names.
const TRENDING_TOP: usize = 5;
/// Share of trades among the rate-paced messages (the rest is liquidity).
const TRADE_SHARE: f64 = 0.8;
/// Pacing step: messages due are sent in small bursts this often.
const TICK: Duration = Duration::from_millis(5);
/// Longest wait for the admin listener to answer one publish: a gateway
/// that stopped answering ends the feed instead of stalling it.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What `surge feed` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedOptions {
    /// Trades plus liquidity updates per second.
    pub rate: u32,
    /// Upper-case symbols, each a valid subject token.
    pub symbols: Vec<String>,
    /// `None`: until Ctrl-C.
    pub duration: Option<Duration>,
    /// The gateway's admin URL, used with the embedded broker; `None`: the
    /// configured admin listener.
    pub admin: Option<String>,
}

/// Why the feed stopped early.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("--admin {0:?}: expected http://host:port (the gateway's SURGE_ADMIN_LISTEN)")]
    BadAdmin(String),
    #[error(
        "cannot reach the gateway's admin listener at {addr}: {reason} (is `surge serve` running?)"
    )]
    Admin { addr: String, reason: String },
    #[error("the gateway refused a publish: {0}")]
    Refused(String),
    #[error(transparent)]
    Nats(#[from] NatsError),
}

/// Checks `--symbols`: comma-separated, each usable as a subject token.
pub fn parse_symbols(list: &str) -> Result<Vec<String>, String> {
    let symbols: Vec<String> = list
        .split(',')
        .map(|s| s.trim().to_ascii_uppercase())
        .filter(|s| !s.is_empty())
        .collect();
    if symbols.is_empty() {
        return Err("needs at least one symbol, e.g. BTC,ETH,SOL".into());
    }
    for s in &symbols {
        if Subject::parse(&format!("odin.token.{s}.trade")).is_err() || s.contains('.') {
            return Err(format!(
                "{s:?} cannot be a subject token (no dots, wildcards or spaces)"
            ));
        }
    }
    Ok(symbols)
}

/// What was published.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FeedReport {
    pub trades: u64,
    pub liquidity: u64,
    pub trending: u64,
    /// Publishes that failed while the broker was unavailable.
    pub failed: u64,
    pub last_sseq: u64,
    pub elapsed: Duration,
}

impl FeedReport {
    fn total(&self) -> u64 {
        self.trades + self.liquidity + self.trending
    }
}

impl fmt::Display for FeedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(0.001);
        write!(
            f,
            "fed {} messages in {:.1}s ({:.0}/s): {} trades, {} liquidity, {} trending; {} failed; last sseq {}",
            self.total(),
            secs,
            self.total() as f64 / secs,
            self.trades,
            self.liquidity,
            self.trending,
            self.failed,
            self.last_sseq
        )
    }
}

/// `n` seconds of the feed's messages at `rate` per second, as (subject,
/// payload bytes): what `surge feed` would publish, for measurements such
/// as the wire bytes of a delivery (`cargo run --example wire_bytes`).
pub fn sample(symbols: &[String], rate: u32, seconds: u64, seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut market = Market::new(symbols, seed);
    let mut out = Vec::new();
    for second in 0..seconds {
        for i in 0..u64::from(rate) {
            let ts = second * 1000 + i * 1000 / u64::from(rate.max(1));
            let m = market.next(ts);
            out.push((m.subject, m.data.to_string().into_bytes()));
        }
        if (second + 1) % TRENDING_EVERY.as_secs() == 0 {
            let m = market.trending(second * 1000 + 999);
            out.push((m.subject, m.data.to_string().into_bytes()));
        }
    }
    out
}

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
struct Outgoing {
    subject: String,
    data: Value,
    priority: Priority,
}

/// SplitMix64: small, fast, good enough for synthetic prices.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone)]
struct SymbolState {
    name: String,
    price: f64,
    /// Price when the current trending window opened.
    window_open: f64,
    window_volume: f64,
    window_trades: u64,
}

/// The simulated market. Deterministic for a given seed.
#[derive(Debug, Clone)]
struct Market {
    rng: Rng,
    symbols: Vec<SymbolState>,
    /// Cumulative Zipf weights for picking a symbol.
    cumulative: Vec<f64>,
    trade_id: u64,
}

fn start_price(symbol: &str, rng: &mut Rng) -> f64 {
    match symbol {
        "BTC" => 64_000.0,
        "ETH" => 3_200.0,
        "SOL" => 150.0,
        "BNB" => 580.0,
        "XRP" => 0.52,
        "DOGE" => 0.15,
        "ADA" => 0.45,
        "AVAX" => 35.0,
        _ => round_price(0.05 + rng.unit() * 100.0),
    }
}

/// Two decimals for prices of 1 and more, six below.
fn round_price(p: f64) -> f64 {
    let scale = if p >= 1.0 { 100.0 } else { 1_000_000.0 };
    (p * scale).round() / scale
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

impl Market {
    fn new(symbols: &[String], seed: u64) -> Self {
        let mut rng = Rng(seed);
        let symbols: Vec<SymbolState> = symbols
            .iter()
            .map(|name| {
                let price = start_price(name, &mut rng);
                SymbolState {
                    name: name.clone(),
                    price,
                    window_open: price,
                    window_volume: 0.0,
                    window_trades: 0,
                }
            })
            .collect();
        let mut total = 0.0;
        let cumulative = (0..symbols.len())
            .map(|i| {
                total += 1.0 / (i as f64 + 1.0);
                total
            })
            .collect();
        Market {
            rng,
            symbols,
            cumulative,
            trade_id: 0,
        }
    }

    fn pick_symbol(&mut self) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let x = self.rng.unit() * total;
        self.cumulative
            .iter()
            .position(|&c| x <= c)
            .unwrap_or(self.symbols.len().saturating_sub(1))
    }

    /// The next rate-paced message: a trade or a liquidity update.
    fn next(&mut self, ts_ms: u64) -> Outgoing {
        let i = self.pick_symbol();
        let step = (self.rng.unit() - 0.5) * 0.002;
        let is_trade = self.rng.unit() <= TRADE_SHARE;
        let whale = self.rng.unit() < 0.02;
        let size = -self.rng.unit().ln();
        let side_buy = self.rng.unit() < 0.5;
        let spread = 0.0002 + self.rng.unit() * 0.0008;
        let depth = (self.rng.unit(), self.rng.unit());
        let s = &mut self.symbols[i];
        s.price = round_price((s.price * (1.0 + step)).max(0.000_001));
        if is_trade {
            self.trade_id += 1;
            // About $1,000 a trade, with the odd whale 50 times that.
            let notional = size * 1_000.0 * if whale { 50.0 } else { 1.0 };
            let qty = round_to(notional / s.price, 6);
            s.window_volume += notional;
            s.window_trades += 1;
            Outgoing {
                subject: format!("odin.token.{}.trade", s.name),
                data: json!({
                    "symbol": s.name,
                    "price": s.price,
                    "qty": qty,
                    "side": if side_buy { "buy" } else { "sell" },
                    "trade_id": self.trade_id,
                    "ts": ts_ms,
                }),
                priority: if whale {
                    Priority::High
                } else {
                    Priority::Medium
                },
            }
        } else {
            let half = s.price * spread / 2.0;
            Outgoing {
                subject: format!("odin.token.{}.liquidity", s.name),
                data: json!({
                    "symbol": s.name,
                    "bid": round_price(s.price - half),
                    "ask": round_price(s.price + half),
                    "bid_size": round_to(depth.0 * 50_000.0 / s.price, 4),
                    "ask_size": round_to(depth.1 * 50_000.0 / s.price, 4),
                    "ts": ts_ms,
                }),
                priority: Priority::Low,
            }
        }
    }

    /// The trending list for the window that just closed; opens a new one.
    fn trending(&mut self, ts_ms: u64) -> Outgoing {
        let mut order: Vec<usize> = (0..self.symbols.len()).collect();
        // Stable sort: ties keep the configured order.
        order.sort_by(|&a, &b| {
            self.symbols[b]
                .window_volume
                .total_cmp(&self.symbols[a].window_volume)
        });
        let top: Vec<Value> = order
            .iter()
            .take(TRENDING_TOP)
            .map(|&i| {
                let s = &self.symbols[i];
                json!({
                    "symbol": s.name,
                    "volume": round_to(s.window_volume, 2),
                    "trades": s.window_trades,
                    "change_pct": round_to((s.price / s.window_open - 1.0) * 100.0, 3),
                    "price": s.price,
                })
            })
            .collect();
        for s in &mut self.symbols {
            s.window_open = s.price;
            s.window_volume = 0.0;
            s.window_trades = 0;
        }
        Outgoing {
            subject: "odin.global.trending".into(),
            data: json!({"window_s": TRENDING_EVERY.as_secs(), "top": top, "ts": ts_ms}),
            priority: Priority::High,
        }
    }
}

/// `host:port` of `--admin`, or [`FeedError::BadAdmin`].
fn admin_address(url: &str) -> Result<String, FeedError> {
    crate::admin_url::host_port(url).ok_or_else(|| FeedError::BadAdmin(url.to_owned()))
}

/// Where the feed publishes.
enum Sink {
    Nats(Box<Link>),
    Admin(AdminClient),
}

enum Sent {
    Ok(u64),
    /// The broker is unavailable for now; the feed carries on.
    Unavailable(String),
}

impl Sink {
    async fn publish(&mut self, message: &Outgoing) -> Result<Sent, FeedError> {
        match self {
            Sink::Nats(link) => {
                let subject = Subject::parse(&message.subject)
                    .map_err(|e| FeedError::Refused(format!("{}: {e}", message.subject)))?;
                let data = Bytes::from(message.data.to_string());
                match link.publish(&subject, data, message.priority).await {
                    Ok(sseq) => Ok(Sent::Ok(sseq)),
                    Err(BrokerError::Unavailable(e) | BrokerError::Full(e)) => {
                        Ok(Sent::Unavailable(e))
                    }
                    Err(BrokerError::Refused(e)) => Err(FeedError::Refused(e)),
                }
            }
            Sink::Admin(client) => {
                let body = json!({
                    "subject": message.subject,
                    "data": message.data,
                    "priority": message.priority.as_str(),
                })
                .to_string();
                let answer =
                    client
                        .post_json("/publish", body)
                        .await
                        .map_err(|e| FeedError::Admin {
                            addr: client.addr().to_owned(),
                            reason: e.to_string(),
                        })?;
                let (status, answer) = (answer.status, String::from_utf8_lossy(&answer.body));
                match status {
                    202 => Ok(Sent::Ok(
                        serde_json::from_str::<Value>(&answer)
                            .ok()
                            .and_then(|v| v["sseq"].as_u64())
                            .unwrap_or(0),
                    )),
                    // Unavailable for now (broker down, or over
                    // SURGE_ADMIN_PUBLISH_RATE): the feed carries on.
                    503 | 429 => Ok(Sent::Unavailable(answer.into_owned())),
                    _ => Err(FeedError::Refused(format!("HTTP {status}: {answer}"))),
                }
            }
        }
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Publishes until `--duration` has passed or Ctrl-C.
pub async fn run(config: &Config, options: FeedOptions) -> Result<FeedReport, FeedError> {
    let mut sink = if config.nats_url.is_some() {
        let (link, _) = Link::open(config).await?;
        println!(
            "surge feed: publishing to NATS JetStream stream {} at {} msg/s",
            link.stream_name(),
            options.rate
        );
        Sink::Nats(Box::new(link))
    } else {
        let addr = match &options.admin {
            Some(url) => admin_address(url)?,
            None => listener_address(config.admin_listen),
        };
        println!(
            "surge feed: posting to http://{addr}/publish (embedded broker) at {} msg/s",
            options.rate
        );
        Sink::Admin(
            AdminClient::new(addr, ADMIN_TIMEOUT)
                .with_bearer(config.admin_token.as_ref().map(|t| t.expose().to_owned())),
        )
    };
    let seed = unix_millis() ^ u64::from(std::process::id()).rotate_left(32);
    let mut market = Market::new(&options.symbols, seed);
    let mut report = FeedReport::default();
    let start = tokio::time::Instant::now();
    let deadline = options.duration.map(|d| start + d);
    let mut next_trending = start + TRENDING_EVERY;
    let mut next_progress = start + Duration::from_secs(5);
    let mut paced = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let now = tokio::time::Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        let due = (now - start).as_secs_f64() * f64::from(options.rate);
        let mut batch = Vec::new();
        while (paced as f64) < due.floor() {
            paced += 1;
            batch.push(market.next(unix_millis()));
        }
        if now >= next_trending {
            next_trending += TRENDING_EVERY;
            batch.push(market.trending(unix_millis()));
        }
        for message in &batch {
            match sink.publish(message).await? {
                Sent::Ok(sseq) => {
                    report.last_sseq = sseq;
                    match message.subject.rsplit('.').next() {
                        Some("trade") => report.trades += 1,
                        Some("liquidity") => report.liquidity += 1,
                        _ => report.trending += 1,
                    }
                }
                Sent::Unavailable(reason) => {
                    if report.failed == 0 || report.failed.is_multiple_of(1000) {
                        tracing::warn!(%reason, "publish failed; the feed carries on");
                    }
                    report.failed += 1;
                }
            }
        }
        if now >= next_progress {
            next_progress += Duration::from_secs(5);
            report.elapsed = now - start;
            println!("surge feed: {report}");
        }
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbols() -> Vec<String> {
        parse_symbols("btc, ETH,sol").expect("valid")
    }

    #[test]
    fn symbols_are_upper_case_subject_tokens() {
        assert_eq!(symbols(), vec!["BTC", "ETH", "SOL"]);
        assert!(parse_symbols(" , ").is_err());
        assert!(parse_symbols("BTC,E.TH").is_err());
        assert!(parse_symbols("BTC,*").is_err());
        assert!(parse_symbols("BTC,A B").is_err());
    }

    #[test]
    fn the_market_publishes_trades_and_liquidity_on_valid_subjects() {
        let mut market = Market::new(&symbols(), 7);
        let mut trades = 0;
        let mut per_symbol = BTreeMapCount::default();
        for i in 0..2_000 {
            let m = market.next(i);
            assert!(Subject::parse(&m.subject).is_ok(), "{}", m.subject);
            let symbol = m.data["symbol"].as_str().expect("symbol").to_owned();
            assert_eq!(m.subject.split('.').nth(2), Some(symbol.as_str()));
            per_symbol.add(symbol);
            if m.subject.ends_with(".trade") {
                trades += 1;
                assert!(m.data["price"].as_f64().expect("price") > 0.0);
                assert!(m.data["qty"].as_f64().expect("qty") >= 0.0);
                assert!(matches!(m.data["side"].as_str(), Some("buy" | "sell")));
            } else {
                assert!(m.subject.ends_with(".liquidity"));
                assert_eq!(m.priority, Priority::Low);
                assert!(m.data["bid"].as_f64() < m.data["ask"].as_f64());
            }
        }
        // About 80 % trades; the most popular symbol trades most.
        assert!((1_450..1_750).contains(&trades), "{trades}");
        assert!(per_symbol.get("BTC") > per_symbol.get("SOL"));
    }

    #[test]
    fn trending_ranks_the_window_by_volume_and_opens_a_new_window() {
        let mut market = Market::new(&symbols(), 1);
        for i in 0..500 {
            market.next(i);
        }
        let t = market.trending(1_000);
        assert_eq!(t.subject, "odin.global.trending");
        assert_eq!(t.priority, Priority::High);
        let top = t.data["top"].as_array().expect("top");
        assert_eq!(top.len(), 3);
        let volumes: Vec<f64> = top
            .iter()
            .map(|e| e["volume"].as_f64().unwrap_or(-1.0))
            .collect();
        assert!(volumes.windows(2).all(|w| w[0] >= w[1]), "{volumes:?}");
        let again = market.trending(2_000);
        assert!(
            again.data["top"]
                .as_array()
                .expect("top")
                .iter()
                .all(|e| e["trades"] == 0)
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_stream() {
        let a: Vec<Outgoing> = {
            let mut m = Market::new(&symbols(), 42);
            (0..50).map(|i| m.next(i)).collect()
        };
        let b: Vec<Outgoing> = {
            let mut m = Market::new(&symbols(), 42);
            (0..50).map(|i| m.next(i)).collect()
        };
        assert_eq!(a, b);
    }

    #[test]
    fn admin_urls_reduce_to_host_and_port() {
        assert_eq!(
            admin_address("http://127.0.0.1:9090").ok(),
            Some("127.0.0.1:9090".into())
        );
        assert_eq!(
            admin_address("http://localhost:9090/").ok(),
            Some("localhost:9090".into())
        );
        assert_eq!(
            admin_address("127.0.0.1:9090").ok(),
            Some("127.0.0.1:9090".into())
        );
        for bad in [
            "https://x:1",
            "http://x",
            "http://x:1/publish",
            "",
            "http://:80",
        ] {
            assert!(admin_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_wildcard_admin_listener_is_reached_over_loopback() {
        let reach = |a: &str| listener_address(a.parse().expect("addr"));
        assert_eq!(reach("0.0.0.0:9191"), "127.0.0.1:9191");
        assert_eq!(reach("[::]:9191"), "[::1]:9191");
        assert_eq!(reach("10.0.0.7:9090"), "10.0.0.7:9090");
    }

    #[derive(Default)]
    struct BTreeMapCount(std::collections::BTreeMap<String, u32>);

    impl BTreeMapCount {
        fn add(&mut self, k: String) {
            *self.0.entry(k).or_default() += 1;
        }
        fn get(&self, k: &str) -> u32 {
            self.0.get(k).copied().unwrap_or(0)
        }
    }
}
