//! The typed configuration of the gateway and the rules it must follow.
//!
//! The server binary reads command-line flags, the environment and a `.env`
//! file and hands them here as plain string maps ([`Source`]); this module
//! resolves them by precedence (flag > environment > `.env` file > default),
//! parses every value into a typed [`Config`] and checks range and
//! cross-field rules. It does no I/O, so every rule is unit-tested.
//!
//! Why it matters: the seed team lost a deploy to an overwritten env file
//! that silently changed the mode, and shipped typo'd variables that simply
//! did nothing. Here an invalid value, a near miss of a setting's `SURGE_*`
//! name (with the real name suggested) or a contradiction between two settings
//! stops the start with every problem listed at once, each naming where the
//! value came from; and the effective configuration, with the origin of
//! each value, is printed ([`Config::print_effective`]) and exposed
//! ([`Config::to_json`]).
//!
//! Every setting is declared once, in the table of the `settings` module,
//! which generates its [`Config`] field, default, rule and [`SETTINGS`]
//! entry; the server generates `--help` and `.env.example` from
//! [`SETTINGS`].

mod rules;
mod secret;
mod settings;
mod units;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;

use rules::Value;
pub use secret::Secret;
pub use settings::{Config, DERIVED, SETTINGS, Setting, UNSET};
pub use units::{
    BytesError, DurationError, format_bytes, format_duration, parse_bytes, parse_duration,
};

/// Where a value came from, in order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// A command-line flag: wins over everything.
    Flag,
    /// A process environment variable: wins over the `.env` file.
    Env,
    /// The `.env` file.
    DotEnv,
}

impl Origin {
    /// Highest precedence first.
    pub const BY_PRECEDENCE: [Origin; 3] = [Origin::Flag, Origin::Env, Origin::DotEnv];

    /// Short machine name: `flag`, `env`, `dotenv`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Flag => "flag",
            Origin::Env => "env",
            Origin::DotEnv => "dotenv",
        }
    }

    /// Words for people: `command line`, `environment`, `.env file`.
    pub fn describe(self) -> &'static str {
        match self {
            Origin::Flag => "command line",
            Origin::Env => "environment",
            Origin::DotEnv => ".env file",
        }
    }
}

/// One source of settings. `values` is keyed by environment variable name
/// (the server translates flags to those names); keys that do not start
/// with `SURGE_` are ignored, so the whole process environment can be passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub origin: Origin,
    pub values: BTreeMap<String, String>,
}

impl Source {
    /// A source from `(name, value)` pairs.
    pub fn new<K: Into<String>, V: Into<String>>(
        origin: Origin,
        values: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Source {
            origin,
            values: values
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

/// Socket option bundles applied to accepted connections by the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SocketPreset {
    /// Balanced settings for mixed traffic.
    #[default]
    Default,
    /// Favour latency: small buffers, no Nagle delay.
    LowLatency,
    /// Favour throughput: large socket buffers.
    HighThroughput,
}

/// Least severe level of log line written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// For people at a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `as_str`, `from_name` (case-insensitive), `Display`, the list of names
/// and [`rules::Named`] (what the `Choice` kind of the settings table needs)
/// for the enums of the configuration.
macro_rules! named_enum {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every accepted name, in the order error messages list them.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }

            /// The value named `name`, ignoring ASCII case.
            pub fn from_name(name: &str) -> Option<Self> {
                [$($ty::$variant),+]
                    .into_iter()
                    .find(|value| value.as_str().eq_ignore_ascii_case(name))
            }
        }

        impl rules::Named for $ty {
            fn name(self) -> &'static str {
                self.as_str()
            }

