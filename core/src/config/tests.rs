use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn env(pairs: &[(&str, &str)]) -> Source {
    Source::new(Origin::Env, pairs.iter().copied())
}

fn dotenv(pairs: &[(&str, &str)]) -> Source {
    Source::new(Origin::DotEnv, pairs.iter().copied())
}

fn flags(pairs: &[(&str, &str)]) -> Source {
    Source::new(Origin::Flag, pairs.iter().copied())
}

fn load(sources: &[Source]) -> Config {
    match Config::from_sources(sources) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid configuration, got:\n{errors}"),
    }
}

fn errors_of(sources: &[Source]) -> Vec<ConfigError> {
    match Config::from_sources(sources) {
        Ok(config) => panic!("expected errors, got a valid configuration: {config:?}"),
        Err(errors) => errors.0,
    }
}

/// The single error, as displayed.
fn only_error(sources: &[Source]) -> String {
    let errors = errors_of(sources);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    errors[0].to_string()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---- the table ----

#[test]
fn every_setting_is_well_formed() {
    let mut envs = BTreeSet::new();
    let mut flags = BTreeSet::new();
    for s in SETTINGS {
        assert!(envs.insert(s.env), "{} is listed twice", s.env);
        assert!(flags.insert(s.flag), "{} is listed twice", s.flag);
        assert!(s.env.starts_with("SURGE_"), "{}", s.env);
        assert!(s.flag.starts_with("--"), "{}", s.flag);
        assert_eq!(s.env, format!("SURGE_{}", s.key.to_ascii_uppercase()));
        assert_eq!(s.flag, format!("--{}", s.key.replace('_', "-")));
        assert!(!s.doc.trim().is_empty(), "{} has no doc", s.env);
        assert!(!s.doc.contains('\n'), "{} doc is not one line", s.env);
        assert!(!s.default.is_empty(), "{} has no default text", s.env);
        assert_ne!(s.spec(), rules::Spec::Unknown, "{} has no rule", s.env);
        assert!(s.rule().starts_with("must "), "{}: {}", s.env, s.rule());
        assert_eq!(Setting::by_env(s.env), Some(s));
        assert_eq!(Setting::by_flag(s.flag), Some(s));
    }
    assert_eq!(Setting::by_env("SURGE_NOPE"), None);
    assert_eq!(Setting::by_flag("--nope"), None);
}

#[test]
fn the_table_has_unique_names_and_every_field_round_trips() {
    let mut keys = BTreeSet::new();
    let mut envs = BTreeSet::new();
    let mut flags = BTreeSet::new();
    for s in SETTINGS {
        assert!(keys.insert(s.key), "key {} is declared twice", s.key);
        assert!(envs.insert(s.env), "env {} is declared twice", s.env);
        assert!(flags.insert(s.flag), "flag {} is declared twice", s.flag);

        // get(set(default)) gives the default back and changes nothing
        // else: the entry's kind fits its field.
        let default = Config::default();
        let value = default.get(s.env).expect(s.env);
        let mut config = Config::default();
        assert_eq!(config.set(s.env, value.clone()), Ok(()), "{}", s.env);
        assert_eq!(config.get(s.env), Some(value.clone()), "{}", s.env);
        assert_eq!(config, default, "{}", s.env);
        // The value is of the kind the entry's rule parses.
        assert_eq!(s.spec().check(&value), Ok(()), "{}", s.env);
    }
    assert_eq!(keys.len(), SETTINGS.len());
    assert_eq!(Config::default().get("SURGE_NOPE"), None);
    assert!(
        Config::default()
            .set("SURGE_NOPE", rules::Value::Unset)
            .is_err()
    );
}

#[test]
fn documented_defaults_yield_the_default_config() {
    let mut all = BTreeMap::new();
    for s in SETTINGS {
        // `derived` and `unset` settings are given an empty value: unset.
        let text = s.literal_default().unwrap_or("");
        all.insert(s.env.to_owned(), text.to_owned());
        let mut one = load(&[env(&[(s.env, text)])]);
        assert_eq!(one.origins.remove(s.env), Some(Origin::Env), "{}", s.env);
        assert_eq!(one, Config::default(), "{}={text:?}", s.env);
    }
    let mut config = load(&[Source {
        origin: Origin::DotEnv,
        values: all,
    }]);
    assert_eq!(config.origins.len(), SETTINGS.len());
    config.origins.clear();
    assert_eq!(config, Config::default());
}

#[test]
fn defaults_are_shown_as_documented() {
    let config = Config::default();
    for s in SETTINGS {
        assert_eq!(config.shown(s.env), s.default, "{}", s.env);
    }
    assert_eq!(
        Setting::by_env("SURGE_BACKLOG").unwrap().literal_default(),
        Some("4096")
    );
    assert_eq!(
        Setting::by_env("SURGE_SHARDS").unwrap().literal_default(),
        None
    );
    assert_eq!(
        Setting::by_env("SURGE_NATS_URL").unwrap().literal_default(),
        None
    );
}

#[test]
fn defaults_are_valid() {
    assert_eq!(Config::default().validate(), Ok(()));
    assert_eq!(load(&[]), Config::default());
    assert!(Config::default().origins.is_empty());
}

#[test]
fn enum_names_round_trip() {
    for name in SocketPreset::NAMES {
        assert_eq!(
            SocketPreset::from_name(name).map(SocketPreset::as_str),
            Some(*name)
        );
    }
    for name in LogLevel::NAMES {
        assert_eq!(LogLevel::from_name(name).map(LogLevel::as_str), Some(*name));
    }
    for name in LogFormat::NAMES {
        assert_eq!(
            LogFormat::from_name(name).map(LogFormat::as_str),
            Some(*name)
        );
    }
    assert_eq!(LogLevel::from_name("WARN"), Some(LogLevel::Warn));
    assert_eq!(LogLevel::from_name("verbose"), None);
    assert_eq!(SocketPreset::LowLatency.to_string(), "low-latency");
}

// ---- notation ----

#[test]
fn parse_duration_accepts_the_documented_forms() {
    let cases = [
        ("500ms", ms(500)),
        ("10s", ms(10_000)),
        ("2m", ms(120_000)),
        ("1h", ms(3_600_000)),
        ("1m30s", ms(90_000)),
        ("1d", ms(86_400_000)),
        ("1h0m5s", ms(3_605_000)),
        ("1s500ms", ms(1_500)),
        ("0s", ms(0)),
        ("  10s\t", ms(10_000)),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
    }
}

#[test]
fn parse_duration_refuses_with_a_reason() {
    use DurationError::*;
    let cases = [
        ("", Empty),
        ("   ", Empty),
        ("10", MissingUnit("10".into())),
        ("1m30", MissingUnit("30".into())),
        ("10sec", UnknownUnit("sec".into())),
        ("10S", UnknownUnit("S".into())),
        ("1.5s", Fraction),
        ("30s1m", UnitOrder),
        ("1s1s", UnitOrder),
        ("-5s", MissingNumber("-5s".into())),
        ("s", MissingNumber("s".into())),
        ("1m 30s", MissingNumber(" 30s".into())),
        ("99999999999999999999s", Overflow),
        ("999999999999999d", Overflow),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_duration(text), Err(expected), "{text:?}");
    }
    assert_eq!(
        parse_duration("10").unwrap_err().to_string(),
        "\"10\" has no unit; write e.g. 10s or 10ms"
    );
}

