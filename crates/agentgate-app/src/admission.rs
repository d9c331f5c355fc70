//! The pre-upgrade checks that `/v1/ws`, `/v1/mcp/{server}` and the HTTP APIs share, in
//! the contract's order (PROTOCOL.md section 3): the per-IP request bucket, connections
//! per IP, `Origin`, the shared backend's availability, the credential (a token, an API
//! key or a ticket) into its principal, connections per principal, room for one more
//! session, and resume ownership. Each returns the exact reason code it decides; the
//! callers (`routes.rs`, `mcp.rs`, `api.rs`, first-message auth in `connection.rs`)
//! only put them in order.

use std::net::{IpAddr, SocketAddr};

use agentgate_auth::Principal;
use agentgate_protocol::ErrorCode;
use axum::http::HeaderMap;
use axum::http::header::ORIGIN;

use crate::credentials;
use crate::error::Rejection;
use crate::limits::Slot;
use crate::session::{FastHash, Owner};
use crate::state::AppState;
use crate::telemetry;

/// The per-IP request bucket (`limits.handshakes_per_ip_per_s`): drawn on by every
/// handshake and by `POST /v1/tickets` and `POST /v1/admin/revoke` (PROTOCOL.md
/// section 8). 429 `rate_limited` with `Retry-After`.
pub(crate) fn check_rate(app: &AppState, remote: SocketAddr, request_id: &str) -> Result<(), Rejection> {
    if let Err(wait) = app.limits.handshake(remote.ip()) {
        let mut r = Rejection::new(
            ErrorCode::RateLimited,
            format!(
                "more than {} handshakes per second from this address; retry after the pause",
                app.config.limits.handshakes_per_ip_per_s
            ),
            request_id,
        );
        r.retry_after_s = Some(wait.as_secs().max(1));
        return Err(r);
    }
    Ok(())
}

/// The handshake rate and the per-IP connection count, first of all checks.
pub(crate) fn admit_ip(app: &AppState, remote: SocketAddr, request_id: &str) -> Result<Slot<IpAddr>, Rejection> {
    check_rate(app, remote, request_id)?;
    app.limits.per_ip.acquire(remote.ip()).ok_or_else(|| {
        let mut r = Rejection::new(
            ErrorCode::TooManyConnections,
            format!(
                "this address already holds {} connections (limits.connections_per_ip)",
                app.config.limits.connections_per_ip
            ),
            request_id,
        );
        r.retry_after_s = Some(1);
        r
    })
}

/// `Origin`, when present, must be allowed; more than one `Origin` header is
/// `origin_not_allowed` (PROTOCOL.md section 2), whatever the values.
pub(crate) fn check_origin(
    app: &AppState,
    headers: &HeaderMap,
    origin: Option<&str>,
    request_id: &str,
) -> Result<(), Rejection> {
    if headers.get_all(ORIGIN).iter().nth(1).is_some() {
        return Err(Rejection::new(ErrorCode::OriginNotAllowed, "send one Origin header, not several", request_id));
    }
    match origin {
        Some(origin) if !app.config.origin_allowed(origin) => Err(Rejection::new(
            ErrorCode::OriginNotAllowed,
            format!("origin {:?} is not on server.allowed_origins", truncate(origin, 128)),
            request_id,
        )),
        _ => Ok(()),
    }
}

/// The shared backend must be reachable: while it is not, new handshakes are refused
/// `service_unavailable` (live connections stay).
pub(crate) fn check_backend(app: &AppState, request_id: &str) -> Result<(), Rejection> {
    app.backend.health.check().map_err(|e| {
        let mut r = Rejection::new(
            ErrorCode::ServiceUnavailable,
            format!("the shared backend ({}) is unreachable: {e}; retry shortly", app.backend.health.name()),
            request_id,
        );
        r.retry_after_s = Some(1);
        r
    })
}

/// Verify a credential (a token, an API key, or a ticket) into its principal.
pub(crate) async fn principal_of(
    app: &AppState,
    credential: &credentials::Credential,
    origin: Option<&str>,
    request_id: &str,
) -> Result<Principal, Rejection> {
    if credential.transport == credentials::Transport::Ticket {
        Box::pin(ticket_principal(app, &credential.value, origin)).await
    } else {
        app.verify(&credential.value).await.map_err(|e| (e.code(), e.message().to_owned()))
    }
    .map_err(|(code, msg)| {
        // Only a refusal needs the fingerprint here (a principal carries its own).
        let fp = agentgate_auth::fingerprint(credential.value.as_bytes());
        Rejection::new(code, msg, request_id).with_token_fp(Some(fp))
    })
}

/// Use a ticket: its principal (with `via` `ticket:<via>`), re-checked for revocation
/// and expiry, which may have happened since it was issued.
async fn ticket_principal(
    app: &AppState,
    ticket: &str,
    origin: Option<&str>,
) -> Result<Principal, (ErrorCode, String)> {
    let mut p = app.tickets.consume(ticket, origin).await?;
    use agentgate_auth::Revocations;
    if app.revocations.is_revoked(p.jti.as_deref(), &p.subject, p.issued_at) {
        return Err((ErrorCode::TokenRevoked, "the credential that created this ticket has been revoked".into()));
    }
    if let Some(exp) = p.expires_at
        && agentgate_auth::is_expired(exp, telemetry::unix_now(), app.config.auth.leeway_s)
    {
        return Err((ErrorCode::TokenExpired, "the credential that created this ticket has expired".into()));
    }
    p.via = format!("ticket:{}", p.via);
    Ok(p)
}

/// Take a place in the principal's connection count.
pub(crate) fn admit_principal(app: &AppState, p: &Principal) -> Result<Slot<Owner, FastHash>, (ErrorCode, String)> {
    app.limits.per_principal.acquire(Owner::of(p)).ok_or_else(|| {
        (
            ErrorCode::TooManyConnections,
            format!(
                "this principal already holds {} connections (limits.connections_per_principal); close some",
                app.config.limits.connections_per_principal
            ),
        )
    })
}

/// Whether the session to resume exists and belongs to the principal: `Ok(true)` to
/// resume, `Ok(false)` for `session_not_found`, `Err` for `session_forbidden` (or an
/// unreachable backend).
pub(crate) async fn resume_check(
    app: &AppState,
    principal: &agentgate_auth::Principal,
    resume: Option<&(String, u64)>,
) -> Result<bool, (ErrorCode, String)> {
    let Some((sid, _)) = resume else { return Ok(false) };
    match app.backend.sessions.owner(sid).await {
        Ok(Some(owner)) if owner == Owner::of(principal) => Ok(true),
        Ok(Some(_)) => Err((
            ErrorCode::SessionForbidden,
            "that session belongs to another principal (issuer, subject or tenant)".into(),
        )),
        Ok(None) => Ok(false),
        Err(e) => Err((ErrorCode::ServiceUnavailable, format!("the session backend is unreachable: {e}"))),
    }
}

/// Whether the principal may get a new session (`limits.sessions_per_principal`, all
/// attached: `too_many_connections`), decided by the store that holds the sessions.
pub(crate) async fn session_room(app: &AppState, owner: &Owner) -> Result<(), (ErrorCode, String)> {
    match app.backend.sessions.admits_new_session(owner).await {
        Ok(true) => Ok(()),
        Ok(false) => Err((
            ErrorCode::TooManyConnections,
            format!(
                "this principal already holds {} sessions, all attached (limits.sessions_per_principal); close one",
                app.config.limits.sessions_per_principal
            ),
        )),
        Err(e) => Err((ErrorCode::ServiceUnavailable, format!("the session backend is unreachable: {e}"))),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
