//! What the kernel says about surge and the machine: `/proc` snapshots and
//! the figures taken from them (memory, CPU, kernel bytes per socket).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The slab caches a loopback TCP connection grows (both ends).
pub const SLABS: [&str; 6] = [
    "TCP",
    "sock_inode_cache",
    "dentry",
    "filp",
    "eventpoll_epi",
    "eventpoll_pwq",
];

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Clock ticks per second of `/proc/<pid>/stat` CPU times.
pub fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// A process's utime + stime at a moment, and the jiffies of the core it
/// is pinned to (all processes), when it is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuSample {
    pub unix_ms: u64,
    pub ticks: u64,
    /// (busy, total) jiffies of the watched core from `/proc/stat`.
    pub core: Option<(u64, u64)>,
}

pub fn cpu_sample(pid: u32, core: Option<usize>) -> Option<CpuSample> {
    let ticks = crate::limits::parse_proc_stat_ticks(&read(format!("/proc/{pid}/stat")))?;
    Some(CpuSample {
        unix_ms: unix_ms(),
        ticks,
        core: core.and_then(|c| core_jiffies(&read("/proc/stat"), c)),
    })
}

/// (busy, total) jiffies of `cpu<core>` in `/proc/stat`.
fn core_jiffies(text: &str, core: usize) -> Option<(u64, u64)> {
    let name = format!("cpu{core}");
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    jiffies(line)
}

/// The busy share of the watched core over `[from, to]` (unix ms), every
/// process counted: whether surge had its core to itself.
pub fn core_busy_percent(samples: &[CpuSample], from: u64, to: u64) -> Option<f64> {
    let a = samples.iter().find(|s| s.unix_ms >= from)?.core?;
    let b = samples.iter().rev().find(|s| s.unix_ms <= to)?.core?;
    (b.1 > a.1).then(|| 100.0 * (b.0 - a.0) as f64 / (b.1 - a.1) as f64)
}

/// The distinct `Cpus_allowed_list` values of a process's threads.
pub fn threads_allowed_cpus(pid: u32) -> Vec<String> {
    let mut lists: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(|task| {
            let status = read(task.ok()?.path().join("status"));
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
            Some(line.trim().to_string())
        })
        .collect();
    lists.sort();
    lists.dedup();
    lists
}

/// CPU ticks at `at`, interpolated between the samples around it.
fn ticks_at(samples: &[CpuSample], at: u64) -> Option<f64> {
    let after = samples.iter().position(|s| s.unix_ms >= at)?;
    let b = samples[after];
    if after == 0 {
        return (b.unix_ms == at).then_some(b.ticks as f64);
    }
    let a = samples[after - 1];
    let span = (b.unix_ms - a.unix_ms).max(1) as f64;
    let share = (at - a.unix_ms) as f64 / span;
    Some(a.ticks as f64 + share * (b.ticks as f64 - a.ticks as f64))
}

/// The process's CPU over `[from, to]` (unix ms) as a percentage of one core.
pub fn busy_percent(samples: &[CpuSample], from: u64, to: u64) -> Option<f64> {
    if to <= from {
        return None;
    }
    let (a, b) = (ticks_at(samples, from)?, ticks_at(samples, to)?);
    Some(100.0 * (b - a) / ticks_per_s() / ((to - from) as f64 / 1000.0))
}

/// A `Key: value [kB]` field of `/proc/<pid>/status` or `/proc/meminfo`, in bytes.
pub fn kv(text: &str, key: &str) -> Option<u64> {
    let rest = text
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    let mut parts = rest.split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    Some(if parts.next() == Some("kB") {
        value * 1024
    } else {
        value
    })
}

/// (busy, total) jiffies of all CPUs from the first line of `/proc/stat`.
fn machine_jiffies(text: &str) -> Option<(u64, u64)> {
    jiffies(text.lines().next()?)
}

/// (busy, total) of one `cpu…` line: idle and iowait are not busy.
fn jiffies(line: &str) -> Option<(u64, u64)> {
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 4 {
        return None;
    }
    let idle = f[3] + f.get(4).copied().unwrap_or(0);
    let total: u64 = f.iter().sum();
    Some((total - idle, total))
}

/// `TCP: inuse … mem N` of `/proc/net/sockstat`: (inuse, mem pages).
fn sockstat_tcp(text: &str) -> Option<(i64, i64)> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| -> Option<i64> {
        let at = f.iter().position(|x| *x == name)?;
        f.get(at + 1)?.parse().ok()
    };
    Some((field("inuse")?, field("mem")?))
}

/// active objects and object size of the [`SLABS`] caches.
fn slabs(text: &str) -> BTreeMap<String, (i64, i64)> {
    text.lines()
        .filter_map(|line| {
            let p: Vec<&str> = line.split_whitespace().collect();
            if p.len() > 3 && SLABS.contains(&p[0]) {
                Some((p[0].to_string(), (p[1].parse().ok()?, p[3].parse().ok()?)))
            } else {
                None
            }
        })
        .collect()
}