#[test]
fn format_duration_prints_what_parse_reads() {
    assert_eq!(format_duration(ms(500)), "500ms");
    assert_eq!(format_duration(ms(90_000)), "1m30s");
    assert_eq!(format_duration(ms(0)), "0s");
    assert_eq!(format_duration(ms(3_600_000)), "1h");
    assert_eq!(format_duration(ms(1_500)), "1s500ms");
    assert_eq!(format_duration(Duration::from_secs(365 * 86_400)), "365d");
    // Below a millisecond is dropped.
    assert_eq!(format_duration(Duration::from_micros(1_500)), "1ms");
    let mut n: u64 = 1;
    while n < 10_000_000_000_000 {
        for value in [n, n + 1, n * 7 - 1] {
            assert_eq!(parse_duration(&format_duration(ms(value))), Ok(ms(value)));
        }
        n *= 3;
    }
}

#[test]
fn parse_bytes_accepts_binary_units() {
    let cases = [
        ("4096", 4096),
        ("0", 0),
        ("512B", 512),
        ("64KiB", 64 << 10),
        ("64 KiB", 64 << 10),
        ("8K", 8 << 10),
        ("8ki", 8 << 10),
        ("50MiB", 50 << 20),
        ("50m", 50 << 20),
        ("1GiB", 1 << 30),
        ("1G", 1 << 30),
        ("2TiB", 2 << 40),
        (" 8KiB ", 8 << 10),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_bytes(text), Ok(expected), "{text}");
    }
}

#[test]
fn parse_bytes_refuses_with_a_reason() {
    use BytesError::*;
    let decimal = |unit: &str, binary| DecimalUnit {
        unit: unit.into(),
        binary,
    };
    let cases = [
        ("", Empty),
        ("8KB", decimal("KB", "KiB")),
        ("8kb", decimal("kb", "KiB")),
        ("50MB", decimal("MB", "MiB")),
        ("1GB", decimal("GB", "GiB")),
        ("1TB", decimal("TB", "TiB")),
        ("1.5MiB", Fraction),
        ("KiB", MissingNumber("KiB".into())),
        ("-1", MissingNumber("-1".into())),
        ("8XB", UnknownUnit("XB".into())),
        ("8 bytes", UnknownUnit("bytes".into())),
        ("99999999999999999999", Overflow),
        ("20000000TiB", Overflow),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_bytes(text), Err(expected), "{text:?}");
    }
    assert_eq!(
        parse_bytes("8KB").unwrap_err().to_string(),
        "\"KB\" could mean 1000 or 1024; write KiB for multiples of 1024"
    );
}

#[test]
fn format_bytes_prints_what_parse_reads() {
    assert_eq!(format_bytes(8192), "8KiB");
    assert_eq!(format_bytes(50 << 20), "50MiB");
    assert_eq!(format_bytes(1 << 30), "1GiB");
    assert_eq!(format_bytes(3 << 40), "3TiB");
    assert_eq!(format_bytes(1000), "1000B");
    assert_eq!(format_bytes(1536), "1536B");
    assert_eq!(format_bytes(0), "0B");
    for value in [
        0,
        1,
        1023,
        1024,
        1025,
        4096,
        1 << 20,
        (1 << 20) + 1,
        u64::MAX,
    ] {
        assert_eq!(parse_bytes(&format_bytes(value)), Ok(value));
    }
}

// ---- sources and precedence ----

#[test]
fn flag_beats_environment_beats_dotenv_whatever_the_order() {
    let d = dotenv(&[("SURGE_BACKLOG", "1")]);
    let e = env(&[("SURGE_BACKLOG", "2")]);
    let f = flags(&[("SURGE_BACKLOG", "3")]);
    for sources in [
        [d.clone(), e.clone(), f.clone()],
        [f.clone(), e.clone(), d.clone()],
        [e.clone(), d.clone(), f.clone()],
    ] {
        let config = load(&sources);
        assert_eq!(config.backlog, 3);
        assert_eq!(config.origins.get("SURGE_BACKLOG"), Some(&Origin::Flag));
    }
    for sources in [[d.clone(), e.clone()], [e.clone(), d.clone()]] {
        let config = load(&sources);
        assert_eq!(config.backlog, 2);
        assert_eq!(config.origins.get("SURGE_BACKLOG"), Some(&Origin::Env));
    }
    let config = load(&[d]);
    assert_eq!(config.backlog, 1);
    assert_eq!(config.origins.get("SURGE_BACKLOG"), Some(&Origin::DotEnv));
    // Two sources of one origin: the earlier one wins.
    let config = load(&[env(&[("SURGE_BACKLOG", "5")]), e]);
    assert_eq!(config.backlog, 5);
}

#[test]
fn shadowed_values_are_not_parsed() {
    let config = load(&[
        dotenv(&[("SURGE_BACKLOG", "abc")]),
        env(&[("SURGE_BACKLOG", "10")]),
    ]);
    assert_eq!(config.backlog, 10);
}

#[test]
fn empty_unsets_an_optional_setting_from_a_lower_origin() {
    let config = load(&[
        dotenv(&[
            ("SURGE_MAX_CONNECTIONS", "100"),
            ("SURGE_NATS_URL", "nats://a:4222"),
        ]),
        env(&[("SURGE_MAX_CONNECTIONS", ""), ("SURGE_NATS_URL", "  ")]),
    ]);
    assert_eq!(config.max_connections, None);
    assert_eq!(config.nats_url, None);
    assert_eq!(
        config.origins.get("SURGE_MAX_CONNECTIONS"),
        Some(&Origin::Env)
    );
}

#[test]
fn values_are_trimmed_and_case_insensitive_where_it_is_safe() {
    let config = load(&[env(&[
        ("SURGE_BACKLOG", "  128 "),
        ("SURGE_LOG_LEVEL", "DEBUG"),
        ("SURGE_SOCKET_PRESET", " Low-Latency"),
        ("SURGE_CPU_REJECT_PERCENT", "70%"),
        ("SURGE_CPU_PAUSE_PERCENT", "85.5"),
        (
            "SURGE_ALLOWED_ORIGINS",
            "https://a.example, http://localhost:3000 ,http://[::1]:8080",
        ),
        ("SURGE_JS_SUBJECTS", "odin.*.trade , odin.global.>"),
    ])]);
    assert_eq!(config.backlog, 128);
    assert_eq!(config.log_level, LogLevel::Debug);
    assert_eq!(config.socket_preset, SocketPreset::LowLatency);
    assert_eq!(config.cpu_reject_percent, 70.0);
    assert_eq!(config.cpu_pause_percent, 85.5);
    assert_eq!(
        config.allowed_origins,
        [
            "https://a.example",
            "http://localhost:3000",
            "http://[::1]:8080"
        ]
    );
    assert_eq!(config.js_subjects, ["odin.*.trade", "odin.global.>"]);
}

