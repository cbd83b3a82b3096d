//! JWT in the binary: the secret or key file the configuration names, read
//! here (the only I/O JWT needs) and handed to core, which verifies
//! tokens; and `surge token`, which mints an HS256 token with
//! `SURGE_JWT_SECRET` so a newcomer can try an authenticated gateway.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use clap::{Arg, ArgMatches, Command};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use surge_core::auth::{JwtAuth, JwtSettings, VerificationKeys};
use surge_core::config::{Config, parse_duration};
use surge_core::subjects::Pattern;

/// The gateway's token verifier, when the configuration turns JWT on:
/// the secret, or the PEM public key or JWKS file read and parsed. A file
/// that cannot be read or holds no usable key stops the start.
pub fn load(config: &Config) -> anyhow::Result<Option<JwtAuth>> {
    Ok(keys(config)?.map(|keys| JwtAuth::new(keys, JwtSettings::from_config(config))))
}

/// Re-reads the public key or JWKS file into `auth` (on SIGHUP): tokens are
/// verified with the new keys from then on; open connections keep what
/// they were granted. `Ok(None)` when the keys come from no file (a secret
/// is fixed for the life of the process); on `Err` the old keys stay.
pub fn reload(config: &Config, auth: &JwtAuth) -> anyhow::Result<Option<usize>> {
    if config.jwt_public_key_file.is_none() && config.jwt_jwks_file.is_none() {
        return Ok(None);
    }
    if let Some(keys) = keys(config)? {
        auth.replace_keys(keys);
    }
    Ok(Some(auth.key_count()))
}

/// The verification keys the configuration names, read from their file.
fn keys(config: &Config) -> anyhow::Result<Option<VerificationKeys>> {
    let keys = if let Some(secret) = &config.jwt_secret {
        VerificationKeys::secret(secret.expose().as_bytes())
            .map_err(|e| anyhow!("SURGE_JWT_SECRET: {e}"))?
    } else if let Some(path) = &config.jwt_public_key_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read SURGE_JWT_PUBLIC_KEY_FILE={}", path.display()))?;
        VerificationKeys::public_key_pem(&pem)
            .map_err(|e| anyhow!("SURGE_JWT_PUBLIC_KEY_FILE={}: {e}", path.display()))?
    } else if let Some(path) = &config.jwt_jwks_file {
        let json = std::fs::read(path)
            .with_context(|| format!("cannot read SURGE_JWT_JWKS_FILE={}", path.display()))?;
        VerificationKeys::jwks(&json)
            .map_err(|e| anyhow!("SURGE_JWT_JWKS_FILE={}: {e}", path.display()))?
    } else {
        return Ok(None);
    };
    Ok(Some(keys))
}

/// What `surge token` mints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOptions {
    pub sub: String,
    /// The `channels` claim; empty leaves it out (anonymous channels only).
    pub channels: Vec<String>,
    pub ttl: Duration,
}

/// `surge token`.
pub fn command() -> Command {
    Command::new("token")
        .about("Print an HS256 token signed with SURGE_JWT_SECRET, to try a gateway that requires one")
        .arg(
            Arg::new("sub")
                .long("sub")
                .value_name("USER")
                .required(true)
                .help("The token's sub claim: who the connection is"),
        )
        .arg(
            Arg::new("channels")
                .long("channels")
                .value_name("PATTERNS")
                .value_parser(parse_channels)
                .help("Comma-separated channel patterns the token may read (odin.token.>) [default: none, the anonymous channels only]"),
        )
        .arg(
            Arg::new("ttl")
                .long("ttl")
                .value_name("DURATION")
                .default_value("1h")
                .value_parser(parse_ttl)
                .help("How long the token is valid (exp = now + ttl): 90s, 30m, 1h"),
        )
}

fn parse_channels(value: &str) -> Result<Vec<String>, String> {
    value
        .split(',')
        .map(str::trim)
        .map(|c| {
            Pattern::parse(c)
                .map(|p| p.as_str().to_owned())
                .map_err(|e| format!("{c:?}: {e}"))
        })
        .collect()
}

