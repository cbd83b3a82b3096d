//! What a value of each kind of setting must look like: parsing the text a
//! user wrote into a typed [`Value`], and the per-value rule (range, shape)
//! it must pass. The same [`Spec::check`] serves values read from text and
//! values a program put into a `Config`, so both meet the same rules.

use std::marker::PhantomData;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::secret::Secret;
use super::units::{format_bytes, format_duration, parse_bytes, parse_duration};

/// The largest limit a setting can have: NATS stores stream limits as
/// signed 64-bit numbers. A rule with this maximum reads "at least <min>".
pub(super) const UNBOUNDED: u64 = i64::MAX as u64;

/// The shortest HMAC secret for JWTs: 256 bits, HS256's hash size (RFC
/// 7518 §3.2 requires a key at least as long as the hash).
pub(super) const MIN_JWT_SECRET_BYTES: usize = 32;

/// The kind of a setting and its limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Spec {
    SocketAddr,
    WsPath,
    Int {
        min: u64,
        max: u64,
        optional: bool,
    },
    Percent,
    Dur {
        min: Duration,
        max: Duration,
        whole_seconds: bool,
    },
    Bytes {
        min: u64,
        max: u64,
        optional: bool,
    },
    Bool,
    Choice(&'static [&'static str]),
    Origins,
    Tokens,
    /// One secret token sent as `Authorization: Bearer <token>`.
    BearerToken,
    NatsUrl,
    Text,
    Secret,
    FilePath,
    StreamName,
    Subjects,
    /// Channel patterns a client may read; empty is none.
    Channels,
    /// An HMAC secret for JWTs: at least 32 bytes.
    JwtSecret,
    Unknown,
}

/// A setting's value, independent of the `Config` field that holds it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    /// An optional setting with no value (derived by the server, or off).
    Unset,
    Addr(std::net::SocketAddr),
    Int(u64),
    Percent(f64),
    Dur(Duration),
    Bytes(u64),
    Bool(bool),
    Choice(&'static str),
    Text(String),
    List(Vec<String>),
}

impl Value {
    /// The value in the notation a user would write.
    pub(super) fn text(&self) -> String {
        match self {
            Value::Unset => String::new(),
            Value::Addr(addr) => addr.to_string(),
            Value::Int(n) => n.to_string(),
            Value::Bytes(n) => format_bytes(*n),
            Value::Percent(p) => p.to_string(),
            Value::Dur(d) => format_duration(*d),
            Value::Bool(b) => b.to_string(),
            Value::Choice(name) => (*name).to_owned(),
            Value::Text(text) => text.clone(),
            Value::List(items) => items.join(","),
        }
    }

    /// The value for structured output: numbers as numbers, sizes in bytes,
    /// durations in the configuration's notation (the key has no unit).
    pub(super) fn json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Unset => J::Null,
            Value::Int(n) | Value::Bytes(n) => J::from(*n),
            Value::Percent(p) => J::from(*p),
            Value::Bool(b) => J::Bool(*b),
            Value::List(items) => J::from(items.clone()),
            other => J::String(other.text()),
        }
    }

    /// Whether there is nothing to show (unset, or an empty list).
    pub(super) fn is_empty(&self) -> bool {
        match self {
            Value::Unset => true,
            Value::List(items) => items.is_empty(),
            _ => false,
        }
    }
}

/// How a `Config` field of type `T` is read into a [`Value`] and stored
/// back from one: the `kind` of an entry of the settings table. A field type
/// with no impl for its entry's kind does not compile; a kind that does not
/// match the entry's rule is caught by the tests, which round-trip every
/// setting through `get` and `set`.
pub(super) trait Kind<T> {
    /// The field's value.
    fn get(field: &T) -> Value;
    /// The field's new value. It already passed the setting's rule, so the
    /// conversion fits; a kind mismatch is a bug in the settings table,
    /// reported, not panicked.
    fn set(value: Value) -> Result<T, String>;
}

/// The error of a value of the wrong kind for a field, or of an unknown
/// setting.
pub(super) fn mismatch() -> String {
    "internal error: this setting has no field of that kind".to_owned()
}

// The kinds, named like the `Value` each one produces. They are types only:
// no value of them is ever made.