#[test]
fn booleans_accept_the_usual_spellings() {
    for (text, expected) in [
        ("true", true),
        ("TRUE", true),
        ("1", true),
        ("yes", true),
        ("Yes", true),
        ("false", false),
        ("0", false),
        ("no", false),
        ("NO", false),
    ] {
        let config = load(&[env(&[("SURGE_JS_UPDATE_STREAM", text)])]);
        assert_eq!(config.js_update_stream, expected, "{text}");
    }
}

#[test]
fn nats_settings_are_read() {
    let config = load(&[env(&[
        ("SURGE_NATS_URL", "nats://n1:4222, tls://n2:4222,nats://n3"),
        ("SURGE_NATS_USER", "odin"),
        ("SURGE_NATS_PASSWORD", "hunter2"),
        ("SURGE_NATS_TLS_CA", "/etc/surge/ca.pem"),
        ("SURGE_JS_REPLICAS", "3"),
    ])]);
    assert_eq!(
        config.nats_servers(),
        ["nats://n1:4222", "tls://n2:4222", "nats://n3"]
    );
    assert_eq!(
        config.nats_password.as_ref().map(Secret::expose),
        Some("hunter2")
    );
    assert_eq!(config.nats_tls_ca, Some(PathBuf::from("/etc/surge/ca.pem")));
    assert_eq!(config.js_replicas, 3);
    assert!(Config::default().nats_servers().is_empty());
}

#[test]
fn near_misses_of_a_setting_are_errors_with_a_suggestion() {
    let errors = errors_of(&[env(&[
        ("SURGE_BAKLOG", "100"),
        ("SURGE_MAX_CONECTION", "100"),
        ("SURGE_FOO", "1"),
        ("PATH", "/usr/bin"),
        ("surge_backlog", "1"),
        ("SURGEON", "x"),
    ])]);
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "SURGE_BAKLOG=100 (from environment): unknown setting; did you mean SURGE_BACKLOG?",
            "SURGE_MAX_CONECTION=100 (from environment): unknown setting; did you mean SURGE_MAX_CONNECTIONS?",
        ]
    );
    // In .env files too, and the value of a misspelt credential stays hidden.
    let error = only_error(&[dotenv(&[("SURGE_NATS_PASWORD", "hunter2")])]);
    assert_eq!(
        error,
        "SURGE_NATS_PASWORD=*** (from .env file): unknown setting; did you mean SURGE_NATS_PASSWORD?"
    );
}

