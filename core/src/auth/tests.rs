use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use super::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const ES256_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/jwt/es256_private.pem");
const ES256_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/jwt/es256_public.pem");
const OTHER_ES256_PRIVATE: &[u8] =
    include_bytes!("../../tests/fixtures/jwt/other_es256_private.pem");
const OTHER_ES256_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/jwt/other_es256_public.pem");
const ED25519_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/jwt/ed25519_private.pem");
const ED25519_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/jwt/ed25519_public.pem");

/// The wall clock of every test: 2027-01-15.
const NOW_SECS: u64 = 1_800_000_000;
const NOW: UnixTime = UnixTime::from_secs(NOW_SECS);

fn pattern(s: &str) -> Pattern {
    Pattern::parse(s).expect("valid pattern")
}

fn claims(extra: Value) -> Value {
    let mut claims = json!({"sub": "alice", "exp": NOW_SECS + 600, "channels": ["odin.token.>"]});
    if let (Some(base), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if v.is_null() {
                base.remove(k);
            } else {
                base.insert(k.clone(), v.clone());
            }
        }
    }
    claims
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        claims,
        &EncodingKey::from_secret(SECRET).expect("key"),
    )
}

fn es256(claims: &Value, kid: Option<&str>) -> String {
    sign(
        Algorithm::ES256,
        kid,
        claims,
        &EncodingKey::from_ec_pem(ES256_PRIVATE).expect("key"),
    )
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).expect("signs")
}

fn auth(keys: VerificationKeys) -> JwtAuth {
    JwtAuth::new(keys, JwtSettings::default())
}

fn secret_auth() -> JwtAuth {
    auth(VerificationKeys::secret(SECRET).expect("secret"))
}

fn es256_auth() -> JwtAuth {
    auth(VerificationKeys::public_key_pem(ES256_PUBLIC).expect("public key"))
}

#[test]
fn an_hs256_token_gives_its_sub_exp_and_channels() {
    let grant = secret_auth()
        .verify(&hs256(&claims(json!({}))), NOW)
        .expect("valid");
    assert_eq!(grant.sub.as_deref(), Some("alice"));
    assert_eq!(grant.expires_at, Some(UnixTime::from_secs(NOW_SECS + 600)));
    assert_eq!(grant.channels, vec![pattern("odin.token.>")]);

    // HS384 and HS512 with the same secret.
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let token = sign(
            alg,
            None,
            &claims(json!({})),
            &EncodingKey::from_secret(SECRET).expect("key"),
        );
        assert!(secret_auth().verify(&token, NOW).is_ok(), "{alg:?}");
    }
}

#[test]
fn es256_and_eddsa_tokens_are_verified_with_a_pem_public_key() {
    let grant = es256_auth()
        .verify(&es256(&claims(json!({})), None), NOW)
        .expect("valid");
    assert_eq!(grant.sub.as_deref(), Some("alice"));

    let ed = auth(VerificationKeys::public_key_pem(ED25519_PUBLIC).expect("public key"));
    let token = sign(
        Algorithm::EdDSA,
        None,
        &claims(json!({"sub": "bob"})),
        &EncodingKey::from_ed_pem(ED25519_PRIVATE).expect("key"),
    );
    assert_eq!(
        ed.verify(&token, NOW).expect("valid").sub.as_deref(),
        Some("bob")
    );
    // The Ed25519 key does not verify an ES256 token, nor the reverse.
    assert_eq!(
        ed.verify(&es256(&claims(json!({})), None), NOW),
        Err(TokenError::Algorithm)
    );
    assert_eq!(es256_auth().verify(&token, NOW), Err(TokenError::Algorithm));
}

#[test]
fn key_files_that_hold_no_usable_key_are_refused() {
    assert!(VerificationKeys::public_key_pem(b"not a pem").is_err());
    // A private key is not a public key file.
    assert!(VerificationKeys::public_key_pem(ES256_PRIVATE).is_err());
    assert!(VerificationKeys::secret(b"").is_err());
    assert!(VerificationKeys::jwks(b"{}").is_err());
    assert!(VerificationKeys::jwks(b"{\"keys\":[]}").is_err());
    // A symmetric key in a JWKS would let its HS tokens through.
    let oct = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]});
    assert!(VerificationKeys::jwks(oct.to_string().as_bytes()).is_err());
}

