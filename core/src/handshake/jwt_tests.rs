//! JWTs at the upgrade: every refusal is a 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"` and never a 101; a
//! valid token's grant travels with the accepted upgrade.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use super::*;
use crate::UnixTime;
use crate::auth::{Grant, JwtAuth, JwtSettings, TokenError, VerificationKeys};
use crate::subjects::Pattern;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const ES256_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/jwt/es256_public.pem");
const ES256_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/jwt/es256_private.pem");
const T0: Instant = Instant::from_millis(1_000);
const UNIX0: u64 = 1_800_000_000;

fn unix0() -> UnixTime {
    UnixTime::from_secs(UNIX0)
}

fn signed(claims: &Value) -> String {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(SECRET).expect("key"),
    )
    .expect("signs")
}

fn alice(exp_in: i64) -> String {
    signed(&json!({
        "sub": "alice",
        "exp": UNIX0.checked_add_signed(exp_in).expect("in range"),
        "channels": ["odin.token.>"],
    }))
}

fn config(anonymous: &[&str]) -> HandshakeConfig {
    let settings = JwtSettings {
        anonymous_channels: anonymous
            .iter()
            .map(|p| Pattern::parse(p).expect("pattern"))
            .collect(),
        ..JwtSettings::default()
    };
    HandshakeConfig {
        jwt: Some(Arc::new(JwtAuth::new(
            VerificationKeys::secret(SECRET).expect("secret"),
            settings,
        ))),
        ..HandshakeConfig::default()
    }
}

fn request(path: &str, extra: &[&str]) -> Vec<u8> {
    super::tests::request_with(path, extra)
}

/// Runs a handshake accepted at `T0`, when the wall clock showed `UNIX0`,
/// whose request arrives `after` later.
fn run_after(config: HandshakeConfig, bytes: &[u8], after: Duration) -> Outcome {
    let mut hs = Handshake::new(Arc::new(config), T0, unix0());
    match hs.feed(bytes, T0 + after) {
        Progress::Done(outcome) => outcome,
        other => panic!("expected an outcome, got {other:?}"),
    }
}

fn run(config: HandshakeConfig, bytes: &[u8]) -> Outcome {
    run_after(config, bytes, Duration::ZERO)
}

fn grant_of(outcome: Outcome) -> Option<Grant> {
    match outcome {
        Outcome::Accept(a) => a.grant,
        other => panic!("expected a 101, got {other:?}"),
    }
}

/// The 401's text, checked for its header; the body is returned.
fn unauthorized(outcome: Outcome) -> String {
    assert_eq!(outcome.status(), 401, "{outcome:?}");
    let text = String::from_utf8(outcome.response().to_vec()).expect("text");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    assert!(
        head.contains("\r\nWWW-Authenticate: Bearer error=\"invalid_token\""),
        "{head}"
    );
    assert_eq!(body.lines().count(), 1, "{body}");
    body.to_owned()
}

#[test]
fn a_valid_token_from_the_query_the_auth_parameter_or_the_header_upgrades_with_its_grant() {
    let token = alice(600);
    for (path, extra) in [
        (format!("/ws?token={token}"), vec![]),
        (format!("/ws?x=1&auth={token}"), vec![]),
        (
            "/ws".to_owned(),
            vec![format!("Authorization: Bearer {token}")],
        ),
    ] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let grant = grant_of(run(config(&[]), &request(&path, &extra))).expect("a grant");
        assert_eq!(grant.sub.as_deref(), Some("alice"), "{path}");
        assert_eq!(grant.expires_at, Some(UnixTime::from_secs(UNIX0 + 600)));
        assert_eq!(grant.channels, [Pattern::parse("odin.token.>").expect("p")]);
    }
    // Without tokens configured there is no grant.
    assert_eq!(
        grant_of(run(HandshakeConfig::default(), &request("/ws", &[]))),
        None
    );
}

