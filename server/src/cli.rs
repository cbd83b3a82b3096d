//! Command line and configuration sources.
//!
//! Every setting in core's `SETTINGS` table is a flag, an environment
//! variable and a `.env` key at once; this module turns the three into
//! core's `Source`s (flag > environment > `.env` > default), and generates
//! `--help` and `.env.example` from the same table, so the documentation
//! cannot drift from what the binary accepts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, ArgMatches, Command};
use surge_core::config::{
    Config, ConfigError, ConfigErrors, Origin, SETTINGS, Source, parse_duration,
};
use surge_core::handshake::parse_origin;

use crate::feed::{self, FeedOptions};

/// What the user asked the binary to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Task {
    Serve,
    /// Print the effective configuration (or `.env.example`) and exit.
    Config {
        env_example: bool,
    },
    Doctor,
    /// Publish a synthetic market stream (`surge feed`).
    Feed(FeedOptions),
    /// Print a token signed with `SURGE_JWT_SECRET` (`surge token`).
    Token(crate::jwt::TokenOptions),
    /// How many gateways a target needs (`surge plan`).
    Plan(crate::plan::Target),
    /// The dashboard in a terminal (`surge top`).
    Top(crate::top::TopOptions),
}

/// The parsed command line.
#[derive(Debug)]
pub struct Invocation {
    pub task: Task,
    pub flags: Source,
    pub env_file: Option<PathBuf>,
}

fn setting_args() -> Vec<Arg> {
    SETTINGS
        .iter()
        .map(|s| {
            let long = s.flag.trim_start_matches("--");
            Arg::new(s.env)
                .long(long)
                .value_name("VALUE")
                .global(true)
                .help(format!(
                    "{} [env: {}] [default: {}]",
                    s.doc, s.env, s.default
                ))
        })
        .collect()
}

/// The clap command, generated from the settings table.
pub fn command() -> Command {
    Command::new("surge")
        .about("WebSocket fan-out gateway fed by NATS JetStream (or its embedded broker)")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand(Command::new("serve").about("Run the gateway (the default)"))
        .subcommand(
            Command::new("config")
                .about("Validate and print the effective configuration, then exit")
                .arg(
                    Arg::new("env-example")
                        .long("env-example")
                        .action(ArgAction::SetTrue)
                        .help("Print a documented .env.example instead"),
                ),
        )
        .subcommand(Command::new("doctor").about(
            "Check host limits, the listen addresses and NATS reachability against the configuration",
        ))
        .subcommand(feed_command())
        .subcommand(crate::jwt::command())
        .subcommand(crate::plan::command())
        .subcommand(top_command())
        .arg(
            Arg::new("env-file")
                .long("env-file")
                .value_name("PATH")
                .global(true)
                .help("The .env file to read [default: ./.env when it exists]"),
        )
        .args(setting_args())
}

fn feed_command() -> Command {
    Command::new("feed")
        .about("Publish a synthetic market stream (trades, liquidity, trending) to NATS when SURGE_NATS_URL is set, else to the running gateway's admin /publish")
        .arg(
            Arg::new("rate")
                .long("rate")
                .value_name("MSGS_PER_SEC")
                .default_value(feed::DEFAULT_RATE_TEXT)
                .value_parser(clap::value_parser!(u32).range(1..))
                .help("Trades plus liquidity updates per second (trending every 5 s comes on top)"),
        )
        .arg(
            Arg::new("symbols")
                .long("symbols")
                .value_name("LIST")
                .default_value(feed::DEFAULT_SYMBOLS)
                .value_parser(feed::parse_symbols)
                .help("Comma-separated symbols; the first ones trade most"),
        )
        .arg(
            Arg::new("duration")
                .long("duration")
                .value_name("DURATION")
                .value_parser(|v: &str| parse_duration(v).map_err(|e| e.to_string()))
                .help("Stop after this long (500ms, 10s, 2m) [default: until Ctrl-C]"),
        )
        .arg(
            Arg::new("admin")
                .long("admin")
                .value_name("URL")
                .help("The gateway's admin URL (http://host:port), used with the embedded broker [default: --admin-listen / SURGE_ADMIN_LISTEN; a wildcard address is reached over loopback]"),
        )
}

