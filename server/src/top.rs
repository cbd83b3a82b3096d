//! `surge top`: the dashboard in a terminal, for an SSH session on the
//! host.
//!
//! It reads the same stream as the page, `/dashboard/events` on the admin
//! listener (`--admin URL`, else the configured `SURGE_ADMIN_LISTEN`), with
//! the configured `SURGE_ADMIN_TOKEN` (`--admin-token`) as a bearer token,
//! and redraws one screen per frame, each second. `q`, Esc or Ctrl-C quits
//! and gives the terminal back as it was. `--once` prints one frame as
//! plain text and exits; so does any run whose output is not a terminal,
//! once per frame, for pipes and logs.
//!
//! The terminal is driven with crossterm (raw mode, the alternate screen,
//! key events), not ratatui: the view is a fixed block of text lines
//! redrawn whole once a second, which needs no layout engine or widget
//! diffing, while getting raw mode and its restoration right on every exit
//! path is exactly what a well-kept crate should do rather than hand-written
//! termios calls. It works over SSH like any full-screen program.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use surge_core::config::Config;
use surge_core::dashboard::{Frame, Rate};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What `surge top` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopOptions {
    /// The admin listener's URL; `None`: the configured one.
    pub admin: Option<String>,
    /// Print one frame and exit.
    pub once: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("--admin {0:?}: expected http://host:port (the gateway's SURGE_ADMIN_LISTEN)")]
    BadAdmin(String),
    #[error("cannot reach the admin listener at {addr}: {reason} (is surge running there?)")]
    Connect { addr: String, reason: String },
    #[error(
        "{addr} answered 401: the dashboard needs the admin token; pass --admin-token or set SURGE_ADMIN_TOKEN"
    )]
    Unauthorized { addr: String },
    #[error("{addr} answered {status} to /dashboard/events: {body}")]
    Refused {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("the event stream from {addr} ended")]
    Ended { addr: String },
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// Frames kept for the sparklines: one minute.
const SPARK: usize = 60;

