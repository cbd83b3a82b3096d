//! Why a connection is not admitted, and how that is answered. Below
//! admission and its per-client limits, which both refuse.

use std::time::Duration;

/// Why a connection is not admitted. Each is answered at once with
/// `Retry-After`: 503 when the gateway cannot take anyone, 429 when this
/// client is over one of its own limits.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("every shard is at capacity ({capacity} connections)")]
    Full { capacity: u64 },
    #[error("CPU at {percent:.0} %, over the reject threshold of {threshold:.0} %")]
    Cpu { percent: f64, threshold: f64 },
    #[error("memory at {bytes} bytes, over the reject threshold of {threshold} bytes")]
    Memory { bytes: u64, threshold: u64 },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("too many connections from this address (limit {limit})")]
    PerIp { limit: u32 },
    #[error("too many connections for this user (limit {limit})")]
    PerUser { limit: u32 },
    #[error("too many handshakes in progress from this address (limit {limit})")]
    HandshakesPerIp { limit: u32 },
    #[error("too many new connections from this address (limit {limit} per second)")]
    HandshakeRate { limit: u32, retry_after_secs: u32 },
}

impl Refusal {
    /// Every value [`Self::metric_label`] returns, so the metric's series
    /// can exist (at 0) before the first refusal: an alert on its increase
    /// then sees the first one too.
    pub const METRIC_LABELS: [&'static str; 8] = [
        "full",
        "cpu",
        "memory",
        "shutting_down",
        "per_ip",
        "per_user",
        "handshakes_per_ip",
        "handshake_rate_per_ip",
    ];

    pub fn metric_label(&self) -> &'static str {
        match self {
            Refusal::Full { .. } => "full",
            Refusal::Cpu { .. } => "cpu",
            Refusal::Memory { .. } => "memory",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::PerIp { .. } => "per_ip",
            Refusal::PerUser { .. } => "per_user",
            Refusal::HandshakesPerIp { .. } => "handshakes_per_ip",
            Refusal::HandshakeRate { .. } => "handshake_rate_per_ip",
        }
    }

    /// 429 for a client over its own limit, 503 for a gateway that cannot
    /// take anyone.
    pub fn status(&self) -> u16 {
        if self.is_per_client() { 429 } else { 503 }
    }

    /// Whether only this client is refused (the gateway has room for others).
    pub fn is_per_client(&self) -> bool {
        matches!(
            self,
            Refusal::PerIp { .. }
                | Refusal::PerUser { .. }
                | Refusal::HandshakesPerIp { .. }
                | Refusal::HandshakeRate { .. }
        )
    }

    /// The `Retry-After` to send: the rate limit's own wait, else the
    /// configured one.
    pub fn retry_after_secs(&self, configured: Duration) -> u32 {
        match self {
            Refusal::HandshakeRate {
                retry_after_secs, ..
            } => *retry_after_secs,
            _ => u32::try_from(configured.as_secs().max(1)).unwrap_or(u32::MAX),
        }
    }
}