fn top_command() -> Command {
    Command::new("top")
        .about("The live dashboard in the terminal, read from the running gateway's admin /dashboard/events (q or Ctrl-C quits); --admin-token or SURGE_ADMIN_TOKEN when the listener has one")
        .arg(
            Arg::new("admin")
                .long("admin")
                .value_name("URL")
                .help("The gateway's admin URL (http://host:port) [default: --admin-listen / SURGE_ADMIN_LISTEN; a wildcard address is reached over loopback]"),
        )
        .arg(
            Arg::new("once")
                .long("once")
                .action(ArgAction::SetTrue)
                .help("Print one frame (with its per-second rates) as plain text and exit"),
        )
}

fn feed_options(sub: &ArgMatches) -> FeedOptions {
    FeedOptions {
        rate: sub
            .get_one::<u32>("rate")
            .copied()
            .unwrap_or(feed::DEFAULT_RATE),
        symbols: sub
            .get_one::<Vec<String>>("symbols")
            .cloned()
            .unwrap_or_default(),
        duration: sub.get_one("duration").copied(),
        admin: sub.get_one::<String>("admin").cloned(),
    }
}

/// Parses `args` (including the program name).
pub fn parse<I, T>(args: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    let task = match matches.subcommand() {
        Some(("config", sub)) => Task::Config {
            env_example: sub.get_flag("env-example"),
        },
        Some(("doctor", _)) => Task::Doctor,
        Some(("feed", sub)) => Task::Feed(feed_options(sub)),
        Some(("token", sub)) => Task::Token(crate::jwt::options(sub)),
        Some(("plan", sub)) => Task::Plan(crate::plan::target(sub)),
        Some(("top", sub)) => Task::Top(crate::top::TopOptions {
            admin: sub.get_one::<String>("admin").cloned(),
            once: sub.get_flag("once"),
        }),
        _ => Task::Serve,
    };
    let sub = matches.subcommand().map(|(_, m)| m);
    let flags = flag_source(&matches, sub);
    let env_file = sub
        .and_then(|m| m.get_one::<String>("env-file"))
        .or_else(|| matches.get_one::<String>("env-file"))
        .map(PathBuf::from);
    Ok(Invocation {
        task,
        flags,
        env_file,
    })
}

fn flag_source(top: &ArgMatches, sub: Option<&ArgMatches>) -> Source {
    let mut values = BTreeMap::new();
    for s in SETTINGS {
        let value = sub
            .and_then(|m| m.get_one::<String>(s.env))
            .or_else(|| top.get_one::<String>(s.env));
        if let Some(v) = value {
            values.insert(s.env.to_string(), v.clone());
        }
    }
    Source {
        origin: Origin::Flag,
        values,
    }
}

/// `SURGE_*` variables of the process environment.
pub fn env_source(vars: impl IntoIterator<Item = (String, String)>) -> Source {
    Source {
        origin: Origin::Env,
        values: vars
            .into_iter()
            .filter(|(k, _)| k.starts_with("SURGE_"))
            .collect(),
    }
}

/// Reads a `.env` file. A missing default `./.env` is not an error; a
/// missing file named with `--env-file` is.
pub fn dotenv_source(explicit: Option<&Path>) -> Result<Source, String> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let default = PathBuf::from(".env");
            if !default.exists() {
                return Ok(Source {
                    origin: Origin::DotEnv,
                    values: BTreeMap::new(),
                });
            }
            default
        }
    };
    let iter = dotenvy::from_path_iter(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut values = BTreeMap::new();
    for item in iter {
        let (k, v) = item.map_err(|e| format!("{}: {e}", path.display()))?;
        values.insert(k, v);
    }
    Ok(Source {
        origin: Origin::DotEnv,
        values,
    })
}

/// A configuration resolved from all three sources.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// Unknown `SURGE_*` names that are no near miss of a setting, for the
    /// caller to report once logging is up.
    pub ignored: Vec<String>,
}