/// What Kubernetes injects for a Service named `surge`.
const KUBERNETES_VARS: &[(&str, &str)] = &[
    ("SURGE_SERVICE_HOST", "10.96.0.12"),
    ("SURGE_SERVICE_PORT", "8080"),
    ("SURGE_SERVICE_PORT_WS", "8080"),
    ("SURGE_SERVICE_PORT_ADMIN", "9090"),
    ("SURGE_PORT", "tcp://10.96.0.12:8080"),
    ("SURGE_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
    ("SURGE_PORT_8080_TCP_ADDR", "10.96.0.12"),
    ("SURGE_PORT_8080_TCP_PORT", "8080"),
    ("SURGE_PORT_8080_TCP_PROTO", "tcp"),
    ("SURGE_PORT_9090_TCP", "tcp://10.96.0.12:9090"),
    ("SURGE_PORT_9090_TCP_ADDR", "10.96.0.12"),
    ("SURGE_PORT_9090_TCP_PORT", "9090"),
    ("SURGE_PORT_9090_TCP_PROTO", "tcp"),
];

#[test]
fn unknown_keys_far_from_every_setting_are_ignored_and_listed() {
    let mut vars = KUBERNETES_VARS.to_vec();
    vars.extend([
        ("SURGE_MAX_CONN", "100"),
        ("SURGE_FOO", "1"),
        ("SURGE_BACKLOG", "64"),
    ]);
    let sources = [
        env(&vars),
        dotenv(&[("SURGE_FOO", "2"), ("SURGE_ZONE", "a")]),
    ];
    let config = load(&sources);
    assert_eq!(config.backlog, 64);
    let mut expected: Vec<&str> = KUBERNETES_VARS.iter().map(|(k, _)| *k).collect();
    expected.extend(["SURGE_MAX_CONN", "SURGE_FOO", "SURGE_ZONE"]);
    expected.sort_unstable();
    assert_eq!(Config::ignored_keys(&sources), expected);
    // A near miss is an error, not ignored; a known key is neither.
    assert!(
        Config::ignored_keys(&[env(&[("SURGE_BAKLOG", "1"), ("SURGE_SHARDS", "2")])]).is_empty()
    );
}

// ---- value rules ----

/// A bad value for every setting that has a rule of its own, with a part of
/// the expected message.
const BAD_VALUES: &[(&str, &str, &str)] = &[
    (
        "SURGE_LISTEN",
        "localhost:8080",
        "must be an IP address and port",
    ),
    ("SURGE_LISTEN", "0.0.0.0", "must be an IP address and port"),
    ("SURGE_LISTEN", ":8080", "must be an IP address and port"),
    (
        "SURGE_ADMIN_LISTEN",
        "9090",
        "must be an IP address and port",
    ),
    ("SURGE_WS_PATH", "ws", "must be a path that starts with '/'"),
    ("SURGE_WS_PATH", "/web socket", "has no spaces"),
    ("SURGE_WS_PATH", "/ws?x=1", "'?'"),
    ("SURGE_WS_PATH", "", "must be a path"),
    ("SURGE_MAX_CONNECTIONS", "0", "from 1 to 10000000, or empty"),
    ("SURGE_MAX_CONNECTIONS", "10000001", "from 1 to 10000000"),
    ("SURGE_MAX_CONNECTIONS", "lots", "must be an integer"),
    ("SURGE_MAX_CONNECTIONS", "-1", "must be an integer"),
    ("SURGE_SHARDS", "0", "from 1 to 1024"),
    ("SURGE_SHARDS", "1025", "from 1 to 1024"),
    ("SURGE_BACKLOG", "0", "from 1 to 65535"),
    ("SURGE_BACKLOG", "65536", "from 1 to 65535"),
    ("SURGE_BACKLOG", "abc", "from 1 to 65535"),
    ("SURGE_BACKLOG", "1.5", "from 1 to 65535"),
    ("SURGE_BACKLOG", "", "from 1 to 65535"),
    ("SURGE_HANDSHAKE_TIMEOUT", "50ms", "from 100ms to 5m"),
    ("SURGE_HANDSHAKE_TIMEOUT", "6m", "from 100ms to 5m"),
    ("SURGE_HANDSHAKE_TIMEOUT", "10", "has no unit"),
    ("SURGE_MAX_HEAD_BYTES", "512", "from 1KiB to 64KiB"),
    ("SURGE_MAX_HEAD_BYTES", "128KiB", "from 1KiB to 64KiB"),
    ("SURGE_MAX_HEAD_BYTES", "8KB", "write KiB"),
    (
        "SURGE_ALLOWED_ORIGINS",
        "example.com",
        "has no scheme; write e.g. https://example.com",
    ),
    (
        "SURGE_ALLOWED_ORIGINS",
        "https://example.com/",
        "has a path",
    ),
    (
        "SURGE_ALLOWED_ORIGINS",
        "https://a.example,,https://b.example",
        "an entry is empty",
    ),
    (
        "SURGE_ALLOWED_ORIGINS",
        "https://exa mple.com",
        "invalid host",
    ),
    (
        "SURGE_ALLOWED_ORIGINS",
        "https://*.example.com",
        "invalid host",
    ),
    ("SURGE_ALLOWED_ORIGINS", "https://", "invalid host"),
    ("SURGE_ALLOWED_ORIGINS", "http://[::1", "invalid host"),
    ("SURGE_ALLOWED_ORIGINS", "http://host:0", "invalid port"),
    ("SURGE_ALLOWED_ORIGINS", "http://host:99999", "invalid port"),
    ("SURGE_ALLOWED_ORIGINS", "1http://host", "invalid scheme"),
    ("SURGE_AUTH_TOKENS", "a,,b", "an entry is empty"),
    ("SURGE_AUTH_TOKENS", "good,bad token", "token 2 has a space"),
    ("SURGE_AUTH_TOKENS", "tok\u{e9}n", "outside visible ASCII"),
    (
        "SURGE_JWT_SECRET",
        "too-short",
        "at least 32 bytes (RFC 7518",
    ),
    ("SURGE_ANONYMOUS_CHANNELS", "odin..x", "empty token"),
    (
        "SURGE_ANONYMOUS_CHANNELS",
        "odin.tok*",
        "wildcard inside a token",
    ),
    ("SURGE_TOKEN_REFRESH_NOTICE", "2d", "from 0s to 1d"),
    ("SURGE_JWT_LEEWAY", "10m", "from 0s to 5m"),
    ("SURGE_MAX_MESSAGE_BYTES", "256", "from 512B to 1MiB"),
    ("SURGE_MAX_MESSAGE_BYTES", "2MiB", "from 512B to 1MiB"),
    ("SURGE_CLIENT_RATE", "100001", "from 0 to 100000"),
    ("SURGE_CLIENT_RATE", "-1", "from 0 to 100000"),
    ("SURGE_CLIENT_BURST", "0", "from 1 to 100000"),
    ("SURGE_MAX_SUBSCRIPTIONS", "0", "from 1 to 10000"),
    ("SURGE_MAX_SUBSCRIPTIONS", "10001", "from 1 to 10000"),
    ("SURGE_OUTBOUND_QUEUE_BYTES", "1KiB", "from 4KiB to 64MiB"),
    ("SURGE_OUTBOUND_QUEUE_BYTES", "65MiB", "from 4KiB to 64MiB"),
    ("SURGE_REPLAY_WINDOW", "100001", "from 0 to 100000"),
    ("SURGE_REPLAY_MAX_BYTES", "512", "from 1KiB to 64MiB"),
    ("SURGE_REPLAY_MAX_BYTES", "65MiB", "from 1KiB to 64MiB"),
    ("SURGE_PING_INTERVAL", "500ms", "from 1s to 1h"),
    ("SURGE_PING_INTERVAL", "2h", "from 1s to 1h"),
    ("SURGE_IDLE_TIMEOUT", "0s", "from 1s to 1d"),
    ("SURGE_IDLE_TIMEOUT", "25h", "from 1s to 1d"),
    ("SURGE_THROTTLE_FULL_EVENTS", "0", "from 1 to 100"),
    ("SURGE_THROTTLE_FULL_EVENTS", "101", "from 1 to 100"),
    ("SURGE_THROTTLE_RECOVERY", "0s", "from 1s to 1h"),
    ("SURGE_THROTTLE_RECOVERY", "2h", "from 1s to 1h"),
    ("SURGE_CPU_REJECT_PERCENT", "0", "above 0 and at most 100"),
    ("SURGE_CPU_REJECT_PERCENT", "150", "above 0 and at most 100"),
    ("SURGE_CPU_REJECT_PERCENT", "NaN", "above 0 and at most 100"),
    ("SURGE_CPU_REJECT_PERCENT", "inf", "above 0 and at most 100"),
    (
        "SURGE_CPU_REJECT_PERCENT",
        "high",
        "above 0 and at most 100",
    ),
    (
        "SURGE_CPU_PAUSE_PERCENT",
        "100.5",
        "above 0 and at most 100",
    ),
    ("SURGE_CPU_PAUSE_PERCENT", "-5", "above 0 and at most 100"),
    (
        "SURGE_MEMORY_REJECT_BYTES",
        "1KiB",
        "at least 1MiB, or empty",
    ),
    ("SURGE_MEMORY_REJECT_BYTES", "lots", "at least 1MiB"),
    ("SURGE_MEMORY_PAUSE_BYTES", "100", "at least 1MiB"),
    (
        "SURGE_RETRY_AFTER",
        "1500ms",
        "whole number of seconds from 1s to 1h",
    ),
    ("SURGE_RETRY_AFTER", "500ms", "whole number of seconds"),
    ("SURGE_RETRY_AFTER", "2h", "whole number of seconds"),
    ("SURGE_BROKER_RATE", "10000001", "from 0 to 10000000"),
    ("SURGE_MAX_CONNECTIONS_PER_IP", "-1", "from 0 to 10000000"),
    (
        "SURGE_MAX_CONNECTIONS_PER_USER",
        "lots",
        "from 0 to 10000000",
    ),
    (
        "SURGE_MAX_HANDSHAKES_PER_IP",
        "10000001",
        "from 0 to 10000000",
    ),
    ("SURGE_HANDSHAKE_RATE_PER_IP", "1.5", "from 0 to 10000000"),
    ("SURGE_BROADCAST_RATE", "x", "from 0 to 10000000"),
    ("SURGE_INGEST_QUEUE", "0", "from 1 to 1000000"),
    ("SURGE_COMPRESSION", "gzip", "true or false"),
    ("SURGE_COMPRESSION_MIN_BYTES", "2MiB", "from 0B to 1MiB"),
    (
        "SURGE_NATS_URL",
        "http://nats:4222",
        "does not start with nats:// or tls://",
    ),
    ("SURGE_NATS_URL", "nats://", "has no host"),
    ("SURGE_NATS_URL", "nats://:4222", "has no host"),
    ("SURGE_NATS_URL", "nats://a:4222,", "an entry is empty"),
    ("SURGE_NATS_URL", "nats://h:4222/x", "has a space or a path"),
    (
        "SURGE_NATS_URL",
        "nats://u:p@h:4222",
        "credentials belong in SURGE_NATS_USER",
    ),
    ("SURGE_JS_STREAM", "ODIN.TOKENS", "contains '.'"),
    ("SURGE_JS_STREAM", "ODIN TOKENS", "contains a space"),
    ("SURGE_JS_STREAM", "ODIN*", "contains '*'"),
    ("SURGE_JS_STREAM", "A>B", "contains '>'"),
    ("SURGE_JS_STREAM", "a/b", "contains '/'"),
    ("SURGE_JS_STREAM", "a\\b", "contains '\\'"),
    ("SURGE_JS_STREAM", "", "it is empty"),
    ("SURGE_JS_SUBJECTS", "", "at least one subject"),
    ("SURGE_JS_SUBJECTS", "odin..x", "empty token"),
    ("SURGE_JS_SUBJECTS", ".odin", "empty token"),
    ("SURGE_JS_SUBJECTS", "odin.", "empty token"),
    ("SURGE_JS_SUBJECTS", "odin.>.x", "'>' before its last token"),
    ("SURGE_JS_SUBJECTS", "odin.tok*", "wildcard inside a token"),
    ("SURGE_JS_SUBJECTS", "odin.a>", "wildcard inside a token"),
    ("SURGE_JS_SUBJECTS", "odin.x,,odin.y", "an entry is empty"),
    ("SURGE_JS_SUBJECTS", "odin. x", "contains a space"),
    ("SURGE_JS_MAX_AGE", "0s", "from 1s to 365d"),
    ("SURGE_JS_MAX_AGE", "400d", "from 1s to 365d"),
    ("SURGE_JS_MAX_MSGS", "0", "at least 1"),
    ("SURGE_JS_MAX_BYTES", "1KiB", "at least 1MiB"),
    ("SURGE_JS_REPLICAS", "0", "from 1 to 5"),
    ("SURGE_JS_REPLICAS", "6", "from 1 to 5"),
    (
        "SURGE_JS_UPDATE_STREAM",
        "maybe",
        "must be true or false (or 1/0, yes/no)",
    ),
    (
        "SURGE_SOCKET_PRESET",
        "fast",
        "one of: default, low-latency, high-throughput",
    ),
    ("SURGE_SHUTDOWN_DRAIN", "11m", "from 0s to 10m"),
    ("SURGE_SHUTDOWN_DELAY", "11m", "from 0s to 10m"),
    ("SURGE_INBOUND_FRAMES_PER_SEC", "-1", "integer"),
    ("SURGE_INBOUND_BYTES_PER_SEC", "3GiB", "to 2GiB"),
    ("SURGE_READY_REQUIRES_BROKER", "maybe", "true or false"),
    ("SURGE_PUBLIC_HEALTHZ", "sometimes", "true or false"),
    ("SURGE_ADMIN_MAX_BODY_BYTES", "100", "from 1KiB"),
    (
        "SURGE_ADMIN_TOKEN",
        "two words",
        "one token of visible ASCII characters",
    ),
    ("SURGE_ADMIN_TOKEN", "t\u{f6}ken", "visible ASCII"),
    ("SURGE_ADMIN_INSECURE", "please", "true or false"),
    ("SURGE_ADMIN_PUBLISH_RATE", "1000001", "from 0 to 1000000"),
    ("SURGE_ADMIN_PUBLISH_RATE", "-1", "must be an integer"),
    (
        "SURGE_LOG_LEVEL",
        "verbose",
        "one of: error, warn, info, debug, trace",
    ),
    ("SURGE_LOG_FORMAT", "xml", "one of: text, json"),
];

/// Settings whose only rules involve other settings (tested below).
const CROSS_FIELD_ONLY: &[&str] = &[
    "SURGE_NATS_TOKEN",
    "SURGE_NATS_USER",
    "SURGE_NATS_PASSWORD",
    "SURGE_NATS_CREDS",
    "SURGE_NATS_TLS_CA",
    // Any path is a path, and any text an issuer or an audience; their
    // rules are with the other JWT settings (see `jwt_rules`).
    "SURGE_JWT_PUBLIC_KEY_FILE",
    "SURGE_JWT_JWKS_FILE",
    "SURGE_JWT_ISSUER",
    "SURGE_JWT_AUDIENCE",
    // Any path is a path; the pair's rule is in `tls_needs_both_files`.
    "SURGE_TLS_CERT",
    "SURGE_TLS_KEY",
];

#[test]
fn every_value_rule_rejects_a_bad_value() {
    for &(name, bad, expected) in BAD_VALUES {
        let errors = errors_of(&[env(&[(name, bad)])]);
        assert_eq!(errors.len(), 1, "{name}={bad:?}: {errors:#?}");
        let error = &errors[0];
        assert_eq!(error.setting, name);
        assert_eq!(error.origin, Some(Origin::Env));
        assert!(
            error.rule.contains(expected),
            "{name}={bad:?}: {:?} does not mention {expected:?}",
            error.rule
        );
    }
    let covered: BTreeSet<&str> = BAD_VALUES.iter().map(|(name, ..)| *name).collect();
    for s in SETTINGS {
        assert!(
            covered.contains(s.env) || CROSS_FIELD_ONLY.contains(&s.env),
            "{} has no bad-value case",
            s.env
        );
    }
}

#[test]
fn edge_values_are_accepted() {
    let config = load(&[env(&[
        ("SURGE_BACKLOG", "65535"),
        ("SURGE_SHARDS", "1024"),
        ("SURGE_MAX_CONNECTIONS", "10000000"),
        ("SURGE_HANDSHAKE_TIMEOUT", "100ms"),
        ("SURGE_MAX_HEAD_BYTES", "64KiB"),
        ("SURGE_REPLAY_WINDOW", "0"),
        ("SURGE_CLIENT_RATE", "0"),
        ("SURGE_CLIENT_BURST", "1"),
        ("SURGE_CPU_REJECT_PERCENT", "100"),
        ("SURGE_CPU_PAUSE_PERCENT", "100"),
        ("SURGE_RETRY_AFTER", "1h"),
        ("SURGE_SHUTDOWN_DRAIN", "0s"),
        ("SURGE_JS_MAX_AGE", "365d"),
        ("SURGE_JS_STREAM", "odin-tokens_2"),
        ("SURGE_JS_SUBJECTS", ">"),
        ("SURGE_ALLOWED_ORIGINS", "app+x://a-b.example:65535"),
        ("SURGE_AUTH_TOKENS", "s3cr3t!,other~token"),
    ])]);
    assert_eq!(config.backlog, 65535);
    assert_eq!(config.retry_after, Duration::from_secs(3600));
    assert_eq!(config.auth_tokens.len(), 2);
}

#[test]
fn validate_applies_the_same_rules_to_a_config_built_in_code() {
    let config = Config {
        backlog: 0,
        retry_after: ms(1_500),
        cpu_reject_percent: f64::NAN,
        js_subjects: Vec::new(),
        ws_path: "ws".to_owned(),
        nats_url: Some("nats://n:4222".to_owned()),
        nats_user: Some(String::new()),
        nats_password: Some(Secret::new("pw")),
        nats_creds: Some(PathBuf::new()),
        auth_tokens: vec![Secret::new("has space")],
        ..Config::default()
    };
    let errors = config.validate().unwrap_err();
    let settings: Vec<&str> = errors.iter().map(|e| e.setting.as_str()).collect();
    assert_eq!(
        settings,
        [
            "SURGE_WS_PATH",
            "SURGE_BACKLOG",
            "SURGE_AUTH_TOKENS",
            "SURGE_CPU_REJECT_PERCENT",
            "SURGE_RETRY_AFTER",
            "SURGE_NATS_USER",
            "SURGE_NATS_CREDS",
            "SURGE_JS_SUBJECTS",
            // A creds file and a user/password are two ways to authenticate.
            "SURGE_NATS_CREDS",
        ]
    );
    assert!(errors.iter().all(|e| e.origin.is_none()));
    assert!(!errors.to_string().contains("has space"));
}

// ---- cross-field rules ----

#[test]
fn listeners_must_not_overlap() {
    assert_eq!(
        only_error(&[env(&[("SURGE_LISTEN", "0.0.0.0:9090")])]),
        "SURGE_LISTEN=0.0.0.0:9090 (from environment): must not overlap SURGE_ADMIN_LISTEN (127.0.0.1:9090): both would bind port 9090"
    );
    assert_eq!(
        only_error(&[env(&[("SURGE_ADMIN_LISTEN", "127.0.0.1:8080")])]),
        "SURGE_ADMIN_LISTEN=127.0.0.1:8080 (from environment): must not overlap SURGE_LISTEN (0.0.0.0:8080): both would bind port 8080"
    );
    let same = &[env(&[
        ("SURGE_LISTEN", "[::]:7000"),
        ("SURGE_ADMIN_LISTEN", "[::1]:7000"),
    ])];
    assert_eq!(errors_of(same)[0].setting, "SURGE_ADMIN_LISTEN");
    assert_eq!(
        errors_of(&[env(&[("SURGE_ADMIN_LISTEN", "0.0.0.0:8080")])]).len(),
        1
    );
    // Different addresses on one port, and ephemeral ports, are fine.
    load(&[env(&[
        ("SURGE_LISTEN", "10.0.0.1:8080"),
        ("SURGE_ADMIN_LISTEN", "127.0.0.1:8080"),
    ])]);
    load(&[env(&[
        ("SURGE_LISTEN", "127.0.0.1:0"),
        ("SURGE_ADMIN_LISTEN", "127.0.0.1:0"),
    ])]);
}

#[test]
fn shards_must_not_exceed_max_connections() {
    assert_eq!(
        only_error(&[env(&[
            ("SURGE_SHARDS", "8"),
            ("SURGE_MAX_CONNECTIONS", "4")
        ])]),
        "SURGE_SHARDS=8 (from environment): must be <= SURGE_MAX_CONNECTIONS (4)"
    );
    assert_eq!(
        only_error(&[
            dotenv(&[("SURGE_SHARDS", "8")]),
            env(&[("SURGE_MAX_CONNECTIONS", "4")])
        ]),
        "SURGE_SHARDS=8 (from .env file): must be <= SURGE_MAX_CONNECTIONS (4)"
    );
    load(&[env(&[
        ("SURGE_SHARDS", "4"),
        ("SURGE_MAX_CONNECTIONS", "4"),
    ])]);
    load(&[env(&[("SURGE_SHARDS", "1024")])]);
    load(&[env(&[("SURGE_MAX_CONNECTIONS", "1")])]);
}

#[test]
fn idle_timeout_must_exceed_ping_interval() {
    assert_eq!(
        only_error(&[env(&[("SURGE_IDLE_TIMEOUT", "25s")])]),
        "SURGE_IDLE_TIMEOUT=25s (from environment): must be > SURGE_PING_INTERVAL (25s); otherwise live clients are cut off before they can answer a ping"
    );
    // Only the ping interval was given: that is the value to fix.
    assert_eq!(
        errors_of(&[env(&[("SURGE_PING_INTERVAL", "1m")])])[0].to_string(),
        "SURGE_PING_INTERVAL=1m (from environment): must be < SURGE_IDLE_TIMEOUT (1m); otherwise live clients are cut off before they can answer a ping"
    );
    load(&[env(&[
        ("SURGE_PING_INTERVAL", "1m"),
        ("SURGE_IDLE_TIMEOUT", "1m1s"),
    ])]);
}

#[test]
fn cpu_pause_must_be_at_least_reject() {
    assert_eq!(
        only_error(&[dotenv(&[("SURGE_CPU_PAUSE_PERCENT", "70")])]),
        "SURGE_CPU_PAUSE_PERCENT=70 (from .env file): must be >= SURGE_CPU_REJECT_PERCENT (75)"
    );
    assert_eq!(
        only_error(&[env(&[("SURGE_CPU_REJECT_PERCENT", "90")])]),
        "SURGE_CPU_REJECT_PERCENT=90 (from environment): must be <= SURGE_CPU_PAUSE_PERCENT (80)"
    );
    // The other setting is named the way the user gave it.
    assert_eq!(
        only_error(&[
            env(&[("SURGE_CPU_PAUSE_PERCENT", "70")]),
            flags(&[("SURGE_CPU_REJECT_PERCENT", "72.5")]),
        ]),
        "SURGE_CPU_PAUSE_PERCENT=70 (from environment): must be >= --cpu-reject-percent (72.5)"
    );
    assert_eq!(
        only_error(&[flags(&[("SURGE_CPU_REJECT_PERCENT", "90")])]),
        "--cpu-reject-percent=90 (from command line): must be <= SURGE_CPU_PAUSE_PERCENT (80)"
    );
    load(&[env(&[("SURGE_CPU_REJECT_PERCENT", "80")])]);
}

#[test]
fn memory_pause_must_be_at_least_reject_when_both_are_set() {
    assert_eq!(
        only_error(&[env(&[
            ("SURGE_MEMORY_PAUSE_BYTES", "1GiB"),
            ("SURGE_MEMORY_REJECT_BYTES", "2GiB"),
        ])]),
        "SURGE_MEMORY_PAUSE_BYTES=1GiB (from environment): must be >= SURGE_MEMORY_REJECT_BYTES (2GiB)"
    );
    load(&[env(&[("SURGE_MEMORY_PAUSE_BYTES", "1GiB")])]);
    load(&[env(&[("SURGE_MEMORY_REJECT_BYTES", "2GiB")])]);
    load(&[env(&[
        ("SURGE_MEMORY_PAUSE_BYTES", "2GiB"),
        ("SURGE_MEMORY_REJECT_BYTES", "2GiB"),
    ])]);
}

#[test]
fn nats_credentials_rules() {
    let url = ("SURGE_NATS_URL", "nats://n:4222");
    assert_eq!(
        only_error(&[env(&[url, ("SURGE_NATS_USER", "odin")])]),
        "SURGE_NATS_USER=odin (from environment): needs SURGE_NATS_PASSWORD as well"
    );
    assert_eq!(
        only_error(&[env(&[url, ("SURGE_NATS_PASSWORD", "pw")])]),
        "SURGE_NATS_PASSWORD=*** (from environment): needs SURGE_NATS_USER as well"
    );
    assert_eq!(
        only_error(&[env(&[
            url,
            ("SURGE_NATS_TOKEN", "t"),
            ("SURGE_NATS_USER", "odin"),
            ("SURGE_NATS_PASSWORD", "pw"),
        ])]),
        "SURGE_NATS_TOKEN=*** (from environment): cannot be combined with SURGE_NATS_USER/SURGE_NATS_PASSWORD; choose one way to authenticate"
    );
    assert_eq!(
        only_error(&[env(&[
            url,
            ("SURGE_NATS_TOKEN", "t"),
            ("SURGE_NATS_CREDS", "/etc/nats.creds")
        ])]),
        "SURGE_NATS_CREDS=/etc/nats.creds (from environment): cannot be combined with SURGE_NATS_TOKEN; choose one way to authenticate"
    );
    load(&[env(&[url, ("SURGE_NATS_TOKEN", "t")])]);
    load(&[env(&[url, ("SURGE_NATS_CREDS", "/etc/nats.creds")])]);
    load(&[env(&[
        url,
        ("SURGE_NATS_USER", "u"),
        ("SURGE_NATS_PASSWORD", "p"),
    ])]);
}

#[test]
fn broker_settings_need_a_nats_url() {
    let errors = errors_of(&[env(&[
        ("SURGE_NATS_TOKEN", "t"),
        ("SURGE_NATS_TLS_CA", "/etc/ca.pem"),
        ("SURGE_JS_REPLICAS", "3"),
    ])]);
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "SURGE_NATS_TOKEN=*** (from environment): has no effect without SURGE_NATS_URL: the embedded broker takes no credentials or TLS",
            "SURGE_NATS_TLS_CA=/etc/ca.pem (from environment): has no effect without SURGE_NATS_URL: the embedded broker takes no credentials or TLS",
            "SURGE_JS_REPLICAS=3 (from environment): must be 1 with the embedded broker; replicas need SURGE_NATS_URL pointing at a NATS cluster",
        ]
    );
    // A URL that fails its own rule does not also cause these.
    let errors = errors_of(&[env(&[
        ("SURGE_NATS_URL", "nats//x"),
        ("SURGE_JS_REPLICAS", "3"),
    ])]);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].setting, "SURGE_NATS_URL");
}