/// An IP address and port: `SocketAddr`.
pub(super) enum Addr {}
/// A count: `u32` or `u64`.
pub(super) enum Int {}
/// A size in bytes: `usize` or `u64`.
pub(super) enum Bytes {}
/// A percentage: `f64`.
pub(super) enum Percent {}
/// A `Duration`.
pub(super) enum Dur {}
/// A `bool`.
pub(super) enum Bool {}
/// One of an enum's names: a [`Named`] enum.
pub(super) enum Choice {}
/// Text: `String`, a [`Secret`] or a `PathBuf`.
pub(super) enum Text {}
/// A comma-separated list: `Vec` of `String` or of [`Secret`].
pub(super) enum List {}
/// `Option` of a field of kind `K`: `None` is [`Value::Unset`] (derived by
/// the server, or off).
pub(super) struct Optional<K>(PhantomData<K>);

/// An enum of the configuration that has names (see `named_enum!`).
pub(super) trait Named: Copy + 'static {
    fn name(self) -> &'static str;
    fn by_name(name: &str) -> Option<Self>;
}

/// A field type that holds text.
pub(super) trait TextField: Sized {
    fn to_text(&self) -> String;
    fn from_text(text: String) -> Self;
}

impl TextField for String {
    fn to_text(&self) -> String {
        self.clone()
    }
    fn from_text(text: String) -> Self {
        text
    }
}

impl TextField for Secret {
    fn to_text(&self) -> String {
        self.expose().to_owned()
    }
    fn from_text(text: String) -> Self {
        Secret::new(text)
    }
}

impl TextField for PathBuf {
    fn to_text(&self) -> String {
        self.to_string_lossy().into_owned()
    }
    fn from_text(text: String) -> Self {
        PathBuf::from(text)
    }
}

impl Kind<SocketAddr> for Addr {
    fn get(field: &SocketAddr) -> Value {
        Value::Addr(*field)
    }
    fn set(value: Value) -> Result<SocketAddr, String> {
        match value {
            Value::Addr(addr) => Ok(addr),
            _ => Err(mismatch()),
        }
    }
}

impl<T: Copy + TryInto<u64> + TryFrom<u64>> Kind<T> for Int {
    fn get(field: &T) -> Value {
        Value::Int((*field).try_into().unwrap_or(u64::MAX))
    }
    fn set(value: Value) -> Result<T, String> {
        match value {
            Value::Int(n) => T::try_from(n).map_err(|_| mismatch()),
            _ => Err(mismatch()),
        }
    }
}

impl<T: Copy + TryInto<u64> + TryFrom<u64>> Kind<T> for Bytes {
    fn get(field: &T) -> Value {
        Value::Bytes((*field).try_into().unwrap_or(u64::MAX))
    }
    fn set(value: Value) -> Result<T, String> {
        match value {
            Value::Bytes(n) => T::try_from(n).map_err(|_| mismatch()),
            _ => Err(mismatch()),
        }
    }
}

impl Kind<f64> for Percent {
    fn get(field: &f64) -> Value {
        Value::Percent(*field)
    }
    fn set(value: Value) -> Result<f64, String> {
        match value {
            Value::Percent(p) => Ok(p),
            _ => Err(mismatch()),
        }
    }
}

impl Kind<Duration> for Dur {
    fn get(field: &Duration) -> Value {
        Value::Dur(*field)
    }
    fn set(value: Value) -> Result<Duration, String> {
        match value {
            Value::Dur(d) => Ok(d),
            _ => Err(mismatch()),
        }
    }
}

impl Kind<bool> for Bool {
    fn get(field: &bool) -> Value {
        Value::Bool(*field)
    }
    fn set(value: Value) -> Result<bool, String> {
        match value {
            Value::Bool(b) => Ok(b),
            _ => Err(mismatch()),
        }
    }
}

impl<T: Named> Kind<T> for Choice {
    fn get(field: &T) -> Value {
        Value::Choice(field.name())
    }
    fn set(value: Value) -> Result<T, String> {
        match value {
            Value::Choice(name) => T::by_name(name).ok_or_else(mismatch),
            _ => Err(mismatch()),
        }
    }
}

impl<T: TextField> Kind<T> for Text {
    fn get(field: &T) -> Value {
        Value::Text(field.to_text())
    }
    fn set(value: Value) -> Result<T, String> {
        match value {
            Value::Text(text) => Ok(T::from_text(text)),
            _ => Err(mismatch()),
        }
    }
}

impl<T: TextField> Kind<Vec<T>> for List {
    fn get(field: &Vec<T>) -> Value {
        Value::List(field.iter().map(T::to_text).collect())
    }
    fn set(value: Value) -> Result<Vec<T>, String> {
        match value {
            Value::List(items) => Ok(items.into_iter().map(T::from_text).collect()),
            _ => Err(mismatch()),
        }
    }
}

