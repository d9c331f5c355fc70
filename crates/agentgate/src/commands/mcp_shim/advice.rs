//! What a lost connection or a refusal means and what to do, for the JSON-RPC errors
//! the MCP client receives and for the log.

use agentgate_client::ClientError;
use agentgate_protocol::{ClientClass, ErrorCode};
use serde_json::{Value, json};

use super::connecting::what;
use super::credential::Token;
use super::target::Target;

#[derive(Debug, Clone)]
pub(super) struct Refusal {
    /// The JSON-RPC error message for every request.
    pub(super) message: String,
    pub(super) data: Value,
    /// The fingerprint of the refused token.
    pub(super) fp: String,
}

/// The reason code and JSON-RPC message for requests lost with a connection.
pub(super) fn lost_message(e: &ClientError) -> (String, String) {
    let reason = e.reason_code().map_or_else(|| "connection_lost".to_owned(), str::to_owned);
    let why = match e.reason_code() {
        Some("mcp_server_failed") => format!(
            "the MCP server process failed ({}) and its state is lost; a new process is started for the next request",
            what(e)
        ),
        Some("server_restart") => format!("the gateway is restarting ({})", what(e)),
        _ => what(e),
    };
    (
        reason,
        format!(
            "agentgate: the connection to the gateway was lost before the answer came: {why}; the request may be retried"
        ),
    )
}

/// What a refusal means and what to do, for the JSON-RPC errors and the log.
pub(super) fn refusal(e: &ClientError, target: &Target, token: &Token) -> Refusal {
    if let ClientError::Tls(detail) = e {
        let message = format!(
            "agentgate could not connect to {}: TLS error: {detail} — the gateway's certificate does not verify: \
             add --ca-file with the CA that signed it to the MCP server's command line in your IDE (or install that \
             CA in the system's trust store), and check that the host name in --url is one the certificate names; \
             the next request tries again",
            target.shown
        );
        let data = json!({"reason": "tls", "retryable": false, "cause": what(e), "token_fingerprint": token.fp});
        return Refusal { message, data, fp: token.fp.clone() };
    }
    let code = e.reason_code().unwrap_or("").to_owned();
    let server = &target.server;
    let renew = match &token.file {
        Some(_) => format!(
            "mint a new token (agentgate token mint --config GATEWAY.toml --sub NAME --scope \"mcp:{server}\") and write it to {}: the next \
             request picks it up (or restart the MCP server in your IDE)",
            token.from
        ),
        None => format!(
            "mint a new token (agentgate token mint --config GATEWAY.toml --sub NAME --scope \"mcp:{server}\"), put it in {}, and restart the \
             MCP server in your IDE",
            token.from
        ),
    };
    // The advice of the one table (ErrorCode::advice), with what an IDE user does about
    // it: where the token goes, and the scope and server name of this --url.
    let hint = match e.error_code() {
        Some(ErrorCode::ScopeMissing) => format!(
            "the token lacks scope \"mcp:{server}\" (or \"mcp:*\"): mint one with agentgate token mint --config \
             GATEWAY.toml --sub NAME --scope \"mcp:{server}\", put it in {}, and restart the MCP server in your IDE",
            token.from
        ),
        Some(ErrorCode::McpServerUnknown) => {
            format!("the gateway hosts no MCP server named {server:?}: fix --url in your IDE's MCP config")
        }
        Some(c) if c.client_class() == ClientClass::Unauthorized || c == ErrorCode::AnonymousNotAllowed => {
            format!("{} (token fingerprint {}); {renew}", c.advice(), token.fp)
        }
        Some(c) => format!("{}; check --url {}", c.advice(), target.shown),
        None => format!("see the gateway's log; check --url {}", target.shown),
    };
    let shown_code = if code.is_empty() { what(e) } else { code.clone() };
    let mut message = format!("agentgate rejected the connection: {shown_code} — {hint}");
    let mut data = json!({"reason": if code.is_empty() { "rejected".to_owned() } else { code.clone() },
        "retryable": false, "cause": what(e), "token_fingerprint": token.fp});
    if let ClientError::Rejected { message: server_message, request_id, .. } = e {
        message.push_str(&format!(" (gateway: {server_message}"));
        if let Some(id) = request_id {
            message.push_str(&format!("; request_id {id}"));
            data["request_id"] = json!(id);
        }
        message.push(')');
    }
    Refusal { message, data, fp: token.fp.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::mcp_shim::credential::token_of;

    #[test]
    fn refusal_messages_name_the_code_and_what_to_do_without_the_token() {
        let target = Target::parse("ws://127.0.0.1:9/v1/mcp/everything").unwrap();
        let token = token_of("tok-secret", "environment variable AGENTGATE_TOKEN".into(), None);
        let e = ClientError::Closed { close_code: 4401, code: Some("token_expired".into()), reason: String::new() };
        let r = refusal(&e, &target, &token);
        assert!(r.message.starts_with("agentgate rejected the connection: token_expired — "), "{}", r.message);
        assert!(r.message.contains("restart the MCP server in your IDE"), "{}", r.message);
        assert!(!r.message.contains("tok-secret"));
        assert_eq!(r.data["reason"], "token_expired");
        let e = ClientError::Rejected {
            status: 403,
            code: Some("scope_missing".into()),
            message: "needs scope".into(),
            request_id: Some("req_1".into()),
            retry_after_s: None,
        };
        let r = refusal(&e, &target, &token);
        assert!(r.message.contains("mcp:everything") && r.message.contains("req_1"), "{}", r.message);
    }
}