const JWT_SECRET: (&str, &str) = ("SURGE_JWT_SECRET", "0123456789abcdef0123456789abcdef");

#[test]
fn jwt_settings_are_read() {
    let config = load(&[env(&[
        JWT_SECRET,
        ("SURGE_JWT_ISSUER", "https://id.example"),
        ("SURGE_JWT_AUDIENCE", "surge"),
        (
            "SURGE_ANONYMOUS_CHANNELS",
            "odin.global.>, odin.token.*.trending",
        ),
        ("SURGE_TOKEN_REFRESH_NOTICE", "1m"),
        ("SURGE_JWT_LEEWAY", "5s"),
    ])]);
    assert_eq!(
        config.jwt_secret.as_ref().map(Secret::expose),
        Some(JWT_SECRET.1)
    );
    assert!(config.jwt_enabled());
    assert_eq!(config.jwt_issuer.as_deref(), Some("https://id.example"));
    assert_eq!(config.jwt_audience.as_deref(), Some("surge"));
    assert_eq!(
        config.anonymous_channels,
        ["odin.global.>", "odin.token.*.trending"]
    );
    assert_eq!(config.token_refresh_notice, Duration::from_secs(60));
    assert_eq!(config.jwt_leeway, Duration::from_secs(5));
    assert!(!Config::default().jwt_enabled());
    let keyed = load(&[env(&[("SURGE_JWT_JWKS_FILE", "/etc/surge/jwks.json")])]);
    assert!(keyed.jwt_enabled());
    assert_eq!(
        keyed.jwt_jwks_file,
        Some(PathBuf::from("/etc/surge/jwks.json"))
    );
}

