//! HTTP routes: the agent WebSocket's pre-upgrade decisions, and health endpoints.
//!
//! Everything decidable from the request is decided here (`decide`), before the
//! upgrade, in the contract's order: `Origin`, credentials (ambiguity, verification,
//! anonymity), then resume ownership. `upgrade::answer` turns the decision
//! into the 101 or the refusal (HTTP, or an immediate close per
//! `server.failure_mode`).

use std::net::SocketAddr;
use std::sync::Arc;

use agentgate_protocol::ErrorCode;
use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::admission;
use crate::connection::Start;
use crate::credentials::{self, Endpoint, Found};
use crate::error::Rejection;
use crate::state::AppState;
use crate::upgrade::{self, Target};

/// The router of the main listener (with `/metrics` unless `server.metrics_listen`
/// moves it).
pub fn router(state: Arc<AppState>) -> Router {
    let router = if state.config.server.metrics_listen.is_none() {
        Router::new().route("/metrics", get(metrics))
    } else {
        Router::new()
    };
    router
        .route("/v1/ws", get(agent_ws))
        .route("/v1/mcp/{server}", get(crate::mcp::mcp_ws))
        .route("/v1/tickets", axum::routing::post(crate::api::tickets).options(crate::api::tickets_preflight))
        .route("/v1/admin/revoke", axum::routing::post(crate::api::revoke))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// The router of `server.metrics_listen`.
pub fn metrics_router() -> Router {
    Router::new().route("/metrics", get(metrics))
}

/// `GET /metrics`: Prometheus text format, no credential.
async fn metrics() -> Response {
    let body = crate::metrics::handle().render();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    let backend = &app.backend.health;
    match backend.check() {
        Ok(()) => {
            checks.insert(backend.name().into(), json!("ok"));
        }
        Err(e) => {
            checks.insert(backend.name().into(), json!(e));
            ready = false;
        }
    }
    if app.is_shutting_down() {
        checks.insert("shutdown".into(), json!("the node is shutting down"));
        ready = false;
    }
    for source in &app.config.jwks {
        let status = if !source.issuer.keys().is_empty() {
            "ok".to_owned()
        } else {
            ready = false;
            source.last_error().unwrap_or_else(|| "keys not fetched yet".into())
        };
        checks.insert(format!("jwks:{}", source.issuer.name), json!(status));
    }
    let body = json!({"status": if ready { "ready" } else { "unready" }, "checks": checks});
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

/// `GET /v1/ws` through hyper: a request that is not a WebSocket upgrade (refused
/// `protocol_error` after the decisions), or an upgrade on a keep-alive connection.
/// A connection's first upgrade is served on the raw stream ([`crate::upgrade`]).
async fn agent_ws(
    State(app): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
) -> Response {
    ws_via_hyper(app, Target::Agent, remote, req).await
}

/// Decide and answer a WebSocket request that came through hyper.
pub(crate) async fn ws_via_hyper(
    app: Arc<AppState>,
    target: Target,
    remote: SocketAddr,
    mut req: axum::extract::Request,
) -> Response {
    let on_upgrade = if req.method() == axum::http::Method::GET {
        req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    let query = upgrade::parse_query(req.uri().query());
    let answer = upgrade::answer(&app, &target, req.headers(), &query, &remote, on_upgrade.is_some()).await;
    upgrade::hyper_answer(app, answer, on_upgrade, remote)
}

/// The pre-upgrade decisions, in the contract's order; `Ok` carries what the
/// connection starts with, holding its places in the connection counts.
pub(crate) async fn decide(
    app: &AppState,
    headers: &HeaderMap,
    query: &[(String, String)],
    origin: Option<&str>,
    remote: &SocketAddr,
    request_id: &str,
) -> Result<Start, Rejection> {
    let ip_slot = admission::admit_ip(app, *remote, request_id)?;
    admission::check_origin(app, headers, origin, request_id)?;
    admission::check_backend(app, request_id)?;
    let found = credentials::extract(headers, query, Endpoint::Agent, app.config.auth.query_token)
        .map_err(|(code, msg)| Rejection::new(code, msg, request_id))?;
    let resume = resume_params(query).map_err(|m| Rejection::new(ErrorCode::ProtocolError, m, request_id))?;
    let credential = match found {
        Found::One(c) => c,
        Found::None(msg) => {
            if app.config.auth.first_message && !query.iter().any(|(k, v)| k == "access_token" && !v.is_empty()) {
                return Ok(Start::AwaitAuth { resume, ip_slot });
            }
            return Err(Rejection::new(ErrorCode::TokenMissing, msg, request_id));
        }
    };
    let principal = admission::principal_of(app, &credential, origin, request_id).await?;
    // Not kept across the awaits below (this future's size is every handshake's).
    drop(credential);
    let principal_slot = admission::admit_principal(app, &principal).map_err(|(code, msg)| {
        let mut r = Rejection::new(code, msg, request_id).with_token_fp(Some(principal.token_fp.clone()));
        r.retry_after_s = Some(1);
        r
    })?;
    let resumable = admission::resume_check(app, &principal, resume.as_ref())
        .await
        .map_err(|(code, msg)| Rejection::new(code, msg, request_id).with_token_fp(Some(principal.token_fp.clone())))?;
    if !resumable {
        admission::session_room(app, principal_slot.key()).await.map_err(|(code, msg)| {
            let mut r = Rejection::new(code, msg, request_id).with_token_fp(Some(principal.token_fp.clone()));
            r.retry_after_s = Some(1);
            r
        })?;
    }
    Ok(Start::Authenticated { principal: Box::new(principal), resume, resumable, slots: (ip_slot, principal_slot) })
}

/// `session_id` and `last_seq` query parameters.
fn resume_params(query: &[(String, String)]) -> Result<Option<(String, u64)>, String> {
    let sid = query.iter().find(|(k, _)| k == "session_id").map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    let last = match query.iter().find(|(k, _)| k == "last_seq") {
        None => 0,
        Some((_, v)) => v.parse::<u64>().map_err(|_| "last_seq must be a non-negative integer".to_owned())?,
    };
    Ok(sid.map(|s| (s, last)))
}