/// Resolves the configuration from all three sources.
pub fn load(invocation: &Invocation) -> Result<Loaded, LoadError> {
    let dotenv = dotenv_source(invocation.env_file.as_deref()).map_err(LoadError::EnvFile)?;
    let env = env_source(std::env::vars());
    let sources = [invocation.flags.clone(), env, dotenv];
    let config = Config::from_sources(&sources).map_err(LoadError::Invalid)?;
    let mut problems = origin_errors(&config);
    // `feed` serves nothing: only what the gateway would expose matters.
    // The clients of a running gateway do not listen themselves.
    if !matches!(invocation.task, Task::Feed(_) | Task::Top(_)) {
        problems.extend(admin_exposure_error(&config));
    }
    if !problems.is_empty() {
        return Err(LoadError::Invalid(ConfigErrors(problems)));
    }
    Ok(Loaded {
        config,
        ignored: Config::ignored_keys(&sources),
    })
}

const ALLOWED_ORIGINS: &str = "SURGE_ALLOWED_ORIGINS";

/// One error per `SURGE_ALLOWED_ORIGINS` entry the handshake cannot compare
/// with an `Origin` header (it compares scheme, host and effective port,
/// with [`parse_origin`]), which would otherwise match no request in
/// silence. The configuration's own rule checks the syntax; this catches
/// the rest, such as a scheme with no default port and no port given
/// (`chrome-extension://…`).
fn origin_errors(config: &Config) -> Vec<ConfigError> {
    config
        .allowed_origins
        .iter()
        .filter(|entry| parse_origin(entry).is_none())
        .map(|entry| ConfigError {
            setting: ALLOWED_ORIGINS.to_owned(),
            origin: config.origins.get(ALLOWED_ORIGINS).copied(),
            value: entry.clone(),
            rule: "no request's Origin can match it: expected scheme://host[:port] \
                   (the port is required for schemes other than http, https, ws and wss), \
                   e.g. `https://app.example.com` or `http://localhost:3000`"
                .to_owned(),
        })
        .collect()
}

const ADMIN_LISTEN: &str = "SURGE_ADMIN_LISTEN";

/// The refusal of an admin listener that other hosts can reach with no
/// `SURGE_ADMIN_TOKEN`: anyone there could publish and read the
/// configuration. `SURGE_ADMIN_INSECURE=true` is the operator's explicit
/// opt-in (behind a firewall or an authenticating proxy).
fn admin_exposure_error(config: &Config) -> Option<ConfigError> {
    let loopback = config.admin_listen.ip().to_canonical().is_loopback();
    if loopback || config.admin_token.is_some() || config.admin_insecure {
        return None;
    }
    Some(ConfigError {
        setting: ADMIN_LISTEN.to_owned(),
        origin: config.origins.get(ADMIN_LISTEN).copied(),
        value: config.admin_listen.to_string(),
        rule: "is not a loopback address and SURGE_ADMIN_TOKEN is unset, so anyone who \
               reaches it could publish (POST /publish) and read the configuration \
               (GET /config); set SURGE_ADMIN_TOKEN (callers then send Authorization: \
               Bearer <token>), bind a loopback address such as 127.0.0.1:9090, or set \
               SURGE_ADMIN_INSECURE=true to serve it without a token anyway"
            .to_owned(),
    })
}

/// Why the configuration could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    EnvFile(String),
    Invalid(ConfigErrors),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::EnvFile(e) => write!(f, "cannot read the .env file {e}"),
            LoadError::Invalid(errors) => write!(f, "{errors}"),
        }
    }
}

