//! Facts about the host that bound how many connections surge can hold, and
//! the one limit it adjusts itself.
//!
//! The seed server plateaued at ~8.6k connections because of a 1024
//! open-file limit, and lost 18.5 % of a connection burst to a ~128 listen
//! backlog; neither was visible until a load test failed. This module reads
//! those limits (procfs, sysfs, `getrlimit`), raises the soft open-file limit
//! to the hard one at start, and derives the default maximum number of
//! connections from what the host can actually hold, with the arithmetic
//! spelled out so an operator can check it.
//!
//! Linux only. The parsers are pure functions over strings so the tests do
//! not depend on the machine; thin wrappers read the real files.

use std::fmt::Write as _;
use std::io;

/// File descriptors kept back from the connection budget: the public and
/// admin listeners, the broker connection (and its reconnect attempts), log
/// output, admin requests in flight, and sockets that are accepted only to
/// be answered `503` when the gateway is full. Without this reserve a full
/// gateway would hit `EMFILE` in `accept()` and leave newcomers to time out
/// in the backlog instead of being rejected fast.
pub const FD_RESERVE: u64 = 256;

/// Memory one idle connection costs, user space and kernel together.
/// Measured by `bench/run` (bench/results/2026-11-22.md): 2.5 KiB of
/// surge's RSS plus 3.9 KiB of kernel slab (TCP sock, inode, dentry, file,
/// epoll item) per socket; rounded up to 8 KiB for headroom (a connection
/// with traffic in flight also holds socket buffer pages).
pub const BYTES_PER_CONNECTION_ESTIMATE: u64 = 8 * 1024;

/// Share of the memory limit the connection budget may use; the rest is
/// headroom for the broker, replay buffers and bursts.
const MEMORY_SHARE_PERCENT: u64 = 80;

/// Bounds of a derived maximum: at least one connection, and no more than a
/// single process can sensibly schedule.
const MAX_CONNECTIONS_CAP: u64 = 10_000_000;

/// `RLIMIT_NOFILE` of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimits {
    pub soft: u64,
    pub hard: u64,
}

/// The current `RLIMIT_NOFILE`.
pub fn nofile_limits() -> io::Result<FdLimits> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(FdLimits {
        soft: rlim_to_u64(limit.rlim_cur),
        hard: rlim_to_u64(limit.rlim_max),
    })
}

/// Raises the soft open-file limit to the hard limit (an unprivileged
/// process may always do that) and returns the limits before and after.
/// When soft already equals hard nothing changes and both are returned
/// unchanged; that is not an error.
pub fn raise_nofile() -> io::Result<(FdLimits, FdLimits)> {
    let before = nofile_limits()?;
    let target = nofile_target(before, nr_open());
    if target <= before.soft {
        return Ok((before, before));
    }
    let limit = libc::rlimit {
        rlim_cur: u64_to_rlim(target),
        rlim_max: u64_to_rlim(before.hard),
    };
    // SAFETY: setrlimit only reads the struct we pass.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((before, nofile_limits()?))
}

/// The soft limit to ask for: the hard limit, except that an unlimited hard
/// limit cannot be used as a soft one (the kernel refuses more than
/// `fs.nr_open`).
pub fn nofile_target(limits: FdLimits, nr_open: Option<u64>) -> u64 {
    if limits.hard == rlim_to_u64(libc::RLIM_INFINITY) {
        nr_open.map_or(limits.soft, |n| n.max(limits.soft))
    } else {
        limits.hard
    }
}

#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn rlim_to_u64(value: libc::rlim_t) -> u64 {
    // rlim_t is 64-bit on every 64-bit Linux target; on 32-bit ones it widens.
    value as u64
}

fn u64_to_rlim(value: u64) -> libc::rlim_t {
    libc::rlim_t::try_from(value).unwrap_or(libc::RLIM_INFINITY)
}

