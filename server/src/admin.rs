//! The admin listener: `/livez`, `/readyz`, `/health`, `/metrics`,
//! `POST /publish` and the effective configuration. It is separate from
//! the public WebSocket port and bound to loopback by default
//! (docs/PROTOCOL.md, "Admin listener").
//!
//! Every error is JSON `{"code":…,"message":…}` with its status, so a
//! caller can act on the code without parsing prose.
//!
//! With `SURGE_ADMIN_TOKEN` set, `POST /publish` and `GET /config` need
//! `Authorization: Bearer <token>` (compared in constant time), and
//! `/dashboard` the token or its session cookie (the `dashboard` module);
//! the probes and `/metrics` never need a token.
//!
//! `POST /publish` is for programs, never for web pages, which could
//! otherwise publish through an operator's browser: a request with an
//! `Origin` (which browsers send with every POST) is refused, and so is a
//! `Host` other than the address the connection reached (DNS rebinding:
//! the page's own name, pointed at this address, is still its `Host`);
//! the body must be `Content-Type: application/json`, which a page cannot
//! send cross-site without a CORS preflight the listener never grants.
//! Publishes are rate-limited (`SURGE_ADMIN_PUBLISH_RATE`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use surge_core::config::Secret;
use surge_core::protocol::Priority;
use surge_core::ratelimit::TokenBucket;
use surge_core::subjects::{Pattern, Subject};
use surge_runtime::{BrokerError, Gateway};

use crate::dashboard::{self, Dashboard};
use crate::token::constant_time_eq;

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub gateway: Arc<Gateway>,
    /// The effective configuration as JSON (secrets masked).
    pub config: Arc<Value>,
    /// Largest accepted request body (`SURGE_ADMIN_MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// The stream's subjects (`SURGE_JS_SUBJECTS`): what `/publish` may
    /// publish to, with either broker.
    pub stream_subjects: Arc<Vec<Pattern>>,
    /// `SURGE_ADMIN_TOKEN`: what `/publish` and `/config` require as a
    /// bearer token; `None`: nothing.
    pub token: Option<Arc<Secret>>,
    /// `SURGE_ADMIN_PUBLISH_RATE`, see [`publish_limiter`].
    pub publish_limit: Arc<Mutex<TokenBucket>>,
    /// `/dashboard` and its live stream.
    pub dashboard: Dashboard,
}

/// The bucket behind `SURGE_ADMIN_PUBLISH_RATE`: `rate` publishes per
/// second, a second's worth at once; 0 = unlimited.
pub fn publish_limiter(rate: u32, now: surge_core::Instant) -> Arc<Mutex<TokenBucket>> {
    Arc::new(Mutex::new(TokenBucket::new(rate, rate, now)))
}

/// The local address an admin connection reached, for the `Host` check of
/// `/publish`: serve the router with
/// `into_make_service_with_connect_info::<LocalAddr>()`.
#[derive(Debug, Clone, Copy)]
pub struct LocalAddr(pub Option<SocketAddr>);

impl Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for LocalAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        LocalAddr(stream.io().local_addr().ok())
    }
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    let limit = state.max_body_bytes;
    let dashboard = dashboard::router(state.dashboard.clone());
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/config", get(config))
        .route("/publish", post(publish))
        .with_state(state)
        .merge(dashboard)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
}

/// A JSON error answer.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"code": code, "message": message.into()})),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; the admin listener serves /livez, /readyz, /health, /metrics, /config, /dashboard and POST /publish",
    )
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method (POST /publish and /dashboard/login; GET for the others)",
    )
}

/// 200 while the process serves: a liveness probe restarts a process that
/// stopped answering, nothing else.
async fn livez() -> Response {
    axum::Json(json!({"status": "alive"})).into_response()
}

/// 200 while new connections would be admitted; 503 when full, overloaded,
/// draining, or (if so configured) while the broker is disconnected.
async fn readyz(State(state): State<AdminState>) -> Response {
    match state.gateway.readiness() {
        Ok(()) => axum::Json(json!({"ready": true})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"ready": false, "reason": reason.to_string()})),
        )
            .into_response(),
    }
}

/// The full picture for people and dashboards; its status code follows
/// readiness, so a broker blip alone (clients still served) is a 200 with
/// `"status":"degraded"`.
async fn health(State(state): State<AdminState>) -> Response {
    let health = state.gateway.health();
    let status = if state.gateway.readiness().is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(health)).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.gateway.metrics_text(),
    )
        .into_response()
}

