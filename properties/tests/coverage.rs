//! Channel permissions: what a token allows is exactly what a naive check
//! over concrete subjects allows. A requested pattern is allowed when one
//! single pattern of the token's `channels`, or one anonymous pattern,
//! matches every subject the requested pattern can match.
//!
//! Tokens come from a tiny alphabet so that generated patterns cover each
//! other often; subjects range over that alphabet plus a token no pattern
//! uses, one token longer than the longest pattern, which makes the naive
//! check exact (a subject outside a claim pattern, if there is one, is
//! among them).

use std::sync::LazyLock;

use proptest::prelude::*;
use surge_core::UnixTime;
use surge_core::auth::{Grant, JwtAuth, JwtSettings, VerificationKeys, covered_by_one};
use surge_core::subjects::{Pattern, Subject};

const ALPHABET: [&str; 3] = ["a", "b", "c"];

/// Up to 3 tokens from the alphabet or `*`, then optionally `>`.
fn pattern() -> impl Strategy<Value = Pattern> {
    let token = prop_oneof![3 => prop::sample::select(&ALPHABET[..]), 1 => Just("*")];
    (prop::collection::vec(token, 0..=3), any::<bool>()).prop_map(|(mut tokens, tail)| {
        if tail || tokens.is_empty() {
            tokens.push(">");
        }
        Pattern::parse(&tokens.join(".")).expect("generated pattern is valid")
    })
}

/// Every subject of 1 to 5 tokens over the alphabet and `z`.
static SUBJECTS: LazyLock<Vec<Subject>> =
    LazyLock::new(|| surge_properties::all_subjects(&["a", "b", "c", "z"], 5));

/// The slow answer: some one pattern of `allowed` matches every subject
/// `requested` matches.
fn naive_allowed(requested: &Pattern, allowed: &[Pattern]) -> bool {
    allowed.iter().any(|claim| {
        SUBJECTS
            .iter()
            .filter(|s| requested.matches(s))
            .all(|s| claim.matches(s))
    })
}

fn auth(anonymous: Vec<Pattern>) -> JwtAuth {
    JwtAuth::new(
        VerificationKeys::secret(b"0123456789abcdef0123456789abcdef").expect("secret"),
        JwtSettings {
            anonymous_channels: anonymous,
            ..JwtSettings::default()
        },
    )
}

proptest! {
    #![proptest_config(surge_properties::config("coverage", 1024))]

    #[test]
    fn a_grant_allows_exactly_what_one_claim_or_anonymous_pattern_covers(
        claims in prop::collection::vec(pattern(), 0..4),
        anonymous in prop::collection::vec(pattern(), 0..3),
        requested in pattern(),
    ) {
        let auth = auth(anonymous.clone());
        let grant = Grant {
            sub: Some("alice".into()),
            expires_at: Some(UnixTime::from_secs(1)),
            channels: claims.clone(),
        };
        let everything: Vec<Pattern> = claims.iter().chain(&anonymous).cloned().collect();
        prop_assert_eq!(
            auth.allows(&grant, &requested),
            naive_allowed(&requested, &everything),
            "claims {:?}, anonymous {:?}, requested {}", claims, anonymous, requested
        );
        // Anonymous connections: the anonymous patterns alone.
        prop_assert_eq!(
            auth.allows(&Grant::anonymous(), &requested),
            naive_allowed(&requested, &anonymous)
        );
        prop_assert_eq!(
            covered_by_one(&requested, &claims),
            naive_allowed(&requested, &claims)
        );
    }

    /// Allowed implies that every subject the pattern can match is readable
    /// through the grant (the converse does not hold: patterns that only
    /// together cover the request do not allow it).
    #[test]
    fn nothing_allowed_reaches_a_subject_outside_the_grant(
        claims in prop::collection::vec(pattern(), 0..4),
        requested in pattern(),
    ) {
        let auth = auth(Vec::new());
        let grant = Grant {
            sub: Some("alice".into()),
            expires_at: Some(UnixTime::from_secs(1)),
            channels: claims.clone(),
        };
        if auth.allows(&grant, &requested) {
            for s in SUBJECTS.iter().filter(|s| requested.matches(s)) {
                prop_assert!(claims.iter().any(|c| c.matches(s)), "{} reaches {}", requested, s.as_str());
            }
        }
    }
}
