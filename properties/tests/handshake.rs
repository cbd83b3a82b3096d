//! Properties of `surge_core::handshake`: the outcome depends only on the
//! bytes, never on how the network split them, and no input (however
//! hostile) panics, gets accepted by accident or is held past the head limit.

use std::sync::Arc;

use proptest::prelude::*;
use surge_core::handshake::{Handshake, HandshakeConfig, Outcome, Progress};
use surge_core::{Instant, UnixTime};
use surge_properties::split_at_fractions;

const T0: Instant = Instant::from_millis(5);

/// A generated upgrade request: mostly valid, sometimes wrong in one way the
/// handshake must notice (path, missing header, version, origin, token).
#[derive(Debug, Clone)]
struct RequestSpec {
    path: &'static str,
    query: Option<&'static str>,
    headers: Vec<(String, String)>,
    /// One flag per header-name character: upper-case it or not.
    name_case: Vec<bool>,
    leftover: Vec<u8>,
}

impl RequestSpec {
    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("GET {}", self.path);
        if let Some(query) = self.query {
            out.push('?');
            out.push_str(query);
        }
        out.push_str(" HTTP/1.1\r\n");
        let mut flags = self.name_case.iter().cycle();
        for (name, value) in &self.headers {
            for c in name.chars() {
                let upper = *flags.next().unwrap_or(&false);
                out.push(if upper {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                });
            }
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.leftover);
        bytes
    }
}

fn header(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

fn request_spec() -> impl Strategy<Value = RequestSpec> {
    let path = prop::sample::select(vec![
        "/ws", "/ws", "/ws", "/ws", "/ws", "/ws", "/ws", "/other", "/ws/x", "/",
    ]);
    let query = prop::option::of(prop::sample::select(vec![
        "token=good",
        "token=bad",
        "a=1&token=good",
        "a=1",
    ]));
    let connection = prop::sample::select(vec![
        "Upgrade",
        "upgrade",
        "keep-alive, Upgrade",
        "Upgrade",
        "keep-alive, Upgrade",
        "keep-alive",
    ]);
    let upgrade = prop::sample::select(vec![
        "websocket",
        "websocket",
        "WebSocket",
        "websocket",
        "h2c",
    ]);
    let key = prop::sample::select(vec![
        "dGhlIHNhbXBsZSBub25jZQ==",
        "AAAAAAAAAAAAAAAAAAAAAA==",
        "x3JJHMbDL1EzLkh9GBhXDw==",
        "dGhlIHNhbXBsZSBub25jZQ==",
        "c2hvcnQ=",
    ]);
    let version = prop::sample::select(vec!["13", "13", "13", "8"]);
    let origin = prop::option::of(prop::sample::select(vec![
        "https://app.example.com",
        "HTTPS://APP.EXAMPLE.COM",
        "https://evil.example.com",
    ]));
    let protocol = prop::option::of(prop::sample::select(vec![
        "chat, surge.v1",
        "surge.v2",
        "mqtt",
    ]));
    let bearer = prop::option::of(prop::sample::select(vec!["Bearer good", "Bearer bad"]));
    let extras = prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,12}", "[ -~]{0,40}"), 0..6);
    // Each required header is left out now and then.
    let present = prop::collection::vec(prop::bool::weighted(0.95), 5);
    (
        (path, query, connection, upgrade, key, version),
        (origin, protocol, bearer, extras, present),
        prop::collection::vec(any::<bool>(), 1..32),
        prop::collection::vec(any::<u8>(), 0..64),
        any::<prop::sample::Index>(),
    )
        .prop_map(
            |(
                (path, query, connection, upgrade, key, version),
                (origin, protocol, bearer, extras, present),
                name_case,
                leftover,
                shuffle_seed,
            )| {
                let required = [
                    header("Host", "example.com"),
                    header("Upgrade", upgrade),
                    header("Connection", connection),
                    header("Sec-WebSocket-Key", key),
                    header("Sec-WebSocket-Version", version),
                ];
                let mut headers: Vec<(String, String)> = required
                    .into_iter()
                    .zip(present)
                    .filter_map(|(h, keep)| keep.then_some(h))
                    .collect();
                headers.extend(origin.map(|o| header("Origin", o)));
                headers.extend(protocol.map(|p| header("Sec-WebSocket-Protocol", p)));
                headers.extend(bearer.map(|b| header("Authorization", b)));
                // Names starting with "X-" so they never collide with the headers above.
                headers.extend(
                    extras
                        .into_iter()
                        .map(|(n, v)| (format!("X-{n}"), v.trim().to_owned())),
                );
                shuffle(&mut headers, shuffle_seed.index(usize::MAX));
                RequestSpec {
                    path,
                    query,
                    headers,
                    name_case,
                    leftover,
                }
            },
        )
}

/// A deterministic Fisher–Yates shuffle driven by one generated number.
fn shuffle<T>(items: &mut [T], mut seed: usize) {
    for i in (1..items.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = (seed >> 33) % (i + 1);
        items.swap(i, j);
    }
}

fn config_strategy() -> impl Strategy<Value = HandshakeConfig> {
    (
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.3),
        any::<bool>(),
        prop::sample::select(vec![8192usize, 8192, 8192, 8192, 1024, 256, 160]),
    )
        .prop_map(
            |(origins, tokens, protocols, max_head_bytes)| HandshakeConfig {
                max_head_bytes,
                allowed_origins: if origins {
                    vec!["https://app.example.com".into()]
                } else {
                    vec![]
                },
                auth_tokens: if tokens { vec!["good".into()] } else { vec![] },
                subprotocols: if protocols {
                    vec!["surge.v2".into(), "surge.v1".into()]
                } else {
                    vec![]
                },
                ..HandshakeConfig::default()
            },
        )
}