async fn config(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse_without_token(&state, &headers) {
        return refused;
    }
    axum::Json(state.config.as_ref().clone()).into_response()
}

/// The 401 to answer, unless no admin token is configured or `headers`
/// carry exactly one `Authorization: Bearer <SURGE_ADMIN_TOKEN>` (the
/// scheme in any case).
fn refuse_without_token(state: &AdminState, headers: &HeaderMap) -> Option<Response> {
    let token = state.token.as_ref()?;
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let presented = match (values.next(), values.next()) {
        (None, _) => {
            return Some(unauthorized(
                "this endpoint needs the header Authorization: Bearer <SURGE_ADMIN_TOKEN>",
            ));
        }
        (Some(value), None) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, credentials)| credentials.trim()),
        (Some(_), Some(_)) => None,
    };
    let valid = presented
        .is_some_and(|presented| constant_time_eq(presented.as_bytes(), token.expose().as_bytes()));
    (!valid).then(|| {
        unauthorized("the Authorization header does not carry SURGE_ADMIN_TOKEN as a Bearer token")
    })
}

fn unauthorized(message: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(json!({"code": "unauthorized", "message": message})),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    subject: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    data_base64: Option<String>,
    #[serde(default)]
    priority: Option<String>,
}

const PUBLISH_SHAPE: &str = r#"the body must be a JSON object {"subject":"odin.token.BTC.trade","data":<any JSON>,"priority":"low|medium|high|critical"}, with "data_base64":"<base64>" instead of "data" for raw bytes; priority is optional"#;

/// Refuses a request a web page could have sent (403 `forbidden_origin`
/// with an `Origin`, 403 `forbidden_host` with a `Host` that is not the
/// address `local` the connection reached), then one without the admin
/// token (401), then a body that is not declared JSON (415); in that
/// order, so a page learns nothing about the token.
fn refuse_publish_request(
    state: &AdminState,
    headers: &HeaderMap,
    local: Option<SocketAddr>,
) -> Option<Response> {
    if headers.contains_key(header::ORIGIN) {
        return Some(error(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "the request carries an Origin header, so a web page sent it; the admin API is not for pages: publish from a program, without Origin",
        ));
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(host), None) => host.to_str().ok(),
        _ => None,
    };
    let host_ok = matches!((host, local), (Some(host), Some(local)) if host_allowed(host, local));
    if !host_ok {
        let expected = local.map_or_else(
            || "the admin listener's address".to_owned(),
            |local| allowed_hosts(local).join(", "),
        );
        return Some(error(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            format!(
                "Host {:?} is not this admin listener's address; send Host {expected}",
                host.unwrap_or("")
            ),
        ));
    }
    if let Some(refused) = refuse_without_token(state, headers) {
        return Some(refused);
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Some(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "POST /publish takes only Content-Type: application/json",
        ));
    }
    None
}

/// Whether `host`, a `Host` header, names `local`, the address the
/// connection reached: its IP and port, or, when that IP is loopback,
/// `localhost`, `127.0.0.1` or `[::1]` with the port. A missing port is
/// 80, as in HTTP.
fn host_allowed(host: &str, local: SocketAddr) -> bool {
    let Some((name, port)) = split_host(host) else {
        return false;
    };
    let local_ip = local.ip().to_canonical();
    let loopback = local_ip.is_loopback();
    port == local.port()
        && match name.parse::<IpAddr>() {
            Ok(ip) => {
                let ip = ip.to_canonical();
                ip == local_ip
                    || (loopback
                        && (ip == IpAddr::V4(Ipv4Addr::LOCALHOST)
                            || ip == IpAddr::V6(Ipv6Addr::LOCALHOST)))
            }
            Err(_) => loopback && name.eq_ignore_ascii_case("localhost"),
        }
}

/// `(name, port)` of a `Host` value: `name`, `name:port`, `[v6]` or
/// `[v6]:port`.
fn split_host(host: &str) -> Option<(&str, u16)> {
    let host = host.trim();
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => {
            let (ip, after) = rest.split_once(']')?;
            match after {
                "" => (ip, None),
                _ => (ip, Some(after.strip_prefix(':')?)),
            }
        }
        None => match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    let port = match port {
        None => 80,
        Some(port) => port.parse().ok()?,
    };
    (!name.is_empty()).then_some((name, port))
}

