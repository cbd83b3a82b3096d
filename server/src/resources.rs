//! Samples this process's CPU use and resident memory.
//!
//! The resource guard rejects new connections at a CPU threshold and pauses
//! the broker feed at a higher one (as in the Go system surge replaces), and `/health` reports both
//! figures. They come from `/proc/self/stat` (user + system clock ticks)
//! and `/proc/self/statm` (resident pages), which cost one small read each
//! and need no extra thread. CPU is reported as a share of the whole
//! machine, 0–100, so the thresholds mean the same on any number of cores.
//!
//! Linux only; the parsers are pure functions over strings.

use std::time::Instant;

/// Open file descriptors of this process: the entries of `/proc/self/fd`
/// (less the one reading it). One directory read per call, proportional to
/// the number of descriptors, so callers sample it every few seconds.
pub fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(entries.saturating_sub(1))
}

/// CPU and RSS of this process between two calls of [`sample`](Self::sample).
#[derive(Debug)]
pub struct ProcessSampler {
    clock_ticks_per_second: f64,
    page_size: u64,
    cpus: f64,
    /// The previous reading: when it was taken and the CPU ticks used so far.
    previous: Option<(Instant, u64)>,
}

impl ProcessSampler {
    /// A sampler whose first [`sample`](Self::sample) covers the time since
    /// this call.
    pub fn new() -> Self {
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut sampler = ProcessSampler {
            // 100 is the value on every mainstream Linux; used only if sysconf fails.
            clock_ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_size: u64::try_from(page).ok().filter(|&p| p > 0).unwrap_or(4096),
            cpus: cpus as f64,
            previous: None,
        };
        sampler.previous = read_cpu_ticks().map(|t| (Instant::now(), t));
        sampler
    }

    /// CPU used since the previous sample, as a percentage of the whole
    /// machine (0–100), and the resident set size in bytes. `None` when
    /// `/proc` cannot be read, or on the first call if the baseline could
    /// not be taken (the next call then has one).
    pub fn sample(&mut self) -> Option<(f64, u64)> {
        let now = Instant::now();
        let ticks = read_cpu_ticks()?;
        let rss_pages = parse_statm_rss_pages(&std::fs::read_to_string("/proc/self/statm").ok()?)?;
        let previous = self.previous.replace((now, ticks));
        let (then, then_ticks) = previous?;
        let cpu = cpu_percent(
            ticks.saturating_sub(then_ticks),
            self.clock_ticks_per_second,
            now.duration_since(then).as_secs_f64(),
            self.cpus,
        );
        Some((cpu, rss_pages.saturating_mul(self.page_size)))
    }
}

impl Default for ProcessSampler {
    fn default() -> Self {
        Self::new()
    }
}

fn read_cpu_ticks() -> Option<u64> {
    parse_stat_cpu_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock
/// ticks. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so the fields are counted from the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the command name.
    let mut fields = after_comm.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// Resident pages (the second field) of a `/proc/<pid>/statm` line.
pub fn parse_statm_rss_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// CPU ticks used over a wall-clock interval as a percentage of all
/// `cpus`, clamped to 0–100 (tick granularity can overshoot slightly).
pub fn cpu_percent(ticks: u64, ticks_per_second: f64, wall_seconds: f64, cpus: f64) -> f64 {
    if wall_seconds <= 0.0 || ticks_per_second <= 0.0 || cpus <= 0.0 {
        return 0.0;
    }
    let cpu_seconds = ticks as f64 / ticks_per_second;
    (cpu_seconds / wall_seconds / cpus * 100.0).clamp(0.0, 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const STAT: &str = "27671 (cat) R 27656 27656 27261 0 -1 4194304 99 0 0 0 \
                        7 3 0 0 20 0 1 0 100369 3133440 381 18446744073709551615";

    #[test]
    fn stat_cpu_ticks_are_utime_plus_stime() {
        assert_eq!(parse_stat_cpu_ticks(STAT), Some(10));
    }

    #[test]
    fn stat_command_names_with_spaces_and_parentheses_are_skipped() {
        let tricky = "42 (my (odd) prog) 1 2) S 1 42 42 0 -1 4194560 500 0 0 0 \
                      1234 567 0 0 20 0 8 0 100 1000000 250";
        assert_eq!(parse_stat_cpu_ticks(tricky), Some(1234 + 567));
    }

    #[test]
    fn malformed_stat_lines_are_rejected() {
        assert_eq!(parse_stat_cpu_ticks(""), None);
        assert_eq!(parse_stat_cpu_ticks("1 (x) R 1 2 3"), None);
        assert_eq!(
            parse_stat_cpu_ticks("1 (x) R 1 1 1 0 -1 0 0 0 0 0 abc 3"),
            None
        );
    }

    #[test]
    fn statm_rss_is_the_second_field() {
        assert_eq!(parse_statm_rss_pages("765 403 375 5 0 123 0\n"), Some(403));
        assert_eq!(parse_statm_rss_pages("765"), None);
        assert_eq!(parse_statm_rss_pages(""), None);
    }

    #[test]
    fn cpu_percent_is_a_share_of_the_whole_machine() {
        // 1 s of CPU over 1 s of wall time on 2 CPUs: half the machine.
        assert!((cpu_percent(100, 100.0, 1.0, 2.0) - 50.0).abs() < 1e-9);
        assert!((cpu_percent(25, 100.0, 1.0, 1.0) - 25.0).abs() < 1e-9);
        assert_eq!(cpu_percent(500, 100.0, 1.0, 2.0), 100.0);
        assert_eq!(cpu_percent(10, 100.0, 0.0, 2.0), 0.0);
    }

    #[test]
    fn sampling_this_process_sees_a_busy_loop() {
        let mut sampler = ProcessSampler::new();
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let (cpu, rss) = sampler.sample().expect("/proc/self is readable");
        assert!(cpu > 0.0, "cpu {cpu}");
        assert!(cpu <= 100.0, "cpu {cpu}");
        assert!(rss > 0);
        // A second sample has its own baseline.
        assert!(sampler.sample().is_some());
    }
}