/// What the kernel and the gateway look like at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub unix_ms: u64,
    pub status: String,
    pub stat: String,
    pub sockstat: String,
    pub slabinfo: String,
    pub meminfo: String,
    pub procstat: String,
    /// `connections.current` of `/health`.
    pub connections: Option<u64>,
}

impl Snapshot {
    pub fn take(pid: u32, connections: Option<u64>) -> Snapshot {
        Snapshot {
            unix_ms: unix_ms(),
            status: read(format!("/proc/{pid}/status")),
            stat: read(format!("/proc/{pid}/stat")),
            sockstat: read("/proc/net/sockstat"),
            slabinfo: read("/proc/slabinfo"),
            meminfo: read("/proc/meminfo"),
            procstat: read("/proc/stat"),
            connections,
        }
    }

    /// Kept in the run's directory for `--keep`.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, text) in [
            ("status", &self.status),
            ("stat", &self.stat),
            ("sockstat", &self.sockstat),
            ("slabinfo", &self.slabinfo),
            ("meminfo", &self.meminfo),
            ("procstat", &self.procstat),
        ] {
            std::fs::write(dir.join(name), text)?;
        }
        std::fs::write(dir.join("time"), format!("{}\n", self.unix_ms))
    }

    pub fn cpu_ticks(&self) -> Option<u64> {
        crate::limits::parse_proc_stat_ticks(&self.stat)
    }
}

/// Surge's CPU seconds between two snapshots.
pub fn cpu_seconds(a: &Snapshot, b: &Snapshot) -> Option<f64> {
    Some((b.cpu_ticks()? as f64 - a.cpu_ticks()? as f64) / ticks_per_s())
}

/// Surge's CPU between two snapshots, as a percentage of one core.
pub fn cpu_percent_between(a: &Snapshot, b: &Snapshot) -> Option<f64> {
    let wall = (b.unix_ms.checked_sub(a.unix_ms)?) as f64 / 1000.0;
    (wall > 0.0).then(|| 100.0 * cpu_seconds(a, b).unwrap_or(0.0) / wall)
}

/// Both cores, everything on the machine, between two snapshots.
pub fn machine_busy_percent(a: &Snapshot, b: &Snapshot) -> Option<f64> {
    let (a, b) = (machine_jiffies(&a.procstat)?, machine_jiffies(&b.procstat)?);
    (b.1 > a.1).then(|| 100.0 * (b.0 - a.0) as f64 / (b.1 - a.1) as f64)
}

/// Memory and kernel cost of the connections held between `before` and `hold`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeldMemory {
    pub open_at_sample: Option<u64>,
    pub vm_rss_before: Option<u64>,
    pub vm_rss_hold: Option<u64>,
    pub rss_anon_before: Option<u64>,
    pub rss_anon_hold: Option<u64>,
    pub rss_per_conn_bytes: Option<f64>,
    pub anon_per_conn_bytes: Option<f64>,
    /// Surge's CPU over 3 s while everything is held: a busy loop shows here.
    pub cpu_percent_one_core_while_held: Option<f64>,
    pub kernel: Option<KernelCost>,
}