/// The `Host` values [`host_allowed`] accepts for `local`, for the 403.
fn allowed_hosts(local: SocketAddr) -> Vec<String> {
    let ip = local.ip().to_canonical();
    let port = local.port();
    let mut hosts = vec![SocketAddr::new(ip, port).to_string()];
    if ip.is_loopback() {
        for other in [
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ] {
            if !hosts.contains(&other) {
                hosts.push(other);
            }
        }
    }
    hosts
}

/// The 429 when `SURGE_ADMIN_PUBLISH_RATE` is used up, with the whole
/// seconds until the next publish is let through as `Retry-After`.
fn refuse_over_rate(state: &AdminState) -> Option<Response> {
    let now = state.gateway.clock().now();
    let mut bucket = state
        .publish_limit
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if bucket.try_acquire(1, now) {
        return None;
    }
    let wait_ns = bucket
        .ready_at(1, now)
        .map_or(0, |at| at.as_nanos().saturating_sub(now.as_nanos()));
    let retry_after = wait_ns.div_ceil(1_000_000_000).max(1);
    let rate = bucket.rate_per_sec();
    drop(bucket);
    Some(
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after.to_string())],
            axum::Json(json!({
                "code": "rate_limited",
                "message": format!("more than SURGE_ADMIN_PUBLISH_RATE ({rate}) publishes per second; retry after {retry_after} s"),
            })),
        )
            .into_response(),
    )
}

async fn publish(State(state): State<AdminState>, request: Request) -> Response {
    let local = request
        .extensions()
        .get::<ConnectInfo<LocalAddr>>()
        .and_then(|ConnectInfo(LocalAddr(local))| *local);
    if let Some(refused) = refuse_publish_request(&state, request.headers(), local) {
        return refused;
    }
    // From SIGTERM on nothing will deliver a new message: refuse it rather
    // than acknowledge it.
    if state.gateway.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            axum::Json(json!({"code": "draining", "message": "the gateway is shutting down and accepts no new messages; publish to another instance"})),
        )
            .into_response();
    }
    if let Some(refused) = refuse_over_rate(&state) {
        return refused;
    }
    // Read only now: a refused request costs no body.
    let body = match Bytes::from_request(request, &state).await {
        Ok(body) => body,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the body exceeds SURGE_ADMIN_MAX_BODY_BYTES ({} bytes)",
                    state.max_body_bytes
                ),
            );
        }
        Err(e) => return error(e.status(), "invalid_body", e.body_text()),
    };
    let request: PublishRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("{PUBLISH_SHAPE} ({e})"),
            );
        }
    };
    let data = match (request.data, request.data_base64) {
        // `data` is stored as its JSON text; clients receive it as JSON.
        (Some(data), None) => Bytes::from(data.to_string()),
        (None, Some(b64)) => match BASE64.decode(b64.trim()) {
            Ok(raw) => Bytes::from(raw),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    format!("\"data_base64\" is not standard base64: {e}"),
                );
            }
        },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("exactly one of \"data\" and \"data_base64\" is required: {PUBLISH_SHAPE}"),
            );
        }
    };
    let subject = match Subject::parse(&request.subject) {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_subject",
                format!("invalid subject {:?}: {e}", request.subject),
            );
        }
    };
    if !state.stream_subjects.iter().any(|p| p.matches(&subject)) {
        let subjects: Vec<&str> = state.stream_subjects.iter().map(Pattern::as_str).collect();
        return error(
            StatusCode::BAD_REQUEST,
            "subject_not_in_stream",
            format!(
                "subject {subject} is outside the stream's subjects {} (SURGE_JS_SUBJECTS)",
                subjects.join(",")
            ),
        );
    }
    let priority = match request.priority.as_deref() {
        None => Priority::Medium,
        Some(p) => match Priority::parse(p) {
            Some(p) => p,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_priority",
                    format!("invalid priority {p:?}: must be one of low, medium, high, critical"),
                );
            }
        },
    };
    match state
        .gateway
        .broker()
        .publish(subject, data, priority)
        .await
    {
        Ok(sseq) => (StatusCode::ACCEPTED, axum::Json(json!({"sseq": sseq}))).into_response(),
        Err(e @ BrokerError::Unavailable(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            axum::Json(json!({"code": "broker_unavailable", "message": e.to_string()})),
        )
            .into_response(),
        Err(BrokerError::Full(reason)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            axum::Json(json!({"code": "ingest_full", "message": reason})),
        )
            .into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, "broker_refused", e.to_string()),
    }
}
