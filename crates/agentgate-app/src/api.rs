//! The plain HTTP APIs: `POST /v1/tickets` (with CORS for browsers) and
//! `POST /v1/admin/revoke`. `failure_mode` does not apply: refusals are always JSON
//! HTTP responses. Each checks `Origin` first, then the bearer credential.

use std::net::SocketAddr;
use std::sync::Arc;

use agentgate_auth::Principal;
use agentgate_protocol::{ErrorCode, id};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::Rejection;
use crate::revocation::Revoke;
use crate::session::StoreError;
use crate::state::AppState;
use crate::telemetry;

/// Largest accepted API request body.
const MAX_BODY: usize = 16 * 1024;

/// `OPTIONS /v1/tickets`: the CORS preflight.
pub(crate) async fn tickets_preflight(
    State(app): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let request_id = id::request_id();
    let origin = match allowed_origin(&app, &headers, &request_id) {
        Ok(o) => o,
        Err(r) => return refuse(&app, r, remote, None),
    };
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Some(o) = &origin {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Authorization, Content-Type"));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        cors(&mut resp, o);
    }
    resp
}

/// `POST /v1/tickets`.
pub(crate) async fn tickets(
    State(app): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let (request_id, origin, principal) = match authenticate(&app, &headers, remote).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let ticket = match app.tickets.issue(&principal, origin.clone()).await {
        Ok(t) => t,
        Err(e) => {
            let mut r = match e {
                StoreError::TicketLimit(cap) => Rejection::new(
                    ErrorCode::RateLimited,
                    format!(
                        "this principal already holds {cap} live tickets (limits.tickets_per_principal); \
                         use them or let them expire, then retry"
                    ),
                    &request_id,
                ),
                e if app.backend.health.check().is_err() => Rejection::new(
                    ErrorCode::ServiceUnavailable,
                    format!("the shared backend is unreachable ({e}); retry shortly"),
                    &request_id,
                ),
                _ => Rejection::new(
                    ErrorCode::RateLimited,
                    "too many live tickets on this node; retry shortly",
                    &request_id,
                ),
            }
            .with_token_fp(Some(principal.token_fp.clone()));
            r.retry_after_s = Some(app.tickets.ttl().as_secs().clamp(1, 60));
            return refuse(&app, r, remote, origin.as_deref());
        }
    };
    tracing::info!(
        request_id = %request_id,
        subject = %principal.subject,
        token_fp = %principal.token_fp,
        ticket_fp = %agentgate_auth::fingerprint(ticket.as_bytes()),
        bound_origin = origin.as_deref().unwrap_or("-"),
        "ticket issued"
    );
    let body = json!({"ticket": ticket, "expires_in": app.tickets.ttl().as_secs()});
    let mut resp = (StatusCode::CREATED, axum::Json(body)).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    if let Some(o) = &origin {
        cors(&mut resp, o);
    }
    resp
}

/// `POST /v1/admin/revoke`.
pub(crate) async fn revoke(
    State(app): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (request_id, origin, principal) = match authenticate(&app, &headers, remote).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    if !principal.has_scope("admin") {
        let r = Rejection::new(ErrorCode::ScopeMissing, "revoking tokens needs scope \"admin\"", &request_id)
            .with_token_fp(Some(principal.token_fp.clone()));
        return refuse(&app, r, remote, origin.as_deref());
    }
    let request = match parse_revoke(&body, telemetry::unix_now()) {
        Ok(r) => r,
        Err(m) => {
            return refuse(&app, Rejection::new(ErrorCode::ProtocolError, m, &request_id), remote, origin.as_deref());
        }
    };
    if let Err(e) = app.backend.revocations.add(request.clone()).await {
        let r = Rejection::new(
            ErrorCode::ServiceUnavailable,
            format!("the revocation could not be recorded ({e}); retry"),
            &request_id,
        );
        return refuse(&app, r, remote, origin.as_deref());
    }
    let what = match &request {
        Revoke::Jti(j) => json!({"jti": j}),
        Revoke::Subject { subject, issued_before } => json!({"subject": subject, "issued_before": issued_before}),
    };
    tracing::info!(request_id = %request_id, by = %principal.subject, revoked = %what, "tokens revoked");
    let mut resp = (StatusCode::OK, axum::Json(json!({"revoked": what}))).into_response();
    if let Some(o) = &origin {
        cors(&mut resp, o);
    }
    resp
}

/// The common start of an API request: a request id, the `Origin` (checked first),
/// then the bearer credential. `Err` is the finished refusal.
async fn authenticate(
    app: &AppState,
    headers: &HeaderMap,
    remote: SocketAddr,
) -> Result<(String, Option<String>, Principal), Response> {
    let request_id = id::request_id();
    if let Err(r) = crate::admission::check_rate(app, remote, &request_id) {
        // An allowed origin still gets its CORS headers, so a browser can read the 429.
        let cors_origin = allowed_origin(app, headers, &request_id).ok().flatten();
        return Err(refuse(app, r, remote, cors_origin.as_deref()));
    }
    let origin = allowed_origin(app, headers, &request_id).map_err(|r| refuse(app, r, remote, None))?;
    let principal =
        bearer_principal(app, headers, &request_id).await.map_err(|r| refuse(app, r, remote, origin.as_deref()))?;
    Ok((request_id, origin, principal))
}