fn jwks_of(keys: &[(&str, &[u8])]) -> Vec<u8> {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(kid, pem)| {
            let key = jsonwebtoken::DecodingKey::from_ec_pem(pem).expect("pem");
            let mut jwk = serde_json::to_value(
                jsonwebtoken::jwk::Jwk::from_decoding_key(&key, Some(Algorithm::ES256))
                    .expect("jwk"),
            )
            .expect("json");
            jwk["kid"] = json!(kid);
            jwk
        })
        .collect();
    json!({ "keys": keys }).to_string().into_bytes()
}

#[test]
fn a_jwks_chooses_the_key_by_kid() {
    let set = auth(
        VerificationKeys::jwks(&jwks_of(&[
            ("one", ES256_PUBLIC),
            ("two", OTHER_ES256_PUBLIC),
        ]))
        .expect("jwks"),
    );
    let other = EncodingKey::from_ec_pem(OTHER_ES256_PRIVATE).expect("key");
    let by_two = sign(Algorithm::ES256, Some("two"), &claims(json!({})), &other);
    assert!(set.verify(&by_two, NOW).is_ok());
    assert!(
        set.verify(&es256(&claims(json!({})), Some("one")), NOW)
            .is_ok()
    );
    // The right key under the wrong kid is a wrong signature.
    assert_eq!(
        set.verify(&es256(&claims(json!({})), Some("two")), NOW),
        Err(TokenError::BadSignature)
    );
    assert_eq!(
        set.verify(&es256(&claims(json!({})), Some("three")), NOW),
        Err(TokenError::UnknownKey)
    );
    // No kid: ambiguous with two keys, fine with one.
    assert_eq!(
        set.verify(&es256(&claims(json!({})), None), NOW),
        Err(TokenError::UnknownKey)
    );
    let single = auth(VerificationKeys::jwks(&jwks_of(&[("one", ES256_PUBLIC)])).expect("jwks"));
    assert!(single.verify(&es256(&claims(json!({})), None), NOW).is_ok());
    // An HS token is never checked against a JWKS key, whatever its kid.
    let hs_key = EncodingKey::from_secret(ES256_PUBLIC).expect("key");
    let forged = sign(Algorithm::HS256, Some("one"), &claims(json!({})), &hs_key);
    assert_eq!(set.verify(&forged, NOW), Err(TokenError::Algorithm));
    assert_eq!(
        single.verify(&hs256(&claims(json!({}))), NOW),
        Err(TokenError::Algorithm)
    );
}

#[test]
fn replaced_keys_verify_from_then_on() {
    let set = auth(VerificationKeys::jwks(&jwks_of(&[("one", ES256_PUBLIC)])).expect("jwks"));
    let other = EncodingKey::from_ec_pem(OTHER_ES256_PRIVATE).expect("key");
    let by_two = sign(Algorithm::ES256, Some("two"), &claims(json!({})), &other);
    assert_eq!(set.verify(&by_two, NOW), Err(TokenError::UnknownKey));
    // A rotated set: "two" added, "one" retired.
    set.replace_keys(
        VerificationKeys::jwks(&jwks_of(&[("two", OTHER_ES256_PUBLIC)])).expect("jwks"),
    );
    assert_eq!(set.key_count(), 1);
    assert!(set.verify(&by_two, NOW).is_ok());
    assert_eq!(
        set.verify(&es256(&claims(json!({})), Some("one")), NOW),
        Err(TokenError::UnknownKey)
    );
}

