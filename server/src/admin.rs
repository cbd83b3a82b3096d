//! The admin listener: `/health`, `/metrics`, `POST /publish` and the
//! effective configuration. It is separate from the public WebSocket port
//! and bound to loopback by default (PROTOCOL.md, "Admin listener").

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use surge_core::protocol::Priority;
use surge_core::subjects::Subject;
use surge_runtime::{BrokerError, Gateway};

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub gateway: Arc<Gateway>,
    /// The effective configuration as JSON (secrets masked).
    pub config: Arc<Value>,
    /// Largest accepted `/publish` body.
    pub max_publish_bytes: usize,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    let limit = state.max_publish_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/config", get(config))
        .route("/publish", post(publish))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn health(State(state): State<AdminState>) -> Response {
    let health = state.gateway.health();
    let status = if health.status == "ok" {
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

async fn config(State(state): State<AdminState>) -> Response {
    axum::Json(state.config.as_ref().clone()).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    subject: String,
    data: Value,
    #[serde(default)]
    priority: Option<String>,
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": message})),
    )
        .into_response()
}

async fn publish(State(state): State<AdminState>, body: Bytes) -> Response {
    let request: PublishRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(format!(
                "expected {{\"subject\":…,\"data\":…,\"priority\":\"low|medium|high|critical\"}}: {e}"
            ));
        }
    };
    let subject = match Subject::parse(&request.subject) {
        Ok(s) => s,
        Err(e) => return bad_request(format!("invalid subject {:?}: {e}", request.subject)),
    };
    let priority = match request.priority.as_deref() {
        None => Priority::Medium,
        Some(p) => match Priority::parse(p) {
            Some(p) => p,
            None => {
                return bad_request(format!(
                    "invalid priority {p:?}: must be one of low, medium, high, critical"
                ));
            }
        },
    };
    // `data` is stored as its JSON text; clients receive it as JSON.
    let data = Bytes::from(request.data.to_string());
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
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}
