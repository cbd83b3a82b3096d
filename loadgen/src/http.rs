//! A minimal HTTP/1.1 client for the gateway's admin listener.
//!
//! The loadgen only needs `POST /publish` and `GET /health` on loopback, at
//! most a few thousand requests per second, so one keep-alive TCP stream
//! with `Content-Length` (or chunked) bodies is enough; a full HTTP stack
//! would only add dependencies and per-request overhead to the measurement.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::target::{Target, parse_http_url};

/// Largest response head or body accepted (admin answers are small).
const MAX_RESPONSE: usize = 4 << 20;

/// One HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive client for one loopback `http://` base URL.
pub struct HttpClient {
    target: Target,
    /// Sent as `Authorization: Bearer <token>` with every request.
    bearer: Option<String>,
    stream: Option<TcpStream>,
    /// Bytes read past the end of the previous response.
    buf: Vec<u8>,
    timeout: Duration,
}

impl HttpClient {
    /// `base` like `http://127.0.0.1:9090`; refused unless loopback.
    pub fn new(base: &str, timeout: Duration) -> anyhow::Result<HttpClient> {
        let target = parse_http_url(base)?;
        Ok(HttpClient {
            target,
            bearer: None,
            stream: None,
            buf: Vec::new(),
            timeout,
        })
    }

    /// Sends `Authorization: Bearer <token>` with every request (the
    /// gateway's `SURGE_ADMIN_TOKEN`); `None` sends none.
    pub fn with_bearer(mut self, token: Option<String>) -> HttpClient {
        self.bearer = token;
        self
    }

    /// `GET path`, body parsed as JSON.
    pub async fn get_json(&mut self, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
        let resp = self.request("GET", path, None).await?;
        let value = serde_json::from_slice(&resp.body)
            .with_context(|| format!("GET {path}: the body is not JSON"))?;
        Ok((resp.status, value))
    }

    /// One request, within the client's timeout. A keep-alive stream that
    /// turns out closed before any answer byte is replaced once.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<HttpResponse> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.request_inner(method, path, body)).await {
            Ok(result) => result,
            Err(_) => {
                self.stream = None;
                bail!(
                    "{method} {path} on {}: no answer within {timeout:?}",
                    self.target.authority
                )
            }
        }
    }

    async fn request_inner(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<HttpResponse> {
        let reused = self.stream.is_some();
        match self.exchange(method, path, body).await {
            Ok(resp) => Ok(resp),
            Err(Exchange::Stale) if reused => {
                self.stream = None;
                self.exchange(method, path, body)
                    .await
                    .map_err(|e| e.into_error(method, path))
            }
            Err(e) => {
                self.stream = None;
                Err(e.into_error(method, path))
            }
        }
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<HttpResponse, Exchange> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.target.addr)
                .await
                .map_err(|e| Exchange::Failed(anyhow!(e).context("connect")))?;
            // Small requests on a keep-alive stream: do not wait for Nagle.
            stream.set_nodelay(true).ok();
            self.stream = Some(stream);
            self.buf.clear();
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(Exchange::Failed(anyhow!("no stream")));
        };
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive\r\n",
            self.target.authority
        );
        if let Some(token) = &self.bearer {
            req.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(body) = body {
            req.push_str("Content-Type: application/json\r\n");
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        if let Some(body) = body {
            bytes.extend_from_slice(body);
        }
        if stream.write_all(&bytes).await.is_err() {
            return Err(Exchange::Stale);
        }
        let resp = read_response(stream, &mut self.buf).await?;
        if resp
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            self.stream = None;
        }
        Ok(resp)
    }
}

enum Exchange {
    /// The stream was closed before any byte of an answer: safe to retry.
    Stale,
    Failed(anyhow::Error),
}

impl Exchange {
    fn into_error(self, method: &str, path: &str) -> anyhow::Error {
        match self {
            Exchange::Stale => anyhow!("{method} {path}: the server closed the connection"),
            Exchange::Failed(e) => e.context(format!("{method} {path}")),
        }
    }
}

