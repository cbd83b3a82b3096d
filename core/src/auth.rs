//! Who a connection is and what it may read: JSON Web Tokens verified at
//! the upgrade and on `refresh`, and the rule that decides whether a
//! `subscribe` or `resume` pattern is allowed.
//!
//! Signatures are checked by the `jsonwebtoken` crate, with its own time
//! checks turned off: it would read the system clock. `exp` and `nbf` are
//! checked here, against the wall-clock time the driver passes in
//! ([`UnixTime`]), with the configured leeway, so a simulated or tested
//! run decides exactly as a real one. Keys are parsed here from bytes the
//! server read (a secret, a PEM public key or a JWKS document); which
//! algorithms a key accepts follows from the key itself, so a token signed
//! with HMAC is never checked against a public key (the classic algorithm
//! confusion) and an asymmetric token never against the secret.
//!
//! A pattern a client asks for is allowed when **one** pattern of its
//! token's `channels` claim, or one anonymous pattern, covers it: every
//! subject the requested pattern can match also matches that one pattern
//! ([`Pattern::covers`]). Two patterns that only together cover it do not.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::Value;

use crate::UnixTime;
use crate::config::Config;
use crate::subjects::Pattern;

/// Why a token was refused. The text is the short reason a client reads
/// in the 401 body or the `invalid_token` error; it never repeats what the
/// token contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a token is required: send it as ?token=, ?auth= or Authorization: Bearer")]
    Missing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not accepted with the configured key")]
    Algorithm,
    #[error("the token's kid names no configured key")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's issuer (iss) is not accepted")]
    WrongIssuer,
    #[error("the token's audience (aud) is not accepted")]
    WrongAudience,
    #[error("the token has no {0} claim")]
    MissingClaim(&'static str),
    #[error("the token's {0} claim is not valid")]
    InvalidClaim(&'static str),
}

/// A key file or secret that cannot verify anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// The keys tokens are verified with: a shared secret (HS256/384/512), one
/// PEM public key (RS*/PS*, ES256/ES384 or EdDSA, by the key's type), or a
/// JWKS whose keys are chosen by `kid`. Each key carries the algorithms it
/// accepts, all of one family.
pub struct VerificationKeys {
    keys: Vec<Key>,
    /// A JWKS: the token's `kid` picks the key.
    by_kid: bool,
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

impl VerificationKeys {
    /// An HMAC secret (`SURGE_JWT_SECRET`).
    pub fn secret(secret: &[u8]) -> Result<Self, KeyError> {
        let key = DecodingKey::from_secret(secret)
            .map_err(|e| KeyError(format!("unusable HMAC secret: {e}")))?;
        Ok(VerificationKeys {
            keys: vec![Key {
                kid: None,
                key,
                algorithms: AlgorithmFamily::Hmac.algorithms().to_vec(),
            }],
            by_kid: false,
        })
    }

    /// The contents of a PEM public key file (`SURGE_JWT_PUBLIC_KEY_FILE`):
    /// an RSA, P-256/P-384 or Ed25519 `PUBLIC KEY`.
    pub fn public_key_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let key = DecodingKey::from_rsa_pem(pem)
            .or_else(|_| DecodingKey::from_ec_pem(pem))
            .or_else(|_| DecodingKey::from_ed_pem(pem))
            .map_err(|_| {
                KeyError(
                    "not a PEM public key (expected -----BEGIN PUBLIC KEY----- holding an RSA,                      P-256, P-384 or Ed25519 key)"
                        .to_owned(),
                )
            })?;
        let algorithms = algorithms_of(&key)?;
        Ok(VerificationKeys {
            keys: vec![Key {
                kid: None,
                key,
                algorithms,
            }],
            by_kid: false,
        })
    }

    /// The contents of a JWKS file (`SURGE_JWT_JWKS_FILE`): public keys
    /// (RSA, EC, OKP); keys marked `"use":"enc"` are skipped; a symmetric
    /// (`oct`) key is refused, since its tokens would be HMAC-signed with a
    /// key published in the set.
    pub fn jwks(json: &[u8]) -> Result<Self, KeyError> {
        let set: JwkSet = serde_json::from_slice(json)
            .map_err(|e| KeyError(format!("not a JWKS document ({{\"keys\":[...]}}): {e}")))?;
        let mut keys: Vec<Key> = Vec::new();
        for (index, jwk) in set.keys.iter().enumerate() {
            let name = match &jwk.common.key_id {
                Some(kid) => format!("key {} (kid {kid:?})", index + 1),
                None => format!("key {}", index + 1),
            };
            if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                continue;
            }
            match &jwk.algorithm {
                AlgorithmParameters::OctetKey(_) => {
                    return Err(KeyError(format!(
                        "{name} is a symmetric (oct) key: a JWKS holds public keys; put an HMAC secret in SURGE_JWT_SECRET"
                    )));
                }
                AlgorithmParameters::RSA(_)
                | AlgorithmParameters::EllipticCurve(_)
                | AlgorithmParameters::OctetKeyPair(_) => {}
                _ => return Err(KeyError(format!("{name} has an unsupported key type"))),
            }
            let key = DecodingKey::from_jwk(jwk)
                .map_err(|e| KeyError(format!("{name} is not a usable key: {e}")))?;
            let mut algorithms = algorithms_of(&key)?;
            if let Some(alg) = jwk.common.key_algorithm {
                let alg = Algorithm::try_from(alg)
                    .ok()
                    .filter(|a| algorithms.contains(a))
                    .ok_or_else(|| {
                        KeyError(format!("{name}: its alg does not fit its key type"))
                    })?;
                algorithms = vec![alg];
            }
            if let Some(kid) = &jwk.common.key_id
                && keys.iter().any(|k| k.kid.as_ref() == Some(kid))
            {
                return Err(KeyError(format!("{name}: the kid is used twice")));
            }
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                key,
                algorithms,
            });
        }
        if keys.is_empty() {
            return Err(KeyError("the JWKS holds no signature key".to_owned()));
        }
        if keys.len() > 1 && keys.iter().any(|k| k.kid.is_none()) {
            return Err(KeyError(
                "every key of a JWKS with several keys needs a kid".to_owned(),
            ));
        }
        Ok(VerificationKeys { keys, by_kid: true })
    }

    /// The key for a token with header `header`.
    fn for_header(&self, header: &Header) -> Result<&Key, TokenError> {
        if !self.by_kid {
            return self.keys.first().ok_or(TokenError::UnknownKey);
        }
        match &header.kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or(TokenError::UnknownKey),
            None if self.keys.len() == 1 => Ok(&self.keys[0]),
            None => Err(TokenError::UnknownKey),
        }
    }
}

