//! `/dashboard`: a live view of this instance on the admin listener.
//!
//! One page with its script and style compiled into the binary (nothing
//! is fetched from elsewhere, so it works on an air-gapped host), fed by
//! `/dashboard/events`, a server-sent event stream of one JSON frame per
//! second ([`live`]). `surge top` reads the same stream.
//!
//! | path | |
//! |---|---|
//! | `GET /dashboard` | the page (or, with an admin token and no session, the token form) |
//! | `GET /dashboard/events` | `event: history` (the frames kept, as a JSON array), then `event: frame` every second |
//! | `POST /dashboard/login` | form field `token`: sets the session cookie and redirects to the page |
//! | `GET /dashboard/app.js`, `/dashboard/app.css` | the page's script and style (no data in them) |
//!
//! With `SURGE_ADMIN_TOKEN` set, the page and its stream need either
//! `Authorization: Bearer <token>` (programs, `surge top`) or the session
//! cookie a browser gets for the token, once, from the form or from
//! `/dashboard?token=<token>`: `surge_dashboard`, `HttpOnly` (no script
//! reads it), `SameSite=Strict` (no other site's page sends it),
//! `Path=/dashboard`. Its value is a random key drawn at start, not the
//! token, so the token is never stored in the browser and every session
//! ends when surge restarts. Without a token the dashboard is as open as
//! `/health`, on a listener that is loopback-only unless told otherwise.

pub mod live;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::json;
use surge_core::config::Secret;
use tokio::sync::broadcast::error::RecvError;

use crate::token::{bearer, constant_time_eq};

pub use live::Live;

const PAGE: &str = include_str!("assets/index.html");
const LOGIN: &str = include_str!("assets/login.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// The session cookie's name.
pub const COOKIE: &str = "surge_dashboard";

/// The page may load its own script and style and talk to its own origin,
/// nothing else; no other site may frame it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the dashboard's handlers share.
#[derive(Clone)]
pub struct Dashboard {
    pub live: Arc<Live>,
    /// `SURGE_ADMIN_TOKEN`; `None`: the dashboard is open.
    pub token: Option<Arc<Secret>>,
    /// The session cookie's value: random, drawn at start.
    session: Arc<str>,
}

impl Dashboard {
    /// The dashboard of `live`'s frames, protected by `token` when set.
    pub fn new(live: Arc<Live>, token: Option<Arc<Secret>>) -> std::io::Result<Self> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
        let session: String = key.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Dashboard {
            live,
            token,
            session: session.into(),
        })
    }

    /// Whether `headers` carry the admin token as a bearer token or the
    /// session cookie (always, without a token).
    fn allows(&self, headers: &HeaderMap) -> bool {
        if self.token.is_none() {
            return true;
        }
        if bearer(headers.get_all(header::AUTHORIZATION).iter())
            .is_some_and(|presented| self.is_token(presented))
        {
            return true;
        }
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(name, value)| {
                name == COOKIE && constant_time_eq(value.as_bytes(), self.session.as_bytes())
            })
    }

    fn is_token(&self, presented: &str) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| constant_time_eq(presented.as_bytes(), t.expose().as_bytes()))
    }

    /// The redirect to the page that gives this browser its session.
    fn open_session(&self) -> Response {
        let cookie = format!(
            "{COOKIE}={}; Path=/dashboard; HttpOnly; SameSite=Strict",
            self.session
        );
        let mut response = (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/dashboard"),
                (header::CACHE_CONTROL, "no-store"),
            ],
        )
            .into_response();
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        response
    }
}

/// The dashboard's routes.
pub fn router(state: Dashboard) -> Router {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/", get(page))
        .route("/dashboard/login", post(login))
        .route("/dashboard/events", get(events))
        .route("/dashboard/app.js", get(script))
        .route("/dashboard/app.css", get(style))
        .with_state(state)
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

/// The token form, with `message` (fixed text, never user input) above it.
fn login_form(message: &str) -> Response {
    html(
        StatusCode::UNAUTHORIZED,
        LOGIN.replace("{{message}}", message),
    )
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn page(
    State(state): State<Dashboard>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    match query.token {
        Some(token) if state.is_token(&token) => return state.open_session(),
        Some(_) => return login_form("That is not the admin token."),
        None => {}
    }
    if state.allows(&headers) {
        html(StatusCode::OK, PAGE.to_owned())
    } else {
        login_form("")
    }
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(state): State<Dashboard>, Form(form): Form<LoginForm>) -> Response {
    if state.token.is_none() || state.is_token(form.token.trim()) {
        state.open_session()
    } else {
        login_form("That is not the admin token.")
    }
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn events(State(state): State<Dashboard>, headers: HeaderMap) -> Response {
    if !state.allows(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(json!({
                "code": "unauthorized",
                "message": "/dashboard/events needs Authorization: Bearer <SURGE_ADMIN_TOKEN> or the dashboard's session cookie (open /dashboard)",
            })),
        )
            .into_response();
    }
    let mut response = Sse::new(frames(&state.live))
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `history` (the frames kept, as one JSON array), then each new frame.
fn frames(live: &Live) -> impl Stream<Item = Result<Event, std::convert::Infallible>> + use<> {
    let (history, receiver) = live.subscribe();
    let first = Event::default()
        .event("history")
        .data(format!("[{}]", history.join(",")));
    let rest = stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(frame) => {
                    let event = Event::default().event("frame").data(&*frame);
                    return Some((Ok(event), receiver));
                }
                // A viewer too slow for 8 frames skips to the newest.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return None,
            }
        }
    });
    futures_util::StreamExt::chain(stream::once(async { Ok(first) }), rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dashboard(token: Option<&str>) -> Dashboard {
        let live = Arc::new(Live::for_tests());
        Dashboard::new(live, token.map(|t| Arc::new(Secret::new(t.to_owned())))).expect("random")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).expect("value"));
        }
        h
    }

    #[test]
    fn without_a_token_everyone_may_look() {
        assert!(dashboard(None).allows(&HeaderMap::new()));
    }

    #[test]
    fn with_a_token_the_bearer_token_or_the_session_cookie_is_needed() {
        let d = dashboard(Some("s3cret"));
        assert!(!d.allows(&HeaderMap::new()));
        assert!(d.allows(&headers(&[("authorization", "Bearer s3cret")])));
        assert!(d.allows(&headers(&[("authorization", "bearer s3cret")])));
        assert!(!d.allows(&headers(&[("authorization", "Bearer nope")])));
        let cookie = format!("other=1; {COOKIE}={}", d.session);
        assert!(d.allows(&headers(&[("cookie", &cookie)])));
        assert!(!d.allows(&headers(&[("cookie", &format!("{COOKIE}=s3cret"))])));
        assert!(!d.allows(&headers(&[("cookie", &format!("{COOKIE}={}x", d.session))])));
        // Each start draws another session key.
        assert_ne!(d.session, dashboard(Some("s3cret")).session);
        assert_eq!(d.session.len(), 64);
    }

    #[test]
    fn the_session_cookie_is_http_only_strict_and_scoped_to_the_dashboard() {
        let d = dashboard(Some("s3cret"));
        let r = d.open_session();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()[header::LOCATION], "/dashboard");
        let cookie = r.headers()[header::SET_COOKIE].to_str().expect("ascii");
        assert_eq!(
            cookie,
            format!(
                "{COOKIE}={}; Path=/dashboard; HttpOnly; SameSite=Strict",
                d.session
            )
        );
        assert!(!cookie.contains("s3cret"));
    }
}