/// Feeds the pieces in order. Returns the outcome and the bytes of the pieces
/// fed after it (the driver would hand those to the WebSocket stream).
/// Checks on the way that nothing is held past the head limit.
fn feed_pieces(config: &Arc<HandshakeConfig>, pieces: &[&[u8]]) -> (Option<Outcome>, Vec<u8>) {
    let mut hs = Handshake::new(config.clone(), T0, UnixTime::default());
    let mut outcome = None;
    let mut after = Vec::new();
    let mut fed = 0;
    for piece in pieces {
        if outcome.is_some() {
            assert_eq!(hs.feed(piece, T0), Progress::Finished);
            after.extend_from_slice(piece);
            continue;
        }
        fed += piece.len();
        match hs.feed(piece, T0) {
            Progress::NeedMore => {
                assert!(
                    fed <= config.max_head_bytes,
                    "NeedMore after {fed} bytes, limit {}",
                    config.max_head_bytes
                );
                assert!(hs.buffered() <= config.max_head_bytes);
                assert!(hs.poll_timeout().is_some());
            }
            Progress::Done(o) => {
                assert_eq!(hs.buffered(), 0);
                assert_eq!(hs.poll_timeout(), None);
                outcome = Some(o);
            }
            Progress::Finished => panic!("Finished before any outcome"),
        }
    }
    (outcome, after)
}

/// A rejection must be a complete plain-text HTTP/1.1 answer that closes.
fn assert_well_formed_rejection(outcome: &Outcome) {
    let text = String::from_utf8_lossy(outcome.response());
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("response head ends with CRLFCRLF");
    assert!(head.starts_with(&format!("HTTP/1.1 {} ", outcome.status())));
    assert!(head.contains("\r\nConnection: close\r\n") || head.ends_with("\r\nConnection: close"));
    assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
    assert!(body.ends_with('\n') && body.lines().count() == 1);
}

proptest! {
    #![proptest_config(surge_properties::config("handshake", 1024))]

    /// Any split of a request gives the same outcome as feeding it whole.
    #[test]
    fn any_split_gives_the_same_outcome(
        spec in request_spec(),
        config in config_strategy(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let config = Arc::new(config);
        let bytes = spec.bytes();
        let (whole, _) = feed_pieces(&config, &[&bytes]);
        let whole = whole.expect("a complete request always gets an outcome");
        let pieces = split_at_fractions(&bytes, &cuts);
        let (split, after) = feed_pieces(&config, &pieces);
        let split = split.expect("the same bytes split still get an outcome");

        match (&whole, &split) {
            (Outcome::Accept(w), Outcome::Accept(s)) => {
                prop_assert_eq!(&w.response, &s.response);
                prop_assert_eq!(&w.request, &s.request);
                // Bytes past the head are never lost: what the handshake kept
                // plus what came in later pieces is the whole tail.
                let mut tail = s.leftover.clone();
                tail.extend_from_slice(&after);
                prop_assert_eq!(&w.leftover, &tail);
                prop_assert_eq!(&w.leftover, &spec.leftover);
            }
            (w, s) => {
                prop_assert_eq!(w, s);
                assert_well_formed_rejection(w);
            }
        }
    }

    /// Arbitrary bytes never panic, are never accepted, are held only up to
    /// the limit, and are rejected once the limit is passed.
    #[test]
    fn arbitrary_bytes_are_never_accepted(
        prefix in prop::sample::select(vec!["", "", "GET /ws HTTP/1.1\r\n", "GET /ws HTTP/1.1\r\nHost: h\r\n"]),
        junk in prop::collection::vec(any::<u8>(), 0..1200),
        max_head_bytes in 0usize..1100,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let config = Arc::new(HandshakeConfig { max_head_bytes, ..HandshakeConfig::default() });
        let mut bytes = prefix.as_bytes().to_vec();
        bytes.extend_from_slice(&junk);
        let pieces = split_at_fractions(&bytes, &cuts);
        let (outcome, _) = feed_pieces(&config, &pieces);
        match &outcome {
            None => prop_assert!(bytes.len() <= max_head_bytes),
            Some(o @ Outcome::Reject(_)) => assert_well_formed_rejection(o),
            Some(other) => prop_assert!(false, "unexpected outcome {:?}", other),
        }
        // The split never changes the verdict.
        let (whole, _) = feed_pieces(&config, &[&bytes]);
        prop_assert_eq!(whole, outcome);
    }

    /// Bytes dribbled one at a time past the limit end in a rejection at the
    /// first byte over it, whatever they are.
    #[test]
    fn dribbled_bytes_are_rejected_right_after_the_limit(
        junk in prop::collection::vec(b'a'..=b'z', 0..600),
        max_head_bytes in 1usize..500,
    ) {
        let config = Arc::new(HandshakeConfig { max_head_bytes, ..HandshakeConfig::default() });
        let mut hs = Handshake::new(config, T0, UnixTime::default());
        let mut bytes = b"GET /ws HTTP/1.1\r\nX-Long: ".to_vec();
        bytes.extend_from_slice(&junk);
        for (i, byte) in bytes.iter().enumerate() {
            match hs.feed(std::slice::from_ref(byte), T0) {
                Progress::NeedMore => prop_assert!(i < max_head_bytes),
                Progress::Done(o) => {
                    prop_assert_eq!(i, max_head_bytes);
                    prop_assert_eq!(o.status(), 431);
                    break;
                }
                Progress::Finished => prop_assert!(false, "Finished before an outcome"),
            }
        }
    }
}
