//! `surge-load bench`: surge's benchmark suite. For every selected run (a
//! row of [`runs::RUNS`]) and every surge binary under test, a fresh
//! gateway is started, driven in this process by the loadgen mode the run
//! names, measured through `/proc` and its admin endpoints, and stopped;
//! then the Targets report is written as markdown and JSON.
//!
//! Figures are recorded, never asserted: the session succeeds when every
//! run executed, whatever it measured.

pub mod execute;
pub mod machine;
pub mod proc;
pub mod report;
pub mod runs;
pub mod surge_process;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};

use execute::{RunRecord, Session};

/// What `surge-load bench` was asked to do.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub quick: bool,
    /// Run names; empty = all.
    pub only: Vec<String>,
    pub keep: bool,
    pub allow_dirty: bool,
    /// (label, binary): the first is `--surge`, then every `--compare`.
    pub binaries: Vec<(String, PathBuf)>,
    /// Where the results files go (default: bench/results, or a temporary
    /// directory for `--quick`).
    pub out: Option<PathBuf>,
}

/// `LABEL=PATH` of `--compare`.
pub fn parse_compare(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((label, path)) if !label.is_empty() && !path.is_empty() => {
            Ok((label.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!(
            "`{text}`: expected LABEL=PATH, e.g. before=/tmp/old/surge"
        )),
    }
}

/// The selected runs, in table order.
pub fn select(only: &[String]) -> anyhow::Result<Vec<&'static runs::RunDef>> {
    for name in only {
        if runs::find(name).is_none() {
            bail!("no run named '{name}' (runs: {})", runs::names().join(" "));
        }
    }
    Ok(runs::RUNS
        .iter()
        .filter(|r| only.is_empty() || only.iter().any(|o| o == r.name))
        .collect())
}

/// Absolute paths (surge starts in a directory of its own) of binaries
/// that exist, under distinct labels.
fn check_binaries(binaries: &[(String, PathBuf)]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut checked = Vec::new();
    for (i, (label, path)) in binaries.iter().enumerate() {
        if binaries[..i].iter().any(|(l, _)| l == label) {
            bail!("two surge binaries are labelled '{label}'");
        }
        if !path.is_file() {
            bail!(
                "surge binary '{label}' not found at {} (build it with `cargo build --release -p surge-server`)",
                path.display()
            );
        }
        let path = path
            .canonicalize()
            .with_context(|| format!("surge binary {}", path.display()))?;
        checked.push((label.clone(), path));
    }
    Ok(checked)
}

/// A self-signed P-256 certificate for 127.0.0.1 in `dir`; the loadgen
/// trusts any certificate (loopback only).
fn tls_files(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let key = rcgen::KeyPair::generate().context("TLS key")?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .context("TLS certificate")?
        .self_signed(&key)
        .context("TLS certificate")?;
    let (cert_path, key_path) = (dir.join("tls-cert.pem"), dir.join("tls-key.pem"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    crate::tls::install(&crate::tls::TlsOptions {
        ca: None,
        insecure: true,
    })?;
    Ok((cert_path, key_path))
}

fn work_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "surge-bench.{}.{}",
        std::process::id(),
        proc::unix_ms()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn say(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

/// Runs the session; returns the results files written.
pub fn run(opts: &BenchOptions) -> anyhow::Result<Vec<PathBuf>> {
    let selected = select(&opts.only)?;
    let binaries = check_binaries(&opts.binaries)?;
    let commit = machine::commit(opts.allow_dirty)?;
    let work = work_dir()?;
    let opts = BenchOptions {
        binaries,
        ..opts.clone()
    };
    let result = session(&opts, &selected, &commit, &work);
    if opts.keep {
        println!("work directory kept: {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

fn session(
    opts: &BenchOptions,
    selected: &[&'static runs::RunDef],
    commit: &machine::Commit,
    work: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let suite_start = Instant::now();
    let tls = if selected.iter().any(|r| r.surge.tls) {
        Some(tls_files(work)?)
    } else {
        None
    };
    let session = Session {
        quick: opts.quick,
        work,
        tls: tls.as_ref(),
    };
    let mut records: Vec<RunRecord> = Vec::new();
    let mut n = 0;
    for def in selected {
        for (label, binary) in &opts.binaries {
            n += 1;
            let title = if opts.binaries.len() > 1 {
                format!("{} ({label})", def.name)
            } else {
                def.name.to_string()
            };
            say(&title);
            let dir = session
                .work
                .join("runs")
                .join(format!("{n:02}-{}-{label}", def.name));
            let record = execute::execute(def, label, binary, &dir, &session);
            if let Some(outcome) = &record.result {
                print!("{}", report::summary(outcome));
            }
            println!("surge stopped: exit {}", record.surge_exit);
            records.push(record);
        }
    }
    say("writing results");
    let doc = report::Document {
        date: report::today(),
        quick: opts.quick,
        only: opts.only.clone(),
        commit: commit.clone(),
        suite_seconds: suite_start.elapsed().as_secs(),
        machine: machine::describe(),
        binaries: opts
            .binaries
            .iter()
            .map(|(l, p)| report::Binary {
                label: l.clone(),
                path: p.display().to_string(),
            })
            .collect(),
        runs: records,
    };
    let out = match &opts.out {
        Some(dir) => dir.clone(),
        None if opts.quick => std::env::temp_dir().join("surge-bench-quick"),
        None => PathBuf::from("bench/results"),
    };
    let base = out.join(report::file_stem(&doc));
    let written = report::write(&doc, &base)?;
    for file in &written {
        println!("wrote {}", file.display());
    }
    Ok(written)
}
