//! The machine and the commit a session measured.

use std::process::Command;

use anyhow::bail;
use serde::Serialize;

use super::proc;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: Option<String>,
    pub mem_total_bytes: Option<u64>,
    pub kernel: String,
    pub ulimit_hn: Option<u64>,
    pub somaxconn: Option<u64>,
    pub tcp_max_syn_backlog: Option<u64>,
    pub ip_local_port_range: String,
    /// Whether `/proc/slabinfo` was readable (the per-cache kernel figures).
    pub slabinfo_readable: bool,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn number(path: &str) -> Option<u64> {
    read(path).trim().parse().ok()
}

pub fn describe() -> Machine {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    let ulimit_hn =
        (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_max);
    Machine {
        nproc: crate::limits::cpu_count(),
        cpu_model,
        mem_total_bytes: proc::kv(&read("/proc/meminfo"), "MemTotal"),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        ulimit_hn,
        somaxconn: number("/proc/sys/net/core/somaxconn"),
        tcp_max_syn_backlog: number("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
        ip_local_port_range: read("/proc/sys/net/ipv4/ip_local_port_range")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        slabinfo_readable: std::fs::File::open("/proc/slabinfo").is_ok(),
    }
}

/// The commit the figures belong to.
#[derive(Debug, Clone, Serialize)]
pub struct Commit {
    /// `git rev-parse HEAD`, or "dirty" when the tree had changes
    /// (allowed by `--allow-dirty`), or "unknown" outside a git checkout.
    pub commit: String,
    /// HEAD even when the tree was dirty.
    pub head: Option<String>,
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Refuses a dirty tree unless `allow_dirty`.
pub fn commit(allow_dirty: bool) -> anyhow::Result<Commit> {
    let Some(head) = git(&["rev-parse", "HEAD"]) else {
        return Ok(Commit {
            commit: "unknown".into(),
            head: None,
        });
    };
    let status = git(&["status", "--porcelain"]).unwrap_or_default();
    if status.is_empty() {
        return Ok(Commit {
            commit: head.clone(),
            head: Some(head),
        });
    }
    if !allow_dirty {
        bail!(
            "the working tree has uncommitted changes, so the figures would belong to no commit:\n{status}\n\
             commit them, or pass --allow-dirty (the results then say \"dirty\")"
        );
    }
    Ok(Commit {
        commit: "dirty".into(),
        head: Some(head),
    })
}
