//! Reason codes: the stable, machine-readable half of every rejection.

use std::fmt;

/// Every reason code of PROTOCOL.md section 3, plus the codes of `error` replies.
///
/// `as_str`, `http_status` and `close_code` map each variant explicitly, without a
/// wildcard arm, so that a new code forces a decision everywhere it matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// More than one credential presented.
    CredentialsAmbiguous,
    /// Bad request or frame.
    ProtocolError,
    /// No credential, an empty one, or a disabled transport.
    TokenMissing,
    /// Not decodable, oversized, or a server id used as a token.
    TokenMalformed,
    /// Signature does not verify.
    SignatureInvalid,
    /// `alg` not allowed for the issuer or key.
    AlgorithmNotAllowed,
    /// No key for this `kid`.
    KeyUnknown,
    /// `exp` passed.
    TokenExpired,
    /// `nbf`/`iat` in the future beyond leeway.
    TokenNotYetValid,
    /// `iss` absent or not accepted.
    IssuerInvalid,
    /// `aud` absent or not accepted.
    AudienceInvalid,
    /// `exp` or `sub` absent.
    ClaimMissing,
    /// A refresh or id token used as an access token.
    TokenTypeInvalid,
    /// Revoked by jti, or by subject before a time.
    TokenRevoked,
    /// An opaque token matches no API key.
    ApiKeyInvalid,
    /// Unknown, reused, expired or wrong-origin ticket.
    TicketInvalid,
    /// A valid token of an anonymous principal.
    AnonymousNotAllowed,
    /// `Origin` present and not allowed.
    OriginNotAllowed,
    /// The principal lacks a scope.
    ScopeMissing,
    /// Resuming a session owned by another subject or tenant.
    SessionForbidden,
    /// `auth.refresh` with a token for another subject or tenant.
    PrincipalMismatch,
    /// No MCP server of that name.
    McpServerUnknown,
    /// Handshake or message rate exceeded.
    RateLimited,
    /// Per-principal or per-IP connection cap.
    TooManyConnections,
    /// The shared backend is unreachable.
    ServiceUnavailable,
    /// First-message auth not received in time.
    AuthTimeout,
    /// The same session was resumed on another connection.
    SessionTakenOver,
    /// Frame above `server.max_message_bytes`.
    MessageTooLarge,
    /// The client did not read fast enough.
    SlowConsumer,
    /// Graceful shutdown.
    ServerRestart,
    /// A hosted MCP server could not start or exited.
    McpServerFailed,
    /// `run.start` named an agent that does not exist (error reply).
    AgentUnknown,
    /// `run.start` above `limits.runs_per_principal` (error reply).
    TooManyRuns,
    /// `run.cancel`/`run.get` for an unknown, finished or foreign run (error reply).
    RunNotFound,
    /// An unexpected server fault; details are only in the server log.
    InternalError,
}

