//! HTTP routes: the agent WebSocket's pre-upgrade decisions, and health endpoints.
//!
//! Everything decidable from the request is decided here, before the upgrade, in the
//! contract's order: `Origin`, credentials (ambiguity, verification, anonymity), then
//! resume ownership. A refusal is delivered by `reject` as HTTP or as an immediate
//! close, per `server.failure_mode`.

use std::net::SocketAddr;
use std::sync::Arc;

use agentgate_protocol::{ErrorCode, PROTOCOL_V1, id};
use axum::Router;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header::ORIGIN};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::admission;
use crate::config::FailureMode;
use crate::connection::{self, Start};
use crate::credentials::{self, Endpoint, Found};
use crate::error::Rejection;
use crate::state::AppState;
use crate::telemetry;

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

/// `GET /v1/ws`.
async fn agent_ws(
    State(app): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let request_id = id::request_id();
    let origin = headers.get(ORIGIN).map(|o| o.to_str().unwrap_or("").to_owned());
    let started = std::time::Instant::now();
    let decision = decide(&app, &headers, &query, origin.as_deref(), remote, &request_id).await;
    crate::metrics::handshake_decided(started.elapsed(), decision.is_ok());
    respond(&app, decision, ws.ok(), &headers, remote, request_id, connection::run)
}

/// Turn a pre-upgrade decision into the response: the upgrade, handing what was
/// decided to `serve`, or the rejection (also when the request is not a WebSocket
/// upgrade at all).
pub(crate) fn respond<T, F, Fut>(
    app: &Arc<AppState>,
    decision: Result<T, Rejection>,
    ws: Option<WebSocketUpgrade>,
    headers: &HeaderMap,
    remote: SocketAddr,
    request_id: String,
    serve: F,
) -> Response
where
    T: Send + 'static,
    F: FnOnce(Arc<AppState>, axum::extract::ws::WebSocket, T, SocketAddr, String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let has_origin = headers.contains_key(ORIGIN);
    match (decision, ws) {
        (Ok(decided), Some(ws)) => {
            let ws = configure(app, ws, headers);
            let app = Arc::clone(app);
            ws.on_upgrade(move |socket| serve(app, socket, decided, remote, request_id))
        }
        (Ok(_), None) => {
            let r = Rejection::new(
                ErrorCode::ProtocolError,
                "this endpoint speaks WebSocket only; send an upgrade request (Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13)",
                &request_id,
            );
            reject(app, r, None, has_origin, remote, headers)
        }
        (Err(r), ws) => reject(app, r, ws, has_origin, remote, headers),
    }
}

/// The pre-upgrade decisions, in the contract's order; `Ok` carries what the
/// connection starts with, holding its places in the connection counts.
async fn decide(
    app: &AppState,
    headers: &HeaderMap,
    query: &[(String, String)],
    origin: Option<&str>,
    remote: SocketAddr,
    request_id: &str,
) -> Result<Start, Rejection> {
    let ip_slot = admission::admit_ip(app, remote, request_id)?;
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
    let principal_slot = admission::admit_principal(app, &principal).map_err(|(code, msg)| {
        let mut r = Rejection::new(code, msg, request_id).with_token_fp(Some(principal.token_fp.clone()));
        r.retry_after_s = Some(1);
        r
    })?;
    let resumable = admission::resume_check(app, &principal, resume.as_ref())
        .await
        .map_err(|(code, msg)| Rejection::new(code, msg, request_id).with_token_fp(Some(principal.token_fp.clone())))?;
    if !resumable {
        admission::session_room(app, &principal).await.map_err(|(code, msg)| {
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

/// Buffer sizes and frame limits of an upgrade, and the subprotocol to select:
/// `agentgate.v1` or `mcp`, whichever the client offered (never a credential entry).
pub(crate) fn configure(app: &AppState, ws: WebSocketUpgrade, headers: &HeaderMap) -> WebSocketUpgrade {
    let max = app.config.server.max_message_bytes;
    let mut ws = ws
        .read_buffer_size(crate::server::READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(max.saturating_mul(2).max(64 * 1024))
        // Frames up to twice the limit are read and refused with a clean 1009; the
        // library refuses anything larger on its own.
        .max_message_size(max.saturating_mul(2))
        .max_frame_size(max.saturating_mul(2));
    let offered = credentials::offered_protocols(headers);
    if offered.iter().any(|p| p == PROTOCOL_V1) {
        ws.set_selected_protocol(HeaderValue::from_static(PROTOCOL_V1));
    } else if offered.iter().any(|p| p == agentgate_protocol::MCP_SUBPROTOCOL) {
        ws.set_selected_protocol(HeaderValue::from_static(agentgate_protocol::MCP_SUBPROTOCOL));
    }
    ws
}

/// Deliver a rejection: logged once, counted, then HTTP or an immediate close.
pub(crate) fn reject(
    app: &AppState,
    r: Rejection,
    ws: Option<WebSocketUpgrade>,
    has_origin: bool,
    remote: SocketAddr,
    headers: &HeaderMap,
) -> Response {
    telemetry::log_rejection(&r, remote);
    let as_close = match app.config.server.failure_mode {
        FailureMode::Http => false,
        FailureMode::Close => true,
        FailureMode::Auto => has_origin,
    };
    let profile = app.config.server.profile;
    match ws {
        Some(ws) if as_close => {
            let ws = configure(app, ws, headers);
            let code = r.code;
            let mut resp = ws.on_upgrade(move |mut socket| async move {
                // Bounded: a client that does not read cannot hold this task.
                connection::close(&mut socket, code).await;
            });
            if let Ok(v) = HeaderValue::from_str(&r.request_id) {
                resp.headers_mut().insert("x-request-id", v);
            }
            resp
        }
        _ => r.into_http(profile),
    }
}