#[test]
fn every_rejection_has_its_reason() {
    let hs = secret_auth();
    let cases: Vec<(&str, String, TokenError)> = vec![
        ("not a JWT", "abc".into(), TokenError::Malformed),
        (
            "three dots of nothing",
            "a.b.c".into(),
            TokenError::Malformed,
        ),
        (
            "claims that are not an object",
            hs256(&json!("just a string")),
            TokenError::Malformed,
        ),
        (
            "alg none",
            // {"alg":"none","typ":"JWT"} . {"sub":"alice","exp":1800000600} . (empty)
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6MTgwMDAwMDYwMH0."
                .into(),
            TokenError::Malformed,
        ),
        (
            "wrong secret",
            sign(
                Algorithm::HS256,
                None,
                &claims(json!({})),
                &EncodingKey::from_secret(b"another secret, just as long as it").expect("key"),
            ),
            TokenError::BadSignature,
        ),
        (
            "tampered payload",
            {
                let good = hs256(&claims(json!({})));
                let evil = hs256(&claims(json!({"channels": [">"]})));
                let g: Vec<&str> = good.split('.').collect();
                let e: Vec<&str> = evil.split('.').collect();
                format!("{}.{}.{}", g[0], e[1], g[2])
            },
            TokenError::BadSignature,
        ),
        (
            "expired",
            hs256(&claims(json!({"exp": NOW_SECS - 1}))),
            TokenError::Expired,
        ),
        (
            "expiring this very second",
            hs256(&claims(json!({"exp": NOW_SECS}))),
            TokenError::Expired,
        ),
        (
            "not yet valid",
            hs256(&claims(json!({"nbf": NOW_SECS + 10}))),
            TokenError::NotYetValid,
        ),
        (
            "no sub",
            hs256(&claims(json!({"sub": null}))),
            TokenError::MissingClaim("sub"),
        ),
        (
            "empty sub",
            hs256(&claims(json!({"sub": ""}))),
            TokenError::InvalidClaim("sub"),
        ),
        (
            "no exp",
            hs256(&claims(json!({"exp": null}))),
            TokenError::MissingClaim("exp"),
        ),
        (
            "exp as text",
            hs256(&claims(json!({"exp": "tomorrow"}))),
            TokenError::InvalidClaim("exp"),
        ),
        (
            "channels not a list",
            hs256(&claims(json!({"channels": "odin.>"}))),
            TokenError::InvalidClaim("channels"),
        ),
        (
            "an invalid channel",
            hs256(&claims(json!({"channels": ["odin..x"]}))),
            TokenError::InvalidClaim("channels"),
        ),
    ];
    for (name, token, expected) in cases {
        assert_eq!(hs.verify(&token, NOW), Err(expected), "{name}");
    }
    // nbf in the past is fine; a fractional exp counts to the millisecond.
    assert!(
        hs.verify(&hs256(&claims(json!({"nbf": NOW_SECS}))), NOW)
            .is_ok()
    );
    let grant = hs
        .verify(&hs256(&claims(json!({"exp": 1_800_000_000.5}))), NOW)
        .expect("half a second left");
    assert_eq!(
        grant.expires_at,
        Some(UnixTime::from_millis(1_800_000_000_500))
    );
}

#[test]
fn a_token_without_channels_reads_nothing_of_its_own() {
    let grant = secret_auth()
        .verify(&hs256(&claims(json!({"channels": null}))), NOW)
        .expect("valid");
    assert!(grant.channels.is_empty());
}

#[test]
fn the_leeway_stretches_exp_and_nbf() {
    let auth = JwtAuth::new(
        VerificationKeys::secret(SECRET).expect("secret"),
        JwtSettings {
            leeway: Duration::from_secs(5),
            ..JwtSettings::default()
        },
    );
    for (claim, offset, ok) in [
        ("exp", -4i64, true),
        ("exp", -5, false),
        ("nbf", 5, true),
        ("nbf", 6, false),
    ] {
        let at = NOW_SECS.checked_add_signed(offset).expect("in range");
        let token = hs256(&claims(json!({ claim: at })));
        assert_eq!(auth.verify(&token, NOW).is_ok(), ok, "{claim} {offset}");
    }
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let auth = JwtAuth::new(
        VerificationKeys::secret(SECRET).expect("secret"),
        JwtSettings {
            issuer: Some("https://id.example".into()),
            audience: Some("surge".into()),
            ..JwtSettings::default()
        },
    );
    let good = json!({"iss": "https://id.example", "aud": "surge"});
    assert!(auth.verify(&hs256(&claims(good)), NOW).is_ok());
    let listed = json!({"iss": "https://id.example", "aud": ["other", "surge"]});
    assert!(auth.verify(&hs256(&claims(listed)), NOW).is_ok());
    for (extra, expected) in [
        (
            json!({"iss": "https://evil.example", "aud": "surge"}),
            TokenError::WrongIssuer,
        ),
        (json!({"aud": "surge"}), TokenError::MissingClaim("iss")),
        (
            json!({"iss": "https://id.example", "aud": "other"}),
            TokenError::WrongAudience,
        ),
        (
            json!({"iss": "https://id.example"}),
            TokenError::MissingClaim("aud"),
        ),
    ] {
        assert_eq!(
            auth.verify(&hs256(&claims(extra.clone())), NOW),
            Err(expected),
            "{extra}"
        );
    }
    // Unconfigured, iss and aud are not looked at.
    let free = json!({"iss": "anyone", "aud": "anything"});
    assert!(secret_auth().verify(&hs256(&claims(free)), NOW).is_ok());
}

