//! SIGHUP: re-read the files the gateway serves from without dropping a
//! connection: the TLS certificate and key (renewal) and the JWT public
//! key or JWKS file (key rotation). A file that fails to load leaves the
//! old contents in use; either way the outcome is logged and counted in
//! `surge_reloads_total{file,result}`.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use surge_core::auth::JwtAuth;
use surge_core::config::Config;
use surge_runtime::Gateway;
use surge_runtime::tls::TlsConfig;

/// Installs the SIGHUP handler (so a SIGHUP no longer ends the process)
/// and returns the loop that serves it.
pub fn on_sighup(
    config: Arc<Config>,
    gateway: Arc<Gateway>,
    jwt: Option<Arc<JwtAuth>>,
    tls: Option<TlsConfig>,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;
    Ok(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading files");
            if let Some(tls) = &tls {
                let _ = crate::tls::reload(&config, tls, &gateway);
            }
            if let Some(auth) = &jwt {
                reload_jwt(&config, &gateway, auth);
            }
        }
    })
}

fn reload_jwt(config: &Config, gateway: &Gateway, auth: &JwtAuth) {
    match crate::jwt::reload(config, auth) {
        Ok(None) => {}
        Ok(Some(keys)) => {
            gateway.metrics().reloaded("jwt_keys", true);
            tracing::info!(keys, "JWT keys reloaded");
        }
        Err(e) => {
            gateway.metrics().reloaded("jwt_keys", false);
            tracing::error!(
                error = format!("{e:#}"),
                "JWT keys not reloaded: the old keys stay in use"
            );
        }
    }
}
