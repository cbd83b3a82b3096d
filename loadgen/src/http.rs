//! The admin requests of a run (`POST /publish`, `GET /health`), over
//! [`surge_admin_client`] (hyper's HTTP/1.1 client, one keep-alive
//! connection per client). This module keeps them on loopback and says in
//! errors which request failed where.

use std::time::Duration;

use anyhow::{Context, anyhow};
pub use surge_admin_client::{AdminClient, Answer};

use crate::target::parse_http_url;

/// A client for the `http://` base URL `base` (`http://127.0.0.1:9090`);
/// refused unless loopback. Every request, connecting included, must be
/// answered within `timeout`.
pub fn client(base: &str, timeout: Duration) -> anyhow::Result<AdminClient> {
    let target = parse_http_url(base)?;
    Ok(AdminClient::new(target.addr.to_string(), timeout).with_host(target.authority))
}

/// `GET path`: the status and the body parsed as JSON.
pub async fn get_json(
    client: &mut AdminClient,
    path: &str,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let answer = client
        .get(path)
        .await
        .map_err(|e| anyhow!("GET {path} on {}: {e}", client.addr()))?;
    let value = serde_json::from_slice(&answer.body)
        .with_context(|| format!("GET {path}: the body is not JSON"))?;
    Ok((answer.status, value))
}
