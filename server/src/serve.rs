//! `surge serve`: host limits, the gateway, the admin listener, the
//! resource guard's sampler and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use surge_core::admission::ResourceSample;
use surge_core::config::{Config, LogFormat};
use surge_runtime::embedded::{EmbeddedBroker, Retention, fresh_epoch};
use surge_runtime::tcp::{SocketTuning, TcpTransport};
use surge_runtime::{Broker, Gateway, GatewayConfig};

use crate::admin::{self, AdminState};
use crate::host;
use crate::nats::NatsBridge;
use crate::resources::ProcessSampler;

/// How often the resource guard gets a new CPU / memory sample.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Open descriptors are counted every this many samples: a directory read
/// of one entry per connection is too much for every second.
const FDS_EVERY_SAMPLES: u64 = 5;

/// Limits resolved from the configuration and the host.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    pub max_connections: u32,
    /// The open-file limit (soft) after raising it.
    pub open_file_limit: u64,
    pub shards: u32,
    /// Memory thresholds of the resource guard (reject, pause).
    pub memory_reject_bytes: Option<u64>,
    pub memory_pause_bytes: Option<u64>,
}

/// Memory thresholds: what is configured, else 90 % (reject) and 95 %
/// (pause) of the memory limit, keeping pause >= reject. `None` when
/// neither is configured and the limit is unknown.
pub fn memory_thresholds(
    reject: Option<u64>,
    pause: Option<u64>,
    limit: Option<u64>,
) -> (Option<u64>, Option<u64>) {
    let share = |percent: u64| limit.map(|l| l / 100 * percent);
    let reject = reject.or_else(|| match (share(90), pause) {
        (Some(r), Some(p)) => Some(r.min(p)),
        (r, _) => r,
    });
    let pause = pause.or_else(|| match (share(95), reject) {
        (Some(p), Some(r)) => Some(p.max(r)),
        (p, _) => p,
    });
    (reject, pause)
}