#[test]
fn every_bad_token_is_a_401_with_invalid_token_and_never_a_101() {
    let es256 = |claims: &Value| {
        encode(
            &Header::new(Algorithm::ES256),
            claims,
            &EncodingKey::from_ec_pem(ES256_PRIVATE).expect("key"),
        )
        .expect("signs")
    };
    let cases = [
        ("missing", String::new(), TokenError::Missing),
        ("malformed", "not-a-jwt".to_owned(), TokenError::Malformed),
        (
            "wrong signature",
            encode(
                &Header::default(),
                &json!({"sub": "alice", "exp": UNIX0 + 600}),
                &EncodingKey::from_secret(b"another secret, as long as the other").expect("k"),
            )
            .expect("signs"),
            TokenError::BadSignature,
        ),
        ("expired", alice(-1), TokenError::Expired),
        (
            "not yet valid",
            signed(&json!({"sub": "alice", "exp": UNIX0 + 600, "nbf": UNIX0 + 60})),
            TokenError::NotYetValid,
        ),
        (
            "asymmetric against the secret",
            es256(&json!({"sub": "alice", "exp": UNIX0 + 600})),
            TokenError::Algorithm,
        ),
    ];
    for (name, token, error) in cases {
        let path = if token.is_empty() {
            "/ws".to_owned()
        } else {
            format!("/ws?token={token}")
        };
        let outcome = run(config(&[]), &request(&path, &[]));
        match &outcome {
            Outcome::Reject(r) => assert_eq!(r.reason, RejectReason::InvalidToken(error), "{name}"),
            other => panic!("{name}: expected a 401, got {other:?}"),
        }
        let body = unauthorized(outcome);
        assert!(body.contains(&error.to_string()), "{name}: {body}");
    }
}

#[test]
fn the_token_is_checked_when_the_request_arrives_not_when_it_was_accepted() {
    let token = alice(5);
    let at = |after| {
        run_after(
            config(&[]),
            &request(&format!("/ws?token={token}"), &[]),
            after,
        )
    };
    assert_eq!(at(Duration::from_millis(4_999)).status(), 101);
    unauthorized(at(Duration::from_secs(5)));
}

#[test]
fn without_a_token_a_client_is_anonymous_when_anonymous_channels_exist() {
    let config = config(&["odin.global.>"]);
    assert_eq!(
        grant_of(run(config.clone(), &request("/ws", &[]))),
        Some(Grant::anonymous())
    );
    // A token that is sent must be valid all the same.
    unauthorized(run(config.clone(), &request("/ws?token=nonsense", &[])));
    unauthorized(run(
        config,
        &request(&format!("/ws?auth={}", alice(-10)), &[]),
    ));
}

#[test]
fn an_hs_token_is_refused_by_a_public_key_configuration() {
    // HMAC keyed with the public key file's bytes: the confusion attack.
    let forged = encode(
        &Header::default(),
        &json!({"sub": "mallory", "exp": UNIX0 + 600, "channels": [">"]}),
        &EncodingKey::from_secret(ES256_PUBLIC).expect("key"),
    )
    .expect("signs");
    let config = HandshakeConfig {
        jwt: Some(Arc::new(JwtAuth::new(
            VerificationKeys::public_key_pem(ES256_PUBLIC).expect("pem"),
            JwtSettings::default(),
        ))),
        ..HandshakeConfig::default()
    };
    let outcome = run(config, &request(&format!("/ws?token={forged}"), &[]));
    assert!(unauthorized(outcome).contains("algorithm"));
}

#[test]
fn origin_is_checked_before_the_token() {
    let config = HandshakeConfig {
        allowed_origins: vec!["https://a.example".into()],
        ..config(&[])
    };
    assert_eq!(
        run(
            config.clone(),
            &request("/ws", &["Origin: https://b.example"])
        )
        .status(),
        403
    );
    unauthorized(run(config, &request("/ws", &["Origin: https://a.example"])));
}

#[test]
fn static_tokens_keep_working_and_take_the_auth_parameter_too() {
    let config = HandshakeConfig {
        auth_tokens: vec!["s3cret".into()],
        ..HandshakeConfig::default()
    };
    for path in ["/ws?token=s3cret", "/ws?auth=s3cret"] {
        let outcome = run(config.clone(), &request(path, &[]));
        assert_eq!(outcome.status(), 101, "{path}");
        assert_eq!(grant_of(outcome), None);
    }
    let refused = run(config, &request("/ws?auth=wrong", &[]));
    assert_eq!(refused.status(), 401);
    assert!(String::from_utf8_lossy(refused.response()).contains("WWW-Authenticate: Bearer\r\n"));
}
