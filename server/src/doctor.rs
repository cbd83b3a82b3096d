//! `surge doctor`: checks every host limit that decides how many connections
//! surge can hold and how a connection burst is received, and says how to
//! fix each one.
//!
//! The seed team discovered their limits one failed load test at a time: a
//! 1024 open-file limit (plateau at ~8.6k), a ~128 listen backlog (18.5 % of
//! a burst failed), 28k ephemeral ports on the load client. Each check here
//! prints the fact with its value and, when it is a problem, the exact
//! command and the persistent setting (`deploy/99-surge.conf`,
//! `deploy/surge.service`) that fix it. The report is a pure function of
//! [`HostFacts`] and [`NetworkFacts`], so it can be tested with fake hosts.
//!
//! The network checks catch what would otherwise stop `surge serve` or leave
//! it without data: a listen address another process holds, and NATS
//! servers that do not answer.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

use async_nats::ServerAddr;

use surge_core::config::Config;

use crate::host::{
    self, BYTES_PER_CONNECTION_ESTIMATE, FD_RESERVE, FdLimits, MemoryLimit, format_bytes,
};
use crate::tls::CertInfo;

/// `LimitNOFILE` of `deploy/surge.service`.
pub const RECOMMENDED_NOFILE: u64 = 1_048_576;
/// A hard open-file limit below this caps the gateway far under what its
/// memory can hold; the seed's 1024 capped it at ~8.6k across shards.
pub const NOFILE_WARN_BELOW: u64 = 65_536;
/// `net.core.somaxconn` in `deploy/99-surge.conf` (the largest backlog
/// surge accepts).
pub const RECOMMENDED_SOMAXCONN: u64 = 65_535;
/// `net.ipv4.tcp_max_syn_backlog` in `deploy/99-surge.conf`.
pub const RECOMMENDED_SYN_BACKLOG: u64 = 65_535;
/// `net.ipv4.ip_local_port_range` in `deploy/99-surge.conf`.
pub const RECOMMENDED_PORT_RANGE: (u16, u16) = (1024, 65_535);
/// Fewer ephemeral ports than this exhausts a load generator (the seed's
/// client stalled near 8,300 connections from one address with ~28k).
pub const PORT_RANGE_WARN_BELOW: u64 = 28_000;
/// `fs.file-max` in `deploy/99-surge.conf`: surge's own limit plus room for
/// everything else on the host.
pub const RECOMMENDED_FILE_MAX: u64 = 2_097_152;
/// `fs.nr_open` in `deploy/99-surge.conf`: must exceed `LimitNOFILE`.
pub const RECOMMENDED_NR_OPEN: u64 = 2_097_152;

// LimitNOFILE cannot exceed fs.nr_open, and the file budget must fit
// system-wide.
const _: () = assert!(RECOMMENDED_NR_OPEN >= RECOMMENDED_NOFILE);
const _: () = assert!(RECOMMENDED_FILE_MAX >= RECOMMENDED_NOFILE);

const PERSIST: &str =
    "persist: install deploy/99-surge.conf in /etc/sysctl.d/ and run `sysctl --system`";
const NOFILE_FIX: &str = "systemd `LimitNOFILE=1048576` (deploy/surge.service), or `ulimit -n 1048576` before starting surge";

/// How serious a check's finding is; ordered so the worst is the largest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Ok => "OK  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub level: Level,
    /// The fact with its value, and why it matters when it is a problem.
    pub text: String,
    /// The exact fix, for WARN and FAIL lines.
    pub fix: Option<String>,
}

impl Check {
    fn ok(text: String) -> Self {
        Check {
            level: Level::Ok,
            text,
            fix: None,
        }
    }

    fn warn(text: String, fix: impl Into<String>) -> Self {
        Check {
            level: Level::Warn,
            text,
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.level, self.text)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// The doctor's findings, one [`Check`] per line, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// The most serious level found; `main` exits non-zero on `Fail`.
    pub fn worst(&self) -> Level {
        self.checks
            .iter()
            .map(|c| c.level)
            .max()
            .unwrap_or(Level::Ok)
    }

    fn count(&self, level: Level) -> usize {
        self.checks.iter().filter(|c| c.level == level).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            writeln!(f, "{check}")?;
        }
        writeln!(
            f,
            "summary: {} OK, {} WARN, {} FAIL",
            self.count(Level::Ok),
            self.count(Level::Warn),
            self.count(Level::Fail)
        )
    }
}