/// The value of a sysctl such as `net.core.somaxconn`, read from
/// `/proc/sys/net/core/somaxconn`, trimmed. `None` when it cannot be read
/// (not Linux, a restricted container) or the name is not a plain dotted
/// name.
pub fn read_sysctl(name: &str) -> Option<String> {
    let path = sysctl_path(name)?;
    std::fs::read_to_string(path)
        .ok()
        .map(|v| v.trim().to_owned())
}

/// `/proc/sys/...` for a dotted sysctl name; refuses anything that could
/// leave `/proc/sys`.
pub fn sysctl_path(name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    valid.then(|| format!("/proc/sys/{}", name.replace('.', "/")))
}

fn sysctl_number(name: &str) -> Option<u64> {
    read_sysctl(name)?.parse().ok()
}

/// `net.core.somaxconn`: the kernel caps every listen backlog at this.
pub fn somaxconn() -> Option<u64> {
    sysctl_number("net.core.somaxconn")
}

/// `net.ipv4.tcp_max_syn_backlog`: half-open connections kept per listener.
pub fn tcp_max_syn_backlog() -> Option<u64> {
    sysctl_number("net.ipv4.tcp_max_syn_backlog")
}

/// `net.ipv4.tcp_syncookies`: 1 answers a full SYN queue with cookies
/// instead of dropping SYNs.
pub fn tcp_syncookies() -> Option<u64> {
    sysctl_number("net.ipv4.tcp_syncookies")
}

/// `net.ipv4.ip_local_port_range` as `(lo, hi)`.
pub fn ip_local_port_range() -> Option<(u16, u16)> {
    parse_port_range(&read_sysctl("net.ipv4.ip_local_port_range")?)
}

/// `fs.file-max`: open files for the whole system.
pub fn file_max() -> Option<u64> {
    sysctl_number("fs.file-max")
}

/// `fs.nr_open`: the ceiling of any process's `RLIMIT_NOFILE`.
pub fn nr_open() -> Option<u64> {
    sysctl_number("fs.nr_open")
}

/// Parses `"32768\t60999"`; `None` unless it is two ports with lo <= hi.
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut parts = text.split_whitespace();
    let lo = parts.next()?.parse().ok()?;
    let hi = parts.next()?.parse().ok()?;
    (parts.next().is_none() && lo <= hi).then_some((lo, hi))
}

/// Where a memory limit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySource {
    /// `memory.max` of this process's cgroup (v2) or an ancestor.
    CgroupV2,
    /// `memory.limit_in_bytes` of this process's cgroup (v1) or an ancestor.
    CgroupV1,
    /// No cgroup limit: `MemTotal` of `/proc/meminfo`.
    MemTotal,
}

impl MemorySource {
    /// Where an operator would look to confirm the value.
    pub fn describe(self) -> &'static str {
        match self {
            MemorySource::CgroupV2 => "cgroup v2 memory.max",
            MemorySource::CgroupV1 => "cgroup v1 memory.limit_in_bytes",
            MemorySource::MemTotal => "MemTotal, no cgroup limit",
        }
    }
}

/// The memory this process may use, and where that figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    pub source: MemorySource,
}

/// The memory this process may use: its cgroup limit when there is one
/// (v2, else a sane v1 value), else the machine's `MemTotal`.
pub fn memory_limit_bytes() -> Option<u64> {
    memory_limit().map(|m| m.bytes)
}

