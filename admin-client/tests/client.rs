//! The admin client against a real TCP server on loopback that answers
//! the way each test needs: kept alive, closing, slow or silent.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use surge_admin_client::{AdminClient, AdminError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the test server answers.
#[derive(Clone, Copy)]
struct Behaviour {
    /// Answers per connection before the server closes it.
    answers_per_connection: usize,
    /// Wait before each answer.
    delay: Duration,
    /// Never answer (the connection stays open).
    silent: bool,
    /// Answer with a chunked body and `Connection: close`.
    chunked_close: bool,
}

const KEEP_ALIVE: Behaviour = Behaviour {
    answers_per_connection: usize::MAX,
    delay: Duration::ZERO,
    silent: false,
    chunked_close: false,
};

/// A request as the server read it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    host: Option<String>,
    authorization: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

struct TestServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    async fn start(behaviour: Behaviour) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (connections.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, behaviour, s.clone()));
            }
        });
        TestServer {
            addr,
            connections,
            seen,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn header(req: &httparse::Request<'_, '_>, name: &str) -> Option<String> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
}

async fn serve(mut stream: TcpStream, behaviour: Behaviour, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut answered = 0;
    while answered < behaviour.answers_per_connection {
        let (head_len, mut request) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let request = Seen {
                    method: req.method.unwrap_or("").into(),
                    path: req.path.unwrap_or("").into(),
                    host: header(&req, "host"),
                    authorization: header(&req, "authorization"),
                    content_type: header(&req, "content-type"),
                    body: Vec::new(),
                };
                let length = header(&req, "content-length").map_or(0, |l| l.parse().unwrap());
                break (n, (request, length));
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let length = request.1;
        while buf.len() < head_len + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        request.0.body = buf[head_len..head_len + length].to_vec();
        buf.drain(..head_len + length);
        let number = {
            let mut seen = seen.lock().unwrap();
            seen.push(request.0);
            seen.len()
        };
        if behaviour.silent {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        tokio::time::sleep(behaviour.delay).await;
        let answer = format!(r#"{{"sseq":{number}}}"#);
        let response = if behaviour.chunked_close {
            let (a, b) = answer.split_at(4);
            format!(
                "HTTP/1.1 202 Accepted\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                a.len(),
                b.len()
            )
        } else {
            format!(
                "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            )
        };
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        answered += 1;
        if behaviour.chunked_close {
            return;
        }
    }
}

fn client(server: &TestServer) -> AdminClient {
    AdminClient::new(server.addr.to_string(), Duration::from_secs(5))
}

#[tokio::test]
async fn requests_share_one_kept_alive_connection_with_the_bearer_token() {
    let server = TestServer::start(KEEP_ALIVE).await;
    let mut client = client(&server)
        .with_host("localhost:9090")
        .with_bearer(Some("s3cret".into()));
    for i in 1..=3 {
        let answer = client
            .post_json("/publish", format!(r#"{{"n":{i}}}"#))
            .await
            .unwrap();
        assert_eq!(answer.status, 202);
        assert_eq!(answer.body, format!(r#"{{"sseq":{i}}}"#));
        assert!(answer.answered >= answer.written);
    }
    let health = client.get("/health").await.unwrap();
    assert_eq!(health.status, 202);
    assert_eq!(server.connections(), 1);
    let seen = server.seen();
    assert_eq!(seen.len(), 4);
    for (i, s) in seen[..3].iter().enumerate() {
        assert_eq!((s.method.as_str(), s.path.as_str()), ("POST", "/publish"));
        assert_eq!(s.body, format!(r#"{{"n":{}}}"#, i + 1).into_bytes());
        assert_eq!(s.content_type.as_deref(), Some("application/json"));
    }
    assert_eq!(
        (seen[3].method.as_str(), seen[3].path.as_str()),
        ("GET", "/health")
    );
    assert!(seen[3].body.is_empty());
    for s in &seen {
        assert_eq!(s.host.as_deref(), Some("localhost:9090"));
        assert_eq!(s.authorization.as_deref(), Some("Bearer s3cret"));
    }
}

#[tokio::test]
async fn a_connection_the_server_closed_is_replaced_and_nothing_is_sent_twice() {
    let server = TestServer::start(Behaviour {
        answers_per_connection: 2,
        ..KEEP_ALIVE
    })
    .await;
    let mut client = client(&server);
    for i in 1..=6 {
        let answer = client.post_json("/publish", "{}").await.unwrap();
        assert_eq!(answer.body, format!(r#"{{"sseq":{i}}}"#));
        // Every other request finds its connection closed while idle.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.connections(), 3);
    // Back to back: the close may arrive only after the next request went
    // out on the old connection, which is then retried on a new one.
    for i in 7..=12 {
        let answer = client.post_json("/publish", "{}").await.unwrap();
        assert_eq!(answer.body, format!(r#"{{"sseq":{i}}}"#));
    }
    assert_eq!(server.connections(), 6);
    assert_eq!(server.seen().len(), 12);
}

#[tokio::test]
async fn chunked_answers_and_connection_close_are_followed() {
    let server = TestServer::start(Behaviour {
        chunked_close: true,
        ..KEEP_ALIVE
    })
    .await;
    let mut client = client(&server);
    for i in 1..=3 {
        let answer = client.post_json("/publish", "{}").await.unwrap();
        assert_eq!(answer.body, format!(r#"{{"sseq":{i}}}"#));
    }
    assert_eq!(server.connections(), 3);
}

#[tokio::test]
async fn a_silent_server_times_out_and_the_next_request_reconnects() {
    let server = TestServer::start(Behaviour {
        silent: true,
        ..KEEP_ALIVE
    })
    .await;
    let mut client = AdminClient::new(server.addr.to_string(), Duration::from_millis(200));
    let started = tokio::time::Instant::now();
    let err = client.get("/health").await.unwrap_err();
    assert!(matches!(err, AdminError::Timeout(_)), "{err:?}");
    assert_eq!(err.to_string(), "no answer within 200ms");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(client.get("/health").await.is_err());
    assert_eq!(
        server.connections(),
        2,
        "a timed-out connection is not reused"
    );
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = AdminClient::new(addr.to_string(), Duration::from_secs(5))
        .get("/health")
        .await
        .unwrap_err();
    assert!(matches!(err, AdminError::Connect(_)), "{err:?}");
    assert!(err.to_string().starts_with("connect: "), "{err}");
}

#[tokio::test]
async fn written_and_answered_bracket_the_server_s_delay() {
    let delay = Duration::from_millis(100);
    let server = TestServer::start(Behaviour {
        delay,
        ..KEEP_ALIVE
    })
    .await;
    let mut client = client(&server);
    for _ in 0..2 {
        let before = tokio::time::Instant::now();
        let answer = client.post_json("/publish", "{}").await.unwrap();
        assert!(answer.written >= before);
        assert!(answer.answered - answer.written >= delay);
    }
}