            fn by_name(name: &str) -> Option<Self> {
                Self::from_name(name)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum!(SocketPreset {
    Default => "default",
    LowLatency => "low-latency",
    HighThroughput => "high-throughput",
});
named_enum!(LogLevel {
    Error => "error",
    Warn => "warn",
    Info => "info",
    Debug => "debug",
    Trace => "trace",
});
named_enum!(LogFormat {
    Text => "text",
    Json => "json",
});

/// One problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Environment variable name of the setting (for an unknown key, the key
    /// as given, hence a `String`).
    pub setting: String,
    /// Where the value came from; `None` for a default or a value set in code.
    pub origin: Option<Origin>,
    /// The value as given, `***` for a credential.
    pub value: String,
    /// What the value must be, in words.
    pub rule: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A value from the command line is named by its flag, the way the
        // user wrote it.
        let name = match (self.origin, Setting::by_env(&self.setting)) {
            (Some(Origin::Flag), Some(setting)) => setting.flag,
            _ => self.setting.as_str(),
        };
        let quote = self.value.is_empty()
            || self
                .value
                .contains(|c: char| c.is_whitespace() || c.is_control() || c == '"');
        if quote {
            write!(f, "{name}={:?}", self.value)?;
        } else {
            write!(f, "{name}={}", self.value)?;
        }
        if let Some(origin) = self.origin {
            write!(f, " (from {})", origin.describe())?;
        }
        write!(f, ": {}", self.rule)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found, not just the first, so one restart fixes them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.0.len() == 1 { "" } else { "s" };
        write!(
            f,
            "invalid configuration ({} problem{plural}):",
            self.0.len()
        )?;
        for error in &self.0 {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

const LISTEN: &str = "SURGE_LISTEN";
const ADMIN_LISTEN: &str = "SURGE_ADMIN_LISTEN";
const MAX_CONNECTIONS: &str = "SURGE_MAX_CONNECTIONS";
const SHARDS: &str = "SURGE_SHARDS";
const PING_INTERVAL: &str = "SURGE_PING_INTERVAL";
const IDLE_TIMEOUT: &str = "SURGE_IDLE_TIMEOUT";
const CPU_REJECT: &str = "SURGE_CPU_REJECT_PERCENT";
const CPU_PAUSE: &str = "SURGE_CPU_PAUSE_PERCENT";
const MEMORY_REJECT: &str = "SURGE_MEMORY_REJECT_BYTES";
const MEMORY_PAUSE: &str = "SURGE_MEMORY_PAUSE_BYTES";
const NATS_URL: &str = "SURGE_NATS_URL";
const NATS_TOKEN: &str = "SURGE_NATS_TOKEN";
const NATS_USER: &str = "SURGE_NATS_USER";
const NATS_PASSWORD: &str = "SURGE_NATS_PASSWORD";
const NATS_CREDS: &str = "SURGE_NATS_CREDS";
const NATS_TLS_CA: &str = "SURGE_NATS_TLS_CA";
const JS_REPLICAS: &str = "SURGE_JS_REPLICAS";
const AUTH_TOKENS: &str = "SURGE_AUTH_TOKENS";
const JWT_SECRET: &str = "SURGE_JWT_SECRET";
const JWT_PUBLIC_KEY_FILE: &str = "SURGE_JWT_PUBLIC_KEY_FILE";
const JWT_JWKS_FILE: &str = "SURGE_JWT_JWKS_FILE";
const JWT_ISSUER: &str = "SURGE_JWT_ISSUER";
const JWT_AUDIENCE: &str = "SURGE_JWT_AUDIENCE";
const ANONYMOUS_CHANNELS: &str = "SURGE_ANONYMOUS_CHANNELS";
const TLS_CERT: &str = "SURGE_TLS_CERT";
const TLS_KEY: &str = "SURGE_TLS_KEY";

impl Config {
    /// Builds the configuration from its sources. For each setting the value
    /// of the highest-precedence origin wins (flag > environment > `.env`
    /// file), whatever the order of `sources`; between two sources of the
    /// same origin the earlier one wins. Values shadowed by a higher origin
    /// are not parsed. An unknown `SURGE_*` key in any source within edit
    /// distance [`TYPO_DISTANCE`] of a setting is an error (a typo would
    /// otherwise silently do nothing); other unknown keys are left to
    /// [`Config::ignored_keys`]. Returns every problem found.
    pub fn from_sources(sources: &[Source]) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        for origin in Origin::BY_PRECEDENCE {
            for source in sources.iter().filter(|s| s.origin == origin) {
                for (key, value) in &source.values {
                    if !is_unknown(key) {
                        continue;
                    }
                    if let Some(setting) = near_setting(key) {
                        errors.push(unknown_key(key, value, origin, setting));
                    }
                }
            }
        }

        let mut config = Config::default();
        let mut unparsed = BTreeSet::new();
        for setting in SETTINGS {
            let Some((origin, raw)) = winning_value(sources, setting.env) else {
                continue;
            };
            config.origins.insert(setting.env, origin);
            let spec = setting.spec();
            if let Err(rule) = spec
                .parse(raw)
                .and_then(|value| config.set(setting.env, value))
            {
                unparsed.insert(setting.env);
                errors.push(ConfigError {
                    setting: setting.env.to_owned(),
                    origin: Some(origin),
                    value: spec.redact(raw),
                    rule,
                });
            }
        }

        // Rules involving a value that could not be read would only report
        // noise about the default standing in for it.
        errors.extend(config.problems(&unparsed));
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The unknown `SURGE_*` keys of `sources` that are not near misses of
    /// a setting (so [`Config::from_sources`] let them pass), sorted, each
    /// once: the server reports them as ignored. Orchestrators put such
    /// variables in the environment on their own, e.g. Kubernetes'
    /// `SURGE_SERVICE_HOST` and `SURGE_PORT_8080_TCP` for a Service named
    /// `surge`.
    pub fn ignored_keys(sources: &[Source]) -> Vec<String> {
        let keys: BTreeSet<&String> = sources
            .iter()
            .flat_map(|source| source.values.keys())
            .filter(|key| is_unknown(key) && near_setting(key).is_none())
            .collect();
        keys.into_iter().cloned().collect()
    }

    /// Checks every range and cross-field rule (also for a `Config` built in
    /// code) and returns every problem found.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let problems = self.problems(&BTreeSet::new());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// Whether connections need a JWT (or the anonymous channels): a key
    /// source is configured.
    pub fn jwt_enabled(&self) -> bool {
        self.jwt_secret.is_some()
            || self.jwt_public_key_file.is_some()
            || self.jwt_jwks_file.is_some()
    }

    /// The NATS servers of `nats_url`, empty for the embedded broker.
    pub fn nats_servers(&self) -> Vec<&str> {
        self.nats_url
            .as_deref()
            .map(|urls| urls.split(',').map(str::trim).collect())
            .unwrap_or_default()
    }

    /// One line per setting: its environment variable, its value and where
    /// the value came from, in aligned columns. Credentials show as `***`;
    /// settings the server derives show as `derived`.
    pub fn print_effective(&self) -> String {
        // Longer values push their own origin right instead of the whole column.
        const MAX_VALUE_COLUMN: usize = 32;
        let rows: Vec<(&str, String, &str)> = SETTINGS
            .iter()
            .map(|setting| {
                let origin = self
                    .origins
                    .get(setting.env)
                    .map_or("default", |origin| origin.describe());
                (setting.env, self.shown(setting.env), origin)
            })
            .collect();
        let name_width = rows.iter().map(|(name, ..)| name.len()).max().unwrap_or(0);
        let value_width = rows
            .iter()
            .map(|(_, value, _)| value.chars().count())
            .max()
            .unwrap_or(0)
            .min(MAX_VALUE_COLUMN);
        let mut out = String::new();
        for (name, value, origin) in rows {
            let line = format!("{name:<name_width$}  {value:<value_width$}  {origin}");
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// The effective configuration as JSON, for the structured start-up log
    /// line and the admin endpoint: `{"settings": {key: value}, "sources":
    /// {key: "flag"|"env"|"dotenv"}}`, where `sources` lists only settings
    /// given explicitly. Sizes are numbers of bytes, durations strings such
    /// as `"10s"`, unset values `null`, credentials `"***"`. Keys are sorted,
    /// so the output does not depend on serde_json's map features.
    pub fn to_json(&self) -> serde_json::Value {
        let settings: BTreeMap<&str, serde_json::Value> = SETTINGS
            .iter()
            .map(|setting| {
                let value = self.get(setting.env).unwrap_or(Value::Unset);
                let json = match (setting.is_secret(), value.is_empty()) {
                    (true, true) => serde_json::Value::Null,
                    (true, false) => serde_json::Value::from("***"),
                    (false, _) => value.json(),
                };
                (setting.key, json)
            })
            .collect();
        let sources: BTreeMap<&str, &str> = SETTINGS
            .iter()
            .filter_map(|s| self.origins.get(s.env).map(|o| (s.key, o.as_str())))
            .collect();
        serde_json::json!({ "settings": settings, "sources": sources })
    }

    /// Per-value rules of every setting not in `skip`, then the cross-field
    /// rules that involve none of `skip`.
    fn problems(&self, skip: &BTreeSet<&str>) -> Vec<ConfigError> {
        let mut out = Vec::new();
        for setting in SETTINGS.iter().filter(|s| !skip.contains(s.env)) {
            let value = self.get(setting.env).unwrap_or(Value::Unset);
            if let Err(rule) = setting.spec().check(&value) {
                out.push(self.error(setting.env, rule));
            }
        }
        let usable = |names: &[&str]| names.iter().all(|name| !skip.contains(name));

        if usable(&[LISTEN, ADMIN_LISTEN]) && addrs_overlap(self.listen, self.admin_listen) {
            let (blamed, other) = self.blame(ADMIN_LISTEN, LISTEN);
            out.push(self.error(
                blamed,
                format!(
                    "must not overlap {} ({}): both would bind port {}",
                    self.name(other),
                    self.shown(other),
                    self.listen.port()
                ),
            ));
        }
        let too_many_shards = matches!(
            (self.shards, self.max_connections),
            (Some(shards), Some(max)) if shards > max
        );
        if too_many_shards && usable(&[SHARDS, MAX_CONNECTIONS]) {
            out.push(self.order_error(SHARDS, "<=", MAX_CONNECTIONS, ">=", ""));
        }
        if usable(&[IDLE_TIMEOUT, PING_INTERVAL]) && self.idle_timeout <= self.ping_interval {
            out.push(self.order_error(
                IDLE_TIMEOUT,
                ">",
                PING_INTERVAL,
                "<",
                "; otherwise live clients are cut off before they can answer a ping",
            ));
        }
        if usable(&[CPU_PAUSE, CPU_REJECT]) && self.cpu_pause_percent < self.cpu_reject_percent {
            out.push(self.order_error(CPU_PAUSE, ">=", CPU_REJECT, "<=", ""));
        }
        let memory_pause_first = matches!(
            (self.memory_pause_bytes, self.memory_reject_bytes),
            (Some(pause), Some(reject)) if pause < reject
        );
        if memory_pause_first && usable(&[MEMORY_PAUSE, MEMORY_REJECT]) {
            out.push(self.order_error(MEMORY_PAUSE, ">=", MEMORY_REJECT, "<=", ""));
        }

        let user = self.nats_user.is_some();
        let password = self.nats_password.is_some();
        if usable(&[NATS_USER, NATS_PASSWORD]) {
            if user && !password {
                out.push(self.error(NATS_USER, format!("needs {NATS_PASSWORD} as well")));
            }
            if password && !user {
                out.push(self.error(NATS_PASSWORD, format!("needs {NATS_USER} as well")));
            }
        }
        let token = self.nats_token.is_some();
        if token && (user || password) && usable(&[NATS_TOKEN, NATS_USER, NATS_PASSWORD]) {
            out.push(self.error(
                NATS_TOKEN,
                format!(
                    "cannot be combined with {NATS_USER}/{NATS_PASSWORD}; choose one way to authenticate"
                ),
            ));
        }
        if self.nats_creds.is_some() && usable(&[NATS_CREDS, NATS_TOKEN, NATS_USER, NATS_PASSWORD])
        {
            let others: Vec<&str> = [
                (NATS_TOKEN, token),
                (NATS_USER, user),
                (NATS_PASSWORD, password),
            ]
            .into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect();
            if !others.is_empty() {
                out.push(self.error(
                    NATS_CREDS,
                    format!(
                        "cannot be combined with {}; choose one way to authenticate",
                        others.join(", ")
                    ),
                ));
            }
        }
        if self.nats_url.is_none() && usable(&[NATS_URL]) {
            let broker_only = [
                (NATS_TOKEN, token),
                (NATS_USER, user),
                (NATS_PASSWORD, password),
                (NATS_CREDS, self.nats_creds.is_some()),
                (NATS_TLS_CA, self.nats_tls_ca.is_some()),
            ];
            for (name, set) in broker_only {
                if set && usable(&[name]) {
                    out.push(self.error(
                        name,
                        format!(
                            "has no effect without {NATS_URL}: the embedded broker takes no credentials or TLS"
                        ),
                    ));
                }
            }
            if self.js_replicas > 1 && usable(&[JS_REPLICAS]) {
                out.push(self.error(
                    JS_REPLICAS,
                    format!(
                        "must be 1 with the embedded broker; replicas need {NATS_URL} pointing at a NATS cluster"
                    ),
                ));
            }
        }
        self.jwt_problems(&usable, &mut out);
        // A certificate without its key (or the reverse) cannot serve TLS,
        // and serving plain ws:// instead would surprise the operator.
        if usable(&[TLS_CERT, TLS_KEY]) {
            match (self.tls_cert.is_some(), self.tls_key.is_some()) {
                (true, false) => out.push(self.error(
                    TLS_CERT,
                    format!("needs {TLS_KEY} as well: TLS takes a certificate and its private key"),
                )),
                (false, true) => out.push(self.error(
                    TLS_KEY,
                    format!(
                        "needs {TLS_CERT} as well: TLS takes a certificate and its private key"
                    ),
                )),
                _ => {}
            }
        }
        out
    }

    /// Whether the public listener speaks TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    /// JWT: one source of keys; no static tokens beside it; the settings
    /// that only tune JWT need it.
    fn jwt_problems(&self, usable: &dyn Fn(&[&str]) -> bool, out: &mut Vec<ConfigError>) {
        let sources = [
            (JWT_SECRET, self.jwt_secret.is_some()),
            (JWT_PUBLIC_KEY_FILE, self.jwt_public_key_file.is_some()),
            (JWT_JWKS_FILE, self.jwt_jwks_file.is_some()),
        ];
        let mut first: Option<&str> = None;
        for (name, set) in sources {
            if !set || !usable(&[name]) {
                continue;
            }
            match first {
                None => first = Some(name),
                Some(other) => out.push(self.error(
                    name,
                    format!("cannot be combined with {other}; choose one source of token keys"),
                )),
            }
        }
        match first {
            Some(source) if !self.auth_tokens.is_empty() && usable(&[AUTH_TOKENS]) => {
                out.push(self.error(
                    AUTH_TOKENS,
                    format!(
                        "cannot be combined with JWT authentication ({source}): a static token carries no identity and no channels; use one or the other"
                    ),
                ));
            }
            Some(_) => {}
            None if usable(&[JWT_SECRET, JWT_PUBLIC_KEY_FILE, JWT_JWKS_FILE]) => {
                let jwt_only = [
                    (JWT_ISSUER, self.jwt_issuer.is_some()),
                    (JWT_AUDIENCE, self.jwt_audience.is_some()),
                    (ANONYMOUS_CHANNELS, !self.anonymous_channels.is_empty()),
                ];
                for (name, set) in jwt_only {
                    if set && usable(&[name]) {
                        out.push(self.error(
                            name,
                            format!(
                                "has no effect without {JWT_SECRET}, {JWT_PUBLIC_KEY_FILE} or {JWT_JWKS_FILE}: tokens are not checked"
                            ),
                        ));
                    }
                }
            }
            None => {}
        }
    }

    /// An error about setting `env` with its current value and origin.
    fn error(&self, env: &'static str, rule: String) -> ConfigError {
        ConfigError {
            setting: env.to_owned(),
            origin: self.origins.get(env).copied(),
            value: self.shown(env),
            rule,
        }
    }

    /// A rule between two settings, reported on `first` (e.g. the pause
    /// threshold) unless only `second` was given explicitly: the user should
    /// be pointed at the value they wrote, not at a default.
    fn order_error(
        &self,
        first: &'static str,
        first_must_be: &str,
        second: &'static str,
        second_must_be: &str,
        why: &str,
    ) -> ConfigError {
        let (blamed, other) = self.blame(first, second);
        let relation = if blamed == first {
            first_must_be
        } else {
            second_must_be
        };
        self.error(
            blamed,
            format!(
                "must be {relation} {} ({}){why}",
                self.name(other),
                self.shown(other)
            ),
        )
    }

    /// `(blamed, other)`: `first`, unless only `second` was given explicitly.
    fn blame(&self, first: &'static str, second: &'static str) -> (&'static str, &'static str) {
        if self.origins.contains_key(first) || !self.origins.contains_key(second) {
            (first, second)
        } else {
            (second, first)
        }
    }

    /// A setting's name as the user gave it: its flag if it came from the
    /// command line, else its environment variable.
    fn name(&self, env: &'static str) -> &'static str {
        match (self.origins.get(env), Setting::by_env(env)) {
            (Some(Origin::Flag), Some(setting)) => setting.flag,
            _ => env,
        }
    }

    /// A setting's value for people: credentials masked, unset values as
    /// `derived` or `unset`.
    fn shown(&self, env: &str) -> String {
        let Some(setting) = Setting::by_env(env) else {
            return String::new();
        };
        let value = self.get(env).unwrap_or(Value::Unset);
        if value.is_empty() {
            if setting.default == DERIVED {
                DERIVED.to_owned()
            } else {
                UNSET.to_owned()
            }
        } else if setting.is_secret() {
            "***".to_owned()
        } else {
            value.text()
        }
    }
}

/// The value of the highest-precedence source that has `env`.
fn winning_value<'a>(sources: &'a [Source], env: &str) -> Option<(Origin, &'a str)> {
    Origin::BY_PRECEDENCE.into_iter().find_map(|origin| {
        sources
            .iter()
            .filter(|s| s.origin == origin)
            .find_map(|s| s.values.get(env))
            .map(|value| (origin, value.as_str()))
    })
}

/// Whether two listeners would fight over a port: the same non-zero port on
/// the same address, or on any address when one of them binds all of them.
fn addrs_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The largest edit distance from a setting's name at which an unknown
/// `SURGE_*` key is taken for a typo of it rather than a foreign variable.
pub const TYPO_DISTANCE: usize = 2;

fn is_unknown(key: &str) -> bool {
    key.starts_with("SURGE_") && Setting::by_env(key).is_none()
}

/// The error for an unknown `SURGE_*` key that is a near miss of `setting`.
fn unknown_key(key: &str, value: &str, origin: Origin, setting: &Setting) -> ConfigError {
    // The value of a misspelt credential is still a credential.
    let looks_secret = setting.is_secret()
        || ["TOKEN", "PASS", "SECRET", "CRED", "KEY"]
            .iter()
            .any(|word| key.contains(word));
    ConfigError {
        setting: key.to_owned(),
        origin: Some(origin),
        value: if looks_secret && !value.is_empty() {
            "***".to_owned()
        } else {
            value.to_owned()
        },
        rule: format!("unknown setting; did you mean {}?", setting.env),
    }
}

/// The setting nearest to `key` by edit distance, if within
/// [`TYPO_DISTANCE`]. Ties go to the first in [`SETTINGS`], so the
/// suggestion is deterministic.
fn near_setting(key: &str) -> Option<&'static Setting> {
    SETTINGS
        .iter()
        .map(|s| (edit_distance(key, s.env), s))
        .min_by_key(|(distance, _)| *distance)
        .filter(|(distance, _)| *distance <= TYPO_DISTANCE)
        .map(|(_, setting)| setting)
}

/// Levenshtein distance over bytes (setting names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.as_bytes().iter().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}