/// [`memory_limit_bytes`] with its source.
pub fn memory_limit() -> Option<MemoryLimit> {
    memory_limit_from(&|path| std::fs::read_to_string(path).ok())
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn mem_available_bytes() -> Option<u64> {
    parse_meminfo(
        &std::fs::read_to_string("/proc/meminfo").ok()?,
        "MemAvailable",
    )
}

/// [`memory_limit`] over a file reader, so tests can supply a fake
/// `/proc` and `/sys`.
///
/// A cgroup's effective limit is the smallest of its own and its
/// ancestors', so every level of the path is read. The path in
/// `/proc/self/cgroup` may not exist under `/sys/fs/cgroup` in a container
/// without a cgroup namespace (the container's cgroup is mounted as the
/// root); walking up to the root covers that case too.
pub fn memory_limit_from(read: &dyn Fn(&str) -> Option<String>) -> Option<MemoryLimit> {
    let mem_total = read("/proc/meminfo").and_then(|m| parse_meminfo(&m, "MemTotal"));
    let below_total = |bytes: u64| mem_total.is_none_or(|total| bytes < total);
    let cgroups = read("/proc/self/cgroup").unwrap_or_default();

    let v2 = cgroup_v2_path(&cgroups).and_then(|path| {
        ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .iter()
            .filter_map(|root| min_over_ancestors(read, root, path, "memory.max", parse_memory_max))
            .min()
    });
    if let Some(bytes) = v2.filter(|&b| below_total(b)) {
        return Some(MemoryLimit {
            bytes,
            source: MemorySource::CgroupV2,
        });
    }

    let v1 = cgroup_v1_memory_path(&cgroups).and_then(|path| {
        min_over_ancestors(
            read,
            "/sys/fs/cgroup/memory",
            path,
            "memory.limit_in_bytes",
            parse_limit_in_bytes,
        )
    });
    if let Some(bytes) = v1.filter(|&b| below_total(b)) {
        return Some(MemoryLimit {
            bytes,
            source: MemorySource::CgroupV1,
        });
    }

    mem_total.map(|bytes| MemoryLimit {
        bytes,
        source: MemorySource::MemTotal,
    })
}

fn min_over_ancestors(
    read: &dyn Fn(&str) -> Option<String>,
    root: &str,
    path: &str,
    file: &str,
    parse: fn(&str) -> Option<u64>,
) -> Option<u64> {
    let mut dir = path.trim_end_matches('/');
    let mut smallest: Option<u64> = None;
    loop {
        let candidate = format!("{root}{dir}/{file}");
        if let Some(limit) = read(&candidate).as_deref().and_then(parse) {
            smallest = Some(smallest.map_or(limit, |s| s.min(limit)));
        }
        if dir.is_empty() {
            return smallest;
        }
        dir = dir.rfind('/').map_or("", |i| &dir[..i]);
    }
}

/// The cgroup v2 path of `/proc/self/cgroup` (the `0::<path>` line).
pub fn parse_cgroup_v2_path(proc_self_cgroup: &str) -> Option<&str> {
    cgroup_v2_path(proc_self_cgroup)
}

fn cgroup_v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

/// The cgroup v1 path of the memory controller in `/proc/self/cgroup`
/// (a line like `4:memory:/path`, controllers possibly comma-joined).
pub fn cgroup_v1_memory_path(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let _id = fields.next()?;
        let controllers = fields.next()?;
        let path = fields.next()?;
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    })
}

/// `memory.max`: a byte count, or `max` for no limit (`None`).
pub fn parse_memory_max(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        value => value.parse().ok(),
    }
}

/// `memory.limit_in_bytes`: v1 reports "no limit" as a huge page-aligned
/// number near `i64::MAX`; anything from 2^62 up is treated as unlimited.
pub fn parse_limit_in_bytes(text: &str) -> Option<u64> {
    text.trim().parse().ok().filter(|&v: &u64| v < 1 << 62)
}

/// A `/proc/meminfo` field such as `MemTotal:  24684084 kB`, in bytes.
pub fn parse_meminfo(meminfo: &str, field: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        match parts.next() {
            Some("kB") => value.checked_mul(1024),
            None => Some(value),
            Some(_) => None,
        }
    })
}

/// The default maximum number of connections and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    pub max_connections: u32,
    /// Open files left after [`FD_RESERVE`].
    pub by_files: u64,
    /// Connections that fit in 80 % of the memory limit; `u64::MAX` when
    /// the memory limit is unknown (memory then does not bound the result).
    pub by_memory: u64,
    /// One line with the arithmetic, for the start-up log and `doctor`.
    pub explanation: String,
}

