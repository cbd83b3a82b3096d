//! One fresh `surge` per run: started on free loopback ports from an empty
//! directory with no inherited `SURGE_*` setting, watched through `/proc`,
//! stopped with SIGTERM.

use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::proc;
use crate::http;

/// How long a fresh surge has to answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long surge has to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// What a run asks of the gateway it measures.
#[derive(Debug, Clone, Default)]
pub struct SurgeSpec {
    /// Extra `surge serve` flags.
    pub args: Vec<String>,
    /// Extra environment (`SURGE_*` settings).
    pub env: Vec<(String, String)>,
    /// Pin surge (all its threads) to this CPU.
    pub cpu: Option<usize>,
}

/// A running gateway.
pub struct Surge {
    child: Child,
    pub pid: u32,
    pub url: String,
    pub admin: String,
    /// Its `/health` right after start.
    pub health_at_start: serde_json::Value,
}

/// Two distinct free loopback ports (held together so they differ).
pub fn free_ports() -> anyhow::Result<(u16, u16)> {
    let a = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    let b = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

impl Surge {
    /// Starts `binary` for a run whose files go in `dir` and waits for
    /// `/health`. `tls` is (certificate, key) for a `wss://` listener.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        spec: &SurgeSpec,
        tls: Option<&(PathBuf, PathBuf)>,
    ) -> anyhow::Result<Surge> {
        let cwd = dir.join("cwd");
        fs::create_dir_all(&cwd).with_context(|| format!("creating {}", cwd.display()))?;
        let (ws_port, admin_port) = free_ports()?;
        let mut cmd = Command::new(binary);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{ws_port}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin_port}"))
            .args(&spec.args);
        if let Some((cert, key)) = tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        // The gateway runs with its defaults and the run's settings only.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SURGE_") {
                cmd.env_remove(name);
            }
        }
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        let log = File::create(dir.join("surge.log")).context("creating surge.log")?;
        cmd.current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let cpu = spec.cpu;
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // A bench killed by a signal leaves no gateway behind (this
                // thread, which forks, lives as long as the bench).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // In the child before exec: every thread surge starts
                // inherits the mask, which setting it after spawn could not
                // promise.
                match cpu {
                    Some(cpu) => pin_current_thread(&[cpu]),
                    None => Ok(()),
                }
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id();
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        let mut surge = Surge {
            child,
            pid,
            url: format!("{scheme}://127.0.0.1:{ws_port}/ws"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            health_at_start: serde_json::Value::Null,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let mut client = http::client(&surge.admin, Duration::from_secs(1))?;
        loop {
            if let Ok((200, body)) = http::get_json(&mut client, "/health").await {
                surge.health_at_start = body;
                return Ok(surge);
            }
            if let Some(status) = surge.child.try_wait()? {
                bail!(
                    "surge exited ({}) before answering /health; see {}",
                    describe(status),
                    dir.join("surge.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!("surge did not answer /health within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then waits; the exit as text ("0" when clean).
    pub fn stop(mut self) -> String {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return describe(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return format!("killed: no exit {STOP_TIMEOUT:?} after SIGTERM");
                }
                Err(e) => return format!("unknown: {e}"),
            }
        }
    }
}

impl Drop for Surge {
    /// A run that failed half-way leaves no gateway behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => code.to_string(),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}

/// Restricts the calling thread (and the threads it starts later) to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays within it
    // for CPU numbers below CPU_SETSIZE (checked).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            if cpu >= libc::CPU_SETSIZE as usize {
                return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
            }
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The CPUs the calling thread may run on.
pub fn current_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: sched_getaffinity fills the set it is given; CPU_ISSET reads
    // within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}

/// Samples a process's CPU ticks every 100 ms on a thread of its own, so
/// the busy share of any span inside the run can be computed afterwards.
pub struct CpuSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<proc::CpuSample>>,
}

impl CpuSampler {
    /// `core`: also sample that core's jiffies (a pinned run).
    pub fn start(pid: u32, core: Option<usize>) -> CpuSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                samples.extend(proc::cpu_sample(pid, core));
                std::thread::sleep(Duration::from_millis(100));
            }
            // One after the stop, so every span that ended before it is
            // closed by a sample.
            samples.extend(proc::cpu_sample(pid, core));
            samples
        });
        CpuSampler { stop, thread }
    }

    pub fn finish(self) -> Vec<proc::CpuSample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}