/// What the doctor looks at; `None` where a value could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub nofile: Option<FdLimits>,
    pub somaxconn: Option<u64>,
    pub tcp_max_syn_backlog: Option<u64>,
    pub tcp_syncookies: Option<u64>,
    pub ip_local_port_range: Option<(u16, u16)>,
    pub file_max: Option<u64>,
    pub nr_open: Option<u64>,
    pub memory: Option<MemoryLimit>,
    pub mem_available: Option<u64>,
}

impl HostFacts {
    /// Reads this machine's facts (procfs, sysfs, `getrlimit`).
    pub fn collect() -> Self {
        HostFacts {
            nofile: host::nofile_limits().ok(),
            somaxconn: host::somaxconn(),
            tcp_max_syn_backlog: host::tcp_max_syn_backlog(),
            tcp_syncookies: host::tcp_syncookies(),
            ip_local_port_range: host::ip_local_port_range(),
            file_max: host::file_max(),
            nr_open: host::nr_open(),
            memory: host::memory_limit(),
            mem_available: host::mem_available_bytes(),
        }
    }
}

/// How long the doctor waits for each NATS server's TCP connect.
pub const NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One address the doctor tried, and why it did not work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The setting the address comes from.
    pub setting: &'static str,
    /// The address as configured.
    pub target: String,
    pub outcome: Result<(), String>,
}

/// Whether the listeners can be bound and the NATS servers reached, now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkFacts {
    pub listeners: Vec<Probe>,
    /// Empty with the embedded broker.
    pub nats: Vec<Probe>,
}

impl NetworkFacts {
    /// Binds each listen address (and lets it go at once) and opens a TCP
    /// connection to each NATS server of `config`.
    pub fn collect(config: &Config) -> Self {
        let bind = |setting, addr: SocketAddr| Probe {
            setting,
            target: addr.to_string(),
            outcome: TcpListener::bind(addr)
                .map(drop)
                .map_err(|e| bind_error(&e)),
        };
        NetworkFacts {
            listeners: vec![
                bind("SURGE_LISTEN", config.listen),
                bind("SURGE_ADMIN_LISTEN", config.admin_listen),
            ],
            nats: config
                .nats_servers()
                .into_iter()
                .map(|server| Probe {
                    setting: "SURGE_NATS_URL",
                    target: server.to_owned(),
                    outcome: tcp_connect(server, NATS_CONNECT_TIMEOUT),
                })
                .collect(),
        }
    }
}

fn bind_error(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => {
            "address already in use by another process (is surge already running?)".to_owned()
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)".to_owned()
        }
        io::ErrorKind::AddrNotAvailable => "not an address of this host".to_owned(),
        _ => e.to_string(),
    }
}

/// A TCP connect to `server` (a `SURGE_NATS_URL` entry) within `timeout`,
/// trying each address its host resolves to.
fn tcp_connect(server: &str, timeout: Duration) -> Result<(), String> {
    let addr: ServerAddr = server.parse().map_err(|e| format!("not a NATS URL: {e}"))?;
    // The URL form of an IPv6 host keeps its brackets; the resolver wants none.
    let host = addr.host().trim_start_matches('[').trim_end_matches(']');
    let resolved: Vec<SocketAddr> = (host, addr.port())
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("{host} resolves to no address");
    for candidate in resolved {
        match TcpStream::connect_timeout(&candidate, timeout) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                last = format!("no answer from {candidate} within {}s", timeout.as_secs());
            }
            Err(e) => last = format!("{candidate}: {e}"),
        }
    }
    Err(last)
}

/// Checks this machine against `config`.
pub fn run(config: &Config) -> Report {
    let mut report = report(config, &HostFacts::collect());
    report
        .checks
        .extend(network(&NetworkFacts::collect(config)));
    report.checks.extend(jwt_keys(config));
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let read = crate::tls::read(cert, key).map(|loaded| loaded.info);
        report.checks.push(tls_certificate(&read, now));
    }
    report
}

