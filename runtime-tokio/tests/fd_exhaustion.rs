//! Past the open-file limit, the listener answers with the descriptor it
//! keeps spare: a 503 instead of a client left to time out, each one
//! counted. Alone in its file because it lowers the whole process's file
//! limit.

mod common;

use std::time::Duration;

use surge_runtime::Gateway;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use common::{metric, response_head, start, upgrade};

/// Clients, well beyond the descriptors left.
const CLIENTS: usize = 24;
/// Descriptors left free once the limit is lowered.
const HEADROOM: usize = 8;

/// The highest descriptor number open.
fn highest_descriptor() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .expect("descriptors are open")
}

fn nofile() -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    limit
}

fn set_nofile(limit: libc::rlimit) {
    // SAFETY: setrlimit reads the struct it is given; lowering the soft
    // limit (or raising it back up to the hard one) is always permitted.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// Sends an upgrade request on an already-open socket and returns the
/// head of the answer (empty: none).
async fn answer(stream: &mut TcpStream) -> String {
    stream
        .write_all(&upgrade("/ws", "Sec-WebSocket-Version: 13\r\n"))
        .await
        .expect("write");
    response_head(stream).await
}

/// The status code of a response head.
fn status(head: &str) -> Option<u16> {
    head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Every client's answer, and the fd-exhaustion counter and the live
/// connections gauge read while the limit holds and the clients are
/// connected.
async fn run(gw: &Gateway) -> (Vec<String>, f64, f64) {
    // Every client socket exists before the limit is lowered: connecting
    // one takes no further descriptor, so only the gateway runs out.
    let sockets: Vec<TcpSocket> = (0..CLIENTS)
        .map(|_| TcpSocket::new_v4().expect("a client socket"))
        .collect();
    let before = nofile();
    // The limit caps descriptor numbers, not their count, and numbers
    // below the highest may be free: take every free number under a limit
    // a little above the highest, then give back exactly HEADROOM.
    set_nofile(libc::rlimit {
        rlim_cur: highest_descriptor() + 1 + HEADROOM as u64,
        rlim_max: before.rlim_max,
    });
    let mut fillers = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => fillers.push(file),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("opening /dev/null: {e}"),
        }
    }
    assert!(fillers.len() >= HEADROOM, "only {} free", fillers.len());
    fillers.truncate(fillers.len() - HEADROOM);
    let mut answers = Vec::new();
    let mut held = Vec::new();
    for socket in sockets {
        let mut stream = socket.connect(gw.local_addr()).await.expect("connect");
        answers.push(answer(&mut stream).await);
        // Upgraded clients stay connected and keep their descriptors.
        held.push(stream);
    }
    let counted = metric(gw, "surge_fd_exhaustion_answers_total");
    let connections = metric(gw, "surge_connections");
    set_nofile(before);
    drop((fillers, held));
    (answers, counted, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_past_the_file_limit_get_503_from_the_spare_descriptor_and_are_counted() {
    let gw = start(|c| c.max_connections = 10_000).await;
    assert_eq!(metric(&gw, "surge_fd_exhaustion_answers_total"), 0.0);
    let (answers, counted, connections) = run(&gw).await;
    let statuses: Vec<Option<u16>> = answers.iter().map(|a| status(a)).collect();
    let upgraded = statuses.iter().filter(|s| **s == Some(101)).count();
    let refused = statuses.iter().filter(|s| **s == Some(503)).count();
    assert_eq!(
        upgraded + refused,
        CLIENTS,
        "every client is answered, 101 or 503: {statuses:?}"
    );
    // Each upgraded client holds one of the free descriptors; every later
    // one is past the limit.
    assert_eq!(upgraded, HEADROOM, "{statuses:?}");
    assert!(
        statuses[upgraded..].iter().all(|s| *s == Some(503)),
        "once out of descriptors, every later client gets 503: {statuses:?}"
    );
    for head in &answers[upgraded..] {
        assert!(head.contains("Retry-After: 5\r\n"), "{head:?}");
    }
    assert_eq!(counted, refused as f64, "{statuses:?}");
    assert_eq!(connections, upgraded as f64);
    // The count stays once descriptors are free again.
    assert_eq!(
        metric(&gw, "surge_fd_exhaustion_answers_total"),
        refused as f64
    );
    // None of them was refused by admission: the gateway was far from full.
    // (each reason's series exists from the start, at 0)
    let admission_refusals: Vec<String> = gw
        .metrics_text()
        .lines()
        .filter(|l| l.starts_with("surge_admission_rejections_total{"))
        .map(str::to_owned)
        .collect();
    assert!(!admission_refusals.is_empty());
    assert!(
        admission_refusals.iter().all(|l| l.ends_with(" 0")),
        "{admission_refusals:?}"
    );
    gw.shutdown(Duration::from_secs(2)).await;
}
