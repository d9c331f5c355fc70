//! Connecting: the handshake request (`Authorization: Bearer`, subprotocol `mcp`),
//! opened with agentgate-client's [`connect_raw`] so that `ws://` and `wss://` (with
//! `--ca-file`) and every failure class are exactly those of `agentgate connect`; and
//! which failures are worth another attempt.

use std::time::Duration;

use agentgate_client::{ClientError, connect_raw};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::target::Target;

pub(super) use agentgate_client::connection::Ws;

/// Limit for the TCP connect, the TLS handshake and the WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The handshake request: `Authorization: Bearer`, and subprotocol `mcp` offered.
fn handshake(target: &Target, token: &str) -> Result<Request, ClientError> {
    let mut req = target.url.as_str().into_client_request().map_err(|_| ClientError::InvalidInput("--url".into()))?;
    let mut auth = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| ClientError::InvalidInput("the token cannot travel in a header".into()))?;
    auth.set_sensitive(true);
    req.headers_mut().insert("authorization", auth);
    req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(agentgate_protocol::MCP_SUBPROTOCOL));
    Ok(req)
}

pub(super) async fn connect(target: Target, token: String) -> Result<Ws, ClientError> {
    let req = handshake(&target, &token)?;
    drop(token);
    connect_raw(req, target.ca_file.as_deref(), CONNECT_TIMEOUT, &target.shown).await
}

/// At most `max` characters of `s`, on one line.
pub(super) fn excerpt(s: &str, max: usize) -> String {
    let one: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if one.chars().count() > max { format!("{}...", one.chars().take(max).collect::<String>()) } else { one }
}

/// Whether a failure is worth another attempt: network faults, timeouts, HTTP 429 and
/// 5xx, and closes other than the refusals (4400, 4401, 4403, 4404, 4408) and the
/// protocol faults (1002, 1003, 1007, 1008, 1010). A certificate that does not verify
/// is not: it is answered at once, naming the TLS error, and the next request tries
/// again.
pub(super) fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Network(_) | ClientError::Timeout(_) => true,
        ClientError::Rejected { status, .. } => *status == 429 || *status >= 500,
        ClientError::Closed { close_code, .. } => {
            !matches!(close_code, 4400 | 4401 | 4403 | 4404 | 4408 | 1002 | 1003 | 1007 | 1008 | 1010)
        }
        ClientError::Tls(_) | ClientError::Protocol(_) | ClientError::InvalidInput(_) => false,
    }
}

/// "HTTP 401 token_expired", "close 1012 server_restart", "network: ...".
pub(super) fn what(e: &ClientError) -> String {
    match e {
        ClientError::Rejected { status, code, .. } => {
            format!("HTTP {status}{}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())
        }
        ClientError::Closed { close_code, code, reason } => match code {
            Some(c) => format!("close {close_code} {c}"),
            None if !reason.is_empty() => format!("close {close_code} ({reason})"),
            None => format!("close {close_code}"),
        },
        ClientError::Network(m) => format!("network: {m}"),
        ClientError::Timeout(m) => format!("timeout: {m}"),
        ClientError::Tls(m) => format!("tls: {m}"),
        ClientError::Protocol(m) => format!("protocol: {m}"),
        ClientError::InvalidInput(m) => format!("invalid input: {m}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_not_retried_and_losses_are() {
        let closed =
            |c: u16, code: &str| ClientError::Closed { close_code: c, code: Some(code.into()), reason: String::new() };
        for e in [closed(1012, "server_restart"), closed(1011, "mcp_server_failed"), closed(4429, "rate_limited")] {
            assert!(retryable(&e), "{e:?}");
        }
        assert!(retryable(&ClientError::Network("x".into())));
        for e in [closed(4401, "token_expired"), closed(4403, "scope_missing"), closed(4404, "mcp_server_unknown")] {
            assert!(!retryable(&e), "{e:?}");
        }
        let rejected = |status: u16| ClientError::Rejected {
            status,
            code: None,
            message: String::new(),
            request_id: None,
            retry_after_s: None,
        };
        assert!(!retryable(&rejected(401)) && !retryable(&rejected(404)));
        assert!(retryable(&rejected(503)) && retryable(&rejected(429)) && retryable(&rejected(502)));
    }
}