/// Runs until `q`, Ctrl-C or the stream's end (`--once`: one frame).
pub async fn run(config: &Config, options: TopOptions) -> Result<(), TopError> {
    let addr = match &options.admin {
        Some(url) => {
            crate::admin_url::host_port(url).ok_or_else(|| TopError::BadAdmin(url.clone()))?
        }
        None => crate::admin_url::listener_address(config.admin_listen),
    };
    let token = config.admin_token.as_ref().map(|t| t.expose().to_owned());
    let mut events = Events::open(&addr, token.as_deref()).await?;
    let interactive = !options.once && std::io::stdout().is_terminal();
    if !interactive {
        let mut history = History::default();
        loop {
            let frame = events.next_frame().await?;
            history.push(&frame);
            // A first frame has no rates yet: --once waits for one that has.
            if options.once && frame.interval_s.is_none() {
                continue;
            }
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", render(&frame, &history, false).join("\n"))?;
            if options.once {
                return Ok(());
            }
            writeln!(out)?;
        }
    }
    let _screen = Screen::enter()?;
    let mut keys = quit_keys();
    let mut history = History::default();
    loop {
        let frame = tokio::select! {
            frame = events.next_frame() => frame?,
            _ = keys.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        history.push(&frame);
        let mut lines = render(&frame, &history, true);
        lines.push(String::new());
        lines.push(format!("q quit · {addr}/dashboard/events"));
        Screen::draw(&lines)?;
    }
}

/// The server-sent events of `/dashboard/events`, read frame by frame.
struct Events {
    addr: String,
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
}

impl Events {
    async fn open(addr: &str, token: Option<&str>) -> Result<Events, TopError> {
        let connect_error = |e: &dyn std::fmt::Display| TopError::Connect {
            addr: addr.to_owned(),
            reason: e.to_string(),
        };
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|e| connect_error(&e))?
            .map_err(|e| connect_error(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_error(&e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
        let mut request = Request::get("/dashboard/events")
            .header(hyper::header::HOST, addr)
            .header(hyper::header::ACCEPT, "text/event-stream");
        if let Some(token) = token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| connect_error(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| connect_error(&e))?;
        let status = response.status().as_u16();
        if status == 401 {
            return Err(TopError::Unauthorized {
                addr: addr.to_owned(),
            });
        }
        if status != 200 {
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            return Err(TopError::Refused {
                addr: addr.to_owned(),
                status,
                body,
            });
        }
        Ok(Events {
            addr: addr.to_owned(),
            body: response.into_body(),
            buffer: Vec::new(),
        })
    }

    /// The next `frame` event (history and keep-alives are skipped).
    async fn next_frame(&mut self) -> Result<Frame, TopError> {
        loop {
            while let Some(event) = take_event(&mut self.buffer) {
                if let Some(frame) = frame_of(&event) {
                    return Ok(frame);
                }
            }
            let ended = || TopError::Ended {
                addr: self.addr.clone(),
            };
            match self.body.frame().await {
                Some(Ok(chunk)) => {
                    if let Ok(data) = chunk.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(_)) | None => return Err(ended()),
            }
        }
    }
}

/// Removes the first complete event (up to a blank line) from `buffer`.
fn take_event(buffer: &mut Vec<u8>) -> Option<String> {
    let end = buffer.windows(2).position(|w| w == b"\n\n")?;
    let event: Vec<u8> = buffer.drain(..end + 2).collect();
    Some(String::from_utf8_lossy(&event).into_owned())
}

/// The frame an event carries, if it is a `frame` event.
fn frame_of(event: &str) -> Option<Frame> {
    let mut name = "message";
    let mut data = String::new();
    for line in event.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            name = value.trim();
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    (name == "frame")
        .then(|| serde_json::from_str(&data).ok())
        .flatten()
}

/// A thread reading keys; sends once for q, Esc or Ctrl-C.
fn quit_keys() -> mpsc::Receiver<()> {
    use crossterm::event::{Event, KeyCode, KeyEventKind, KeyModifiers};
    let (tx, rx) = mpsc::channel(1);
    std::thread::spawn(move || {
        while let Ok(event) = crossterm::event::read() {
            if let Event::Key(key) = event
                && key.kind == KeyEventKind::Press
                && (matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
                    || (key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL)))
            {
                let _ = tx.blocking_send(());
                return;
            }
        }
    });
    rx
}

/// The terminal in raw mode on the alternate screen; given back on drop,
/// whatever the way out.
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        crossterm::terminal::enable_raw_mode()?;
        crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )?;
        Ok(Screen)
    }

    fn draw(lines: &[String]) -> std::io::Result<()> {
        use crossterm::{cursor, queue, terminal};
        let mut out = std::io::stdout().lock();
        queue!(
            out,
            cursor::MoveTo(0, 0),
            terminal::Clear(terminal::ClearType::All)
        )?;
        for line in lines {
            // Raw mode: a line feed does not return the carriage.
            write!(out, "{line}\r\n")?;
        }
        out.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = crossterm::execute!(
            std::io::stdout(),
            crossterm::cursor::Show,
            crossterm::terminal::LeaveAlternateScreen
        );
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// The last minute of a few numbers, for sparklines.
#[derive(Debug, Default)]
struct History {
    connections: VecDeque<f64>,
    delivered: VecDeque<f64>,
    refused: VecDeque<f64>,
}

impl History {
    fn push(&mut self, frame: &Frame) {
        let refused: f64 = frame.refusals.iter().filter_map(|r| r.per_s).sum();
        for (list, value) in [
            (&mut self.connections, frame.connections.current as f64),
            (&mut self.delivered, frame.delivered.per_s.unwrap_or(0.0)),
            (&mut self.refused, refused),
        ] {
            if list.len() == SPARK {
                list.pop_front();
            }
            list.push_back(value);
        }
    }
}

fn spark(values: &VecDeque<f64>) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().fold(0.0, f64::max);
    values
        .iter()
        .map(|v| {
            if max <= 0.0 {
                BARS[0]
            } else {
                BARS[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a > 0.0 && a < 10.0 && v.fract() != 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn rate(r: &Rate) -> String {
    r.per_s.map_or_else(|| "–".to_owned(), num)
}

fn bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v;
    let mut i = 0;
    while v.abs() >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.1} ms"))
}

/// The screen for `frame`: plain lines, with red and yellow marks when
/// `color`.
fn render(frame: &Frame, history: &History, color: bool) -> Vec<String> {
    let paint = |text: String, code: &str| {
        if color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text
        }
    };
    let red = |t: String| paint(t, "1;31");
    let green = |t: String| paint(t, "32");
    let yellow = |t: String| paint(t, "33");
    let mut lines = Vec::new();
    let ready = if frame.ready {
        green("READY".to_owned())
    } else {
        red(format!(
            "NOT READY ({})",
            frame.not_ready.as_deref().unwrap_or("?")
        ))
    };
    let status = if frame.status == "ok" {
        green("ok".to_owned())
    } else {
        yellow(frame.status.clone())
    };
    lines.push(format!(
        "surge {}  {ready}  {status}  up {}s  viewers {}",
        frame.version, frame.uptime_s, frame.viewers
    ));
    for problem in &frame.problems {
        lines.push(yellow(format!("  ! {problem}")));
    }
    let c = &frame.connections;
    lines.push(format!(
        "connections {}/{} ({:.1} %)  handshaking {}  admitted {}/s (total {})",
        c.current,
        c.max,
        c.utilization * 100.0,
        c.handshaking,
        rate(&frame.admissions),
        frame.admissions.total
    ));
    let mut shards = String::from("shards     ");
    for s in &frame.shards {
        let _ = write!(
            shards,
            " #{} {}/{} ({:.1} %) backlog {}",
            s.id,
            s.connections,
            s.capacity,
            s.utilization * 100.0,
            s.backlog
        );
    }
    let _ = write!(shards, "  imbalance {:.1} pts", frame.imbalance_percent);
    lines.push(shards);
    let mut refusals = String::from("refused/s  ");
    for r in &frame.refusals {
        if r.total == 0 {
            continue;
        }
        let item = format!(
            " {} {} {} (total {})",
            r.status,
            r.cause,
            r.per_s.map_or_else(|| "–".to_owned(), num),
            r.total
        );
        let _ = write!(
            refusals,
            "{}",
            if r.per_s.unwrap_or(0.0) > 0.0 {
                red(item)
            } else {
                item
            }
        );
    }
    if frame.refusals.iter().all(|r| r.total == 0) {
        refusals.push_str(" none");
    }
    lines.push(refusals);
    let h = &frame.handshake;
    lines.push(format!(
        "handshake   p50 {}  p90 {}  p99 {}  ({} in the last {:.0} s)",
        ms(h.p50_ms),
        ms(h.p90_ms),
        ms(h.p99_ms),
        h.count,
        h.window_s
    ));
    lines.push(format!(
        "traffic     published {}/s  delivered {}/s  sent {}/s  queued {}",
        rate(&frame.published),
        rate(&frame.delivered),
        frame.bytes_sent.per_s.map_or_else(|| "–".to_owned(), bytes),
        bytes(frame.queue_bytes as f64)
    ));
    let t = &frame.throttled;
    let mut throttle = format!(
        "throttle    none {} light {} medium {} heavy {}  dropped/s",
        t.none, t.light, t.medium, t.heavy
    );
    for d in &frame.dropped {
        let _ = write!(
            throttle,
            " {} {}",
            d.reason,
            d.per_s.map_or_else(|| "–".to_owned(), num)
        );
    }
    lines.push(if t.light + t.medium + t.heavy > 0 {
        yellow(throttle)
    } else {
        throttle
    });
    let r = &frame.replay;
    lines.push(format!(
        "replay      replayed {}/s  resumes {}/s  recovered {}/s  gaps {}/s  deduplicated {}/s",
        rate(&r.replayed),
        rate(&r.resumes),
        rate(&r.recovered),
        rate(&r.resume_gaps),
        rate(&r.deduplicated)
    ));
    let b = &frame.broker;
    let state = if !b.connected {
        red("DISCONNECTED".to_owned())
    } else if b.paused {
        yellow("paused".to_owned())
    } else {
        green("connected".to_owned())
    };
    let seq = |v: Option<u64>| v.map_or_else(|| "–".to_owned(), |v| v.to_string());
    lines.push(format!(
        "broker      {} {state}  last sseq {}  stream last {}  lag {}  disconnects {}",
        b.kind,
        seq(b.last_sseq),
        seq(b.stream_last_sseq),
        seq(b.lag),
        b.disconnects
    ));
    let p = &frame.process;
    lines.push(format!(
        "process     cpu {:.1} %  rss {}{}  fds {}/{}",
        p.cpu_percent,
        bytes(p.memory_bytes as f64),
        p.memory_reject_bytes
            .map_or_else(String::new, |m| format!(" (503 at {})", bytes(m as f64))),
        seq(p.open_fds),
        seq(p.max_fds)
    ));
    lines.push(String::new());
    lines.push(format!("connections {}", spark(&history.connections)));
    lines.push(format!("delivered/s {}", spark(&history.delivered)));
    lines.push(format!("refused/s   {}", spark(&history.refused)));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        serde_json::from_value(serde_json::json!({
            "at_ms": 1, "interval_s": 1.0, "version": "0.1.0", "uptime_s": 5, "ready": false,
            "not_ready": "full", "status": "degraded", "problems": ["nats broker disconnected"],
            "viewers": 2,
            "connections": {"current": 10, "max": 10, "handshaking": 0, "utilization": 1.0},
            "shards": [{"id": 0, "connections": 10, "capacity": 10, "utilization": 1.0, "backlog": 0}],
            "imbalance_percent": 0.0,
            "admissions": {"per_s": 2.0, "total": 10},
            "refusals": [{"cause": "full", "status": 503, "per_s": 4.0, "total": 9},
                         {"cause": "cpu", "status": 503, "per_s": 0.0, "total": 0}],
            "handshake": {"window_s": 10.0, "count": 10, "p50_ms": 1.5, "p90_ms": 2.0, "p99_ms": 3.25},
            "published": {"per_s": 1.0, "total": 1}, "delivered": {"per_s": 10.0, "total": 10},
            "bytes_sent": {"per_s": 2048.0, "total": 4096}, "queue_bytes": 0,
            "throttled": {"none": 10, "light": 0, "medium": 0, "heavy": 0},
            "dropped": [{"reason": "throttled", "per_s": 0.0, "total": 0}],
            "replay": {"replayed": {"per_s": 0.0, "total": 0}, "recovered": {"per_s": 0.0, "total": 0},
                       "resumes": {"per_s": 0.0, "total": 0}, "resume_gaps": {"per_s": 0.0, "total": 0},
                       "deduplicated": {"per_s": 0.0, "total": 0}},
            "broker": {"kind": "nats", "connected": false, "paused": false, "last_sseq": 7,
                       "stream_last_sseq": 9, "lag": 2, "disconnects": 1},
            "process": {"cpu_percent": 3.5, "memory_bytes": 1048576, "memory_reject_bytes": null,
                        "open_fds": 20, "max_fds": 1024}
        }))
        .expect("a frame")
    }

    #[test]
    fn the_screen_says_what_is_wrong_in_words() {
        let f = frame();
        let mut history = History::default();
        history.push(&f);
        let text = render(&f, &history, false).join("\n");
        for expected in [
            "NOT READY (full)",
            "! nats broker disconnected",
            "connections 10/10 (100.0 %)",
            "#0 10/10 (100.0 %)",
            "503 full 4 (total 9)",
            "p99 3.2 ms",
            "sent 2.0 KiB/s",
            "nats DISCONNECTED  last sseq 7  stream last 9  lag 2",
            "fds 20/1024",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
        assert!(
            !text.contains("cpu 0 (total 0)"),
            "causes never seen are left out"
        );
        assert!(!text.contains('\x1b'), "no colour codes in plain text");
        assert!(render(&f, &history, true).join("\n").contains("\x1b[1;31m"));
    }

    #[test]
    fn events_are_cut_at_blank_lines_and_only_frames_are_read() {
        let json = serde_json::to_string(&frame()).expect("json");
        let mut buffer = format!(
            ": keep-alive\n\nevent: history\ndata: []\n\nevent: frame\ndata: {json}\n\nevent: fr"
        )
        .into_bytes();
        let events: Vec<String> = std::iter::from_fn(|| take_event(&mut buffer)).collect();
        assert_eq!(events.len(), 3);
        assert_eq!(buffer, b"event: fr", "the incomplete event waits");
        assert_eq!(frame_of(&events[0]), None);
        assert_eq!(frame_of(&events[1]), None);
        assert_eq!(frame_of(&events[2]), Some(frame()));
    }

    #[test]
    fn sparklines_scale_to_their_maximum() {
        let values: VecDeque<f64> = [0.0, 1.0, 2.0, 4.0].into_iter().collect();
        assert_eq!(spark(&values), "▁▃▅█");
        assert_eq!(spark(&[0.0, 0.0].into_iter().collect()), "▁▁");
    }
}