#[test]
fn jwt_rules() {
    assert_eq!(
        only_error(&[env(&[
            JWT_SECRET,
            ("SURGE_JWT_PUBLIC_KEY_FILE", "/etc/surge/jwt.pem"),
        ])]),
        "SURGE_JWT_PUBLIC_KEY_FILE=/etc/surge/jwt.pem (from environment): cannot be combined with SURGE_JWT_SECRET; choose one source of token keys"
    );
    assert_eq!(
        only_error(&[env(&[
            ("SURGE_JWT_PUBLIC_KEY_FILE", "/etc/surge/jwt.pem"),
            ("SURGE_JWT_JWKS_FILE", "/etc/surge/jwks.json"),
        ])]),
        "SURGE_JWT_JWKS_FILE=/etc/surge/jwks.json (from environment): cannot be combined with SURGE_JWT_PUBLIC_KEY_FILE; choose one source of token keys"
    );
    assert_eq!(
        only_error(&[env(&[JWT_SECRET, ("SURGE_AUTH_TOKENS", "static-one")])]),
        "SURGE_AUTH_TOKENS=*** (from environment): cannot be combined with JWT authentication (SURGE_JWT_SECRET): a static token carries no identity and no channels; use one or the other"
    );
    let errors = errors_of(&[env(&[
        ("SURGE_JWT_ISSUER", "https://id.example"),
        ("SURGE_JWT_AUDIENCE", "surge"),
        ("SURGE_ANONYMOUS_CHANNELS", "odin.global.>"),
    ])]);
    let settings: Vec<&str> = errors.iter().map(|e| e.setting.as_str()).collect();
    assert_eq!(
        settings,
        [
            "SURGE_JWT_ISSUER",
            "SURGE_JWT_AUDIENCE",
            "SURGE_ANONYMOUS_CHANNELS",
        ]
    );
    assert!(
        errors[0].to_string().ends_with(
            "has no effect without SURGE_JWT_SECRET, SURGE_JWT_PUBLIC_KEY_FILE or SURGE_JWT_JWKS_FILE: tokens are not checked"
        ),
        "{}",
        errors[0]
    );
    // The two durations have defaults, so `.env.example`'s lines can be
    // uncommented without JWT.
    load(&[env(&[
        ("SURGE_TOKEN_REFRESH_NOTICE", "1m"),
        ("SURGE_JWT_LEEWAY", "5s"),
    ])]);
    // An empty anonymous list is no list.
    load(&[env(&[("SURGE_ANONYMOUS_CHANNELS", "")])]);
    // Each key source alone is fine.
    load(&[env(&[JWT_SECRET])]);
    load(&[env(&[("SURGE_JWT_PUBLIC_KEY_FILE", "/etc/surge/jwt.pem")])]);
}

