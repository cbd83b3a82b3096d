//! Free loopback ports for the processes a test starts.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

/// A loopback port that was free a moment ago and that this test process has
/// not handed out before. Binding port 0 and releasing it can give the same
/// port twice in a row (the kernel may pick it again), and two processes told
/// the same port fail to start; remembering what was handed out rules that
/// out within one test binary.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if given.lock().expect("port registry").insert(port) {
            return port;
        }
    }
    panic!("no loopback port that was not handed out already in 1000 tries");
}