fn parse_ttl(value: &str) -> Result<Duration, String> {
    match parse_duration(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be longer than 0s".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// The options of a parsed `surge token` command line.
pub fn options(sub: &ArgMatches) -> TokenOptions {
    TokenOptions {
        sub: sub.get_one::<String>("sub").cloned().unwrap_or_default(),
        channels: sub
            .get_one::<Vec<String>>("channels")
            .cloned()
            .unwrap_or_default(),
        ttl: sub
            .get_one::<Duration>("ttl")
            .copied()
            .unwrap_or(Duration::from_secs(3600)),
    }
}

/// An HS256 token for `options`, issued at `now` with the configuration's
/// secret, and its issuer and audience when they are set (so the gateway
/// with the same configuration accepts it).
pub fn mint(config: &Config, options: &TokenOptions, now: SystemTime) -> Result<String, String> {
    let secret = config
        .jwt_secret
        .as_ref()
        .ok_or("no secret to sign with: set SURGE_JWT_SECRET (the gateway's, at least 32 bytes)")?;
    let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut claims = json!({
        "sub": options.sub,
        "iat": iat,
        "exp": iat.saturating_add(options.ttl.as_secs().max(1)),
    });
    if !options.channels.is_empty() {
        claims["channels"] = json!(options.channels);
    }
    if let Some(issuer) = &config.jwt_issuer {
        claims["iss"] = Value::from(issuer.as_str());
    }
    if let Some(audience) = &config.jwt_audience {
        claims["aud"] = Value::from(audience.as_str());
    }
    let key = EncodingKey::from_secret(secret.expose().as_bytes()).map_err(|e| e.to_string())?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use surge_core::UnixTime;
    use surge_core::config::Secret;

    use super::*;

    #[test]
    fn a_minted_token_verifies_with_the_same_configuration() {
        let config = Config {
            jwt_secret: Some(Secret::new("0123456789abcdef0123456789abcdef")),
            jwt_issuer: Some("https://id.example".into()),
            ..Config::default()
        };
        let options = TokenOptions {
            sub: "alice".into(),
            channels: vec!["odin.token.>".into()],
            ttl: Duration::from_secs(60),
        };
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = mint(&config, &options, at).expect("minted");
        let auth = load(&config).expect("loads").expect("JWT on");
        let grant = auth
            .verify(&token, UnixTime::from_secs(1_800_000_030))
            .expect("valid");
        assert_eq!(grant.sub.as_deref(), Some("alice"));
        assert_eq!(grant.expires_at, Some(UnixTime::from_secs(1_800_000_060)));
        assert!(
            auth.verify(&token, UnixTime::from_secs(1_800_000_060))
                .is_err()
        );
        assert!(mint(&Config::default(), &options, at).is_err());
    }

    #[test]
    fn key_files_are_read_and_their_problems_named() {
        assert!(load(&Config::default()).expect("fine").is_none());
        let missing = Config {
            jwt_public_key_file: Some("/nonexistent/surge-jwt.pem".into()),
            ..Config::default()
        };
        let e = load(&missing).expect_err("no file").to_string();
        assert!(
            e.contains("SURGE_JWT_PUBLIC_KEY_FILE=/nonexistent/surge-jwt.pem"),
            "{e}"
        );
        let pem = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../core/tests/fixtures/jwt/es256_public.pem"
        );
        let config = Config {
            jwt_public_key_file: Some(pem.into()),
            ..Config::default()
        };
        assert!(load(&config).expect("reads").is_some());
        let private = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../core/tests/fixtures/jwt/es256_private.pem"
        );
        let config = Config {
            jwt_jwks_file: Some(private.into()),
            ..Config::default()
        };
        let e = load(&config).expect_err("not a JWKS").to_string();
        assert!(e.starts_with("SURGE_JWT_JWKS_FILE="), "{e}");
    }
}