/// The algorithms a public or secret key verifies: its family's, and for
/// an EC key only its curve's.
fn algorithms_of(key: &DecodingKey) -> Result<Vec<Algorithm>, KeyError> {
    Ok(match key.family() {
        AlgorithmFamily::Ec => match key.try_get_as_bytes().map(<[u8]>::len) {
            Ok(65) => vec![Algorithm::ES256],
            Ok(97) => vec![Algorithm::ES384],
            _ => {
                return Err(KeyError(
                    "unsupported elliptic curve (P-256 and P-384 are)".to_owned(),
                ));
            }
        },
        family => family.algorithms().to_vec(),
    })
}

impl std::fmt::Debug for VerificationKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Algorithms and kids only: a secret never reaches a log.
        let keys: Vec<(Option<&str>, &[Algorithm])> = self
            .keys
            .iter()
            .map(|k| (k.kid.as_deref(), k.algorithms.as_slice()))
            .collect();
        f.debug_struct("VerificationKeys")
            .field("keys", &keys)
            .finish()
    }
}

/// The JWT settings besides the keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required among `aud`, when set.
    pub audience: Option<String>,
    /// Clock leeway for `exp` and `nbf` (and the 4001 close).
    pub leeway: Duration,
    /// What a connection without a token may read (and any connection).
    pub anonymous_channels: Vec<Pattern>,
    /// How long before `exp` a connection is sent `token_expiring`.
    pub refresh_notice: Duration,
}

impl JwtSettings {
    /// The settings of a validated configuration (the keys are read by the
    /// server). Anonymous patterns passed the configuration's rule.
    pub fn from_config(config: &Config) -> Self {
        JwtSettings {
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            leeway: config.jwt_leeway,
            anonymous_channels: config
                .anonymous_channels
                .iter()
                .filter_map(|p| Pattern::parse(p).ok())
                .collect(),
            refresh_notice: config.token_refresh_notice,
        }
    }
}

impl Default for JwtSettings {
    fn default() -> Self {
        JwtSettings {
            issuer: None,
            audience: None,
            leeway: Duration::ZERO,
            anonymous_channels: Vec::new(),
            refresh_notice: Duration::from_secs(30),
        }
    }
}

/// What one connection may read, from a verified token or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's `sub`; `None` for an anonymous connection.
    pub sub: Option<String>,
    /// The token's `exp`; `None` for an anonymous connection.
    pub expires_at: Option<UnixTime>,
    /// The token's `channels` (empty: only the anonymous channels).
    pub channels: Vec<Pattern>,
}

impl Grant {
    /// A connection without a token: the anonymous channels only.
    pub fn anonymous() -> Self {
        Grant {
            sub: None,
            expires_at: None,
            channels: Vec::new(),
        }
    }
}

/// Token verification and channel permissions, shared by every connection.
pub struct JwtAuth {
    /// Replaced whole when the key file is reloaded: a verification in
    /// progress keeps the set it started with.
    keys: RwLock<Arc<VerificationKeys>>,
    settings: JwtSettings,
}

impl JwtAuth {
    pub fn new(keys: VerificationKeys, settings: JwtSettings) -> Self {
        JwtAuth {
            keys: RwLock::new(Arc::new(keys)),
            settings,
        }
    }

    /// Verifies with `keys` from now on (a reloaded JWKS or key file).
    /// Connections already open keep their grants; a refresh is verified
    /// with the new keys.
    pub fn replace_keys(&self, keys: VerificationKeys) {
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
    }

    /// How many keys verify tokens now.
    pub fn key_count(&self) -> usize {
        self.current_keys().keys.len()
    }