/// The JWT keys, read and parsed as `surge serve` would (a key file that
/// fails here stops the start).
pub fn jwt_keys(config: &Config) -> Option<Check> {
    let source = if config.jwt_secret.is_some() {
        "SURGE_JWT_SECRET".to_owned()
    } else if let Some(path) = &config.jwt_public_key_file {
        format!("SURGE_JWT_PUBLIC_KEY_FILE={}", path.display())
    } else if let Some(path) = &config.jwt_jwks_file {
        format!("SURGE_JWT_JWKS_FILE={}", path.display())
    } else {
        return None;
    };
    Some(match crate::jwt::load(config) {
        Ok(Some(auth)) => Check::ok(format!(
            "JWT: {} key(s) from {source} verify tokens",
            auth.key_count()
        )),
        Ok(None) => return None,
        Err(e) => Check {
            level: Level::Fail,
            text: format!("JWT: {e:#}"),
            fix: Some("point the setting at a readable PEM public key or JWKS file (docs/PROTOCOL.md, Authentication)".to_owned()),
        },
    })
}

/// A certificate closer to its expiry than this many days is a warning.
pub const TLS_EXPIRY_WARN_DAYS: i64 = 14;

const TLS_RENEW: &str = "renew it, write the new files over SURGE_TLS_CERT and SURGE_TLS_KEY, and send surge SIGHUP (`kill -HUP <pid>`): open connections stay";

/// The public listener's certificate files (read, parsed, the key matched
/// to the certificate) against the time `now` (Unix seconds); pure.
pub fn tls_certificate(read: &Result<CertInfo, String>, now: i64) -> Check {
    let info = match read {
        Ok(info) => info,
        Err(e) => {
            return Check {
                level: Level::Fail,
                text: format!("TLS certificate: {e}"),
                fix: Some(
                    "point SURGE_TLS_CERT at a readable PEM certificate chain (leaf first) and SURGE_TLS_KEY at its private key"
                        .to_owned(),
                ),
            };
        }
    };
    let who = format!("TLS certificate {} (serial {})", info.subject, info.serial);
    let days = info.days_left(now);
    if info.not_after < now {
        Check {
            level: Level::Fail,
            text: format!(
                "{who} expired on {}: clients refuse the handshake",
                info.expires
            ),
            fix: Some(TLS_RENEW.to_owned()),
        }
    } else if info.not_before > now {
        Check {
            level: Level::Fail,
            text: format!("{who} is not valid yet: clients refuse the handshake"),
            fix: Some("check this host's clock, or use a certificate valid now".to_owned()),
        }
    } else if days < TLS_EXPIRY_WARN_DAYS {
        Check::warn(
            format!(
                "{who}: key matches; expires on {}, in {days} days",
                info.expires
            ),
            TLS_RENEW,
        )
    } else {
        Check::ok(format!(
            "{who}: key matches; valid until {} ({days} days left)",
            info.expires
        ))
    }
}

/// The checks of `facts`; pure, for tests and for `run`.
pub fn network(facts: &NetworkFacts) -> Vec<Check> {
    let listeners = facts.listeners.iter().map(|probe| match &probe.outcome {
        Ok(()) => Check::ok(format!(
            "listen {} ({}): can be bound",
            probe.target, probe.setting
        )),
        Err(reason) => Check {
            level: Level::Fail,
            text: format!(
                "listen {} ({}): cannot be bound: {reason}",
                probe.target, probe.setting
            ),
            fix: Some(format!(
                "stop what holds it (`ss -ltnp` shows the process) or set {} to a free address",
                probe.setting
            )),
        },
    });
    // One server down is survivable while another answers; none is not.
    let any_reachable = facts.nats.iter().any(|probe| probe.outcome.is_ok());
    let nats = facts.nats.iter().map(move |probe| match &probe.outcome {
        Ok(()) => Check::ok(format!(
            "NATS {} ({}): reachable over TCP",
            probe.target, probe.setting
        )),
        Err(reason) => Check {
            level: if any_reachable {
                Level::Warn
            } else {
                Level::Fail
            },
            text: format!(
                "NATS {} ({}): unreachable: {reason}",
                probe.target, probe.setting
            ),
            fix: Some(format!(
                "start nats-server there (`nats-server -js`), open the firewall to it, or correct {}",
                probe.setting
            )),
        },
    });
    listeners.chain(nats).collect()
}

/// Checks `facts` against `config`; pure, for tests and for `run`.
pub fn report(config: &Config, facts: &HostFacts) -> Report {
    let checks = vec![
        open_files(facts.nofile),
        somaxconn(facts.somaxconn, config.backlog),
        syn_backlog(facts.tcp_max_syn_backlog, config.backlog),
        syncookies(facts.tcp_syncookies),
        port_range(facts.ip_local_port_range),
        file_max(facts.file_max, file_target(config)),
        nr_open(facts.nr_open, file_target(config)),
        memory(facts.memory, facts.mem_available),
        max_connections(config.max_connections, facts),
    ];
    Report { checks }
}