#[test]
fn an_hs_token_is_never_verified_with_a_public_key() {
    // The classic confusion: HMAC keyed with the server's public key file.
    for (public, private_alg) in [(ES256_PUBLIC, "ES256"), (ED25519_PUBLIC, "EdDSA")] {
        let auth = auth(VerificationKeys::public_key_pem(public).expect("public key"));
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let forged = sign(
                alg,
                None,
                &claims(json!({"channels": [">"]})),
                &EncodingKey::from_secret(public).expect("key"),
            );
            assert_eq!(
                auth.verify(&forged, NOW),
                Err(TokenError::Algorithm),
                "{alg:?} against {private_alg}"
            );
        }
    }
    // Nor an asymmetric one with the secret.
    assert_eq!(
        secret_auth().verify(&es256(&claims(json!({})), None), NOW),
        Err(TokenError::Algorithm)
    );
}

#[test]
fn admit_without_a_token_is_anonymous_only_when_anonymous_channels_exist() {
    assert_eq!(secret_auth().admit(None, NOW), Err(TokenError::Missing));
    let auth = JwtAuth::new(
        VerificationKeys::secret(SECRET).expect("secret"),
        JwtSettings {
            anonymous_channels: vec![pattern("odin.global.>")],
            ..JwtSettings::default()
        },
    );
    let anonymous = auth.admit(None, NOW).expect("anonymous");
    assert_eq!(anonymous, Grant::anonymous());
    // A token that is present must still be valid.
    assert_eq!(
        auth.admit(Some("nonsense"), NOW),
        Err(TokenError::Malformed)
    );
    let alice = auth
        .admit(Some(&hs256(&claims(json!({})))), NOW)
        .expect("valid");
    assert_eq!(alice.sub.as_deref(), Some("alice"));
}

#[test]
fn a_pattern_is_allowed_when_one_single_pattern_covers_it() {
    let auth = JwtAuth::new(
        VerificationKeys::secret(SECRET).expect("secret"),
        JwtSettings {
            anonymous_channels: vec![pattern("odin.global.>")],
            ..JwtSettings::default()
        },
    );
    let alice = auth
        .verify(
            &hs256(&claims(
                json!({"channels": ["odin.token.BTC.*", "odin.token.ETH.trade"]}),
            )),
            NOW,
        )
        .expect("valid");
    let anonymous = Grant::anonymous();
    for (requested, for_alice, for_anonymous) in [
        ("odin.token.BTC.trade", true, false),
        ("odin.token.BTC.*", true, false),
        ("odin.token.ETH.trade", true, false),
        ("odin.token.ETH.*", false, false),
        // BTC.* and ETH.trade together do not make *.trade: one pattern must cover it.
        ("odin.token.*.trade", false, false),
        ("odin.token.BTC.>", false, false),
        ("odin.token.>", false, false),
        (">", false, false),
        // Anonymous channels are readable by everyone.
        ("odin.global.news", true, true),
        ("odin.global.>", true, true),
        ("odin.>", false, false),
    ] {
        let p = pattern(requested);
        assert_eq!(auth.allows(&alice, &p), for_alice, "alice: {requested}");
        assert_eq!(
            auth.allows(&anonymous, &p),
            for_anonymous,
            "anonymous: {requested}"
        );
    }
    assert!(covered_by_one(
        &pattern("a.b"),
        &[pattern("x.>"), pattern("a.*")]
    ));
    assert!(!covered_by_one(&pattern("a.b"), &[]));
}

#[test]
fn debug_output_never_shows_the_secret() {
    let text = format!("{:?}", secret_auth());
    assert!(!text.contains("0123456789abcdef"), "{text}");
}