#[test]
fn tls_needs_both_files() {
    assert_eq!(
        only_error(&[env(&[("SURGE_TLS_CERT", "/etc/surge/cert.pem")])]),
        "SURGE_TLS_CERT=/etc/surge/cert.pem (from environment): needs SURGE_TLS_KEY as well: TLS takes a certificate and its private key"
    );
    assert_eq!(
        only_error(&[flags(&[("SURGE_TLS_KEY", "/etc/surge/key.pem")])]),
        "--tls-key=/etc/surge/key.pem (from command line): needs SURGE_TLS_CERT as well: TLS takes a certificate and its private key"
    );
    let both = load(&[env(&[
        ("SURGE_TLS_CERT", "/etc/surge/cert.pem"),
        ("SURGE_TLS_KEY", "/etc/surge/key.pem"),
    ])]);
    assert!(both.tls_enabled());
    assert_eq!(both.tls_cert, Some(PathBuf::from("/etc/surge/cert.pem")));
    assert_eq!(both.tls_key, Some(PathBuf::from("/etc/surge/key.pem")));
    assert!(!Config::default().tls_enabled());
}

#[test]
fn a_value_that_failed_to_parse_causes_no_cross_field_noise() {
    let errors = errors_of(&[env(&[
        ("SURGE_CPU_PAUSE_PERCENT", "high"),
        ("SURGE_CPU_REJECT_PERCENT", "90"),
    ])]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].setting, "SURGE_CPU_PAUSE_PERCENT");
}