fn unreadable(what: &str, source: &str) -> Check {
    Check::warn(
        format!("{what}: could not be read ({source})"),
        "run `surge doctor` on the host itself, not in a restricted sandbox",
    )
}

fn open_files(nofile: Option<FdLimits>) -> Check {
    let Some(FdLimits { soft, hard }) = nofile else {
        return unreadable("open files", "getrlimit(RLIMIT_NOFILE)");
    };
    let fact = format!("open files: soft {soft}, hard {hard} (surge raises soft to hard at start)");
    let room = hard.saturating_sub(FD_RESERVE);
    if hard < NOFILE_WARN_BELOW {
        Check::warn(
            format!(
                "{fact}; a hard limit below {NOFILE_WARN_BELOW} caps max connections at {room} ({hard} - {FD_RESERVE} reserved)"
            ),
            NOFILE_FIX,
        )
    } else {
        Check::ok(format!(
            "{fact}; room for {room} connections ({hard} - {FD_RESERVE} reserved)"
        ))
    }
}

fn somaxconn(value: Option<u64>, backlog: u32) -> Check {
    let Some(value) = value else {
        return unreadable("net.core.somaxconn", "/proc/sys/net/core/somaxconn");
    };
    if value < u64::from(backlog) {
        Check::warn(
            format!(
                "net.core.somaxconn {value} < backlog {backlog}: the kernel silently caps the listen backlog at {value}, \
                 and a connection burst overflows it (a ~128 backlog failed 18.5 % of the seed's burst)"
            ),
            format!("`sysctl -w net.core.somaxconn={RECOMMENDED_SOMAXCONN}`; {PERSIST}"),
        )
    } else {
        Check::ok(format!("net.core.somaxconn {value} >= backlog {backlog}"))
    }
}

fn syn_backlog(value: Option<u64>, backlog: u32) -> Check {
    let Some(value) = value else {
        return unreadable(
            "net.ipv4.tcp_max_syn_backlog",
            "/proc/sys/net/ipv4/tcp_max_syn_backlog",
        );
    };
    if value < u64::from(backlog) {
        Check::warn(
            format!(
                "net.ipv4.tcp_max_syn_backlog {value} < backlog {backlog}: half-open connections beyond {value} \
                 fall back to SYN cookies, or are dropped without them"
            ),
            format!(
                "`sysctl -w net.ipv4.tcp_max_syn_backlog={RECOMMENDED_SYN_BACKLOG}`; {PERSIST}"
            ),
        )
    } else {
        Check::ok(format!(
            "net.ipv4.tcp_max_syn_backlog {value} >= backlog {backlog}"
        ))
    }
}

fn syncookies(value: Option<u64>) -> Check {
    let Some(value) = value else {
        return unreadable(
            "net.ipv4.tcp_syncookies",
            "/proc/sys/net/ipv4/tcp_syncookies",
        );
    };
    let why = match value {
        1 => {
            return Check::ok(
                "net.ipv4.tcp_syncookies 1: a full SYN queue is answered with cookies".to_owned(),
            );
        }
        0 => "SYNs are dropped once the SYN queue is full",
        _ => "cookies are sent even when the SYN queue has room, losing TCP options",
    };
    Check::warn(
        format!("net.ipv4.tcp_syncookies {value}: {why}"),
        format!("`sysctl -w net.ipv4.tcp_syncookies=1`; {PERSIST}"),
    )
}

fn port_range(range: Option<(u16, u16)>) -> Check {
    let Some((lo, hi)) = range else {
        return unreadable(
            "net.ipv4.ip_local_port_range",
            "/proc/sys/net/ipv4/ip_local_port_range",
        );
    };
    let width = u64::from(hi) - u64::from(lo) + 1;
    let fact = format!(
        "net.ipv4.ip_local_port_range {lo}-{hi}: {width} ephemeral ports per source address \
         (load generators, the NATS connection)"
    );
    if width < PORT_RANGE_WARN_BELOW {
        let (rlo, rhi) = RECOMMENDED_PORT_RANGE;
        Check::warn(
            format!(
                "{fact}, under {PORT_RANGE_WARN_BELOW}: a load generator on this host runs out of source ports"
            ),
            format!("`sysctl -w net.ipv4.ip_local_port_range=\"{rlo} {rhi}\"`; {PERSIST}"),
        )
    } else {
        Check::ok(fact)
    }
}