/// The maximum number of connections this host can hold: the smaller of
/// what the open-file limit leaves after [`FD_RESERVE`] and what 80 % of
/// the memory limit holds at `per_connection` bytes each, clamped to
/// 1..=10,000,000.
pub fn derive_max_connections(
    fd_soft: u64,
    memory_bytes: Option<u64>,
    per_connection: u64,
) -> Derived {
    let by_files = fd_soft.saturating_sub(FD_RESERVE);
    let per_connection = per_connection.max(1);
    let by_memory = memory_bytes.map_or(u64::MAX, |m| {
        let share = u128::from(m) * u128::from(MEMORY_SHARE_PERCENT) / 100;
        u64::try_from(share / u128::from(per_connection)).unwrap_or(u64::MAX)
    });
    let unclamped = by_files.min(by_memory);
    let clamped = unclamped.clamp(1, MAX_CONNECTIONS_CAP);
    let max_connections = u32::try_from(clamped).unwrap_or(u32::MAX);

    let mut explanation = format!(
        "max connections {max_connections} = min(files {fd_soft} - {FD_RESERVE} reserve = {by_files}, "
    );
    match memory_bytes {
        Some(m) => {
            let _ = write!(
                explanation,
                "memory {MEMORY_SHARE_PERCENT} % of {} / {} = {by_memory})",
                format_bytes(m),
                format_bytes(per_connection)
            );
        }
        None => explanation.push_str("memory unknown)"),
    }
    if clamped != unclamped {
        let _ = write!(explanation, ", clamped to 1..={MAX_CONNECTIONS_CAP}");
    }
    Derived {
        max_connections,
        by_files,
        by_memory,
        explanation,
    }
}

/// Refuses a configured maximum the open-file limit cannot hold: surge
/// would otherwise hit `EMFILE` in `accept()` before reaching it, and the
/// connections beyond the limit would time out instead of getting a 503.
pub fn check_max_connections(configured: u32, fd_soft: u64) -> Result<(), String> {
    let allowed = fd_soft.saturating_sub(FD_RESERVE);
    if u64::from(configured) <= allowed {
        return Ok(());
    }
    Err(format!(
        "SURGE_MAX_CONNECTIONS={configured} exceeds what the open-file limit allows: \
         {fd_soft} open files - {FD_RESERVE} reserved = {allowed} connections; \
         raise the limit (LimitNOFILE=1048576 in the systemd unit, or `ulimit -n 1048576` \
         before starting surge) or lower SURGE_MAX_CONNECTIONS to {allowed} or less"
    ))
}