/// Longest `jti` a revocation names (PROTOCOL.md section 8).
pub const MAX_REVOKE_JTI_BYTES: usize = 256;
/// Longest `subject` a revocation names.
pub const MAX_REVOKE_SUBJECT_BYTES: usize = 1024;

/// The revocation request of a body. Bounds of PROTOCOL.md section 8 decided here: a
/// `jti` over 256 bytes or a `subject` over 1024 bytes is refused, and an
/// `issued_before` later than `now` is taken as `now`, so a revocation never blocks
/// tokens issued after it.
fn parse_revoke(body: &[u8], now: i64) -> Result<Revoke, String> {
    if body.len() > MAX_BODY {
        return Err(format!("the body is larger than {MAX_BODY} bytes"));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let obj = v.as_object().ok_or("the body must be a JSON object")?;
    match (obj.get("jti"), obj.get("subject"), obj.get("issued_before")) {
        (Some(Value::String(j)), None, None) if j.len() > MAX_REVOKE_JTI_BYTES => {
            Err(format!("the `jti` is {} bytes, above the limit of {MAX_REVOKE_JTI_BYTES}", j.len()))
        }
        (None, Some(Value::String(s)), Some(_)) if s.len() > MAX_REVOKE_SUBJECT_BYTES => {
            Err(format!("the `subject` is {} bytes, above the limit of {MAX_REVOKE_SUBJECT_BYTES}", s.len()))
        }
        (Some(Value::String(j)), None, None) if !j.is_empty() => Ok(Revoke::Jti(j.clone())),
        (None, Some(Value::String(s)), Some(t)) if !s.is_empty() => match t.as_i64() {
            Some(t) => Ok(Revoke::Subject { subject: s.clone(), issued_before: t.min(now) }),
            None => Err("`issued_before` must be an integer (Unix seconds)".into()),
        },
        _ => Err("send {\"jti\":\"...\"} or {\"subject\":\"...\",\"issued_before\":N}".into()),
    }
}

/// The request's `Origin` if allowed (`Ok(None)` without one).
fn allowed_origin(app: &AppState, headers: &HeaderMap, request_id: &str) -> Result<Option<String>, Rejection> {
    if headers.get_all(header::ORIGIN).iter().nth(1).is_some() {
        return Err(Rejection::new(ErrorCode::OriginNotAllowed, "send one Origin header, not several", request_id));
    }
    match headers.get(header::ORIGIN) {
        None => Ok(None),
        Some(v) => {
            let o = v.to_str().unwrap_or("");
            if app.config.origin_allowed(o) {
                Ok(Some(o.to_owned()))
            } else {
                Err(Rejection::new(
                    ErrorCode::OriginNotAllowed,
                    format!("origin {:?} is not on server.allowed_origins", o.chars().take(128).collect::<String>()),
                    request_id,
                ))
            }
        }
    }
}

/// Verify the `Authorization: Bearer` credential of an API request.
async fn bearer_principal(app: &AppState, headers: &HeaderMap, request_id: &str) -> Result<Principal, Rejection> {
    crate::credentials::check_header_bytes(headers).map_err(|(code, m)| Rejection::new(code, m, request_id))?;
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (first, second) = (values.next(), values.next());
    if second.is_some() {
        return Err(Rejection::new(ErrorCode::CredentialsAmbiguous, "send one Authorization header", request_id));
    }
    let value = first.and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    // As on /v1/ws: an Authorization that is not `Bearer ...` is token_malformed; an
    // empty `Bearer` is no credential at all.
    let token = match value {
        Some(v) => {
            let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(Rejection::new(
                    ErrorCode::TokenMalformed,
                    "the Authorization header is not `Bearer <token>`",
                    request_id,
                ));
            }
            Some(rest.trim()).filter(|t| !t.is_empty())
        }
        None => None,
    };
    let Some(token) = token else {
        return Err(Rejection::new(
            ErrorCode::TokenMissing,
            "send `Authorization: Bearer <token>` (mint one with `agentgate token mint`)",
            request_id,
        ));
    };
    let fp = Some(agentgate_auth::fingerprint(token.as_bytes()));
    app.verify(token).await.map_err(|e| Rejection::new(e.code(), e.message(), request_id).with_token_fp(fp))
}

fn refuse(app: &AppState, r: Rejection, remote: SocketAddr, origin: Option<&str>) -> Response {
    telemetry::log_rejection(&r, remote);
    let mut resp = r.into_http(app.config.server.profile);
    if let Some(o) = origin {
        cors(&mut resp, o);
    }
    resp
}

fn cors(resp: &mut Response, origin: &str) {
    if let Ok(v) = HeaderValue::from_str(origin) {
        resp.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    resp.headers_mut().insert(header::VARY, HeaderValue::from_static("Origin"));
}
