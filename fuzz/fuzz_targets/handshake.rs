//! `surge_core::handshake::Handshake` fed arbitrary bytes in arbitrary
//! splits (the first bytes of the input choose the split points).
//!
//! Invariants: no panic; the outcome is the same as when the whole input is
//! fed at once (an accepted request's leftover plus the chunks fed after
//! the outcome equals the whole feed's leftover); `Accept` only for a head
//! that httparse parses as a `GET` of the configured path over HTTP/1.1
//! with a 16-byte base64 key, answered with that key's accept value;
//! `buffered()` never exceeds `max_head_bytes`.

#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use surge_core::handshake::{
    Handshake, HandshakeConfig, MAX_HEADERS, Outcome, Progress, accept_key,
};
use surge_core::{Instant, UnixTime};
use surge_fuzz::{Bytes, split_input};

fn config(choice: u8) -> HandshakeConfig {
    let max_head_bytes = [8192, 16, 64, 256, 1024][usize::from(choice % 5)];
    let mut config = HandshakeConfig {
        max_head_bytes,
        timeout: Duration::from_secs(10),
        ..HandshakeConfig::default()
    };
    if choice & 0x80 != 0 {
        config.allowed_origins = vec!["https://example.com".into(), "http://localhost:8080".into()];
        config.subprotocols = vec!["surge.v1".into()];
        config.auth_tokens = vec!["secret".into()];
        config.probe_path = Some("/healthz".into());
    }
    config
}

/// Feeds `chunks` one by one; returns the outcome and, for an accepted
/// request, the bytes fed after it (which belong to the WebSocket stream).
fn feed_chunks(config: &Arc<HandshakeConfig>, chunks: &[&[u8]]) -> (Option<Outcome>, Vec<u8>) {
    let now = Instant::from_millis(5);
    let mut handshake = Handshake::new(Arc::clone(config), Instant::ZERO, UnixTime::default());
    let mut outcome = None;
    let mut after = Vec::new();
    for chunk in chunks {
        let progress = handshake.feed(chunk, now);
        assert!(
            handshake.buffered() <= config.max_head_bytes,
            "buffered {} > max_head_bytes {}",
            handshake.buffered(),
            config.max_head_bytes
        );
        match progress {
            Progress::NeedMore => {
                assert!(outcome.is_none(), "NeedMore after the outcome");
                assert_eq!(
                    handshake.poll_timeout(),
                    Some(Instant::ZERO + config.timeout)
                );
                assert_eq!(handshake.handle_timeout(now), None, "timed out early");
            }
            Progress::Done(done) => {
                assert!(outcome.is_none(), "Done returned twice");
                assert_eq!(handshake.buffered(), 0, "buffer kept after the outcome");
                assert_eq!(handshake.poll_timeout(), None);
                outcome = Some(done);
            }
            Progress::Finished => {
                assert!(outcome.is_some(), "Finished before an outcome");
                after.extend_from_slice(chunk);
            }
        }
    }
    (outcome, after)
}

/// What an accepted request must be, checked with httparse directly.
fn check_accept(config: &HandshakeConfig, body: &[u8], outcome: &Outcome) {
    let Outcome::Accept(accepted) = outcome else {
        return;
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(body) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("accepted a head httparse does not parse: {other:?}"),
    };
    assert!(
        head_len <= config.max_head_bytes,
        "accepted a head over the limit"
    );
    assert_eq!(request.method, Some("GET"));
    assert_eq!(request.version, Some(1));
    let target = request.path.expect("a path");
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    assert_eq!(path, config.path);
    assert_eq!(accepted.request.path, config.path);
    assert_eq!(
        accepted.leftover,
        &body[head_len..],
        "leftover is not what followed the head"
    );
    let key = accepted.request.key.as_str();
    assert!(
        request
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("sec-websocket-key")
                && std::str::from_utf8(h.value).is_ok_and(|v| v.trim() == key)),
        "key {key:?} is not the request's"
    );
    let response = std::str::from_utf8(&accepted.response).expect("ASCII response");
    assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
    assert!(
        response.contains(&format!(
            "\r\nSec-WebSocket-Accept: {}\r\n",
            accept_key(key)
        )),
        "{response}"
    );
    assert!(response.ends_with("\r\n\r\n"));
    if !config.auth_tokens.is_empty() {
        let token = accepted.request.token.as_deref().expect("a token");
        assert!(config.auth_tokens.iter().any(|t| t == token));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = Bytes::new(data);
    let config = Arc::new(config(bytes.u8()));
    let (chunks, body) = split_input(bytes.rest());

    let (whole, _) = feed_chunks(&config, &[body]);
    let (split, after) = feed_chunks(&config, &chunks);

    match (&whole, &split) {
        (Some(Outcome::Accept(w)), Some(Outcome::Accept(s))) => {
            assert_eq!(w.response, s.response);
            assert_eq!(w.request, s.request);
            let mut leftover = s.leftover.clone();
            leftover.extend_from_slice(&after);
            assert_eq!(w.leftover, leftover, "leftover depends on the split");
        }
        (w, s) => assert_eq!(w, s, "outcome depends on the split"),
    }
    if let Some(outcome) = &whole {
        check_accept(&config, body, outcome);
        assert!(
            matches!(
                outcome.status(),
                101 | 200 | 400 | 401 | 403 | 404 | 405 | 426 | 431
            ),
            "status {}",
            outcome.status()
        );
    }
});