/// A documented `.env.example`, generated from the settings table.
pub fn env_example() -> String {
    let mut out = String::from(
        "# surge configuration. Precedence: command-line flag > environment > this file > default.\n\
         # Durations: 500ms, 10s, 2m. Sizes: 4096, 64KiB, 50MiB.\n\
         # Generated by `surge config --env-example`; every line is commented out with its default.\n",
    );
    for s in SETTINGS {
        out.push_str(&format!("\n# {}\n# {}; flag {}\n", s.doc, s.rule(), s.flag));
        match s.literal_default() {
            Some(d) => out.push_str(&format!("#{}={}\n", s.env, d)),
            None => out.push_str(&format!("#{}=   ({})\n", s.env, s.default)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_a_flag_source_keyed_by_env_name() {
        let inv = parse(["surge", "--backlog", "128", "--ws-path=/live"]).expect("parses");
        assert_eq!(inv.task, Task::Serve);
        assert_eq!(
            inv.flags.values.get("SURGE_BACKLOG").map(String::as_str),
            Some("128")
        );
        assert_eq!(
            inv.flags.values.get("SURGE_WS_PATH").map(String::as_str),
            Some("/live")
        );
    }

    #[test]
    fn subcommands_accept_setting_flags_too() {
        let inv = parse(["surge", "config", "--backlog", "64", "--env-example"]).expect("parses");
        assert_eq!(inv.task, Task::Config { env_example: true });
        assert_eq!(
            inv.flags.values.get("SURGE_BACKLOG").map(String::as_str),
            Some("64")
        );
        assert_eq!(
            parse(["surge", "doctor"]).expect("parses").task,
            Task::Doctor
        );
    }

    #[test]
    fn feed_takes_rate_symbols_duration_and_admin_with_defaults() {
        let inv = parse(["surge", "feed"]).expect("parses");
        let Task::Feed(options) = inv.task else {
            panic!("not feed: {:?}", inv.task);
        };
        assert_eq!(options.rate, 50);
        assert_eq!(options.symbols[..3], ["BTC", "ETH", "SOL"]);
        assert_eq!(options.duration, None);
        assert_eq!(options.admin, None);

        let inv = parse([
            "surge",
            "feed",
            "--rate",
            "200",
            "--symbols",
            "btc,PEPE",
            "--duration",
            "2m",
            "--admin",
            "http://10.0.0.1:9191",
            "--nats-url",
            "nats://127.0.0.1:4222",
        ])
        .expect("parses");
        assert_eq!(
            inv.task,
            Task::Feed(FeedOptions {
                rate: 200,
                symbols: vec!["BTC".into(), "PEPE".into()],
                duration: Some(std::time::Duration::from_secs(120)),
                admin: Some("http://10.0.0.1:9191".into()),
            })
        );
        assert_eq!(
            inv.flags.values.get("SURGE_NATS_URL").map(String::as_str),
            Some("nats://127.0.0.1:4222")
        );
        for bad in [
            &["surge", "feed", "--rate", "0"][..],
            &["surge", "feed", "--symbols", "BT.C"],
            &["surge", "feed", "--duration", "soon"],
        ] {
            assert!(parse(bad.iter().copied()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flag_beats_env_beats_dotenv() {
        let inv = parse(["surge", "--backlog", "100"]).expect("parses");
        let env = env_source([
            ("SURGE_BACKLOG".to_string(), "200".to_string()),
            ("SURGE_REPLAY_WINDOW".to_string(), "7".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ]);
        let dot = Source {
            origin: Origin::DotEnv,
            values: [
                ("SURGE_REPLAY_WINDOW".to_string(), "9".to_string()),
                ("SURGE_SHARDS".to_string(), "3".to_string()),
            ]
            .into_iter()
            .collect(),
        };
        let config = Config::from_sources(&[inv.flags, env, dot]).expect("valid");
        assert_eq!(config.backlog, 100);
        assert_eq!(config.replay_window, 7);
        assert_eq!(config.shards, Some(3));
    }

    #[test]
    fn env_example_lists_every_setting_and_loads_back() {
        let text = env_example();
        for s in SETTINGS {
            assert!(text.contains(&format!("#{}=", s.env)), "{} missing", s.env);
        }
        // Uncommenting every line that has a literal default gives a valid config.
        let values: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter_map(|l| l.split_once('='))
            .filter(|(k, v)| k.starts_with("SURGE_") && !v.trim_start().starts_with('('))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(values.len() > 20);
        let config = Config::from_sources(&[Source {
            origin: Origin::DotEnv,
            values,
        }])
        .expect("valid");
        assert_eq!(config.backlog, Config::default().backlog);
    }
}