/// Bytes in binary units: `16 KiB`, `23.5 GiB`; whole numbers without a
/// decimal.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut scale = 1u64;
    while unit + 1 < UNITS.len() && bytes / scale >= 1024 {
        scale *= 1024;
        unit += 1;
    }
    if bytes.is_multiple_of(scale) {
        format!("{} {}", bytes / scale, UNITS[unit])
    } else {
        // Display only; f64 precision is ample for one decimal.
        #[allow(clippy::cast_precision_loss)]
        let value = bytes as f64 / scale as f64;
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn fake_fs(files: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let files: BTreeMap<String, String> = files
            .iter()
            .map(|(p, c)| ((*p).to_owned(), (*c).to_owned()))
            .collect();
        move |path| files.get(path).cloned()
    }

    const MEMINFO: &str = "MemTotal:       24684084 kB\n\
                           MemFree:        20000000 kB\n\
                           MemAvailable:   24304604 kB\n";

    #[test]
    fn sysctl_names_map_to_proc_sys() {
        assert_eq!(
            sysctl_path("net.core.somaxconn").as_deref(),
            Some("/proc/sys/net/core/somaxconn")
        );
        assert_eq!(
            sysctl_path("fs.file-max").as_deref(),
            Some("/proc/sys/fs/file-max")
        );
        assert_eq!(sysctl_path("net..core"), None);
        assert_eq!(sysctl_path("../etc/passwd"), None);
        assert_eq!(sysctl_path("net/core"), None);
        assert_eq!(sysctl_path(""), None);
    }

    #[test]
    fn port_range_parses_tab_and_space_separated() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("1024 65535"), Some((1024, 65535)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("1024"), None);
        assert_eq!(parse_port_range("1024 65535 1"), None);
        assert_eq!(parse_port_range("1024 70000"), None);
    }

    #[test]
    fn meminfo_fields_are_bytes() {
        assert_eq!(parse_meminfo(MEMINFO, "MemTotal"), Some(24_684_084 * 1024));
        assert_eq!(
            parse_meminfo(MEMINFO, "MemAvailable"),
            Some(24_304_604 * 1024)
        );
        assert_eq!(parse_meminfo(MEMINFO, "Mem"), None);
        assert_eq!(parse_meminfo(MEMINFO, "SwapTotal"), None);
    }

    #[test]
    fn cgroup_paths_are_found() {
        let hybrid = "4:memory:/process_api/abc\n3:cpuset:/\n0::/\n";
        assert_eq!(parse_cgroup_v2_path(hybrid), Some("/"));
        assert_eq!(cgroup_v1_memory_path(hybrid), Some("/process_api/abc"));
        let joined = "7:cpu,memory:/a/b\n";
        assert_eq!(cgroup_v1_memory_path(joined), Some("/a/b"));
        assert_eq!(parse_cgroup_v2_path(joined), None);
        assert_eq!(
            parse_cgroup_v2_path("0::/system.slice/surge.service\n"),
            Some("/system.slice/surge.service")
        );
    }

    #[test]
    fn limit_files_parse() {
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("2147483648\n"), Some(2 << 30));
        assert_eq!(parse_limit_in_bytes("9223372036854771712\n"), None);
        assert_eq!(parse_limit_in_bytes("1073741824\n"), Some(1 << 30));
    }

    #[test]
    fn cgroup_v2_limit_is_the_smallest_on_the_path() {
        let read = fake_fs(&[
            ("/proc/meminfo", MEMINFO),
            ("/proc/self/cgroup", "0::/system.slice/surge.service\n"),
            (
                "/sys/fs/cgroup/system.slice/surge.service/memory.max",
                "max\n",
            ),
            ("/sys/fs/cgroup/system.slice/memory.max", "4294967296\n"),
        ]);
        assert_eq!(
            memory_limit_from(&read),
            Some(MemoryLimit {
                bytes: 4 << 30,
                source: MemorySource::CgroupV2
            })
        );
    }

    #[test]
    fn container_without_cgroup_namespace_uses_the_mounted_root() {
        let read = fake_fs(&[
            ("/proc/meminfo", MEMINFO),
            ("/proc/self/cgroup", "0::/docker/0123abcd\n"),
            ("/sys/fs/cgroup/memory.max", "1073741824\n"),
        ]);
        assert_eq!(memory_limit_bytes_from(&read), Some(1 << 30));
    }

    #[test]
    fn cgroup_v1_limit_is_used_when_sane() {
        let cgroup = "4:memory:/process_api/abc\n0::/\n";
        let read = fake_fs(&[
            ("/proc/meminfo", MEMINFO),
            ("/proc/self/cgroup", cgroup),
            (
                "/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes",
                "2147483648\n",
            ),
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
        ]);
        assert_eq!(
            memory_limit_from(&read),
            Some(MemoryLimit {
                bytes: 2 << 30,
                source: MemorySource::CgroupV1
            })
        );
    }

    #[test]
    fn no_cgroup_limit_falls_back_to_mem_total() {
        // This machine's layout: hybrid cgroups, v1 "unlimited", v2 without
        // a memory controller.
        let read = fake_fs(&[
            ("/proc/meminfo", MEMINFO),
            ("/proc/self/cgroup", "4:memory:/process_api/abc\n0::/\n"),
            (
                "/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
        ]);
        assert_eq!(
            memory_limit_from(&read),
            Some(MemoryLimit {
                bytes: 24_684_084 * 1024,
                source: MemorySource::MemTotal
            })
        );
        // A cgroup limit above the machine's memory is no limit either.
        let read = fake_fs(&[
            ("/proc/meminfo", MEMINFO),
            ("/proc/self/cgroup", "0::/big\n"),
            ("/sys/fs/cgroup/big/memory.max", "109951162777600\n"),
        ]);
        assert_eq!(
            memory_limit_from(&read).map(|m| m.source),
            Some(MemorySource::MemTotal)
        );
        assert_eq!(memory_limit_from(&fake_fs(&[])), None);
    }

    fn memory_limit_bytes_from(read: &dyn Fn(&str) -> Option<String>) -> Option<u64> {
        memory_limit_from(read).map(|m| m.bytes)
    }

    #[test]
    fn derivation_takes_the_smaller_bound_and_shows_the_arithmetic() {
        let d = derive_max_connections(20_000, Some(24 << 30), BYTES_PER_CONNECTION_ESTIMATE);
        assert_eq!(d.by_files, 19_744);
        assert_eq!(d.by_memory, 2_516_582);
        assert_eq!(d.max_connections, 19_744);
        assert_eq!(
            d.explanation,
            "max connections 19744 = min(files 20000 - 256 reserve = 19744, \
             memory 80 % of 24 GiB / 8 KiB = 2516582)"
        );

        let d = derive_max_connections(1_048_576, Some(1 << 30), 16 * 1024);
        assert_eq!(d.max_connections, 52_428);
        assert_eq!(d.by_memory, 52_428);
    }

    #[test]
    fn derivation_clamps_and_handles_unknown_memory() {
        let d = derive_max_connections(100, Some(1 << 30), 16 * 1024);
        assert_eq!(d.by_files, 0);
        assert_eq!(d.max_connections, 1);
        assert!(d.explanation.ends_with(", clamped to 1..=10000000"));

        let d = derive_max_connections(u64::MAX, None, 0);
        assert_eq!(d.by_memory, u64::MAX);
        assert_eq!(d.max_connections, 10_000_000);
        assert!(d.explanation.contains("memory unknown"));
    }

    #[test]
    fn configured_maximum_above_the_file_limit_is_refused() {
        assert_eq!(check_max_connections(19_744, 20_000), Ok(()));
        let err = check_max_connections(19_745, 20_000).unwrap_err();
        assert!(
            err.contains("20000 open files - 256 reserved = 19744"),
            "{err}"
        );
        assert!(err.contains("LimitNOFILE=1048576"), "{err}");
        assert!(err.contains("ulimit -n"), "{err}");
        assert!(err.contains("lower SURGE_MAX_CONNECTIONS"), "{err}");
        assert!(check_max_connections(1, 100).is_err());
    }

    #[test]
    fn bytes_are_formatted_in_binary_units() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(16 * 1024), "16 KiB");
        assert_eq!(format_bytes(24 << 30), "24 GiB");
        assert_eq!(format_bytes(24_684_084 * 1024), "23.5 GiB");
        assert_eq!(format_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn nofile_target_is_the_hard_limit() {
        let equal = FdLimits {
            soft: 20_000,
            hard: 20_000,
        };
        assert_eq!(nofile_target(equal, Some(1 << 20)), 20_000);
        let low = FdLimits {
            soft: 1024,
            hard: 524_288,
        };
        assert_eq!(nofile_target(low, None), 524_288);
        let unlimited = FdLimits {
            soft: 1024,
            hard: rlim_to_u64(libc::RLIM_INFINITY),
        };
        assert_eq!(nofile_target(unlimited, Some(1 << 20)), 1 << 20);
        assert_eq!(nofile_target(unlimited, None), 1024);
    }

    #[test]
    fn raising_nofile_works_even_when_soft_equals_hard() {
        // On this machine soft = hard = 20,000: nothing to raise, no error.
        let (before, after) = raise_nofile().expect("getrlimit/setrlimit");
        assert!(before.soft <= before.hard);
        assert_eq!(after.hard, before.hard);
        assert!(after.soft >= before.soft);
        assert_eq!(
            after.soft,
            nofile_target(before, nr_open()).max(before.soft)
        );
    }

    #[test]
    fn this_host_can_be_read() {
        // Linux facts every host has; values differ per machine.
        assert!(somaxconn().is_some());
        assert!(ip_local_port_range().is_some());
        assert!(memory_limit_bytes().is_some_and(|b| b > 0));
        assert!(mem_available_bytes().is_some_and(|b| b > 0));
    }
}
