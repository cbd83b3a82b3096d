//! The `surge` binary: `surge [serve]`, `surge config`, `surge doctor`,
//! `surge feed`, `surge token`, `surge top`.

mod allocator;

use std::io::IsTerminal;
use std::process::ExitCode;

use surge_core::config::{Config, LogFormat};
use surge_server::cli::{self, Task};
use surge_server::{doctor, feed, jwt, plan, serve, top};
use tracing_subscriber::EnvFilter;

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log_level.as_str()));
    // Colour codes are noise in files and pipes (journald, log shippers).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let invocation = match cli::parse(std::env::args_os()) {
        Ok(i) => i,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if invocation.task == (Task::Config { env_example: true }) {
        print!("{}", cli::env_example());
        return ExitCode::SUCCESS;
    }
    let (config, ignored) = match cli::load(&invocation) {
        Ok(loaded) => (loaded.config, loaded.ignored),
        Err(e) => {
            eprintln!("surge: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    if !ignored.is_empty() {
        // Not near any setting's name: an orchestrator's variable (e.g.
        // Kubernetes' SURGE_SERVICE_HOST for a Service named `surge`), not a typo.
        tracing::warn!(
            "ignored {} unknown SURGE_* variable(s), not settings: {}",
            ignored.len(),
            ignored.join(", ")
        );
    }
    match invocation.task {
        Task::Config { .. } => {
            println!("{}", config.print_effective());
            ExitCode::SUCCESS
        }
        Task::Doctor => {
            let report = doctor::run(&config);
            println!("{report}");
            if report.worst() == doctor::Level::Fail {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Task::Feed(options) => {
            let runtime = match current_thread_runtime() {
                Ok(r) => r,
                Err(code) => return code,
            };
            match runtime.block_on(feed::run(&config, options)) {
                Ok(report) => {
                    println!("surge feed: {report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("surge feed: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Task::Top(options) => {
            let runtime = match current_thread_runtime() {
                Ok(r) => r,
                Err(code) => return code,
            };
            match runtime.block_on(top::run(&config, options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("surge top: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Task::Token(options) => match jwt::mint(&config, &options, std::time::SystemTime::now()) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("surge token: {e}");
                ExitCode::from(1)
            }
        },
        Task::Plan(target) => {
            print!("{}", plan::report(&target, &plan::plan(&target)));
            ExitCode::SUCCESS
        }
        Task::Serve => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("surge: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(serve::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("surge: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// The single-threaded runtime of a client subcommand (`feed`, `top`); on
/// failure, the exit code after saying why.
fn current_thread_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("surge: cannot start the runtime: {e}");
            ExitCode::from(1)
        })
}