impl<T, K: Kind<T>> Kind<Option<T>> for Optional<K> {
    fn get(field: &Option<T>) -> Value {
        field.as_ref().map_or(Value::Unset, K::get)
    }
    fn set(value: Value) -> Result<Option<T>, String> {
        match value {
            Value::Unset => Ok(None),
            value => K::set(value).map(Some),
        }
    }
}

impl Spec {
    /// Credentials: never printed, only `***`.
    pub(super) fn is_secret(self) -> bool {
        matches!(
            self,
            Spec::Tokens | Spec::BearerToken | Spec::Secret | Spec::JwtSecret
        )
    }

    /// Whether an empty value means "unset" rather than being an error.
    fn is_optional(self) -> bool {
        match self {
            Spec::Int { optional, .. } | Spec::Bytes { optional, .. } => optional,
            Spec::NatsUrl
            | Spec::Text
            | Spec::Secret
            | Spec::BearerToken
            | Spec::FilePath
            | Spec::JwtSecret => true,
            _ => false,
        }
    }

    /// The rule in words, as it appears after the value in an error.
    pub(super) fn rule(self) -> String {
        let derived = |optional: bool| {
            if optional {
                ", or empty to derive it at start"
            } else {
                ""
            }
        };
        match self {
            Spec::SocketAddr => "must be an IP address and port, e.g. 0.0.0.0:8080".to_owned(),
            Spec::WsPath => "must be a path that starts with '/' and has no spaces, '?' or '#'".to_owned(),
            Spec::Int { min, max, optional } if max >= UNBOUNDED => {
                format!("must be an integer of at least {min}{}", derived(optional))
            }
            Spec::Int { min, max, optional } => {
                format!("must be an integer from {min} to {max}{}", derived(optional))
            }
            Spec::Percent => "must be a percentage above 0 and at most 100".to_owned(),
            Spec::Dur { min, max, whole_seconds: true } => format!(
                "must be a whole number of seconds from {} to {}",
                format_duration(min),
                format_duration(max)
            ),
            Spec::Dur { min, max, .. } => format!(
                "must be a duration from {} to {}",
                format_duration(min),
                format_duration(max)
            ),
            Spec::Bytes { min, max, optional } if max >= UNBOUNDED => format!(
                "must be a size of at least {}{}",
                format_bytes(min),
                derived(optional)
            ),
            Spec::Bytes { min, max, optional } => format!(
                "must be a size from {} to {}{}",
                format_bytes(min),
                format_bytes(max),
                derived(optional)
            ),
            Spec::Bool => "must be true or false (or 1/0, yes/no)".to_owned(),
            Spec::Choice(names) => format!("must be one of: {}", names.join(", ")),
            Spec::Origins => "must be a comma-separated list of origins like https://example.com or http://localhost:3000, or empty to accept any origin".to_owned(),
            Spec::Tokens => "must be a comma-separated list of tokens of visible ASCII characters, or empty for no authentication".to_owned(),
            Spec::BearerToken => "must be one token of visible ASCII characters (no spaces: it is sent as Authorization: Bearer <token>), or empty for none".to_owned(),
            Spec::NatsUrl => "must be nats://host[:port] or tls://host[:port], comma-separated for a cluster, or empty for the embedded broker".to_owned(),
            Spec::Text | Spec::Secret => "must not be empty (leave it unset instead)".to_owned(),
            Spec::FilePath => "must be a file path (leave it unset instead of empty)".to_owned(),
            Spec::StreamName => "must be a stream name without spaces, '.', '*', '>', '/' or '\\'".to_owned(),
            Spec::Channels => "must be a comma-separated list of channel patterns like odin.global.>: dot-separated non-empty tokens, '*' only as a whole token, '>' only as the whole last token, or empty for none".to_owned(),
            Spec::JwtSecret => format!("must be at least {MIN_JWT_SECRET_BYTES} bytes (RFC 7518: an HMAC key as long as the hash), or empty for none"),
            Spec::Subjects => "must be a comma-separated list of NATS subjects like odin.token.>: dot-separated non-empty tokens, '*' only as a whole token, '>' only as the whole last token".to_owned(),
            Spec::Unknown => "unknown setting".to_owned(),
        }
    }

    /// The rule followed by what exactly is wrong.
    fn rule_with(self, detail: impl std::fmt::Display) -> String {
        format!("{} ({detail})", self.rule())
    }

