//! Tokens from anywhere: `auth::JwtAuth::verify` (the claims decoder) and
//! the handshake with JWT on (the token extractor), fed arbitrary text as
//! the token: in the query as `token` or `auth` (percent-encoded), or in
//! `Authorization: Bearer`; against a secret or an ES256 public key, with
//! or without anonymous channels (the first byte chooses).
//!
//! Invariants: no panic; the handshake upgrades exactly when `verify`
//! accepts the token (or, with anonymous channels, when none is sent), with
//! `verify`'s grant; an accepted grant has a `sub`, an `exp` after now and
//! its `channels`; a refusal is a 401 with `WWW-Authenticate: Bearer
//! error="invalid_token"` whose one-line body is the refusal's reason, the
//! same bytes whatever the token was (so it repeats nothing of it).

#![no_main]

use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use surge_core::auth::{Grant, JwtAuth, JwtSettings, VerificationKeys};
use surge_core::handshake::{self, Handshake, HandshakeConfig, Outcome, Progress, RejectReason};
use surge_core::subjects::Pattern;
use surge_core::{Instant, UnixTime};
use surge_fuzz::Bytes;

/// The secret the seed tokens are signed with.
const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef-0123456789";
const ES256_PUBLIC: &[u8] = include_bytes!("../../core/tests/fixtures/jwt/es256_public.pem");
/// The wall clock of every run: 2027-01-15.
const NOW: UnixTime = UnixTime::from_secs(1_800_000_000);

/// Secret or ES256 key, times anonymous channels or none.
static CONFIGS: LazyLock<Vec<Arc<HandshakeConfig>>> = LazyLock::new(|| {
    let mut out = Vec::new();
    for es256 in [false, true] {
        for anonymous in [false, true] {
            let keys = if es256 {
                VerificationKeys::public_key_pem(ES256_PUBLIC).expect("fixture key")
            } else {
                VerificationKeys::secret(SECRET).expect("secret")
            };
            let settings = JwtSettings {
                anonymous_channels: if anonymous {
                    vec![Pattern::parse("odin.global.>").expect("pattern")]
                } else {
                    Vec::new()
                },
                ..JwtSettings::default()
            };
            out.push(Arc::new(HandshakeConfig {
                jwt: Some(Arc::new(JwtAuth::new(keys, settings))),
                ..HandshakeConfig::default()
            }));
        }
    }
    out
});

/// Every byte but the unreserved ones as `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn check_grant(grant: &Grant) {
    assert!(
        grant.sub.as_deref().is_some_and(|s| !s.is_empty()),
        "{grant:?}"
    );
    assert!(grant.expires_at.is_some_and(|exp| exp > NOW), "{grant:?}");
    for p in &grant.channels {
        assert_eq!(Pattern::parse(p.as_str()).as_ref(), Ok(p));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = Bytes::new(data);
    let choice = bytes.u8();
    let config = &CONFIGS[usize::from(choice & 3)];
    let auth = config.jwt.as_deref().expect("JWT on");
    let text = String::from_utf8_lossy(bytes.rest()).into_owned();

    let verified = auth.verify(&text, NOW);
    if let Ok(grant) = &verified {
        check_grant(grant);
    }

    // Where the token goes, and what the handshake should extract.
    let (path, header, sent) = match (choice >> 2) % 3 {
        0 => (
            format!("/ws?token={}", percent_encode(&text)),
            None,
            Some(text.as_str()),
        ),
        1 => (
            format!("/ws?x=1&auth={}", percent_encode(&text)),
            None,
            Some(text.as_str()),
        ),
        _ => {
            // A header value is visible ASCII and spaces; the token is
            // what follows the scheme, trimmed.
            if !text.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
                return;
            }
            let header = format!("Authorization: Bearer {text}");
            let token = text.trim();
            ("/ws".to_owned(), Some(header), Some(token))
        }
    };
    let sent = sent.filter(|t| !t.is_empty());
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(header) = &header {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut handshake = Handshake::new(Arc::clone(config), Instant::ZERO, NOW);
    let outcome = match handshake.feed(request.as_bytes(), Instant::ZERO) {
        Progress::Done(outcome) => outcome,
        // A head too large for the default limit: nothing to compare.
        other => panic!("a complete head gave {other:?}"),
    };
    if surge_fuzz::trace() {
        eprintln!(
            "token: {} for {:?}",
            outcome.status(),
            sent.map(|t| &t[..t.len().min(16)])
        );
    }
    if outcome.status() == 431 {
        return;
    }
    let expected = auth.admit(sent, NOW);
    match (&outcome, &expected) {
        (Outcome::Accept(accepted), Ok(grant)) => {
            assert_eq!(accepted.grant.as_ref(), Some(grant));
            if sent.is_some() {
                assert_eq!(verified.as_ref().ok(), Some(grant), "extracted {sent:?}");
            }
        }
        (Outcome::Reject(rejection), Err(error)) => {
            assert_eq!(rejection.reason, RejectReason::InvalidToken(*error));
            let response = String::from_utf8(rejection.response.clone()).expect("text");
            let (head, body) = response.split_once("\r\n\r\n").expect("a head");
            assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
            assert!(
                head.contains("\r\nWWW-Authenticate: Bearer error=\"invalid_token\""),
                "{head}"
            );
            assert_eq!(body, format!("{error}\n"));
            // The answer follows from the reason alone: nothing of the
            // token can be in it.
            assert_eq!(
                rejection.response,
                handshake::rejection(RejectReason::InvalidToken(*error)).response
            );
        }
        (outcome, expected) => {
            panic!(
                "handshake {} for {sent:?}, verify says {expected:?}",
                outcome.status()
            )
        }
    }
});