/// Raises the open-file limit and derives max connections and shards.
/// A configured maximum the file limit cannot hold is an error with the
/// arithmetic in it.
pub fn resolve_limits(config: &Config) -> anyhow::Result<Resolved> {
    let (before, after) = host::raise_nofile().context("cannot read RLIMIT_NOFILE")?;
    tracing::info!(
        soft_before = before.soft,
        hard = before.hard,
        soft_now = after.soft,
        "open-file limit raised to the hard limit"
    );
    let max_connections = match config.max_connections {
        Some(configured) => {
            host::check_max_connections(configured, after.soft).map_err(anyhow::Error::msg)?;
            configured
        }
        None => {
            let derived = host::derive_max_connections(
                after.soft,
                host::memory_limit_bytes(),
                host::BYTES_PER_CONNECTION_ESTIMATE,
            );
            // Said once: to people on stdout, or to a log shipper as an event.
            match config.log_format {
                LogFormat::Text => println!("{}", derived.explanation),
                LogFormat::Json => tracing::info!("{}", derived.explanation),
            }
            derived.max_connections
        }
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let shards = config.shards.unwrap_or(cpus).min(max_connections.max(1));
    let (memory_reject_bytes, memory_pause_bytes) = memory_thresholds(
        config.memory_reject_bytes,
        config.memory_pause_bytes,
        host::memory_limit_bytes(),
    );
    tracing::info!(
        memory_reject_bytes,
        memory_pause_bytes,
        "resource guard memory thresholds"
    );
    Ok(Resolved {
        max_connections,
        open_file_limit: after.soft,
        shards,
        memory_reject_bytes,
        memory_pause_bytes,
    })
}

/// Runs the gateway until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let resolved = resolve_limits(&config)?;
    match config.log_format {
        LogFormat::Text => println!("{}", config.print_effective()),
        LogFormat::Json => tracing::info!(config = %config.to_json(), "effective configuration"),
    }

    let mut gateway_config =
        GatewayConfig::from_config(&config, resolved.max_connections, resolved.shards);
    let jwt = crate::jwt::load(&config)?.map(Arc::new);
    if let Some(auth) = &jwt {
        gateway_config.set_jwt(Arc::clone(auth));
    }
    // The files are read before anything listens: a bad certificate or key
    // stops the start (exit 2) naming the file.
    let tls = crate::tls::load(&config)?;
    gateway_config.tls = tls.as_ref().map(|(tls, _)| tls.clone());
    gateway_config.guard.memory_reject_bytes = resolved.memory_reject_bytes;
    gateway_config.guard.memory_pause_bytes = resolved.memory_pause_bytes;
    let retry_after = u32::try_from(config.retry_after.as_secs().max(1)).unwrap_or(u32::MAX);
    let mut transport = TcpTransport::new(SocketTuning::preset(config.socket_preset), retry_after);
    if tls.is_some() {
        transport = transport.without_plain_answers();
    }
    let retention = Retention {
        max_age: config.js_max_age,
        max_messages: config.js_max_msgs,
        max_bytes: config.js_max_bytes,
    };
    // Connect and ensure the stream before listening, so a bad stream or
    // unreachable NATS stops the start with a clear message (exit 2).
    // The ingest side (the admin listener with `/publish`, the NATS
    // bridge, the dashboard) gets its own thread: accepting a message must
    // not wait for a worker thread busy fanning out, least of all on a host
    // with one core, where the gateway's runtime has a single worker.
    let ingest = IngestThread::start()?;
    let nats = match config.nats_url {
        Some(_) => {
            let config = config.clone();
            let prepared = ingest
                .handle()
                .spawn(async move { NatsBridge::prepare(&config).await })
                .await
                .context("the ingest thread stopped")?;
            Some(prepared?)
        }
        None => None,
    };
    let gateway = Gateway::start(&transport, gateway_config, |hub, clock| match nats {
        Some(bridge) => {
            // Its consumer and stream poller run on the ingest thread.
            let _ingest = ingest.handle().enter();
            bridge.attach(hub, clock) as Arc<dyn Broker>
        }
        None => {
            Arc::new(EmbeddedBroker::new(hub, retention, clock, fresh_epoch())) as Arc<dyn Broker>
        }
    })
    .await
    .with_context(|| format!("cannot listen on {} (SURGE_LISTEN)", config.listen))?;
    let gateway = Arc::new(gateway);
    gateway
        .metrics()
        .max_fds
        .set(i64::try_from(resolved.open_file_limit).unwrap_or(i64::MAX));
    let tls = tls.map(|(tls, info)| {
        gateway.metrics().tls_certificate_expiry.set(info.not_after);
        tls
    });
    let listening = format!(
        "surge listening on {}://{}{} (admin http://{}), broker: {}",
        if tls.is_some() { "wss" } else { "ws" },
        gateway.local_addr(),
        config.ws_path,
        config.admin_listen,
        gateway.broker().kind()
    );
    match config.log_format {
        LogFormat::Text => println!("{listening}"),
        LogFormat::Json => tracing::info!("{listening}"),
    }

    // Bound here so an address in use stops the start; registered with the
    // ingest thread's reactor there.
    let admin_listener = std::net::TcpListener::bind(config.admin_listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .with_context(|| {
            format!(
                "cannot listen on {} (SURGE_ADMIN_LISTEN)",
                config.admin_listen
            )
        })?;
    let (live, dashboard_task) = {
        let _ingest = ingest.handle().enter();
        crate::dashboard::Live::start(Arc::clone(&gateway))
    };
    let dashboard =
        crate::dashboard::Dashboard::new(live, config.admin_token.clone().map(Arc::new))
            .context("cannot draw the dashboard's session key")?;
    let state = AdminState {
        gateway: Arc::clone(&gateway),
        config: Arc::new(config.to_json()),
        max_body_bytes: config.admin_max_body_bytes,
        stream_subjects: Arc::new(
            config
                .js_subjects
                .iter()
                .filter_map(|s| surge_core::subjects::Pattern::parse(s).ok())
                .collect(),
        ),
        token: config.admin_token.clone().map(Arc::new),
        publish_limit: admin::publish_limiter(config.admin_publish_rate, gateway.clock().now()),
        dashboard,
    };
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin = ingest.handle().spawn(async move {
        let admin_listener = match tokio::net::TcpListener::from_std(admin_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "admin listener failed");
                return;
            }
        };
        let app = admin::router(state).into_make_service_with_connect_info::<admin::LocalAddr>();
        let served = axum::serve(admin_listener, app)
            .with_graceful_shutdown(async {
                let _ = admin_stop_rx.await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin listener failed");
        }
    });

    let sampler = tokio::spawn(sample_resources(Arc::clone(&gateway)));
    let reloader = tokio::spawn(crate::reload::on_sighup(
        Arc::new(config.clone()),
        Arc::clone(&gateway),
        jwt,
        tls,
    )?);

    wait_for_signal().await?;
    // Readiness turns false first, so a load balancer stops sending new
    // clients before the connected ones are closed.
    gateway.begin_drain();
    if !config.shutdown_delay.is_zero() {
        tracing::info!(delay = ?config.shutdown_delay, "draining: /readyz answers 503; closing connections after the shutdown delay");
        tokio::time::sleep(config.shutdown_delay).await;
    }
    tracing::info!("shutting down: closing connections with 1001");
    gateway.shutdown(config.shutdown_drain).await;
    sampler.abort();
    reloader.abort();
    dashboard_task.abort();
    let _ = admin_stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), admin).await;
    // Stopped without waiting (a runtime cannot be dropped from inside
    // another one's task): see its Drop.
    drop(ingest);
    tracing::info!("stopped");
    Ok(())
}