async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<HttpResponse, Exchange> {
    let mut chunk = [0u8; 8192];
    let mut got_any = !buf.is_empty();
    loop {
        if let Some((head_len, mut resp, framing)) = parse_head(buf).map_err(Exchange::Failed)? {
            buf.drain(..head_len);
            loop {
                match body_complete(buf, framing).map_err(Exchange::Failed)? {
                    Some((body, used)) => {
                        resp.body = body;
                        buf.drain(..used);
                        return Ok(resp);
                    }
                    None => {
                        let n = read_some(stream, &mut chunk).await?;
                        if n == 0 {
                            if framing == Framing::UntilClose {
                                resp.body = std::mem::take(buf);
                                return Ok(resp);
                            }
                            return Err(Exchange::Failed(anyhow!("connection closed mid-body")));
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if buf.len() > MAX_RESPONSE {
                            return Err(Exchange::Failed(anyhow!("response body too large")));
                        }
                    }
                }
            }
        }
        let n = read_some(stream, &mut chunk).await?;
        if n == 0 {
            return Err(if got_any {
                Exchange::Failed(anyhow!("connection closed mid-head"))
            } else {
                Exchange::Stale
            });
        }
        got_any = true;
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            return Err(Exchange::Failed(anyhow!("response head too large")));
        }
    }
}

async fn read_some(stream: &mut TcpStream, chunk: &mut [u8]) -> Result<usize, Exchange> {
    match stream.read(chunk).await {
        Ok(n) => Ok(n),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            Ok(0)
        }
        Err(e) => Err(Exchange::Failed(anyhow!(e))),
    }
}

/// How the body's end is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Parses a response head; `None` until it is complete.
pub fn parse_head(buf: &[u8]) -> anyhow::Result<Option<(usize, HttpResponse, Framing)>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(buf).context("malformed HTTP response")? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = parsed.code.unwrap_or(0);
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let resp = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let framing = if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        Framing::Chunked
    } else if let Some(len) = resp.header("content-length") {
        Framing::Length(len.parse().context("bad Content-Length")?)
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Length(0)
    } else {
        Framing::UntilClose
    };
    Ok(Some((head_len, resp, framing)))
}

/// The body and the bytes it used, once `buf` holds all of it.
pub fn body_complete(buf: &[u8], framing: Framing) -> anyhow::Result<Option<(Vec<u8>, usize)>> {
    match framing {
        Framing::Length(n) if n > MAX_RESPONSE => bail!("response body too large"),
        Framing::Length(n) => Ok((buf.len() >= n).then(|| (buf[..n].to_vec(), n))),
        Framing::UntilClose => Ok(None),
        Framing::Chunked => {
            let mut body = Vec::new();
            let mut at = 0;
            loop {
                let Some(line_end) = find_crlf(&buf[at..]) else {
                    return Ok(None);
                };
                let line = std::str::from_utf8(&buf[at..at + line_end]).context("chunk size")?;
                let size_text = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_text, 16).context("chunk size")?;
                at += line_end + 2;
                if size == 0 {
                    // Skip trailers up to the empty line.
                    loop {
                        let Some(end) = find_crlf(&buf[at..]) else {
                            return Ok(None);
                        };
                        at += end + 2;
                        if end == 0 {
                            return Ok(Some((body, at)));
                        }
                    }
                }
                if buf.len() < at + size + 2 {
                    return Ok(None);
                }
                body.extend_from_slice(&buf[at..at + size]);
                at += size + 2;
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_and_length_body() {
        let raw = b"HTTP/1.1 202 Accepted\r\ncontent-length: 10\r\n\r\n{\"sseq\":7}extra";
        let (n, resp, framing) = parse_head(raw).unwrap().unwrap();
        assert_eq!(resp.status, 202);
        assert_eq!(framing, Framing::Length(10));
        let (body, used) = body_complete(&raw[n..], framing).unwrap().unwrap();
        assert_eq!(body, b"{\"sseq\":7}");
        assert_eq!(used, 10);
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nx: y\r\n")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn chunked_body() {
        let body = b"4\r\nabcd\r\n2;x=y\r\nef\r\n0\r\n\r\nnext";
        let (b, used) = body_complete(body, Framing::Chunked).unwrap().unwrap();
        assert_eq!(b, b"abcdef");
        assert_eq!(&body[used..], b"next");
        assert!(
            body_complete(b"4\r\nab", Framing::Chunked)
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn keep_alive_round_trips_and_reconnects() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            // First connection answers twice then closes; the second answers once.
            for answers in [2, 1] {
                let (mut s, _) = listener.accept().await.unwrap();
                for _ in 0..answers {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0);
                    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                        .await
                        .unwrap();
                }
            }
        });
        let mut client =
            HttpClient::new(&format!("http://{addr}"), Duration::from_secs(5)).unwrap();
        for _ in 0..3 {
            let (status, v) = client.get_json("/health").await.unwrap();
            assert_eq!(status, 200);
            assert!(v.is_object());
        }
        server.await.unwrap();
    }
}