    /// Reads the text of a value and checks it against the rule. Surrounding
    /// whitespace is ignored; for an optional setting, empty means unset.
    pub(super) fn parse(self, raw: &str) -> Result<Value, String> {
        let text = raw.trim();
        if text.is_empty() && self.is_optional() {
            return Ok(Value::Unset);
        }
        let value = match self {
            Spec::SocketAddr => Value::Addr(text.parse().map_err(|_| self.rule())?),
            Spec::Int { .. } => Value::Int(text.parse().map_err(|_| self.rule())?),
            Spec::Percent => {
                let number = text.strip_suffix('%').unwrap_or(text).trim_end();
                Value::Percent(number.parse().map_err(|_| self.rule())?)
            }
            Spec::Dur { .. } => Value::Dur(parse_duration(text).map_err(|e| self.rule_with(e))?),
            Spec::Bytes { .. } => Value::Bytes(parse_bytes(text).map_err(|e| self.rule_with(e))?),
            Spec::Bool => Value::Bool(match text.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => return Err(self.rule()),
            }),
            Spec::Choice(names) => Value::Choice(
                names
                    .iter()
                    .find(|name| name.eq_ignore_ascii_case(text))
                    .ok_or_else(|| self.rule())?,
            ),
            Spec::Origins | Spec::Tokens | Spec::Subjects | Spec::Channels => {
                Value::List(split_list(text))
            }
            Spec::WsPath
            | Spec::NatsUrl
            | Spec::Text
            | Spec::Secret
            | Spec::BearerToken
            | Spec::FilePath
            | Spec::JwtSecret
            | Spec::StreamName => Value::Text(text.to_owned()),
            Spec::Unknown => return Err(self.rule()),
        };
        self.check(&value)?;
        Ok(value)
    }

    /// Checks a value against the rule; the error is the rule in words,
    /// with the offending part when the value has several.
    pub(super) fn check(self, value: &Value) -> Result<(), String> {
        let within = |ok: bool| if ok { Ok(()) } else { Err(self.rule()) };
        match (self, value) {
            (Spec::SocketAddr, Value::Addr(_)) | (Spec::Bool, Value::Bool(_)) => Ok(()),
            (Spec::WsPath, Value::Text(path)) => within(
                path.starts_with('/')
                    && !path
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#'),
            ),
            (Spec::Int { min, max, .. }, Value::Int(n))
            | (Spec::Bytes { min, max, .. }, Value::Bytes(n)) => within((min..=max).contains(n)),
            (Spec::Percent, Value::Percent(p)) => within(p.is_finite() && *p > 0.0 && *p <= 100.0),
            (
                Spec::Dur {
                    min,
                    max,
                    whole_seconds,
                },
                Value::Dur(d),
            ) => within((min..=max).contains(d) && (!whole_seconds || d.subsec_nanos() == 0)),
            (Spec::Choice(names), Value::Choice(name)) => within(names.contains(name)),
            (Spec::Origins, Value::List(items)) => items
                .iter()
                .try_for_each(|o| check_origin(o))
                .map_err(|e| self.rule_with(e)),
            (Spec::Tokens, Value::List(items)) => {
                check_tokens(items).map_err(|e| self.rule_with(e))
            }
            (Spec::Subjects, Value::List(items)) if items.is_empty() => {
                Err(self.rule_with("the stream needs at least one subject"))
            }
            (Spec::Subjects, Value::List(items)) => items
                .iter()
                .try_for_each(|s| check_subject(s))
                .map_err(|e| self.rule_with(e)),
            (Spec::Channels, Value::List(items)) => items
                .iter()
                .try_for_each(|s| {
                    check_subject(s)?;
                    crate::subjects::Pattern::parse(s)
                        .map(drop)
                        .map_err(|e| format!("\"{s}\": {e}"))
                })
                .map_err(|e| self.rule_with(e)),
            (Spec::JwtSecret, Value::Text(secret)) => within(secret.len() >= MIN_JWT_SECRET_BYTES),
            (Spec::NatsUrl, Value::Text(urls)) => urls
                .split(',')
                .try_for_each(|url| check_nats_url(url.trim()))
                .map_err(|e| self.rule_with(e)),
            (Spec::BearerToken, Value::Text(token)) => {
                within(!token.is_empty() && token.chars().all(|c| c.is_ascii_graphic()))
            }
            (Spec::Text | Spec::Secret | Spec::FilePath, Value::Text(text)) => {
                within(!text.trim().is_empty())
            }
            (Spec::StreamName, Value::Text(name)) => {
                check_stream_name(name).map_err(|e| self.rule_with(e))
            }
            (_, Value::Unset) if self.is_optional() => Ok(()),
            _ => Err(format!(
                "internal error: a value of the wrong kind for this setting ({})",
                self.rule()
            )),
        }
    }

    /// A value as it may appear in an error message: credentials masked,
    /// including ones mistakenly put in a NATS URL.
    pub(super) fn redact(self, raw: &str) -> String {
        if self.is_secret() && !raw.is_empty() {
            return "***".to_owned();
        }
        if self == Spec::NatsUrl && raw.contains('@') {
            return raw
                .split(',')
                .map(|url| match (url.find("://"), url.rfind('@')) {
                    (Some(start), Some(at)) if at > start => {
                        format!("{}***{}", &url[..start + 3], &url[at..])
                    }
                    _ => url.to_owned(),
                })
                .collect::<Vec<_>>()
                .join(",");
        }
        raw.to_owned()
    }
}