/// Kernel bytes per socket: both ends of every loopback connection live in
/// this kernel, so the deltas cover 2 × N sockets.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KernelCost {
    pub sockets: u64,
    pub tcp_inuse_delta: Option<i64>,
    pub tcp_mem_pages_delta: Option<i64>,
    pub tcp_buffer_bytes_per_socket: Option<f64>,
    /// Per cache: objects added, object size, bytes per socket.
    pub slab: BTreeMap<String, SlabDelta>,
    pub slab_bytes_per_socket: Option<f64>,
    pub meminfo_slab_bytes_per_socket: Option<f64>,
    pub kernel_bytes_per_socket: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SlabDelta {
    pub objects_delta: i64,
    pub objsize: i64,
    pub bytes_per_socket: f64,
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

pub fn held_memory(before: &Snapshot, hold: &Snapshot, hold3: &Snapshot) -> HeldMemory {
    let n = hold.connections.filter(|&n| n > 0);
    let field = |s: &Snapshot, k: &str| kv(&s.status, k);
    let per = |a: Option<u64>, b: Option<u64>| -> Option<f64> {
        Some((b? as f64 - a? as f64) / n? as f64)
    };
    let (rb, rh) = (field(before, "VmRSS"), field(hold, "VmRSS"));
    let (ab, ah) = (field(before, "RssAnon"), field(hold, "RssAnon"));
    HeldMemory {
        open_at_sample: hold.connections,
        vm_rss_before: rb,
        vm_rss_hold: rh,
        rss_anon_before: ab,
        rss_anon_hold: ah,
        rss_per_conn_bytes: per(rb, rh),
        anon_per_conn_bytes: per(ab, ah),
        cpu_percent_one_core_while_held: cpu_percent_between(hold, hold3),
        kernel: n.map(|n| kernel_cost(before, hold, n)),
    }
}

fn kernel_cost(before: &Snapshot, hold: &Snapshot, n: u64) -> KernelCost {
    let sockets = 2 * n;
    let per_socket = |delta: f64| delta / sockets as f64;
    let mut k = KernelCost {
        sockets,
        ..KernelCost::default()
    };
    if let (Some(b), Some(h)) = (sockstat_tcp(&before.sockstat), sockstat_tcp(&hold.sockstat)) {
        k.tcp_inuse_delta = Some(h.0 - b.0);
        k.tcp_mem_pages_delta = Some(h.1 - b.1);
        k.tcp_buffer_bytes_per_socket = Some(per_socket(((h.1 - b.1) * page_size() as i64) as f64));
    }
    let (sb, sh) = (slabs(&before.slabinfo), slabs(&hold.slabinfo));
    for cache in SLABS {
        if let (Some(b), Some(h)) = (sb.get(cache), sh.get(cache)) {
            let delta = h.0 - b.0;
            k.slab.insert(
                cache.to_string(),
                SlabDelta {
                    objects_delta: delta,
                    objsize: h.1,
                    bytes_per_socket: per_socket((delta * h.1) as f64),
                },
            );
        }
    }
    if !k.slab.is_empty() {
        let slab: f64 = k.slab.values().map(|v| v.bytes_per_socket).sum();
        k.slab_bytes_per_socket = Some(slab);
        k.kernel_bytes_per_socket =
            Some(slab + k.tcp_buffer_bytes_per_socket.unwrap_or(0.0).max(0.0));
    }
    if let (Some(b), Some(h)) = (kv(&before.meminfo, "Slab"), kv(&hold.meminfo, "Slab")) {
        k.meminfo_slab_bytes_per_socket = Some(per_socket(h as f64 - b as f64));
    }
    k
}

/// The sum of a Prometheus metric over its label sets (0 when absent).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `name{reason="…"} v` lines of one metric, by label value.
pub fn metric_by_label(text: &str, name: &str) -> BTreeMap<String, f64> {
    let prefix = format!("{name}{{");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let value = rest.split_once('"')?.1.split_once('"')?.0;
            Some((value.to_string(), l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// The smallest bucket bound (seconds) holding a share `q` of a histogram's
/// observations: a bound, not an interpolation.
pub fn histogram_bound(text: &str, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, after) = rest.split_once('"')?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, after.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map(|(le, _)| *le)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_share_of_a_span_between_samples() {
        let t = ticks_per_s() as u64;
        let samples = [
            CpuSample {
                unix_ms: 1000,
                ticks: 0,
                core: Some((0, 100)),
            },
            CpuSample {
                unix_ms: 2000,
                ticks: t / 2,
                core: Some((50, 200)),
            },
            CpuSample {
                unix_ms: 3000,
                ticks: t,
                core: Some((180, 300)),
            },
        ];
        let p = busy_percent(&samples, 1000, 3000).unwrap();
        assert!((p - 50.0).abs() < 1e-9, "{p}");
        assert_eq!(busy_percent(&samples, 500, 3000), None);
        assert_eq!(busy_percent(&samples, 1000, 4000), None);
        assert_eq!(core_busy_percent(&samples, 1000, 3000), Some(90.0));
        assert_eq!(core_busy_percent(&samples, 1500, 2500), None);
        assert_eq!(
            core_jiffies("cpu  1 1 1 1\ncpu0 10 0 10 70 10 0 0 0\ncpu1 5 5 5 5\n", 0),
            Some((20, 100))
        );
    }

    #[test]
    fn proc_fields() {
        assert_eq!(
            kv("VmRSS:\t  2048 kB\nRssAnon: 1 kB\n", "VmRSS"),
            Some(2 << 20)
        );
        assert_eq!(kv("Threads: 4\n", "Threads"), Some(4));
        assert_eq!(
            sockstat_tcp("sockets: used 5\nTCP: inuse 7 orphan 0 tw 1 alloc 9 mem 3\n"),
            Some((7, 3))
        );
        assert_eq!(
            machine_jiffies("cpu  10 0 10 70 10 0 0 0\n"),
            Some((20, 100))
        );
    }

    #[test]
    fn metrics_text() {
        let text = "# HELP x\nsurge_x_total{reason=\"a\"} 2\nsurge_x_total{reason=\"b\"} 3\nsurge_xy 9\n\
                    h_bucket{le=\"0.001\"} 50\nh_bucket{le=\"0.01\"} 99\nh_bucket{le=\"+Inf\"} 100\n";
        assert_eq!(metric_sum(text, "surge_x_total"), 5.0);
        assert_eq!(metric_by_label(text, "surge_x_total")["b"], 3.0);
        assert_eq!(histogram_bound(text, "h", 0.5), Some(0.001));
        assert_eq!(histogram_bound(text, "h", 0.99), Some(0.01));
        assert_eq!(histogram_bound(text, "h", 1.0), Some(f64::INFINITY));
    }
}