    fn current_keys(&self) -> Arc<VerificationKeys> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    /// Verifies `token` at wall-clock time `now`: signature, algorithm,
    /// `iss`/`aud` when configured, `sub`, `exp`, `nbf` and `channels`.
    pub fn verify(&self, token: &str, now: UnixTime) -> Result<Grant, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let keys = self.current_keys();
        let key = keys.for_header(&header)?;
        if !key.algorithms.contains(&header.alg) {
            return Err(TokenError::Algorithm);
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        // Time is checked below, against `now`: jsonwebtoken would read the
        // system clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.validate_aud = self.settings.audience.is_some();
        if let Some(audience) = &self.settings.audience {
            validation.set_audience(&[audience]);
            validation.required_spec_claims.insert("aud".to_owned());
        }
        if let Some(issuer) = &self.settings.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        let claims = jsonwebtoken::decode::<WireClaims>(token, &key.key, &validation)
            .map_err(|e| token_error(e.kind()))?
            .claims;
        self.check_claims(claims, now)
    }

    /// The time claims against `now` and the leeway, then the rest.
    fn check_claims(&self, claims: WireClaims, now: UnixTime) -> Result<Grant, TokenError> {
        let leeway = self.settings.leeway;
        let sub = match claims.sub {
            None => return Err(TokenError::MissingClaim("sub")),
            Some(Value::String(sub)) if !sub.is_empty() => sub,
            Some(_) => return Err(TokenError::InvalidClaim("sub")),
        };
        let expires_at = match claims.exp {
            None => return Err(TokenError::MissingClaim("exp")),
            Some(exp) => numeric_date(&exp).ok_or(TokenError::InvalidClaim("exp"))?,
        };
        if now >= expires_at.saturating_add(leeway) {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = claims.nbf {
            let nbf = numeric_date(&nbf).ok_or(TokenError::InvalidClaim("nbf"))?;
            if now.saturating_add(leeway) < nbf {
                return Err(TokenError::NotYetValid);
            }
        }
        let channels = match claims.channels {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().and_then(|s| Pattern::parse(s).ok()))
                .collect::<Option<Vec<Pattern>>>()
                .ok_or(TokenError::InvalidClaim("channels"))?,
            Some(_) => return Err(TokenError::InvalidClaim("channels")),
        };
        Ok(Grant {
            sub: Some(sub),
            expires_at: Some(expires_at),
            channels,
        })
    }

    /// The grant of an upgrade that presented `token` (`None`: no token):
    /// anonymous when no token was sent and anonymous channels exist.
    pub fn admit(&self, token: Option<&str>, now: UnixTime) -> Result<Grant, TokenError> {
        match token {
            Some(token) => self.verify(token, now),
            None if self.settings.anonymous_channels.is_empty() => Err(TokenError::Missing),
            None => Ok(Grant::anonymous()),
        }
    }

    /// Whether `grant` may read `pattern`.
    pub fn allows(&self, grant: &Grant, pattern: &Pattern) -> bool {
        covered_by_one(pattern, &grant.channels)
            || covered_by_one(pattern, &self.settings.anonymous_channels)
    }
}

/// Keys cannot be compared: two verifiers are equal when they are the same
/// one (as `Arc`s shared by every connection of a gateway are).
impl PartialEq for JwtAuth {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for JwtAuth {}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("keys", &self.keys)
            .field("settings", &self.settings)
            .finish()
    }
}

/// Whether one single pattern of `patterns` covers `pattern`.
pub fn covered_by_one(pattern: &Pattern, patterns: &[Pattern]) -> bool {
    patterns.iter().any(|p| p.covers(pattern))
}

/// The claims surge reads, each kept as JSON so that a missing and a
/// mistyped claim get different answers. `iss` and `aud` are checked by
/// `jsonwebtoken`.
#[derive(Deserialize)]
struct WireClaims {
    #[serde(default)]
    sub: Option<Value>,
    #[serde(default)]
    exp: Option<Value>,
    #[serde(default)]
    nbf: Option<Value>,
    #[serde(default)]
    channels: Option<Value>,
}

/// A NumericDate (seconds since the epoch, possibly fractional), to the
/// millisecond.
fn numeric_date(value: &Value) -> Option<UnixTime> {
    if let Some(secs) = value.as_u64() {
        return Some(UnixTime::from_secs(secs));
    }
    let secs = value.as_f64().filter(|s| s.is_finite() && *s >= 0.0)?;
    // Saturating float-to-int conversion; far-future dates stay far.
    Some(UnixTime::from_millis((secs * 1000.0) as u64))
}

/// What a `jsonwebtoken` error means for the client.
fn token_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => TokenError::Algorithm,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => TokenError::MissingClaim("iss"),
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => TokenError::MissingClaim("aud"),
        ErrorKind::InvalidClaimFormat(claim) if claim == "iss" => TokenError::WrongIssuer,
        ErrorKind::InvalidClaimFormat(claim) if claim == "aud" => TokenError::WrongAudience,
        _ => TokenError::Malformed,
    }
}

#[cfg(test)]
mod tests;