/// Open files the host must allow surge: the unit's `LimitNOFILE`, or more
/// when the configured maximum needs more.
fn file_target(config: &Config) -> u64 {
    let configured = config
        .max_connections
        .map_or(0, |c| u64::from(c) + FD_RESERVE);
    RECOMMENDED_NOFILE.max(configured)
}

fn file_max(value: Option<u64>, target: u64) -> Check {
    let Some(value) = value else {
        return unreadable("fs.file-max", "/proc/sys/fs/file-max");
    };
    if value < target {
        Check::warn(
            format!(
                "fs.file-max {value} < {target}: the whole system cannot open the files surge's open-file limit allows"
            ),
            format!("`sysctl -w fs.file-max={RECOMMENDED_FILE_MAX}`; {PERSIST}"),
        )
    } else {
        Check::ok(format!(
            "fs.file-max {value} >= {target} (open files, whole system)"
        ))
    }
}

fn nr_open(value: Option<u64>, target: u64) -> Check {
    let Some(value) = value else {
        return unreadable("fs.nr_open", "/proc/sys/fs/nr_open");
    };
    if value < target {
        Check::warn(
            format!(
                "fs.nr_open {value} < {target}: no process may have an open-file limit above {value}, \
                 so LimitNOFILE={RECOMMENDED_NOFILE} fails"
            ),
            format!("`sysctl -w fs.nr_open={RECOMMENDED_NR_OPEN}`; {PERSIST}"),
        )
    } else {
        Check::ok(format!(
            "fs.nr_open {value} >= {target} (ceiling of any process's open-file limit)"
        ))
    }
}

fn memory(limit: Option<MemoryLimit>, available: Option<u64>) -> Check {
    let Some(limit) = limit else {
        return Check::warn(
            "memory: limit unknown (/proc/meminfo unreadable); only open files bound max connections".to_owned(),
            "set SURGE_MAX_CONNECTIONS explicitly",
        );
    };
    let allows =
        host::derive_max_connections(u64::MAX, Some(limit.bytes), BYTES_PER_CONNECTION_ESTIMATE)
            .by_memory;
    let available = available.map_or_else(|| "unknown".to_owned(), format_bytes);
    Check::ok(format!(
        "memory: limit {} ({}), {available} available; 80 % of the limit at {} per connection (estimate) allows {allows} connections",
        format_bytes(limit.bytes),
        limit.source.describe(),
        format_bytes(BYTES_PER_CONNECTION_ESTIMATE),
    ))
}

