//! The admin HTTP exchange the binary tests make: one request with
//! `Connection: close`, the whole answer read, split into status and body.
//! Each test file brings its own transport (blocking or async).

/// The request bytes for `method path` with a JSON `body`, sent to the
/// admin listener at `addr` (its address is the `Host` `/publish` accepts).
pub fn request(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// (status, body) of a complete answer.
pub fn parse(answer: &str) -> (u16, String) {
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, body.to_string())
}