/// A runtime with one worker thread of its own for the ingest side.
struct IngestThread(Option<tokio::runtime::Runtime>);

impl IngestThread {
    fn start() -> anyhow::Result<IngestThread> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("surge-ingest")
            .enable_all()
            .build()
            .context("cannot start the ingest thread")?;
        Ok(IngestThread(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running until dropped").handle()
    }
}

/// Shuts the runtime down without waiting for its tasks (a runtime cannot
/// be dropped from inside another one's task).
impl Drop for IngestThread {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

async fn sample_resources(gateway: Arc<Gateway>) {
    let mut sampler = ProcessSampler::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    let mut samples = 0u64;
    loop {
        tick.tick().await;
        if samples.is_multiple_of(FDS_EVERY_SAMPLES)
            && let Some(fds) = crate::resources::open_fds()
        {
            gateway
                .metrics()
                .open_fds
                .set(i64::try_from(fds).unwrap_or(i64::MAX));
        }
        samples += 1;
        if let Some((cpu_percent, memory_bytes)) = sampler.sample() {
            gateway.observe(ResourceSample {
                cpu_percent,
                memory_bytes,
            });
        }
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::memory_thresholds;

    #[test]
    fn memory_thresholds_derive_from_the_limit_and_keep_pause_above_reject() {
        let gib = 1u64 << 30;
        let limit = Some(10 * gib);
        assert_eq!(
            memory_thresholds(None, None, limit),
            (Some(10 * gib / 100 * 90), Some(10 * gib / 100 * 95))
        );
        assert_eq!(
            memory_thresholds(Some(gib), Some(2 * gib), limit),
            (Some(gib), Some(2 * gib))
        );
        // A configured pause below 90 % pulls the derived reject down to it.
        assert_eq!(
            memory_thresholds(None, Some(gib), limit),
            (Some(gib), Some(gib))
        );
        // A configured reject above 95 % pushes the derived pause up to it.
        assert_eq!(
            memory_thresholds(Some(10 * gib), None, limit),
            (Some(10 * gib), Some(10 * gib))
        );
        assert_eq!(memory_thresholds(None, None, None), (None, None));
    }
}