fn max_connections(configured: Option<u32>, facts: &HostFacts) -> Check {
    let Some(nofile) = facts.nofile else {
        return Check::warn(
            "max connections: cannot be checked, the open-file limit is unknown".to_owned(),
            "run `surge doctor` on the host itself, not in a restricted sandbox",
        );
    };
    // The limit surge will run with once it has raised soft to hard.
    let files = host::nofile_target(nofile, facts.nr_open);
    let derived = host::derive_max_connections(
        files,
        facts.memory.map(|m| m.bytes),
        BYTES_PER_CONNECTION_ESTIMATE,
    );
    let Some(configured) = configured else {
        return Check::ok(format!(
            "{} (derived; SURGE_MAX_CONNECTIONS unset)",
            derived.explanation
        ));
    };
    if let Err(message) = host::check_max_connections(configured, files) {
        return Check {
            level: Level::Fail,
            text: format!("max connections: {message}"),
            fix: None,
        };
    }
    let memory = match facts.memory {
        Some(m) => format!(
            "memory allows {} (80 % of {} / {})",
            derived.by_memory,
            format_bytes(m.bytes),
            format_bytes(BYTES_PER_CONNECTION_ESTIMATE)
        ),
        None => "memory unknown".to_owned(),
    };
    if u64::from(configured) > derived.by_memory {
        Check::warn(
            format!(
                "max connections: configured {configured}, files allow {}, {memory}: the gateway may run out of memory before it is full",
                derived.by_files
            ),
            format!(
                "lower SURGE_MAX_CONNECTIONS to {} or raise the memory limit",
                derived.by_memory
            ),
        )
    } else {
        Check::ok(format!(
            "max connections: configured {configured}, files allow {}, {memory}",
            derived.by_files
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::MemorySource;

    #[test]
    fn jwt_key_files_are_read_as_serve_would() {
        assert_eq!(jwt_keys(&Config::default()), None, "JWT off: no line");
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/tests/fixtures/jwt/");
        let good = Config {
            jwt_public_key_file: Some(format!("{fixture}es256_public.pem").into()),
            ..Config::default()
        };
        let check = jwt_keys(&good).expect("a line");
        assert_eq!(check.level, Level::Ok, "{check}");
        assert!(
            check
                .text
                .contains("1 key(s) from SURGE_JWT_PUBLIC_KEY_FILE="),
            "{check}"
        );
        for path in [
            "/nonexistent/surge-key.pem".to_owned(),
            format!("{fixture}es256_private.pem"),
        ] {
            let bad = Config {
                jwt_public_key_file: Some(path.clone().into()),
                ..Config::default()
            };
            let check = jwt_keys(&bad).expect("a line");
            assert_eq!(check.level, Level::Fail, "{path}: {check}");
            assert!(check.text.contains(&path), "names the file: {check}");
        }
    }

    fn healthy() -> HostFacts {
        HostFacts {
            nofile: Some(FdLimits {
                soft: 1024,
                hard: 1_048_576,
            }),
            somaxconn: Some(65_535),
            tcp_max_syn_backlog: Some(65_535),
            tcp_syncookies: Some(1),
            ip_local_port_range: Some((1024, 65_535)),
            file_max: Some(2_097_152),
            nr_open: Some(2_097_152),
            memory: Some(MemoryLimit {
                bytes: 8 << 30,
                source: MemorySource::CgroupV2,
            }),
            mem_available: Some(7 << 30),
        }
    }

    fn unhealthy() -> HostFacts {
        HostFacts {
            nofile: Some(FdLimits {
                soft: 1024,
                hard: 1024,
            }),
            somaxconn: Some(128),
            tcp_max_syn_backlog: Some(512),
            tcp_syncookies: Some(0),
            ip_local_port_range: Some((49_152, 65_535)),
            file_max: Some(98_304),
            nr_open: Some(1_048_576),
            memory: Some(MemoryLimit {
                bytes: 2 << 30,
                source: MemorySource::CgroupV1,
            }),
            mem_available: Some(1536 << 20),
        }
    }

    #[test]
    fn healthy_host_is_all_ok() {
        let report = report(&Config::default(), &healthy());
        assert_eq!(report.worst(), Level::Ok, "{report}");
        assert_eq!(report.checks.len(), 9);
        let text = report.to_string();
        for line in text.lines().take(9) {
            assert!(line.starts_with("OK   "), "{line}");
            assert!(!line.contains("fix:"), "{line}");
        }
        assert!(text.contains(
            "max connections 838860 = min(files 1048576 - 256 reserve = 1048320, \
             memory 80 % of 8 GiB / 8 KiB = 838860) (derived; SURGE_MAX_CONNECTIONS unset)"
        ));
        assert!(text.ends_with("summary: 9 OK, 0 WARN, 0 FAIL\n"));
    }

    #[test]
    fn unhealthy_host_gets_exact_fixes() {
        let config = Config {
            max_connections: Some(5000),
            ..Config::default()
        };
        let report = report(&config, &unhealthy());
        assert_eq!(report.worst(), Level::Fail);
        let text = report.to_string();
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.contains(prefix))
                .unwrap_or_else(|| panic!("no line with {prefix}:\n{text}"))
                .to_owned()
        };
        let files = line("open files");
        assert!(files.starts_with("WARN "), "{files}");
        assert!(files.contains("caps max connections at 768"), "{files}");
        assert!(files.contains("LimitNOFILE=1048576"), "{files}");
        assert!(files.contains("ulimit -n 1048576"), "{files}");
        let somax = line("net.core.somaxconn");
        assert!(somax.starts_with("WARN "), "{somax}");
        assert!(
            somax.contains("sysctl -w net.core.somaxconn=65535"),
            "{somax}"
        );
        assert!(somax.contains("deploy/99-surge.conf"), "{somax}");
        assert!(
            line("tcp_max_syn_backlog").contains("sysctl -w net.ipv4.tcp_max_syn_backlog=65535")
        );
        assert!(line("tcp_syncookies").contains("sysctl -w net.ipv4.tcp_syncookies=1"));
        assert!(
            line("ip_local_port_range")
                .contains("sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"")
        );
        assert!(line("fs.file-max").contains("sysctl -w fs.file-max=2097152"));
        assert!(line("fs.nr_open").starts_with("OK   "));
        let max = line("max connections:");
        assert!(max.starts_with("FAIL "), "{max}");
        assert!(
            max.contains("1024 open files - 256 reserved = 768 connections"),
            "{max}"
        );
        insta::assert_snapshot!("unhealthy_host", text);
    }

    #[test]
    fn unhealthy_host_without_a_configured_maximum_only_warns() {
        let report = report(&Config::default(), &unhealthy());
        assert_eq!(report.worst(), Level::Warn);
        assert!(report.to_string().contains(
            "OK   max connections 768 = min(files 1024 - 256 reserve = 768, \
             memory 80 % of 2 GiB / 8 KiB = 209715)"
        ));
    }

    #[test]
    fn configured_maximum_beyond_memory_warns() {
        let config = Config {
            max_connections: Some(900_000),
            ..Config::default()
        };
        let report = report(&config, &healthy());
        assert_eq!(report.worst(), Level::Warn);
        let last = report
            .checks
            .last()
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            last.starts_with("WARN max connections: configured 900000"),
            "{last}"
        );
        assert!(
            last.contains("lower SURGE_MAX_CONNECTIONS to 838860"),
            "{last}"
        );
    }

    #[test]
    fn unreadable_facts_warn_instead_of_failing() {
        let facts = HostFacts {
            nofile: None,
            somaxconn: None,
            tcp_max_syn_backlog: None,
            tcp_syncookies: None,
            ip_local_port_range: None,
            file_max: None,
            nr_open: None,
            memory: None,
            mem_available: None,
        };
        let report = report(&Config::default(), &facts);
        assert_eq!(report.worst(), Level::Warn);
        assert!(
            report
                .checks
                .iter()
                .all(|c| c.level == Level::Warn && c.fix.is_some())
        );
    }

    #[test]
    fn this_host_produces_a_report() {
        let report = run(&Config::default());
        // Visible with `--nocapture`: this machine's real report.
        println!("{report}");
        // Nine host checks, then the two listeners (no NATS configured).
        assert_eq!(report.checks.len(), 11);
    }

    fn probe(setting: &'static str, target: &str, outcome: Result<(), &str>) -> Probe {
        Probe {
            setting,
            target: target.to_owned(),
            outcome: outcome.map_err(str::to_owned),
        }
    }

    #[test]
    fn a_listener_in_use_fails_naming_its_address_and_setting() {
        let checks = network(&NetworkFacts {
            listeners: vec![
                probe(
                    "SURGE_LISTEN",
                    "0.0.0.0:8080",
                    Err("address already in use"),
                ),
                probe("SURGE_ADMIN_LISTEN", "127.0.0.1:9090", Ok(())),
            ],
            nats: Vec::new(),
        });
        let shown: Vec<String> = checks.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "FAIL listen 0.0.0.0:8080 (SURGE_LISTEN): cannot be bound: address already in use; \
                 fix: stop what holds it (`ss -ltnp` shows the process) or set SURGE_LISTEN to a free address",
                "OK   listen 127.0.0.1:9090 (SURGE_ADMIN_LISTEN): can be bound",
            ]
        );
    }

    #[test]
    fn unreachable_nats_fails_when_no_server_answers_and_warns_otherwise() {
        let down = probe(
            "SURGE_NATS_URL",
            "nats://n1:4222",
            Err("connection refused"),
        );
        let up = probe("SURGE_NATS_URL", "nats://n2:4222", Ok(()));
        let alone = network(&NetworkFacts {
            listeners: Vec::new(),
            nats: vec![down.clone()],
        });
        assert_eq!(alone.len(), 1);
        assert_eq!(alone[0].level, Level::Fail);
        assert!(
            alone[0].to_string().starts_with(
                "FAIL NATS nats://n1:4222 (SURGE_NATS_URL): unreachable: connection refused; fix: "
            ),
            "{}",
            alone[0]
        );
        let levels: Vec<Level> = network(&NetworkFacts {
            listeners: Vec::new(),
            nats: vec![down, up],
        })
        .iter()
        .map(|c| c.level)
        .collect();
        assert_eq!(levels, [Level::Warn, Level::Ok]);
    }

    #[test]
    fn collected_network_facts_see_a_bound_port_and_a_closed_one() {
        let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
        let taken = busy.local_addr().expect("addr");
        let closed = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let config = Config {
            listen: taken,
            admin_listen: "127.0.0.1:0".parse().expect("addr"),
            nats_url: Some(format!("nats://{closed},nats://{taken}")),
            ..Config::default()
        };
        let facts = NetworkFacts::collect(&config);
        assert!(
            facts.listeners[0]
                .outcome
                .as_ref()
                .is_err_and(|e| e.contains("already in use")),
            "{facts:?}"
        );
        assert_eq!(facts.listeners[1].outcome, Ok(()));
        assert!(facts.nats[0].outcome.is_err(), "{facts:?}");
        // The busy listener accepts TCP connections: reachable.
        assert_eq!(facts.nats[1].outcome, Ok(()));
    }

    #[test]
    fn the_tls_certificate_fails_when_unusable_or_expired_and_warns_near_expiry() {
        let day = 86_400;
        let info = CertInfo {
            subject: "CN=surge.example".to_owned(),
            serial: "2a".to_owned(),
            not_before: 0,
            not_after: 100 * day,
            expires: "1970-04-11".to_owned(),
        };
        let at = |now: i64| tls_certificate(&Ok(info.clone()), now);
        let ok = at(50 * day);
        assert_eq!(ok.level, Level::Ok);
        assert_eq!(
            ok.to_string(),
            "OK   TLS certificate CN=surge.example (serial 2a): key matches; valid until 1970-04-11 (50 days left)"
        );
        let soon = at(90 * day);
        assert_eq!(soon.level, Level::Warn);
        assert!(
            soon.to_string()
                .contains("expires on 1970-04-11, in 10 days; fix: renew it"),
            "{soon}"
        );
        assert_eq!(at((100 - TLS_EXPIRY_WARN_DAYS) * day).level, Level::Ok);
        let expired = at(100 * day + 1);
        assert_eq!(expired.level, Level::Fail);
        assert!(
            expired.to_string().contains("expired on 1970-04-11"),
            "{expired}"
        );
        assert_eq!(at(-1).level, Level::Fail);
        let unreadable = tls_certificate(
            &Err(
                "cannot read SURGE_TLS_CERT=/nope: No such file or directory (os error 2)"
                    .to_owned(),
            ),
            0,
        );
        assert_eq!(unreadable.level, Level::Fail);
        assert!(
            unreadable
                .to_string()
                .starts_with("FAIL TLS certificate: cannot read SURGE_TLS_CERT=/nope"),
            "{unreadable}"
        );
    }

    /// `key = value` lines of a sysctl.d file, comments skipped.
    fn sysctl_conf(text: &str) -> Vec<(String, String)> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect()
    }

    #[test]
    fn deploy_files_carry_the_values_the_doctor_recommends() {
        let conf = sysctl_conf(include_str!("../../deploy/99-surge.conf"));
        let get = |key: &str| {
            conf.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{key} missing from deploy/99-surge.conf"))
        };
        assert_eq!(get("net.core.somaxconn"), RECOMMENDED_SOMAXCONN.to_string());
        assert_eq!(
            get("net.ipv4.tcp_max_syn_backlog"),
            RECOMMENDED_SYN_BACKLOG.to_string()
        );
        assert_eq!(get("net.ipv4.tcp_syncookies"), "1");
        let (lo, hi) = RECOMMENDED_PORT_RANGE;
        assert_eq!(get("net.ipv4.ip_local_port_range"), format!("{lo} {hi}"));
        assert_eq!(get("fs.file-max"), RECOMMENDED_FILE_MAX.to_string());
        assert_eq!(get("fs.nr_open"), RECOMMENDED_NR_OPEN.to_string());
        assert!(RECOMMENDED_SOMAXCONN >= u64::from(Config::default().backlog));

        let unit = include_str!("../../deploy/surge.service");
        assert!(
            unit.lines()
                .any(|l| l == format!("LimitNOFILE={RECOMMENDED_NOFILE}"))
        );
        let stop = unit
            .lines()
            .find_map(|l| l.strip_prefix("TimeoutStopSec="))
            .and_then(|v| v.trim_end_matches('s').parse::<u64>().ok())
            .expect("TimeoutStopSec=<seconds>s in deploy/surge.service");
        assert!(stop > Config::default().shutdown_drain.as_secs());
    }
}