impl ErrorCode {
    /// Every code, in the order of `docs/errors.md`.
    pub const ALL: &'static [ErrorCode] = &[
        Self::CredentialsAmbiguous,
        Self::ProtocolError,
        Self::TokenMissing,
        Self::TokenMalformed,
        Self::SignatureInvalid,
        Self::AlgorithmNotAllowed,
        Self::KeyUnknown,
        Self::TokenExpired,
        Self::TokenNotYetValid,
        Self::IssuerInvalid,
        Self::AudienceInvalid,
        Self::ClaimMissing,
        Self::TokenTypeInvalid,
        Self::TokenRevoked,
        Self::ApiKeyInvalid,
        Self::TicketInvalid,
        Self::AnonymousNotAllowed,
        Self::OriginNotAllowed,
        Self::ScopeMissing,
        Self::SessionForbidden,
        Self::PrincipalMismatch,
        Self::McpServerUnknown,
        Self::RateLimited,
        Self::TooManyConnections,
        Self::ServiceUnavailable,
        Self::AuthTimeout,
        Self::SessionTakenOver,
        Self::MessageTooLarge,
        Self::SlowConsumer,
        Self::ServerRestart,
        Self::McpServerFailed,
        Self::AgentUnknown,
        Self::TooManyRuns,
        Self::RunNotFound,
        Self::InternalError,
    ];

    /// The stable snake_case wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CredentialsAmbiguous => "credentials_ambiguous",
            Self::ProtocolError => "protocol_error",
            Self::TokenMissing => "token_missing",
            Self::TokenMalformed => "token_malformed",
            Self::SignatureInvalid => "signature_invalid",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::KeyUnknown => "key_unknown",
            Self::TokenExpired => "token_expired",
            Self::TokenNotYetValid => "token_not_yet_valid",
            Self::IssuerInvalid => "issuer_invalid",
            Self::AudienceInvalid => "audience_invalid",
            Self::ClaimMissing => "claim_missing",
            Self::TokenTypeInvalid => "token_type_invalid",
            Self::TokenRevoked => "token_revoked",
            Self::ApiKeyInvalid => "api_key_invalid",
            Self::TicketInvalid => "ticket_invalid",
            Self::AnonymousNotAllowed => "anonymous_not_allowed",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::ScopeMissing => "scope_missing",
            Self::SessionForbidden => "session_forbidden",
            Self::PrincipalMismatch => "principal_mismatch",
            Self::McpServerUnknown => "mcp_server_unknown",
            Self::RateLimited => "rate_limited",
            Self::TooManyConnections => "too_many_connections",
            Self::ServiceUnavailable => "service_unavailable",
            Self::AuthTimeout => "auth_timeout",
            Self::SessionTakenOver => "session_taken_over",
            Self::MessageTooLarge => "message_too_large",
            Self::SlowConsumer => "slow_consumer",
            Self::ServerRestart => "server_restart",
            Self::McpServerFailed => "mcp_server_failed",
            Self::AgentUnknown => "agent_unknown",
            Self::TooManyRuns => "too_many_runs",
            Self::RunNotFound => "run_not_found",
            Self::InternalError => "internal_error",
        }
    }

    /// Parse a wire string back into a code.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    /// The HTTP status of a rejection before the upgrade; `None` for codes that only
    /// exist after it (`auth_timeout`, `session_taken_over`, ...).
    pub fn http_status(self) -> Option<u16> {
        match self {
            Self::CredentialsAmbiguous | Self::ProtocolError => Some(400),
            Self::TokenMissing
            | Self::TokenMalformed
            | Self::SignatureInvalid
            | Self::AlgorithmNotAllowed
            | Self::KeyUnknown
            | Self::TokenExpired
            | Self::TokenNotYetValid
            | Self::IssuerInvalid
            | Self::AudienceInvalid
            | Self::ClaimMissing
            | Self::TokenTypeInvalid
            | Self::TokenRevoked
            | Self::ApiKeyInvalid
            | Self::TicketInvalid => Some(401),
            Self::AnonymousNotAllowed
            | Self::OriginNotAllowed
            | Self::ScopeMissing
            | Self::SessionForbidden
            | Self::PrincipalMismatch => Some(403),
            Self::McpServerUnknown => Some(404),
            Self::RateLimited | Self::TooManyConnections => Some(429),
            Self::ServiceUnavailable => Some(503),
            Self::InternalError => Some(500),
            Self::AuthTimeout
            | Self::SessionTakenOver
            | Self::MessageTooLarge
            | Self::SlowConsumer
            | Self::ServerRestart
            | Self::McpServerFailed
            | Self::AgentUnknown
            | Self::TooManyRuns
            | Self::RunNotFound => None,
        }
    }

    /// The WebSocket close code. The range tells a client what to do: 4401/4403 do
    /// not retry with the same credential; 4429, 4409, 1012 and 1013 retry after a
    /// pause; 4400 and 1009 are client bugs.
    pub fn close_code(self) -> u16 {
        match self {
            Self::CredentialsAmbiguous | Self::ProtocolError => 4400,
            Self::TokenMissing
            | Self::TokenMalformed
            | Self::SignatureInvalid
            | Self::AlgorithmNotAllowed
            | Self::KeyUnknown
            | Self::TokenExpired
            | Self::TokenNotYetValid
            | Self::IssuerInvalid
            | Self::AudienceInvalid
            | Self::ClaimMissing
            | Self::TokenTypeInvalid
            | Self::TokenRevoked
            | Self::ApiKeyInvalid
            | Self::TicketInvalid => 4401,
            Self::AnonymousNotAllowed
            | Self::OriginNotAllowed
            | Self::ScopeMissing
            | Self::SessionForbidden
            | Self::PrincipalMismatch => 4403,
            Self::McpServerUnknown => 4404,
            Self::AuthTimeout => 4408,
            Self::SessionTakenOver => 4409,
            Self::RateLimited | Self::TooManyConnections => 4429,
            Self::ServiceUnavailable | Self::SlowConsumer => 1013,
            Self::MessageTooLarge => 1009,
            Self::ServerRestart => 1012,
            Self::McpServerFailed | Self::InternalError => 1011,
            // Error replies are never close reasons; if one ever were, it would be a
            // protocol fault of the server's own making.
            Self::AgentUnknown | Self::TooManyRuns | Self::RunNotFound => 1011,
        }
    }

    /// The close frame reason text: `{"code":"..."}`.
    pub fn close_reason(self) -> String {
        format!("{{\"code\":\"{}\"}}", self.as_str())
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_string() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
        }
    }

    #[test]
    fn close_codes_follow_http_classes() {
        for code in ErrorCode::ALL {
            match code.http_status() {
                Some(401) => assert_eq!(code.close_code(), 4401, "{code}"),
                Some(403) => assert_eq!(code.close_code(), 4403, "{code}"),
                Some(400) => assert_eq!(code.close_code(), 4400, "{code}"),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod docs_tests {
    use super::ErrorCode;

    /// `docs/errors.md` must list every code with its HTTP status and close code.
    #[test]
    fn errors_md_lists_every_code_with_its_status_and_close_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/errors.md");
        let doc = std::fs::read_to_string(path).expect("docs/errors.md exists");
        for code in ErrorCode::ALL {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", code.as_str())))
                .unwrap_or_else(|| panic!("docs/errors.md has no row for {code}"));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let http = code.http_status().map(|s| s.to_string()).unwrap_or_else(|| "-".into());
            assert_eq!(cells[2], http, "HTTP status of {code} in docs/errors.md");
            let close = if code.http_status().is_none()
                && matches!(code, ErrorCode::AgentUnknown | ErrorCode::TooManyRuns | ErrorCode::RunNotFound)
            {
                "-".to_owned()
            } else {
                code.close_code().to_string()
            };
            assert_eq!(cells[3], close, "close code of {code} in docs/errors.md");
        }
    }
}