/// Splits a comma-separated list, trimming each entry; empty text is an
/// empty list, while an empty entry (`a,,b`) is kept for the check to report.
fn split_list(text: &str) -> Vec<String> {
    if text.is_empty() {
        return Vec::new();
    }
    text.split(',').map(|item| item.trim().to_owned()).collect()
}

const EMPTY_ENTRY: &str = "an entry is empty: two commas in a row, or one at an end";

/// `scheme://host[:port]`, the form browsers send in `Origin`.
fn check_origin(origin: &str) -> Result<(), String> {
    if origin.is_empty() {
        return Err(EMPTY_ENTRY.to_owned());
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return Err(format!(
            "\"{origin}\" has no scheme; write e.g. https://{origin}"
        ));
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err(format!("\"{origin}\" has an invalid scheme"));
    }
    if authority.contains(['/', '?', '#']) {
        return Err(format!(
            "\"{origin}\" has a path; an origin is only scheme://host[:port], with no trailing '/'"
        ));
    }
    let bad_host = || format!("\"{origin}\" has an invalid host");
    let (host_ok, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((ip, after)) = bracketed.split_once(']') else {
            return Err(bad_host());
        };
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(bad_host)?),
        };
        (ip.parse::<Ipv6Addr>().is_ok(), port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
        (ok, port)
    };
    if !host_ok {
        return Err(bad_host());
    }
    match port.map(str::parse::<u16>) {
        None | Some(Ok(1..)) => Ok(()),
        Some(_) => Err(format!("\"{origin}\" has an invalid port")),
    }
}

/// Tokens travel in a header or a query string: visible ASCII only. The
/// error names the entry by position, never by its (secret) text.
fn check_tokens(tokens: &[String]) -> Result<(), String> {
    for (index, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(EMPTY_ENTRY.to_owned());
        }
        if !token.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!(
                "token {} has a space or a character outside visible ASCII",
                index + 1
            ));
        }
    }
    Ok(())
}

/// One server of `SURGE_NATS_URL`.
fn check_nats_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err(EMPTY_ENTRY.to_owned());
    }
    let Some(rest) = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
    else {
        return Err(format!("\"{url}\" does not start with nats:// or tls://"));
    };
    if rest.contains('@') {
        return Err("credentials belong in SURGE_NATS_USER and SURGE_NATS_PASSWORD or SURGE_NATS_TOKEN, not in the URL, which is printed".to_owned());
    }
    if rest.is_empty() || rest.starts_with(':') {
        return Err(format!("\"{url}\" has no host"));
    }
    if rest.contains(|c: char| c.is_whitespace() || c.is_control() || c == '/') {
        return Err(format!("\"{url}\" has a space or a path"));
    }
    Ok(())
}

/// A JetStream stream name. NATS forbids these characters because stream
/// names become subject tokens and file names.
fn check_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".to_owned());
    }
    match name
        .chars()
        .find(|&c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        Some(c) if c.is_whitespace() || c.is_control() => Err("it contains a space".to_owned()),
        Some(c) => Err(format!("it contains '{c}'")),
        None => Ok(()),
    }
}

/// A NATS subject or pattern: dot-separated non-empty tokens, where `*` is a
/// whole token and `>` a whole last token. (The subjects module has the
/// full grammar; configuration only needs to refuse what NATS would.)
fn check_subject(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err(EMPTY_ENTRY.to_owned());
    }
    if subject.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!("\"{subject}\" contains a space"));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (index, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(format!(
                "\"{subject}\" has an empty token: a leading, trailing or double dot"
            ));
        }
        if *token == ">" && index + 1 != tokens.len() {
            return Err(format!("\"{subject}\" has '>' before its last token"));
        }
        if *token != "*" && *token != ">" && token.contains(['*', '>']) {
            return Err(format!(
                "\"{subject}\" has a wildcard inside a token; '*' and '>' must stand alone between dots"
            ));
        }
    }
    Ok(())
}