// ---- reporting ----

#[test]
fn errors_read_as_documented() {
    assert_eq!(
        only_error(&[env(&[("SURGE_BACKLOG", "abc")])]),
        "SURGE_BACKLOG=abc (from environment): must be an integer from 1 to 65535"
    );
    assert_eq!(
        only_error(&[flags(&[("SURGE_BACKLOG", "abc")])]),
        "--backlog=abc (from command line): must be an integer from 1 to 65535"
    );
    assert_eq!(
        only_error(&[env(&[("SURGE_WS_PATH", "")])]),
        "SURGE_WS_PATH=\"\" (from environment): must be a path that starts with '/' and has no spaces, '?' or '#'"
    );
    assert_eq!(
        only_error(&[env(&[("SURGE_HANDSHAKE_TIMEOUT", "10sec")])]),
        "SURGE_HANDSHAKE_TIMEOUT=10sec (from environment): must be a duration from 100ms to 5m (unknown unit \"sec\"; use d, h, m, s or ms)"
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let errors = errors_of(&[env(&[
        ("SURGE_BACKLOG", "0"),
        ("SURGE_LOG_LEVEL", "loud"),
        ("SURGE_SHARDS", "x"),
        ("SURGE_IDLE_TIMEOUT", "1s"),
        ("SURGE_BAKLOG", "1"),
    ])]);
    assert_eq!(errors.len(), 5, "{errors:#?}");
    let err = Config::from_sources(&[env(&[("SURGE_BACKLOG", "0")])]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid configuration (1 problem):\n  SURGE_BACKLOG=0")
    );
}

#[test]
fn credentials_never_appear_in_output() {
    let config = load(&[env(&[
        ("SURGE_AUTH_TOKENS", "tok-alpha,tok-beta"),
        ("SURGE_NATS_URL", "nats://n:4222"),
        ("SURGE_NATS_USER", "odin"),
        ("SURGE_NATS_PASSWORD", "hunter2"),
    ])]);
    let jwt = load(&[env(&[(
        "SURGE_JWT_SECRET",
        "jwt-secret-jwt-secret-jwt-secret",
    )])]);
    for output in [
        jwt.print_effective(),
        jwt.to_json().to_string(),
        format!("{jwt:?}"),
    ] {
        assert!(!output.contains("jwt-secret"), "leaked in {output}");
    }
    let error = only_error(&[env(&[("SURGE_JWT_SECRET", "short-jwt-secret")])]);
    assert!(!error.contains("short-jwt-secret"), "{error}");
    let outputs = [
        config.print_effective(),
        config.to_json().to_string(),
        format!("{config:?}"),
    ];
    for output in outputs {
        for secret in ["tok-alpha", "tok-beta", "hunter2"] {
            assert!(!output.contains(secret), "{secret} leaked in {output}");
        }
        assert!(output.contains("***"));
        assert!(output.contains("odin"));
    }
    assert_eq!(
        config.to_json()["settings"]["nats_token"],
        serde_json::Value::Null
    );

    let error = only_error(&[env(&[("SURGE_AUTH_TOKENS", "tok-alpha,bad token")])]);
    assert!(!error.contains("tok-alpha"), "{error}");
    let error = only_error(&[env(&[(
        "SURGE_NATS_URL",
        "nats://u:hunter2@h:4222,nats://h2",
    )])]);
    assert!(!error.contains("hunter2"), "{error}");
    assert!(
        error.starts_with("SURGE_NATS_URL=nats://***@h:4222,nats://h2 "),
        "{error}"
    );
}

#[test]
fn snapshot_errors_of_a_bad_configuration() {
    let errors = Config::from_sources(&[
        env(&[
            ("SURGE_BACKLOG", "70000"),
            ("SURGE_LOG_LEVEL", "verbose"),
            ("SURGE_HANDSHAKE_TIMEOUT", "10sec"),
            ("SURGE_IDLE_TIMEOUT", "20s"),
            ("SURGE_NATS_URL", "nats://nats.internal:4222"),
            ("SURGE_NATS_USER", "odin"),
            ("SURGE_BAKLOG", "100"),
            ("HOME", "/root"),
        ]),
        dotenv(&[("SURGE_CPU_PAUSE_PERCENT", "70")]),
        flags(&[("SURGE_MAX_HEAD_BYTES", "8KB")]),
    ])
    .unwrap_err();
    insta::assert_snapshot!(errors.to_string());
}

#[test]
fn snapshot_effective_defaults() {
    insta::assert_snapshot!(Config::default().print_effective());
}

#[test]
fn snapshot_effective_with_sources() {
    let config = load(&[
        dotenv(&[("SURGE_BACKLOG", "1024"), ("SURGE_LOG_FORMAT", "json")]),
        env(&[
            ("SURGE_BACKLOG", "2048"),
            ("SURGE_NATS_URL", "nats://n1:4222,nats://n2:4222"),
            ("SURGE_NATS_TOKEN", "s3cr3t"),
            (
                "SURGE_ALLOWED_ORIGINS",
                "https://app.example.com,https://admin.example.com",
            ),
        ]),
        flags(&[("SURGE_SHARDS", "4")]),
    ]);
    insta::assert_snapshot!(config.print_effective());
}

#[test]
fn snapshot_json_defaults() {
    insta::assert_json_snapshot!(Config::default().to_json());
}

#[test]
fn json_lists_the_sources_of_explicit_values() {
    let config = load(&[
        dotenv(&[("SURGE_LOG_FORMAT", "json")]),
        flags(&[("SURGE_SHARDS", "4")]),
    ]);
    let json = config.to_json();
    assert_eq!(
        json["sources"],
        serde_json::json!({"log_format": "dotenv", "shards": "flag"})
    );
    assert_eq!(json["settings"]["shards"], 4);
    assert_eq!(json["settings"]["max_connections"], serde_json::Value::Null);
    assert_eq!(json["settings"]["handshake_timeout"], "10s");
    assert_eq!(json["settings"]["max_head_bytes"], 8192);
}
