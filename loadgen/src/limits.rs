//! The load generator's own limits: open files and CPU.
//!
//! A loadgen that runs out of file descriptors, or of CPU, produces failures
//! that look like the server's. So it raises its own `RLIMIT_NOFILE` to the
//! hard limit (and says so), knows how many connections one process can hold,
//! and measures its own CPU from `/proc/self/stat` so a result it limited is
//! labelled as such.

use std::io;
use std::time::Duration;

/// Files kept free per process for stdio, the runtime, admin clients and
/// listeners, so the last connection attempts do not fail with EMFILE.
pub const FD_RESERVE: u64 = 200;

/// The open-file limit before and after raising it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FdLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

impl FdLimit {
    /// Connections one process can hold with [`FD_RESERVE`] kept free.
    pub fn connection_budget(&self) -> u64 {
        self.soft.saturating_sub(FD_RESERVE).max(1)
    }

    /// A sentence for the operator.
    pub fn describe(&self) -> String {
        if self.soft > self.soft_before {
            format!(
                "raised RLIMIT_NOFILE from {} to the hard limit {}: one process holds at most ~{} connections",
                self.soft_before,
                self.soft,
                self.connection_budget()
            )
        } else {
            format!(
                "RLIMIT_NOFILE is {} (hard {}): one process holds at most ~{} connections",
                self.soft,
                self.hard,
                self.connection_budget()
            )
        }
    }
}

/// Raises the soft open-file limit to the hard limit.
pub fn raise_nofile() -> io::Result<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let soft_before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim = raised;
    }
    // RLIM_INFINITY is u64::MAX: treat it as "plenty" without overflowing.
    // rlim_t is u64 on Linux targets.
    let clamp = |v: libc::rlim_t| -> u64 { v.min(1 << 40) };
    Ok(FdLimit {
        soft_before: clamp(soft_before),
        soft: clamp(lim.rlim_cur),
        hard: clamp(lim.rlim_max),
    })
}

/// CPU time this process has used (user + system), if `/proc` is readable.
pub fn process_cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let ticks = parse_proc_stat_ticks(&text)?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = if per_second > 0 {
        per_second as u64
    } else {
        100
    };
    Some(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / per_second,
    ))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) may contain spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_proc_stat_ticks(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After the name come field 3 (state) … ; utime is field 14 = index 11 here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Cores on this machine (what a multi-threaded loadgen can use at most).
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Share of `cores` that `cpu` over `wall` amounts to, in percent.
pub fn cpu_percent(cpu: Duration, wall: Duration, cores: usize) -> f64 {
    let wall = wall.as_secs_f64() * cores.max(1) as f64;
    if wall <= 0.0 {
        0.0
    } else {
        100.0 * cpu.as_secs_f64() / wall
    }
}

/// Above this share of its cores the loadgen, not the server, may be what
/// limits a figure.
pub const LOADGEN_BOUND_PERCENT: f64 = 90.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let line = "1234 (we ird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_proc_stat_ticks(line), Some(300));
        assert_eq!(parse_proc_stat_ticks("garbage"), None);
    }

    #[test]
    fn own_cpu_is_readable_and_limit_is_known() {
        assert!(process_cpu_time().is_some());
        let lim = raise_nofile().unwrap();
        assert_eq!(lim.soft, lim.hard.min(lim.soft));
        assert!(lim.connection_budget() >= 1);
    }

    #[test]
    fn cpu_share_of_cores() {
        let p = cpu_percent(Duration::from_secs(1), Duration::from_secs(1), 2);
        assert!((p - 50.0).abs() < 1e-9);
        assert_eq!(cpu_percent(Duration::ZERO, Duration::ZERO, 2), 0.0);
    }
}
